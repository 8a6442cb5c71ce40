"""Assembler and disassembler: canonical text, round trips, exact error positions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from flowc.isa import (
    ISA,
    Acc,
    AsmError,
    Cim,
    Halt,
    LdAct,
    LdTile,
    LoopEnd,
    LoopTiles,
    Program,
    VLayernorm,
    VPermute,
    VScale,
    assemble,
    disassemble,
)
from flowc.isa.grammar import assembly_grammar, rule_name
from flowc.isa.testing import programs

CANONICAL = """\
layer name=model.fc1 kind=gemm
v.quant dst=%x_q scale=%x_s src=%x
psum.clr dst=%acc like=%x_q cols=512
cfg.nm macro=0 n=2 m=4
loop.tiles n_tiles=16 k_tiles=4
  ld.tile macro=0 w=@fc1
  ld.act macro=0 src=%x_q
  cim macro=0
  merge macro=0
  acc macro=0 dst=%acc
loop.end
v.deq dst=%y src=%acc ascale=%x_s w=@fc1 cols=500
v.layernorm dst=%z src=%y w=@ln.w b=@ln.b eps=1e-05
v.scale dst=%z2 src=%z s=-0.125
v.reshape dst=%r src=%z2 shape=[-1,8,64]
v.permute dst=%p src=%r dims=[]
halt
"""


def test_canonical_text_round_trips_byte_identical() -> None:
    p = assemble(CANONICAL, "c.s")
    assert len(p.instructions) == 17
    assert p.instructions[5] == LdTile(macro=0, w="fc1")
    assert p.instructions[12] == VLayernorm("z", "y", "ln.w", "ln.b", float(np.float32(1e-5)))
    assert p.instructions[13].s == -0.125
    assert p.instructions[15] == VPermute("p", "r", ())
    assert disassemble(p) == CANONICAL
    assert assemble(disassemble(p)) == p


def test_layout_is_free_and_disassembly_canonical() -> None:
    messy = ("; a comment line\r\n\n   loop.tiles   n_tiles = 2 k_tiles=1 ; trailing\n"
             "ld.tile macro=0 w=@w\n\t\tcim macro=+0\nloop.end\nv.scale dst=%a src=%b s=0.1\n"
             "v.reshape dst=%a src=%b shape=[ 1 , -2 ]\nhalt")
    p = assemble(messy)
    assert disassemble(p) == (
        "loop.tiles n_tiles=2 k_tiles=1\n  ld.tile macro=0 w=@w\n  cim macro=0\nloop.end\n"
        "v.scale dst=%a src=%b s=0.1\nv.reshape dst=%a src=%b shape=[1,-2]\nhalt\n"
    )
    # decimal literals round to the nearest float32; the shortest literal reads back exactly
    assert p.instructions[4] == VScale("a", "b", float(np.float32(0.1)))


def test_labels_may_be_spelled_like_mnemonics_and_fields() -> None:
    p = assemble("layer name=halt kind=loop.end\nhalt\n")
    assert (p.instructions[0].name, p.instructions[0].kind) == ("halt", "loop.end")


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0.0"), (-0.0, "-0.0"), (1.0, "1.0"), (100.0, "100.0"), (1e16, "1e+16"),
    (1e-4, "0.0001"), (1.5e-5, "1.5e-05"), (123456.7, "123456.7"), (1e-45, "1e-45"),
    (3.4028234663852886e38, "3.4028235e+38"), (16777216.0, "16777216.0"),
])
def test_f32_shortest_text(value: float, text: str) -> None:
    exact = float(np.float32(value))
    line = disassemble(Program((VScale("a", "b", exact), Halt()))).splitlines()[0]
    assert line == f"v.scale dst=%a src=%b s={text}"
    assert assemble(line + "\nhalt").instructions[0].s == exact


def test_disassembly_indents_loop_bodies() -> None:
    p = Program((LoopTiles(1, 2), LdAct(1, "x"), Cim(1), Acc(1, "o"), LoopEnd(), Halt()))
    assert disassemble(p) == ("loop.tiles n_tiles=1 k_tiles=2\n  ld.act macro=1 src=%x\n"
                              "  cim macro=1\n  acc macro=1 dst=%o\nloop.end\nhalt\n")


def test_grammar_has_one_rule_per_mnemonic_with_fields_in_order() -> None:
    grammar = assembly_grammar(ISA)
    for insn in ISA.insns:
        assert f"\n{rule_name(insn.mnemonic)}: MN_" in grammar
    assert ('i_v_deq: MN_V_DEQ _K_DST "=" BUF _K_SRC "=" BUF _K_ASCALE "=" BUF _K_W "=" TENSOR '
            '_K_COLS "=" NUMBER') in grammar


@settings(max_examples=150, deadline=None)
@given(programs())
def test_random_programs_round_trip(p: Program) -> None:
    text = disassemble(p)
    q = assemble(text, "gen.s")
    assert q == p
    assert disassemble(q) == text


ERRORS = [
    ("ld.tlie macro=0 w=@x\nhalt", "1:1",
     "expected an instruction mnemonic, found 'ld.tlie' (did you mean ld.tile or ld.act?)"),
    ("halt\nv.addx dst=%a a=%b b=%c\n", "2:1",
     "expected an instruction mnemonic, found 'v.addx' (did you mean v.add or v.max or v.amax?)"),
    ("  %x\nhalt", "1:3", "expected an instruction mnemonic, found '%x'"),
    ("v.quant dst=%a src=%b scale=%c\nhalt", "1:16",
     "v.quant: expected operand scale=%buf, found 'src' (operands are written in definition "
     "order: dst scale src)"),
    ("v.quant dst=%a scale=%c ; no src\nhalt", "1:24",
     "v.quant: expected operand src=%buf, found end of line"),
    ("cim\nhalt", "1:4", "cim: expected operand macro=<u8>, found end of line"),
    ("\n\ncim macro=300\nhalt", "3:11", "cim: operand macro: 300 is out of range for u8 (0..255)"),
    ("cim macro=-1\nhalt", "1:11", "cim: operand macro: -1 is out of range for u8 (0..255)"),
    ("cim macro=1.5\nhalt", "1:11", "cim: operand macro: expected an integer (u8), found '1.5'"),
    ("cim macro=0x10\nhalt", "1:11", "cim: operand macro: expected an integer (u8), found '0x10'"),
    ("cim macro=0 foo=1\nhalt", "1:13",
     "cim: expected end of line, found 'foo' (cim takes: macro)"),
    ("halt now\n", "1:6", "halt: expected end of line, found 'now' (halt takes: no operands)"),
    ("ld.tile macro=0 w=fc1\nhalt", "1:19",
     "ld.tile: operand w: expected a tensor @name, found 'fc1'"),
    ("ld.tile macro=0 w=%fc1\nhalt", "1:19",
     "ld.tile: operand w: expected a tensor @name, found '%fc1'"),
    ("ld.tile macro 0 w=@x\nhalt", "1:15", "ld.tile: expected '=' after operand macro, found '0'"),
    ("v.reshape dst=%a src=%b shape=[1,x]\nhalt", "1:34",
     "v.reshape: operand shape: expected an integer (ints), found 'x'"),
    ("v.reshape dst=%a src=%b shape=[1,9999999999]\nhalt", "1:34",
     "v.reshape: operand shape: list entry: 9999999999 is out of range for i32 "
     "(-2147483648..2147483647)"),
    ("v.reshape dst=%a src=%b shape=3\nhalt", "1:31",
     "v.reshape: operand shape: expected a list [a,b,...], found '3'"),
    ("v.scale dst=%a src=%b s=1e39\nhalt", "1:25",
     "v.scale: operand s: 1e39 is out of range for f32"),
    ("v.scale dst=%a src=%b s=1.2.3\nhalt", "1:25",
     "v.scale: operand s: expected a number (f32), found '1.2.3'"),
    ("loop.end\nhalt", "1:1", "loop.end without an open loop.tiles"),
    ("loop.tiles n_tiles=1 k_tiles=1\n  loop.tiles n_tiles=1 k_tiles=1\nloop.end\nhalt", "2:3",
     "nested loop.tiles: the loop opened at line 1 is still open"),
    ("loop.tiles n_tiles=1 k_tiles=1\n  cim macro=0\nhalt", "3:1",
     "halt inside the loop opened at line 1"),
    ("loop.tiles n_tiles=1 k_tiles=1\n  cim macro=0\n", "1:1",
     "loop.tiles is never closed by loop.end"),
    ("cim macro=0\n", "2:1", "expected halt as the last instruction, found end of input"),
    ("cim macro=0", "1:12", "expected halt as the last instruction, found end of input"),
    ("", "1:1", "expected halt as the last instruction, found end of input"),
    ("halt\n; done\ncim macro=0\n", "3:1",
     "instruction after halt (halt must be the last instruction)"),
]


@pytest.mark.parametrize(("text", "where", "message"), ERRORS)
def test_assembly_errors(text: str, where: str, message: str) -> None:
    with pytest.raises(AsmError) as info:
        assemble(text, "prog.s")
    err = info.value
    assert str(err) == f"prog.s:{where}: error: {message}"
    assert "\n" not in str(err)
    assert f"{err.line}:{err.column}" == where
