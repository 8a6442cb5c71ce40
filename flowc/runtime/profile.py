"""`flowrun --profile`: where a run's wall time goes, and the floor of this machine.

After one functional warm-up run, plan runs with accounting as one flowrun call does it are
timed per instruction class (CiM GEMM loops, attention mm.act, embedding, vector ops,
control), the accounting's share and the walk itself (dispatch). The accounting is what the
call pays: reading the per-layer rows when the .fcim holds prices for this machine, numerics
and code (flowc.runtime.priced.stored_layers), else a fresh listener per run (building and
recording events, then pricing them in the listener's finish()). The floor is measured
right after, in the same process:
- the same GEMMs alone: every tile loop's product on its prepared operands (the input already
  converted, the weight already unpacked), on the engine the plan uses, nothing else;
- ONNX Runtime executing the reference graphs the .fcim carries: the fp32 one and the int8
  one (the simulator's quantisation, MatMulInteger), after a first run that builds its
  arenas, with the same thread count flowrun's check uses and ONNX Runtime's default of
  workers that spin between operators (the check's sessions sleep instead).
Every timing is the fastest of ROUNDS (noise on a shared machine only adds time); ratios are
of numbers measured in the same call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from flowc.backend.image import Image
from flowc.host import openmp_wait_mode
from flowc.runtime.interpreter import Interpreter, State, gc_paused

ROUNDS = 3  # every timing is the fastest of this many (noise on a shared machine only adds)
CLASSES = ("gemm", "attention", "embed", "vector", "control", "dispatch", "accounting")
LABELS = {"gemm": "CiM GEMM loops", "attention": "attention (mm.act)", "embed": "embedding",
          "vector": "vector ops", "control": "control (layer, cfg.nm)",
          "dispatch": "dispatch (the walk)", "accounting": "accounting (events + pricing)"}


@dataclass
class Profile:
    prepare: float  # plan preparation: weights unpacked, steps resolved (once per image)
    spent: dict[str, float]  # wall seconds per class of one run with accounting
    gemm_floor: float  # the same GEMMs alone
    ort: dict[str, float] = field(default_factory=dict)  # reference graph -> seconds
    threads: int = 0
    waiting: str = ""  # how torch's OpenMP workers wait (flowc.host.openmp_wait_mode)
    stored: bool = False  # the accounting read the .fcim's stored prices (nothing priced)

    @property
    def run(self) -> float:
        return sum(self.spent.values())

    def render(self) -> str:
        """Two rich tables (flowc.termtable.table): the run by class, and the floors
        measured in the same call with flowrun's ratio to each."""
        from flowc.termtable import table

        how = "prices read from the .fcim" if self.stored else "events built and priced"
        head = (f"profile: a run with accounting ({how}) {self.run * 1e3:.1f} ms "
                f"(fastest of {ROUNDS}) "
                f"(plan preparation, once per image: {self.prepare * 1e3:.0f} ms; "
                f"torch threads {self.threads}; OpenMP workers {self.waiting})")
        rows = [[LABELS[k], f"{self.spent.get(k, 0.0) * 1e3:.1f}",
                 f"{100 * self.spent.get(k, 0.0) / self.run:.1f} %"] for k in CLASSES]
        floors = [("the same GEMMs alone", self.gemm_floor),
                  *((f"onnxruntime {name} reference", sec) for name, sec in self.ort.items())]
        return "\n".join([
            table(["class", "ms", "share"], rows, title=head),
            table(["floor on this machine (measured now)", "ms", "flowrun / floor"],
                  [[name, f"{sec * 1e3:.1f}", f"{self.run / sec:.2f}x"] for name, sec in floors])])


