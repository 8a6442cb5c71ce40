"""The public Python API: load a model, compile it for a machine, run the program, and the
studies built on those three steps (compare targets, analytic mode, perplexity evaluation).

Thin by design: each function calls the stage that does the work. None of them changes an
object it is given: `compile` works on a copy of the loaded model, so one loaded model compiles
for several targets, and `load` copies a caller's `nn.Module` before capturing it.
docs/api.md documents every name (`flowc.__all__`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowc.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from flowc.backend.image import Image
    from flowc.frontend.load import Captured
    from flowc.machine import MachineConfig
    from flowc.studies.results import CostReport, EvalReport

Progress = Callable[[str], None]


def load(source: str | os.PathLike[str] | torch.nn.Module | torch.export.ExportedProgram, *,
         inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
         input_shapes: str | None = None, trust_pickle: bool = False,
         **hf_options: Any) -> Captured:
    """Load and capture a model into one prepared graph (a `Model`).

    `source` is a model file (torch.export .pt2, TorchScript with `input_shapes`, a pickled
    module with `trust_pickle=True`), an `hf:` model source (`hf_options`: seq_len, prompt,
    calib_batches, eval_windows, trust_remote_code), an `nn.Module` (needs `inputs`) or an
    `ExportedProgram` (`inputs` default to the ones it was exported with).
    """
    import torch

    from flowc.frontend.load import is_hf_source, load_hf, load_model
    from flowc.frontend.objects import load_exported, load_module

    if isinstance(source, torch.export.ExportedProgram):
        return load_exported(source, inputs)
    if isinstance(source, torch.nn.Module):
        return load_module(source, inputs)
    if not isinstance(source, str | os.PathLike):
        raise UsageError(f"flowc.load: expected a path, an hf: source, an nn.Module or an "
                         f"ExportedProgram, got {type(source).__name__}")
    if inputs is not None:
        raise UsageError("flowc.load: inputs= applies to nn.Module and ExportedProgram sources; "
                         "files record their shapes (input_shapes= overrides them)")
    if is_hf_source(str(source)):
        return load_hf(str(source), **hf_options)
    if hf_options:
        raise UsageError(f"flowc.load: {', '.join(sorted(hf_options))} apply to hf: sources only")
    return load_model(source, input_shapes=input_shapes, trust_pickle=trust_pickle)


def compile(model: Captured, pipeline: str | None = None,
            target: str | MachineConfig = "flexcim",
            calib: Sequence[Sequence[torch.Tensor]] | None = None, *,
            nm: tuple[int, int] | None = None, score: str = "wanda", reference: bool = True,
            keep_fp32: bool = True, calib_batches: int = 4, seed: int = 0,
            progress: Progress | None = None) -> Image:
    """Run the pass pipeline on a copy of `model` and lower it for `target` (a built-in name,
    a machine file or a `MachineConfig`). `pipeline` defaults to the one `nm` implies
    (uniform N:M with `score`, then quantize; dense quantize without `nm`); `calib` are
    calibration samples (tuples of input tensors), default the model's own, else synthetic.
    """
    from flowc.studies.compiler import CompileOptions, compile_captured

    opts = CompileOptions(nm=nm, score=score, pipeline=pipeline, reference=reference,
                          keep_fp32=keep_fp32, calib_batches=calib_batches, seed=seed,
                          **_target_options(target))
    calib_list = [tuple(sample) for sample in calib] if calib is not None else None
    return compile_captured(_copy_model(model), opts, progress=progress, calib=calib_list)


def run(image: Image | str | os.PathLike[str],
        inputs: Sequence[np.ndarray | torch.Tensor] | None = None, numerics: str = "int8",
        check: bool = True, mode: str = "plan") -> CostReport:
    """Execute `image` (or a .fcim file) on the simulated machine with cycle and energy
    accounting; `inputs` default to the samples the image carries; with `check` and a
    reference model in the image, the outputs are judged against ONNX Runtime
    (`report.check["passed"]`). The report is flowrun's (docs/results-format.md)."""
    import numpy as np

    from flowc.backend.container import load as load_image
    from flowc.runtime.session import load_inputs, run_image
    from flowc.studies.results import from_run

    img = load_image(image) if isinstance(image, str | os.PathLike) else image
    if inputs is None:
        arrays = load_inputs(img, None)
    else:
        arrays = [np.asarray(x.detach().numpy() if hasattr(x, "detach") else x) for x in inputs]
    raw = run_image(img, arrays, numerics=numerics, mode=mode, check=check)
    info = img.compile_info or {}
    source = str(image) if isinstance(image, str | os.PathLike) else str(info.get("source", ""))
    return from_run(raw, img.machine, source, info.get("pipeline"))


def compare(model: Captured, targets: Sequence[str] | str | None = None,
            pipeline: str | None = None, *, nm: tuple[int, int] | None = None,
            calib: Sequence[Sequence[torch.Tensor]] | None = None,
            progress: Progress | None = None) -> CostReport:
    """Prune and quantise a copy of `model` once, then lower and run it on every target
    (default: all built-in machines) with cost accounting: latency, energy and EDP side by
    side. `calib` defaults to the model's own calibration samples, else synthetic ones."""
    from flowc.studies.compare import compare_captured, parse_targets
    from flowc.studies.compiler import CompileOptions
    from flowc.studies.results import from_comparison

    names = parse_targets(targets)
    opts = CompileOptions(nm=nm, pipeline=pipeline, target=names[0], reference=False,
                          keep_fp32=False)
    own = model.info.get("calib") if calib is None else [tuple(s) for s in calib]
    return from_comparison(compare_captured(_copy_model(model), names, opts, progress,
                                            calib=own or None))


