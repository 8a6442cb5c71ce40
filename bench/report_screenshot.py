"""Render a real sweep's HTML report in headless Chromium and check what a reader would see.

    .venv/bin/python bench/report_screenshot.py [--out DIR]

Runs a small analytic sweep (LLaMA-2-7B decode: 3 targets x 3 N:M x 3 macro counts x 2
activation bandwidths = 54 points), writes its report, then asks Chromium (Debian package
`chromium`) for a screenshot and for the DOM after load, and checks:
  - the page is not blank: grey-level standard deviation and the fraction of non-white pixels;
  - the plots rendered: coloured pixels (the page's own styling is grey; only the plots'
    markers and lines are saturated colours);
  - every axis of the sweep is named in the rendered DOM (the heading of its sensitivity
    section), and every image is inline;
  - the table of every point sorts: a header clicked once / twice (by a script appended to a
    copy of the page) leaves the rows ascending / descending in the DOM.
Exit 0 when all hold, 1 when one fails, 2 when chromium is missing (it says how to install).
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPEC = """\
[sweep]
name = "report-screenshot"

[fixed]
model = "llama-2-7b"
phase = "decode"
tokens = 2048

[axes]
target = ["flexcim", "dcim-dense", "vegeta"]
nm = ["2:4", "1:4", "dense"]
macros = [8, 16, 32]
"macro.act_bw_bits" = [512, 1024]
"""
AXES = ("target", "nm", "macros", "macro.act_bw_bits")
WINDOW = (1400, 4000)
# thresholds: a blank or white page has std ~0 and no non-white pixels; the plots are several
# hundred thousand pixels of which thousands are coloured markers and lines
MIN_STD, MIN_NONWHITE, MIN_COLOURED = 10.0, 0.02, 2000


def chromium(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with its own throw-away profile (parallel runs never share one)."""
    with tempfile.TemporaryDirectory(prefix="flowc-chromium-") as profile:
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def make_report(out: Path) -> tuple[Path, int]:
    """Run the sweep and write its report; (page, points)."""
    from flowc.studies.sweep import report
    from flowc.studies.sweep.run import run_sweep

    spec = out / "report-screenshot.toml"
    spec.write_text(SPEC, encoding="utf-8")
    results = out / "results"
    if results.exists():
        shutil.rmtree(results)
    run_sweep(spec, results)
    page = out / "report.html"
    df = report(results, page, out / "plots")
    return page, len(df)


def pixels(png: Path) -> tuple[float, float, int]:
    """(grey std, non-white fraction, coloured pixel count) of a screenshot."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    grey = rgb.mean(axis=2)
    nonwhite = float((rgb.min(axis=2) < 245).mean())
    coloured = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 80).sum())
    return float(grey.std()), nonwhite, coloured


class Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[str] = []
        self.headings: list[str] = []  # h3 texts: the per-axis sections
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag == "h3":
            self._in, self.headings = "h3", [*self.headings, ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._in = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in == "h3":
            self.headings[-1] += data


class Cells(html.parser.HTMLParser):
    """The header texts and the data-v of every cell of the page's last table."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[str] = []
        self.rows: list[list[str]] = []
        self._th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.heads, self.rows = [], []
        elif tag == "th":
            self._th = True
            self.heads.append("")
        elif tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.rows[-1].append(dict(attrs).get("data-v") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._th = False

    def handle_data(self, data: str) -> None:
        if self._th:
            self.heads[-1] += data


def check_sorting(page: Path, out: Path, column: str = "latency_s [s]") -> bool:
    """Click the every-point table's `column` header once (ascending) and twice (descending)
    in Chromium, by a script appended to a copy of the page, and read the rows' order back
    from the DOM."""
    good = []
    for clicks, order in ((1, "ascending"), (2, "descending")):
        copy = out / f"report-sorted-{clicks}.html"
        click = ("<script>var t = document.querySelectorAll('table.sortable');"
                 "var th = Array.prototype.filter.call(t[t.length - 1].tHead.rows[0].cells,"
                 f"function (c) {{ return c.textContent === '{column}'; }})[0];"
                 + "th.click();" * clicks + "</script>")
        copy.write_text(page.read_text(encoding="utf-8").replace("</body>", click + "</body>"),
                        encoding="utf-8")
        dom = chromium("--dump-dom", copy.resolve().as_uri())
        c = Cells()
        c.feed(dom.stdout)
        k = c.heads.index(column) if column in c.heads else -1
        vals = [float(r[k]) for r in c.rows if r and k >= 0 and r[k] != ""]
        want = sorted(vals, reverse=(order == "descending"))
        good.append(bool(vals) and vals == want and len(vals) == len([r for r in c.rows if r]))
        print(f"{'table sorts' if good[-1] else 'FAIL table sort'}: {clicks} click(s) on "
              f"'{column}': {len(vals)} rows {order}" + ("" if good[-1] else " (not sorted)"))
    return all(good)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for the sweep, report and screenshot (default: a "
                                  "temporary folder, kept and printed)")
    args = ap.parse_args(argv)
    if shutil.which("chromium") is None:
        print("chromium not found: install it with `apt-get install -y chromium` (Debian)")
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="flowc-report-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    page, points = make_report(out)
    print(f"sweep + report: {points} points in {time.perf_counter() - t0:.1f} s -> {page} "
          f"({page.stat().st_size / 1024:.0f} KiB)")
    shot = out / "report.png"
    url = page.resolve().as_uri()
    t0 = time.perf_counter()
    proc = chromium(f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url)
    if proc.returncode != 0 or not shot.is_file():
        print(f"FAIL chromium screenshot (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
        return 1
    dom = chromium("--dump-dom", url)
    print(f"chromium: screenshot {shot} and DOM in {time.perf_counter() - t0:.1f} s")
    ok = True
    std, nonwhite, coloured = pixels(shot)
    blank_ok = std >= MIN_STD and nonwhite >= MIN_NONWHITE
    ok &= blank_ok
    print(f"{'page not blank' if blank_ok else 'FAIL page blank'}: grey std {std:.1f} "
          f"(>= {MIN_STD:g}), non-white {100 * nonwhite:.1f}% (>= {100 * MIN_NONWHITE:g}%)")
    plots_ok = coloured >= MIN_COLOURED
    ok &= plots_ok
    print(f"{'plots rendered' if plots_ok else 'FAIL plots not rendered'}: {coloured} coloured "
          f"pixels (>= {MIN_COLOURED})")
    d = Dom()
    d.feed(dom.stdout)
    # each axis named by its own sensitivity section heading ("macros [count]")
    missing = [a for a in AXES if not any(h.split(" [")[0] == a for h in d.headings)]
    inline = bool(d.images) and all(s.startswith("data:image/png;base64,") for s in d.images)
    names_ok = dom.returncode == 0 and not missing and inline and len(d.images) == 1 + len(AXES)
    ok &= names_ok
    print(f"{'names every axis' if names_ok else 'FAIL axes or images'}: "
          f"{', '.join(AXES)}" + (f"; missing {missing}" if missing else "")
          + f"; {len(d.images)} inline images (expected {1 + len(AXES)})")
    sort_ok = check_sorting(page, out)
    ok &= sort_ok
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
