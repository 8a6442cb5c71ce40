"""CSC packing of N:M-sparse weights into FlexCiM macro tiles, and its exact inverse.

Layout (docs/architecture.md, "Packed weights"): for pattern n:m on P sub-macros of R x C cells,
one macro pass covers K_pass = P*R*m/n inputs x C outputs. Sub-macro s is member j = s % n of
gang g = s // n; row r, column c of sub-macro s holds the j-th kept weight (ascending K) of
group q = g*R + r of output channel c, at input index q*m + meta[s, r, c] inside the tile.
All work is vectorised over every group of the matrix at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowc.errors import CompileError


@dataclass(frozen=True)
class TileGeometry:
    """Shape of one packing: the pattern the macro runs and the tile grid it gives."""

    keep_n: int
    group_m: int
    P: int
    R: int
    C: int
    out_features: int
    in_features: int

    @property
    def k_pass(self) -> int:
        return self.P * self.R * self.group_m // self.keep_n

    @property
    def n_tiles(self) -> int:
        return -(-self.out_features // self.C)

    @property
    def k_tiles(self) -> int:
        return -(-self.in_features // self.k_pass)

    @property
    def padded_out(self) -> int:
        return self.n_tiles * self.C

    @property
    def padded_in(self) -> int:
        return self.k_tiles * self.k_pass


def geometry_for(keep_n: int, group_m: int, P: int, R: int, C: int, shape: tuple[int, int]) -> TileGeometry:
    if not (1 <= keep_n <= P and P % keep_n == 0 and keep_n <= group_m):
        raise CompileError(f"pattern {keep_n}:{group_m} cannot be placed on {P} sub-macros")
    return TileGeometry(keep_n, group_m, P, R, C, int(shape[0]), int(shape[1]))


def select_kept(nonzero: np.ndarray, keep_n: int, group_m: int, layer: str) -> np.ndarray:
    """Indices (ascending, per group) of the keep_n slots each group stores.

    `nonzero` is a bool [rows, groups, m] array. Nonzero weights come first; a group with fewer
    than keep_n nonzeros is filled with its lowest unused indices (they store zero weights).
    """
    counts = nonzero.sum(axis=-1)
    if counts.max(initial=0) > keep_n:
        row, grp = np.argwhere(counts > keep_n)[0]
        raise CompileError(
            f"{layer}: row {row}, inputs {grp * group_m}..{grp * group_m + group_m - 1} hold "
            f"{counts[row, grp]} nonzeros, more than the {keep_n}:{group_m} pattern stores"
        )
    # = np.sort(np.argsort(~nonzero, kind="stable")[..., :keep_n]): every nonzero plus the
    # (keep_n - count) lowest zero slots, in ascending order; without argsort over millions
    # of tiny rows (62 of SmolLM2's 107 s of lowering went there)
    if keep_n == group_m:  # dense: every slot, in order
        return np.ascontiguousarray(np.broadcast_to(np.arange(group_m), nonzero.shape))
    zero = ~nonzero
    chosen = nonzero | (zero & (np.cumsum(zero, axis=-1) <= (keep_n - counts)[..., None]))
    idx = np.nonzero(chosen.reshape(-1, nonzero.shape[-1]))[1]
    return idx.reshape(nonzero.shape[:-1] + (keep_n,))


def pack(weight: np.ndarray, geo: TileGeometry, layer: str,
         extra: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Pack `weight` [out, in]; returns (values, meta, packed extras) in [NT, KT, P, R, C].

    Placement is decided by the nonzeros of `weight`; each array in `extra` (same shape, e.g.
    the fp32 weight when `weight` is int8) is packed with the same placement.
    """
    n, m, P, R, C = geo.keep_n, geo.group_m, geo.P, geo.R, geo.C
    if weight.shape != (geo.out_features, geo.in_features):
        raise CompileError(f"{layer}: weight shape {weight.shape} does not match the layer")
    padded = [_pad(a, geo) for a in (weight, *extra)]
    groups = geo.padded_in // m
    nz = padded[0].reshape(geo.padded_out, groups, m) != 0
    idx = select_kept(nz, n, m, layer)  # [out_p, groups, n]
    gangs = P // n
    shape6 = (geo.n_tiles, C, geo.k_tiles, gangs, R, n)

    def place(a: np.ndarray) -> np.ndarray:
        return a.reshape(shape6).transpose(0, 2, 3, 5, 4, 1).reshape(geo.n_tiles, geo.k_tiles, P, R, C)

    meta = place(idx.astype(np.uint8))
    vals = [place(np.take_along_axis(a.reshape(geo.padded_out, groups, m), idx, axis=-1)) for a in padded]
    extras = [np.ascontiguousarray(v) for v in vals[1:]]
    return np.ascontiguousarray(vals[0]), np.ascontiguousarray(meta), extras


