"""SmoothQuant-style per-input-channel smoothing for the `quantize` pass (`quantize{smooth=a}`).

Xiao et al. 2022, "SmoothQuant" (arXiv 2211.10438): per-token int8 activations lose the few
outlier input channels of an LLM's linears. For a group of linears reading one activation X
(q/k/v, or gate/up), with calibration max-abs statistics per input channel j,

    s_j = max|X_j|^a / max|W_:j|^(1-a)        (max over every weight of the group)
    W' = W diag(s),   X' = X diag(s)^-1       so X' W'^T = X W^T exactly in real arithmetic.

The 1/s is folded into what produces X, so the machine program is unchanged (no extra vector
op, no cost-model change): the RMSNorm weight (the `mul(w, .)` right before q/k/v and
gate/up), or, for down_proj, whose input is `mul(silu(gate), up)`, the output rows of up_proj
(exact: the product is elementwise; up's per-output-channel int8 scales absorb the row scaling).
Only groups whose users are all static linears with untied weights are smoothed; the rest
(o_proj, the tied lm_head) are left alone and listed in the report as skipped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from flowc.errors import CompileError
from flowc.passes.graph import LinearRef, get_param, set_param

MUL = torch.ops.aten.mul.Tensor
FLOOR = 1e-5  # keeps s finite for dead channels (all-zero activation or weight column)


class SmoothError(CompileError):
    """Smoothing was requested but cannot run (no calibration data, bad alpha)."""


def _norm_weight(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The get_attr of a 1-D norm weight if `node` is mul(w, x) / mul(x, w), else None."""
    if node.op != "call_function" or node.target is not MUL:
        return None
    attrs = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
    if len(attrs) != 1 or len(attrs[0].users) != 1:
        return None
    w = get_param(gm, str(attrs[0].target))
    return attrs[0] if w.ndim == 1 else None


def _producer_linear(node: fx.Node, refs: dict[fx.Node, LinearRef]) -> LinearRef | None:
    """The static linear `p` if `node` is mul(a, p) / mul(p, a) and p feeds only that mul."""
    if node.op != "call_function" or node.target is not MUL:
        return None
    hits = [refs[a] for a in node.args if isinstance(a, fx.Node) and a in refs]
    return hits[0] if len(hits) == 1 and len(hits[0].node.users) == 1 else None


def smoothable_groups(gm: fx.GraphModule, refs: list[LinearRef]
                      ) -> tuple[dict[fx.Node, tuple[Any, list[LinearRef]]], list[str]]:
    """{input node: (norm get_attr or producer LinearRef, its linears)} and the names of skipped linears."""
    targets: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            targets[str(node.target)] = targets.get(str(node.target), 0) + len(node.users)
    by_input: dict[fx.Node, list[LinearRef]] = {}
    for ref in refs:
        by_input.setdefault(ref.node.args[0], []).append(ref)
    groups, skipped = {}, []
    for x, group in by_input.items():
        fold: fx.Node | LinearRef | None = None
        if isinstance(x, fx.Node):
            fold = _norm_weight(x, gm) or _producer_linear(x, {r.node: r for r in refs})
        if isinstance(fold, LinearRef) and targets.get(fold.weight_target) != 1:
            fold = None
        ok = (fold is not None and len(x.users) == len(group)
              and all(targets.get(r.weight_target) == 1 for r in group))
        if ok:
            groups[x] = (fold, group)
        else:
            skipped += [r.name for r in group]
    return groups, skipped


def _input_max_abs(gm: fx.GraphModule, nodes: list[fx.Node], calib: list[tuple[Any, ...]],
                   memo: dict[str, Any] | None = None) -> dict[fx.Node, torch.Tensor]:
    """Per-channel max |x| of each node's output (last dim) over the calibration inputs.

    Reused from `memo` when an earlier pass measured them on these inputs and the graph has
    not changed since (nm-prune's layer-wise run: the same ops on the same values, so the
    same numbers); else one run of the nodes that feed `nodes` (never the logits).
    """
    from flowc.passes.calibrate import feeding_nodes
    from flowc.passes.graph import GraphState
    from flowc.passes.prune import INPUT_MAX_ABS

    held = (memo or {}).get(INPUT_MAX_ABS)
    if held is not None and held[1] is calib and all(n in held[2] for n in nodes) \
            and held[0] == GraphState(gm):
        return {n: held[2][n] for n in nodes}
    wanted, stats = set(nodes), {}
    needed = feeding_nodes(nodes) | wanted | {n for n in gm.graph.nodes
                                              if n.op in ("placeholder", "output")}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if n not in needed:
                return None  # feeds none of the measured nodes (the logits): not computed
            out = super().run_node(n)
            if n in wanted:
                a = out.detach().abs().reshape(-1, out.shape[-1]).amax(0).to(torch.float32)
                stats[n] = torch.maximum(stats[n], a) if n in stats else a
            return out

    with torch.no_grad():
        for batch in calib:
            Recorder(gm, garbage_collect_values=True).run(*batch)
    return stats


def smooth(gm: fx.GraphModule, refs: list[LinearRef], calib: list[tuple[Any, ...]],
           alpha: float, memo: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rescale weights and norm weights in place (an fp32 identity); returns the report."""
    if not 0.0 < alpha < 1.0:
        raise SmoothError(f"quantize: smooth={alpha} must lie strictly between 0 and 1")
    if not calib:
        raise SmoothError("quantize{smooth=...} needs calibration inputs (none were given)")
    groups, skipped = smoothable_groups(gm, refs)
    stats = _input_max_abs(gm, list(groups), calib, memo)
    smoothed: dict[str, float] = {}
    for x, (fold, group) in groups.items():
        ws = [get_param(gm, r.weight_target).detach().to(torch.float32) for r in group]
        wmax = torch.stack([w.abs().amax(0) for w in ws]).amax(0).clamp(min=FLOOR)
        xmax = stats[x].clamp(min=FLOOR)
        s = (xmax.pow(alpha) / wmax.pow(1.0 - alpha)).clamp(min=FLOOR)
        for r, w in zip(group, ws, strict=True):
            old = get_param(gm, r.weight_target)
            set_param(gm, r.weight_target, (w * s[None, :]).to(old.dtype))
            smoothed[r.name] = float(s.max() / s.min())
        _fold_inverse(gm, fold, s)
    return {"alpha": alpha, "smoothed": smoothed, "skipped": skipped}


def _fold_inverse(gm: fx.GraphModule, fold: fx.Node | LinearRef, s: torch.Tensor) -> None:
    """Divide the norm weight, or the producer linear's output rows (and bias), by s."""
    if isinstance(fold, LinearRef):
        targets = [(fold.weight_target, s[:, None])]
        targets += [(fold.bias_target, s)] if fold.bias_target else []
    else:
        targets = [(str(fold.target), s)]
    for target, div in targets:
        old = get_param(gm, target)
        set_param(gm, target, (old.to(torch.float32) / div).to(old.dtype))
