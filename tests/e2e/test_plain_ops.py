"""Plain models (issue 10): every plain op lowers, runs and checks, dense and 2:4.

Small nn.Modules built around CiM linears use each op the backend lowers for non-transformer
models: element-wise math (sigmoid, exp, log, sqrt, abs, softplus, division by a tensor and
by a scalar, clamp, maximum/minimum, reverse subtraction, square), softmax, log_softmax and
reductions (sum, mean, amax, max/min values) over every dimension of 3-D tensors, cumsum
along two dimensions, a causal depthwise conv1d (Mamba's: left padding k-1 then a slice)
and constant padding that crops (RWKV's time shift). Each is exported with torch.export,
saved as .pt2, loaded like a user's file, compiled, simulated and judged: fp32 against ONNX
Runtime (max |err| <= 1e-4 max |ref|) and, dense, against the module itself; int8 by
flowrun's verdict (the int8 reference). The 100 -> 37 -> 10 MLP pads K to whole N:M groups
(the acceptance case of the issue).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from flowc.cli.flowrun import main as flowrun_main
from flowc.cli.main import main as flowc_main
from flowc.errors import UnsupportedOpError
from flowc.frontend.load import load_model
from flowc.runtime.session import check_outputs, simulate
from flowc.studies.compiler import CompileOptions, compile_captured


class Elementwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        a = torch.sigmoid(h) + torch.exp(-h.abs()) + torch.log(h.abs() + 1) + torch.sqrt(h.abs())
        a = a + nn.functional.softplus(h) + h / (h.abs() + 2.0) + h / 3.0 + 1.0 / (h * h + 1)
        a = a + torch.clamp(h, -0.5, 0.5) + torch.clamp(h, min=0.1) + torch.maximum(h, -h)
        a = a + torch.minimum(h, 0.5 * h) + (1 - h) + h.square()
        return self.fc2(a)


class Reductions(nn.Module):
    """softmax, log_softmax, mean, sum, amax and max/min values over dims 0, 1 and 2 of a
    3-D tensor, and cumsum."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        a = torch.softmax(h, dim=0) + torch.softmax(h, dim=1) + torch.softmax(h, dim=-1)
        a = a + h.mean(dim=0, keepdim=True) + h.mean(dim=1, keepdim=True) + h.mean()
        a = a + h.sum(dim=(0, 2), keepdim=True) * 0.01 + h.amax(dim=1, keepdim=True)
        a = a + torch.cumsum(h, dim=1) * 0.1 + torch.cumsum(h, dim=-1) * 0.01
        a = a + torch.log_softmax(h, dim=1) + torch.log_softmax(h, dim=-1)
        a = a + h.max(dim=1, keepdim=True)[0] + h.min(dim=0)[0] + h.max(dim=-1)[0].unsqueeze(-1)
        return self.fc2(a) + h.mean(dim=1).unsqueeze(1)[..., :16]


class ConvShift(nn.Module):
    """Mamba's causal depthwise conv1d and RWKV's time shift (a pad that crops)."""

    def __init__(self, channels: int = 32, taps: int = 4) -> None:
        super().__init__()
        self.up = nn.Linear(16, channels)
        self.conv = nn.Conv1d(channels, channels, taps, groups=channels, padding=taps - 1)
        self.down = nn.Linear(channels, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # [B, T, C]
        t = h.shape[1]
        c = self.conv(h.transpose(1, 2))[..., :t].transpose(1, 2)
        shifted = nn.functional.pad(h, (0, 0, 1, -1))  # h[t - 1], zeros at t = 0
        return self.down(nn.functional.silu(c) * torch.sigmoid(shifted))


MODULES = {"elementwise": Elementwise, "reductions": Reductions, "conv_shift": ConvShift}


def compile_module(tmp_path, name: str, module: nn.Module, x: torch.Tensor, nm):
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(module.eval(), (x,)), str(path))
    cap = load_model(path)
    return compile_captured(cap, CompileOptions(nm=nm), progress=None)


