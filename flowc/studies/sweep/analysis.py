"""What a sweep's table says: the Pareto front, the best point per objective, per-axis sensitivity.

Everything here takes the DataFrame of `load_results` (one row per point, the row schema of
docs/sweeps.md) and returns DataFrames, so the HTML page, the plots and a user's notebook read
the same numbers. Only rows with `status == "ok"` and a value for every objective are compared:
skipped (pruned) and failed points have no outputs.

Sensitivity marginalises the other axes by the median over every point sharing the axis value
(and the target, when the target is not the axis), with the min and max beside it: the median
says where the typical design lands, the spread how much the other axes still matter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowc.errors import UsageError

OBJECTIVES: tuple[str, str] = ("latency_s", "energy_pj")
# Output columns of the row schema and their units (also written by the store as `flowc.units`).
OUTPUT_UNITS: dict[str, str] = {
    "cycles": "cycles", "latency_s": "s", "energy_pj": "pJ", "edp_pj_s": "pJ*s",
    "gemm_cycles": "cycles", "attention_cycles": "cycles", "setup_cycles": "cycles",
    "setup_energy_pj": "pJ", "macs": "MAC", "perplexity": "ppl", "elapsed_s": "s",
    "tokens": "tokens",
}
# Units of machine fields an axis may name (docs/hardware.md); energy entries are per their unit.
FIELD_UNITS: dict[str, str] = {
    "macros": "count", "clock_mhz": "MHz", "macro.subarrays": "sub-macros",
    "macro.rows": "rows", "macro.cols": "columns", "macro.weight_bits": "bit",
    "macro.act_bits": "bit", "macro.meta_bits": "bit", "macro.input_bits": "bit/cycle",
    "macro.pairs": "pairs", "macro.act_bw_bits": "bit/cycle", "vector.lanes": "lanes",
    "tokens": "tokens", "kv_len": "tokens",
}
# Columns of the row schema that are neither axes nor outputs.
BOOKKEEPING = ("point", "key", "status", "reason", "check", "flowc_version", "machine_hash",
               "elapsed_s", "worker")
INPUTS = ("target", "model", "nm", "phase", "tokens", "kv_len")


@dataclass
class SweepMeta:
    """What the report needs besides the rows: names, axes in spec order, units, version."""

    name: str
    axes: list[str]
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    flowc_version: str = ""
    units: dict[str, str] = field(default_factory=dict)
    planned: int | None = None  # points in the spec (sweep.json): more than stored = unfinished

    def unit(self, column: str) -> str:
        if column in self.units:
            return self.units[column]
        if column in OUTPUT_UNITS:
            return OUTPUT_UNITS[column]
        if column.startswith("energy.") and column.endswith(".pj"):
            return "pJ"
        return FIELD_UNITS.get(column, "")

    def header(self, column: str) -> str:
        """`column [unit]`, or the bare name for unitless columns (target, nm, status)."""
        u = self.unit(column)
        return f"{column} [{u}]" if u else column


def meta_of(df: pd.DataFrame, name: str = "sweep", axes: Sequence[str] | None = None
            ) -> SweepMeta:
    """Meta for a bare DataFrame: axes are the columns that are neither bookkeeping, fixed
    inputs nor outputs (plus the inputs that vary, e.g. target), in column order."""
    if axes is None:
        axes = [c for c in df.columns if c not in BOOKKEEPING and c not in OUTPUT_UNITS
                and (c not in INPUTS or df[c].map(label).nunique() > 1)]
    version = df["flowc_version"].dropna().iloc[0] if "flowc_version" in df and \
        df["flowc_version"].notna().any() else ""
    units = dict(df.attrs.get("units", {})) if isinstance(df.attrs.get("units"), dict) else {}
    return SweepMeta(name, list(axes), list(OBJECTIVES), str(version), units)


def read_meta(results_dir: str | Path, df: pd.DataFrame) -> SweepMeta:
    """Meta from `RESULTS/sweep.json` (axis order, objectives, version), else from `df`."""
    path = Path(results_dir) / "sweep.json"
    if not path.is_file():
        return meta_of(df, Path(results_dir).name)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the sweep description ({exc})") from None
    meta = meta_of(df, str(d.get("name") or Path(results_dir).name), d.get("axes"))
    meta.objectives = list(d.get("objectives") or OBJECTIVES)
    meta.flowc_version = str(d.get("flowc_version") or meta.flowc_version)
    meta.planned = int(d["points"]) if isinstance(d.get("points"), int) else None
    if isinstance(d.get("units"), dict):
        meta.units = {**d["units"], **meta.units}
    return meta


def short(v: Any, width: int = 28) -> str:
    """An axis value for a tick label or legend: an assignment or pipeline named by its file
    name or its start, anything else as text (the tables keep the full value)."""
    text = str(label(v))
    if len(text) <= width:
        return text
    kind, sep, rest = text.partition(":")
    if sep and kind == "assignment":
        return Path(rest).stem
    return text[: width - 3] + "..."


def label(v: Any) -> Any:
    """A hashable, printable form of an axis value ({assignment = "a.json"} -> its JSON)."""
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, np.ndarray):
        return json.dumps(v.tolist(), default=str)
    return v


def ok_rows(df: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """Rows that finished and carry every objective (the ones fronts and bests compare)."""
    missing = [o for o in objectives if o not in df.columns]
    if missing:
        raise UsageError(f"objective column(s) {', '.join(missing)} not in the results "
                         f"(columns: {', '.join(map(str, df.columns))})")
    sel = df["status"].eq("ok") if "status" in df.columns else pd.Series(True, index=df.index)
    for o in objectives:
        sel &= df[o].notna()
    return df[sel]


def pareto_mask(values: np.ndarray, minimize: Sequence[bool]) -> np.ndarray:
    """Which rows of `values` [n, k] no other row dominates (at least as good in every
    objective and strictly better in one). Equal rows do not dominate each other: all stay.

    Rows are visited in lexicographic order of the (minimised) objectives; a dominator always
    sorts before what it dominates, and domination is transitive, so testing each row against
    the front found so far is exact.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or len(minimize) != v.shape[1]:
        raise UsageError(f"pareto: values of shape {v.shape} for {len(minimize)} objectives")
    v = np.where(np.asarray(minimize, dtype=bool), v, -v)
    order = np.lexsort(v.T[::-1])
    keep = np.zeros(len(v), dtype=bool)
    front = np.empty_like(v)  # the front so far, in its first `size` rows
    size = 0
    for i in order:
        row, f = v[i], front[:size]
        if size and np.any(np.all(f <= row, axis=1) & np.any(f < row, axis=1)):
            continue
        keep[i] = True
        front[size] = row
        size += 1
    return keep


