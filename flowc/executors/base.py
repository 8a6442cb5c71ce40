"""The executor interface, the worker-side state every executor shares, and the serial executor.

Worker side: a worker process holds one binding at a time (a module global here): the shared
value, its scratch root and the torch thread pin. Pool initializers and Ray tasks fill it;
the serial executor fills it in the caller's process for the duration of a map.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from flowc.errors import UsageError, WorkerError

Progress = Callable[[int, int], None]
"""progress(done, total): called with (0, total) first, then as items finish."""

RAY_INSTALL_HINT = "install the extra: pip install 'flowc[ray]'"


# -- the interface ------------------------------------------------------------------------------


class Bound(Protocol):
    """Workers holding one shared value; `map` may be called any number of times."""

    shared: Any
    closed: bool

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
            progress: Progress | None = None) -> list[Any]: ...

    def imap_unordered(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]
                       ) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class Executor(Protocol):
    """Runs `fn(shared, item)` for every item; results in item order (see the module doc)."""

    name: str
    workers: int | None  # items run at once (a Ray cluster's CPUs: known once connected)

    def bind(self, shared: Any) -> Bound: ...

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, shared: Any = None,
            progress: Progress | None = None) -> list[Any]: ...

    def imap_unordered(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
                       shared: Any = None) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class _ExecutorBase:
    """One current binding per executor: it owns the workers, so binding anew closes it."""

    name = "?"

    def __init__(self) -> None:
        self._current: Bound | None = None
        self._closed = False

    def _bind(self, shared: Any) -> Bound:
        raise NotImplementedError

    def bind(self, shared: Any) -> Bound:
        """Ship `shared` to the workers (always anew) and return the handle that maps over it."""
        if self._closed:
            raise UsageError(f"executor {self.name}: used after close()")
        if self._current is not None:
            self._current.close()
            self._current = None
        self._current = self._bind(shared)
        return self._current

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, shared: Any = None,
            progress: Progress | None = None) -> list[Any]:
        """`[fn(shared, x) for x in items]`; reuses the workers if `shared` is the value bound last."""
        return self._binding_for(shared).map(fn, items, progress=progress)

    def imap_unordered(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
                       shared: Any = None) -> Iterator[tuple[int, Any]]:
        """`(index, fn(shared, items[index]))` pairs as items finish (streaming: a caller can
        store each result at once). A failure is raised when its pair would be; closing the
        iterator early cancels the items not started."""
        return self._binding_for(shared).imap_unordered(fn, items)

    def _binding_for(self, shared: Any) -> Bound:
        cur = self._current
        if cur is None or cur.closed or cur.shared is not shared:
            cur = self.bind(shared)
        return cur

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _BindingBase:
    """What every binding shares: the context-manager lifecycle."""

    shared: Any
    closed: bool

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- worker side --------------------------------------------------------------------------------


class _WorkerState(threading.local):
    """What a worker holds for the current binding: one per thread, so that a serial binding
    installed while an item runs in one thread (a sweep's head-start helper, say) is not
    seen by code running in another (a pool or Ray worker runs its items in the thread that
    loaded the binding)."""

    def __init__(self) -> None:
        self.key: str | None = None  # binding id whose shared value is loaded
        self.shared: Any = None
        self.scratch_root: str | None = None
        self.scratch: Path | None = None
        self.threads: int | None = None  # torch threads to pin, None: leave alone (serial)
        self.pinned = False


_WORKER = _WorkerState()


def worker_scratch() -> Path:
    """A directory private to the worker running the current item (created on first use).

    Parallel items never share it, items run by the same worker do; the executor removes the
    directories when it closes. Only valid inside a function run by an executor."""
    if _WORKER.scratch_root is None:
        raise UsageError("worker_scratch() called outside a function run by a flowc executor")
    if _WORKER.scratch is None:
        path = Path(_WORKER.scratch_root) / f"worker-{os.getpid()}"
        path.mkdir(parents=True, exist_ok=True)
        _WORKER.scratch = path
    return _WORKER.scratch


def _load_binding(key: str, shared: Any, scratch_root: str, threads: int | None) -> None:
    """Install a binding in this worker; drop the previous binding's scratch directory."""
    if _WORKER.scratch is not None and _WORKER.key != key:
        shutil.rmtree(_WORKER.scratch, ignore_errors=True)
    _WORKER.key, _WORKER.shared, _WORKER.scratch_root = key, shared, scratch_root
    _WORKER.scratch, _WORKER.threads, _WORKER.pinned = None, threads, False
    _pin_threads()


def _pin_threads() -> None:
    """One torch thread per worker (N workers x all-core torch pools would oversubscribe the
    CPUs). Checked again before every item: torch may first be imported by an item's module."""
    if _WORKER.threads is None or _WORKER.pinned:
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(_WORKER.threads)
        _WORKER.pinned = True


def _pool_init(key: str, payload: str | None, scratch_root: str, threads: int) -> None:
    """ProcessPoolExecutor initializer: runs once per worker process, before any item; loads
    the shared value from the file the binding pickled it to (None: no shared value)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)  # for a torch imported after this point
    _WORKER.threads = threads
    _pin_threads()
    shared = None
    if payload is not None:
        with open(payload, "rb") as f:
            shared = pickle.load(f)
    _load_binding(key, shared, scratch_root, threads)


def _run_item(fn: Callable[[Any, Any], Any], index: int, item: Any) -> Any:
    """Run one item in a worker; a failure is re-raised tagged with the item index."""
    _pin_threads()
    try:
        return fn(_WORKER.shared, item)
    except Exception as exc:
        if not _roundtrips(exc):  # would not arrive intact in the caller
            err = WorkerError(f"item {index}: {type(exc).__name__}: {exc}")
            err.flowc_item = index  # type: ignore[attr-defined]
            raise err from None
        raise _tag(exc, index)  # noqa: B904 (the same exception, now with its index)


def _tag(exc: BaseException, index: int) -> BaseException:
    """Put the item index into the exception's message (idempotent), keeping its type."""
    if getattr(exc, "flowc_item", None) is not None:
        return exc
    prefix = f"item {index}: "
    try:
        exc.flowc_item = index  # type: ignore[attr-defined]
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (prefix + exc.args[0], *exc.args[1:])
        if prefix not in str(exc):  # a custom __str__ or non-text args: say it in a note
            exc.add_note(f"raised by flowc executor item {index}")
    except Exception:  # an exception type that refuses attributes: leave it as it is
        pass
    return exc


def _roundtrips(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
        return True
    except Exception:
        return False


def _check_picklable(fn: Callable[..., Any], executor: str) -> None:
    try:
        pickle.dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise UsageError(f"executor {executor}: {name} cannot be sent to worker processes "
                         f"({exc}); use a function defined at the top level of a module") from None


def _dump_shared(shared: Any, path: str, executor: str) -> None:
    """Pickle the shared value once, straight into a file (no extra in-memory copy); on
    failure the binding's directory, which holds nothing else yet, goes."""
    try:
        with open(path, "wb") as f:
            pickle.dump(shared, f, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        raise UsageError(f"executor {executor}: the shared value ({type(shared).__name__}) "
                         f"cannot be pickled: {exc}") from None


def _new_scratch_root(kind: str) -> tuple[str, str]:
    key = uuid.uuid4().hex[:12]
    return key, os.path.join(tempfile.gettempdir(), f"flowc-{kind}-{key}")


# -- serial -------------------------------------------------------------------------------------


class SerialExecutor(_ExecutorBase):
    """In the calling process, one item after another, nothing pickled (what `-j 1` means)."""

    name = "serial"
    workers = 1

    def _bind(self, shared: Any) -> Bound:
        return _SerialBinding(shared)


class _SerialBinding(_BindingBase):
    def __init__(self, shared: Any) -> None:
        self.shared, self.closed = shared, False
        self.key, self.scratch_root = _new_scratch_root("serial")
        self._scratch: Path | None = None  # worker_scratch() of this binding, once created

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *,
            progress: Progress | None = None) -> list[Any]:
        items = list(items)
        out = []
        _report(progress, 0, len(items))
        for i, value in self.imap_unordered(fn, items):
            out.append(value)
            _report(progress, i + 1, len(items))
        return out

    def imap_unordered(self, fn: Callable[[Any, Any], Any], items: Iterable[Any]
                       ) -> Iterator[tuple[int, Any]]:
        """In item order (one item at a time); the binding is installed only while an item
        runs, so the caller's code between two results sees its own worker state."""
        _ensure_open(self)
        for i, item in enumerate(list(items)):
            saved = (_WORKER.key, _WORKER.shared, _WORKER.scratch_root, _WORKER.scratch,
                     _WORKER.threads, _WORKER.pinned)
            _WORKER.key, _WORKER.shared = self.key, self.shared
            _WORKER.scratch_root, _WORKER.scratch, _WORKER.threads = (
                self.scratch_root, self._scratch, None)
            try:
                value = fn(self.shared, item)
            except Exception as exc:
                raise _tag(exc, i)  # noqa: B904 (the same exception, now with its index)
            finally:
                self._scratch = _WORKER.scratch
                (_WORKER.key, _WORKER.shared, _WORKER.scratch_root, _WORKER.scratch,
                 _WORKER.threads, _WORKER.pinned) = saved
            yield i, value

    def close(self) -> None:
        self.closed = True
        shutil.rmtree(self.scratch_root, ignore_errors=True)


def _ensure_open(binding: Bound) -> None:
    if binding.closed:
        raise UsageError("executor binding used after it was closed (bind() was called again "
                         "or the executor was closed)")


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
