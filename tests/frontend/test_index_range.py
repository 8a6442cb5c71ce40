"""Integer inputs are drawn inside the embedding tables they index (an nn.Embedding with 50
rows used to fail the reference ONNX export with "index out of range in self")."""

from __future__ import annotations

import torch
from torch import nn

from flowc.frontend.index_range import index_bounds
from flowc.frontend.load import load_model
from flowc.runtime.session import check_outputs, simulate
from flowc.studies.compiler import CompileOptions, calibration_inputs, compile_captured


class TwoTables(nn.Module):
    """ids index a 50-row table and (reshaped) a 70-row one; `other` indexes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.small, self.large = nn.Embedding(50, 8), nn.Embedding(70, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        h = self.small(ids) + self.large(ids.reshape(ids.shape)) + other.float().unsqueeze(-1)
        return self.fc(h)


def _save(tmp_path, model: nn.Module, *args: torch.Tensor):
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model.eval(), args), path)
    return path


def test_bound_is_the_smallest_table_an_input_indexes():
    args = (torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    ep = torch.export.export(TwoTables().eval(), args)
    assert index_bounds(ep.graph, tuple(ep.graph_signature.user_inputs)) == (50, None)


def test_embedding_with_50_rows_compiles_calibrates_and_checks(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8))
    cap = load_model(_save(tmp_path, model, torch.randint(0, 50, (2, 33))))
    assert cap.info["index_high"] == (50,)
    ids = cap.example_inputs[0]
    assert ids.min() >= 0 and ids.max() < 50 and ids.max() >= 40  # the whole range is used
    calib = calibration_inputs(cap, 4, seed=0)
    assert all(int(c[0].max()) < 50 for c in calib)
    image = compile_captured(cap, CompileOptions(nm=(2, 4)), progress=None)  # calibrates
    assert image.reference_onnx is not None  # the ONNX export ran on in-range ids
    for numerics in ("fp32", "int8"):
        outs, _ = simulate(image, list(image.samples), numerics=numerics)
        assert check_outputs(image, list(image.samples), outs, numerics).passed