def analytic(config: Any, target: str | MachineConfig = "flexcim", *,
             nm: tuple[int, int] | None = None, assignment: str | dict | None = None,
             phase: str = "prefill", tokens: int = 2048, kv_len: int | None = None,
             attention: bool = True, all_logits: bool = False) -> CostReport:
    """Cycles and energy of a transformer from its configuration alone (a built-in name such
    as "llama-2-7b", a config.json path or a model folder): every GEMM priced by the same
    cost model a run uses. `nm` prunes every Linear but the LM head uniformly; `assignment`
    gives per-layer patterns (a JSON file path or its dict)."""
    from flowc.studies.analytic import analyse, assignment_from_dict, load_assignment, uniform
    from flowc.studies.results import from_analytic

    if nm is not None and assignment is not None:
        raise UsageError("flowc.analytic: give nm or assignment, not both")
    plan = uniform(*nm) if nm is not None else None
    if isinstance(assignment, dict):
        plan = assignment_from_dict(assignment)
    elif assignment is not None:
        plan = load_assignment(assignment)
    machine = _machine(target)
    label = config if isinstance(config, str) else "model"
    report = analyse(config, machine, plan, phase=phase, tokens=tokens, kv_len=kv_len,
                     attention=attention, all_logits=all_logits, name=label)
    return from_analytic({phase: {machine.name: report}}, label)


def evaluate(model: str, method: str = "flow", sparsity: float = 0.5, *,
             nm: tuple[int, int] | None = None, dense: bool = True, calib_text: str = "brown",
             eval_text: str | None = None, calib_windows: int = 32, eval_windows: int = 40,
             seq_len: int = 512, progress: Progress | None = None,
             **options: Any) -> EvalReport:
    """Perplexity and achieved sparsity of a language model (an `hf:` source) pruned by
    `method` (dense, uniform, magnitude, owl, flow, flow-repo, measured, measured-search) to
    `sparsity`, beside the dense model's (`dense=True`, first in the list). Calibration uses
    the first 90 % of `calib_text`, evaluation the rest (or all of `eval_text`). `options`:
    the method's own (update="obs", tau, granularity, solver, keep_dense, skip, latency, ...).
    """
    from flowc.studies.evaluate import MethodSpec, dense_result, prepare, run_method
    from flowc.studies.results import from_eval

    if nm is not None and method in ("uniform", "magnitude"):
        sparsity = 1.0 - nm[0] / nm[1]
    fields = {f.name for f in dataclasses.fields(MethodSpec)} - {"method", "target", "nm"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"flowc.evaluate: unknown option(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(fields))})")
    spec = MethodSpec(method, sparsity, nm, **options)
    base = prepare(model, calib_text, eval_text, calib_windows, eval_windows, seq_len,
                   say=progress)
    results = [dense_result(base)] if dense or method == "dense" else []
    if method != "dense":
        results.append(run_method(base, spec, progress=progress))
    return from_eval(results, model, calib_text, eval_text, seq_len, calib_windows,
                     eval_windows, base.calib_seconds)


def sweep(spec: str | os.PathLike[str] | dict[str, Any], out: str | os.PathLike[str], *,
          executor: str | Any = None, jobs: int | None = None, resume: bool = False,
          progress: bool = False) -> pd.DataFrame:
    """Run a design-space sweep (a TOML spec path or its dict, docs/sweeps.md) into the results
    directory `out` and return every stored row as a DataFrame sorted by point (units in
    `df.attrs["units"]`). `executor`: "local" (default), "serial", "ray", "ray:ADDRESS" or an
    executor object; `resume` continues a killed sweep stored in `out`."""
    from contextlib import nullcontext

    from flowc.executors import make_executor, progress_bar
    from flowc.studies.sweep.run import run_sweep
    from flowc.studies.sweep.store import load_results

    own = executor is None or isinstance(executor, str)
    ex = make_executor(executor, jobs) if own else executor
    try:
        with progress_bar("points") if progress else nullcontext(None) as bar:
            run_sweep(spec, out, executor=ex, resume=resume, progress=bar)
    finally:
        if own:
            ex.close()
    return load_results(out)


# -- helpers ------------------------------------------------------------------------------------


def _machine(target: str | MachineConfig) -> MachineConfig:
    from flowc.machine import MachineConfig, load_machine

    return target if isinstance(target, MachineConfig) else load_machine(target)


def _target_options(target: str | MachineConfig) -> dict[str, Any]:
    from flowc.machine import MachineConfig

    if isinstance(target, MachineConfig):
        return {"machine": target, "target": target.name}
    if isinstance(target, str | os.PathLike) and Path(target).suffix in (".toml", ".json"):
        return {"machine_file": str(target)}
    if isinstance(target, str):
        return {"target": target}
    raise UsageError(f"target: expected a machine name, a machine file or a MachineConfig, got "
                     f"{type(target).__name__}")


def _copy_model(model: Captured) -> Captured:
    """What the passes may change (the graph and its weights) copied; the rest shared."""
    import copy
    import warnings

    from flowc.frontend.load import Captured

    if not isinstance(model, Captured):
        raise UsageError(f"expected a model from flowc.load, got {type(model).__name__}")
    with warnings.catch_warnings():  # torch's pytree specs warn about their own deprecations
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(model.gm)
    return dataclasses.replace(model, gm=gm,
                               example_inputs=tuple(x.clone() for x in model.example_inputs),
                               info=dict(model.info))
