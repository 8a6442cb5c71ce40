"""CLI hardening (issue 13): outputs that would replace an input, symlinks and special files
are refused before any work; assembly is read as UTF-8 bytes; `--verify`; a signal always
ends with 128 + its number, even when a library swallows the exception it raised."""

from __future__ import annotations

import argparse
import os
import signal

import pytest

from flowc import isa
from flowc.backend.container import save
from flowc.cli.guard import guard
from flowc.cli.main import main as flowc_main


@pytest.fixture(scope="module")
def fcim(compiled, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "m.fcim"
    save(compiled("mlp", (2, 4), "magnitude"), path)
    return path


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_outputs_that_replace_an_input_are_refused(fcim, tmp_path, capsys):
    src = tmp_path / "x.s"
    src.write_text("halt\n")
    before = fcim.read_bytes()
    for argv in (["asm", str(src), "-o", str(src)], ["disasm", str(fcim), "-o", str(fcim)],
                 ["compile", str(fcim), "-o", str(fcim), "-q"]):
        assert flowc_main(argv) == 2
        err = _err(capsys)
        assert len(err) == 1 and "would be replaced" in err[0], err
    assert src.read_text() == "halt\n" and fcim.read_bytes() == before


def test_symlink_special_and_empty_outputs_are_refused(fcim, tmp_path, capsys):
    (tmp_path / "target.s").write_text("x")
    os.symlink(tmp_path / "target.s", tmp_path / "link.s")
    os.mkfifo(tmp_path / "fifo.s")
    for out, needle in ((tmp_path / "link.s", "symbolic link"), (tmp_path / "fifo.s", "regular"),
                        (tmp_path, "regular"), ("", "empty path")):
        assert flowc_main(["disasm", str(fcim), "-o", str(out)]) == 2
        assert needle in _err(capsys)[0]
    assert (tmp_path / "target.s").read_text() == "x"


def test_asm_reads_bytes_and_verifies_against_an_fcim(fcim, tmp_path, capsys):
    bad = tmp_path / "bad.s"
    bad.write_bytes(b"halt ; \xe9\n")
    assert flowc_main(["asm", str(bad)]) == 4
    assert _err(capsys)[0].endswith("bad.s:1:8: error: not UTF-8 text (byte 0xe9)")
    text = tmp_path / "m.s"
    assert flowc_main(["disasm", str(fcim), "--verify", "-o", str(text)]) == 0
    assert flowc_main(["asm", str(text), "--verify", str(fcim), "-o", str(tmp_path / "m.bin")]) == 0
    capsys.readouterr()
    text.write_text(text.read_text().replace("b=@fc1.bias", "b=@nope", 1))
    assert flowc_main(["asm", str(text), "--verify", str(fcim), "-o", str(tmp_path / "x.bin")]) == 4
    err = _err(capsys)
    assert len(err) == 1 and "(v.bias) operand b: tensor @nope is not in the image" in err[0]
    assert not (tmp_path / "x.bin").exists()
    assert isa.decode((tmp_path / "m.bin").read_bytes()).instructions[-1].mnemonic == "halt"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_swallowed_signal_still_ends_with_its_code(sig, code, capsys):
    def handler(args):
        try:
            os.kill(os.getpid(), sig)
            signal.sigtimedwait([], 0.05)
        except BaseException:  # a library that swallows everything
            pass
        return 0

    before = signal.getsignal(signal.SIGTERM)  # (a library run earlier may have set one)
    assert guard("flowc", handler, argparse.Namespace()) == code
    assert "interrupted" in _err(capsys)[0]
    assert signal.getsignal(signal.SIGTERM) == before  # guard put the handler back


def test_asm_and_disasm_never_wait_on_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "p.s")
    os.mkfifo(tmp_path / "p.bin")
    assert flowc_main(["asm", str(tmp_path / "p.s"), "-o", str(tmp_path / "o.bin")]) == 2
    assert "not a regular file" in _err(capsys)[0]
    assert flowc_main(["disasm", str(tmp_path / "p.bin")]) == 2
    assert "not a regular file" in _err(capsys)[0]


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    from flowc.backend import container

    real_replace = os.replace

    def replace_after_signal(src, dst):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.05)  # the handler runs here, before the rename
        real_replace(src, dst)

    monkeypatch.setattr(container.os, "replace", replace_after_signal)

    def handler(args):
        container.write_atomic(tmp_path / "out.json", b"{}" * 1000)
        return 0

    assert guard("flowrun", handler, argparse.Namespace()) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_flowrun_json_is_checked_before_running(fcim, tmp_path, capsys):
    from flowc.cli.flowrun import main as flowrun_main

    os.symlink(tmp_path / "real.json", tmp_path / "link.json")
    before = fcim.read_bytes()
    for out, needle in (("", "empty path"), (str(fcim), "would be replaced"),
                        (str(tmp_path / "link.json"), "symbolic link")):
        assert flowrun_main([str(fcim), "--no-check", "-q", "--json", out]) == 2
        err = _err(capsys)
        assert len(err) == 1 and needle in err[0], err
    assert fcim.read_bytes() == before and not (tmp_path / "real.json").exists()
