"""Evaluating one design point into one result row (analytic pricing or compile + flowrun).

Workers receive `Shared` once (executor `shared=`): the N:M assignments read from files and,
in run mode, every distinct (model, nm) compiled once in the driver (pruned, quantised, the
reference ONNX model exported) and lowered once per distinct macro geometry. A point then
costs what differs per point: pricing the model on its machine (analytic), or running the
shared image with cost accounting on its machine and the ONNX Runtime check (run). The row's
numbers are the quantities `flowc analytic --json` and flowrun report (tests/sweep/test_run.py
compares them field by field).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flowc.errors import FlowcError, UsageError
from flowc.studies.sweep.spec import Point

if TYPE_CHECKING:
    from flowc.backend.image import Image
    from flowc.frontend.load import Captured
    from flowc.machine import MachineConfig
    from flowc.studies.analytic import Assignment

# output columns and their Parquet types ("int64", "float64", "string"); units in UNITS
OUTPUTS: dict[str, str] = {
    "cycles": "int64", "latency_s": "float64", "energy_pj": "float64", "edp_pj_s": "float64",
    "gemm_cycles": "int64", "attention_cycles": "int64", "setup_cycles": "int64",
    "setup_energy_pj": "float64", "macs": "float64", "perplexity": "float64", "check": "string",
}
PROVENANCE: dict[str, str] = {"flowc_version": "string", "machine_hash": "string",
                              "elapsed_s": "float64", "worker": "string"}
UNITS: dict[str, str] = {
    "cycles": "cycles", "latency_s": "s", "energy_pj": "pJ", "edp_pj_s": "pJ*s",
    "gemm_cycles": "cycles", "attention_cycles": "cycles", "setup_cycles": "cycles",
    "setup_energy_pj": "pJ", "macs": "MAC", "perplexity": "1", "elapsed_s": "s"}
TIMING = ("elapsed_s", "worker")  # the columns that differ between two runs of one spec


@dataclass
class Shared:
    """What every point of a sweep reads and nothing changes: shipped to each worker once."""

    mode: str
    assignments: dict[tuple[str, str], Assignment] = field(default_factory=dict)  # (file, model)
    # run mode: (model, nm, lowering_key(machine)) -> the image lowered for that geometry
    images: dict[tuple[str, str, str], Image] = field(default_factory=dict)


def evaluate_chunk(shared: Shared, points: Sequence[Point]) -> list[dict[str, Any]]:
    """Rows of several points (one executor task: 10,000 points are not 10,000 tasks)."""
    return [evaluate_point(shared, p) for p in points]


def evaluate_point(shared: Shared, point: Point) -> dict[str, Any]:
    """One row: status "ok" with the outputs, or "error" with the error line as `reason`.

    A point's own failure (a model that does not fit, a pattern a machine cannot run) must
    not stop the other 9,999: it becomes a row. Anything else (a bug) is also a row, with
    the exception type, so the summary shows it instead of losing the sweep."""
    t0 = time.perf_counter()
    try:
        outputs = (_analytic(shared, point) if shared.mode == "analytic"
                   else _run(shared, point))
        status, reason = "ok", None
    except FlowcError as exc:
        outputs, status, reason = {}, "error", str(exc).splitlines()[0] if str(exc) else repr(exc)
    except Exception as exc:  # a bug: keep the row, name the place
        where = traceback.extract_tb(exc.__traceback__)[-1]
        outputs, status = {}, "error"
        reason = (f"internal error {type(exc).__name__}: {exc} "
                  f"({os.path.basename(where.filename)}:{where.lineno})")
    return base_row(point, status, reason) | outputs | {
        "elapsed_s": time.perf_counter() - t0, "worker": worker_name()}


def base_row(point: Point, status: str, reason: str | None) -> dict[str, Any]:
    """Identity, inputs and provenance of a row; outputs null (filled by the evaluation)."""
    from flowc.studies.results import flowc_version

    row: dict[str, Any] = {"point": point.index, "key": point.key, "status": status,
                           "reason": reason}
    row |= point.values
    row |= dict.fromkeys(OUTPUTS)
    row |= {"flowc_version": flowc_version(), "machine_hash": point.machine_hash,
            "elapsed_s": None, "worker": None}
    return row


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- analytic -----------------------------------------------------------------------------------


def assignment_of(shared: Shared, point: Point) -> Assignment | None:
    """The point's N:M plan exactly as `flowc analytic --nm/--assign` builds it."""
    from flowc.studies.analytic import uniform

    if point.nm == "dense":
        return None
    if point.assignment is not None:
        return shared.assignments[(point.assignment, point.model)]
    n, m = (int(x) for x in point.nm.split(":"))
    return uniform(n, m)


