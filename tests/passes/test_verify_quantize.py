"""`verify-nm` catches violating groups; `quantize` error bounds and zero preservation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from flowc.passes.base import CompileContext, PassError, PassManager
from flowc.passes.graph import flowc_meta, get_param, linear_nodes, set_param
from flowc.passes.prune import NMPrune
from flowc.passes.quantize import Quantize, dequantize_weight, quantize_weight
from flowc.passes.verify import VerifyError, VerifyNM, check_nm


def _pruned_gm() -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    gm = torch.export.export(model, (torch.randn(2, 8),)).module()
    NMPrune(n=2, m=4, score="magnitude")(gm, CompileContext())
    return gm


def test_verify_passes_on_pruned_and_fails_on_hand_made_violation() -> None:
    gm = _pruned_gm()
    ctx = CompileContext()
    VerifyNM()(gm, ctx)
    assert ctx.reports["verify-nm"] == {"checked": ["0", "2"]}
    ref = linear_nodes(gm)[1]
    w = get_param(gm, ref.weight_target).detach().clone()
    w[3, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])  # 3 nonzeros in a 2:4 group
    set_param(gm, ref.weight_target, w)
    with pytest.raises(VerifyError) as info:
        VerifyNM()(gm, ctx)
    assert str(info.value) == (
        "layer 2: row 3, group starting at input 8 holds 3 nonzeros, 2:4 allows 2 "
        "(1 violating group)"
    )


def test_verify_inside_manager_names_passes_and_checks_qweight() -> None:
    gm = _pruned_gm()
    ref = linear_nodes(gm)[0]
    flowc_meta(ref.node)["qweight"] = np.ones((16, 8), dtype=np.int8)
    with pytest.raises(PassError, match=r"^pass 'verify-nm' failed \(ran before: none\): "
                       r"VerifyError: layer 0 \(qweight\): row 0, group starting at input 0 "
                       r"holds 4 nonzeros, 2:4 allows 2 \(32 violating groups\)$"):
        PassManager([VerifyNM()]).run(gm, CompileContext())


def test_check_nm_counts_all_violations() -> None:
    w = np.array([[1, 1, 0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 1]])
    with pytest.raises(VerifyError, match=r"row 0, group starting at input 4 holds 3 nonzeros, "
                       r"2:4 allows 2 \(2 violating groups\)$"):
        check_nm(w, 2, 4, "x")
    check_nm(w, 4, 4, "x")


def test_quantize_weight_known_answer_and_bound() -> None:
    w = np.array([[127.0, -63.4, 0.0, 1.6], [0.0, 0.0, 0.0, 0.0], [0.5, -1.0, 0.25, 0.0]],
                 dtype=np.float32)
    q, s = quantize_weight(w)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert s.tolist() == [1.0, 1.0, np.float32(1.0 / 127)]
    assert q[0].tolist() == [127, -63, 0, 2]
    assert q[1].tolist() == [0, 0, 0, 0]
    assert q[2].tolist() == [64, -127, 32, 0]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    w[w.__abs__() < 0.5] = 0.0
    q, s = quantize_weight(w)
    err = np.abs(w - dequantize_weight(q, s))
    assert (err <= s[:, None] / 2 * (1 + 1e-6)).all()
    assert ((w == 0) <= (q == 0)).all()  # every pruned zero is an int8 zero
    assert np.abs(q).max(axis=1).tolist() == [127] * 64


def test_quantize_pass_meta_and_report() -> None:
    gm = _pruned_gm()
    ctx = CompileContext()
    PassManager([Quantize(), VerifyNM()]).run(gm, ctx)
    for ref in linear_nodes(gm):
        meta = flowc_meta(ref.node)
        w = get_param(gm, ref.weight_target).detach().numpy()
        assert meta["act_quant"] == "per-token"
        assert meta["qweight"].shape == w.shape and meta["wscale"].shape == (w.shape[0],)
        np.testing.assert_array_equal(meta["qweight"] == 0, w == 0)
    report = ctx.reports["quantize"]
    assert set(report["layers"]) == {"0", "2"}
    assert 0 < report["rel_err"] < 0.01
    assert report["max_abs_err"] == max(v["max_abs_err"] for v in report["layers"].values())


def test_check_nm_pads_k_with_zero_columns() -> None:
    """K = 6 at 2:4: the last group is columns 4, 5 plus two zero columns; three nonzeros in
    the first group, or two in the partial group at 1:4, are judged over the same groups."""
    w = np.zeros((2, 6), np.float32)
    w[:, [0, 3, 4, 5]] = 1.0
    check_nm(w, 2, 4, "x")
    w[1, 1] = 1.0
    with pytest.raises(VerifyError, match=r"row 1, group starting at input 0 holds 3 nonzeros"):
        check_nm(w, 2, 4, "x")
    with pytest.raises(VerifyError, match=r"row 0, group starting at input 4 holds 2 nonzeros"):
        check_nm(np.array([[1, 0, 0, 0, 1, 1]], np.float32), 1, 4, "x")
