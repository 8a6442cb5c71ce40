"""Render the instruction reference `docs/isa.md` from the definition.

The reference is generated, never edited: a test compares the committed file with `render()`,
so the docs cannot drift from the assembler and the encoder. Regenerate with
`python -m flowc.isa.docgen docs/isa.md`.
"""

from __future__ import annotations

import os
import sys
import tempfile

from flowc.isa.asm import assemble, disassemble
from flowc.isa.binary import FIXED_CODES, MAGIC, encode
from flowc.isa.definition import InsnDef, IsaDef
from flowc.isa.instructions import ISA
from flowc.isa.operands import INT_RANGES, SIGILS, placeholder

#: The GEMM lowering of docs/architecture.md, assembled (so checked) when the doc is rendered.
EXAMPLE = """\
; one fully connected layer fc1: 2:4 sparse int8 weights, per-token int8 activations
layer name=fc1 kind=gemm
v.quant dst=%x_q scale=%x_s src=%x
psum.clr dst=%fc1_acc like=%x_q cols=512
cfg.nm macro=0 n=2 m=4
loop.tiles n_tiles=16 k_tiles=4
  ld.tile macro=0 w=@fc1
  ld.act macro=0 src=%x_q
  cim macro=0
  merge macro=0
  acc macro=0 dst=%fc1_acc
loop.end
v.deq dst=%fc1_y src=%fc1_acc ascale=%x_s w=@fc1 cols=500
v.bias dst=%fc1_out src=%fc1_y b=@fc1.bias
v.gelu dst=%h src=%fc1_out approx=1
v.scale dst=%h2 src=%h s=0.125
v.reshape dst=%y src=%h2 shape=[-1,8,64]
halt
"""

_SYNTAX = """\
One instruction per line: `mnemonic field=value field=value ...`. Operands are written with
their names, in the order of the tables below (another order is an error that names the
operand expected there, so every program has one canonical spelling). `;` starts a comment;
blank lines and indentation are ignored (the disassembler indents loop bodies by two spaces).
f32 literals are rounded to the nearest float32; the disassembler prints the shortest literal
that reads back as the same value. Errors are reported as `FILE:LINE:COL: error: ...`.

A program ends with exactly one `halt`; a `loop.tiles` is closed by `loop.end` before any
other `loop.tiles` (loops do not nest)."""


def _md(text: str) -> str:
    """Escape the characters of definition prose that Markdown would take as markup."""
    return text.replace("*", "\\*").replace("|", "\\|")


def _encoding_size(type_name: str) -> str:
    if type_name == "ints":
        return "2 + 4n"
    size = {"B": 1, "H": 2, "I": 4, "i": 4, "f": 4}[FIXED_CODES[type_name]]
    return str(size)


def _encoding_text(type_name: str) -> str:
    if type_name in SIGILS:
        return "u32 symbol index"
    if type_name == "ints":
        return "u16 count n, then n x i32"
    if type_name == "f32":
        return "IEEE-754 binary32"
    return f"{type_name}, little-endian" if type_name != "u8" else "u8"


def syntax_line(insn: InsnDef) -> str:
    """`mnemonic field=<type> ...` as shown in the reference."""
    ops = " ".join(f"{op.name}={placeholder(op.type)}" for op in insn.operands)
    return f"{insn.mnemonic} {ops}".rstrip()


def _insn_section(insn: InsnDef) -> list[str]:
    fields = [f"0x{insn.opcode:02X}"] + [f"{op.name}: {_wire(op.type)}" for op in insn.operands]
    fixed = 1 + sum(int(_encoding_size(o.type)) for o in insn.operands if o.type != "ints")
    size = f"{fixed} byte{'s' if fixed > 1 else ''}" + (" + 2 + 4n per ints operand" if
                               any(o.type == "ints" for o in insn.operands) else "")
    out = [f"### `{insn.mnemonic}`", "", _md(insn.doc), "",
           "| opcode | syntax | Python class | encoded size |", "|---|---|---|---|",
           f"| `0x{insn.opcode:02X}` | `{syntax_line(insn)}` | `{insn.class_name}` | {size} |",
           ""]
    if insn.operands:
        out += ["| operand | type | bytes | description |", "|---|---|---|---|"]
        out += [f"| `{op.name}` | {op.type} | {_encoding_size(op.type)} | {_md(op.doc)} |"
                for op in insn.operands]
        out.append("")
    out += ["Encoding: `" + " | ".join(fields) + "`", ""]
    return out


def _wire(type_name: str) -> str:
    if type_name == "ints":
        return "u16 n + n x i32"
    return "u32 symbol" if type_name in SIGILS else type_name


def _types_section(isa: IsaDef) -> list[str]:
    out = ["## Operand types", "", "| type | written | range | binary | meaning |",
           "|---|---|---|---|---|"]
    for t in isa.types:
        rng = "{}..{}".format(*INT_RANGES[t.name]) if t.name in INT_RANGES else ""
        if t.name in SIGILS:
            rng = "`[A-Za-z_][A-Za-z0-9_.]*`"
        elif t.name == "f32":
            rng = "finite, exact in float32"
        elif t.name == "ints":
            rng = "up to 65535 x i32"
        out.append(f"| {t.name} | `{placeholder(t.name)}` | {rng} | {_encoding_text(t.name)} "
                   f"| {_md(t.doc)} |")
    return out + [""]


def _binary_section(isa: IsaDef) -> list[str]:
    return [
        "## Binary format", "",
        "Little-endian. A program is a header, a symbol table and the instructions:", "",
        "| field | encoding |", "|---|---|",
        f"| magic | 8 bytes `{MAGIC!r}` |",
        f"| version | u16 (this definition: {isa.version}) |",
        "| symbol count | u32 |",
        "| symbols | per symbol: u16 byte length, UTF-8 bytes; every distinct buf/tensor/label "
        "name in order of first use |",
        "| instruction count | u32 |",
        "| instructions | per instruction: u8 opcode, then its operands in table order |", "",
    ]


def render(isa: IsaDef = ISA) -> str:
    """The complete Markdown reference for `isa`."""
    out = ["# FlexCiM instruction set reference", "",
           "Generated from `flowc/isa/flexcim.isa` by `python -m flowc.isa.docgen docs/isa.md`;"
           " do not edit by hand.", "",
           f"ISA version {isa.version}, {len(isa.insns)} instructions.", "",
           "## Assembly syntax", "", _SYNTAX, ""]
    out += _types_section(isa)
    out += _binary_section(isa)
    out += ["## Instructions", ""]
    for group in isa.groups:
        out += [f"- {group.title}: " + ", ".join(
            f"`{i.mnemonic}`" for i in isa.group_insns(group.title))]
    out.append("")
    for group in isa.groups:
        out += [f"## {group.title}", "", _md(group.doc), ""]
        for insn in isa.group_insns(group.title):
            out += _insn_section(insn)
    program = assemble(EXAMPLE, "example")
    out += ["## Example program", "",
            f"A GEMM layer as the backend lowers it ({len(program.instructions)} instructions, "
            f"{len(encode(program))} bytes encoded):", "",
            "```", disassemble(program).rstrip("\n"), "```", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Write the reference to argv[0] atomically (temp file + rename), or print it."""
    text = render()
    if not argv:
        sys.stdout.write(text)
        return 0
    target = argv[0]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(target)), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
