"""The import rules of docs/architecture.md, checked by import-linter's contracts in
pyproject.toml: stages in pipeline order, nothing imports cli/, no cycles between folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    assert LINT.exists(), f"{LINT} missing: install the test extra (pip install -e '.[test]')"
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_contracts_hold() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 kept, 0 broken" in r.stdout


def test_contracts_catch_a_stage_importing_a_later_one(tmp_path: Path) -> None:
    """The same contracts on a copy of the package with one forbidden import added: a frontend
    module importing the pass infrastructure (what the calibrate pass did before it moved)."""
    shutil.copytree(ROOT / "flowc", tmp_path / "flowc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "flowc" / "frontend" / "bad.py").write_text("from flowc.passes import base\n")
    r = _lint(tmp_path)
    assert r.returncode == 1
    assert "flowc.frontend is not allowed to import flowc.passes" in r.stdout
    assert "flowc.frontend.bad -> flowc.passes.base" in r.stdout
