"""`flowc compare MODEL`: FlexCiM against the baselines on one model (flowc.studies.compare)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser(
        "compare", help="prune once, run on every target, compare latency/energy/EDP",
        description="Prune and quantise MODEL once, lower it for each target with the rule "
                    "'a layer runs as the cheapest supported pattern that contains its mask', "
                    "run each program with cost accounting and compare.")
    p.add_argument("model", help="model file (.pt2 ExportedProgram, ...)")
    p.add_argument("--targets", default="all",
                   help="'all' (flexcim,dcim-dense,vegeta,sdp,stc24) or a comma list of "
                        "built-in names / machine files")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nm", help="uniform N:M, N kept per M (e.g. 2:4)")
    g.add_argument("-p", "--pipeline", help="pass pipeline (e.g. 'calibrate,nm-prune{...}')")
    p.add_argument("--input-shape", help="override input shapes, e.g. 1x784")
    p.add_argument("--trust-pickle", action="store_true", help="allow pickled nn.Module files")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write per-layer cycles by target (PNG)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_debug(p)
    p.set_defaults(func=run)


def write_json(path: str, data: dict) -> None:
    """Write to a temp file, then rename: no partial output on failure."""
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def run(args: argparse.Namespace) -> int:
    from flowc.studies.compare import compare_model, parse_targets
    from flowc.studies.compiler import parse_nm, stderr_progress

    targets = parse_targets(args.targets)
    cmp = compare_model(args.model, targets, nm=parse_nm(args.nm) if args.nm else None,
                        pipeline=args.pipeline,
                        progress=None if args.quiet else stderr_progress,
                        input_shapes=args.input_shape, trust_pickle=args.trust_pickle)
    print(cmp.render())
    if args.json:
        write_json(args.json, cmp.to_dict())
    if args.plot:
        cmp.plot(args.plot)
    return 0
