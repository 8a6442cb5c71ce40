"""The `flowc` program: one subparser per module of flowc/cli/ (see `SUBCOMMANDS`).

Errors a user can fix are printed as one line (`flowc: error: ...`) with a documented exit
code; tracebacks only with --debug (docs/cli.md lists the codes).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from flowc.cli.guard import add_debug, guard

# Modules defining `register(subparsers, add_debug)`, in the order `flowc --help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "flowc.cli.compile", "flowc.cli.example", "flowc.cli.compare", "flowc.cli.analytic",
    "flowc.cli.eval", "flowc.cli.disasm", "flowc.cli.asm",
)


def build_flowc_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowc", description="Command-line interface: `flowc compile|disasm|asm|...` and "
                                  "`flowrun`.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(sub, add_debug)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_flowc_parser().parse_args(argv)
    return guard("flowc", args.func, args)
