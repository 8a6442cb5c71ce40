"""Analytic mode: cycles and energy of a model from its config and an N:M assignment alone.

No weights and no functional execution. For every GEMM we build the very events the
interpreter sends for the lowered layer (`v.quant` unless the input is shared, `psum.clr`,
`cfg.nm`, the tile loop with `ld.tile ld.act cim merge acc`, `v.deq`, `v.bias`), with the tile
grid of `flowc.backend.pack.geometry_for` and the pattern of `MachineConfig.fit_pattern`, and
feed them to the same `CostListener` and `CostModel` a functional run uses. So a layer's
analytic cycles equal its functional cycles exactly (tests/hardware/test_analytic.py), except
that row-shared pair passes use the reachable-pair bound (masks are unknown here).

Assignment file format (JSON), documented in docs/results.md:

    {"layers": {"lm_head": "dense", "model.layers.*.mlp.*": [2, 8], "model.layers.0.*": "4:8"},
     "default": "2:4", "blocks": 30}

Names are exact layer names or fnmatch globs; an exact name wins, then the first matching glob
in file order, then `default` (absent: dense). A FLOW `Selection` saved as JSON
(`{"patterns": {name: [n, m]}}`) is read the same way. `blocks` (optional) is the depth of the
model the names refer to: `scale_blocks` maps it onto a deeper or shallower model by relative
depth (a FLOW mix measured on SmolLM2's 30 blocks applied to LLaMA-2-7B's 32).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flowc import isa
from flowc.backend.image import LayerInfo
from flowc.backend.pack import geometry_for
from flowc.errors import UsageError
from flowc.machine import MachineConfig
from flowc.runtime.cost import CostModel
from flowc.runtime.events import ExecEvent, LoopEvent
from flowc.runtime.report import CostListener, LayerCost, pattern_label
from flowc.studies.analytic_models import Gemm, Shapes, attention_gemms, linear_gemms, shapes_of

Pattern = tuple[int, int]
PHASES = ("prefill", "decode")
INCLUDED = ("every static-weight Linear (GEMM tile loop + its v.quant, psum.clr, cfg.nm, v.deq, "
            "v.bias), exactly as lowered")
ATTENTION_NOTE = ("attention Q K^T and P V as dense GEMMs whose 'weights' (K^T, V) are written "
                  "into the macros every inference (streamed on `macros` macros even when the "
                  "machine is resident), full kv_len computed (no causal skipping)")
EXCLUDED = ("norms, residual adds, activation functions, gating multiply, rotary embedding, "
            "softmax, embedding lookup, KV-cache traffic, DRAM/global-buffer bandwidth limits")


@dataclass(frozen=True)
class Assignment:
    """N:M per layer name: exact names, then fnmatch globs in order, then `default`."""

    rules: tuple[tuple[str, Pattern | None], ...] = ()
    default: Pattern | None = None  # None = dense
    source: str = "dense"
    blocks: int | None = None  # depth of the model the names were written for

    def pattern_for(self, name: str) -> Pattern | None:
        for key, pat in self.rules:
            if key == name:
                return pat
        for key, pat in self.rules:
            if fnmatch.fnmatchcase(name, key):
                return pat
        return self.default


def uniform(n: int, m: int, dense: Sequence[str] = ("lm_head", "bert.pooler.dense")
            ) -> Assignment:
    """Every Linear at n:m except `dense` (the LM head stays dense, as Wanda/FLOW keep it)."""
    return Assignment(tuple((d, None) for d in dense), (n, m), f"uniform {n}:{m}")


def parse_pattern_value(v: Any, where: str) -> Pattern | None:
    """[n, m], "n:m" or "dense" (None)."""
    if v == "dense" or v is None:
        return None
    if isinstance(v, str):
        parts = v.split(":")
        v = parts if len(parts) == 2 and all(p.isdigit() for p in parts) else None
    if isinstance(v, list | tuple) and len(v) == 2 and all(str(x).isdigit() for x in v):
        n, m = int(v[0]), int(v[1])
        if 1 <= n <= m:
            return None if n == m else (n, m)
    raise UsageError(f"{where}: expected [n, m], 'n:m' or 'dense', got {v!r}")


def assignment_from_dict(d: Mapping[str, Any], source: str = "<dict>") -> Assignment:
    table = d.get("layers", d.get("patterns"))
    if not isinstance(table, Mapping):
        raise UsageError(f"{source}: expected a 'layers' (or FLOW 'patterns') object")
    rules = tuple((str(k), parse_pattern_value(v, f"{source}: layers.{k}"))
                  for k, v in table.items())
    default = parse_pattern_value(d.get("default"), f"{source}: default")
    blocks = d.get("blocks")
    return Assignment(rules, default, source, int(blocks) if blocks else None)


def load_assignment(path: str | Path) -> Assignment:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the N:M assignment ({exc})") from None
    return assignment_from_dict(d, str(path))


BLOCK_RE = re.compile(r"(layers?\.)(\d+)(\.)")


def scale_blocks(a: Assignment, src_blocks: int, dst_blocks: int) -> Assignment:
    """Map per-block rules of a src_blocks-deep model to dst_blocks by relative depth: block
    i of the target takes the rules of block round(i * (src - 1) / (dst - 1))."""
    by_block: dict[int, list[tuple[str, Pattern | None]]] = {}
    other = []
    for key, pat in a.rules:
        mt = BLOCK_RE.search(key)
        if mt and not any(c in key[: mt.start()] for c in "*?["):
            by_block.setdefault(int(mt.group(2)), []).append((key, pat))
        else:
            other.append((key, pat))
    rules = []
    for i in range(dst_blocks):
        src = round(i * (src_blocks - 1) / max(dst_blocks - 1, 1))
        for key, pat in by_block.get(src, []):
            rules.append((BLOCK_RE.sub(rf"\g<1>{i}\g<3>", key, 1), pat))
    return Assignment(tuple(rules + other), a.default, f"{a.source} scaled {src_blocks}->"
                      f"{dst_blocks} blocks", dst_blocks)


# -- events ---------------------------------------------------------------------------------
def gemm_events(g: Gemm, machine: MachineConfig, asked: Pattern | None
                ) -> tuple[list[ExecEvent | LoopEvent], Pattern]:
    """The events the interpreter sends for one lowered Linear (see backend/rules.py)."""
    mc = machine.macro
    asked = asked or machine.dense_pattern
    n, m = machine.fit_pattern(*asked)
    geo = geometry_for(n, m, mc.subarrays, mc.rows, mc.cols, (g.out_features, g.in_features))
    t, name, w = g.tokens, g.name, g.name
    evs: list[ExecEvent | LoopEvent] = [ExecEvent(isa.Layer(name=name, kind=g.kind), name)]
    if not g.shares_input:
        size = t * g.in_features
        evs.append(ExecEvent(isa.VQuant(dst="x.q", scale="x.s", src="x"), name, tokens=t,
                             elements=size, in_elements=size))
    evs.append(ExecEvent(isa.PsumClr(dst="acc", like="x.q", cols=geo.padded_out), name,
                         elements=t * geo.padded_out))
    evs.append(ExecEvent(isa.CfgNm(macro=0, n=n, m=m), name, keep_n=n, group_m=m))
    tiles = geo.n_tiles * geo.k_tiles
    body = (isa.LdTile(macro=0, w=w), isa.LdAct(macro=0, src="x.q"), isa.Cim(macro=0),
            isa.Merge(macro=0), isa.Acc(macro=0, dst="acc"))
    evs.append(LoopEvent(isa.LoopTiles(n_tiles=geo.n_tiles, k_tiles=geo.k_tiles), name,
                         geo.n_tiles, geo.k_tiles,
                         tuple(ExecEvent(b, name, tiles=tiles, tokens=t, keep_n=n, group_m=m,
                                         k_pass=geo.k_pass) for b in body)))
    out = t * g.out_features
    evs.append(ExecEvent(isa.VDeq(dst="y", src="acc", ascale="x.s", w=w, cols=g.out_features),
                         name, tokens=t, elements=out, in_elements=t * geo.padded_out))
    if g.bias:
        evs.append(ExecEvent(isa.VBias(dst="o", src="y", b="b"), name, tokens=t,
                             elements=out, in_elements=out))
    return evs, (n, m)


def replay(events: Sequence[ExecEvent | LoopEvent], listener: CostListener) -> None:
    for ev in events:
        (listener.on_loop if isinstance(ev, LoopEvent) else listener.on_instr)(ev)


def gemm_listener(g: Gemm, machine: MachineConfig, asked: Pattern | None,
                  events: tuple[Sequence[ExecEvent | LoopEvent], Pattern] | None = None
                  ) -> CostListener:
    """A CostListener that has heard one Linear's events (layer "l"; `g.count` not applied).
    `events`: the (events, native pattern) of `gemm_events` when the caller has them already
    (they read only the pattern fit and the macro geometry)."""
    mach = machine
    if g.runtime_weight and machine.residency == "resident":
        mach = replace(machine, residency="streamed")
    evs, native = events or gemm_events(replace(g, name="l"), mach, asked)
    kept = g.out_features * g.in_features * native[0] // native[1]
    info = LayerInfo("l", "gemm", asked or mach.dense_pattern, native, g.in_features,
                     g.out_features, kept)
    listener = CostListener(CostModel(mach), (info,))
    replay(evs, listener)
    return listener


def gemm_cost(g: Gemm, machine: MachineConfig, asked: Pattern | None,
              _cache: dict | None = None) -> LayerCost:
    """LayerCost of one Gemm (times its count); identical GEMMs reuse the computed cost."""
    key = (replace(g, name="", block=-1), asked, machine)
    if _cache is not None and key in _cache:
        return replace(_cache[key], name=g.name)
    listener = gemm_listener(g, machine, asked)
    (lc,) = listener.finish()
    lc = _times(lc, g.count)
    lc.name, lc.kind = g.name, g.kind
    if _cache is not None:
        _cache[key] = lc
    return replace(lc)


def gemm_pricer(machine: MachineConfig, tokens: int):
    """`price(out, K, (n, m)) -> (cycles, energy_pj)` of one static-weight Linear run on
    `tokens` vectors, by the same events and cost model as a functional run (gemm_cost).

    This is what selection passes get as `ctx.price` (hardware-aware budgets); n == m means
    dense. Identical shapes and patterns are priced once.
    """
    cache: dict = {}

    def price(out_features: int, in_features: int, pattern: Pattern) -> tuple[float, float]:
        asked = None if pattern[0] == pattern[1] else (int(pattern[0]), int(pattern[1]))
        lc = gemm_cost(Gemm("l", int(in_features), int(out_features), int(tokens)), machine,
                       asked, cache)
        return float(lc.cycles), float(lc.energy_pj)

    return price


def tokens_of(example_inputs: Sequence[Any]) -> int:
    """Vectors one inference pushes through a Linear: token ids -> their count; a float input
    [..., features] -> the product of its leading dimensions."""
    if not example_inputs:
        return 1
    x = example_inputs[0]
    shape = tuple(getattr(x, "shape", ()))
    if not shape:
        return 1
    if not getattr(x, "is_floating_point", lambda: True)():
        return int(math.prod(shape))
    return int(math.prod(shape[:-1])) or 1


def _times(lc: LayerCost, k: int) -> LayerCost:
    if k == 1:
        return lc
    return LayerCost(lc.name, lc.kind, lc.cycles * k, {a: v * k for a, v in lc.actions.items()},
                     lc.macs * k, lc.kept_macs * k, lc.tokens, lc.energy_pj * k,
                     lc.setup_cycles * k, {a: v * k for a, v in lc.setup_actions.items()},
                     lc.setup_energy_pj * k)


def analyse_gemms(gemms: Sequence[Gemm], machine: MachineConfig,
                  assignment: Assignment | None = None) -> list[LayerCost]:
    """Per-GEMM costs on `machine` (layers named as the Gemms)."""
    assignment = assignment or Assignment()
    cache: dict = {}
    out = []
    for g in gemms:
        asked = None if g.kind == "attention" else assignment.pattern_for(g.name)
        out.append(gemm_cost(g, machine, asked, cache))
    return out


# -- whole models -----------------------------------------------------------------------------
@dataclass
class AnalyticReport:
    """Per-layer and total costs of one phase of one model on one machine."""

    model: str
    machine: MachineConfig
    phase: str
    tokens: int  # vectors per Linear (prefill: T; decode: 1)
    kv_len: int
    assignment: str
    layers: list[LayerCost]
    patterns: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def cycles(self, kind: str | None = None) -> int:
        return sum(lc.cycles for lc in self.layers if kind in (None, lc.kind))

    def energy_pj(self, kind: str | None = None) -> float:
        return sum(lc.energy_pj for lc in self.layers if kind in (None, lc.kind))

    def setup(self) -> tuple[int, float]:
        """(cycles, pJ) paid once at program load (resident weights)."""
        return (sum(lc.setup_cycles for lc in self.layers),
                sum(lc.setup_energy_pj for lc in self.layers))

    def seconds(self, kind: str | None = None) -> float:
        return self.cycles(kind) / (self.machine.clock_mhz * 1e6)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in ("gemm", "attention", None):
            key = kind or "total"
            out[key] = {"cycles": self.cycles(kind), "seconds": self.seconds(kind),
                        "energy_pj": self.energy_pj(kind),
                        "macs": sum(lc.macs for lc in self.layers if kind in (None, lc.kind))}
        out["setup_cycles"], out["setup_energy_pj"] = self.setup()
        return out


def model_gemms(config: Any, phase: str = "prefill", tokens: int = 2048,
                kv_len: int | None = None, attention: bool = True,
                all_logits: bool = False) -> tuple[list[Gemm], int, int]:
    """(GEMMs, tokens per Linear, kv_len) of one phase. Decode: one new token over kv_len
    cached ones (default kv_len = tokens); prefill computes the LM head for the last token
    only unless `all_logits`."""
    if phase not in PHASES:
        raise UsageError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    return shape_gemms(shapes_of(config), phase, tokens, kv_len, attention, all_logits)


def shape_gemms(shapes: Shapes, phase: str = "prefill", tokens: int = 2048,
                kv_len: int | None = None, attention: bool = True,
                all_logits: bool = False) -> tuple[list[Gemm], int, int]:
    """`model_gemms` of already resolved hyper-parameters (the fast path caches by them)."""
    if phase not in PHASES:
        raise UsageError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
    if phase == "decode" and shapes.family == "bert":
        raise UsageError("decode does not apply to an encoder (bert): use prefill")
    t = tokens if phase == "prefill" else 1
    kv = kv_len if kv_len is not None else tokens
    lm = t if all_logits else 1
    gemms = linear_gemms(shapes, t, lm)
    if attention:
        gemms += attention_gemms(shapes, t, kv)
    return gemms, t, kv


def analyse(config: Any, machine: MachineConfig, assignment: Assignment | None = None,
            phase: str = "prefill", tokens: int = 2048, kv_len: int | None = None,
            attention: bool = True, all_logits: bool = False,
            name: str | None = None) -> AnalyticReport:
    """Cycles and energy of one phase of a model from its config (see module docstring)."""
    assignment = assignment or Assignment()
    gemms, t, kv = model_gemms(config, phase, tokens, kv_len, attention, all_logits)
    layers = analyse_gemms(gemms, machine, assignment)
    patterns, as_dense = {}, set()
    for g in gemms:
        asked = None if g.kind == "attention" else assignment.pattern_for(g.name)
        asked = asked or machine.dense_pattern
        native = machine.fit_pattern(*asked)
        if native[0] == native[1] and asked[0] != asked[1]:  # no sparse pattern fits
            as_dense.add(f"{asked[0]}:{asked[1]}")
        # named as a functional run's report names them (flowc.runtime.report.pattern_text)
        patterns[g.name] = "attn" if g.kind == "attention" else pattern_label(asked, native)
    notes = {"included": INCLUDED + ("; " + ATTENTION_NOTE if attention else ""),
             "excluded": EXCLUDED + ("" if attention else "; attention matmuls"),
             "lm_head": "all tokens" if all_logits else "last token only (generation)"}
    if machine.pair_select == "row-shared":
        notes["pair_passes"] = "reachable-pair bound (masks unknown in analytic mode)"
    if as_dense:
        notes[f"runs as dense on {machine.name}"] = (
            f"{', '.join(sorted(as_dense))} not supported by {machine.name} and no supported "
            "pattern contains it: those layers run dense")
    label = name or (config if isinstance(config, str) else "model")
    return AnalyticReport(label, machine, phase, t, kv, assignment.source, layers, patterns,
                          notes)


def analyse_targets(config: Any, machines: Sequence[MachineConfig],
                    assignment: Assignment | None = None,
                    phases: Sequence[str] = PHASES, **kw: Any) -> dict[str, dict[str, Any]]:
    """{phase: {machine name: AnalyticReport}} for several targets (same assignment)."""
    return {ph: {m.name: analyse(config, m, assignment, phase=ph, **kw) for m in machines}
            for ph in phases}
