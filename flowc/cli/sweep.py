"""`flowc sweep SPEC.toml -o OUT`: a design-space sweep; `flowc sweep report RESULTS ...`: its
report (flowc/cli/sweep_report.py). docs/sweeps.md is the reference.

Why a parser subclass: `flowc sweep` takes a spec file as its first argument, and `report` as
the first word means the report action; argparse cannot express "a positional or a
sub-action", so the sweep parser hands `report ...` to the report parser itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from flowc.cli.guard import GLOBAL_FLAGS


class SweepParser(argparse.ArgumentParser):
    """The `flowc sweep` parser: `report ...` goes to the report parser (when it exists)."""

    report_parser: argparse.ArgumentParser | None = None

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> Any:
        args = list(args or [])
        first = next((i for i, a in enumerate(args) if a not in GLOBAL_FLAGS), None)
        if first is not None and args[first] == "report":
            rest = args[:first] + args[first + 1:]
            if self.report_parser is None:
                self.error("the report action is not available in this flowc "
                           "(flowc.cli.sweep_report is missing)")
            return self.report_parser.parse_known_args(rest, namespace)
        return super().parse_known_args(args, namespace)


def register(subparsers: Any, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    from flowc.executors import add_executor_arguments

    p = subparsers.add_parser(
        "sweep", help="design-space sweep over machines, models and N:M patterns "
                      "(`flowc sweep report` renders one)",
        description="Evaluate every point of a sweep spec (TOML: axes over machine fields, "
                    "targets, models, N:M patterns; docs/sweeps.md) on a local process pool or "
                    "Ray, appending each finished chunk of points to Parquet parts in OUT. A "
                    "killed sweep continues with --resume. `flowc sweep report RESULTS -o "
                    "report.html` renders the results.")
    p.__class__ = SweepParser
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep specification")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="results directory (new or empty; with --resume: the one to continue)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep stored in OUT: evaluate only the points it lacks "
                        "(the spec must be the same)")
    add_executor_arguments(p)
    add_debug(p)
    p.set_defaults(func=run)
    report = _report_parser(add_debug)
    if report is not None:
        p.report_parser = report  # type: ignore[attr-defined]
        p.doc_sections = [("flowc sweep report", report)]  # type: ignore[attr-defined]


def _report_parser(add_debug: Callable[[argparse.ArgumentParser], None]
                   ) -> argparse.ArgumentParser | None:
    """P's report action (flowc/cli/sweep_report.py: add_report_arguments, run_report)."""
    try:
        from flowc.cli import sweep_report
    except ImportError:
        return None
    rp = argparse.ArgumentParser(prog="flowc sweep report",
                                 description=(sweep_report.__doc__ or "").strip().split("\n")[0])
    sweep_report.add_report_arguments(rp)
    if not any("--debug" in a.option_strings for a in rp._actions):
        add_debug(rp)
    rp.set_defaults(func=sweep_report.run_report)
    return rp


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from flowc.cli.guard import set_verbosity
    from flowc.executors import executor_from_args, progress_bar
    from flowc.studies.sweep.run import run_sweep

    set_verbosity(args)
    quiet = getattr(args, "quiet", False)

    def say(msg: str) -> None:
        if not quiet:
            import sys

            print(f"[flowc sweep] {msg}", file=sys.stderr, flush=True)

    with executor_from_args(args) as ex, (
            nullcontext(None) if quiet else progress_bar("points")) as bar:
        summary = run_sweep(args.spec, args.out, executor=ex, resume=args.resume,
                            progress=bar, say=say)
    print(summary.render())
    return summary.exit_code  # 6 with error rows, 1 with failed checks (docs/cli.md)
