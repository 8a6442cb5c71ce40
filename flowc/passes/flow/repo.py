"""FLOW's public code, reproduced: normalisation, ILP, reading of the result, forced ends.

`flow-select{preset=repo}` follows FLOW's published scripts (FLOW-open-project/FLOW, commit
af60401: `sw/solver/ilp_solver.py` picks one N:M per decoder block, `sw/lib/prune_all.py`
prunes with it) wherever they differ from the paper's formula or from flowc's own decisions.
Each difference is a named option of the pass (docs/flow.md, "FLOW's code, exactly"); this
module holds the parts that only the repo reading needs:

- `normalise_repo`: the statistics' path to the ILP (outlier ratio in percent, locality 0.0
  for a block with fewer than two outliers, min-max scaled to [0, lambda] and centred, then
  min-max normalised again when any elementwise sum O_l + D_l leaves [0, 1]).
- `select_repo`: the ILP as FLOW writes it (its variable names, candidate order, auxiliary
  per-block sparsity variables, and the *unweighted* block-mean sparsity as an exact
  equality), and its result read as FLOW reads it when `solver_status="ignore"`: a row with
  no z exactly 1 is skipped, so later blocks shift up, and the list is padded with 4:8.
- `force_dense_ends`: `prune_flow` prunes the first and last decoder blocks 8:8 (dense)
  whatever the ILP chose for them, so the shipped sparsity is below the ILP's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import numpy as np
import pulp

from flowc.errors import UsageError

from . import dp
from .ilp import TIME_LIMIT, _choice, _make_solver
from .outliers import LayerOutliers, RawOutliers
from .problem import (
    Pattern,
    Problem,
    Selection,
    SolverError,
    achieved_sparsity,
    flexcim_supported,
    infeasible_error,
    prepare,
)

REPO_LAMBDA = 0.2  # FLOW's `--Lamda` default; it cancels unless the renormalisation is skipped
REPO_PAD: Pattern = (4, 8)  # what FLOW appends for rows it could not read
REPO_DENSE: Pattern = (8, 8)  # what prune_flow writes for the first and last blocks
STATUSES = ("check", "ignore")


def _span(values: np.ndarray, what: str) -> float:
    span = float(values.max() - values.min())
    if span == 0.0:
        raise UsageError(f"normalise=repo: every unit has the same {what}; FLOW's code divides "
                         "by zero here (its costs become NaN); use normalise=minmax")
    return span


def repo_scaled(ratio_pct: Sequence[float], locality: Sequence[float],
                lam: float = REPO_LAMBDA) -> tuple[list[float], list[float]]:
    """(O_l, D_l) as FLOW's solver hands them to its ILP (see the module docstring).

    The arithmetic follows FLOW's order of operations so that the values agree to the last
    bit: locality lam * (x - min) / span, ratio (x - min) * (1 / span * lam), each centred on
    its mean; then, if any O_l + D_l (elementwise, numpy) lies outside [0, 1], both are
    min-max normalised to [0, 1] again (in practice always: centred values sum below 0).
    """
    loc = np.asarray(locality, dtype=np.float64)
    loc = lam * (loc - loc.min()) / _span(loc, "outlier locality")
    loc = loc - np.mean(loc)
    rat = np.asarray(ratio_pct, dtype=np.float64)
    rat = (rat - rat.min()) * (1 / _span(rat, "outlier ratio") * lam)
    rat = rat - np.mean(rat)
    if any(x < 0 or x > 1 for x in rat + loc):
        return _minmax_list(rat), _minmax_list(loc)
    return [float(v) for v in rat], [float(v) for v in loc]


def _minmax_list(values: np.ndarray) -> list[float]:
    lo, hi = min(values), max(values)
    return [float((x - lo) / (hi - lo) * (1 - 0) + 0) for x in values]


def normalise_repo(raw: Sequence[RawOutliers], lam: float = REPO_LAMBDA) -> list[LayerOutliers]:
    """LayerOutliers with ratio_hat = FLOW's O_l and nd = 1 - FLOW's D_l.

    With direction="repo" the cost term beta * |m - M_max * nd| is then FLOW's
    beta * |m - (1 - D_l) * M_max| exactly. Needs a locality (repo or repo-block): FLOW's
    chain starts from 1 / mean distance, and 0.0 when a unit has fewer than two outliers.
    """
    if not raw:
        return []
    if any(r.locality not in ("repo", "repo-block") for r in raw):
        raise UsageError("normalise=repo needs locality=repo or repo-block (FLOW's locality "
                         "index); use normalise=minmax with locality=exact")
    ratio_pct = [r.n_outliers / r.params * 100 for r in raw]
    locality = [1.0 / r.distance if r.distance else 0.0 for r in raw]
    o, d = repo_scaled(ratio_pct, locality, lam)
    return [LayerOutliers(r.name, r.params, r.n_outliers, r.ratio, o[i], r.distance, 1 - d[i],
                          r.locality, r.in_features) for i, r in enumerate(raw)]


def _model(prob: Problem) -> tuple[pulp.LpProblem, dict[tuple[int, int], pulp.LpVariable]]:
    """FLOW's ILP over the free units; fixed units (none in FLOW) add constants to the mean."""
    model = pulp.LpProblem("Layerwise_Sparsity_Optimization", pulp.LpMinimize)
    usable = [[j for j, c in enumerate(row) if not math.isinf(c)] for row in prob.costs]
    # PuLP orders columns by name, so FLOW's names give CBC the same column order
    z = {(i, j): model.add_variable(f"z_{i}_{prob.cands[j][0]}_{prob.cands[j][1]}", 0, 1,
                                    cat="Binary")
         for i, js in enumerate(usable) for j in js}
    aux = [model.add_variable(f"S_{i}", 0, 1) for i in range(len(usable))]
    spars = [(m - n) / m for n, m in prob.cands]
    model += pulp.lpSum(pulp.lpSum(z[i, j] * prob.costs[i][j] for j in js)
                        for i, js in enumerate(usable))
    for i, js in enumerate(usable):
        model += pulp.lpSum(z[i, j] for j in js) == 1
    fixed = sum((m - n) / m for n, m in prob.fixed.values())
    total = pulp.lpSum(pulp.lpSum(z[i, j] * spars[j] for j in js) for i, js in enumerate(usable))
    if prob.fixed:
        total = total + fixed
    model += total / len(prob.params) == prob.target
    for i, js in enumerate(usable):
        model += aux[i] == pulp.lpSum(z[i, j] * spars[j] for j in js)
    return model, z


