"""Fused attention (flowc.runtime.fused): mm.act, row-wise vector ops, mm.act in one step.

At long sequences the handlers walk the attention scores (9 x 2048 x 2048 float32 for one
SmolLM2 layer at 2,048 tokens) ~15 times, each pass into a freshly mapped array. Here the
chain runs per block of heads (or rows) small enough to stay in the last-level cache, and
the scores are never materialised; each step is the handlers' float32 operation in their
order and the integer GEMMs are exact in any blocking, so the bits are the handlers'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from flowc.runtime.fused import Usage, exact_product, later_sizes, loud, quantise, vector_sizes

BLOCK_ELEMENTS = 1 << 22  # one attention block: 16 MB of float32 (L3-resident here: 32 MB)
# attention scores below this many elements: the handlers (SmolLM2, 128 tokens: 79 against
# 119 ms of fused steps over 30 layers; 512 tokens: 1,559 against 948 ms)
SMALL_ATTENTION = 1 << 20


@dataclass
class Chain:
    """mm.act, row-wise ops, mm.act: item indices and the operands from outside the chain."""

    first: int
    ops: list[int]  # row-wise ops' indices, in order
    last: int
    other: dict[int, tuple[str, str]]  # op index -> (buffer it reads, const tensor or "")


def find_chain(items, i: int, usage: Usage, keep: set) -> Chain | None:
    """The attention chain starting at the mm.act items[i], or None."""
    cur, ops, other, consts, chain_bufs = items[i].dst, [], {}, {}, []
    for j in range(i + 1, len(items)):
        ins = items[j]
        mn = getattr(ins, "mnemonic", "")
        if mn == "layer":
            continue
        if mn == "v.const":
            consts[ins.dst] = ins.t
            continue
        if mn == "mm.act" and ins.a == cur and ins.b != cur:
            chain_bufs.append(cur)
            if not usage.before(ins.b, i) or ins.b in consts:
                return None
            break
        if mn in ("v.scale", "v.softmax") and ins.src == cur:
            pass
        elif mn in ("v.add", "v.mul") and (ins.a == cur) != (ins.b == cur):
            o = ins.b if ins.a == cur else ins.a
            if o in consts:
                other[j] = (o, consts[o])
            elif usage.before(o, i):
                other[j] = (o, "")
            else:
                return None
        else:
            return None
        ops.append(j)
        chain_bufs.append(cur)
        cur = ins.dst
    else:
        return None
    last = j
    for name in chain_bufs:  # each intermediate: written once, read once, not an output
        if name in keep or len(usage.named.get(name, [])) != 2:
            return None
    if usage.named.get(items[last].dst, [last])[0] != last:
        return None
    return Chain(i, ops, last, other)


def fuse_attention(it, items, steps, usage: Usage, keep: set, pending: dict) -> int:
    n = 0
    for i, item in enumerate(items):
        if getattr(item, "mnemonic", "") != "mm.act":
            continue
        chain = find_chain(items, i, usage, keep)
        if chain is None:
            continue
        steps[i].run = loud(_attention_step(it, items, chain, pending), "mm.act")
        for j in chain.ops + [chain.last]:
            steps[j].run = later_sizes(pending, j, f"{items[j].mnemonic} {items[j].dst}")
        n += 1
    return n


def _attention_step(it, items, chain: Chain, pending: dict) -> Callable:
    from flowc.runtime.interpreter import HANDLERS, State

    first, last = items[chain.first], items[chain.last]
    ops = [items[j] for j in chain.ops]
    tensors = it.image.tensors

    def operand(state, j: int) -> np.ndarray:
        """An outside operand; a v.const's (it runs later in program order) from the image,
        as the v.const handler makes it."""
        buf, const = chain.other[j]
        return tensors[const].astype(np.float32) if const else state.bufs[buf]

    def by_handlers(state) -> dict:
        """The chain through the handlers, here at once (operands not float32, or shapes the
        blocked path does not take): the specification itself."""
        tmp = State(dict(state.bufs), state.layer, state.macros)
        for j in chain.other:
            tmp.bufs[chain.other[j][0]] = operand(state, j)
        sizes = HANDLERS["mm.act"](it, tmp, first)
        for j in chain.ops + [chain.last]:
            pending[j] = HANDLERS[items[j].mnemonic](it, tmp, items[j])
        state.bufs[last.dst] = tmp.bufs[last.dst]
        return sizes

    def run(state) -> dict:
        a, b, v = state.bufs[first.a], state.bufs[first.b], state.bufs[last.b]
        others = {j: operand(state, j) for j in chain.other}
        arrays = [a, b, v, *others.values()]
        if any(x.dtype != np.float32 for x in arrays) or min(x.ndim for x in (a, b, v)) < 2:
            return by_handlers(state)
        out = _attention(it, a, b, v, ops, chain, others, pending)
        if out is None:
            return by_handlers(state)
        state.bufs[last.dst] = out
        return pending.pop(chain.first)

    return run


def _t(x: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def _attention(it, a, b, v, ops, chain: Chain, others: dict, pending: dict) -> np.ndarray | None:
    """The chain, blocked over heads (and rows); None when shapes need the handlers."""
    m, k, n, dv = a.shape[-2], a.shape[-1], b.shape[-1], v.shape[-1]
    if b.shape[-2] != k or v.shape[-2] != n or a.size // max(1, k) * n < SMALL_ATTENTION:
        return None  # shapes the blocks do not take, or small: numpy's handlers are faster
    ta, tb, tv = _t(a), _t(b), _t(v)
    try:
        batch = torch.broadcast_shapes(ta.shape[:-2], tb.shape[:-2])
        if torch.broadcast_shapes(batch, tv.shape[:-2]) != batch:
            return None
        s_shape = batch + (m, n)
        ext = {}
        for j, o in others.items():
            if torch.broadcast_shapes(s_shape, o.shape) != s_shape:
                return None
            ext[j] = _t(o).broadcast_to(s_shape).reshape(-1, m, n)
    except RuntimeError:
        return None
    qa, sa = quantise(ta, -1)
    qb, sb = quantise(tb, -2)
    qv, sv = quantise(tv, -2)
    nb = math.prod(batch)

    def flat(x: torch.Tensor, tail: tuple) -> torch.Tensor:
        return x.broadcast_to(batch + tail).reshape((nb,) + tail)

    qa, sa, qb, sb = flat(qa, (m, k)), flat(sa, (m,)), flat(qb, (k, n)), flat(sb, (n,))
    qv, sv = flat(qv, (n, dv)), flat(sv, (dv,))
    out = torch.empty((nb, m, dv), dtype=torch.float32)
    heads = max(1, BLOCK_ELEMENTS // max(1, m * n))
    rows = m if heads > 1 or m * n <= BLOCK_ELEMENTS else max(1, BLOCK_ELEMENTS // max(1, n))
    scratch = torch.empty((2, min(nb, heads) * min(m, rows) * n), dtype=torch.float32)
    # softmax maps -0.0 and +0.0 alike (exp(x - max)): before one, a zero's sign is moot
    softmax = any(ins.mnemonic == "v.softmax" for ins in ops)
    last_softmax = bool(ops) and ops[-1].mnemonic == "v.softmax"
    for h0 in range(0, nb, heads):
        h = slice(h0, min(nb, h0 + heads))
        for r0 in range(0, m, rows):
            r = slice(r0, min(m, r0 + rows))
            shape = (h.stop - h.start, r.stop - r.start, n)
            bufs = [b_[: math.prod(shape)].view(shape) for b_ in scratch]
            s = exact_product(qa[h, r], qb[h], out=bufs[0], plus_zero=not softmax)
            s.mul_(sa[h, r, None]).mul_(sb[h, None, :])
            for ins, j in zip(ops, chain.ops, strict=True):
                if ins.mnemonic == "v.scale":
                    s.mul_(float(np.float32(ins.s)))
                elif ins.mnemonic == "v.softmax":  # torch.softmax's kernel, into scratch
                    target = bufs[1] if s.data_ptr() == bufs[0].data_ptr() else bufs[0]
                    s = torch.ops.aten._softmax.out(s, -1, False, out=target)
                elif ins.mnemonic == "v.add":
                    s.add_(ext[j][h, r])
                else:
                    s.mul_(ext[j][h, r])
            qp, sp = quantise(s, -1, inplace=True, nonnegative=last_softmax)
            y = exact_product(qp, qv[h])
            out[h, r] = y.mul_(sp[..., None]).mul_(sv[h, None, :])
    size = nb * m * n
    pending[chain.first] = it.act_gemm_sizes(tuple(a.shape), tuple(b.shape), tuple(s_shape))
    for j in chain.ops:
        extra = others[j].size if j in others else 0
        pending[j] = vector_sizes(tuple(s_shape), size + extra)
    pending[chain.last] = it.act_gemm_sizes(tuple(s_shape), tuple(v.shape),
                                            tuple(batch) + (m, dv))
    return out.reshape(tuple(batch) + (m, dv)).numpy()
