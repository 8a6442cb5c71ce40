"""The energy table: every action the cost model counts, with a value, a unit and a source.

Energy = sum over actions of count x energy per count. The catalogue below fixes the set of
actions and the unit each one is counted in, so a machine file cannot silently mean "per byte"
where the cost model counts bits. A count for an action outside the catalogue, or for an action
the machine gives no value, raises `EnergyError`: there is no default value anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowc.machine.errors import EnergyError, MachineConfigError, suggest


@dataclass(frozen=True)
class ActionSpec:
    """What one count of an action is (its unit) and where the cost model charges it."""

    unit: str
    doc: str


def _catalogue() -> dict[str, ActionSpec]:
    acts = {
        "weight_write": ActionSpec("bit", "one bit written into the CiM array (weight or meta)"),
        "mult_bit": ActionSpec("bit-op", "one 1-bit product of a weight bit and an input bit"),
        "full_adder": ActionSpec("bit-op", "one full-adder bit operation outside the column "
                                 "trees (cross-gang psum sum, psum accumulate)"),
        "ff_write": ActionSpec("bit", "one flip-flop bit written (select and psum registers)"),
        "shift_acc": ActionSpec("column-cycle", "psum shift-accumulate of one sub-macro column "
                                "for one bit-serial cycle"),
        "mux_bit": ActionSpec("bit-stage", "one bit through one 2:1 mux stage (cell metadata "
                              "mux, pair select)"),
        "abuf_read": ActionSpec("bit", "activation/metadata buffer read"),
        "gbuf_read": ActionSpec("bit", "global buffer read"),
        "gbuf_write": ActionSpec("bit", "global buffer write"),
        "dram_read": ActionSpec("bit", "off-chip DRAM read"),
        "vec_op": ActionSpec("lane-cycle", "one vector-unit lane busy for one cycle (fp32)"),
    }
    for level in range(1, 9):
        acts[f"tree_l{level}"] = ActionSpec(
            "column-cycle", f"level {level} of a column adder tree, per column per cycle")
    for n in (1, 2, 4, 8):
        acts[f"merge_n{n}"] = ActionSpec(
            "column-op", f"merging tree of a gang of {n} sub-macros, per column per vector")
    return acts


ACTIONS: Mapping[str, ActionSpec] = _catalogue()


@dataclass(frozen=True)
class EnergyEntry:
    """Energy of one action. `pj * activity` is charged per count.

    `source` cites where the value comes from; `estimate=True` marks a value nobody measured.
    At least one of the two is required, so every number in a report can be traced.
    """

    action: str
    pj: float
    unit: str
    source: str = ""
    estimate: bool = False
    activity: float = 1.0

    @property
    def per_count_pj(self) -> float:
        return self.pj * self.activity

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"pj": self.pj, "unit": self.unit}
        if self.source:
            d["source"] = self.source
        if self.estimate:
            d["estimate"] = True
        if self.activity != 1.0:
            d["activity"] = self.activity
        return d


@dataclass(frozen=True)
class EnergyTable:
    """The per-action energies of one machine (pJ), keyed by action name."""

    entries: tuple[EnergyEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {e.action: e for e in self.entries})

    def __contains__(self, action: str) -> bool:
        return action in self._by_name  # type: ignore[attr-defined]

    def __getitem__(self, action: str) -> EnergyEntry:
        check_action(action)
        entry = self._by_name.get(action)  # type: ignore[attr-defined]
        if entry is None:
            raise EnergyError(f"energy.{action}: this machine has no value for action "
                              f"'{action}' ({ACTIONS[action].doc})")
        return entry

    def breakdown(self, actions: Mapping[str, float]) -> dict[str, float]:
        """Energy in pJ per action; zero counts are left out (they cost nothing anywhere)."""
        out: dict[str, float] = {}
        for name in sorted(actions):
            count = actions[name]
            check_action(name)
            if count:
                out[name] = count * self[name].per_count_pj
        return out

    def energy_pj(self, actions: Mapping[str, float]) -> float:
        """Total energy in pJ of a dict of action counts."""
        return sum(self.breakdown(actions).values())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {e.action: e.to_dict() for e in self.entries}


def check_action(action: str) -> None:
    """Raise unless `action` is in the catalogue (a typo must not cost zero)."""
    if action not in ACTIONS:
        raise EnergyError(f"energy.{action}: unknown energy action '{action}'"
                          f"{suggest(action, ACTIONS)} (known: {', '.join(sorted(ACTIONS))})")


_ENTRY_KEYS = ("pj", "unit", "source", "estimate", "activity")


def parse_energy(raw: object, path: str = "energy") -> EnergyTable:
    """Build an EnergyTable from `{action: {pj, unit, source | estimate, [activity]}}`."""
    if not isinstance(raw, Mapping):
        raise MachineConfigError(f"{path}: expected a table of actions, got {raw!r}")
    entries = []
    for action in sorted(raw):
        check_action(action)
        entries.append(_parse_entry(action, raw[action], f"{path}.{action}"))
    return EnergyTable(tuple(entries))


def _parse_entry(action: str, raw: object, path: str) -> EnergyEntry:
    if not isinstance(raw, Mapping):
        raise MachineConfigError(f"{path}: expected a table with pj, unit and source, got {raw!r}")
    for key in raw:
        if key not in _ENTRY_KEYS:
            raise MachineConfigError(f"{path}.{key}: unknown key{suggest(key, _ENTRY_KEYS)} "
                                     f"(known: {', '.join(_ENTRY_KEYS)})")
    pj = raw.get("pj")
    if isinstance(pj, bool) or not isinstance(pj, int | float) or pj < 0:
        raise MachineConfigError(f"{path}.pj: expected a non-negative number, got {pj!r}")
    unit = raw.get("unit")
    if unit != ACTIONS[action].unit:
        raise MachineConfigError(f"{path}.unit: action '{action}' is counted per "
                                 f"'{ACTIONS[action].unit}', got {unit!r}")
    source = raw.get("source", "")
    estimate = raw.get("estimate", False)
    if not isinstance(source, str):
        raise MachineConfigError(f"{path}.source: expected a string, got {source!r}")
    if not isinstance(estimate, bool):
        raise MachineConfigError(f"{path}.estimate: expected true or false, got {estimate!r}")
    if not source.strip() and not estimate:
        raise MachineConfigError(f"{path}: needs a 'source' citation or 'estimate = true'")
    activity = raw.get("activity", 1.0)
    if isinstance(activity, bool) or not isinstance(activity, int | float) \
            or not 0 <= activity <= 1:
        raise MachineConfigError(f"{path}.activity: expected a number in [0, 1], "
                                 f"got {activity!r}")
    return EnergyEntry(action, float(pj), unit, source, estimate, float(activity))
