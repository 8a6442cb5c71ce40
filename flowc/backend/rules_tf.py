"""Lowering rules for the ops transformer models add (issue 4; op list in docs/notes/hf-export.md).

- attention's activation x activation matmuls -> `mm.act` on the CiM macros, in a report
  section of kind `attention` named `<attention module>.qk` / `.av` (docs/attention.md);
- embeddings -> `v.embed` from a dense packed table (shared with a tied, dense lm_head);
- RMSNorm written out as pow/mean/add/rsqrt/mul/mul -> one `v.rmsnorm` (see `fusions`);
- RoPE, GQA and head layout: `v.slice`, `v.cat`, `v.expand`, `v.reshape`, `v.permute`;
- element-wise math: `v.pow`, `v.rsqrt`, `v.tanh`, neg as `v.scale -1`.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx

from flowc import isa
from flowc.backend.archs import ALL, GQA, PLAIN, RMSNORM, ROPE, TRANSFORMERS
from flowc.backend.image import LayerInfo
from flowc.backend.lower import Lowering, label, rule
from flowc.backend.rules import _f32, _vector, linear_pattern, store_packed
from flowc.errors import UnsupportedOpError
from flowc.frontend.diagnose import node_location
from flowc.passes.quantize import quantize_weight

aten = torch.ops.aten
ATTENTION_NAMES = ("qk", "av")  # Q K^T, then A V, inside one attention module


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def _dim(node: torch.fx.Node, dim: int) -> int:
    """A dimension index of the node's first input, made non-negative."""
    rank = len(node.args[0].meta["val"].shape)
    if not -rank <= dim < rank:
        raise UnsupportedOpError(f"{node.target} dim {dim} out of range at {node_location(node)}")
    return dim % rank


# -- attention -------------------------------------------------------------------------------
@rule(aten.matmul.default, aten.bmm.default, family="attention", archs=(*TRANSFORMERS, "mamba"))
def lower_matmul(lw: Lowering, node: torch.fx.Node) -> None:
    """Activation x activation GEMM (Q K^T, A V; Mamba's state readout) as mm.act on the macros."""
    a, b = node.args[0], node.args[1]
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
        raise UnsupportedOpError(f"matmul with a non-tensor operand at {node_location(node)}")
    sa, sb = a.meta["val"].shape, b.meta["val"].shape
    if len(sa) < 2 or len(sb) < 2:
        raise UnsupportedOpError(f"matmul of vectors at {node_location(node)} (need >= 2-D operands)")
    name = _attention_name(lw, node)
    lw.enter(name, "attention")
    k, n = int(sb[-2]), int(sb[-1])
    lw.layers[name] = LayerInfo(name, "attention", in_features=k, out_features=n)
    lw.emit(isa.MmAct(dst=lw.out(node), a=lw.buf(a), b=lw.buf(b)))


def _attention_name(lw: Lowering, node: torch.fx.Node) -> str:
    """`<module>.qk` and `.av` for the two matmuls of an attention module; in a module with
    another count (Mamba's per-step state readouts) every one is `.mm<i>`."""
    base = label(lw.layer_of(node))
    i = lw.mm_counts.get(base, 0)
    lw.mm_counts[base] = i + 1
    total = sum(1 for n in lw.gm.graph.nodes if n.op == "call_function"
                and n.target in (aten.matmul.default, aten.bmm.default)
                and label(lw.layer_of(n)) == base)
    return f"{base}.{ATTENTION_NAMES[i] if total == len(ATTENTION_NAMES) else f'mm{i}'}"


# -- embeddings ------------------------------------------------------------------------------
@rule(aten.embedding.default, family="embedding", archs=ALL)
def lower_embedding(lw: Lowering, node: torch.fx.Node) -> None:
    """v.embed from a dense packed table (shared with a tied, dense lm_head)."""
    emit_embedding(lw, node, node.args[0], node.args[1])


def emit_embedding(lw: Lowering, node: torch.fx.Node, table_node: torch.fx.Node,
                   ids: torch.fx.Node) -> None:
    """`node` = rows `ids` of the parameter `table_node` (embedding, index_select, W[ids])."""
    _vector(lw, node)
    table = lw.param(table_node)
    if table.ndim != 2:
        raise UnsupportedOpError(f"embedding table of rank {table.ndim} at {node_location(node)}")
    P = lw.machine.macro.subarrays
    tied = _tied_dense_linear(lw, table_node)
    if tied is not None:  # lm_head reads the same parameter: one packed tensor serves both
        name = label(lw.layer_of(tied))
        meta = tied.meta["flowc"]
        q, scale = meta["qweight"], meta["wscale"]
    else:
        name = label(f"{lw.layer_of(node)}.table")
        q, scale = quantize_weight(table, name)
    store_packed(lw, name, table, q, scale, (P, P))
    lw.emit(isa.VEmbed(dst=lw.out(node), src=lw.buf(ids), w=name, cols=int(table.shape[1])))


def _tied_dense_linear(lw: Lowering, table_node: torch.fx.Node) -> torch.fx.Node | None:
    """The quantised linear that reads the same weight node and runs dense, if any (a tied
    lm_head the prune pass left alone; a pruned lm_head was untied before it was written)."""
    P = lw.machine.macro.subarrays
    for user in table_node.users:
        if user.target is aten.linear.default and user.args[1] is table_node:
            meta = user.meta.get("flowc") or {}
            if "qweight" in meta and linear_pattern(lw, user)[1] == (P, P):
                return user
    return None


