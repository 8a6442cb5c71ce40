"""Run-mode rows of a language model carry the pruned model's perplexity, measured by the
compile on held-out windows: the same number `flowc compile --eval-windows` reports."""

from __future__ import annotations

import pytest

from flowc.cli.main import main as flowc_main
from flowc.errors import UsageError
from flowc.executors import SerialExecutor
from flowc.studies.sweep.run import run_sweep
from flowc.studies.sweep.spec import load_spec
from flowc.studies.sweep.store import load_results


def test_eval_windows_is_run_mode_only():
    with pytest.raises(UsageError, match=r"sweep\.eval_windows: run mode only"):
        load_spec({"sweep": {"eval_windows": 2}, "fixed": {"model": "llama-2-7b"}})
    assert load_spec({"sweep": {"mode": "run"}, "fixed": {"model": "mlp"}}
                     ).sweep.eval_windows == 4


@pytest.mark.slow
def test_a_run_mode_row_has_the_perplexity_flowc_compile_reports(tmp_path):
    from flowc.backend.container import load

    spec = {"sweep": {"mode": "run", "eval_windows": 3},
            "fixed": {"model": "hf:tiny-llama"},
            "axes": {"nm": ["dense", "2:4"], "target": ["flexcim", "vegeta"]}}
    with SerialExecutor() as ex:
        run_sweep(spec, tmp_path / "out", executor=ex)
    df = load_results(tmp_path / "out")
    assert (df["status"] == "ok").all() and (df["check"] == "PASSED").all()
    reported = {}
    for nm in ("dense", "2:4"):
        fcim = tmp_path / f"{nm.replace(':', '_')}.fcim"
        args = ["compile", "hf:tiny-llama", "--eval-windows", "3", "-o", str(fcim), "-q"]
        assert flowc_main(args + ([] if nm == "dense" else ["--nm", nm])) == 0
        quality = load(fcim).compile_info["quality"]
        assert quality["windows"] == 3
        reported[nm] = quality["pruned_ppl"]
        rows = df[df["nm"] == nm]
        assert list(rows["perplexity"]) == [reported[nm]] * 2  # every machine: one model
    assert reported["2:4"] != reported["dense"]  # pruning moved it: the value is per model
    mlp = {"sweep": {"mode": "run"}, "fixed": {"model": "mlp"}}
    with SerialExecutor() as ex:
        run_sweep(mlp, tmp_path / "mlp", executor=ex)
    assert load_results(tmp_path / "mlp")["perplexity"].isna().all()  # not a language model


def test_the_shipped_run_mode_example_is_valid():
    from pathlib import Path

    from flowc.studies.sweep.spec import points_of

    spec = load_spec(Path(__file__).parents[2] / "examples" / "sweeps" / "tiny-llama-run.toml")
    points = points_of(spec)
    assert spec.sweep.mode == "run" and spec.sweep.eval_windows == 4 and len(points) == 8
    assert {p.values["target"] for p in points} == {"flexcim", "vegeta"}
    assert "perplexity" in spec.sweep.objectives
