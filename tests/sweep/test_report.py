"""The sweep report: Pareto front against brute force, bests and sensitivity against pandas,
the page self-contained and escaped, plots written on their own, the caller's backend kept."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from flowc.errors import UsageError
from flowc.studies.sweep.analysis import (
    analyse_sweep,
    best_per_objective,
    meta_of,
    pareto_front,
    pareto_mask,
    sensitivity,
)
from flowc.studies.sweep.point import Shared, evaluate_point
from flowc.studies.sweep.reporter import write_report
from flowc.studies.sweep.spec import points_of

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"sweep": {"name": "report-test"},
        "fixed": {"model": "smollm2-135m", "phase": "decode", "tokens": 64},
        "axes": {"target": ["flexcim", "dcim-dense", "vegeta"], "nm": ["2:4", "1:4", "dense"],
                 "macros": [4, 16], "macro.act_bw_bits": [256, 1024]}}
AXES = ["target", "nm", "macros", "macro.act_bw_bits"]


def brute_force_front(v: np.ndarray, minimize: list[bool]) -> np.ndarray:
    """O(n^2) definition: i is kept when no j is <= in every objective and < in one."""
    v = np.where(minimize, v, -v)
    keep = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        for j in range(len(v)):
            if np.all(v[j] <= v[i]) and np.any(v[j] < v[i]):
                keep[i] = False
                break
    return keep


@pytest.mark.parametrize("seed", range(12))
def test_pareto_mask_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 120)), int(rng.integers(2, 4))
    # few distinct values: many ties, equal rows and rows equal in one objective only
    v = rng.integers(0, 6 if seed % 2 else 40, size=(n, k)).astype(float)
    minimize = [bool(x) for x in rng.integers(0, 2, size=k)] if seed % 3 else [True] * k
    assert np.array_equal(pareto_mask(v, minimize), brute_force_front(v, minimize))


def test_pareto_keeps_equal_rows_and_drops_weak_ties() -> None:
    v = np.array([[1.0, 5.0], [1.0, 5.0], [1.0, 6.0], [2.0, 4.0], [3.0, 4.0], [0.5, 9.0]])
    assert pareto_mask(v, [True, True]).tolist() == [True, True, False, True, False, True]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Real rows: the sweep's own point evaluation over a 36-point grid (analytic)."""
    shared = Shared(mode="analytic")
    df = pd.DataFrame([evaluate_point(shared, p) for p in points_of(SPEC)])
    assert (df["status"] == "ok").all(), df["reason"].dropna().tolist()
    return df


def test_front_of_real_rows(rows: pd.DataFrame) -> None:
    df = rows.copy()
    df.loc[df["point"] == 3, ["status", "reason"]] = ["skipped", "pruned by bounds"]
    df.loc[df["point"] == 3, ["latency_s", "energy_pj"]] = np.nan
    front = pareto_front(df, ("latency_s", "energy_pj"))
    ok = df[df["status"] == "ok"]
    expect = brute_force_front(ok[["latency_s", "energy_pj"]].to_numpy(), [True, True])
    assert sorted(front["point"]) == sorted(ok["point"][expect])
    assert 3 not in set(front["point"])
    assert front["latency_s"].is_monotonic_increasing
    assert len(front) >= 2  # fast designs are not the frugal ones here


def test_best_per_objective(rows: pd.DataFrame) -> None:
    best = best_per_objective(rows, ["latency_s", "energy_pj", "edp_pj_s"])
    for _, b in best.iterrows():
        col = rows[b["objective"]]
        assert b["value"] == col.min()
        assert b["point"] == rows["point"][col == col.min()].min()  # ties: the lowest point
        assert b["ties"] == (col == col.min()).sum()
    # energy does not depend on macros or bandwidth here: the least-energy value is shared
    assert best.set_index("objective").loc["energy_pj", "ties"] > 1


def test_sensitivity_is_median_min_max_per_target(rows: pd.DataFrame) -> None:
    s = sensitivity(rows, "macros", "latency_s")
    assert list(s["macros"].unique()) == [4, 16]
    assert list(s["target"][s["macros"] == 4]) == ["flexcim", "dcim-dense", "vegeta"]
    for _, r in s.iterrows():
        sel = rows[(rows["macros"] == r["macros"]) & (rows["target"] == r["target"])]
        assert (r["median"], r["min"], r["max"], r["n"]) == (
            sel["latency_s"].median(), sel["latency_s"].min(), sel["latency_s"].max(), len(sel))
    by_target = sensitivity(rows, "target", "energy_pj")  # the axis is the target: no split
    assert list(by_target.columns) == ["target", "median", "min", "max", "n"]
    assert list(by_target["n"]) == [12, 12, 12]


def test_objective_must_be_a_column(rows: pd.DataFrame) -> None:
    with pytest.raises(UsageError, match="objective column.*nope"):
        pareto_front(rows, ("latency_s", "nope"))


