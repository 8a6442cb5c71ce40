"""Cheap lower bounds on a point's objectives, and pruning that never loses a Pareto point.

Why: a sweep wants the Pareto front, and a point whose *lower bound* is already strictly
dominated by a point evaluated earlier cannot be on it. The bounds are closed forms of the
cost model's own formulas (flowc/runtime/cost.py, docs/hardware.md) for what analytic mode
prices, keeping every term known without building events and dropping the rest (each
dropped term is >= 0):

- cycles >= per GEMM: waves x wave_lb (+ tile loads when streamed), where a wave of tiles takes
  at least select_fill + feed + S + (T - 1) x max(feed, S) + drain with S = bit_cycles (the
  fewest pair passes, 1); waves = ceil(tiles / macros), 1 when resident; plus the GEMM's
  vector instructions and cfg.nm, exact closed forms. Only row-shared pair passes beyond one
  are left out, so on per-column machines the bound equals the cycles;
- energy >= per GEMM: the action counts that do not depend on masks (mult_bit; ld.act's
  buffer reads; shift_acc and the adder-tree levels at one pair pass per tile; merge, cross-gang
  and accumulate adders; the psum write; weight writes and DRAM reads when streamed; the
  vector instructions), priced with the machine's table (every entry >= 0, checked), times
  (1 - 1e-9) so float rounding of a tight bound can never put it above the value `analyse`
  sums in another order. Pair-select muxes and select configuration are left out.

`prune_plan` evaluates, in the driver, the points whose bounds are not dominated by another
point's bound (the likely front) and skips every point whose bound one of those values
dominates: decided before the workers start, so the decisions do not depend on worker timing
and the same spec gives the same table. A skip needs a point that is <= the bound in every
objective and < in one, i.e. strictly dominates the point itself: points tied with the front
(the report keeps ties) are never skipped. Run-mode points (real models) get no bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from flowc.errors import FlowcError
from flowc.machine import MachineConfig
from flowc.machine.energy import ACTIONS
from flowc.machine.errors import MachineConfigError
from flowc.runtime.cost import ACC_BITS, VEC_BITS, select_stages
from flowc.studies.analytic import Pattern
from flowc.studies.analytic_fast import MachineKey, Plan, event_key, plan_of, pricing_key
from flowc.studies.analytic_models import Gemm

if TYPE_CHECKING:
    from flowc.studies.sweep.point import Shared
    from flowc.studies.sweep.spec import Point, SweepSpec

BOUNDED = ("latency_s", "energy_pj", "edp_pj_s", "cycles")  # objectives with a lower bound
ROUNDING = 1.0 - 1e-9  # energy bound margin (see the module docstring)
UNITS = {"latency_s": "s", "energy_pj": "pJ", "edp_pj_s": "pJ*s", "cycles": "cycles"}


@dataclass(frozen=True)
class GemmBound:
    """Lower bounds for one GEMM signature (count applied): cycles and action counts."""

    cycles: int
    actions: tuple[tuple[str, float], ...]


def _loop_cycles_lb(machine: MachineConfig, n: int, m: int, k_pass: int, tiles: int,
                    tokens: int) -> int:
    """A lower bound of CostModel.loop_cost(...).cycles for a GEMM tile loop (see docstring)."""
    mc = machine.macro
    if tiles == 0 or tokens < 1:
        return 0
    resident = machine.residency == "resident"
    waves = 1 if resident else -(-tiles // machine.macros)
    fill = mc.cols if (machine.pair_select == "per-column" and select_stages(machine, n, m)) \
        else 0
    feed = -(-k_pass * mc.act_bits // mc.act_bw_bits)
    s = mc.bit_cycles
    drain = mc.tree_levels + 1 + mc.merge_levels + 1
    wave = fill + feed + s + (tokens - 1) * max(feed, s) + drain
    c = mc.cols
    if resident:
        return waves * wave
    if machine.load_overlap:
        return c + (waves - 1) * max(wave, c) + wave
    return waves * (wave + c)


@lru_cache(maxsize=4096)
def _native(asked: Pattern | None, key: MachineKey) -> Pattern:
    """The pattern a layer runs at (MachineConfig.fit_pattern; `key` = event_key)."""
    return key.machine.fit_pattern(*(asked or key.machine.dense_pattern))


@lru_cache(maxsize=16384)
def _gemm_bound(sig: Gemm, native: Pattern, key: MachineKey) -> GemmBound:
    machine = key.machine
    if sig.runtime_weight and machine.residency == "resident":
        machine = dataclasses.replace(machine, residency="streamed")  # as gemm_cost
    mc = machine.macro
    n, m = native
    k_pass = machine.k_pass(n, m)
    n_tiles = -(-sig.out_features // mc.cols)
    tiles = n_tiles * -(-sig.in_features // k_pass)
    t, bc = sig.tokens, mc.bit_cycles
    vec = t * bc
    elems = tiles * mc.cols * t
    acts: dict[str, float] = {
        "mult_bit": tiles * mc.cells * mc.weight_bits * mc.input_bits * vec,
        "gbuf_read": tiles * t * k_pass * mc.act_bits,
        "abuf_read": tiles * t * k_pass * mc.act_bits,
        "shift_acc": mc.subarrays * mc.cols * vec * tiles,
        f"merge_n{n}": elems,
        "full_adder": elems * (mc.subarrays // n - 1) * mc.psum_bits + elems * ACC_BITS,
        "ff_write": elems * ACC_BITS,
        "gbuf_write": n_tiles * mc.cols * t * ACC_BITS,
    }
    for level in range(1, mc.tree_levels + 1):
        acts[f"tree_l{level}"] = mc.subarrays * mc.cols * vec * tiles
    if machine.residency != "resident":
        sparse = machine.metadata and n < m
        acts["weight_write"] = tiles * mc.cells * (mc.weight_bits + mc.meta_bits
                                                   * machine.metadata)
        acts["dram_read"] = tiles * mc.cells * (mc.weight_bits
                                                + ((m.bit_length() - 1) if sparse else 0))
    vec_cycles = _vector_ops(machine, sig, n_tiles * mc.cols, acts)
    cycles = _loop_cycles_lb(machine, n, m, k_pass, tiles, t) + vec_cycles + 1  # + cfg.nm
    k = sig.count
    return GemmBound(cycles * k, tuple((a, v * k) for a, v in sorted(acts.items()) if v))


def _vector_ops(machine: MachineConfig, sig: Gemm, padded_out: int,
                acts: dict[str, float]) -> int:
    """Cycles of the GEMM's vector instructions (v.quant unless the input is shared,
    psum.clr, v.deq, v.bias), exactly as CostModel._vector prices them; adds their actions."""
    vec, t = machine.vector, sig.tokens
    ops = [] if sig.shares_input else [(vec.quant, t * sig.in_features, t * sig.in_features, 8)]
    ops += [(vec.elementwise, t * padded_out, 0, VEC_BITS),
            (vec.deq, t * sig.out_features, t * padded_out, VEC_BITS)]
    if sig.bias:
        ops.append((vec.elementwise, t * sig.out_features, t * sig.out_features, VEC_BITS))
    cycles = 0
    for per_elem, out, inp, out_bits in ops:
        work = max(out, inp)
        cycles += -(-work // vec.lanes) * per_elem
        for a, v in (("vec_op", work * per_elem), ("gbuf_read", inp * VEC_BITS),
                     ("gbuf_write", out * out_bits)):
            acts[a] = acts.get(a, 0) + v
    return cycles


def plan_bounds(plan: Plan, machine: MachineConfig) -> dict[str, float]:
    """Lower bounds of cycles, latency_s, energy_pj and edp_pj_s of a plan on a machine."""
    key, fit = pricing_key(machine), event_key(machine)
    per_count = dict.fromkeys(ACTIONS, 0.0)  # an action without a value: no bound term
    per_count.update((e.action, e.per_count_pj) for e in machine.energy.entries)
    cycles, energy = 0, 0.0
    for (sig, asked), mult in zip(plan.sigs, plan.mult, strict=True):
        b = _gemm_bound(sig, _native(asked, fit), key)
        cycles += b.cycles * mult
        energy += mult * sum([v * per_count[a] for a, v in b.actions])
    if any(v < 0 for v in per_count.values()):
        energy = 0.0  # a negative entry would make a partial sum no bound
    latency = cycles / (machine.clock_mhz * 1e6)
    energy *= ROUNDING
    return {"cycles": cycles, "latency_s": latency, "energy_pj": energy,
            "edp_pj_s": energy * latency * ROUNDING}


def point_bounds(point: Point, shared: Shared | None = None) -> dict[str, float] | None:
    """Lower bounds of one analytic point, or None when it has none (run mode, or the point
    cannot be priced: it must then be evaluated, so its error row is written)."""
    from flowc.studies.sweep.point import Shared, assignment_of, load_assignments

    if point.values.get("phase") is None:  # run mode: no analytic description of the model
        return None
    if shared is None:
        shared = Shared("analytic", load_assignments([point]))
    try:
        v = point.values
        plan = plan_of(point.model, assignment_of(shared, point), phase=v["phase"],
                       tokens=v["tokens"], kv_len=v.get("kv_len"))
        return plan_bounds(plan, point.machine)
    except (FlowcError, MachineConfigError):
        return None


def lower_bounds(spec: SweepSpec, points: Sequence[Point], shared: Shared | None = None
                 ) -> list[tuple[float, float]]:
    """(latency_s, energy_pj) lower bounds per point (0, 0 where a point has none)."""
    from flowc.studies.sweep.point import Shared, load_assignments

    if shared is None:
        shared = Shared(spec.sweep.mode, load_assignments(points))
    out = []
    for p in points:
        b = point_bounds(p, shared) if spec.sweep.mode == "analytic" else None
        out.append((b["latency_s"], b["energy_pj"]) if b else (0.0, 0.0))
    return out


# -- pruning --------------------------------------------------------------------------------------


@dataclass
class PrunePlan:
    """Evaluation order and bounds (per point index, in `objectives` order; None: no bound)."""

    objectives: tuple[str, ...]
    bounds: dict[int, tuple[float, ...] | None]
    order: list[int]
    note: str = ""  # why nothing can be pruned, when nothing can


def prune_plan(spec: SweepSpec, points: Sequence[Point], shared: Shared | None = None
               ) -> dict[int, str]:
    """{point index: reason} for the points that cannot be on the Pareto front of the spec's
    objectives (what the driver stores as "skipped" rows instead of evaluating them).

    The points whose bounds no other bound strictly dominates (the front of the bounds: 1 to
    4 points on the shipped grids and a 10,000-point one) are evaluated here, in the driver,
    by the workers' own `evaluate_point`; every point whose bound one of their values strictly
    dominates is skipped. One pass, decided before any worker starts: nothing depends on
    timing, and a resumed sweep (the driver passes every point of the spec) decides the same."""
    from flowc.studies.sweep.point import Shared, evaluate_point, load_assignments

    if shared is None:
        shared = Shared(spec.sweep.mode, load_assignments(points))
    plan = bound_plan(spec, points, shared)
    if plan.note:
        return {}
    by_index = {p.index: p for p in points}
    pruner = Pruner(plan)
    for i in bound_front(plan):
        row = evaluate_point(shared, by_index[i])
        if row["status"] == "ok":
            pruner.record(i, row)
    return pruner.decide(plan.order)[1]


def bound_front(plan: PrunePlan) -> list[int]:
    """Points whose bound no other point's bound strictly dominates, in evaluation order."""
    front = Pruner(plan)
    for i in plan.order:
        b = plan.bounds[i]
        if b is not None:
            front.add((i, b))
    rank = {i: r for r, i in enumerate(plan.order)}
    return sorted((i for i, _ in front.front), key=rank.__getitem__)


