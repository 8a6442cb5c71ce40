"""Where parallel work runs: in-process, on a local process pool, or on a Ray cluster.

One interface for every fan-out in flowc (scoring candidate N:M allocations, design-space
sweeps): `executor.map(fn, items, shared=value)` returns `[fn(value, item) for item in items]`
in item order, whatever order the workers finish in.

Why a `shared` value: the expensive state (a captured model and its arrays, hundreds of MB) is
the same for every item, so it is shipped to each worker ONCE, not once per item: through the
pool initializer (kept in a module global of the worker process) or through one `ray.put`
whose object each Ray worker loads once and caches. An executor keeps its workers and the
shared value they hold between `map` calls with the same `shared` object (compared by
identity); `bind(shared)` makes that explicit and returns a handle with `map(fn, items)`.
Shared values are snapshots: after mutating one, call `bind()` again to ship the new state.

`fn(shared, item)` must be picklable, i.e. a function defined at the top level of an
importable module (the serial executor does not pickle, the others check this up front).
Inside `fn`, `worker_scratch()` gives a directory private to the running worker.

Outside this package only flowc.errors is imported: it sits below every stage, so any stage or
command can fan out. Ray is optional (`pip install 'flowc[ray]'`), imported only when asked for
(flowc.executors.cluster). Modules: base (interface, worker side, serial), pool, cluster, progress.
"""

from __future__ import annotations

import os
from typing import Any

from flowc.errors import UsageError
from flowc.executors.base import (
    RAY_INSTALL_HINT,
    Bound,
    Executor,
    Progress,
    SerialExecutor,
    worker_scratch,
)
from flowc.executors.pool import LocalPoolExecutor
from flowc.executors.progress import progress_bar

__all__ = ["RAY_INSTALL_HINT", "Bound", "Executor", "LocalPoolExecutor", "Progress", "RayExecutor",
           "SerialExecutor", "add_executor_arguments", "default_jobs", "executor_from_args",
           "make_executor", "progress_bar", "worker_scratch"]

EXECUTOR_SPECS = "serial, local, ray, ray:ADDRESS or ray://HOST:PORT"


# -- choosing an executor -----------------------------------------------------------------------


def default_jobs() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def make_executor(spec: str | None = None, jobs: int | None = None) -> Executor:
    """The executor named by a `--executor` value and a `-j` value.

    spec: None or "local" (a process pool; jobs None: all CPUs, jobs 1: serial), "serial",
    "ray" (a new local Ray cluster of `jobs` CPUs, None: all), "ray:ADDRESS" or
    "ray://HOST:PORT" (an existing cluster: "ray:auto" is the one started on this machine)."""
    if jobs is not None and jobs < 1:
        raise UsageError(f"-j/--jobs must be >= 1, got {jobs}")
    kind = (spec or "local").strip()
    if kind == "local":
        n = default_jobs() if jobs is None else jobs
        return SerialExecutor() if n == 1 else LocalPoolExecutor(n)
    if kind == "serial":
        if jobs not in (None, 1):
            raise UsageError(f"--executor serial runs one item at a time; -j {jobs} contradicts it")
        return SerialExecutor()
    if kind == "ray" or kind.startswith("ray:"):
        address = None if kind == "ray" else (kind if kind.startswith("ray://") else kind[4:])
        if address == "":
            raise UsageError("--executor ray: empty address after 'ray:'")
        if address is not None and jobs is not None:
            raise UsageError(f"-j {jobs} sets the size of a local Ray cluster; --executor {kind} "
                             "uses the cluster's own CPUs")
        from flowc.executors.cluster import RayExecutor

        return RayExecutor(address=address, num_cpus=jobs)
    raise UsageError(f"--executor {spec!r}: expected {EXECUTOR_SPECS}")


def add_executor_arguments(parser: Any) -> None:
    """The `--executor` / `-j` options every fanning-out command shares (argparse)."""
    parser.add_argument("--executor", metavar="SPEC", default=None,
                        help=f"where parallel work runs: {EXECUTOR_SPECS} (default local: a "
                             "process pool on this machine; ray needs pip install 'flowc[ray]')")
    parser.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                        help="parallel workers (default: all CPUs; 1 runs in-process)")


def executor_from_args(args: Any) -> Executor:
    return make_executor(getattr(args, "executor", None), getattr(args, "jobs", None))


def __getattr__(name: str) -> Any:
    """RayExecutor lives in flowc.executors.cluster (imports Ray); reachable from here lazily."""
    if name == "RayExecutor":
        from flowc.executors.cluster import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'flowc.executors' has no attribute {name!r}")
