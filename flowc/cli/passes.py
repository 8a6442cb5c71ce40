"""`flowc passes [NAME]`: the passes a pipeline string can name, built-in and plugin, with
their options (the pass dataclass's fields) and what they do (the class docstring)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("passes", help="list the passes (built-in and plugin) and options",
                              description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="one pass: its whole description and options")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc.passes.registry import available_passes, get_pass

    if args.name:
        print(describe(get_pass(args.name)))
        return 0
    for name in available_passes():
        cls = get_pass(name)
        opts = ", ".join(f.name for f in dataclasses.fields(cls)) or "none"
        print(f"{name} ({origin(cls)}): {summary(cls)}\n    options: {opts}")
    print("`flowc passes NAME` shows one pass with its option types and defaults; pipeline "
          "syntax: name{option=value,...} (docs/writing-a-pass.md)")
    return 0


def origin(cls: type) -> str:
    return "built-in" if cls.__module__.startswith("flowc.") else f"plugin {cls.__module__}"


def summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ") or "-"


def describe(cls: type) -> str:
    """Name, origin, the docstring, what must run first, and one line per option."""
    from flowc.termtable import table

    lines = [f"{cls.name} ({origin(cls)}: {cls.__module__}.{cls.__qualname__})", ""]
    lines += [inspect.getdoc(cls) or "(no description)", ""]
    requires = getattr(cls, "requires", ())
    lines.append(f"requires before it: {', '.join(requires) if requires else 'nothing'} "
                 "(some option values add more)")
    rows = [(f.name, _type(f), _default(f)) for f in dataclasses.fields(cls)]
    lines.append(table(["option", "type", "default"], rows) if rows else "options: none")
    return "\n".join(lines)


def _type(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "(required)"
