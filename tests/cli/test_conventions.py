"""CLI conventions (issue 12 item 3): --version, global flags before or after the subcommand,
a quiet exit on a closed pipe, one test per documented exit code, output paths checked before
any work, output files that honour the umask."""

from __future__ import annotations

import argparse
import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import flowc
from flowc.cli import compile as compile_cmd
from flowc.cli.flowrun import main as flowrun_main
from flowc.cli.guard import EXIT_PIPE, guard
from flowc.cli.main import build_flowc_parser, main
from flowc.frontend.load import HF_PREFIX
from flowc.studies.examples import save_example

CLI = [sys.executable, "-m", "flowc.cli"]
FLOWRUN = [sys.executable, "-m", "flowc.cli.flowrun"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    save_example("mlp", d / "mlp.pt2")
    assert main(["compile", str(d / "mlp.pt2"), "-o", str(d / "mlp.fcim"), "-q"]) == 0
    return d


def one_line(capsys, code: int, rc: int, text: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    assert len(err) == 1 and text in err[0], err


def test_version():
    for cmd, prog in ((CLI, "flowc"), (FLOWRUN, "flowrun")):
        r = subprocess.run([*cmd, "--version"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == f"{prog} {flowc.__version__}"


def test_global_flags_before_or_after_the_subcommand(work, capsys):
    out = work / "ex.pt2"
    for argv in (["-q", "--debug", "-v", "example", "mlp", "-o", str(out)],
                 ["example", "mlp", "-o", str(out), "-q", "--debug", "-v"]):
        from flowc.cli.guard import hoist_global_flags

        parser = build_flowc_parser()
        args = parser.parse_args(hoist_global_flags(argv, ["example"]))
        assert (args.quiet, args.debug, args.verbose) == (True, True, 1)
    # --debug before the subcommand really shows the traceback (the error is re-raised)
    with pytest.raises(Exception, match="no-such-pass"):
        main(["--debug", "compile", str(work / "mlp.pt2"), "-p", "no-such-pass",
              "-o", str(work / "x.fcim")])
    assert main(["-q", "compile", str(work / "mlp.pt2"), "-p", "no-such-pass",
                 "-o", str(work / "x.fcim")]) == 2


def test_closed_pipe_exits_quietly_and_keeps_the_files(work):
    png, js = work / "cmp.png", work / "cmp.json"
    proc = subprocess.Popen([*CLI, "compare", str(work / "mlp.pt2"), "--targets",
                             "flexcim,dcim-dense", "--plot", str(png), "--json", str(js), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is printed (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, EXIT_PIPE)
    assert err == ""  # no traceback, no "internal error"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and js.stat().st_size > 0


# -- one test per exit code (docs/cli.md) ------------------------------------------------------


def test_exit_0_success(work, capsys):
    assert main(["example", "mlp", "-o", str(work / "ok.pt2")]) == 0


def test_exit_1_check_failed(work, capsys):
    """fp32 weights changed consistently (checksums resealed): the program still runs, the
    reference built from those weights disagrees, the check fails."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hardening"))
    from tamper import tamper

    def negate_fp32(members):
        key = sorted(k for k in members if k.endswith(".fvalues.npy"))[0]
        buf = io.BytesIO()
        np.save(buf, -np.load(io.BytesIO(members[key])))
        members[key] = buf.getvalue()

    bad = work / "bad.fcim"
    bad.write_bytes(tamper((work / "mlp.fcim").read_bytes(), negate_fp32))
    assert flowrun_main([str(bad), "-q"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_exit_2_bad_input(work, capsys):
    one_line(capsys, 2, flowrun_main([str(work / "missing.fcim")]), "no such .fcim file")
    one_line(capsys, 2, main(["compile", str(work / "missing.pt2")]),
             "missing.pt2: no such model file")


def test_exit_3_compile_error(work, capsys):
    class Sorts(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sort(x, 1).values

    pt2 = work / "sorts.pt2"
    torch.export.save(torch.export.export(Sorts(), (torch.randn(2, 8),)), str(pt2))
    one_line(capsys, 3, main(["compile", str(pt2), "-o", str(work / "s.fcim"), "-q"]),
             "unsupported op aten.sort.default at node 'sort'")


def test_exit_4_bad_program(work, capsys):
    broken = work / "broken.fcim"
    broken.write_bytes((work / "mlp.fcim").read_bytes()[:1000])
    assert flowrun_main([str(broken), "-q"]) == 4


def test_exit_5_execution_error(work, capsys, monkeypatch):
    """ONNX Runtime stopped by the reference check's wall-clock watchdog. The session waits
    until the watchdog has fired before it runs, so the real terminate path is taken every
    time (on an idle machine the tiny MLP could otherwise finish first)."""
    import flowc.runtime.check as check
    from flowc.backend import limits

    real = check.ort_session

    class AfterTheWatchdog:
        def __init__(self, onnx_bytes: bytes, *args, **kwargs) -> None:
            self.sess = real(onnx_bytes, *args, **kwargs)

        def get_inputs(self):
            return self.sess.get_inputs()

        def run(self, names, feeds, run_options):
            deadline = time.monotonic() + 10.0
            while not run_options.terminate and time.monotonic() < deadline:
                time.sleep(0.001)
            return self.sess.run(names, feeds, run_options)

    monkeypatch.setattr(check, "ort_session", AfterTheWatchdog)
    saved = limits.current()
    try:
        limits.configure(onnx_seconds=0.01)  # the reference check's wall-clock limit
        one_line(capsys, 5, flowrun_main([str(work / "mlp.fcim"), "-q"]), "0.01 s limit")
    finally:
        limits.configure(**{f: getattr(saved, f) for f in saved.__dataclass_fields__})


def test_exit_70_internal_and_130_interrupted(capsys):
    def bug(_args):
        raise ZeroDivisionError("division by zero")

    def interrupted(_args):
        raise KeyboardInterrupt

    one_line(capsys, 70, guard("flowc", bug, argparse.Namespace(debug=False)),
             "internal error: ZeroDivisionError")
    one_line(capsys, 130, guard("flowc", interrupted, argparse.Namespace(debug=False)),
             "interrupted")


# -- output paths -------------------------------------------------------------------------------


def test_missing_output_folder_fails_before_any_work(work, tmp_path):
    # checked before torch loads: a `torch` first on the path that refuses to import would
    # turn any earlier import into a traceback (exit 70) instead of the usage error
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(poison.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    r = subprocess.run([*CLI, "compile", str(work / "mlp.pt2"), "-o",
                        str(work / "nodir" / "x.fcim")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().endswith("does not exist"), r.stderr
    assert "torch" not in r.stderr
    for argv in (["compare", str(work / "mlp.pt2"), "--json", str(work / "no" / "c.json")],
                 ["analytic", "smollm2-135m", "--json", str(work / "no" / "a.json")],
                 ["example", "mlp", "-o", str(work / "no" / "m.pt2")]):
        assert main(argv) == 2


def test_outputs_honour_the_umask(work):
    old = os.umask(0o022)
    try:
        fcim, js = work / "mode.fcim", work / "mode.json"
        assert main(["compile", str(work / "mlp.pt2"), "-o", str(fcim), "-q"]) == 0
        assert flowrun_main([str(fcim), "--json", str(js), "-q"]) == 0
        assert main(["analytic", "smollm2-135m", "--targets", "flexcim", "--tokens", "4",
                     "--phase", "prefill", "--json", str(work / "a.json")]) == 0
        for f in (fcim, js, work / "a.json"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    finally:
        os.umask(old)


def test_the_cli_copy_of_the_hf_prefix_is_the_frontends():
    assert compile_cmd.HF_PREFIX == HF_PREFIX


def test_compile_log_times_lowering_export_and_writing(work, capsys):
    assert main(["compile", str(work / "mlp.pt2"), "-o", str(work / "timed.fcim")]) == 0
    err = capsys.readouterr().err
    for stage in ("lowering", "reference export", "writing"):
        line = next(x for x in err.splitlines() if f"] {stage} done in " in x)
        assert float(line.rsplit(" in ", 1)[1].removesuffix(" s")) >= 0.0


def test_warnings_are_one_line_and_the_format_is_restored(capfd):
    import warnings

    def plugin_warns(_args):
        warnings.warn("cannot load pass plugin 'x' (x:P): ImportError: boom", UserWarning,
                      stacklevel=2)
        return 0

    before = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        def to_stderr(message, category, filename, lineno, file=None, line=None):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = to_stderr  # print, as outside pytest (which records them)
        assert guard("flowc", plugin_warns, argparse.Namespace(debug=False, verbose=0)) == 0
    assert capfd.readouterr().err == ("flowc: warning: cannot load pass plugin 'x' (x:P): "
                                      "ImportError: boom\n")
    assert warnings.formatwarning is before
