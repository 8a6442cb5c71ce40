"""The local process pool executor (concurrent.futures.ProcessPoolExecutor)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from flowc.errors import UsageError, WorkerError
from flowc.executors.base import (
    Bound,
    Progress,
    _BindingBase,
    _check_picklable,
    _dump_shared,
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

    Workers never start with 'fork': forking a parent whose threads (torch's intra-op pool,
    ORT, a progress bar) hold locks gives a child with locks nobody will release. The default
    is 'forkserver' where the OS has it: a clean single-threaded server process is started
    once per program and every worker is forked from it, so a new pool (each new shared value)
    starts in a fraction of a second and modules the server preloaded (the main module, torch
    if the caller has it loaded, `preload`) are not imported again by every worker. 'spawn'
    (a fresh interpreter per worker, ~2 s more with torch) is the fallback and can be asked for.
    Each worker pins torch to `threads_per_worker` threads."""

    name = "local"

    def __init__(self, jobs: int, *, start_method: str | None = None, threads_per_worker: int = 1,
                 preload: Sequence[str] = ()) -> None:
        super().__init__()
        if jobs < 1:
            raise UsageError(f"executor local: jobs must be >= 1, got {jobs}")
        methods = multiprocessing.get_all_start_methods()
        method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        if method not in ("spawn", "forkserver") or method not in methods:
            raise UsageError(f"executor local: start method {method!r}: use 'spawn' or "
                             "'forkserver' where available ('fork' is unsafe once threads run)")
        self.workers, self.start_method, self.threads = jobs, method, threads_per_worker
        self.preload = list(preload)

    def _context(self) -> Any:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":  # takes effect when the server first starts
            wanted = ["__main__", "flowc.executors.base", *self.preload]
            wanted += [m for m in ("numpy", "torch") if m in sys.modules]
            ctx.set_forkserver_preload(list(dict.fromkeys(wanted)))
        return ctx

    def _bind(self, shared: Any) -> Bound:
        return _PoolBinding(self, shared)


class _PoolBinding(_BindingBase):
    """The shared value is pickled once into a file of this binding's scratch root; each worker
    reads it in its initializer (no per-worker copy through the parent's pipes)."""

    def __init__(self, owner: LocalPoolExecutor, shared: Any) -> None:
        self.shared, self.closed, self._owner = shared, False, owner
        self.key, self.scratch_root = _new_scratch_root("pool")
        self._payload: str | None = None
        if shared is not None:
            os.makedirs(self.scratch_root)
            self._payload = os.path.join(self.scratch_root, "shared.pickle")
            _dump_shared(shared, self._payload, owner.name)
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:  # workers start on demand, each runs _pool_init once
            o = self._owner
            self._pool = ProcessPoolExecutor(
                max_workers=o.workers, mp_context=o._context(), initializer=_pool_init,
                initargs=(self.key, self._payload, self.scratch_root, o.threads))
        return self._pool

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
            progress: Progress | None = None) -> list[Any]:
        futures = self._submit(fn, items)
        return _gather_futures(futures, len(futures), progress, self)

    def imap_unordered(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]
                       ) -> Iterator[tuple[int, Any]]:
        """(index, result) as items complete; closing the iterator cancels the queued rest."""
        return _stream_futures(self._submit(fn, items), self)

    def _submit(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]
                ) -> dict[Future[Any], int]:
        """Every item queued on the pool: {future: item index}."""
        _ensure_open(self)
        _check_picklable(fn, "local")
        pool = self._ensure_pool()
        return {pool.submit(_run_item, fn, i, item): i for i, item in enumerate(items)}

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
    """Collect results by index as they complete; the first failure cancels the queued rest."""
    results: list[Any] = [None] * total
    _report(progress, 0, total)
    for done, (i, value) in enumerate(_stream_futures(futures, binding), 1):
        results[i] = value
        _report(progress, done, total)
    return results


def _stream_futures(futures: dict[Future[Any], int], binding: _PoolBinding
                    ) -> Iterator[tuple[int, Any]]:
    """(index, result) as futures complete (as_completed: linear in the number of items,
    unlike repeated wait() calls); a failure, or the consumer closing the generator, cancels
    the queued rest."""
    try:
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                value = fut.result()
            except BrokenProcessPool as exc:
                binding._broken()
                raise WorkerError(
                    f"item {i}: a worker process died ({exc}): it crashed, ran out of "
                    "memory or could not start (a script that uses a process pool needs "
                    "an `if __name__ == '__main__':` guard); rerun with -j 1 to see the "
                    "item run in-process") from None
            except Exception as exc:
                raise _tag(exc, i)  # noqa: B904 (the worker's exception, remote traceback as cause)
            yield i, value
    finally:
        for fut in futures:  # no-op for finished ones
            fut.cancel()
