"""Check the simulated outputs against ONNX Runtime running the embedded reference model.

Two references, both built from the pruned fp32 model exported to ONNX at compile time
(docs/numerics.md):
- the **fp32 reference** (`flowc.backend.reference.materialise`): the model as trained/pruned;
- the **int8 reference** (`flowc.backend.reference_int8.int8_reference`): the same graph
  rewritten so that ORT applies the simulator's quantisation (per-token int8 activations,
  the stored int8 weights and scales, MatMulInteger, int8 attention operands, int8 embedding
  rows). It is computed by ORT, not by flowc's interpreter, so it checks the simulator's int8
  execution end to end.

Verdicts:
- `fp32` numerics vs the fp32 reference: max |sim - ort| <= 1e-4 * max |ort| per output. Any
  lowering or packing error is far above this; fp32 reassociation is far below it.
- `int8` numerics vs the **int8 reference** (the verdict): both compute the same integer
  arithmetic; only float reassociation in the fp32 parts (norms, softmax, SiLU) differs. In a
  shallow model that stays ~1e-7 (tiny test models: 2e-7; the MLP is bit-exact). In a deep one
  a 1-ulp difference now and then puts an activation on the other side of a rounding boundary,
  a flip is a whole quantisation step, and 30 blocks spread it until the two int8 runs differ
  like two draws of quantisation noise (SmolLM2: see docs/numerics.md). So the bound is
  relative to the noise floor, ORT's int8 outputs against ORT's fp32 outputs:
  1 - cosine(sim, int8) <= 4 x (1 - cosine(int8, fp32)) + 1e-6 (two independent noise draws
  give 2x in expectation) and, for `logits`, top-1 disagreement <= 2 x the floor's + 0.02
  (the triangle inequality's bound for two draws). A wrong tile, head or sign is many times
  the noise and fails; shallow models are held to ~1e-6 by the tests.
- `int8` numerics vs the **fp32 reference** (the cost of quantisation, reported as
  `fidelity` and also required): cosine >= 0.99 and max error <= 0.1 * max |ort|; logits:
  cosine >= 0.95 and top-1 >= 0.5, a "not grossly broken" line (per-token int8 on SmolLM2
  measures 0.67-0.90 agreement, set by the model's tiny top-1 margins, see docs/numerics.md;
  heads swapped in A V give 0.01, a RoPE sign error 0.30).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowc.errors import ExecutionError, ImageError

FP32_RTOL = 1e-4
INT8_MIN_COSINE = 0.99
INT8_RTOL = 0.1
LOGITS = "logits"  # outputs with this name are next-token logits: also judged by top-1
INT8_MIN_TOP1 = 0.5
LOGITS_MIN_COSINE = 0.95
# int8 numerics vs the int8 reference, relative to the noise floor (module docstring)
SAME_COSINE_FACTOR = 4.0
SAME_COSINE_SLACK = 1e-6
SAME_TOP1_FACTOR = 2.0
SAME_TOP1_SLACK = 0.02


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    max_abs_reference: float
    cosine: float
    passed: bool
    top1_agreement: float | None = None  # logits: fraction of positions with ORT's argmax
    positions: int = 0  # positions the agreement is over
    # int8 reference only: the noise floor, ORT's int8 outputs against ORT's fp32 outputs
    floor_cosine: float | None = None
    floor_top1: float | None = None
    # logits vs the int8 reference: agreement where the answer is decided, i.e. where the fp32
    # model's top-1 margin exceeds twice the int8 logit noise (std of ORT int8 - ORT fp32)
    logit_noise: float | None = None
    decided_positions: int = 0
    decided_top1: float | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "max_abs_error": self.max_abs_error,
             "max_abs_reference": self.max_abs_reference, "cosine": self.cosine,
             "passed": self.passed}
        if self.top1_agreement is not None:
            d.update(top1_agreement=self.top1_agreement, positions=self.positions)
        if self.floor_cosine is not None:
            d["noise_floor"] = {"cosine": self.floor_cosine, "top1_agreement": self.floor_top1}
        if self.logit_noise is not None:
            d["noise_floor"].update(logit_noise_std=self.logit_noise,
                                    decided_positions=self.decided_positions,
                                    decided_top1_agreement=self.decided_top1)
        return d


@dataclass(frozen=True)
class CheckResult:
    numerics: str
    outputs: tuple[OutputCheck, ...]
    criterion: str
    reference: str = "fp32"  # which reference model ORT ran: "fp32" or "int8"
    fidelity: CheckResult | None = None  # int8 runs: the comparison with the fp32 reference

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and (self.fidelity is None
                                                         or self.fidelity.passed)

    @property
    def max_abs_error(self) -> float:
        return max(o.max_abs_error for o in self.outputs)

    @property
    def label(self) -> str:
        """What the reference model is, for reports."""
        if self.reference == "int8":
            return "int8 reference: same quantisation"
        return "fp32 reference: the cost of int8" if self.numerics == "int8" else "fp32 reference"

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def to_dict(self) -> dict:
        d = {"passed": self.passed, "max_abs_error": self.max_abs_error,
             "cosine": min(o.cosine for o in self.outputs), "numerics": self.numerics,
             "reference": "onnxruntime", "reference_model": self.reference,
             "criterion": self.criterion, "outputs": [o.to_dict() for o in self.outputs]}
        if self.top1_agreement is not None:
            d["top1_agreement"] = self.top1_agreement
        if self.fidelity is not None:
            d["fidelity"] = self.fidelity.to_dict()
        return d


def ort_session(onnx_bytes: bytes, threads: int = 0, lean: bool = False, spin: bool = False):
    """An ONNX Runtime session on the CPU. `lean`: no arena and no memory pattern, so the
    memory of every intermediate goes back as soon as it is dead and nothing outlives the run
    (a check runs each reference once; SmolLM2 at 2,048 tokens: flowrun's whole command
    peaked at 6.95 GB with ONNX Runtime's defaults). Timing baselines keep the defaults.
    `spin`: idle workers spin before they sleep (ONNX Runtime's default; off otherwise)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if lean:
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    # ORT's worker threads spin after a run by default; on a 2-core machine that starves
    # numpy's BLAS threads in the same process (measured: the simulator ran 20x slower).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the model comes from the .fcim: a bad file, not a bug
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImageError(f"reference model: onnxruntime refuses it: {first}") from None


def run_reference(onnx_bytes: bytes, inputs: Sequence[np.ndarray], session=None) -> list[np.ndarray]:
    """ORT's outputs, under the wall-clock limit flowc.backend.limits sets (a watchdog sets
    RunOptions.terminate): a hostile reference model cannot hang the check."""
    import threading

    import onnxruntime as ort

    from flowc.backend import limits

    sess = session or ort_session(onnx_bytes, lean=True)
    feeds = {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    run_opts = ort.RunOptions()
    seconds = limits.current().onnx_seconds
    watchdog = threading.Timer(seconds, lambda: setattr(run_opts, "terminate", True))
    watchdog.start()
    try:
        return [np.asarray(o) for o in sess.run(None, feeds, run_opts)]
    except Exception as exc:
        if run_opts.terminate:
            raise ExecutionError(f"the reference model ran past the {seconds:g} s limit") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExecutionError(f"onnxruntime failed on the reference model: {first}") from None
    finally:
        watchdog.cancel()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / den) if den > 0 else float(np.array_equal(a64, b64))


def top1_agreement(sim: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of positions (all but the last axis) where both pick the same argmax token."""
    return float((sim.argmax(axis=-1) == ref.argmax(axis=-1)).mean()) if sim.size else 1.0


def compare(names: Sequence[str], sim: Sequence[np.ndarray], ref: Sequence[np.ndarray],
            numerics: str, reference: str = "fp32",
            floor: Sequence[np.ndarray] | None = None) -> CheckResult:
    """Judge `sim` against ORT's outputs `ref` of the `reference` model ("fp32" or "int8").

    The int8 reference needs `floor`: ORT's outputs of the fp32 reference, which set the
    noise floor (how far a correct int8 execution lands from the fp32 model).
    """
    if reference not in ("fp32", "int8") or (reference == "int8" and numerics != "int8"):
        raise ValueError(f"cannot judge {numerics} numerics against the {reference} reference")
    if reference == "int8" and floor is None:
        raise ValueError("the int8 reference is judged relative to the fp32 reference: pass floor")
    checks = []
    for i, (name, s, r) in enumerate(zip(names, sim, ref, strict=True)):
        if s.shape != r.shape:
            checks.append(OutputCheck(name, float("inf"), 0.0, 0.0, False))
            continue
        err = float(np.abs(s.astype(np.float64) - r).max()) if s.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        cos = cosine(s, r)
        top1, positions = None, 0
        if name == LOGITS and s.ndim >= 2 and s.shape[-1] > 1:
            top1, positions = top1_agreement(s, r), s.size // s.shape[-1]
        if reference == "int8":
            f_cos, f_top1 = cosine(r, floor[i]), top1_agreement(r, floor[i]) if top1 is not None \
                else None
            ok = 1 - cos <= SAME_COSINE_FACTOR * (1 - f_cos) + SAME_COSINE_SLACK and (
                top1 is None or 1 - top1 <= SAME_TOP1_FACTOR * (1 - f_top1) + SAME_TOP1_SLACK)
            decided = _decided(s, r, floor[i]) if top1 is not None else (None, 0, None)
            checks.append(OutputCheck(name, err, scale, cos, bool(ok), top1, positions,
                                      f_cos, f_top1, *decided))
            continue
        if numerics == "fp32":
            ok = err <= FP32_RTOL * max(scale, 1e-30)
        elif top1 is not None:
            ok = cos >= LOGITS_MIN_COSINE and top1 >= INT8_MIN_TOP1
        else:
            ok = cos >= INT8_MIN_COSINE and err <= INT8_RTOL * max(scale, 1e-30)
        checks.append(OutputCheck(name, err, scale, cos, bool(ok), top1, positions))
    logits = any(c.top1_agreement is not None for c in checks)
    if reference == "int8":
        crit = (f"1 - cosine <= {SAME_COSINE_FACTOR:g} x (1 - floor cosine) + {SAME_COSINE_SLACK:g}"
                + (f"; top-1 disagreement <= {SAME_TOP1_FACTOR:g} x the floor's + "
                   f"{SAME_TOP1_SLACK:g}" if logits else "")
                + " (floor: ORT int8 vs ORT fp32)")
    elif numerics == "fp32":
        crit = f"max_abs_error <= {FP32_RTOL:g} * max|reference|"
    elif logits:
        crit = f"logits: cosine >= {LOGITS_MIN_COSINE} and top-1 agreement >= {INT8_MIN_TOP1}"
    else:
        crit = f"cosine >= {INT8_MIN_COSINE} and max_abs_error <= {INT8_RTOL} * max|reference|"
    return CheckResult(numerics, tuple(checks), crit, reference)


def _decided(sim: np.ndarray, int8: np.ndarray, fp32: np.ndarray
             ) -> tuple[float, int, float | None]:
    """(int8 logit noise, decided positions, sim-vs-int8 top-1 agreement on them).

    The noise is the std of ORT int8 - ORT fp32 over all logits; a position is decided when
    the fp32 model's top-1 margin exceeds twice that: there quantisation noise cannot change
    the answer, so any disagreement would be the simulator's own.
    """
    noise = float(np.std(int8.astype(np.float64) - fp32))
    top2 = np.partition(fp32, -2, axis=-1)[..., -2:]
    mask = (top2[..., 1] - top2[..., 0]) > 2 * noise
    if not mask.any():
        return noise, 0, None
    same = sim.argmax(axis=-1) == int8.argmax(axis=-1)
    return noise, int(mask.sum()), float(same[mask].mean())
