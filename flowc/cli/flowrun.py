"""The `flowrun` program: execute a .fcim on the simulated machine, report cycles and energy,
and check the outputs against ONNX Runtime (`python -m flowc.cli.flowrun` without an install)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flowc.cli.guard import add_debug, guard
from flowc.cli.main import add_version


def run(args: argparse.Namespace) -> int:
    from flowc.backend.container import load, write_atomic
    from flowc.runtime.session import load_inputs, run_image
    from flowc.studies.results import from_run
    from flowc.studies.tables import render_run

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[flowrun] {msg}", file=sys.stderr, flush=True)

    image = load(args.file)
    raw = run_image(image, load_inputs(image, args.input), numerics=args.numerics,
                    mode=args.mode, check=not args.no_check, say=say, profile=args.profile)
    info = image.compile_info or {}
    report = from_run(raw, image.machine, str(info.get("source", args.file)),
                      info.get("pipeline"))
    if args.json:
        write_atomic(args.json, report.to_json().encode())
    failed = report.check is not None and not report.check["passed"]
    if not args.quiet or failed or report.check is None:  # -q: quiet only on a verdict
        print(render_run(report, layers=args.layers))
        prepared = raw.extra.get("prepare_wall_s")
        print(f"numerics {raw.numerics}, mode {raw.mode}; simulated in {raw.wall_seconds:.3f} s"
              + ("" if prepared is None else
                 f" (after preparing the plan in {prepared:.3f} s: weights unpacked)"))
    if args.profile:
        print(raw.extra["profile"])
    return 1 if failed else 0


def _size(text: str) -> int:
    """`4G`, `512M`, `1e13` -> an int (argparse type)."""
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4G or 1e13, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _checked_run(args: argparse.Namespace) -> int:
    """Before any work: the --json path may not replace the program, an input, a link or a
    special file (flowc.cli.paths); --max-memory / --max-work set the limits the reader and
    the program verifier enforce (flowc.backend.limits)."""
    from flowc.backend import limits
    from flowc.cli.paths import check_input, check_output

    check_input(args.file, ".fcim file")
    check_output(args.json, "--json", args.file, *(args.input or ()))
    if args.max_memory:
        limits.configure(member_bytes=args.max_memory, total_bytes=args.max_memory,
                         peak_bytes=args.max_memory)
    if args.max_work:
        limits.configure(work=args.max_work)
    return run(args)


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
    p.add_argument("--layers", action="store_true",
                   help="one row per layer (default: one row per block, e.g. model.layers.3)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON "
                   "(docs/results-format.md)")
    p.add_argument("--max-memory", type=_size, metavar="BYTES",
                   help="limit for buffers, decompressed weights and every file member the "
                   "verifier and reader accept (default: half the host memory; k/M/G suffixes)")
    p.add_argument("--max-work", type=_size, metavar="OPS",
                   help="limit for the operations one run may take (default 1e13)")
    add_debug(p)  # -q: no progress, and the report only if the check fails
    add_version(p)
    p.set_defaults(func=_checked_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_flowrun_parser().parse_args(argv)
    return guard("flowrun", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
