"""Lowering rules for attention masks, dtype casts and indexing (issue 10; docs/attention.md).

SDPA itself never reaches the backend: the frontend decomposes it into the eager attention
ops (`flowc.frontend.decompose_tf`), whose two matmuls run as `mm.act` on the macros. What is
left for the backend are the ops that build a mask from a *run-time* input (BERT's
attention_mask: cast to bool, broadcast by constant-index indexing, AND with a constant mask,
`where(mask, 0, min)`), the dtype casts around them and embedding-style indexing:

- `to` / `_to_copy` with a dtype: `v.cast` (bool, int) or nothing (float32 to float32);
- `where`, `masked_fill`: `v.where` (scalars become one-element `v.const`s);
- `and` / `or` / `not` on booleans: `v.mul` / `v.max` / `v.where` on 0.0-1.0 values;
- `index.Tensor`, `index_select`, `gather`: rows of a parameter table at run-time ids ->
  `v.embed` (like `embedding`); constant indices into an activation -> `v.gather` with the
  flat indices computed at compile time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from flowc import isa
from flowc.backend.lower import Lowering, label, rule
from flowc.backend.rules import _vector
from flowc.backend.rules_tf import emit_embedding
from flowc.errors import UnsupportedOpError
from flowc.frontend.diagnose import node_location

aten = torch.ops.aten
FAMILY = "mask, cast, index"
ENCODERS = ("bert",)


def _dtype(node: object) -> torch.dtype:
    return node.meta["val"].dtype


def _const(lw: Lowering, node: torch.fx.Node, value: float, tag: str) -> str:
    """A one-element float32 constant buffer (a scalar operand), named per node and tag."""
    t = lw.tensor(f"{lw.current}.{node.name}.{tag}", np.asarray(value, dtype=np.float32))
    dst = f"{label(node.name)}.{tag}"
    lw.emit(isa.VConst(dst=dst, t=t))
    return dst


def _operand(lw: Lowering, node: torch.fx.Node, arg: object, tag: str) -> str:
    return lw.buf(arg) if isinstance(arg, torch.fx.Node) else _const(lw, node, float(arg), tag)


def _constant(lw: Lowering, arg: object) -> torch.Tensor | None:
    """The value of a get_attr tensor (no float conversion), else None."""
    if not (isinstance(arg, torch.fx.Node) and arg.op == "get_attr"):
        return None
    obj: object = lw.gm
    for part in str(arg.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


def _is_param(lw: Lowering, arg: object) -> bool:
    params = {name for name, _ in lw.gm.named_parameters(remove_duplicate=False)}
    return isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg.target in params


# -- casts -------------------------------------------------------------------------------------
@rule(aten.to.device, aten.to.dtype, aten.to.dtype_layout, aten.to.other, aten._to_copy.default,
      family=FAMILY, archs=ENCODERS)
def lower_cast(lw: Lowering, node: torch.fx.Node) -> None:
    """Values stay float32 in the vector unit: a cast only changes the value set."""
    src, want, have = node.args[0], _dtype(node), _dtype(node.args[0])
    if want == torch.bool:
        to = "bool"
    elif want.is_floating_point:
        if want != torch.float32:
            raise UnsupportedOpError(f"cast to {want} at {node_location(node)} (flowc computes "
                                     "in float32; export the model in float32)")
        to = None if have.is_floating_point else "float"
    else:
        to = "int"
    if to is None:
        lw.alias(node, src)
        return
    _vector(lw, node)
    lw.emit(isa.VCast(dst=lw.out(node), src=lw.buf(src), to=to))


# -- select and logic --------------------------------------------------------------------------
@rule(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar,
      family=FAMILY, archs=ENCODERS)
def lower_where(lw: Lowering, node: torch.fx.Node) -> None:
    """v.where; a scalar operand becomes a one-element v.const (BERT's additive mask)."""
    _vector(lw, node)
    cond, a, b = node.args[0], node.args[1], node.args[2]
    lw.emit(isa.VWhere(dst=lw.out(node), c=lw.buf(cond), a=_operand(lw, node, a, "a"),
                       b=_operand(lw, node, b, "b")))


@rule(aten.masked_fill.Scalar, aten.masked_fill.Tensor, family=FAMILY, archs=ENCODERS)
def lower_masked_fill(lw: Lowering, node: torch.fx.Node) -> None:
    """masked_fill(x, mask, v) = where(mask, v, x)."""
    _vector(lw, node)
    x, mask, value = node.args[0], node.args[1], node.args[2]
    lw.emit(isa.VWhere(dst=lw.out(node), c=lw.buf(mask), a=_operand(lw, node, value, "v"),
                       b=lw.buf(x)))


def _booleans(node: torch.fx.Node) -> None:
    for arg in node.args:
        if isinstance(arg, torch.fx.Node) and _dtype(arg) != torch.bool:
            raise UnsupportedOpError(f"{node.target} of a {_dtype(arg)} tensor at "
                                     f"{node_location(node)} (flowc lowers logic on booleans)")


@rule(aten.__and__.Tensor, aten.bitwise_and.Tensor, aten.logical_and.default,
      aten.__or__.Tensor, aten.bitwise_or.Tensor, aten.logical_or.default,
      family=FAMILY, archs=ENCODERS)
def lower_logic(lw: Lowering, node: torch.fx.Node) -> None:
    """On 0.0 / 1.0 values: and = a * b, or = max(a, b)."""
    _booleans(node)
    _vector(lw, node)
    a, b = (lw.buf(x) for x in node.args[:2])
    conj = node.target in (aten.__and__.Tensor, aten.bitwise_and.Tensor, aten.logical_and.default)
    lw.emit((isa.VMul if conj else isa.VMax)(dst=lw.out(node), a=a, b=b))


@rule(aten.logical_not.default, aten.bitwise_not.default, family=FAMILY, archs=ENCODERS)
def lower_not(lw: Lowering, node: torch.fx.Node) -> None:
    """not x = where(x, 0, 1) on 0.0 / 1.0 values."""
    _booleans(node)
    _vector(lw, node)
    lw.emit(isa.VWhere(dst=lw.out(node), c=lw.buf(node.args[0]), a=_const(lw, node, 0.0, "f"),
                       b=_const(lw, node, 1.0, "t")))


# -- indexing ----------------------------------------------------------------------------------
def _gather(lw: Lowering, node: torch.fx.Node, src: torch.fx.Node, pick) -> None:
    """v.gather of `src` at the flat indices pick(arange(src).reshape(src.shape))."""
    shape = tuple(int(s) for s in src.meta["val"].shape)
    with torch.no_grad():
        flat = pick(torch.arange(int(np.prod(shape)), dtype=torch.int64).reshape(shape))
    if tuple(flat.shape) != tuple(node.meta["val"].shape):
        raise UnsupportedOpError(f"{node.target} at {node_location(node)}: constant indices "
                                 f"give shape {tuple(flat.shape)}, the graph recorded "
                                 f"{tuple(node.meta['val'].shape)}")
    _vector(lw, node)
    idx = lw.tensor(f"{lw.current}.{node.name}.idx", flat.numpy().astype(np.int32))
    lw.emit(isa.VGather(dst=lw.out(node), src=lw.buf(src), idx=idx))


def _run_time(node: torch.fx.Node, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{node.target} at {node_location(node)}: {what} (flowc lowers "
                              "rows of a parameter table at run-time ids, or constant indices)")


@rule(aten.index.Tensor, family=FAMILY)
def lower_index(lw: Lowering, node: torch.fx.Node) -> None:
    """W[ids] of a parameter table: v.embed; constant indices into a tensor: v.gather."""
    src, indices = node.args[0], list(node.args[1])
    if len(indices) == 1 and _is_param(lw, src) and isinstance(indices[0], torch.fx.Node) \
            and _constant(lw, indices[0]) is None:
        emit_embedding(lw, node, src, indices[0])  # W[ids]: an embedding lookup
        return
    consts = [None if i is None else _constant(lw, i) for i in indices]
    if any(i is not None and c is None for i, c in zip(indices, consts, strict=True)):
        raise _run_time(node, "run-time indices into a computed tensor")
    key = tuple(slice(None) if c is None else c for c in consts)
    _gather(lw, node, src, lambda ar: ar[key])


@rule(aten.index_select.default, family=FAMILY)
def lower_index_select(lw: Lowering, node: torch.fx.Node) -> None:
    """Rows of a parameter table at run-time ids: v.embed; constant indices: v.gather."""
    src, dim, index = node.args[0], int(node.args[1]), node.args[2]
    const = _constant(lw, index)
    if const is None:
        rank = len(src.meta["val"].shape)
        if _is_param(lw, src) and dim % rank == 0 and rank == 2:
            emit_embedding(lw, node, src, index)
            return
        raise _run_time(node, f"run-time indices along dim {dim}")
    _gather(lw, node, src, lambda ar: torch.index_select(ar, dim, const))


@rule(aten.gather.default, family=FAMILY)
def lower_gather(lw: Lowering, node: torch.fx.Node) -> None:
    """torch.gather with a constant index: v.gather (flat indices computed at compile time)."""
    src, dim, index = node.args[0], int(node.args[1]), node.args[2]
    const = _constant(lw, index)
    if const is None:
        raise _run_time(node, "run-time gather indices")
    _gather(lw, node, src, lambda ar: torch.gather(ar, dim, const))
