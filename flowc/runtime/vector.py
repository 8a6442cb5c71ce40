"""Vector-unit instruction handlers (float32, numpy/torch-vectorised).

Each handler returns the sizes the cost model needs: elements written, elements read and the
token count (product of leading dimensions).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

QMAX = 127
# the smallest normal float32: the floor of a quantisation scale. max|x| / 127 of a row whose
# max|x| is subnormal underflows (to 0 below ~1.8e-43: x / 0 = inf / nan); floored, such a
# row quantises to finite values (|x| / TINY < 127 there, so the clip never matters)
TINY = np.float32(np.finfo(np.float32).tiny)


def _sizes(out: np.ndarray, *ins: np.ndarray) -> dict:
    return {"elements": out.size, "in_elements": sum(a.size for a in ins),
            "tokens": math.prod(out.shape[:-1])}


def quantise_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per token: scale = max(max|x_t| / 127, TINY) (1 for an all-zero token).
    A token with a NaN (or an infinity: inf / inf) quantises its NaN quotients to 0, stated
    here rather than left to the float -> int8 cast, which C leaves undefined for NaN."""
    amax = np.abs(x).max(axis=-1)
    scale = np.where(amax > 0, np.maximum(amax / QMAX, TINY), 1.0).astype(np.float32)
    q = np.rint(x / scale[..., None])
    if not np.isfinite(amax).all():
        q = nan_to_zero(q)
    return np.clip(q, -QMAX, QMAX).astype(np.int8), scale


def nan_to_zero(q: np.ndarray) -> np.ndarray:
    """NaN quotients of quantisation as 0 (finite values and infinities unchanged)."""
    return np.where(np.isnan(q), np.float32(0.0), q).astype(q.dtype, copy=False)


def register(handles) -> None:  # noqa: C901  (a flat table of small handlers)
    @handles("v.quant")
    def _quant(it, st, ins):
        x = st.bufs[ins.src]
        if it.numerics == "fp32":
            q, s = x.astype(np.float32), np.ones(x.shape[:-1], np.float32)
        else:
            q, s = quantise_per_token(x)
        st.bufs[ins.dst], st.bufs[ins.scale] = q, s
        return _sizes(q, x)

    @handles("v.deq")
    def _deq(it, st, ins):
        p = st.bufs[ins.src]
        a = st.bufs[ins.ascale]
        cols = ins.cols
        if it.numerics == "fp32":
            y = p[..., :cols].astype(np.float32)
        else:
            w = it.image.tensors[f"{ins.w}.scale"][:cols]
            y = p[..., :cols].astype(np.float32) * a[..., None] * w
        st.bufs[ins.dst] = y
        return _sizes(y, p)

    @handles("v.bias")
    def _bias(it, st, ins):
        x = st.bufs[ins.src]
        y = x + it.image.tensors[ins.b]
        st.bufs[ins.dst] = y
        return _sizes(y, x)

    def binary(fn):
        def h(it, st, ins):
            a, b = st.bufs[ins.a], st.bufs[ins.b]
            y = fn(a, b).astype(np.float32, copy=False)
            st.bufs[ins.dst] = y
            return _sizes(y, a, b)

        return h

    handles("v.add")(binary(np.add))
    handles("v.mul")(binary(np.multiply))

    def unary(fn):
        def h(it, st, ins):
            x = st.bufs[ins.src]
            y = fn(x, ins)
            st.bufs[ins.dst] = y
            return _sizes(y, x)

        return h

    handles("v.relu")(unary(lambda x, ins: np.maximum(x, np.float32(0))))
    handles("v.silu")(unary(lambda x, ins: _torch(torch.nn.functional.silu, x)))
    handles("v.gelu")(unary(lambda x, ins: _torch(
        lambda t: torch.nn.functional.gelu(t, approximate="tanh" if ins.approx else "none"), x)))
    handles("v.softmax")(unary(lambda x, ins: _torch(lambda t: torch.softmax(t, dim=-1), x)))
    handles("v.mov")(unary(lambda x, ins: x.copy()))
    handles("v.scale")(unary(lambda x, ins: (x * np.float32(ins.s)).astype(np.float32)))
    handles("v.reshape")(unary(lambda x, ins: x.reshape(ins.shape)))
    handles("v.permute")(unary(lambda x, ins: np.ascontiguousarray(x.transpose(ins.dims))))

    @handles("v.layernorm")
    def _layernorm(it, st, ins):
        x = st.bufs[ins.src]
        w, b = it.image.tensors[ins.w], it.image.tensors[ins.b]
        y = _torch(lambda t: torch.nn.functional.layer_norm(
            t, (t.shape[-1],), torch.from_numpy(w), torch.from_numpy(b), ins.eps), x)
        st.bufs[ins.dst] = y
        return _sizes(y, x)

    @handles("v.rmsnorm")
    def _rmsnorm(it, st, ins):
        x = st.bufs[ins.src]
        w = it.image.tensors[ins.w]
        y = _torch(lambda t: torch.nn.functional.rms_norm(
            t, (t.shape[-1],), torch.from_numpy(w), ins.eps), x)
        st.bufs[ins.dst] = y
        return _sizes(y, x)

    handles("v.pow")(unary(_pow))
    handles("v.rsqrt")(unary(lambda x, ins: _torch(torch.rsqrt, x)))
    handles("v.tanh")(unary(lambda x, ins: np.tanh(x)))
    handles("v.mean")(unary(lambda x, ins: x.mean(axis=-1, keepdims=True, dtype=np.float32)))
    handles("v.slice")(unary(_slice))
    handles("v.expand")(unary(lambda x, ins: np.broadcast_to(x, ins.shape)))

    register_plain(handles, unary, binary)

    @handles("v.cat")
    def _cat(it, st, ins):
        a, b = st.bufs[ins.a], st.bufs[ins.b]
        y = np.concatenate((a, b), axis=ins.dim)
        st.bufs[ins.dst] = y
        return _sizes(y, a, b)

    @handles("v.const")
    def _const(it, st, ins):
        y = it.image.tensors[ins.t].astype(np.float32)
        st.bufs[ins.dst] = y
        return {"elements": int(y.size), "in_elements": 0, "tokens": 1}


