"""FlexCiM against its baselines on one model: prune once, lower per target, run, compare.

Every target is compiled from the same pruned, quantised graph with the rule "a layer
runs as the cheapest supported pattern that contains its mask" (`MachineConfig.fit_pattern`,
applied by the lowering), executed by the same interpreter with cost accounting, and compared
on latency, energy and EDP. All targets run the same int8 model, so their outputs must agree
(the integer GEMMs are exact): a disagreement is an error, not a footnote.

    from flowc.studies.compare import compare_model
    cmp = compare_model("model.pt2", ["flexcim", "dcim-dense"], nm=(1, 8))
    cmp.plot("cycles.png")
    report = flowc.studies.results.from_comparison(cmp)  # the JSON/table form (CostReport)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowc.backend.image import Image
from flowc.backend.lower import lower
from flowc.errors import FlowcError, UsageError
from flowc.machine import MachineConfig, load_machine
from flowc.runtime.cost import CostModel
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.report import CostListener, RunReport

TARGETS = ("flexcim", "dcim-dense", "vegeta", "sdp", "stc24")
PRIMARY = "flexcim"
AGREE_RTOL = 1e-6  # outputs of the same int8 model: equal up to float32 dequant rounding


class CompareError(FlowcError):
    """Targets disagree on the outputs of the same pruned int8 model (a numerical failure)."""

    exit_code = 1


def parse_targets(text: str | Sequence[str] | None) -> list[str]:
    """'all' / None -> every built-in target; 'a,b' -> that list (built-ins or machine files)."""
    if text is None or text == "all":
        return list(TARGETS)
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [t.strip() for t in items if t.strip()]
    if not items or len(set(items)) != len(items):
        raise UsageError(f"--targets {text!r}: give 'all' or distinct names separated by commas")
    for t in items:
        load_machine(t)  # fails loudly with the known names
    return items


@dataclass
class TargetRun:
    machine: MachineConfig
    report: RunReport
    outputs: list[np.ndarray]

    @property
    def seconds(self) -> float:
        return self.report.total_cycles / (self.machine.clock_mhz * 1e6)


def run_with_costs(image: Image, inputs: Sequence[np.ndarray]) -> tuple[list, RunReport]:
    """Interpret an image (int8, batched) with a CostListener that sees the image tensors
    (exact row-shared pair passes); setup is counted once per weight tensor."""
    machine = MachineConfig.from_dict(image.machine)
    listener = CostListener(CostModel(machine), image.layers, image.tensors)
    t0 = time.perf_counter()
    outputs = Interpreter(image, listeners=[listener]).run(inputs)
    wall = time.perf_counter() - t0
    report = RunReport(file="", machine=machine.name, clock_mhz=machine.clock_mhz,
                       numerics="int8", mode="batched", layers=listener.finish(),
                       infos={i.name: i for i in image.layers}, check=None, wall_seconds=wall)
    return outputs, report


@dataclass
class Comparison:
    model: str
    pipeline: str
    runs: dict[str, TargetRun]
    agreement: dict[str, float] = field(default_factory=dict)  # max |out - primary's out|

    @property
    def baselines(self) -> list[str]:
        return [t for t in self.runs if t != self._primary()]

    def _primary(self) -> str:
        return PRIMARY if PRIMARY in self.runs else next(iter(self.runs))

    def speedup(self, target: str, baseline: str) -> float:
        return self.runs[baseline].seconds / max(self.runs[target].seconds, 1e-30)

    def energy_ratio(self, target: str, baseline: str) -> float:
        e = self.runs[target].report.total_energy_pj
        return self.runs[baseline].report.total_energy_pj / max(e, 1e-30)

    def plot(self, path: str | Path) -> Path:
        """Grouped bars: cycles per layer (x) by target (colour), PNG. A Figure with its own
        Agg canvas: pyplot and the caller's global backend are never touched."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        layers = [lc.name for lc in next(iter(self.runs.values())).report.layers
                  if lc.cycles > 0]
        width = 0.8 / len(self.runs)
        fig = Figure(figsize=(max(6.0, 0.6 * len(layers) + 2), 4.0))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for i, (name, run) in enumerate(self.runs.items()):
            cyc = {lc.name: lc.cycles for lc in run.report.layers}
            xs = [j + (i - (len(self.runs) - 1) / 2) * width for j in range(len(layers))]
            ax.bar(xs, [cyc.get(n, 0) for n in layers], width, label=name)
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("cycles")
        ax.set_title(f"per-layer cycles by target: {self.model}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
        return path


def compare_captured(cap, targets: Sequence[str], opts, progress: Callable | None = None,
                     calib: list | None = None, inputs: Sequence[np.ndarray] | None = None
                     ) -> Comparison:
    """Prune/quantise `cap` once (passes of `opts`), lower and run it on every target."""
    from flowc.studies.compiler import calibration_inputs, default_pipeline, resolve_machine, run_passes

    pipeline = opts.pipeline or default_pipeline(opts)
    if calib is None:
        calib = calibration_inputs(cap, opts.calib_batches, opts.seed)
    run_passes(cap, pipeline, resolve_machine(opts), calib, progress)
    arrays = list(inputs) if inputs is not None else [x.detach().numpy()
                                                       for x in cap.example_inputs]
    runs: dict[str, TargetRun] = {}
    for t in targets:
        machine = load_machine(t)
        if progress:
            progress(f"lowering and running on {machine.name} ...")
        image = lower(cap, machine, keep_fp32=False)
        outputs, report = run_with_costs(image, arrays)
        runs[machine.name] = TargetRun(machine, report, outputs)
    cmp = Comparison(str(getattr(cap, "source", "model")), pipeline, runs)
    cmp.agreement = check_agreement(cmp)
    return cmp


def check_agreement(cmp: Comparison) -> dict[str, float]:
    """Max |output - primary output| per target; CompareError beyond float rounding."""
    ref = cmp.runs[cmp._primary()].outputs
    out = {}
    for name, run in cmp.runs.items():
        diffs = [float(np.max(np.abs(a - b))) if a.size else 0.0
                 for a, b in zip(run.outputs, ref, strict=True)]
        scale = max((float(np.max(np.abs(b))) for b in ref if b.size), default=1.0)
        out[name] = max(diffs, default=0.0)
        if out[name] > AGREE_RTOL * max(scale, 1.0):
            raise CompareError(f"target {name}: outputs differ from {cmp._primary()} by "
                               f"{out[name]:.3g} on the same int8 model (a lowering bug)")
    return out


def compare_model(path: str, targets: Sequence[str] | str | None = None,
                  nm: tuple[int, int] | None = None, pipeline: str | None = None,
                  primary: str = PRIMARY, progress: Callable | None = None,
                  **load_kwargs: Any) -> Comparison:
    """Load a model file and compare it on `targets` (default: all built-ins)."""
    from flowc.frontend.load import load_model
    from flowc.studies.compiler import CompileOptions

    names = parse_targets(targets)
    opts = CompileOptions(nm=nm, pipeline=pipeline, target=primary, reference=False,
                          keep_fp32=False)
    cap = load_model(path, **load_kwargs)
    return compare_captured(cap, names, opts, progress)
