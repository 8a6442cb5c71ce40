"""Lowering rules for the plain ops of non-transformer models (issue 10).

Element-wise math (sigmoid, exp, log, sqrt, abs, softplus, division, maximum/minimum, clamp,
square, reverse subtraction) maps to one vector instruction each. Reductions (sum, mean,
amax), softmax and cumsum run along the last dimension on the vector unit; over any other
dimension the rule moves the reduced dimensions to the end with an explicit `v.permute`
(priced as a copy by the cost model), runs the op, and moves the result back. Nothing about a
layout change is free or hidden.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx

from flowc import isa
from flowc.backend.archs import RMSNORM, TRANSFORMERS
from flowc.backend.lower import Lowering, label, rule
from flowc.backend.rules import _f32, _scalar_operand, _vector
from flowc.errors import UnsupportedOpError
from flowc.frontend.diagnose import node_location

aten = torch.ops.aten


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def _rank(node: torch.fx.Node) -> int:
    return len(node.args[0].meta["val"].shape)


def _operand(lw: Lowering, node: torch.fx.Node, value: object, tag: str) -> str:
    """The buffer of a tensor argument, or a v.const buffer holding a scalar argument."""
    if isinstance(value, torch.fx.Node):
        return lw.buf(value)
    if not isinstance(value, (int, float)):
        raise UnsupportedOpError(f"{node.target} with a {type(value).__name__} operand at "
                                 f"{node_location(node)}")
    t = lw.tensor(f"{lw.current}.{node.name}.{tag}", np.asarray(value, dtype=np.float32))
    dst = f"{label(node.name)}.{tag}"
    lw.emit(isa.VConst(dst=dst, t=t))
    return dst


# -- element-wise ------------------------------------------------------------------------------
_UNARY = {
    aten.sigmoid.default: isa.VSigmoid, aten.exp.default: isa.VExp, aten.log.default: isa.VLog,
    aten.sqrt.default: isa.VSqrt, aten.abs.default: isa.VAbs,
}


@rule(*_UNARY, family="element-wise", archs=("mamba", "rwkv", "plain"))
def lower_unary(lw: Lowering, node: torch.fx.Node) -> None:
    """One element-wise vector instruction (v.sigmoid, v.exp, v.log, v.sqrt, v.abs)."""
    _vector(lw, node)
    lw.emit(_UNARY[node.target](dst=lw.out(node), src=lw.buf(node.args[0])))


@rule(aten.softplus.default, family="element-wise", archs=("mamba", "plain"))
def lower_softplus(lw: Lowering, node: torch.fx.Node) -> None:
    """v.softplus with torch's beta and threshold."""
    _vector(lw, node)
    args = list(node.args) + [None, None]
    beta = float(node.kwargs.get("beta", args[1] if args[1] is not None else 1.0))
    threshold = float(node.kwargs.get("threshold", args[2] if args[2] is not None else 20.0))
    lw.emit(isa.VSoftplus(dst=lw.out(node), src=lw.buf(node.args[0]), beta=_f32(beta),
                          threshold=_f32(threshold)))


@rule(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, family="element-wise",
      archs=("rwkv", "plain"))
def lower_div(lw: Lowering, node: torch.fx.Node) -> None:
    """v.div (tensor / tensor, tensor / scalar, scalar / tensor: exact IEEE division)."""
    mode = node.kwargs.get("rounding_mode", node.args[2] if len(node.args) > 2 else None)
    if mode is not None:
        raise UnsupportedOpError(f"division with rounding_mode={mode!r} at "
                                 f"{node_location(node)}; flowc lowers true division only")
    _vector(lw, node)
    a = _operand(lw, node, node.args[0], "a")
    b = _operand(lw, node, node.args[1], "b")
    lw.emit(isa.VDiv(dst=lw.out(node), a=a, b=b))


@rule(aten.reciprocal.default, family="element-wise", archs=("plain",))
def lower_reciprocal(lw: Lowering, node: torch.fx.Node) -> None:
    """1 / x as v.div of a constant one."""
    _vector(lw, node)
    one = _scalar_operand(lw, node, 1.0)
    lw.emit(isa.VDiv(dst=lw.out(node), a=one, b=lw.buf(node.args[0])))


@rule(aten.maximum.default, aten.minimum.default, family="element-wise",
      archs=("rwkv", "plain"))
