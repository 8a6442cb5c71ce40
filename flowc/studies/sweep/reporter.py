"""`report(results_dir, out_html)`: the sweep's HTML page, its plots, and its table.

This module only wires analysis.py (numbers), plots.py (figures) and html.py (the page). It is
not called report.py on purpose: `flowc.studies.sweep.report` is the function, and a submodule
of that name would replace it on the package once imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flowc.errors import UsageError
from flowc.studies.sweep.analysis import Analysis, SweepMeta, analyse_sweep, read_meta


def make_figures(a: Analysis) -> dict[str, Any]:
    """name -> Figure: "pareto", "pareto-perplexity" (when measured), "axis:<axis>"."""
    from flowc.studies.sweep import plots

    figs = {"pareto": plots.pareto_figure(a.df, a.front, a.objectives[0], a.objectives[1],
                                          a.meta)}
    if a.ppl_front is not None:
        figs["pareto-perplexity"] = plots.pareto_figure(a.df, a.ppl_front, a.objectives[0],
                                                        "perplexity", a.meta)
    for axis in a.meta.axes:
        figs[f"axis:{axis}"] = plots.axis_figure(a.df, axis, a.sens[axis], a.meta)
    return figs


def write_report(df: pd.DataFrame, meta: SweepMeta, out_html: str | Path,
                 plots_dir: str | Path | None = None,
                 objectives: Sequence[str] | None = None) -> Analysis:
    """Analyse `df`, write the self-contained page to `out_html` and, when `plots_dir` is
    given, every plot there as PNG and SVG (`pareto.*`, `axis-<axis>.*`)."""
    from flowc.backend.container import write_atomic
    from flowc.studies.sweep import html, plots

    out = Path(out_html)
    if not out.parent.is_dir():
        raise UsageError(f"{out}: the folder {out.parent} does not exist")
    if plots_dir is not None and Path(plots_dir).exists() and not Path(plots_dir).is_dir():
        raise UsageError(f"{plots_dir}: the plots folder is a file")
    a = analyse_sweep(df, meta, objectives)
    figs = make_figures(a)
    pngs = {k: plots.png_bytes(f) for k, f in figs.items()}
    page = html.render(a, {k: plots.data_uri(b) for k, b in pngs.items()})
    if plots_dir is not None:
        for k, f in figs.items():
            stem = "axis-" + plots.file_stem(k[5:]) if k.startswith("axis:") else k
            plots.save_figure(f, Path(plots_dir), stem, pngs[k])
    write_atomic(out, page.encode("utf-8"))
    return a


def report(results_dir: str | Path, out_html: str | Path, plots_dir: str | Path | None = None,
           objectives: Sequence[str] | None = None) -> pd.DataFrame:
    """Write the HTML report (and the plots) of the sweep in `results_dir`; return its table
    (sorted by point) with an `on_front` column."""
    from flowc.studies.sweep.store import load_results

    df = load_results(results_dir)
    return write_report(df, read_meta(results_dir, df), out_html, plots_dir, objectives).df
