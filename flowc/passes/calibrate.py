"""Calibration statistics: ||X_j||_2 of every Linear input channel over the calibration tokens.

This is the activation half of the Wanda score s_ij = |W_ij| * ||X_j||_2 (SPEC section 1) and
the input of FLOW's outlier analysis. Statistics come from one run of the model as it is now
(run `calibrate` before pruning to get dense statistics, as FLOW's code does).

Memory: activations are never kept. An `fx.Interpreter` executes the graph node by node and,
at each static-weight linear, adds the per-channel sum of squares of its input (in float64, so
millions of tokens do not lose precision) to an accumulator of `in_features` numbers. Linears
that read the same input node (q/k/v projections) share one reduction per batch. Nodes that
feed no linear (the logits behind `lm_head`: 100 MB per 512-token window of SmolLM2) are
skipped.

`run_layerwise` is the sequential driver (SPEC 2.1): it executes the graph node by node over
*all* calibration windows at once and calls back at every linear with that linear's inputs,
before computing its output, so a callback that prunes the weight makes every later layer see
the outputs of already-pruned earlier layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from flowc.errors import CompileError
from flowc.passes.base import CompileContext, Pass, PassResult
from flowc.passes.graph import LinearRef, flowc_meta, linear_nodes
from flowc.passes.registry import register_pass


class CalibrationError(CompileError):
    """Calibration cannot run (no inputs, a layer input of unexpected shape)."""


def feeding_nodes(targets: Iterable[fx.Node]) -> set[fx.Node]:
    """Every node some node of `targets` depends on (transitively), targets excluded unless
    another target depends on them: the nodes worth computing to reach the targets' inputs."""
    needed: set[fx.Node] = set()
    stack = list(targets)
    while stack:
        for arg in stack.pop().all_input_nodes:
            if arg not in needed:
                needed.add(arg)
                stack.append(arg)
    return needed


