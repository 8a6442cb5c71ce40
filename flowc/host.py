"""Process-wide settings for fast runs on the host: set once by a program, never on import.

glibc's malloc hands blocks above its mmap threshold (128 kB, adjusted upwards as blocks are
freed) straight back to the kernel when they are freed, and trims the heap top above 128 kB.
A run allocates and frees activation-sized arrays op after op, so each one costs fresh page
faults; on this project's VMs page faults are slow enough that a 512-token SmolLM2 forward
took ~12 s instead of ~1 s, and a 128 x 576 rms_norm 500-690 us instead of 53-85 us. Keeping
blocks up to 32 MB in the heap and trimming only above 1 GB removes that cost; the price is
that freed memory is kept by the process for reuse instead of given back at once.

torch's OpenMP workers wait for the next parallel region in one of two ways, fixed when torch
loads: sleeping (OMP_WAIT_POLICY=PASSIVE), where each region must wake a sleeping worker
(a 128 x 576 rms_norm on two threads took ~500 us, on one 53-85 us), or spinning, which on a
busy machine starves every other process (a Wanda calibration took 50 s instead of 2 s).
`openmp_waiting` chooses: a bounded spin (GOMP_SPINCOUNT) for flowrun on an idle host,
sleeping otherwise.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

MMAP_THRESHOLD = 32 << 20  # bytes: blocks up to this come from the heap (reused)
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before trimming
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
# spins of an idle OpenMP worker before it sleeps, where flowrun spins (libgomp's own default
# is 300,000 when no policy is set): enough to bridge the gaps between a run's torch ops
SPIN_COUNT = 20000


def keep_big_blocks() -> bool:
    """Set glibc's thresholds for this process, the values of MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ when the environment has them (glibc reads those only at start-up,
    so a script that puts them into os.environ later still gets them here), else
    MMAP_THRESHOLD and TRIM_THRESHOLD. Returns whether both were set (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, _env("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)) == 1
    return mallopt(_M_TRIM_THRESHOLD, _env("MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD)) == 1 and done


def _env(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):  # unset, or a value glibc would not parse either
        return default


def openmp_waiting(spin: bool) -> str:
    """How torch's OpenMP workers will wait between parallel regions; call before torch
    loads (later calls change nothing torch sees). An explicit OMP_WAIT_POLICY or
    GOMP_SPINCOUNT in the environment is kept ("as set"). Else, with `spin` on a host where
    other processes leave half the cores free (host_idle), workers spin SPIN_COUNT times
    before they sleep ("bounded spin": one SmolLM2 layer's attention at 2,048 tokens took
    12 % less wall time than with sleeping workers over four alternating pairs; whole
    2,048-token runs, three pairs, 8.7 / 10.2 / 8.5 s against 10.0 / 10.5 / 11.9 s: docs/
    results.md, "Fourth round"); otherwise they sleep at once ("passive")."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return "as set"
    if spin and host_idle():
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        return "bounded spin"
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


def host_idle(samples: int = 10) -> bool:
    """Whether other processes leave at least half the host's cores free now: the kernel's
    count of runnable tasks (/proc/loadavg, less this process's reading thread), median of
    `samples` readings 1 ms apart (the load averages lag by a minute: right after another
    run they still count it); without /proc, the 1-minute load average."""
    cores = os.cpu_count() or 1
    try:
        counts = []
        for _ in range(samples):
            if counts:
                time.sleep(0.001)
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        others = float(sorted(counts)[len(counts) // 2])
    except (OSError, ValueError, IndexError):
        try:
            others = os.getloadavg()[0]
        except OSError:  # no load figures at all: assume a busy host
            return False
    return others < 0.5 * cores


def openmp_wait_mode() -> str:
    """How this process's environment has torch's OpenMP workers wait (libgomp reads it when
    torch loads; openmp_waiting writes its choice there before): for reports."""
    policy, spins = os.environ.get("OMP_WAIT_POLICY", ""), os.environ.get("GOMP_SPINCOUNT")
    if policy:
        return f"OMP_WAIT_POLICY={policy}" + (f", GOMP_SPINCOUNT={spins}" if spins else "")
    return f"spin {spins} times, then sleep" if spins else "libgomp's default (spin, then sleep)"
