"""Graph rewrites for transformer ops that map exactly onto ops the backend already lowers.

Why rewrite in the frontend rather than lower in the backend: the reference ONNX model is
exported from the same prepared graph, so after a rewrite the simulator and ONNX Runtime run
the *same* op sequence (the int8 reference quantises the same two attention MatMuls the
simulator runs as `mm.act`), and the prune/quantise passes see every static-weight GEMM as an
`aten.linear` they know.

- `aten.scaled_dot_product_attention` (transformers' default `attn_implementation="sdpa"`)
  becomes the eager attention of Hugging Face models: `matmul(q, k^T) * scale`, plus the
  additive mask, `softmax(-1)`, `matmul(p, v)` (docs/attention.md). A boolean mask `m`
  becomes the additive `where(m, 0, finfo.min)` (a folded buffer when `m` is a constant, one
  `aten.where.Scalar` when it is a run-time input such as BERT's attention_mask); `is_causal`
  becomes a folded causal (lower-triangular) mask; `enable_gqa` repeats each key/value head
  (unsqueeze + expand + reshape, as `repeat_kv`).
- `aten.addmm(b, x, W)` / `mm` / `matmul` with a parameter W[in, out] (GPT-2's Conv1D as a
  user exports it) become `aten.linear(x, W^T, b)` with the transposed weight stored as the
  parameter, so it is a prunable CiM GEMM; `x @ P.T` of a parameter P (FalconLinear) becomes
  `linear(x, P)`.
- in-place arithmetic on a fresh, unaliased activation (Falcon's `scores.div_(...)`) becomes
  the functional op; `unbind`, `t`, `movedim`, `repeat_interleave` and `baddbmm` decompose to
  ops the backend lowers.

`DECOMPOSE_TF` (traced decompositions) and `REWRITES` (graph rewrites `fn(gm, node) ->
replaced?`, run first) are merged into the frontend's preparation (flowc.frontend.prepare).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
from torch import fx, nn

from flowc.errors import UnsupportedOpError

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
MASK_MIN = float(torch.finfo(torch.float32).min)  # Hugging Face eager's masked-score value


def _where(node: fx.Node) -> str:
    """` at node 'n' (in module.path)` for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return f" at node '{node.name}'" + (f" (in {path})" if path else "")


def _const_tensor(gm: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    obj: object = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


# -- scaled_dot_product_attention ------------------------------------------------------------
def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
         is_causal: bool = False, *, scale: float | None = None,
         enable_gqa: bool = False) -> torch.Tensor:
    """SDPA as Hugging Face's eager attention, from ops the backend lowers (a DECOMPOSE entry:
    traced with fake tensors; constant masks are folded by the next preparation round)."""
    if dropout_p:
        raise UnsupportedOpError(f"scaled_dot_product_attention with dropout_p={dropout_p} "
                                 "(export the model in eval mode)")
    heads, kv_heads = int(query.shape[-3]), int(key.shape[-3])
    if enable_gqa and kv_heads != heads:
        key, value = _repeat_heads(key, heads), _repeat_heads(value, heads)
    scale = 1.0 / math.sqrt(int(query.shape[-1])) if scale is None else float(scale)
    scores = aten.matmul.default(query, aten.transpose.int(key, -2, -1))
    scores = aten.mul.Tensor(scores, scale)
    if is_causal:
        if attn_mask is not None:
            raise UnsupportedOpError("scaled_dot_product_attention with both attn_mask and "
                                     "is_causal")
        L, S = int(query.shape[-2]), int(key.shape[-2])
        attn_mask = aten.tril.default(aten.ones.default([L, S], dtype=torch.bool))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = aten.where.Scalar(attn_mask, 0.0, MASK_MIN)
        elif not attn_mask.dtype.is_floating_point:
            raise UnsupportedOpError(f"scaled_dot_product_attention with a {attn_mask.dtype} "
                                     "mask (need bool or float)")
        scores = aten.add.Tensor(scores, attn_mask)
    return aten.matmul.default(aten.softmax.int(scores, -1), value)


