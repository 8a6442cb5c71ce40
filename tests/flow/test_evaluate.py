"""Perplexity, token windows, method pipelines and the `flowc eval` command on a tiny llama."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowc.frontend.text import (
    ByteTokenizer,
    TextSourceError,
    calibration_windows,
    evaluation_windows,
    load_text,
    split_text,
    token_windows,
)
from flowc.passes.pipeline import parse_pipeline
from flowc.studies.evaluate import (
    EvalError,
    MethodSpec,
    dense_result,
    method_pipeline,
    perplexity,
    prepare,
    run_method,
)


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    windows = [(torch.randint(0, 50, (1, 9)),) for _ in range(3)]
    result = perplexity(lambda ids: torch.zeros(1, ids.shape[1], 50), windows)
    assert result.ppl == pytest.approx(50.0, rel=1e-6)
    assert (result.tokens, result.windows) == (24, 3)


def test_perplexity_of_a_perfect_predictor_is_one():
    ids = torch.arange(10).reshape(1, 10)

    def oracle(x):  # logit 100 on the next token of the window
        logits = torch.zeros(1, 10, 16)
        logits[0, torch.arange(9), x[0, 1:]] = 100.0
        return logits

    assert perplexity(oracle, [(ids,)]).ppl == pytest.approx(1.0, abs=1e-12)


def test_token_windows_are_consecutive_and_non_overlapping():
    text = "abcdefghij" * 10
    windows = token_windows(ByteTokenizer(), text, 3, 7)
    flat = torch.cat([w[0] for w in windows], dim=1)[0].tolist()
    assert [w[0].shape for w in windows] == [(1, 7)] * 3
    assert flat == list(text[:21].encode())
    with pytest.raises(TextSourceError, match="only 100 tokens"):
        token_windows(ByteTokenizer(), text, 20, 7)


def test_calibration_and_evaluation_windows_come_from_the_two_parts(tmp_path):
    calib_part, held_part = split_text(load_text("pydoc"))
    tok = ByteTokenizer()
    calib = calibration_windows(tok, "pydoc", 2, 32)
    held = evaluation_windows(tok, "pydoc", 2, 32)
    assert calib[0][0][0].tolist() == list(calib_part.encode()[:32])
    assert held[0][0][0].tolist() == list(held_part.encode()[:32])
    wiki = tmp_path / "wiki.test.raw"  # a user's own file: used whole for evaluation
    wiki.write_text(" = Valkyria Chronicles III = \n" * 20, encoding="utf-8")
    other = evaluation_windows(tok, str(wiki), 2, 16, calib_spec="pydoc")
    assert bytes(other[0][0][0].tolist()) == b" = Valkyria Chro"


def test_method_pipelines_parse_and_name_their_options():
    cases = {
        MethodSpec("uniform", nm=(4, 8)): "uniform-nm{n=4,m=8,skip=lm_head},nm-prune{"
                                          "score=wanda,sequential=true,skip=lm_head},verify-nm",
        MethodSpec("flow", 0.6, update="obs", sequential=False, skip=()):
            "flow-select{target=0.6,tau=5.0,solver=cbc},nm-prune{score=wanda,update=obs},"
            "verify-nm",
    }
    for spec, text in cases.items():
        assert method_pipeline(spec) == text
    for method in ("magnitude", "owl", "flow", "flow-repo"):
        names = [p.name for p in parse_pipeline(method_pipeline(MethodSpec(method, 0.6)))]
        assert names[-2:] == ["nm-prune", "verify-nm"]
    repo = parse_pipeline(method_pipeline(MethodSpec("flow-repo", 0.5)))[0]
    assert repo.preset == "repo" and repo.tau is None  # FLOW's own tau (0.5) from the preset
    eff = repo.resolved()
    assert (eff["locality"], eff["direction"], eff["candidates"], eff["granularity"],
            eff["tau"], eff["threshold"], eff["constraint"], eff["force_dense_ends"]) == (
        "repo-block", "repo", "repo", "block", 0.5, "block", "repo-equality", True)
    given = parse_pipeline(method_pipeline(MethodSpec("flow-repo", 0.5, tau=5.0,
                                                      granularity="layer",
                                                      extra="locality=repo")))[0]
    assert (given.resolved()["tau"], given.resolved()["granularity"]) == (5.0, "layer")
    assert method_pipeline(MethodSpec("dense")) == ""
    with pytest.raises(EvalError, match="unknown method"):
        method_pipeline(MethodSpec("sparsegpt"))


@pytest.fixture(scope="module")
def tiny():
    return prepare("hf:tiny-llama", "pydoc", None, calib_windows=3, eval_windows=3, seq_len=32)


def test_dense_and_flow_on_a_tiny_llama(tiny):
    dense = dense_result(tiny)
    assert dense.sparsity == 0.0 and math.isfinite(dense.ppl.ppl)
    assert dense.ppl.tokens == 3 * 31
    result = run_method(tiny, MethodSpec("flow", 0.5))
    assert abs(result.sparsity - 0.5) <= 0.005  # over the prunable layers (lm_head skipped)
    assert result.sparsity_all < result.sparsity
    patterns = result.selection["layers"]
    assert "lm_head" not in patterns and len(patterns) >= 1
    by_name = {row["name"]: row for row in result.layers}
    for name, (n, m) in patterns.items():
        assert by_name[name]["sparsity"] >= 1 - n / m - 1e-12
    assert tiny.gm is not None and dense_result(tiny).ppl.ppl == dense.ppl.ppl  # untouched


def test_uniform_obs_and_owl_on_a_tiny_llama(tiny):
    plain = run_method(tiny, MethodSpec("uniform", nm=(2, 4)))
    obs = run_method(tiny, MethodSpec("uniform", nm=(2, 4), update="obs"))
    assert plain.sparsity == obs.sparsity == 0.5
    assert plain.ppl.ppl != obs.ppl.ppl
    owl = run_method(tiny, MethodSpec("owl", 0.6))
    assert owl.selection["target"] == pytest.approx(0.6)


def test_eval_command_end_to_end(tmp_path, capsys):
    import argparse

    from flowc.cli import eval as eval_cmd
    from flowc.cli.guard import add_debug

    parser = argparse.ArgumentParser()
    eval_cmd.register(parser.add_subparsers(dest="command"), add_debug)
    sel = tmp_path / "sel.json"
    args = parser.parse_args(["eval", "hf:tiny-llama", "--calib-text", "pydoc",
                              "--calib-windows", "2", "--eval-windows", "2", "--seq-len", "32",
                              "--method", "flow", "--target", "0.6", "--per-layer", "-q",
                              "--save-selection", str(sel), "--json", str(tmp_path / "r.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "flow" in out and "model.layers.0.mlp.up_proj" in out
    saved = json.loads(sel.read_text())
    assert set(saved) == {"layers", "target", "achieved", "method"}
    assert saved["target"] == 0.6 and abs(saved["achieved"] - 0.6) <= 0.005
    full = json.loads((tmp_path / "r.json").read_text())
    assert [r["method"] for r in full["evaluations"]] == ["dense", "flow"]
