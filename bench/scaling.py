"""How flowrun's time grows with sequence length and model width, next to ONNX Runtime's.

    python bench/scaling.py [--tokens 32,128,512,2048] [--widths 64,128,256,512,1024]
                            [--repeat 3] [--markdown FILE]

One run of this script measures every size, each in its own child process (so its peak
memory is its own; a missing SmolLM2 .fcim is compiled by another child first). SmolLM2-135M
is compiled at 2:4 with magnitude scores (no calibration needed) and kept in out/bench/; the
MLP (w, w, w, w) at 2:4, batch 8. Each child loads, warms up, then runs `--repeat`
alternating rounds of: flowrun with accounting (a fresh cost listener and memo per run, so
every run prices its events afresh as one `flowrun` call does; the events themselves are
replayed by the plan), flowrun functional (plan mode, the interpreter reused, weights
unpacked once like a loaded model), ORT on the embedded fp32 reference with 1 and with 2
intra-op threads (no spinning) and with 2 whose workers spin (ONNX Runtime's default), with
and without its memory arena (off: as flowrun's own check runs ORT); the fastest is the
baseline.
Medians are printed, the ratio flowrun-with-accounting / ORT per size, and per workload the
growth exponent b of time ~ size^b fitted by least squares on log-log (flowrun and ORT).
Peak RSS of the child is read after flowrun's warm-up runs (flowrun alone: image, plan and
buffers) and at its end (with ORT's sessions); the load column is the 1-minute load average
when the child started measuring and when it ended. MLP sizes run 50 x `--repeat` rounds. The
machine is shared: read ratios, not absolute times.
"""

from __future__ import annotations

import os

from flowc.host import openmp_waiting  # noqa: E402

openmp_waiting(spin=True)  # before torch loads (see run_vs_ort.py)
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1073741824")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("out/bench")
MARK_BEGIN = "<!-- bench/scaling.py: begin -->"
MARK_END = "<!-- bench/scaling.py: end -->"


def compile_image(workload: str, size: int):
    """The Image of one size (SmolLM2: cached in out/bench/)."""
    from flowc.backend.container import load, save
    from flowc.studies.compiler import CompileOptions, compile_captured

    opts = CompileOptions(nm=(2, 4), score="magnitude", calib_batches=1)
    if workload == "mlp":
        import torch

        from flowc.frontend.load import capture
        from flowc.studies.examples import MLP

        torch.manual_seed(0)
        model = MLP((size, size, size, size)).eval()
        cap = capture(model, (torch.randn(8, size),), source=f"mlp-{size}")
        return compile_captured(cap, opts, progress=None), 0.0
    path = OUT / f"smollm2-t{size}.fcim"
    t0 = time.perf_counter()
    if not path.exists():
        from flowc.frontend.load import load_hf

        cap = load_hf("hf:smollm2-135m", seq_len=size, calib_batches=1)
        OUT.mkdir(parents=True, exist_ok=True)
        save(compile_captured(cap, opts, progress=None), path)
    compile_s = time.perf_counter() - t0
    return load(path), compile_s


def measure(workload: str, size: int, repeat: int, compile_only: bool = False) -> dict:
    """Child process: the timings and memory of one size, as a dict."""
    from flowc.backend.reference import materialise
    from flowc.runtime.check import ort_session, run_reference
    from flowc.runtime.interpreter import Interpreter
    from flowc.runtime.session import FastCostListener, cost_model_for

    image, compile_s = compile_image(workload, size)
    if compile_only:
        return {"compile_s": compile_s}
    load_start = os.getloadavg()[0]
    samples = list(image.samples)
    _, model = cost_model_for(image)
    t0 = time.perf_counter()
    interp = Interpreter(image)
    interp.plan()
    prepare_s = time.perf_counter() - t0

    def accounted():  # a fresh listener and memo: one flowrun call's accounting
        listener = FastCostListener(model, image.layers, image.tensors)
        interp.listeners = [listener]
        interp.run(samples)
        listener.finish()

    def functional():
        interp.listeners = []
        interp.run(samples)

    flow = {"flowrun accounted": accounted, "flowrun functional": functional}
    for fn in flow.values():  # warm-up: the plan records its events, BLAS warms
        fn()
    rss_flowrun = _peak_rss_gb()
    onnx_bytes = materialise(image)
    sessions = {f"ORT {t} thread{', spinning' * spin}{', no arena' * lean}":
                ort_session(onnx_bytes, threads=t, spin=spin, lean=lean)
                for t, spin, lean in ((1, False, False), (2, False, False), (2, True, False),
                                      (2, True, True))}
    ort = {name: (lambda s=s: run_reference(onnx_bytes, samples, session=s))
           for name, s in sessions.items()}
    times: dict[str, list[float]] = {}
    # tiny workloads: many rounds (each takes a millisecond), large ones: `repeat`
    _rounds({**flow, **ort}, times, repeat * 50 if workload == "mlp" else repeat)
    med = {k: statistics.median(v) for k, v in times.items()}
    ort_best = min(v for k, v in med.items() if k.startswith("ORT"))
    return {"workload": workload, "size": size, "median_s": med, "ort_s": ort_best,
            "ratio_accounted": med["flowrun accounted"] / ort_best,
            "ratio_functional": med["flowrun functional"] / ort_best,
            "prepare_s": prepare_s, "compile_s": compile_s,
            "peak_rss_gb_flowrun": rss_flowrun, "peak_rss_gb": _peak_rss_gb(),
            "load": (load_start, os.getloadavg()[0])}


