"""Calibration statistics: ||X_j||_2 of every Linear input channel over the calibration tokens.

This is the activation half of the Wanda score s_ij = |W_ij| * ||X_j||_2 (SPEC section 1) and
the input of FLOW's outlier analysis. Statistics come from one run of the model as it is now
(run `calibrate` before pruning to get dense statistics, as FLOW's code does).

Memory: activations are never kept. An `fx.Interpreter` executes the graph node by node and,
at each static-weight linear, adds the per-channel sum of squares of its input (in float64, so
millions of tokens do not lose precision) to an accumulator of `in_features` numbers. Linears
that read the same input node (q/k/v projections) share one reduction per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


class _NormRecorder(fx.Interpreter):
    """Interpreter that accumulates per-channel sums of squares of each linear's input."""

    def __init__(self, gm: fx.GraphModule, refs: Sequence[LinearRef]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.by_node = {r.node: r for r in refs}
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
