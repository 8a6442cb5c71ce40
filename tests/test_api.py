"""The public API (docs/api.md): one user-built nn.Module, loaded once, compiled for two
targets without reloading; the reports compared. Uses only names docs/api.md documents."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import flowc

PIPELINE = "calibrate,nm-prune{n=2,m=4},verify-nm,quantize"
API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


class TwoLayer(nn.Module):
    """A model the user writes (not a built-in example)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(128, 256)
        self.down = nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _tensors_equal(a: flowc.Image, b: flowc.Image) -> bool:
    return a.tensors.keys() == b.tensors.keys() and all(
        np.array_equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_one_model_two_targets_no_reload() -> None:
    torch.manual_seed(0)
    net = TwoLayer().train()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 128)
    model = flowc.load(net, inputs=x)

    # flexcim streams weight tiles through 16 macros; the variant has 2 of them
    few = flowc.load_machine("flexcim").replace(name="flexcim-2", macros=2)
    first = flowc.compile(model, PIPELINE, target="flexcim")
    second = flowc.compile(model, PIPELINE, target=few)
    # the caller's objects are untouched: the module (weights, train mode) and the loaded model
    assert net.training and all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert _tensors_equal(flowc.compile(flowc.load(net, inputs=x), PIPELINE), first)
    assert _tensors_equal(first, second)  # same pruning and packing, only the machine differs
    assert first.machine == flowc.load_machine("flexcim").to_dict()
    assert second.machine == few.to_dict()

    reports = [flowc.run(img) for img in (first, second)]
    assert all(r.check["passed"] for r in reports)
    # the two reports as DataFrames: one row per layer, compared layer by layer
    a, b = (r.to_dataframe(layers=True).set_index("name") for r in reports)
    assert set(a["target"]) == {"flexcim"} and set(b["target"]) == {"flexcim-2"}
    assert list(a.index) == list(b.index)
    gemms = a.index[a["kind"] == "gemm"]
    assert list(gemms) == ["up", "down"]
    assert (a.loc[gemms, "macs"] == b.loc[gemms, "macs"]).all()
    # `up` has 256 outputs = 8 column tiles: one wave on 16 macros, four (each loading its
    # tiles) on 2; `down` has 2 tiles: one wave on either machine, the same cycles
    diff = b["cycles"] - a["cycles"]
    assert diff["up"] > 0 and diff["down"] == 0
    totals = pd.concat([r.to_dataframe() for r in reports]).set_index("target")
    assert totals.loc["flexcim-2", "cycles"] - totals.loc["flexcim", "cycles"] == diff.sum()
    assert diff.sum() == diff["up"]  # only `up` differs
    assert totals.loc["flexcim", "cycles"] == a["cycles"].sum()
    assert totals["time"].tolist() == [c / 500e6 for c in totals["cycles"]]  # 500 MHz clock
    hashes = {name: m["hash"] for r in reports for name, m in r.machines.items()}
    assert hashes["flexcim"] != hashes["flexcim-2"]


def test_inputs_and_targets_are_checked() -> None:
    net = TwoLayer()
    with pytest.raises(flowc.FlowcError, match="needs example inputs"):
        flowc.load(net)
    model = flowc.load(net, inputs=torch.randn(1, 128))
    with pytest.raises(ValueError, match="machine 'flexcimm': not a built-in"):
        flowc.compile(model, "quantize", target="flexcimm")


def test_every_public_name_is_documented() -> None:
    doc = API_DOC.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+ `flowc\.(\w+)", doc, flags=re.M))
    assert headings == set(flowc.__all__) - {"__version__"}
    assert sorted(dir(flowc)) == dir(flowc) and set(flowc.__all__) <= set(dir(flowc))


def test_compare_runs_the_program_compile_and_run_produce() -> None:
    """compare's per-target costs equal compiling for each target and running the image:
    the same pruned int8 model, priced by the same cost model, on two code paths."""
    torch.manual_seed(1)
    model = flowc.load(TwoLayer(), inputs=torch.randn(4, 128))
    graph = {k: v.clone() for k, v in model.gm.state_dict().items()}
    cmp = flowc.compare(model, "flexcim,dcim-dense", PIPELINE)
    assert all(torch.equal(graph[k], v) for k, v in model.gm.state_dict().items())
    for target in ("flexcim", "dcim-dense"):
        report = flowc.run(flowc.compile(model, PIPELINE, target=target), check=False)
        assert report.check is None
        run, cmp_run = report.result(), cmp.result(target)
        assert cmp_run.cycles == run.cycles
        assert cmp_run.energy == pytest.approx(run.energy, rel=1e-12)
        assert report.machines[target] == cmp.machines[target]  # same config, same hash
    assert cmp.agreement == {"flexcim": 0.0, "dcim-dense": 0.0}


def test_analytic_takes_a_name_or_a_machine_object() -> None:
    vegeta = flowc.load_machine("vegeta")
    by_name = flowc.analytic("llama-2-7b", "vegeta", nm=(2, 4), phase="decode", kv_len=128)
    by_object = flowc.analytic("llama-2-7b", vegeta, nm=(2, 4), phase="decode", kv_len=128)
    assert by_name.to_dict() == by_object.to_dict()
    by_dict = flowc.analytic("llama-2-7b", vegeta, phase="decode", kv_len=128,
                             assignment={"layers": {"lm_head": "dense"}, "default": "2:4"})
    assert by_dict.result().cycles == by_name.result().cycles
    assert by_dict.result().energy == by_name.result().energy
    with pytest.raises(flowc.FlowcError, match="nm or assignment, not both"):
        flowc.analytic("llama-2-7b", nm=(2, 4), assignment={"layers": {}})


@pytest.mark.slow
def test_evaluate_reports_dense_and_pruned() -> None:
    report = flowc.evaluate("hf:tiny-llama", "uniform", nm=(2, 4), calib_windows=2,
                            eval_windows=2, seq_len=32)
    assert [e.method for e in report.evaluations] == ["dense", "uniform"]
    dense, pruned = report.evaluations
    assert dense.sparsity == 0.0 and pruned.sparsity == pytest.approx(0.5, abs=1e-9)
    assert dense.tokens == pruned.tokens == 2 * 31
    assert report.pipeline == pruned.pipeline and "nm-prune" in pruned.pipeline
    df = report.to_dataframe()
    assert df["method"].tolist() == ["dense", "uniform"] and df["ppl"].tolist() == [
        dense.ppl, pruned.ppl]


def test_the_example_at_the_top_of_api_md_runs(capsys) -> None:
    """The first code block of docs/api.md, as a user would paste it."""
    code = re.search(r"```python\n(.*?)```", API_DOC.read_text(encoding="utf-8"), re.S).group(1)
    exec(compile(code, str(API_DOC), "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("flexcim ") and out[0].endswith(" True")
    assert out[1].startswith("flexcim-2 ") and out[1].endswith(" True")
    assert out[2].split() == ["target", "flexcim", "flexcim-2"]  # the pivoted DataFrame
