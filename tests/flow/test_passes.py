"""Pass wrappers on a small exported model: annotations, keep_dense, blocks, nm-prune handoff."""

from __future__ import annotations

import pytest
import torch

import flowc.passes.flow.passes  # noqa: F401  (registers the passes)
from flowc.errors import UsageError
from flowc.passes.base import CompileContext, PassError, PassManager
from flowc.passes.flow.passes import block_of, resolve_keep_dense
from flowc.passes.graph import flowc_meta, get_param, linear_nodes
from flowc.passes.pipeline import parse_pipeline


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block() for _ in range(3))
        self.lm_head = torch.nn.Linear(32, 16)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.lm_head(x)


def _run(pipeline: str):
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    gm = torch.export.export(Tiny(), (x,)).module()
    ctx = CompileContext(example_inputs=(x,),
                         calib_inputs=[(torch.randn(8, 32),) for _ in range(3)])
    PassManager(parse_pipeline(pipeline)).run(gm, ctx)
    patterns = {r.name: flowc_meta(r.node).get("pattern") for r in linear_nodes(gm)}
    return gm, ctx, patterns


def test_block_of_and_keep_dense_words():
    assert block_of("model.layers.3.mlp.up_proj") == "model.layers.3"
    assert block_of("transformer.h.11.attn.c_attn") == "transformer.h.11"
    assert block_of("lm_head") == "lm_head"
    names = ["layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down", "lm_head"]
    assert resolve_keep_dense(names, ["first", "lm_head"]) == ["layers.0.up", "layers.0.down",
                                                               "lm_head"]
    assert resolve_keep_dense(names, ["last"]) == ["layers.1.up", "layers.1.down"]
    assert resolve_keep_dense(["fc1", "fc2"], ["last"]) == ["fc2"]
    with pytest.raises(UsageError, match="matches no layer"):
        resolve_keep_dense(names, ["mlp.*"])


def test_flow_select_then_nm_prune_prunes_each_layer_to_its_pattern():
    gm, ctx, patterns = _run("calibrate,flow-select{target=0.6,tolerance=0.05,"
                             "keep_dense=first|lm_head},nm-prune,verify-nm")
    rep = ctx.reports["flow-select"]
    assert abs(rep["achieved"] - 0.6) <= 0.05
    assert patterns["lm_head"] is None and patterns["layers.0.up"] is None
    assert rep["kept_dense"] == ["layers.0.down", "layers.0.up", "lm_head"]
    refs = {r.name: r for r in linear_nodes(gm)}
    zeros = total = 0
    for name, pat in patterns.items():
        w = get_param(gm, refs[name].weight_target)
        if pat is not None:
            n, m = pat
            groups = (w.reshape(w.shape[0], -1, m) != 0).sum(-1)
            assert int(groups.max()) <= n
        zeros += int((w == 0).sum())
        total += w.numel()
    assert zeros / total == pytest.approx(rep["achieved"], abs=1e-12)
    meta = flowc_meta(refs["layers.1.up"].node)
    assert meta["outliers"]["unit"] == "layers.1.up" and 0.0 <= meta["outliers"]["nd"] <= 1.0


def test_block_granularity_gives_one_pattern_per_block():
    _, ctx, patterns = _run("calibrate,flow-select{target=0.5,tolerance=0.1,granularity=block,"
                            "candidates=1:4|2:4|4:4|2:8|4:8}")
    assert set(ctx.reports["flow-select"]["units"]) == {"layers.0", "layers.1", "layers.2",
                                                        "lm_head"}
    for i in range(3):
        assert patterns[f"layers.{i}.up"] == patterns[f"layers.{i}.down"]


def test_infeasible_target_fails_the_pass_with_nearest_values():
    with pytest.raises(PassError, match="nearest achievable"):
        _run("calibrate,flow-select{target=0.6,tolerance=0.0,candidates=2:4|4:4}")


def test_uniform_and_owl_passes_annotate():
    _, ctx, patterns = _run("uniform-nm{n=2,m=4,keep_dense=lm_head}")
    assert patterns["lm_head"] is None
    assert {p for k, p in patterns.items() if k != "lm_head"} == {(2, 4)}
    assert ctx.reports["uniform-nm"]["target"] == 0.5
    _, ctx, patterns = _run("calibrate,owl-nm{n=2,m=8,lam=2.0}")
    assert {p[1] for p in patterns.values() if p is not None} <= {8}
    assert ctx.reports["owl-nm"]["method"] == "owl-2:8"


def test_outliers_pass_requires_calibrate_and_reports():
    with pytest.raises(PassError, match="requires 'calibrate'"):
        _run("outliers")
    _, ctx, _ = _run("calibrate,outliers{locality=repo,tau=2.5}")
    rep = ctx.reports["outliers"]
    assert rep["locality"] == "repo" and len(rep["units"]) == 7
    assert max(u["ratio_hat"] for u in rep["units"]) == 1.0
