"""flowc compare on the tiny MLP: same outputs on every target, FlexCiM beats dense at 1:8."""

import argparse
import json

import numpy as np
import pytest

from flowc.cli import analytic as analytic_cmd
from flowc.cli import compare as compare_cmd
from flowc.cli.guard import add_debug
from flowc.errors import UsageError
from flowc.machine import MachineConfigError
from flowc.studies.compare import TARGETS, compare_model, parse_targets
from flowc.studies.examples import save_example
from flowc.studies.results import from_comparison


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    return str(save_example("mlp", tmp_path_factory.mktemp("m") / "mlp.pt2"))


@pytest.fixture(scope="module")
def cmp18(mlp_path):
    return compare_model(mlp_path, "all", nm=(1, 8))


def test_every_target_runs_and_outputs_agree(cmp18):
    assert list(cmp18.runs) == list(TARGETS)
    ref = cmp18.runs["flexcim"].outputs[0]
    for run in cmp18.runs.values():
        np.testing.assert_array_equal(run.outputs[0], ref)  # same int8 model: bit-identical
    assert max(cmp18.agreement.values()) == 0.0


def test_flexcim_beats_dense_at_1_8(cmp18):
    flex, dense = cmp18.runs["flexcim"].report, cmp18.runs["dcim-dense"].report
    assert flex.total_cycles <= dense.total_cycles
    assert flex.total_energy_pj < dense.total_energy_pj
    assert cmp18.speedup("flexcim", "dcim-dense") == pytest.approx(
        dense.total_cycles / flex.total_cycles)
    pats = {lay.name: lay.pattern for lay in from_comparison(cmp18).result("vegeta").layers}
    assert pats["fc1"] == "1:8->1:4"  # cheapest supported pattern containing the mask


def test_cli_writes_json_and_plot(mlp_path, tmp_path, capsys):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    compare_cmd.register(sub, add_debug)
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    args = ap.parse_args(["compare", mlp_path, "--targets", "flexcim,dcim-dense", "--nm", "2:4",
                          "--json", str(out), "--plot", str(png), "-q"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "energy ratio" in text and "EDP" in text
    d = json.loads(out.read_text())
    res = {r["target"]: r for r in d["results"]}
    assert d["kind"] == "compare" and d["primary"] == "flexcim"
    assert res["flexcim"]["cycles"] < res["dcim-dense"]["cycles"]
    ratio = res["dcim-dense"]["time"] / res["flexcim"]["time"]
    assert f"{ratio:.3f}x" in text  # the speed-up table shows the ratio of the JSON's times
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_keeps_the_callers_matplotlib_backend(mlp_path, tmp_path):
    import sys

    import matplotlib

    from flowc.frontend.load import load_model
    from flowc.studies.compare import compare_captured
    from flowc.studies.compiler import CompileOptions

    before = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    matplotlib.use("svg")  # the caller's choice, which the plot must leave alone
    try:
        cmp = compare_captured(load_model(mlp_path), ["flexcim"], CompileOptions(nm=(2, 4)))
        cmp.plot(tmp_path / "c.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_analytic_cli_json(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    analytic_cmd.register(sub, add_debug)
    out = tmp_path / "a.json"
    args = ap.parse_args(["analytic", "smollm2-135m", "--targets", "flexcim,dcim-dense",
                          "--nm", "2:4", "--tokens", "64", "--json", str(out)])
    assert args.func(args) == 0
    d = json.loads(out.read_text())
    res = {(r["phase"], r["target"]): r for r in d["results"]}
    assert {p for p, _ in res} == {"prefill", "decode"} and res["decode", "flexcim"]["tokens"] == 1

    def gemm_cycles(r: dict) -> int:
        return sum(lay["cycles"] for lay in r["layers"] if lay["kind"] == "gemm")

    assert gemm_cycles(res["prefill", "flexcim"]) < gemm_cycles(res["prefill", "dcim-dense"])
    assert "Linear layers" in capsys.readouterr().out


def test_bad_targets():
    assert parse_targets("all") == list(TARGETS)
    with pytest.raises(MachineConfigError, match="did you mean 'vegeta'"):
        parse_targets("flexcim,vegita")
    with pytest.raises(UsageError):
        parse_targets("flexcim,flexcim")
