"""The reference ONNX model without a second copy of the weights.

The .fcim already holds every fp32 weight once (`<w>.fvalues` + `<w>.meta`, for fp32
numerics) and every other parameter as a tensor. Storing the exported ONNX model as is would
hold all of them a second time (650 MB for SmolLM2). So at compile time `externalise` replaces
each large initialiser whose bytes equal something the image can rebuild by a *recipe*
(ONNX external-data entry `location = "flowc"`, key `flowc` = JSON), and at check time
`materialise` rebuilds the bytes and returns a self-contained model for ONNX Runtime.

Recipes: `{"tensor": T, "form": "tensor"}` (an image tensor as is), `{"tensor": W, "form":
"dense"}` (packed weight W unpacked to [out, in]) and `"dense_t"` (its transpose [in, out],
what the exporter's constant folding makes of a MatMul weight). Matching is by exact bytes,
so a rebuilt model is bit-identical to the exported one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from flowc.backend.image import Image
from flowc.backend.onnx_guard import check_materialised
from flowc.backend.pack import unpack
from flowc.errors import ImageError

MIN_ELEMENTS = 1024  # smaller initialisers stay inline: not worth a recipe
LOCATION = "flowc"


def _digest(arr: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    return (str(arr.dtype), tuple(arr.shape), hashlib.sha1(arr.tobytes()).hexdigest())


def dense_weight(image: Image, name: str) -> np.ndarray:
    """The fp32 weight [out, in] of packed tensor `name`, from its fvalues and metadata."""
    info = image.packed[name]
    dense = unpack(image.tensors[f"{name}.fvalues"], image.tensors[f"{name}.meta"],
                   info["n"], info["m"])
    return dense[: info["out"], : info["in"]]


def _candidates(image: Image) -> Iterator[tuple[dict, np.ndarray]]:
    for name in sorted(image.packed):
        if f"{name}.fvalues" in image.tensors:
            w = dense_weight(image, name)
            yield {"tensor": name, "form": "dense"}, w
            yield {"tensor": name, "form": "dense_t"}, np.ascontiguousarray(w.T)
    for name, arr in sorted(image.tensors.items()):
        if arr.size >= MIN_ELEMENTS and not name.endswith((".values", ".meta", ".fvalues")):
            yield {"tensor": name, "form": "tensor"}, arr


def externalise(onnx_bytes: bytes, image: Image) -> bytes:
    """The model with every large initialiser the image can rebuild replaced by a recipe."""
    model = onnx.load_from_string(onnx_bytes)
    wanted = {}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) >= MIN_ELEMENTS:
            wanted[init.name] = init
    if not wanted:
        return onnx_bytes
    by_digest = {_digest(numpy_helper.to_array(t)): name for name, t in wanted.items()}
    recipes: dict[str, dict] = {}
    for recipe, arr in _candidates(image):
        name = by_digest.get(_digest(np.asarray(arr, dtype=np.float32)))
        if name is not None and name not in recipes:
            recipes[name] = recipe
    for name, recipe in recipes.items():
        init = wanted[name]
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", LOCATION), (LOCATION, json.dumps(recipe, sort_keys=True))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    return model.SerializeToString()


def recipe_of(init: onnx.TensorProto) -> dict | None:
    entries = {e.key: e.value for e in init.external_data}
    if init.data_location != onnx.TensorProto.EXTERNAL or entries.get("location") != LOCATION:
        return None
    return json.loads(entries[LOCATION])


def materialise(image: Image) -> bytes:
    """Self-contained reference ONNX bytes (recipes rebuilt from the image's tensors)."""
    if image.reference_onnx is None:
        raise ImageError("this .fcim carries no reference model")
    model = onnx.load_from_string(image.reference_onnx)
    changed = rebuild_recipes(image, model)
    check_materialised(model, "this .fcim")  # the ONNX checker, before ORT sees the model
    return model.SerializeToString() if changed else image.reference_onnx


def rebuild_recipes(image: Image, model: onnx.ModelProto) -> bool:
    """Replace every recipe initialiser of `model` by its bytes, in place; True if any."""
    cache: dict[str, np.ndarray] = {}
    changed = False
    for init in model.graph.initializer:
        recipe = recipe_of(init)
        if recipe is None:
            continue
        arr = _rebuild(image, recipe, cache)
        if tuple(arr.shape) != tuple(init.dims):
            raise ImageError(f"reference initialiser {init.name}: rebuilt shape {arr.shape} "
                             f"!= {tuple(init.dims)}")
        del init.external_data[:]
        init.ClearField("data_location")  # as exported: the rebuilt model is byte-identical
        init.raw_data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        changed = True
    return changed


def _rebuild(image: Image, recipe: dict, cache: dict[str, np.ndarray]) -> np.ndarray:
    name, form = recipe["tensor"], recipe["form"]
    try:
        if form == "tensor":
            return image.tensors[name]
        if name not in cache:
            cache[name] = dense_weight(image, name)
    except KeyError as exc:
        raise ImageError(f"the reference model needs tensor {exc}, which the .fcim lacks "
                         "(compiled with --no-fp32?)") from exc
    return cache[name] if form == "dense" else cache[name].T
