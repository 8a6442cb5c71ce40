"""One graph preparation for every model source (.pt2, TorchScript, pickle, hf:, nn.Module).

Why: torch.export leaves shape-only arithmetic (arange, ones, causal masks, position ids),
metadata asserts, guard calls and value-preserving casts in the graph. None of them computes
anything from the model's input, yet each would need a lowering rule. `prepare_graph` removes
them the same way whatever the source, so the same model compiles to the same program however
it arrived (a user's `torch.export.save` file or flowc's own `hf:` capture).

Steps, in order (each counted in the returned `PrepareReport`):
1. drop the `_guards_fn` input check that `ExportedProgram.module()` inserts;
2. strip asserts and value-preserving no-ops (`STRIP_ALWAYS`, `IDENTITY_OPS`);
3. fold input-independent subgraphs into buffers (`fold_constants`);
4. decompose the ops of `DECOMPOSE` in place (node-local: every other op is left as captured,
   so the backend's fused patterns such as RMSNorm stay recognisable), then repeat 2-3, since
   a decomposition can expose new constants or no-ops;
5. dead-code elimination;
6. name every static-weight Linear by its module path (`annotate_layer_names`).

`DECOMPOSE` is the one place to add a decomposition: map an ATen overload to a Python
function taking the node's arguments (tensors, then the node's other arguments as captured)
and returning the replacement value(s) built from ops the backend lowers. The function is
traced with `make_fx` (pre-dispatch, fake tensors) and spliced in place of the node, keeping
the node's module path for error messages and report names.
"""

from __future__ import annotations

import operator
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx

from flowc.frontend.decompose_tf import DECOMPOSE_TF, REWRITES, chain_rewrites, rewrite_params
from flowc.frontend.rewrite_ssm import REWRITES_SSM
from flowc.frontend.simplify import simplify

aten = torch.ops.aten
LINEAR = aten.linear.default


# ---------------------------------------------------------------------------------------------
# The decomposition table (extend here)


def _numpy_t(x: torch.Tensor) -> torch.Tensor:
    return aten.permute.default(x, list(reversed(range(x.dim()))))


