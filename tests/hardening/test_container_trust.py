"""A hostile .fcim never makes flowc open another file and never allocates past the limits
(issue 13); a good one round-trips exactly and passes the verifier."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import zipfile

import onnx
import pytest
from tamper import members_of, tamper, zip_of

from flowc.backend import limits
from flowc.backend.container import load, load_bytes, to_bytes
from flowc.errors import ImageError
from flowc.runtime.verifier import verify

_OPENED: list[str] = []
_WATCH: list[bool] = [False]


def _audit(event: str, args: tuple) -> None:
    if _WATCH[0] and event == "open" and args and isinstance(args[0], str | bytes):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def good(compiled) -> bytes:
    return to_bytes(compiled("mlp", (2, 4), "magnitude"))


def _opens_while_loading(path) -> tuple[list[str], str]:
    _OPENED.clear()
    _WATCH[0] = True
    try:
        load(path)
        message = ""
    except ImageError as exc:
        message = str(exc)
    finally:
        _WATCH[0] = False
    return list(_OPENED), message


def test_good_file_round_trips_and_verifies(good, compiled):
    image = load_bytes(good)
    assert to_bytes(image) == good
    assert verify(image).instructions == len(compiled("mlp", (2, 4), "magnitude").program.instructions)


def test_extends_and_external_onnx_data_open_no_other_file(good, tmp_path):
    load_bytes(good)  # warm up lazy imports, so only the reads of load itself are recorded
    extends = tamper(good, edit_manifest=lambda d: d["machine"].update(extends="../../pyproject"))
    model = onnx.load_from_string(members_of(good)["reference.onnx"])
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", str(tmp_path / "secret.bin")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    external = tamper(good, lambda m: m.__setitem__("reference.onnx", model.SerializeToString()))
    for name, data, needle in (("extends.fcim", extends, "extends"),
                               ("external.fcim", external, "external data")):
        path = tmp_path / name
        path.write_bytes(data)
        opened, message = _opens_while_loading(path)
        assert needle in message
        assert opened == [str(path)], opened


def test_declared_sizes_are_checked_before_inflating(good):
    members = members_of(good)
    members["vocab.json"] = b"\0" * (4 << 20)
    bomb = zip_of(members, zipfile.ZIP_DEFLATED)
    old = limits.current()
    try:
        limits.configure(member_bytes=1 << 20)
        with pytest.raises(ImageError, match="vocab.json declares 4194304 bytes, over the limit"):
            load_bytes(bomb)
    finally:
        limits.configure(**dataclasses.asdict(old))


@pytest.mark.slow
def test_a_decompression_bomb_under_ulimit(tmp_path):
    """1.2 GB of NULs as vocab.json (1.2 MB deflated), read under a 1 GB address-space limit:
    refused from its declared size, no MemoryError."""
    bomb = tmp_path / "bomb.fcim"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("manifest.json", b"{}")
        with zf.open("vocab.json", "w") as f:
            chunk = bytes(16 << 20)
            for _ in range(72):
                f.write(chunk)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from flowc.backend import limits
        from flowc.backend.container import load
        from flowc.backend.npy import read_npy
        limits.configure(member_bytes=64 << 20, total_bytes=64 << 20)
        try:
            load({str(bomb)!r})
        except Exception as exc:
            print(type(exc).__name__, exc)
        import io, numpy as np
        buf = io.BytesIO(); np.save(buf, np.zeros(1, np.float32))
        try:
            read_npy(buf.getvalue().replace(b"(1,)", b"(1099511627776,)", 1), 64 << 20)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stderr
    assert lines[0].startswith("ImageError") and "over the limit" in lines[0], lines
    assert lines[1].startswith("NpyError") and "over the limit" in lines[1], lines
