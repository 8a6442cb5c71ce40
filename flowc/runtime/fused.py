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
accounting sees the same events. Attention's chain lives in flowc.runtime.fused_attention.
tests/runtime/test_fused.py checks bit equality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from flowc.errors import ExecutionError
from flowc.runtime import mlas
from flowc.runtime.gemm import EXACT_CHUNK
from flowc.runtime.vector import TINY, nan_to_zero, one_thread

QMAX = 127
SMALL_GEMM = 1 << 23  # rows x K x N at most this: one thread (see _small_product)
PACKED = torch.backends.mkldnn.is_available()  # linear products on prepacked weights
SMALL = 1 << 18  # v.quant below this many elements: numpy beats torch's call costs
MLAS = mlas.available()  # linear products on ONNX Runtime's MLAS (LinearProduct)
MLAS_MIN = 1 << 22  # rows x K x N above this: MLAS (smaller: torch on one thread; ORT's
# per-call cost, ~50 us, is not won back: MLP 8 x 512 x 512 1.75 vs 1.57 ms a run at load 6.5)
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
    linear = _fuse_linear(it, items, steps, usage, keep, pending, plan.products) \
        if it.gemm_backend() == "float32-chunks" else set()  # int_mm hosts: int32 GEMMs
    plan.fused_loops = linear
    from flowc.runtime.fused_attention import fuse_attention

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


# -- linear layers --------------------------------------------------------------------------------
@dataclass
class _Linear:
    """One psum.clr + canonical loop + v.deq on one accumulator (items i, j, d)."""

    i: int
    j: int
    d: int
    clr: object
    deq: object
    step: object
    wscale: np.ndarray

    @property
    def src(self) -> str:
        return self.step.item.body[1].src


def _fuse_linear(it, items, steps, usage: Usage, keep: set, pending: dict,
                 products: list) -> set[int]:
    """psum.clr + canonical loop + v.deq on one accumulator -> one step at the loop; sibling
    loops (the same activations and scales, e.g. a layer's q, k and v projections) share
    one product of their weights side by side (`_siblings`). Each product goes into
    `products` with its activation buffer and column blocks (None: one member)."""
    found = []
    for j, step in enumerate(steps):
        if step.nm is None:
            continue
        acc = step.item.body[4].dst
        idx = usage.named.get(acc, [])
        if len(idx) != 3 or idx[1] != j or acc in keep:
            continue
        i, d = idx[0], idx[2]
        clr, deq = items[i], items[d]
        if getattr(clr, "mnemonic", "") != "psum.clr" or getattr(deq, "mnemonic", "") != "v.deq" \
                or deq.src != acc or not usage.before(deq.ascale, j) \
                or usage.named.get(deq.dst, [0])[0] != d or len(usage.written[deq.dst]) != 1:
            continue
        wscale = it.image.tensors.get(f"{deq.w}.scale")
        if wscale is None or wscale.dtype != np.float32 or wscale.ndim != 1:
            continue
        found.append(_Linear(i, j, d, clr, deq, step, wscale))
    for group in _siblings(it, found, usage):
        product = _group_product(it, group)
        bounds = [sum(g.deq.cols for g in group[:r]) for r in range(len(group))]  # block starts
        products.append((group[0].src, product, bounds if len(group) > 1 else None))
        shared: dict = {}  # later siblings' outputs, computed by the first one
        for rank, lin in enumerate(group):
            shape: dict = {}  # the accumulator's leading shape, read at psum.clr (as the handler)
            steps[lin.i].run = loud(_clr_sizes(lin.clr, shape), "psum.clr")
            steps[lin.j].run = loud(_linear_step(it, lin, group, rank, product, bounds, shared,
                                                 pending, shape), "ld.act")
            steps[lin.d].run = later_sizes(pending, lin.d, f"v.deq {lin.deq.dst}")
    return {lin.j for lin in found}


def _siblings(it, found: list[_Linear], usage: Usage) -> list[list[_Linear]]:
    """`found` in groups whose products can run as one at the first member: the same
    activation buffer and row scales, both written before that first loop (so nothing in
    between changes them), and weights of the same K. Each output column's sum and
    dequantisation is the same arithmetic whichever weights stand beside it, so the bits
    do not change; the gain is fewer, larger products (one call, one conversion of the
    activations; SmolLM2 at 128 tokens: q, k, v and gate, up as two products, 3.8 against
    4.6 ms a layer, median of 40 alternating)."""
    groups: list[list[_Linear]] = []
    open_: dict[tuple, list[_Linear]] = {}  # the group a key's next member may join
    for lin in found:
        k_max = it.dense_weight(lin.step.item.body[0].w, *lin.step.nm, float_chunks=True).shape[0]
        key = (lin.src, lin.deq.ascale, k_max)
        group = open_.get(key)
        if group and usage.before(lin.src, group[0].j) and usage.before(lin.deq.ascale, group[0].j):
            group.append(lin)
        else:  # the first of its key, or its buffers were written since that group began
            open_[key] = [lin]
            groups.append(open_[key])
    return groups


