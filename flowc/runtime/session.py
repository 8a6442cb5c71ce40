"""Run an Image: inputs, interpreter with cost accounting, ONNX Runtime check, report."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flowc.backend.image import Image
from flowc.backend.reference import materialise
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
        self.sums: dict[tuple[int, ...], object] = {}  # FastCostListener: per-layer sums
        self.energies: dict[tuple, float] = {}  # FastCostListener: pJ per action table

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
    """CostListener with a trimmed hot path for long programs; same report (a test checks).

    Instruction costs come from a MemoCostModel; a layer's instruction costs are summed once
    in finish(), and each distinct sequence of (memoised) costs is summed only once: the 30
    identical blocks of SmolLM2 share their sums. Energies are memoised per distinct action
    table. Loops and attention layers go through CostListener unchanged (setup-once, MACs).
    """

    def __init__(self, cost_model, layers, tensors=None) -> None:
        if not isinstance(cost_model, MemoCostModel):
            cost_model = MemoCostModel(cost_model)
        super().__init__(cost_model, layers, tensors)
        self._pending: dict[str, list] = {}
        self._attention = {i.name for i in layers if i.kind == "attention"}

    def on_instr(self, event) -> None:
        if event.layer in self._attention:
            super().on_instr(event)
            return
        pending = self._pending.get(event.layer)
        if pending is None:
            self._layer(event.layer)  # layers keep the order of their first event
            pending = self._pending[event.layer] = []
        pending.append(self.model.instr_cost(event))

    def finish(self) -> list:
        sums, energies, machine = self.model.sums, self.model.energies, self.model.machine
        done = set()
        for name, costs in self._pending.items():
            key = tuple(map(id, costs))  # memoised Cost objects live as long as the memo
            entry = sums.get(key)
            if entry is None:
                total = sum(costs[1:], costs[0])
                entry = sums[key] = (total, self._energy(energies, machine, total.actions),
                                     self._energy(energies, machine, total.setup_actions))
            total, lc = entry[0], self.layers[name]
            if lc.cycles or lc.setup_cycles or lc.actions or lc.setup_actions:
                lc.add(total)  # a layer that also holds loops or attention: sum, price later
                continue
            lc.cycles, lc.setup_cycles = int(total.cycles), int(total.setup_cycles)
            lc.actions, lc.setup_actions = dict(total.actions), dict(total.setup_actions)
            lc.energy_pj, lc.setup_energy_pj = entry[1], entry[2]
            done.add(name)
        self._pending.clear()
        for name, lc in self.layers.items():
            if name not in done:
                lc.energy_pj = self._energy(energies, machine, lc.actions)
                lc.setup_energy_pj = self._energy(energies, machine, lc.setup_actions)
        return list(self.layers.values())

    @staticmethod
    def _energy(energies: dict, machine, actions: dict) -> float:
        key = tuple(sorted(actions.items()))
        value = energies.get(key)
        if value is None:
            value = energies[key] = float(machine.energy_pj(actions))
        return value


def simulate(image: Image, inputs: Sequence[np.ndarray], numerics: str = "int8",
             mode: str = "batched", account: bool = True,
             interpreter: Interpreter | None = None) -> tuple[list[np.ndarray], RunReport]:
    """Run `image` on `inputs`; with `account`, cycles and energy per layer in the report.

    Pass a previous `interpreter` (same image and numerics) to reuse its decompressed weights.
    """
    machine, model = cost_model_for(image)
    listener = FastCostListener(model, image.layers, image.tensors) if account else None
    interp = interpreter or Interpreter(image, numerics=numerics, mode=mode)
    interp.listeners = [listener] if listener else []
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
    ref = run_reference(materialise(image), inputs)
    return compare([o.name for o in image.outputs], outputs, ref, numerics)


def next_tokens(image: Image, inputs: Sequence[np.ndarray], sim: np.ndarray, ref: np.ndarray,
                last: int = 8) -> list[dict]:
    """The simulator's and ORT's next-token prediction at the last `last` positions of the
    first sequence, decoded with the vocabulary the .fcim carries."""
    vocab = image.vocab
    ids = np.asarray(inputs[0]).reshape(-1, np.asarray(inputs[0]).shape[-1])[0]
    s_arg = sim.reshape(-1, sim.shape[-2], sim.shape[-1])[0].argmax(-1)
    r_arg = ref.reshape(-1, ref.shape[-2], ref.shape[-1])[0].argmax(-1)

    def text(i: int) -> str:
        return vocab[i] if 0 <= i < len(vocab) else f"<{i}>"

    return [{"position": int(p), "input": text(int(ids[p])), "flowrun": text(int(s_arg[p])),
             "onnxruntime": text(int(r_arg[p])), "same": bool(s_arg[p] == r_arg[p])}
            for p in range(max(0, len(ids) - last), len(ids))]


def _token_table(rows: list[dict]) -> str:
    lines = [f"  {'pos':>4}  {'input':<14} {'flowrun next':<16} {'ORT next':<16}"]
    for r in rows:
        mark = "" if r["same"] else "  <- differs"
        lines.append(f"  {r['position']:>4}  {r['input']!r:<14} {r['flowrun']!r:<16} "
                     f"{r['onnxruntime']!r:<16}{mark}")
    return "\n" + "\n".join(lines)


def run_image_file(path: str, inputs: Sequence[str] | None = None, numerics: str = "int8",
                   mode: str = "batched", check: bool = True, progress: bool = True) -> RunReport:
    from flowc.backend.container import load

    def say(msg: str) -> None:
        if progress:
            print(f"[flowrun] {msg}", file=sys.stderr, flush=True)

    if Path(path).is_file() and Path(path).stat().st_size > 10_000_000:  # seconds: say so
        say(f"loading {path} ({Path(path).stat().st_size / 1e6:.0f} MB) ...")
    image = load(path)
    arrays = check_inputs(image, load_inputs(image, inputs))
    say(f"executing {len(image.program.instructions)} instructions ({numerics}, {mode}) ...")
    outputs, report = simulate(image, arrays, numerics=numerics, mode=mode)
    report.file = str(path)
    if check and image.reference_onnx is not None:
        say("running the reference model in onnxruntime ...")
        t0 = time.perf_counter()
        ref = run_reference(materialise(image), arrays)
        report.check = compare([o.name for o in image.outputs], outputs, ref, numerics)
        report.check_seconds = time.perf_counter() - t0
        _language_notes(image, arrays, outputs, ref, report)
    return report


def _language_notes(image: Image, arrays, outputs, ref, report: RunReport) -> None:
    """Top-1 agreement and the next-token table of a language model, as report notes."""
    names = [o.name for o in image.outputs]
    if "logits" not in names or report.check is None:
        return
    i = names.index("logits")
    out = next(o for o in report.check.outputs if o.name == "logits")
    notes = report.extra.setdefault("notes", {})
    notes["top-1 next-token agreement with onnxruntime"] = (
        f"{out.top1_agreement:.4f} over {out.positions} positions (cosine {out.cosine:.6f})")
    if image.vocab:
        rows = next_tokens(image, arrays, outputs[i], ref[i])
        report.extra["next_tokens"] = rows
        notes[f"next token at the last {len(rows)} positions"] = _token_table(rows)
