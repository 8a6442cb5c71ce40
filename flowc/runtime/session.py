"""Run an Image: inputs, interpreter with cost accounting, ONNX Runtime check, report."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowc.backend.image import Image
from flowc.errors import UsageError
from flowc.runtime.check import compare, run_reference
from flowc.runtime.interpreter import Interpreter, check_inputs
from flowc.runtime.report import CostListener, RunReport


def cost_model_for(image: Image):
    from flowc.machine import MachineConfig
    from flowc.runtime.cost import CostModel

    machine = MachineConfig.from_dict(image.machine)
    return machine, CostModel(machine)


def load_inputs(image: Image, paths: Sequence[str] | None) -> list[np.ndarray]:
    if not paths:
        if not image.samples:
            raise UsageError("this .fcim has no sample inputs; pass --input FILE.npy per input")
        return list(image.samples)
    arrays = []
    for p in paths:
        if not Path(p).exists():
            raise UsageError(f"--input {p}: no such file")
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except ValueError as exc:
            raise UsageError(f"--input {p}: not a .npy array ({exc})") from exc
    return arrays


def simulate(image: Image, inputs: Sequence[np.ndarray], numerics: str = "int8",
             mode: str = "batched", account: bool = True) -> tuple[list[np.ndarray], RunReport]:
    machine, model = cost_model_for(image)
    listener = CostListener(model, image.layers, image.tensors) if account else None
    interp = Interpreter(image, numerics=numerics, mode=mode,
                         listeners=[listener] if listener else [])
    t0 = time.perf_counter()
    outputs = interp.run(inputs)
    wall = time.perf_counter() - t0
    layers = listener.finish() if listener else []
    report = RunReport(file="", machine=machine.name, clock_mhz=machine.clock_mhz,
                       numerics=numerics, mode=mode, layers=layers,
                       infos={i.name: i for i in image.layers}, check=None, wall_seconds=wall)
    return outputs, report


def check_outputs(image: Image, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  numerics: str):
    if image.reference_onnx is None:
        return None
    ref = run_reference(image.reference_onnx, inputs)
    return compare([o.name for o in image.outputs], outputs, ref, numerics)


def run_image_file(path: str, inputs: Sequence[str] | None = None, numerics: str = "int8",
                   mode: str = "batched", check: bool = True, progress: bool = True) -> RunReport:
    from flowc.backend.container import load

    def say(msg: str) -> None:
        if progress:
            print(f"[flowrun] {msg}", file=sys.stderr, flush=True)

    image = load(path)
    arrays = check_inputs(image, load_inputs(image, inputs))
    say(f"executing {len(image.program.instructions)} instructions ({numerics}, {mode}) ...")
    outputs, report = simulate(image, arrays, numerics=numerics, mode=mode)
    report.file = str(path)
    if check and image.reference_onnx is not None:
        say("running the reference model in onnxruntime ...")
        t0 = time.perf_counter()
        report.check = check_outputs(image, arrays, outputs, numerics)
        report.check_seconds = time.perf_counter() - t0
    return report
