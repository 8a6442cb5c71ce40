"""Calibration statistics equal a direct torch computation of ||X_j||_2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from flowc.passes.base import CompileContext
from flowc.passes.calibrate import Calibrate, CalibrationError, collect_input_norms
from flowc.passes.graph import flowc_meta, linear_nodes


class _Block(nn.Module):
    """q/k share an input (one reduction for both); fc2 sees a 3-D activation."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(6, 4)
        self.k = nn.Linear(6, 4, bias=False)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.q(x) * self.k(x)))


def test_norms_match_torch() -> None:
    torch.manual_seed(0)
    model = _Block().eval()
    batches = [(torch.randn(2, 5, 6),), (torch.randn(2, 5, 6) * 3,), (torch.randn(2, 5, 6),)]
    gm = torch.export.export(model, batches[0]).module()
    norms = collect_input_norms(gm, batches)
    refs = {r.name: r.node.name for r in linear_nodes(gm)}
    x = torch.cat([b[0].reshape(-1, 6) for b in batches]).double()
    with torch.no_grad():
        h = torch.relu(model.q(x.float()) * model.k(x.float())).double()
    expected = {"q": x.norm(dim=0), "k": x.norm(dim=0), "fc2": h.norm(dim=0)}
    assert set(norms) == set(refs.values())
    for name, node_name in refs.items():
        assert norms[node_name].dtype == np.float32 and norms[node_name].shape == (
            expected[name].shape[0],
        )
        np.testing.assert_allclose(norms[node_name], expected[name].numpy(), rtol=1e-5)


def test_pass_stores_norms_and_report() -> None:
    model = _Block().eval()
    batches = [(torch.randn(3, 6),) for _ in range(4)]
    gm = torch.export.export(model, batches[0]).module()
    ctx = CompileContext(calib_inputs=batches)
    messages: list[str] = []
    ctx.progress = messages.append
    Calibrate(max_samples=2)(gm, ctx)
    assert ctx.reports["calibrate"] == {"samples": 2, "layers": 3}
    assert messages == ["calibrate: batch 1/2", "calibrate: batch 2/2"]
    x = torch.cat([b[0] for b in batches[:2]])
    q = linear_nodes(gm)[0]
    np.testing.assert_allclose(flowc_meta(q.node)["input_norm"], x.norm(dim=0).numpy(), rtol=1e-6)


def test_no_calibration_inputs_is_an_error() -> None:
    gm = torch.export.export(_Block().eval(), (torch.randn(3, 6),)).module()
    with pytest.raises(CalibrationError, match="no calibration inputs"):
        Calibrate()(gm, CompileContext())
