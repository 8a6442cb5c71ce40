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
import json
import os
from collections.abc import Callable
from pathlib import Path


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser(
        "eval", help="perplexity and sparsity of a pruned language model vs dense",
        description=__doc__.splitlines()[0])
    p.add_argument("model", help="hf:smollm2-135m, or hf:tiny-<arch> (random weights, bytes)")
    p.add_argument("--method", default="flow",
                   choices=["dense", "uniform", "magnitude", "owl", "flow", "flow-repo",
                            "measured", "measured-search"])
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    add_debug(p)
    p.set_defaults(func=run)


def _items(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _write_json(path: str, data: dict) -> None:
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def run(args: argparse.Namespace) -> int:
    from flowc.studies.compiler import parse_nm, stderr_progress
    from flowc.studies.evaluate import MethodSpec, dense_result, peak_rss_mb, prepare, run_method

    say = None if args.quiet else stderr_progress
    nm = parse_nm(args.nm) if args.nm else None
    target = args.target
    if args.method in ("uniform", "magnitude"):  # the pattern is the target
        target = 1.0 - (nm or (2, 4))[0] / (nm or (2, 4))[1]
    spec = MethodSpec(args.method, target, nm,
                      _items(args.keep_dense), _items(args.skip), args.update,
                      not args.one_shot, args.tau, args.granularity, args.solver,
                      latency=args.latency, search=args.search)
    if not args.quiet and not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        say("hint: MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 make "
            "forward passes several times faster on this kind of VM (docs/flow.md)")
    base = prepare(args.model, args.calib_text, args.eval_text, args.calib_windows,
                   args.eval_windows, args.seq_len, bar=say is not None, say=say)
    results = [] if args.no_dense else [dense_result(base, bar=say is not None)]
    if args.method != "dense":
        results.append(run_method(base, spec, bar=say is not None, progress=say))
    print(render(results, base.calib_seconds, peak_rss_mb(), args.per_layer))
    if args.json:
        _write_json(args.json, {"model": args.model, "calib_text": args.calib_text,
                                "eval_text": args.eval_text or args.calib_text,
                                "seq_len": args.seq_len, "calib_windows": args.calib_windows,
                                "eval_windows": args.eval_windows,
                                "calib_seconds": base.calib_seconds,
                                "peak_rss_mb": peak_rss_mb(),
                                "results": [r.to_dict() for r in results]})
    if args.save_selection and args.method != "dense":
        _write_json(args.save_selection, results[-1].selection)
    return 0


def render(results, calib_seconds: float, rss_mb: float, per_layer: bool) -> str:
    """Summary table (target vs achieved, perplexity, times), then per-layer sparsity."""
    lines = [f"{'method':<22} {'target':>6} {'achieved':>8} {'all lin.':>8} {'ppl':>10} "
             f"{'select s':>8} {'prune s':>8} {'eval s':>7}"]
    for r in results:
        dense = r.spec.method == "dense"
        lines.append(
            f"{r.spec.name():<22} {'-' if dense else f'{r.spec.target:.3f}':>6} "
            f"{r.sparsity:>8.4f} {r.sparsity_all:>8.4f} {r.ppl.ppl:>10.3f} "
            f"{r.seconds.get('select', 0):>8.2f} {r.seconds.get('prune', 0):>8.2f} "
            f"{r.seconds['eval']:>7.2f}")
    pruned = [r for r in results if r.spec.method != "dense"]
    lines.append(f"calibration forward (dense statistics): {calib_seconds:.2f} s; "
                 f"peak memory {rss_mb:.0f} MB")
    if pruned:
        r = pruned[-1]
        ratio = (r.seconds["select"] + r.seconds["prune"]) / max(calib_seconds, 1e-9)
        lines.append(f"selection + pruning = {ratio:.2f} x the calibration forward")
        hist: dict[str, int] = {}
        for row in r.layers:
            key = "dense" if row["pattern"] is None else f"{row['pattern'][0]}:{row['pattern'][1]}"
            hist[key] = hist.get(key, 0) + 1
        lines.append("patterns: " + ", ".join(f"{k} x{v}" for k, v in sorted(hist.items())))
        if per_layer:
            for row in r.layers:
                pat = "dense" if row["pattern"] is None else "{}:{}".format(*row["pattern"])
                lines.append(f"  {row['name']:<40} {pat:>6} {row['sparsity']:.4f}")
    return "\n".join(lines)

