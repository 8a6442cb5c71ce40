"""The compile driver: load -> passes -> lowering -> reference export -> Image.

`compile_captured` is the library entry point (`import flowc`); the CLI only parses arguments
and calls it. Progress goes through a callable so long steps are visible in a terminal.
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from flowc.backend.image import Image
from flowc.backend.lower import lower
from flowc.backend.reference import externalise
from flowc.errors import CompileError, UsageError
from flowc.frontend.load import Captured, example_inputs_for
from flowc.machine import MachineConfig

_CLOCK: list[float] = []  # [first message, previous message] perf_counter times
_CPU: list[float] = []  # the process's CPU time (all threads) at the previous message


def stderr_progress(msg: str) -> None:
    """A progress line with the seconds since the first line, (+) since the previous one (the
    wall time of the stage the previous line announced) and the CPU seconds of this process
    over the same stage (all threads: on a shared machine wall time says little alone)."""
    now, cpu = time.perf_counter(), time.process_time()
    if not _CLOCK:
        _CLOCK.extend((now, now))
        _CPU.append(cpu)
    total, step, used = now - _CLOCK[0], now - _CLOCK[1], cpu - _CPU[0]
    _CLOCK[1], _CPU[0] = now, cpu
    print(f"[flowc {total:6.1f} s, +{step:5.1f}, cpu +{used:5.1f}] {msg}", file=sys.stderr,
          flush=True)


@dataclass
class CompileOptions:
    """Options of `flowc compile`; `pipeline` overrides the default pass list built from nm."""

    nm: tuple[int, int] | None = None  # uniform N:M (kept, group); None = dense unless pipeline
    score: str = "wanda"
    pipeline: str | None = None
    target: str = "flexcim"
    machine_file: str | None = None
    machine: MachineConfig | None = None  # a machine object; overrides target and machine_file
    calib_batches: int = 4
    reference: bool = True
    keep_fp32: bool = True
    seed: int = 0
    pass_cache: bool = False  # reuse/store the passes' result (flowc.passes.result_cache)
    extra: dict = field(default_factory=dict)


def parse_nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f"--nm: expected N:M such as 2:4 (N kept per M), got {text!r}") from None
    if not (1 <= n <= m):
        raise UsageError(f"--nm {text}: need 1 <= N <= M (N = weights kept per group of M)")
    return n, m


def default_pipeline(opts: CompileOptions) -> str:
    steps = []
    if opts.nm is not None:
        n, m = opts.nm
        if opts.score == "wanda":
            steps.append("calibrate")
        steps.append(f"nm-prune{{n={n},m={m},score={opts.score}}}")
        steps.append("verify-nm")
    steps.append("quantize")
    return ",".join(steps)


def resolve_machine(opts: CompileOptions) -> MachineConfig:
    from flowc.machine import load_machine

    if opts.machine is not None:
        return opts.machine
    if opts.machine_file:
        return MachineConfig.from_file(opts.machine_file)
    return load_machine(opts.target)


def calibration_inputs(cap: Captured, batches: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """Synthetic calibration batches (seeded normal inputs of the example shapes).

    Models with real data (LLMs) pass their own calibration inputs instead.
    """
    shapes = [tuple(x.shape) for x in cap.example_inputs]
    dtypes = [x.dtype for x in cap.example_inputs]
    high = cap.info.get("index_high")  # token ids stay inside the embedding tables
    return [example_inputs_for(shapes, dtypes, seed=seed + 1 + i, high=high)
            for i in range(batches)]


class _TrackedInputs(list):
    """Calibration inputs that remember whether a pass read them (a dense compile never
    does, and its report must not claim that calibration data shaped the program)."""

    used = False

    def __iter__(self):
        self.used = True
        return super().__iter__()

    def __getitem__(self, i):
        self.used = True
        return super().__getitem__(i)


def choose_calibration(cap: Captured, opts: CompileOptions, calib: list | None,
                       progress) -> tuple[_TrackedInputs, dict]:
    """The calibration inputs and their record for the report: the caller's (`calib`, with
    `cap.info["calib_source"]`), the source's own (hf: built-in text), else synthetic (the
    compile log says so once a pass has read them)."""
    from flowc.frontend.calib_data import synthetic_source

    record = cap.info.get("calib_source")
    if calib is None:
        calib = cap.info.get("calib")
    if not calib:
        calib = calibration_inputs(cap, opts.calib_batches, opts.seed)
        record = synthetic_source(len(calib), opts.seed)
    record = dict(record or {"source": "caller", "samples": len(calib)})
    return _TrackedInputs(calib), record


def run_passes(cap: Captured, pipeline: str, machine, calib, progress) -> dict:
    from flowc.passes.base import CompileContext, PassManager
    from flowc.passes.pipeline import parse_pipeline
    from flowc.studies.analytic import gemm_pricer, tokens_of

    passes = parse_pipeline(pipeline)
    ctx = CompileContext(example_inputs=cap.example_inputs, calib_inputs=calib,
                         machine=machine, progress=progress,
                         price=gemm_pricer(machine, tokens_of(cap.example_inputs)))
    result = PassManager(passes, instruments=[_ProgressInstrument(progress)]).run(cap.gm, ctx)
    cap.gm = result.graph_module
    # no timings here: they differ run to run and the .fcim must be byte-identical
    return {"pipeline": pipeline, "reports": _jsonable(ctx.reports)}


class _ProgressInstrument:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.t0 = 0.0

    def before(self, pass_, gm, ctx) -> None:
        self.t0 = time.perf_counter()
        if self.progress:
            self.progress(f"pass {pass_.name} ...")

    def after(self, pass_, result, ctx) -> None:
        if self.progress:
            self.progress(f"pass {pass_.name} done in {time.perf_counter() - self.t0:.2f} s")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist() if x.size <= 64 else f"<array {x.shape}>"
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float):
        return round(x, 8)
    return x


def _logits(gm, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = gm(*inputs)
    out = out[0] if isinstance(out, tuple | list) else out
    return out.reshape(-1, out.shape[-1]).to(torch.float32)


def _nll(gm, windows) -> tuple[float, int]:
    """Summed next-token NLL and predicted tokens over [1, T] windows (no context carried)."""
    total, count = 0.0, 0
    for (ids,) in windows:
        logits = _logits(gm, (ids,))
        total += float(torch.nn.functional.cross_entropy(logits[:-1], ids.reshape(-1)[1:],
                                                         reduction="sum"))
        count += ids.numel() - 1
    return total, count


def quality_probe(cap: Captured) -> dict | None:
    """For a language model with held-out windows (`cap.info["eval_windows"]`): the dense
    fp32 model's next tokens at the prompt and its perplexity, measured before the passes
    prune anything, so the report can put the pruned model beside it."""
    windows = cap.info.get("eval_windows")
    if not windows or cap.output_names[:1] != ("logits",):
        return None
    logits = _logits(cap.gm, cap.example_inputs)
    nll, tokens = _nll(cap.gm, windows)
    return {"next": logits.argmax(-1).tolist(), "nll": nll, "tokens": tokens}


def quality_report(cap: Captured, dense: dict, progress) -> dict:
    """Dense vs pruned fp32: perplexity on the held-out windows, next tokens at the prompt."""
    import math

    nll, tokens = _nll(cap.gm, cap.info["eval_windows"])
    pruned_next = _logits(cap.gm, cap.example_inputs).argmax(-1).tolist()
    out = {"windows": len(cap.info["eval_windows"]), "tokens": tokens,
           "eval_text": cap.info.get("eval_text", ""),
           "dense_ppl": round(math.exp(dense["nll"] / dense["tokens"]), 4),
           "pruned_ppl": round(math.exp(nll / tokens), 4),
           "dense_next": dense["next"][-8:], "pruned_next": pruned_next[-8:],
           "next_agreement": round(sum(a == b for a, b in zip(dense["next"], pruned_next,
                                                              strict=True)) / len(pruned_next),
                                   4)}
    if progress:
        progress(_quality_line(out))
    return out


def _quality_line(out: dict) -> str:
    tokens = out["tokens"]
    return (f"held-out perplexity ({out['windows']} x {tokens // max(out['windows'], 1) + 1} "
            f"tokens of {out['eval_text'] or 'text'}): dense {out['dense_ppl']:.2f}, after the "
            f"passes {out['pruned_ppl']:.2f} (fp32); next-token agreement with dense "
            f"{out['next_agreement']:.3f}")


def _passes_and_quality(cap: Captured, pipeline: str, machine, calib, calib_record: dict,
                        opts: CompileOptions, progress) -> tuple[dict, str | None]:
    """The passes and the held-out perplexity around them, or their stored result when
    `opts.pass_cache` and an entry for exactly these inputs exists (then the log says so);
    and the key of the entry read or stored (None without one)."""
    from flowc.passes import result_cache

    key, before = None, None
    t0 = time.perf_counter()
    if opts.pass_cache and result_cache.enabled():
        key = _pass_key(cap, pipeline, machine, calib, calib_record, opts)
        if key is None and progress:
            progress("pass cache: not used (a pass of the pipeline has no source file to key)")
    if key is not None:
        info = result_cache.load(key, cap.gm)
        if info is not None:
            if progress:
                progress(f"passes and held-out perplexity: cached ({key[:12]}, read in "
                         f"{time.perf_counter() - t0:.2f} s); {pipeline}")
                if "quality" in info:
                    progress(_quality_line(info["quality"]))
            return info, key
        before = result_cache.Snapshot(cap.gm)
    dense = quality_probe(cap)
    info = run_passes(cap, pipeline, machine, calib, progress)
    info["calibration"] = {**calib_record, "used": calib.used}
    if calib.used and calib_record["source"] == "synthetic" and progress:
        progress(f"calibration: synthetic inputs ({calib_record['inputs']}, {len(calib)} "
                 "samples; give --calib-text or --calib-data for real statistics)")
    if dense is not None:
        info["quality"] = _jsonable(quality_report(cap, dense, progress))
    if key is None or before is None:
        return info, None
    t0 = time.perf_counter()
    stored, said = result_cache.store(key, cap.gm, before, info)
    if progress:
        progress(f"{said} in {time.perf_counter() - t0:.2f} s")
    return info, key if stored else None  # later stages store beside an entry only


def _reference(cap: Captured, image: Image, opts: CompileOptions, key: str | None,
               progress) -> bytes:
    """The reference ONNX model (fp32 weights as recipes over the image when it keeps them);
    with a pass-cache entry, read from or stored beside it: the export is a function of the
    pruned graph, which the entry's key determines."""
    from flowc.passes import result_cache

    name = f"reference{'-recipes' if opts.keep_fp32 else ''}.onnx"
    if key is not None:
        held = result_cache.load_file(key, name)
        if held is not None:
            if progress:
                progress(f"reference ONNX model: cached ({key[:12]}, {len(held):,} bytes)")
            return held
    if progress:
        progress("exporting the reference ONNX model ...")
    t0 = time.perf_counter()
    onnx_bytes = export_reference(cap)
    # the fp32 weights are in the image already: keep only recipes for them in the graph
    out = externalise(onnx_bytes, image) if opts.keep_fp32 else onnx_bytes
    if progress:
        progress(f"reference export done in {time.perf_counter() - t0:.2f} s")
    if key is not None:
        result_cache.store_file(key, name, out)
    return out


