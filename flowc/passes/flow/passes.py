"""Pass wrappers: `outliers`, `flow-select`, `owl-nm`, `uniform-nm` (see docs/flow.md).

Selection passes only *annotate*: they set `meta["flowc"]["pattern"] = (keep_n, group_m)` on
each static-weight linear; the `nm-prune` pass (annotation mode, no n/m options) then prunes
every layer to its own pattern. A dense choice (n == m, or a layer kept dense) leaves
`pattern` unset, which every later stage reads as dense; the chosen n:m is still recorded in
`meta["flowc"]["selection"]`.

`skip` (fnmatch patterns) takes layers out of the problem altogether: they stay dense and do
not count in the target (Wanda/FLOW measure sparsity over the transformer blocks, lm_head
excluded), unlike `keep_dense`, whose layers are fixed dense but count.

Units: with `granularity="layer"` every Linear is a unit; with `"block"` the Linears of one
transformer block (name prefix `...layers.<i>` / `h.<i>` / `blocks.<i>`) form one unit that
gets one pattern, as in FLOW's code. Layers kept dense are always units of their own.

`flow-select{preset=repo}` reproduces FLOW's public code (presets.py, repo.py); `preset=paper`
(the default) is the paper's formula with flowc's decisions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.fx as fx

from flowc.errors import UsageError
from flowc.passes.base import CompileContext, Pass, PassResult
from flowc.passes.graph import (
    LinearRef,
    flowc_meta,
    get_param,
    linear_nodes,
    matches,
    select_layers,
)
from flowc.passes.registry import register_pass

from . import repo
from .baselines import owl_nm, uniform_nm
from .ilp import select_nm
from .outliers import (
    LayerOutliers,
    RawOutliers,
    block_cut,
    measure_concatenated,
    measure_scores,
    merge_blocks,
    normalise_layers,
)
from .outliers import wanda_scores as _wanda
from .presets import resolve_preset
from .problem import Pattern, Selection, flexcim_supported, parse_pattern

_BLOCK = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)(?:\.|$)")
DENSE: Pattern = (1, 1)
Granularity = Literal["layer", "block"]
Locality = Literal["exact", "repo", "repo-block"]
Threshold = Literal["layer", "block"]


def block_of(name: str) -> str:
    """`model.layers.3.mlp.up_proj` -> `model.layers.3`; names outside a block map to themselves."""
    match = _BLOCK.match(name)
    return match.group(1) if match else name


def resolve_keep_dense(names: Sequence[str], keep: Sequence[str]) -> list[str]:
    """Layer names to keep dense from words `first`, `last`, `lm_head` and fnmatch patterns.

    `first`/`last` = every Linear of the first/last transformer block (the first/last Linear if
    the names show no blocks). A word or pattern that matches nothing is an error.
    """
    blocks = [b for b in dict.fromkeys(block_of(n) for n in names) if b not in names]
    chosen: list[str] = []
    for item in keep:
        if item in ("first", "last"):
            if blocks:
                blk = blocks[0] if item == "first" else blocks[-1]
                hit = [n for n in names if block_of(n) == blk]
            else:
                hit = [names[0] if item == "first" else names[-1]] if names else []
        elif item == "lm_head":
            hit = [n for n in names if n == "lm_head" or n.endswith(".lm_head")]
        else:
            hit = [n for n in names if matches(n, [item])]
        if not hit:
            raise UsageError(f"keep_dense: {item!r} matches no layer")
        chosen.extend(hit)
    return list(dict.fromkeys(chosen))


def machine_supported(ctx: CompileContext) -> Callable[[int, int], bool]:
    """The machine's native patterns (any n == m counts as dense) or FlexCiM's default rule."""
    machine = ctx.machine
    if machine is None or not hasattr(machine, "supports"):
        return flexcim_supported
    dense = bool(getattr(machine, "dense", True))
    return lambda n, m: bool(machine.supports(n, m)) or (dense and n == m)


def _weight(gm: fx.GraphModule, ref: LinearRef) -> np.ndarray:
    return get_param(gm, ref.weight_target).detach().to(torch.float64).cpu().numpy()


def _units(refs: Sequence[LinearRef], dense: Sequence[str], granularity: str) -> dict[str, str]:
    """Linear name -> unit name."""
    if granularity not in ("layer", "block"):
        raise UsageError(f"granularity must be 'layer' or 'block', got {granularity!r}")
    return {r.name: r.name if granularity == "layer" or r.name in dense else block_of(r.name)
            for r in refs}


def _registration_order(gm: fx.GraphModule, refs: Sequence[LinearRef]) -> list[LinearRef]:
    """refs in module registration order (the order of the model's parameters), the order in
    which FLOW's `find_layers` walks a block; graph order for weights not found."""
    rank = {n: i for i, (n, _) in enumerate(gm.named_parameters(remove_duplicate=False))}
    rank.update({n: len(rank) + i for i, (n, _) in enumerate(gm.named_buffers())
                 if n not in rank})
    pos = {r.name: i for i, r in enumerate(refs)}
    return sorted(refs, key=lambda r: (rank.get(r.weight_target, len(rank) + pos[r.name]),
                                       pos[r.name]))


def _scores(gm: fx.GraphModule, ref: LinearRef) -> np.ndarray:
    norm = flowc_meta(ref.node).get("input_norm")
    if norm is None:
        raise UsageError(f"layer {ref.name}: no input_norm; run calibrate first")
    return _wanda(_weight(gm, ref), norm)


def _measure_blockwise(gm: fx.GraphModule, refs: Sequence[LinearRef], unit_of: dict[str, str],
                       tau: float, locality: str, threshold: str) -> list[RawOutliers]:
    """Raw statistics when a block's scores are needed together (threshold=block, or
    locality=repo-block); one block's scores in memory at a time. Units in graph order."""
    by_block: dict[str, list[LinearRef]] = {}
    for ref in refs:
        by_block.setdefault(block_of(ref.name), []).append(ref)
    found: dict[str, list[RawOutliers]] = {}
    for members in by_block.values():
        members = _registration_order(gm, members)
        scores = [_scores(gm, ref) for ref in members]
        shared = block_cut(scores, tau) if threshold == "block" else None
        cuts = [shared if shared is not None else block_cut([s], tau) for s in scores]
        units: dict[str, list[int]] = {}
        for i, ref in enumerate(members):
            units.setdefault(unit_of[ref.name], []).append(i)
        for unit, idx in units.items():
            if locality == "repo-block" and unit != members[idx[0]].name:
                found[unit] = [measure_concatenated(unit, [(scores[i], cuts[i]) for i in idx])]
            else:
                found[unit] = [measure_scores(members[i].name, scores[i], tau, locality,
                                              cut=cuts[i]) for i in idx]
    order = list(dict.fromkeys(unit_of[r.name] for r in refs))
    return [r for unit in order for r in found[unit]]


def analyse_graph(gm: fx.GraphModule, refs: Sequence[LinearRef], unit_of: dict[str, str],
                  free_units: set[str], tau: float, locality: str,
                  with_scores: bool = True, threshold: str = "layer",
                  normalise: str = "minmax") -> list[LayerOutliers]:
    """LayerOutliers per unit; O^ and ND normalised over the free units only.

    Fixed (dense) units get neutral O^ = ND = 0.5: they are not selected, so they must not
    stretch the min-max range of the layers that are. `threshold="block"` / locality
    "repo-block" measure a block's Linears together (FLOW's code); `normalise="repo"` is FLOW's
    path from the statistics to the ILP (repo.normalise_repo).
    """
    if with_scores and (threshold == "block" or locality == "repo-block"):
        raw = _measure_blockwise(gm, refs, unit_of, tau, locality, threshold)
    elif with_scores:
        raw = [measure_scores(ref.name, _scores(gm, ref), tau, locality) for ref in refs]
    else:
        raw = []
        for ref in refs:
            shape = tuple(get_param(gm, ref.weight_target).shape)
            raw.append(RawOutliers(ref.name, shape[0] * shape[1], 0, None, locality, shape[1]))
    merged = merge_blocks(raw, lambda n: unit_of.get(n, n))
    chosen = [r for r in merged if r.name in free_units]
    free = repo.normalise_repo(chosen) if normalise == "repo" else normalise_layers(chosen)
    by_name = {u.name: u for u in free}
    return [by_name.get(r.name) or LayerOutliers(r.name, r.params, r.n_outliers, r.ratio, 0.5,
                                                 r.distance, 0.5, r.locality, r.in_features)
            for r in merged]


def _annotate(refs: Sequence[LinearRef], unit_of: dict[str, str], units: list[LayerOutliers],
              sel: Selection, dense: set[str], pass_name: str) -> dict[str, Any]:
    """Write pattern/selection/outliers meta on every linear; return the pass report."""
    by_unit = {u.name: u for u in units}
    for ref in refs:
        unit = unit_of[ref.name]
        n, m = sel.patterns[unit]
        meta = flowc_meta(ref.node)
        is_dense = n == m
        if is_dense:
            meta.pop("pattern", None)
        else:
            meta["pattern"] = (n, m)
        meta["selection"] = {"by": pass_name, "unit": unit, "pattern": (n, m),
                             "dense": is_dense, "kept_dense": unit in dense}
    return {
        "method": sel.method, "target": sel.target, "tolerance": sel.tolerance,
        "achieved": sel.sparsity, "objective": sel.objective,
        "units": {u: {"pattern": "dense" if p[0] == p[1] else f"{p[0]}:{p[1]}",
                      "params": by_unit[u].params, "ratio": by_unit[u].ratio,
                      "ratio_hat": by_unit[u].ratio_hat, "nd": by_unit[u].nd,
                      "cost": sel.costs.get(u)}
                  for u, p in sel.patterns.items()},
        "kept_dense": sorted(dense),
    }


@dataclass(frozen=True)
class _Selector(Pass):
    """Shared plumbing of the selection passes (not registered)."""

    keep_dense: tuple[str, ...] = ()
    granularity: Granularity = "layer"
    skip: tuple[str, ...] = ()

    def _plan(self, gm: fx.GraphModule, with_scores: bool, tau: float = 5.0,
              locality: str = "exact", granularity: str | None = None,
              threshold: str = "layer", normalise: str = "minmax"):
        refs, skipped = select_layers(linear_nodes(gm), None, self.skip, what=self.name)
        for ref in skipped:  # outside the problem: dense, and not counted in the target
            for key in ("pattern", "selection", "outliers"):
                flowc_meta(ref.node).pop(key, None)
        if not refs:
            raise UsageError(f"{self.name}: the graph has no static-weight linear layers")
        dense = resolve_keep_dense([r.name for r in refs], self.keep_dense)
        unit_of = _units(refs, dense, granularity or self.granularity)
        free_units = {unit_of[r.name] for r in refs if r.name not in dense}
        units = analyse_graph(gm, refs, unit_of, free_units, tau, locality, with_scores,
                              threshold, normalise)
        if with_scores:
            by_unit = {u.name: u for u in units}
            for ref in refs:
                flowc_meta(ref.node)["outliers"] = {"unit": unit_of[ref.name],
                                                    **asdict(by_unit[unit_of[ref.name]])}
        fixed = {unit_of[d]: DENSE for d in dense}
        return refs, unit_of, units, fixed, set(fixed)

    def _finish(self, gm, ctx, refs, unit_of, units, sel, dense,
                options: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> PassResult:
        report = _annotate(refs, unit_of, units, sel, dense, self.name)
        report.update(extra or {})
        report["options"] = {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in (options or self.options()).items()}
        ctx.reports[self.name] = report
        ctx.log(f"{self.name}: target {sel.target:.4f}, achieved {sel.sparsity:.4f}")
        return PassResult(gm, modified=True)


@register_pass
@dataclass(frozen=True)
class OutlierAnalysis(_Selector):
    """Measure O_l, O^_l, distance and ND_l per unit; store them in meta["flowc"]["outliers"]."""

    name = "outliers"
    requires = ("calibrate",)
    tau: float = 5.0
    locality: Locality = "exact"
    threshold: Threshold = "layer"

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        if self.locality == "repo-block" and self.granularity != "block":
            raise UsageError("outliers: locality=repo-block needs granularity=block")
        _, _, units, _, dense = self._plan(gm, True, self.tau, self.locality,
                                           threshold=self.threshold)
        ctx.reports[self.name] = {"tau": self.tau, "locality": self.locality,
                                  "threshold": self.threshold,
                                  "granularity": self.granularity, "kept_dense": sorted(dense),
                                  "units": [asdict(u) for u in units]}
        return PassResult(gm, modified=True)


@register_pass
@dataclass(frozen=True)
class FlowSelect(_Selector):
    """FLOW: per-unit N:M from outlier ratio and distribution, by ILP (docs/flow.md).

    `preset` ("paper" or "repo", presets.py) supplies every option left at None; an option
    given explicitly wins. The report's `achieved` is the parameter-weighted sparsity of what
    is shipped (after `force_dense_ends`); `ilp_sparsity` is what the constraint counted.
    """

    name = "flow-select"
    requires = ("calibrate",)
    target: float = 0.5
    tolerance: float | None = None
    alpha: float = 1.0
    beta: float = 4.0
    n_max: int = 8
    m_max: int = 8
    tau: float | None = None
    locality: Locality | None = None
    candidates: Literal["default", "repo"] | tuple[tuple[int, int], ...] | None = None
    solver: Literal["cbc", "highs", "dp"] = "cbc"
    direction: Literal["paper", "repo"] | None = None
    granularity: Granularity | None = None
    preset: Literal["paper", "repo"] = "paper"
    threshold: Threshold | None = None
    normalise: Literal["minmax", "repo"] | None = None
    constraint: Literal["weighted-window", "repo-equality"] | None = None
    solver_status: Literal["check", "ignore"] | None = None
    force_dense_ends: bool | None = None

    def resolved(self) -> dict[str, Any]:
        """Every option's effective value: the preset's default unless given."""
        given = self.options()
        given.pop("preset")
        return resolve_preset(self.preset, given) | {"preset": self.preset}

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        o = self.resolved()
        refs, unit_of, units, fixed, dense = self._plan(
            gm, True, o["tau"], o["locality"], o["granularity"], o["threshold"], o["normalise"])
        args = (self.alpha, self.beta, self.n_max, self.m_max, o["candidates"],
                machine_supported(ctx), fixed)
        if o["constraint"] == "repo-equality":
            sel = repo.select_repo(units, self.target, *args, solver=self.solver,
                                   direction=o["direction"], solver_status=o["solver_status"])
        else:
            sel = select_nm(units, self.target, o["tolerance"], *args, solver=self.solver,
                            direction=o["direction"])
        params = {u.name: u.params for u in units}
        shipped, forced = dict(sel.patterns), []
        if o["force_dense_ends"]:
            shipped, forced = repo.force_dense_ends(sel.patterns, unit_of, block_of)
        extra = {"ilp_sparsity": sel.sparsity, "constraint": o["constraint"],
                 "forced_dense": forced,
                 "shipped_unweighted": repo.unweighted_sparsity(shipped)}
        if forced:  # what the ILP had chosen for them (FLOW's ILP counts them)
            extra["ilp_patterns"] = {u: f"{n}:{m}" for u, (n, m) in sel.patterns.items()
                                     if u in forced}
        if o["force_dense_ends"] or o["constraint"] == "repo-equality":
            sel = replace(sel, patterns=shipped,
                          sparsity=repo.weighted_sparsity(shipped, params))
        return self._finish(gm, ctx, refs, unit_of, units, sel, dense, o, extra)


@register_pass
@dataclass(frozen=True)
class OwlSelect(_Selector):
    """OWL-N:M baseline: M fixed, N per unit from the outlier ratio (baselines.owl_nm).

    `target` > 0 centres the band on m * (1 - target) kept per group instead of `n`.
    """

    name = "owl-nm"
    requires = ("calibrate",)
    n: int = 2
    m: int = 8
    lam: float = 1.0
    tau: float = 5.0
    target: float = 0.0

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        refs, unit_of, units, fixed, dense = self._plan(gm, True, self.tau)
        bad = [u.name for u in units if u.name not in fixed and u.in_features % self.m]
        if bad:
            raise UsageError(f"owl-nm: M={self.m} does not divide K of {', '.join(bad[:4])}")
        if not 0.0 <= self.target < 1.0:
            raise UsageError(f"owl-nm: target must be in [0, 1), got {self.target}")
        base = self.m * (1.0 - self.target) if self.target > 0 else None
        sel = owl_nm(units, parse_pattern((self.n, self.m)), self.lam, machine_supported(ctx),
                     fixed, base)
        return self._finish(gm, ctx, refs, unit_of, units, sel, dense)


@register_pass
@dataclass(frozen=True)
class UniformSelect(_Selector):
    """Uniform N:M baseline: every unit gets n:m except the ones kept dense."""

    name = "uniform-nm"
    n: int = 2
    m: int = 4

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        refs, unit_of, units, fixed, dense = self._plan(gm, False)
        bad = [u.name for u in units if u.name not in fixed and u.in_features % self.m]
        if bad:
            raise UsageError(f"uniform-nm: M={self.m} does not divide K of {', '.join(bad[:4])}")
        sel = uniform_nm(units, parse_pattern((self.n, self.m)), fixed)
        return self._finish(gm, ctx, refs, unit_of, units, sel, dense)
