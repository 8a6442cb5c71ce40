"""Closed-form cost model: loop pipelining, residency, waves, vector unit, loud unknowns."""

from dataclasses import replace

import numpy as np
import pytest

from flowc.machine import load_machine
from flowc.runtime.cost import (
    Cost,
    CostError,
    CostModel,
    mnemonic,
    pair_passes,
    reachable_pairs,
)
from flowc.runtime.events import ExecEvent, LoopEvent


def paper_flexcim():
    """FlexCiM in the paper's setting (resident weights: one macro per tile, so every loop is
    one wave; `macros = 64` matters only once `residency` is switched to streamed below)."""
    return replace(load_machine("flexcim"), residency="resident", load_overlap=False, macros=64)


BODY = ("ld.tile", "ld.act", "cim", "merge", "acc")


class Op:
    def __init__(self, mnemonic: str, **fields) -> None:
        self.mnemonic = mnemonic
        self.__dict__.update(fields)


class VQuant:  # no mnemonic attribute: derived from the class name like flowc.isa's classes
    pass


def loop(mach, n, m, tokens, n_tiles=1, k_tiles=1, body=BODY) -> LoopEvent:
    tiles = n_tiles * k_tiles
    evs = tuple(ExecEvent(Op(b), "fc1", tiles=tiles, tokens=tokens, keep_n=n, group_m=m,
                          k_pass=mach.k_pass(n, m)) for b in body)
    return LoopEvent(Op("loop.tiles"), "fc1", n_tiles, k_tiles, evs)


def test_tile_timing_terms():
    cm = CostModel(paper_flexcim())
    t = cm.tile_timing(1, 8)
    assert (t.select_fill, t.feed, t.compute, t.drain) == (32, 8, 8, 5 + 1 + 2 + 1)
    assert t.cycles(1) == 32 + 8 + 8 + 9 and t.cycles(100) == 32 + 16 + 99 * 8 + 9
    dense = cm.tile_timing(4, 4)
    assert (dense.select_fill, dense.feed, dense.compute) == (0, 1, 8)
    assert cm.tile_timing(1, 2).select_fill == 0  # one pair: nothing to select


def test_feed_bound_when_bandwidth_is_low():
    mach = replace(paper_flexcim(), macro=replace(paper_flexcim().macro,
                                                          act_bw_bits=256))
    t = CostModel(mach).tile_timing(1, 8)
    assert t.feed == 32 and t.cycles(10) == 32 + 32 + 8 + 9 * 32 + 9


def test_waves_and_residency():
    flex = paper_flexcim()
    tile = CostModel(flex).tile_timing(2, 4).cycles(16)
    ev = loop(flex, 2, 4, 16, n_tiles=10, k_tiles=13)  # 130 tiles -> 3 waves of 64 streamed
    res = CostModel(flex).loop_cost(ev)
    # resident: every tile has its own macro (macros is a lower bound), so ONE wave
    assert res.cycles == tile and res.setup_cycles == 32
    assert res.setup_actions["weight_write"] == 130 * 4096 * 9
    assert "weight_write" not in res.actions and "dram_read" not in res.actions
    assert CostModel(flex).macros_for(130) == 130 and CostModel(flex).macros_for(5) == 64
    st = CostModel(replace(flex, residency="streamed")).loop_cost(ev)
    assert st.cycles == 3 * (32 + tile) and st.setup_cycles == 0
    assert st.actions["dram_read"] == 130 * 4096 * (8 + 2)  # value + in-group index bits
    ov = CostModel(replace(flex, residency="streamed", load_overlap=True)).loop_cost(ev)
    assert ov.cycles == 32 + 3 * tile
    short = loop(flex, 1, 2, 1, n_tiles=200)  # decode: loads longer than compute
    t1 = CostModel(flex).tile_timing(1, 2).cycles(1)
    assert t1 < 32
    ov1 = CostModel(replace(flex, residency="streamed", load_overlap=True)).loop_cost(short)
    assert ov1.cycles == 32 + 3 * 32 + t1  # 4 waves: loads bound all but the last


def test_loop_actions_are_sums_of_body_actions():
    flex = paper_flexcim()
    cm = CostModel(flex)
    ev = loop(flex, 1, 4, 8, n_tiles=3, k_tiles=2)
    total = cm.loop_cost(ev)
    summed = Cost()
    for b in ev.body:
        summed = summed + cm.instr_cost(b)
    extra = {"gbuf_write": 3 * 32 * 8 * 32}  # final psums leave the macro once per n-tile
    assert dict(total.actions) == dict((summed + Cost(0, extra)).actions)
    assert total.cycles < summed.cycles  # the loop pipelines what instr_cost serialises


