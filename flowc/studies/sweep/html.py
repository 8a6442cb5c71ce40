"""The sweep report as one self-contained HTML page.

Plots are inlined as base64 PNG data URIs and the CSS and the table-sorting script are inline,
so the page needs no network and no other file at view time (it can be mailed or attached to
an issue). There is no URL in the page at all: tests/sweep/test_report.py checks it. Every
value from the results (axis values, reasons, names) is escaped with `html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from flowc.studies.sweep.analysis import OUTPUT_UNITS, label

if TYPE_CHECKING:
    from flowc.studies.sweep.analysis import Analysis

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #1b1b1b; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em;
  border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.6em 0; }
th, td { border: 1px solid #d4d4d4; padding: 0.2em 0.5em; text-align: right;
  white-space: nowrap; }
.wide { overflow-x: auto; max-width: 100%; }
th { background: #f0f0f0; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
th[data-dir=asc]::after { content: " \\25B2"; } th[data-dir=desc]::after { content: " \\25BC"; }
td.t { text-align: left; } tr.front td { background: #fff6d6; }
.status-error { color: #a00000; } .status-skipped { color: #7a6000; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.15em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""

# Click a header to sort by it (again: reverse). Numbers compare as numbers, empty cells last.
JS = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  var heads = t.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("data-dir") !== "asc";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[i].getAttribute("data-v"), y = b.cells[i].getAttribute("data-v");
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y), c;
        if (!isNaN(nx) && !isNaN(ny)) { c = nx - ny; } else { c = x < y ? -1 : x > y ? 1 : 0; }
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

E = html.escape


def fmt(v: Any) -> str:
    """A cell's text: fractional floats to 6 significant digits, missing values empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, float):  # whole numbers (cycles read back with nulls) exactly
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"
    return str(label(v))


