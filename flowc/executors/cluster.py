"""The Ray executor: the same `map` contract as flowc.executors, on a Ray cluster.

Kept apart so that `import flowc.executors` never needs Ray; Ray itself is imported only when
a RayExecutor is built (an optional extra: `pip install 'flowc[ray]'`).

Work runs as plain Ray tasks (one per item, one CPU each): Ray does the scheduling, the
transfer and the retries of crashed workers. The shared value is `ray.put` once per binding;
each task receives its ObjectRef wrapped in a list (so Ray does not resolve it per task) and
the worker process loads it on its first item and keeps it, like a pool worker's initializer.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flowc.errors import UsageError, WorkerError
from flowc.executors.base import (
    _WORKER,
    RAY_INSTALL_HINT,
    Bound,
    Progress,
    _BindingBase,
    _check_picklable,
    _ensure_open,
    _ExecutorBase,
    _load_binding,
    _new_scratch_root,
    _report,
    _run_item,
    _tag,
)

WINDOW_PER_CPU = 2  # tasks in flight per cluster CPU (RayExecutor's imap_unordered)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL_HINT}"
                         ) from None
    return ray


def _ray_item(fn: Callable[[Any, Any], Any], index: int, item: Any, box: list[Any], key: str,
              scratch_name: str) -> Any:
    """Body of every Ray task: load the binding's shared value once per worker, run the item."""
    if _WORKER.key != key:
        import ray

        shared = ray.get(box[0]) if box else None
        _load_binding(key, shared, os.path.join(tempfile.gettempdir(), scratch_name), threads=1)
    return _run_item(fn, index, item)


def _import_modules(modules: tuple[str, ...]) -> int:
    """A prestart task: import what the items will need (see RayExecutor.prestart)."""
    import contextlib
    import importlib

    for name in modules:
        with contextlib.suppress(ImportError):  # the first real item reports it
            importlib.import_module(name)
    return os.getpid()