@pytest.mark.parametrize("nm", [None, (2, 4)])
@pytest.mark.parametrize("name", sorted(MODULES))
def test_plain_module_compiles_runs_and_checks(tmp_path, name, nm):
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    x = torch.randn(2, 5, 16)
    image = compile_module(tmp_path, name, module, x, nm)
    samples = list(image.samples)
    outs32, report = simulate(image, samples, numerics="fp32")
    check32 = check_outputs(image, samples, outs32, "fp32")
    assert check32.max_abs_error <= 1e-4 * check32.outputs[0].max_abs_reference, check32.to_dict()
    if nm is None:  # dense: the module is an independent reference
        with torch.no_grad():
            want = module(torch.from_numpy(samples[0])).numpy()
        assert np.abs(outs32[0] - want).max() <= 1e-4 * np.abs(want).max()
    outs8, _ = simulate(image, samples, numerics="int8")
    assert check_outputs(image, samples, outs8, "int8").passed
    assert all(lc.cycles > 0 for lc in report.layers if lc.kind == "gemm")


def test_layout_changes_are_priced(tmp_path):
    """softmax over dim 0 is v.permute, v.softmax, v.permute: two extra copies, each priced."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 16)
    last = compile_module(tmp_path, "last", _Softmax(-1), x, None)
    first = compile_module(tmp_path, "first", _Softmax(0), x, None)
    names = [i.mnemonic for i in first.program.instructions]
    assert names.count("v.permute") == 2 and names.count("v.softmax") == 1
    _, rep_last = simulate(last, list(last.samples), numerics="fp32")
    _, rep_first = simulate(first, list(first.samples), numerics="fp32")
    # permute class: 1 cycle per element, 64 lanes: 2 x ceil(3*4*16 / 64) = 6 extra cycles
    assert rep_first.total_cycles - rep_last.total_cycles == 2 * -(-3 * 4 * 16 // 64)


class _Softmax(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc, self.dim = nn.Linear(16, 16), dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=self.dim)


def test_unsupported_conv_names_op_node_and_module(tmp_path):
    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(8, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    with pytest.raises(UnsupportedOpError, match=r"^aten.conv1d.default with groups=1 over 8 "
                                                 r"channels at node 'conv1d' in module 'conv': "
                                                 r"flowc lowers depthwise"):
        compile_module(tmp_path, "dense_conv", Dense(), torch.randn(1, 8, 10), None)


@pytest.mark.parametrize("nm", ["2:4", "1:8"])
def test_mlp_100_37_10_pads_k_and_passes_the_check(tmp_path, nm):
    """K = 100 and 37 are no multiples of M = 8 (37 not of 4 either): the groups run over K
    padded with zero columns; the report names the pad and the check passes."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(100, 37), nn.ReLU(), nn.Linear(37, 10)).eval()
    pt2, fcim, rep = tmp_path / "mlp.pt2", tmp_path / "mlp.fcim", tmp_path / "mlp.json"
    torch.export.save(torch.export.export(mlp, (torch.randn(4, 100),)), str(pt2))
    assert flowc_main(["compile", str(pt2), "--nm", nm, "-o", str(fcim), "-q"]) == 0
    assert flowrun_main([str(fcim), "--json", str(rep), "-q"]) == 0
    report = json.loads(rep.read_text())
    assert report["check"]["passed"] and report["check"]["fidelity"]["passed"]
    m = int(nm.split(":")[1])
    gemms = [lyr for lyr in report["results"][0]["layers"] if lyr["kind"] == "gemm"]
    assert [(g["in_features"], g["k_pad"]) for g in gemms] == [(100, -100 % m), (37, -37 % m)]
    assert all(g["pattern"] == nm and g["padded_in"] >= g["in_features"] + g["k_pad"]
               for g in gemms)
