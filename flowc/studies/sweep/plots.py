"""Figures of a sweep: the Pareto front and one sensitivity plot per axis.

Only matplotlib's object-oriented API: every figure is a `matplotlib.figure.Figure` with its
own `FigureCanvasAgg`, so making a report never touches pyplot's state or the caller's global
backend (a notebook keeps its inline backend; tests/sweep/test_report.py checks
`matplotlib.get_backend()` before and after). Files are written to a temporary name in the
target folder and renamed, so a plot on disk is whole or absent.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from flowc.backend.container import write_atomic
from flowc.studies.sweep.analysis import (
    SweepMeta,
    axis_order,
    is_numeric_axis,
    label,
    ok_rows,
    short,
)

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def colours(values: Sequence[Any], order: Sequence[Any] = ()) -> dict[Any, Any]:
    """One tab10 colour per distinct value: `order` first (the table's first-seen order, so a
    target has the same colour in every plot), then any other value; only `values` returned."""
    cmap = colormaps["tab10"]
    every = list(dict.fromkeys([*order, *values]))
    present = set(values)
    return {v: cmap(every.index(v) % 10) for v in every if v in present}


def groups_of(df: pd.DataFrame, by: str) -> tuple[pd.Series, list[Any]]:
    """The `by` label of every row and the distinct labels in first-seen order."""
    if by not in df.columns:
        return pd.Series("all", index=df.index), ["all"]
    g = df[by].map(label)
    return g, list(dict.fromkeys(g.tolist()))


def _log_if_wide(ax: Any, which: str, values: np.ndarray) -> None:
    v = values[np.isfinite(values)]
    if len(v) and v.min() > 0 and v.max() / v.min() > 20:
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def pareto_figure(df: pd.DataFrame, front: pd.DataFrame, x: str, y: str, meta: SweepMeta,
                  colour_by: str = "target") -> Figure:
    """Every finished point of (x, y) coloured by `colour_by` and shaped by the first other
    axis with up to ten values (the N:M mix, typically), the front as a black step line
    through ringed markers."""
    fig = new_figure(9.0, 5.2)
    ax = fig.add_subplot()
    rows = ok_rows(df, [x, y])
    groups = groups_of(rows, colour_by)[0]
    cmap = colours(groups.tolist(), groups_of(df, colour_by)[1])
    shape_by = next((a for a in meta.axes if a not in (colour_by, x, y)
                     and 1 < df[a].map(label).nunique() <= len(MARKERS)), None)
    shapes, order = groups_of(rows, shape_by) if shape_by else (groups.map(lambda _: ""), [""])
    marker = {v: MARKERS[i] for i, v in enumerate(groups_of(df, shape_by)[1] if shape_by
                                                    else order)}
    for g, colour in cmap.items():
        for v in order:
            sel = rows[(groups == g) & (shapes == v)]
            ax.scatter(sel[x], sel[y], s=24, color=colour, marker=marker[v], alpha=0.75,
                       linewidths=0)
    f = front.sort_values([x, y])
    ax.step(f[x], f[y], where="post", color="black", linewidth=1.0)
    ax.scatter(f[x], f[y], s=80, facecolors="none", edgecolors="black", linewidths=1.2)
    _log_if_wide(ax, "x", rows[x].to_numpy(dtype=float))
    _log_if_wide(ax, "y", rows[y].to_numpy(dtype=float))
    ax.set_xlabel(meta.header(x))
    ax.set_ylabel(meta.header(y))
    ax.set_title(f"{meta.name}: {y} vs {x} ({len(f)} of {len(rows)} points on the front)",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker="o", color=c, label=short(g))
               for g, c in cmap.items()]
    handles += [Line2D([], [], linestyle="", marker=marker[v], color="grey", label=short(v))
                for v in (order if shape_by else [])]
    handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none",
                          label="Pareto front"))
    title = colour_by + (f" / {shape_by}" if shape_by else "")
    ax.legend(handles=handles, fontsize=7, title=title, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # outside: never over points
    return fig


def axis_figure(df: pd.DataFrame, axis: str, sens: dict[str, pd.DataFrame], meta: SweepMeta,
                by: str = "target") -> Figure:
    """One panel per objective: the median over the other axes against the axis value, one
    series per `by` value (when `by` is not the axis) with its min-max spread: a band along a
    line for a numeric axis, error bars on side-by-side markers for a categorical one."""
    fig = new_figure(4.2 * len(sens), 3.8)
    numeric = is_numeric_axis(df[axis])
    order = axis_order(df[axis])
    pos = {v: (float(v) if numeric else i) for i, v in enumerate(order)}
    for k, (objective, s) in enumerate(sens.items()):
        ax = fig.add_subplot(1, len(sens), k + 1)
        groups = s[by] if by in s.columns and by != axis else pd.Series("all", index=s.index)
        cmap = colours(groups.tolist(), groups_of(df, by)[1] if by != axis else ())
        for j, (g, colour) in enumerate(cmap.items()):
            sel = s[groups == g]
            xs = sel[axis].map(pos).to_numpy(dtype=float)
            med, lo, hi = (sel[c].to_numpy(dtype=float) for c in ("median", "min", "max"))
            if numeric:
                ax.plot(xs, med, marker="o", color=colour, label=short(g), linewidth=1.2)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
            else:
                shift = (j - (len(cmap) - 1) / 2) * min(0.8 / len(cmap), 0.2)
                ax.errorbar(xs + shift, med, yerr=[med - lo, hi - med], fmt="o", capsize=3,
                            color=colour, label=short(g))
        if numeric:
            vals = np.array(list(pos.values()), dtype=float)
            if len(vals) and vals.min() > 0 and vals.max() / vals.min() >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(vals, [f"{v:g}" for v in vals])
            ax.minorticks_off()
        else:
            ax.set_xticks(list(pos.values()), [short(v) for v in pos], rotation=20, ha="right")
            if pos:
                ax.set_xlim(-0.5, len(pos) - 0.5)
        _log_if_wide(ax, "y", np.concatenate([s["min"].to_numpy(float),
                                              s["max"].to_numpy(float)]))
        ax.set_xlabel(meta.header(axis))
        ax.set_ylabel(meta.header(objective) + " (median, min-max)")
        ax.grid(True, alpha=0.3)
        if k == 0 and len(cmap) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(f"{meta.name}: sensitivity to {axis}", fontsize=10)
    return fig


def file_stem(name: str) -> str:
    """A file name from an axis name: `macro.act_bw_bits` stays, anything odd becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "axis"


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def svg_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_figure(fig: Figure, folder: Path, stem: str, png: bytes | None = None) -> list[Path]:
    """`folder/stem.png` (`png` when already rendered) and `folder/stem.svg`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, data in (("png", png or png_bytes(fig)), ("svg", svg_bytes(fig))):
        path = folder / f"{stem}.{ext}"
        write_atomic(path, data)
        out.append(path)
    return out