def _stack(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    dim = dim % (tensors[0].dim() + 1)
    return aten.cat.default([aten.unsqueeze.default(t, dim) for t in tensors], dim)


def _chunk(x: torch.Tensor, chunks: int, dim: int = 0) -> list[torch.Tensor]:
    size = -(-x.shape[dim] // chunks)  # torch.chunk: ceil-sized pieces, the last may be shorter
    return list(aten.split.Tensor(x, size, dim))


def _type_as(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return aten.to.dtype(x, other.dtype)


DECOMPOSE: dict[object, Callable] = {
    # aten op overload -> function(*node.args, **node.kwargs) built from lowered ops
    aten.numpy_T.default: _numpy_t,
    aten.stack.default: _stack,
    aten.chunk.default: _chunk,
    aten.type_as.default: _type_as,
}
# transformer ops (decompose_tf): SDPA -> eager attention; addmm/mm over a parameter -> linear
# with the transposed parameter (a graph rewrite: it re-lays out the weight, not traceable)
DECOMPOSE.update(DECOMPOSE_TF)
# state-space and plain-model rewrites (rewrite_ssm): matmul over a parameter -> linear,
# RWKV's in-place output fill -> stack, unit in-place rescale of a parameter -> removed
# (an op both tables rewrite tries the SSM rewrite first, then the transformer one: e.g. div_
# of a parameter is RWKV's rescale, div_ of a fresh activation is Falcon's in-place scaling)
for _op, _fn in REWRITES_SSM.items():
    REWRITES[_op] = chain_rewrites(_fn, REWRITES[_op]) if _op in REWRITES else _fn


# ---------------------------------------------------------------------------------------------
# No-ops and asserts

# nodes with no users that only check (shapes, dtypes, symbolic ranges): always removed
STRIP_ALWAYS = {
    aten._assert_tensor_metadata.default, aten._assert_scalar.default,
    aten._assert_async.default, aten._assert_async.msg,
    aten.sym_constrain_range.default, aten.sym_constrain_range_for_size.default,
}
# value-preserving when the output has the input's dtype, shape and device (see _is_identity)
IDENTITY_OPS = {
    aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other, aten._to_copy.default,
    aten.type_as.default, aten.dropout.default, aten.clone.default, aten.contiguous.default,
}
# ops whose result varies run to run: never folded into a constant
_RANDOM = {aten.rand.default, aten.randn.default, aten.randint.default, aten.bernoulli.default,
           aten.dropout.default, aten.native_dropout.default, aten.randperm.default}


@dataclass
class PrepareReport:
    """What preparation changed (numbers of nodes), and the ops left for the backend."""

    guards: int = 0
    stripped: Counter = field(default_factory=Counter)
    folded: int = 0
    simplified: Counter = field(default_factory=Counter)
    decomposed: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"guards": self.guards, "stripped": dict(sorted(self.stripped.items())),
                "folded": self.folded, "simplified": dict(sorted(self.simplified.items())),
                "decomposed": dict(sorted(self.decomposed.items())),
                "ops": dict(sorted(self.ops.items()))}


def prepare_graph(gm: fx.GraphModule, example_inputs: tuple = ()) -> PrepareReport:
    """Prepare `gm` (an unlifted ExportedProgram.module()) in place for the passes and the
    backend; `example_inputs` is accepted for sources whose graph lacks shape metadata (not
    needed by the current steps, which read node.meta["val"])."""
    report = PrepareReport()
    report.guards = drop_guards(gm)
    for _ in range(3):  # decompositions may expose more constants and no-ops
        report.stripped.update(strip_noops(gm))
        report.folded += fold_constants(gm)
        report.simplified.update(simplify(gm))
        done = decompose(gm)
        report.decomposed.update(done)
        if not done:
            break
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    annotate_layer_names(gm)
    report.ops = Counter(_op_name(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return report


def _op_name(target: object) -> str:
    return str(target) if not callable(target) or isinstance(target, torch._ops.OpOverload) \
        else getattr(target, "__name__", str(target))


def drop_guards(gm: fx.GraphModule) -> int:
    """Remove the input-guard call ep.module() inserts: flowc checks input shapes itself."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
            removed += 1
    # the `_guards_fn` attribute stays: while it exists, torch's pre-forward hook checks only
    # the input structure (without it the hook re-checks constraints, which the ONNX
    # exporter's JIT tracing cannot do)
    gm.recompile()
    return removed


def strip_noops(gm: fx.GraphModule) -> Counter:
    """Remove asserts and value-preserving nodes in place; returns removed counts per op.

    clone/contiguous are removed only when their input is already contiguous, so a later
    aten.view still runs in torch (calibration and the ONNX reference execute this graph).
    """
    removed: Counter = Counter()
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in STRIP_ALWAYS and not node.users:
            gm.graph.erase_node(node)
        elif node.target in IDENTITY_OPS and _is_identity(node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        else:
            continue
        removed[_op_name(node.target)] += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return removed


def _is_identity(node: fx.Node) -> bool:
    """Same dtype, shape and device in and out; dropout not in training mode; a copy only of
    an already contiguous tensor."""
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return False
    if node.target is aten.dropout.default:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        if train:
            return False
    a, b = src.meta.get("val"), node.meta.get("val")
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if (a.dtype, tuple(a.shape), a.device) != (b.dtype, tuple(b.shape), b.device):
        return False
    if node.target in (aten.clone.default, aten.contiguous.default):
        return a.is_contiguous() and b.is_contiguous()
    return True


# ---------------------------------------------------------------------------------------------
# Constant folding


def fold_constants(gm: fx.GraphModule) -> int:
    """Evaluate, in place, every call_function node that depends on neither an input nor a
    parameter (attention masks, RoPE cos/sin, position ids: functions of the static shape and
    of buffers only) and store the results as buffers `_folded_<i>`. Returns the number of
    nodes removed. Parameters are never folded into, so pruning them later stays valid.
    """
    params = {name for name, _ in gm.named_parameters(remove_duplicate=False)}
    values: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in params:
            values[node] = _fetch_attr(gm, str(node.target))
        elif (node.op == "call_function" and node.target not in _RANDOM
              and all(a in values for a in node.all_input_nodes)):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: values[a])
            with torch.no_grad():
                values[node] = node.target(*args, **kwargs)
    removed = 0
    folded: list[tuple[str, torch.Tensor]] = []  # equal constants (per-layer RoPE) share one
    calls = [n for n in reversed(gm.graph.nodes) if n.op == "call_function"]
    taken = {name for name, _ in gm.named_buffers()}
    for node in calls:
        if node not in values:
            continue
        live = [u for u in node.users if u not in values]
        value = values[node]
        if live and isinstance(value, torch.Tensor):
            name = next((k for k, t in folded if _same(t, value)), None)
            if name is None:
                name = _fresh_name(taken, "_folded_")
                gm.register_buffer(name, value.detach().clone())
                folded.append((name, value))
            with gm.graph.inserting_before(node):
                const = gm.graph.get_attr(name)
            const.meta["val"] = node.meta.get("val")
            node.replace_all_uses_with(const)
        if not node.users:
            gm.graph.erase_node(node)
            removed += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return removed


def _fresh_name(taken: set[str], prefix: str) -> str:
    i = 0
    while f"{prefix}{i}" in taken:
        i += 1
    taken.add(f"{prefix}{i}")
    return f"{prefix}{i}"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


def _fetch_attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# Node-local decomposition


def decompose(gm: fx.GraphModule, table: dict | None = None) -> Counter:
    """Replace every node whose target is in `table` (default DECOMPOSE) by the traced graph
    of its decomposition; returns the number of nodes replaced per op."""
    table = DECOMPOSE if table is None else table
    done: Counter = rewrite_params(gm) if table is DECOMPOSE else Counter()
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in table:
            _splice(gm, node, table[node.target])
            done[_op_name(node.target)] += 1
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done


def _splice(gm: fx.GraphModule, node: fx.Node, fn: Callable) -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    inputs = list(node.all_input_nodes)
    examples = [_example(a) for a in inputs]

    def call(*tensors):
        env = dict(zip(inputs, tensors, strict=True))
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), env.__getitem__)
        return fn(*args, **kwargs)

    with torch.no_grad():
        sub = make_fx(call, tracing_mode="fake", pre_dispatch=True)(*examples)
    keep = {k: node.meta[k] for k in ("nn_module_stack", "stack_trace") if k in node.meta}
    env: dict[fx.Node, fx.Node] = {}
    placeholders = iter(inputs)
    taken = {name for name, _ in gm.named_buffers()}
    result = None
    with gm.graph.inserting_before(node):
        for sn in sub.graph.nodes:
            if sn.op == "placeholder":
                env[sn] = next(placeholders)
            elif sn.op == "get_attr":
                name = _fresh_name(taken, "_decomposed_")
                gm.register_buffer(name, _fetch_attr(sub, str(sn.target)).detach().clone())
                env[sn] = gm.graph.get_attr(name)
                env[sn].meta.update(sn.meta)
            elif sn.op == "output":
                result = fx.node.map_arg(sn.args[0], env.__getitem__)
            else:
                env[sn] = gm.graph.node_copy(sn, env.__getitem__)
                env[sn].meta.update(keep)
    if isinstance(result, (list, tuple)):
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(result[user.args[1]])
                gm.graph.erase_node(user)
        if node.users:
            raise ValueError(f"node {node.name}: a multi-output decomposition needs getitem users")
    else:
        node.replace_all_uses_with(result)
    gm.graph.erase_node(node)


def _example(arg: fx.Node) -> torch.Tensor:
    val = arg.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise ValueError(f"node {arg.name}: no tensor metadata to trace a decomposition with")
    return torch.zeros(tuple(val.shape), dtype=val.dtype)


# ---------------------------------------------------------------------------------------------
# Report names


def module_path(node: fx.Node) -> str | None:
    """The dotted module path recorded by torch.export for `node` (None when unknown)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _clean_path(path) or None


def _clean_path(path: str) -> str:
    # torch.export records paths like "L['self'].layers[0].mlp" (strict) or "layers.0.mlp"
    path = re.sub(r"^L\['self'\]\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def annotate_layer_names(gm: fx.GraphModule) -> None:
    """Give each Linear a report name = its module path (unique; node name appended if shared)."""
    linears = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is LINEAR]
    paths = [module_path(n) or n.name for n in linears]
    seen: dict[str, int] = {}
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
    for node, p in zip(linears, paths, strict=True):
        name = p if seen[p] == 1 else f"{p}.{node.name}"
        node.meta.setdefault("flowc", {})["layer"] = name