def pareto_front(df: pd.DataFrame, objectives: Sequence[str] = OBJECTIVES,
                 minimize: Sequence[bool] | None = None) -> pd.DataFrame:
    """The rows of `df` on the Pareto front of `objectives` (default: all minimised), among
    finished rows with every objective, sorted by the first objective then the point."""
    minimize = [True] * len(objectives) if minimize is None else list(minimize)
    if len(minimize) != len(objectives):
        raise UsageError(f"pareto: {len(objectives)} objectives but {len(minimize)} "
                         "minimize flags")
    rows = ok_rows(df, objectives)
    mask = pareto_mask(rows[list(objectives)].to_numpy(dtype=float), minimize)
    front = rows[mask]
    keys = [objectives[0]] + (["point"] if "point" in front.columns else [])
    return front.sort_values(keys, ascending=[minimize[0]] + [True] * (len(keys) - 1),
                             kind="stable")


def best_per_objective(df: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """One row per objective: the finished point with the lowest value (ties: lowest point),
    with `ties` (how many finished points share that value) and every column of that row."""
    out = []
    for o in objectives:
        rows = ok_rows(df, [o])
        if rows.empty:
            continue
        by = [o] + (["point"] if "point" in rows.columns else [])
        best = rows.sort_values(by, kind="stable").iloc[0]
        ties = int((rows[o] == best[o]).sum())
        out.append({"objective": o, "value": best[o], "ties": ties, **best.to_dict()})
    return pd.DataFrame(out)


def is_numeric_axis(values: pd.Series) -> bool:
    v = values.dropna()
    return len(v) > 0 and all(isinstance(x, int | float | np.integer | np.floating)
                              and not isinstance(x, bool) for x in v)


def axis_order(values: pd.Series) -> list[Any]:
    """The distinct values of an axis column: numbers ascending, others in first-seen order
    (the table is sorted by point, i.e. spec order)."""
    labels = values.map(label)
    distinct = list(dict.fromkeys(labels.dropna().tolist()))
    return sorted(distinct) if is_numeric_axis(values) else distinct


def sensitivity(df: pd.DataFrame, axis: str, objective: str, by: str | None = "target"
                ) -> pd.DataFrame:
    """Objective vs one axis, the other axes marginalised: per axis value (and per `by`
    value when `by` is a column other than the axis) the median, min and max of `objective`
    over the finished points, and how many there were (`n`)."""
    if axis not in df.columns:
        raise UsageError(f"sensitivity: axis {axis!r} is not a column of the results")
    rows = ok_rows(df, [objective]).copy()
    rows["_x"] = rows[axis].map(label)
    keys = ["_x"] + ([by] if by and by != axis and by in rows.columns else [])
    if len(keys) == 2:
        rows[by] = rows[by].map(label)
    g = rows.groupby(keys, sort=False, dropna=False)[objective]
    out = g.agg(median="median", min="min", max="max", n="count").reset_index()
    order = {v: i for i, v in enumerate(axis_order(df[axis]))}
    out["_o"] = out["_x"].map(order)
    sort = ["_o"]
    if len(keys) == 2:  # the `by` values in the table's first-seen order, as in the plots
        seen = {v: i for i, v in enumerate(dict.fromkeys(df[by].map(label).tolist()))}
        out["_b"] = out[by].map(seen)
        sort.append("_b")
    out = out.sort_values(sort, kind="stable").drop(columns=sort)
    return out.rename(columns={"_x": axis}).reset_index(drop=True)


def status_summary(df: pd.DataFrame) -> dict[str, Any]:
    """Counts per status and the reasons of skipped / failed points (reason -> points)."""
    status = df["status"] if "status" in df.columns else pd.Series("ok", index=df.index)
    counts = {s: int((status == s).sum()) for s in ("ok", "skipped", "error")}
    reasons: dict[str, dict[str, list[int]]] = {"skipped": {}, "error": {}}
    for s in ("skipped", "error"):
        rows = df[status == s]
        for _, r in rows.iterrows():
            why = str(r.get("reason") or "(no reason recorded)")
            reasons[s].setdefault(why, []).append(int(r.get("point", -1)))
    return {"total": len(df), "counts": counts, "reasons": reasons}


# -- the whole report ---------------------------------------------------------------------------
@dataclass
class Analysis:
    """Everything the page shows, computed once from the table (plots and HTML only draw)."""

    meta: SweepMeta
    df: pd.DataFrame  # every row, plus `on_front` (bool)
    objectives: list[str]
    front: pd.DataFrame
    best: pd.DataFrame
    sens: dict[str, dict[str, pd.DataFrame]]  # axis -> objective -> sensitivity table
    summary: dict[str, Any]
    axis_values: dict[str, list[Any]]
    fixed: dict[str, Any]  # inputs that are the same for every point
    ppl_front: pd.DataFrame | None = None  # (first objective, perplexity) when measured

    def table_columns(self) -> list[str]:
        """The columns of the every-point table: point, status, axes, inputs, outputs."""
        df, cols = self.df, ["point", "status"] + list(self.meta.axes)
        cols += [c for c in INPUTS if c in df.columns and c not in cols]
        cols += [c for c in OUTPUT_UNITS if c in df.columns and c not in cols
                 and c != "elapsed_s" and df[c].notna().any()]
        cols += [c for c in ("check", "on_front", "reason", "machine_hash", "elapsed_s",
                             "worker") if c in df.columns and df[c].notna().any()]
        return [c for c in dict.fromkeys(cols) if c in df.columns]


def analyse_sweep(df: pd.DataFrame, meta: SweepMeta,
                  objectives: Sequence[str] | None = None) -> Analysis:
    """Front, bests and per-axis sensitivity of a results table (objectives minimised)."""
    objectives = list(objectives or meta.objectives)
    if len(objectives) < 2:
        raise UsageError(f"--objectives: need at least two columns, got {objectives}")
    for a in meta.axes:
        if a not in df.columns:
            raise UsageError(f"axis {a!r} of the sweep is not a column of the results")
    df = df.sort_values("point", kind="stable") if "point" in df.columns else df
    front = pareto_front(df, objectives)
    df = df.assign(on_front=df.index.isin(front.index))
    # an axis may be an objective (`--objectives latency_s,macros`: array size as the cost);
    # its "best" and its sensitivity to the axes are not worth a plot
    outputs = [o for o in objectives if o not in meta.axes] or list(OBJECTIVES)
    bests = outputs + [c for c in ("edp_pj_s", "perplexity")
                       if c in df.columns and c not in outputs and df[c].notna().any()]
    sens = {a: {o: sensitivity(df, a, o) for o in outputs[:2]} for a in meta.axes}
    ppl = None
    if "perplexity" in df.columns and "perplexity" not in objectives[:2] \
            and ok_rows(df, [objectives[0], "perplexity"]).shape[0]:
        ppl = pareto_front(df, [objectives[0], "perplexity"])
    # the inputs every point shares ([fixed] of the spec: model, phase, machine fields)
    inputs = [c for c in df.columns if c not in BOOKKEEPING and c not in OUTPUT_UNITS
              and c not in meta.axes and c != "on_front"] + ["tokens"]
    fixed = {c: label(df[c].iloc[0]) for c in dict.fromkeys(inputs)
             if c in df.columns and len(df) and df[c].map(label).nunique(dropna=False) == 1}
    return Analysis(meta, df, objectives, front, best_per_objective(df, bests), sens,
                    status_summary(df), {a: axis_order(df[a]) for a in meta.axes}, fixed, ppl)
