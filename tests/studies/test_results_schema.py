"""Every command's JSON output (flowrun, compare, analytic, eval) validates against the one
schema in the package (docs/results-format.md), on the MLP example and on tiny LLaMA."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from flowc.cli.flowrun import main as flowrun_main
from flowc.cli.main import main as flowc_main
from flowc.studies.examples import save_example
from flowc.studies.results import UNITS, schema, validate


def _json(path: Path) -> dict:
    data = json.loads(path.read_text())
    validate(data)
    assert data["schema_version"] == 1 and data["units"] == UNITS
    for entry in data["machines"].values():  # the hash is the config's, recomputed here
        from flowc.studies.results import machine_entry

        assert machine_entry(entry["config"]) == entry
    return data


def _run_and_compare(tmp_path: Path, model: str, extra: list[str]) -> tuple[dict, dict]:
    fcim, run_json, cmp_json = tmp_path / "m.fcim", tmp_path / "run.json", tmp_path / "cmp.json"
    assert flowc_main(["compile", model, "--nm", "2:4", "-o", str(fcim), "-q", *extra]) == 0
    assert flowrun_main([str(fcim), "--json", str(run_json), "-q"]) == 0
    assert flowc_main(["compare", model, "--targets", "flexcim,dcim-dense", "--nm", "2:4",
                       "--json", str(cmp_json), "-q"]) == 0
    run, cmp = _json(run_json), _json(cmp_json)
    assert run["kind"] == "run" and run["check"]["passed"] is True
    assert run["pipeline"] == cmp["pipeline"] and "nm-prune{n=2,m=4" in run["pipeline"]
    # the program compare runs on flexcim is the one compile wrote (same cycles, same machine)
    flex = next(r for r in cmp["results"] if r["target"] == "flexcim")
    assert flex["cycles"] == run["results"][0]["cycles"]
    assert cmp["machines"]["flexcim"]["hash"] == run["machines"]["flexcim"]["hash"]
    for res in (run["results"][0], flex):
        assert res["cycles"] == sum(lay["cycles"] for lay in res["layers"])
        assert res["time"] == pytest.approx(res["cycles"] / 500e6, rel=1e-12)
    return run, cmp


def test_mlp_run_and_compare(tmp_path):
    save_example("mlp", tmp_path / "mlp.pt2")
    _run_and_compare(tmp_path, str(tmp_path / "mlp.pt2"), [])


def test_analytic_builtin(tmp_path):
    out = tmp_path / "a.json"
    assert flowc_main(["analytic", "smollm2-135m", "--targets", "flexcim,vegeta", "--nm", "3:4",
                       "--tokens", "16", "--json", str(out)]) == 0
    data = _json(out)
    assert {(r["phase"], r["target"]) for r in data["results"]} == {
        (p, t) for p in ("prefill", "decode") for t in ("flexcim", "vegeta")}
    pats = {lay["pattern"] for r in data["results"] for lay in r["layers"]
            if lay["kind"] == "gemm" and lay["name"] != "lm_head"}  # --nm leaves lm_head dense
    assert pats == {"3:4->dense"}  # neither machine has a pattern that holds 3 of 4
    assert "prefill: runs as dense on flexcim" in data["notes"]


def test_schema_refuses_strings_for_booleans_and_unknown_fields(tmp_path):
    save_example("mlp", tmp_path / "mlp.pt2")
    fcim, out = tmp_path / "m.fcim", tmp_path / "r.json"
    assert flowc_main(["compile", str(tmp_path / "mlp.pt2"), "-o", str(fcim), "-q"]) == 0
    assert flowrun_main([str(fcim), "--json", str(out), "-q"]) == 0
    data = _json(out)
    for broken in ({**data, "check": {**data["check"], "passed": "true"}},
                   {**data, "total_cycles": 1}, {**data, "schema_version": 2}):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)
    jsonschema.Draft202012Validator.check_schema(schema())


@pytest.mark.slow
def test_tiny_llama_run_compare_analytic_eval(tmp_path):
    from flowc.frontend.hf import _tiny_config

    _run_and_compare(tmp_path, "hf:tiny-llama", [])  # compare loads it at the same seq-len
    config = tmp_path / "config.json"
    _tiny_config("llama").to_json_file(str(config))
    out = tmp_path / "a.json"
    assert flowc_main(["analytic", str(config), "--targets", "flexcim", "--nm", "2:4",
                       "--tokens", "8", "--json", str(out)]) == 0
    assert _json(out)["kind"] == "analytic"
    out = tmp_path / "e.json"
    assert flowc_main(["eval", "hf:tiny-llama", "--calib-text", "pydoc", "--calib-windows", "2",
                       "--eval-windows", "2", "--seq-len", "32", "--method", "uniform",
                       "--nm", "2:4", "-q", "--json", str(out)]) == 0
    data = _json(out)
    assert [e["method"] for e in data["evaluations"]] == ["dense", "uniform"]
    assert data["evaluations"][0]["target_sparsity"] is None


def test_report_layer_names_are_the_names_passes_take():
    """nn.Sequential children are `0`, `1`, `2`; the program labels them `_0`.. (assembly
    names start with a letter or `_`), the report gives the passes' names back."""
    import torch
    from torch import nn

    import flowc

    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    model = flowc.load(seq, inputs=torch.randn(4, 16))
    image = flowc.compile(model, "calibrate,nm-prune{n=2,m=4,layers=0},verify-nm,quantize")
    assert {i.name for i in image.layers if i.kind == "gemm"} == {"_0", "_2"}
    layers = {lay.name: lay for lay in flowc.run(image, check=False).result().layers}
    assert layers["0"].pattern == "2:4" and layers["2"].pattern != "2:4"
    assert "_0" not in layers
