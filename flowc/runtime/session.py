"""Run an Image: inputs, interpreter with cost accounting, ONNX Runtime check, report."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from flowc.backend import limits as limits_mod
from flowc.backend.image import Image
from flowc.backend.reference import materialise
from flowc.backend.reference_int8 import int8_reference
from flowc.errors import UsageError
from flowc.runtime.check import CheckResult, compare, run_reference
from flowc.runtime.interpreter import Interpreter, check_inputs
from flowc.runtime.priced import (  # noqa: F401  (re-exported: benches and tests use them)
    FastCostListener,
    MemoCostModel,
    cost_model_for,
    price_key,
    priced_layers,
    stored_layers,
)
from flowc.runtime.report import RunReport
from flowc.runtime.verifier import ProgramInvalid, check_run_inputs, verify


def load_inputs(image: Image, paths: Sequence[str] | None) -> list[np.ndarray]:
    if not paths:
        if not image.samples:
            raise UsageError("this .fcim has no sample inputs; pass --input FILE.npy per input")
        return list(image.samples)
    from flowc.runtime.inputs import load_input_files

    return load_input_files(image, paths)


def simulate(image: Image, inputs: Sequence[np.ndarray], numerics: str = "int8",
             mode: str = "plan", account: bool = True,
             interpreter: Interpreter | None = None) -> tuple[list[np.ndarray], RunReport]:
    """Run `image` on `inputs`; with `account`, cycles and energy per layer in the report.

    Pass a previous `interpreter` (same image and numerics) to reuse its decompressed weights.
    """
    interp = interpreter or Interpreter(image, numerics=numerics, mode=mode)
    if account and interp.mode == "plan" and image.priced is not None:
        stored = stored_layers(image, numerics)  # None: another machine, numerics or code
        if stored is not None:  # priced at compile time for this machine and code: a run
            interp.listeners = []  # records nothing and prices nothing
            interp.plan()  # prepared outside the timed run, as below
            t0 = time.perf_counter()
            outputs = interp.run(inputs)
            wall = time.perf_counter() - t0
            return outputs, RunReport(
                file="", machine=str(image.machine["name"]),
                clock_mhz=float(image.machine["clock_mhz"]), numerics=numerics, mode=mode,
                layers=stored, infos={i.name: i for i in image.layers}, check=None,
                wall_seconds=wall, extra=_prepared(interp))
    # the machine parsed once per interpreter (0.6 ms a call: a small model's whole run)
    cached = getattr(interp, "cost_model", None)
    if cached is None or cached[0] is not image.machine:
        cached = interp.cost_model = (image.machine, *cost_model_for(image))
    machine, model = cached[1], cached[2]
    priced_once = account and interp.mode == "plan"
    listener = FastCostListener(model, image.layers, image.tensors) \
        if account and not priced_once else None
    interp.listeners = [listener] if listener else []
    if priced_once:
        interp.plan().record = True
    t0 = time.perf_counter()
    outputs = interp.run(inputs)
    wall = time.perf_counter() - t0
    layers = priced_layers(interp, model) if priced_once else \
        listener.finish() if listener else []
    report = RunReport(file="", machine=machine.name, clock_mhz=machine.clock_mhz,
                       numerics=numerics, mode=mode, layers=layers,
                       infos={i.name: i for i in image.layers}, check=None, wall_seconds=wall,
                       extra=_prepared(interp))
    return outputs, report


def _prepared(interp: Interpreter) -> dict:
    """The plan's preparation time (weights unpacked, steps resolved; not in wall_seconds),
    as report.extra["prepare_wall_s"] (flowrun prints it after the run's own time)."""
    return {"prepare_wall_s": interp.plan().prepare_seconds} if interp.mode == "plan" else {}


def check_outputs(image: Image, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  numerics: str) -> CheckResult | None:
    """The ORT verdict on `outputs` (None if the .fcim has no reference model)."""
    if image.reference_onnx is None:
        return None
    return check_against_references(image, inputs, outputs, numerics)[0]


def check_against_references(image: Image, inputs: Sequence[np.ndarray],
                             outputs: Sequence[np.ndarray], numerics: str
                             ) -> tuple[CheckResult, dict[str, list[np.ndarray]]]:
    """Run the reference model(s) in ORT and judge `outputs` (flowc.runtime.check).

    fp32 numerics: the fp32 reference. int8: the int8 reference (the simulator's quantisation
    applied by ORT) gives the verdict, the fp32 reference the fidelity (quantisation cost).
    Returns the result and ORT's outputs per reference ("fp32", and "int8" for int8 runs).
    """
    names = [o.name for o in image.outputs]
    refs = {"fp32": run_reference(materialise(image), inputs)}  # the model freed after its run
    if numerics == "fp32":
        return compare(names, outputs, refs["fp32"], "fp32"), refs
    refs["int8"] = run_reference(int8_reference(image), inputs)
    same = compare(names, outputs, refs["int8"], "int8", reference="int8", floor=refs["fp32"])
    fidelity = compare(names, outputs, refs["fp32"], "int8", reference="fp32")
    return replace(same, fidelity=fidelity), refs


def next_tokens(image: Image, inputs: Sequence[np.ndarray], sim: np.ndarray,
                refs: dict[str, np.ndarray], last: int = 8) -> list[dict]:
    """The simulator's and ORT's next-token predictions (one per reference model, e.g.
    {"int8": ..., "fp32": ...}) at the last `last` positions of the first sequence, decoded
    with the vocabulary the .fcim carries. `same`: flowrun equals the first reference."""
    vocab = image.vocab
    ids = np.asarray(inputs[0]).reshape(-1, np.asarray(inputs[0]).shape[-1])[0]

    def first_argmax(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, x.shape[-2], x.shape[-1])[0].argmax(-1)

    def text(i: int) -> str:
        return vocab[i] if 0 <= i < len(vocab) else f"<{i}>"

    s_arg = first_argmax(sim)
    r_args = {k: first_argmax(v) for k, v in refs.items()}
    first = next(iter(r_args.values()))
    return [{"position": int(p), "input": text(int(ids[p])), "flowrun": text(int(s_arg[p])),
             **{f"onnxruntime_{k}": text(int(a[p])) for k, a in r_args.items()},
             "same": bool(s_arg[p] == first[p])}
            for p in range(max(0, len(ids) - last), len(ids))]


def _token_table(rows: list[dict]) -> str:
    """The next-token rows as a rich table (flowc.termtable.table); tokens shown as
    Python strings, so that spaces and newlines are visible."""
    from flowc.termtable import table

    refs = [k for k in rows[0] if k.startswith("onnxruntime_")] if rows else []
    dense = bool(rows) and "dense_fp32" in rows[0]
    keys = ["input", "flowrun", *refs, *(["dense_fp32"] if dense else [])]
    heads = ["pos", "input", "flowrun next",
             *(f"ORT {k.removeprefix('onnxruntime_')} next" for k in refs),
             *(["dense fp32 next"] if dense else []), ""]
    body = [[str(r["position"]), *(repr(r[k]) for k in keys), "" if r["same"] else "<- differs"]
            for r in rows]
    return "\n" + table(heads, body, left=range(1, len(heads)))


def run_image_file(path: str, inputs: Sequence[str] | None = None, numerics: str = "int8",
                   mode: str = "plan", check: bool = True, progress: bool = True,
                   profile: bool = False) -> RunReport:
    from flowc.backend.container import load

    def say(msg: str) -> None:
        if progress:
            print(f"[flowrun] {msg}", file=sys.stderr, flush=True)

    if Path(path).is_file() and Path(path).stat().st_size > 10_000_000:  # seconds: say so
        say(f"loading {path} ({Path(path).stat().st_size / 1e6:.0f} MB) ...")
    image = load(path)
    report = run_image(image, load_inputs(image, inputs), numerics, mode, check, say, profile)
    report.file = str(path)
    return report


def run_image(image: Image, inputs: Sequence[np.ndarray], numerics: str = "int8",
              mode: str = "plan", check: bool = True,
              say: Callable[[str], None] | None = None, profile: bool = False) -> RunReport:
    """Verify `image`, run it on `inputs` (arrays in signature order) with cost accounting and,
    with `check` and a reference model, judge the outputs against ONNX Runtime; `profile`
    adds flowc.runtime.profile's table as report.extra["profile"]."""
    say = say or (lambda _msg: None)
    verified = verify(image)  # flowc.runtime.verifier: the whole program, before anything runs
    limit = limits_mod.current().peak_bytes
    if mode == "reference" and verified.kept_bytes > limit:
        raise ProgramInvalid(f"program: the reference mode keeps every buffer, "
                             f"{verified.kept_bytes} bytes with the weights, over the memory "
                             f"limit of {limit} (the plan mode frees each buffer after its last "
                             f"use: {verified.peak_bytes} bytes; or flowrun --max-memory)")
    arrays = check_inputs(image, inputs)
    check_run_inputs(image, arrays)
    say(f"executing {len(image.program.instructions)} instructions ({numerics}, {mode}) ...")
    interp: Interpreter | None = Interpreter(image, numerics=numerics, mode=mode)
    outputs, report = simulate(image, arrays, numerics=numerics, mode=mode, interpreter=interp)
    if not (profile and mode == "plan"):  # its weights and plan go before ORT's models come
        interp = None
    if check and image.reference_onnx is not None:
        say("running the reference model in onnxruntime"
            + (" (fp32, and int8 with the simulator's quantisation) ..." if numerics == "int8"
               else " ..."))
        t0 = time.perf_counter()
        report.check, refs = check_against_references(image, arrays, outputs, numerics)
        report.check_seconds = time.perf_counter() - t0
        _language_notes(image, arrays, outputs, refs, report)
    if profile:
        from flowc.runtime.profile import profile_image

        say("profiling one more run, then the same GEMMs alone and onnxruntime ...")
        # the plan-mode interpreter is kept for it: its weights are unpacked already
        report.extra["profile"] = profile_image(image, arrays, numerics, interp).render()
    return report


def _language_notes(image: Image, arrays, outputs, refs: dict, report: RunReport) -> None:
    """Top-1 agreement and the next-token table of a language model, as report notes."""
    names = [o.name for o in image.outputs]
    if "logits" not in names or report.check is None:
        return
    i = names.index("logits")
    notes = report.extra.setdefault("notes", {})
    checks = [report.check] + ([report.check.fidelity] if report.check.fidelity else [])
    for res in checks:
        out = next(o for o in res.outputs if o.name == "logits")
        notes[f"top-1 next-token agreement with onnxruntime ({res.label})"] = (
            f"{out.top1_agreement:.4f} over {out.positions} positions (cosine {out.cosine:.6f})")
        if out.logit_noise is not None:
            agree = "-" if out.decided_top1 is None else f"{out.decided_top1:.4f}"
            notes["  at decided positions (fp32 top-1 margin > 2 x int8 logit noise "
                  f"{out.logit_noise:.3f})"] = f"{agree} over {out.decided_positions} positions"
    quality = (image.compile_info or {}).get("quality")
    if quality:
        notes[f"perplexity on {quality['windows']} held-out windows ({quality['tokens']} "
              f"predicted tokens, fp32, measured at compile time)"] = (
            f"dense {quality['dense_ppl']:.2f}, after the passes {quality['pruned_ppl']:.2f}")
    if image.vocab:
        order = [r.reference for r in checks]  # the verdict's reference first
        rows = next_tokens(image, arrays, outputs[i], {k: refs[k][i] for k in order})
        if quality:  # the dense model's choice beside the pruned model's
            dense_next = quality["dense_next"][-len(rows):]
            for row, tok in zip(rows, dense_next, strict=False):
                row["dense_fp32"] = image.vocab[tok] if 0 <= tok < len(image.vocab) \
                    else f"<{tok}>"
        report.extra["next_tokens"] = rows
        notes[f"next token at the last {len(rows)} positions"] = _token_table(rows)
