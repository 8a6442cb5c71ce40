"""One-line messages about a graph node that flowc cannot handle.

Why here: every stage that refuses a node (the backend's lowering, a pass, preparation) must
say the same three things: which op, which node, which module of the user's model, and, where
one exists, what the user can change to avoid it. `unsupported_op_message` builds that line;
`HINTS` is the table of known ways around an op (extend it as lowering rules are added).
"""

from __future__ import annotations

import torch
from torch import fx

from flowc.frontend.prepare import module_path

aten = torch.ops.aten

# op -> what the user can do to avoid it (only advice that is known to work)
HINTS: dict[object, str] = {
    aten.scaled_dot_product_attention.default:
        "export the model with attn_implementation='eager' (transformers) or plain matmul "
        "+ softmax attention",
    aten.dropout.default: "export the model in eval mode (model.eval())",
    aten.native_dropout.default: "export the model in eval mode (model.eval())",
    aten.sym_size.int: "export with static shapes (no dynamic_shapes)",
}


def op_label(target: object) -> str:
    """`aten.gather.default` for ATen overloads, the function name otherwise."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def node_location(node: fx.Node) -> str:
    """"node 'x' in module 'encoder.layer.0.attention'" (module omitted when unknown)."""
    where = f"node '{node.name}'"
    path = (node.meta.get("flowc") or {}).get("layer") or module_path(node)
    return f"{where} in module '{path}'" if path else f"{where} (top-level module)"


def unsupported_op_message(node: fx.Node, supported: str | None = None,
                           hint: str | None = None) -> str:
    """One line: `unsupported op aten.X at node 'n' in module 'a.b'; <hint>; flowc lowers: ...`.

    `hint` overrides the table entry; `supported` (the list of lowered ops) goes last since it
    is long.
    """
    advice = hint or HINTS.get(node.target)
    msg = f"unsupported op {op_label(node.target)} at {node_location(node)}"
    if advice:
        msg += f"; to avoid it: {advice}"
    if supported:
        msg += f"; flowc lowers: {supported}"
    return msg
