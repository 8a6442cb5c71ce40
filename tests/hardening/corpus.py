"""A seeded corpus of bad inputs for flowrun (issue 13), generated from one good .fcim.

`cases(good, seed)` returns Case(name, files, args, code, needle): the files to write (name ->
bytes; "{dir}" in args is replaced by their folder), the flowrun arguments, the documented
exit code and a fragment of the one-line message. Each class of the issue has at least one
case; the randomised ones (bit flips, truncations) draw from `seed`. Run as a script to write
the corpus to a folder: `python tests/hardening/corpus.py OUT [SEED]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from tamper import Members, find, members_of, replace_instr, reseal, tamper, with_program, zip_of

from flowc import isa


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, bytes]
    args: tuple[str, ...]
    code: int
    needle: str


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _prog(good: bytes) -> isa.Program:
    return isa.decode(members_of(good)["program.bin"])


def _fcim(name: str, data: bytes, code: int, needle: str) -> Case:
    return Case(name, {"m.fcim": data}, ("{dir}/m.fcim", "--no-check", "-q"), code, needle)


def _edit(good: bytes, fn: Callable[[Members], None]) -> bytes:
    m = members_of(good)
    fn(m)
    return zip_of(m)


def _patch_central(data: bytes, name: str, offset: int, value: bytes) -> bytes:
    """Overwrite bytes at `offset` of `name`'s central-directory header."""
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos >= 0:
        n = int.from_bytes(out[pos + 28:pos + 30], "little")
        if out[pos + 46:pos + 46 + n] == name.encode():
            out[pos + offset:pos + offset + len(value)] = value
            return bytes(out)
        pos = out.find(b"PK\x01\x02", pos + 4)
    raise KeyError(name)


