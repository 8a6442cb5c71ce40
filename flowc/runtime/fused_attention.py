"""Fused attention (flowc.runtime.fused): mm.act, row-wise vector ops, mm.act in one step.

At long sequences the handlers walk the attention scores (9 x 2048 x 2048 float32 for one
SmolLM2 layer at 2,048 tokens) ~15 times, each pass into a freshly mapped array. Here the
chain runs per block of heads (or rows) small enough to stay in the last-level cache, and
the scores are never materialised; each step is the handlers' float32 operation in their
order and the integer GEMMs are exact in any blocking, so the bits are the handlers'.
Where a mask provably zeroes columns (masked_extents), a block computes only its rows' live
prefix, multiple of PREFIX columns wide; a leading power-of-two v.scale multiplies the column
scales instead of the scores where that is exact (folded_scales); the mask is added only
past the columns where it is +-0.0.
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
# rows per block when masked columns are skipped: at least this many, else as many as fit a
# block with every head (each op on a block costs a thread wake-up: SmolLM2 at 512 tokens
# took 21 against 14 ms a layer in blocks of 128 rows, against one block of all 512)
SKIP_ROWS = 128
LIVE_GAP = 2.0 ** 20  # mask values this far below their row's top count as live, always
EXP_ZERO = 200.0  # exp(-x) is exactly +0.0 in float32 for x above ~104: the margin kept
ROUNDING = 2.4e-7  # relative error of the <= 4 float32 roundings between mask and softmax


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
                other[j] = (o, const_source(items, usage, o))
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


def const_source(items, usage: Usage, name: str) -> str:
    """The image tensor whose values buffer `name` holds when its one write in the program is
    a v.const (e.g. a causal mask made once and read by every layer), else "". Its mask rows
    are then computed once per image (mask_rows), not once per layer and run."""
    writes = usage.written.get(name, [])
    if len(writes) != 1 or getattr(items[writes[0]], "mnemonic", "") != "v.const":
        return ""
    return items[writes[0]].t


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
        """An outside operand; a v.const's (run later in program order, or earlier as the
        buffer's one write: const_source) from the image, as the v.const handler makes it
        (without its copy when the tensor is float32: the chain only reads it, and a causal
        mask at 2,048 tokens is 16 MB a layer)."""
        buf, const = chain.other[j]
        return np.asarray(tensors[const], dtype=np.float32) if const else state.bufs[buf]

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
    try:  # numpy's shape rule (torch.broadcast_shapes imports sympy: ~1 s on first use)
        batch = tuple(np.broadcast_shapes(ta.shape[:-2], tb.shape[:-2]))
        if tuple(np.broadcast_shapes(batch, tv.shape[:-2])) != batch:
            return None
        s_shape = batch + (m, n)
        ext = {}
        for j, o in others.items():
            if tuple(np.broadcast_shapes(s_shape, o.shape)) != s_shape:
                return None
            ext[j] = _t(o).broadcast_to(s_shape).reshape(-1, m, n)
    except (ValueError, RuntimeError):  # shapes that do not broadcast
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
    # softmax maps -0.0 and +0.0 alike (exp(x - max)): before one, a zero's sign is moot
    softmax = any(ins.mnemonic == "v.softmax" for ins in ops)
    last_softmax = bool(ops) and ops[-1].mnemonic == "v.softmax"
    extents = masked_extents(it, ops, chain, others, batch, (m, n, k), sa, sb)
    folded = folded_scales(ops, sa, sb, k)
    sbf = sb
    for ins in ops[:folded]:  # exact: a power of two, every product a normal float
        sbf = sbf * float(np.float32(ins.s))
    if extents is not None:  # row blocks of every head, so that each skips what its rows mask
        rows = min(m, max(SKIP_ROWS, BLOCK_ELEMENTS // max(1, nb * n)))
        heads = max(1, BLOCK_ELEMENTS // max(1, rows * n))
    else:
        heads = max(1, BLOCK_ELEMENTS // max(1, m * n))
        rows = m if heads > 1 or m * n <= BLOCK_ELEMENTS else max(1, BLOCK_ELEMENTS // max(1, n))
    scratch = torch.empty((2, min(nb, heads) * min(m, rows) * n), dtype=torch.float32)
    short = extents is not None and short_rows_exact()
    for h0 in range(0, nb, heads):
        h = slice(h0, min(nb, h0 + heads))
        for r0 in range(0, m, rows):
            r = slice(r0, min(m, r0 + rows))
            c = n if extents is None else int(extents.extent[h, r].max())
            z = 0 if extents is None else min(c, int(extents.zeros[h, r].min()))
            # columns >= c: every row's score there is far below its max (masked_extents)
            if short:  # rows of c columns (softmax of the live prefix: short_rows_exact)
                c = min(n, -(-c // PREFIX) * PREFIX)
            shape = (h.stop - h.start, r.stop - r.start, c if short else n)
            bufs = [b_[: math.prod(shape)].view(shape) for b_ in scratch]
            if c == shape[-1]:
                s = exact_product(qa[h, r], qb[h, :, :c], out=bufs[0], plus_zero=not softmax)
                s.mul_(sa[h, r, None])
            else:
                s = torch.mul(exact_product(qa[h, r], qb[h, :, :c], plus_zero=not softmax),
                              sa[h, r, None], out=bufs[0][..., :c])
            s.mul_(sbf[h, None, :c])
            for ins, j in zip(ops[folded:], chain.ops[folded:], strict=True):
                if ins.mnemonic == "v.scale":
                    s.mul_(float(np.float32(ins.s)))
                elif ins.mnemonic == "v.softmax":  # torch.softmax's kernel, into scratch
                    if c < shape[-1]:  # exp(x - max) of those scores is exactly 0: so is it of -inf
                        bufs[0][..., c:].fill_(-math.inf)
                        s = bufs[0]
                    target = bufs[1] if s.data_ptr() == bufs[0].data_ptr() else bufs[0]
                    s = torch.ops.aten._softmax.out(s, -1, False, out=target)
                elif ins.mnemonic == "v.add":  # (with a skip: x + 0.0 = x but for -0.0,
                    # which the softmax after it maps as +0.0)
                    s[..., z:].add_(ext[j][h, r, z:c])
                else:
                    s.mul_(ext[j][h, r, :c])
            qp, sp = quantise(s, -1, inplace=True, nonnegative=last_softmax)
            # the masked columns' probabilities are +0.0 and quantise to 0: no term of the sum
            y = exact_product(qp[..., :c], qv[h, :c])
            out[h, r] = y.mul_(sp[..., None]).mul_(sv[h, None, :])
    size = nb * m * n
    pending[chain.first] = it.act_gemm_sizes(tuple(a.shape), tuple(b.shape), tuple(s_shape))
    for j in chain.ops:
        extra = others[j].size if j in others else 0
        pending[j] = vector_sizes(tuple(s_shape), size + extra)
    pending[chain.last] = it.act_gemm_sizes(tuple(s_shape), tuple(v.shape),
                                            tuple(batch) + (m, dv))
    return out.reshape(tuple(batch) + (m, dv)).numpy()


def folded_scales(ops, sa: torch.Tensor, sb: torch.Tensor, k: int) -> int:
    """How many of the leading v.scale ops may multiply the column scales sb instead of the
    scores, with the same bits: each factor f a power of two, sb * f a normal float32, and
    every nonzero score |fl(fl(p sa) sb)| (p a nonzero integer, |p| <= k 127 127) a normal
    float32 before and after each factor. Scaling a normal float by a power of two is exact
    and commutes with rounding, so fl(x fl(sb f)) = fl(x sb) f; zeros keep their sign
    rule. Scales that are NaN or infinite fold nothing."""
    normal, top = 2.0 ** -126, 2.0 ** 127
    lo = float(sa.min()) * float(sb.min()) * (1 - 1e-6)  # scales are positive
    hi = k * 127.0 * 127.0 * float(sa.max()) * float(sb.max()) * (1 + 1e-6)
    b_lo, b_hi = float(sb.min()), float(sb.max())
    folded = 0
    while lo >= normal and hi < top and b_lo >= normal and b_hi < top:  # (False for NaN)
        ins = ops[folded] if folded < len(ops) else None
        f = abs(float(np.float32(ins.s))) if ins is not None and ins.mnemonic == "v.scale" else 0.0
        if not (f > 0 and math.isfinite(f) and math.frexp(f)[0] == 0.5):
            break
        lo, hi, b_lo, b_hi = lo * f, hi * f, b_lo * f, b_hi * f
        if not (lo >= normal and hi < top and b_lo >= normal and b_hi < top):
            break
        folded += 1
    return folded


# -- short rows ---------------------------------------------------------------------------------
# a skipping block's rows are cut to a multiple of this many columns: the softmax of such a
# prefix equals the full row's (its tail's exps are +0.0) when the kernel's sums assign
# elements to vector lanes by position, which short_rows_exact checks
PREFIX = 32
_SHORT: dict[int, bool] = {}


def short_rows_exact() -> bool:
    """Whether torch's softmax of a row's first c columns (c a multiple of PREFIX) is bit for
    bit its softmax of the whole row when the rest is -inf, on this build (probed once per
    process). The sums inside a softmax are order-sensitive, so rows of values over a wide
    range at many lengths catch any kernel whose association depends on the row length; if
    one differs, blocks compute their rows in full (the -inf tail) as before."""
    if PREFIX not in _SHORT:
        _SHORT[PREFIX] = _probe_short(PREFIX)
    return _SHORT[PREFIX]


def _probe_short(align: int) -> bool:
    gen = torch.Generator().manual_seed(3)
    lengths = [align * i + d for i in (1, 2, 3, 5) for d in (0, 1, 7, align // 2)] + [2049]
    with torch.no_grad():
        for n in lengths:
            x = torch.randn((4, n), generator=gen) * 40  # exps over ~100 binades
            for c in {align, 2 * align, 3 * align, n // align * align}:
                if not 0 < c < n:
                    continue
                full = x.clone()
                full[:, c:] = -math.inf
                whole = torch.softmax(full, -1)[:, :c]
                prefix = torch.softmax(x[:, :c].contiguous(), -1)
                if not torch.equal(whole.view(torch.int32), prefix.view(torch.int32)):
                    return False
    return True


# -- masked columns -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskRows:
    """Per row of an additive mask [..., m, n]: `extent`, 1 + the last column within
    LIVE_GAP of the row's `top` (its largest value); past it, `hi` (the largest value,
    -inf when there is none) and `deep` (the largest finite |value|). Rows whose top is not
    finite get extent n (nothing past it). `zeros`: how many leading columns are +-0.0 (a
    causal mask's visible keys), where adding the mask changes no score but a -0.0."""

    top: torch.Tensor  # float64 [..., m]
    extent: torch.Tensor  # int64 [..., m]
    hi: torch.Tensor  # float64 [..., m]
    deep: torch.Tensor  # float64 [..., m]
    zeros: torch.Tensor  # int64 [..., m]

    @classmethod
    def of(cls, mask: torch.Tensor) -> MaskRows:
        n = mask.shape[-1]
        top = mask.amax(-1).double()
        column = torch.arange(1, n + 1)
        near = mask > (top - LIVE_GAP).float().unsqueeze(-1)  # "near" only sets the extent
        extent = torch.where(torch.isfinite(top), (near * column).amax(-1), n)
        past = column > extent.unsqueeze(-1)
        hi = torch.where(past, mask, -math.inf).amax(-1).double()
        deep = torch.where(past & torch.isfinite(mask), mask.abs(), 0.0).amax(-1).double()
        nonzero = mask != 0  # (NaN too)
        zeros = torch.where(nonzero.any(-1), nonzero.to(torch.uint8).argmax(-1), n)
        return cls(top, extent, hi, deep, zeros)


_MASKS: dict[int, tuple[np.ndarray, MaskRows]] = {}  # id(const tensor) -> (it, its rows)


def mask_rows(it, mask: np.ndarray, const: str) -> MaskRows:
    """MaskRows of a chain's v.add operand; a constant's once per image tensor."""
    if not const:
        return MaskRows.of(_t(mask))
    source = it.image.tensors[const]
    hit = _MASKS.get(id(source))
    if hit is None or hit[0] is not source:
        if len(_MASKS) > 64:
            _MASKS.clear()
        hit = _MASKS[id(source)] = (source, MaskRows.of(_t(mask)))
    return hit[1]


@dataclass(frozen=True)
class Skip:
    """Per (head, row) of the scores: how many leading columns must be computed (`extent`)
    and how many of those the mask leaves unchanged (`zeros`: it adds +-0.0 there)."""

    extent: torch.Tensor  # int64 [heads, m]
    zeros: torch.Tensor  # int64 [heads, m]


def masked_extents(it, ops, chain: Chain, others: dict, batch: tuple, mnk: tuple,
                   sa: torch.Tensor, sb: torch.Tensor) -> Skip | None:
    """Per (head, row) of the scores, how many leading columns must be computed and how many of
    them the mask leaves as they are; None when no column may be skipped. A chain qualifies
    when its ops are v.scale, then one v.add of an additive mask, then v.scale by positive
    factors, then v.softmax (the last op). A column past a row's extent is skipped when the
    handlers' score there provably sits EXP_ZERO or more below the row's max: with |QK| <= k
    * 127 * 127 * max(sa) * max(sb) * |scales before| = B and C the scales after, (top - hi
    - 2B) C minus the roundings' error must reach EXP_ZERO. exp of that is +0.0 in the
    handlers' softmax, as it is of the -inf the skipped columns get (or, in rows cut to the
    live prefix, the term is absent: short_rows_exact), so the softmax row is bit for bit
    the same, and those probabilities quantise to 0, which the exact P @ V sum
    does not miss."""
    m, n, k = mnk
    adds = [i for i, ins in enumerate(ops) if ins.mnemonic == "v.add"]
    if len(adds) != 1 or ops[-1].mnemonic != "v.softmax":
        return None
    a = adds[0]
    before, after = ops[:a], ops[a + 1:-1]
    if any(ins.mnemonic != "v.scale" for ins in before + after):
        return None
    factors_before = [abs(float(np.float32(ins.s))) for ins in before]
    after_c = math.prod(float(np.float32(ins.s)) for ins in after)
    if not (0 < after_c < math.inf) or any(ins.s <= 0 for ins in after) \
            or not all(math.isfinite(f) for f in factors_before):
        return None
    j = chain.ops[a]
    bound = k * 127.0 * 127.0 * float(sa.max()) * float(sb.max()) * math.prod(factors_before)
    bound *= 1 + 1e-6
    if not bound < 1e37:
        return None
    rows = mask_rows(it, others[j], chain.other[j][1])
    skips = rows.extent < n
    if not bool(skips.any()):
        return None
    top = rows.top
    if not bool(((top.abs() + bound) * after_c < 1e37)[skips].all()):
        return None  # a live score might not be finite
    margin = (top - rows.hi - 2 * bound) * after_c \
        - ROUNDING * (rows.deep + top.abs() + 2 * bound) * after_c
    if not bool((margin >= EXP_ZERO)[skips].all()):
        return None
    nb = math.prod(batch)
    return Skip(*(x.broadcast_to(batch + (m,)).reshape(nb, m) for x in (rows.extent, rows.zeros)))
