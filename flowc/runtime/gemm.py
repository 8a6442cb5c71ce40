"""Exact int8 GEMMs on the host: the macro's integer arithmetic on the fastest exact path.

Both paths give the same bits (integer results); which one runs is measured once per
process (`int8_backend`). Used by the handlers (flowc.runtime.interpreter) and the plan.
"""

from __future__ import annotations

import time

import numpy as np
import torch

EXACT_CHUNK = 1024  # 1024 * 127 * 128 < 2**24: int8 dot products of this length are exact in fp32


def matmul32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 a @ b (batched over leading dims) through torch's BLAS.

    All heavy math goes through one thread pool (torch's): mixing numpy's OpenBLAS pool with
    torch's OpenMP pool makes the two spin against each other on a small machine (measured:
    tiny vector ops slowed from 0.1 ms to 50 ms on 2 cores).
    """
    ta, tb = (torch.from_numpy(_writable(np.ascontiguousarray(v, dtype=np.float32))) for v in (a, b))
    return torch.matmul(ta, tb).numpy()


def _writable(a: np.ndarray) -> np.ndarray:
    return a if a.flags.writeable else a.copy()


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact int32 a @ b of two 2-D int8 arrays: the macro's arithmetic on the host's fastest
    exact path. torch._int_mm is 4-5x faster than float32 BLAS on CPUs with VNNI, but ~100x
    slower on CPUs without it (a fallback kernel: 87 ms per SmolLM2 GEMM on a 2-core AVX2
    EPYC); exact_int_matmul (float32 BLAS in exact K chunks) gives the same bits. Which one
    this host runs is measured once (`int8_backend`)."""
    if int8_backend() == "float32-chunks":
        return exact_int_matmul(a, b)
    ta = torch.from_numpy(_writable(np.ascontiguousarray(a, dtype=np.int8)))
    tb = torch.from_numpy(_writable(np.ascontiguousarray(b, dtype=np.int8)))
    return torch._int_mm(ta, tb).numpy()


_INT8_BACKEND: list[str] = []


def int8_backend() -> str:
    """'int_mm' or 'float32-chunks': the faster exact int8 GEMM on this host, timed once on a
    SmolLM2-sized product (both are exact, so the choice changes speed, never results)."""
    if not _INT8_BACKEND:
        rng = np.random.default_rng(0)
        a = rng.integers(-127, 128, (128, 576), dtype=np.int8)
        b = rng.integers(-127, 128, (576, 576), dtype=np.int8)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        torch._int_mm(ta, tb)  # warm both paths once
        exact_int_matmul(a, b)
        t0 = time.perf_counter()
        torch._int_mm(ta, tb)
        t1 = time.perf_counter()
        exact_int_matmul(a, b)
        t2 = time.perf_counter()
        _INT8_BACKEND.append("int_mm" if t1 - t0 <= t2 - t1 else "float32-chunks")
    return _INT8_BACKEND[0]


def exact_int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int32 a @ b of integer-valued operands (|values| <= 127), exact, batched over leading
    dims (attention: batch x heads in one call). float32 BLAS is exact while every partial sum
    stays below 2**24, i.e. for chunks of K <= 1024."""
    k = a.shape[-1]
    if k <= EXACT_CHUNK:
        return matmul32(a, b).astype(np.int32)
    y = None
    for k0 in range(0, k, EXACT_CHUNK):
        part = matmul32(a[..., k0:k0 + EXACT_CHUNK], b[..., k0:k0 + EXACT_CHUNK, :])
        y = part.astype(np.int64) if y is None else y + part.astype(np.int64)
    return y.astype(np.int32)
