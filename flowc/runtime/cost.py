"""Closed-form cycles and energy actions per instruction and per tile loop (SPEC.md section 3).

The interpreter reports what it executed (`flowc.runtime.events`); this module turns those
counts into a `Cost`: cycles plus a dict of energy-action counts that the machine's energy table
prices. Every formula is written out in docs/hardware.md, and `flowc.runtime.macro_ref` steps
one tile cycle by cycle to check the tile formula exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flowc.machine import MachineConfig
from flowc.runtime.events import ExecEvent, LoopEvent

ACC_BITS = 32  # int32 partial-sum buffer
VEC_BITS = 32  # float32 vector-unit elements
MACRO_OPS = ("ld.tile", "ld.act", "cim", "merge", "acc")
VECTOR_CLASS = {
    "v.quant": "quant", "v.deq": "deq", "v.bias": "elementwise", "v.add": "elementwise",
    "v.mul": "elementwise", "v.relu": "elementwise", "v.gelu": "activation",
    "v.silu": "activation", "v.softmax": "softmax", "v.layernorm": "norm",
    "v.rmsnorm": "norm", "v.mov": "elementwise", "v.scale": "elementwise",
    "v.permute": "permute", "v.const": "elementwise", "psum.clr": "elementwise",
    # transformer ops (issue 4; docs/attention.md)
    "v.embed": "deq", "v.slice": "permute", "v.cat": "permute", "v.expand": "permute",
    "v.pow": "activation", "v.rsqrt": "activation", "v.tanh": "activation",
    "v.mean": "elementwise",
    # plain and state-space ops (issue 10; docs/hardware.md)
    "v.sigmoid": "activation", "v.exp": "activation", "v.log": "activation",
    "v.sqrt": "activation", "v.softplus": "activation", "v.div": "activation",
    "v.abs": "elementwise", "v.max": "elementwise", "v.min": "elementwise",
    "v.cumsum": "elementwise", "v.sum": "elementwise", "v.amax": "elementwise",
    "v.dwconv": "elementwise", "v.logsoftmax": "softmax",
    # masks, casts, constant-index gathers (issue 10; docs/attention.md)
    "v.where": "elementwise", "v.cast": "elementwise", "v.gather": "permute",
}
FREE_OPS = ("layer", "halt", "loop.tiles", "loop.end", "v.reshape")


class CostError(ValueError):
    """An event the cost model cannot price (unknown instruction, unsupported pattern ...)."""


@dataclass(frozen=True)
class Cost:
    """Cycles and energy-action counts; `setup_*` is paid once at program load (resident).

    A resident weight tensor's setup is the same every time its loop runs: a report must count
    it once per weight tensor (CostListener keys it by the `w` operand of `ld.tile`).
    """

    cycles: int = 0
    actions: Mapping[str, float] = field(default_factory=dict)
    setup_cycles: int = 0
    setup_actions: Mapping[str, float] = field(default_factory=dict)

    def __add__(self, other: Cost) -> Cost:
        """Sequential composition: cycles add, action counts add."""
        return Cost(self.cycles + other.cycles, _add(self.actions, other.actions),
                    self.setup_cycles + other.setup_cycles,
                    _add(self.setup_actions, other.setup_actions))


def _add(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """Action counts of a then b: per key a + b (a plain dict loop: this runs for every
    priced event, and Counter costs 3x more), sorted by action, zeros dropped."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return {k: out[k] for k in sorted(out) if out[k]}


def _accumulate(into: dict[str, float], more: Mapping[str, float]) -> None:
    """into += more per key (the additions _add makes, in the same order)."""
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


@dataclass(frozen=True)
class TileTiming:
    """Timing of one tile on one macro; `cycles(T)` is exact against macro_ref.

    cycles(T) = select_fill + feed + compute + (T - 1) * max(feed, compute) + drain
    """

    select_fill: int  # X: per-column pair-select configuration, one column per cycle
    feed: int  # F = ceil(K_pass * act_bits / act_bw_bits) cycles per vector
    compute: int  # S = pair_passes * ceil(act_bits / input_bits) cycles per vector
    drain: int  # log2(R) tree levels + shift-acc + log2(P) merge levels + acc write

    def cycles(self, tokens: int) -> int:
        if tokens < 1:
            return 0
        steady = max(self.feed, self.compute)
        return self.select_fill + self.feed + self.compute + (tokens - 1) * steady + self.drain