def load_assignments(points: Sequence[Point]) -> dict[tuple[str, str], Assignment]:
    """Read each assignment file once per model (scaled to the model's depth like the CLI)."""
    from flowc.studies.analytic import load_assignment, scale_blocks
    from flowc.studies.analytic_models import shapes_of

    out: dict[tuple[str, str], Assignment] = {}
    for p in points:
        key = (p.assignment, p.model)
        if p.assignment is None or key in out:
            continue
        plan = load_assignment(p.assignment)
        if plan.blocks:
            depth = shapes_of(p.model).layers
            if plan.blocks != depth:
                plan = scale_blocks(plan, plan.blocks, depth)
        out[key] = plan  # type: ignore[index]
    return out


def _analytic(shared: Shared, point: Point) -> dict[str, Any]:
    """The quantities from_analytic (flowc analytic --json) reports, from analyse_totals: the
    totals of `analyse(...)` bit for bit (tests/sweep/test_fast_analytic.py), each GEMM
    signature priced once per machine pricing key and process (most points reuse them)."""
    from flowc.studies.analytic_fast import analyse_totals

    v = point.values
    totals = analyse_totals(point.model, point.machine, assignment_of(shared, point),
                            phase=v["phase"], tokens=v["tokens"], kv_len=v.get("kv_len"))
    total = totals["total"]
    energy, seconds = float(total["energy_pj"]), float(total["seconds"])
    return {"cycles": int(total["cycles"]), "latency_s": seconds, "energy_pj": energy,
            "edp_pj_s": energy * seconds,
            "gemm_cycles": int(totals["gemm"]["cycles"]),
            "attention_cycles": int(totals["attention"]["cycles"]),
            "setup_cycles": int(totals["setup_cycles"]),
            "setup_energy_pj": float(totals["setup_energy_pj"]),
            "macs": float(total["macs"])}


# -- run: compile once per (model, nm), lower + flowrun per point ------------------------------


def pipeline_of(nm: str) -> tuple[tuple[int, int] | None, str | None]:
    """(uniform N:M, explicit pipeline) of a canonical nm text (assignments: analytic only)."""
    if nm == "dense":
        return None, None
    if nm.startswith("pipeline:"):
        return None, nm.split(":", 1)[1]
    if nm.startswith("assignment:"):
        raise UsageError(f"nm {nm}: an assignment file prices patterns in analytic mode; in run "
                         "mode give { pipeline = \"...\" } or a uniform pattern")
    n, m = (int(x) for x in nm.split(":"))
    return (n, m), None


def load_run_model(model: str, eval_windows: int = 0) -> Captured:
    """A built-in example (mlp, block), an hf: source or a model file, captured; an hf:
    language model with `eval_windows` held-out windows (as `flowc compile --eval-windows`)."""
    from flowc.frontend.load import is_hf_source, load_hf, load_model
    from flowc.frontend.objects import load_module
    from flowc.studies.examples import EXAMPLES, build

    if model in EXAMPLES:
        module, inputs = build(model)
        cap = load_module(module, inputs, name=model)
        cap.source = f"example:{model}"
        return cap
    if is_hf_source(model):
        return load_hf(model, eval_windows=eval_windows)
    return load_model(model)


