"""`flowc sweep report RESULTS`: the HTML page and plots of a finished (or partial) sweep.

flowc/cli/sweep.py owns `flowc sweep` and hands its `report` action to `add_report_arguments`
and `run_report` here.
"""

from __future__ import annotations

import argparse


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="results folder written by `flowc sweep SPEC -o RESULTS`")
    p.add_argument("-o", "--output", metavar="FILE.html",
                   help="the self-contained page (default: RESULTS/report.html)")
    p.add_argument("--plots", metavar="DIR",
                   help="also write every plot there as PNG and SVG (pareto.*, axis-<axis>.*)")
    p.add_argument("--objectives", metavar="A,B",
                   help="comma list of columns to minimise (default: the spec's objectives, "
                        "else latency_s,energy_pj); the first two make the Pareto plot")


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flowc.cli.paths import check_output
    from flowc.errors import UsageError
    from flowc.studies.sweep.reporter import report

    results = Path(args.results)
    if not results.is_dir():
        raise UsageError(f"{results}: not a results folder (run `flowc sweep SPEC -o "
                         f"{results}` first)")
    out = Path(args.output) if args.output else results / "report.html"
    check_output(out, "-o")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise UsageError(f"--plots {args.plots}: is not a folder")
    objectives = None
    if args.objectives:
        objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    df = report(results, out, args.plots, objectives)
    front = int(df["on_front"].sum())
    counts = df["status"].value_counts().to_dict() if "status" in df else {"ok": len(df)}
    print(f"{out}: {len(df)} points ({counts.get('ok', 0)} ok, {counts.get('skipped', 0)} "
          f"skipped, {counts.get('error', 0)} error), {front} on the Pareto front"
          + (f"; plots in {args.plots}" if args.plots else ""))
    return 0
