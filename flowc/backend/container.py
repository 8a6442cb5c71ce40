"""The `.fcim` container: a zip of JSON, assembly text, binary code and `.npy` tensors.

Members: manifest.json (format version, machine, I/O signature, layer table, checksums of every
other member), program.s, program.bin, tensors/<name>.npy, reference.onnx (optional) and
samples/input_<i>.npy. Nothing is pickled: arrays load with allow_pickle=False. Writing is
deterministic (sorted members, fixed timestamps, sorted JSON keys) and atomic (temp + rename).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from flowc import isa
from flowc.backend.image import Image, IOSpec, LayerInfo
from flowc.errors import ImageError

FORMAT = "fcim"
FORMAT_VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _members(image: Image) -> dict[str, bytes]:
    members = {
        "program.s": isa.disassemble(image.program).encode(),
        "program.bin": isa.encode(image.program),
    }
    for name, arr in image.tensors.items():
        members[f"tensors/{name}.npy"] = _npy_bytes(arr)
    for i, arr in enumerate(image.samples):
        members[f"samples/input_{i}.npy"] = _npy_bytes(arr)
    if image.reference_onnx is not None:
        members["reference.onnx"] = image.reference_onnx
    return members


def to_bytes(image: Image) -> bytes:
    members = _members(image)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "isa_version": isa.ISA.version,
        "machine": image.machine,
        "inputs": [s.to_dict() for s in image.inputs],
        "outputs": [s.to_dict() for s in image.outputs],
        "layers": [info.to_dict() for info in image.layers],
        "tensors": sorted(image.tensors),
        "samples": len(image.samples),
        "compile": image.compile_info,
        "checksums": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(members.items())},
    }
    members["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return out.getvalue()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename: never a partial output file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(image: Image, path: str | Path) -> int:
    data = to_bytes(image)
    write_atomic(path, data)
    return len(data)


def load(path: str | Path) -> Image:
    """Read and verify a .fcim: zip integrity, format version, checksum of every member."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ImageError(f"{path}: not a .fcim file or truncated ({exc})") from exc
    with zf:
        try:
            raw = {n: zf.read(n) for n in zf.namelist()}
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ImageError(f"{path}: corrupt .fcim ({exc})") from exc
    if "manifest.json" not in raw:
        raise ImageError(f"{path}: no manifest.json: not a .fcim file")
    try:
        manifest = json.loads(raw["manifest.json"])
    except ValueError as exc:
        raise ImageError(f"{path}: manifest.json is not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ImageError(f"{path}: format {manifest.get('format')!r} version "
                         f"{manifest.get('format_version')!r}; this flowc reads {FORMAT} v{FORMAT_VERSION}")
    sums = manifest.get("checksums", {})
    for name in sorted(set(raw) - {"manifest.json"} | set(sums)):
        if name not in raw:
            raise ImageError(f"{path}: member {name} listed in the manifest is missing")
        if name not in sums:
            raise ImageError(f"{path}: member {name} is not listed in the manifest checksums")
        if hashlib.sha256(raw[name]).hexdigest() != sums[name]:
            raise ImageError(f"{path}: checksum mismatch in {name} (file corrupted or edited)")
    try:
        program = isa.decode(raw["program.bin"])
    except Exception as exc:
        raise ImageError(f"{path}: program.bin: {exc}") from exc
    tensors = {n: _load_npy(raw[f"tensors/{n}.npy"], path) for n in manifest["tensors"]}
    samples = tuple(_load_npy(raw[f"samples/input_{i}.npy"], path) for i in range(manifest["samples"]))
    return Image(
        program=program, tensors=tensors,
        inputs=tuple(IOSpec.from_dict(d) for d in manifest["inputs"]),
        outputs=tuple(IOSpec.from_dict(d) for d in manifest["outputs"]),
        layers=tuple(LayerInfo.from_dict(d) for d in manifest["layers"]),
        machine=manifest["machine"], compile_info=manifest.get("compile", {}),
        reference_onnx=raw.get("reference.onnx"), samples=samples,
    )


def _load_npy(data: bytes, path: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ImageError(f"{path}: bad tensor data ({exc})") from exc