def read_like_repo(prob: Problem, z: Mapping[tuple[int, int], pulp.LpVariable]
                   ) -> tuple[list[Pattern], int, int]:
    """FLOW's reading: per row, every candidate whose value is exactly 1, in candidate order.

    Returns (one pattern per free unit, rows without a 1, padded entries). A skipped row moves
    every later unit's pattern up by one; the list is padded with 4:8 and cut to length.
    """
    got: list[Pattern] = []
    skipped = 0
    for i in range(len(prob.free)):
        hits = [prob.cands[j] for j in range(len(prob.cands))
                if (i, j) in z and z[i, j].varValue == 1]
        skipped += not hits
        got.extend(hits)
    padded = max(0, len(prob.free) - len(got))
    got.extend([REPO_PAD] * padded)
    return got[:len(prob.free)], skipped, padded


def select_repo(layers: Sequence[LayerOutliers], target: float, alpha: float = 1.0,
                beta: float = 4.0, n_max: int = 8, m_max: int = 8,
                candidates: str | Sequence | None = "repo",
                supported: Callable[[int, int], bool] = flexcim_supported,
                fixed: Mapping[str, Pattern | str] | None = None, solver: str = "cbc",
                direction: str = "repo", solver_status: str = "ignore",
                time_limit: float = TIME_LIMIT) -> Selection:
    """FLOW's ILP: unweighted block-mean sparsity == target, solved and read as FLOW does.

    `solver_status="check"`: an unreachable target raises InfeasibleTarget (exact DP first,
    naming the nearest achievable means) and any non-optimal status a SolverError.
    `"ignore"`: whatever the solver leaves is read like FLOW's script. `solver="dp"` solves the
    same unweighted equality exactly (ties to the lowest candidate index; no status to ignore).
    The returned `sparsity` is the unweighted mean the ILP constrains.
    """
    if solver_status not in STATUSES:
        raise UsageError(f"solver_status must be one of {STATUSES}, got {solver_status!r}")
    prob = prepare(layers, target, 0.0, alpha, beta, n_max, m_max, candidates, supported,
                   fixed, direction, unweighted=True)
    if solver == "dp":
        return dp.solve_dp(prob)
    if solver_status == "check":
        below, above, feasible = dp.nearest_exact(prob)
        if not feasible:
            raise infeasible_error(prob, below, above, " (unweighted block mean)")
    if not prob.free:
        return _selection(prob, [], f"repo-{solver}")
    model, z = _model(prob)
    model.solve(_make_solver(solver, time_limit))
    status = pulp.LpStatus[model.status]
    if solver_status == "check":
        if status != "Optimal":
            raise SolverError(f"ILP solver {solver} returned status {status!r} on FLOW's model")
        chosen = [prob.cands[j] for j in _choice(prob, z)]
        return _selection(prob, chosen, f"repo-{solver}")
    chosen, skipped, padded = read_like_repo(prob, z)
    note = f" (status {status}" + (f", {skipped} rows unread, {padded} padded 4:8" if
                                   skipped or padded else "") + ", read as FLOW's script)"
    return _selection(prob, chosen, f"repo-{solver}{note}")