def bound_plan(spec: SweepSpec, points: Sequence[Point], shared: Shared | None = None
               ) -> PrunePlan:
    """Bounds of every point on the spec's objectives and an order that finds the front
    early (ascending sum of log bounds; points without a bound first, in spec order)."""
    from flowc.studies.sweep.point import Shared, load_assignments

    objectives = tuple(spec.sweep.objectives)
    unbounded = [o for o in objectives if o not in BOUNDED]
    index = [p.index for p in points]
    if spec.sweep.mode != "analytic" or unbounded:
        why = (f"objective {unbounded[0]} has no lower bound" if unbounded
               else "run mode: no analytic bound for a real model")
        return PrunePlan(objectives, dict.fromkeys(index), index, f"nothing pruned ({why})")
    if shared is None:
        shared = Shared("analytic", load_assignments(points))
    bounds: dict[int, tuple[float, ...] | None] = {}
    for p in points:
        b = point_bounds(p, shared)
        bounds[p.index] = tuple(b[o] for o in objectives) if b else None

    def score(i: int) -> tuple[int, float, int]:
        b = bounds[i]
        if b is None:
            return (0, 0.0, i)
        return (1, sum(math.log(max(v, 1e-300)) for v in b), i)

    return PrunePlan(objectives, bounds, sorted(index, key=score))