def _group_product(it, group: list[_Linear]) -> LinearProduct:
    """One LinearProduct of the group's W^T side by side (its columns: each member's
    v.deq columns) and their scales."""
    parts, scales = [], []
    for lin in group:
        ld_tile = lin.step.item.body[0]
        wt = it.dense_weight(ld_tile.w, *lin.step.nm, float_chunks=True)
        cols, n_pad = lin.deq.cols, wt.shape[1]
        if lin.clr.cols != n_pad or cols > n_pad:
            raise ExecutionError(f"v.deq {lin.deq.dst}: {cols} columns of a {lin.clr.cols}-column "
                                 f"accumulator, @{ld_tile.w} has {n_pad}")
        parts.append(wt[:, :cols])
        scales.append(lin.wscale[:cols])
    for lin in group:  # the product holds the weights from here on (and may shrink them)
        it.forget_dense(lin.step.item.body[0].w, *lin.step.nm, float_chunks=True)
    if len(group) == 1:
        return LinearProduct(torch.from_numpy(parts[0]), np.ascontiguousarray(scales[0]))
    return LinearProduct(torch.from_numpy(np.concatenate(parts, axis=1)),
                         np.concatenate(scales).astype(np.float32))


def _clr_sizes(ins, shape: dict) -> Callable:
    def run(state) -> dict:
        shape["lead"] = lead = state.bufs[ins.like].shape[:-1]
        return {"elements": math.prod(lead) * ins.cols}

    return run