def _pad(a: np.ndarray, geo: TileGeometry) -> np.ndarray:
    out = np.zeros((geo.padded_out, geo.padded_in), dtype=a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def unpack(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
           dtype=None) -> np.ndarray:
    """Dense [NT*C, KT*K_pass] matrix from packed tiles (as `dtype`, default the values'):
    the exact inverse of `pack` (tests: pack -> unpack round trips, and `unpack_slow`)."""
    NT, KT, P, R, C = values.shape
    grouped = grouped_slots(values, meta, keep_n, group_m, (0, 5, 1, 2, 4),
                            values.dtype if dtype is None else dtype)
    return grouped.reshape(NT * C, KT * P * R * group_m // keep_n)


def unpack_slow(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int) -> np.ndarray:
    """`unpack` written out index by index (the definition the fast one is tested against)."""
    NT, KT, P, R, C = values.shape
    n, m = keep_n, group_m
    k_pass = P * R * m // n
    s = np.arange(P).reshape(P, 1, 1)
    r = np.arange(R).reshape(1, R, 1)
    q = (s // n) * R + r  # group inside the tile, [P, R, 1]
    k_in_tile = q * m + meta.astype(np.int64)  # [NT, KT, P, R, C]
    k = k_in_tile + (np.arange(KT) * k_pass).reshape(1, KT, 1, 1, 1)
    col = np.arange(NT).reshape(NT, 1, 1, 1, 1) * C + np.arange(C).reshape(1, 1, 1, 1, C)
    col = np.broadcast_to(col, values.shape)
    dense = np.zeros((NT * C, KT * k_pass), dtype=values.dtype)
    dense[col.ravel(), k.ravel()] = values.ravel()
    return dense


def grouped_slots(values: np.ndarray, meta: np.ndarray, keep_n: int, group_m: int,
                  order: tuple[int, ...], dtype) -> np.ndarray:
    """The matrix as [..., m] groups, leading axes in the `order` of (NT, KT, gangs, R, C),
    filled from packed tiles by one scatter along the group axis: sub-macro s holds member
    s % n of gang s // n, and a group's member j sits at index meta[.., j] of its group (the
    layout above). A dense packing (n = m) keeps every slot in order: no scatter at all."""
    NT, KT, P, R, C = values.shape
    n, m = keep_n, group_m
    shape6 = (NT, KT, P // n, n, R, C)
    axes = tuple(order) + (3,)
    vals = values.reshape(shape6).transpose(axes)
    lead = vals.shape[:-1]
    if n == m:  # select_kept keeps all m slots in ascending order
        return np.ascontiguousarray(vals, dtype=dtype)
    out = np.zeros(lead + (m,), dtype=dtype)
    idx = meta.reshape(shape6).transpose(axes).astype(np.intp)  # [..., n] index in the group
    idx += np.arange(int(np.prod(lead)), dtype=np.intp).reshape(lead + (1,)) * m
    out.reshape(-1)[idx.reshape(-1)] = vals.reshape(-1)
    return out


# -- storage: only the real kept slots, metadata bit-packed (the .fcim codec) ---------------
def slot_mask(keep_n: int, group_m: int, P: int, R: int, C: int, out_features: int,
              in_features: int) -> np.ndarray:
    """bool [NT, KT, P, R, C]: True for the slots that hold a real group of a real output
    channel (padding rows and the groups past K in the last k-tile are False)."""
    geo = TileGeometry(keep_n, group_m, P, R, C, out_features, in_features)
    q = (np.arange(P).reshape(P, 1) // keep_n) * R + np.arange(R).reshape(1, R)  # group in tile
    start = np.arange(geo.k_tiles).reshape(-1, 1, 1) * geo.k_pass + q * group_m  # [KT, P, R]
    k_ok = start < in_features
    col = np.arange(geo.n_tiles).reshape(-1, 1) * C + np.arange(C)  # [NT, C]
    o_ok = col < out_features
    return o_ok[:, None, None, None, :] & k_ok[None, :, :, :, None]


def dense_meta(shape: tuple[int, ...], keep_n: int) -> np.ndarray:
    """The metadata a dense packing always has: member j of a full group sits at index j."""
    P = shape[2]
    return np.broadcast_to((np.arange(P) % keep_n).astype(np.uint8).reshape(1, 1, P, 1, 1), shape)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit-packing of small unsigned ints (< 2**bits), `bits` per value.

    The low `bits` bits of each value come from one `unpackbits` pass (2x faster than shifts
    and masks on SmolLM2's 53 M 3-bit metadata values)."""
    planes = np.unpackbits(np.asarray(values, dtype=np.uint8).reshape(-1, 1), axis=1,
                           count=bits, bitorder="little")
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_bits: `count` uint8 values."""
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return np.packbits(planes, axis=1, bitorder="little").reshape(count)
