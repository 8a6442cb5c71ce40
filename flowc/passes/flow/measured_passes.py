"""Pass wrappers for measured selection: `measured-select` (ILP over the sensitivity table).

    calibrate,sensitivity{update=obs},measured-select{target=0.5,skip=lm_head,update=obs},
    nm-prune{update=obs,skip=lm_head},verify-nm

Like the FLOW passes (passes.py) it only annotates `meta["flowc"]["pattern"]`; `nm-prune`
cuts. `keep_dense`, `skip` and `granularity` mean what they mean for `flow-select`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch.fx as fx

from flowc.errors import UsageError
from flowc.passes.base import CompileContext, PassResult
from flowc.passes.registry import register_pass

from .measured import MeasuredProblem, budget_usage, measured_problem, solve_exact, solve_ilp
from .passes import _Selector, machine_supported
from .problem import Pattern, resolve_candidates
from .sensitivity import SensitivityTable

UPDATES = ("none", "obs")


def table_of(ctx: CompileContext, who: str) -> SensitivityTable:
    table = ctx.options.get("sensitivity_table")
    if not isinstance(table, SensitivityTable):
        raise UsageError(f"{who}: run the `sensitivity` pass first (it measures the table)")
    return table


def candidates_for(table: SensitivityTable, spec: Any, ctx: CompileContext) -> list[Pattern]:
    """The machine's (or the given) candidates that the table measured, plus dense."""
    cands = resolve_candidates(spec, machine_supported(ctx))
    measured = {k for row in table.errors.values() for k in row}
    keep = [c for c in cands if c[0] == c[1] or f"{c[0]}:{c[1]}" in measured]
    if not any(n == m for n, m in keep):
        keep.append((8, 8))
    return keep


def solve(prob: MeasuredProblem, solver: str) -> Any:
    if solver == "exact":
        return solve_exact(prob)
    if solver == "highs":
        import pulp

        if not pulp.HiGHS(msg=False).available():
            solver = "cbc"
    return solve_ilp(prob, solver)


@register_pass
@dataclass(frozen=True)
class MeasuredSelect(_Selector):
    """Per-unit N:M minimising the measured error under sparsity / latency / energy budgets.

    `target`: parameter-weighted sparsity, at least this (up to target + tolerance), over all
    selectable layers (kept-dense ones count). `latency` / `energy`: optional upper bounds as
    fractions of the all-dense cycles / energy of the same layers, priced by the target
    machine's cost model (0 = none). `update`: which error column to minimise (none | obs; obs
    needs `sensitivity{update=obs}`). `solver`: highs (default), cbc, or exact (DP, small).
    """

    name = "measured-select"
    requires = ("sensitivity",)
    target: float = 0.5
    tolerance: float = 0.005
    latency: float = 0.0
    energy: float = 0.0
    update: Literal["none", "obs"] = "none"
    candidates: Literal["default", "repo"] | tuple[tuple[int, int], ...] = "default"
    solver: Literal["highs", "cbc", "exact"] = "highs"

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        if self.update not in UPDATES:
            raise UsageError(f"{self.name}: update must be one of {UPDATES}")
        table = table_of(ctx, self.name)
        if self.update not in table.updates:
            raise UsageError(f"{self.name}: update={self.update} needs "
                             f"sensitivity{{update=obs}} (the table has {list(table.updates)})")
        refs, unit_of, units, fixed, dense = self._plan(gm, False)
        members: dict[str, list[str]] = {}
        for ref in refs:
            members.setdefault(unit_of[ref.name], []).append(ref.name)
        missing = [r.name for r in refs if r.name not in table.shape]
        if missing:
            raise UsageError(f"{self.name}: the sensitivity table lacks {', '.join(missing[:4])}"
                             " (was it measured with another skip list?)")
        cands = candidates_for(table, self.candidates, ctx)
        prob = measured_problem(table, [u.name for u in units], cands, fixed, self.target,
                                self.tolerance, self.update, ctx.price, self.latency,
                                self.energy, members)
        ctx.log(f"{self.name}: {len(prob.names)} units x {len(cands)} patterns, "
                f"{len(prob.budgets)} hardware budgets")
        sel = solve(prob, self.solver)
        choice = [cands.index(sel.patterns[n]) for n in prob.names]
        ctx.options["measured_problem"] = prob
        result = self._finish(gm, ctx, refs, unit_of, units, sel, dense)
        report = ctx.reports[self.name]
        report["budgets"] = budget_usage(prob, choice)
        report["error"] = {"sum": sel.objective, "update": self.update,
                           "max": max((c for c in sel.costs.values() if not math.isinf(c)),
                                      default=0.0)}
        return result