def _linear_step(it, lin: _Linear, group: list[_Linear], rank: int, product: LinearProduct,
                 bounds: list[int], shared: dict, pending: dict, shape: dict) -> Callable:
    """Member `rank` of `group`: the first computes every member's output (the others'
    wait in `shared` for their own loop, where they enter the buffers as the handlers'
    v.deq would have put them)."""
    ld_tile = lin.step.item.body[0]
    macro, w, src, deq, clr = ld_tile.macro, ld_tile.w, lin.src, lin.deq, lin.clr
    keep_n, group_m = lin.step.nm
    k_max = product.wt.shape[0]
    cols = deq.cols
    P, R = it.geometry["subarrays"], it.geometry["rows"]
    sizes = {"keep_n": keep_n, "group_m": group_m, "k_pass": P * R * group_m // keep_n}

    def run(state) -> dict:
        mac = state.macro(macro)
        mac.weight, mac.src = w, src
        x = state.bufs[src]
        k = x.shape[-1]
        if k > k_max:
            raise ExecutionError(f"ld.act: {src} has {k} inputs, the tiles of {w} cover {k_max}")
        lead = x.shape[:-1]
        if rank == 0:
            a = state.bufs[deq.ascale]
            if a.dtype != np.float32:
                raise ExecutionError(f"v.deq {deq.dst}: scale {deq.ascale} is {a.dtype}, "
                                     "not float32")
            xk = np.ascontiguousarray(x, np.float32).reshape(-1, k)
            ak = np.ascontiguousarray(a).reshape(-1)
            if len(group) == 1:
                y = product(xk, ak)
            else:
                outs = product(xk, ak, bounds)
                y = outs[0]
                shared.clear()
                shared.update({g.j: out for g, out in zip(group[1:], outs[1:], strict=True)})
        else:
            try:
                y = shared.pop(lin.j)
            except KeyError:
                raise ExecutionError(f"ld.act: the product of {src} with @{w} is computed "
                                     f"with @{group[0].step.item.body[0].w}'s, which did not "
                                     "run") from None
        acc_lead = shape.pop("lead")  # the handlers' accumulator is shaped like `like`
        if math.prod(acc_lead) != y.shape[0]:
            raise ExecutionError(f"acc: {src} has {y.shape[0]} rows, {clr.dst} "
                                 f"{math.prod(acc_lead)}")
        state.bufs[deq.dst] = y.reshape(acc_lead + (cols,))
        pending[lin.d] = vector_sizes(acc_lead + (cols,), math.prod(acc_lead) * clr.cols)
        return {"tokens": math.prod(lead), **sizes}

    return run


class LinearProduct:
    """The dequantised exact product `(x @ wt[:k] + 0.0) * a[:, None] * wscale` of one weight,
    on the engine measured fastest for its size (bench/gemm_engines.py; every engine gives
    the same bits): ONNX Runtime's MLAS on the weight prepacked once (flowc.runtime.mlas)
    above MLAS_MIN multiply-adds, from a plan's second run on (building the sessions costs
    ~2 s on SmolLM2, two 128-token runs' worth of gain); below that, or before, or without
    onnxruntime, torch: one thread for small products, oneDNN on reordered weights else."""

    def __init__(self, wt: torch.Tensor, wscale: np.ndarray) -> None:
        self.wt, self.wscale = wt, wscale
        self.wscale_t = torch.from_numpy(wscale)
        self.packed = _packed_product(wt) if PACKED else None
        self.mlas: dict[int, Callable | None] = {}  # K -> session (None: not (yet) built)
        self.failed: set[int] = set()  # K whose session onnxruntime refused: torch for good

    def __call__(self, x: np.ndarray, a: np.ndarray, bounds: Sequence[int] | None = None):
        """The product [rows, N]; with `bounds` (each column block's first column, 0 first),
        the list of its column blocks, each its own C-contiguous array."""
        rows, k = x.shape
        work = rows * k * self.wt.shape[1]
        if work > MLAS_MIN and MLAS and k <= mlas.max_k():
            session = self._session(k, work)
            if session is not None:
                return session(x, a, bounds)
        wt = self.wt if self.wt.dtype == torch.float32 else self.wt.float()  # (see _session)
        if k <= EXACT_CHUNK and work <= SMALL_GEMM:
            y = _small_product(x, wt[:k], a, self.wscale)
        else:
            xt = torch.from_numpy(x)
            y = self.packed(xt) if self.packed is not None else exact_product(xt, wt[:k])
            y = y.mul_(torch.from_numpy(a).reshape(-1, 1)).mul_(self.wscale_t).numpy()
        return y if bounds is None else mlas.column_blocks(y, bounds)

    def _session(self, k: int, work: int) -> Callable | None:
        """The session for K = k, built on the second call; small products get one thread
        (a second one must be woken per call, which on a busy 2-core host costs more than
        it saves: 8 x 512 x 512 took 3.5 against 1.2 ms, median, at load 7)."""
        if k not in self.mlas:  # the first run: torch (see the class docstring)
            self.mlas[k] = None
            return None
        if self.mlas[k] is None and k not in self.failed:
            threads = 1 if work <= SMALL_GEMM else torch.get_num_threads()
            try:
                wt = self.wt if self.wt.dtype == torch.float32 else self.wt.float()
                self.mlas[k] = mlas.linear_session(wt[:k].numpy(), self.wscale, threads)
            except RuntimeError:  # onnxruntime refused it: torch gives the same bits
                self.failed.add(k)
            else:  # torch's products are now a fallback (another K, fewer rows): its copy
                # of the weight shrinks to int8, a quarter (SmolLM2: ~400 MB less after a
                # plan's second run), made float32 again per call if ever used
                self.wt, self.packed = self.wt.to(torch.int8), None
        return self.mlas[k]


def _packed_product(wt: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """exact_product(x, wt[:k]) through oneDNN's linear on weights reordered once per K chunk
    (as ONNX Runtime prepacks its weights): BLAS repacks W on every call otherwise (measured,
    32 x 576 x 49,152: 53 ms against 21 ms packed; 128 x 576 x 1,536: 4.4 against 3.4 ms).
    The reorder happens on the second call (a plan run more than once), not the first.
    Each chunk's sum is exact, so the kernel's order cannot change a bit."""
    chunks: dict[int, list | bool | None] = {}  # K -> reordered chunks (False: not yet)

    def product(x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        if k not in chunks:  # a first run multiplies unpacked: reordering every weight
            chunks[k] = False  # costs ~1 s on SmolLM2, one 128-token run's worth, so a
            return exact_product(x, wt[:k])  # single flowrun call would only lose by it
        if chunks[k] is False:
            try:
                chunks[k] = [
                    (k0, min(k, k0 + EXACT_CHUNK), torch.ops.mkldnn._reorder_linear_weight(
                        wt[k0:min(k, k0 + EXACT_CHUNK)].t().contiguous(), None))
                    for k0 in range(0, k, EXACT_CHUNK)]
            except RuntimeError:  # a torch build whose oneDNN refuses: plain BLAS
                chunks[k] = None
        parts = chunks[k]
        if not parts:
            return exact_product(x, wt[:k])
        acc = None
        for k0, k1, w in parts:
            xc = x if k1 - k0 == k else x[:, k0:k1].contiguous()
            y = torch.ops.mkldnn._linear_pointwise(xc, w, None, "none", [], "")
            if acc is None:
                acc = y
            elif len(parts) == 2:  # fl(exact + exact): one rounding of the exact sum
                acc.add_(y)
            else:
                acc = (acc if acc.dtype == torch.float64 else acc.double()).add_(y)
        return acc.float().add_(0.0)  # -0.0 -> +0.0 as the integer sum gives

    return product


def _small_product(x: np.ndarray, wt: torch.Tensor, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A small exact product (one K chunk) on one torch thread, dequantised in place: a
    2-thread GEMM wakes a sleeping OpenMP worker per call (8x784x512: 305 us on 2 threads,
    130-160 us on one; numpy's BLAS is faster still but its spinning threads stalled every
    other pool: 39 ms a run of the MLP)."""
    with one_thread():
        y = torch.matmul(torch.from_numpy(np.ascontiguousarray(x, np.float32)), wt).numpy()
    np.add(y, np.float32(0.0), out=y)  # zero sums as +0.0, as the integer sum gives
    y *= a.reshape(-1, 1)
    y *= w
    return y


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
