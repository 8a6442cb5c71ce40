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
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?/s" if speed is None else f"{speed:.2f}/s")

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
