"""Read flowrun's --input arrays without trusting them.

An input file is read only if it is a regular file (a FIFO would block for ever), its `.npy`
header is checked before allocation (flowc.backend.npy), and its values are converted to the
model input's dtype only when they fit: any bool/int/uint/float array for a float input
(finite and inside the float32 range), integer-valued arrays for an integer (token id) input.
Everything else is a UsageError (exit 2) naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flowc.backend import limits
from flowc.backend.image import Image
from flowc.backend.npy import NpyError, read_npy
from flowc.errors import UsageError

_F32_MAX = float(np.finfo(np.float32).max)


def read_regular(path: str, what: str) -> bytes:
    """The bytes of `path` if it is a regular file within the size limit, else UsageError."""
    with limits.open_regular(path, limits.current().member_bytes, UsageError,
                             f"{what} {path}") as f:
        return f.read()


def load_input_files(image: Image, paths: Sequence[str]) -> list[np.ndarray]:
    if len(paths) != len(image.inputs):
        raise UsageError(f"the program takes {len(image.inputs)} inputs, got {len(paths)} --input")
    out = []
    for path, spec in zip(paths, image.inputs, strict=True):
        try:
            arr = read_npy(read_regular(path, "--input"), limits.current().member_bytes)
        except NpyError as exc:
            raise UsageError(f"--input {path}: {exc}") from None
        out.append(convert(arr, spec.dtype, f"--input {path}"))
    return out


def convert(arr: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """`arr` as `dtype` when every value fits, else UsageError."""
    target = np.dtype(dtype)
    if target.kind == "f":
        wide = arr.astype(np.float64)
        if not np.isfinite(wide).all() or (wide.size and np.abs(wide).max() > _F32_MAX):
            raise UsageError(f"{where}: holds NaN or infinite values (or values past float32)")
        return wide.astype(target)
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.array_equal(arr, np.trunc(arr))):
        raise UsageError(f"{where}: the model input is {dtype}; the values are not integers")
    info = np.iinfo(target) if target.kind in "iu" else None
    if info is not None and arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise UsageError(f"{where}: values {arr.min()}..{arr.max()} do not fit {dtype}")
    return arr.astype(target)
