"""flowrun vs ONNX Runtime on SmolLM2-135M (128-token prompt), side by side in one run.

    python bench/smollm2_vs_ort.py [--fcim out/smollm2-135m.fcim] [--nm 2:4] [--repeat 15]
                                   [--processes K]

Without --fcim (or if the file is missing) it first compiles `hf:smollm2-135m` at --nm into
that path (about two minutes). Then it times, alternating so machine noise hits all alike:
the simulator with cycle/energy accounting (a fresh FastCostListener per run; "warm": its cost
memo shared across runs as in a serving loop, "cold": a fresh memo per run, as one flowrun
call has), the simulator without it (functional only; the same Interpreter object, so the
same decompressed weights), and ORT running the embedded reference model on the same inputs
with 1 and with 2 intra-op threads (spinning off, as in check.ort_session), and with 2 threads
whose workers spin between operators (ONNX Runtime's default; measured faster here), and
with those 2 spinning threads but no memory arena (check.ort_session's `lean`, as flowrun's
own check runs ORT); the fastest of the four is the baseline; and, when the .fcim holds
prices for this machine and flowc code (`flowc compile --price`, by default for programs
whose run is at most 2^35 operations, SmolLM2 at 128 tokens among them), what a `flowrun`
call then does: the same run, recording and pricing nothing, its per-layer rows read from
the file. The order rotates every round. Every timed run is one full inference after a
warm-up run (the decompressed weights and ORT's arenas are built once, like a loaded model).
With `--processes K`, each contender instead runs alone in its own process, K rounds of
processes in rotating order (each warms up, then times --repeat runs): in one process, what
ORT's runs leave behind slowed flowrun's next run by ~1 s at 2,048 tokens (measured: with
ORT's arena on, flowrun's resident memory grew by 0.4-0.9 GB a run, from 4.25 to 8.07 GB
over six runs and two of ORT's, and its runs took 9.1-11.0 s against 7.4 s before; with
the arena off it stayed at 4.28 GB and 6.9-8.3 s, ORT itself 7.3-7.6 s either way).
Prints medians, the flowrun/ORT ratio, the accounting overhead three ways (wall-time ratio of
medians, median paired difference, and the main thread's added CPU time, which other
processes cannot inflate; plus the pricing time in finish() alone) and the .fcim size ratio.
"""

from __future__ import annotations

# Before torch loads: OpenMP workers wait as flowrun's do (flowc/host.py: a bounded spin on
# an idle host, sleeping otherwise; spinning workers starve the other core of a busy 2-core
# machine), unless the environment says otherwise.
from flowc.host import openmp_wait_mode, openmp_waiting  # noqa: E402

openmp_waiting(spin=True)

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from flowc.backend.container import load, save, size_report
from flowc.backend.reference import materialise
from flowc.runtime.check import ort_session, run_reference, top1_agreement
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.session import (
    FastCostListener,
    MemoCostModel,
    cost_model_for,
    simulate,
    stored_layers,
)


def ensure_fcim(path: Path, nm: str) -> None:
    if path.exists():
        return
    from flowc.frontend.load import load_hf
    from flowc.studies.compiler import CompileOptions, compile_captured, parse_nm, stderr_progress

    path.parent.mkdir(parents=True, exist_ok=True)
    cap = load_hf("hf:smollm2-135m", progress=stderr_progress)
    image = compile_captured(cap, CompileOptions(nm=parse_nm(nm)), progress=stderr_progress)
    save(image, path)


# one process per contender (--processes): what one leaves behind in a process (ONNX
# Runtime's arena, ~5 GB at 2,048 tokens; caches) slowed the other's next run there by ~1 s
CONTENDERS = ("flowrun", "onnxruntime 1 thread", "onnxruntime 2 threads",
              "onnxruntime 2 thr, spinning", "onnxruntime 2 spin, no arena")


def ort_contender(onnx_bytes: bytes, contender: str):
    """The ORT session of one of CONTENDERS[1:] (its name says threads, spinning, arena)."""
    return ort_session(onnx_bytes, threads=1 if "1 thread" in contender else 2,
                       spin="spin" in contender, lean="no arena" in contender)


