"""`flowc eval -p PIPELINE` scores any pipeline, a plugin pass included."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest

from flowc.cli.main import main
from flowc.passes import Pass, registry
from flowc.passes.base import PassResult
from flowc.passes.graph import flowc_meta, linear_nodes


@dataclass(frozen=True)
class MlpOnly(Pass):
    """Mark the MLP linears 2:4 and nothing else; nm-prune then prunes exactly those."""

    name = "mlp-only"

    def __call__(self, gm, ctx) -> PassResult:
        for ref in linear_nodes(gm):
            if ".mlp." in ref.name:
                flowc_meta(ref.node)["pattern"] = (2, 4)
        return PassResult(gm, True)


@pytest.fixture()
def plugin(monkeypatch):
    registry.available_passes()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_BROKEN", {})
    ep = EntryPoint(name="mlp-only", value=f"{__name__}:MlpOnly", group="flowc.passes")
    monkeypatch.setattr(registry, "entry_points", lambda group: (ep,))


@pytest.mark.slow
def test_eval_scores_a_plugin_pipeline(plugin, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "hf:tiny-llama", "-p", "calibrate,mlp-only,nm-prune,verify-nm",
                 "--calib-text", "pydoc", "--calib-windows", "2", "--eval-windows", "2",
                 "--seq-len", "32", "-q", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    dense, ours = data["evaluations"]
    assert ours["method"] == "pipeline" and ours["target_sparsity"] is None
    assert ours["pipeline"] == "mlp-only,nm-prune,verify-nm"  # calibrate ran once, dense
    layers = {lay["name"]: lay for lay in ours["layers"]}
    mlp = [n for n in layers if ".mlp." in n]
    assert len(mlp) == 6  # 2 blocks x gate, up, down
    for name, lay in layers.items():
        assert (lay["pattern"], lay["sparsity"]) == (("2:4", 0.5) if name in mlp else ("dense", 0.0))
    assert ours["ppl"] != dense["ppl"]


def test_eval_pipeline_typo_fails_before_loading(capsys):
    assert main(["eval", "hf:tiny-llama", "-p", "mlp-onyl,nm-prune", "-q"]) == 2
    assert "unknown pass 'mlp-onyl'" in capsys.readouterr().err