def mnemonic(instr: object) -> str:
    """The ISA mnemonic of an instruction object (`mnemonic` attribute or from the class name)."""
    name = getattr(instr, "mnemonic", None)
    if isinstance(name, str):
        return name
    parts = re.findall(r"[A-Z][a-z0-9]*", type(instr).__name__)
    return ".".join(p.lower() for p in parts)


def select_stages(machine: MachineConfig, n: int, m: int) -> int:
    """2:1 mux stages of the pair select: log2(m/2) for sparse patterns, 0 for dense or m = 2."""
    if not machine.metadata or n >= m:
        return 0
    return (m // 2).bit_length() - 1


def reachable_pairs(n: int, m: int) -> int:
    """Most distinct pairs one sub-macro row can need: member j's index lies in [j, m-n+j]."""
    if n >= m:
        return 1
    return max((m - n + j) // 2 - j // 2 + 1 for j in range(n))


def pair_passes(meta: np.ndarray, group_m: int) -> np.ndarray:
    """Row-shared pair passes per tile: max over sub-macro rows of the distinct pairs
    (meta // 2) among the row's columns. `meta` is [..., P, R, C]; returns an int array [...].
    """
    pairs = np.asarray(meta) // 2
    present = np.stack([(pairs == k).any(axis=-1) for k in range(max(group_m // 2, 1))], -1)
    return present.sum(axis=-1).max(axis=(-2, -1)).astype(np.int64)


class CostModel:
    """Cycles and energy actions of instructions and tile loops on one machine."""

    def __init__(self, machine: MachineConfig) -> None:
        self.machine = machine
        self._handlers = {
            "ld.tile": self._ld_tile, "ld.act": self._ld_act, "cim": self._cim,
            "merge": self._merge, "acc": self._acc, "cfg.nm": self._cfg_nm,
            "mm.act": self._mm_act,
        }
        self._timings: dict[tuple[int, int, int], TileTiming] = {}  # pure in (n, m, passes)

    def choices(self) -> dict[str, str]:
        """The open modelling choices this model uses (for reports)."""
        m = self.machine
        passes = "per tile from metadata if given, else reachable-pair bound"
        return {"pair_select": m.pair_select, "residency": m.residency,
                "load_overlap": str(m.load_overlap).lower(),
                "row_shared_passes": passes if m.pair_select == "row-shared" else "n/a"}

    def energy_pj(self, cost: Cost, setup: bool = False) -> float:
        """Energy (pJ) of a cost's run-time actions (or of its setup actions)."""
        return self.machine.energy_pj(cost.setup_actions if setup else cost.actions)

    # -- timing ----------------------------------------------------------------------------
    def tile_timing(self, n: int, m: int, pair_passes: int = 1) -> TileTiming:
        key = (n, m, pair_passes)
        timing = self._timings.get(key)
        if timing is None:
            timing = self._timings[key] = self._tile_timing(n, m, pair_passes)
        return timing

    def _tile_timing(self, n: int, m: int, pair_passes: int) -> TileTiming:
        mc, mach = self.machine.macro, self.machine
        self._check_pattern(n, m, 0)
        stages = select_stages(mach, n, m)
        pp = pair_passes if (mach.pair_select == "row-shared" and stages) else 1
        fill = mc.cols if (mach.pair_select == "per-column" and stages) else 0
        feed = -(-mach.k_pass(n, m) * mc.act_bits // mc.act_bw_bits)
        drain = mc.tree_levels + 1 + mc.merge_levels + 1
        return TileTiming(fill, feed, pp * mc.bit_cycles, drain)

    def default_pair_passes(self, n: int, m: int) -> int:
        """Pair passes per tile when the masks are not known (row-shared only, else 1)."""
        if self.machine.pair_select != "row-shared" or not select_stages(self.machine, n, m):
            return 1
        return reachable_pairs(n, m)

    # -- events ----------------------------------------------------------------------------
    def instr_cost(self, ev: ExecEvent) -> Cost:
        """Cost of one instruction event. Macro instructions get their own stage occupancy
        (no overlap); inside a tile loop use `loop_cost`, which pipelines the body."""
        mn = mnemonic(ev.instr)
        if mn in FREE_OPS:
            return Cost()
        if mn in self._handlers:
            return self._handlers[mn](ev, None)
        if mn in VECTOR_CLASS:
            return self._vector(ev, mn)
        raise CostError(f"{ev.layer}: no cost rule for instruction '{mn}'")

    def loop_cost(self, ev: LoopEvent,
                  pair_passes: int | Sequence[int] | np.ndarray | None = None) -> Cost:
        """Cost of a whole tile loop: the body pipelined per tile, tiles spread over macros.

        `pair_passes` (row-shared only): one count for every tile or one per tile in loop
        order (see `pair_passes()`); None uses the reachable-pair bound.
        """
        tiles = ev.n_tiles * ev.k_tiles
        if tiles == 0:
            return Cost()
        ops = [mnemonic(b.instr) for b in ev.body]
        for mn in ops:
            if mn not in MACRO_OPS and mn != "cfg.nm":
                raise CostError(f"{ev.layer}: '{mn}' inside a tile loop is not modelled "
                                f"(the body may hold {', '.join(MACRO_OPS)}, cfg.nm)")
        cim = [b for b in ev.body if b.keep_n]
        if not cim:
            raise CostError(f"{ev.layer}: tile loop without a cfg.nm pattern on its events")
        n, m, tokens = cim[0].keep_n, cim[0].group_m, max(b.tokens for b in ev.body)
        if pair_passes is None:  # every tile at the default count: no per-tile arrays
            same: int | None = self.default_pair_passes(n, m)
            pp = None
        else:
            pp = self._pass_array(pair_passes, tiles, n, m)
            same = int(pp[0]) if (pp == pp[0]).all() else None
        pp_sum = float(same * tiles) if same is not None else float(pp.sum())
        actions: dict[str, float] = {}
        setup_actions: dict[str, float] = {}
        setup_cycles = 0
        for b, mn in zip(ev.body, ops, strict=True):  # in body order, as Cost.__add__
            part = self._handlers[mn](b, pp_sum if mn == "cim" else None)  # sorted at the end
            setup_cycles += part.setup_cycles
            _accumulate(actions, part.actions)
            _accumulate(setup_actions, part.setup_actions)
        if same is not None:  # every wave's slowest tile has the same count
            cycles = self._uniform_cycles(n, m, tokens, same, tiles, "ld.tile" in ops)
        else:
            cycles = self._with_loads(self._wave_cycles(n, m, tokens, pp), "ld.tile" in ops)
        if "acc" in ops:
            _accumulate(actions, {"gbuf_write": ev.n_tiles * self.machine.macro.cols * tokens
                                  * ACC_BITS})
        return Cost(cycles, _add(actions, {}), setup_cycles, _add(setup_actions, {}))

    def _uniform_cycles(self, n: int, m: int, tokens: int, passes: int, tiles: int,
                        has_load: bool) -> int:
        """`_with_loads(_wave_cycles(...))` when every tile has `passes` pair passes, in
        integers: every wave holds at least one tile, so each wave takes the same time."""
        waves = -(-tiles // self.macros_for(tiles))
        if tokens < 1:
            wave = 0
        else:
            t1 = self.tile_timing(n, m, 1)
            compute = passes * self.machine.macro.bit_cycles
            wave = (t1.select_fill + t1.feed + compute + (tokens - 1) * max(t1.feed, compute)
                    + t1.drain)
        c = self.machine.macro.cols
        if not has_load or self.machine.residency == "resident":
            return waves * wave
        if self.machine.load_overlap:
            return c + max(wave, c) * (waves - 1) + wave
        return waves * (wave + c)

    # -- loop helpers ----------------------------------------------------------------------
    def _pass_array(self, given: object, tiles: int, n: int, m: int) -> np.ndarray:
        if given is None:
            return np.full(tiles, self.default_pair_passes(n, m), dtype=np.int64)
        arr = np.asarray(given, dtype=np.int64).reshape(-1)
        if arr.size == 1:
            arr = np.full(tiles, int(arr[0]), dtype=np.int64)
        if arr.size != tiles or (arr < 1).any():
            raise CostError(f"pair_passes: expected one count >= 1 or {tiles} of them, "
                            f"got {arr.size} values")
        if not select_stages(self.machine, n, m) or self.machine.pair_select != "row-shared":
            arr = np.ones(tiles, dtype=np.int64)
        return arr

    def macros_for(self, tiles: int) -> int:
        """Macros a loop of `tiles` tiles runs on: resident gives every tile its own macro (the
        paper's all-on-chip assumption: one wave; `macros` is only a lower bound), streamed
        deals the tiles to the machine's `macros` in waves."""
        if self.machine.residency == "resident":
            return max(self.machine.macros, tiles)
        return self.machine.macros

    def _wave_cycles(self, n: int, m: int, tokens: int, pp: np.ndarray) -> np.ndarray:
        """Compute cycles of each wave: its tiles run in parallel, the slowest decides."""
        macros = self.macros_for(pp.size)
        waves = -(-pp.size // macros)
        padded = np.zeros(waves * macros, dtype=np.int64)
        padded[: pp.size] = pp
        per_wave = padded.reshape(waves, macros).max(axis=1)
        t1 = self.tile_timing(n, m, 1)
        compute = per_wave * self.machine.macro.bit_cycles
        if tokens < 1:
            return np.zeros(waves, dtype=np.int64)
        return (t1.select_fill + t1.feed + compute + (tokens - 1) * np.maximum(t1.feed, compute)
                + t1.drain)

    def _with_loads(self, waves: np.ndarray, has_load: bool) -> int:
        """Add tile loads (C cycles per wave) unless weights are resident."""
        c = self.machine.macro.cols
        if not has_load or self.machine.residency == "resident":
            return int(waves.sum())
        if self.machine.load_overlap:
            return int(c + np.maximum(waves[:-1], c).sum() + waves[-1])
        return int((waves + c).sum())

    # -- macro instructions ----------------------------------------------------------------
    def _check_pattern(self, n: int, m: int, k_pass: int) -> None:
        if not self.machine.supports(n, m):
            raise CostError(f"pattern {n}:{m} is not supported by machine "
                            f"'{self.machine.name}'")
        if k_pass and k_pass != self.machine.k_pass(n, m):
            raise CostError(f"k_pass {k_pass} disagrees with {n}:{m} on "
                            f"'{self.machine.name}' ({self.machine.k_pass(n, m)})")

    def _waves(self, ev: ExecEvent) -> int:
        self._check_pattern(ev.keep_n, ev.group_m, ev.k_pass)
        return -(-ev.tiles // self.macros_for(ev.tiles))

    def _ld_tile(self, ev: ExecEvent, _: float | None) -> Cost:
        mc, mach = self.machine.macro, self.machine
        waves = self._waves(ev)
        sparse = mach.metadata and ev.keep_n < ev.group_m
        index_bits = (ev.group_m.bit_length() - 1) if sparse else 0
        acts = {"weight_write": ev.tiles * mc.cells * (mc.weight_bits + mc.meta_bits
                                                       * mach.metadata),
                "dram_read": ev.tiles * mc.cells * (mc.weight_bits + index_bits)}
        if mach.residency == "resident":  # one wave: every macro writes its tile at once
            return Cost(0, {}, waves * mc.cols, _add(acts, {}))
        return Cost(waves * mc.cols, _add(acts, {}))

    def _ld_act(self, ev: ExecEvent, _: float | None) -> Cost:
        waves, mc = self._waves(ev), self.machine.macro
        timing = self.tile_timing(ev.keep_n, ev.group_m)
        bits = ev.tiles * ev.tokens * self.machine.k_pass(ev.keep_n, ev.group_m) * mc.act_bits
        return Cost(waves * ev.tokens * timing.feed, {"gbuf_read": bits, "abuf_read": bits})

    def _cim(self, ev: ExecEvent, pp_sum: float | None) -> Cost:
        mc, mach = self.machine.macro, self.machine
        waves, n, m = self._waves(ev), ev.keep_n, ev.group_m
        pp_tile = self.default_pair_passes(n, m)
        timing = self.tile_timing(n, m, pp_tile)
        pp = pp_tile * ev.tiles if pp_sum is None else pp_sum  # passes summed over tiles
        vec_cycles = ev.tokens * mc.bit_cycles  # bit cycles per tile and pass
        col_cycles = mc.subarrays * mc.cols * vec_cycles * pp
        acts: dict[str, float] = {
            "mult_bit": ev.tiles * mc.cells * mc.weight_bits * mc.input_bits * vec_cycles,
            "shift_acc": col_cycles}
        for level in range(1, mc.tree_levels + 1):
            acts[f"tree_l{level}"] = col_cycles
        stages = select_stages(mach, n, m)
        rows = mc.subarrays * mc.rows
        if mach.metadata:
            pair_bits = 2 * mc.input_bits * stages * vec_cycles
            per_col = mach.pair_select == "per-column"
            select = ev.tiles * mc.cells * pair_bits if per_col else rows * pair_bits * pp
            acts["mux_bit"] = ev.tiles * mc.cells * mc.input_bits * vec_cycles + select
            config = ev.tiles * mc.cells * stages if per_col else rows * pp * stages
            acts["abuf_read"] = acts["ff_write"] = config
        cycles = timing.select_fill + ev.tokens * timing.compute + mc.tree_levels + 1
        return Cost(waves * cycles, _add(acts, {}))

    def _merge(self, ev: ExecEvent, _: float | None) -> Cost:
        mc, waves = self.machine.macro, self._waves(ev)
        col_ops = ev.tiles * mc.cols * ev.tokens
        gangs = mc.subarrays // ev.keep_n
        acts = {f"merge_n{ev.keep_n}": col_ops,
                "full_adder": col_ops * (gangs - 1) * mc.psum_bits}
        return Cost(waves * (ev.tokens - 1 + mc.merge_levels) if ev.tokens else 0,
                    _add(acts, {}))

    def _acc(self, ev: ExecEvent, _: float | None) -> Cost:
        waves = self._waves(ev)
        elems = ev.tiles * self.machine.macro.cols * ev.tokens
        return Cost(waves * ev.tokens, {"full_adder": elems * ACC_BITS,
                                        "ff_write": elems * ACC_BITS})

    def _cfg_nm(self, ev: ExecEvent, _: float | None) -> Cost:
        n, m = getattr(ev.instr, "n", ev.keep_n), getattr(ev.instr, "m", ev.group_m)
        self._check_pattern(n, m, 0)
        return Cost(1, {})

    # -- vector unit -----------------------------------------------------------------------
    def _vector(self, ev: ExecEvent, mn: str) -> Cost:
        vec = self.machine.vector
        per_elem = getattr(vec, VECTOR_CLASS[mn]) * _taps(ev.instr)
        work = max(ev.elements, ev.in_elements)
        out_bits = 8 if mn == "v.quant" else VEC_BITS
        acts = {"vec_op": work * per_elem, "gbuf_read": ev.in_elements * VEC_BITS,
                "gbuf_write": ev.elements * out_bits}
        return Cost(-(-work // vec.lanes) * per_elem, _add(acts, {}))

    # -- attention (issue 4) -----------------------------------------------------------------
    def _mm_act(self, ev: ExecEvent, _: float | None) -> Cost:
        """Activation x activation GEMM on the macros (docs/attention.md): ev.tiles dense tiles
        of b written at run time (always streamed, C cycles each, from the global buffer),
        a streamed as ev.tokens vectors per tile; plus the vector unit's int8 quantisation of
        both operands (in_elements) and the dequantisation of the outputs (elements)."""
        mc, mach, vec = self.machine.macro, self.machine, self.machine.vector
        p = mc.subarrays
        dense = ExecEvent(ev.instr, ev.layer, ev.tiles, ev.tokens, p, p, mach.k_pass(p, p))
        waves = -(-ev.tiles // mach.macros)
        wave = self.tile_timing(p, p).cycles(ev.tokens)
        if not waves:
            macro_cycles = 0
        elif mach.load_overlap:
            macro_cycles = mc.cols + (waves - 1) * max(wave, mc.cols) + wave
        else:
            macro_cycles = waves * (wave + mc.cols)
        acts: dict[str, float] = {}
        for handler in (self._ld_tile, self._ld_act, self._cim, self._merge, self._acc):
            part = handler(dense, None)
            acts = _add(acts, part.actions or part.setup_actions)
        acts = _add(acts, {"gbuf_read": acts.pop("dram_read", 0.0),
                           "vec_op": ev.in_elements * vec.quant + ev.elements * vec.deq})
        vec_cycles = (-(-ev.in_elements // vec.lanes) * vec.quant
                      + -(-ev.elements // vec.lanes) * vec.deq)
        return Cost(macro_cycles + vec_cycles, acts)


def _taps(instr: object) -> int:
    """Multiply-adds per output element beyond the first: a depthwise convolution does `taps`
    of them per output (one per kernel tap), every other vector op one."""
    return int(getattr(instr, "taps", 1) or 1)
