"""Layer discovery and parameter access on exported graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from flowc.passes.graph import (
    GraphError,
    flowc_meta,
    get_param,
    linear_nodes,
    select_layers,
    set_param,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleDict({"fc1": nn.Linear(4, 8), "fc2": nn.Linear(8, 4, bias=False)})
        self.register_buffer("w_dyn", torch.ones(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block["fc2"](torch.relu(self.block["fc1"](x)))
        return nn.functional.linear(h, self.w_dyn * 2.0)  # computed weight: not a static GEMM


def test_linear_nodes_names_targets_and_meta() -> None:
    gm = torch.export.export(_Net(), (torch.randn(2, 4),)).module()
    refs = linear_nodes(gm)
    assert [(r.name, r.weight_target, r.bias_target) for r in refs] == [
        ("block.fc1", "block.fc1.weight", "block.fc1.bias"),
        ("block.fc2", "block.fc2.weight", None),
    ]
    flowc_meta(refs[0].node)["layer"] = "model.up"
    assert linear_nodes(gm)[0].name == "model.up"
    assert flowc_meta(refs[1].node) == {}
    chosen, rest = select_layers(linear_nodes(gm), layers=["block.*"], skip=["model.*"])
    assert [r.name for r in chosen] == ["block.fc2"] and [r.name for r in rest] == ["model.up"]


def test_get_and_set_param_replace_without_touching_the_original() -> None:
    model = _Net()
    gm = torch.export.export(model, (torch.randn(2, 4),)).module()
    original = model.block["fc1"].weight.detach().clone()
    set_param(gm, "block.fc1.weight", torch.zeros(8, 4))
    p = get_param(gm, "block.fc1.weight")
    assert isinstance(p, nn.Parameter) and torch.equal(p, torch.zeros(8, 4))
    assert torch.equal(model.block["fc1"].weight.detach(), original)
    with pytest.raises(GraphError, match=r"shape \(3, 4\) != \(8, 4\)"):
        set_param(gm, "block.fc1.weight", torch.zeros(3, 4))
    with pytest.raises(GraphError, match="no parameter or buffer 'block.fc1.nope'"):
        get_param(gm, "block.fc1.nope")
