"""Hardware-aware N:M selection over a measured sensitivity table (ILP, exact DP cross-check).

Problem. For every free layer l pick one candidate pattern c (binary z[l, c], one per layer) to

    minimise   sum_l err(l, c)                          (sensitivity.py: relative output error)
    subject to sparsity(z) >= target  (and <= target + tolerance)   parameter-weighted, all layers
               cycles(z)   <= latency * cycles(dense)   optional, the machine's cost model
               energy(z)   <= energy  * energy(dense)   optional, idem

Unlike FLOW's cost (problem.py) the objective is measured damage, so at equal sparsity the ILP
prefers the pattern that hurts least (a 4:8 mask is never worse than a 2:4 one on the same
weights: every 2:4 mask is a 4:8 mask) and spends the budget where layers are least sensitive.
Latency and energy per layer and pattern come from `ctx.price`, which the compile driver binds
to the very cost model analytic mode and flowrun use (no second copy of the cost formulas).

The sparsity constraint is exact: sparsities are rationals 1 - n/m, so with u = lcm(all m) and
g = gcd(all parameter counts) every assignment's sparsity is S / total with an integer S
(dp.py's integer view); the ILP constrains S with integer coefficients, and the window is
one-sided by default ("at least the target"), so an allocation never undershoots its budget.
`solve_exact` is a label-setting DP over (S, cycles, energy) Pareto sets: the cross-check on
small cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pulp

from flowc.errors import UsageError

from .problem import InfeasibleTarget, Pattern, Selection, SolverError

Price = Callable[[int, int, Pattern], tuple[float, float]]  # (out, K, pattern) -> (cycles, pJ)
EPS = 1e-9


def exact_fraction(x: float) -> Fraction:
    """The decimal a user typed (0.7 -> 7/10), not the binary float's exact value."""
    return Fraction(repr(float(x)))


@dataclass(frozen=True)
class Budget:
    """An upper bound on an additive per-layer quantity: sum of values over layers <= limit."""

    name: str  # "latency" | "energy"
    values: list[list[float]]  # per free layer, per candidate
    fixed: float  # contribution of the fixed layers
    limit: float
    dense: float  # the same sum with every layer dense (for reports: limit = fraction x dense)


@dataclass(frozen=True)
class MeasuredProblem:
    """Free layers with cost rows (inf = unusable), fixed layers, the sparsity window."""

    names: list[str]
    params: list[int]
    cands: list[Pattern]
    costs: list[list[float]]
    fixed: dict[str, Pattern]
    fixed_params: dict[str, int]
    target: float
    tolerance: float
    lo: Fraction
    hi: Fraction
    budgets: tuple[Budget, ...] = ()
    steps: list[list[int]] = field(default_factory=list)  # integer sparsity step per choice
    start: int = 0  # integer sparsity of the fixed layers
    total: int = 1  # S / total = sparsity

    @property
    def s_lo(self) -> int:
        return max(math.ceil(self.lo * self.total), 0)

    @property
    def s_hi(self) -> int:
        return math.floor(self.hi * self.total)