def _repeat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., Hkv, T, D] -> [..., heads, T, D], each kv head repeated heads / Hkv times (as
    transformers' repeat_kv: unsqueeze, expand, reshape)."""
    *lead, hkv, t, d = (int(s) for s in x.shape)
    x = aten.unsqueeze.default(x, len(lead) + 1)
    x = aten.expand.default(x, [*lead, hkv, heads // hkv, t, d])
    return aten.reshape.default(x, [*lead, heads, t, d])


# -- layout helpers some exports carry (traced decompositions) -------------------------------
def unbind(x: torch.Tensor, dim: int = 0) -> list[torch.Tensor]:
    """unbind = split into size-1 pieces, each squeezed (getitem users pick one)."""
    return [aten.squeeze.dim(t, dim) for t in aten.split.Tensor(x, 1, dim)]


def transpose_2d(x: torch.Tensor) -> torch.Tensor:
    """x.t(): a permute of the (at most two) dimensions."""
    return aten.permute.default(x, list(reversed(range(x.dim()))))


def movedim(x: torch.Tensor, source: int, destination: int) -> torch.Tensor:
    rank = x.dim()
    order = [d for d in range(rank) if d != source % rank]
    order.insert(destination % rank, source % rank)
    return aten.permute.default(x, order)


def repeat_interleave(x: torch.Tensor, repeats: int, dim: int | None = None,
                      output_size: int | None = None) -> torch.Tensor:
    """x.repeat_interleave(r, dim) with an integer r (GQA written without repeat_kv):
    unsqueeze after dim, expand r times, merge the two dimensions."""
    if dim is None:
        x, dim = aten.reshape.default(x, [-1]), 0
    dim = dim % x.dim()
    shape = [int(s) for s in x.shape]
    x = aten.unsqueeze.default(x, dim + 1)
    x = aten.expand.default(x, [*shape[:dim + 1], int(repeats), *shape[dim + 1:]])
    return aten.reshape.default(x, [*shape[:dim], shape[dim] * int(repeats), *shape[dim + 1:]])


def baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1,
            alpha: float = 1) -> torch.Tensor:
    """bias + a @ b (batched activation GEMM, e.g. ALiBi attention scores): bmm then add."""
    out = aten.bmm.default(a, b)
    if alpha != 1:
        out = aten.mul.Tensor(out, float(alpha))
    if beta == 0:
        return out
    return aten.add.Tensor(out, bias if beta == 1 else aten.mul.Tensor(bias, float(beta)))


# -- addmm / mm with a static weight -> linear -------------------------------------------------
def addmm_to_linear(gm: fx.GraphModule, node: fx.Node) -> bool:
    """addmm(b, x, W), mm(x, W) or matmul(x, W) with W a 2-D parameter [in, out] ->
    linear(x, W^T, b); with W = P^T of a parameter P [out, in] -> linear(x, P, b).

    A graph rewrite rather than a traced decomposition: the parameter itself is re-laid out,
    so the linear reads a get_attr (a static weight the prune pass can mask). Returns False
    (node left alone) when W is computed; the backend then names the op, node and module.
    """
    if node.target is aten.addmm.default:
        bias, x, w = node.args[0], node.args[1], node.args[2]
        beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
        if beta != 1 or alpha != 1:
            raise UnsupportedOpError(f"addmm with beta={beta}, alpha={alpha}{_where(node)}")
    else:
        bias, (x, w) = None, node.args[:2]
    if bias is not None and _const_tensor(gm, bias) is None:
        return False
    wt = _transpose_source(gm, w)  # x @ W^T (Falcon's FalconLinear): W is the linear weight
    if wt is None:
        weight = _const_tensor(gm, w)
        if weight is None or weight.dim() != 2 or w.target not in _param_names(gm):
            return False
        wt = _transposed_param(gm, w)
    with gm.graph.inserting_before(node):
        lin = gm.graph.call_function(aten.linear.default,
                                     (x, wt, *([bias] if bias is not None else [])))
    lin.meta.update({k: v for k, v in node.meta.items() if k != "flowc"})
    node.replace_all_uses_with(lin)
    gm.graph.erase_node(node)
    if not w.users:
        gm.graph.erase_node(w)  # the transpose (or the old get_attr) nobody reads any more
    return True


def _transpose_source(gm: fx.GraphModule, w: object) -> fx.Node | None:
    """P when `w` is the transpose of a 2-D parameter P (t, numpy_T, permute [1, 0],
    transpose 0 1), else None."""
    if not (isinstance(w, fx.Node) and w.op == "call_function"):
        return None
    src = w.args[0]
    param = _const_tensor(gm, src)
    if param is None or param.dim() != 2 or src.target not in _param_names(gm):
        return None
    if w.target in (aten.t.default, aten.numpy_T.default):
        return src
    if w.target is aten.permute.default and [int(d) % 2 for d in w.args[1]] == [1, 0]:
        return src
    if w.target is aten.transpose.int and {int(d) % 2 for d in w.args[1:3]} == {0, 1}:
        return src
    return None


def _param_names(gm: fx.GraphModule) -> set[str]:
    return {name for name, _ in gm.named_parameters(remove_duplicate=False)}


def _transposed_param(gm: fx.GraphModule, w: fx.Node) -> fx.Node:
    """A get_attr of W^T [out, in]: the parameter itself, re-laid out in place when this node
    is its only reader (its name stays the module path), else a new parameter `<name>_t`."""
    weight = _const_tensor(gm, w)
    data = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
    owner_path, _, leaf = str(w.target).rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == w.target]
    if readers == [w] and len(w.users) == 1:
        owner._parameters[leaf] = data
        return w
    name = f"{leaf}_t"
    owner.register_parameter(name, data)
    with gm.graph.inserting_before(w):
        return gm.graph.get_attr(f"{owner_path}.{name}" if owner_path else name)


def check_sdpa(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Refuse, with the node and module path, what `sdpa` cannot decompose (it is traced
    without the node, so it could not say where); never replaces the node."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    args = dict(zip(names, node.args, strict=False))
    args.update(node.kwargs)
    if args.get("dropout_p"):
        raise UnsupportedOpError(f"scaled_dot_product_attention with dropout_p="
                                 f"{args['dropout_p']}{_where(node)} (export in eval mode)")
    if args.get("is_causal") and args.get("attn_mask") is not None:
        raise UnsupportedOpError(f"scaled_dot_product_attention with both attn_mask and "
                                 f"is_causal{_where(node)}")
    mask = args.get("attn_mask")
    if isinstance(mask, fx.Node):
        const = _const_tensor(gm, mask)
        dtype = const.dtype if const is not None else mask.meta["val"].dtype
        if dtype != torch.bool and not dtype.is_floating_point:
            raise UnsupportedOpError(f"scaled_dot_product_attention with a {dtype} mask"
                                     f"{_where(node)} (need bool or float)")
    return False


# -- in-place arithmetic -> functional (Falcon writes scores.add_(bias)) ---------------------
_INPLACE = ("add_.Tensor", "add_.Scalar", "sub_.Tensor", "sub_.Scalar", "mul_.Tensor",
            "mul_.Scalar", "div_.Tensor", "div_.Scalar", "masked_fill_.Scalar",
            "masked_fill_.Tensor", "relu_.default", "tanh_.default")


def _overload(name: str) -> object:
    packet, _, overload = name.partition(".")
    return getattr(getattr(aten, packet), overload)


def _is_view(node: fx.Node) -> bool:
    """Does the node's op return an alias of an input (view, reshape, slice, split ...)?"""
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def functionalize_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    """x.op_(y) -> z = op(x, y), with every later reader of x reading z. Only when x is a
    fresh tensor (computed by a non-view op) that no view aliases: then the mutation is
    visible through x alone. Otherwise the node is left for the backend to refuse."""
    x = node.args[0]
    if not (isinstance(x, fx.Node) and x.op == "call_function") or _is_view(x):
        return False
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    if any(_is_view(u) or u.op != "call_function" for u in x.users if u is not node):
        return False
    later = [u for u in x.users if u is not node and order[u] > order[node]]
    functional = _overload(str(node.target).removeprefix("aten.").replace("_.", ".", 1))
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(functional, node.args, node.kwargs)
    new.meta.update(node.meta)
    for user in later:
        user.replace_input_with(x, new)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return True


# for the frontend's preparation (flowc.frontend.prepare): traced decompositions ...
DECOMPOSE_TF: dict[object, Callable] = {
    SDPA: sdpa,
    aten.unbind.int: unbind,
    aten.t.default: transpose_2d,
    aten.movedim.int: movedim,
    aten.repeat_interleave.self_int: repeat_interleave,
    aten.baddbmm.default: baddbmm,
}
# ... and graph rewrites fn(gm, node) -> replaced?
REWRITES: dict[object, Callable[[fx.GraphModule, fx.Node], bool]] = {
    SDPA: check_sdpa,  # runs before the traced decomposition
    aten.addmm.default: addmm_to_linear,
    aten.mm.default: addmm_to_linear,
    aten.matmul.default: addmm_to_linear,  # x @ W with W a 2-D parameter (not attention)
    **{_overload(name): functionalize_inplace for name in _INPLACE},
}


def chain_rewrites(*fns: Callable[[fx.GraphModule, fx.Node], bool]
                   ) -> Callable[[fx.GraphModule, fx.Node], bool]:
    """One rewrite trying each of `fns` in turn until one replaces the node."""
    def chained(gm: fx.GraphModule, node: fx.Node) -> bool:
        return any(fn(gm, node) for fn in fns)

    chained.__name__ = "+".join(fn.__name__ for fn in fns)
    return chained


def rewrite_params(gm: fx.GraphModule) -> Counter:
    """Apply every rewrite of REWRITES to `gm` in place; returns replaced counts per op."""
    done: Counter = Counter()
    for node in list(gm.graph.nodes):
        fn = REWRITES.get(node.target) if node.op == "call_function" else None
        if fn is not None and fn(gm, node):
            done[str(node.target)] += 1
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
