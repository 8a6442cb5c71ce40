"""Graph helpers shared by all passes: find the static-weight GEMMs, read/write parameters.

The frontend hands over the *unlifted* `torch.export` module (`ep.module()`): parameters are
`get_attr` nodes and every static-weight GEMM is a `call_function` node with target
`aten.linear.default`, args `(input, weight_getattr, bias_getattr | None)`. Every pass finds
its layers through `linear_nodes` so that all of them agree on layer names and order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from flowc.errors import CompileError
from flowc.frontend.load import module_path

LINEAR = torch.ops.aten.linear.default


class GraphError(CompileError):
    """The graph does not have the shape the passes rely on (one line)."""


@dataclass(frozen=True)
class LinearRef:
    """One static-weight GEMM: its node, report name and the targets of its parameters."""

    node: fx.Node
    name: str
    weight_target: str
    bias_target: str | None


def flowc_meta(node: fx.Node) -> dict[str, Any]:
    """The node's `meta["flowc"]` dict, created empty on first use (the one namespace we own)."""
    return node.meta.setdefault("flowc", {})


def linear_nodes(gm: fx.GraphModule) -> list[LinearRef]:
    """All `aten.linear` nodes whose weight is a `get_attr`, in graph order.

    A linear whose weight is computed at run time is not a static-weight GEMM and is not listed.
    Names: `meta["flowc"]["layer"]` if the frontend set it, else the qualified name of the
    innermost module in `nn_module_stack` (cleaned by the frontend's `module_path`), else the
    node name. A module called k > 0 times
    before (weight reuse) gets `name@k`, as torch.export names repeated calls, so names are
    unique keys for reports.
    """
    refs: list[LinearRef] = []
    seen: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not LINEAR:
            continue
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        bias_target = bias.target if isinstance(bias, fx.Node) and bias.op == "get_attr" else None
        if isinstance(bias, fx.Node) and bias_target is None:
            continue  # a computed bias: not a static GEMM either
        base = _layer_name(node)
        count = seen.get(base, 0)
        seen[base] = count + 1
        name = base if count == 0 or "layer" in node.meta.get("flowc", {}) else f"{base}@{count}"
        refs.append(LinearRef(node, name, str(weight.target), bias_target))
    return refs


def _layer_name(node: fx.Node) -> str:
    layer = node.meta.get("flowc", {}).get("layer")
    if layer:
        return str(layer)
    return module_path(node) or node.name


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True if the layer name matches any fnmatch pattern (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(
    refs: Sequence[LinearRef],
    layers: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    what: str = "pass",
) -> tuple[list[LinearRef], list[LinearRef]]:
    """Split refs into (selected, skipped) by fnmatch patterns over layer names.

    `layers=None` selects all. A pattern that matches no layer is an error: a typo in a layer
    filter must not silently prune (or keep dense) the wrong thing.
    """
    names = [r.name for r in refs]
    layers = None if layers is None else tuple(layers)
    skip = tuple(skip)
    for kind, patterns in (("layers", layers or ()), ("skip", skip)):
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise GraphError(
                    f"{what}: {kind} pattern '{pat}' matches no layer "
                    f"(layers: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                )
    chosen, rest = [], []
    for r in refs:
        inside = layers is None or matches(r.name, layers)
        (chosen if inside and not matches(r.name, skip) else rest).append(r)
    return chosen, rest


def _owner(gm: fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    prefix, _, attr = target.rpartition(".")
    try:
        owner = gm.get_submodule(prefix) if prefix else gm
    except AttributeError as exc:
        raise GraphError(f"no module '{prefix}' for parameter target '{target}'") from exc
    if not hasattr(owner, attr):
        raise GraphError(f"no parameter or buffer '{target}' in the graph module")
    return owner, attr


def get_param(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor a `get_attr` target refers to (parameter, buffer or constant)."""
    owner, attr = _owner(gm, target)
    value = getattr(owner, attr)
    if not isinstance(value, torch.Tensor):
        raise GraphError(f"target '{target}' is a {type(value).__name__}, not a tensor")
    return value


def set_param(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> None:
    """Replace the tensor at `target` by a *new* one (same kind, dtype and shape).

    Replacing rather than copying in place keeps the user's original `nn.Module` (which may
    share storage with the exported module) untouched.
    """
    owner, attr = _owner(gm, target)
    old = getattr(owner, attr)
    if tuple(old.shape) != tuple(tensor.shape):
        raise GraphError(f"set_param '{target}': shape {tuple(tensor.shape)} != {tuple(old.shape)}")
    new = tensor.detach().to(dtype=old.dtype, device=old.device).clone()
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, attr, torch.nn.Parameter(new, requires_grad=old.requires_grad))
    elif attr in owner._buffers:
        owner.register_buffer(attr, new, persistent=attr not in owner._non_persistent_buffers_set)
    else:
        setattr(owner, attr, new)


def weight_is_shared(gm: fx.GraphModule, ref: LinearRef) -> bool:
    """True if anything but `ref.node` reads the weight target (tied or reused weights)."""
    for node in gm.graph.nodes:
        same = node.op == "get_attr" and node.target == ref.weight_target
        if same and any(user is not ref.node for user in node.users):
            return True
    return False


def untie_weight(gm: fx.GraphModule, ref: LinearRef) -> LinearRef:
    """Give `ref` a private copy of its weight, so writing it leaves other users unchanged.

    Needed before pruning a tied weight (e.g. an `lm_head` tied to the embedding table, which
    torch.export reads through the same get_attr) or a module called twice.
    """
    if not weight_is_shared(gm, ref):
        return ref
    base = "_flowc_" + re.sub(r"\W", "_", ref.name) + "_weight"
    attr, k = base, 1
    while hasattr(gm, attr):
        attr, k = f"{base}{k}", k + 1
    old = get_param(gm, ref.weight_target)
    gm.register_parameter(
        attr, torch.nn.Parameter(old.detach().clone(), requires_grad=old.requires_grad)
    )
    with gm.graph.inserting_before(ref.node):
        getter = gm.graph.get_attr(attr)
    old_node = ref.node.args[1] if len(ref.node.args) > 1 else ref.node.kwargs["weight"]
    ref.node.replace_input_with(old_node, getter)
    gm.recompile()
    return LinearRef(ref.node, ref.name, attr, ref.bias_target)


class GraphState:
    """What the graph computes, as a token: equal tokens mean the same nodes reading the same
    tensors unchanged. A pass that measured activations stores its result with the token, and
    a later pass reuses the result only if the token is still equal (`CompileContext.memo`).

    Tensors are compared by identity and version counter (`set_param` installs a new tensor,
    an in-place write bumps the version); the token holds them, so an identity is never
    reused by another tensor while the token lives.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        nodes, tensors = [], []
        for n in gm.graph.nodes:
            nodes.append((n.name, n.op, str(n.target), tuple(a.name for a in n.all_input_nodes)))
            if n.op == "get_attr":
                value = getattr(*_owner(gm, str(n.target)))
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
        self._tensors = tensors  # pinned: their ids stay theirs while this token exists
        self._key = (id(gm.graph), tuple(nodes),
                     tuple((id(t), t._version) for t in tensors))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphState) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)
