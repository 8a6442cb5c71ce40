"""The state-space rewrites of graph preparation on small modules (flowc.frontend.rewrite_ssm)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowc.errors import UnsupportedOpError
from flowc.frontend.load import capture

aten = torch.ops.aten


def _ops(cap) -> set:
    return {n.target for n in cap.gm.graph.nodes if n.op == "call_function"}


class FillByCopy(nn.Module):
    """RWKV's CPU recurrence: out = zeros_like(k); out[:, t] = ... for every t."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.fc(x)
        out = torch.zeros_like(k)
        state = torch.zeros_like(k[:, 0])
        for t in range(k.shape[1]):
            state = 0.5 * state + k[:, t]
            out[:, t] = torch.tanh(state)
        return out


def test_in_place_fill_becomes_a_stack_and_computes_the_same():
    torch.manual_seed(0)
    model, x = FillByCopy().eval(), torch.randn(2, 5, 8)
    cap = capture(model, (x,))
    assert aten.copy_.default not in _ops(cap) and aten.cat.default in _ops(cap)
    with torch.no_grad():
        torch.testing.assert_close(cap.gm(x), model(x), rtol=0, atol=0)


class WeightTimesX(nn.Module):
    """Mamba's dt_proj.weight @ dt: a matmul with a parameter as the left operand."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj.weight @ x.transpose(1, 2)


def test_matmul_with_a_parameter_becomes_a_linear_named_after_the_parameter():
    model, x = WeightTimesX().eval(), torch.randn(2, 3, 4)
    cap = capture(model, (x,))
    linears = [n for n in cap.gm.graph.nodes if n.target is aten.linear.default]
    assert len(linears) == 1 and aten.matmul.default not in _ops(cap)
    assert linears[0].meta["flowc"]["layer"] == "proj"
    with torch.no_grad():
        torch.testing.assert_close(cap.gm(x), model(x))


class Rescale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.fc, self.factor = nn.Linear(4, 4), factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.fc.weight.div_(self.factor)
        return self.fc(x)


def test_unit_in_place_rescale_is_removed_and_another_factor_refused():
    cap = capture(Rescale(1.0).eval(), (torch.randn(2, 4),))
    assert aten.div_.Tensor not in _ops(cap)
    with pytest.raises(UnsupportedOpError, match=r"in-place aten.div_.Tensor of parameter "
                                                 r"fc.weight by 2.0 .*run the model once"):
        capture(Rescale(2.0).eval(), (torch.randn(2, 4),))


class MaxMin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.max(dim=1, keepdim=True)[0] + x.min(dim=0)[0]


def test_max_and_min_values_become_amax():
    x = torch.randn(3, 4, 5)
    cap = capture(MaxMin().eval(), (x,))
    assert aten.max.dim not in _ops(cap) and aten.amax.default in _ops(cap)
    torch.testing.assert_close(cap.gm(x), MaxMin()(x), rtol=0, atol=0)
