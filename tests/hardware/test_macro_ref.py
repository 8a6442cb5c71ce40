"""Cycle-stepped reference macro == dense matmul (exact) and == closed-form cycles (exact)."""

from dataclasses import replace

import numpy as np
import pytest

from flowc.machine import load_machine
from flowc.runtime.cost import CostModel, pair_passes
from flowc.runtime.events import ExecEvent, LoopEvent
from flowc.runtime.macro_ref import MacroRefError, dense_tile, run_tile


def paper_flexcim():
    """FlexCiM in the paper's setting (resident weights, no load overlap, 64 macros): the
    timing identities below are written for it; the shipped default streams weights."""
    return replace(load_machine("flexcim"), residency="resident", load_overlap=False, macros=64)


BODY = ("ld.tile", "ld.act", "cim", "merge", "acc")


class Op:
    def __init__(self, mnemonic: str) -> None:
        self.mnemonic = mnemonic


def random_tile(rng, mach, n, m):
    """Packed tile per docs/architecture.md: member j of gang g holds the j-th kept index."""
    p, r, c = mach.macro.subarrays, mach.macro.rows, mach.macro.cols
    values = rng.integers(-128, 128, (p, r, c)).astype(np.int8)
    keys = rng.random((p // n, r, c, m)).argsort(axis=-1)[..., :n]
    kept = np.sort(keys, axis=-1)  # [gangs, R, C, n]
    meta = kept.transpose(0, 3, 1, 2).reshape(p, r, c).astype(np.uint8)
    return values, meta


def closed_form_cycles(mach, n, m, tokens, meta):
    evs = tuple(ExecEvent(Op(b), "t", tiles=1, tokens=tokens, keep_n=n, group_m=m,
                          k_pass=mach.k_pass(n, m)) for b in BODY)
    ev = LoopEvent(Op("loop.tiles"), "t", 1, 1, evs)
    return CostModel(mach).loop_cost(ev, pair_passes=pair_passes(meta, m)).cycles


def check(mach, n, m, tokens, seed):
    rng = np.random.default_rng(seed)
    values, meta = random_tile(rng, mach, n, m)
    acts = rng.integers(-128, 128, (tokens, mach.k_pass(n, m))).astype(np.int8)
    run = run_tile(mach, values, meta, acts, n, m)
    expected = acts.astype(np.int64) @ dense_tile(values, meta, n, m)
    assert run.psum.dtype == np.int32
    np.testing.assert_array_equal(run.psum, expected)
    assert run.cycles == closed_form_cycles(mach, n, m, tokens, meta)
    return run


FLEX = paper_flexcim()


@pytest.mark.parametrize("scope", ["per-column", "row-shared"])
@pytest.mark.parametrize("pattern", FLEX.supported())
def test_flexcim_every_pattern(pattern, scope):
    mach = replace(FLEX, pair_select=scope)
    run = check(mach, *pattern, tokens=3, seed=sum(pattern))
    if scope == "per-column" or pattern[1] == 2 or pattern[0] == pattern[1]:
        assert run.pair_passes == 1


@pytest.mark.parametrize("residency,overlap", [("streamed", False), ("streamed", True)])
def test_streamed_single_tile_pays_the_load(residency, overlap):
    mach = replace(FLEX, residency=residency, load_overlap=overlap)
    run = check(mach, 2, 8, tokens=2, seed=7)
    assert run.load_cycles == 32 and run.cycles == run.compute_cycles + 32


def test_feed_bound_and_single_token():
    narrow = replace(FLEX, macro=replace(FLEX.macro, act_bw_bits=512))
    run = check(narrow, 1, 8, tokens=4, seed=3)  # 16 feed cycles per vector > 8 compute
    assert run.cycles == 32 + 16 + 8 + 3 * 16 + 9
    check(FLEX, 1, 4, tokens=1, seed=4)


@pytest.mark.parametrize("name", ["sdp", "dcim-dense", "vegeta", "stc24"])
def test_baselines(name):
    mach = load_machine(name)
    for n, m in mach.supported():
        check(mach, n, m, tokens=2, seed=n * 10 + m)


def test_extreme_values_msb_subtracts():
    mach = FLEX
    values = np.full((4, 32, 32), -128, dtype=np.int8)
    meta = np.broadcast_to((np.arange(4) % 4)[:, None, None], (4, 32, 32)).astype(np.uint8)
    acts = np.full((2, 128), -128, dtype=np.int8)
    acts[1] = 127
    run = run_tile(mach, values, meta, acts, 4, 4)
    assert run.psum[:, 0].tolist() == [128 * 128 * 128, -127 * 128 * 128]


def test_bad_inputs():
    values = np.zeros((4, 32, 32), dtype=np.int8)
    meta = np.zeros((4, 32, 32), dtype=np.uint8)
    with pytest.raises(MacroRefError, match="acts: expected"):
        run_tile(FLEX, values, meta, np.zeros((1, 100), dtype=np.int8), 1, 8)
    with pytest.raises(MacroRefError, match="dense placement"):
        run_tile(FLEX, values, meta, np.zeros((1, 128), dtype=np.int8), 4, 4)
    with pytest.raises(MacroRefError, match="not supported"):
        run_tile(load_machine("stc24"), values, meta, np.zeros((1, 512), dtype=np.int8), 1, 4)