def _rounds(runs: dict, times: dict, repeat: int) -> None:
    for key in runs:  # warm-up: ORT's arenas
        if key.startswith("ORT"):
            runs[key]()
    order = list(runs)
    for i in range(repeat):
        for k in order[i % len(order):] + order[: i % len(order)]:
            t0 = time.perf_counter()
            runs[k]()
            times.setdefault(k, []).append(time.perf_counter() - t0)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def exponent(sizes: list[int], secs: list[float]) -> float:
    """b of secs ~ a * size^b, least squares on log-log."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in secs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)


def table(rows: list[dict]) -> str:
    lines = ["| workload | size | flowrun accounted (ms) | flowrun functional (ms) | "
             "ORT best (ms) | accounted / ORT | functional / ORT | peak RSS (GB) | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["median_s"]
        lines.append(f"| {r['workload']} | {r['size']} | {m['flowrun accounted'] * 1e3:.1f} | "
                     f"{m['flowrun functional'] * 1e3:.1f} | {r['ort_s'] * 1e3:.1f} | "
                     f"{r['ratio_accounted']:.2f}x | {r['ratio_functional']:.2f}x | "
                     f"{r['peak_rss_gb']:.2f} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> list[str]:
    out = []
    for wl in dict.fromkeys(r["workload"] for r in rows):
        rs = [r for r in rows if r["workload"] == wl]
        if len(rs) < 2:
            continue
        sizes = [r["size"] for r in rs]
        b_flow = exponent(sizes, [r["median_s"]["flowrun accounted"] for r in rs])
        b_ort = exponent(sizes, [r["ort_s"] for r in rs])
        out.append(f"{wl}: time ~ size^b with b = {b_flow:.2f} (flowrun, accounted) and "
                   f"{b_ort:.2f} (ORT) over sizes {sizes[0]}..{sizes[-1]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="32,128,512,2048")
    ap.add_argument("--widths", default="64,128,256,512,1024")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", help="replace the marked section of this file with the table")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.repeat,
                                 args.compile_only)))
        return
    jobs = [("mlp", int(w)) for w in args.widths.split(",") if w] + \
        [("smollm2", int(t)) for t in args.tokens.split(",") if t]
    rows = []
    for wl, size in jobs:
        print(f"[bench] {wl} {size} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--repeat", str(args.repeat), "--child", wl, str(size)]
        compile_s = None
        if wl == "smollm2" and not (OUT / f"smollm2-t{size}.fcim").exists():
            # compile in its own process: the measuring child's peak RSS is flowrun's alone
            compile_s = _child(cmd + ["--compile-only"], wl, size)["compile_s"]
        row = _child(cmd, wl, size)
        row["compile_s"] = compile_s if compile_s is not None else row["compile_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)  # each size as soon as it is measured
    text = table(rows) + "\n\n" + "\n".join(f"- {g}" for g in growth(rows))
    print(text)
    for r in rows:
        print(f"{r['workload']} {r['size']}: peak RSS {r['peak_rss_gb_flowrun']:.2f} GB after "
              f"flowrun, {r['peak_rss_gb']:.2f} GB with ORT; plan preparation "
              f"{r['prepare_s']:.2f} s")
    if args.markdown:
        _write_section(Path(args.markdown), text, args)


def _child(cmd: list[str], wl: str, size: int) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{wl} {size} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _write_section(path: Path, text: str, args) -> None:
    doc = path.read_text()
    cmd = (f"python bench/scaling.py --tokens {args.tokens} --widths {args.widths} "
           f"--repeat {args.repeat}")
    block = f"{MARK_BEGIN}\n`{cmd}` (medians of alternating runs, one invocation):\n\n{text}\n{MARK_END}"
    if MARK_BEGIN in doc:
        head, rest = doc.split(MARK_BEGIN, 1)
        doc = head + block + rest.split(MARK_END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n## Scaling: flowrun vs ONNX Runtime (issue 14)\n\n" + block + "\n"
    path.write_text(doc)


if __name__ == "__main__":
    from flowc.host import keep_big_blocks

    keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
    main()
