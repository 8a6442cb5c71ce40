"""Analytic totals for sweeps: `analyse(...).summary()`, bit for bit, priced once per signature.

A sweep evaluates thousands of points that differ in a few machine fields. `analyse` prices a
model's distinct GEMMs by replaying the interpreter's events through `CostListener`, but about
three quarters of its ~26 ms (LLaMA-2-7B prefill, 289 GEMMs, 8 distinct) go to fitting the
pattern of every layer for its report, hashing the whole machine for its per-call cache and
copying 289 LayerCost objects. Here:

- a model phase (hyper-parameters, phase, tokens, kv_len, assignment) is reduced once to its
  distinct GEMM *signatures* (the Gemm without name and block, and the N:M pattern asked) and
  the signature of each layer in order (`plan_of`, LRU-cached);
- each signature is priced by `gemm_listener`, as `gemm_cost` prices it (same events, same
  CostListener, same cost model) once per *pricing key* of the machine: every field but those
  the pricing does not read (name, description, clock, energy table). A process-wide LRU
  keeps the prices, so sweep points that differ in energy entries or clock reuse every price,
  and a new macro count prices the ~10 signatures, not 289 layers;
- energy is priced per call from the cached action counts with the caller's energy table, by
  the arithmetic of `EnergyTable.energy_pj` (sorted actions, zero counts dropped, count x
  pJ x activity), and every total is summed over the layers in the order `AnalyticReport`
  sums them, so totals are identical to `analyse(...).summary()`, not merely close
  (tests/sweep/test_fast_analytic.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flowc.machine import MachineConfig
from flowc.studies.analytic import Assignment, Pattern, gemm_events, gemm_listener, shape_gemms
from flowc.studies.analytic_models import Gemm, Shapes, shapes_of

PRICE_CACHE = 16384  # (signature, machine pricing key) entries kept per process (~1 KB each)
PLAN_CACHE = 256  # model phases kept per process
NOT_PRICED = ("name", "description", "clock_mhz", "energy")  # fields pricing does not read
SIG_FIELDS = tuple(f.name for f in dataclasses.fields(Gemm) if f.name not in ("name", "block"))


class MachineKey:
    """Some fields of a machine, hashed once; equal keys mean equal results of what reads
    only those fields. `machine` is the machine the key was made from (used on a miss)."""

    __slots__ = ("fields", "machine", "_hash")

    def __init__(self, machine: MachineConfig, fields: tuple) -> None:
        self.fields = fields
        self.machine = machine
        self._hash = hash(fields)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, MachineKey) and self._hash == other._hash
                                 and self.fields == other.fields)


def pricing_key(machine: MachineConfig) -> MachineKey:
    """Every field but NOT_PRICED: the cost model and event builder read all the others
    (a new MachineConfig field is included automatically)."""
    return MachineKey(machine, tuple(getattr(machine, f.name) for f in dataclasses.fields(
        machine) if f.name not in NOT_PRICED))


def event_key(machine: MachineConfig) -> MachineKey:
    """What `gemm_events` reads: the pattern fit (supported patterns, P, R) and P, R, C."""
    mc = machine.macro
    return MachineKey(machine, (machine.supported(), mc.subarrays, mc.rows, mc.cols))


@dataclass(frozen=True)
class Priced:
    """One signature's layer cost on one pricing key (count applied to cycles and MACs; the
    energy of one GEMM is priced per call from `actions`, then times `count`)."""

    cycles: int
    setup_cycles: int
    macs: int
    count: int
    actions: tuple[tuple[str, float], ...]  # sorted, zero counts dropped: what energy reads
    setup_actions: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Plan:
    """A model phase as distinct signatures and, per layer in analyse() order, its signature."""

    sigs: tuple[tuple[Gemm, Pattern | None], ...]
    order: tuple[int, ...]  # every layer
    gemm_order: tuple[int, ...]  # layers of kind "gemm", in order
    attention_order: tuple[int, ...]  # layers of kind "attention", in order
    tokens: int
    kv_len: int

    mult: tuple[int, ...]  # layers per signature
    gemm_mult: tuple[int, ...]
    attention_mult: tuple[int, ...]


def _multiplicity(order: Sequence[int], n: int) -> tuple[int, ...]:
    counts = [0] * n
    for i in order:
        counts[i] += 1
    return tuple(counts)


def _nonzero_sorted(actions: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple((a, actions[a]) for a in sorted(actions) if actions[a])


@lru_cache(maxsize=PRICE_CACHE)
def _events(sig: Gemm, asked: Pattern | None, key: MachineKey) -> tuple[tuple, Pattern]:
    evs, native = gemm_events(dataclasses.replace(sig, name="l", count=1), key.machine, asked)
    return tuple(evs), native


@lru_cache(maxsize=PRICE_CACHE)
def _price(sig: Gemm, asked: Pattern | None, key: MachineKey) -> Priced:
    """What `gemm_cost` computes for one signature, from the same events and CostListener,
    before its energy (priced per call with the caller's table) and count multiplication."""
    machine = key.machine
    listener = gemm_listener(sig, machine, asked, _events(sig, asked, event_key(machine)))
    lc = listener.layers["l"]
    k = sig.count
    return Priced(lc.cycles * k, lc.setup_cycles * k, lc.macs * k, k,
                  _nonzero_sorted(lc.actions), _nonzero_sorted(lc.setup_actions))


def _build_plan(shapes: Shapes, phase: str, tokens: int, kv_len: int | None, attention: bool,
                all_logits: bool, assignment: Assignment) -> Plan:
    gemms, t, kv = shape_gemms(shapes, phase, tokens, kv_len, attention, all_logits)
    index: dict[tuple, int] = {}
    sigs: list[tuple[Gemm, Pattern | None]] = []
    order = []
    for g in gemms:
        asked = None if g.kind == "attention" else assignment.pattern_for(g.name)
        key = (*(getattr(g, f) for f in SIG_FIELDS), asked)
        if key not in index:  # one dataclasses.replace per signature, not per layer
            index[key] = len(sigs)
            sigs.append((dataclasses.replace(g, name="", block=-1), asked))
        order.append(index[key])
    kinds = [g.kind for g in gemms]
    gemm = tuple(i for i, k in zip(order, kinds, strict=True) if k == "gemm")
    att = tuple(i for i, k in zip(order, kinds, strict=True) if k == "attention")
    n = len(sigs)
    return Plan(tuple(sigs), tuple(order), gemm, att, t, kv, _multiplicity(order, n),
                _multiplicity(gemm, n), _multiplicity(att, n))


_cached_plan = lru_cache(maxsize=PLAN_CACHE)(_build_plan)


def plan_of(config: Any, assignment: Assignment | None = None, phase: str = "prefill",
            tokens: int = 2048, kv_len: int | None = None, attention: bool = True,
            all_logits: bool = False) -> Plan:
    """The signatures of one model phase (cached by hyper-parameters, not by config object)."""
    args = (shapes_of(config), phase, tokens, kv_len, attention, all_logits,
            assignment or Assignment())
    try:
        return _cached_plan(*args)
    except TypeError:  # an unhashable assignment (lists in its rules): plan it uncached
        return _build_plan(*args)


def _energy(per_count: dict[str, float], actions: tuple[tuple[str, float], ...],
            machine: MachineConfig) -> float:
    """`float(EnergyTable.energy_pj(actions))` with the table's per-count values at hand."""
    try:
        return float(sum([c * per_count[a] for a, c in actions]))
    except KeyError:  # an action without a value: let the table raise its own error
        return float(machine.energy_pj(dict(actions)))


def analyse_totals(config: Any, machine: MachineConfig, assignment: Assignment | None = None,
                   phase: str = "prefill", tokens: int = 2048, kv_len: int | None = None,
                   attention: bool = True, all_logits: bool = False) -> dict[str, Any]:
    """`analyse(config, machine, ...).summary()` without building per-layer costs.

    {"gemm" | "attention" | "total": {cycles, seconds, energy_pj, macs}, "setup_cycles",
    "setup_energy_pj"}; equal to the summary of `analyse` with the same arguments.
    """
    plan = plan_of(config, assignment, phase, tokens, kv_len, attention, all_logits)
    return totals_of(plan, machine)


def totals_of(plan: Plan, machine: MachineConfig) -> dict[str, Any]:
    """Summary totals of a plan on a machine (see `analyse_totals`)."""
    key = pricing_key(machine)
    priced = [_price(sig, asked, key) for sig, asked in plan.sigs]
    per_count = {e.action: e.per_count_pj for e in machine.energy.entries}
    energy, setup_energy = [], []
    for p in priced:  # the layer energy of analyse: one GEMM's energy, times count if > 1
        e = _energy(per_count, p.actions, machine)
        s = _energy(per_count, p.setup_actions, machine)
        energy.append(e * p.count if p.count != 1 else e)
        setup_energy.append(s * p.count if p.count != 1 else s)
    hz = machine.clock_mhz * 1e6
    out: dict[str, Any] = {}
    for kind, order, mult in (("gemm", plan.gemm_order, plan.gemm_mult),
                              ("attention", plan.attention_order, plan.attention_mult),
                              ("total", plan.order, plan.mult)):
        # integers in any order; floats over the layers in analyse()'s order (same rounding)
        c = sum([p.cycles * k for p, k in zip(priced, mult, strict=True)])
        out[kind] = {"cycles": c, "seconds": c / hz,
                     "energy_pj": sum(map(energy.__getitem__, order)),
                     "macs": sum([p.macs * k for p, k in zip(priced, mult, strict=True)])}
    out["setup_cycles"] = sum([p.setup_cycles * k for p, k in zip(priced, plan.mult,
                                                                  strict=True)])
    out["setup_energy_pj"] = sum(map(setup_energy.__getitem__, plan.order))
    return out


def cache_info() -> dict[str, Any]:
    """Hits, misses and sizes of the process-wide price and plan caches (for benches)."""
    return {"prices": _price.cache_info()._asdict(), "plans": _cached_plan.cache_info()._asdict()}


def clear_caches() -> None:
    _price.cache_clear()
    _cached_plan.cache_clear()


def analyse_many(config: Any, machines: Sequence[MachineConfig], **kw: Any
                 ) -> list[dict[str, Any]]:
    """`analyse_totals` of one model phase on several machines (the plan is built once)."""
    plan = plan_of(config, kw.pop("assignment", None), **kw)
    return [totals_of(plan, m) for m in machines]
