"""Instruction classes generated from the definition, and the Program that holds them.

Each instruction of `flexcim.isa` becomes a frozen, slotted dataclass named after its mnemonic
(`ld.tile` -> `LdTile`) whose fields are the operands in definition order. The classes are
built once at import and bound in this module's namespace, so they pickle and import by name
(`from flowc.isa import LdTile`). Constructors canonicalise and check every operand value, so
an instruction that exists is always printable and encodable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from flowc.isa.definition import InsnDef, IsaDef, load_isa
from flowc.isa.errors import OperandError, ProgramError
from flowc.isa.operands import check_value, format_value

#: The parsed definition, loaded once from the package data file.
ISA: IsaDef = load_isa()

_PY_TYPES: dict[str, Any] = {
    "u8": int, "u16": int, "u32": int, "i32": int, "f32": float,
    "buf": str, "tensor": str, "label": str, "ints": tuple[int, ...],
}


class Instr:
    """Base of every instruction class; the class attributes describe the instruction."""

    __slots__ = ()
    mnemonic: ClassVar[str]
    opcode: ClassVar[int]
    definition: ClassVar[InsnDef]

    def __post_init__(self) -> None:
        for op in self.definition.operands:
            try:
                value = check_value(op.type, getattr(self, op.name))
            except OperandError as exc:
                raise OperandError(f"{self.mnemonic}: operand {op.name}: {exc}") from None
            object.__setattr__(self, op.name, value)

    def operand_values(self) -> tuple[Any, ...]:
        """Operand values in definition order (the order of text and binary encodings)."""
        return tuple(getattr(self, op.name) for op in self.definition.operands)

    def __str__(self) -> str:
        """The canonical assembly line of this instruction (without indentation)."""
        parts = [self.mnemonic]
        for op in self.definition.operands:
            parts.append(f"{op.name}={format_value(op.type, getattr(self, op.name))}")
        return " ".join(parts)


def _make_class(insn: InsnDef) -> type[Instr]:
    fields = [(op.name, _PY_TYPES[op.type]) for op in insn.operands]
    namespace = {
        "mnemonic": insn.mnemonic,
        "opcode": insn.opcode,
        "definition": insn,
        "__doc__": f"`{insn.mnemonic}` (opcode 0x{insn.opcode:02X}): {insn.doc}",
        "__module__": __name__,  # so that instances pickle by reference to this module
    }
    return dataclasses.make_dataclass(
        insn.class_name, fields, bases=(Instr,), namespace=namespace, frozen=True, slots=True
    )


INSTRUCTION_CLASSES: dict[str, type[Instr]] = {i.mnemonic: _make_class(i) for i in ISA.insns}
_BY_OPCODE: dict[int, type[Instr]] = {c.opcode: c for c in INSTRUCTION_CLASSES.values()}
globals().update({c.__name__: c for c in INSTRUCTION_CLASSES.values()})

CLASS_NAMES: tuple[str, ...] = tuple(c.__name__ for c in INSTRUCTION_CLASSES.values())


def instr_class(mnemonic: str) -> type[Instr]:
    """The instruction class of a mnemonic; KeyError names the unknown mnemonic."""
    try:
        return INSTRUCTION_CLASSES[mnemonic]
    except KeyError:
        raise KeyError(f"unknown mnemonic {mnemonic!r}") from None


def instr_class_by_opcode(opcode: int) -> type[Instr] | None:
    """The instruction class of an opcode byte, or None if no instruction has it."""
    return _BY_OPCODE.get(opcode)


def structure_error(
    instrs: tuple[Instr, ...], where: Callable[[int], str] = "instruction {}".format
) -> tuple[int, str] | None:
    """First violation of the program structure rules as (instruction index, message).

    Rules: a loop.tiles is closed by a loop.end before the next loop.tiles (no nesting), and
    the program ends with its only halt. The index is len(instrs) for a missing final halt.
    `where(i)` names instruction i in messages (the assembler names source lines instead).
    """
    open_at: int | None = None
    for i, ins in enumerate(instrs):
        if ins.mnemonic == "loop.tiles":
            if open_at is not None:
                return i, f"nested loop.tiles: the loop opened at {where(open_at)} is still open"
            open_at = i
        elif ins.mnemonic == "loop.end":
            if open_at is None:
                return i, "loop.end without an open loop.tiles"
            open_at = None
        elif ins.mnemonic == "halt":
            if open_at is not None:
                return i, f"halt inside the loop opened at {where(open_at)}"
            if i != len(instrs) - 1:
                return i + 1, "instruction after halt (halt must be the last instruction)"
    if open_at is not None:
        return open_at, "loop.tiles is never closed by loop.end"
    if not instrs or instrs[-1].mnemonic != "halt":
        return len(instrs), "program does not end with halt"
    return None


@dataclasses.dataclass(frozen=True)
class Program:
    """An immutable instruction stream (lists are accepted and stored as a tuple)."""

    instructions: tuple[Instr, ...]

    def __post_init__(self) -> None:
        instrs = tuple(self.instructions)
        for i, ins in enumerate(instrs):
            if not isinstance(ins, Instr):
                raise ProgramError(i, f"expected an instruction, got {type(ins).__name__}")
        object.__setattr__(self, "instructions", instrs)

    def validate(self) -> Program:
        """Check the structure rules (see structure_error); return self, or raise ProgramError."""
        err = structure_error(self.instructions)
        if err is not None:
            raise ProgramError(*err)
        return self
