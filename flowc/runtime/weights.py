"""Dense weights from packed tiles, fast: what the execution plan multiplies with.

`flowc.backend.pack.unpack` is the exact inverse of `pack`, written for clarity: it scatters
every kept value through two int64 index arrays of the matrix's size (3.8 s for SmolLM2's
weights here, the larger part of a cold flowrun's first run). The functions below build the
same matrix by one scatter along the group axis only: a packed tile grid is, up to a
transpose, the matrix viewed as [.., groups, m] with n kept slots per group (the packing's
layout, docs/architecture.md "Packed weights"), so a group's slot j lands at index
meta[.., j] of its group. A dense packing (n = m) keeps every slot in order: no scatter.
Tests check both against `unpack` exactly.
"""

from __future__ import annotations

import numpy as np


def _grouped(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
             order: tuple[int, ...], dtype) -> np.ndarray:
    """The matrix as [..., m] groups in the axis `order` of (NT, KT, gangs, R, C) (6-D view
    with the kept-slot axis last), filled from the packed tiles."""
    NT, KT, P, R, C = values.shape
    n, m = keep_n, group_m
    shape6 = (NT, KT, P // n, n, R, C)  # sub-macro s = member s % n of gang s // n
    axes = tuple(order) + (3,)
    vals = values.reshape(shape6).transpose(axes)
    lead = vals.shape[:-1]
    if n == m:  # every slot kept, in order (select_kept): the values are the groups
        return np.ascontiguousarray(vals, dtype=dtype)
    out = np.zeros(lead + (m,), dtype=dtype)
    idx = meta.reshape(shape6).transpose(axes).astype(np.intp)  # [..., n] index in the group
    idx += np.arange(int(np.prod(lead)), dtype=np.intp).reshape(lead + (1,)) * m
    out.reshape(-1)[idx.reshape(-1)] = vals.reshape(-1)
    return out


def dense_wt(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
             dtype=np.float32) -> np.ndarray:
    """W^T [KT*K_pass, NT*C] (input channel k, output column c), contiguous, as `dtype`:
    `unpack(values, meta, keep_n, group_m).T` exactly."""
    NT, KT, P, R, C = values.shape
    grouped = _grouped(values, meta, keep_n, group_m, (1, 2, 4, 0, 5), dtype)
    # [KT, gangs, R, NT, C, m] -> [KT, gangs, R, m, NT, C]: k = ((kt*gangs + g)*R + r)*m + i
    wt = np.ascontiguousarray(np.moveaxis(grouped, -1, 3))
    return wt.reshape(KT * P * R * group_m // keep_n, NT * C)


def dense_w(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
            dtype=np.float32) -> np.ndarray:
    """W [NT*C, KT*K_pass] (row per output channel): `unpack(...)` exactly, as `dtype`."""
    NT, KT, P, R, C = values.shape
    grouped = _grouped(values, meta, keep_n, group_m, (0, 5, 1, 2, 4), dtype)
    return grouped.reshape(NT * C, KT * P * R * group_m // keep_n)
