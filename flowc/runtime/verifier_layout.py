"""Verifier rules of the data-movement and table instructions (reshape, permute, slice,
concatenation, broadcast, constants, embedding, gather, depthwise convolution): the shape
algebra numpy applies at run time, checked statically (see flowc.runtime.verifier_rules)."""

from __future__ import annotations

import math

from flowc.runtime.verifier_rules import F32, Val, floaty, rule


@rule("v.reshape")
def _reshape(ctx, ins) -> dict:
    src = ctx.buf(ins, "src")
    shape = list(ins.shape)
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise ctx.fail(ins, "shape", f"{ins.shape}: at most one -1 and no other negative entry")
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or src.size % known:
            raise ctx.fail(ins, "shape", f"{ins.shape} cannot hold {src.size} elements of {src.shape}")
        shape[shape.index(-1)] = src.size // known
    elif known != src.size:
        raise ctx.fail(ins, "shape", f"{ins.shape} holds {known} elements, src {src.shape} has {src.size}")
    return {"dst": Val(tuple(shape), src.kind)}


@rule("v.permute")
def _permute(ctx, ins) -> dict:
    src = ctx.buf(ins, "src")
    nd = len(src.shape)
    dims = [d + nd if d < 0 else d for d in ins.dims]
    if sorted(dims) != list(range(nd)):
        raise ctx.fail(ins, "dims", f"{ins.dims} is not a permutation of the {nd} dimensions of {src.shape}")
    ctx.work += src.size
    return {"dst": Val(tuple(src.shape[d] for d in dims), src.kind)}


def _axis(ctx, ins, name: str, dim: int, nd: int) -> int:
    if not -nd <= dim < nd:
        raise ctx.fail(ins, name, f"dimension {dim} outside a {nd}-dimensional buffer")
    return dim % nd


@rule("v.slice")
def _slice(ctx, ins) -> dict:
    src = ctx.buf(ins, "src")
    axis = _axis(ctx, ins, "dim", ins.dim, len(src.shape))
    if ins.step < 1:
        raise ctx.fail(ins, "step", f"{ins.step}: the stride must be >= 1")
    length = len(range(*slice(ins.start, ins.end, ins.step).indices(src.shape[axis])))
    shape = list(src.shape)
    shape[axis] = length
    return {"dst": Val(tuple(shape), src.kind)}


@rule("v.cat")
def _cat(ctx, ins) -> dict:
    a, b = ctx.buf(ins, "a"), ctx.buf(ins, "b")
    if len(a.shape) != len(b.shape):
        raise ctx.fail(ins, "b", f"{b.shape} and a {a.shape} differ in rank")
    axis = _axis(ctx, ins, "dim", ins.dim, len(a.shape))
    if any(x != y for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if i != axis):
        raise ctx.fail(ins, "b", f"{b.shape} and a {a.shape} differ outside dimension {ins.dim}")
    shape = list(a.shape)
    shape[axis] += b.shape[axis]
    return {"dst": Val(tuple(shape), F32 if a.kind != b.kind else a.kind)}


@rule("v.expand")
def _expand(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    shape = tuple(ins.shape)
    ok = len(shape) >= len(src.shape) and all(d >= 0 for d in shape) and all(
        s in (1, d) for s, d in zip(src.shape[::-1], shape[::-1], strict=False))
    if not ok:
        raise ctx.fail(ins, "shape", f"{src.shape} does not broadcast to {shape}")
    return {"dst": Val(shape, F32)}


@rule("v.const")
def _const(ctx, ins) -> dict:
    t = ctx.tensor(ins, "t")
    return {"dst": Val(tuple(t.shape), F32)}


@rule("v.gather")
def _gather(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    idx = ctx.tensor(ins, "idx")
    if idx.dtype.kind not in "iu":
        raise ctx.fail(ins, "idx", f"is {idx.dtype}, expected integer indices")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= src.size):
        raise ctx.fail(ins, "idx", f"indices outside 0..{src.size - 1} (src {src.shape})")
    return {"dst": Val(tuple(idx.shape), F32)}


@rule("v.embed")
def _embed(ctx, ins) -> dict:
    src = ctx.buf(ins, "src")
    if src.kind not in ("int", F32):
        raise ctx.fail(ins, "src", f"is {src.kind}, expected token ids")
    info = ctx.packed(ins, "w")
    p = ctx.geometry["subarrays"]
    if (info["n"], info["m"]) != (p, p):
        raise ctx.fail(ins, "w", f"table packed {info['n']}:{info['m']}, v.embed reads a dense "
                       f"{p}:{p} table")
    ctx.weight_scale(ins, "w")
    if not 0 < ins.cols <= info["in"]:
        raise ctx.fail(ins, "cols", f"{ins.cols} outside 1..{info['in']} (the table's width)")
    ctx.embed_inputs.setdefault(ins.src, info["out"])
    return {"dst": Val(src.shape + (ins.cols,), F32)}


@rule("v.dwconv")
def _dwconv(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    if len(src.shape) < 2:
        raise ctx.fail(ins, "src", f"{src.shape}: needs [..., channels, length]")
    c, length = src.shape[-2:]
    w, b = ctx.tensor(ins, "w"), ctx.tensor(ins, "b")
    if w.dtype.kind != "f" or w.size != c * ins.taps or ins.taps < 1:
        raise ctx.fail(ins, "w", f"{w.dtype}{list(w.shape)}, expected float[{c}, {ins.taps}]")
    if b.dtype.kind != "f" or b.shape != (c,):
        raise ctx.fail(ins, "b", f"{b.dtype}{list(b.shape)}, expected float[{c}]")
    out = length + 2 * ins.pad - ins.taps + 1
    if out < 1:
        raise ctx.fail(ins, "taps", f"{ins.taps} taps over length {length} + 2 x {ins.pad} padding")
    ctx.work += math.prod(src.shape[:-1]) * out * ins.taps
    return {"dst": Val(src.shape[:-1] + (out,), F32)}


