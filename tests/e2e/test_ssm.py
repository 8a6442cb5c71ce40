"""Recurrent state-space models exported by the user: Mamba and RWKV (issue 10).

Each case does what a user does: a transformers MambaForCausalLM / RwkvForCausalLM from a
tiny config (random weights, torch paths: Mamba's slow selective scan, RWKV's CPU
recurrence, both Python loops over time that torch.export unrolls), a wrapper returning
logits with `use_cache=False`, `torch.export` (non-strict), `torch.export.save`, then
`flowc compile model.pt2` (dense, and `--nm 2:4` with calibration). The program runs on the
simulator and is judged against ONNX Runtime in fp32 (max |err| <= 1e-4 max |ref|), against
the original torch model when dense (fp32, same bound: independent of flowc's graph
preparation) and in int8 (flowrun's verdict against the int8 reference).

The default suite runs one dense case per model (batch 2, length 7); batch 1 and 2 at
lengths 1, 7 and 33, dense and 2:4, are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flowc.backend import container
from flowc.cli.main import main as flowc_main
from flowc.frontend import hf
from flowc.runtime.session import check_outputs, simulate

SHAPES = [(1, 1), (2, 1), (1, 7), (2, 7), (1, 33), (2, 33)]
FAST = (2, 7)
# dense and 2:4 at every shape, except the dense fast case (run by the default suite)
MATRIX = [(b, t, nm) for b, t in SHAPES for nm in (None, "2:4") if (nm or (b, t) != FAST)]


class UserLM(nn.Module):
    """What a user writes for a causal LM: logits, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def check_case(arch: str, batch: int, seq: int, tmp_path, nm: str | None) -> set[str]:
    """Export, save, compile (dense or --nm), run and check; returns the mnemonics used."""
    tag = (nm or "dense").replace(":", "_")
    pt2, fcim = tmp_path / f"{arch}_{tag}.pt2", tmp_path / f"{arch}_{tag}.fcim"
    wrapper = UserLM(hf.tiny_model(arch)).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (batch, seq), generator=gen)
    ids = torch.randint(0, 256, (batch, seq), generator=gen)  # the run's inputs differ
    with torch.no_grad():
        torch.export.save(torch.export.export(wrapper, (example,), strict=False), str(pt2))
        want = wrapper(ids).numpy()
    assert flowc_main(["compile", str(pt2), "-o", str(fcim), "-q",
                       *(["--nm", nm] if nm else [])]) == 0
    image = container.load(fcim)
    arrays = [ids.numpy()]
    outs32, report = simulate(image, arrays, numerics="fp32")
    check32 = check_outputs(image, arrays, outs32, "fp32")
    ref_max = check32.outputs[0].max_abs_reference
    assert check32.max_abs_error <= 1e-4 * ref_max, (arch, nm, check32.to_dict())
    if nm is None:  # dense: the user's torch model is an independent reference
        err = float(np.abs(outs32[0] - want).max())
        assert err <= 1e-4 * float(np.abs(want).max()), (arch, err)
    outs8, _ = simulate(image, arrays, numerics="int8")
    check8 = check_outputs(image, arrays, outs8, "int8")
    assert check8.passed, (arch, nm, check8.to_dict())
    assert all(lc.cycles > 0 for lc in report.layers)
    return {i.mnemonic for i in image.program.instructions}


@pytest.mark.parametrize("arch", hf.SSM_ARCHS)
def test_user_exported_ssm_compiles_runs_and_checks(arch, tmp_path):
    ops = check_case(arch, *FAST, tmp_path, None)
    # the recurrences are lowered, not refused: their signature instructions are present
    want = {"mamba": {"v.dwconv", "v.softplus", "v.exp"},
            "rwkv": {"v.exp", "v.max", "v.div", "v.sigmoid"}}[arch]
    assert want <= ops, ops


@pytest.mark.slow
@pytest.mark.parametrize("arch", hf.SSM_ARCHS)
@pytest.mark.parametrize("batch,seq,nm", MATRIX)
def test_user_exported_ssm_matrix(arch, batch, seq, nm, tmp_path):
    check_case(arch, batch, seq, tmp_path, nm)


@pytest.mark.slow
@pytest.mark.parametrize("arch", hf.SSM_ARCHS)
def test_builtin_tiny_ssm_source_compiles_and_checks(arch, tmp_path):
    """`flowc compile hf:tiny-mamba` / `hf:tiny-rwkv`: flowc's own capture of the same models."""
    fcim = tmp_path / f"{arch}.fcim"
    assert flowc_main(["compile", f"hf:tiny-{arch}", "--seq-len", "7", "--nm", "2:4",
                       "-o", str(fcim), "-q"]) == 0
    image = container.load(fcim)
    samples = list(image.samples)
    for numerics in ("fp32", "int8"):
        outs, _ = simulate(image, samples, numerics=numerics)
        check = check_outputs(image, samples, outs, numerics)
        assert check.passed, (arch, numerics, check.to_dict())
        if numerics == "fp32":
            assert check.max_abs_error <= 1e-4 * check.outputs[0].max_abs_reference
