"""`flowc eval MODEL`: perplexity and sparsity of a language model, dense and pruned.

    flowc eval hf:smollm2-135m --method flow --target 0.5
    flowc eval hf:smollm2-135m --method uniform --nm 2:4 --eval-text wiki.test.raw

Calibrates on the first 90 % of --calib-text, evaluates on the last 10 % (or on all of
--eval-text when that is another source), prunes with the same passes `flowc compile` runs
(`flowc.studies.evaluate.method_pipeline`) and prints target vs achieved sparsity, per layer and
overall, next to the perplexity of the dense and the pruned model.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity and sparsity of a pruned language model vs dense",
        description=__doc__.splitlines()[0])
    p.add_argument("model", help="hf:smollm2-135m, or hf:tiny-<arch> (random weights, bytes)")
    p.add_argument("--method", default="flow",
                   choices=["dense", "uniform", "magnitude", "owl", "flow", "flow-repo",
                            "measured", "measured-search"])
    p.add_argument("-p", "--pipeline", metavar="PIPELINE",
                   help="score this pass pipeline instead of a --method (any passes, plugins "
                   "included; calibrate has run already), e.g. 'uniform-nm{n=2,m=4},nm-prune'")
    p.add_argument("--target", type=float, default=0.5,
                   help="target sparsity of the prunable layers (flow, owl; default 0.5)")
    p.add_argument("--nm", default=None,
                   help="N:M (N kept per M) for uniform/magnitude (default 2:4); owl uses its M")
    p.add_argument("--calib-text", default="brown", help="brown | pydoc | PATH (default brown)")
    p.add_argument("--eval-text", default=None,
                   help="held-out text (default: the last 10 %% of --calib-text)")
    p.add_argument("--calib-windows", type=int, default=32, help="calibration windows (32)")
    p.add_argument("--eval-windows", type=int, default=40, help="evaluation windows (40)")
    p.add_argument("--seq-len", type=int, default=512,
                   help="tokens per window (512; the paper uses 2048)")
    p.add_argument("--keep-dense", default="",
                   help="comma list kept dense but counted: first,last,lm_head or globs")
    p.add_argument("--skip", default="lm_head",
                   help="comma list left out of pruning and of the target (default lm_head)")
    p.add_argument("--update", default="none", choices=["none", "obs"],
                   help="obs: SparseGPT-style OBS weight update on the same mask")
    p.add_argument("--one-shot", action="store_true",
                   help="prune every layer with dense statistics (default: sequential)")
    p.add_argument("--tau", type=float, default=None,
                   help="outlier threshold (default 5; flow-repo: FLOW's 0.5)")
    p.add_argument("--granularity", choices=["layer", "block"], default=None)
    p.add_argument("--solver", choices=["cbc", "highs", "dp"], default="cbc")
    p.add_argument("--latency", type=float, default=0.0,
                   help="measured methods: latency budget, fraction of the dense cycles (0: none)")
    p.add_argument("--search", default="max_time=120",
                   help="measured-search: nm-search options (default max_time=120)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense perplexity")
    p.add_argument("--per-layer", action="store_true", help="print every layer's sparsity")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--save-selection", metavar="FILE",
                   help='write {"layers": {name: [n, m]}, "target", "achieved"} as JSON')
    add_debug(p)
    p.set_defaults(func=run)


def _items(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _write_json(path: str, data: dict) -> None:
    from flowc.cli.compare import write_json

    write_json(path, data)


def run(args: argparse.Namespace) -> int:
    from flowc.cli.paths import check_output
    from flowc.studies.compiler import parse_nm, stderr_progress
    from flowc.studies.evaluate import MethodSpec, dense_result, peak_rss_mb, prepare, run_method
    from flowc.studies.results import from_eval
    from flowc.studies.tables import render_eval

    check_output(args.json, "--json")
    check_output(args.save_selection, "--save-selection")
    say = None if args.quiet else stderr_progress
    nm = parse_nm(args.nm) if args.nm else None
    target = args.target
    if args.method in ("uniform", "magnitude"):  # the pattern is the target
        target = 1.0 - (nm or (2, 4))[0] / (nm or (2, 4))[1]
    if args.pipeline:  # checked (names, options) before the model loads
        from flowc.passes.pipeline import parse_pipeline

        parse_pipeline(args.pipeline)
        spec = MethodSpec("pipeline", 0.0, skip=_items(args.skip), pipeline=args.pipeline)
    else:
        spec = MethodSpec(args.method, target, nm,
                          _items(args.keep_dense), _items(args.skip), args.update,
                          not args.one_shot, args.tau, args.granularity, args.solver,
                          latency=args.latency, search=args.search)
    base = prepare(args.model, args.calib_text, args.eval_text, args.calib_windows,
                   args.eval_windows, args.seq_len, bar=say is not None, say=say)
    results = [] if args.no_dense else [dense_result(base, bar=say is not None)]
    if spec.method != "dense":
        results.append(run_method(base, spec, bar=say is not None, progress=say))
    report = from_eval(results, args.model, args.calib_text, args.eval_text, args.seq_len,
                       args.calib_windows, args.eval_windows, base.calib_seconds)
    if args.json:
        _write_json(args.json, report.to_dict())
    print(render_eval(report, args.per_layer))
    print(f"peak memory {peak_rss_mb():.0f} MB")
    if args.save_selection and spec.method != "dense":
        _write_json(args.save_selection, results[-1].selection)
    return 0
