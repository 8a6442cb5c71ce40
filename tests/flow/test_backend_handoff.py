"""FLOW's N:M choice and masks reach the compiled Image unchanged (tiny llama, real lowering)."""

from __future__ import annotations

import numpy as np
import torch

from flowc.backend.pack import unpack
from flowc.frontend.load import Captured
from flowc.frontend.text import calibration_windows
from flowc.passes.graph import flowc_meta, get_param, linear_nodes
from flowc.studies.compiler import CompileOptions, compile_captured
from flowc.studies.evaluate import capture_lm, load_lm

PIPELINE = ("calibrate,flow-select{target=0.5,skip=lm_head},nm-prune{sequential=true},"
            "verify-nm,quantize")


def test_flow_patterns_and_masks_appear_unchanged_in_the_image():
    model, tok = load_lm("hf:tiny-llama")
    cap = Captured(gm=capture_lm(model, 32), example_inputs=(torch.randint(0, 256, (1, 32)),),
                   input_names=("input_ids",), output_names=("logits",),
                   source="hf:tiny-llama")
    calib = calibration_windows(tok, "pydoc", 2, 32)
    image = compile_captured(cap, CompileOptions(pipeline=PIPELINE, reference=False),
                             progress=None, calib=calib)
    gemms = {info.name: info for info in image.layers if info.kind == "gemm"}
    refs = linear_nodes(cap.gm)
    assert set(gemms) == {r.name for r in refs}
    sparse = 0
    for ref in refs:
        info, pattern = gemms[ref.name], flowc_meta(ref.node).get("pattern")
        weight = get_param(cap.gm, ref.weight_target).detach().numpy()
        if pattern is None:  # dense choice: the image runs it as n == m
            assert info.pattern[0] == info.pattern[1]
        else:
            sparse += 1
            assert info.pattern == tuple(pattern) == info.native
        assert info.nonzeros == np.count_nonzero(weight)
        n, m = info.pattern
        dense = unpack(image.tensors[f"{ref.name}.fvalues"], image.tensors[f"{ref.name}.meta"],
                       n, m)
        out, k = weight.shape
        assert np.array_equal(dense[:out, :k], weight)  # same kept positions, same values
    assert sparse >= 8  # the ILP chose sparse patterns for most of the 14 block linears