@dataclass
class Pruner:
    """The front of the evaluated points and the skip decisions against it. `decide(points)`
    judges points against the values `record`ed before the call (a driver evaluating in
    rounds records a whole round, then decides the next: decisions never depend on which
    worker finished first)."""

    plan: PrunePlan
    front: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)
    pending: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)

    def record(self, index: int, values: Sequence[float] | Mapping[str, Any]) -> None:
        """An evaluated point's objective values (a row dict or a sequence in objective
        order); null or non-finite values (an error row) are ignored."""
        if isinstance(values, Mapping):
            values = [values.get(o) for o in self.plan.objectives]
        vals = tuple(values)
        if all(isinstance(v, int | float) and math.isfinite(v) for v in vals):
            self.pending.append((index, tuple(float(v) for v in vals)))

    def decide(self, batch: Sequence[int]) -> tuple[list[int], dict[int, str]]:
        """(points to evaluate, {point: skip reason}) for one batch of the plan's order."""
        for item in self.pending:
            self.add(item)
        self.pending.clear()
        run, skip = [], {}
        for i in batch:
            b = self.plan.bounds.get(i)
            by = None if b is None else self._dominator(b)
            if by is None:
                run.append(i)
            else:
                skip[i] = self._reason(by)
        return run, skip

    def _dominator(self, b: tuple[float, ...]) -> tuple[int, tuple[float, ...]] | None:
        for k, v in self.front:
            if all(x <= y for x, y in zip(v, b, strict=True)) and v != b:
                return k, v
        return None

    def add(self, item: tuple[int, tuple[float, ...]]) -> None:
        """Put (index, values) into the front unless a front point strictly dominates it."""
        _, v = item
        for _, f in self.front:
            if all(x <= y for x, y in zip(f, v, strict=True)) and f != v:
                return  # strictly dominated: adds nothing the front does not already prune
        self.front = [(k, f) for k, f in self.front
                      if not (all(x <= y for x, y in zip(v, f, strict=True)) and f != v)]
        self.front.append(item)
        self.front.sort()

    def _reason(self, by: tuple[int, tuple[float, ...]]) -> str:
        """One text per dominating point (the driver's summary counts points per reason)."""
        got = ", ".join(f"{o} {x:.6g} {UNITS[o]}"
                        for o, x in zip(self.plan.objectives, by[1], strict=True))
        return f"lower bound dominated by point #{by[0]} ({got})"