def profile_image(image: Image, inputs: Sequence[np.ndarray], numerics: str = "int8",
                  interp: Interpreter | None = None, ort: bool = True) -> Profile:
    """Profile a plan run; `interp`: a plan-mode interpreter of `image` already used (its
    weights are not unpacked twice; the preparation time is then the one it took)."""
    from flowc.runtime.priced import FastCostListener, cost_model_for, stored_layers

    if interp is None:
        interp = Interpreter(image, numerics=numerics)
    plan = interp.plan()
    prepare = plan.prepare_seconds
    _, model = cost_model_for(image)
    stored = interp.mode == "plan" and stored_layers(image, numerics) is not None
    interp.listeners = []
    interp.run(inputs)  # warm-up, functional: BLAS and allocator warm, as in a loaded model
    best = None
    for _ in range(ROUNDS):  # the fastest round: a shared machine only ever adds time
        # cold, per round: a fresh listener, or the stored rows read again (session.simulate)
        listener = None if stored else FastCostListener(model, image.layers, image.tensors)
        state = State()
        interp._bind_inputs(state, inputs)
        with gc_paused():
            spent = plan.run_profiled(state, [] if listener is None else [listener])
        t0 = time.perf_counter()
        if listener is None:
            stored_layers(image, numerics)
        else:
            listener.finish()
        spent["accounting"] += time.perf_counter() - t0
        if best is None or sum(spent.values()) < sum(best.values()):
            best = spent
    floor = gemm_floor(interp, state)
    prof = Profile(prepare, best, floor, threads=torch.get_num_threads(),
                   waiting=openmp_wait_mode(), stored=stored)
    if ort and image.reference_onnx is not None:
        prof.ort = ort_times(image, inputs, numerics)
    return prof


def gemm_floor(interp: Interpreter, state: State, rounds: int = ROUNDS) -> float:
    """Seconds of every tile loop's GEMM alone (fastest of `rounds`), on operands prepared
    beforehand, in the plan's order: the fused steps' products as the plan runs them
    (fused_linear.LinearProduct on the engine it picks for the size, dequantisation included;
    sibling loops as one product), the other loops' GEMMs on the loop's input as the GEMM's
    dtype and the unpacked weight."""
    plan = interp.plan()
    products = []
    for src, product, bounds in plan.products:
        x = state.bufs[src]
        xk = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        ones = np.ones(len(xk), np.float32)
        products.append(partial(product, xk, ones, bounds))
    for j, step in enumerate(plan.steps):
        if step.nm is None or j in plan.fused_loops:  # not a batched GEMM loop, or timed above
            continue
        ld_tile, ld_act = step.item.body[0], step.item.body[1]
        x = state.bufs[ld_act.src]
        wt = interp.dense_weight(ld_tile.w, *step.nm,
                                 float_chunks=interp.gemm_backend() == "float32-chunks")
        xk = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=wt.dtype)
        mm = torch._int_mm if interp.gemm_backend() == "int_mm" else torch.matmul
        products.append(partial(mm, torch.from_numpy(xk), torch.from_numpy(wt[:xk.shape[-1]])))
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        for product in products:
            product()
        took = time.perf_counter() - t0
        best = took if best is None else min(best, took)
    return best or 0.0


def ort_times(image: Image, inputs: Sequence[np.ndarray], numerics: str) -> dict[str, float]:
    """Second-run seconds of ORT on the fp32 reference and (int8 numerics) the int8 one,
    with ONNX Runtime's default of workers that spin between operators (faster than
    sleeping ones here: SmolLM2 at 2,048 tokens 7.27 against 7.65 s, median of 3)."""
    from flowc.backend.reference import materialise
    from flowc.backend.reference_int8 import int8_reference
    from flowc.runtime.check import ort_session, run_reference

    graphs = {"fp32": materialise(image)}
    if numerics == "int8":
        graphs["int8"] = int8_reference(image)
    out = {}
    for name, onnx_bytes in graphs.items():
        sess = ort_session(onnx_bytes, spin=True)
        run_reference(onnx_bytes, inputs, session=sess)  # builds its arenas
        secs = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            run_reference(onnx_bytes, inputs, session=sess)
            secs.append(time.perf_counter() - t0)
        out[name] = min(secs)
    return out
