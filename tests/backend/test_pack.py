"""CSC packing: exact inverse, the documented placement, and loud failures."""

import numpy as np
import pytest

from flowc.backend.pack import geometry_for, pack, unpack
from flowc.errors import CompileError

PATTERNS = [(1, 2), (1, 4), (2, 4), (1, 8), (2, 8), (4, 8), (4, 4)]


def nm_weight(rng, out, k, n, m):
    w = rng.integers(-127, 128, (out, k)).astype(np.int8)
    g = w.reshape(out, -1, m)
    keep = np.argsort(rng.random(g.shape), axis=-1)[..., :n]
    mask = np.zeros(g.shape, bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    return (g * mask).reshape(out, k).astype(np.int8)


@pytest.mark.parametrize("n,m", PATTERNS)
def test_unpack_inverts_pack(n, m):
    rng = np.random.default_rng(n * 10 + m)
    w = nm_weight(rng, 70, 24 * m, n, m)  # both axes need padding
    geo = geometry_for(n, m, 4, 32, 32, w.shape)
    values, meta, (f32,) = pack(w, geo, "t", (w.astype(np.float32),))
    assert values.shape == (3, geo.k_tiles, 4, 32, 32) and meta.max() < m
    dense = unpack(values, meta, n, m)
    assert dense.shape == (96, geo.k_tiles * geo.k_pass)
    np.testing.assert_array_equal(dense[:70, : w.shape[1]], w)
    assert not dense[70:].any() and not dense[:, w.shape[1]:].any()
    np.testing.assert_array_equal(unpack(f32, meta, n, m)[:70, : w.shape[1]], w)


def test_placement_follows_the_documented_rule():
    # 2:4 on P=4: gangs of 2 sub-macros; sub-macro s = gang*2 + member; group q = gang*R + row
    w = np.zeros((32, 256), np.int8)
    w[5, 4 * 33 + 1] = 7  # column 5, group 33 (gang 1, row 1), position 1: first kept weight
    w[5, 4 * 33 + 3] = -9  # second kept weight of the same group
    geo = geometry_for(2, 4, 4, 32, 32, w.shape)
    values, meta, _ = pack(w, geo, "t")
    assert values[0, 0, 2, 1, 5] == 7 and meta[0, 0, 2, 1, 5] == 1
    assert values[0, 0, 3, 1, 5] == -9 and meta[0, 0, 3, 1, 5] == 3
    assert np.count_nonzero(values) == 2


def test_group_with_too_many_nonzeros_is_refused():
    w = np.zeros((32, 8), np.int8)
    w[3, 0:3] = 1
    geo = geometry_for(2, 4, 4, 32, 32, w.shape)
    with pytest.raises(CompileError, match=r"row 3, inputs 0\.\.3 hold 3 nonzeros"):
        pack(w, geo, "layer")


def test_sparse_group_pads_with_lowest_unused_index():
    w = np.zeros((32, 4), np.int8)
    w[0, 2] = 5  # one nonzero in a 2:4 group: the second slot stores a zero at index 0
    geo = geometry_for(2, 4, 4, 32, 32, w.shape)
    values, meta, _ = pack(w, geo, "t")
    assert (meta[0, 0, 0, 0, 0], values[0, 0, 0, 0, 0]) == (0, 0)
    assert (meta[0, 0, 1, 0, 0], values[0, 0, 1, 0, 0]) == (2, 5)


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (4, 8), (3, 8), (8, 8)])
def test_select_kept_equals_its_argsort_definition(n, m):
    """select_kept (cumsum + nonzero) == sort(stable argsort(~nonzero)[..., :n]): every nonzero,
    then the lowest zero slots, ascending; including groups with no or n nonzeros."""
    from flowc.backend.pack import select_kept

    rng = np.random.default_rng(n * m)
    nz = np.zeros((37, 29, m), bool)
    keep = np.argsort(rng.random(nz.shape), axis=-1)[..., :n]
    np.put_along_axis(nz, keep, rng.random(keep.shape) < 0.6, axis=-1)
    nz[0] = False
    want = np.sort(np.argsort(~nz, axis=-1, kind="stable")[..., :n], axis=-1)
    assert np.array_equal(select_kept(nz, n, m, "t"), want)


def test_pack_bits_equals_its_shift_and_mask_definition():
    from flowc.backend.pack import pack_bits, unpack_bits

    rng = np.random.default_rng(5)
    for bits in (1, 2, 3, 4, 5, 7, 8):
        v = rng.integers(0, 2**bits, size=1001).astype(np.uint8)
        planes = (v.reshape(-1, 1) >> np.arange(bits, dtype=np.uint8)) & 1
        want = np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little")
        assert np.array_equal(pack_bits(v, bits), want)
        assert np.array_equal(unpack_bits(want, bits, v.size), v)
