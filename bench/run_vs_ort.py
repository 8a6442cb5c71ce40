"""flowrun vs ONNX Runtime wall time on the same model and inputs, measured side by side.

    python bench/run_vs_ort.py [--model mlp|block] [--nm 2:4] [--repeat 50]

Prints the median wall time of: the simulator with cycle/energy accounting (a live
CostListener on the replayed events, costs memoised across runs), the simulator without it
(functional only), `simulate()` as flowrun calls it (events recorded once, costs priced once
per plan and machine, then reused), and ORT running the embedded reference model with 1 and with 2
intra-op threads (the faster is the baseline); then the ratios. Runs alternate so machine
noise hits all of them alike. ORT's thread spinning is off: it would starve numpy's threads.
Not a timed test: read the ratio.
"""

from __future__ import annotations

import os

# Must be set before torch loads: OpenMP workers that spin after each parallel region starve
# the other core on a 2-core machine (the CLI sets the same default).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time

from flowc.frontend.load import capture
from flowc.runtime.check import ort_session, run_reference
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.report import CostListener
from flowc.runtime.session import MemoCostModel, cost_model_for, simulate
from flowc.studies.compiler import CompileOptions, compile_captured, parse_nm
from flowc.studies.examples import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "block"])
    ap.add_argument("--nm", default="2:4")
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()

    model, inputs = build(args.model)
    image = compile_captured(capture(model, inputs, "bench"), CompileOptions(nm=parse_nm(args.nm)),
                             progress=None)
    samples = list(image.samples)
    _, cost_model = cost_model_for(image)
    plain = Interpreter(image)
    accounted = Interpreter(image)
    onnx_bytes = image.reference_model()
    sess1 = ort_session(onnx_bytes, threads=1)
    sess2 = ort_session(onnx_bytes, threads=2)

    memo: dict = {}

    def sim_accounted():
        listener = CostListener(MemoCostModel(cost_model, memo), image.layers, image.tensors)
        accounted.listeners = [listener]
        accounted.run(samples)
        listener.finish()

    priced = Interpreter(image)

    def sim_priced_once():  # what flowrun's simulate() does: costs priced once per plan
        simulate(image, samples, interpreter=priced)

    def sim_functional():
        plain.run(samples)

    def ort1():
        run_reference(onnx_bytes, samples, session=sess1)

    def ort2():
        run_reference(onnx_bytes, samples, session=sess2)

    runs = {"flowrun (with accounting)": sim_accounted, "flowrun (functional)": sim_functional,
            "flowrun (priced once)": sim_priced_once,
            "onnxruntime 1 thread": ort1, "onnxruntime 2 threads": ort2}
    for fn in runs.values():  # warm-up: dense-weight cache, ORT arenas
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model} at {args.nm}, inputs {[tuple(s.shape) for s in samples]}, "
          f"{args.repeat} alternating runs, median wall time (load average "
          f"{os.getloadavg()[0]:.2f} at the end):")
    for k, v in med.items():
        print(f"  {k:28s} {v * 1e3:9.3f} ms")
    ort_t = min(med["onnxruntime 1 thread"], med["onnxruntime 2 threads"])  # ORT at its best
    print(f"ratio flowrun/ORT (with accounting): {med['flowrun (with accounting)'] / ort_t:.2f}x")
    print(f"ratio flowrun/ORT (functional):      {med['flowrun (functional)'] / ort_t:.2f}x")
    over = med["flowrun (with accounting)"] / med["flowrun (functional)"] - 1
    print(f"accounting overhead: {100 * over:+.1f} %")
    once = med["flowrun (priced once)"]
    print(f"priced once (simulate(), the plan's priced costs reused): {once / ort_t:.2f}x ORT, "
          f"{100 * (once / med['flowrun (functional)'] - 1):+.1f} % over functional")


if __name__ == "__main__":
    main()
