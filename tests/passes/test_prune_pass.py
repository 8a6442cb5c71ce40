"""`nm-prune` on small exported models: weights, annotations, reports, tied weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from flowc.passes.base import CompileContext, PassError, PassManager
from flowc.passes.calibrate import Calibrate
from flowc.passes.graph import flowc_meta, get_param, linear_nodes
from flowc.passes.prune import NMPrune, nm_mask
from flowc.passes.verify import VerifyNM


def _export(model: nn.Module, *args: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(model.eval(), args).module()


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_magnitude_2_4_prunes_every_layer_and_keeps_function() -> None:
    model = _mlp()
    x = torch.randn(5, 8)
    gm = _export(model, x)
    ctx = CompileContext(example_inputs=(x,))
    result = PassManager([NMPrune(n=2, m=4, score="magnitude")]).run(gm, ctx)
    assert result.modified
    refs = linear_nodes(gm)
    assert [r.name for r in refs] == ["0", "2"]
    for ref, layer in zip(refs, (model[0], model[2]), strict=True):
        dense = layer.weight.detach().numpy()
        expected = np.where(nm_mask(np.abs(dense), 2, 4), dense, 0.0)
        assert np.array_equal(get_param(gm, ref.weight_target).detach().numpy(), expected)
        assert flowc_meta(ref.node)["pattern"] == (2, 4)
        assert flowc_meta(ref.node)["prune"] == {"method": "magnitude", "sparsity": 0.5}
    # the user's model is untouched, the graph computes the pruned model
    assert np.count_nonzero(model[0].weight.detach().numpy()) == 8 * 16
    pruned = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    pruned.load_state_dict({k: v for k, v in gm.state_dict().items()})
    torch.testing.assert_close(gm(x), pruned(x))
    report = ctx.reports["nm-prune"]
    assert report["layers"]["0"] == {"pattern": [2, 4], "params": 128, "sparsity": 0.5,
                                     "nominal": 0.5}
    assert report["sparsity"] == 0.5 and report["model_sparsity"] == 0.5
    assert report["dense_layers"] == []


def test_wanda_uses_input_norms_and_requires_calibrate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
    scale = torch.tensor([10.0, 1.0, 1.0, 0.1])  # input channel 0 is loud, 3 is quiet
    calib = [(torch.randn(64, 4) * scale,) for _ in range(2)]
    gm = _export(model, calib[0][0])
    with pytest.raises(PassError, match="requires 'calibrate'"):
        PassManager([NMPrune(n=2, m=4)]).run(gm, CompileContext(calib_inputs=calib))
    ctx = CompileContext(calib_inputs=calib)
    PassManager([Calibrate(), NMPrune(n=2, m=4)]).run(gm, ctx)
    w = get_param(gm, linear_nodes(gm)[0].weight_target).detach().numpy()
    assert w.tolist() == [[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]


def test_annotation_mode_skip_and_layer_filter() -> None:
    gm = _export(_mlp(), torch.randn(2, 8))
    first, second = linear_nodes(gm)
    flowc_meta(first.node)["pattern"] = (1, 4)
    ctx = CompileContext()
    NMPrune(score="magnitude")(gm, ctx)
    assert ctx.reports["nm-prune"]["dense_layers"] == ["2"]
    assert "pattern" not in flowc_meta(second.node)
    w0 = get_param(gm, first.weight_target).detach().numpy()
    assert (np.count_nonzero(w0.reshape(16, 2, 4), axis=-1) == 1).all()
    # uniform mode with skip: the skipped layer loses its annotation and stays dense
    gm = _export(_mlp(), torch.randn(2, 8))
    first, second = linear_nodes(gm)
    flowc_meta(first.node)["pattern"] = (1, 4)
    NMPrune(n=2, m=4, score="magnitude", skip=("0",))(gm, ctx)
    assert "pattern" not in flowc_meta(first.node)
    assert flowc_meta(second.node)["pattern"] == (2, 4)
    with pytest.raises(Exception, match="skip pattern 'fc7' matches no layer"):
        NMPrune(n=2, m=4, score="magnitude", skip=("fc7",))(gm, ctx)


def test_k_not_multiple_of_m_prunes_over_padded_groups_and_verifies() -> None:
    """K = 6 at 2:4: the second group is inputs 4, 5 plus two zero columns that count as
    pruned; the report and the node record the pad, and verify-nm passes on the result."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    gm = _export(model, torch.randn(2, 8))
    ctx = CompileContext()
    PassManager([NMPrune(n=2, m=4, score="magnitude"), VerifyNM()]).run(gm, ctx)
    layers = ctx.reports["nm-prune"]["layers"]
    assert "k_pad" not in layers["0"] and layers["2"]["k_pad"] == 2
    ref = linear_nodes(gm)[1]
    assert flowc_meta(ref.node)["k_pad"] == 2
    w = get_param(gm, ref.weight_target).detach().numpy()
    dense = model[2].weight.detach().numpy()
    assert (np.count_nonzero(w[:, :4], axis=1) == 2).all()
    assert np.array_equal(w[:, 4:], dense[:, 4:])  # 2 real weights in the partial group: kept


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 12, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.fc(self.emb(ids))))


def test_tied_and_reused_weights_are_untied_before_pruning() -> None:
    torch.manual_seed(1)
    model = _Tied()
    ids = torch.tensor([[1, 5, 7]])
    gm = _export(model, ids)
    assert [r.name for r in linear_nodes(gm)] == ["fc", "fc@1", "head"]
    NMPrune(n=1, m=4, score="magnitude", skip=("fc*",))(gm, CompileContext())
    head = linear_nodes(gm)[2]
    assert head.weight_target != "head.weight"
    assert np.count_nonzero(get_param(gm, head.weight_target).detach().numpy()) == 12 * 2
    # the embedding still reads the dense table
    emb_out = torch.nn.functional.embedding(ids, model.emb.weight)
    h = model.fc(model.fc(emb_out))
    w_head = get_param(gm, head.weight_target)
    torch.testing.assert_close(gm(ids), h @ w_head.T)
