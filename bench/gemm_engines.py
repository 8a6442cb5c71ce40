"""Which engine multiplies a fused linear step fastest: SmolLM2-135M's products, side by side.

    python bench/gemm_engines.py [--rows 32,128,512,2048] [--repeat 15]

A fused linear step (flowc.runtime.fused_linear.LinearProduct) computes (x @ W^T + 0.0) * a * w of
int8-valued float32 operands in exact K chunks, so every engine gives the same bits; this
bench checks that (uint32 views) and times, alternating every round, per product shape
(rows x K x N of SmolLM2-135M: q/o 576 x 576, k/v 576 x 192, gate/up 576 x 1,536, down
1,536 x 576, lm_head 576 x 49,152):
- torch: torch.matmul (MKL here) per K chunk, then the two scalings;
- onednn: oneDNN's linear on weights reordered once (the plan's torch path);
- mlas1 / mlas2: ONNX Runtime's MLAS on the weight prepacked once (flowc.runtime.mlas),
  1 or 2 intra-op threads, inputs and output bound in place;
- numpy: numpy's BLAS (its thread pool spins after each call, which on a 2-core host stalls
  torch's and ONNX Runtime's threads: timed for reference only, never used by the plan).
Prints each engine's median and best time in ms and the load average. On a shared machine
only the ratios within one row mean anything.
"""

from __future__ import annotations

import os

from flowc.host import openmp_waiting  # noqa: E402

openmp_waiting(spin=True)  # before torch loads (see run_vs_ort.py)

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from flowc.runtime import fused, fused_linear, mlas
from flowc.runtime.gemm import EXACT_CHUNK

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]


def engines(w: np.ndarray, wscale: np.ndarray) -> dict[str, Callable]:
    wt, ws = torch.from_numpy(w), torch.from_numpy(wscale)
    packed = fused_linear._packed_product(wt)

    def scaled(y: torch.Tensor, a: np.ndarray) -> np.ndarray:
        return y.mul_(torch.from_numpy(a).reshape(-1, 1)).mul_(ws).numpy()

    def numpy_blas(x: np.ndarray, a: np.ndarray) -> np.ndarray:
        y = None
        for k0 in range(0, w.shape[0], EXACT_CHUNK):
            part = x[:, k0:k0 + EXACT_CHUNK] @ w[k0:k0 + EXACT_CHUNK]
            y = part if y is None else np.add(y, part, out=y)
        y += np.float32(0.0)
        y *= a.reshape(-1, 1)
        y *= wscale
        return y

    out = {"torch": lambda x, a: scaled(fused.exact_product(torch.from_numpy(x), wt), a),
           "onednn": lambda x, a: scaled(packed(torch.from_numpy(x)), a)}
    if mlas.available():
        out["mlas1"] = mlas.linear_session(w, wscale, 1)
        out["mlas2"] = mlas.linear_session(w, wscale, 2)
    out["numpy"] = numpy_blas
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="32,128,512,2048")
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("rows x K x N: engine median/best ms (same bits checked), load average")
    for rows in (int(r) for r in args.rows.split(",")):
        for k, n in SHAPES:
            x = rng.integers(-127, 128, (rows, k)).astype(np.float32)
            x[:, ::7] = -0.0
            w = rng.integers(-127, 128, (k, n)).astype(np.float32)
            a = rng.uniform(1e-3, 1, rows).astype(np.float32)
            wscale = rng.uniform(1e-3, 1, n).astype(np.float32)
            runs = engines(w, wscale)
            want = None
            for name, fn in runs.items():
                for _ in range(2):  # the second call reorders oneDNN's weights
                    got = fn(x, a).view(np.uint32)
                want = got if want is None else want
                if not np.array_equal(got, want):
                    raise SystemExit(f"{rows}x{k}x{n}: {name} differs from torch")
            repeat = max(3, args.repeat if rows * k * n < 1 << 30 else args.repeat // 4)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(repeat):
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    fn(x, a)
                    times[name].append(time.perf_counter() - t0)
            cells = "  ".join(f"{name} {statistics.median(t) * 1e3:.2f}/{min(t) * 1e3:.2f}"
                              for name, t in times.items())
            print(f"{rows:5d} x {k:4d} x {n:5d}: {cells}  load {os.getloadavg()[0]:.1f}",
                  flush=True)


if __name__ == "__main__":
    from flowc.host import keep_big_blocks

    keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
    main()