def child(path: Path, contender: str, repeat: int) -> None:
    """Time `repeat` runs of one contender after its warm-up; print the seconds as JSON."""
    import json

    image = load(path)
    samples = list(image.samples)
    if contender == "flowrun":  # with accounting, priced afresh each run (a fresh memo)
        _, model = cost_model_for(image)
        interp = Interpreter(image)

        def once():
            listener = FastCostListener(model, image.layers, image.tensors)
            interp.listeners = [listener]
            interp.run(samples)
            listener.finish()
    else:
        onnx_bytes = materialise(image)
        sess = ort_contender(onnx_bytes, contender)

        def once():
            run_reference(onnx_bytes, samples, session=sess)
    for _ in range(2):  # flowrun: the plan's first run and the MLAS sessions' build
        once()
    secs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        once()
        secs.append(time.perf_counter() - t0)
    print(json.dumps(secs))


def alone(path: Path, rounds: int, repeat: int) -> None:
    """`rounds` rounds of one child process per contender, in rotating order; medians of all
    runs per contender and the ratio to the fastest ORT configuration."""
    import json
    import subprocess

    times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    for i in range(rounds):
        for c in CONTENDERS[i % len(CONTENDERS):] + CONTENDERS[: i % len(CONTENDERS)]:
            print(f"[bench] round {i + 1}/{rounds}: {c} ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--fcim", str(path), "--child", c,
                                  "--repeat", str(repeat)], check=True, capture_output=True,
                                 text=True).stdout
            times[c] += json.loads(out.strip().splitlines()[-1])
    med = {c: statistics.median(v) for c, v in times.items()}
    print(f"SmolLM2-135M {path.name}, one process per contender, {rounds} rounds x {repeat} "
          "runs after each process's warm-up, median wall time:")
    for c, v in med.items():
        print(f"  {c + (' (with accounting)' if c == 'flowrun' else ''):28s} {v * 1e3:9.1f} ms "
              f"  (min {min(times[c]) * 1e3:.1f})")
    ort_t = min(v for c, v in med.items() if c.startswith("onnxruntime"))
    print(f"OpenMP workers: {openmp_wait_mode()}; load average {os.getloadavg()[0]:.2f}")
    print(f"ratio flowrun/ORT (with accounting): {med['flowrun'] / ort_t:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fcim", default="out/smollm2-135m.fcim")
    ap.add_argument("--nm", default="2:4", help="pattern used when the .fcim must be compiled")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--processes", type=int, default=0, metavar="K",
                    help="instead: K rounds of one process per contender, alternating "
                         "(each warms up, then times --repeat runs alone)")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()

    path = Path(args.fcim)
    ensure_fcim(path, args.nm)
    if args.child:
        return child(path, args.child, args.repeat)
    if args.processes:
        return alone(path, args.processes, args.repeat)
    print(f"[bench] loading {path} ...", file=sys.stderr, flush=True)
    image = load(path)
    samples = list(image.samples)
    _, cost_model = cost_model_for(image)
    interp = Interpreter(image)  # one interpreter (one set of decompressed weights) for all
    onnx_bytes = materialise(image)
    sessions = {c: ort_contender(onnx_bytes, c) for c in CONTENDERS[1:]}

    warm = MemoCostModel(cost_model)  # one memo for the whole bench, like a serving loop
    pricing: dict[bool, list[float]] = {False: [], True: []}  # finish() wall time: warm, cold

    def sim_accounted(memo_model=None):
        listener = FastCostListener(memo_model or cost_model, image.layers, image.tensors)
        interp.listeners = [listener]
        out = interp.run(samples)
        t0 = time.perf_counter()
        listener.finish()
        pricing[memo_model is None].append(time.perf_counter() - t0)
        return out

    def sim_functional():
        interp.listeners = []
        return interp.run(samples)

    runs = {"flowrun (with accounting)": lambda: sim_accounted(warm),
            "flowrun (accounting, cold)": sim_accounted,
            "flowrun (functional)": sim_functional,
            **{c: (lambda s=s: run_reference(onnx_bytes, samples, session=s))
               for c, s in sessions.items()}}
    if stored_layers(image, "int8") is not None:
        # what a flowrun call does when the compile stored this machine's prices: the same
        # run, recording and pricing nothing, its per-layer rows read from the .fcim
        runs["flowrun (stored prices)"] = \
            lambda: simulate(image, samples, interpreter=interp)[0]
    else:
        print("[bench] the .fcim holds no prices for this machine and flowc code (`flowc "
              "compile --price on` stores them): a flowrun call prices its run, as the cold "
              "memo does", file=sys.stderr, flush=True)
    print("[bench] warm-up ...", file=sys.stderr, flush=True)
    outs = {k: fn() for k, fn in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}  # this thread's CPU time per run
    order = list(runs)
    for i in range(args.repeat):
        print(f"[bench] round {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
        # rotate the order every round: whatever runs right after ORT (whose threads have just
        # flushed the caches) is slower, and that must not always be the same contender
        for k in order[i % len(order):] + order[: i % len(order)]:
            t0, c0 = time.perf_counter(), time.thread_time()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.thread_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = samples[0].shape[-1]
    print(f"SmolLM2-135M {path.name}, {tokens}-token prompt, {args.repeat} alternating runs, "
          f"median wall time:")
    for k, v in med.items():
        print(f"  {k:28s} {v * 1e3:9.1f} ms   (min {min(times[k]) * 1e3:.1f})")
    ort_t = min(v for k, v in med.items() if k.startswith("onnxruntime"))
    print(f"OpenMP workers: {openmp_wait_mode()}; load average {os.getloadavg()[0]:.2f}")
    print(f"ratio flowrun/ORT (with accounting): {med['flowrun (with accounting)'] / ort_t:.2f}x")
    print(f"ratio flowrun/ORT (functional):      {med['flowrun (functional)'] / ort_t:.2f}x")
    for label, key in (("warm memo", "flowrun (with accounting)"),
                       ("cold memo", "flowrun (accounting, cold)"),
                       ("stored prices", "flowrun (stored prices)")):
        if key not in med:
            continue
        over = med[key] / med["flowrun (functional)"] - 1
        paired = statistics.median(a - f for a, f in zip(times[key], times["flowrun (functional)"],
                                                          strict=True))
        if "memo" in label:  # finish() timed around every accounted run of that variant
            finish = statistics.median(pricing[label.startswith("cold")])
            priced = (f"of which pricing in finish() {finish * 1e3:.1f} ms "
                      f"= {100 * finish / med['flowrun (functional)']:.1f} %")
        else:  # simulate() reads the compile's rows: no finish() runs, nothing is priced
            priced = "nothing priced (per-layer rows read from the .fcim)"
        # accounting is serial Python on this thread: the CPU time it adds is what it adds to
        # the wall time, and CPU time does not advance while another process has the core
        added = statistics.median(cpu[key]) - statistics.median(cpu["flowrun (functional)"])
        print(f"accounting overhead, {label}: {100 * over:+.1f} % (ratio of medians), "
              f"{100 * paired / med['flowrun (functional)']:+.1f} % (median paired difference); "
              f"{priced}; main-thread CPU time "
              f"added {added * 1e3:.1f} ms = {100 * added / med['flowrun (functional)']:+.1f} %")
    sizes, floor = size_report(path), image.weight_bytes()
    print(f".fcim {sizes['total'] / 1e6:.1f} MB: machine payload {sizes['machine'] / 1e6:.1f} MB "
          f"= {sizes['machine'] / floor:.3f} x int8 kept weights + metadata bits "
          f"({floor / 1e6:.1f} MB); whole file {sizes['total'] / floor:.3f} x "
          f"(fp32 check payload {sizes['check'] / 1e6:.1f} MB)")
    sim, ref = outs["flowrun (functional)"][0], outs["onnxruntime 2 threads"][0]
    print(f"int8 top-1 agreement with ORT's fp32 reference: {top1_agreement(sim, ref):.4f} over "
          f"{tokens} positions (flowrun's check also compares with ORT's int8 execution)")


if __name__ == "__main__":
    from flowc.host import keep_big_blocks

    keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
    main()