class _NormRecorder(fx.Interpreter):
    """Interpreter that accumulates per-channel sums of squares of each linear's input."""

    def __init__(self, gm: fx.GraphModule, refs: Sequence[LinearRef]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.by_node = {r.node: r for r in refs}
        self.needed = feeding_nodes(self.by_node) | {n for n in gm.graph.nodes
                                                     if n.op in ("placeholder", "output")}
        self.sumsq: dict[str, torch.Tensor] = {}
        self._batch_cache: dict[fx.Node, torch.Tensor] = {}

    def run_batch(self, inputs: tuple[Any, ...]) -> None:
        self._batch_cache = {}
        self.run(*inputs)
        self._batch_cache = {}

    def run_node(self, n: fx.Node) -> Any:
        ref = self.by_node.get(n)
        if ref is not None:
            self._record(ref)
        if n not in self.needed:
            return None  # feeds no linear (logits): not computed
        return super().run_node(n)

    def _record(self, ref: LinearRef) -> None:
        src = ref.node.args[0]
        sq = self._batch_cache.get(src)
        if sq is None:
            x = self.env[src]
            if not isinstance(x, torch.Tensor) or x.dim() < 1:
                raise CalibrationError(f"layer {ref.name}: input is not a tensor with features")
            flat = x.detach().reshape(-1, x.shape[-1])
            sq = flat.to(torch.float64).square().sum(dim=0)
            self._batch_cache[src] = sq
        prev = self.sumsq.get(ref.node.name)
        self.sumsq[ref.node.name] = sq if prev is None else prev + sq


def collect_input_norms(
    gm: fx.GraphModule,
    calib_inputs: Sequence[tuple[Any, ...]],
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """||X_j||_2 per input channel of every static-weight linear, keyed by node name.

    `calib_inputs` is a list of argument tuples for `gm` (one forward each). Returns float32
    arrays of shape [in_features]; values are sqrt of float64 sums of squares.
    """
    if len(calib_inputs) == 0:
        raise CalibrationError("no calibration inputs (CompileContext.calib_inputs is empty)")
    refs = linear_nodes(gm)
    recorder = _NormRecorder(gm, refs)
    with torch.no_grad():
        for i, inputs in enumerate(calib_inputs):
            if not isinstance(inputs, tuple):
                raise CalibrationError(f"calibration input {i} is a {type(inputs).__name__}, "
                                       "expected a tuple of model arguments")
            recorder.run_batch(inputs)
            if progress is not None:
                progress(f"calibrate: batch {i + 1}/{len(calib_inputs)}")
    missing = [r.name for r in refs if r.node.name not in recorder.sumsq]
    if missing:
        raise CalibrationError(f"layers never executed during calibration: {', '.join(missing)}")
    return {k: np.sqrt(v.numpy()).astype(np.float32) for k, v in recorder.sumsq.items()}


@register_pass
@dataclass(frozen=True)
class Calibrate(Pass):
    """Store `input_norm` (float32 [in]) in `meta["flowc"]` of every static-weight linear.

    `max_samples` > 0 uses only the first that many calibration inputs (quick runs).
    """

    name = "calibrate"
    max_samples: int = 0

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        if self.max_samples < 0:
            raise CalibrationError(f"max_samples must be >= 0, got {self.max_samples}")
        inputs = ctx.calib_inputs[: self.max_samples] if self.max_samples else ctx.calib_inputs
        norms = collect_input_norms(gm, inputs, progress=ctx.progress)
        for ref in linear_nodes(gm):
            flowc_meta(ref.node)["input_norm"] = norms[ref.node.name]
        ctx.reports[self.name] = {"samples": len(inputs), "layers": len(norms)}
        return PassResult(gm, modified=True)  # annotations changed


# ---------------------------------------------------------------------------------------------
# Sequential (layer-wise) execution over all windows


class PerWindow(list):
    """The value of one node for every calibration window (index = window)."""


LinearHook = Callable[[LinearRef, PerWindow], None]


def run_layerwise(gm: fx.GraphModule, windows: Sequence[tuple[Any, ...]], on_linear: LinearHook,
                  bar: bool = False) -> None:
    """Execute `gm` node by node over all `windows`, calling `on_linear(ref, inputs)` at every
    static-weight linear before its output is computed.

    Weights are read when a linear runs (get_attr is resolved lazily), so a hook that replaces
    the weight (`set_param`) changes what all later nodes see. Every node runs once per window
    (the captured graph has static shapes: windows cannot be batched); a value is freed after
    its last use, and nodes that feed no linear are never computed, so the peak memory is the
    activations alive at one point of the graph for all windows (tens of MB per window for
    SmolLM2 at 512 tokens) plus the model. `bar` shows a tqdm bar over linears on stderr.
    """
    if len(windows) == 0:
        raise CalibrationError("no calibration inputs for the layer-wise pass")
    refs = {r.node: r for r in linear_nodes(gm)}
    needed = feeding_nodes(refs)
    order = [n for n in gm.graph.nodes if n.op == "placeholder" or n in needed or n in refs]
    position = {n: i for i, n in enumerate(order)}
    last_use = {a: max(position[u] for u in a.users if u in position)
                for a in order if any(u in position for u in a.users)}
    env: dict[fx.Node, Any] = {}
    placeholders = 0
    from tqdm import tqdm

    with torch.no_grad(), tqdm(total=len(refs), desc="layer-wise", unit="layer",
                               disable=None if bar else True, leave=False) as progress:
        for i, node in enumerate(order):
            if node.op == "placeholder":
                env[node] = PerWindow(w[placeholders] for w in windows)
                placeholders += 1
            else:
                if node in refs:
                    src = node.args[0]
                    on_linear(refs[node], env[src] if isinstance(src, fx.Node) else src)
                    progress.update(1)
                if node in needed and node.op != "get_attr":
                    env[node] = _evaluate(gm, node, env)
            for arg in node.all_input_nodes:
                if last_use.get(arg) == i:
                    env.pop(arg, None)


def _evaluate(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
    """One node's value: once if no input varies per window, else once per window."""
    def value(a: fx.Node) -> Any:
        return _fetch(gm, str(a.target)) if a.op == "get_attr" else env[a]

    inputs = {a: value(a) for a in node.all_input_nodes}
    count = next((len(v) for v in inputs.values() if isinstance(v, PerWindow)), None)
    if count is None:
        return _call(gm, node, *fx.node.map_arg((node.args, node.kwargs), inputs.__getitem__))
    out = PerWindow()
    for w in range(count):
        def pick(a: fx.Node, w: int = w) -> Any:
            v = inputs[a]
            return v[w] if isinstance(v, PerWindow) else v

        out.append(_call(gm, node, *fx.node.map_arg((node.args, node.kwargs), pick)))
    return out


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _call(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any) -> Any:
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))(*args, **kwargs)
    raise CalibrationError(f"node {node.name}: cannot execute op kind {node.op!r}")