def _selection(prob: Problem, chosen: Sequence[Pattern], method: str) -> Selection:
    """A Selection from one pattern per free unit; cost None-free: NaN for a non-candidate."""
    patterns = dict(prob.fixed)
    costs: dict[str, float] = {}
    for layer, row, pat in zip(prob.free, prob.costs, chosen, strict=True):
        patterns[layer.name] = pat
        costs[layer.name] = row[prob.cands.index(pat)] if pat in prob.cands else math.nan
    ordered = {name: patterns[name] for name in prob.params}
    sp = achieved_sparsity(ordered, prob.params)
    return Selection(ordered, float(sum(costs.values())), float(sp), prob.target, 0.0,
                     method, costs)


def end_blocks(names: Sequence[str], block_of: Callable[[str], str]) -> list[str]:
    """The first and last transformer block among layer names (one if there is only one)."""
    blocks = [b for b in dict.fromkeys(block_of(n) for n in names) if b not in names]
    if not blocks:
        raise UsageError("force_dense_ends: the layer names show no transformer blocks")
    return list(dict.fromkeys((blocks[0], blocks[-1])))


def force_dense_ends(patterns: Mapping[str, Pattern], unit_of: Mapping[str, str],
                     block_of: Callable[[str], str]) -> tuple[dict[str, Pattern], list[str]]:
    """Every unit holding a Linear of the first or last block becomes 8:8 (prune_flow).

    Returns (patterns, the forced units in unit order, whatever the ILP had chosen for them).
    """
    ends = set(end_blocks(list(unit_of), block_of))
    units = {u for name, u in unit_of.items() if block_of(name) in ends}
    out = dict(patterns)
    forced = [unit for unit in out if unit in units]
    for unit in forced:
        out[unit] = REPO_DENSE
    return out, forced


def weighted_sparsity(patterns: Mapping[str, Pattern], params: Mapping[str, int]) -> float:
    """Parameter-weighted mean sparsity (what the pruned weights really hold)."""
    return float(achieved_sparsity(patterns, params))


def unweighted_sparsity(patterns: Mapping[str, Pattern]) -> float:
    """The plain mean of 1 - n/m over units (FLOW's `check_sparsity` in its solver)."""
    return float(sum((1 - Fraction(n, m) for n, m in patterns.values()), Fraction(0))
                 / len(patterns))
