"""Running sweeps: a point equals `flowc analytic --json` field by field; serial, local pool and
Ray give the same table; run mode equals lowering and running each point's machine directly;
the executors stream results; the results directory refuses to be overwritten."""

from __future__ import annotations

import json

import pytest

from flowc.cli.main import main as flowc_main
from flowc.errors import UsageError
from flowc.executors import LocalPoolExecutor, SerialExecutor
from flowc.studies.results import machine_entry
from flowc.studies.sweep.run import run_sweep
from flowc.studies.sweep.spec import points_of
from flowc.studies.sweep.store import load_results

TIMING = ["elapsed_s", "worker"]

SPEC = {"sweep": {"name": "small", "chunk": 3},
        "fixed": {"model": "smollm2-135m", "tokens": 32},
        "axes": {"target": ["flexcim", "dcim-dense"], "nm": ["2:4", "dense"],
                 "macros": [4, 16], "macro.act_bw_bits": [512, 2048]}}


def _square(shared, x):  # top level: sent to pool workers by reference
    return shared + x * x


def table(out):
    return load_results(out).drop(columns=TIMING)


@pytest.mark.parametrize("phase, nm", [("prefill", "2:4"), ("decode", "1:8"), ("prefill", "dense")])
def test_a_point_equals_flowc_analytic_json_field_by_field(tmp_path, phase, nm):
    spec = {"fixed": {"model": "llama-2-7b", "tokens": 48, "kv_len": 96, "phase": phase,
                      "nm": nm},
            "axes": {"target": ["vegeta"], "macros": [8], "macro.act_bw_bits": [512],
                     "energy.dram_read.pj": [3.0]}}
    df = load_results_after(spec, tmp_path / "out")
    row = df.iloc[0]
    (point,) = points_of(spec)
    machine_file = tmp_path / "machine.json"  # the same machine, for the CLI
    machine_file.write_text(json.dumps(point.machine.to_dict()))
    args = ["analytic", "llama-2-7b", "--targets", str(machine_file), "--phase", phase,
            "--tokens", "48", "--kv-len", "96", "--json", str(tmp_path / "a.json"), "-q"]
    if nm != "dense":
        args += ["--nm", nm]
    assert flowc_main(args) == 0
    report = json.loads((tmp_path / "a.json").read_text())
    (res,) = report["results"]
    assert row["status"] == "ok"
    assert row["cycles"] == res["cycles"]
    assert row["latency_s"] == res["time"]
    assert row["energy_pj"] == res["energy"]
    assert row["edp_pj_s"] == res["energy"] * res["time"]
    assert row["macs"] == res["macs"]
    assert row["setup_cycles"] == res["setup_cycles"]
    assert row["setup_energy_pj"] == res["setup_energy"]
    by_kind = {k: sum(lay["cycles"] for lay in res["layers"] if lay["kind"] == k)
               for k in ("gemm", "attention")}
    assert row["gemm_cycles"] == by_kind["gemm"] and row["attention_cycles"] == by_kind["attention"]
    assert row["gemm_cycles"] + row["attention_cycles"] == row["cycles"]
    assert row["machine_hash"] == report["machines"]["vegeta"]["hash"]
    assert row["machine_hash"] == machine_entry(point.machine.to_dict())["hash"]
    assert row["tokens"] == 48 and row["phase"] == phase


def load_results_after(spec, out):
    with SerialExecutor() as ex:
        run_sweep(spec, out, executor=ex)
    return load_results(out)


def test_serial_and_local_pool_give_the_same_table(tmp_path):
    with SerialExecutor() as ex:
        s1 = run_sweep(SPEC, tmp_path / "serial", executor=ex)
    with LocalPoolExecutor(2) as ex:
        s2 = run_sweep(SPEC, tmp_path / "pool", executor=ex)
    a, b = table(tmp_path / "serial"), table(tmp_path / "pool")
    assert len(a) == 16 and list(a["point"]) == list(range(16))
    assert (a["status"] == "ok").all()
    assert a.equals(b)
    assert s1.evaluated == s2.evaluated == 16 and s2.chunks == 6  # 16 points in chunks of 3
    assert len(list((tmp_path / "pool" / "parts").glob("part-*.parquet"))) == 6
    assert a.attrs["units"]["energy_pj"] == "pJ"
    assert a.attrs["sweep"]["axes"] == list(SPEC["axes"])
    # more bandwidth never costs cycles; the dense baseline never beats FlexCiM 2:4 on cycles
    key = ["target", "nm", "macros"]
    for _, g in a.groupby(key):
        assert g.sort_values("macro.act_bw_bits")["cycles"].is_monotonic_decreasing


