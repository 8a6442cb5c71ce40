"""Check the simulated outputs against ONNX Runtime running the embedded reference model.

The reference is the pruned fp32 model, exported to ONNX at compile time. Tolerances
(docs/numerics.md):
- `fp32` numerics (CiM GEMMs unquantised): max |sim - ort| <= 1e-4 * max |ort| per output. Any
  lowering or packing error is far above this; fp32 reassociation is far below it.
- `int8` numerics: int8 weights (per channel) and activations (per token) each carry a
  rounding error of up to half a step, i.e. up to 1/254 of the row's or token's largest value;
  through a few layers this gives errors of about 1 % of the output's scale. We require
  cosine similarity >= 0.99 and max |sim - ort| <= 0.1 * max |ort| (an order of magnitude
  above what quantisation gives on the test models, an order below what a wrong tile gives).
- `int8`, outputs named `logits` (language models): cosine >= 0.95 and top-1 next-token
  agreement >= 0.5 over the positions. The max-error bound is dropped for logits: over
  millions of logits it is set by a few outlier activations (SmolLM2: 4.5 of 35 dense). This
  is a "not grossly broken" line, not an accuracy target (docs/attention.md): per-token int8
  on SmolLM2 measures 0.61-0.81 agreement and cosine 0.979-0.997 (magnitude 2:4 ... dense),
  heads swapped in A V give 0.01 and cosine 0.72, a RoPE sign error 0.30. Logit cosine is a
  weak signal (logits share a large common component), so lowering bugs are caught by the
  fp32 mode's 1e-4 bound, where quantisation noise cannot hide them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FP32_RTOL = 1e-4
INT8_MIN_COSINE = 0.99
INT8_RTOL = 0.1
LOGITS = "logits"  # outputs with this name are next-token logits: also judged by top-1
INT8_MIN_TOP1 = 0.5
LOGITS_MIN_COSINE = 0.95


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs_error: float
    max_abs_reference: float
    cosine: float
    passed: bool
    top1_agreement: float | None = None  # logits: fraction of positions with ORT's argmax
    positions: int = 0  # positions the agreement is over

    def to_dict(self) -> dict:
        d = {"name": self.name, "max_abs_error": self.max_abs_error,
             "max_abs_reference": self.max_abs_reference, "cosine": self.cosine,
             "passed": self.passed}
        if self.top1_agreement is not None:
            d.update(top1_agreement=self.top1_agreement, positions=self.positions)
        return d


@dataclass(frozen=True)
class CheckResult:
    numerics: str
    outputs: tuple[OutputCheck, ...]
    criterion: str

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max(o.max_abs_error for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def to_dict(self) -> dict:
        d = {"passed": self.passed, "max_abs_error": self.max_abs_error,
             "cosine": min(o.cosine for o in self.outputs), "numerics": self.numerics,
             "reference": "onnxruntime", "criterion": self.criterion,
             "outputs": [o.to_dict() for o in self.outputs]}
        if self.top1_agreement is not None:
            d["top1_agreement"] = self.top1_agreement
        return d


def ort_session(onnx_bytes: bytes, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # ORT's worker threads spin after a run by default; on a 2-core machine that starves
    # numpy's BLAS threads in the same process (measured: the simulator ran 20x slower).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def run_reference(onnx_bytes: bytes, inputs: Sequence[np.ndarray], session=None) -> list[np.ndarray]:
    sess = session or ort_session(onnx_bytes)
    feeds = {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return [np.asarray(o) for o in sess.run(None, feeds)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / den) if den > 0 else float(np.array_equal(a64, b64))


def top1_agreement(sim: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of positions (all but the last axis) where both pick the same argmax token."""
    return float((sim.argmax(axis=-1) == ref.argmax(axis=-1)).mean()) if sim.size else 1.0


def compare(names: Sequence[str], sim: Sequence[np.ndarray], ref: Sequence[np.ndarray],
            numerics: str) -> CheckResult:
    checks = []
    for name, s, r in zip(names, sim, ref, strict=True):
        if s.shape != r.shape:
            checks.append(OutputCheck(name, float("inf"), 0.0, 0.0, False))
            continue
        err = float(np.abs(s.astype(np.float64) - r).max()) if s.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        cos = cosine(s, r)
        top1, positions = None, 0
        if name == LOGITS and s.ndim >= 2 and s.shape[-1] > 1:
            top1, positions = top1_agreement(s, r), s.size // s.shape[-1]
        if numerics == "fp32":
            ok = err <= FP32_RTOL * max(scale, 1e-30)
        elif top1 is not None:
            ok = cos >= LOGITS_MIN_COSINE and top1 >= INT8_MIN_TOP1
        else:
            ok = cos >= INT8_MIN_COSINE and err <= INT8_RTOL * max(scale, 1e-30)
        checks.append(OutputCheck(name, err, scale, cos, bool(ok), top1, positions))
    if numerics == "fp32":
        crit = f"max_abs_error <= {FP32_RTOL:g} * max|reference|"
    elif any(c.top1_agreement is not None for c in checks):
        crit = f"logits: cosine >= {LOGITS_MIN_COSINE} and top-1 agreement >= {INT8_MIN_TOP1}"
    else:
        crit = f"cosine >= {INT8_MIN_COSINE} and max_abs_error <= {INT8_RTOL} * max|reference|"
    return CheckResult(numerics, tuple(checks), crit)
