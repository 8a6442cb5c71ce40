"""Read a `.fcim` that may come from anyone: refuse whatever cannot be trusted, with one line.

Order matters: nothing is inflated, parsed or allocated before the step that bounds it.
1. the path is a regular file (a FIFO would block, a device never ends);
2. zip level: every member has a unique, plain name, is not encrypted, uses stored or deflate,
   and declares a size within the limits (flowc.backend.limits); reading checks each CRC-32;
3. the manifest matches `manifest.sha256`, is a JSON object of a known format and ISA
   version and validates against the schema (flowc.backend.manifest);
4. the members are exactly the ones the manifest implies, each with a matching SHA-256;
5. the machine is stored resolved (no `extends`: a .fcim never makes flowc open a file) and
   valid; program.s is the disassembly of program.bin; every tensor's `.npy` header is checked
   before allocation (flowc.backend.npy); float tensors are finite; the reference ONNX model
   passes flowc.backend.onnx_guard.
Every failure is an ImageError (exit 4). What the program *does* with all this is checked by
the program verifier (flowc.runtime.verifier) before it runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from flowc import isa
from flowc.backend import limits as limits_mod
from flowc.backend.image import Image, IOSpec, LayerInfo
from flowc.backend.manifest import Manifest, json_object, validate
from flowc.backend.npy import NpyError, read_npy
from flowc.backend.onnx_guard import check_stored
from flowc.backend.pack import TileGeometry, dense_meta, slot_mask, unpack_bits
from flowc.backend.priced_doc import PRICED_MEMBER, read_priced
from flowc.errors import ImageError

FORMAT = "fcim"
FORMAT_VERSION = 2  # 2: manifest.sha256 covers the manifest
MANIFEST, MANIFEST_SUM = "manifest.json", "manifest.sha256"
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*\Z")


def read_path(path: str | Path) -> Image:
    """Open `path` only if it is a regular file (never blocks on a FIFO), then `read`."""
    path = Path(path)
    with limits_mod.open_regular(path, limits_mod.current().total_bytes, ImageError,
                                 str(path)) as f:
        return read(f, str(path))


def read(src, label: str) -> Image:
    """Read and check a .fcim from a binary file object or bytes; errors name `label`."""
    if isinstance(src, bytes | bytearray):
        src = io.BytesIO(src)
    raw = _read_members(src, label)
    manifest = _manifest(raw, label)
    _check_members(raw, manifest, label)
    return _image(raw, manifest, label)


# -- zip level ---------------------------------------------------------------------------------
def _read_members(src, label: str) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(src)
    except Exception as exc:  # BadZipFile, UnicodeDecodeError of a name, OSError, ...
        raise ImageError(f"{label}: not a .fcim file or truncated ({_first(exc)})") from None
    lim = limits_mod.current()
    with zf:
        infos = zf.infolist()
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            if name in seen:
                raise ImageError(f"{label}: member {name!r} appears twice")
            seen.add(name)
            if not _MEMBER_NAME.match(name) or ".." in name.split("/"):
                raise ImageError(f"{label}: member name {name!r} is not a plain relative name")
            if info.flag_bits & 0x1:
                raise ImageError(f"{label}: member {name} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ImageError(f"{label}: member {name} uses compression method "
                                 f"{info.compress_type} (stored or deflate expected)")
            if info.file_size > lim.member_bytes:
                raise ImageError(f"{label}: member {name} declares {info.file_size} bytes, over "
                                 f"the limit of {lim.member_bytes}")
            total += info.file_size
        if total > lim.total_bytes:
            raise ImageError(f"{label}: members declare {total} bytes, over the limit of "
                             f"{lim.total_bytes}")
        raw = {}
        for info in infos:
            try:
                raw[info.filename] = zf.read(info)  # checks the CRC-32 and the size
            except Exception as exc:  # BadZipFile, zlib.error, EOFError, NotImplementedError
                raise ImageError(f"{label}: member {info.filename} is corrupt "
                                 f"({_first(exc)})") from None
    return raw


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- manifest ----------------------------------------------------------------------------------
def _manifest(raw: dict[str, bytes], label: str) -> Manifest:
    if MANIFEST not in raw:
        raise ImageError(f"{label}: no manifest.json: not a .fcim file")
    text = raw[MANIFEST]
    obj = json_object(text, f"{label}: manifest.json")
    if obj.get("format") != FORMAT or obj.get("format_version") != FORMAT_VERSION:
        raise ImageError(f"{label}: format {obj.get('format')!r} version "
                         f"{obj.get('format_version')!r}; this flowc reads {FORMAT} "
                         f"v{FORMAT_VERSION} (recompile the model)")
    if obj.get("isa_version") != isa.ISA.version:
        raise ImageError(f"{label}: isa_version {obj.get('isa_version')!r}; this flowc runs ISA "
                         f"version {isa.ISA.version}")
    if MANIFEST_SUM not in raw:
        raise ImageError(f"{label}: no {MANIFEST_SUM}: the manifest is not covered by a checksum")
    if raw[MANIFEST_SUM].strip() != hashlib.sha256(text).hexdigest().encode():
        raise ImageError(f"{label}: checksum mismatch in manifest.json (file corrupted or edited)")
    return validate(obj, label)


def expected_members(m: Manifest) -> tuple[set[str], set[str]]:
    """(required, optional) member names the manifest implies."""
    required = {MANIFEST, MANIFEST_SUM, "program.s", "program.bin"}
    derived = set()
    for base, info in m.packed.items():
        derived |= {f"{base}.values", f"{base}.meta"} | ({f"{base}.fvalues"} if info.fvalues else set())
        required.add(f"packed/{base}.values.npy")
        if info.meta_bits:
            required.add(f"packed/{base}.meta.bin")
        if info.fvalues:
            required.add(f"packed/{base}.fvalues.npy")
    required |= {f"tensors/{n}.npy" for n in m.tensors if n not in derived}
    required |= {f"samples/input_{i}.npy" for i in range(m.samples)}
    return required, {"reference.onnx", "vocab.json", PRICED_MEMBER}


def _check_members(raw: dict[str, bytes], m: Manifest, label: str) -> None:
    if len(set(m.tensors)) != len(m.tensors):
        raise ImageError(f"{label}: manifest.json: tensors lists a name twice")
    required, optional = expected_members(m)
    for name in sorted(required - set(raw)):
        raise ImageError(f"{label}: member {name} the manifest implies is missing")
    for name in sorted(set(raw) - required - optional):
        raise ImageError(f"{label}: member {name} is not part of a .fcim (unlisted)")
    sums = m.checksums
    for name in sorted(set(raw) - {MANIFEST, MANIFEST_SUM} | set(sums)):
        if name not in raw:
            raise ImageError(f"{label}: member {name} listed in the manifest is missing")
        if name not in sums:
            raise ImageError(f"{label}: member {name} is not listed in the manifest checksums")
        if hashlib.sha256(raw[name]).hexdigest() != sums[name]:
            raise ImageError(f"{label}: checksum mismatch in {name} (file corrupted or edited)")


# -- contents ----------------------------------------------------------------------------------
def _image(raw: dict[str, bytes], m: Manifest, label: str) -> Image:
    machine = _machine(m.machine, label)
    program = _program(raw, label)
    tensors = _packed(raw, m, machine["macro"], label)
    for n in m.tensors:
        if n not in tensors:
            tensors[n] = _npy(raw[f"tensors/{n}.npy"], f"tensors/{n}.npy", label)
    inputs = tuple(IOSpec(d.name, d.buffer, tuple(d.shape), d.dtype) for d in m.inputs)
    samples = tuple(_npy(raw[f"samples/input_{i}.npy"], f"samples/input_{i}.npy", label)
                    for i in range(m.samples))
    if samples and (len(samples) != len(inputs) or any(
            s.shape != spec.shape for s, spec in zip(samples, inputs, strict=False))):
        raise ImageError(f"{label}: the sample inputs do not match the input signature")
    reference = raw.get("reference.onnx")
    if reference is not None:
        check_stored(reference, label, limits_mod.current().onnx_loop_trips)
    image = Image(
        program=program, tensors=tensors, inputs=inputs,
        outputs=tuple(IOSpec(d.name, d.buffer, tuple(d.shape), d.dtype) for d in m.outputs),
        layers=tuple(LayerInfo.from_dict(d.model_dump(exclude_none=True)) for d in m.layers),
        machine=machine, compile_info=m.compile, reference_onnx=reference, samples=samples,
        packed={k: {"n": v.n, "m": v.m, "out": v.out, "in": v.in_} for k, v in m.packed.items()},
        vocab=_vocab(raw, label),
    )
    if PRICED_MEMBER in raw:  # compile-time prices, bound to this file's contents
        image.priced = read_priced(raw[PRICED_MEMBER], m.checksums, image, label)
    return image


def _machine(d: dict, label: str) -> dict:
    """The stored machine, fully resolved: `extends` anywhere is refused (it would read a
    file of this machine), then the same validation as a machine file."""
    from flowc.machine import MachineConfig

    if _has_key(d, "extends"):
        raise ImageError(f"{label}: manifest.json: machine: `extends` is not allowed in a .fcim "
                         "(the machine is stored fully resolved)")
    try:
        MachineConfig.from_dict(d)
    except Exception as exc:  # MachineConfigError naming the field path
        raise ImageError(f"{label}: manifest.json: machine: {_first(exc)}") from None
    return d


def _has_key(obj: object, key: str) -> bool:
    if isinstance(obj, dict):
        return key in obj or any(_has_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_key(v, key) for v in obj)
    return False


def _program(raw: dict[str, bytes], label: str) -> isa.Program:
    try:
        program = isa.decode(raw["program.bin"])
    except Exception as exc:
        raise ImageError(f"{label}: program.bin: {_first(exc)}") from None
    if raw["program.s"] != isa.disassemble(program).encode():
        raise ImageError(f"{label}: program.s is not the disassembly of program.bin")
    return program


def _npy(data: bytes, member: str, label: str) -> np.ndarray:
    try:
        arr = read_npy(data, limits_mod.current().member_bytes)
    except NpyError as exc:
        raise ImageError(f"{label}: {member}: {exc}") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageError(f"{label}: {member}: holds NaN or infinite values")
    return arr


def _packed(raw: dict[str, bytes], m: Manifest, geo: dict, label: str) -> dict[str, np.ndarray]:
    """Rebuild each packed weight from its kept slots (flowc.backend.container stores only
    those) after checking its declared geometry against the machine and the limits."""
    P, R, C = geo["subarrays"], geo["rows"], geo["cols"]
    tensors = {}
    for base, info in m.packed.items():
        where = f"{label}: packed weight {base}"
        n, mm, shape = info.n, info.m, tuple(info.shape)
        if not (n <= mm and n <= P and P % n == 0):
            raise ImageError(f"{where}: pattern {n}:{mm} does not fit {P} sub-macros")
        tg = TileGeometry(n, mm, P, R, C, info.out, info.in_)
        if shape != (tg.n_tiles, tg.k_tiles, P, R, C):
            raise ImageError(f"{where}: shape {shape} does not match its tiles")
        if np.prod(shape, dtype=np.int64) * 4 > limits_mod.current().member_bytes:
            raise ImageError(f"{where}: {shape} is over the size limit")
        bits = 0 if n == mm and not info.meta_bits else max(1, (mm - 1).bit_length())
        if info.meta_bits != bits:
            raise ImageError(f"{where}: meta_bits {info.meta_bits}, {bits} expected for {n}:{mm}")
        mask = slot_mask(n, mm, P, R, C, info.out, info.in_)
        kept = int(mask.sum())
        meta = np.array(dense_meta(shape, n))
        if bits:
            packed = raw[f"packed/{base}.meta.bin"]
            if len(packed) != -(-kept * bits // 8):
                raise ImageError(f"{where}: metadata holds {len(packed)} bytes, "
                                 f"{-(-kept * bits // 8)} expected")
            meta[mask] = unpack_bits(np.frombuffer(packed, dtype=np.uint8), bits, kept)
        tensors[f"{base}.meta"] = meta
        for kind in ("values", "fvalues") if info.fvalues else ("values",):
            member = f"packed/{base}.{kind}.npy"
            flat = _npy(raw[member], member, label)
            if flat.shape != (kept,):
                raise ImageError(f"{where}: {kind}: {flat.shape[0] if flat.ndim else 0} values, "
                                 f"{kept} kept slots expected")
            full = np.zeros(shape, dtype=flat.dtype)
            full[mask] = flat
            tensors[f"{base}.{kind}"] = full
    return tensors


def _vocab(raw: dict[str, bytes], label: str) -> tuple[str, ...]:
    if "vocab.json" not in raw:
        return ()
    try:
        vocab = json.loads(raw["vocab.json"])
    except (ValueError, RecursionError) as exc:
        raise ImageError(f"{label}: vocab.json is not valid JSON ({_first(exc)})") from None
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ImageError(f"{label}: vocab.json is not a list of strings")
    return tuple(vocab)