@pytest.mark.slow
def test_ray_gives_the_same_table_as_the_local_pool(tmp_path):
    """The first sweep starts the cluster (the driver evaluates points meanwhile: here, with
    16 points, likely all of them); the second runs on the cluster already up, every point
    on a Ray worker."""
    import os

    import ray  # noqa: F401  (the ray extra is part of the test install: no skip)

    from flowc.executors.cluster import RayExecutor

    with LocalPoolExecutor(2) as ex:
        run_sweep(SPEC, tmp_path / "pool", executor=ex)
    with RayExecutor(num_cpus=2) as ex:
        first = run_sweep(SPEC, tmp_path / "ray", executor=ex)
        again = run_sweep(SPEC, tmp_path / "ray-up", executor=ex)
    assert first.executor == again.executor == "ray"
    assert first.evaluated == again.evaluated == 16 and again.head_start == 0
    workers = set(load_results(tmp_path / "ray-up")["worker"])
    assert not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert table(tmp_path / "pool").equals(table(tmp_path / "ray"))
    assert table(tmp_path / "pool").equals(table(tmp_path / "ray-up"))


def test_errors_are_rows_and_an_existing_directory_is_not_overwritten(tmp_path):
    spec = {"fixed": {"model": "bert-large", "tokens": 16},
            "axes": {"phase": ["prefill", "decode"]}}
    with SerialExecutor() as ex:
        summary = run_sweep(spec, tmp_path / "out", executor=ex)
        assert summary.ok == 1 and summary.errors == 1
        with pytest.raises(UsageError, match="exists and is not empty: pass --resume"):
            run_sweep(spec, tmp_path / "out", executor=ex)
        other = dict(spec, fixed={"model": "bert-large", "tokens": 17})
        with pytest.raises(UsageError, match="holds a different sweep"):
            run_sweep(other, tmp_path / "out", executor=ex, resume=True)
    df = load_results(tmp_path / "out")
    err = df[df["status"] == "error"].iloc[0]
    assert err["phase"] == "decode" and "decode does not apply to an encoder" in err["reason"]
    assert df[df["status"] == "error"]["cycles"].isna().all()


