"""Run an Image: inputs, interpreter with cost accounting, ONNX Runtime check, report."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from flowc.backend.image import Image
from flowc.backend.reference import materialise
from flowc.backend.reference_int8 import int8_reference
from flowc.errors import UsageError
from flowc.runtime.check import CheckResult, compare, run_reference
from flowc.runtime.cost import mnemonic
from flowc.runtime.events import LoopEvent
from flowc.runtime.interpreter import Interpreter, check_inputs, gc_paused
from flowc.runtime.report import CostListener, LayerCost, RunReport, loop_weight
from flowc.runtime.verifier import check_run_inputs, verify


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
    from flowc.runtime.inputs import load_input_files

    return load_input_files(image, paths)


class MemoCostModel:
    """A CostModel whose per-event costs are memoised by the event's sizes.

    Transformer blocks repeat: 30 identical blocks in SmolLM2 ask for the same costs 30 times.
    The cost of an instruction depends on its mnemonic and the event's counts only (never on
    buffer names), so the key is (class, sizes); a loop's key adds its weight name when exact
    per-tile pair passes are in play. Everything else is delegated to the wrapped model.
    """

    def __init__(self, model, memo: dict | None = None) -> None:
        self.model = model
        self.machine = model.machine  # read per loop by the listener: no __getattr__ detour
        self.memo = {} if memo is None else memo
        self.sums: dict[tuple, tuple] = {}  # FastCostListener: per-layer-signature prices

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    @staticmethod
    def _key(ev) -> tuple:
        return (type(ev.instr), ev.tiles, ev.tokens, ev.keep_n, ev.group_m, ev.k_pass,
                ev.elements, ev.in_elements)

    def instr_cost(self, ev):
        key = self._key(ev)
        cost = self.memo.get(key)
        if cost is None:
            cost = self.memo[key] = self.model.instr_cost(ev)
        return cost

    def loop_cost(self, ev, pair_passes=None):
        weight = next((getattr(b.instr, "w", None) for b in ev.body
                       if getattr(b.instr, "w", None)), None) if pair_passes is not None else None
        # body events share their sizes (one loop, one macro): the first one and the
        # instruction types identify the loop's cost
        key = ("loop", ev.n_tiles, ev.k_tiles, weight, self._key(ev.body[0]) if ev.body else (),
               tuple(type(b.instr) for b in ev.body))
        cost = self.memo.get(key)
        if cost is None:
            cost = self.memo[key] = self.model.loop_cost(ev, pair_passes)
        return cost


class FastCostListener(CostListener):
    """CostListener that defers all pricing to finish(); same report (a test checks).

    During the run it only records events (a list append), so accounting adds little to
    execution. finish() prices each layer once per distinct *signature*: the sizes of its
    events in order, whether each loop's weight is loaded for the first time (setup), and the
    weight name only where per-tile pair passes make the cost depend on it. SmolLM2's 30
    identical blocks share their signatures, so 29 of 30 layers are a dict lookup. The prices
    live in the MemoCostModel, so a listener built on the same memo reuses them across runs.
    MACs and token counts are per layer (they depend on the layer's weights) and are counted
    for every layer.
    """

    def __init__(self, cost_model, layers, tensors=None) -> None:
        if not isinstance(cost_model, MemoCostModel):
            cost_model = MemoCostModel(cost_model)
        super().__init__(cost_model, layers, tensors)
        self._trace: list = []
        self.on_instr = self.on_loop = self._trace.append  # type: ignore[method-assign]

    def finish(self) -> list:
        with gc_paused():  # thousands of small allocations, no cycles (see gc_paused)
            return self._finish()

    def _finish(self) -> list:
        grouped: dict[str, tuple[list, list]] = {}
        exact = self.tensors is not None and self.model.machine.pair_select == "row-shared"
        loaded, signature = self.loaded, _signature
        layer, sigs, items = None, [], []  # consecutive events mostly share their layer
        for ev in self._trace:
            if ev.layer != layer:
                layer = ev.layer
                entry = grouped.get(layer)
                if entry is None:
                    self._layer(layer)  # layers keep the order of their first event
                    entry = grouped[layer] = ([], [])
                sigs, items = entry
            if type(ev) is LoopEvent:
                weight = loop_weight(ev)
                fresh = weight is None or weight not in loaded
                if weight is not None:
                    loaded.add(weight)
                sigs.append(("loop", ev.n_tiles, ev.k_tiles, fresh, weight if exact else None,
                             tuple([signature(b) for b in ev.body])))
                items.append(_PricedLoop(ev, weight, fresh))
            else:
                sigs.append(signature(ev))
                items.append(ev)
        self._trace.clear()
        for name, (sigs, items) in grouped.items():
            self._price(self.layers[name], tuple(sigs), items)
        return list(self.layers.values())

    def _price(self, lc, sig: tuple, items: list) -> None:
        sums, machine = self.model.sums, self.model.machine
        entry = sums.get(sig)
        if entry is None:  # the CostListener's own summation, in the same order
            part = LayerCost(lc.name, lc.kind)
            for item in items:
                part.add(self.loop_cost(*item) if isinstance(item, _PricedLoop)
                         else self.model.instr_cost(item))
            entry = sums[sig] = (part, float(machine.energy_pj(part.actions)),
                                 float(machine.energy_pj(part.setup_actions)))
        part = entry[0]
        lc.cycles, lc.setup_cycles = part.cycles, part.setup_cycles
        lc.actions, lc.setup_actions = dict(part.actions), dict(part.setup_actions)
        lc.energy_pj, lc.setup_energy_pj = entry[1], entry[2]
        attention = lc.kind == "attention"
        for item in items:
            if isinstance(item, _PricedLoop):
                self._count_loop(lc, item[0])
            elif attention:
                self._count_instr(lc, item)


class _PricedLoop(NamedTuple):
    event: LoopEvent
    weight: str | None
    fresh: bool  # its weight is loaded for the first time in this run: setup counts


def _signature(ev) -> tuple:
    """What an instruction's cost depends on: its mnemonic and sizes (never buffer names)."""
    name = getattr(ev.instr, "mnemonic", None)  # flowc.isa instructions: a class attribute
    return (name if isinstance(name, str) else mnemonic(ev.instr),) + ev[2:]


def simulate(image: Image, inputs: Sequence[np.ndarray], numerics: str = "int8",
             mode: str = "plan", account: bool = True,
             interpreter: Interpreter | None = None) -> tuple[list[np.ndarray], RunReport]:
    """Run `image` on `inputs`; with `account`, cycles and energy per layer in the report.

    Pass a previous `interpreter` (same image and numerics) to reuse its decompressed weights.
    """
    interp = interpreter or Interpreter(image, numerics=numerics, mode=mode)
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
                       infos={i.name: i for i in image.layers}, check=None, wall_seconds=wall)
    return outputs, report


