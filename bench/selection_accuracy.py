"""N:M selection methods on SmolLM2-135M: perplexity, achieved sparsity, FlexCiM latency/energy.

    .venv/bin/python bench/selection_accuracy.py               # run, print, save JSON
    .venv/bin/python bench/selection_accuracy.py --write       # + docs/results.md and the plot
    .venv/bin/python bench/selection_accuracy.py --from-json bench/results/selection_accuracy.json --write
    .venv/bin/python bench/selection_accuracy.py --quick       # tiny llama + pydoc, seconds

Rows, at targets 0.5 and 0.6, each without and with the OBS weight update (SparseGPT-style,
on the same masks): uniform FlexCiM-native patterns, OWL-N:M, FLOW as the paper describes it,
FLOW's published code (`flow-select{preset=repo}`: its shipped sparsity, first and last block
forced dense), the measured ILP (`sensitivity` + `measured-select`) and the measured ILP
refined by the KL search (`nm-search`). Every method prunes a fresh copy of one dense model
calibrated once (32 x 512 Brown tokens); perplexity on held-out Brown windows.

Hardware columns: the selection's patterns priced by analytic mode on the shipped `flexcim`
machine for a 128-token prefill of SmolLM2 (every Linear and the attention matmuls; analytic
mode equals a functional run's cycles, tests/hardware/test_analytic.py).

Selection time: for the measured methods, the sensitivity table (measured once, reused by
every target and update: the line "sensitivity table" gives its time) plus the ILP, plus the
search. Every method selects on plain masks; with OBS the update is applied to its choice.
The bench also prints selection time / calibration forward time and peak memory.

Results are saved after every row (`--out`/selection_accuracy.json) and `--resume` skips rows
already there, so an interrupted run loses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowc.host import keep_big_blocks  # noqa: E402

HEADING = "## N:M selection on SmolLM2 (issue 9)"
BEGIN, END = "<!-- selection-accuracy:begin -->", "<!-- selection-accuracy:end -->"
PREFILL_TOKENS = 128


def rows_for(target: float, update: str, search: str):
    """(spec, note) rows for one target and weight update."""
    from flowc.studies.evaluate import MethodSpec as S

    if target == 0.5:
        uniform = [(S("uniform", 0.5, nm=(4, 8), update=update), "FlexCiM-native"),
                   (S("uniform", 0.5, nm=(2, 4), update=update), "FlexCiM-native")]
    else:
        uniform = [(S("uniform", 0.75, nm=(2, 8), update=update),
                    "nearest FlexCiM-native uniform above 0.6")]
    return uniform + [
        (S("owl", target, update=update), "M = 8, N per layer from the outlier ratio"),
        (S("flow", target, update=update), "FLOW as the paper describes it"),
        (S("flow-repo", target, update=update), "FLOW's code (preset=repo): first/last block "
                                                "forced dense after the ILP"),
        (S("measured", target, update=update), "ILP over the measured table"),
        (S("measured-search", target, update=update, search=search),
         "measured ILP refined by the KL search"),
    ]


def hardware(selection: dict) -> dict:
    """Latency (ms) and energy (uJ) of a 128-token SmolLM2 prefill on the shipped machine."""
    from flowc.machine import load_machine
    from flowc.studies.analytic import analyse, assignment_from_dict

    assign = assignment_from_dict({"layers": selection.get("layers", {})}, "selection")
    rep = analyse("smollm2-135m", load_machine("flexcim"), assign, tokens=PREFILL_TOKENS)
    return {"ms": rep.seconds() * 1e3, "uj": rep.energy_pj() * 1e-6, "cycles": rep.cycles()}


def run(args: argparse.Namespace, data: dict, save) -> dict:
    from flowc.studies.evaluate import dense_result, peak_rss_mb, prepare, run_method, sensitivity_table

    def say(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    model, text = ("hf:tiny-llama", "pydoc") if args.quick else ("hf:smollm2-135m", "brown")
    base = prepare(model, text, None, args.calib_windows, args.eval_windows, args.seq_len,
                   bar=True, say=say)
    warm = time.perf_counter()  # again, warm: the first forwards of a process are slow
    from flowc.passes.calibrate import collect_input_norms

    collect_input_norms(base.gm, base.calib)
    data.update(model=model, text=text, seq_len=args.seq_len, calib_windows=args.calib_windows,
                eval_windows=args.eval_windows, calib_seconds=base.calib_seconds,
                calib_seconds_warm=time.perf_counter() - warm)
    say(f"calibration forward: {base.calib_seconds:.1f} s cold, "
        f"{data['calib_seconds_warm']:.1f} s warm")
    done = {r["key"] for r in data["results"]}
    if "dense" not in done:
        dense = dense_result(base, bar=True)
        data["results"].append({**dense.to_dict(), "key": "dense", "row": "-", "note": "",
                                "hw": hardware({"layers": {}})})
        save(data)
    for update in args.updates:
        if not args.methods or any(m.startswith("measured") for m in args.methods):
            sensitivity_table(base, "none", bar=True)  # selection is on masks for every row
        kind = "none"
        if kind in base.table_seconds:
            data.setdefault("table_seconds", {})[kind] = base.table_seconds[kind]
            say(f"sensitivity table ({kind}): {data['table_seconds'][kind]:.1f} s")
        for target in args.targets:
            for spec, note in rows_for(target, update, args.search):
                key = f"{target}|{spec.name()}"
                if key in done or (args.methods and spec.method not in args.methods) or \
                        (args.labels and spec.name() not in args.labels):
                    continue
                r, spec, note = _run_feasible(run_method, base, spec, note, say)
                row = {**r.to_dict(), "key": key, "row": f"{target}", "note": note,
                       "hw": hardware(r.selection)}
                if spec.method.startswith("measured"):
                    row["seconds"]["table"] = data["table_seconds"][kind]
                say(f"{key}: ppl {r.ppl.ppl:.3f}, achieved {r.sparsity:.4f}, "
                    f"{row['hw']['ms']:.3f} ms, select {r.seconds['select']:.1f} s, "
                    f"peak {peak_rss_mb():.0f} MB")
                data["results"].append(row)
                data["peak_rss_mb"] = peak_rss_mb()
                save(data)
    return data


def timing(args: argparse.Namespace) -> dict:
    """Selection cost against the calibration forward passes, side by side in one process:
    the sensitivity table over all windows (strided token subsample, the default) and over
    just enough windows for the Gram matrices (`windows=-1`), each + the ILP at every target."""
    from flowc.passes.calibrate import collect_input_norms
    from flowc.passes.flow.measured import measured_problem, solve_ilp
    from flowc.passes.flow.problem import resolve_candidates
    from flowc.passes.flow.sensitivity import kl_scales, measure_graph, sensitivity_windows
    from flowc.passes.graph import linear_nodes, select_layers
    from flowc.studies.evaluate import peak_rss_mb, prepare

    def say(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    base = prepare("hf:smollm2-135m", "brown", None, args.calib_windows, 1, args.seq_len,
                   say=say)
    refs, _ = select_layers(linear_nodes(base.gm), None, ("lm_head",), what="timing")
    cands = resolve_candidates(None)
    out: dict = {"calib_windows": args.calib_windows, "seq_len": args.seq_len, "rows": []}
    for rnd in range(args.rounds):  # forward, table, table-fast (per round)
        t0 = time.perf_counter()
        collect_input_norms(base.gm, base.calib)
        fwd = time.perf_counter() - t0
        for mode in (0, -1):
            t0 = time.perf_counter()
            windows = sensitivity_windows(base.calib, mode, 4096)
            table = measure_graph(base.gm, refs, windows, cands, ("none",), 4096, 0.01, 128,
                                  norms=base.norms)
            table.scale = kl_scales(base.gm, refs, base.norms, table, base.calib[:1])
            tab = time.perf_counter() - t0
            t0 = time.perf_counter()
            for target in args.targets:
                prob = measured_problem(table, [r.name for r in refs], cands, {}, target, 0.005)
                solve_ilp(prob, "cbc")
            ilp = time.perf_counter() - t0
            row = {"round": rnd, "windows": len(windows), "forward_s": fwd, "table_s": tab,
                   "ilp_s": ilp, "ratio": (tab + ilp) / fwd, "peak_rss_mb": peak_rss_mb()}
            say(f"{row}")
            out["rows"].append(row)
    return out


def _run_feasible(run_method, base, spec, note: str, say):
    """run_method; an infeasible target is retried at the closest achievable one (stated)."""
    from flowc.passes.flow import InfeasibleTarget

    try:
        return run_method(base, spec, bar=True, progress=say), spec, note
    except Exception as exc:
        cause = exc.__cause__ or exc
        if not isinstance(cause, InfeasibleTarget) or not cause.nearest:
            raise
        near = min(cause.nearest, key=lambda v: (abs(v - spec.target), v))
        say(f"{spec.name()}: target {spec.target} infeasible; closest feasible {near:.4f}")
        note = f"target {near:.4f}: {spec.target} infeasible, closest feasible; " + note
        spec = replace(spec, target=round(near, 6))
        return run_method(base, spec, bar=True, progress=say), spec, note


# ---------------------------------------------------------------------------------------------
# Rendering


def _select_seconds(row: dict) -> float:
    s = row["seconds"]
    return s.get("select", 0.0) + s.get("table", 0.0)


def table(data: dict) -> str:
    lines = ["| target | method | update | achieved sparsity | ppl | FlexCiM ms | FlexCiM uJ | "
             "selection s | note |", "|---|---|---|---|---|---|---|---|---|"]
    for row in data["results"]:
        hw = row.get("hw", {})
        lines.append(f"| {row['row']} | {row['label'].replace(' +OBS', '')} | "
                     f"{'OBS' if row['update'] == 'obs' else '-'} | {row['sparsity']:.4f} | "
                     f"{row['ppl']:.2f} | {hw.get('ms', 0):.3f} | {hw.get('uj', 0):.1f} | "
                     f"{_select_seconds(row):.1f} | {row['note']} |")
    return "\n".join(lines)


def summary_lines(data: dict) -> list[str]:
    ref = data.get("calib_seconds_warm") or data["calib_seconds"]
    out = [f"- calibration forward passes alone ({data['calib_windows']} x {data['seq_len']} "
           f"tokens): {ref:.1f} s warm ({data['calib_seconds']:.1f} s cold)"]
    for kind, sec in sorted(data.get("table_seconds", {}).items()):
        out.append(f"- sensitivity table, update={kind} (measured once, reused by every "
                   f"target): {sec:.1f} s = {sec / ref:.2f} x the calibration forward")
    for row in data["results"]:
        if row["method"] == "measured":
            sel = _select_seconds(row)
            out.append(f"- measured ILP @ {row['row']} ({row['update']}): sensitivity + ILP "
                       f"{sel:.1f} s = {sel / ref:.2f} x the calibration forward")
        if row["method"] == "measured-search":
            srch = row.get("selection", {}).get("search", {})
            out.append(f"- search @ {row['row']} ({row['update']}): {srch.get('seconds', 0):.1f}"
                       f" s, {srch.get('generations', 0)} generations, KL "
                       f"{srch.get('start', 0):.5f} -> {srch.get('kl', 0):.5f}")
    for name, run in data.get("extra_runs", {}).items():  # rows measured in other processes
        warm, tables = run.get("calib_seconds_warm") or 0.0, run.get("table_seconds") or {}
        for kind, sec in tables.items():
            out.append(f"- run `{name}` (its own process, same setting): calibration forward "
                       f"{warm:.1f} s warm, sensitivity table ({kind}) {sec:.1f} s = "
                       f"{sec / warm:.2f} x")
    out.append(f"- peak memory (max RSS, all rows in one process): "
               f"{data.get('peak_rss_mb', 0):.0f} MB")
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, update in zip(axes, ("none", "obs"), strict=True):
        for row in data["results"]:
            if row["method"] != "dense" and row["update"] != update:
                continue
            x, y = row["hw"]["ms"], row["ppl"]
            marker = {"0.5": "o", "0.6": "s"}.get(row["row"], "*")
            ax.scatter(x, y, marker=marker, s=40)
            ax.annotate(f"{row['label'].replace(' +OBS', '')} {row['row']}", (x, y),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel(f"simulated FlexCiM latency, {PREFILL_TOKENS}-token prefill (ms)")
        ax.set_title("no weight update" if update == "none" else "OBS weight update")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("held-out perplexity (Brown, log scale)")
    fig.suptitle("SmolLM2-135M: perplexity vs simulated latency (o: target 0.5, s: 0.6)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(data: dict, path: Path) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Results\n"
    setting = (f"{data['model']}, fp32; calibration {data['calib_windows']} x "
               f"{data['seq_len']} tokens from the first 90 % of {data['text']}, evaluation "
               f"{data['eval_windows']} x {data['seq_len']} tokens from the last 10 %; "
               "sequential Wanda N:M masks; OBS = SparseGPT-style update on the same masks; "
               "lm_head dense and not counted (sparsity over the 210 block linears); FlexCiM "
               f"latency and energy: analytic mode, shipped `flexcim` machine, "
               f"{PREFILL_TOKENS}-token prefill (all Linears + attention matmuls).")
    block = "\n".join([BEGIN, "", f"Setting: {setting}", "", table(data), "",
                       *summary_lines(data), "",
                       "![perplexity vs latency](selection_ppl_latency.png)", "", END])
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{HEADING}\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib-windows", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--targets", type=lambda s: [float(x) for x in s.split(",")],
                   default=[0.5, 0.6])
    p.add_argument("--updates", type=lambda s: s.split(","), default=["none", "obs"])
    p.add_argument("--search", default="generations=60,offspring=6,windows=2,max_time=240",
                   help="nm-search options (pipeline syntax)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=None,
                   help="only these methods (e.g. uniform,owl,flow); with --resume fills in")
    p.add_argument("--labels", type=lambda s: s.split(","), default=None,
                   help="only rows with these labels (e.g. 'uniform 4:8 +OBS,measured-search +OBS')")
    p.add_argument("--quick", action="store_true", help="tiny llama on pydoc (smoke test)")
    p.add_argument("--rounds", type=int, default=1, help="--timing: repetitions")
    p.add_argument("--timing", action="store_true",
                   help="only the selection time vs the calibration forward (and peak RSS)")
    p.add_argument("--write", action="store_true", help="update docs/results.md and the plot")
    p.add_argument("--resume", action="store_true", help="skip rows already in the JSON")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--from-json", type=Path, help="re-render a saved JSON")
    args = p.parse_args()
    if args.quick:
        args.calib_windows, args.eval_windows, args.seq_len = 4, 4, 64
        args.search = "generations=3,offspring=3,windows=2"
    path = args.out / ("selection_quick.json" if args.quick else "selection_accuracy.json")

    def save(d: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)

    if args.timing:
        keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
        data = timing(args)
        path = args.out / "selection_timing.json"
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        for r in data["rows"]:
            print(f"windows {r['windows']:>2}: calibration forward {r['forward_s']:.1f} s, "
                  f"sensitivity table {r['table_s']:.1f} s + ILP ({len(args.targets)} targets)"
                  f" {r['ilp_s']:.1f} s = {r['ratio']:.2f} x; peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB")
        return 0
    if args.from_json:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
    else:
        keep_big_blocks()  # glibc keeps activation-sized blocks, as the CLI does
        data = json.loads(path.read_text()) if args.resume and path.exists() \
            else {"results": []}
        data = run(args, data, save)
    print(table(data))
    print("\n".join(summary_lines(data)))
    if args.write and not args.quick:
        plot(data, ROOT / "docs" / "selection_ppl_latency.png")
        write_results(data, ROOT / "docs" / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
