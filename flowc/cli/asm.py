"""`flowc asm FILE.s`: assemble a text program into the binary encoding."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("asm", help="assemble a text program into the binary encoding")
    p.add_argument("file")
    p.add_argument("-o", "--output")
    p.add_argument("--verify", metavar="FCIM", help="also run the program verifier against the "
                   "tensors, signature and machine of this .fcim (docs/cli.md)")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc import isa
    from flowc.backend.container import write_atomic
    from flowc.cli.paths import check_output
    from flowc.runtime.inputs import read_regular

    path = Path(args.file)
    out = args.output or str(path.with_suffix(".bin"))
    check_output(out, "-o", path, args.verify)
    program = isa.assemble_bytes(read_regular(str(path), "asm"), filename=str(path))
    if args.verify:
        from dataclasses import replace

        from flowc.backend.container import load
        from flowc.runtime.verifier import verify

        verify(replace(load(args.verify), program=program))
    write_atomic(out, isa.encode(program))
    print(f"wrote {out} ({len(program.instructions)} instructions)")
    return 0