# torch vector ops on fewer elements than this run on one thread: waking a sleeping OpenMP
# worker per op costs more than it saves (measured on 2 cores, median of 100: rms_norm of
# 128 x 576, 53-85 us on one thread against 500-690 us on two; silu of 128 x 1536, 241-246
# against 219-269 us). Both modes run the same handler, so plan == reference is untouched.
ONE_THREAD = 1 << 18


@contextmanager
def one_thread(elements: int = 0) -> Iterator[None]:
    """torch on one thread inside (when `elements` < ONE_THREAD), its thread count after."""
    threads = torch.get_num_threads()
    if elements >= ONE_THREAD or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torch(fn, x: np.ndarray) -> np.ndarray:
    with torch.no_grad(), one_thread(x.size):
        return fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _pow(x: np.ndarray, ins) -> np.ndarray:
    """x ** e; squares (RMSNorm, variance) as x * x, which is what torch computes for e = 2."""
    if ins.e == 2.0:
        return x * x
    return np.power(x, np.float32(ins.e), dtype=np.float32)


def _slice(x: np.ndarray, ins) -> np.ndarray:
    """A strided view (no copy needed functionally; the cost model charges the copy)."""
    index = [slice(None)] * x.ndim
    index[ins.dim] = slice(ins.start, ins.end, ins.step)
    return x[tuple(index)]


def register_plain(handles, unary, binary) -> None:
    """Plain-model and state-space ops (sigmoid, exp, division, scans, depthwise conv ...):
    float32 through torch, whose kernels the ONNX reference's operators match."""
    handles("v.sigmoid")(unary(lambda x, ins: _torch(torch.sigmoid, x)))
    handles("v.exp")(unary(lambda x, ins: _torch(torch.exp, x)))
    handles("v.log")(unary(lambda x, ins: _torch(torch.log, x)))
    handles("v.sqrt")(unary(lambda x, ins: _torch(torch.sqrt, x)))
    handles("v.abs")(unary(lambda x, ins: np.abs(x)))
    handles("v.softplus")(unary(lambda x, ins: _torch(lambda t: torch.nn.functional.softplus(
        t, beta=ins.beta, threshold=ins.threshold), x)))
    handles("v.div")(binary(np.divide))
    handles("v.max")(binary(np.maximum))
    handles("v.min")(binary(np.minimum))
    handles("v.cumsum")(unary(lambda x, ins: _torch(lambda t: torch.cumsum(t, dim=-1), x)))
    handles("v.sum")(unary(lambda x, ins: _torch(lambda t: t.sum(dim=-1, keepdim=True), x)))
    handles("v.amax")(unary(lambda x, ins: x.max(axis=-1, keepdims=True)))
    handles("v.logsoftmax")(unary(lambda x, ins: _torch(lambda t: torch.log_softmax(t, -1), x)))

    @handles("v.dwconv")
    def _dwconv(it, st, ins):
        x = st.bufs[ins.src]
        w, b = it.image.tensors[ins.w], it.image.tensors[ins.b]
        lead, (c, length) = x.shape[:-2], x.shape[-2:]
        y = _torch(lambda t: torch.nn.functional.conv1d(
            t.reshape(-1, c, length), torch.from_numpy(w).reshape(c, 1, ins.taps),
            torch.from_numpy(b), padding=ins.pad, groups=c), x)
        y = y.reshape(lead + y.shape[-2:])
        st.bufs[ins.dst] = y
        return _sizes(y, x)
