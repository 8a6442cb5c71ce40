"""Measured sensitivity: what pruning each layer to each pattern costs its output.

FLOW's ILP (problem.py) decides from outlier statistics that never look at accuracy; on
SmolLM2 that sends ~100 layers to N = 1 and loses badly (docs/results.md). This module measures
the damage instead. For a Linear with weight W [out, K] and calibration inputs X [T, K], the
Gram matrix H = X^T X gives the output reconstruction error of any replacement W' exactly:

    ||X W^T - X W'^T||_F^2 = tr((W - W') H (W - W')^T)

and we normalise it by the layer's output energy ||X W^T||_F^2 = tr(W H W^T), so layers of
every size and scale compare (a relative error). W' is W with the Wanda N:M mask of the
pattern applied (`nm-prune`'s own rule, so the table prices exactly the mask the compile will
cut), and, with the OBS update, that mask plus SparseGPT's correction of the kept weights
(`prune.obs_update`, same dampening and block size as `nm-prune{update=obs}`).

Cost. H costs T K^2 multiply-adds per distinct layer input; the errors cost out K^2 per
pattern. On SmolLM2 at 32 x 512 tokens the Gram matrices alone would cost more than the
calibration forward passes, so H is estimated on an evenly strided subsample of the tokens
(`tokens`, default 4096: more than twice the largest K of SmolLM2, so H is full rank); the
errors are relative, and a subsample estimates them without bias. `tokens=0` uses every token.

The statistics come from the *dense* model (one layer-wise pass, nothing pruned), like FLOW's
selection statistics; the table is keyed by layer name and pattern and can be saved and
reloaded (`save=` / `load=` on the pass), because computing it is the expensive part and it
serves every target, budget and machine.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.fx as fx

from flowc.errors import UsageError
from flowc.passes.base import CompileContext, Pass, PassResult
from flowc.passes.graph import LinearRef, flowc_meta, get_param, linear_nodes, select_layers
from flowc.passes.prune import nm_mask, obs_update
from flowc.passes.registry import register_pass

from .problem import Pattern, flexcim_supported, resolve_candidates
from .sensitivity_table import UPDATES, SensitivityTable, level_key, pattern_key

# ---------------------------------------------------------------------------------------------
# Pure functions


def gram(inputs: Iterable[torch.Tensor], tokens: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(H = X^T X, per-channel ||X_j||_2 over ALL tokens, tokens used for H).

    `tokens` > 0 estimates H on an evenly strided subsample of about that many tokens, scaled
    by total / used so it estimates the full Gram matrix (the relative errors do not care, the
    scale keeps H comparable with `nm-prune{update=obs}`'s). fp32 products, float64 sums.
    """
    xs = [x.detach().reshape(-1, x.shape[-1]) for x in inputs]
    total = sum(x.shape[0] for x in xs)
    if total == 0:
        raise UsageError("sensitivity: no calibration tokens")
    k = xs[0].shape[1]
    stride = max(1, total // tokens) if tokens > 0 else 1
    h = torch.zeros(k, k, dtype=torch.float64)
    sumsq = torch.zeros(k, dtype=torch.float64)
    used = 0
    offset = 0
    for x in xs:
        sumsq += x.to(torch.float64).square().sum(dim=0)
        start = (-offset) % stride  # keep one global stride across windows
        sub = x[start::stride].to(torch.float32)
        used += sub.shape[0]
        h += (sub.T @ sub).to(torch.float64)
        offset += x.shape[0]
    h *= total / used
    return h.numpy(), np.sqrt(sumsq.numpy()), used


def output_energy(weight: np.ndarray, hessian: np.ndarray) -> float:
    """tr(W H W^T) = ||X W^T||_F^2."""
    w = torch.as_tensor(weight, dtype=torch.float64)
    h = torch.as_tensor(hessian, dtype=torch.float64)
    return float(((w @ h) * w).sum())


def stacked_errors(deltas: Sequence[np.ndarray], hessian: np.ndarray) -> list[float]:
    """[tr(D H D^T) for D in deltas], all D stacked into one fp32 matmul with H."""
    d = torch.as_tensor(np.concatenate(deltas), dtype=torch.float32)
    h = torch.as_tensor(hessian, dtype=torch.float32)
    per_row = ((d @ h) * d).sum(dim=1, dtype=torch.float64)
    return [float(v) for v in per_row.reshape(len(deltas), -1).sum(dim=1)]


def layer_errors(weight: np.ndarray, hessian: np.ndarray, input_norm: np.ndarray,
                 patterns: Sequence[Pattern], updates: Sequence[str] = ("none",),
                 damp: float = 0.01, blocksize: int = 128, layer: str = "<array>",
                 keep_masks: dict | None = None) -> dict[str, dict[str, float]]:
    """{pattern_key: {update: relative error}} for every non-dense pattern whose M divides K.

    The Wanda mask is `nm-prune`'s (same scores, same stable tie-break). With "obs", the kept
    weights are corrected by `obs_update` (all patterns stacked into one call: the rows are
    independent, so one column sweep serves every pattern).
    """
    w = np.asarray(weight, dtype=np.float64)
    k = w.shape[1]
    base = output_energy(w, hessian)
    if base <= 0:
        base = 1.0  # a layer whose inputs never fire: every error is 0 anyway
    scores = np.abs(w) * np.asarray(input_norm, dtype=np.float64)[None, :]
    usable = [p for p in patterns if p[0] != p[1] and k % p[1] == 0]
    out: dict[str, dict[str, float]] = {pattern_key(p): {} for p in usable}
    masks = [nm_mask(scores, n, m, layer) for n, m in usable]
    if keep_masks is not None:
        keep_masks.update({(layer, p): np.packbits(mk) for p, mk in zip(usable, masks,
                                                                        strict=True)})
    if "none" in updates and usable:  # every pattern in one matmul (better BLAS use)
        errs = stacked_errors([np.where(mask, 0.0, w) for mask in masks], hessian)
        for p, e in zip(usable, errs, strict=True):
            out[pattern_key(p)]["none"] = e / base
    if "obs" in updates and usable:
        rows = w.shape[0]
        stacked = obs_update(np.concatenate([w] * len(usable)), np.concatenate(masks),
                             hessian, damp, blocksize, layer)
        errs = stacked_errors([w - stacked[i * rows:(i + 1) * rows]
                               for i in range(len(usable))], hessian)
        for p, e in zip(usable, errs, strict=True):
            out[pattern_key(p)]["obs"] = e / base
    return out


def layer_type(name: str) -> str:
    """`model.layers.3.mlp.up_proj` -> `model.layers.*.mlp.up_proj`: the layer's role."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def kl_scales(gm: fx.GraphModule, refs: Sequence[LinearRef], norms: Mapping[str, np.ndarray],
              table: SensitivityTable, windows: Sequence[tuple], groups: str = "type",
              patterns: Sequence[Pattern] | None = None) -> dict[str, dict[str, float]]:
    """End-to-end weight of each layer's relative error per sparsity level, measured by KL.

    Relative errors of different layer roles are not comparable (an error in a small k_proj
    and one in a down_proj that writes into the residual stream move the output very
    differently), and damage grows faster than the error at high sparsity. For each group
    (`type`: one role across all blocks, e.g. every up_proj; `layer`: every Linear alone) and
    each sparsity level of the candidates, we prune only the group's layers to the level's
    least-damaging pattern (Wanda masks, as the table), measure KL(dense || pruned) per token
    on `windows`, and set scale = KL / sum of the group's relative errors at that pattern.
    `cost = scale[level] x error` then estimates each layer's share of the end-to-end KL.
    Forwards: groups x levels (SmolLM2, FlexCiM: 7 roles x 3 levels = 21).
    """
    from .search import KLScorer

    if groups not in ("type", "layer"):
        raise UsageError(f"sensitivity: kl groups must be type, layer or none, got {groups!r}")
    measured = sorted({tuple(int(v) for v in k.split(":")) for row in table.errors.values()
                       for k in row}, key=lambda p: (-p[1], p[0]))
    pats = [p for p in (patterns or measured) if p[0] != p[1]]
    members: dict[str, list[str]] = {}
    for ref in refs:
        members.setdefault(layer_type(ref.name) if groups == "type" else ref.name,
                           []).append(ref.name)
    layers = {r.name: r for r in refs}
    scorer = KLScorer(gm, layers, {}, norms, pats, windows, table.masks)
    scales: dict[str, dict[str, float]] = {}
    try:
        for names in members.values():
            by_level: dict[str, Pattern] = {}
            for p in pats:  # per level, the pattern with the least summed error
                if all(math.isfinite(table.error(n, p)) for n in names):
                    key, err = level_key(p), sum(table.error(n, p) for n in names)
                    if key not in by_level or err < sum(table.error(n, by_level[key])
                                                        for n in names):
                        by_level[key] = p
            for key, p in by_level.items():
                kl = scorer.score({n: p for n in names})
                denom = sum(table.error(n, p) for n in names)
                for n in names:
                    scales.setdefault(n, {})[key] = kl / denom if denom > 0 else 0.0
            scorer.apply({n: (1, 1) for n in names})  # back to dense for the next group
    finally:
        scorer.restore()
    return scales


# ---------------------------------------------------------------------------------------------
# The pass


def _candidates(spec: str | Sequence | None, ctx: CompileContext) -> list[Pattern]:
    from .passes import machine_supported  # the machine's native set (passes.py owns it)

    supported = machine_supported(ctx) if ctx.machine is not None else flexcim_supported
    return resolve_candidates(spec, supported)


def measure_graph(gm: fx.GraphModule, refs: Sequence[LinearRef], windows: Sequence[tuple],
                  patterns: Sequence[Pattern], updates: Sequence[str], tokens: int,
                  damp: float, blocksize: int, bar: bool = False,
                  norms: Mapping[str, np.ndarray] | None = None) -> SensitivityTable:
    """One layer-wise pass over `windows` of the (dense) graph: the table for `refs`.

    `norms` (layer -> ||X_j||, e.g. the `calibrate` pass's, over more windows) define the
    Wanda masks when given, so the table prices the masks `nm-prune` will cut even when
    `windows` is a subset of the calibration set."""
    from flowc.passes.calibrate import run_layerwise

    todo = {r.node: r for r in refs}
    table = SensitivityTable(updates=tuple(updates))
    cache: dict[str, Any] = {"key": None}

    def hook(ref: LinearRef, inputs: Sequence[torch.Tensor]) -> None:
        if ref.node not in todo:
            return
        key = ref.node.args[0]
        if cache["key"] is not key:  # q/k/v and gate/up read one input: one Gram matrix
            cache.update(key=key, value=gram(inputs, tokens))
        h, norm, used = cache["value"]
        if norms is not None and norms.get(ref.name) is not None:
            norm = np.asarray(norms[ref.name])
        weight = get_param(gm, ref.weight_target).detach().to(torch.float64).numpy()
        table.shape[ref.name] = (int(weight.shape[0]), int(weight.shape[1]))
        table.errors[ref.name] = layer_errors(weight, h, norm, patterns, updates, damp,
                                              blocksize, ref.name, table.masks)
        table.tokens = used

    run_layerwise(gm, windows, hook, bar=bar)
    return table


def sensitivity_windows(windows: Sequence[tuple], count: int, tokens: int) -> Sequence[tuple]:
    """`count` > 0: the first `count` windows; -1: the first windows that hold `tokens`
    tokens (at least one); 0: all of them."""
    if count > 0:
        return windows[:count]
    if count == -1 and tokens > 0 and windows:
        per = max(1, int(windows[0][0].numel()))
        return windows[:max(1, -(-tokens // per))]
    return windows


@register_pass
@dataclass(frozen=True)
class Sensitivity(Pass):
    """Measure the relative output error of every selectable layer at every candidate pattern.

    Options: `candidates` (default: the machine's native set), `update` = none | obs | both
    (which errors to measure; obs also measures none), `tokens` (Gram-matrix subsample, 0 =
    all), `skip` (layers left out, e.g. lm_head), `save` / `load` (a JSON table; `load` skips
    the measurement and checks the table covers the graph's layers), `damp`, `blocksize`,
    `kl` = type | layer | none and `kl_windows` (end-to-end scales, see `kl_scales`),
    `windows` (calibration windows the layer-wise pass runs: -1, the default = just enough
    whole windows for `tokens`; 0 = all, with a strided token subsample for the Gram
    matrices, 1.6x slower on SmolLM2; the Wanda masks always use the `calibrate` pass's
    norms over every window when it ran).
    The table goes to `ctx.reports["sensitivity"]` and `ctx.options["sensitivity_table"]`.
    """

    name = "sensitivity"
    candidates: Literal["default", "repo"] | tuple[tuple[int, int], ...] = "default"
    update: Literal["none", "obs", "both"] = "none"
    tokens: int = 4096
    skip: tuple[str, ...] = ()
    save: str = ""
    load: str = ""
    damp: float = 0.01
    blocksize: int = 128
    kl: Literal["type", "layer", "none"] = "type"
    kl_windows: int = 1
    windows: int = -1

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        if self.update not in UPDATES:
            raise UsageError(f"sensitivity: update must be one of {UPDATES}, got {self.update!r}")
        refs, _ = select_layers(linear_nodes(gm), None, self.skip, what=self.name)
        updates = ("none",) if self.update == "none" else ("none", "obs")
        start = time.perf_counter()
        if self.load:
            table = SensitivityTable.load(self.load)
            missing = [r.name for r in refs if r.name not in table.shape]
            if missing:
                raise UsageError(f"sensitivity: table {self.load} lacks layers "
                                 f"{', '.join(missing[:4])}")
        else:
            if not ctx.calib_inputs:
                raise UsageError("sensitivity: needs calibration inputs")
            patterns = _candidates(self.candidates, ctx)
            ctx.log(f"sensitivity: {len(refs)} layers x {len(patterns)} patterns, "
                    f"updates {'+'.join(updates)}")
            windows = sensitivity_windows(ctx.calib_inputs, self.windows, self.tokens)
            norms = {r.name: flowc_meta(r.node).get("input_norm") for r in refs}
            table = measure_graph(gm, refs, windows, patterns, updates, self.tokens,
                                  self.damp, self.blocksize, bar=ctx.progress is not None,
                                  norms=norms)
            if self.kl != "none":
                ctx.log(f"sensitivity: end-to-end scales per {self.kl} (KL on "
                        f"{self.kl_windows} window(s))")
                norms = {r.name: flowc_meta(r.node).get("input_norm") for r in refs}
                if any(v is None for v in norms.values()):
                    raise UsageError("sensitivity: kl scales need the calibrate pass first "
                                     "(Wanda norms), or kl=none")
                table.scale = kl_scales(gm, refs, norms, table,  # type: ignore[arg-type]
                                        ctx.calib_inputs[:max(1, self.kl_windows)], self.kl)
            table.info = {"windows": len(ctx.calib_inputs), "kl": self.kl,
                          "seconds": time.perf_counter() - start}
            if self.save:
                table.save(self.save)
        for ref in refs:
            flowc_meta(ref.node)["sensitivity"] = table.errors.get(ref.name, {})
        ctx.options["sensitivity_table"] = table
        ctx.reports[self.name] = {"layers": len(refs), "tokens": table.tokens,
                                  "updates": list(table.updates), "loaded": bool(self.load)}
        return PassResult(gm, modified=True)
