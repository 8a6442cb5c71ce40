"""Resource limits for reading and running untrusted programs, sized for this host.

A `.fcim` or an input array from someone else may declare sizes that would exhaust memory
(a decompression bomb, an `.npy` header of 2**40 elements) or work that never ends (a loop
of 2**32 tiles). Every reader and the program verifier check declared sizes against these
limits *before* allocating or executing. Defaults are a share of the host's physical memory;
flowrun's --max-memory / --max-work raise them (`configure`).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from typing import BinaryIO


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX hosts
        return 8 << 30


@dataclass(frozen=True)
class Limits:
    """member_bytes: one inflated container member or input array; total_bytes: all members
    of a container together; peak_bytes: the verifier's estimate of live buffers at any
    instruction; work: total element operations + MACs the verifier estimates for one run;
    onnx_loop_trips: the largest constant trip count a reference-model Loop may have;
    onnx_seconds: wall-clock time ONNX Runtime may take for the reference check."""

    member_bytes: int
    total_bytes: int
    peak_bytes: int
    work: int
    onnx_loop_trips: int = 1 << 20
    onnx_seconds: float = 600.0


def host_limits() -> Limits:
    """Defaults: half the host's memory for a container or a run's buffers, and 10**13
    operations of work (about an hour of the simulator on this class of machine)."""
    half = _host_memory() // 2
    return Limits(member_bytes=half, total_bytes=half, peak_bytes=half, work=10**13)


_CURRENT: list[Limits] = []


def current() -> Limits:
    if not _CURRENT:
        _CURRENT.append(host_limits())
    return _CURRENT[0]


def configure(**changes: int | float) -> Limits:
    """Replace some limits for this process (flowrun options); returns the new limits."""
    new = replace(current(), **changes)
    _CURRENT[:] = [new]
    return new


def open_regular(path: str | os.PathLike, max_bytes: int, error: type[Exception],
                 label: str) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file of at most `max_bytes`, else
    `error("<label>: reason")`. Opened non-blocking first, so a FIFO never blocks the check."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except OSError as exc:
        raise error(f"{label}: cannot open ({exc.strerror})") from None
    f = os.fdopen(fd, "rb")
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{label}: not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{label}: {st.st_size} bytes, over the limit of {max_bytes}")
    except BaseException:
        f.close()
        raise
    return f