# The machine fields the lowering reads (backend/rules*.py: the tile geometry and
# MachineConfig.fit_pattern). Machines equal in these get the same program; every other field
# (macros, clock, bandwidth, residency, energy, vector unit) only prices it, so a point runs
# the shared image with its own machine in the cost model (tests/sweep/test_run.py checks this
# against lowering for the point's machine).
LOWERING_FIELDS = ("macro.subarrays", "macro.rows", "macro.cols", "macro.pairs", "patterns",
                   "dense", "metadata")


def lowering_key(machine: MachineConfig) -> str:
    import json

    d = machine.to_dict()
    values = [d["macro"][f.split(".")[1]] if f.startswith("macro.") else d[f]
              for f in LOWERING_FIELDS]
    return json.dumps(values, separators=(",", ":"))


def compile_images(model: str, nm: str, machines: Sequence[MachineConfig],
                   eval_windows: int = 0) -> dict[str, Image]:
    """Prune and quantise `model` once (the passes see the first machine), export the
    reference ONNX model once, and lower the result for each distinct geometry of `machines`:
    {lowering_key: image}. Done in the driver; the images are shipped to the workers. An hf:
    language model's compile also measures the dense and pruned fp32 perplexity on
    `eval_windows` held-out windows (compile_info["quality"], as `flowc compile` reports)."""
    from flowc.backend.lower import lower
    from flowc.backend.reference import externalise
    from flowc.studies.compiler import CompileOptions, compile_captured, export_reference

    uniform_nm, pipeline = pipeline_of(nm)
    cap = load_run_model(model, eval_windows)
    opts = CompileOptions(nm=uniform_nm, pipeline=pipeline, machine=machines[0],
                          reference=False, keep_fp32=True)
    first = compile_captured(cap, opts, progress=None)
    onnx_bytes = export_reference(cap)  # as `flowc compile` does, once for every geometry
    images: dict[str, Image] = {}
    for machine in machines:
        key = lowering_key(machine)
        if key not in images:
            image = first if not images else lower(cap, machine, keep_fp32=True)
            image.reference_onnx = externalise(onnx_bytes, image)
            image.samples, image.vocab = first.samples, first.vocab
            image.compile_info = dict(first.compile_info)
            images[key] = image
    return images


def _run(shared: Shared, point: Point) -> dict[str, Any]:
    import dataclasses

    from flowc.runtime.session import run_image

    image = shared.images[(point.model, point.nm, lowering_key(point.machine))]
    image = dataclasses.replace(image, machine=point.machine.to_dict())
    report = run_image(image, list(image.samples), check=True)
    seconds = report.total_cycles / (point.machine.clock_mhz * 1e6)
    energy = float(report.total_energy_pj)
    kinds = {lc.name: (report.infos[lc.name].kind if lc.name in report.infos else lc.kind)
             for lc in report.layers}
    check = None if report.check is None else ("PASSED" if report.check.passed else "FAILED")
    # the pruned model's accuracy, measured once at compile time: the same for every machine
    quality = (image.compile_info or {}).get("quality") or {}
    return {"perplexity": quality.get("pruned_ppl"), "cycles": int(report.total_cycles),
            "latency_s": seconds, "energy_pj": energy,
            "edp_pj_s": energy * seconds,
            "gemm_cycles": int(sum(lc.cycles for lc in report.layers if kinds[lc.name] == "gemm")),
            "attention_cycles": int(sum(lc.cycles for lc in report.layers
                                        if kinds[lc.name] == "attention")),
            "setup_cycles": int(report.setup_cycles),
            "setup_energy_pj": float(report.setup_energy_pj),
            "macs": float(sum(int(lc.macs) for lc in report.layers)), "check": check}
