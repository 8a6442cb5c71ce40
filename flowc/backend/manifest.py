"""The schema of a `.fcim` manifest (pydantic): types, ranges, no unknown fields.

The reader validates the parsed manifest against `Manifest` before using any field, so a
manifest that is a JSON array, a `checksums` of the wrong type or a negative shape is one
ImageError naming the field path, never a KeyError deep inside the loader.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from flowc.errors import ImageError
from flowc.isa.operands import NAME_PATTERN

Dim = Annotated[int, Field(ge=0, le=2**31 - 1)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Small = Annotated[int, Field(ge=1, le=255)]
Name = Annotated[str, StringConstraints(pattern=rf"^{NAME_PATTERN}$", max_length=4096)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
DTYPES = Literal["float32", "float64", "float16", "int64", "int32", "int16", "int8",
                 "uint8", "bool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IOModel(_Strict):
    name: str
    buffer: Name
    shape: list[Dim] = Field(max_length=16)
    dtype: DTYPES


class LayerModel(_Strict):
    name: str
    kind: Literal["gemm", "attention", "vector"]
    pattern: list[Small] | None = Field(default=None, min_length=2, max_length=2)
    native: list[Small] | None = Field(default=None, min_length=2, max_length=2)
    in_features: Count = 0
    out_features: Count = 0
    nonzeros: Count = 0
    k_pad: Count = 0
    padded_in: Count = 0


class PackedModel(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)
    n: Small
    m: Small
    out: Annotated[int, Field(ge=1, le=2**31 - 1)]
    in_: Annotated[int, Field(ge=1, le=2**31 - 1, alias="in")]
    meta_bits: Annotated[int, Field(ge=0, le=8)]
    shape: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=5, max_length=5)
    fvalues: bool


class Manifest(_Strict):
    format: Literal["fcim"]
    format_version: int
    isa_version: int
    machine: dict
    inputs: list[IOModel]
    outputs: list[IOModel] = Field(min_length=1)
    layers: list[LayerModel]
    tensors: list[Name]
    packed: dict[Name, PackedModel]
    samples: Annotated[int, Field(ge=0, le=1024)]
    compile: dict
    checksums: dict[str, Hex64]


def validate(raw: object, label: str) -> Manifest:
    """The manifest as a Manifest, or one ImageError with the first failing field path."""
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ImageError(f"{label}: manifest.json: {where}: {err['msg']}") from None


def json_object(data: bytes, where: str) -> dict:
    """A member's bytes as a JSON object; anything else is an ImageError naming `where`."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ImageError(f"{where} is not valid JSON ({first})") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{where} is a JSON {type(obj).__name__}, not an object")
    return obj
