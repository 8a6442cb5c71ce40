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
    p.add_argument("--verify", action="store_true",
                   help="run the program verifier first (a .fcim only; docs/cli.md)")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc import isa
    from flowc.backend.container import load, write_atomic
    from flowc.cli.paths import check_input, check_output
    from flowc.errors import UsageError
    from flowc.runtime.inputs import read_regular
    from flowc.runtime.verifier import verify

    path = Path(args.file)
    check_input(path, "program file")
    check_output(args.output, "-o", path)
    if path.suffix == ".fcim":
        image = load(path)
        if args.verify:
            verify(image)
        program = image.program
    elif args.verify:
        raise UsageError("--verify needs a .fcim (a bare program has no tensors to check)")
    else:
        program = isa.decode(read_regular(str(path), "disasm"))
    text = isa.disassemble(program)
    if args.output:
        write_atomic(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return 0
