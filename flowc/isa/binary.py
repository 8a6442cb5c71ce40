"""Binary encoding of programs, laid out by the operand types of the definition.

Layout (all little-endian):

    magic    8 bytes  b"FCIMISA\\0"
    version  u16      ISA version of the definition that wrote the program
    nsyms    u32      symbol table: every distinct buf/tensor/label name, in first-use order,
    symbol   u16 byte length + UTF-8 bytes, nsyms times
    count    u32      number of instructions
    insn     u8 opcode + operands in definition order, count times

Operands: u8/u16/u32/i32 fixed width, f32 IEEE-754 binary32, buf/tensor/label a u32 symbol
index, ints a u16 count followed by one i32 per entry. Names are interned so repeated buffer
names cost four bytes; first-use order makes the output a pure function of the program.
"""

from __future__ import annotations

import struct

from flowc.isa.errors import DecodeError, IsaError
from flowc.isa.instructions import ISA, Instr, Program, instr_class_by_opcode, structure_error
from flowc.isa.operands import SIGILS

MAGIC = b"FCIMISA\0"

#: struct codes of the fixed-width operand types (names are u32 symbol indices).
FIXED_CODES = {"u8": "B", "u16": "H", "u32": "I", "i32": "i", "f32": "f", "buf": "I",
               "tensor": "I", "label": "I"}


def encode(program: Program) -> bytes:
    """Deterministic bytes of a valid program (validates first; ProgramError if invalid)."""
    program.validate()
    symbols: dict[str, int] = {}
    body = bytearray(struct.pack("<I", len(program.instructions)))
    for ins in program.instructions:
        body += struct.pack("<B", ins.opcode)
        for op, value in zip(ins.definition.operands, ins.operand_values(), strict=True):
            if op.type in SIGILS:
                value = symbols.setdefault(value, len(symbols))
            if op.type == "ints":
                body += struct.pack(f"<H{len(value)}i", len(value), *value)
            else:
                body += struct.pack("<" + FIXED_CODES[op.type], value)
    head = bytearray(MAGIC + struct.pack("<HI", ISA.version, len(symbols)))
    for name in symbols:
        raw = name.encode("utf-8")
        head += struct.pack("<H", len(raw)) + raw
    return bytes(head + body)


class _Reader:
    """Cursor over the input that turns every short read into a DecodeError."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            have = len(self.data) - self.pos
            raise DecodeError(f"truncated data: {what} needs {size} bytes at offset {self.pos}, "
                              f"only {have} left")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def take_bytes(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            have = len(self.data) - self.pos
            raise DecodeError(f"truncated data: {what} needs {n} bytes at offset {self.pos}, "
                              f"only {have} left")
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw


def decode(data: bytes) -> Program:
    """Program from encode()'s bytes; DecodeError names the problem and the byte offset."""
    r = _Reader(bytes(data))
    if r.take_bytes(len(MAGIC), "magic") != MAGIC:
        raise DecodeError(f"bad magic {bytes(data[:len(MAGIC)])!r}: not a FlexCiM program "
                          f"(expected {MAGIC!r})")
    (version,) = r.take("<H", "ISA version")
    if version != ISA.version:
        raise DecodeError(f"unsupported ISA version {version} (this toolchain reads version "
                          f"{ISA.version})")
    symbols = _read_symbols(r)
    (count,) = r.take("<I", "instruction count")
    instrs = tuple(_read_instr(r, symbols, i) for i in range(count))
    if r.pos != len(r.data):
        raise DecodeError(f"{len(r.data) - r.pos} trailing bytes after the last instruction "
                          f"(offset {r.pos})")
    err = structure_error(instrs)
    if err is not None:
        raise DecodeError(f"invalid program: instruction {err[0]}: {err[1]}")
    return Program(instrs)


def _read_symbols(r: _Reader) -> list[str]:
    (n,) = r.take("<I", "symbol count")
    symbols = []
    for k in range(n):
        (length,) = r.take("<H", f"length of symbol {k}")
        raw = r.take_bytes(length, f"symbol {k}")
        try:
            symbols.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DecodeError(f"symbol {k} is not valid UTF-8 (offset {r.pos - length})") from None
    return symbols


def _read_instr(r: _Reader, symbols: list[str], index: int) -> Instr:
    start = r.pos
    (opcode,) = r.take("<B", f"opcode of instruction {index}")
    cls = instr_class_by_opcode(opcode)
    if cls is None:
        raise DecodeError(f"unknown opcode 0x{opcode:02X} at offset {start} (instruction {index})")
    values = []
    for op in cls.definition.operands:
        what = f"operand {op.name} of instruction {index} ({cls.mnemonic})"
        if op.type == "ints":
            (n,) = r.take("<H", what)
            values.append(r.take(f"<{n}i", what))
            continue
        (value,) = r.take("<" + FIXED_CODES[op.type], what)
        if op.type in SIGILS:
            if value >= len(symbols):
                raise DecodeError(f"{what}: symbol index {value} out of range "
                                  f"({len(symbols)} symbols)")
            value = symbols[value]
        values.append(value)
    try:
        return cls(*values)
    except IsaError as exc:
        raise DecodeError(f"instruction {index} at offset {start}: {exc}") from None
