"""Exact N:M selection by dynamic programming over layers, on integer sparsity sums.

Why: the ILP's objective is separable and its only coupling is one weighted sum, so a DP over
"sparsity accumulated so far" solves the same problem exactly. Sparsities are rationals
1 - n/m, so with u = lcm(all m) and g = gcd(all parameter counts) the state
S = sum_l (P_l / g) * (m_l - n_l) * (u / m_l) is an integer and the window test is exact.
Real models have a large g (SmolLM2: 110,592), so the state space is small (~10^4): the DP
doubles as the fast exact feasibility check that names the nearest achievable sparsities when
a target cannot be met (an LP-based branch and bound proves that only slowly: it is a
subset-sum problem).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .problem import Problem, Selection, SolverError, finish, infeasible_error

MAX_STATES = 50_000_000
MAX_DP_CELLS = 100_000_000


class TooLarge(SolverError):
    """The integer state space is too large for the exact DP."""


@dataclass(frozen=True)
class IntegerView:
    """The problem's sparsity constraint in integers: sparsity = S / total."""

    steps: list[list[int]]  # per free layer, per candidate; -1 = candidate unusable
    start: int  # contribution of the fixed layers
    total: int
    lo: int  # smallest S inside the window
    hi: int  # largest S inside the window


def integer_view(prob: Problem) -> IntegerView:
    """Scale the sparsity constraint to exact integers (see module docstring)."""
    unit = math.lcm(*(m for _, m in prob.cands), *(m for _, m in prob.fixed.values()))
    g = math.gcd(*prob.params.values())

    def step(params: int, pattern: tuple[int, int]) -> int:
        n, m = pattern
        return (params // g) * (m - n) * (unit // m)

    total = sum(prob.params.values()) // g * unit
    start = sum(step(prob.params[k], p) for k, p in prob.fixed.items())
    steps = [[-1 if math.isinf(cost) else step(prob.params[layer.name], c)
              for c, cost in zip(prob.cands, row, strict=True)]
             for layer, row in zip(prob.free, prob.costs, strict=True)]
    lo = max(math.ceil(prob.lo * total), 0)
    hi = math.floor(prob.hi * total)
    return IntegerView(steps, start, total, lo, hi)


def _ceiling(view: IntegerView) -> int:
    return view.start + sum(max(row) for row in view.steps)


def achievable_sums(view: IntegerView) -> np.ndarray:
    """Boolean array over S = 0..max: which integer sparsity sums some assignment reaches."""
    size = _ceiling(view) + 1
    if size > MAX_STATES:
        raise TooLarge(f"exact feasibility needs {size} states (limit {MAX_STATES})")
    reach = np.zeros(size, dtype=bool)
    reach[view.start] = True
    for row in view.steps:
        nxt = np.zeros_like(reach)
        for s in set(row) - {-1}:
            nxt[s:] |= reach[:size - s]
        reach = nxt
    return reach


def nearest_exact(prob: Problem) -> tuple[Fraction | None, Fraction | None, bool]:
    """(largest achievable sparsity below the window, smallest above, window_feasible), exact."""
    view = integer_view(prob)
    reach = achievable_sums(view)
    idx = np.flatnonzero(reach)
    inside = idx[(idx >= view.lo) & (idx <= view.hi)]
    below = idx[idx < view.lo]
    above = idx[idx > view.hi]
    lo_v = Fraction(int(below[-1]), view.total) if below.size else None
    hi_v = Fraction(int(above[0]), view.total) if above.size else None
    return lo_v, hi_v, bool(inside.size)


def nearest_achievable(prob: Problem) -> tuple[float | None, float | None, bool]:
    """nearest_exact as floats."""
    lo_v, hi_v, feasible = nearest_exact(prob)
    return (None if lo_v is None else float(lo_v), None if hi_v is None else float(hi_v),
            feasible)


def solve_dp(prob: Problem) -> Selection:
    """Exact minimum-cost assignment inside the window; ties -> lowest candidate index."""
    view = integer_view(prob)
    size = min(_ceiling(view), view.hi) + 1
    if size <= 0 or size * max(len(view.steps), 1) > MAX_DP_CELLS:
        if size <= 0:
            lo_v, hi_v, _ = nearest_exact(prob)
            raise infeasible_error(prob, lo_v, hi_v)
        raise TooLarge(f"exact DP needs {size} states x {len(view.steps)} layers "
                       f"(limit {MAX_DP_CELLS} cells); use the ILP")
    cost = np.full(size, np.inf)
    if view.start < size:
        cost[view.start] = 0.0
    choices = []
    for row, crow in zip(view.steps, prob.costs, strict=True):
        nxt = np.full(size, np.inf)
        pick = np.full(size, -1, dtype=np.int16)
        for j, (s, c) in enumerate(zip(row, crow, strict=True)):
            if s < 0 or s >= size:
                continue
            cand = cost[:size - s] + c
            better = cand < nxt[s:]
            nxt[s:][better] = cand[better]
            pick[s:][better] = j
        cost = nxt
        choices.append(pick)
    window = cost[view.lo:] if view.lo < size else cost[:0]
    if not window.size or not np.isfinite(window).any():
        lo_v, hi_v, _ = nearest_exact(prob)
        raise infeasible_error(prob, lo_v, hi_v)
    s = view.lo + int(np.argmin(window))
    path = []
    for row, pick in zip(reversed(view.steps), reversed(choices), strict=True):
        j = int(pick[s])
        path.append(j)
        s -= row[j]
    path.reverse()
    return finish(prob, path, "dp")

