"""Bring your own model (issue 10): transformers exported *by the user* compile, run and check.

Each case does what a user does: build a Hugging Face model from a small config (random
weights), wrap it so forward(input_ids[, attention_mask]) returns a tensor, `torch.export`
it (non-strict) and `torch.export.save` it to a .pt2, then `flowc compile model.pt2`. The
program is run on the simulator with the user's inputs (BERT: a padding attention mask, a
run-time input) and judged three ways:

- fp32 numerics against ONNX Runtime on the reference graph: max |err| <= 1e-4 max |ref|;
- fp32 numerics against the *original* torch model (independent of flowc's graph
  preparation: catches a wrong SDPA decomposition or mask), same bound;
- int8 numerics: flowrun's verdict (flowc.runtime.check, against the int8 reference).

The default suite runs one case per architecture (SDPA, the transformers default); the rest of
the matrix (eager and SDPA x batch 1, 2 x length 1, 7, 33) is marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from flowc.backend import container
from flowc.cli.flowrun import main as flowrun_main
from flowc.cli.main import main as flowc_main
from flowc.frontend import hf
from flowc.runtime.session import check_outputs, simulate

ARCHS = hf.ARCHS  # llama mistral qwen2 opt gpt2 bert gpt_neox phi3 gemma
# the user's wrapper puts the model under `model.`: its head is `model.lm_head` (fnmatch)
FLOW = "calibrate,flow-select{{target=0.5{skip}}},nm-prune,verify-nm,quantize"
FAST = {arch: ("sdpa", 2, 7) for arch in ARCHS}
SHAPES = [(1, 1), (2, 7), (1, 33), (2, 33)]  # batch 1 and 2, odd lengths 1, 7, 33
MATRIX = [(a, attn, b, t) for a in ARCHS for attn in ("eager", "sdpa") for b, t in SHAPES]


class UserLM(nn.Module):
    """What a user writes for a causal LM: logits, no KV cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class UserEncoder(nn.Module):
    """What a user writes for BERT: the last hidden state under a padding mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def user_inputs(arch: str, batch: int, seq: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Token ids; for BERT also a mask padding the last row after its first half."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, seq), generator=gen)
    if arch not in hf.ENCODER_ARCHS:
        return (ids,)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2 + 1:] = 0
    return ids, mask


def export_user_model(arch: str, attn: str, batch: int, seq: int, path) -> tuple:
    """Build, wrap, export and save; returns (wrapper, the inputs the test runs)."""
    model = hf.tiny_model(arch, attn=attn)
    wrapper = (UserEncoder if arch in hf.ENCODER_ARCHS else UserLM)(model).eval()
    # export with other inputs than the run's: the program must not have baked them in
    example = user_inputs(arch, batch, seq, seed=0)
    with torch.no_grad():
        ep = torch.export.export(wrapper, example, strict=False)
    torch.export.save(ep, str(path))
    return wrapper, user_inputs(arch, batch, seq)


def compile_file(pt2, out, *extra: str) -> None:
    assert flowc_main(["compile", str(pt2), "-o", str(out), "-q", *extra]) == 0


def check_case(arch: str, attn: str, batch: int, seq: int, tmp_path) -> dict:
    pt2, fcim = tmp_path / "model.pt2", tmp_path / "model.fcim"
    wrapper, inputs = export_user_model(arch, attn, batch, seq, pt2)
    compile_file(pt2, fcim)
    image = container.load(fcim)
    arrays = [x.numpy() for x in inputs]
    outs32, report = simulate(image, arrays, numerics="fp32")
    check32 = check_outputs(image, arrays, outs32, "fp32")
    ref_max = check32.outputs[0].max_abs_reference
    assert check32.max_abs_error <= 1e-4 * ref_max, (arch, attn, check32.to_dict())
    with torch.no_grad():
        torch_out = wrapper(*inputs).numpy()
    torch_err = float(np.abs(outs32[0] - torch_out).max())
    assert torch_err <= 1e-4 * float(np.abs(torch_out).max()), (arch, attn, torch_err)
    outs8, _ = simulate(image, arrays, numerics="int8")
    check8 = check_outputs(image, arrays, outs8, "int8")
    assert check8.passed, (arch, attn, check8.to_dict())
    # attention runs on the macros: Q K^T and A V per block, named after the attention module
    names = [lc.name for lc in report.layers if lc.kind == "attention"]
    assert len(names) == 4 and all(n.endswith((".qk", ".av")) for n in names), names
    return {"fp32_rel": check32.max_abs_error / ref_max, "torch_err": torch_err,
            "int8": check8.passed}


@pytest.mark.parametrize("arch", ARCHS)
def test_user_export_one_case_per_arch(arch, tmp_path):
    check_case(arch, *FAST[arch], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch,attn,batch,seq",
                         [c for c in MATRIX if FAST[c[0]] != c[1:]])
def test_user_export_matrix(arch, attn, batch, seq, tmp_path):
    check_case(arch, attn, batch, seq, tmp_path)


def test_gpt2_addmm_becomes_a_prunable_gemm(tmp_path):
    """A user-exported GPT-2 has Conv1D's addmm(b, x, W[in, out]): after preparation every one
    is a CiM GEMM with a static weight, so 2:4 prunes it (the .fcim records the pattern)."""
    pt2, fcim = tmp_path / "g.pt2", tmp_path / "g.fcim"
    _, inputs = export_user_model("gpt2", "eager", 1, 7, pt2)
    compile_file(pt2, fcim, "--nm", "2:4")
    image = container.load(fcim)
    convs = [n for n in image.packed if n.endswith(("c_attn", "c_proj", "c_fc"))]
    assert len(convs) == 8 and all(image.packed[n]["n"] == 2 for n in convs)
    assert not any(i.mnemonic == "mm.act" and "mlp" in i.dst for i in image.program.instructions)
    report = tmp_path / "r.json"
    np.save(tmp_path / "ids.npy", inputs[0].numpy())
    assert flowrun_main([str(fcim), "--input", str(tmp_path / "ids.npy"), "--json",
                         str(report), "-q"]) == 0
    assert json.loads(report.read_text())["check"]["passed"]


def test_bert_mask_is_a_run_time_input(tmp_path):
    """The attention mask is not folded: two masks give two different outputs, each equal to
    the torch model's (padded keys are ignored, so unpadded positions do not depend on them)."""
    pt2, fcim = tmp_path / "b.pt2", tmp_path / "b.fcim"
    wrapper, (ids, mask) = export_user_model("bert", "sdpa", 2, 7, pt2)
    compile_file(pt2, fcim)
    image = container.load(fcim)
    ops = {i.mnemonic for i in image.program.instructions}
    assert {"v.cast", "v.where"} <= ops  # the mask is computed at run time
    full = torch.ones_like(mask)
    outs = []
    for m in (mask, full):
        y, _ = simulate(image, [ids.numpy(), m.numpy()], numerics="fp32", account=False)
        with torch.no_grad():
            ref = wrapper(ids, m).numpy()
        assert np.abs(y[0] - ref).max() <= 1e-4 * np.abs(ref).max()
        outs.append(y[0])
    assert np.abs(outs[0][-1] - outs[1][-1]).max() > 1e-3  # the padded row changed
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)  # unpadded row


