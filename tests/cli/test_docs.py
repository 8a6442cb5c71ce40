"""Docs that cannot drift: docs/cli.md's reference block is generated from the argument
parsers; docs/ points only at files in the repository; the README lists every doc."""

from __future__ import annotations

import re
from pathlib import Path

from flowc.cli import docgen

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# repository-relative paths as docs write them: docs/x.md, flowc/a/b.py, tests/..., bench/...
REPO_PATH = re.compile(r"(?<![\w/.-])((?:docs|flowc|tests|bench|examples|scripts|\.ci)/"
                       r"[\w./*<>{}-]*[\w*>}])")
OUTSIDE = ("SPEC.md", "DESIGN.md", "/work/", "../shared", "shared/")


def test_cli_reference_block_is_generated_from_the_parsers():
    committed = docgen.current_block((DOCS / "cli.md").read_text(encoding="utf-8"))
    assert committed == docgen.render(), "regenerate: python -m flowc.cli.docgen docs/cli.md"


def test_every_subcommand_and_option_is_in_cli_md():
    import argparse

    from flowc.cli.main import build_flowc_parser

    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    sub = next(a for a in build_flowc_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        assert f"### `flowc {name}`" in text
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in text or f", {flag}" in text, (name, flag)


def test_docs_point_only_at_files_in_the_repository():
    problems = []
    for md in sorted(DOCS.rglob("*.md")):
        text = md.read_text(encoding="utf-8")
        for m in REPO_PATH.finditer(text):
            path = m.group(1)
            if not any(c in path for c in "*<>{}") and not (ROOT / path).exists():
                problems.append(f"{md.relative_to(ROOT)}: {path} does not exist")
        problems += [f"{md.relative_to(ROOT)}: mentions {o}" for o in OUTSIDE if o in text]
    assert not problems, "\n".join(problems)


def test_the_path_check_catches_a_missing_file():
    assert REPO_PATH.findall("see docs/nope.md and flowc/cli/main.py.") == [
        "docs/nope.md", "flowc/cli/main.py"]
    assert not (ROOT / "docs/nope.md").exists()


def test_readme_lists_every_doc():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(ROOT)) for p in sorted(DOCS.rglob("*.md"))
               if f"`{p.relative_to(ROOT)}`" not in readme]
    assert not missing, f"README.md does not list {missing}"
