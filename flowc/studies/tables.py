"""The one table renderer (rich) and the one set of display units for every command.

Reports hold SI base values (cycles, s, pJ; `results.UNITS`); tables show them as cycles,
latency in us, energy in uJ and EDP in uJ*us, the same in flowrun, compare and analytic.
flowrun shows one row per block (a layer name's prefix up to its first number, e.g.
`model.layers.3`) unless asked for every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowc.studies.results import CostReport, CostResult, EvalReport, LayerRow
from flowc.termtable import cell, table

# display unit -> factor from the report's unit (s -> us, pJ -> uJ)
US, UJ = 1e6, 1e-6
HEAD_LATENCY, HEAD_ENERGY, HEAD_EDP = "latency us", "energy uJ", "EDP uJ*us"


def si(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


# -- flowrun ------------------------------------------------------------------------------------


def block_of(name: str) -> str:
    """`model.layers.3.mlp.up_proj` -> `model.layers.3`; names without a number stay."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return name


def grouped(layers: Sequence[LayerRow]) -> list[tuple[str, str, int, int, int, float]]:
    """(block, patterns, layer count, MACs, cycles, pJ) in first-appearance order."""
    out: dict[str, list] = {}
    for lay in layers:
        row = out.setdefault(block_of(lay.name), [[], 0, 0, 0, 0.0])
        if lay.pattern not in ("-",) and lay.pattern not in row[0]:
            row[0].append(lay.pattern)
        row[1] += 1
        row[2] += lay.macs
        row[3] += lay.cycles
        row[4] += lay.energy
    return [(k, ",".join(v[0]) or "-", v[1], v[2], v[3], v[4]) for k, v in out.items()]


def render_run(report: CostReport, layers: bool = False) -> str:
    r = report.result()
    total = max(r.cycles, 1)
    if layers:
        cols = ["layer", "N:M", "MACs", "cycles", HEAD_ENERGY, "cycles %"]
        rows = [(lay.name, lay.pattern, si(lay.macs), lay.cycles, lay.energy * UJ,
                 f"{100 * lay.cycles / total:.1f}") for lay in r.layers]
    else:
        cols = ["block", "N:M", "layers", "MACs", "cycles", HEAD_ENERGY, "cycles %"]
        rows = [(b, pat, n, si(macs), cyc, e * UJ, f"{100 * cyc / total:.1f}")
                for b, pat, n, macs, cyc, e in grouped(r.layers)]
    foot = ["total", "", *([len(r.layers)] if not layers else []), si(r.macs), r.cycles,
            r.energy * UJ, "100.0"]
    machine = report.machines[r.target]["config"]
    lines = [table(cols, rows, footer=foot),
             f"machine {r.target} @ {machine['clock_mhz']:g} MHz: latency "
             f"{cell(r.time * US)} us, energy {cell(r.energy * UJ)} uJ"
             + ("" if layers else "  (one row per block; --layers for every layer)")]
    if r.setup_cycles:
        lines.append(f"setup (program load, once, not in the totals above): "
                     f"{r.setup_cycles:,} cycles, energy {cell(r.setup_energy * UJ)} uJ")
    lines += _check_lines(report.check)
    lines += [f"{k}: {v}" for k, v in report.notes.items()]
    return "\n".join(lines)


def _check_lines(check: dict | None) -> list[str]:
    if check is None:
        return ["check: skipped (--no-check or no reference in the .fcim)"]
    out = [_check_line("check vs onnxruntime", check)]
    if check.get("fidelity"):
        out.append(_check_line("  and vs the fp32 reference (cost of int8)", check["fidelity"]))
    return out


def _check_line(title: str, c: dict) -> str:
    top1 = c.get("top1_agreement")
    floors = [o["noise_floor"] for o in c["outputs"] if "noise_floor" in o]
    floor = ""
    if floors:
        worst = min(floors, key=lambda f: f["cosine"])
        floor = f"; noise floor (ORT int8 vs ORT fp32): cosine {worst['cosine']:.6f}" + (
            f", top-1 {worst['top1_agreement']:.4f}" if worst.get("top1_agreement") is not None
            else "")
    ok = all(o["passed"] for o in c["outputs"])  # this comparison's own verdict
    return (f"{title}: {'PASSED' if ok else 'FAILED'}  max_abs_error "
            f"{c['max_abs_error']:.3g}, cosine {c['cosine']:.6f}"
            + (f", top-1 {top1:.4f}" if top1 is not None else "") + floor
            + f"  [{c['reference_model']} reference; {c['criterion']}]")


