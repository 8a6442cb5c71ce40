"""Energy table: sourced values, loud unknowns, and ~106 fJ per 8x8-bit MAC (SPEC.md s3)."""

import pytest

from flowc.machine import ACTIONS, EnergyError, MachineConfig, load_machine
from flowc.runtime.cost import CostModel
from flowc.runtime.events import ExecEvent


class Op:
    def __init__(self, mnemonic: str) -> None:
        self.mnemonic = mnemonic


def _cim_pj_per_mac(machine: str, n: int, m: int, tokens: int = 4096) -> float:
    mach = load_machine(machine)
    ev = ExecEvent(Op("cim"), "l", tiles=1, tokens=tokens, keep_n=n, group_m=m,
                   k_pass=mach.k_pass(n, m))
    cost = CostModel(mach).instr_cost(ev)
    return CostModel(mach).energy_pj(cost) / (mach.macro.cells * tokens)


def test_every_entry_is_sourced_or_an_estimate():
    for name in ("flexcim", "dcim-dense", "vegeta", "sdp", "stc24"):
        for e in load_machine(name).energy.entries:
            assert e.source.strip() or e.estimate, (name, e.action)
            assert e.unit == ACTIONS[e.action].unit


def test_mac_energy_about_106_fj():
    # NOR 64 x 0.18 fJ + tree 289 fJ x 8 / 32 + shift-acc 42 fJ x 8 / 32 + cell 2:1 mux 8 x 1.5 fJ
    expected = 64 * 0.00018 + 0.289 * 8 / 32 + 0.042 * 8 / 32 + 8 * 0.0015
    assert expected == pytest.approx(0.10627)
    assert _cim_pj_per_mac("flexcim", 1, 2) == pytest.approx(expected, rel=1e-12)
    assert _cim_pj_per_mac("flexcim", 4, 4) == pytest.approx(expected, rel=1e-12)
    # dense DCiM has no metadata mux: 12 fJ less
    assert _cim_pj_per_mac("dcim-dense", 4, 4) == pytest.approx(expected - 0.012, rel=1e-12)


def test_per_column_pair_select_costs_per_cell_muxes():
    base = _cim_pj_per_mac("flexcim", 1, 2)
    # 1:8 per column: one 4:1 pair mux per cell (2 bits x 2 stages per cycle); the one-off
    # select configuration (2 bits read + latched per cell) is spread over the tokens.
    extra = 8 * 4 * 0.0015 + 2 * (0.10 + 0.0011) / 4096
    assert _cim_pj_per_mac("flexcim", 1, 8) == pytest.approx(base + extra, rel=1e-12)


def test_breakdown_and_total():
    m = load_machine("flexcim")
    acts = {"mult_bit": 1000, "full_adder": 10, "dram_read": 2}
    assert m.energy_breakdown(acts) == pytest.approx(
        {"mult_bit": 0.18, "full_adder": 10 * 0.0021 * 0.5, "dram_read": 16.0})
    assert m.energy_pj(acts) == pytest.approx(0.18 + 0.0105 + 16.0)
    assert m.energy_pj({}) == 0.0


def test_unknown_or_missing_action_raises():
    m = load_machine("flexcim")
    with pytest.raises(EnergyError, match=r"energy\.mult_bits: unknown energy action "
                                          r"'mult_bits' \(did you mean 'mult_bit'\?\)"):
        m.energy_pj({"mult_bits": 1})
    with pytest.raises(EnergyError, match="energy.tree_l6: this machine has no value"):
        m.energy_pj({"tree_l6": 1})
    bare = MachineConfig(name="bare")  # constructed directly: an empty energy table
    with pytest.raises(EnergyError, match="energy.mux_bit: this machine has no value"):
        bare.energy_pj({"mux_bit": 1.0})
    assert bare.energy_pj({"mux_bit": 0}) == 0.0  # a zero count costs nothing anywhere
