"""The sweep driver: points -> (pruning) -> chunks on an executor -> one Parquet part per chunk.

Results stream: every chunk is stored the moment it arrives (executor `imap_unordered`), so a
run killed at any moment keeps every finished chunk and `resume=True` evaluates only the rest.
What is shared by every point (assignment files read once, run mode's compiled images) is
built here once and shipped to each worker once (executor `shared=`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
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
    in is left open). `progress(done, total)` counts the points this run stores."""
    t0 = time.perf_counter()
    say = say or (lambda _msg: None)
    spec = load_spec(spec)
    points = _points_while_starting(spec, executor)
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
        own = executor is None
        ex = make_executor() if own else executor
        try:
            _drive(run, ex, points, todo, say, t0)
        finally:
            if own:
                ex.close()
    finally:
        store.close()
    run.summary.wall_s = time.perf_counter() - t0
    return run.summary


def _points_while_starting(spec: SweepSpec, ex: Executor | None) -> list[Point]:
    """`points_of(spec)`, overlapped with the start of a Ray cluster not yet connected.

    Ray's start (5-12 s on 2 busy cores) would otherwise come after building and checking
    every point. `ray.init` must run on the main thread (from another thread this Ray version
    aborts its driver), so the points are built on a helper thread meanwhile (pure Python: it
    runs while ray.init waits on the processes it starts), and right after the connect the
    workers are asked to import the evaluation modules (`prestart`), which they do while the
    driver opens the store and builds the shared state. A bad spec is still reported before
    any point runs, once the cluster is up (then shut down by whoever owns the executor)."""
    connect = getattr(ex, "connect", None)
    if ex is None or ex.workers is not None or connect is None:
        return points_of(spec)
    box: dict[str, Any] = {}

    def build() -> None:
        try:
            box["points"] = points_of(spec)
        except BaseException as exc:  # re-raised on the main thread below
            box["error"] = exc

    helper = threading.Thread(target=build, name="flowc-sweep-points", daemon=True)
    helper.start()
    try:
        connect()
        prestart = getattr(ex, "prestart", None)
        if prestart is not None:
            prestart(WORKER_MODULES)
    finally:
        helper.join()
    if "error" in box:
        raise box["error"]
    return box["points"]


def _drive(run: _Run, ex: Executor, points: list[Point], todo: list[Point], say: Say,
           t0: float) -> None:
    """Shared state, failed compiles, pruning, then the chunks (see run_sweep)."""
    spec = run.spec
    run.summary.executor = ex.name
    if ex.workers is None and hasattr(ex, "connect"):  # Ray: its CPUs size the chunks
        ex.connect()
    if isinstance(getattr(ex, "preload", None), list):  # a local pool's forkserver imports
        ex.preload[:] = dict.fromkeys([*ex.preload, *WORKER_MODULES])  # these once, not each worker
    run.size = chunk_size(spec, len(todo), ex.workers)
    shared, failed = _shared(spec, points if spec.sweep.prune else todo, todo, say)
    if failed:  # a group that did not compile: its points are error rows, not a crash
        run.store_rows([base_row(p, "error", failed[p.index]) for p in todo
                        if p.index in failed])
    todo = [p for p in todo if p.index not in failed]
    if spec.sweep.prune and todo:
        todo = _prune(run, shared, points, todo)
    run.summary.setup_s = time.perf_counter() - t0
    if todo:
        run.evaluate(ex, shared, todo)


@dataclass
class _Run:
    """A run's state: where rows go and what is counted."""

    spec: SweepSpec
    store: ResultStore
    summary: SweepSummary
    progress: Progress | None
    total: int
    size: int = 1
    stored: int = 0

    def store_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        self.store.write(rows)
        self.stored += len(rows)
        s = self.summary
        for r in rows:
            if r["status"] == "skipped":
                s.skipped += 1
                s.skip_reasons[r["reason"]] = s.skip_reasons.get(r["reason"], 0) + 1
                continue
            s.evaluated += 1
            if r["status"] == "ok":
                s.ok += 1
                s.failed_checks += r.get("check") == "FAILED"
            else:
                s.errors += 1
                if len(s.error_samples) < 5:
                    s.error_samples.append(f"point {r['point']}: {r['reason']}")
        if self.progress:
            self.progress(self.stored, self.total)

    def evaluate(self, ex: Executor, shared: Shared, points: Sequence[Point]
                 ) -> list[dict[str, Any]]:
        """Points in chunks on the executor; each chunk stored as it arrives."""
        chunks = [points[i:i + self.size] for i in range(0, len(points), self.size)]
        self.summary.chunks += len(chunks)
        self.summary.chunk_size = self.size
        if self.progress and not self.stored:
            self.progress(0, self.total)
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
