"""`verify-nm`: fail the compile if any annotated layer breaks its N:M pattern.

The backend packs exactly N weights per group of M into N sub-macros; a group with more
nonzeros would be silently truncated on the chip. This check runs on the fp32 parameter (what
perplexity and ONNX see) and, when present, on the int8 `qweight` (what the chip sees).
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


class VerifyError(CompileError):
    """A layer violates its N:M pattern (one line: layer, row, group, count vs allowed)."""


def check_nm(weight: np.ndarray, keep_n: int, group_m: int, layer: str, what: str = "") -> None:
    """Raise VerifyError at the first group (row-major) holding more than `keep_n` nonzeros;
    a K that is not a multiple of M is checked over groups padded with zero columns."""
    w = np.asarray(weight)
    rows, k = w.shape
    pad = (-k) % group_m  # groups over K padded with zero columns (prune.k_pad)
    if pad:
        w = np.concatenate([w, np.zeros((rows, pad), dtype=w.dtype)], axis=1)
        k += pad
    counts = np.count_nonzero(w.reshape(rows, k // group_m, group_m), axis=-1)
    bad = np.argwhere(counts > keep_n)
    if bad.size:
        row, group = (int(v) for v in bad[0])
        raise VerifyError(
            f"layer {layer}{what}: row {row}, group starting at input {group * group_m} holds "
            f"{int(counts[row, group])} nonzeros, {keep_n}:{group_m} allows {keep_n} "
            f"({len(bad)} violating group{'s' if len(bad) > 1 else ''})"
        )


@register_pass
@dataclass(frozen=True)
class VerifyNM(Pass):
    """Check every layer with a `pattern` annotation; changes nothing."""

    name = "verify-nm"

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        checked: list[str] = []
        for ref in linear_nodes(gm):
            meta = flowc_meta(ref.node)
            if "pattern" not in meta:
                continue
            n, m = (int(v) for v in meta["pattern"])
            weight = get_param(gm, ref.weight_target).detach().to(torch.float32).cpu().numpy()
            check_nm(weight, n, m, ref.name)
            if "qweight" in meta:
                check_nm(meta["qweight"], n, m, ref.name, what=" (qweight)")
            checked.append(ref.name)
        report: dict[str, Any] = {"checked": checked}
        ctx.reports[self.name] = report
        return PassResult(gm, modified=False)
