"""`flowc analytic CONFIG`: cycles and energy from a transformers config, no weights."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    from flowc.studies.analytic_models import BUILTIN_CONFIGS

    p = subparsers.add_parser(
        "analytic", help="cycles/energy of a model from its config alone (no weights)",
        description="Build every GEMM of the model from its config, price it with the same "
                    "cost model as a functional run, and report prefill and decode separately. "
                    f"Built-in configs: {', '.join(BUILTIN_CONFIGS)}.")
    p.add_argument("config", help="built-in name, config.json path or model directory")
    p.add_argument("--targets", default="all", help="'all' or a comma list of machines")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nm", help="uniform N:M (N kept per M) for every Linear but the LM head")
    g.add_argument("--assign", metavar="FILE.json",
                   help="per-layer N:M: {'layers': {name|glob: [n, m]|'n:m'|'dense'}, "
                        "'default': ..., 'blocks': depth} or a FLOW selection {'patterns': ...}")
    p.add_argument("--phase", choices=("prefill", "decode", "both"), default="both")
    p.add_argument("--tokens", type=int, default=2048, help="prompt length (prefill)")
    p.add_argument("--kv-len", type=int, help="cached tokens for decode (default: --tokens)")
    p.add_argument("--no-attention", action="store_true",
                   help="leave out the attention matmuls (dense GEMMs with runtime weights)")
    p.add_argument("--all-logits", action="store_true",
                   help="LM head over every prompt token (default: the last one)")
    p.add_argument("--json", metavar="FILE", help="write every report as JSON")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc.cli.compare import write_json
    from flowc.cli.paths import check_output
    from flowc.errors import UsageError
    from flowc.machine import load_machine
    from flowc.studies.analytic import analyse_targets, load_assignment, scale_blocks, uniform
    from flowc.studies.analytic_models import shapes_of
    from flowc.studies.compare import parse_targets
    from flowc.studies.compiler import parse_nm
    from flowc.studies.results import from_analytic
    from flowc.studies.tables import render_analytic

    check_output(args.json, "--json", args.config)
    if args.tokens < 1 or (args.kv_len is not None and args.kv_len < 1):
        raise UsageError("--tokens and --kv-len must be positive")
    machines = [load_machine(t) for t in parse_targets(args.targets)]
    assignment = None
    if args.nm:
        assignment = uniform(*parse_nm(args.nm))
    elif args.assign:
        assignment = load_assignment(args.assign)
        depth = shapes_of(args.config).layers
        if assignment.blocks and assignment.blocks != depth:
            assignment = scale_blocks(assignment, assignment.blocks, depth)
    family = shapes_of(args.config).family
    phases = ("prefill", "decode") if args.phase == "both" else (args.phase,)
    phases = tuple(p for p in phases if not (family == "bert" and p == "decode"))
    res = analyse_targets(args.config, machines, assignment, phases, tokens=args.tokens,
                          kv_len=args.kv_len, attention=not args.no_attention,
                          all_logits=args.all_logits, name=args.config)
    report = from_analytic(res, args.config)
    if args.json:
        write_json(args.json, report.to_dict())
    print(render_analytic(report))
    return 0
