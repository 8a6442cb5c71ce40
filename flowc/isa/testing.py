"""Hypothesis strategies that build valid instructions and programs from the definition.

Shared by the tests of every stage that consumes programs (assembler, encoder, container,
interpreter). hypothesis is a test dependency only, so it is imported when a strategy is
built, never when flowc is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowc.isa.definition import InsnDef
from flowc.isa.instructions import INSTRUCTION_CLASSES, ISA, Instr, Program
from flowc.isa.operands import INT_RANGES, MAX_INTS_LEN, NAME_PATTERN

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

#: Instructions with structural meaning, placed by programs() itself.
CONTROL = ("halt", "loop.tiles", "loop.end")

#: A few fixed names so that generated programs reuse symbols (dedup in the symbol table).
COMMON_NAMES = ("x", "x_q", "acc", "fc1", "fc1.bias", "model.layers.0.mlp")


def operand_values(type_name: str, max_name_len: int = 12,
                   max_list: int = 6) -> SearchStrategy[object]:
    """Valid values of one operand type (ASCII names, finite float32 values)."""
    from hypothesis import strategies as st

    if type_name in INT_RANGES:
        lo, hi = INT_RANGES[type_name]
        return st.integers(lo, hi)
    if type_name == "f32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if type_name == "ints":
        lo, hi = INT_RANGES["i32"]
        return st.lists(st.integers(lo, hi), max_size=min(max_list, MAX_INTS_LEN)).map(tuple)
    fresh = st.from_regex(
        NAME_PATTERN.replace("*", f"{{0,{max_name_len - 1}}}"), fullmatch=True
    )
    return st.one_of(st.sampled_from(COMMON_NAMES), fresh)


def instructions(insn: InsnDef | str | None = None) -> SearchStrategy[Instr]:
    """One instruction: of the given definition/mnemonic, or any non-control instruction."""
    from hypothesis import strategies as st

    if insn is None:
        return st.one_of(*(instructions(i) for i in ISA.insns if i.mnemonic not in CONTROL))
    if isinstance(insn, str):
        insn = ISA.by_mnemonic[insn]
    cls = INSTRUCTION_CLASSES[insn.mnemonic]
    return st.builds(cls, **{op.name: operand_values(op.type) for op in insn.operands})


def programs(max_segments: int = 8, max_body: int = 6) -> SearchStrategy[Program]:
    """Valid programs: straight-line instructions and tile loops (bodies without control
    instructions, possibly empty), ending in the single halt."""
    from hypothesis import strategies as st

    plain = instructions().map(lambda i: [i])
    loop = st.tuples(
        instructions("loop.tiles"), st.lists(instructions(), max_size=max_body)
    ).map(lambda t: [t[0], *t[1], INSTRUCTION_CLASSES["loop.end"]()])
    segments = st.lists(st.one_of(plain, loop), max_size=max_segments)
    halt = INSTRUCTION_CLASSES["halt"]()
    return segments.map(lambda segs: Program(tuple(i for s in segs for i in s) + (halt,)))
