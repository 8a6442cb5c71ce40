"""N:M pruning: the mask rule, a per-layer helper and the `nm-prune` pass.

N:M means N weights *kept* in every group of M consecutive input channels of one output row of
`W[out, in]` (SPEC section 1). In each group the N highest scores survive; equal scores keep the
lower input index (a stable tie-break: GGUF-dequantised weights have many exact ties, and the
result must not depend on the sort implementation). Scores are |W| ("magnitude") or Wanda's
|W_ij| * ||X_j||_2 ("wanda", needs `calibrate`).

Two ways to run (SPEC 2.1, 2.7):

- one-shot (default): every layer is scored with the `input_norm` of the `calibrate` pass (the
  dense model's activations) and pruned in place; the kept weights keep their values.
- `sequential=true`: the calibration windows run through the graph node by node
  (`flowc.passes.calibrate.run_layerwise`); each layer is pruned when execution reaches it,
  with norms of *its* inputs, which already flow through the pruned earlier layers (Wanda's
  and SparseGPT's sequential scheme; here at the finest grain: per linear, not per block).
  Selection statistics stay those of the dense `calibrate` pass.
- `update=obs` (implies sequential): after choosing the same Wanda N:M mask, the kept weights
  of each row are corrected to reconstruct the layer's calibration outputs (an OBS update
  with the Hessian X^T X of its inputs, done blockwise over columns as in SparseGPT, Frantar
  & Alistarh 2023, arXiv 2301.00774). See flowc.passes.obs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.fx as fx

from flowc.passes.base import CompileContext, Pass, PassResult
from flowc.passes.graph import (
    GraphState,
    LinearRef,
    flowc_meta,
    get_param,
    linear_nodes,
    matches,
    select_layers,
    set_param,
    untie_weight,
)
from flowc.passes.obs import PruneError, obs_factor, obs_sweep, obs_update  # noqa: F401
from flowc.passes.registry import register_pass

_ROW_CHUNK = 4096  # rows sorted at once: bounds the float64/int64 temporaries of big matrices


def check_pattern(keep_n: int, group_m: int, layer: str = "<array>") -> None:
    """Reject patterns that are not 1 <= N <= M (with integer N and M)."""
    ok = isinstance(keep_n, int | np.integer) and isinstance(group_m, int | np.integer)
    if not ok or not 1 <= keep_n <= group_m:
        raise PruneError(
            f"layer {layer}: invalid N:M pattern {keep_n}:{group_m} (need 1 <= N <= M)"
        )


def nm_mask(
    scores: np.ndarray, keep_n: int, group_m: int, layer: str = "<array>"
) -> np.ndarray:
    """Boolean mask [out, in]: True for the `keep_n` best scores of every group of `group_m`.

    Stable: among equal scores the lower input index is kept. Vectorised per chunk of rows (a
    stable argsort of the negated scores along each group), no Python loop per row or group.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise PruneError(f"layer {layer}: scores must be 2-D [out, in], got shape {s.shape}")
    check_pattern(keep_n, group_m, layer)
    rows, k = s.shape
    if np.isnan(s).any():
        raise PruneError(f"layer {layer}: scores contain NaN")
    pad = k_pad(k, group_m)
    if keep_n == group_m:
        return np.ones((rows, k), dtype=bool)
    if pad:  # zero columns that are never kept while a real weight of the group is left
        s = np.concatenate([np.asarray(s, dtype=np.float64),
                            np.full((rows, pad), -np.inf)], axis=1)
    kp = k + pad
    mask = np.zeros((rows, kp // group_m, group_m), dtype=bool)
    for start in range(0, rows, _ROW_CHUNK):
        g = s[start : start + _ROW_CHUNK].astype(np.float64).reshape(-1, kp // group_m, group_m)
        best = np.argsort(-g, axis=-1, kind="stable")[..., :keep_n]
        np.put_along_axis(mask[start : start + _ROW_CHUNK], best, True, axis=-1)
    return mask.reshape(rows, kp)[:, :k]


def k_pad(k: int, group_m: int) -> int:
    """Zero columns appended to K so that every N:M group is whole: (-K) mod M.

    Decision (docs/models.md, "Layers whose K is not a multiple of M"): the groups run over K
    padded with zero columns, and the pad counts as *pruned* slots. The last, partial group of
    r = K mod M real inputs therefore keeps min(N, r) real weights: it is stored as a full group
    of M (N slots, the pad never selected), exactly what the hardware holds. verify-nm counts
    nonzeros over the same padded groups, so its check stays exact.
    """
    return (-int(k)) % int(group_m)


def wanda_scores(weight: np.ndarray, input_norm: np.ndarray, layer: str = "<array>") -> np.ndarray:
    """Wanda score |W_ij| * ||X_j||_2 (float64), checking that the norm matches K."""
    if input_norm.shape != (weight.shape[1],):
        raise PruneError(
            f"layer {layer}: input_norm has shape {input_norm.shape}, "
            f"weight has K={weight.shape[1]}"
        )
    return np.abs(weight.astype(np.float64)) * input_norm.astype(np.float64)[None, :]


def prune_layer(
    weight: np.ndarray,
    keep_n: int,
    group_m: int,
    scores: np.ndarray | None = None,
    layer: str = "<array>",
) -> tuple[np.ndarray, np.ndarray]:
    """(pruned weight, keep mask) for one `W[out, in]`; scores default to |W| (magnitude)."""
    w = np.asarray(weight)
    if scores is None:
        scores = np.abs(w)
    elif np.shape(scores) != w.shape:
        raise PruneError(f"layer {layer}: scores shape {np.shape(scores)} != weight {w.shape}")
    mask = nm_mask(scores, keep_n, group_m, layer)
    return np.where(mask, w, np.zeros((), dtype=w.dtype)), mask


INPUT_MAX_ABS = "input_max_abs"  # CompileContext.memo key: (GraphState, calib, {node: max|x|})


def _max_abs(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-channel max |x| (float32, last dim) over every window of one linear input."""
    out = None
    for x in inputs:
        a = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).to(torch.float32)
        out = a if out is None else torch.maximum(out, a)
    assert out is not None
    return out


class _WindowStats:
    """Per-channel sum of squares and (optionally) X^T X of one linear input over all windows,
    cached for the next linear reading the same input (q/k/v, gate/up), with the OBS factor of
    that X^T X (it depends on the input alone, so the linears sharing it share one)."""

    def __init__(self, hessian: bool) -> None:
        self.hessian = hessian
        self._key: object = None
        self._value: tuple[np.ndarray, np.ndarray | None] = (np.zeros(0), None)
        self._factor: tuple[float, np.ndarray] | None = None

    def __call__(self, key: object, inputs: Sequence[torch.Tensor]
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Statistics of `inputs`, recomputed unless `key` (the input's fx node) repeats."""
        if self._key is None or self._key is not key:
            k = inputs[0].shape[-1]
            sumsq = torch.zeros(k, dtype=torch.float64)
            h = torch.zeros(k, k, dtype=torch.float64) if self.hessian else None
            for x in inputs:
                flat = x.detach().reshape(-1, k)
                sumsq += flat.to(torch.float64).square().sum(dim=0)
                if h is not None:  # fp32 product per window, float64 sum over windows
                    h += (flat.T @ flat).to(torch.float64)
            self._key, self._factor = key, None
            self._value = (np.sqrt(sumsq.numpy()), None if h is None else h.numpy())
        return self._value

    def factor(self, damp: float, layer: str) -> np.ndarray:
        """`obs_factor` of the current input's X^T X, computed once per input and damp."""
        hessian = self._value[1]
        if hessian is None:
            raise PruneError(f"layer {layer}: no Hessian for the OBS update")
        if self._factor is None or self._factor[0] != damp:
            self._factor = (damp, obs_factor(hessian, damp, layer))
        return self._factor[1]


@register_pass
@dataclass(frozen=True)
class NMPrune(Pass):
    """Prune static-weight linears to N:M and write the pruned fp32 weights back.

    With `n` and `m` set, every selected layer gets that pattern (uniform N:M). Without them,
    each selected layer is pruned to the `meta["flowc"]["pattern"]` a selection pass set, and
    layers without a pattern stay dense. `layers` / `skip` are fnmatch patterns over layer
    names; skipped layers stay dense and lose any pattern annotation. `sequential` and
    `update=obs` (with `damp`, `blocksize`): see the module docstring.
    """

    name = "nm-prune"
    n: int | None = None
    m: int | None = None
    score: Literal["magnitude", "wanda"] = "wanda"
    layers: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    sequential: bool = False
    update: Literal["none", "obs"] = "none"
    damp: float = 0.01
    blocksize: int = 128

    def __post_init__(self) -> None:
        if (self.n is None) != (self.m is None):
            raise PruneError("nm-prune: give both n and m (uniform N:M) or neither (annotations)")
        if self.n is not None and self.m is not None:
            check_pattern(self.n, self.m, "<nm-prune options>")
        if self.score not in ("magnitude", "wanda"):
            raise PruneError(f"nm-prune: unknown score '{self.score}' (magnitude, wanda)")
        if self.update not in ("none", "obs"):
            raise PruneError(f"nm-prune: unknown update '{self.update}' (none, obs)")

    @property
    def layerwise(self) -> bool:
        return self.sequential or self.update == "obs"

    def required(self) -> tuple[str, ...]:
        return ("calibrate",) if self.score == "wanda" and not self.layerwise else ()

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        refs = linear_nodes(gm)
        chosen, _ = select_layers(refs, self.layers, self.skip, what=self.name)
        skipped = [r for r in refs if matches(r.name, self.skip)]
        plan = [(r, p) for r in chosen if (p := self._pattern(r)) is not None]
        for ref, _ in plan:  # validate everything before touching anything
            if self.score == "wanda" and not self.layerwise \
                    and "input_norm" not in flowc_meta(ref.node):
                raise PruneError(f"layer {ref.name}: no input_norm for wanda; run calibrate first")
        for r in skipped:
            flowc_meta(r.node).pop("pattern", None)
        report: dict[str, Any] = {"score": self.score, "update": self.update,
                                  "sequential": self.layerwise, "layers": {}}
        if self.layerwise and plan:
            self._run_layerwise(gm, ctx, dict((r.node, (r, p)) for r, p in plan), report)
        else:
            for ref, (n, m) in plan:
                norm = flowc_meta(ref.node).get("input_norm")
                report["layers"][ref.name] = self._prune_one(gm, ref, n, m, norm)
        report.update(_summary(gm, linear_nodes(gm), report["layers"]))  # refs after untie
        ctx.reports[self.name] = report
        return PassResult(gm, modified=bool(plan) or bool(skipped))

    def _run_layerwise(self, gm: fx.GraphModule, ctx: CompileContext,
                       todo: dict[fx.Node, tuple[LinearRef, tuple[int, int]]],
                       report: dict[str, Any]) -> None:
        from flowc.passes.calibrate import run_layerwise

        stats = _WindowStats(hessian=self.update == "obs")
        max_abs: dict[fx.Node, torch.Tensor] = {}

        def hook(ref: LinearRef, inputs: Sequence[torch.Tensor]) -> None:
            src = ref.node.args[0]
            if isinstance(src, fx.Node) and src not in max_abs:
                max_abs[src] = _max_abs(inputs)
            item = todo.get(ref.node)
            if item is not None:
                norm, hessian = stats(src, inputs)
                (n, m) = item[1]
                factor = None if hessian is None else stats.factor(self.damp, item[0].name)
                report["layers"][item[0].name] = self._prune_one(gm, item[0], n, m, norm,
                                                                 factor)

        if not ctx.calib_inputs:
            raise PruneError("nm-prune: sequential pruning needs calibration inputs")
        run_layerwise(gm, ctx.calib_inputs, hook, bar=ctx.progress is not None)
        # every linear's input was computed after all earlier linears were pruned: these are
        # the final graph's activations on the calibration windows (quantize{smooth} reuses
        # them while the graph stays as it is now)
        ctx.memo[INPUT_MAX_ABS] = (GraphState(gm), ctx.calib_inputs, max_abs)

    def _pattern(self, ref: LinearRef) -> tuple[int, int] | None:
        if self.n is not None and self.m is not None:
            return (self.n, self.m)
        pattern = flowc_meta(ref.node).get("pattern")
        if pattern is None:
            return None
        n, m = (int(v) for v in pattern)
        check_pattern(n, m, ref.name)
        return (n, m)

    def _prune_one(self, gm: fx.GraphModule, ref: LinearRef, n: int, m: int,
                   norm: np.ndarray | None, factor: np.ndarray | None = None
                   ) -> dict[str, Any]:
        """Prune one linear in place; `factor` (obs_factor of its input's X^T X) asks for the
        OBS update of the kept weights."""
        weight = get_param(gm, ref.weight_target).detach().to(torch.float32).cpu().numpy()
        meta = flowc_meta(ref.node)
        scores = wanda_scores(weight, norm, ref.name) if self.score == "wanda" else None
        pruned, mask = prune_layer(weight, n, m, scores, ref.name)
        if factor is not None:
            pruned = obs_sweep(weight, mask, factor, self.blocksize, ref.name, np.float32)
            pruned = pruned.astype(np.float32)
        ref = untie_weight(gm, ref)  # a tied/reused weight gets a private copy first
        set_param(gm, ref.weight_target, torch.from_numpy(pruned))
        sparsity = float(np.count_nonzero(pruned == 0)) / pruned.size
        meta["pattern"] = (n, m)
        meta["prune"] = {"method": self.score, "sparsity": sparsity}
        if self.layerwise:  # only then: the one-shot record stays as documented
            meta["prune"].update(sequential=True, update=self.update)
        pad = k_pad(pruned.shape[1], m)
        if pad:
            meta["k_pad"] = pad
        out = {"pattern": [n, m], "params": int(pruned.size), "sparsity": sparsity,
               "nominal": 1.0 - n / m}
        return {**out, "k_pad": pad} if pad else out


def _summary(
    gm: fx.GraphModule, refs: list[LinearRef], pruned: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Parameter-weighted sparsities: over the pruned layers, nominal, and over all linears."""
    p_params = sum(v["params"] for v in pruned.values())
    zeros_all = params_all = 0
    for r in refs:
        w = get_param(gm, r.weight_target)
        zeros_all += int((w == 0).sum())
        params_all += w.numel()
    return {
        "pruned_layers": len(pruned),
        "dense_layers": sorted(r.name for r in refs if r.name not in pruned),
        "sparsity": sum(v["sparsity"] * v["params"] for v in pruned.values()) / p_params
        if p_params else 0.0,
        "nominal_sparsity": sum(v["nominal"] * v["params"] for v in pruned.values()) / p_params
        if p_params else 0.0,
        "model_sparsity": zeros_all / params_all if params_all else 0.0,
    }