def lower_maximum(lw: Lowering, node: torch.fx.Node) -> None:
    """v.max / v.min of two tensors (broadcasting)."""
    _vector(lw, node)
    cls = isa.VMax if node.target is aten.maximum.default else isa.VMin
    lw.emit(cls(dst=lw.out(node), a=lw.buf(node.args[0]), b=lw.buf(node.args[1])))


@rule(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default,
      aten.hardtanh.default, family="element-wise", archs=("plain",))
def lower_clamp(lw: Lowering, node: torch.fx.Node) -> None:
    """clamp(x, lo, hi) with scalar bounds: v.max with lo, then v.min with hi (either optional)."""
    _vector(lw, node)
    t = node.target
    args = list(node.args) + [None, None]
    if t is aten.clamp_min.default:
        lo, hi = args[1], None
    elif t is aten.clamp_max.default:
        lo, hi = None, args[1]
    elif t is aten.hardtanh.default:
        lo = args[1] if args[1] is not None else -1.0
        hi = args[2] if args[2] is not None else 1.0
    else:
        lo, hi = node.kwargs.get("min", args[1]), node.kwargs.get("max", args[2])
    for bound in (lo, hi):
        if bound is not None and not isinstance(bound, (int, float)):
            raise UnsupportedOpError(f"{t} with a tensor bound at {node_location(node)}; "
                                     "flowc lowers scalar bounds")
    src, steps = lw.buf(node.args[0]), [(isa.VMax, lo, "lo"), (isa.VMin, hi, "hi")]
    steps = [s for s in steps if s[1] is not None]
    if not steps:
        lw.alias(node, node.args[0])
        return
    for i, (cls, bound, tag) in enumerate(steps):
        dst = lw.out(node) if i == len(steps) - 1 else f"{label(node.name)}.{tag}"
        lw.emit(cls(dst=dst, a=src, b=_operand(lw, node, float(bound), tag)))
        src = dst


@rule(aten.rsub.Scalar, aten.rsub.Tensor, family="element-wise", archs=("rwkv", "plain"))
def lower_rsub(lw: Lowering, node: torch.fx.Node) -> None:
    """other - x (torch's reverse subtraction): v.scale -1 then v.add."""
    alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1)
    if alpha != 1:
        raise UnsupportedOpError(f"{node.target} with alpha={alpha} at {node_location(node)}")
    _vector(lw, node)
    neg = f"{label(node.name)}.neg"
    lw.emit(isa.VScale(dst=neg, src=lw.buf(node.args[0]), s=-1.0))
    other = _operand(lw, node, node.args[1], "c")
    lw.emit(isa.VAdd(dst=lw.out(node), a=other, b=neg))


@rule(aten.square.default, family="element-wise", archs=("rwkv", "plain"))
def lower_square(lw: Lowering, node: torch.fx.Node) -> None:
    """x * x as v.mul (what torch computes)."""
    _vector(lw, node)
    src = lw.buf(node.args[0])
    lw.emit(isa.VMul(dst=lw.out(node), a=src, b=src))


# -- reductions, softmax and scans over any dimension ------------------------------------------
def _dims(node: torch.fx.Node, dims: object) -> list[int]:
    rank = _rank(node)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else list(dims)
    for d in dims:
        if not -rank <= int(d) < max(rank, 1):
            raise UnsupportedOpError(f"{node.target} dim {d} out of range at {node_location(node)}")
    return sorted({int(d) % max(rank, 1) for d in dims})


def _to_last(lw: Lowering, node: torch.fx.Node, dims: list[int]) -> tuple[str, tuple[int, ...]]:
    """The input with `dims` moved to the end and merged into one (a v.permute when the order
    changes, a free v.reshape to merge); returns (buffer, kept leading sizes)."""
    shape = tuple(int(s) for s in node.args[0].meta["val"].shape)
    kept = [d for d in range(len(shape)) if d not in dims]
    src = lw.buf(node.args[0])
    perm = kept + dims
    if perm != list(range(len(shape))):
        moved = f"{label(node.name)}.perm"
        lw.emit(isa.VPermute(dst=moved, src=src, dims=tuple(perm)))
        src = moved
    lead = tuple(shape[d] for d in kept)
    if len(dims) != 1:
        merged = f"{label(node.name)}.merge"
        lw.emit(isa.VReshape(dst=merged, src=src, shape=lead + (math.prod(shape[d] for d in dims),)))
        src = merged
    return src, lead


