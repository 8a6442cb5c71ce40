"""Time analytic mode on LLaMA-2-70B shapes, prefill of 2048 tokens (issue 5: must be < 10 s).

    .venv/bin/python bench/analytic_speed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowc.machine import load_machine  # noqa: E402
from flowc.studies.analytic import analyse, uniform  # noqa: E402

LIMIT_S = 10.0


def main() -> int:
    worst = 0.0
    for target in ("flexcim", "dcim-dense", "vegeta", "sdp", "stc24"):
        machine = load_machine(target)
        t0 = time.perf_counter()
        rep = analyse("llama-2-70b", machine, uniform(2, 4), phase="prefill", tokens=2048)
        dt = time.perf_counter() - t0
        worst = max(worst, dt)
        print(f"llama-2-70b prefill 2048 on {target:<10}: {len(rep.layers)} GEMMs, "
              f"{rep.cycles():,} cycles, {rep.energy_pj() / 1e9:,.1f} mJ, analysed in {dt:.3f} s")
    ok = worst < LIMIT_S
    print(f"slowest {worst:.3f} s (limit {LIMIT_S:g} s): {'OK' if ok else 'TOO SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
