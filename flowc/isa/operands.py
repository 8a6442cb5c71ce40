"""Operand types: which Python values each type admits and how each is written as text.

One table per concern, keyed by the type names of the definition (`KNOWN_TYPES`), so the
instruction constructors, the assembler, the disassembler and the decoder all apply exactly the
same rules. Values are canonicalised on the way in (python ints, floats exactly representable
in float32, tuples for `ints`) so that equal programs compare equal whatever built them.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
import struct

from flowc.isa.definition import KNOWN_TYPES
from flowc.isa.errors import OperandError

#: Inclusive value range of each integer type.
INT_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 0xFF),
    "u16": (0, 0xFFFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-(2**31), 2**31 - 1),
}

#: Text prefix of each name type (labels are written bare).
SIGILS: dict[str, str] = {"buf": "%", "tensor": "@", "label": ""}

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.]*"
_NAME_RE = re.compile(NAME_PATTERN + r"\Z")

#: Limits that keep every valid value encodable (u16 length/count prefixes in the binary).
MAX_NAME_LEN = 0xFFFF
MAX_INTS_LEN = 0xFFFF

assert set(INT_RANGES) | set(SIGILS) | {"f32", "ints"} == set(KNOWN_TYPES)


def to_f32(x: float) -> float:
    """Round a float to the nearest float32 (as a python float); OverflowError past the range."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def check_int(type_name: str, value: object) -> int:
    """A python int within the type's range (numpy integers accepted, bools not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OperandError(f"expected an integer ({type_name}), got {value!r}")
    v = operator.index(value)
    lo, hi = INT_RANGES[type_name]
    if not lo <= v <= hi:
        raise OperandError(f"{v} is out of range for {type_name} ({lo}..{hi})")
    return v


def check_f32(value: object) -> float:
    """A finite python float that float32 represents exactly (no silent rounding)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OperandError(f"expected a number (f32), got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise OperandError(f"{x!r} is not finite (f32 operands must be finite)")
    try:
        r = to_f32(x)
    except OverflowError:
        raise OperandError(f"{x!r} is out of range for f32") from None
    if r != x:
        raise OperandError(f"{x!r} is not exactly representable as f32 (nearest is {r!r})")
    return r


def check_name(type_name: str, value: object) -> str:
    """A name matching NAME_PATTERN, given without its sigil."""
    if not isinstance(value, str):
        raise OperandError(f"expected a name ({type_name}), got {value!r}")
    if not _NAME_RE.match(value):
        raise OperandError(f"{value!r} is not a valid {type_name} name ({NAME_PATTERN}, "
                           f"no sigil)")
    if len(value) > MAX_NAME_LEN:
        raise OperandError(f"{type_name} name is longer than {MAX_NAME_LEN} characters")
    return value


def check_ints(value: object) -> tuple[int, ...]:
    """A tuple of i32 (any list/tuple/iterable of integers accepted, strings not)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise OperandError(f"expected a list of integers (ints), got {value!r}")
    items = tuple(check_int("i32", v) for v in value)  # type: ignore[attr-defined]
    if len(items) > MAX_INTS_LEN:
        raise OperandError(f"ints list is longer than {MAX_INTS_LEN} entries")
    return items


def check_value(type_name: str, value: object) -> object:
    """Canonical value of an operand of `type_name`; OperandError if the type rejects it."""
    if type_name in INT_RANGES:
        return check_int(type_name, value)
    if type_name in SIGILS:
        return check_name(type_name, value)
    if type_name == "f32":
        return check_f32(value)
    if type_name == "ints":
        return check_ints(value)
    raise OperandError(f"unknown operand type {type_name!r}")


def format_f32(x: float) -> str:
    """Shortest decimal that reads back (via to_f32(float(s))) as the same float32 value.

    Written like Python's repr: positional for 1e-4 <= |x| < 1e16 with at least one digit
    after the point, otherwise `d.ddde+XX`.
    """
    for digits in range(1, 10):
        sci = f"{x:.{digits - 1}e}"
        if _reads_back(sci, x):
            break
    else:  # pragma: no cover - 9 significant digits always identify a float32
        return repr(x)
    mant, exp_text = sci.split("e")
    exp = int(exp_text)
    sign = "-" if mant.startswith("-") else ""
    ds = mant.lstrip("-").replace(".", "").rstrip("0") or "0"
    if -4 <= exp < 16:
        if exp >= 0:
            whole, frac = ds[: exp + 1].ljust(exp + 1, "0"), ds[exp + 1 :]
        else:
            whole, frac = "0", "0" * (-exp - 1) + ds
        return f"{sign}{whole}.{frac or '0'}"
    tail = "." + ds[1:] if len(ds) > 1 else ""
    return f"{sign}{ds[0]}{tail}e{exp:+03d}"


def _reads_back(text: str, x: float) -> bool:
    try:
        return to_f32(float(text)) == x
    except OverflowError:  # a rounded literal past the float32 range
        return False


def format_value(type_name: str, value: object) -> str:
    """Canonical assembly text of a (checked) operand value."""
    if type_name in SIGILS:
        return SIGILS[type_name] + str(value)
    if type_name == "f32":
        return format_f32(value)  # type: ignore[arg-type]
    if type_name == "ints":
        return "[" + ",".join(str(v) for v in value) + "]"  # type: ignore[attr-defined]
    return str(value)


def placeholder(type_name: str) -> str:
    """How the reference writes an operand of this type in a syntax line."""
    return {"buf": "%buf", "tensor": "@tensor", "label": "label", "ints": "[i32,...]"}.get(
        type_name, f"<{type_name}>"
    )
