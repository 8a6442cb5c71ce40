"""The compile's dense-vs-pruned quality report (perplexity, next tokens) and flowrun's notes."""

from __future__ import annotations

import math

import pytest
import torch

from flowc.frontend.load import load_hf
from flowc.studies.compiler import CompileOptions, compile_captured


def _windows(n: int, t: int, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (1, t), generator=gen),) for _ in range(n)]


def _nll(gm, windows):
    total, count = 0.0, 0
    with torch.no_grad():
        for (ids,) in windows:
            out = gm(ids)
            logits = (out[0] if isinstance(out, tuple | list) else out).reshape(-1, 256)
            total += float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:],
                                                             reduction="sum"))
            count += ids.numel() - 1
    return total / count


@pytest.mark.slow
def test_compile_reports_dense_and_pruned_perplexity_and_flowrun_prints_them():
    from flowc.runtime.session import _language_notes, check_against_references, simulate

    windows = _windows(3, 16)
    dense = load_hf("hf:tiny-llama", seq_len=16, calib_batches=2)
    expected_dense = math.exp(_nll(dense.gm, windows))
    cap = load_hf("hf:tiny-llama", seq_len=16, calib_batches=2)
    cap.info["eval_windows"], cap.info["eval_text"] = windows, "random ids"
    image = compile_captured(cap, CompileOptions(nm=(1, 4)), progress=None)
    q = image.compile_info["quality"]
    assert q["windows"] == 3 and q["tokens"] == 3 * 15
    assert q["dense_ppl"] == pytest.approx(expected_dense, abs=1e-4)
    assert q["pruned_ppl"] == pytest.approx(math.exp(_nll(cap.gm, windows)), abs=1e-4)
    assert q["pruned_ppl"] != q["dense_ppl"]  # 1:4 pruning moved the model
    assert len(q["dense_next"]) == 8 and 0.0 <= q["next_agreement"] <= 1.0

    image.vocab = tuple(f"t{i}" for i in range(256))
    samples = list(image.samples)
    outputs, report = simulate(image, samples, numerics="int8", account=False)
    report.check, refs = check_against_references(image, samples, outputs, "int8")
    _language_notes(image, samples, outputs, refs, report)
    notes = report.extra["notes"]
    ppl_note = next(v for k, v in notes.items() if k.startswith("perplexity on 3 held-out"))
    assert f"dense {q['dense_ppl']:.2f}" in ppl_note
    rows = report.extra["next_tokens"]
    assert [r["dense_fp32"] for r in rows] == [f"t{i}" for i in q["dense_next"][-len(rows):]]
    assert "dense fp32 next" in next(v for k, v in notes.items() if k.startswith("next token"))
