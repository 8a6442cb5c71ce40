"""Lowering rules, one per ATen op (registered into flowc.backend.lower.RULES)."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx

from flowc import isa
from flowc.backend.archs import ALL, PLAIN, TRANSFORMERS
from flowc.backend.image import LayerInfo
from flowc.backend.lower import Lowering, label, rule
from flowc.backend.pack import geometry_for, pack
from flowc.errors import CompileError, UnsupportedOpError

aten = torch.ops.aten
MACRO = 0  # logical macro; the cost model spreads tiles over the machine's physical macros


def machine_geometry(machine) -> tuple[int, int, int]:
    m = machine.macro
    return m.subarrays, m.rows, m.cols


@rule(aten.linear.default, family="gemm", archs=ALL)
def lower_linear(lw: Lowering, node: torch.fx.Node) -> None:
    """Static-weight GEMM: an N:M tile loop on the CiM macros (v.quant, ld.tile, cim, v.deq)."""
    x, w_node = node.args[0], node.args[1]
    b_node = node.args[2] if len(node.args) > 2 else None
    meta = node.meta.get("flowc") or {}
    name = label(lw.layer_of(node))
    if "qweight" not in meta:
        raise CompileError(f"{name}: not quantised (run the quantize pass before lowering)")
    fp32 = lw.param(w_node)
    asked, native = linear_pattern(lw, node)
    geo = store_packed(lw, name, fp32, meta["qweight"], meta["wscale"], native)

    lw.enter(name, "gemm")
    lw.layers[name] = LayerInfo(name, "gemm", asked, native, fp32.shape[1], fp32.shape[0],
                                int(np.count_nonzero(fp32)), (-fp32.shape[1]) % asked[1],
                                geo.padded_in)
    src = lw.buf(x)
    if src not in lw.quantised:
        lw.quantised[src] = (f"{src}.q", f"{src}.s")
        lw.emit(isa.VQuant(dst=f"{src}.q", scale=f"{src}.s", src=src))
    xq, xs = lw.quantised[src]
    acc = f"{name}.acc"
    lw.emit(isa.PsumClr(dst=acc, like=xq, cols=geo.padded_out))
    lw.emit(isa.CfgNm(macro=MACRO, n=native[0], m=native[1]))
    lw.emit(isa.LoopTiles(n_tiles=geo.n_tiles, k_tiles=geo.k_tiles))
    lw.emit(isa.LdTile(macro=MACRO, w=name))
    lw.emit(isa.LdAct(macro=MACRO, src=xq))
    lw.emit(isa.Cim(macro=MACRO))
    lw.emit(isa.Merge(macro=MACRO))
    lw.emit(isa.Acc(macro=MACRO, dst=acc))
    lw.emit(isa.LoopEnd())
    out = lw.out(node)
    if b_node is None:
        lw.emit(isa.VDeq(dst=out, src=acc, ascale=xs, w=name, cols=fp32.shape[0]))
    else:
        bias = lw.tensor(f"{name}.bias", lw.param(b_node).astype(np.float32))
        lw.emit(isa.VDeq(dst=f"{name}.y", src=acc, ascale=xs, w=name, cols=fp32.shape[0]))
        lw.emit(isa.VBias(dst=out, src=f"{name}.y", b=bias))


def linear_pattern(lw: Lowering, node: torch.fx.Node) -> tuple[tuple[int, int], tuple[int, int]]:
    """(pattern asked for, native pattern the machine runs) of a linear node; dense = (P, P)."""
    P = lw.machine.macro.subarrays
    asked = tuple(int(v) for v in ((node.meta.get("flowc") or {}).get("pattern") or (P, P)))
    return asked, tuple(lw.machine.fit_pattern(*asked))


def store_packed(lw: Lowering, name: str, fp32: np.ndarray, qweight: np.ndarray,
                 wscale: np.ndarray, native: tuple[int, int]):
    """Pack one weight into the image as <name>.values/.meta/.scale (+ .fvalues); returns the
    tile geometry. Storing the same weight twice (a tied embedding table) is a no-op."""
    P, R, C = machine_geometry(lw.machine)
    geo = geometry_for(native[0], native[1], P, R, C, fp32.shape)
    if f"{name}.values" in lw.tensors:
        return geo
    lw.packed[name] = {"n": native[0], "m": native[1], "out": int(fp32.shape[0]),
                       "in": int(fp32.shape[1])}
    fvalues, metadata, (values,) = pack(fp32, geo, name, (np.asarray(qweight),))
    scale = np.ones(geo.padded_out, dtype=np.float32)
    scale[: fp32.shape[0]] = np.asarray(wscale, dtype=np.float32)
    lw.tensor(f"{name}.values", values.astype(np.int8))
    lw.tensor(f"{name}.meta", metadata)
    lw.tensor(f"{name}.scale", scale)
    if lw.keep_fp32:
        lw.tensor(f"{name}.fvalues", fvalues.astype(np.float32))
    return geo


def _vector(lw: Lowering, node: torch.fx.Node) -> None:
    lw.enter(lw.layer_of(node), "vector")


@rule(aten.relu.default, family="activation", archs=("opt", "rwkv", PLAIN))
def lower_relu(lw: Lowering, node: torch.fx.Node) -> None:
    """v.relu."""
    _vector(lw, node)
    src = lw.buf(node.args[0])
    lw.emit(isa.VRelu(dst=lw.out(node), src=src))


@rule(aten.silu.default, family="activation",
      archs=("llama", "mistral", "qwen2", "phi3", "mamba", PLAIN))
def lower_silu(lw: Lowering, node: torch.fx.Node) -> None:
    """v.silu."""
    _vector(lw, node)
    src = lw.buf(node.args[0])
    lw.emit(isa.VSilu(dst=lw.out(node), src=src))


@rule(aten.gelu.default, family="activation", archs=("bert", "gpt_neox", "gemma", PLAIN))
def lower_gelu(lw: Lowering, node: torch.fx.Node) -> None:
    """v.gelu, exact (erf) or tanh approximation."""
    _vector(lw, node)
    approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    if approx not in ("none", "tanh"):
        raise UnsupportedOpError(f"gelu approximate={approx!r} at node '{node.name}'")
    src = lw.buf(node.args[0])
    lw.emit(isa.VGelu(dst=lw.out(node), src=src, approx=int(approx == "tanh")))


# softmax (any dimension): flowc.backend.rules_ops


@rule(aten.layer_norm.default, family="norm",
      archs=("opt", "gpt2", "bert", "gpt_neox", "rwkv", PLAIN))
def lower_layer_norm(lw: Lowering, node: torch.fx.Node) -> None:
    """v.layernorm over the last dimension."""
    _vector(lw, node)
    x, shape = node.args[0], node.args[1]
    if len(shape) != 1:
        raise UnsupportedOpError(f"layer_norm over {len(shape)} dims at node '{node.name}'")
    w = node.args[2] if len(node.args) > 2 else None
    b = node.args[3] if len(node.args) > 3 else None
    eps = float(node.args[4]) if len(node.args) > 4 else 1e-5
    d = int(shape[0])
    wt = lw.tensor(f"{lw.current}.{node.name}.w", lw.param(w) if w is not None else np.ones(d, np.float32))
    bt = lw.tensor(f"{lw.current}.{node.name}.b", lw.param(b) if b is not None else np.zeros(d, np.float32))
    src = lw.buf(x)
    lw.emit(isa.VLayernorm(dst=lw.out(node), src=src, w=wt, b=bt, eps=_f32(eps)))


@rule(aten.rms_norm.default, family="norm", archs=(PLAIN,))
def lower_rms_norm(lw: Lowering, node: torch.fx.Node) -> None:
    """v.rmsnorm (transformers write RMSNorm out as six ops: fused to v.rmsnorm too)."""
    _vector(lw, node)
    x, shape = node.args[0], node.args[1]
    w = node.args[2] if len(node.args) > 2 else None
    eps = node.args[3] if len(node.args) > 3 else None
    if eps is None:
        eps = float(torch.finfo(torch.float32).eps)
    d = int(shape[-1])
    wt = lw.tensor(f"{lw.current}.{node.name}.w", lw.param(w) if w is not None else np.ones(d, np.float32))
    src = lw.buf(x)
    lw.emit(isa.VRmsnorm(dst=lw.out(node), src=src, w=wt, eps=_f32(float(eps))))


def _f32(x: float) -> float:
    return float(np.float32(x))


def _scalar_operand(lw: Lowering, node: torch.fx.Node, value: float) -> str:
    t = lw.tensor(f"{lw.current}.{node.name}.c", np.asarray(value, dtype=np.float32))
    dst = f"{label(node.name)}.c"
    lw.emit(isa.VConst(dst=dst, t=t))
    return dst


@rule(aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor, family="element-wise", archs=ALL)
def lower_binary(lw: Lowering, node: torch.fx.Node) -> None:
    """v.add / v.mul (broadcasting); scalar factors as v.scale, subtraction as v.add of v.scale -1."""
    _vector(lw, node)
    a, b = node.args[0], node.args[1]
    alpha = node.kwargs.get("alpha", 1)
    if alpha != 1:
        raise UnsupportedOpError(f"{node.target} with alpha={alpha} at node '{node.name}'")
    op = node.target
    if op is aten.mul.Tensor and not isinstance(b, torch.fx.Node):
        lw.emit(isa.VScale(dst=lw.out(node), src=lw.buf(a), s=_f32(float(b))))
        return
    if op is aten.mul.Tensor and not isinstance(a, torch.fx.Node):
        lw.emit(isa.VScale(dst=lw.out(node), src=lw.buf(b), s=_f32(float(a))))
        return
    if op is aten.sub.Tensor:
        if not isinstance(b, torch.fx.Node):
            rb = _scalar_operand(lw, node, -float(b))
        else:
            rb = f"{label(node.name)}.neg"
            lw.emit(isa.VScale(dst=rb, src=lw.buf(b), s=-1.0))
        ra = lw.buf(a) if isinstance(a, torch.fx.Node) else _scalar_operand(lw, node, float(a))
        lw.emit(isa.VAdd(dst=lw.out(node), a=ra, b=rb))
        return
    ra = lw.buf(a) if isinstance(a, torch.fx.Node) else _scalar_operand(lw, node, float(a))
    rb = lw.buf(b) if isinstance(b, torch.fx.Node) else _scalar_operand(lw, node, float(b))
    cls = isa.VAdd if op is aten.add.Tensor else isa.VMul
    lw.emit(cls(dst=lw.out(node), a=ra, b=rb))


@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default, family="layout",
      archs=(*TRANSFORMERS, PLAIN))
def lower_view(lw: Lowering, node: torch.fx.Node) -> None:
    """v.reshape (a view: free)."""
    _vector(lw, node)
    shape = tuple(int(s) for s in node.meta["val"].shape)
    lw.emit(isa.VReshape(dst=lw.out(node), src=lw.buf(node.args[0]), shape=shape))


@rule(aten.permute.default, family="layout", archs=(PLAIN,))
def lower_permute(lw: Lowering, node: torch.fx.Node) -> None:
    """v.permute (a priced copy)."""
    _vector(lw, node)
    dims = tuple(int(d) for d in node.args[1])
    lw.emit(isa.VPermute(dst=lw.out(node), src=lw.buf(node.args[0]), dims=dims))


@rule(aten.transpose.int, family="layout", archs=(*TRANSFORMERS, "mamba", PLAIN))
def lower_transpose(lw: Lowering, node: torch.fx.Node) -> None:
    """v.permute swapping two dimensions (a priced copy)."""
    _vector(lw, node)
    rank = len(node.args[0].meta["val"].shape)
    d0, d1 = int(node.args[1]) % rank, int(node.args[2]) % rank
    dims = list(range(rank))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    lw.emit(isa.VPermute(dst=lw.out(node), src=lw.buf(node.args[0]), dims=tuple(dims)))


@rule(aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
      aten.detach.default, family="layout", archs=ALL)
def lower_identity(lw: Lowering, node: torch.fx.Node) -> None:
    """Identity at inference: the output is the input buffer (no instruction, no cost)."""
    lw.alias(node, node.args[0])