def build_problem(names: Sequence[str], params: Sequence[int], cands: Sequence[Pattern],
                  costs: Sequence[Sequence[float]], fixed: Mapping[str, Pattern] | None = None,
                  fixed_params: Mapping[str, int] | None = None, target: float = 0.5,
                  tolerance: float = 0.005, budgets: Sequence[Budget] = (),
                  two_sided: bool = False) -> MeasuredProblem:
    """Validate and scale to integers. Window: [target, target + tol] (default), or
    [target - tol, target + tol] with `two_sided`."""
    if not 0.0 <= target < 1.0 or tolerance < 0:
        raise UsageError(f"target sparsity {target} must be in [0, 1) and tolerance >= 0")
    fixed, fixed_params = dict(fixed or {}), dict(fixed_params or {})
    if len(costs) != len(names) or any(len(row) != len(cands) for row in costs):
        raise UsageError("measured selection: cost table shape does not match layers x patterns")
    for name, row in zip(names, costs, strict=True):
        if all(math.isinf(c) for c in row):
            raise UsageError(f"layer {name}: no candidate pattern is usable (M divides no K?)")
    all_params = list(params) + [fixed_params[k] for k in fixed]
    unit = math.lcm(*(m for _, m in cands), *(m for _, m in fixed.values()))
    g = math.gcd(*all_params)

    def step(p: int, pattern: Pattern) -> int:
        n, m = pattern
        return (p // g) * (m - n) * (unit // m)

    steps = [[step(p, c) for c in cands] for p in params]
    start = sum(step(fixed_params[k], pat) for k, pat in fixed.items())
    total = sum(all_params) // g * unit
    t, tol = exact_fraction(target), exact_fraction(tolerance)
    lo = t - tol if two_sided else t
    return MeasuredProblem(list(names), list(params), list(cands),
                           [list(r) for r in costs], fixed, fixed_params, target, tolerance,
                           lo, t + tol, tuple(budgets), steps, start, total)


def _sparsity(prob: MeasuredProblem, choice: Sequence[int]) -> Fraction:
    s = prob.start + sum(row[j] for row, j in zip(prob.steps, choice, strict=True))
    return Fraction(s, prob.total)


def within_budgets(prob: MeasuredProblem, choice: Sequence[int]) -> bool:
    """True if `choice` (a candidate index per free layer) meets every constraint exactly."""
    if any(math.isinf(prob.costs[i][j]) for i, j in enumerate(choice)):
        return False
    s = prob.start + sum(row[j] for row, j in zip(prob.steps, choice, strict=True))
    if not prob.s_lo <= s <= prob.s_hi:
        return False
    return all(b.fixed + sum(b.values[i][j] for i, j in enumerate(choice)) <= b.limit + EPS
               for b in prob.budgets)


def selection_of(prob: MeasuredProblem, choice: Sequence[int], method: str) -> Selection:
    """The Selection (patterns in layer order: free then fixed) for a choice vector."""
    patterns = {name: prob.cands[j] for name, j in zip(prob.names, choice, strict=True)}
    patterns.update(prob.fixed)
    costs = {name: prob.costs[i][j] for i, (name, j) in enumerate(zip(prob.names, choice,
                                                                      strict=True))}
    objective = sum(costs.values())
    return Selection(patterns, objective, float(_sparsity(prob, choice)), prob.target,
                     prob.tolerance, method, costs)


def budget_usage(prob: MeasuredProblem, choice: Sequence[int]) -> dict[str, dict[str, float]]:
    """{budget: {used, limit, dense, fraction}} for reports."""
    out = {}
    for b in prob.budgets:
        used = b.fixed + sum(b.values[i][j] for i, j in enumerate(choice))
        out[b.name] = {"used": used, "limit": b.limit, "dense": b.dense,
                       "fraction": used / b.dense if b.dense else 0.0}
    return out


def _infeasible(prob: MeasuredProblem, detail: str) -> InfeasibleTarget:
    best = [max((s for s, c in zip(row, crow, strict=True) if not math.isinf(c)))
            for row, crow in zip(prob.steps, prob.costs, strict=True)]
    top = float(Fraction(prob.start + sum(best), prob.total))
    parts = [f"max achievable sparsity {top:.4f}"]
    for b in prob.budgets:
        low = b.fixed + sum(min(v for v, c in zip(vals, crow, strict=True) if not math.isinf(c))
                            for vals, crow in zip(b.values, prob.costs, strict=True))
        parts.append(f"min {b.name} {low / b.dense if b.dense else 0:.4f} of dense "
                     f"(asked <= {b.limit / b.dense if b.dense else 0:.4f})")
    return InfeasibleTarget(f"measured selection: no allocation reaches sparsity "
                            f">= {float(prob.lo):.4f} within the budgets ({detail}); "
                            + ", ".join(parts), (top,))


def solve_ilp(prob: MeasuredProblem, solver: str = "highs", time_limit: float = 30.0
              ) -> Selection:
    """Optimal allocation by PuLP (CBC or HiGHS); the status is always checked."""
    from .ilp import _make_solver

    model = pulp.LpProblem("measured_nm", pulp.LpMinimize)
    z = {(i, j): model.add_variable(f"z_{i}_{j}", 0, 1, cat="Binary")
         for i, row in enumerate(prob.costs) for j, c in enumerate(row) if not math.isinf(c)}
    model += pulp.lpSum(prob.costs[i][j] * var for (i, j), var in z.items())
    for i in range(len(prob.names)):
        model += pulp.lpSum(var for (a, _), var in z.items() if a == i) == 1
    s = pulp.lpSum(prob.steps[i][j] * var for (i, j), var in z.items()) + prob.start
    model += s >= prob.s_lo
    model += s <= prob.s_hi
    for b in prob.budgets:
        model += pulp.lpSum(b.values[i][j] * var for (i, j), var in z.items()) \
            <= b.limit - b.fixed
    model.solve(_make_solver(solver, time_limit))
    status = pulp.LpStatus[model.status]
    if status == "Infeasible":
        raise _infeasible(prob, f"{solver} proved it infeasible")
    if status != "Optimal" or model.sol_status != pulp.LpSolutionOptimal:
        raise SolverError(f"measured selection: solver {solver} returned {status!r} "
                          f"(solution status {model.sol_status}) within {time_limit:g} s")
    choice = []
    for i in range(len(prob.names)):
        vals = {j: (var.value() or 0.0) for (a, j), var in z.items() if a == i}
        choice.append(max(vals, key=lambda j: vals[j]))
    if not within_budgets(prob, choice):
        raise SolverError(f"measured selection: solver {solver} returned an allocation that "
                          "breaks a budget (numerical tolerance); try solver=cbc|highs")
    return selection_of(prob, choice, f"ilp-{solver}")


def solve_exact(prob: MeasuredProblem, max_labels: int = 2_000_000) -> Selection:
    """Exact optimum by a label-setting DP over layers (small problems: the ILP cross-check).

    Labels per integer sparsity sum S are Pareto sets over (budget uses..., cost); a label is
    dropped when another at the same S is no worse in every budget and in cost.
    """
    labels: dict[int, list[tuple[tuple[float, ...], float, tuple[int, ...]]]] = {
        prob.start: [(tuple(b.fixed for b in prob.budgets), 0.0, ())]}
    count = 0
    for i, (row, crow) in enumerate(zip(prob.steps, prob.costs, strict=True)):
        nxt: dict[int, list] = {}
        for s, items in labels.items():
            for j, (step, c) in enumerate(zip(row, crow, strict=True)):
                if math.isinf(c) or s + step > prob.s_hi:
                    continue
                for used, cost, path in items:
                    new_used = tuple(u + b.values[i][j] for u, b in zip(used, prob.budgets,
                                                                         strict=True))
                    if any(u > b.limit + EPS for u, b in zip(new_used, prob.budgets,
                                                             strict=True)):
                        continue
                    nxt.setdefault(s + step, []).append((new_used, cost + c, (*path, j)))
        labels = {s: _pareto(items) for s, items in nxt.items()}
        count += sum(len(v) for v in labels.values())
        if count > max_labels:
            raise SolverError(f"exact DP: more than {max_labels} labels; use the ILP")
    best = None
    for s, items in labels.items():
        if prob.s_lo <= s <= prob.s_hi:
            for _, cost, path in items:
                if best is None or cost < best[0] - EPS:
                    best = (cost, path)
    if best is None:
        raise _infeasible(prob, "exact DP")
    return selection_of(prob, list(best[1]), "exact-dp")


def _pareto(items: list) -> list:
    items = sorted(items, key=lambda t: (t[1], t[0]))
    kept: list = []
    for used, cost, path in items:
        if not any(all(a <= b + EPS for a, b in zip(k[0], used, strict=True)) and k[1] <= cost
                   for k in kept):
            kept.append((used, cost, path))
    return kept


# ---------------------------------------------------------------------------------------------
# From a sensitivity table and a pricer


def measured_problem(table: Any, names: Sequence[str], cands: Sequence[Pattern],
                     fixed: Mapping[str, Pattern], target: float, tolerance: float,
                     update: str = "none", price: Price | None = None, latency: float = 0.0,
                     energy: float = 0.0, members: Mapping[str, Sequence[str]] | None = None
                     ) -> MeasuredProblem:
    """The problem for `names` (units) from a SensitivityTable.

    `members` maps a unit to its Linears (block granularity): a unit's error, parameters,
    cycles and energy are the sums over its members. Dense candidates cost 0; a pattern not
    measured for a layer (M does not divide K) is unusable. Budgets are fractions of the
    all-dense cycles / energy of the same layers (0 = no budget).
    """
    members = members or {}

    def parts(unit: str) -> Sequence[str]:
        return members.get(unit, (unit,))

    def unit_cost(unit: str, pattern: Pattern, idx: int) -> float:
        assert price is not None
        return sum(float(price(*table.shape[x], pattern)[idx]) for x in parts(unit))

    free = [n for n in names if n not in fixed]
    costs = [[sum(table.cost(layer, c, update) for layer in parts(u)) for c in cands]
             for u in free]
    budgets = []
    for kind, idx, frac in (("latency", 0, latency), ("energy", 1, energy)):
        if not frac:
            continue
        if price is None:
            raise UsageError(f"a {kind} budget needs the machine's cost model (the compile "
                             "driver supplies it for the target machine)")
        if frac < 0:
            raise UsageError(f"{kind} budget must be a positive fraction of dense, got {frac}")
        values = [[unit_cost(u, c, idx) for c in cands] for u in free]
        fixed_sum = sum(unit_cost(u, (1, 1), idx) for u in fixed)
        dense = fixed_sum + sum(unit_cost(u, (1, 1), idx) for u in free)
        budgets.append(Budget(kind, values, fixed_sum, frac * dense, dense))
    params = [sum(table.params(layer) for layer in parts(u)) for u in free]
    fixed_params = {u: sum(table.params(layer) for layer in parts(u)) for u in fixed}
    return build_problem(free, params, cands, costs, fixed, fixed_params, target, tolerance,
                         budgets)
