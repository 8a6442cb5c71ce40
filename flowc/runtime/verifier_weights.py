"""Verifier checks of one packed weight: what the macro will hold must be what the program's
N:M says (flowc.runtime.verifier). Kept apart because it reads whole arrays, once per weight."""

from __future__ import annotations

import numpy as np

from flowc.backend.image import Image


def check_packed(image: Image, name: str) -> str | None:
    """None if packed weight `name` is sound, else the reason: values are int8 tiles of the
    machine's geometry, metadata has their shape with every index inside its group of M and
    the N indices of each group distinct (exactly N weights per group), fp32 values finite."""
    info = image.packed.get(name)
    values, meta = image.tensors.get(f"{name}.values"), image.tensors.get(f"{name}.meta")
    if info is None or values is None or meta is None:
        return "not a packed weight of the image (needs .values, .meta and a packed entry)"
    geo = image.machine["macro"]
    P, R, C = geo["subarrays"], geo["rows"], geo["cols"]
    n, m = info["n"], info["m"]
    if values.dtype != np.int8:
        return f"values are {values.dtype}, the macro holds int8"
    if values.ndim != 5 or values.shape[2:] != (P, R, C):
        return f"values shape {values.shape} is not [n_tiles, k_tiles, {P}, {R}, {C}]"
    if meta.shape != values.shape or meta.dtype.kind not in "iu":
        return f"metadata is {meta.dtype}{list(meta.shape)}, expected integers {list(values.shape)}"
    if not (1 <= n <= m and P % n == 0):
        return f"pattern {n}:{m} does not fit {P} sub-macros"
    if meta.size and (int(meta.min()) < 0 or int(meta.max()) >= m):
        return f"a metadata index lies outside its group of {m}"
    if n > 1:  # the n sub-macros of a gang share one group per row: distinct indices
        gangs = meta.reshape(meta.shape[:2] + (P // n, n) + meta.shape[3:])
        for i in range(n):  # n(n-1)/2 comparisons beat a sort along an axis of n (n <= 8)
            for j in range(i + 1, n):
                if np.equal(gangs[:, :, :, i], gangs[:, :, :, j]).any():
                    return f"a group holds the same index twice (exactly {n} distinct per group)"
    fv = image.tensors.get(f"{name}.fvalues")
    if fv is not None and (fv.shape != values.shape or fv.dtype.kind != "f"
                           or not np.isfinite(fv).all()):
        return "fp32 values do not match the int8 tiles or are not finite"
    return None
