"""Graph preparation: one path for every source, values kept, shape-only code removed."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from flowc.errors import UnsupportedOpError, UsageError
from flowc.frontend import hf, prepare
from flowc.frontend.load import capture, load_hf, load_model
from flowc.studies.compiler import CompileOptions, compile_captured

SEQ = 8


def _ops(gm: torch.fx.GraphModule) -> Counter:
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


class UserLogits(nn.Module):
    """What a user writes before torch.export: the model as a child, logits out, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def test_pt2_and_hf_source_prepare_and_compile_identically(tmp_path) -> None:
    """The same tiny LLaMA through torch.export.save + load_model and through hf:tiny-llama:
    same prepared op multiset, same program (dense, fp32 weights kept)."""
    via_hf = load_hf("hf:tiny-llama", seq_len=SEQ, calib_batches=1)
    model = hf.tiny_model("llama")
    ep = hf.export_program(model, via_hf.example_inputs[0])
    torch.export.save(ep, str(tmp_path / "llama.pt2"))
    via_file = load_model(tmp_path / "llama.pt2")
    assert _ops(via_file.gm) == _ops(via_hf.gm)
    assert "aten.arange.default" not in _ops(via_file.gm)
    # same inputs, same values
    ids = via_hf.example_inputs
    torch.testing.assert_close(via_file.gm(*ids), via_hf.gm(*ids), rtol=0, atol=0)
    a = compile_captured(via_hf, CompileOptions(reference=False), progress=None)
    b = compile_captured(via_file, CompileOptions(reference=False), progress=None)
    assert a.program.instructions == b.program.instructions
    assert len(a.program.instructions) > 100
    assert a.compile_info["prepare"] == b.compile_info["prepare"]
    assert a.compile_info["prepare"]["folded"] > 0


@pytest.mark.parametrize("arch", ["llama", pytest.param("opt", marks=pytest.mark.slow),
                                  pytest.param("bert", marks=pytest.mark.slow)])
def test_user_export_is_cleaned_and_computes_the_eager_model(arch: str, tmp_path) -> None:
    """A user's own wrapper (model as a child) exported and saved: the ops issue 10 reported
    (arange, ones, _assert_tensor_metadata, the guard) are gone and the values are exact."""
    model = hf.tiny_model(arch)
    ids = torch.randint(0, 256, (1, SEQ), generator=torch.Generator().manual_seed(1))
    if arch == "bert":
        ep = torch.export.export(hf.EncoderHidden(model), (ids,), strict=False)
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state
    else:
        ep = torch.export.export(UserLogits(model), (ids,), strict=False)
        with torch.no_grad():
            ref = model(input_ids=ids, use_cache=False).logits
    raw = _ops(ep.module())
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    cap = load_model(tmp_path / "m.pt2")
    ops = _ops(cap.gm)
    for gone in ("aten.arange.default", "aten.ones.default", "aten.new_ones.default",
                 "aten._assert_tensor_metadata.default", "aten.dropout.default",
                 "aten.alias.default", "aten.gather.default"):
        assert gone not in ops, (gone, ops)
    # BERT's pooler is computed but not returned: dead code, removed
    assert ops["aten.linear.default"] == raw["aten.linear.default"] - (arch == "bert")
    assert cap.info["prepare"]["folded"] > 0
    with torch.no_grad():
        torch.testing.assert_close(cap.gm(ids), ref, rtol=0, atol=1e-6)
    layers = [n.meta["flowc"]["layer"] for n in cap.gm.graph.nodes if "flowc" in n.meta]
    assert len(layers) == len(set(layers)) == ops["aten.linear.default"]


class Shapes(nn.Module):
    """stack, chunk, .T and type_as: decomposed by prepare.DECOMPOSE."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(self.proj(x), 2, dim=-1)
        y = torch.stack([a, b * 2], dim=1)
        return (y.flatten(1).T.T + 1).type_as(x)


def test_decompositions_keep_values_and_module_paths() -> None:
    model = Shapes().eval()
    x = torch.randn(4, 6)
    cap = capture(model, (x,))
    ops = _ops(cap.gm)
    for gone in ("aten.chunk.default", "aten.stack.default", "aten.numpy_T.default",
                 "aten.type_as.default"):
        assert gone not in ops
    assert ops["aten.split.Tensor"] == 1 and ops["aten.cat.default"] == 1
    assert cap.info["prepare"]["decomposed"]["aten.stack.default"] == 1
    torch.testing.assert_close(cap.gm(x), model(x), rtol=0, atol=0)


class Masked(nn.Module):
    """transformers' mask construction: mask[batch_idx, kv_idx] over constant aranges."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = torch.arange(x.shape[0]).view(-1, 1, 1, 1)
        kv = torch.arange(x.shape[-1]).view(1, 1, 1, -1)
        m = mask.to(torch.bool)[b, kv]
        full = torch.ones(1, 1, x.shape[-1], 1, dtype=torch.bool) & m
        return torch.where(full, x[:, None, None, :], -1.0)


