"""Read `.npy` bytes without trusting their header.

`np.load` allocates the array its header declares before reading the data, so a 100-byte file
declaring 2**40 elements ends in MemoryError (or in the OOM killer). `read_npy` parses the
header first and checks dtype, element count and the exact data length against the bytes
actually present and the configured limit; only then is the array built (a copy of the data).
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib import format as npformat

#: dtype kinds an array of a program or an input may have: bool, signed, unsigned, float.
NUMERIC_KINDS = "biuf"


class NpyError(ValueError):
    """The bytes are not an acceptable .npy array (reason in the message, one line)."""


def read_npy(data: bytes, max_bytes: int, kinds: str = NUMERIC_KINDS) -> np.ndarray:
    """The array stored in `data`, checked before any allocation past len(data)."""
    f = io.BytesIO(data)
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            raise NpyError(f"unsupported .npy version {version}")
    except NpyError:
        raise
    except Exception as exc:  # ValueError, SyntaxError, EOFError on a damaged header
        raise NpyError(f"bad .npy header ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise NpyError(f"dtype {dtype} is not a plain numeric type")
    if dtype.kind not in kinds:
        raise NpyError(f"dtype {dtype} is not allowed here (kinds {kinds!r}: bool, int, uint, float)")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise NpyError(f"header declares {nbytes} bytes ({'x'.join(map(str, shape)) or 'scalar'} "
                       f"{dtype}), over the limit of {max_bytes}")
    body = memoryview(data)[f.tell():]  # no copy: the one copy is np.array below
    if len(body) != nbytes:
        raise NpyError(f"header declares {nbytes} data bytes, the file holds {len(body)}")
    arr = np.frombuffer(body, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    return np.array(arr, dtype=dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