# -- element-wise math -----------------------------------------------------------------------
@rule(aten.pow.Tensor_Scalar, family="element-wise", archs=(*RMSNORM, "gpt2"))
def lower_pow(lw: Lowering, node: torch.fx.Node) -> None:
    """v.pow with a scalar exponent."""
    _vector(lw, node)
    lw.emit(isa.VPow(dst=lw.out(node), src=lw.buf(node.args[0]), e=_f32(float(node.args[1]))))


@rule(aten.rsqrt.default, family="element-wise", archs=RMSNORM)
def lower_rsqrt(lw: Lowering, node: torch.fx.Node) -> None:
    """v.rsqrt."""
    _vector(lw, node)
    lw.emit(isa.VRsqrt(dst=lw.out(node), src=lw.buf(node.args[0])))


@rule(aten.tanh.default, family="element-wise", archs=("gpt2",))
def lower_tanh(lw: Lowering, node: torch.fx.Node) -> None:
    """v.tanh."""
    _vector(lw, node)
    lw.emit(isa.VTanh(dst=lw.out(node), src=lw.buf(node.args[0])))


@rule(aten.neg.default, family="element-wise", archs=(*ROPE, "mamba", "rwkv", PLAIN))
def lower_neg(lw: Lowering, node: torch.fx.Node) -> None:
    """v.scale by -1."""
    _vector(lw, node)
    lw.emit(isa.VScale(dst=lw.out(node), src=lw.buf(node.args[0]), s=-1.0))


# mean (any dimension): flowc.backend.rules_ops


# -- layout ----------------------------------------------------------------------------------
@rule(aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default, aten.flatten.using_ints,
      family="layout", archs=(*GQA, "mamba", "rwkv", PLAIN))
def lower_unsqueeze(lw: Lowering, node: torch.fx.Node) -> None:
    """Shape-only: a v.reshape (free) to the node's recorded shape."""
    _vector(lw, node)
    lw.emit(isa.VReshape(dst=lw.out(node), src=lw.buf(node.args[0]), shape=_shape(node)))


@rule(aten.expand.default, family="layout", archs=GQA)
def lower_expand(lw: Lowering, node: torch.fx.Node) -> None:
    """v.expand (materialised broadcast, e.g. GQA's repeat_kv)."""
    _vector(lw, node)
    lw.emit(isa.VExpand(dst=lw.out(node), src=lw.buf(node.args[0]), shape=_shape(node)))


@rule(aten.slice.Tensor, family="layout", archs=(*ROPE, "mamba", PLAIN))
def lower_slice(lw: Lowering, node: torch.fx.Node) -> None:
    """v.slice (a full slice is the input itself)."""
    _vector(lw, node)
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = _dim(node, int(args[1] if args[1] is not None else 0))
    size = int(node.args[0].meta["val"].shape[dim])
    start, end, _ = slice(args[2], args[3]).indices(size)
    step = int(args[4] if args[4] is not None else 1)
    if step < 1:
        raise UnsupportedOpError(f"slice with step {step} at {node_location(node)}")
    if start == 0 and end == size and step == 1:
        lw.alias(node, node.args[0])  # a full slice is the input itself
        return
    lw.emit(isa.VSlice(dst=lw.out(node), src=lw.buf(node.args[0]), dim=dim, start=start,
                       end=end, step=step))


@rule(aten.cat.default, family="layout", archs=(*ROPE, "mamba", "rwkv"))
def lower_cat(lw: Lowering, node: torch.fx.Node) -> None:
    """A chain of v.cat (stack is decomposed to cat of unsqueezes)."""
    _vector(lw, node)
    parts = [p for p in node.args[0] if int(np.prod(p.meta["val"].shape)) > 0]
    rank = len(node.meta["val"].shape)
    dim = int(node.args[1] if len(node.args) > 1 else 0) % rank
    if len(parts) == 1:
        lw.alias(node, parts[0])
        return
    acc = lw.buf(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        dst = lw.out(node) if i == len(parts) - 1 else f"{label(node.name)}.part{i}"
        lw.emit(isa.VCat(dst=dst, a=acc, b=lw.buf(part), dim=dim))
        acc = dst


@rule(aten.split.Tensor, aten.split_with_sizes.default, family="layout",
      archs=("gpt2", "gpt_neox", "phi3", "mamba"))
def lower_split(lw: Lowering, node: torch.fx.Node) -> None:
    """No instruction: each getitem of the split becomes one v.slice of the input."""
    lw.alias(node, node.args[0])


@rule(operator.getitem, family="layout", archs=("gpt2", "gpt_neox", "phi3", "mamba"))
def lower_getitem(lw: Lowering, node: torch.fx.Node) -> None:
    """One piece of a split: v.slice of the split's input."""
    src, index = node.args[0], int(node.args[1])
    if src.target not in (aten.split.Tensor, aten.split_with_sizes.default):
        raise UnsupportedOpError(f"getitem of {src.target} at {node_location(node)} "
                                 "(flowc lowers getitem of split only)")
    _vector(lw, node)
    whole = src.args[0]
    dim = _dim(src, int(src.args[2] if len(src.args) > 2 else src.kwargs.get("dim", 0)))
    size = int(whole.meta["val"].shape[dim])
    if src.target is aten.split.Tensor:
        step = int(src.args[1])
        bounds = [(s, min(s + step, size)) for s in range(0, size, step)]
    else:
        edges = np.cumsum([0, *[int(s) for s in src.args[1]]])
        bounds = list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))
    start, end = bounds[index]
    lw.emit(isa.VSlice(dst=lw.out(node), src=lw.buf(whole), dim=dim, start=start, end=end,
                       step=1))