def test_constant_index_becomes_reshape_and_all_true_and_a_broadcast() -> None:
    x, mask = torch.randn(2, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    model = Masked()
    cap = capture(model, (x, mask))
    ops = _ops(cap.gm)
    assert "aten.index.Tensor" not in ops and "aten.__and__.Tensor" not in ops
    assert cap.info["prepare"]["simplified"] == {"aten.__and__.Tensor": 1, "aten.index.Tensor": 1}
    other = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 1, 1]])
    torch.testing.assert_close(cap.gm(x, other), model(x, other), rtol=0, atol=0)


class Permuted(nn.Module):
    """An index with constant indices that is *not* in order must stay an index."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, torch.tensor([2, 0, 1])]


def test_index_that_reorders_is_not_a_reshape() -> None:
    x = torch.randn(2, 3)
    cap = capture(Permuted(), (x,))
    assert "aten.index.Tensor" in _ops(cap.gm)
    torch.testing.assert_close(cap.gm(x), x[:, [2, 0, 1]])


def test_eval_capture_lm_is_the_compile_preparation() -> None:
    from flowc.studies.evaluate import capture_lm

    model = hf.tiny_model("qwen2")
    gm = capture_lm(model, SEQ)
    cap = load_hf("hf:tiny-qwen2", seq_len=SEQ, calib_batches=1)
    assert _ops(gm) == _ops(cap.gm)


def test_unsupported_op_message_names_module_path_and_hint() -> None:
    from flowc.frontend.diagnose import unsupported_op_message

    class Inner(nn.Module):
        def forward(self, x):
            return torch.nn.functional.scaled_dot_product_attention(x, x, x)

    outer = nn.Sequential(nn.Identity(), nn.Sequential(Inner()))
    ep = torch.export.export(outer, (torch.randn(1, 2, 4, 8),))
    node = next(n for n in ep.module().graph.nodes
                if n.target is torch.ops.aten.scaled_dot_product_attention.default)
    msg = unsupported_op_message(node, supported="linear, relu")
    assert msg.startswith("unsupported op aten.scaled_dot_product_attention.default at node "
                          f"'{node.name}' in module '1.0'; to avoid it: export the model with "
                          "attn_implementation='eager'")
    assert msg.endswith("; flowc lowers: linear, relu") and "\n" not in msg
    with pytest.raises(UnsupportedOpError):  # the error class the backend raises with it
        raise UnsupportedOpError(msg)


def test_prepare_report_is_json_ready() -> None:
    cap = load_hf("hf:tiny-opt", seq_len=SEQ, calib_batches=1)
    report = cap.info["prepare"]
    assert report["guards"] == 1 and report["folded"] > 0
    assert report["stripped"]["aten.dropout.default"] > 0
    assert report["ops"] == dict(sorted(_ops(cap.gm).items()))
    assert isinstance(prepare.DECOMPOSE, dict) and prepare.DECOMPOSE


def test_pt2_samples_are_the_inputs_the_user_exported_with(tmp_path) -> None:
    """A real attention mask recorded in the .pt2 becomes the program's sample input."""
    model = Masked()
    x, mask = torch.randn(2, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    torch.export.save(torch.export.export(model, (x, mask)), str(tmp_path / "m.pt2"))
    cap = load_model(tmp_path / "m.pt2")
    assert torch.equal(cap.example_inputs[0], x) and torch.equal(cap.example_inputs[1], mask)
    assert cap.info["example_inputs"] == "recorded"
    other = load_model(tmp_path / "m.pt2", input_shapes="2x5,2x5")  # the recorded shapes:
    assert other.info["example_inputs"] == "recorded"  # the recorded inputs, not synthetic ones
    assert torch.equal(other.example_inputs[0], x) and torch.equal(other.example_inputs[1], mask)
    with pytest.raises(UsageError, match="exported with static shapes 2x5, 2x5; give those"):
        load_model(tmp_path / "m.pt2", input_shapes="3x5,3x5")
