"""`quantize{smooth=a}`: SmoothQuant scaling is an fp32 identity and does what it says."""

from __future__ import annotations

import copy

import pytest
import torch

from flowc.frontend.load import load_hf
from flowc.passes.base import CompileContext
from flowc.passes.graph import linear_nodes
from flowc.passes.quantize import Quantize
from flowc.passes.smooth import SmoothError, smoothable_groups
from flowc.runtime.session import check_outputs, simulate
from flowc.studies.compiler import CompileOptions, compile_captured

SEQ = 16


@pytest.fixture(scope="module")
def tiny_llama():
    return load_hf("hf:tiny-llama", seq_len=SEQ, calib_batches=2)


def test_groups_are_qkv_gate_up_down_and_skip_o_proj_and_tied_lm_head(tiny_llama):
    groups, skipped = smoothable_groups(tiny_llama.gm, linear_nodes(tiny_llama.gm))
    sizes = sorted(len(g) for _, g in groups.values())
    assert sizes == [1, 1, 2, 2, 3, 3]  # per block: q/k/v, gate/up (norm folds), down (up fold)
    assert sorted(n.rsplit(".", 1)[-1] for n in skipped) == ["lm_head", "o_proj", "o_proj"]


def test_smoothing_is_an_fp32_identity_through_the_ort_check(tiny_llama):
    opts = CompileOptions(pipeline="quantize{smooth=0.5}")
    image = compile_captured(tiny_llama, opts, progress=None)
    for numerics in ("fp32", "int8"):
        outs, _ = simulate(image, list(image.samples), numerics=numerics)
        check = check_outputs(image, list(image.samples), outs, numerics)
        assert check.passed, (numerics, check.to_dict())
        if numerics == "fp32":
            assert check.max_abs_error <= 1e-4 * check.outputs[0].max_abs_reference


def test_smoothed_graph_computes_the_same_function():
    cap = load_hf("hf:tiny-llama", seq_len=SEQ, calib_batches=2)
    (ids,) = cap.example_inputs
    with torch.no_grad():
        before = cap.gm(ids)[0].clone()
    ctx = CompileContext(example_inputs=cap.example_inputs, calib_inputs=cap.info["calib"])
    Quantize(smooth=0.5)(cap.gm, ctx)
    with torch.no_grad():
        after = cap.gm(ids)[0]
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5 * before.abs().max().item())
    rep = ctx.reports["quantize"]["smoothing"]
    assert rep["alpha"] == 0.5 and len(rep["smoothed"]) == 12


def test_bad_alpha_and_missing_calibration_fail_loudly(tiny_llama):
    with pytest.raises(SmoothError, match="strictly between"):
        Quantize(smooth=1.5)(tiny_llama.gm, CompileContext(calib_inputs=[()]))
    with pytest.raises(SmoothError, match="calibration"):
        Quantize(smooth=0.5)(tiny_llama.gm, CompileContext())


def _pruned_then_smoothed(cap, reuse: bool, monkeypatch) -> tuple[dict, dict]:
    """nm-prune with OBS, verify-nm, quantize{smooth}: every parameter and the smoothing
    report, with quantize reusing nm-prune's activation max-abs or measuring them afresh
    (checked: the model runs only in the second case)."""
    from flowc.passes.base import PassManager
    from flowc.passes.pipeline import parse_pipeline
    from flowc.passes.prune import INPUT_MAX_ABS

    gm = copy.deepcopy(cap.gm)  # the shared fixture, as earlier tests may have left it
    for node in gm.graph.nodes:
        node.meta.pop("flowc", None)  # their annotations (qweight) are not this test's
    ctx = CompileContext(example_inputs=cap.example_inputs, calib_inputs=cap.info["calib"])
    PassManager(parse_pipeline("nm-prune{n=2,m=4,update=obs},verify-nm")).run(gm, ctx)
    assert INPUT_MAX_ABS in ctx.memo
    if not reuse:
        ctx.memo.clear()
    runs = []
    real = torch.fx.Interpreter.run
    monkeypatch.setattr(torch.fx.Interpreter, "run",
                        lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    PassManager(parse_pipeline("quantize{smooth=0.5}")).run(gm, ctx)
    monkeypatch.undo()
    assert len(runs) == (0 if reuse else len(ctx.calib_inputs))
    params = {k: v.detach().clone() for k, v in gm.state_dict().items()}
    return params, ctx.reports["quantize"]["smoothing"]


def test_smoothing_reuses_the_layerwise_max_abs_bit_for_bit(tiny_llama, monkeypatch):
    reused = _pruned_then_smoothed(tiny_llama, True, monkeypatch)
    fresh = _pruned_then_smoothed(tiny_llama, False, monkeypatch)
    assert reused[1] == fresh[1]
    assert reused[0].keys() == fresh[0].keys()
    for k in fresh[0]:
        assert torch.equal(reused[0][k], fresh[0][k]), k


def test_changed_weights_invalidate_the_memo(tiny_llama):
    from flowc.passes.graph import GraphState, get_param, set_param

    gm = tiny_llama.gm
    ref = linear_nodes(gm)[0]
    before = GraphState(gm)
    assert GraphState(gm) == before
    w = get_param(gm, ref.weight_target)
    set_param(gm, ref.weight_target, w)  # same values, a new tensor: the token must change
    assert GraphState(gm) != before
    again = GraphState(gm)
    with torch.no_grad():
        get_param(gm, ref.weight_target).mul_(1.0)  # an in-place write
    assert GraphState(gm) != again
