"""The `.fcim` container: a zip of JSON, assembly text, binary code and `.npy` tensors.

Members: manifest.json (format version, machine, I/O signature, layer table, checksums of every
other member), manifest.sha256 (the manifest's own checksum), program.s, program.bin,
tensors/<name>.npy, packed/<w>.values.npy (the real kept slots of a packed weight, tile
padding dropped), packed/<w>.meta.bin (its metadata, log2(M) bits per kept weight, absent
when dense), packed/<w>.fvalues.npy (fp32 weights, for checks), reference.onnx (optional;
large initialisers are recipes over the tensors, see flowc.backend.reference),
samples/input_<i>.npy, vocab.json (language models) and priced.json (per-layer costs
priced at compile time, flowc.backend.priced_doc).
Weights (packed/ members) and members above 1 MB are stored uncompressed: deflate took ~9 s
on SmolLM2's 126 MB of packed slots and metadata below 1 MB each and saved 8 % of them.
Nothing is pickled; reading (flowc.backend.fcim_read) trusts nothing in the file. Writing is
deterministic (sorted members, fixed timestamps, sorted JSON keys) and atomic (temp + rename).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from flowc import isa
from flowc.backend.fcim_read import FORMAT, FORMAT_VERSION, MANIFEST, MANIFEST_SUM, read, read_path
from flowc.backend.image import Image
from flowc.backend.pack import dense_meta, pack_bits, slot_mask
from flowc.backend.priced_doc import PRICED_MEMBER, priced_bytes

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _members(image: Image) -> tuple[dict[str, bytes], dict[str, dict]]:
    members = {
        "program.s": isa.disassemble(image.program).encode(),
        "program.bin": isa.encode(image.program),
    }
    packed = _packed_members(image, members)
    for name, arr in image.tensors.items():
        if name.rpartition(".")[0] not in packed or not name.endswith(_PACKED_KINDS):
            members[f"tensors/{name}.npy"] = _npy_bytes(arr)
    for i, arr in enumerate(image.samples):
        members[f"samples/input_{i}.npy"] = _npy_bytes(arr)
    if image.reference_onnx is not None:
        members["reference.onnx"] = image.reference_onnx
    if image.vocab:
        members["vocab.json"] = json.dumps(list(image.vocab), ensure_ascii=False).encode()
    return members, packed


_PACKED_KINDS = (".values", ".meta", ".fvalues")


def _packed_members(image: Image, members: dict[str, bytes]) -> dict[str, dict]:
    """Store each packed weight as its real kept slots only (no tile padding) and its metadata
    as log2(M) bits per kept weight (0 bits when dense: the layout is implied)."""
    geo = image.machine["macro"]
    out: dict[str, dict] = {}
    for base, info in sorted(image.packed.items()):
        n, m = info["n"], info["m"]
        values, meta = image.tensors[f"{base}.values"], image.tensors[f"{base}.meta"]
        mask = slot_mask(n, m, geo["subarrays"], geo["rows"], geo["cols"], info["out"], info["in"])
        implied = dense_meta(meta.shape, n)
        if mask.shape != values.shape or values[~mask].any() or \
                not np.array_equal(meta[~mask], implied[~mask]):
            continue  # not the layout the codec assumes: stored as plain tensors instead
        bits = 0 if n == m and np.array_equal(meta, implied) else max(1, (m - 1).bit_length())
        members[f"packed/{base}.values.npy"] = _npy_bytes(values[mask])
        if bits:
            members[f"packed/{base}.meta.bin"] = pack_bits(meta[mask], bits).tobytes()
        if f"{base}.fvalues" in image.tensors:
            members[f"packed/{base}.fvalues.npy"] = _npy_bytes(image.tensors[f"{base}.fvalues"][mask])
        out[base] = {**info, "meta_bits": bits, "shape": list(values.shape),
                     "fvalues": f"{base}.fvalues" in image.tensors}
    return out


STORE_ABOVE = 1 << 20  # members larger than this are stored, not deflated (speed; int8 and
# float weights barely compress)
STORE_PREFIXES = ("packed/",)  # weight slots and N:M metadata: stored whatever their size


def to_bytes(image: Image) -> bytes:
    out = io.BytesIO()
    _write_zip(_all_members(image), out)
    return out.getvalue()


def _all_members(image: Image) -> dict[str, bytes]:
    """Every member of the .fcim, manifest and its checksum included."""
    members, packed = _members(image)
    sums = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}
    priced = priced_bytes(image, sums)  # compile-time prices (flowc.backend.priced_doc)
    if priced is not None:
        members[PRICED_MEMBER] = priced
        sums[PRICED_MEMBER] = hashlib.sha256(priced).hexdigest()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "isa_version": isa.ISA.version,
        "machine": image.machine,
        "inputs": [s.to_dict() for s in image.inputs],
        "outputs": [s.to_dict() for s in image.outputs],
        "layers": [info.to_dict() for info in image.layers],
        "tensors": sorted(image.tensors),
        "packed": packed,
        "samples": len(image.samples),
        "compile": image.compile_info,
        "checksums": dict(sorted(sums.items())),
    }
    members[MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    members[MANIFEST_SUM] = (hashlib.sha256(members[MANIFEST]).hexdigest() + "\n").encode()
    return members


def _write_zip(members: dict[str, bytes], out: BinaryIO) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            store = len(members[name]) > STORE_ABOVE or name.startswith(STORE_PREFIXES)
            info.compress_type = zipfile.ZIP_STORED if store else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])


def size_report(data: bytes | str | Path) -> dict[str, int]:
    """Stored bytes of a .fcim by family: `machine` (what the accelerator loads: program.bin,
    packed int8 weights, bit-packed metadata, scales, biases, tables and constants), `check`
    (fp32 weights, the reference ONNX graph, sample inputs) and `other` (manifest, assembly
    text, vocabulary), plus `total` (the file size)."""
    src = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
    sizes = {"machine": 0, "check": 0, "other": 0}
    with zipfile.ZipFile(src) as zf:
        for info in zf.infolist():
            name = info.filename
            if name.endswith(".fvalues.npy") or name == "reference.onnx" or \
                    name.startswith("samples/"):
                key = "check"
            elif name == "program.bin" or name.startswith(("tensors/", "packed/")):
                key = "machine"
            else:
                key = "other"
            sizes[key] += info.compress_size
    sizes["total"] = len(data) if isinstance(data, bytes) else Path(data).stat().st_size
    return sizes


def write_atomic(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function writing to the open file) via a temp file in the
    same folder and rename: never a partial output file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600: give the output the usual mode
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(image: Image, path: str | Path) -> int:
    """Write `image` to `path` (atomically); returns the file's size. The zip is written
    straight into the file: no in-memory copy of the whole archive (~430 MB for SmolLM2)."""
    members = _all_members(image)
    write_atomic(path, lambda f: _write_zip(members, f))
    return Path(path).stat().st_size


def load(path: str | Path) -> Image:
    """Read and check a .fcim (flowc.backend.fcim_read: zip integrity, schema, checksums of
    every member and of the manifest, limits); every problem is one ImageError (exit 4)."""
    return read_path(path)


def load_bytes(data: bytes, label: str = "<bytes>") -> Image:
    """`load` of an in-memory .fcim (tests, tools); errors name `label`."""
    return read(data, label)
