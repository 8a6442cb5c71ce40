"""The valid range of integer model inputs (token ids), read from the graph.

Why: flowc draws example and calibration inputs itself when the user gives none. An integer
input is almost always an index into an embedding table, and ids past the table's row count
are not a model input at all (torch raises "index out of range in self" when the reference
model or the calibration runs them). The graph says how many rows every table has: an
integer input that reaches the indices of `embedding` / `index_select` / `gather` only through
layout ops may take the values [0, rows) of the smallest table it indexes.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten
DEFAULT_HIGH = 100  # ids drawn from [0, 100) when no table bounds an integer input
# ops that move ids without changing their values
_LAYOUT = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
           aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default, aten.squeeze.dims,
           aten.slice.Tensor, aten.select.int, aten.expand.default, aten.clone.default,
           aten.contiguous.default, aten.flatten.using_ints, aten.permute.default,
           aten.transpose.int, aten.to.dtype, aten._to_copy.default, aten.alias.default,
           aten.detach.default}


def _rows(gm: fx.GraphModule | None, table: object) -> int | None:
    """Row count of a table argument: its recorded value, else the attribute's tensor."""
    if not isinstance(table, fx.Node):
        return None
    val = table.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dim() >= 1:
        return int(val.shape[0])
    if gm is not None and table.op == "get_attr":
        obj: object = gm
        for part in str(table.target).split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor) and obj.dim() >= 1:
            return int(obj.shape[0])
    return None


def _bound_of_use(gm: fx.GraphModule | None, user: fx.Node, arg: fx.Node) -> int | None:
    """Rows of the table `user` indexes with `arg`, if `arg` is its index operand."""
    t = user.target
    if t is aten.embedding.default and len(user.args) > 1 and user.args[1] is arg:
        return _rows(gm, user.args[0])
    if t is aten.index_select.default and user.args[2] is arg and int(user.args[1]) == 0:
        return _rows(gm, user.args[0])
    return None


def input_bound(gm: fx.GraphModule | None, placeholder: fx.Node) -> int | None:
    """Smallest row count among the tables the input indexes (through layout ops), or None."""
    bounds: list[int] = []
    todo, seen = [placeholder], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for user in node.users:
            bound = _bound_of_use(gm, user, node)
            if bound is not None:
                bounds.append(bound)
            elif user.op == "call_function" and user.target in _LAYOUT and user.args[0] is node:
                todo.append(user)
    return min(bounds) if bounds else None


def index_bounds(graph: fx.Graph, names: tuple[str, ...] | None = None,
                 gm: fx.GraphModule | None = None) -> tuple[int | None, ...]:
    """Per user input (placeholders named in `names`, default all, in order): the exclusive
    upper bound of valid integer values, None when no table bounds it."""
    places = [n for n in graph.nodes if n.op == "placeholder"]
    if names is not None:
        by_name = {n.name: n for n in places}
        places = [by_name[name] for name in names]
    return tuple(input_bound(gm, p) for p in places)
