"""Storage of packed weights in .fcim (kept slots only, bit-packed metadata) and the reference
ONNX model whose large initialisers are recipes over the image's tensors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowc.backend import container
from flowc.backend.pack import (
    dense_meta,
    geometry_for,
    pack,
    pack_bits,
    slot_mask,
    unpack,
    unpack_bits,
)
from flowc.backend.reference import LOCATION, externalise, materialise, recipe_of


@given(st.integers(1, 3), st.lists(st.integers(0, 7), min_size=0, max_size=200))
@settings(max_examples=50, deadline=None)
def test_bit_packing_round_trips(bits, values):
    arr = np.asarray(values, dtype=np.uint8) % (1 << bits)
    packed = pack_bits(arr, bits)
    assert packed.size == -(-arr.size * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, arr.size), arr)


@pytest.mark.parametrize(("n", "m", "out", "k"), [(2, 4, 50, 300), (1, 8, 33, 64), (4, 4, 64, 200),
                                                 (2, 8, 32, 1024)])
def test_slot_mask_counts_exactly_the_kept_slots(n, m, out, k):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((out, k)).astype(np.float32)
    if n < m:  # keep the n largest of every group of m
        g = np.abs(w[:, : k - k % m]).reshape(out, -1, m)
        cut = np.sort(g, axis=-1)[..., m - n][..., None]
        w[:, : k - k % m] *= (g >= cut).reshape(out, -1)
    geo = geometry_for(n, m, 4, 32, 32, w.shape)
    values, meta, _ = pack(w, geo, "w")
    mask = slot_mask(n, m, 4, 32, 32, out, k)
    assert mask.shape == values.shape
    assert int(mask.sum()) == out * -(-k // m) * n
    assert not values[~mask].any()  # padding slots hold zeros ...
    np.testing.assert_array_equal(meta[~mask], dense_meta(meta.shape, n)[~mask])  # ... at j
    np.testing.assert_array_equal(unpack(values, meta, n, m)[:out, :k], w)


def test_dense_meta_is_implied_and_not_stored(compiled):
    image = compiled("mlp", None)
    members, packed = container._members(image)
    assert packed and all(info["meta_bits"] == 0 for info in packed.values())
    assert not any(name.endswith(".meta.bin") for name in members)


@pytest.mark.parametrize("nm", [(2, 4), (1, 8)])
def test_sparse_meta_costs_log2_m_bits_per_kept_weight(compiled, nm):
    image = compiled("mlp", nm)
    members, packed = container._members(image)
    for name, info in packed.items():
        kept = info["out"] * -(-info["in"] // nm[1]) * nm[0]
        assert info["meta_bits"] == (nm[1] - 1).bit_length()
        assert len(members[f"packed/{name}.meta.bin"]) == -(-kept * info["meta_bits"] // 8)
    back = container.load_bytes(container.to_bytes(image))
    for name, arr in image.tensors.items():
        np.testing.assert_array_equal(back.tensors[name], arr)


def test_reference_recipes_rebuild_the_exported_model_byte_for_byte(compiled):
    image = compiled("block", (2, 4))
    original = materialise(image)
    model = onnx.load_from_string(image.reference_onnx)
    recipes = [recipe_of(t) for t in model.graph.initializer if recipe_of(t) is not None]
    assert recipes and {r["form"] for r in recipes} <= {"dense", "dense_t", "tensor"}
    assert len(image.reference_onnx) < len(original) / 4
    # externalising the rebuilt model again gives the same recipes: a fixed point
    assert externalise(original, image) == image.reference_onnx
    loaded = onnx.load_from_string(original)
    assert not any(e.value == LOCATION for t in loaded.graph.initializer for e in t.external_data)
