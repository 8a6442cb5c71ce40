"""Edit a .fcim the way an attacker would: change members or the manifest and recompute every
checksum (consistent tampering), or damage the zip itself. Shared by the bad-input corpus and
the fuzz tests."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable

from flowc import isa

Members = dict[str, bytes]


def members_of(data: bytes) -> Members:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def zip_of(members: Members | list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    items = members.items() if isinstance(members, dict) else members
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        for name, data in items:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                        compress_type=method)
    return out.getvalue()


def reseal(members: Members, manifest: dict | None = None) -> Members:
    """Recompute the checksums of every member and the manifest's own checksum."""
    manifest = dict(manifest if manifest is not None else json.loads(members["manifest.json"]))
    body = {k: v for k, v in members.items() if k not in ("manifest.json", "manifest.sha256")}
    manifest["checksums"] = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(body.items())}
    text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return {**body, "manifest.json": text,
            "manifest.sha256": (hashlib.sha256(text).hexdigest() + "\n").encode()}


def tamper(data: bytes, edit_members: Callable[[Members], None] | None = None,
           edit_manifest: Callable[[dict], None] | None = None) -> bytes:
    """A consistently resealed copy of `data` after the edits."""
    members = members_of(data)
    if edit_members:
        edit_members(members)
    manifest = json.loads(members["manifest.json"])
    if edit_manifest:
        edit_manifest(manifest)
    return zip_of(reseal(members, manifest))


def with_program(data: bytes, program: isa.Program) -> bytes:
    """Replace program.bin and program.s (kept consistent) and reseal. The encoder's own
    structure check is bypassed: an attacker does not use flowc to write the bytes."""
    from unittest import mock

    def edit(m: Members) -> None:
        with mock.patch.object(isa.Program, "validate", lambda self: self):
            m["program.bin"] = isa.encode(program)
        m["program.s"] = isa.disassemble(program).encode()

    return tamper(data, edit)


def replace_instr(program: isa.Program, index: int, **operands) -> isa.Program:
    """The program with instruction `index` rebuilt with some operands changed."""
    import dataclasses

    instrs = list(program.instructions)
    instrs[index] = dataclasses.replace(instrs[index], **operands)
    return isa.Program(tuple(instrs))


def find(program: isa.Program, mnemonic: str, nth: int = 0) -> int:
    hits = [i for i, ins in enumerate(program.instructions) if ins.mnemonic == mnemonic]
    return hits[nth]