def _pass_key(cap: Captured, pipeline: str, machine, calib, calib_record: dict,
              opts: CompileOptions) -> str | None:
    """Everything the passes and the perplexity probe read: graph, tensors, annotations,
    example/calibration/held-out inputs, pipeline, machine, seed, the calibration record and
    the source of any pass defined outside flowc; None when such a pass has no source file."""
    from flowc.passes import result_cache
    from flowc.passes.pipeline import format_pipeline, parse_pipeline

    passes = parse_pipeline(pipeline)
    plugin_code = result_cache.pass_code_digest(type(p) for p in passes)
    if plugin_code is None:
        return None
    windows = cap.info.get("eval_windows") or []
    tensors = [*cap.example_inputs, *(x for item in calib for x in item),
               *(x for item in windows for x in item)]
    extra = {"pipeline": pipeline, "passes": format_pipeline(passes, full=True),
             "pass code": plugin_code,
             "machine": machine.to_dict(), "seed": opts.seed, "calibration": calib_record,
             "calib": len(calib), "windows": len(windows),
             "eval_text": cap.info.get("eval_text", ""), "outputs": list(cap.output_names)}
    return result_cache.result_key(cap.gm, tensors, extra)


def export_reference(cap: Captured) -> bytes:
    """ONNX of the pruned fp32 model (the graph after passes; weights are pruned in place)."""
    buf = io.BytesIO()
    names = [f"input_{i}" for i in range(len(cap.example_inputs))]
    # ep.module() refuses train(); the exporter only toggles eval mode, which is a no-op here
    cap.gm.train = lambda mode=True: cap.gm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(cap.gm, cap.example_inputs, buf, dynamo=False, input_names=names,
                              opset_version=17, do_constant_folding=True)
        except Exception as exc:
            raise CompileError(f"ONNX export of the reference model failed: {exc}") from exc
        finally:
            del cap.gm.train
    return buf.getvalue()


