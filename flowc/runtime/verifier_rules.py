"""Per-instruction typing rules of the program verifier (flowc.runtime.verifier).

The ISA definition says what each operand *is* (a buffer, a tensor, a u32 ...); the verifier
applies those type rules generically. What an instruction *does* to shapes and dtypes is
its semantics, one small rule per mnemonic here, mirroring the interpreter's handlers: each
takes the verifier context and the instruction, checks its inputs (raising via ctx.fail with
the offending operand) and returns the value types of the buffers it writes. `WRITES` lists
the buffer operands an instruction defines (every other buffer operand is read and must
already exist). A test checks that every mnemonic of the ISA has a rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

F32, I8, I32, INT = "f32", "i8", "i32", "int"  # activations, quantised, partial sums, ids


@dataclass(frozen=True)
class Val:
    """A buffer's static type: shape and element kind."""

    shape: tuple[int, ...]
    kind: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


RULES: dict[str, Callable] = {}
WRITES: dict[str, tuple[str, ...]] = {}
#: instructions that only mark or structure the program (no buffer effect)
MARKERS = ("halt", "layer", "loop.tiles", "loop.end")


def rule(*mnemonics: str, writes: tuple[str, ...] = ("dst",)):
    def deco(fn):
        for m in mnemonics:
            RULES[m], WRITES[m] = fn, writes
        return fn

    return deco


def broadcast(ctx, ins, *names: str) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*(ctx.buf(ins, n).shape for n in names)))
    except ValueError:
        shapes = ", ".join(f"{n}={ctx.buf(ins, n).shape}" for n in names)
        raise ctx.fail(ins, names[-1], f"shapes do not broadcast ({shapes})") from None


def floaty(ctx, ins, name: str) -> Val:
    """A vector-unit input: float activations or integer ids, never raw int8/int32 sums."""
    v = ctx.buf(ins, name)
    if v.kind in (I8, I32):
        raise ctx.fail(ins, name, f"is {v.kind} (quantised data); the vector unit reads float32")
    return v


def vector_tensor(ctx, ins, name: str, length: int) -> np.ndarray:
    t = ctx.tensor(ins, name)
    if t.dtype.kind != "f" or t.shape != (length,):
        raise ctx.fail(ins, name, f"is {t.dtype}{list(t.shape)}, expected float[{length}]")
    return t


# -- control / CiM macro ------------------------------------------------------------------------
@rule(*MARKERS, writes=())
def _marker(ctx, ins) -> dict:
    if ins.mnemonic == "layer" and ins.kind not in ("gemm", "attention", "vector"):
        raise ctx.fail(ins, "kind", f"{ins.kind!r} is not gemm, attention or vector")
    return {}


@rule("cfg.nm", "ld.tile", "ld.act", "cim", "merge", "acc", writes=())
def _macro(ctx, ins) -> dict:
    return ctx.macro_step(ins)  # stateful: the verifier models the macro (flowc.runtime.verifier)


@rule("psum.clr")
def _psum_clr(ctx, ins) -> dict:
    like = ctx.buf(ins, "like")
    if ins.cols == 0:
        raise ctx.fail(ins, "cols", "0 columns")
    return {"dst": Val(like.shape[:-1] + (ins.cols,), I32)}


@rule("mm.act")
def _mm_act(ctx, ins) -> dict:
    a, b = floaty(ctx, ins, "a"), floaty(ctx, ins, "b")
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise ctx.fail(ins, "a" if len(a.shape) < 2 else "b", "needs at least 2 dimensions")
    if a.shape[-1] != b.shape[-2]:
        raise ctx.fail(ins, "b", f"K differs: a {a.shape} @ b {b.shape}")
    try:
        lead = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except ValueError:
        raise ctx.fail(ins, "b", f"batch dimensions do not broadcast: {a.shape} @ {b.shape}") from None
    ctx.work += math.prod(lead) * a.shape[-2] * a.shape[-1] * b.shape[-1]
    return {"dst": Val(lead + (a.shape[-2], b.shape[-1]), F32)}


