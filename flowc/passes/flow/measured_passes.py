"""Pass wrappers for measured selection: `measured-select` (ILP over the sensitivity table)
and `nm-search` (search refinement scored by KL to the dense model).

    calibrate,sensitivity{update=obs},measured-select{target=0.5,skip=lm_head,update=obs},
    nm-prune{update=obs,skip=lm_head},verify-nm

Like the FLOW passes (passes.py) it only annotates `meta["flowc"]["pattern"]`; `nm-prune`
cuts. `keep_dense`, `skip` and `granularity` mean what they mean for `flow-select`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.fx as fx

from flowc.errors import UsageError
from flowc.passes.base import CompileContext, PassResult
from flowc.passes.registry import register_pass

from .measured import (
    MeasuredProblem,
    budget_usage,
    measured_problem,
    selection_of,
    solve_exact,
    solve_ilp,
)
from .passes import _Selector, machine_supported
from .problem import InfeasibleTarget, Pattern, resolve_candidates
from .sensitivity_table import SensitivityTable

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


def _measured_plan(sel: Any, gm: fx.GraphModule, ctx: CompileContext, table: SensitivityTable,
                   candidates: Any, update: str) -> tuple[tuple, list[Pattern], MeasuredProblem]:
    """The units of a measured selection pass and its problem (shared by both passes):
    (the _Selector plan, candidates, MeasuredProblem with the pass's budgets)."""
    plan = sel._plan(gm, False)
    refs, unit_of, units, fixed, _ = plan
    members: dict[str, list[str]] = {}
    for ref in refs:
        members.setdefault(unit_of[ref.name], []).append(ref.name)
    missing = [r.name for r in refs if r.name not in table.shape]
    if missing:
        raise UsageError(f"{sel.name}: the sensitivity table lacks {', '.join(missing[:4])}"
                         " (was it measured with another skip list?)")
    cands = candidates_for(table, candidates, ctx)
    prob = measured_problem(table, [u.name for u in units], cands, fixed, sel.target,
                            sel.tolerance, update, ctx.price, sel.latency, sel.energy, members)
    return plan, cands, prob


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
    needs `sensitivity{update=obs}`). `solver`: cbc (default), highs, or exact (DP, small).
    """

    name = "measured-select"
    requires = ("sensitivity",)
    target: float = 0.5
    tolerance: float = 0.005
    latency: float = 0.0
    energy: float = 0.0
    update: Literal["none", "obs"] = "none"
    candidates: Literal["default", "repo"] | tuple[tuple[int, int], ...] = "default"
    solver: Literal["cbc", "highs", "exact"] = "cbc"

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        if self.update not in UPDATES:
            raise UsageError(f"{self.name}: update must be one of {UPDATES}")
        table = table_of(ctx, self.name)
        if self.update not in table.updates:
            raise UsageError(f"{self.name}: update={self.update} needs "
                             f"sensitivity{{update=obs}} (the table has {list(table.updates)})")
        plan, cands, prob = _measured_plan(self, gm, ctx, table, self.candidates, self.update)
        refs, unit_of, units, _, dense = plan
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


@register_pass
@dataclass(frozen=True)
class NMSearch(_Selector):
    """Refine the allocation by an EvoPress-style search scored by KL to the dense model.

    Starts from the current annotation (run `measured-select` first) and from every uniform
    pattern that meets the budgets (`target`, `tolerance`, `latency`, `energy`: as in
    `measured-select`), and from the ILP re-solved with the first and last e blocks kept dense
    for e = 1..`edge_starts` (see `edge_dense_choice`; 0 = none; `solver` solves those).
    `generations`, `offspring`, `survivors`, `seed`; `max_time` (seconds, 0 = no limit)
    bounds the wall time; `windows` = held-in calibration windows scored (the first ones of
    the calibration set). `executor` (local | serial | ray | ray:ADDRESS) and
    `jobs` choose where candidates are scored (flowc.executors): the default is the local
    pool with one job, i.e. in this process, because one forward already uses every core
    through torch's threads; `jobs=2` forks workers that each hold a copy of the model.
    """

    name = "nm-search"
    requires = ("sensitivity",)
    target: float = 0.5
    tolerance: float = 0.005
    latency: float = 0.0
    energy: float = 0.0
    generations: int = 40
    offspring: int = 6
    survivors: int = 2
    windows: int = 2
    max_time: float = 0.0
    seed: int = 0
    executor: str = "local"
    jobs: int = 1
    edge_starts: int = 2
    solver: Literal["cbc", "highs", "exact"] = "cbc"

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        from .search import KLScorer, evolve, levels, score_item

        table = table_of(ctx, self.name)
        plan, cands, prob = _measured_plan(self, gm, ctx, table, "default", "none")
        refs, unit_of, units, _, dense = plan
        members: dict[str, list[str]] = {}
        for ref in refs:
            members.setdefault(unit_of[ref.name], []).append(ref.name)
        if not ctx.calib_inputs:
            raise UsageError(f"{self.name}: needs calibration inputs (the KL windows)")
        starts = self._starts(refs, unit_of, prob)
        norms = {}
        for ref in refs:
            norm = ref.node.meta.get("flowc", {}).get("input_norm")
            if norm is None:
                raise UsageError(f"{self.name}: layer {ref.name} has no input_norm; run "
                                 "calibrate first")
            norms[ref.name] = norm
        free_layers = {r.name: r for r in refs if unit_of[r.name] in prob.names}
        ctx.log(f"{self.name}: scoring allocations by KL on {self.windows} calibration "
                f"window(s); {self.generations} generations x {self.offspring} offspring")
        used = sorted({prob.cands[j] for row in levels(prob) for j in row}
                      | {prob.cands[start[0]] for start in starts.values()})
        scorer = KLScorer(gm, free_layers, members, norms, used,
                          ctx.calib_inputs[:max(1, self.windows)], table.masks)

        def alloc(choice: Sequence[int]) -> dict[str, Pattern]:
            return {u: cands[j] for u, j in zip(prob.names, choice, strict=True)}

        from flowc.executors import make_executor

        with make_executor(self.executor, self.jobs) as ex:
            def evaluate(choices: list, windows: int | None) -> list[float]:
                return ex.map(score_item, [(alloc(c), windows) for c in choices],
                              shared=scorer)

            bar = _bar(self.generations, ctx)
            try:
                res = evolve(prob, starts, evaluate, len(scorer.windows), self.generations,
                             self.offspring, self.survivors, self.seed, self.max_time,
                             on_generation=lambda g, s: bar(g, s))
            finally:
                bar(None, None)
                scorer.restore()
        sel = selection_of(prob, res.choice, "search (KL, EvoPress-style)")
        result = self._finish(gm, ctx, refs, unit_of, units, sel, dense)
        report = ctx.reports[self.name]
        report["search"] = {"kl": res.score, "start_kl": res.start_scores,
                            "generations": res.generations, "evaluations": res.evaluations,
                            "stopped": res.stopped, "history": res.history,
                            "windows": len(scorer.windows)}
        report["budgets"] = budget_usage(prob, res.choice)
        ctx.options["search_seconds"] = res.seconds
        ctx.log(f"{self.name}: KL {min(res.start_scores.values()):.5f} -> {res.score:.5f} in "
                f"{res.generations} generations, {res.evaluations} evaluations, "
                f"{res.seconds:.1f} s ({res.stopped})")
        return result

    def _starts(self, refs, unit_of, prob: MeasuredProblem) -> dict[str, tuple[int, ...]]:
        """The current annotation (if every unit has one) and every uniform candidate."""
        starts: dict[str, tuple[int, ...]] = {}
        current: dict[str, Pattern] = {}
        for ref in refs:
            sel = ref.node.meta.get("flowc", {}).get("selection")
            if sel is not None:
                current[unit_of[ref.name]] = tuple(sel["pattern"])  # type: ignore[assignment]
        dense_j = next(j for j, (n, m) in enumerate(prob.cands) if n == m)

        def index(p: Pattern) -> int | None:
            if p[0] == p[1]:
                return dense_j
            return prob.cands.index(p) if p in prob.cands else None

        picked = [index(current[u]) if u in current else None for u in prob.names]
        if all(j is not None for j in picked):  # else: no (usable) annotation to start from
            starts["annotation"] = tuple(int(j) for j in picked)  # type: ignore[arg-type]
        from .search import levels

        lv = levels(prob)  # a uniform pattern that is not every unit's least-damaging choice
        for j, (n, m) in enumerate(prob.cands):  # at its sparsity is dominated: no start
            if n != m and all(j in row for row in lv):
                starts[f"uniform {n}:{m}"] = tuple(j for _ in prob.names)
        for edge in range(1, self.edge_starts + 1):
            choice = edge_dense_choice(prob, edge, self.solver)
            if choice is not None:
                starts[f"ilp, first/last {edge} block(s) dense"] = choice
        return starts


def block_index(name: str) -> int | None:
    """The depth index of a layer or unit name: the first integer path component
    (`model.layers.7.mlp.up_proj` -> 7, `encoder.layer.0.attention...` -> 0)."""
    hit = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(hit.group(1)) if hit else None


def edge_dense_choice(prob: MeasuredProblem, edge: int, solver: str = "cbc"
                      ) -> tuple[int, ...] | None:
    """The measured ILP's answer with every unit of the first and last `edge` blocks kept
    dense (the rest pays for them), or None if that is infeasible or nothing is pinned.

    A search start, not a rule: the first and last blocks of LLMs are often far more
    sensitive end to end than their layer errors say (OWL and FLOW's code keep them denser),
    and per-layer errors are not additive (EvoPress). The search scores this start by KL
    beside the plain ILP answer and keeps whichever is better."""
    depth = [block_index(n) for n in prob.names]
    known = sorted({d for d in depth if d is not None})
    if len(known) <= 2 * edge:
        return None
    pinned = set(known[:edge]) | set(known[-edge:])
    dense_j = next(j for j, (n, m) in enumerate(prob.cands) if n == m)
    costs = [[c if (d not in pinned or j == dense_j) else math.inf for j, c in enumerate(row)]
             for d, row in zip(depth, prob.costs, strict=True)]
    try:
        sel = solve(dataclasses.replace(prob, costs=costs), solver)
    except InfeasibleTarget:
        return None
    return tuple(prob.cands.index(sel.patterns[n]) if sel.patterns[n][0] != sel.patterns[n][1]
                 else dense_j for n in prob.names)


def _bar(total: int, ctx: CompileContext):
    """A tqdm bar over generations on stderr when the context shows progress."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="nm-search", unit="gen", disable=True if ctx.progress is None else None,
               leave=False)

    def update(gen: int | None, score: float | None) -> None:
        if gen is None:
            bar.close()
            return
        bar.n = gen
        bar.set_postfix(kl=f"{score:.5f}")
        bar.refresh()

    return update
