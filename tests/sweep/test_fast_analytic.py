"""The fast analytic totals equal `analyse(...).summary()` exactly, and reuse prices."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flowc.errors import UsageError
from flowc.machine import load_machine
from flowc.machine.errors import MachineConfigError, PatternError
from flowc.studies.analytic import Assignment, analyse, assignment_from_dict, uniform
from flowc.studies.analytic_fast import (
    analyse_many,
    analyse_totals,
    cache_info,
    plan_of,
    pricing_key,
)
from flowc.studies.analytic_models import BUILTIN_CONFIGS

TARGETS = ("flexcim", "dcim-dense", "vegeta", "sdp", "stc24")
MIXED = assignment_from_dict({"layers": {"lm_head": "dense", "model.layers.*.mlp.*": [1, 4],
                                         "model.layers.0.*": "4:8", "*.fc1": "1:8"},
                              "default": "2:4"}, "mixed")


def same(config, machine, assignment=None, **kw):
    """Fast totals == analyse summary, compared as whole dicts (floats bit for bit)."""
    ref = analyse(config, machine, assignment, **kw).summary()
    got = analyse_totals(config, machine, assignment, **kw)
    assert got == ref, (config, machine.name, kw)
    return got


@pytest.mark.parametrize("config", sorted(BUILTIN_CONFIGS))
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_every_config_target_phase(config, phase):
    for target in TARGETS:
        machine = load_machine(target)
        if phase == "decode" and config == "bert-large":
            with pytest.raises(UsageError, match="decode does not apply"):
                analyse_totals(config, machine, uniform(2, 4), phase=phase)
            continue
        same(config, machine, uniform(2, 4), phase=phase, tokens=512)


@pytest.mark.parametrize("assignment", [None, uniform(1, 4), uniform(4, 8), uniform(1, 8),
                                        MIXED], ids=["dense", "1:4", "4:8", "1:8", "mixed"])
def test_patterns_on_every_target(assignment):
    for target in TARGETS:
        for phase in ("prefill", "decode"):
            same("llama-2-7b", load_machine(target), assignment, phase=phase, tokens=2048,
                 kv_len=4096 if phase == "decode" else None)


def test_options_attention_off_and_all_logits():
    m = load_machine("flexcim")
    same("opt-6.7b", m, uniform(2, 4), attention=False)
    same("llama-3-8b", m, uniform(2, 8), all_logits=True, tokens=128)


VARIATIONS = st.fixed_dictionaries({
    "macros": st.sampled_from([1, 3, 8, 16, 64, 256]),
    "macro": st.fixed_dictionaries({"act_bw_bits": st.sampled_from([64, 256, 1024, 4096]),
                                    "input_bits": st.sampled_from([1, 2]),
                                    "cols": st.sampled_from([16, 32, 64])}),
    "pair_select": st.sampled_from(["per-column", "row-shared"]),
    "residency": st.sampled_from(["streamed", "resident"]),
    "load_overlap": st.booleans(),
    "clock_mhz": st.sampled_from([100.0, 500.0, 1234.5]),
})


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(TARGETS), changes=VARIATIONS,
       dram=st.floats(0.0, 100.0, allow_nan=False), mult=st.floats(0.0, 1.0),
       pattern=st.sampled_from([None, (2, 4), (1, 4), (1, 8), (4, 8)]),
       phase=st.sampled_from(["prefill", "decode"]), tokens=st.integers(1, 3000))
def test_random_machine_variations(target, changes, dram, mult, pattern, phase, tokens):
    base = load_machine(target)
    energy = {"dram_read": {"pj": dram, "unit": "bit", "estimate": True},
              "mult_bit": {"pj": mult, "unit": "bit-op", "estimate": True}}
    try:
        machine = base.replace(energy=energy, **changes)
    except MachineConfigError:
        assume(False)
    assignment = uniform(*pattern) if pattern else Assignment()
    same("smollm2-135m", machine, assignment, phase=phase, tokens=tokens)


def test_energy_and_clock_changes_reuse_every_price():
    """Points that differ in energy entries, clock or name price no GEMM again."""
    m = load_machine("vegeta").replace(macros=48)
    same("llama-2-7b", m, uniform(2, 4))
    before = cache_info()["prices"]["misses"]
    for i, pj in enumerate([0.5, 3.0, 11.0]):
        v = m.replace(name=f"v{i}", clock_mhz=200.0 + i,
                      energy={"dram_read": {"pj": pj, "unit": "bit", "estimate": True}})
        assert pricing_key(v) == pricing_key(m)
        same("llama-2-7b", v, uniform(2, 4))
    assert cache_info()["prices"]["misses"] == before
    wider = m.replace(macro={"act_bw_bits": 4096})
    assert pricing_key(wider) != pricing_key(m)
    got = same("llama-2-7b", wider, uniform(2, 4))
    assert cache_info()["prices"]["misses"] > before
    assert got["total"]["cycles"] != analyse_totals("llama-2-7b", m, uniform(2, 4))[
        "total"]["cycles"]


def test_plan_counts_every_layer_once():
    plan = plan_of("llama-2-7b", uniform(2, 4), tokens=2048)
    assert len(plan.order) == 32 * 7 + 1 + 32 * 2 == sum(plan.mult) == 289
    assert len(plan.sigs) == 8  # q/o, k/v (shared input), gate, up, down, lm_head, qk, pv
    assert sum(plan.gemm_mult) + sum(plan.attention_mult) == 289
    many = analyse_many("llama-2-7b", [load_machine(t) for t in TARGETS],
                        assignment=uniform(2, 4))
    assert many == [analyse_totals("llama-2-7b", load_machine(t), uniform(2, 4))
                    for t in TARGETS]


def test_errors_are_the_same_as_analyse():
    only24 = load_machine("flexcim").replace(patterns=["2:4"], dense=False)
    with pytest.raises(PatternError) as ref:
        analyse("llama-2-7b", only24, uniform(3, 8, dense=()))
    with pytest.raises(PatternError) as got:
        analyse_totals("llama-2-7b", only24, uniform(3, 8, dense=()))
    assert str(got.value) == str(ref.value)
    with pytest.raises(UsageError, match="unknown model config"):
        analyse_totals("llama-9", only24)
    with pytest.raises(UsageError, match="phase must be one of"):
        analyse_totals("llama-2-7b", only24, phase="train")


def test_sweep_rows_equal_what_flowc_analytic_reports():
    """evaluate_point (now on analyse_totals) == from_analytic (what `flowc analytic --json`
    writes) for every point of a small grid, field by field, exactly."""
    from flowc.studies.analytic import analyse
    from flowc.studies.results import from_analytic
    from flowc.studies.sweep.point import Shared, assignment_of, evaluate_point
    from flowc.studies.sweep.spec import load_spec, points_of

    spec = load_spec({"fixed": {"model": "llama-2-7b"},
                      "axes": {"target": list(TARGETS), "nm": ["dense", "2:4", "1:8"],
                               "phase": ["prefill", "decode"], "macros": [8, 64]}})
    shared = Shared("analytic")
    for p in points_of(spec):
        row = evaluate_point(shared, p)
        rep = analyse(p.model, p.machine, assignment_of(shared, p), phase=p.values["phase"],
                      tokens=p.values["tokens"])
        (res,) = from_analytic({p.values["phase"]: {p.machine.name: rep}}, p.model).results
        assert row["status"] == "ok", row["reason"]
        assert (row["cycles"], row["latency_s"], row["energy_pj"], row["edp_pj_s"],
                row["setup_cycles"], row["setup_energy_pj"], row["macs"]) == (
            res.cycles, res.time, res.energy, res.edp, res.setup_cycles, res.setup_energy,
            float(res.macs)), p.describe()
        assert (row["gemm_cycles"], row["attention_cycles"]) == (rep.cycles("gemm"),
                                                                 rep.cycles("attention"))
