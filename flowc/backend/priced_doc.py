"""The `priced.json` member of a `.fcim`: per-layer costs priced at compile time.

Why: the events a run sends to the cost model are a function of the program, the input
signature (every shape) and the weights' metadata, so a run's cycles and energy per layer are
the same on every run on one machine. `flowc compile` prices them once
(flowc.runtime.priced) and stores them here; a `flowrun` call on the same machine and flowc
code reads them instead of recording and pricing every event.

Layout (JSON): {"format": 1, "content": <sha256>, "entries": {<price key>: [<layer row>...]}}.
`content` binds the prices to the file they were priced for: the SHA-256 of every other
member's checksum plus the input signature and the layer table. The reader drops the entries
(the run prices afresh) when `content` does not match the file or the format is another
version; a member that is not valid JSON of this shape is an ImageError like any other
member. The price key (machine hash, numerics, cost-model code digest) is checked by the
runtime, which alone knows its code. The manifest's checksums cover this member, so an edit
that does not also rewrite the manifest and its checksum is refused as corruption.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from flowc.backend.image import Image, PricedCosts
from flowc.backend.manifest import json_object
from flowc.errors import ImageError

PRICED_MEMBER = "priced.json"
PRICED_FORMAT = 1
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Action = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RowModel(_Strict):
    """One layer's report row (flowc.runtime.report.LayerCost's fields)."""

    name: Annotated[str, StringConstraints(max_length=4096)]
    kind: Literal["gemm", "attention", "vector"]
    cycles: Count
    actions: dict[Action, Amount]
    macs: Count
    kept_macs: Count
    tokens: Count
    energy_pj: Amount
    setup_cycles: Count
    setup_actions: dict[Action, Amount]
    setup_energy_pj: Amount


class PricedModel(_Strict):
    format: Literal[1]
    content: Hex64
    entries: dict[Hex64, list[RowModel]] = Field(max_length=64)


def content_digest(checksums: Mapping[str, str], image: Image) -> str:
    """SHA-256 of what the prices depend on in a file: every member's checksum (this member's
    own excepted), the input signature and the layer table."""
    doc = {"members": {k: v for k, v in sorted(checksums.items()) if k != PRICED_MEMBER},
           "inputs": [s.to_dict() for s in image.inputs],
           "layers": [info.to_dict() for info in image.layers]}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def machine_hash(machine: Mapping) -> str:
    """SHA-256 of a machine's canonical JSON (sorted keys, no spaces): the hash reports
    record (flowc.studies.results.machine_entry) and price keys use."""
    text = json.dumps(machine, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def priced_bytes(image: Image, checksums: Mapping[str, str]) -> bytes | None:
    """The member for `image` (None when it carries no prices valid for itself)."""
    priced = image.priced
    if priced is None or not priced.entries or not priced.valid_for(image):
        return None
    doc = {"format": PRICED_FORMAT, "content": content_digest(checksums, image),
           "entries": {k: list(rows) for k, rows in sorted(priced.entries.items())}}
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def read_priced(data: bytes, checksums: Mapping[str, str], image: Image,
                label: str) -> PricedCosts | None:
    """The prices of `data` for `image` (read from the same file), or None when they are for
    another file or another format; malformed JSON or rows are an ImageError."""
    where = f"{label}: {PRICED_MEMBER}"
    obj = json_object(data, where)
    if obj.get("format") != PRICED_FORMAT:
        return None  # another flowc's pricing format: priced afresh
    try:
        doc = PricedModel.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ImageError(f"{where}: {path}: {err['msg']}") from None
    if doc.content != content_digest(checksums, image):
        return None  # priced for other contents (a rewritten file): priced afresh
    _known_actions(doc.entries, where)
    entries = {key: tuple(row.model_dump() for row in rows) for key, rows in doc.entries.items()}
    return PricedCosts(image.program, image.tensors, image.inputs, image.layers, entries,
                       (copy.deepcopy(image.machine), machine_hash(image.machine)))


def _known_actions(entries: Mapping[str, Sequence[RowModel]], where: str) -> None:
    """Every action is in the energy catalogue (a stored typo must not price as zero)."""
    from flowc.machine.energy import ACTIONS

    for key, rows in entries.items():
        for row in rows:
            for name in (*row.actions, *row.setup_actions):
                if name not in ACTIONS:
                    raise ImageError(f"{where}: entries.{key[:12]}.{row.name}: unknown energy "
                                     f"action '{name}'")
