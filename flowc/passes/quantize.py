"""`quantize`: int8 weights for the CiM macro (symmetric, one scale per output channel).

Weights (static, quantised here): scale_o = max_i |W_oi| / 127 (1.0 for an all-zero row, so
dequantisation never divides by zero), q = clip(rint(W / scale), -127, 127) as int8. Symmetric
and -128 unused, so q = 0 exactly where W = 0: pruned zeros stay zero and the N:M pattern of
the fp32 weight carries over to the int8 one. The error is at most scale_o / 2 per weight.

Activations (dynamic, not quantised here): per-token symmetric int8 computed at run time by
the vector unit's `v.quant` instruction, scale_t = max |x_t| / 127 (1 if zero). The GEMM's
int32 partial sums are dequantised by `v.deq` with scale_t * scale_o. This pass only records
the scheme as `meta["flowc"]["act_quant"] = "per-token"` so the backend emits it.

`smooth=a` (0 < a < 1, off by default): SmoothQuant smoothing before quantising
(`flowc.passes.smooth`, Xiao et al. 2022): per-input-channel scales from calibration max-abs
statistics move activation outliers into the weights of q/k/v, gate/up and down; the inverse
scale is folded into the RMSNorm weight (or up_proj's rows for down), so the program and its
cost are unchanged and the fp32 model computes the same function. Zeros stay zeros: the N:M
pattern of a pruned weight survives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from flowc.errors import CompileError
from flowc.passes.base import CompileContext, Pass, PassResult
from flowc.passes.graph import flowc_meta, get_param, linear_nodes
from flowc.passes.registry import register_pass
from flowc.passes.smooth import smooth

QMAX = 127


class QuantizeError(CompileError):
    """A weight cannot be quantised (wrong rank, NaN or infinite values)."""


def quantize_weight(weight: np.ndarray, layer: str = "<array>") -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [out, in], scale float32 [out]) with per-output-channel symmetric scales.

    The division runs in float64 on the float32 scale, so `q * scale` reproduces the values the
    runtime computes from the stored float32 scale.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise QuantizeError(f"layer {layer}: expected a 2-D weight, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise QuantizeError(f"layer {layer}: weight holds NaN or infinite values")
    amax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    scale = np.where(amax > 0, amax / np.float32(QMAX), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(w.astype(np.float64) / scale.astype(np.float64)[:, None]), -QMAX, QMAX)
    return q.astype(np.int8), scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 q * scale (per output channel): the weight the int8 path effectively uses."""
    return (q.astype(np.float32) * scale.astype(np.float32)[:, None]).astype(np.float32)


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    """Store `qweight`, `wscale` and `act_quant` for every static-weight linear."""

    name = "quantize"
    smooth: float = 0.0

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        layers: dict[str, dict[str, float]] = {}
        max_abs = err_sq = ref_sq = 0.0
        refs = linear_nodes(gm)
        smoothing = smooth(gm, refs, ctx.calib_inputs, self.smooth, ctx.memo) if self.smooth \
            else None
        for ref in refs:
            w = get_param(gm, ref.weight_target).detach().to(torch.float32).cpu().numpy()
            q, scale = quantize_weight(w, ref.name)
            meta = flowc_meta(ref.node)
            meta["qweight"], meta["wscale"], meta["act_quant"] = q, scale, "per-token"
            diff = w.astype(np.float64) - dequantize_weight(q, scale)
            e_sq, r_sq = float(np.square(diff).sum()), float(np.square(w, dtype=np.float64).sum())
            e_max = float(np.abs(diff).max()) if diff.size else 0.0
            layers[ref.name] = {"max_abs_err": e_max, "rel_err": _ratio(e_sq, r_sq)}
            max_abs, err_sq, ref_sq = max(max_abs, e_max), err_sq + e_sq, ref_sq + r_sq
        report: dict[str, Any] = {
            "weights": "int8 symmetric per-output-channel",
            "activations": "int8 symmetric per-token, dynamic (v.quant)",
            "layers": layers,
            "max_abs_err": max_abs,
            "rel_err": _ratio(err_sq, ref_sq),
        }
        if smoothing is not None:
            report["smoothing"] = smoothing
        ctx.reports[self.name] = report
        return PassResult(gm, modified=bool(refs))


def _ratio(err_sq: float, ref_sq: float) -> float:
    """Relative Frobenius error ||W - Wq|| / ||W|| (0 for an all-zero weight)."""
    return float(np.sqrt(err_sq / ref_sq)) if ref_sq > 0 else 0.0
