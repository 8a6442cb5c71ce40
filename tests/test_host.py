"""flowc.host.keep_big_blocks: glibc's malloc thresholds set for the process, observed by
where a 4 MB block comes from (the heap below the program break, or its own mapping)."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.sbrk.argtypes = [ctypes.c_size_t], [ctypes.c_long]
if sys.argv[1] == "call":
    from flowc.host import keep_big_blocks
    assert keep_big_blocks()
block = libc.malloc(4 << 20)
print("heap" if block < libc.sbrk(0) else "mapped")
"""


def where(env: dict, call: bool) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, "call" if call else "no"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_big_blocks_come_from_the_heap_and_the_environment_wins():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert where(clean, call=False) == "mapped"  # glibc's default: 4 MB get their own mmap
    assert where(clean, call=True) == "heap"  # 32 MB threshold: reused from the heap
    # a threshold the environment names (here 64 kB, set before or after start) is kept
    assert where({**clean, "MALLOC_MMAP_THRESHOLD_": "65536"}, call=True) == "mapped"


def test_openmp_waiting_spins_only_for_flowrun_on_an_idle_host(monkeypatch):
    """A bounded spin when asked for on an idle host, sleeping workers otherwise, and an
    explicit setting in the environment always kept."""
    from flowc import host

    env: dict[str, str] = {}
    monkeypatch.setattr(host.os, "environ", env)
    monkeypatch.setattr(host, "host_idle", lambda: True)
    assert host.openmp_waiting(spin=True) == "bounded spin"
    assert env == {"GOMP_SPINCOUNT": str(host.SPIN_COUNT)}
    assert host.openmp_waiting(spin=False) == "as set" and len(env) == 1
    env.clear()
    assert host.openmp_waiting(spin=False) == "passive" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env.clear()
    monkeypatch.setattr(host, "host_idle", lambda: False)
    assert host.openmp_waiting(spin=True) == "passive"
    env.clear()
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert host.openmp_waiting(spin=True) == "as set" and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_host_idle_reads_the_runnable_tasks(monkeypatch, tmp_path):
    """Busy when other runnable tasks take half the cores or more (this process's reading
    thread not counted), per the median reading."""
    from flowc import host

    monkeypatch.setattr(host.os, "cpu_count", lambda: 2)
    real_open = open

    def fake(runnable):
        def opener(path, *a, **kw):
            if path == "/proc/loadavg":
                p = tmp_path / "loadavg"
                p.write_text(f"3.00 2.00 1.00 {runnable}/300 12345\n")
                return real_open(p, *a, **kw)
            return real_open(path, *a, **kw)
        return opener

    monkeypatch.setattr("builtins.open", fake(1))
    assert host.host_idle(samples=3)
    monkeypatch.setattr("builtins.open", fake(2))
    assert not host.host_idle(samples=3)


from flowc.host import SPIN_COUNT  # noqa: E402

WIRING = """
import sys
sys.argv[0] = sys.argv[1]
import flowc.host
flowc.host.host_idle = lambda samples=10: True
import os, flowc.cli
print(os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize(("program", "want"), [("/venv/bin/flowrun", f"{SPIN_COUNT} None"),
                                               ("/venv/bin/flowc", "None PASSIVE")])
def test_the_cli_lets_only_flowrun_spin(program, want):
    """Importing the CLI decides before torch loads: the flowrun program spins on an idle
    host, flowc sleeps (the environment of the test has neither variable)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", WIRING, program], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert " ".join(out) == want