def compile_captured(cap: Captured, opts: CompileOptions,
                     progress: Callable[[str], None] | None = stderr_progress,
                     calib: list | None = None) -> Image:
    """Run the pass pipeline on `cap` (in place) and lower it to an Image."""
    torch.manual_seed(opts.seed)
    machine = resolve_machine(opts)
    pipeline = opts.pipeline or default_pipeline(opts)
    calib, calib_record = choose_calibration(cap, opts, calib, progress)
    info, key = _passes_and_quality(cap, pipeline, machine, calib, calib_record, opts, progress)
    if "prepare" in cap.info:  # what graph preparation removed, folded and decomposed
        info["prepare"] = {k: v for k, v in cap.info["prepare"].items() if k != "ops"}
    if progress:
        progress(f"lowering to {machine.name} ...")
    t0 = time.perf_counter()
    image = lower(cap, machine, keep_fp32=opts.keep_fp32)
    if progress:
        progress(f"lowering done in {time.perf_counter() - t0:.2f} s")
    if opts.reference:
        image.reference_onnx = _reference(cap, image, opts, key, progress)
    image.vocab = tuple(cap.info.get("vocab", ()))
    image.samples = tuple(x.detach().numpy() for x in cap.example_inputs)
    info["source"] = cap.source
    info["target"] = machine.name
    image.compile_info = info
    return image
