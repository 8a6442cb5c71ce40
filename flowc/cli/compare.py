"""`flowc compare MODEL`: FlexCiM against the baselines on one model (flowc.studies.compare)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    from flowc.cli.compile import add_hf_arguments

    p = subparsers.add_parser(
        "compare", help="prune once, run on every target, compare latency/energy/EDP",
        description="Prune and quantise MODEL once, lower it for each target with the rule "
                    "'a layer runs as the cheapest supported pattern that contains its mask', "
                    "run each program with cost accounting and compare.")
    p.add_argument("model", help="model file (.pt2 ExportedProgram, ...) or an hf: source "
                   "(calibrated on its own text, as `flowc compile` does)")
    p.add_argument("--targets", default="all",
                   help="'all' (flexcim,dcim-dense,vegeta,sdp,stc24) or a comma list of "
                        "built-in names / machine files")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nm", help="uniform N:M, N kept per M (e.g. 2:4)")
    g.add_argument("-p", "--pipeline", help="pass pipeline (e.g. 'calibrate,nm-prune{...}')")
    add_hf_arguments(p)
    p.add_argument("--input-shape", help="override input shapes, e.g. 1x784")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled nn.Module files")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write per-layer cycles by target (PNG)")
    add_debug(p)
    p.set_defaults(func=run)


def write_json(path: str, data: dict) -> None:
    """Atomic (temp file + rename, no partial output) and with the umask's mode."""
    from flowc.backend.container import write_atomic

    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def run(args: argparse.Namespace) -> int:
    from flowc.cli.compile import check_hf_arguments
    from flowc.cli.paths import check_output
    from flowc.frontend.load import check_hf_source, is_hf_source, load_hf, load_model
    from flowc.studies.compare import compare_captured, parse_targets
    from flowc.studies.compiler import CompileOptions, parse_nm, stderr_progress
    from flowc.studies.results import from_comparison
    from flowc.studies.tables import render_compare

    check_output(args.json, "--json", args.model)
    check_output(args.plot, "--plot", args.model)
    targets = parse_targets(args.targets)
    say = None if args.quiet else stderr_progress
    hf = is_hf_source(args.model)
    check_hf_arguments(args, hf)
    if hf:  # brings its own calibration text, used like compile does
        check_hf_source(args.model)
        cap = load_hf(args.model, seq_len=args.seq_len, prompt=args.prompt, progress=say,
                      trust_remote_code=args.trust_remote_code)
    else:
        cap = load_model(args.model, input_shapes=args.input_shape, trust_pickle=args.trust_pickle)
    opts = CompileOptions(nm=parse_nm(args.nm) if args.nm else None, pipeline=args.pipeline,
                          target=targets[0], reference=False, keep_fp32=False)
    cmp = compare_captured(cap, targets, opts, say, calib=cap.info.get("calib") or None)
    report = from_comparison(cmp)
    if args.json:
        write_json(args.json, report.to_dict())
    if args.plot:  # files first: a reader that closes stdout early does not lose them
        cmp.plot(args.plot)
    print(render_compare(report))
    return 0
