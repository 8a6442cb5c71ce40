"""The FlexCiM instruction set: everything here is derived from `flexcim.isa`.

`ISA` is the parsed definition; each instruction is a frozen dataclass named after its
mnemonic (`LdTile` for `ld.tile`); a `Program` is a tuple of them. `assemble`/`disassemble`
convert to and from text, `encode`/`decode` to and from the binary form. The assembler's Lark
parser is built on first use, so importing this package only parses the small definition.
"""

from __future__ import annotations

from flowc.isa import instructions as _instructions
from flowc.isa.asm import assemble, assemble_bytes, disassemble
from flowc.isa.binary import decode, encode
from flowc.isa.definition import InsnDef, IsaDef, OperandDef, parse_definition
from flowc.isa.errors import (
    AsmError,
    DecodeError,
    DefinitionError,
    IsaError,
    OperandError,
    ProgramError,
)
from flowc.isa.instructions import (
    CLASS_NAMES,
    INSTRUCTION_CLASSES,
    ISA,
    Instr,
    Program,
    instr_class,
    instr_class_by_opcode,
)

globals().update({name: getattr(_instructions, name) for name in CLASS_NAMES})

__all__ = [
    "ISA",
    "INSTRUCTION_CLASSES",
    "AsmError",
    "DecodeError",
    "DefinitionError",
    "InsnDef",
    "Instr",
    "IsaDef",
    "IsaError",
    "OperandDef",
    "OperandError",
    "Program",
    "ProgramError",
    "assemble",
    "assemble_bytes",
    "decode",
    "disassemble",
    "encode",
    "instr_class",
    "instr_class_by_opcode",
    "parse_definition",
    *CLASS_NAMES,
]