def sort_key(v: Any) -> str:
    """The data-v attribute: the full-precision number, or the text."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    return str(label(v))


def cell(v: Any) -> str:
    v = v.item() if hasattr(v, "item") else v
    num = isinstance(v, int | float) and not isinstance(v, bool)
    return f'<td data-v="{E(sort_key(v))}"{"" if num else " class=t"}>{E(fmt(v))}</td>'


def table(df: pd.DataFrame, columns: Sequence[str], headers: Sequence[str],
          sortable: bool = False, front: set[int] | None = None) -> str:
    """A table of `columns` of `df` (a missing column: empty cells); rows whose point is in
    `front` are highlighted. Built column-wise from plain lists: 10,000 rows in well under a
    second (row-wise pandas access was the report's slowest step)."""
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    n = len(df)
    cols = [df[c].tolist() if c in df.columns else [None] * n for c in columns]
    points = df["point"].tolist() if "point" in df.columns else [-1] * n
    rows = []
    for i in range(n):
        mark = ' class="front"' if front is not None and int(points[i]) in front else ""
        rows.append(f"<tr{mark}>{''.join(cell(col[i]) for col in cols)}</tr>")
    return (f"<div class=wide><table{cls}><thead><tr>{head}</tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table></div>")


def image(uri: str, alt: str) -> str:
    return f'<img src="{E(uri)}" alt="{E(alt)}">'


def unfinished(stored: int, planned: int | None) -> str:
    if planned is None or planned <= stored:
        return ""
    return (f" (of {planned} in the spec: {planned - stored} not evaluated yet; "
            "`flowc sweep SPEC -o RESULTS --resume` continues)")


def summary_section(a: Analysis) -> str:
    s, m = a.summary, a.meta
    counts = s["counts"]
    items = [("sweep", m.name), ("flowc version", m.flowc_version or "(not recorded)"),
             ("points", f"{s['total']}: {counts['ok']} ok, {counts['skipped']} skipped, "
                        f"{counts['error']} error" + unfinished(s["total"], m.planned)),
             ("objectives", ", ".join(m.header(o) for o in a.objectives))]
    for axis in m.axes:
        values = a.axis_values.get(axis, [])
        items.append((f"axis {m.header(axis)}", ", ".join(fmt(v) for v in values)))
    for col, v in a.fixed.items():
        items.append((f"fixed {m.header(col)}", fmt(v)))
    out = ["<h2>Sweep summary</h2><dl>"]
    out += [f"<dt>{E(k)}</dt><dd>{E(str(v))}</dd>" for k, v in items]
    out.append("</dl>")
    for status in ("skipped", "error"):
        reasons = s["reasons"][status]
        if not reasons:
            continue
        out.append(f"<h3>{E(status)} points</h3><ul class='status-{E(status)}'>")
        for why, pts in reasons.items():
            shown = ", ".join(map(str, pts[:20])) + (" ..." if len(pts) > 20 else "")
            out.append(f"<li>{len(pts)} point(s) [{E(shown)}]: {E(why)}</li>")
        out.append("</ul>")
    return "\n".join(out)


def pareto_section(a: Analysis, images: dict[str, str]) -> str:
    x, y = a.objectives[0], a.objectives[1]
    out = [f"<h2>Pareto front: {E(y)} vs {E(x)}</h2>", image(images["pareto"], "Pareto front"),
           f"<p class='note'>{len(a.front)} point(s) on the front of {E(', '.join(a.objectives))}"
           " (all minimised; a point is on the front when no other finished point is at least "
           "as good in every objective and better in one).</p>"]
    cols = ["point"] + a.meta.axes + [o for o in a.objectives if o not in a.meta.axes]
    cols += [c for c in ("edp_pj_s", "perplexity") if c in a.df.columns and c not in cols
             and a.df[c].notna().any()]
    out.append(table(a.front, cols, [a.meta.header(c) for c in cols], sortable=True))
    if "pareto-perplexity" in images:
        out += [f"<h2>Pareto front: perplexity vs {E(x)}</h2>",
                image(images["pareto-perplexity"], "Pareto front with perplexity")]
    return "\n".join(out)


def best_section(a: Analysis) -> str:
    cols = ["objective", "value", "ties", "point"] + a.meta.axes
    heads = ["objective", "value", "points with this value", "point (the lowest)"] + [
        a.meta.header(c) for c in a.meta.axes]
    if a.best.empty:
        return "<h2>Best point per objective</h2>\n<p class='note'>No finished point.</p>"
    best = a.best.copy()
    best["value"] = [f"{v:.6g} {OUTPUT_UNITS.get(o, a.meta.unit(o))}".strip()
                     for o, v in zip(best["objective"], best["value"], strict=True)]
    return "<h2>Best point per objective</h2>\n" + table(best, cols, heads)


def axes_section(a: Analysis, images: dict[str, str]) -> str:
    out = ["<h2>Sensitivity per axis</h2>",
           "<p class='note'>Each panel: the median of the objective over every finished point "
           "with that axis value (per target, when the target is not the axis), the band its "
           "min-max range: how much the other axes still move it.</p>"]
    for axis in a.meta.axes:
        out.append(f"<h3>{E(a.meta.header(axis))}</h3>")
        out.append(image(images[f"axis:{axis}"], f"sensitivity to {axis}"))
    return "\n".join(out)


def points_section(a: Analysis) -> str:
    cols = a.table_columns()
    return ("<h2>Every point</h2><p class='note'>Click a column header to sort; rows on the "
            "Pareto front are highlighted.</p>\n"
            + table(a.df, cols, [a.meta.header(c) for c in cols], sortable=True,
                    front=set(a.front["point"].astype(int)) if "point" in a.front else None))


def render(a: Analysis, images: dict[str, str]) -> str:
    """The whole page. `images`: "pareto", optional "pareto-perplexity", "axis:<name>" ->
    data URI."""
    body = "\n".join([summary_section(a), pareto_section(a, images), best_section(a),
                      axes_section(a, images), points_section(a)])
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{E(a.meta.name)}: flowc sweep report</title><style>{CSS}</style></head>\n"
            f"<body><h1>{E(a.meta.name)}</h1>\n{body}\n<script>{JS}</script></body></html>\n")
