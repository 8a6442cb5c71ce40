"""Analytic mode: same events and costs as a functional run; assignments; model configs."""

from dataclasses import replace

import pytest

from flowc.errors import UsageError
from flowc.frontend.load import capture
from flowc.machine import load_machine
from flowc.studies.analytic import (
    Assignment,
    analyse,
    analyse_gemms,
    assignment_from_dict,
    scale_blocks,
    uniform,
)
from flowc.studies.analytic_models import Gemm, linear_gemms, shapes_of
from flowc.studies.compare import compare_captured
from flowc.studies.compiler import CompileOptions
from flowc.studies.examples import build

MLP_GEMMS = [Gemm("fc1", 784, 512, 8, bias=True), Gemm("fc2", 512, 256, 8, bias=True),
             Gemm("fc3", 256, 10, 8, bias=True)]


def functional(nm, targets, pipeline=None):
    model, inputs = build("mlp")
    cap = capture(model, inputs, "mlp")
    opts = CompileOptions(nm=nm, pipeline=pipeline, reference=False, keep_fp32=False)
    return compare_captured(cap, targets, opts)


@pytest.mark.parametrize("nm", [(1, 8), (2, 4), (4, 8)])
def test_analytic_equals_functional_per_layer(nm):
    """Cycles, actions and setup of every GEMM layer agree exactly, on every target."""
    cmp = functional(nm, ["flexcim", "dcim-dense", "vegeta", "sdp", "stc24"])
    for name, run in cmp.runs.items():
        ana = {lc.name: lc for lc in analyse_gemms(MLP_GEMMS, run.machine,
                                                   uniform(*nm, dense=()))}
        for lc in run.report.layers:
            if lc.kind != "gemm":
                continue
            a = ana[lc.name]
            assert (a.cycles, a.setup_cycles, a.macs) == (lc.cycles, lc.setup_cycles, lc.macs)
            assert a.actions == pytest.approx(lc.actions) and a.energy_pj == pytest.approx(
                lc.energy_pj), (name, lc.name)


def test_analytic_equals_functional_resident(monkeypatch):
    """Resident mode: one wave per loop, setup counted once per weight, in both modes."""
    import flowc.studies.compare as compare_mod

    flex = load_machine("flexcim")
    resident = replace(flex, residency="resident", load_overlap=False)
    monkeypatch.setattr(compare_mod, "load_machine", lambda name: resident)
    cmp = functional((1, 8), ["flexcim"])
    run = cmp.runs["flexcim"]
    ana = {lc.name: lc for lc in analyse_gemms(MLP_GEMMS, resident, uniform(1, 8, dense=()))}
    for lc in run.report.layers:
        if lc.kind == "gemm":
            assert (lc.cycles, lc.setup_cycles) == (ana[lc.name].cycles, ana[lc.name].setup_cycles)
            assert lc.setup_cycles == 32 and "dram_read" in lc.setup_actions
    assert run.report.setup_cycles == 3 * 32


def test_assignment_rules_and_flow_format():
    a = assignment_from_dict({"layers": {"fc1": "dense", "fc*": [2, 8], "head": "1:4"},
                              "default": "2:4"})
    assert [a.pattern_for(n) for n in ("fc1", "fc2", "head", "x")] == [None, (2, 8), (1, 4),
                                                                       (2, 4)]
    flow = assignment_from_dict({"patterns": {"a": [4, 8], "b": [8, 8]}})
    assert (flow.pattern_for("a"), flow.pattern_for("b"), flow.pattern_for("c")) == (
        (4, 8), None, None)
    with pytest.raises(UsageError, match="layers.x: expected"):
        assignment_from_dict({"layers": {"x": "2-4"}})


def test_scale_blocks_by_relative_depth():
    rules = {f"model.layers.{i}.mlp.up_proj": [1, 8] if i < 15 else [4, 8] for i in range(30)}
    a = scale_blocks(assignment_from_dict({"layers": rules, "blocks": 30}), 30, 32)
    assert a.pattern_for("model.layers.0.mlp.up_proj") == (1, 8)
    assert a.pattern_for("model.layers.31.mlp.up_proj") == (4, 8)
    assert a.pattern_for("model.layers.16.mlp.up_proj") == (4, 8)  # 16*29/31 = 14.97 -> 15


def test_llama_7b_layer_list_and_macs():
    s = shapes_of("llama-2-7b")
    gemms = linear_gemms(s, tokens=1, lm_tokens=1)
    assert len(gemms) == 32 * 7 + 1
    params = sum(g.in_features * g.out_features for g in gemms)
    assert params == 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008) + 4096 * 32000  # 6.61e9
    l3 = linear_gemms(shapes_of("llama-3-8b"), 1, 1)
    assert (l3[1].out_features, l3[4].out_features) == (1024, 14336)  # GQA 8 KV heads
    assert [g.shares_input for g in gemms[:7]] == [False, True, True, False, False, True, False]


def test_prefill_decode_and_notes():
    flex = load_machine("flexcim")
    pre = analyse("bert-large", flex, uniform(2, 4), tokens=128)
    assert pre.summary()["gemm"]["macs"] == 128 * 24 * (4 * 1024 ** 2 + 2 * 1024 * 4096) + 1024 ** 2
    assert "attention" in pre.notes["included"] and "norms" in pre.notes["excluded"]
    with pytest.raises(UsageError, match="decode does not apply"):
        analyse("bert-large", flex, phase="decode")
    dec = analyse("opt-6.7b", flex, uniform(2, 4), phase="decode", tokens=512,
                  attention=False)
    assert dec.tokens == 1 and dec.kv_len == 512 and dec.cycles("attention") == 0
    assert dec.cycles() < analyse("opt-6.7b", flex, phase="decode", tokens=512,
                                  attention=False).cycles()  # 2:4 beats dense


def test_sparsity_never_slower_on_flexcim():
    flex = load_machine("flexcim")
    dense = analyse("llama-2-7b", flex, Assignment(), tokens=256, attention=False)
    for nm in ((2, 4), (4, 8), (2, 8), (1, 8)):
        assert analyse("llama-2-7b", flex, uniform(*nm), tokens=256,
                       attention=False).cycles() < dense.cycles()


def test_row_shared_exact_passes_never_exceed_the_bound(monkeypatch):
    """Functional runs read exact per-tile passes from <w>.meta; analytic uses the bound."""
    import flowc.studies.compare as compare_mod

    shared = replace(load_machine("flexcim"), pair_select="row-shared")
    monkeypatch.setattr(compare_mod, "load_machine", lambda name: shared)
    run = functional((1, 8), ["flexcim"]).runs["flexcim"]
    ana = {lc.name: lc for lc in analyse_gemms(MLP_GEMMS, shared, uniform(1, 8, dense=()))}
    gemm = [lc for lc in run.report.layers if lc.kind == "gemm"]
    assert all(lc.cycles <= ana[lc.name].cycles for lc in gemm)
    assert gemm[0].cycles == ana["fc1"].cycles  # 512 columns of Wanda masks reach the bound