# -- compare and analytic -----------------------------------------------------------------------


def totals_table(results: Sequence[CostResult], kind: str | None = None,
                 title: str | None = None) -> str:
    """Per target: cycles, latency, energy, EDP, setup cycles (over layers of `kind`)."""
    rows = []
    for r in results:
        cyc, t, e = _sums(r, kind)
        rows.append((r.target, cyc, t * US, e * UJ, e * UJ * t * US, r.setup_cycles))
    cols = ["target", "cycles", HEAD_LATENCY, HEAD_ENERGY, HEAD_EDP, "setup cycles"]
    return table(cols, rows, title=title)


def _sums(r: CostResult, kind: str | None) -> tuple[int, float, float]:
    if kind is None:
        return r.cycles, r.time, r.energy
    lays = [lay for lay in r.layers if lay.kind == kind]
    cyc = sum(lay.cycles for lay in lays)
    return cyc, r.time * cyc / max(r.cycles, 1), sum(lay.energy for lay in lays)


def ratio_tables(results: Sequence[CostResult], kind: str | None = None) -> str:
    """Speed-up and energy ratio of every target (row) against every other (column)."""
    names = [r.target for r in results]
    sums = {r.target: _sums(r, kind) for r in results}
    out = []
    for title, idx in (("speed-up (column latency / row latency)", 1),
                       ("energy ratio (column energy / row energy)", 2)):
        rows = [(t, *("-" if b == t else f"{sums[b][idx] / max(sums[t][idx], 1e-30):.3f}x"
                      for b in names)) for t in names]
        out.append(table(["target vs", *names], rows, title=title))
    return "\n".join(out)


def render_compare(report: CostReport) -> str:
    worst = max((report.agreement or {}).values(), default=0.0)
    return "\n".join([f"model {report.model}, passes {report.pipeline}",
                      totals_table(report.results), ratio_tables(report.results),
                      f"outputs agree across targets: max |diff| vs {report.primary} = "
                      f"{worst:.3g}"])


def render_analytic(report: CostReport) -> str:
    out = []
    phases = list(dict.fromkeys(r.phase for r in report.results))
    for phase in phases:
        res = [r for r in report.results if r.phase == phase]
        out.append(f"{report.model} {phase} (tokens {res[0].tokens}, kv_len {res[0].kv_len}), "
                   f"{report.pipeline}")
        for kind, title in (("gemm", "Linear layers"), (None, "all modelled work")):
            out.append(totals_table(res, kind, title=f"[{title}]"))
        out.append(ratio_tables(res, None))
        out += [f"  {k.split(': ', 1)[1]}: {v}" for k, v in report.notes.items()
                if k.startswith(f"{phase}: ")]
        out.append("")
    return "\n".join(out).rstrip()


# -- eval ---------------------------------------------------------------------------------------


def render_eval(report: EvalReport, per_layer: bool = False) -> str:
    cols = ["method", "target", "achieved", "all lin.", "ppl", "select s", "prune s", "eval s"]
    rows = [(e.label, "-" if e.target_sparsity is None else f"{e.target_sparsity:.3f}",
             f"{e.sparsity:.4f}", f"{e.sparsity_all:.4f}", f"{e.ppl:.3f}",
             f"{e.seconds.get('select', 0.0):.2f}", f"{e.seconds.get('prune', 0.0):.2f}",
             f"{e.seconds.get('eval', 0.0):.2f}") for e in report.evaluations]
    lines = [table(cols, rows),
             f"calibration forward (dense statistics): {report.calib_seconds:.2f} s"]
    pruned = [e for e in report.evaluations if e.method != "dense"]
    if pruned:
        e = pruned[-1]
        ratio = (e.seconds.get("select", 0.0) + e.seconds.get("prune", 0.0)) / max(
            report.calib_seconds, 1e-9)
        lines.append(f"selection + pruning = {ratio:.2f} x the calibration forward")
        hist: dict[str, int] = {}
        for row in e.layers:
            hist[row["pattern"]] = hist.get(row["pattern"], 0) + 1
        lines.append("patterns: " + ", ".join(f"{k} x{v}" for k, v in sorted(hist.items())))
        if per_layer:
            lines.append(table(["layer", "N:M", "sparsity"],
                               [(r["name"], r["pattern"], f"{r['sparsity']:.4f}")
                                for r in e.layers]))
    return "\n".join(lines)