def zip_cases(good: bytes, rng: random.Random) -> list[Case]:
    members = members_of(good)
    cases = [
        _fcim("truncated", good[: len(good) // 2], 4, "not a .fcim file"),
        _fcim("empty", b"", 4, "not a .fcim file"),
        _fcim("bzip2-member", zip_of(members, zipfile.ZIP_BZIP2), 4, "compression method"),
        _fcim("encrypted-flag", _patch_central(good, "program.s", 8, b"\x01\x00"), 4, "encrypted"),
        _fcim("duplicate-member", zip_of(list(members.items()) + [("program.bin", b"\0")]), 4,
              "appears twice"),
        _fcim("unlisted-member", zip_of(reseal({**members, "extra.txt": b"hi"})), 4, "unlisted"),
        _fcim("missing-member", _edit(good, lambda m: m.pop("program.s")), 4, "missing"),
        _fcim("dotdot-name", zip_of({**members, "../x": b""}), 4, "plain relative name"),
    ]
    bad_name = zip_of({**members, "tensors/zz.npy": b""}).replace(b"tensors/zz.npy",
                                                                   b"tensors/z\xff.npy")
    cases.append(_fcim("non-utf8-name", _utf8_flag(bad_name), 4, "not a .fcim file"))
    for i in range(3):  # bit flips inside the deflated manifest / program text
        data = bytearray(good)
        with zipfile.ZipFile(io.BytesIO(good)) as zf:
            info = zf.getinfo(rng.choice(["manifest.json", "program.s"]))
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        data[start + rng.randrange(info.compress_size)] ^= 1 << rng.randrange(8)
        cases.append(_fcim(f"bitflip-{i}", bytes(data), 4, "corrupt"))
    return cases


def _utf8_flag(data: bytes) -> bytes:
    """Set the UTF-8 name flag (0x800) on every central-directory header."""
    out = bytearray(data)
    pos = out.find(b"PK\x01\x02")
    while pos >= 0:
        out[pos + 9] |= 0x08
        pos = out.find(b"PK\x01\x02", pos + 4)
    return bytes(out)


def manifest_cases(good: bytes) -> list[Case]:
    def raw_manifest(value) -> bytes:
        return _edit(good, lambda m: m.update(reseal({**m, "manifest.json": b"{}"}) | {
            "manifest.json": json.dumps(value).encode()}))

    def field(key, value):
        return tamper(good, edit_manifest=lambda d: d.__setitem__(key, value))

    def unsealed_field(key, value):
        """Only the manifest's own checksum is recomputed (the field is what is wrong)."""
        def edit(m):
            d = json.loads(m["manifest.json"])
            d[key] = value
            m["manifest.json"] = json.dumps(d).encode()
            m["manifest.sha256"] = hashlib.sha256(m["manifest.json"]).hexdigest().encode()
        return _edit(good, edit)

    def machine(fn):
        return tamper(good, edit_manifest=lambda d: fn(d["machine"]))

    return [
        _fcim("manifest-array", raw_manifest([1, 2]), 4, "JSON list"),
        _fcim("manifest-null", raw_manifest(None), 4, "JSON NoneType"),
        _fcim("manifest-unsealed", _edit(good, lambda m: m.__setitem__(
            "manifest.json", m["manifest.json"].replace(b'"samples": 1', b'"samples": 0'))),
            4, "checksum mismatch in manifest.json"),
        _fcim("manifest-no-sum", _edit(good, lambda m: m.pop("manifest.sha256")), 4,
              "not covered by a checksum"),
        _fcim("checksums-list", unsealed_field("checksums", []), 4, "checksums"),
        _fcim("samples-string", field("samples", "1"), 4, "samples"),
        _fcim("format-99", field("format_version", 99), 4, "version 99"),
        _fcim("isa-99", field("isa_version", 99), 4, "isa_version 99"),
        _fcim("negative-shape", tamper(good, edit_manifest=lambda d: d["inputs"][0].__setitem__(
            "shape", [-1, 4])), 4, "inputs.0.shape.0"),
        _fcim("extends-path", machine(lambda mc: mc.__setitem__("extends", "../../pyproject")),
              4, "extends"),
        _fcim("clock-inf", machine(lambda mc: mc.__setitem__("clock_mhz", float("inf"))), 4,
              "clock_mhz"),
    ]


def member_cases(good: bytes) -> list[Case]:
    m = members_of(good)
    meta = sorted(k for k in m if k.endswith(".meta.bin"))[0]
    values = sorted(k for k in m if k.startswith("packed/") and k.endswith(".values.npy"))[0]
    bias = sorted(k for k in m if k.endswith(".bias.npy"))[0]
    kept = np.load(io.BytesIO(m[values])).shape[0]

    def put(name, data):
        return tamper(good, lambda mm: mm.__setitem__(name, data))

    header = _npy(np.zeros(1, np.float32)).replace(b"(1,)", b"(1099511627776,)", 1)
    s = m["program.s"].decode()
    return [
        _fcim("meta-empty", put(meta, b""), 4, "metadata holds 0 bytes"),
        _fcim("meta-truncated", put(meta, m[meta][:-1]), 4, "metadata holds"),
        _fcim("meta-padded-1mb", put(meta, m[meta] + bytes(1 << 20)), 4, "metadata holds"),
        _fcim("values-fractional", put(values, _npy(np.full(kept, 0.5, np.float32))), 4,
              "values are float32"),
        _fcim("bias-nan", put(bias, _npy(np.full(np.load(io.BytesIO(m[bias])).shape, np.nan,
                                                 np.float32))), 4, "NaN"),
        _fcim("bias-complex", put(bias, _npy(np.zeros(3, np.complex64))), 4, "complex64"),
        _fcim("bias-wrong-length", put(bias, _npy(np.zeros(3, np.float32))), 4, "expected float["),
        _fcim("scale-int", put(bias.replace(".bias.", ".scale."), _npy(np.ones(
            np.load(io.BytesIO(m[bias.replace(".bias.", ".scale.")])).shape, np.int32))), 4,
            "scale is missing or not a float vector"),
        _fcim("bias-object", put(bias, _npy(np.array([1, None], dtype=object))), 4, "object"),
        _fcim("npy-2e40-header", put(bias, header), 4, "over the limit"),
        _fcim("program-s-differs", put("program.s", (s + "; edited\n").encode()), 4,
              "program.s is not the disassembly"),
        _fcim("vocab-not-list", put("vocab.json", b'{"a": 1}'), 4, "vocab.json"),
    ]


def onnx_cases(good: bytes) -> list[Case]:
    m = members_of(good)
    if "reference.onnx" not in m:
        return []
    model = onnx.load_from_string(m["reference.onnx"])
    ext = onnx.ModelProto()
    ext.CopyFrom(model)
    init = ext.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", "../../pyproject.toml"
    loop = onnx.ModelProto()
    loop.CopyFrom(model)
    trips = onnx.helper.make_tensor("trips", onnx.TensorProto.INT64, [], [2**62])
    body = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         onnx.helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, [])])
    loop.graph.initializer.append(trips)
    loop.graph.node.append(onnx.helper.make_node("Loop", ["trips", ""], [], body=body))

    def put(data):
        return tamper(good, lambda mm: mm.__setitem__("reference.onnx", data))

    return [
        _fcim("onnx-empty", put(b""), 4, "reference.onnx: empty"),
        _fcim("onnx-garbage", put(b"\x08\x07garbage"), 4, "reference.onnx"),
        _fcim("onnx-external-path", put(ext.SerializeToString()), 4, "external data"),
        _fcim("onnx-loop-2e62", put(loop.SerializeToString()), 4, "runs 4611686018427387904 times"),
    ]


