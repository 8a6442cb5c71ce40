"""FLOW's per-layer N:M selection as an integer linear programme, solved with PuLP.

Model (SPEC.md 2.5; cost and direction in problem.py): binary z[l, c]; sum_c z[l, c] = 1 for
every free layer; minimise sum z[l, c] * cost(l, c); the weighted mean sparsity
sum_l (P_l / P) * (1 - n_c / m_c) * z[l, c] + (fixed layers' share) within target +- tolerance.

Unlike FLOW's script, the solver status is always checked. Before solving, the exact integer
DP of dp.py decides whether the window holds any achievable sparsity at all (cheap on real
models), so an impossible target fails at once with the nearest achievable sparsities instead
of waiting for branch and bound to prove a subset-sum problem infeasible.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from fractions import Fraction

import pulp

from flowc.errors import UsageError

from . import dp
from .problem import (
    Pattern,
    Problem,
    Selection,
    SelectLayer,
    SolverError,
    finish,
    flexcim_supported,
    infeasible_error,
    prepare,
    sparsity_of,
)

SOLVERS = ("cbc", "highs", "dp")
TIME_LIMIT = 10.0
EPS = 1e-9


def _make_solver(solver: str, time_limit: float):
    if solver == "cbc":
        with warnings.catch_warnings():  # PuLP 3.3 deprecates its bundled CBC; still the default
            warnings.simplefilter("ignore", DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit)
    if solver == "highs":
        highs = pulp.HiGHS(msg=False, timeLimit=time_limit)
        if not highs.available():
            raise SolverError("solver 'highs' requested but highspy is not installed")
        return highs
    raise UsageError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _build(prob: Problem, sense, objective: str):
    """PuLP model with one pattern per layer; objective 'cost' or 'sparsity'.

    Returns (model, z, sparsity expression without the fixed share, fixed share).
    """
    model = pulp.LpProblem("flow_nm", sense)
    z = {(i, j): model.add_variable(f"z_{i}_{j}", 0, 1, cat="Binary")
         for i, row in enumerate(prob.costs) for j, c in enumerate(row) if not math.isinf(c)}
    total = sum(prob.params.values())
    fixed_share = float(sum((prob.params[k] * sparsity_of(p) for k, p in prob.fixed.items()),
                            Fraction(0)) / total)
    spars = pulp.lpSum((prob.params[prob.free[i].name] / total)
                       * float(sparsity_of(prob.cands[j])) * var
                       for (i, j), var in z.items())
    if objective == "cost":
        model += pulp.lpSum(prob.costs[i][j] * z[i, j] for i, j in z)
    else:
        model += spars
    rows: dict[int, list] = {}
    for (i, _), var in z.items():
        rows.setdefault(i, []).append(var)
    for i in range(len(prob.free)):
        model += pulp.lpSum(rows[i]) == 1
    return model, z, spars, fixed_share


def _choice(prob: Problem, z) -> list[int]:
    best: dict[int, tuple[float, int]] = {}
    for (i, j), var in z.items():
        value = var.value() or 0.0
        if i not in best or value > best[i][0]:
            best[i] = (value, j)
    return [best[i][1] for i in range(len(prob.free))]


def _probe_nearest(prob: Problem, solver: str, time_limit: float) -> tuple[float | None, ...]:
    """Nearest achievable sparsities by two ILPs (max below / min above the window).

    Only used when the exact DP's state space is too large (parameter counts with gcd 1).
    """
    out: list[float | None] = []
    for sense, bound in ((pulp.LpMaximize, prob.lo), (pulp.LpMinimize, prob.hi)):
        model, z, spars, fixed_share = _build(prob, sense, "sparsity")
        if sense == pulp.LpMaximize:
            model += spars + fixed_share <= float(bound) + EPS
        else:
            model += spars + fixed_share >= float(bound) - EPS
        model.solve(_make_solver(solver, time_limit))
        if pulp.LpStatus[model.status] != "Optimal":
            out.append(None)
            continue
        out.append(finish(prob, _choice(prob, z), "probe").sparsity)
    return tuple(out)


def _check_feasible(prob: Problem, solver: str, time_limit: float) -> bool:
    """Raise InfeasibleTarget if the window is provably empty; False if unknown (too large)."""
    try:
        below, above, feasible = dp.nearest_exact(prob)
    except dp.TooLarge:
        return False
    if not feasible:
        raise infeasible_error(prob, below, above)
    return True


def select_nm(layers: Sequence[SelectLayer], target: float, tolerance: float = 0.005,
              alpha: float = 1.0, beta: float = 4.0, n_max: int = 8, m_max: int = 8,
              candidates: str | Sequence | None = None,
              supported: Callable[[int, int], bool] = flexcim_supported,
              fixed: Mapping[str, Pattern | str] | None = None, solver: str = "cbc",
              direction: str = "paper", time_limit: float = TIME_LIMIT) -> Selection:
    """FLOW's N:M choice per layer. Raises InfeasibleTarget naming the nearest sparsities.

    `solver`: "cbc" (default) or "highs" through PuLP, or "dp" for the exact dynamic
    programme. `fixed` maps layer names to patterns they must keep (e.g. dense); they count in
    the sparsity. `candidates`: None (machine-supported set from `supported`), "repo", or a list.
    """
    prob = prepare(layers, target, tolerance, alpha, beta, n_max, m_max, candidates,
                   supported, fixed, direction)
    if solver == "dp":
        return dp.solve_dp(prob)
    known = _check_feasible(prob, solver, time_limit)
    if not prob.free:
        return finish(prob, [], f"ilp-{solver}")
    model, z, spars, fixed_share = _build(prob, pulp.LpMinimize, "cost")
    model += spars + fixed_share >= float(prob.lo)
    model += spars + fixed_share <= float(prob.hi)
    model.solve(_make_solver(solver, time_limit))
    status = pulp.LpStatus[model.status]
    if status == "Infeasible" and not known:
        below, above = _probe_nearest(prob, solver, time_limit)
        raise infeasible_error(prob, below, above, " (by ILP probes)")
    if status != "Optimal":
        raise SolverError(f"ILP solver {solver} returned status {status!r} after at most "
                          f"{time_limit:g} s; widen the tolerance or use solver=dp")
    sel = finish(prob, _choice(prob, z), f"ilp-{solver}")
    if not float(prob.lo) - 1e-7 <= sel.sparsity <= float(prob.hi) + 1e-7:
        raise SolverError(f"solver {solver} returned sparsity {sel.sparsity} outside the window")
    if model.sol_status != pulp.LpSolutionOptimal:
        return _settle_time_limit(prob, sel, solver, time_limit)
    return sel


def _settle_time_limit(prob: Problem, sel: Selection, solver: str,
                       time_limit: float) -> Selection:
    """The solver stopped at its time limit with an unproven incumbent: ask the exact DP.

    CBC can need minutes to *prove* optimality on real models with many near-ties (SmolLM2,
    direction=repo: HiGHS 0.2 s, CBC > 60 s, same optimum); the DP settles it in milliseconds
    whenever its state space is small. Otherwise the incumbent is returned, marked unproven.
    """
    try:
        exact = dp.solve_dp(prob)
    except dp.TooLarge:
        return replace(sel, method=f"{sel.method} (time limit {time_limit:g} s, not proven)")
    if exact.objective < sel.objective - 1e-9:
        return replace(exact, method=f"dp ({solver} stopped at its {time_limit:g} s limit)")
    return replace(sel, method=f"{sel.method} (optimality confirmed by exact dp)")


def select_nm_dp(layers: Sequence[SelectLayer], target: float, tolerance: float = 0.005,
                 alpha: float = 1.0, beta: float = 4.0, n_max: int = 8, m_max: int = 8,
                 candidates: str | Sequence | None = None,
                 supported: Callable[[int, int], bool] = flexcim_supported,
                 fixed: Mapping[str, Pattern | str] | None = None,
                 direction: str = "paper") -> Selection:
    """The same problem solved by the exact integer DP (cross-check for the ILP)."""
    prob = prepare(layers, target, tolerance, alpha, beta, n_max, m_max, candidates,
                   supported, fixed, direction)
    return dp.solve_dp(prob)
