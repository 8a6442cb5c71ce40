"""Wall time per instruction (mnemonic) of one plan run of an .fcim: where a run goes.

    python bench/plan_steps.py FILE.fcim [--unfused]

Loads the image, prepares the plan, runs it twice (warm-up), then times every prepared step
of a third run with perf_counter and prints the sums per (profile class, mnemonic), with the
load average beside. `--unfused`: the plan without fused steps (flowc.runtime.fused), for a
side-by-side reading. A fused step carries the time of the steps it replaced (attention:
the first mm.act; a linear layer: its loop). Read shares, not absolute times, on a shared
machine.
"""

from __future__ import annotations

import os

from flowc.host import openmp_waiting  # noqa: E402

openmp_waiting(spin=True)  # before torch loads (see run_vs_ort.py)
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1073741824")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import time
from collections import defaultdict

from flowc.backend.container import load
from flowc.runtime import plan as plan_module
from flowc.runtime.interpreter import Interpreter, State, gc_paused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fcim")
    ap.add_argument("--unfused", action="store_true")
    args = ap.parse_args()
    if args.unfused:
        plan_module.fuse = lambda *_: 0  # the plan as it was before fused steps
    image = load(args.fcim)
    inputs = list(image.samples)
    it = Interpreter(image)
    t0 = time.perf_counter()
    plan = it.plan()
    print(f"plan prepared in {time.perf_counter() - t0:.2f} s ({plan.fused} fused steps)")
    for i in range(2):
        t0 = time.perf_counter()
        it.run(inputs)
        print(f"run {i + 1}: {time.perf_counter() - t0:.2f} s, load {os.getloadavg()[0]:.2f}")
    spent: dict[tuple[str, str], float] = defaultdict(float)
    count: dict[tuple[str, str], int] = defaultdict(int)
    state = State()
    it._bind_inputs(state, inputs)
    clock = time.perf_counter
    with gc_paused():
        t_all = clock()
        for step, dead in zip(plan.steps, plan.dead, strict=True):
            t0 = clock()
            step.run(state)
            key = (step.kind, "loop" if step.loop else step.item.mnemonic)
            spent[key] += clock() - t0
            count[key] += 1
            for name in dead:
                state.bufs.pop(name, None)
        total = clock() - t_all
    print(f"timed run: {total * 1e3:.1f} ms, load {os.getloadavg()[0]:.2f}")
    for key, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {key[0]:10s} {key[1]:12s} {count[key]:5d} {sec * 1e3:10.1f} ms "
              f"{100 * sec / total:5.1f} %")


if __name__ == "__main__":
    from flowc.host import keep_big_blocks

    keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
    main()
