"""The committed reference is the generated one; the package stays light to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flowc.isa import ISA, assemble, disassemble
from flowc.isa.docgen import EXAMPLE, main, render, syntax_line

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "isa.md").read_text(encoding="utf-8")
    assert committed == render(), "regenerate: python -m flowc.isa.docgen docs/isa.md"


def test_reference_covers_every_instruction() -> None:
    text = render()
    for insn in ISA.insns:
        assert f"### `{insn.mnemonic}`" in text
        assert f"| `0x{insn.opcode:02X}` | `{syntax_line(insn)}` | `{insn.class_name}` |" in text
    reshape = ISA.by_mnemonic["v.reshape"]
    assert syntax_line(reshape) == "v.reshape dst=%buf src=%buf shape=[i32,...]"
    assert "Encoding: `0x11 | macro: u8 | w: u32 symbol`" in text
    assert disassemble(assemble(EXAMPLE)) in text


def test_main_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "isa.md"
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render()
    assert [p.name for p in tmp_path.iterdir()] == ["isa.md"]  # no temp file left behind


def test_import_is_lazy() -> None:
    code = ("import sys, flowc.isa, flowc.isa.grammar as g; "
            "assert not g._parsers, 'assembler parser built at import'; "
            "assert 'hypothesis' not in sys.modules; "
            "from flowc.isa import LdTile, instr_class; assert instr_class('ld.tile') is LdTile")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
