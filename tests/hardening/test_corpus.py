"""Walk the seeded corpus of bad inputs (tests/hardening/corpus.py): each case gives its
documented exit code and exactly one line on stderr naming the problem; no exit 70."""

from __future__ import annotations

import pytest
from corpus import Case, cases, good_cases

from flowc.backend.container import to_bytes
from flowc.cli.flowrun import main as flowrun_main


@pytest.fixture(scope="module")
def good(compiled) -> bytes:
    return to_bytes(compiled("mlp", (2, 4), "magnitude"))


def _run(case: Case, tmp_path, capsys) -> tuple[int, list[str]]:
    for name, data in case.files.items():
        (tmp_path / name).write_bytes(data)
    args = [a.replace("{dir}", str(tmp_path)) for a in case.args]
    capsys.readouterr()
    code = flowrun_main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def corpus(good) -> list[Case]:
    return cases(good, seed=0)


def test_corpus_covers_every_class(corpus):
    names = {c.name for c in corpus}
    assert len(names) == len(corpus) >= 60
    for needed in ("bitflip-0", "bzip2-member", "encrypted-flag", "non-utf8-name", "manifest-array",
                   "extends-path", "meta-padded-1mb", "onnx-loop-2e62", "nm-3-4", "loop-1x1",
                   "psum-2e32-cols", "scale-zero", "input-nan", "input-2e40-header"):
        assert needed in names


def test_every_bad_input_is_one_line_with_its_code(corpus, tmp_path_factory, capsys):
    failures = []
    for case in corpus:
        code, err = _run(case, tmp_path_factory.mktemp(case.name), capsys)
        ok = code == case.code and len(err) == 1 and case.needle in err[0] and \
            err[0].startswith("flowrun: error: ")
        if not ok:
            failures.append(f"{case.name}: exit {code} (want {case.code}) {err}")
    assert not failures, "\n".join(failures)


def test_numeric_inputs_that_fit_are_accepted(good, tmp_path_factory, capsys):
    for case in good_cases(good):
        code, err = _run(case, tmp_path_factory.mktemp(case.name), capsys)
        assert (code, err) == (0, []), case.name


def test_a_fifo_never_blocks(good, tmp_path, capsys):
    import os

    os.mkfifo(tmp_path / "pipe.fcim")
    assert flowrun_main([str(tmp_path / "pipe.fcim"), "--no-check", "-q"]) == 4
    assert "not a regular file" in capsys.readouterr().err
    (tmp_path / "m.fcim").write_bytes(good)
    os.mkfifo(tmp_path / "x.npy")
    assert flowrun_main([str(tmp_path / "m.fcim"), "--input", str(tmp_path / "x.npy"),
                         "--no-check", "-q"]) == 2
    assert "not a regular file" in capsys.readouterr().err