def program_cases(good: bytes) -> list[Case]:
    p = _prog(good)
    q, q1 = find(p, "v.quant"), find(p, "v.quant", 1)
    deq, bias, cfg, loop = (find(p, x) for x in ("v.deq", "v.bias", "cfg.nm", "loop.tiles"))
    clr = find(p, "psum.clr")
    last = len(p.instructions) - 2  # the instruction before halt writes the output

    def prog(name, program, needle):
        return _fcim(name, with_program(good, program), 4, needle)

    def op(name, index, needle, **ops):
        return prog(name, replace_instr(p, index, **ops), needle)

    out = [
        op("unknown-tensor", bias, "not in the image", b="nope"),
        op("unknown-buffer", bias, "not defined", src="nope"),
        op("nm-3-4", cfg, "not a pattern", n=3, m=4),
        op("nm-8-4", cfg, "not a pattern", n=8, m=4),
        op("nm-2-0", cfg, "not a pattern", n=2, m=0),
        op("nm-255-255", cfg, "not a pattern", n=255, m=255),
        op("loop-1x1", loop, "packed tiles", n_tiles=1, k_tiles=1),
        op("loop-2e32", loop, "packed tiles", n_tiles=2**32 - 1),
        op("psum-0-cols", clr, "0 columns", cols=0),
        op("psum-2e32-cols", clr, "memory limit", cols=2**32 - 1),
        op("deq-cols-too-many", deq, "cols", cols=100000),
        op("quant-of-int8", q1, "is i8", src=p.instructions[q].dst),
        op("output-never-written", last, "never written", dst="elsewhere"),
        prog("reshape-impossible", _insert(p, bias + 1, isa.VReshape(dst="r", src=p.instructions[bias].dst,
                                                                      shape=(7, 11, 13))), "elements"),
        prog("permute-bad", _insert(p, bias + 1, isa.VPermute(dst="r", src=p.instructions[bias].dst,
                                                                dims=(0, 0))), "permutation"),
        prog("slice-bad-dim", _insert(p, bias + 1, isa.VSlice(
            dst="r", src=p.instructions[bias].dst,
            dim=5, start=0, end=1, step=1)), "dimension 5"),
        prog("cat-mismatch", _insert(p, bias + 1, isa.VCat(dst="r", a=p.instructions[bias].dst,
                                                            b=p.instructions[q].scale, dim=0)), "rank"),
        prog("two-halts", isa.Program(p.instructions[:-1] + (isa.Halt(), isa.Halt())), "halt"),
        prog("loop-empty-body", isa.Program(p.instructions[:cfg + 1] + (
            isa.LoopTiles(n_tiles=2**32 - 1, k_tiles=2**32 - 1), isa.LoopEnd()) +
            p.instructions[cfg + 1:]), "tile loop body"),
    ]
    return out


def _insert(p: isa.Program, at: int, ins) -> isa.Program:
    return isa.Program(p.instructions[:at] + (ins,) + p.instructions[at:])


