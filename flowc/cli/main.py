"""The `flowc` program: one subparser per module of flowc/cli/ (see `SUBCOMMANDS`).

Errors a user can fix are printed as one line (`flowc: error: ...`) with a documented exit
code; tracebacks only with --debug (docs/cli.md lists the codes).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from flowc.cli.guard import GLOBAL_FLAGS, add_debug, guard, hoist_global_flags

# Modules defining `register(subparsers, add_debug)`, in the order `flowc --help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "flowc.cli.compile", "flowc.cli.example", "flowc.cli.compare", "flowc.cli.analytic",
    "flowc.cli.eval", "flowc.cli.passes", "flowc.cli.inspect", "flowc.cli.disasm",
    "flowc.cli.asm", "flowc.cli.sweep",
)


def build_flowc_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowc", description="Command-line interface: `flowc compile|disasm|asm|...` and "
                                  "`flowrun`.",
        epilog=f"The global flags ({', '.join(GLOBAL_FLAGS)}) go before or after the subcommand.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(sub, add_debug)
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    from flowc import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    parser = build_flowc_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    argv = hoist_global_flags(sys.argv[1:] if argv is None else argv, list(commands.choices))
    args = parser.parse_args(argv)
    return guard("flowc", args.func, args)
