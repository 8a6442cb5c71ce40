"""Binary encoding: a known byte layout, round trips, and every decode error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings

from flowc.isa import (
    Cim,
    DecodeError,
    Halt,
    Layer,
    LdTile,
    LoopEnd,
    LoopTiles,
    Program,
    ProgramError,
    VReshape,
    VScale,
    assemble,
    decode,
    encode,
)
from flowc.isa.testing import programs

SMALL = Program((Layer("fc1", "gemm"), LdTile(0, "fc1"), VReshape("y", "x", (-1, 2)),
                 VScale("y", "y", 0.5), Halt()))

SMALL_BYTES = bytes.fromhex(  # 83 bytes; offsets of each field noted for the error tests
    "4643494d49534100"  # magic FCIMISA\0
    "0100"  # version 1
    "04000000"  # 4 symbols in first-use order
    "0300" "666331"  # fc1
    "0400" "67656d6d"  # gemm
    "0100" "79"  # y
    "0100" "78"  # x
    "05000000"  # 5 instructions (offset 31)
    "01" "00000000" "01000000"  # offset 35: layer name=fc1 kind=gemm
    "11" "00" "00000000"  # offset 44: ld.tile macro=0 w=@fc1
    "2d" "02000000" "03000000" "0200" "ffffffff" "02000000"  # 50: v.reshape ... shape=[-1,2]
    "2c" "02000000" "02000000" "0000003f"  # offset 69: v.scale dst=%y src=%y s=0.5
    "00"  # offset 82: halt
)


def test_known_layout() -> None:
    assert encode(SMALL) == SMALL_BYTES
    assert decode(SMALL_BYTES) == SMALL


def test_encoding_is_deterministic_and_text_independent() -> None:
    text = "layer name=fc1 kind=gemm\nld.tile macro=0 w=@fc1\n" \
           "v.reshape dst=%y src=%x shape=[-1,2]\nv.scale dst=%y src=%y s=0.5\nhalt\n"
    assert encode(assemble(text)) == SMALL_BYTES
    assert encode(decode(SMALL_BYTES)) == SMALL_BYTES


def test_encode_rejects_invalid_program() -> None:
    with pytest.raises(ProgramError, match="instruction 0: program does not end with halt"):
        encode(Program(()))


@settings(max_examples=150, deadline=None)
@given(programs())
def test_random_programs_round_trip(p: Program) -> None:
    data = encode(p)
    assert decode(data) == p
    assert encode(decode(data)) == data


def test_every_truncation_is_a_decode_error() -> None:
    for cut in range(len(SMALL_BYTES)):
        with pytest.raises(DecodeError, match="truncated data: "):
            decode(SMALL_BYTES[:cut])


@pytest.mark.parametrize(("cut", "message"), [
    (0, "truncated data: magic needs 8 bytes at offset 0, only 0 left"),
    (9, "truncated data: ISA version needs 2 bytes at offset 8, only 1 left"),
    (15, "truncated data: length of symbol 0 needs 2 bytes at offset 14, only 1 left"),
    (17, "truncated data: symbol 0 needs 3 bytes at offset 16, only 1 left"),
    (len(SMALL_BYTES) - 1, "truncated data: opcode of instruction 4 needs 1 bytes at offset 82, "
                           "only 0 left"),
    (41, "truncated data: operand kind of instruction 0 (layer) needs 4 bytes at offset 40, "
         "only 1 left"),
])
def test_truncation_messages(cut: int, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(SMALL_BYTES[:cut])
    assert str(info.value) == message


def _patched(offset: int, raw: bytes) -> bytes:
    return SMALL_BYTES[:offset] + raw + SMALL_BYTES[offset + len(raw):]


@pytest.mark.parametrize(("data", "message"), [
    (b"PK\x03\x04" + SMALL_BYTES[4:], "bad magic b'PK\\x03\\x04ISA\\x00': not a FlexCiM program "
                                      "(expected b'FCIMISA\\x00')"),
    (_patched(8, b"\x02\x00"), "unsupported ISA version 2 (this toolchain reads version 1)"),
    (_patched(82, b"\x7f"), "unknown opcode 0x7F at offset 82 (instruction 4)"),
    (SMALL_BYTES + b"\x00", "1 trailing bytes after the last instruction (offset 83)"),
    (_patched(36, struct.pack("<I", 9)),
     "operand name of instruction 0 (layer): symbol index 9 out of range (4 symbols)"),
    (_patched(16, b"\xff"), "symbol 0 is not valid UTF-8 (offset 16)"),
    (_patched(16, b"1"), "instruction 0 at offset 35: layer: operand name: '1c1' is not a valid "
                         "label name ([A-Za-z_][A-Za-z0-9_.]*, no sigil)"),
    (_patched(78, struct.pack("<f", float("inf"))),
     "instruction 3 at offset 69: v.scale: operand s: inf is not finite (f32 operands must be "
     "finite)"),
    (_patched(82, b"\x03"), "invalid program: instruction 4: loop.end without an open loop.tiles"),
])
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert str(info.value) == message


def test_loop_program_round_trip() -> None:
    p = Program((LoopTiles(2**32 - 1, 7), Cim(255), LoopEnd(), Halt()))
    data = encode(p)
    assert len(data) == 8 + 2 + 4 + 4 + (1 + 8) + (1 + 1) + 1 + 1
    assert decode(data) == p
