"""Constant operands that turn an op into a layout change (a step of prepare_graph).

Why: transformers build attention masks as `mask[batch_idx, kv_idx]` over folded aranges and
`all_true & mask`; after constant folding these are a reshape and a broadcast of a run-time
input, which the backend lowers without gather or boolean rules. Each rewrite is proved on
the constants, never assumed.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import fx

aten = torch.ops.aten




def simplify(gm: fx.GraphModule) -> Counter:
    """Rewrite, in place, ops that constant operands reduce to a layout change (the mask
    construction of transformers' attention: `mask[batch_idx, kv_idx]` with folded aranges is
    a reshape; `all_true & mask` is a broadcast). Each rewrite is proved on the constants, not
    assumed: an index is replaced only if it reads every element once, in order."""
    done: Counter = Counter()
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.index.Tensor and _index_is_reshape(gm, node):
            _replace(gm, node, aten.reshape.default, (node.args[0], list(node.meta["val"].shape)))
        elif node.target in (aten.__and__.Tensor, aten.logical_and.default, aten.bitwise_and.Tensor):
            other = _and_with_all_true(gm, node)
            if other is None:
                continue
            _replace(gm, node, aten.expand.default, (other, list(node.meta["val"].shape)))
        else:
            continue
        done[str(node.target)] += 1
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return done


def _const_value(gm: fx.GraphModule, arg: object) -> torch.Tensor | None:
    params = dict(gm.named_parameters(remove_duplicate=False))
    if isinstance(arg, fx.Node) and arg.op == "get_attr" and str(arg.target) not in params:
        value = _fetch_attr(gm, str(arg.target))
        return value if isinstance(value, torch.Tensor) else None
    return None


def _index_is_reshape(gm: fx.GraphModule, node: fx.Node) -> bool:
    src, indices = node.args[0], node.args[1]
    val, out = getattr(src, "meta", {}).get("val"), node.meta.get("val")
    if not (isinstance(val, torch.Tensor) and isinstance(out, torch.Tensor)):
        return False
    consts = [_const_value(gm, i) if i is not None else None for i in indices]
    if any(c is None for c, i in zip(consts, indices, strict=True) if i is not None):
        return False
    if out.numel() != val.numel():
        return False
    probe = torch.arange(val.numel()).reshape(tuple(val.shape))
    picked = aten.index.Tensor(probe, consts)
    return bool(torch.equal(picked.reshape(-1), torch.arange(val.numel())))


def _and_with_all_true(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The non-constant operand of `a & b` when the other is a constant of all True and the
    result has the non-constant operand's dtype (so the op only broadcasts)."""
    a, b = node.args[0], node.args[1]
    for const, other in ((a, b), (b, a)):
        value = _const_value(gm, const)
        oval = getattr(other, "meta", {}).get("val")
        if (value is not None and value.dtype == torch.bool and bool(value.all())
                and isinstance(oval, torch.Tensor) and oval.dtype == torch.bool):
            return other
    return None


def _replace(gm: fx.GraphModule, node: fx.Node, target: object, args: tuple) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(target, args)
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _fetch_attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
