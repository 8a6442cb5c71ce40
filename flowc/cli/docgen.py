"""docs/cli.md's reference block, generated from the argument parsers themselves, so the doc
cannot drift from the code (tests/cli/test_docs.py fails when they differ).

    python -m flowc.cli.docgen docs/cli.md     # rewrite the block between the markers

Only the text between BEGIN and END is generated; the hand-written sections around it (exit
codes, model sources, checks and limits) are kept as they are.
"""

from __future__ import annotations

import argparse

BEGIN = "<!-- BEGIN GENERATED: python -m flowc.cli.docgen docs/cli.md -->"
END = "<!-- END GENERATED -->"
WIDTH = 100  # usage lines are wrapped at this width whatever the terminal
GLOBAL_DESTS = ("debug", "verbose", "quiet")


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is False or d == argparse.SUPPRESS or isinstance(action, (
            argparse._HelpAction, argparse._VersionAction)):
        return ""
    if isinstance(action, argparse._CountAction) and d == 0:
        return ""
    return f"`{d}`"


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        if action.choices and not action.metavar:
            return "`{" + ",".join(map(str, action.choices)) + "}`"
        return f"`{action.metavar or action.dest}`"
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{flags}`"
    meta = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                              else action.dest.upper())
    return f"`{flags} {meta}`"


def command_section(title: str, parser: argparse.ArgumentParser) -> list[str]:
    _fixed_width(parser)
    formatter = parser._get_formatter()
    lines = [f"### `{title}`", "", "```", parser.format_usage().strip(), "```", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    lines += ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or (
                title != "flowrun" and action.dest in GLOBAL_DESTS):
            continue  # the global flags are documented once, in the `flowc` section
        help_text = formatter._expand_help(action) if action.help else ""
        lines.append(f"| {_name(action)} | {_default(action)} | {_cell(help_text)} |")
    return lines + [""]


def render() -> str:
    from flowc.cli.flowrun import build_flowrun_parser
    from flowc.cli.main import build_flowc_parser

    top = build_flowc_parser()
    _fixed_width(top)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    lines = [BEGIN, "", "### `flowc`", "", "```", top.format_usage().strip(), "```", "",
             "| subcommand | what it does |", "|---|---|"]
    helps = {a.dest: a.help for a in sub._choices_actions}
    lines += [f"| `{name}` | {_cell(helps.get(name) or '')} |" for name in sub.choices]
    lines += ["", f"`--version` prints the version. {_cell(top.epilog or '')}", "",
              "| global flag | meaning |", "|---|---|"]
    compile_parser = sub.choices["compile"]
    lines += [f"| {_name(a)} | {_cell(a.help or '')} |" for a in compile_parser._actions
              if a.dest in GLOBAL_DESTS]
    lines.append("")
    for name, parser in sub.choices.items():
        lines += command_section(f"flowc {name}", parser)
        for title, action_parser in getattr(parser, "doc_sections", ()):  # `flowc sweep report`
            lines += command_section(title, action_parser)
    lines += command_section("flowrun", build_flowrun_parser())
    return "\n".join(lines + [END])


def current_block(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    return BEGIN + rest.split(END, 1)[0] + END


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated block of the given file (atomically)."""
    from flowc.backend.opsdoc import rewrite_block

    return rewrite_block(argv, render, BEGIN, END, "python -m flowc.cli.docgen docs/cli.md")


if __name__ == "__main__":
    raise SystemExit(main())
