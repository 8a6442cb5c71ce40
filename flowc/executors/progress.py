"""A rich progress bar to pass as an executor's `progress` callback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flowc.executors.base import Progress

# -- progress -----------------------------------------------------------------------------------


@contextmanager
def progress_bar(description: str, *, console: Any = None) -> Iterator[Progress]:
    """A rich progress bar (done/total, items per second, elapsed, ETA) on stderr, as a
    `progress` callback: `with progress_bar("scoring") as bar: ex.map(fn, xs, progress=bar)`."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second since the bar started: results that arrive in bursts (a pool
        finishing chunks together after starting up) would make rich's windowed speed jump."""

        def render(self, task: Any) -> Text:
            elapsed = task.finished_time or task.elapsed
            if not elapsed or not task.completed:
                return Text("?/s")
            return Text(f"{task.completed / elapsed:.2f}/s")

    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   console=console or Console(stderr=True))
    task_ids: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task_ids:
            task_ids.append(bar.add_task(description, total=total))
        bar.update(task_ids[0], completed=done, total=total)

    with bar:
        yield update