def test_the_cli_runs_a_spec_file(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('[sweep]\nname = "cli"\n[fixed]\nmodel = "smollm2-135m"\ntokens = 16\n'
                    '[axes]\nmacros = [4, 8]\n')
    assert flowc_main(["sweep", str(spec), "-o", str(tmp_path / "out"), "-j", "1", "-q"]) == 0
    assert "evaluated 2 (2 ok, 0 errors)" in capsys.readouterr().out
    assert (tmp_path / "out" / "spec.toml").read_text() == spec.read_text()
    assert list(load_results(tmp_path / "out")["macros"]) == [4, 8]


@pytest.mark.parametrize("make", [SerialExecutor, lambda: LocalPoolExecutor(2)])
def test_imap_unordered_streams_every_item_once(make):
    with make() as ex:
        got = dict(ex.imap_unordered(_square, range(20), shared=1))
        assert got == {i: 1 + i * i for i in range(20)}
        assert ex.map(_square, range(5), shared=1) == [1, 2, 5, 10, 17]


@pytest.mark.slow
def test_run_mode_equals_lowering_and_running_each_machine(tmp_path):
    """Run mode ships one image per (model, nm, geometry) and prices it with each point's
    machine; this checks that against lowering for the point's machine itself."""
    from flowc.backend.lower import lower
    from flowc.runtime.session import run_image
    from flowc.studies.compiler import CompileOptions, compile_captured
    from flowc.studies.sweep.point import compile_images, load_run_model

    spec = {"sweep": {"mode": "run"}, "fixed": {"model": "mlp", "nm": "2:4"},
            "axes": {"macros": [4, 16], "macro.rows": [16, 32], "load_overlap": [True, False]}}
    df = load_results_after(spec, tmp_path / "out")
    assert (df["status"] == "ok").all() and (df["check"] == "PASSED").all()
    points = points_of(spec)
    assert len(compile_images("mlp", "2:4", [p.machine for p in points])) == 2  # two geometries
    cap = load_run_model("mlp")
    compile_captured(cap, CompileOptions(nm=(2, 4), reference=False), progress=None)
    for p, (_, row) in zip(points, df.iterrows(), strict=True):
        image = lower(cap, p.machine, keep_fp32=True)
        rep = run_image(image, [x.detach().numpy() for x in cap.example_inputs], check=False)
        assert row["cycles"] == rep.total_cycles, p.describe()
        assert row["energy_pj"] == pytest.approx(rep.total_energy_pj, rel=1e-12)
        assert row["setup_cycles"] == rep.setup_cycles


def test_the_python_api_returns_the_stored_table(tmp_path):
    import flowc

    spec = {"fixed": {"model": "smollm2-135m", "tokens": 8}, "axes": {"macros": [2, 4, 8]}}
    df = flowc.sweep(spec, tmp_path / "out", executor="serial")
    assert list(df["macros"]) == [2, 4, 8] and (df["status"] == "ok").all()
    assert df.drop(columns=TIMING).equals(table(tmp_path / "out"))
    # fewer macros never make a streamed machine faster
    assert df["cycles"].is_monotonic_decreasing


def test_two_drivers_cannot_write_one_directory(tmp_path):
    from flowc.studies.sweep.spec import load_spec
    from flowc.studies.sweep.store import ResultStore

    spec = load_spec({"fixed": {"model": "smollm2-135m"}, "axes": {"macros": [2]}})
    points = points_of(spec)
    first = ResultStore.open(tmp_path / "out", spec, points, "h", resume=False)
    with pytest.raises(UsageError, match="another flowc sweep is writing to this directory"):
        ResultStore(tmp_path / "out", first.types)
    first.close()
    ResultStore(tmp_path / "out", first.types).close()  # free again once closed


def test_the_cli_exits_6_after_storing_every_row_when_some_points_are_errors(tmp_path, capsys):
    """Error rows do not stop the sweep, but the exit code says so (docs/cli.md: 6), after
    the rows are stored and the summary printed; a resume of that sweep still reports them."""
    from flowc.errors import POINT_ERRORS

    spec = tmp_path / "s.toml"
    spec.write_text('[fixed]\nmodel = "bert-large"\ntokens = 16\n'
                    '[axes]\nphase = ["prefill", "decode"]\nmacros = [4, 8]\n')
    out = tmp_path / "out"
    assert POINT_ERRORS == 6
    assert flowc_main(["sweep", str(spec), "-o", str(out), "-j", "1", "-q"]) == POINT_ERRORS
    printed = capsys.readouterr().out
    assert "evaluated 4 (2 ok, 2 errors)" in printed and "decode does not apply" in printed
    df = load_results(out)
    assert sorted(df["status"]) == ["error", "error", "ok", "ok"]
    assert flowc_main(["sweep", str(spec), "-o", str(out), "-j", "1", "-q", "--resume"]) == 6
    assert "already stored (resume): 4 (2 errors)" in capsys.readouterr().out
    ok = tmp_path / "ok.toml"
    ok.write_text('[fixed]\nmodel = "bert-large"\ntokens = 16\n[axes]\nmacros = [4, 8]\n')
    assert flowc_main(["sweep", str(ok), "-o", str(tmp_path / "ok"), "-j", "1", "-q"]) == 0


class _StartingCluster(SerialExecutor):
    """A serial executor that starts like Ray: `connect` (must be the main thread, as
    ray.init must) then `prestart`; records what ran where. `connect` returns once
    `ready` is set (when given): the test decides how long the cluster takes to start."""

    def __init__(self, ready=None):
        import threading

        super().__init__()
        self.workers, self.calls, self.points = None, [], []
        self.ready, self.submitted = ready, threading.Event()

    def connect(self):
        import threading

        assert threading.current_thread() is threading.main_thread()
        self.calls.append("connect")
        assert self.ready is None or self.ready.wait(60)
        self.workers = 1

    def prestart(self, modules):
        self.calls.append(("prestart", tuple(modules)))

    def imap_unordered(self, fn, items, *, shared=None):
        items = list(items)
        self.points += [p.index for chunk in items for p in chunk]
        self.submitted.set()
        return super().imap_unordered(fn, items, shared=shared)


def test_the_driver_evaluates_points_while_a_cluster_starts(tmp_path, monkeypatch):
    """While `connect` runs (ray.init), a helper thread builds the points, opens the store
    and evaluates chunks in the driver; the chunks it has not taken when the cluster is up
    go to the executor: every point exactly once, the same table as the serial executor."""
    import threading

    from flowc.studies.sweep import run as run_module

    built_on, head_chunks = [], []
    ready = threading.Event()
    ex = _StartingCluster(ready)
    real_points, real_chunk = run_module.points_of, run_module.evaluate_chunk

    def points_spy(spec):
        built_on.append(threading.current_thread().name)
        return real_points(spec)

    def chunk_spy(shared, chunk):  # the cluster is "up" once the driver holds its 3rd chunk,
        if threading.current_thread() is not threading.main_thread():  # which it finishes
            head_chunks.append([p.index for p in chunk])  # after the rest went to the executor
            if len(head_chunks) == 3:
                ready.set()
                assert ex.submitted.wait(60)
        return real_chunk(shared, chunk)

    monkeypatch.setattr(run_module, "points_of", points_spy)
    monkeypatch.setattr(run_module, "evaluate_chunk", chunk_spy)
    summary = run_sweep(SPEC, tmp_path / "out", executor=ex)
    assert built_on == ["flowc-sweep-head-start"] and summary.ok == summary.evaluated == 16
    assert ex.calls == ["connect", ("prestart", run_module.WORKER_MODULES)]
    # chunks of 3 (the spec's): 3 in the driver, the 7 points not taken by then on the executor
    assert head_chunks == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and summary.head_start == 9
    assert ex.points == list(range(9, 16)) and summary.chunks == 3  # the executor's: 3, 3, 1
    assert "of which 9 in the driver while the serial executor started" in summary.render()
    with SerialExecutor() as serial:
        run_sweep(SPEC, tmp_path / "serial", executor=serial)
    assert table(tmp_path / "out").equals(table(tmp_path / "serial"))
    bad = {"fixed": {"model": "llama-2-7b"}, "axes": {"macro.rows": [32, 48]}}
    with pytest.raises(UsageError, match=r"point 1 .*macro\.rows"):
        run_sweep(bad, tmp_path / "bad", executor=_StartingCluster())
    assert not (tmp_path / "bad").exists()  # refused before the results directory exists


def test_chunks_are_cut_as_taken_and_shrink_towards_the_end():
    """Analytic points: HEAD_CHUNK at a time for the driver while the executor starts; once
    it is up the driver takes none, and the executor's chunks are a quarter of what is left
    per worker (at most MAX_CHUNK, at least HEAD_CHUNK // 4), every point exactly once."""
    from flowc.studies.sweep import run as run_module
    from flowc.studies.sweep.spec import load_spec, points_of

    spec = load_spec({"fixed": {"model": "llama-2-7b", "phase": "prefill"},
                      "axes": {"macros": [4, 8, 16, 32], "tokens": list(range(16, 4001, 16))}})
    head = run_module._HeadStart(spec, "unused", False, None, print, 0.0)
    head._todo = points_of(spec)
    head._prepared.set()
    assert len(head.take(driver=True)) == run_module.HEAD_CHUNK
    head.executor_up(2)
    assert head.take(driver=True) is None  # the driver stops once the executor is up
    chunks = list(iter(head.take, None))
    sizes = [len(c) for c in chunks]
    assert [p.index for c in chunks for p in c] == list(range(run_module.HEAD_CHUNK, 1000))
    assert sizes[0] == 100 and sizes == sorted(sizes, reverse=True)  # 800 left / (4 x 2)
    assert set(sizes[:-1]) >= {50} and min(sizes[:-1]) == run_module.HEAD_CHUNK // 4
