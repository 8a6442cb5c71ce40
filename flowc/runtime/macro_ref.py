"""Cycle-stepped reference model of ONE tile on ONE macro: the executable spec of the timing.

Slow on purpose (a Python loop over cycles, numpy within a cycle); it exists to check, exactly,
that the closed-form `CostModel` tile formula and the packed-weight placement of
docs/architecture.md agree with a machine that moves bits through registers:

load      one 32-cell column per sub-macro per cycle (streamed weights)
select    per-column pair select: the distribution unit latches one column's selects per cycle
feed      activations stream into a double buffer at act_bw_bits per cycle
compute   bit-serial input, LSB first (two's complement: the MSB cycle subtracts), NOR 1-bit
          products, or radix-4 Booth digits at 2 input bits per cycle
drain     log2(R) adder-tree registers, shift-accumulate, log2(P) merge registers, psum write
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowc.machine import MachineConfig
from flowc.runtime.cost import select_stages


class MacroRefError(ValueError):
    """Inputs the reference macro cannot run (bad shapes, unsupported pattern, bad metadata)."""


@dataclass(frozen=True)
class TileRun:
    """Result of one tile: psums [T, C] int32 and cycles (load counted only when streamed)."""

    psum: np.ndarray
    cycles: int
    load_cycles: int
    compute_cycles: int
    pair_passes: int


def dense_tile(values: np.ndarray, meta: np.ndarray, n: int, m: int) -> np.ndarray:
    """The dense weight [K_pass, C] (int32) that a packed tile stands for (architecture.md)."""
    p, r, c = values.shape
    s_idx, r_idx, c_idx = np.indices((p, r, c))
    k = ((s_idx // n) * r + r_idx) * m + meta.astype(np.int64)
    w = np.zeros((p * r * m // n, c), dtype=np.int32)
    np.add.at(w, (k, c_idx), values.astype(np.int32))
    return w


def run_tile(machine: MachineConfig, values: np.ndarray, meta: np.ndarray, acts: np.ndarray,
             n: int, m: int, pair_select: str | None = None) -> TileRun:
    """Execute one tile cycle by cycle; `pair_select` overrides the machine's scope."""
    if pair_select is not None:
        from dataclasses import replace

        machine = replace(machine, pair_select=pair_select)
    sim = _Macro(machine, values, meta, acts, n, m)
    load = sim.load()
    compute = sim.run()
    total = compute + (load if machine.residency == "streamed" else 0)
    return TileRun(sim.psum.astype(np.int32), total, load, compute, sim.passes)