class Page(html.parser.HTMLParser):
    """Collects the tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_report_page_and_plots(rows: pd.DataFrame, tmp_path: Path) -> None:
    df = rows.copy()
    evil = '<script>alert("x")</script> & "quoted"'
    df.loc[df["point"] == 5, ["status", "reason"]] = ["error", evil]
    df.loc[df["point"] == 5, ["latency_s", "energy_pj", "edp_pj_s"]] = np.nan
    out = tmp_path / "report.html"
    # the caller's own backend choice (not this machine's default, agg) survives the report,
    # and pyplot (the module that switches backends) is not imported by it
    before, pyplot_before = matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules
    matplotlib.use("svg")
    try:
        a = write_report(df, meta_of(df, "report-test", AXES), out, tmp_path / "plots")
        assert matplotlib.get_backend() == "svg"
        assert ("matplotlib.pyplot" in sys.modules) == pyplot_before
    finally:
        matplotlib.use(before)
    page = out.read_text(encoding="utf-8")
    # self-contained: no URL of any scheme, no external resource, images inlined
    bare = re.sub(r"data:image/png;base64,[A-Za-z0-9+/]+=*", "DATA", page)
    assert not re.search(r"(?i)(https?:|ftp:|//[a-z0-9])", bare)
    assert not re.search(r"(?i)<link|@import|url\(", bare)
    p = Page()
    p.feed(page)
    srcs = [at.get("src") or "" for tag, at in p.tags if tag in ("img", "script", "iframe")]
    imgs = [s for tag, at in p.tags if tag == "img" for s in [at.get("src") or ""]]
    assert all(s.startswith("data:image/png;base64,") for s in imgs) and len(imgs) == 1 + len(AXES)
    assert all(s == "" or s.startswith("data:") for s in srcs)
    # escaped: the reason shows as text, never as markup
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert evil in "".join(p.text)
    # names every axis with its unit, the summary counts, every point in the table
    text = " ".join(p.text)
    for h in ("macros [count]", "macro.act_bw_bits [bit/cycle]", "latency_s [s]",
              "energy_pj [pJ]", "35 ok, 0 skipped, 1 error"):
        assert h in text
    table = [at for tag, at in p.tags if tag == "table" and at.get("class") == "sortable"]
    assert len(table) == 2  # the front and every point
    assert len(re.findall(r"<tr", page.split("<h2>Every point</h2>")[1])) == len(df) + 1
    assert a.df["on_front"].sum() == len(a.front)
    # the plots on their own: valid PNG and SVG per figure
    names = sorted(f.name for f in (tmp_path / "plots").iterdir())
    stems = ["axis-macro.act_bw_bits", "axis-macros", "axis-nm", "axis-target", "pareto"]
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("png", "svg"))
    for s in stems:
        assert (tmp_path / "plots" / f"{s}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(tmp_path / "plots" / f"{s}.svg").getroot().tag.endswith("svg")


def test_perplexity_front_when_measured(rows: pd.DataFrame, tmp_path: Path) -> None:
    df = rows.copy()
    # a measured-looking column: any finite values work, the plot needs only their presence
    df["perplexity"] = 10.0 + df["point"] % 7
    a = write_report(df, meta_of(df, "ppl", ["target"]), tmp_path / "r.html", tmp_path / "plots")
    assert a.ppl_front is not None
    expect = brute_force_front(df[["latency_s", "perplexity"]].to_numpy(), [True, True])
    assert sorted(a.ppl_front["point"]) == sorted(df["point"][expect])
    assert (tmp_path / "plots" / "pareto-perplexity.svg").is_file()
    assert "perplexity" in set(a.best["objective"])


def test_report_without_a_finished_point(rows: pd.DataFrame, tmp_path: Path) -> None:
    """Every point failed (or none is stored yet): the page still says so, nothing crashes."""
    df = rows.assign(status="error", reason="boom", latency_s=np.nan, energy_pj=np.nan)
    for d, name in ((df, "all-error"), (rows.iloc[:0], "empty")):
        a = write_report(d, meta_of(rows, name, ["target", "macros"]), tmp_path / f"{name}.html")
        page = (tmp_path / f"{name}.html").read_text(encoding="utf-8")
        assert a.front.empty and "No finished point." in page
    assert "36 point(s)" in (tmp_path / "all-error.html").read_text(encoding="utf-8")


def test_missing_output_folder_is_a_usage_error(rows: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "absent" / "r.html"
    with pytest.raises(UsageError, match="does not exist"):
        write_report(rows, meta_of(rows, "x", AXES), out)
    assert not out.parent.exists()


def test_analysis_names_a_missing_axis(rows: pd.DataFrame) -> None:
    with pytest.raises(UsageError, match="axis 'macro.rows'"):
        analyse_sweep(rows, meta_of(rows, "x", ["target", "macro.rows"]))


def test_cli_sweep_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flowc sweep report RESULTS -o FILE --plots DIR --objectives ...` end to end, and its
    one-line errors (exit 2) for a folder that is not results and an unknown objective."""
    from flowc.cli.main import main
    from flowc.executors import SerialExecutor
    from flowc.studies.sweep import run_sweep

    small = {**SPEC, "axes": {"target": ["flexcim", "vegeta"], "macros": [4, 16]}}
    run_sweep(small, tmp_path / "res", executor=SerialExecutor())
    assert main(["sweep", "report", str(tmp_path / "res"), "-o", str(tmp_path / "r.html"),
                 "--plots", str(tmp_path / "plots"), "--objectives", "latency_s,macros"]) == 0
    line = capsys.readouterr().out.strip()
    front = pareto_front(pd.DataFrame([evaluate_point(Shared(mode="analytic"), p)
                                       for p in points_of(small)]), ["latency_s", "macros"])
    assert line == (f"{tmp_path / 'r.html'}: 4 points (4 ok, 0 skipped, 0 error), "
                    f"{len(front)} on the Pareto front; plots in {tmp_path / 'plots'}")
    assert (tmp_path / "plots" / "pareto.svg").is_file()
    assert main(["sweep", "report", str(tmp_path / "res")]) == 0  # default: RESULTS/report.html
    assert (tmp_path / "res" / "report.html").is_file()
    capsys.readouterr()
    assert main(["sweep", "report", str(tmp_path / "nope")]) == 2
    assert "nope: not a results folder" in capsys.readouterr().err
    assert main(["sweep", "report", str(tmp_path / "res"), "-o", str(tmp_path / "x.html"),
                 "--objectives", "latency_s,area"]) == 2
    assert "objective column(s) area not in the results" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_report_api_reads_a_results_directory(rows: pd.DataFrame, tmp_path: Path) -> None:
    """flowc.studies.sweep.report on what run_sweep stored: the same numbers as the rows
    evaluated directly, the axes and objectives taken from sweep.json."""
    from flowc.executors import SerialExecutor
    from flowc.studies.sweep import report, run_sweep

    run_sweep(SPEC, tmp_path / "res", executor=SerialExecutor())
    df = report(tmp_path / "res", tmp_path / "r.html")
    cols = ["point", "key", "target", "nm", "macros", "cycles", "latency_s", "energy_pj"]
    pd.testing.assert_frame_equal(df[cols], rows[cols], check_dtype=False)
    assert list(df["on_front"]) == list(df["point"].isin(pareto_front(rows)["point"]))
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<h1>report-test</h1>" in page
    assert all(f"<h3>{h}</h3>" in page for h in ("target", "nm", "macros [count]",
                                                  "macro.act_bw_bits [bit/cycle]"))


