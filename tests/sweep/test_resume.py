"""Resuming: a sweep stopped at any moment (an interrupt in-process, SIGKILL of the `flowc
sweep` process) keeps whole parts only, and `--resume` completes it with every point exactly
once and the same table as an uninterrupted run (timing columns aside)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flowc.executors import SerialExecutor
from flowc.studies.sweep.run import run_sweep
from flowc.studies.sweep.spec import points_of
from flowc.studies.sweep.store import load_results

TIMING = ["elapsed_s", "worker"]
SPEC = {"sweep": {"chunk": 2},
        "fixed": {"model": "smollm2-135m", "tokens": 16},
        "axes": {"target": ["flexcim", "sdp"], "nm": ["2:4", "1:4", "dense"],
                 "macros": [2, 8, 32]}}


class Stop(Exception):
    pass


def test_an_interrupted_sweep_resumes_to_the_same_table(tmp_path):
    with SerialExecutor() as ex:
        run_sweep(SPEC, tmp_path / "full", executor=ex)

        def stop_after_three_parts(done, total):
            if done >= 6:  # three chunks of two stored
                raise Stop

        with pytest.raises(Stop):
            run_sweep(SPEC, tmp_path / "cut", executor=ex, progress=stop_after_three_parts)
        assert len(load_results(tmp_path / "cut")) == 6
        # a temporary part a kill left behind is removed, never read
        (tmp_path / "cut" / "parts" / ".tmp-part-000004.parquet.1").write_bytes(b"PAR1 half")
        summary = run_sweep(SPEC, tmp_path / "cut", executor=ex, resume=True)
    assert summary.stored_before == 6 and summary.evaluated == 12
    full = load_results(tmp_path / "full").drop(columns=TIMING)
    cut = load_results(tmp_path / "cut").drop(columns=TIMING)
    assert cut["key"].is_unique and len(cut) == 18
    assert cut.equals(full)
    assert not list((tmp_path / "cut" / "parts").glob(".tmp-*"))
    with SerialExecutor() as ex:  # resuming a finished sweep evaluates nothing
        again = run_sweep(SPEC, tmp_path / "cut", executor=ex, resume=True)
    assert again.evaluated == 0 and again.stored_before == 18


KILL_SPEC = """\
[sweep]
name = "kill"
mode = "run"
chunk = 1

[fixed]
model = "mlp"
nm = "2:4"

[axes]
macros = [1, 2, 4, 8, 16, 32]
load_overlap = [true, false]
residency = ["streamed", "resident"]
clock_mhz = [250.0, 500.0, 1000.0]
"""


def _parts(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("part-*.parquet")) if (out / "parts").is_dir() else []


def _flowc(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowc.cli", *args]


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_completes_every_point_once(tmp_path):
    """Run mode on the MLP (compile once, then ~40 ms per point, one point per part): the
    driver is killed with SIGKILL once a few parts exist; --resume completes the sweep."""
    spec = tmp_path / "kill.toml"
    spec.write_text(KILL_SPEC)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_flowc("sweep", str(spec), "-o", str(out), "--executor", "serial",
                                   "-q"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(_parts(out)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stored = _parts(out)
    total = len(points_of(spec))
    assert 5 <= len(stored) < total, "the sweep was not killed mid-run"
    for part in stored:  # whole parts only: each one reads back with its one row
        assert pq.read_table(part).num_rows == 1
    res = subprocess.run(_flowc("sweep", str(spec), "-o", str(out), "--resume", "-q",
                                "--executor", "serial"), env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"already stored (resume): {len(stored)}" in res.stdout
    df = load_results(out)
    assert len(df) == total and df["key"].is_unique and list(df["point"]) == list(range(total))
    assert (df["status"] == "ok").all() and (df["check"] == "PASSED").all()
    with SerialExecutor() as ex:
        run_sweep(spec, tmp_path / "straight", executor=ex)
    straight = load_results(tmp_path / "straight").drop(columns=TIMING)
    assert df.drop(columns=TIMING).equals(straight)


def test_a_pruned_sweep_resumes_to_the_same_decisions(tmp_path):
    spec = {"sweep": {"chunk": 4, "prune": True},
            "fixed": {"model": "llama-2-7b", "tokens": 64},
            "axes": {"target": ["flexcim", "dcim-dense", "vegeta"], "nm": ["2:4", "dense"],
                     "macros": [4, 16, 64]}}
    with SerialExecutor() as ex:
        whole = run_sweep(spec, tmp_path / "full", executor=ex)
        assert whole.skipped > 0  # the bounds do prune this grid

        def stop(done, total):
            if done > whole.skipped:  # the skipped rows, then one chunk of evaluated points
                raise Stop

        with pytest.raises(Stop):
            run_sweep(spec, tmp_path / "cut", executor=ex, progress=stop)
        assert whole.skipped < len(load_results(tmp_path / "cut")) < 18
        run_sweep(spec, tmp_path / "cut", executor=ex, resume=True)
    full = load_results(tmp_path / "full").drop(columns=TIMING)
    cut = load_results(tmp_path / "cut").drop(columns=TIMING)
    assert cut.equals(full) and len(cut) == 18
    skipped = full[full["status"] == "skipped"]
    assert skipped["reason"].str.startswith("lower bound").all() and skipped["cycles"].isna().all()
