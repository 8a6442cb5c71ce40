"""`flowc asm FILE.s`: assemble a text program into the binary encoding."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("asm", help="assemble a text program into the binary encoding")
    p.add_argument("file")
    p.add_argument("-o", "--output")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc import isa
    from flowc.backend.container import write_atomic

    path = Path(args.file)
    program = isa.assemble(path.read_text(), filename=str(path))
    out = args.output or str(path.with_suffix(".bin"))
    write_atomic(out, isa.encode(program))
    print(f"wrote {out} ({len(program.instructions)} instructions)")
    return 0
