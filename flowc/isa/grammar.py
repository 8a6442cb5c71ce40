"""The assembly-language grammar, generated from the ISA definition.

One Lark rule per instruction, `i_ld_tile: MN_LD_TILE field=value ...`, with the operands in
definition order and the value syntax fixed by each operand's type. Because the grammar is
generated, an instruction added to `flexcim.isa` is immediately assemblable, and because each
rule names its fields, a parse error can say exactly which operand was expected.

Mnemonics and field names are regex terminals with a word-end lookahead (`v.add` never matches
a prefix of `v.addx`); Lark's contextual lexer only tries the terminals the parser can accept
in its current state, so a label may be spelled like a mnemonic or a field name.
"""

from __future__ import annotations

import re

from lark import Lark

from flowc.isa.definition import IsaDef
from flowc.isa.operands import NAME_PATTERN

_WORD_END = r"(?![A-Za-z0-9_.])"

#: Strict literal syntax, checked after lexing: NUMBER itself is permissive so that `0x10` or
#: `1.2.3` is reported whole as a bad number rather than as a stray character after a prefix.
INT_LITERAL = r"[+-]?[0-9]+"
FLOAT_LITERAL = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"

#: Value syntax per operand type: a terminal or the `ints` rule.
VALUE_SYMBOL = {
    "u8": "NUMBER", "u16": "NUMBER", "u32": "NUMBER", "i32": "NUMBER", "f32": "NUMBER",
    "buf": "BUF", "tensor": "TENSOR", "label": "LABEL", "ints": "ints",
}

#: How error messages describe each value syntax.
VALUE_DESCRIPTION = {
    "NUMBER": "a number", "BUF": "a buffer %name", "TENSOR": "a tensor @name",
    "LABEL": "a bare dotted name", "LSQB": "a list [a,b,...]",
}

_COMMON = rf"""
ints: "[" (NUMBER ("," NUMBER)*)? "]"
NUMBER: /[+-]?\.?[0-9]([eE][+-]|[0-9A-Za-z_.])*/
BUF: /%{NAME_PATTERN}/
TENSOR: /@{NAME_PATTERN}/
LABEL: /{NAME_PATTERN}/
COMMENT: /;[^\n]*/
_NL: /\r?\n/
%ignore COMMENT
%ignore /[ \t\f]+/
"""


def rule_name(mnemonic: str) -> str:
    """Grammar rule of an instruction: `ld.tile` -> `i_ld_tile` (unique: see camel_case)."""
    return "i_" + mnemonic.replace(".", "_")


def mnemonic_terminal(mnemonic: str) -> str:
    """Terminal name of a mnemonic: `ld.tile` -> `MN_LD_TILE`."""
    return "MN_" + mnemonic.replace(".", "_").upper()


def field_terminal(name: str) -> str:
    """Terminal name of an operand key; filtered from the tree (leading underscore)."""
    return f"_K_{name.upper()}"


def assembly_grammar(isa: IsaDef) -> str:
    """The complete Lark grammar text of the assembly language for `isa`."""
    alts = " | ".join(rule_name(i.mnemonic) for i in isa.insns)
    lines = ["start: (_instr? _NL)*", f"_instr: {alts}"]
    fields: dict[str, str] = {}
    for insn in isa.insns:
        parts = [mnemonic_terminal(insn.mnemonic)]
        for op in insn.operands:
            parts.append(f'{field_terminal(op.name)} "=" {VALUE_SYMBOL[op.type]}')
            fields[field_terminal(op.name)] = op.name
        lines.append(f"{rule_name(insn.mnemonic)}: " + " ".join(parts))
    for insn in isa.insns:
        lines.append(f"{mnemonic_terminal(insn.mnemonic)}: /{re.escape(insn.mnemonic)}{_WORD_END}/")
    for term, name in sorted(fields.items()):
        lines.append(f"{term}: /{re.escape(name)}{_WORD_END}/")
    return "\n".join(lines) + "\n" + _COMMON


_parsers: list[tuple[IsaDef, Lark]] = []


def assembly_parser(isa: IsaDef) -> Lark:
    """The LALR parser for `isa`, built on first use and cached (import stays fast)."""
    for known, parser in _parsers:
        if known is isa:
            return parser
    parser = Lark(assembly_grammar(isa), parser="lalr", maybe_placeholders=False)
    _parsers.append((isa, parser))
    return parser