# -- vector unit: quantisation and GEMM epilogue ------------------------------------------------
@rule("v.quant", writes=("dst", "scale"))
def _quant(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    if not src.shape or src.shape[-1] == 0:
        raise ctx.fail(ins, "src", f"shape {src.shape} has no features to quantise")
    return {"dst": Val(src.shape, I8), "scale": Val(src.shape[:-1], F32)}


@rule("v.deq")
def _deq(ctx, ins) -> dict:
    src, ascale = ctx.buf(ins, "src"), ctx.buf(ins, "ascale")
    if src.kind != I32:
        raise ctx.fail(ins, "src", f"is {src.kind}, expected int32 partial sums")
    if ascale.shape != src.shape[:-1]:
        raise ctx.fail(ins, "ascale", f"shape {ascale.shape}, expected {src.shape[:-1]}")
    scale = ctx.weight_scale(ins, "w")
    if not 0 < ins.cols <= min(src.shape[-1], scale.shape[0]):
        raise ctx.fail(ins, "cols", f"{ins.cols} outside 1..{min(src.shape[-1], scale.shape[0])}")
    return {"dst": Val(src.shape[:-1] + (ins.cols,), F32)}


@rule("v.bias")
def _bias(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    vector_tensor(ctx, ins, "b", src.shape[-1] if src.shape else 0)
    return {"dst": Val(src.shape, F32)}


@rule("v.add", "v.mul", "v.div", "v.max", "v.min")
def _binary(ctx, ins) -> dict:
    floaty(ctx, ins, "a")
    floaty(ctx, ins, "b")
    return {"dst": Val(broadcast(ctx, ins, "a", "b"), F32)}


@rule("v.where")
def _where(ctx, ins) -> dict:
    for n in ("c", "a", "b"):
        floaty(ctx, ins, n)
    return {"dst": Val(broadcast(ctx, ins, "c", "a", "b"), F32)}


@rule("v.relu", "v.silu", "v.softmax", "v.mov", "v.tanh", "v.sigmoid", "v.exp", "v.log",
      "v.sqrt", "v.abs", "v.rsqrt", "v.cumsum", "v.logsoftmax", "v.gelu", "v.scale", "v.pow",
      "v.softplus", "v.cast")
def _unary(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    if ins.mnemonic == "v.gelu" and ins.approx not in (0, 1):
        raise ctx.fail(ins, "approx", f"{ins.approx} is not 0 (erf) or 1 (tanh)")
    if ins.mnemonic == "v.cast" and ins.to not in ("bool", "int", "float"):
        raise ctx.fail(ins, "to", f"{ins.to!r} is not bool, int or float")
    if ins.mnemonic in ("v.softmax", "v.logsoftmax") and (not src.shape or not src.shape[-1]):
        raise ctx.fail(ins, "src", f"shape {src.shape}: nothing to normalise over")
    return {"dst": Val(src.shape, F32)}


@rule("v.layernorm", "v.rmsnorm")
def _norm(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    if not src.shape or not src.shape[-1]:
        raise ctx.fail(ins, "src", f"shape {src.shape}: nothing to normalise over")
    vector_tensor(ctx, ins, "w", src.shape[-1])
    if ins.mnemonic == "v.layernorm":
        vector_tensor(ctx, ins, "b", src.shape[-1])
    if not ins.eps >= 0:
        raise ctx.fail(ins, "eps", f"{ins.eps} is negative")
    return {"dst": Val(src.shape, F32)}


@rule("v.mean", "v.sum", "v.amax")
def _reduce(ctx, ins) -> dict:
    src = floaty(ctx, ins, "src")
    if not src.shape or (ins.mnemonic == "v.amax" and not src.shape[-1]):
        raise ctx.fail(ins, "src", f"shape {src.shape}: nothing to reduce over")
    return {"dst": Val(src.shape[:-1] + (1,), F32)}
