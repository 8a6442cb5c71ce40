"""Output paths are checked before any work starts (issue 13): an output that is empty, a
symbolic link, a special file (device, FIFO, directory) or the same file as one of the inputs
is refused with a UsageError (exit 2), so `flowc asm x.s -o x.s` can never replace its source
and `--json /dev/stdout` can never replace a device node."""

from __future__ import annotations

import os
from pathlib import Path

from flowc.errors import UsageError


def check_output(out: str | os.PathLike | None, option: str, *inputs: str | os.PathLike | None) -> None:
    """Refuse `out` (given by `option`) unless it is a new or regular file other than every
    existing path in `inputs`; None (option not given) passes."""
    if out is None:
        return
    text = os.fspath(out)
    if not text:
        raise UsageError(f"{option}: empty path")
    path = Path(text)
    if path.is_symlink():
        raise UsageError(f"{option} {text}: is a symbolic link (give the real path)")
    if not path.exists():
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"{option} {text}: folder {os.fspath(folder)} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {text}: folder {os.fspath(folder)} is not writable")
        return
    if not path.is_file():
        raise UsageError(f"{option} {text}: is not a regular file")
    for source in inputs:
        if source is not None and Path(source).exists() and os.path.samefile(path, source):
            raise UsageError(f"{option} {text}: is the input file {os.fspath(source)}; "
                             "it would be replaced")


def check_input(path: str | os.PathLike, what: str) -> None:
    """A missing input file or a folder given as one is bad input (exit 2, docs/cli.md), not
    a bad program: refused before the reader opens it."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{os.fspath(path)}: no such {what}")
    if p.is_dir():
        raise UsageError(f"{os.fspath(path)}: is a folder, not a {what}")
