"""The `.fcim` container: a zip of JSON, assembly text, binary code and `.npy` tensors.

Members: manifest.json (format version, machine, I/O signature, layer table, checksums of every
other member), program.s, program.bin, tensors/<name>.npy, packed/<w>.values.npy (the real
kept slots of a packed weight, tile padding dropped), packed/<w>.meta.bin (its metadata,
log2(M) bits per kept weight, absent when dense), packed/<w>.fvalues.npy (fp32 weights, for
checks), reference.onnx (optional; large initialisers are recipes over the tensors,
see flowc.backend.reference), samples/input_<i>.npy and vocab.json (language models).
Members above 1 MB are stored uncompressed (deflate is slow and weights barely compress).
Nothing is pickled: arrays load with allow_pickle=False. Writing is deterministic (sorted
members, fixed timestamps, sorted JSON keys) and atomic (temp + rename).
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
from flowc.backend.pack import dense_meta, pack_bits, slot_mask, unpack_bits
from flowc.errors import ImageError

FORMAT = "fcim"
FORMAT_VERSION = 1
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


def _unpacked_tensors(raw: dict[str, bytes], packed: dict[str, dict], geo: dict,
                      path: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for base, info in packed.items():
        n, m, shape = info["n"], info["m"], tuple(info["shape"])
        mask = slot_mask(n, m, geo["subarrays"], geo["rows"], geo["cols"], info["out"], info["in"])
        if mask.shape != shape:
            raise ImageError(f"{path}: packed weight {base}: shape {shape} does not match its tiles")
        kept = int(mask.sum())
        meta = np.array(dense_meta(shape, n))
        if info["meta_bits"]:
            bits = np.frombuffer(raw[f"packed/{base}.meta.bin"], dtype=np.uint8)
            meta[mask] = unpack_bits(bits, info["meta_bits"], kept)
        tensors[f"{base}.meta"] = meta
        kinds = ("values", "fvalues") if info["fvalues"] else ("values",)
        for kind in kinds:
            flat = _load_npy(raw[f"packed/{base}.{kind}.npy"], path)
            if flat.shape != (kept,):
                raise ImageError(f"{path}: packed/{base}.{kind}: expected {kept} kept values")
            full = np.zeros(shape, dtype=flat.dtype)
            full[mask] = flat
            tensors[f"{base}.{kind}"] = full
    return tensors


STORE_ABOVE = 1 << 20  # members larger than this are stored, not deflated (speed; int8 and
# float weights barely compress)


def to_bytes(image: Image) -> bytes:
    members, packed = _members(image)
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
        "checksums": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(members.items())},
    }
    members["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            big = len(members[name]) > STORE_ABOVE
            info.compress_type = zipfile.ZIP_STORED if big else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return out.getvalue()


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
    return _load(path, path)


def load_bytes(data: bytes, label: str = "<bytes>") -> Image:
    """`load` of an in-memory .fcim (tests, tools); errors name `label`."""
    return _load(io.BytesIO(data), Path(label))


def _load(src, path: Path) -> Image:
    try:
        zf = zipfile.ZipFile(src)
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
    packed = manifest.get("packed", {})
    try:
        tensors = _unpacked_tensors(raw, packed, manifest["machine"]["macro"], path)
    except KeyError as exc:
        raise ImageError(f"{path}: missing member {exc}") from exc
    tensors.update({n: _load_npy(raw[f"tensors/{n}.npy"], path)
                    for n in manifest["tensors"] if n not in tensors})
    samples = tuple(_load_npy(raw[f"samples/input_{i}.npy"], path) for i in range(manifest["samples"]))
    return Image(
        program=program, tensors=tensors,
        inputs=tuple(IOSpec.from_dict(d) for d in manifest["inputs"]),
        outputs=tuple(IOSpec.from_dict(d) for d in manifest["outputs"]),
        layers=tuple(LayerInfo.from_dict(d) for d in manifest["layers"]),
        machine=manifest["machine"], compile_info=manifest.get("compile", {}),
        reference_onnx=raw.get("reference.onnx"), samples=samples,
        packed={k: {f: v[f] for f in ("n", "m", "out", "in")} for k, v in packed.items()},
        vocab=tuple(json.loads(raw["vocab.json"])) if "vocab.json" in raw else (),
    )


def _load_npy(data: bytes, path: Path) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ImageError(f"{path}: bad tensor data ({exc})") from exc
