"""The sweep driver: points -> (pruning) -> chunks on an executor -> one Parquet part per chunk.

Results stream: every chunk is stored the moment it arrives (executor `imap_unordered`), so a
run killed at any moment keeps every finished chunk and `resume=True` evaluates only the rest.
What is shared by every point (assignment files read once, run mode's compiled images) is
built here once and shipped to each worker once (executor `shared=`). An executor that has to
start first (a new Ray cluster) does not leave the driver idle: the driver evaluates chunks
itself until the executor is up (`_run_with_head_start`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowc.errors import POINT_ERRORS, CheckFailed, FlowcError, UsageError
from flowc.executors import Executor, Progress, make_executor
from flowc.studies.sweep.point import Shared, base_row, compile_images, evaluate_chunk
from flowc.studies.sweep.point import load_assignments as read_assignments
from flowc.studies.sweep.spec import Point, SweepSpec, load_spec, points_of, spec_hash
from flowc.studies.sweep.store import ResultStore

Say = Callable[[str], None]
MAX_CHUNK = 500
HEAD_CHUNK = 200  # analytic points per chunk the driver evaluates while an executor starts
WORKER_MODULES = ("flowc.studies.sweep.point", "flowc.studies.analytic_fast")


@dataclass
class SweepSummary:
    """What a run did: `evaluated` now (ok + errors), `stored_before` (resume), `skipped`
    (pruned, with each reason's count); `wall_s` is the whole call, `setup_s` its part before
    the first chunk was sent (points and machines built and checked, store opened, shared
    state built: run mode compiles there, pruning evaluates its bound front there)."""

    name: str
    out: str
    points: int
    evaluated: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    stored_before: int = 0
    head_start: int = 0  # of `evaluated`: in the driver while the executor started
    errors_before: int = 0  # error rows among those stored before (resume)
    failed_checks: int = 0  # run mode: ok rows whose ONNX Runtime check FAILED (all stored)
    wall_s: float = 0.0
    setup_s: float = 0.0
    chunks: int = 0
    chunk_size: int = 0
    executor: str = ""
    skip_reasons: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)  # the first few error rows

    @property
    def rate(self) -> float:
        return self.evaluated / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """What `flowc sweep` exits with once every row is stored and the summary printed:
        POINT_ERRORS (6) if the results hold error rows (this run's or stored before), else
        CheckFailed's 1 if a run-mode point's check against ONNX Runtime failed, else 0."""
        if self.errors or self.errors_before:
            return POINT_ERRORS
        return CheckFailed.exit_code if self.failed_checks else 0

    def render(self) -> str:
        lines = [f"sweep {self.name}: {self.points} points -> {self.out}",
                 f"  evaluated {self.evaluated} ({self.ok} ok, {self.errors} errors) in "
                 f"{self.wall_s:.2f} s (setup {self.setup_s:.2f} s), {self.rate:.1f} points/s "
                 f"({self.executor}, "
                 f"{self.chunks} chunks of <= {self.chunk_size})",
                 *([f"  of which {self.head_start} in the driver while the {self.executor} "
                    "executor started"] if self.head_start else []),
                 f"  already stored (resume): {self.stored_before}"
                 + (f" ({self.errors_before} errors)" if self.errors_before else ""),
                 f"  skipped (pruned): {self.skipped}"]
        lines += [f"    {n} x {reason}" for reason, n in sorted(self.skip_reasons.items())]
        if self.errors:
            lines.append("  errors (first ones; every one is a row with status 'error'):")
            lines += [f"    {e}" for e in self.error_samples]
        if self.failed_checks:
            lines.append(f"  check against ONNX Runtime FAILED: {self.failed_checks} points")
        return "\n".join(lines)


def chunk_size(spec: SweepSpec, todo: int, workers: int | None) -> int:
    """Points per task: the spec's `chunk`, else 1 in run mode (a point takes long enough)
    and in analytic mode enough for ~4 tasks per worker, at most MAX_CHUNK (so 10,000 points
    are ~20 tasks and a kill loses at most one chunk per worker)."""
    if spec.sweep.chunk:
        return spec.sweep.chunk
    if spec.sweep.mode == "run":
        return 1
    return max(1, min(MAX_CHUNK, -(-todo // (4 * max(workers or 1, 1)))))


def run_sweep(spec: str | Path | Mapping[str, Any] | SweepSpec, out: str | Path, *,
              executor: Executor | None = None, resume: bool = False,
              progress: Progress | None = None, say: Say | None = None) -> SweepSummary:
    """Evaluate every point of `spec` not yet stored in `out` (see the module docstring).

    `executor` defaults to a local process pool on all CPUs (closed at the end; one passed
    in is left open). `progress(done, total)` counts the points this run stores. An
    executor that still has to start (a Ray cluster not yet connected) gets a head start:
    see `_run_with_head_start`."""
    t0 = time.perf_counter()
    say = say or (lambda _msg: None)
    spec = load_spec(spec)
    own = executor is None
    ex = make_executor() if own else executor
    try:
        if ex.workers is None and callable(getattr(ex, "connect", None)):
            run = _run_with_head_start(spec, out, ex, resume, progress, say, t0)
        else:
            run = _prepare(spec, out, resume, progress, say, t0, ex.workers)
            try:
                _evaluate_rest(run, ex, run.todo)
            finally:
                run.store.close()
    finally:
        if own:
            ex.close()
    run.summary.wall_s = time.perf_counter() - t0
    return run.summary


def _prepare(spec: SweepSpec, out: str | Path, resume: bool, progress: Progress | None,
             say: Say, t0: float, workers: int | None) -> _Run:
    """Everything before the first chunk: points built and checked, the store opened (or
    resumed), shared state (run mode compiles here), failed compiles stored as error rows,
    pruning (its bound front is evaluated here). `workers` sizes the chunks."""
    points = points_of(spec)
    store = ResultStore.open(out, spec, points, spec_hash(spec, points), resume)
    try:
        done = store.stored() if resume else {}
        todo = [p for p in points if p.key not in done]
        summary = SweepSummary(spec.sweep.name, str(out), len(points),
                               stored_before=len(points) - len(todo))
        keys = {p.key for p in points}
        before = [v for k, v in done.items() if k in keys]
        summary.errors_before = sum(status == "error" for status, _ in before)
        summary.failed_checks = sum(check == "FAILED" for _, check in before)
        run = _Run(spec, store, summary, progress, len(todo))
        run.size = chunk_size(spec, len(todo), workers)
        shared, failed = _shared(spec, points if spec.sweep.prune else todo, todo, say)
        if failed:  # a group that did not compile: its points are error rows, not a crash
            run.store_rows([base_row(p, "error", failed[p.index]) for p in todo
                            if p.index in failed])
        todo = [p for p in todo if p.index not in failed]
        if spec.sweep.prune and todo:
            todo = _prune(run, shared, points, todo)
        run.shared, run.todo = shared, todo
        summary.setup_s = time.perf_counter() - t0
        if progress and not run.stored:
            progress(0, run.total)
    except BaseException:
        store.close()
        raise
    return run


def _evaluate_rest(run: _Run, ex: Executor, todo: Sequence[Point]) -> None:
    """The points left, in chunks on the executor (a local pool's forkserver imports the
    evaluation modules once, not each worker)."""
    run.summary.executor = ex.name
    if isinstance(getattr(ex, "preload", None), list):
        ex.preload[:] = dict.fromkeys([*ex.preload, *WORKER_MODULES])
    if todo:
        run.evaluate(ex, run.shared, todo)


def _run_with_head_start(spec: SweepSpec, out: str | Path, ex: Executor, resume: bool,
                         progress: Progress | None, say: Say, t0: float) -> _Run:
    """A sweep on an executor that must start first (`ex.connect()`: a new Ray cluster
    takes 5-15 s on 2 busy cores), with the sweep's own work done meanwhile.

    `connect` stays on the main thread (from another thread Ray 2.60 aborts the driver).
    A helper thread prepares the sweep (`_prepare`), then evaluates chunks in this process,
    one after another, storing each as it finishes, until the executor is up; it then stops
    after its current chunk (while the executor's workers start), and the main thread sends
    the executor every chunk not taken, cut as they are sent (`_HeadStart.take`: smaller
    towards the end, so the workers finish together). Each chunk is taken, under a lock, by
    exactly one side, so every point is evaluated once and the table is the one the executor
    alone would store (only the timing columns tell where a row was computed). A bad spec or
    directory is reported once the executor is up (the executor is closed by whoever owns
    it).

    Measured (issue 11): a driver that went on evaluating beside the cluster made sweeps
    slower, not faster, on 2 cores: its thread holds the GIL the main thread needs to keep
    Ray's workers fed (a running 2-CPU cluster: 12.2-13.7 s instead of 10.5-11.0 s)."""
    head = _HeadStart(spec, out, resume, progress, say, t0)
    helper = threading.Thread(target=head.work, name="flowc-sweep-head-start", daemon=True)
    helper.start()
    try:
        ex.connect()  # type: ignore[attr-defined]
        prestart = getattr(ex, "prestart", None)
        if prestart is not None:  # workers import the evaluation modules meanwhile
            prestart(WORKER_MODULES)
        head.executor_up(ex.workers or 1)
        if head.error is None and head.run is not None:
            head.run.summary.executor = ex.name
            head.run.evaluate_chunks(ex, head.run.shared, iter(head.take, None))
    finally:
        head.stop()
        helper.join()
        if head.run is not None:
            head.run.store.close()
    if head.error is not None:
        raise head.error
    assert head.run is not None
    return head.run


class _HeadStart:
    """The helper thread of `_run_with_head_start`: its state and the lock on the queue of
    points not yet taken."""

    def __init__(self, spec: SweepSpec, out: str | Path, resume: bool,
                 progress: Progress | None, say: Say, t0: float) -> None:
        self.args = (spec, out, resume, progress, say, t0)
        self.run: _Run | None = None
        self.error: BaseException | None = None
        self._prepared = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._workers: int | None = None  # the executor's, once it is up
        self._todo: list[Point] = []
        self._next = 0

    def work(self) -> None:
        from flowc.executors import SerialExecutor

        try:
            run = _prepare(*self.args, workers=None)
            self._todo = run.todo
            self.run = run
        except BaseException as exc:  # re-raised on the main thread
            self.error = exc
            return
        finally:
            self._prepared.set()
        try:  # in-process, as the serial executor runs items (worker_scratch() works)
            with SerialExecutor() as serial:
                while (chunk := self.take(driver=True)) is not None:
                    for _, rows in serial.imap_unordered(evaluate_chunk, [chunk],
                                                         shared=run.shared):
                        run.store_rows(rows, head_start=True)
        except BaseException as exc:
            self.error = exc

    def executor_up(self, workers: int) -> None:
        """From now on the driver takes no chunk, and chunks are cut for `workers`."""
        self._prepared.wait()
        with self._lock:
            self._workers = workers

    def take(self, driver: bool = False) -> list[Point] | None:
        """The next chunk, cut now: the spec's `chunk` if set, else one point in run mode;
        analytic points HEAD_CHUNK at a time while the executor starts, then about a quarter
        of what is left per worker (between HEAD_CHUNK // 4 and MAX_CHUNK points), so the
        last chunks are small and the workers finish at about the same time. None once
        everything is taken, after stop(), after an error, or for the driver once the
        executor is up."""
        with self._lock:
            left = len(self._todo) - self._next
            if (self._stopped or self.error is not None or left <= 0
                    or (driver and self._workers is not None)):
                return None
            spec = self.args[0]
            if spec.sweep.chunk or spec.sweep.mode == "run":  # fixed: chunk_size's own
                size = chunk_size(spec, left, self._workers)
            elif self._workers is None:
                size = HEAD_CHUNK
            else:  # chunk_size of what is left, so each chunk is cut smaller than the last
                size = max(HEAD_CHUNK // 4, chunk_size(spec, left, self._workers))
            chunk = self._todo[self._next:self._next + size]
            self._next += len(chunk)
        if not driver and self.run is not None:
            self.run.summary.chunks += 1
            self.run.summary.chunk_size = max(self.run.summary.chunk_size, len(chunk))
        return chunk

    def stop(self) -> None:
        """No chunk is taken after this."""
        with self._lock:
            self._stopped = True


@dataclass
class _Run:
    """A run's state: where rows go and what is counted. `store_rows` may be called from two
    threads (the head start's helper and the main thread): one lock guards the store and
    the counts."""

    spec: SweepSpec
    store: ResultStore
    summary: SweepSummary
    progress: Progress | None
    total: int
    size: int = 1
    stored: int = 0
    shared: Shared | None = None
    todo: list[Point] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def store_rows(self, rows: Sequence[dict[str, Any]], head_start: bool = False) -> None:
        if not rows:
            return
        with self.lock:
            self.store.write(rows)
            self.stored += len(rows)
            self._count(rows, head_start)
            if self.progress:
                self.progress(self.stored, self.total)

    def _count(self, rows: Sequence[dict[str, Any]], head_start: bool) -> None:
        s = self.summary
        for r in rows:
            if r["status"] == "skipped":
                s.skipped += 1
                s.skip_reasons[r["reason"]] = s.skip_reasons.get(r["reason"], 0) + 1
                continue
            s.evaluated += 1
            s.head_start += head_start
            if r["status"] == "ok":
                s.ok += 1
                s.failed_checks += r.get("check") == "FAILED"
            else:
                s.errors += 1
                if len(s.error_samples) < 5:
                    s.error_samples.append(f"point {r['point']}: {r['reason']}")

    def evaluate(self, ex: Executor, shared: Shared, points: Sequence[Point]
                 ) -> list[dict[str, Any]]:
        """Points in chunks on the executor; each chunk stored as it arrives."""
        chunks = [points[i:i + self.size] for i in range(0, len(points), self.size)]
        self.summary.chunks += len(chunks)
        self.summary.chunk_size = self.size
        return self.evaluate_chunks(ex, shared, chunks)

    def evaluate_chunks(self, ex: Executor, shared: Shared | None,
                        chunks: Iterable[Sequence[Point]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, rows in ex.imap_unordered(evaluate_chunk, chunks, shared=shared):
            self.store_rows(rows)
            out += rows
        return out


def _prune(run: _Run, shared: Shared, points: Sequence[Point], todo: Sequence[Point]
           ) -> list[Point]:
    """`prune = true`: bounds.prune_plan decides, over every point of the spec (so a resumed
    sweep decides the same), which cannot be on the Pareto front; those still to do are
    stored as rows with status "skipped" and the reason, never dropped silently."""
    spec = run.spec
    try:
        from flowc.studies.sweep.bounds import prune_plan
    except ImportError:
        raise UsageError(f"{spec.source}: sweep.prune: pruning is not available in this flowc "
                         "(flowc.studies.sweep.bounds is missing); set prune = false") from None
    skip = prune_plan(spec, points, shared)
    run.store_rows([base_row(p, "skipped", skip[p.index]) for p in todo if p.index in skip])
    return [p for p in todo if p.index not in skip]


def _shared(spec: SweepSpec, every: Sequence[Point], todo: Sequence[Point], say: Say
            ) -> tuple[Shared, dict[int, str]]:
    """Built once in the driver: assignment files (analytic; those of `every` point, which
    the bounds read too), compiled images (run: for `todo`), and the points whose (model, nm)
    failed to compile, with the error line."""
    shared, failed = Shared(spec.sweep.mode), {}
    if spec.sweep.mode == "analytic":
        shared.assignments = read_assignments(every)
        return shared, failed
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in todo:
        groups.setdefault((p.model, p.nm), []).append(p)
    for (model, nm), pts in groups.items():
        say(f"compiling {model} ({nm}) once for {len(pts)} points ...")
        try:
            images = compile_images(model, nm, [p.machine for p in pts],
                                    spec.sweep.eval_windows)
        except FlowcError as exc:
            line = f"compiling {model} ({nm}): {str(exc).splitlines()[0] if str(exc) else exc!r}"
            failed.update(dict.fromkeys((p.index for p in pts), line))
            continue
        for key, image in images.items():
            shared.images[(model, nm, key)] = image
    return shared, failed
