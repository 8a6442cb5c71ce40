"""Fused plan steps: the same bits as the handlers in fewer passes over memory.

Where a run spends its time at long sequences is not arithmetic but passes over large
arrays: at 2,048 tokens one SmolLM2 layer's attention scores are 9 x 2048 x 2048 float32
(151 MB), and the handlers walk them ~15 times (quantise, int32 GEMM, casts, scales,
softmax), each pass into a freshly mapped array. The plan (int8 numerics, exact GEMMs on
float32 BLAS, intermediates not kept) replaces three patterns:

- **v.quant** in torch: max|x| as max(amax, -amin), then divide, round, clamp in place; the
  int8 values stay float32 (exactly the integers) when every reader is a fused GEMM.
- **psum.clr, tile loop, v.deq** on one accumulator: the exact product (float32 GEMMs, K
  chunks of <= 1024 exact; two chunks' float32 sum is the one rounding of the exact sum the
  int32 -> float32 cast makes; more chunks sum in float64, exact), dequantised: on ONNX
  Runtime's MLAS (flowc.runtime.mlas) or torch, whichever LinearProduct picks by size.
- **attention**: mm.act, then row-wise vector ops (v.scale, v.add / v.mul with an operand
  from before, v.softmax), then the mm.act of that result: computed per block of heads
  (or rows) small enough to stay in the last-level cache, intermediates never materialised.
Every step is elementwise the handlers' float32 operation in the handlers' order, and the
integer GEMMs are exact in any blocking, so results are identical (integer sums come out as
+0.0, never -0.0, as the int32 cast gives). The replaced steps that follow the fused one
only hand back the event sizes the handlers would have returned (precomputed by it), so the
accounting sees the same events. The linear steps and their engines live in
flowc.runtime.fused_linear, attention's chain in flowc.runtime.fused_attention.
tests/runtime/test_fused.py checks bit equality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from flowc.errors import ExecutionError
from flowc.runtime.gemm import EXACT_CHUNK
from flowc.runtime.vector import TINY, nan_to_zero

QMAX = 127
SMALL = 1 << 18  # v.quant below this many elements: numpy beats torch's call costs
NORMAL, BIG = 2.0 ** -100, 2.0 ** 120  # max|x| in this range: the quantiser's clip is moot


def quantise(x: torch.Tensor, dim: int, inplace: bool = False,
             nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """vector.quantise_per_token along `dim`, bit for bit, values as float32 integers
    (`inplace`: into x itself). The clip to +-127 changes nothing when every max|x| is a
    finite normal float (|x| / fl(max|x| / 127) <= 127 (1 + 2**-23) rounds to <= 127), so it
    runs only when one is not (zero rows take scale 1: their values are 0)."""
    # max|x|; `nonnegative` (a softmax's output: exp / sum, never below +0.0): amax alone
    amax = x.amax(dim) if nonnegative else torch.maximum(x.amax(dim), x.amin(dim).neg_())
    scale = torch.where(amax > 0, (amax / QMAX).clamp_min_(float(TINY)), 1.0)  # as the handler
    q = x.div_(scale.unsqueeze(dim)) if inplace else x / scale.unsqueeze(dim)
    q.round_()
    a = amax.numpy()
    if not np.isfinite(a).all():  # NaN quotients quantise to 0 (vector.quantise_per_token)
        q.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
    nonzero = a[a > 0]
    if nonzero.size and not (nonzero.min() >= NORMAL and nonzero.max() <= BIG):
        q.clamp_(-QMAX, QMAX)
    return q, scale


def exact_product(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None,
                  plus_zero: bool = True) -> torch.Tensor:
    """float32 x @ w (batched) of integer-valued operands with |values| <= 127, rounded once
    from the exact integer sum (as int32 -> float32 does); `plus_zero`: zero sums as +0.0
    like the integer sum (a float sum of -0.0 products is -0.0), else either sign. `out`:
    where to write it (K <= EXACT_CHUNK)."""
    k = x.shape[-1]
    if k <= EXACT_CHUNK and out is not None:
        y = torch.matmul(x, w, out=out)
    elif k <= 2 * EXACT_CHUNK:
        y = torch.matmul(x[..., :EXACT_CHUNK], w[..., :EXACT_CHUNK, :])
        if k > EXACT_CHUNK:  # fl(exact + exact): one rounding of the exact sum
            y.add_(torch.matmul(x[..., EXACT_CHUNK:], w[..., EXACT_CHUNK:, :]))
    else:
        acc = None
        for k0 in range(0, k, EXACT_CHUNK):
            part = torch.matmul(x[..., k0:k0 + EXACT_CHUNK], w[..., k0:k0 + EXACT_CHUNK, :])
            acc = part.double() if acc is None else acc.add_(part)  # float64: exact
        y = acc.float()
    return y.add_(0.0) if plus_zero else y  # -0.0 + 0.0 = +0.0, other values unchanged


def vector_sizes(shape: tuple, in_elements: int) -> dict:
    """The sizes vector._sizes returns for an output of `shape`."""
    return {"elements": math.prod(shape), "in_elements": in_elements,
            "tokens": math.prod(shape[:-1])}


@dataclass
class Usage:
    """Per buffer: indices of the plan items naming it, and of those writing it."""

    named: dict[str, list[int]] = field(default_factory=dict)
    written: dict[str, list[int]] = field(default_factory=dict)

    def before(self, name: str, i: int) -> bool:
        """Whether every write of `name` (none: a program input) comes before item i."""
        return all(w < i for w in self.written.get(name, []))

    @classmethod
    def of(cls, items: Sequence) -> Usage:
        from flowc.runtime.plan import buffers_of

        u = cls()
        for i, item in enumerate(items):
            for name in buffers_of(item):
                u.named.setdefault(name, []).append(i)
            for name in writes_of(item):
                u.written.setdefault(name, []).append(i)
        return u


def writes_of(item) -> set[str]:
    body = getattr(item, "body", None)
    if body is not None:
        return set().union(*(writes_of(i) for i in body))
    out = {item.dst} if hasattr(item, "dst") else set()
    if item.mnemonic == "v.quant":
        out.add(item.scale)
    return out


def fuse(plan, items: Sequence, steps: list) -> int:
    """Replace steps of `steps` (one per item) by fused ones; returns how many were fused."""
    it = plan.interp
    usage, pending = Usage.of(items), {}
    keep = {o.buffer for o in it.image.outputs}
    from flowc.runtime.fused_attention import fuse_attention
    from flowc.runtime.fused_linear import fuse_linear

    linear = fuse_linear(it, items, steps, usage, keep, pending, plan.products) \
        if it.gemm_backend() == "float32-chunks" else set()  # int_mm hosts: int32 GEMMs
    plan.fused_loops = linear
    attention = fuse_attention(it, items, steps, usage, keep, pending)
    _fuse_quant(items, steps, usage, linear)
    return len(linear) + attention


def loud(run: Callable, mnemonic: str) -> Callable:
    """A fused step raising the handlers' error for a missing buffer (plan._bound's)."""

    def guarded(state) -> dict:
        try:
            return run(state)
        except KeyError as exc:
            raise ExecutionError(f"{mnemonic}: buffer or tensor {exc} not defined") from exc

    return guarded


def later_sizes(pending: dict, index: int, what: str) -> Callable:
    """A replaced step: the sizes its fused step computed for it."""

    def run(state) -> dict:
        try:
            return pending.pop(index)
        except KeyError:
            raise ExecutionError(f"{what}: its fused step did not run") from None

    return run


# -- v.quant --------------------------------------------------------------------------------------
def _fuse_quant(items, steps, usage: Usage, linear: set[int]) -> None:
    """Every v.quant in torch; float32 values when only fused GEMMs and psum.clr read them."""
    for i, item in enumerate(items):
        if getattr(item, "mnemonic", "") != "v.quant":
            continue
        readers = [r for r in usage.named.get(item.dst, []) if r != i]
        as_float = all(r in linear or _clr_fused(items, r, linear) for r in readers)
        steps[i].run = loud(_quant_step(item, steps[i].run, as_float), "v.quant")


def _clr_fused(items, r: int, linear: set[int]) -> bool:
    """Whether item r is a psum.clr of a fused linear step (it then reads only a shape)."""
    if getattr(items[r], "mnemonic", "") != "psum.clr":
        return False
    return any(items[j].body[4].dst == items[r].dst for j in linear)


def _quant_step(ins, handler_run: Callable, as_float: bool) -> Callable:
    def run(state) -> dict:
        x = state.bufs[ins.src]
        if x.dtype != np.float32:  # the handler's numpy dtype rules, unchanged
            return handler_run(state)
        if x.size < SMALL and not as_float:  # numpy's per-call cost is the lower one here
            return handler_run(state)
        if x.size < SMALL:
            q, s = quantise_np(x)
            state.bufs[ins.dst], state.bufs[ins.scale] = q, s
            return vector_sizes(x.shape, x.size)
        q, s = quantise(torch.from_numpy(np.ascontiguousarray(x)), -1)
        state.bufs[ins.dst] = q.numpy() if as_float else q.to(torch.int8).numpy()
        state.bufs[ins.scale] = s.numpy()
        return vector_sizes(x.shape, x.size)

    return run


def quantise_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`quantise` in numpy for small float32 x (torch's per-call costs dominate there): the
    handler's scale and values as float32 in four passes instead of eight (no |x| copy, no
    int8 round trip, the clip only when it can matter)."""
    amax = np.maximum(x.max(-1), -x.min(-1))
    scale = np.where(amax > 0, np.maximum(amax / QMAX, TINY), 1.0).astype(np.float32)
    q = np.divide(x, scale[..., None])
    np.rint(q, out=q)
    if not np.isfinite(amax).all():  # NaN quotients quantise to 0 (vector.quantise_per_token)
        q = nan_to_zero(q)
    nonzero = amax[amax > 0]
    if nonzero.size and not (nonzero.min() >= NORMAL and nonzero.max() <= BIG):
        np.clip(q, -QMAX, QMAX, out=q)
    return q, scale