def test_unsupported_op_names_op_node_and_module(tmp_path, capsys):
    """An op with no rule still fails with one line: op, node and module path."""
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.erfinv(self.proj(x).tanh() * 0.5)

    pt2 = tmp_path / "odd.pt2"
    torch.export.save(torch.export.export(Odd().eval(), (torch.randn(2, 8),)), str(pt2))
    assert flowc_main(["compile", str(pt2), "-o", str(tmp_path / "o.fcim"), "-q"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aten.erfinv" in err[0] and "node 'erfinv'" in err[0], err
    assert not (tmp_path / "o.fcim").exists()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_user_export_flow_selection(arch, tmp_path):
    """flowc's own FLOW selection at 0.5 on the user's .pt2: compiles, prunes, checks."""
    pt2, fcim = tmp_path / "model.pt2", tmp_path / "model.fcim"
    _, inputs = export_user_model(arch, "sdpa", 1, 16, pt2)
    skip = "" if arch in hf.ENCODER_ARCHS else ",skip=*lm_head"  # BERT has no head
    compile_file(pt2, fcim, "-p", FLOW.format(skip=skip))
    image = container.load(fcim)
    sparse = [n for n, info in image.packed.items() if info["n"] < info["m"]]
    assert sparse, "FLOW at 0.5 pruned nothing"
    arrays = [x.numpy() for x in inputs]
    for numerics in ("fp32", "int8"):
        outs, _ = simulate(image, arrays, numerics=numerics, account=False)
        check = check_outputs(image, arrays, outs, numerics)
        assert check.passed, (arch, numerics, check.to_dict())
        if numerics == "fp32":
            assert check.max_abs_error <= 1e-4 * check.outputs[0].max_abs_reference


class UserLMWithMask(UserLM):
    """A causal LM exported with its padding mask as a second input."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).logits


@pytest.mark.slow
@pytest.mark.parametrize("arch,attn", [(a, attn) for a in ("llama", "opt", "gpt2")
                                       for attn in ("eager", "sdpa")])
def test_decoder_with_a_run_time_padding_mask(arch, attn, tmp_path):
    """Exported with an all-ones mask, run with left padding: the mask is an input, not a
    constant. Real tokens equal the torch model's; ORT agrees everywhere (padded query rows
    see no key: both run the same uniform softmax there, the torch kernel may not)."""
    wrapper = UserLMWithMask(hf.tiny_model(arch, attn=attn)).eval()
    ids = user_inputs(arch, 2, 7)[0]
    mask = torch.ones(2, 7, dtype=torch.long)
    pt2, fcim = tmp_path / "m.pt2", tmp_path / "m.fcim"
    with torch.no_grad():
        torch.export.save(torch.export.export(wrapper, (ids, mask), strict=False), str(pt2))
    compile_file(pt2, fcim)
    image = container.load(fcim)
    mask[1, :3] = 0
    arrays = [ids.numpy(), mask.numpy()]
    y, _ = simulate(image, arrays, numerics="fp32", account=False)
    check = check_outputs(image, arrays, y, "fp32")
    assert check.max_abs_error <= 1e-4 * check.outputs[0].max_abs_reference
    with torch.no_grad():
        ref = wrapper(ids, mask).numpy()
    real = mask.numpy().astype(bool)
    assert np.abs(y[0][real] - ref[real]).max() <= 1e-4 * np.abs(ref[real]).max()
    y8, _ = simulate(image, arrays, numerics="int8", account=False)
    assert check_outputs(image, arrays, y8, "int8").passed