def data_cases(good: bytes) -> list[Case]:
    """Corrupt weights and scales behind a valid program."""
    m = members_of(good)
    scale = sorted(k for k in m if k.endswith(".scale.npy"))[-1]
    meta = sorted(k for k in m if k.endswith(".meta.bin"))[0]
    arr = np.load(io.BytesIO(m[scale]))
    zero = arr.copy()
    zero[0] = 0
    dup = _same_index_meta(good, meta)
    return [
        _fcim("scale-zero", tamper(good, lambda mm: mm.__setitem__(scale, _npy(zero))), 4,
              "not finite and > 0"),
        _fcim("meta-same-index", tamper(good, lambda mm: mm.__setitem__(meta, dup)), 4,
              "same index twice"),
    ]


def _same_index_meta(good: bytes, member: str) -> bytes:
    """The metadata member with the two gang-mates of the first group given one index."""
    from flowc.backend.container import load_bytes
    from flowc.backend.pack import pack_bits, slot_mask

    image = load_bytes(good)
    base = member.removeprefix("packed/").removesuffix(".meta.bin")
    info, geo = image.packed[base], image.machine["macro"]
    meta = image.tensors[f"{base}.meta"].copy()
    meta[0, 0, 1, 0, 0] = meta[0, 0, 0, 0, 0]
    mask = slot_mask(info["n"], info["m"], geo["subarrays"], geo["rows"], geo["cols"],
                     info["out"], info["in"])
    bits = max(1, (info["m"] - 1).bit_length())
    return pack_bits(meta[mask], bits).tobytes()


def input_cases(good: bytes) -> list[Case]:
    """Bad --input arrays for a float32 [8, 784] model."""
    shape = (8, 784)

    def inp(name, data, code, needle):
        return Case(name, {"m.fcim": good, "x.npy": data},
                    ("{dir}/m.fcim", "--input", "{dir}/x.npy", "--no-check", "-q"), code, needle)

    nan = np.zeros(shape, np.float32)
    nan[0, 0] = np.nan
    header = _npy(np.zeros(1, np.float32)).replace(b"(1,)", b"(1099511627776,)", 1)
    return [
        inp("input-nan", _npy(nan), 2, "NaN or infinite"),
        inp("input-1e39", _npy(np.full(shape, 1e39)), 2, "NaN or infinite"),
        inp("input-string", _npy(np.full(shape, "a")), 2, "dtype"),
        inp("input-datetime", _npy(np.zeros(shape, "datetime64[s]")), 2, "dtype"),
        inp("input-structured", _npy(np.zeros(shape, [("a", "i4")])), 2, "dtype"),
        inp("input-complex", _npy(np.zeros(shape, np.complex64)), 2, "dtype"),
        inp("input-2e40-header", header, 2, "over the limit"),
        inp("input-wrong-shape", _npy(np.zeros((2, 3), np.float32)), 2, "expected shape"),
        inp("input-not-npy", b"hello", 2, "header"),
    ]


def cases(good: bytes, seed: int = 0) -> list[Case]:
    rng = random.Random(seed)
    return (zip_cases(good, rng) + manifest_cases(good) + member_cases(good) + onnx_cases(good)
            + program_cases(good) + data_cases(good) + input_cases(good))


def good_cases(good: bytes) -> list[Case]:
    """Inputs that must be accepted (exit 0): every numeric dtype that fits a float input."""
    out = []
    for dtype in ("int64", "int32", "int8", "uint8", "bool", "float64", "float16"):
        arr = np.ones((8, 784), dtype=dtype)
        out.append(Case(f"input-{dtype}", {"m.fcim": good, "x.npy": _npy(arr)},
                        ("{dir}/m.fcim", "--input", "{dir}/x.npy", "--no-check", "-q"), 0, ""))
    return out


if __name__ == "__main__":
    out, good_path = Path(sys.argv[1]), Path(sys.argv[2])
    for case in cases(good_path.read_bytes(), int(sys.argv[3]) if len(sys.argv) > 3 else 0):
        folder = out / case.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in case.files.items():
            (folder / name).write_bytes(data)
        print(case.name, case.code, case.needle)
