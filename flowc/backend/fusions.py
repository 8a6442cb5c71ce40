"""Pattern fusions applied while lowering: several fx nodes -> one vector instruction.

Hugging Face's LlamaRMSNorm is traced as six ops,

    pw = pow(x, 2); mu = mean(pw, [-1], keepdim=True); v = add(mu, eps); r = rsqrt(v)
    y = mul(x, r); out = mul(weight, y)

which the vector unit runs as one `v.rmsnorm` (one statistics pass plus one scaling pass,
instead of six passes over the activations: cheaper on the machine and in the simulator).
A fusion only fires when every inner node has no other user, so no value is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from flowc import isa

aten = torch.ops.aten


@dataclass(frozen=True)
class RmsNormMatch:
    x: torch.fx.Node
    weight: torch.fx.Node | None  # get_attr of the scale, or None (no affine weight)
    eps: float
    inner: tuple[torch.fx.Node, ...]  # nodes the fused instruction replaces (not emitted)


def _only_user(node: torch.fx.Node, user: torch.fx.Node) -> bool:
    return list(node.users) == [user]


def _other(node: torch.fx.Node, one: object) -> object | None:
    """The other argument of a binary node that has `one` as an argument, else None."""
    a, b = node.args[0], node.args[1]
    if a is one:
        return b
    if b is one:
        return a
    return None


def _attr_shape(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[int, ...] | None:
    obj: object = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return tuple(obj.shape) if isinstance(obj, torch.Tensor) else None


def match_rmsnorm(r: torch.fx.Node,
                  gm: torch.fx.GraphModule) -> tuple[torch.fx.Node, RmsNormMatch] | None:
    """(final node, match) for an rsqrt node at the heart of an RMSNorm, else None."""
    add = r.args[0]
    if not (isinstance(add, torch.fx.Node) and add.target is aten.add.Tensor):
        return None
    mean, eps = add.args[0], add.args[1]
    if not (isinstance(mean, torch.fx.Node) and mean.target is aten.mean.dim
            and isinstance(eps, float | int) and len(mean.args) > 2 and mean.args[2]):
        return None
    if [int(d) for d in mean.args[1]] not in ([-1], [len(mean.meta["val"].shape) - 1]):
        return None
    pw = mean.args[0]
    if not (isinstance(pw, torch.fx.Node) and pw.target is aten.pow.Tensor_Scalar
            and float(pw.args[1]) == 2.0):
        return None
    x = pw.args[0]
    users = list(r.users)
    if len(users) != 1 or users[0].target is not aten.mul.Tensor or _other(users[0], r) is not x:
        return None
    m1 = users[0]
    if not (_only_user(pw, mean) and _only_user(mean, add) and _only_user(add, r)):
        return None
    inner = (pw, mean, add, r)
    nxt = list(m1.users)
    if len(nxt) == 1 and nxt[0].target is aten.mul.Tensor:
        w = _other(nxt[0], m1)
        if isinstance(w, torch.fx.Node) and w.op == "get_attr" and \
                _attr_shape(gm, w) == tuple(x.meta["val"].shape[-1:]):
            return nxt[0], RmsNormMatch(x, w, float(eps), (*inner, m1))
    return m1, RmsNormMatch(x, None, float(eps), inner)


def find_fusions(gm: torch.fx.GraphModule) -> tuple[dict[torch.fx.Node, Callable], set[str]]:
    """(rule per final node, names of the inner nodes that emit nothing)."""
    rules: dict[torch.fx.Node, Callable] = {}
    skipped: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is aten.rsqrt.default:
            found = match_rmsnorm(node, gm)
            if found is not None:
                final, match = found
                rules[final] = _rmsnorm_rule(match)
                skipped.update(n.name for n in match.inner)
    return rules, skipped


def _rmsnorm_rule(match: RmsNormMatch) -> Callable:
    def lower(lw, node: torch.fx.Node) -> None:
        lw.enter(lw.layer_of(node), "vector")
        d = int(match.x.meta["val"].shape[-1])
        w = lw.param(match.weight) if match.weight is not None else np.ones(d, np.float32)
        wt = lw.tensor(f"{lw.current}.{node.name}.w", w.astype(np.float32))
        eps = float(np.float32(match.eps))
        lw.emit(isa.VRmsnorm(dst=lw.out(node), src=lw.buf(match.x), w=wt, eps=eps))

    return lower