class RayExecutor(_ExecutorBase):
    """Tasks on a Ray cluster: a new local one (address None; `num_cpus` CPUs, None: all) or an
    existing one ("auto", "HOST:PORT", "ray://HOST:PORT"; its nodes need flowc installed).

    Ray workers import `fn` by its module name; besides installed packages they see the
    driver's working directory and script directory. Code elsewhere needs Ray's own means:
    `runtime_env` (e.g. {"working_dir": ...} or {"env_vars": {"PYTHONPATH": ...}}; workers
    with a runtime env start fresh, ~4 s here) or ray.cloudpickle.register_pickle_by_value.

    A cluster this executor started is shut down by close(); one that was already connected
    in this process (ray.init called by the caller) is left running."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, *,
                 runtime_env: dict[str, Any] | None = None) -> None:
        super().__init__()
        if address is not None and num_cpus is not None:
            raise UsageError(f"executor ray: num_cpus sizes a new local cluster; the cluster at "
                             f"{address!r} has its own CPUs")
        self._ray = _import_ray()
        self.address, self.num_cpus, self.runtime_env = address, num_cpus, runtime_env
        self.workers: int | None = None  # the cluster's CPUs, known once connected
        self._owns_cluster = False
        self._task: Any = None
        self._warm: list[Any] = []  # prestart tasks (kept so their refs live until close)

    def connect(self) -> None:
        """Start or join the cluster (done by the first bind/map; explicit to time it)."""
        ray = self._ray
        if not ray.is_initialized():
            # Ray would otherwise report usage statistics over the network
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": False,
                                      "logging_level": logging.WARNING,
                                      "runtime_env": self.runtime_env}
            if self.address is None:
                # Ray starts workers at nice 15 (its daemons first); a cluster started for one
                # job runs them at the caller's priority, as a local pool's workers run, so on
                # a machine shared with other jobs the two executors compete on equal terms
                kwargs.update(num_cpus=self.num_cpus, include_dashboard=False,
                              _system_config={"worker_niceness": 0})
            try:
                ray.init(**kwargs)
            except (ConnectionError, ValueError) as exc:
                where = self.address or "a new local cluster"
                raise UsageError(f"executor ray: cannot start/join {where}: {exc}") from None
            self._owns_cluster = True
        if self._task is None:
            self._task = ray.remote(num_cpus=1)(_ray_item)
        self.workers = int(ray.cluster_resources().get("CPU", 0))

    def prestart(self, modules: Iterable[str] = ()) -> None:
        """Have every CPU's worker process import `modules` now, without waiting for it: a
        caller that prestarts right after `connect()` and then prepares its work (building
        items, reading files) overlaps the workers' imports with that, instead of paying them
        on the first item. The tasks' results are never read; a failed import shows again,
        with its traceback, in the first real item."""
        self.connect()
        warm = self._ray.remote(num_cpus=1)(_import_modules)
        self._warm = [warm.remote(tuple(modules)) for _ in range(max(self.workers or 1, 1))]

    def _bind(self, shared: Any) -> Bound:
        self.connect()
        return _RayBinding(self, shared)

    def close(self) -> None:
        super().close()
        self._warm = []
        if self._owns_cluster:
            self._ray.shutdown()
            self._owns_cluster = False


class _RayBinding(_BindingBase):
    def __init__(self, owner: RayExecutor, shared: Any) -> None:
        self.shared, self.closed, self._owner = shared, False, owner
        self.key, root = _new_scratch_root("ray")
        self.scratch_name = os.path.basename(root)
        try:
            self._box = [] if shared is None else [owner._ray.put(shared)]
        except Exception as exc:
            raise UsageError(f"executor ray: the shared value ({type(shared).__name__}) cannot "
                             f"be stored in the object store: {exc}") from None

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
            progress: Progress | None = None) -> list[Any]:
        items = list(items)
        results: list[Any] = [None] * len(items)
        _report(progress, 0, len(items))
        for done, (i, value) in enumerate(self.imap_unordered(fn, items), 1):
            results[i] = value
            _report(progress, done, len(items))
        return results

    def imap_unordered(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]
                       ) -> Iterator[tuple[int, Any]]:
        """(index, result) as tasks finish (ray.wait). Items are taken from `items` as they
        are sent, at most WINDOW_PER_CPU tasks per cluster CPU in flight (enough to keep every
        worker busy while results travel back), so a lazy iterable is read only as fast as the
        cluster works through it (a sweep's driver takes chunks from the same queue). A
        failure, or the consumer closing the generator, cancels the tasks not finished."""
        _ensure_open(self)
        _check_picklable(fn, "ray")
        owner = self._owner
        ray, task = owner._ray, owner._task

        def send(i: int, item: Any) -> Any:
            return task.remote(fn, i, item, self._box, self.key, self.scratch_name)

        window = WINDOW_PER_CPU * max(owner.workers or 1, 1)
        return _stream_refs(ray, enumerate(items), send, window)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._box = []  # drop the ObjectRef: Ray frees the object once no task holds it
        # the local part of the scratch space (remote nodes' workers drop theirs on rebinding)
        shutil.rmtree(os.path.join(tempfile.gettempdir(), self.scratch_name), ignore_errors=True)


def _stream_refs(ray: Any, items: Iterator[tuple[int, Any]], send: Callable[[int, Any], Any],
                 window: int) -> Iterator[tuple[int, Any]]:
    index: dict[Any, int] = {}
    pending: list[Any] = []

    def refill() -> None:
        while len(pending) < window:
            nxt = next(items, None)
            if nxt is None:
                return
            ref = send(*nxt)
            index[ref] = nxt[0]
            pending.append(ref)

    try:
        refill()
        while pending:
            ready, pending[:] = ray.wait(pending, num_returns=1)
            if pending:  # collect whatever else finished meanwhile in one go
                more, pending[:] = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            refill()  # the next tasks go out before these results are handed on
            for ref in sorted(ready, key=index.__getitem__):
                i = index.pop(ref)
                yield i, _get(ray, ref, i)
    finally:
        for ref in pending:  # the first failure cancels what has not finished
            ray.cancel(ref)


def _get(ray: Any, ref: Any, i: int) -> Any:
    """One task's result; its exception re-raised as the original type with the item index."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise _tag(cause, i) from err
        raise WorkerError(f"item {i}: {err}") from None
    except ray.exceptions.RayError as err:
        raise WorkerError(f"item {i}: the Ray task failed: {type(err).__name__}: {err}") from None
