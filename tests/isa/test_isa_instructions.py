"""Generated instruction classes, operand value checks and the Program structure rules."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable

import numpy as np
import pytest

import flowc.isa as isa
from flowc.isa import (
    ISA,
    CfgNm,
    Halt,
    Instr,
    Layer,
    LdTile,
    LoopEnd,
    LoopTiles,
    OperandError,
    Program,
    ProgramError,
    PsumClr,
    VQuant,
    VReshape,
    VScale,
    instr_class,
)


def test_one_class_per_instruction_with_class_attributes() -> None:
    for insn in ISA.insns:
        cls = instr_class(insn.mnemonic)
        assert getattr(isa, insn.class_name) is cls
        assert issubclass(cls, Instr) and dataclasses.is_dataclass(cls)
        assert (cls.mnemonic, cls.opcode, cls.definition) == (insn.mnemonic, insn.opcode, insn)
        assert [f.name for f in dataclasses.fields(cls)] == [o.name for o in insn.operands]
    assert (LdTile.opcode, PsumClr.mnemonic, CfgNm.opcode, Halt.opcode) == (0x11, "psum.clr",
                                                                            0x10, 0x00)
    assert VQuant.definition.operands[1].name == "scale"
    with pytest.raises(KeyError, match="unknown mnemonic 'ld.tle'"):
        instr_class("ld.tle")


def test_instances_are_frozen_hashable_slotted_and_pickle() -> None:
    a = LdTile(macro=0, w="fc1")
    assert a == LdTile(0, "fc1") and hash(a) == hash(LdTile(0, "fc1"))
    assert a != LdTile(1, "fc1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.macro = 1  # type: ignore[misc]
    assert not hasattr(a, "__dict__")
    assert pickle.loads(pickle.dumps(a)) == a
    assert str(a) == "ld.tile macro=0 w=@fc1"
    assert a.operand_values() == (0, "fc1")


def test_values_are_canonicalised() -> None:
    r = VReshape(dst="y", src="x", shape=[np.int64(-1), 8])
    assert r.shape == (-1, 8) and type(r.shape[0]) is int
    assert VScale("y", "x", 2).s == 2.0 and type(VScale("y", "x", 2).s) is float
    assert VScale("y", "x", np.float32(0.1)).s == float(np.float32(0.1))
    assert LoopTiles(n_tiles=np.uint32(3), k_tiles=2**32 - 1).n_tiles == 3
    assert Layer(name="model.layers.0.mlp", kind="gemm").name == "model.layers.0.mlp"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: CfgNm(256, 2, 4), "cfg.nm: operand macro: 256 is out of range for u8 (0..255)"),
    (lambda: CfgNm(-1, 2, 4), "cfg.nm: operand macro: -1 is out of range for u8 (0..255)"),
    (lambda: LoopTiles(2**32, 1), "loop.tiles: operand n_tiles: 4294967296 is out of range for u32 "
                                  "(0..4294967295)"),
    (lambda: CfgNm(True, 2, 4), "cfg.nm: operand macro: expected an integer (u8), got True"),
    (lambda: CfgNm(1.0, 2, 4), "cfg.nm: operand macro: expected an integer (u8), got 1.0"),
    (lambda: VScale("y", "x", 0.1), "v.scale: operand s: 0.1 is not exactly representable as f32 "
                                    "(nearest is 0.10000000149011612)"),
    (lambda: VScale("y", "x", float("nan")), "v.scale: operand s: nan is not finite (f32 operands "
                                             "must be finite)"),
    (lambda: VScale("y", "x", 1e39), "v.scale: operand s: 1e+39 is out of range for f32"),
    (lambda: VScale("y", "x", "1.0"), "v.scale: operand s: expected a number (f32), got '1.0'"),
    (lambda: LdTile(0, "@fc1"), "ld.tile: operand w: '@fc1' is not a valid tensor name "
                                "([A-Za-z_][A-Za-z0-9_.]*, no sigil)"),
    (lambda: LdTile(0, "1fc"), "ld.tile: operand w: '1fc' is not a valid tensor name "
                               "([A-Za-z_][A-Za-z0-9_.]*, no sigil)"),
    (lambda: LdTile(0, "fc\u00e9"), "ld.tile: operand w: 'fcé' is not a valid tensor name "
                                    "([A-Za-z_][A-Za-z0-9_.]*, no sigil)"),
    (lambda: VReshape("y", "x", "12"), "v.reshape: operand shape: expected a list of integers "
                                       "(ints), got '12'"),
    (lambda: VReshape("y", "x", [1, 2**31]), "v.reshape: operand shape: 2147483648 is out of range "
                                             "for i32 (-2147483648..2147483647)"),
])
def test_operand_errors(make: Callable[[], Instr], message: str) -> None:
    with pytest.raises(OperandError) as info:
        make()
    assert str(info.value) == message


def _p(*instrs: Instr) -> Program:
    return Program(instrs)


BODY = (LdTile(0, "w"), LoopEnd())


@pytest.mark.parametrize(("program", "message"), [
    (_p(), "instruction 0: program does not end with halt"),
    (_p(LdTile(0, "w")), "instruction 1: program does not end with halt"),
    (_p(Halt(), Halt()),
     "instruction 1: instruction after halt (halt must be the last instruction)"),
    (_p(LoopEnd(), Halt()), "instruction 0: loop.end without an open loop.tiles"),
    (_p(LoopTiles(1, 1), LoopTiles(1, 1), *BODY, LoopEnd(), Halt()),
     "instruction 1: nested loop.tiles: the loop opened at instruction 0 is still open"),
    (_p(LoopTiles(1, 1), LdTile(0, "w")), "instruction 0: loop.tiles is never closed by loop.end"),
    (_p(LoopTiles(1, 1), Halt()), "instruction 1: halt inside the loop opened at instruction 0"),
])
def test_program_structure_errors(program: Program, message: str) -> None:
    with pytest.raises(ProgramError) as info:
        program.validate()
    assert str(info.value) == message


def test_program_valid_and_coerced() -> None:
    p = Program([LoopTiles(2, 3), *BODY, LoopTiles(1, 1), LoopEnd(), Halt()])  # type: ignore[arg-type]
    assert isinstance(p.instructions, tuple) and p.validate() is p
    with pytest.raises(ProgramError, match="instruction 1: expected an instruction, got str"):
        Program((Halt(), "halt"))  # type: ignore[arg-type]
