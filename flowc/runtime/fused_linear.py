"""Fused linear steps (flowc.runtime.fused): psum.clr, tile loop and v.deq as one product.

A canonical tile loop between the psum.clr and the v.deq of one accumulator is one exact
product of the activations with the loop's dense W^T, dequantised as the handlers' v.deq
does: `(x @ wt + 0.0) * a[:, None] * wscale`. Sibling loops (the same activations and row
scales, e.g. a layer's q, k and v) run as one product of their weights side by side.
LinearProduct picks the engine by size (every engine gives the same bits): ONNX Runtime's
MLAS on the weight prepacked once (flowc.runtime.mlas), oneDNN on reordered weights, or
torch on one thread for small products. tests/runtime/test_fused.py and test_mlas.py check
bit equality with the handlers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flowc.errors import ExecutionError
from flowc.runtime import mlas
from flowc.runtime.fused import Usage, exact_product, later_sizes, loud, vector_sizes
from flowc.runtime.gemm import EXACT_CHUNK
from flowc.runtime.vector import one_thread

SMALL_GEMM = 1 << 23  # rows x K x N at most this: one thread (see _small_product)
PACKED = torch.backends.mkldnn.is_available()  # linear products on prepacked weights
MLAS = mlas.available()  # linear products on ONNX Runtime's MLAS (LinearProduct)
MLAS_MIN = 1 << 22  # rows x K x N above this: MLAS (smaller: torch on one thread; ORT's
# per-call cost, ~50 us, is not won back: MLP 8 x 512 x 512 1.75 vs 1.57 ms a run at load 6.5)


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


def fuse_linear(it, items, steps, usage: Usage, keep: set, pending: dict,
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
