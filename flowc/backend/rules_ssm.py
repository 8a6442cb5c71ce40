"""Lowering rules for recurrent state-space models (Mamba, RWKV) and the layout ops they use.

- Mamba's causal depthwise conv1d (`nn.Conv1d(groups=channels, padding=k-1)` then a slice to
  the sequence length) -> one `v.dwconv` on the vector unit (no weight reuse across channels:
  nothing for the CiM macros to hold), then the existing `v.slice`;
- the unrolled recurrences index one time step with `select` -> `v.slice` + a free reshape;
- RWKV's time shift (`nn.ZeroPad2d((0, 0, 1, -1))`: negative pads crop) -> `v.slice` of the
  kept part and `v.cat` with a constant zero block;
- `zeros_like` / `ones_like` / `full_like` -> a `v.const` of the node's shape.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from flowc import isa
from flowc.backend.lower import Lowering, label, rule
from flowc.backend.rules import _vector
from flowc.errors import UnsupportedOpError
from flowc.frontend.diagnose import node_location

aten = torch.ops.aten


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


@rule(aten.select.int, family="layout", archs=("mamba", "rwkv"))
def lower_select(lw: Lowering, node: torch.fx.Node) -> None:
    """x.select(dim, i): v.slice of one index, then a free v.reshape dropping the dimension."""
    _vector(lw, node)
    shape = tuple(int(s) for s in node.args[0].meta["val"].shape)
    dim = int(node.args[1]) % len(shape)
    index = int(node.args[2]) % shape[dim]
    part = f"{label(node.name)}.part"
    lw.emit(isa.VSlice(dst=part, src=lw.buf(node.args[0]), dim=dim, start=index,
                       end=index + 1, step=1))
    lw.emit(isa.VReshape(dst=lw.out(node), src=part, shape=_shape(node)))


@rule(aten.conv1d.default, aten.convolution.default, family="convolution", archs=("mamba",))
def lower_conv1d(lw: Lowering, node: torch.fx.Node) -> None:
    """Depthwise 1-D convolution (groups = channels, stride 1, dilation 1, symmetric zero
    padding) -> v.dwconv. Other convolutions are refused with the reason."""
    x, w_node = node.args[0], node.args[1]
    b_node = node.args[2] if len(node.args) > 2 else None
    if node.target is aten.convolution.default:
        stride, padding, dilation, transposed, _, groups = node.args[3:9]
        if transposed:
            raise UnsupportedOpError(f"transposed convolution at {node_location(node)}")
    else:
        args = list(node.args) + [None] * (7 - len(node.args))
        stride, padding, dilation, groups = (args[3] or [1], args[4] or [0], args[5] or [1],
                                             args[6] or 1)
    if isinstance(padding, str):
        raise UnsupportedOpError(f"conv1d padding={padding!r} at {node_location(node)}; "
                                 "give the padding as a number")
    w = static_value(lw, w_node)
    channels = int(x.meta["val"].shape[-2])
    where = f"at {node_location(node)}"
    if w.ndim != 3 or len(x.meta["val"].shape) != 3:
        raise UnsupportedOpError(f"{node.target}: only 1-D convolutions lower (weight of rank "
                                 f"{w.ndim}) {where}")
    if int(groups) != channels or w.shape[:2] != (channels, 1):
        raise UnsupportedOpError(f"{node.target} with groups={groups} over {channels} channels "
                                 f"{where}: flowc lowers depthwise 1-D convolutions only "
                                 "(groups = channels, one filter each)")
    if list(stride) != [1] or list(dilation) != [1] or len(set(padding)) != 1:
        raise UnsupportedOpError(f"{node.target} with stride={list(stride)}, dilation="
                                 f"{list(dilation)}, padding={list(padding)} {where}: "
                                 "flowc lowers stride 1, dilation 1, one symmetric padding")
    _vector(lw, node)
    taps = int(w.shape[2])
    name = f"{lw.current}.{node.name}"
    wt = lw.tensor(f"{name}.w", w.reshape(channels, taps).astype(np.float32))
    bias = lw.param(b_node) if b_node is not None else np.zeros(channels, np.float32)
    bt = lw.tensor(f"{name}.b", bias.astype(np.float32))
    lw.emit(isa.VDwconv(dst=lw.out(node), src=lw.buf(x), w=wt, b=bt, taps=taps,
                        pad=int(padding[0])))


_SHAPE_ONLY = {aten.squeeze.dim, aten.squeeze.default, aten.unsqueeze.default,
               aten.view.default, aten.reshape.default, aten.permute.default,
               aten.transpose.int, aten.t.default}


def static_value(lw: Lowering, node: torch.fx.Node) -> np.ndarray:
    """A parameter, or a parameter through shape-only ops (Mamba passes its conv weight as
    `weight.squeeze(1).unsqueeze(1)`): evaluated at compile time, float32."""
    if node.op == "get_attr":
        return lw.param(node)
    if node.op != "call_function" or node.target not in _SHAPE_ONLY or \
            not isinstance(node.args[0], torch.fx.Node):
        raise UnsupportedOpError(f"{node.target} at {node_location(node)}: "
                                 "expected a parameter (possibly reshaped), got a computed value")
    base = torch.from_numpy(static_value(lw, node.args[0]))
    return node.target(base, *node.args[1:], **node.kwargs).contiguous().numpy()


@rule(aten.pad.default, aten.constant_pad_nd.default, family="layout", archs=("rwkv",))
def lower_pad(lw: Lowering, node: torch.fx.Node) -> None:
    """Constant padding (negative amounts crop), one dimension at a time: v.slice for the
    crop, v.cat with a v.const block of the pad value for the growth."""
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if node.target is aten.pad.default and mode != "constant":
        raise UnsupportedOpError(f"pad mode={mode!r} at {node_location(node)}; flowc lowers constant padding")
    value = node.args[3] if node.target is aten.pad.default and len(node.args) > 3 else (
        node.args[2] if node.target is aten.constant_pad_nd.default and len(node.args) > 2
        else 0.0)
    value = float(value or 0.0)
    _vector(lw, node)
    pads = [int(p) for p in node.args[1]]
    shape = list(int(s) for s in node.args[0].meta["val"].shape)
    src, tag = lw.buf(node.args[0]), label(node.name)
    steps = [(len(shape) - 1 - i // 2, pads[i], pads[i + 1]) for i in range(0, len(pads), 2)]
    steps = [s for s in steps if s[1] or s[2]]
    if not steps:
        lw.alias(node, node.args[0])
        return
    for j, (dim, before, after) in enumerate(steps):
        final = j == len(steps) - 1
        start, end = max(-before, 0), shape[dim] - max(-after, 0)
        if start or end != shape[dim]:
            cropped = f"{tag}.crop{dim}"
            lw.emit(isa.VSlice(dst=cropped, src=src, dim=dim, start=start, end=end, step=1))
            src, shape[dim] = cropped, end - start
        for side, amount in (("lo", before), ("hi", after)):
            if amount <= 0:
                continue
            block = shape.copy()
            block[dim] = amount
            const = f"{tag}.{side}{dim}"
            t = lw.tensor(f"{lw.current}.{node.name}.{side}{dim}",
                          np.full(block, value, dtype=np.float32))
            lw.emit(isa.VConst(dst=const, t=t))
            grown = f"{tag}.{side}{dim}.cat"
            a, b = (const, src) if side == "lo" else (src, const)
            lw.emit(isa.VCat(dst=grown, a=a, b=b, dim=dim))
            src, shape[dim] = grown, shape[dim] + amount
        if final:
            lw.emit(isa.VReshape(dst=lw.out(node), src=src, shape=_shape(node)))


@rule(aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
      family="layout", archs=("rwkv",))
def lower_full_like(lw: Lowering, node: torch.fx.Node) -> None:
    """A constant of the node's shape (the input's values are not read) as v.const."""
    _vector(lw, node)
    if node.target is aten.full_like.default:
        value = float(node.args[1])
    else:
        value = 0.0 if node.target is aten.zeros_like.default else 1.0
    t = lw.tensor(f"{lw.current}.{node.name}.fill", np.full(_shape(node), value, np.float32))
    lw.emit(isa.VConst(dst=lw.out(node), t=t))
