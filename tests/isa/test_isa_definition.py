"""The definition parser: the package file's content and every validation error's position."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowc.isa import ISA, DefinitionError, parse_definition
from flowc.isa.definition import KNOWN_TYPES, camel_case

# 8 lines: version, 2 types, group, 3 instructions (one with an operand line)
BASE = ('version 1\ntype u32 "u"\ntype buf "b"\ngroup "G" "doc"\ninsn 0x00 halt "h"\n'
        'insn 0x02 loop.tiles "l"\n  n: u32 "n"\ninsn 0x03 loop.end "e"\n')


def test_package_definition_content() -> None:
    assert ISA.version == 1
    assert [t.name for t in ISA.types] == list(KNOWN_TYPES)
    assert [g.title for g in ISA.groups] == ["Control", "CiM macro", "Vector unit",
                                            "Vector unit: plain ops and scans",
                                            "Vector unit: masks, casts and indexing"]
    text = (Path(__file__).parents[2] / "flowc/isa/flexcim.isa").read_text()
    assert len(ISA.insns) == sum(line.startswith("insn ") for line in text.splitlines()) >= 27
    ld = ISA.by_mnemonic["ld.tile"]
    assert (ld.opcode, ld.group, ld.class_name) == (0x11, "CiM macro", "LdTile")
    assert [(o.name, o.type, o.doc) for o in ld.operands] == [
        ("macro", "u8", "macro index"),
        ("w", "tensor", "packed weight (the image holds w.values, w.meta, w.scale)"),
    ]
    assert ISA.by_opcode[0x2A].mnemonic == "v.rmsnorm"
    assert [o.name for o in ISA.by_mnemonic["v.deq"].operands] == [
        "dst", "src", "ascale", "w", "cols"]
    assert len({i.opcode for i in ISA.insns}) == len(ISA.insns)


@pytest.mark.parametrize(("mnemonic", "name"), [
    ("ld.tile", "LdTile"), ("loop.tiles", "LoopTiles"), ("v.quant", "VQuant"),
    ("psum.clr", "PsumClr"), ("cfg.nm", "CfgNm"), ("halt", "Halt"), ("v.layernorm", "VLayernorm"),
])
def test_camel_case(mnemonic: str, name: str) -> None:
    assert camel_case(mnemonic) == name


def test_minimal_definition_parses_and_comments_are_ignored() -> None:
    text = "# header\n\n" + BASE.replace("group", "# between\ngroup") + "# last, no newline"
    isa = parse_definition(text, "m.isa")
    assert [i.mnemonic for i in isa.insns] == ["halt", "loop.tiles", "loop.end"]
    assert isa.insns[1].operands[0].type == "u32"
    assert isa.types[0].doc == "u"


@pytest.mark.parametrize(("text", "where", "message"), [
    ('version 1\ntype q8 "x"\n', "2:6",
     "unknown operand type 'q8'; the toolchain implements u8, u16, u32, i32, f32, buf, tensor, "
     "label, ints"),
    ('version 1\ntype u32 "x"\ntype u32 "y"\n', "3:6", "type 'u32' is declared twice"),
    (BASE + 'insn 0x100 big "b"\n', "9:6", "opcode 0x100 does not fit u8 (0x00..0xFF)"),
    (BASE + 'insn 0x03 again "b"\n', "9:6", "opcode 0x03 is already used by 'loop.end'"),
    (BASE + 'insn 0x04 halt "b"\n', "9:11", "mnemonic 'halt' duplicates 'halt'"),
    (BASE + 'insn 0x04 loop_tiles "b"\n', "9:11",
     "class name of 'loop_tiles' duplicates 'loop.tiles'"),
    (BASE + 'insn 0x04 x "b"\n  a: f32 "f"\n', "10:6",
     "operand 'a' of 'x' has undeclared type 'f32'"),
    (BASE + 'insn 0x04 x "b"\n  opcode: u32 "f"\n', "10:3",
     "operand name 'opcode' of 'x' is reserved"),
    (BASE + 'insn 0x04 x "b"\n  a: u32 "f"\n  a: buf "g"\n', "11:3",
     "operand 'a' of 'x' is repeated"),
    ('type u32 "u"\nversion 1\n', "1:1", "expected 'version' or end of line, found 'type'"),
    ('version 1\ntype u32 "u"\ninsn 0x00 halt "h"\n', "3:6", "instruction before the first group"),
    ('version 1\ngroup "G" "d"\ninsn 0x00 halt "h"\n', "4:1",
     "the toolchain needs an instruction 'loop.tiles'"),
    ('version 1\ntype u32 doc\n', "2:10", 'expected a "quoted doc string", found \'doc\''),
    ('version 1\ngroup "G" "d"\ninsn 0x01 Halt "h"\n', "3:11",
     "expected a mnemonic (lower-case, dotted), found 'Halt'"),
    ('version 70000\n', "1:9", "version 70000 does not fit u16 (1..65535)"),
])
def test_definition_errors(text: str, where: str, message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(text, "bad.isa")
    assert str(info.value) == f"bad.isa:{where}: error: {message}"