def test_report_of_an_unfinished_sweep(tmp_path: Path) -> None:
    """A sweep stopped early has fewer rows than its spec: the page says how many are missing."""
    from flowc.executors import SerialExecutor
    from flowc.studies.sweep import report, run_sweep

    run_sweep(SPEC, tmp_path / "res", executor=SerialExecutor())
    parts = sorted((tmp_path / "res" / "parts").glob("part-*.parquet"))
    assert len(parts) > 1
    parts[-1].unlink()  # what a kill before the last chunk was stored leaves
    df = report(tmp_path / "res", tmp_path / "r.html")
    missing = 36 - len(df)
    assert 0 < missing < 36
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"{len(df)}: {len(df)} ok, 0 skipped, 0 error (of 36 in the spec: {missing} not " \
           "evaluated yet" in page


@pytest.mark.slow
def test_report_screenshot_in_headless_chromium(tmp_path: Path) -> None:
    """bench/report_screenshot.py: a real sweep's page rendered by Chromium, not blank, every
    axis named in the DOM."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "report_screenshot.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "page not blank" in proc.stdout and "names every axis" in proc.stdout
    assert (tmp_path / "report.png").stat().st_size > 10_000


DSE_BLOCK = re.compile(r"<!-- (dse-[a-z]+):begin -->\n```python\n(.*?)```\n\n```text\n(.*?)```\n"
                       r"<!-- \1:end -->", re.S)
DSE_SPECS = ("llama2-7b-prefill", "llama2-7b-decode", "llama2-7b-prefill-booth")


def test_dse_study_numbers_are_what_the_shipped_specs_give(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """docs/dse.md: rerun the three shipped sweeps, run the page's scripts on them, and
    compare their output with the output printed on the page, character for character
    (390 analytic points: about 2.5 s with the shared pricing cache)."""
    import contextlib
    import io

    from flowc.executors import SerialExecutor
    from flowc.studies.sweep import run_sweep

    for name in DSE_SPECS:
        run_sweep(ROOT / "examples" / "sweeps" / f"{name}.toml",
                  tmp_path / "out" / "sweeps" / name, executor=SerialExecutor())
    monkeypatch.chdir(tmp_path)
    blocks = DSE_BLOCK.findall((ROOT / "docs" / "dse.md").read_text(encoding="utf-8"))
    assert [b[0] for b in blocks] == ["dse-script", "dse-booth"]
    for name, code, printed in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"docs/dse.md:{name}", "exec"), {})
        assert out.getvalue() == printed, name
