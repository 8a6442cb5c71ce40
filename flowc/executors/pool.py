"""The local process pool executor (concurrent.futures.ProcessPoolExecutor)."""

from __future__ import annotations

import multiprocessing
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from flowc.errors import UsageError, WorkerError
from flowc.executors.base import (
    Bound,
    Progress,
    _BindingBase,
    _check_picklable,
    _dumps_shared,
    _ensure_open,
    _ExecutorBase,
    _new_scratch_root,
    _pool_init,
    _report,
    _run_item,
    _tag,
)

# -- local process pool -------------------------------------------------------------------------


class LocalPoolExecutor(_ExecutorBase):
    """`jobs` worker processes on this machine (concurrent.futures.ProcessPoolExecutor).

    Workers are started with 'spawn' by default, not 'fork': forking a parent that has torch's
    OpenMP/intra-op thread pools (or any other thread) running copies locks held by threads
    that do not exist in the child, which can deadlock; spawn starts clean interpreters and
    behaves the same on every OS. 'forkserver' (forks from a clean server process) is accepted
    too. Each worker pins torch to `threads_per_worker` threads."""

    name = "local"

    def __init__(self, jobs: int, *, start_method: str = "spawn", threads_per_worker: int = 1):
        super().__init__()
        if jobs < 1:
            raise UsageError(f"executor local: jobs must be >= 1, got {jobs}")
        if start_method not in ("spawn", "forkserver"):
            raise UsageError(f"executor local: start method {start_method!r}: use 'spawn' or "
                             "'forkserver' ('fork' is unsafe once torch has started threads)")
        self.workers, self.start_method, self.threads = jobs, start_method, threads_per_worker

    def _bind(self, shared: Any) -> Bound:
        return _PoolBinding(self, shared, _dumps_shared(shared, self.name))


class _PoolBinding(_BindingBase):
    def __init__(self, owner: LocalPoolExecutor, shared: Any, payload: bytes) -> None:
        self.shared, self.closed, self._owner, self._payload = shared, False, owner, payload
        self.key, self.scratch_root = _new_scratch_root("pool")
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:  # workers start on demand, each runs _pool_init once
            o = self._owner
            self._pool = ProcessPoolExecutor(
                max_workers=o.workers, mp_context=multiprocessing.get_context(o.start_method),
                initializer=_pool_init,
                initargs=(self.key, self._payload, self.scratch_root, o.threads))
        return self._pool

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
            progress: Progress | None = None) -> list[Any]:
        _ensure_open(self)
        _check_picklable(fn, "local")
        items = list(items)
        pool = self._ensure_pool()
        futures: dict[Future[Any], int] = {
            pool.submit(_run_item, fn, i, item): i for i, item in enumerate(items)}
        return _gather_futures(futures, len(items), progress, self)

    def _broken(self) -> None:
        """The pool lost a worker; the next map starts a fresh one (shared shipped again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pool is not None:
            # in-flight items (at most one per worker) finish; queued ones are dropped
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        shutil.rmtree(self.scratch_root, ignore_errors=True)


def _gather_futures(futures: dict[Future[Any], int], total: int, progress: Progress | None,
                    binding: _PoolBinding) -> list[Any]:
    """Collect results by index as they complete; the first failure cancels the queued rest
    (as_completed: linear in the number of items, unlike repeated wait() calls)."""
    results: list[Any] = [None] * total
    _report(progress, 0, total)
    try:
        for done, fut in enumerate(as_completed(futures), 1):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except BrokenProcessPool as exc:
                binding._broken()
                raise WorkerError(
                    f"item {i}: a worker process died ({exc}): it crashed, ran out of "
                    "memory or could not start (a script that uses a process pool needs "
                    "an `if __name__ == '__main__':` guard); rerun with -j 1 to see the "
                    "item run in-process") from None
            except Exception as exc:
                raise _tag(exc, i)  # noqa: B904 (the worker's exception, remote traceback as cause)
            _report(progress, done, total)
    finally:
        for fut in futures:  # no-op for finished ones
            fut.cancel()
    return results
