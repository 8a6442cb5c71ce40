"""`flowc inspect FILE.fcim`: what a program file holds, without running it: the manifest
(format, ISA version, inputs, outputs), the source and pipeline, the machine and its hash,
every layer, every pass report and the sizes. The file is fully checked first (the reader
flowrun uses)."""

from __future__ import annotations

import argparse
import json
import zipfile
from collections.abc import Callable
from typing import Any


def register(subparsers, add_debug: Callable[[argparse.ArgumentParser], None]) -> None:
    p = subparsers.add_parser("inspect", help="show what a .fcim holds: manifest, pipeline, "
                              "machine, layers, pass reports, sizes",
                              description=__doc__.splitlines()[0])
    p.add_argument("file", help="the .fcim program")
    p.add_argument("--full", action="store_true",
                   help="print every pass report in full (JSON) instead of its summary")
    add_debug(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowc.backend.container import load, size_report
    from flowc.cli.paths import check_input
    from flowc.studies.results import machine_entry, pass_name
    from flowc.termtable import table

    check_input(args.file, ".fcim file")
    image = load(args.file)  # every check the reader makes, before anything is shown
    with zipfile.ZipFile(args.file) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    info = image.compile_info or {}
    sizes = size_report(args.file)
    m = image.machine
    out = [f"{args.file}: {manifest['format']} format {manifest['format_version']}, ISA "
           f"version {manifest['isa_version']}, {len(image.program.instructions)} instructions",
           f"source: {info.get('source', '?')}",
           f"pipeline: {info.get('pipeline', '?')}",
           f"machine: {m['name']} ({m.get('description', '')}), {m['clock_mhz']:g} MHz, "
           f"{m['macros']} macros, patterns {', '.join(m['patterns'])}; sha256 "
           f"{machine_entry(m)['hash']}",
           f"calibration: {_flat(info.get('calibration', {}))}",
           "stored prices: " + (f"{len(image.priced.entries)} (priced.json: per-layer costs of "
                                "one run; flowrun uses the one priced on its machine, "
                                "numerics and flowc code)" if image.priced
                                else "none (flowrun prices its run)"),
           table(["input/output", "shape", "dtype"],
                 [(f"in {io.name}", "x".join(map(str, io.shape)), io.dtype) for io in image.inputs]
                 + [(f"out {io.name}", "x".join(map(str, io.shape)), io.dtype)
                    for io in image.outputs]),
           table(["layer", "kind", "N:M", "K", "N", "kept weights"],
                 [(pass_name(i.name), i.kind, _pattern(i), i.in_features or None, i.out_features or None,
                   i.nonzeros or None) for i in image.layers]),
           "pass reports:"]
    for name, report in (info.get("reports") or {}).items():
        out.append(f"  {name}: " + (json.dumps(report, indent=1, sort_keys=True) if args.full
                                    else _flat(report)))
    out.append(f"sizes (compressed bytes): machine payload {sizes['machine']:,}, check payload "
               f"{sizes['check']:,}, other {sizes['other']:,}; file {sizes['total']:,}")
    print("\n".join(out))
    return 0


def _pattern(info) -> str:
    if info.kind != "gemm":
        return "-"
    asked, native = "{}:{}".format(*info.pattern), "{}:{}".format(*info.native)
    return asked if asked == native else f"{asked}->{native}"


def _flat(report: Any) -> str:
    """Scalars as `key value`; a dict or list as its length (`--full` shows them)."""
    if not isinstance(report, dict):
        return str(report)
    parts = []
    for k, v in report.items():
        if isinstance(v, dict | list):
            parts.append(f"{k} [{len(v)} entries]")
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts) or "-"