def test_row_shared_pair_passes():
    flex = replace(paper_flexcim(), pair_select="row-shared")
    cm = CostModel(flex)
    assert [reachable_pairs(*p) for p in [(1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8),
                                          (4, 4)]] == [1, 2, 4, 2, 4, 3, 1]
    assert cm.default_pair_passes(1, 8) == 4 and cm.default_pair_passes(4, 4) == 1
    ev = loop(flex, 1, 8, 4, n_tiles=2)
    t = cm.tile_timing(1, 8, 3)
    assert t.select_fill == 0 and t.compute == 24
    assert cm.loop_cost(ev, pair_passes=[3, 1]).cycles == t.cycles(4)  # one wave: max
    assert cm.loop_cost(ev, pair_passes=3).cycles == t.cycles(4)
    with pytest.raises(CostError, match="pair_passes"):
        cm.loop_cost(ev, pair_passes=[1, 2, 3])


def test_pair_passes_from_metadata():
    meta = np.zeros((2, 4, 2, 3), dtype=np.uint8)  # [tiles, P, R, C]
    meta[0, 1, 1] = [0, 7, 2]  # pairs 0, 3, 1
    meta[1, 0, 0] = [5, 4, 4]  # pair 2 only
    assert pair_passes(meta, 8).tolist() == [3, 1]


def test_vector_unit():
    cm = CostModel(paper_flexcim())
    ev = ExecEvent(Op("v.softmax"), "attn", tokens=10, elements=1000, in_elements=1000)
    c = cm.instr_cost(ev)
    assert c.cycles == 16 * 4  # ceil(1000 / 64) x 4 cycles per element
    assert c.actions == {"gbuf_read": 32000, "gbuf_write": 32000, "vec_op": 4000}
    q = cm.instr_cost(ExecEvent(VQuant(), "fc1", elements=100, in_elements=100))
    assert q.cycles == 2 * 2 and q.actions["gbuf_write"] == 800
    assert cm.instr_cost(ExecEvent(Op("v.reshape"), "x", elements=5)) == Cost()


def test_free_unknown_and_unsupported():
    cm = CostModel(load_machine("vegeta"))
    for mn in ("layer", "halt", "loop.end"):
        assert cm.instr_cost(ExecEvent(Op(mn), "x")) == Cost()
    with pytest.raises(CostError, match="no cost rule for instruction 'v.frobnicate'"):
        cm.instr_cost(ExecEvent(Op("v.frobnicate"), "x"))
    with pytest.raises(CostError, match="pattern 1:8 is not supported by machine 'vegeta'"):
        cm.instr_cost(ExecEvent(Op("cfg.nm", macro=0, n=1, m=8), "x"))
    assert cm.instr_cost(ExecEvent(Op("cfg.nm", macro=0, n=2, m=4), "x")).cycles == 1
    flex = paper_flexcim()
    with pytest.raises(CostError, match="'v.add' inside a tile loop is not modelled"):
        CostModel(flex).loop_cost(loop(flex, 1, 2, 1, body=("ld.tile", "v.add")))


def test_mnemonic_from_class_names():
    class LdTile: ...

    class VLayernorm: ...

    class PsumClr: ...

    assert [mnemonic(c()) for c in (LdTile, VLayernorm, PsumClr)] == [
        "ld.tile", "v.layernorm", "psum.clr"]


def test_choices_are_reported():
    cm = CostModel(paper_flexcim())
    assert cm.choices()["pair_select"] == "per-column"
    assert cm.choices()["residency"] == "resident"


def test_resident_loop_is_one_wave_for_any_size():
    """Resident = all weights on chip: a loop of any size is one wave and its instr costs
    agree (ld.tile: C setup cycles; cim: one wave of compute)."""
    flex = paper_flexcim()
    cm = CostModel(flex)
    for tiles in (1, 63, 64, 65, 1000):
        ev = loop(flex, 1, 8, 3, n_tiles=tiles)
        c = cm.loop_cost(ev)
        assert c.cycles == cm.tile_timing(1, 8).cycles(3)
        assert c.setup_cycles == 32
        assert cm.instr_cost(ev.body[0]).setup_cycles == 32
        assert cm.instr_cost(ev.body[2]).cycles == 32 + 3 * 8 + 5 + 1