_REDUCE = {aten.sum.dim_IntList: isa.VSum, aten.sum.default: isa.VSum,
           aten.mean.dim: isa.VMean, aten.mean.default: isa.VMean, aten.amax.default: isa.VAmax}


@rule(*_REDUCE, family="reduction", archs=(*RMSNORM, "plain"))
def lower_reduce(lw: Lowering, node: torch.fx.Node) -> None:
    """sum / mean / amax over any dimensions: moved to the end (v.permute), reduced there
    (v.sum, v.mean, v.amax keep a size-1 dim), then reshaped (free) to torch's output shape."""
    dtype = node.kwargs.get("dtype", node.args[3] if len(node.args) > 3 else None)
    if dtype not in (None, torch.float32):
        raise UnsupportedOpError(f"{node.target} to {dtype} at {node_location(node)} (the vector "
                                 "unit computes float32)")
    _vector(lw, node)
    dims = _dims(node, node.args[1] if len(node.args) > 1 else None)
    if _rank(node) == 0:
        lw.alias(node, node.args[0])
        return
    src, _ = _to_last(lw, node, dims)
    red = f"{label(node.name)}.red"
    lw.emit(_REDUCE[node.target](dst=red, src=src))
    lw.emit(isa.VReshape(dst=lw.out(node), src=red, shape=_shape(node)))


def _along(lw: Lowering, node: torch.fx.Node, dim: int, emit) -> None:
    """Run a last-dimension op along `dim`: swap it to the end and back with v.permute."""
    rank = _rank(node)
    dim = _dims(node, dim)[0]
    if dim == rank - 1:
        emit(lw.out(node), lw.buf(node.args[0]))
        return
    perm = list(range(rank))
    perm[dim], perm[-1] = perm[-1], perm[dim]
    moved, done = f"{label(node.name)}.perm", f"{label(node.name)}.last"
    lw.emit(isa.VPermute(dst=moved, src=lw.buf(node.args[0]), dims=tuple(perm)))
    emit(done, moved)
    lw.emit(isa.VPermute(dst=lw.out(node), src=done, dims=tuple(perm)))


@rule(aten.softmax.int, aten._softmax.default, family="reduction",
      archs=(*TRANSFORMERS, "plain"))
def lower_softmax(lw: Lowering, node: torch.fx.Node) -> None:
    """v.softmax along any dimension (a non-last one through two v.permute)."""
    if node.target is aten._softmax.default and node.args[2]:
        raise UnsupportedOpError(f"half-to-float softmax at {node_location(node)}")
    dtype = node.args[2] if node.target is aten.softmax.int and len(node.args) > 2 else None
    if dtype not in (None, torch.float32):
        raise UnsupportedOpError(f"softmax to {dtype} at {node_location(node)} (the vector unit "
                                 "computes float32)")
    _vector(lw, node)
    _along(lw, node, int(node.args[1]),
           lambda dst, src: lw.emit(isa.VSoftmax(dst=dst, src=src)))


@rule(aten.log_softmax.int, aten._log_softmax.default, family="reduction", archs=("plain",))
def lower_log_softmax(lw: Lowering, node: torch.fx.Node) -> None:
    """v.logsoftmax along any dimension (a non-last one through two v.permute)."""
    if node.target is aten._log_softmax.default and node.args[2]:
        raise UnsupportedOpError(f"half-to-float log_softmax at {node_location(node)}")
    dtype = node.args[2] if node.target is aten.log_softmax.int and len(node.args) > 2 else None
    if dtype not in (None, torch.float32):
        raise UnsupportedOpError(f"log_softmax to {dtype} at {node_location(node)} (the vector "
                                 "unit computes float32)")
    _vector(lw, node)
    _along(lw, node, int(node.args[1]),
           lambda dst, src: lw.emit(isa.VLogsoftmax(dst=dst, src=src)))


@rule(aten.cumsum.default, family="scan", archs=("plain",))
def lower_cumsum(lw: Lowering, node: torch.fx.Node) -> None:
    """v.cumsum (an inclusive scan) along any dimension (a non-last one through v.permute)."""
    if node.kwargs.get("dtype") not in (None, torch.float32):
        raise UnsupportedOpError(f"cumsum to {node.kwargs['dtype']} at {node_location(node)}")
    _vector(lw, node)
    _along(lw, node, int(node.args[1]),
           lambda dst, src: lw.emit(isa.VCumsum(dst=dst, src=src)))
