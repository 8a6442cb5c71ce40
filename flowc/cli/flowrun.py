"""The `flowrun` program: execute a .fcim on the simulated machine, report cycles and energy,
and check the outputs against ONNX Runtime (`python -m flowc.cli.flowrun` without an install)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from flowc.cli.guard import add_debug, guard


def run(args: argparse.Namespace) -> int:
    from flowc.runtime.session import run_image_file

    report = run_image_file(
        args.file, inputs=args.input, numerics=args.numerics, mode=args.mode,
        check=not args.no_check, progress=not args.quiet, profile=args.profile,
    )
    if args.json:
        from flowc.backend.container import write_atomic

        write_atomic(args.json, (json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    if not args.quiet or report.check is None or not report.check.passed:
        print(report.render())
    if args.profile:
        print(report.extra["profile"])
    if report.check is not None and not report.check.passed:
        return 1
    return 0


def build_flowrun_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowrun", description="execute a .fcim program on the "
                                "simulated FlexCiM machine, report cycles and energy, and check "
                                "the outputs against ONNX Runtime")
    p.add_argument("file", help="the .fcim program")
    p.add_argument("--input", action="append", metavar="NPY",
                   help="input array (.npy), once per model input; default: the embedded samples")
    p.add_argument("--numerics", default="int8", choices=["int8", "fp32"],
                   help="int8 (the machine) or fp32 (CiM GEMMs unquantised, to isolate lowering)")
    p.add_argument("--mode", default="plan", choices=["plan", "batched", "reference"],
                   help="plan (prepared once, fast), batched (per-instruction dispatch) or "
                   "reference (every handler, tile loops tile by tile); same numbers")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime check")
    p.add_argument("--profile", action="store_true",
                   help="time one more run per instruction class and print the floor (the "
                   "same GEMMs alone, onnxruntime on the fp32 and int8 references)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="print only on a failed check")
    add_debug(p)
    p.set_defaults(func=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_flowrun_parser().parse_args(argv)
    return guard("flowrun", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
