"""Per-layer cycle/energy accounting (an interpreter listener) and the run report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from flowc.backend.image import LayerInfo
from flowc.runtime.check import CheckResult
from flowc.runtime.cost import mnemonic, pair_passes
from flowc.runtime.events import ExecEvent, LoopEvent


@dataclass
class LayerCost:
    name: str
    kind: str
    cycles: int = 0
    actions: dict[str, float] = field(default_factory=dict)
    macs: int = 0  # dense-equivalent multiply-accumulates (tokens x in x out)
    kept_macs: int = 0  # the ones the kept weights do
    tokens: int = 0
    energy_pj: float = 0.0
    setup_cycles: int = 0  # paid once at program load (resident weights), not per inference
    setup_actions: dict[str, float] = field(default_factory=dict)
    setup_energy_pj: float = 0.0

    def add(self, cost) -> None:
        self.cycles += int(cost.cycles)
        self.setup_cycles += int(cost.setup_cycles)
        _merge(self.actions, cost.actions)
        _merge(self.setup_actions, cost.setup_actions)


def _merge(into: dict[str, float], more) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


class CostListener:
    """Turns interpreter events into per-layer cycles and energy actions via a cost model.

    Setup (resident weight loads) is counted once per weight tensor, keyed by the `w` operand
    of the loop's `ld.tile`: running a layer twice (or twice the same weight) loads it once.
    With `tensors` (the image's tensors) and `pair_select = "row-shared"`, each loop gets
    exact per-tile pair passes from `<w>.meta` instead of the reachable-pair bound.
    """

    def __init__(self, cost_model, layers: tuple[LayerInfo, ...],
                 tensors: Mapping[str, np.ndarray] | None = None) -> None:
        self.model = cost_model
        self.info = {i.name: i for i in layers}
        self.tensors = tensors
        self.layers: dict[str, LayerCost] = {}
        self.loaded: set[str] = set()  # weight tensors whose setup is already counted
        self._passes: dict[tuple[str, int], np.ndarray] = {}

    def _layer(self, name: str) -> LayerCost:
        if name not in self.layers:
            info = self.info.get(name)
            self.layers[name] = LayerCost(name, info.kind if info else "vector")
        return self.layers[name]

    def on_instr(self, event: ExecEvent) -> None:
        lc = self._layer(event.layer)
        lc.add(self.model.instr_cost(event))
        self._count_instr(lc, event)

    def on_loop(self, event: LoopEvent) -> None:
        lc = self._layer(event.layer)
        weight = loop_weight(event)
        lc.add(self.loop_cost(event, weight, weight is None or weight not in self.loaded))
        if weight is not None:
            self.loaded.add(weight)
        self._count_loop(lc, event)

    def loop_cost(self, event: LoopEvent, weight: str | None, fresh: bool):
        """A loop's cost; its setup (resident weight load) only if the weight is `fresh`."""
        cost = self.model.loop_cost(event, self.pair_passes(event, weight))
        return cost if fresh else replace(cost, setup_cycles=0, setup_actions={})

    def _count_instr(self, lc: LayerCost, event: ExecEvent) -> None:
        info = self.info.get(event.layer)
        if info is not None and info.kind == "attention":  # mm.act: outputs x K MACs
            lc.macs += event.elements * info.in_features
            lc.kept_macs += event.elements * info.in_features
            lc.tokens = event.tokens

    def _count_loop(self, lc: LayerCost, event: LoopEvent) -> None:
        info = self.info.get(event.layer)
        tokens = event.body[0].tokens if event.body else 0
        lc.tokens = tokens
        if info is not None and info.kind == "gemm":
            lc.macs += tokens * info.in_features * info.out_features
            lc.kept_macs += tokens * info.nonzeros

    def pair_passes(self, event: LoopEvent, weight: str | None) -> np.ndarray | None:
        """Exact row-shared passes per tile (loop order) from `<w>.meta`, else None."""
        if (self.tensors is None or weight is None
                or self.model.machine.pair_select != "row-shared"):
            return None
        meta = self.tensors.get(f"{weight}.meta")
        group_m = max((b.group_m for b in event.body), default=0)
        if meta is None or not group_m:
            return None
        key = (weight, group_m)
        if key not in self._passes:
            self._passes[key] = pair_passes(meta.reshape((-1,) + meta.shape[-3:]), group_m)
        return self._passes[key]

    def finish(self) -> list[LayerCost]:
        for lc in self.layers.values():
            lc.energy_pj = float(self.model.machine.energy_pj(lc.actions))
            lc.setup_energy_pj = float(self.model.machine.energy_pj(lc.setup_actions))
        return list(self.layers.values())


def loop_weight(event: LoopEvent) -> str | None:
    """The weight tensor a loop loads (the `w` operand of its ld.tile), or None."""
    for b in event.body:
        if mnemonic(b.instr) == "ld.tile":
            return getattr(b.instr, "w", None)
    return None


def pattern_text(info: LayerInfo | None) -> str:
    if info is not None and info.kind == "attention":
        return "attn"  # activation x activation GEMM on the macros (docs/attention.md)
    if info is None or info.kind != "gemm":
        return "-"
    return pattern_label(info.pattern, info.native)


def pattern_label(asked: tuple[int, int], native: tuple[int, int]) -> str:
    """How reports name what a Linear runs as: "2:4"; "1:8->1:4" when the machine rounds the
    asked pattern up to a supported one; "dense" for n == m (the machine's dense mode is
    n = m = P, e.g. 4:4 on FlexCiM, which users would not recognise as dense);
    "3:4->dense" when no supported sparse pattern holds the asked one."""
    def text(p: tuple[int, int]) -> str:
        return "dense" if p[0] == p[1] else f"{p[0]}:{p[1]}"

    a, n = text(asked), text(native)
    return a if a == n else f"{a}->{n}"


@dataclass
class RunReport:
    file: str
    machine: str
    clock_mhz: float
    numerics: str
    mode: str
    layers: list[LayerCost]
    infos: dict[str, LayerInfo]
    check: CheckResult | None
    wall_seconds: float
    check_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def total_cycles(self) -> int:
        return sum(lc.cycles for lc in self.layers)

    @property
    def total_energy_pj(self) -> float:
        return sum(lc.energy_pj for lc in self.layers)

    @property
    def setup_cycles(self) -> int:
        """Program-load cycles (resident weight loads), not part of an inference."""
        return sum(lc.setup_cycles for lc in self.layers)

    @property
    def setup_energy_pj(self) -> float:
        return sum(lc.setup_energy_pj for lc in self.layers)

    def to_dict(self) -> dict:
        cyc = self.total_cycles
        return {
            "file": self.file, "machine": self.machine, "numerics": self.numerics,
            "mode": self.mode, "clock_mhz": self.clock_mhz,
            "total_cycles": cyc, "total_energy_pj": self.total_energy_pj,
            "latency_s": cyc / (self.clock_mhz * 1e6),
            "total_macs": sum(lc.macs for lc in self.layers),
            "setup_cycles": self.setup_cycles, "setup_energy_pj": self.setup_energy_pj,
            "layers": [{
                "name": lc.name, "kind": lc.kind, "pattern": pattern_text(self.infos.get(lc.name)),
                "cycles": lc.cycles, "energy_pj": lc.energy_pj, "macs": lc.macs,
                "kept_macs": lc.kept_macs, "tokens": lc.tokens, "actions": lc.actions,
                "setup_cycles": lc.setup_cycles, "setup_energy_pj": lc.setup_energy_pj,
                **_padding(self.infos.get(lc.name)),
            } for lc in self.layers],
            "check": self.check.to_dict() if self.check else None,
            "simulation_wall_s": self.wall_seconds, "check_wall_s": self.check_seconds,
            **self.extra,
        }


def _padding(info: LayerInfo | None) -> dict:
    """K, its N:M group pad and the K the macro passes cover, for a CiM layer."""
    if info is None or info.kind != "gemm":
        return {}
    return {"in_features": info.in_features, "k_pad": info.k_pad, "padded_in": info.padded_in}
