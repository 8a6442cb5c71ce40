"""Check an embedded reference ONNX model before ONNX Runtime sees it.

ORT trusts its model: an initialiser with external data opens a file of the local machine, a
Loop with a trip count of 2**62 runs for ever, an empty graph fails deep inside the check.
`check_stored` runs on the bytes as stored in the `.fcim` (the only external data allowed is
flowc's own recipes, rebuilt from the image's tensors); `check_materialised` runs the ONNX
checker on the self-contained model that ORT will execute.
"""

from __future__ import annotations

import json

import onnx

from flowc.errors import ImageError

LOCATION = "flowc"  # flowc.backend.reference: the external-data location of a recipe
_RECIPE_FORMS = ("tensor", "dense", "dense_t")


def check_stored(data: bytes, label: str, max_loop_trips: int) -> onnx.ModelProto:
    """Parse and check stored reference bytes; the parsed model, or one ImageError."""
    where = f"{label}: reference.onnx"
    if not data:
        raise ImageError(f"{where}: empty")
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise ImageError(f"{where}: not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node or not model.graph.output:
        raise ImageError(f"{where}: the graph has no nodes or no outputs")
    for graph in _graphs(model.graph):
        for init in graph.initializer:
            _check_initializer(init, where)
        for node in graph.node:
            if node.op_type in ("Loop", "Scan") or node.domain not in ("", "ai.onnx"):
                _check_node(node, graph, where, max_loop_trips)
    return model


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _check_initializer(init: onnx.TensorProto, where: str) -> None:
    if init.data_location != onnx.TensorProto.EXTERNAL and not init.external_data:
        return
    entries = {e.key: e.value for e in init.external_data}
    if entries.get("location") != LOCATION or set(entries) != {"location", LOCATION}:
        raise ImageError(f"{where}: initialiser {init.name!r} names external data "
                         f"{entries.get('location')!r}; only flowc recipes are allowed")
    try:
        recipe = json.loads(entries[LOCATION])
        ok = isinstance(recipe, dict) and set(recipe) == {"tensor", "form"} and \
            isinstance(recipe["tensor"], str) and recipe["form"] in _RECIPE_FORMS
    except ValueError:
        ok = False
    if not ok:
        raise ImageError(f"{where}: initialiser {init.name!r}: malformed flowc recipe")


def _check_node(node: onnx.NodeProto, graph: onnx.GraphProto, where: str, max_trips: int) -> None:
    if node.domain not in ("", "ai.onnx"):
        raise ImageError(f"{where}: node {node.name!r} uses operator domain {node.domain!r}; "
                         "only the standard ONNX domain is allowed")
    if node.op_type == "Scan":
        return  # bounded by its inputs' lengths
    trip = node.input[0] if node.input else ""
    consts = {i.name: i for i in graph.initializer}
    consts.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    if not trip or trip not in consts:
        raise ImageError(f"{where}: Loop {node.name!r} has no constant trip count (unbounded)")
    from onnx import numpy_helper

    count = int(numpy_helper.to_array(consts[trip]).reshape(-1)[0])
    if not 0 <= count <= max_trips:
        raise ImageError(f"{where}: Loop {node.name!r} runs {count} times, over the limit of "
                         f"{max_trips}")


def check_materialised(model: onnx.ModelProto, label: str) -> None:
    """The ONNX checker on the self-contained model ORT is about to run."""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImageError(f"{label}: reference.onnx fails the ONNX checker: {first}") from None
