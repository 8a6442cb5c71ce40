"""`flowc disasm FILE`: the assembly text of a .fcim or of a binary program."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("disasm", help="print the assembly of a .fcim or a binary program")
    p.add_argument("file")
    p.add_argument("-o", "--output")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc import isa
    from flowc.backend.container import load, write_atomic

    path = Path(args.file)
    program = load(path).program if path.suffix == ".fcim" else isa.decode(path.read_bytes())
    text = isa.disassemble(program)
    if args.output:
        write_atomic(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return 0
