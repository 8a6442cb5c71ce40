"""Graph rewrites for recurrent state-space models (Mamba, RWKV) and plain matmul layers.

Each rewrite is `fn(gm, node) -> bool` (True: replaced), applied by the frontend's preparation
(`flowc.frontend.prepare`) next to the transformer rewrites of `decompose_tf.REWRITES`:

- `matmul(W, x)` / `matmul(x, W)` with W a 2-D parameter (Mamba's `dt_proj.weight @ dt`) ->
  a linear over W, so the prune and quantise passes see a static-weight CiM GEMM;
- RWKV's CPU recurrence fills its output in place, `out = zeros_like(k); out[:, t] = v_t` for
  every t: the zeros and the in-place copies become one `stack` of the v_t (then decomposed
  to `cat`), a value the backend and the ONNX exporter see without aliasing;
- RWKV rescales two weights in place on its first inference forward
  (`weight.div_(2 ** (block // rescale_every))`), which torch.export records as an in-place
  op on the parameter in every call. A factor of 1 (every block before `rescale_every`) is
  removed; any other factor is refused with the way around (one eval forward before export);
- `x.max(dim)[0]` / `x.min(dim)[0]` (values only) -> `amax` (a reduction the backend lowers).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import fx

from flowc.errors import UnsupportedOpError

aten = torch.ops.aten


def _where(node: fx.Node) -> str:
    from flowc.frontend.diagnose import node_location  # imports prepare, which imports us

    return f" at {node_location(node)}"


def _params(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    return dict(gm.named_parameters(remove_duplicate=False))


def _param_2d(gm: fx.GraphModule, arg: object) -> bool:
    if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
        return False
    p = _params(gm).get(str(arg.target))
    return p is not None and p.dim() == 2


def _meta_val(shape: tuple[int, ...], like: fx.Node) -> torch.Tensor:
    val = like.meta["val"]
    return torch.empty(shape, dtype=val.dtype, device="meta")


def _call(gm: fx.GraphModule, target: object, args: tuple, like: fx.Node,
          shape: tuple[int, ...]) -> fx.Node:
    new = gm.graph.call_function(target, args)
    new.meta.update({k: v for k, v in like.meta.items() if k not in ("val", "flowc")})
    new.meta["val"] = _meta_val(shape, like)
    return new


def _owner_scope(node: fx.Node, weight: fx.Node) -> None:
    """Record the weight's owner module (`...dt_proj` for `...dt_proj.weight`) as the
    innermost module of `node`, so the new linear is reported under the parameter's module
    and not under the calling module (whose vector ops share that name)."""
    owner = str(weight.target).rpartition(".")[0]
    stack = dict(node.meta.get("nn_module_stack") or {})
    if owner and (not stack or list(stack.values())[-1][0] != owner):
        stack[f"flowc_owner_{owner}"] = (owner, torch.nn.Module)
        node.meta["nn_module_stack"] = stack


def matmul_param(gm: fx.GraphModule, node: fx.Node) -> bool:
    """matmul(W, x) -> transpose(linear(transpose(x), W)); matmul(x, W) -> linear(x, W^T)."""
    a, b = node.args[0], node.args[1]
    if _param_2d(gm, a) and isinstance(b, fx.Node) and b.meta["val"].dim() >= 2:
        xs = tuple(int(s) for s in b.meta["val"].shape)
        out = tuple(int(s) for s in node.meta["val"].shape)
        with gm.graph.inserting_before(node):
            xt = _call(gm, aten.transpose.int, (b, -1, -2), node, xs[:-2] + (xs[-1], xs[-2]))
            lin = _call(gm, aten.linear.default, (xt, a), node, out[:-2] + (out[-1], out[-2]))
            _owner_scope(lin, a)
            y = _call(gm, aten.transpose.int, (lin, -1, -2), node, out)
    elif _param_2d(gm, b) and isinstance(a, fx.Node) and not _param_2d(gm, a):
        from flowc.frontend.decompose_tf import _transposed_param

        with gm.graph.inserting_before(node):
            y = _call(gm, aten.linear.default, (a, _transposed_param(gm, b)), node,
                      tuple(int(s) for s in node.meta["val"].shape))
        _owner_scope(y, b)
    else:
        return False
    node.replace_all_uses_with(y)
    gm.graph.erase_node(node)
    return True


def fill_to_stack(gm: fx.GraphModule, node: fx.Node) -> bool:
    """zeros_like(x) whose every index along one dim is written once by copy_(select(...), v)
    before any other read -> stack(v_0, ..., v_{n-1}) for the later readers."""
    shape = tuple(int(s) for s in node.meta["val"].shape)
    sels = [u for u in node.users if u.target is aten.select.int]
    if not sels or not shape:
        return False
    dims = {int(s.args[1]) % len(shape) for s in sels}
    if len(dims) != 1:
        return False
    dim = dims.pop()
    writes: dict[int, tuple[fx.Node, fx.Node, fx.Node]] = {}
    for s in sels:
        users = list(s.users)
        if len(users) != 1 or users[0].target is not aten.copy_.default or \
                users[0].args[0] is not s or users[0].users:
            return False
        value = users[0].args[1]
        if not isinstance(value, fx.Node) or \
                tuple(value.meta["val"].shape) != tuple(s.meta["val"].shape):
            return False
        index = int(s.args[2]) % shape[dim]
        if index in writes:
            return False
        writes[index] = (s, users[0], value)
    if sorted(writes) != list(range(shape[dim])):
        return False
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last = max((w[1] for w in writes.values()), key=order.__getitem__)
    readers = [u for u in node.users if u not in sels]
    if any(order[r] < order[last] for r in readers):
        return False
    with gm.graph.inserting_after(last):
        stacked = _call(gm, aten.stack.default,
                        ([writes[i][2] for i in range(shape[dim])], dim), node, shape)
    for r in readers:
        r.replace_input_with(node, stacked)
    for s, copy, _ in writes.values():
        gm.graph.erase_node(copy)
        gm.graph.erase_node(s)
    if not node.users:
        gm.graph.erase_node(node)
    return True


def unit_param_rescale(gm: fx.GraphModule, node: fx.Node) -> bool:
    """div_/mul_ of a parameter by the literal 1 -> the parameter (any other factor: refused)."""
    w, factor = node.args[0], node.args[1]
    if not (isinstance(w, fx.Node) and w.op == "get_attr" and str(w.target) in _params(gm)):
        return False
    if isinstance(factor, (int, float)) and float(factor) == 1.0:
        node.replace_all_uses_with(w)
        gm.graph.erase_node(node)
        return True
    raise UnsupportedOpError(
        f"in-place {node.target} of parameter {w.target} by {factor}{_where(node)}: the model "
        "changes its weights while running (RWKV rescales them on its first inference "
        "forward); run the model once in eval mode before torch.export")


def max_values(gm: fx.GraphModule, node: fx.Node) -> bool:
    """`x.max(dim)` / `x.min(dim)` read only for their values (getitem 0) -> amax(x, [dim]) /
    -amax(-x, [dim]) (negation is exact); the indices (argmax) have no lowering."""
    users = list(node.users)
    if not users or any(u.target is not operator.getitem or u.args[1] != 0 for u in users):
        return False
    x, dim = node.args[0], int(node.args[1])
    keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
    out = tuple(int(s) for s in users[0].meta["val"].shape)
    xs = tuple(int(s) for s in x.meta["val"].shape)
    is_min = node.target is aten.min.dim
    with gm.graph.inserting_before(node):
        src = _call(gm, aten.neg.default, (x,), x, xs) if is_min else x
        y = _call(gm, aten.amax.default, (src, [dim], keep), users[0], out)
        if is_min:
            y = _call(gm, aten.neg.default, (y,), users[0], out)
    for u in users:
        u.replace_all_uses_with(y)
        gm.graph.erase_node(u)
    gm.graph.erase_node(node)
    return True


REWRITES_SSM: dict[object, Callable[[fx.GraphModule, fx.Node], bool]] = {
    aten.matmul.default: matmul_param,
    aten.zeros_like.default: fill_to_stack,
    aten.div_.Tensor: unit_param_rescale,
    aten.mul_.Tensor: unit_param_rescale,
    aten.div_.Scalar: unit_param_rescale,
    aten.mul_.Scalar: unit_param_rescale,
    aten.max.dim: max_values,
    aten.min.dim: max_values,
}
