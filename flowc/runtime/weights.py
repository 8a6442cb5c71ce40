"""Dense weights from packed tiles, fast: what the execution plan multiplies with.

The index-by-index inverse of `pack` (`flowc.backend.pack.unpack_slow`) scatters every kept
value through two int64 index arrays of the matrix's size (3.8 s for SmolLM2's weights here,
the larger part of a cold flowrun's first run). These build the same matrix by one scatter
along the group axis only (`grouped_slots`): a packed tile grid is, up to a transpose, the
matrix viewed as [.., groups, m] with n kept slots per group (docs/architecture.md "Packed
weights"). W^T comes out directly in the layout the GEMM reads. Tests check both exactly.
"""

from __future__ import annotations

import numpy as np

from flowc.backend.pack import grouped_slots, unpack


def dense_wt(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
             dtype=np.float32) -> np.ndarray:
    """W^T [KT*K_pass, NT*C] (input channel k, output column c), contiguous, as `dtype`:
    `unpack(values, meta, keep_n, group_m).T` exactly."""
    NT, KT, P, R, C = values.shape
    grouped = grouped_slots(values, meta, keep_n, group_m, (1, 2, 4, 0, 5), dtype)
    # [KT, gangs, R, NT, C, m] -> [KT, gangs, R, m, NT, C]: k = ((kt*gangs + g)*R + r)*m + i
    wt = np.ascontiguousarray(np.moveaxis(grouped, -1, 3))
    return wt.reshape(KT * P * R * group_m // keep_n, NT * C)


def dense_w(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
            dtype=np.float32) -> np.ndarray:
    """W [NT*C, KT*K_pass] (row per output channel): `unpack(...)` exactly, as `dtype`."""
    return unpack(values, meta, keep_n, group_m, dtype)