class _Macro:
    """Registers of one macro; `run` advances them one clock at a time."""

    def __init__(self, mach: MachineConfig, values: np.ndarray, meta: np.ndarray,
                 acts: np.ndarray, n: int, m: int) -> None:
        mc = mach.macro
        self.mach, self.mc, self.n, self.m = mach, mc, n, m
        shape = (mc.subarrays, mc.rows, mc.cols)
        if not mach.supports(n, m):
            raise MacroRefError(f"pattern {n}:{m} is not supported by '{mach.name}'")
        k_pass = mach.k_pass(n, m)
        if values.shape != shape or meta.shape != shape:
            raise MacroRefError(f"values/meta: expected shape {shape}, got "
                                f"{values.shape}/{meta.shape}")
        if acts.ndim != 2 or acts.shape[1] != k_pass or acts.shape[0] < 1:
            raise MacroRefError(f"acts: expected [T>=1, {k_pass}], got {acts.shape}")
        if (meta >= m).any():
            raise MacroRefError(f"meta: every index must be < m = {m}")
        self.stages = select_stages(mach, n, m)
        fixed = (np.arange(mc.subarrays) % n)[:, None, None]
        if not self.stages and n == m and (meta != fixed).any():
            raise MacroRefError("meta: dense placement needs meta[s] == s % n (hardwired)")
        self.values, self.meta = values.astype(np.int64), meta.astype(np.int64)
        self.acts = acts.astype(np.int64)
        self.base = ((np.arange(mc.subarrays)[:, None, None] // n) * mc.rows
                     + np.arange(mc.rows)[None, :, None]) * m
        self.per_col = mach.pair_select == "per-column" or not self.stages
        self.row_pairs = self._row_pairs()
        self.passes = 1 if self.per_col else self.row_pairs.shape[-1]
        self.psum = np.zeros((acts.shape[0], mc.cols), dtype=np.int64)

    def _row_pairs(self) -> np.ndarray:
        """Distinct pairs of each sub-macro row, padded with -1: [P, R, passes]."""
        pairs = self.meta // 2
        lists = [[sorted(set(row)) for row in sub] for sub in pairs.tolist()]
        width = max(len(x) for sub in lists for x in sub)
        out = np.full(pairs.shape[:2] + (width,), -1, dtype=np.int64)
        for s, sub in enumerate(lists):
            for r, row in enumerate(sub):
                out[s, r, : len(row)] = row
        return out

    def load(self) -> int:
        """Write the tile column by column (all sub-macros at once): C cycles."""
        self.cell_w = np.zeros_like(self.values)
        self.cell_bit = np.zeros_like(self.meta)
        for c in range(self.mc.cols):
            self.cell_w[:, :, c] = self.values[:, :, c]
            self.cell_bit[:, :, c] = self.meta[:, :, c] % 2
        return self.mc.cols

    # -- one compute-stage product ---------------------------------------------------------
    def _inputs(self, data: np.ndarray, pas: int) -> tuple[np.ndarray, np.ndarray]:
        """Each cell's selected activation and whether the cell is enabled in this pass."""
        if self.per_col:
            pair, on = self.col_sel, np.ones(self.meta.shape, dtype=bool)
        else:
            pair = np.broadcast_to(self.row_pairs[:, :, pas][:, :, None], self.meta.shape)
            on = (self.meta // 2) == pair
        idx = self.base + 2 * np.where(on, pair, 0) + self.cell_bit
        return data[np.minimum(idx, data.size - 1)], on

    def _product(self, data: np.ndarray, pas: int, step: int) -> np.ndarray:
        x, on = self._inputs(data, pas)
        if self.mc.input_bits == 1:
            in_bit = (x & 0xFF) >> step & 1
            wb = self.mc.weight_bits
            w_bits = [(self.cell_w >> k) & 1 for k in range(wb)]
            nor = [1 - ((1 - wk) | (1 - in_bit)) for wk in w_bits]  # NOR of inverted = AND
            prod = sum(b << k for k, b in enumerate(nor[:-1])) - (nor[-1] << (wb - 1))
        else:  # radix-4 Booth digit in {-2..2} selects 0, +-w, +-2w
            u = x & 0xFF
            hi, mid = (u >> (2 * step + 1)) & 1, (u >> (2 * step)) & 1
            lo = (u >> (2 * step - 1)) & 1 if step else 0
            prod = (-2 * hi + mid + lo) * self.cell_w
        return np.where(on, prod, 0)

    def _step_weight(self, step: int) -> int:
        """Weight of a bit-serial step in the shift-accumulator (MSB negative)."""
        if self.mc.input_bits == 2:
            return 4 ** step
        return -(1 << step) if step == self.mc.act_bits - 1 else 1 << step

    # -- the clock -------------------------------------------------------------------------
    def run(self) -> int:
        """Step until the last psum is written; returns the number of cycles."""
        mc, tokens = self.mc, self.acts.shape[0]
        k_pass, steps = self.acts.shape[1], mc.bit_cycles
        fill = mc.cols if (self.stages and self.per_col) else 0
        self.col_sel = self.meta // 2 if not fill else np.zeros_like(self.meta)
        bufs: list[dict] = [{"free_at": 0, "ready_at": None, "vec": None, "data": None}
                            for _ in range(2)]
        feed = None  # (buffer, vector, bits fed)
        next_feed = next_compute = written = 0
        busy = None  # [buffer, vector, pass, step]
        tree: list = [None] * (mc.tree_levels + 1)  # tree[0] = product register
        merge: list = [None] * (mc.merge_levels + 1)  # merge[0] = shift-acc output
        acc_reg = np.zeros((mc.subarrays, mc.cols), dtype=np.int64)
        cyc = 0
        while written < tokens:
            if cyc > 10_000_000:
                raise MacroRefError("reference macro did not finish (internal error)")
            # acc stage: psum write of the last merge register
            if merge[-1] is not None:
                t, vals = merge[-1]
                self.psum[t] += vals[0]
                written += 1
            merge[1:] = [None if x is None else (x[0], x[1][0::2] + x[1][1::2])
                         for x in merge[:-1]]
            merge[0] = None
            if tree[-1] is not None:  # shift-accumulate (tree output is [P, 1, C])
                t, pas, step, vals = tree[-1]
                acc_reg += vals[:, 0, :] * self._step_weight(step)
                if step == steps - 1 and pas == self.passes - 1:
                    merge[0], acc_reg = (t, acc_reg), np.zeros_like(acc_reg)
            tree[1:] = [None if x is None else (*x[:3], x[3][:, 0::2] + x[3][:, 1::2])
                        for x in tree[:-1]]
            tree[0] = None
            if cyc < fill:  # select configuration owns the distribution unit
                self.col_sel[:, :, cyc] = self.meta[:, :, cyc] // 2
                cyc += 1
                continue
            if busy is None and next_compute < tokens:
                ready = [b for b in bufs if b["vec"] == next_compute and b["ready_at"] is not None
                         and b["ready_at"] <= cyc]
                if ready:
                    busy = [ready[0], next_compute, 0, 0]
            if feed is None and next_feed < tokens:
                free = [b for b in bufs if b["vec"] is None and b["free_at"] <= cyc]
                if free:
                    free[0].update(vec=next_feed, ready_at=None,
                                   data=np.zeros(k_pass, dtype=np.int64))
                    feed, next_feed = [free[0], 0], next_feed + 1
            if feed is not None:  # stream act_bw_bits into the buffer
                buf, bits = feed
                bits = min(bits + mc.act_bw_bits, k_pass * mc.act_bits)
                lo, hi = feed[1] // mc.act_bits, bits // mc.act_bits
                buf["data"][lo:hi] = self.acts[buf["vec"], lo:hi]
                feed[1] = bits
                if bits == k_pass * mc.act_bits:
                    buf["ready_at"], feed = cyc + 1, None
            if busy is not None:  # one bit-serial step of one pass
                buf, t, pas, step = busy
                tree[0] = (t, pas, step, self._product(buf["data"], pas, step))
                step += 1
                if step == steps:
                    step, pas = 0, pas + 1
                if pas == self.passes:
                    buf.update(vec=None, ready_at=None, free_at=cyc + 1)
                    busy, next_compute = None, next_compute + 1
                else:
                    busy[2:] = [pas, step]
            cyc += 1
        return cyc