def priced_layers(interp: Interpreter, model) -> list[LayerCost]:
    """Per-layer costs of a plan's events on `model`'s machine, priced once per (program,
    machine) and kept on the plan: the events of a run are a function of the instructions
    and the shapes, which the input signature fixes, so every run of the plan has the same
    counts and the same costs. Each call returns fresh LayerCost objects (callers may edit)."""
    plan = interp.plan()
    if plan.events is None:
        raise ValueError("the plan has not recorded its events yet (run it with record=True)")
    last = plan.priced_key  # repr(machine) takes 0.2 ms: reuse it for the same object
    key = last[1] if last is not None and last[0] is model.machine else repr(model.machine)
    plan.priced_key = (model.machine, key)
    if key not in plan.priced:
        image = interp.image
        listener = FastCostListener(model, image.layers, image.tensors)
        for is_loop, ev in plan.events:
            (listener.on_loop if is_loop else listener.on_instr)(ev)
        plan.priced[key] = listener.finish()
    return [replace(lc, actions=dict(lc.actions), setup_actions=dict(lc.setup_actions))
            for lc in plan.priced[key]]


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
    fp32_onnx = materialise(image)
    refs = {"fp32": run_reference(fp32_onnx, inputs)}
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
    refs = [k for k in rows[0] if k.startswith("onnxruntime_")] if rows else []
    dense = bool(rows) and "dense_fp32" in rows[0]
    heads = "".join(f"{'ORT ' + k.removeprefix('onnxruntime_') + ' next':<18}" for k in refs)
    heads += f"{'dense fp32 next':<18}" if dense else ""
    lines = [f"  {'pos':>4}  {'input':<14} {'flowrun next':<16} {heads}"]
    for r in rows:
        mark = "" if r["same"] else "  <- differs"
        cells = "".join(f"{r[k]!r:<18}" for k in refs)
        cells += f"{r['dense_fp32']!r:<18}" if dense else ""
        lines.append(f"  {r['position']:>4}  {r['input']!r:<14} {r['flowrun']!r:<16} {cells}{mark}")
    return "\n" + "\n".join(lines)


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
    verify(image)  # flowc.runtime.verifier: the whole program, before anything executes
    arrays = check_inputs(image, inputs)
    check_run_inputs(image, arrays)
    say(f"executing {len(image.program.instructions)} instructions ({numerics}, {mode}) ...")
    interp = Interpreter(image, numerics=numerics, mode=mode)
    outputs, report = simulate(image, arrays, numerics=numerics, mode=mode, interpreter=interp)
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
        reuse = interp if mode == "plan" else None  # its weights are unpacked already
        report.extra["profile"] = profile_image(image, arrays, numerics, reuse).render()
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
