"""Render the supported ops and architectures table of docs/models.md from the rule registry.

The table is generated, never edited: each row is one lowering rule of
`flowc.backend.lower.RULES` with the ATen ops it handles, its family and the architectures it
declares (`rule(..., family=, archs=)`, next to the rule), and the first line of its
docstring as the lowering. A test compares the committed block with `render()`, so the docs
cannot drift from the backend. Regenerate with `python -m flowc.backend.opsdoc docs/models.md`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from flowc.backend.archs import ALL
from flowc.backend.lower import RULE_INFO, register_rules

BEGIN = "<!-- BEGIN GENERATED: python -m flowc.backend.opsdoc docs/models.md -->"
END = "<!-- END GENERATED -->"


def _op_name(target: object) -> str:
    text = str(target)
    return text.removeprefix("aten.") if text.startswith("aten.") else \
        getattr(target, "__name__", text)


def _summary(fn: object) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    first = doc.split("\n\n")[0].replace("\n", " ").strip()
    return " ".join(first.split()).replace("|", "\\|") or "-"


def _archs(archs: tuple[str, ...]) -> str:
    if set(ALL) <= set(archs):
        return "all"
    return ", ".join(a for a in ALL if a in archs) + \
        "".join(f", {a}" for a in sorted(set(archs) - set(ALL)))


def rows() -> list[tuple[str, str, str, str]]:
    """(family, ATen ops, lowering, architectures) per rule function, sorted."""
    by_fn: dict[object, list[object]] = {}
    for target, fn in register_rules().items():
        by_fn.setdefault(fn, []).append(target)
    out = []
    for fn, targets in by_fn.items():
        families = {RULE_INFO[t][0] for t in targets}
        archs = tuple(sorted({a for t in targets for a in RULE_INFO[t][1]}))
        ops = ", ".join(f"`{_op_name(t)}`" for t in sorted(targets, key=_op_name))
        out.append((" / ".join(sorted(families)), ops, _summary(fn), _archs(archs)))
    return sorted(out)


def render() -> str:
    """The generated block, markers included."""
    table = rows()
    used = sorted({a.strip() for r in table for a in r[3].split(",") if a.strip() != "all"},
                  key=lambda a: (a not in ALL, ALL.index(a) if a in ALL else 0, a))
    n_ops = sum(r[1].count("`") // 2 for r in table)
    lines = [BEGIN, "",
             f"{len(table)} lowering rules cover {n_ops} ATen ops. Architectures declared by "
             f"the rules: {', '.join(used)} (`all`: every one of them).", "",
             "| family | ATen ops | lowering | architectures |", "|---|---|---|---|"]
    lines += [f"| {f} | {ops} | {low} | {archs} |" for f, ops, low, archs in table]
    return "\n".join(lines + ["", END])


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with everything from `begin` to `end` replaced by `block` (which carries the
    markers itself); shared by every generated doc block (also flowc.cli.docgen)."""
    if begin not in text or end not in text:
        raise ValueError(f"the document has no generated block ({begin} ... {end})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def rewrite_block(argv: list[str] | None, block: Callable[[], str], begin: str, end: str,
                  command: str) -> int:
    """`python -m MODULE DOC`: rewrite DOC's generated block atomically; usage errors exit 2."""
    from flowc.backend.container import write_atomic

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: {command}", file=sys.stderr)
        return 2
    path = Path(args[0])
    text = replace_block(path.read_text(encoding="utf-8"), block(), begin, end)
    write_atomic(path, text.encode("utf-8"))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated block of the given file (atomically) and print nothing."""
    return rewrite_block(argv, render, BEGIN, END,
                         "python -m flowc.backend.opsdoc docs/models.md")


if __name__ == "__main__":
    raise SystemExit(main())
