"""The one terminal table renderer (rich), for every layer of flowc: the studies' reports
(flowc.studies.tables builds them on it), flowrun's profile and next-token tables. It
imports nothing of flowc, so any stage may use it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
          footer: Sequence[Any] | None = None, left: Sequence[int] = (0,)) -> str:
    """Render rows as a plain rich table (no colour, never wrapped); the columns in `left`
    (default: the first) are left aligned, the others right aligned; numbers are formatted
    by `cell`."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain text: a "[" in a name is not markup

    t = Table(box=box.SIMPLE_HEAD, show_footer=footer is not None, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(Text(col), justify="left" if i in left else "right", no_wrap=True,
                     footer=Text(cell(footer[i])) if footer is not None else "")
    for row in rows:
        t.add_row(*(Text(cell(v)) for v in row))
    buf = io.StringIO()
    Console(file=buf, width=10_000, color_system=None, force_terminal=False,
            legacy_windows=False).print(t)
    lines = [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]
    return "\n".join(([title] if title else []) + lines)


def cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v)
