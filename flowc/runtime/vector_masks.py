"""Vector-unit handlers for masks, casts and constant-index gathers (v.where, v.cast,
v.gather; docs/attention.md). Truth values are float32 0.0 / 1.0, like every activation.

Each handler returns the sizes the cost model needs (elements written, elements read, tokens).
"""

from __future__ import annotations

import numpy as np

from flowc.errors import ExecutionError
from flowc.runtime.vector import _sizes


def _cast(x: np.ndarray, to: str) -> np.ndarray:
    if to == "bool":
        return (x != 0).astype(np.float32)
    if to == "int":
        return np.trunc(x).astype(np.float32)
    if to == "float":
        return x.astype(np.float32)
    raise ExecutionError(f"v.cast: unknown target {to!r} (bool, int or float)")


def register(handles) -> None:
    @handles("v.where")
    def _where(it, st, ins):
        c, a, b = st.bufs[ins.c], st.bufs[ins.a], st.bufs[ins.b]
        y = np.where(c != 0, a, b).astype(np.float32, copy=False)
        st.bufs[ins.dst] = y
        return _sizes(y, c, a, b)

    @handles("v.cast")
    def _cast_h(it, st, ins):
        x = st.bufs[ins.src]
        y = _cast(np.asarray(x), ins.to)
        st.bufs[ins.dst] = y
        return _sizes(y, x)

    @handles("v.gather")
    def _gather(it, st, ins):
        x = st.bufs[ins.src]
        idx = it.image.tensors[ins.idx]
        y = np.ascontiguousarray(np.asarray(x).reshape(-1)[idx], dtype=np.float32)
        st.bufs[ins.dst] = y
        # reads one source element and one index per output element
        return {"elements": y.size, "in_elements": 2 * y.size,
                "tokens": int(np.prod(y.shape[:-1])) if y.ndim else 1}
