"""`quantize{smooth=a}`: SmoothQuant scaling is an fp32 identity and does what it says."""

from __future__ import annotations

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
