"""Assembler and disassembler of FlexCiM programs.

Syntax (one instruction per line): `mnemonic field=value ...` with the operands in definition
order, `;` comments, blank lines and indentation ignored. Values: `%buf`, `@tensor`, bare
dotted labels, integers, decimal floats (`-1.5e-3`) and integer lists `[a,b,...]`.

Operand order is fixed: a program has exactly one spelling up to whitespace and comments, so
the disassembly of a program is canonical and an operand in the wrong place is reported as
the operand that was expected there. f32 literals are rounded to the nearest float32 (the
disassembler writes the shortest literal that reads back as the same float32).
"""

from __future__ import annotations

import difflib
import re

from lark import Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from flowc.isa.definition import InsnDef
from flowc.isa.errors import AsmError, OperandError
from flowc.isa.grammar import (
    FLOAT_LITERAL,
    INT_LITERAL,
    VALUE_DESCRIPTION,
    assembly_parser,
    rule_name,
)
from flowc.isa.instructions import INSTRUCTION_CLASSES, ISA, Instr, Program, structure_error
from flowc.isa.operands import INT_RANGES, SIGILS, check_value, placeholder, to_f32

_RULES: dict[str, InsnDef] = {rule_name(i.mnemonic): i for i in ISA.insns}
_INT_LITERAL = re.compile(INT_LITERAL + r"\Z")
_FLOAT_LITERAL = re.compile(FLOAT_LITERAL + r"\Z")
_FIELD_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=")
_WORD = re.compile(r"[^\s=,\[\];]+")
_MAX_DIGITS = max(len(str(abs(v))) for r in INT_RANGES.values() for v in r)


def assemble(text: str, filename: str = "<string>") -> Program:
    """Parse assembly text into a validated Program; AsmError (one line, FILE:LINE:COL)."""
    src = text if text.endswith("\n") else text + "\n"
    try:
        tree = assembly_parser(ISA).parse(src)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, src, filename) from None
    instrs: list[Instr] = []
    where: list[tuple[int, int]] = []
    for node in tree.children:
        mnemonic_tok, *values = node.children
        instrs.append(_build(_RULES[node.data], values, filename))
        where.append((mnemonic_tok.line, mnemonic_tok.column))
    err = structure_error(tuple(instrs), lambda i: f"line {where[i][0]}")
    if err is not None:
        index, message = err
        if index == len(instrs):
            line, col = text.count("\n") + 1, len(text.rsplit("\n", 1)[-1]) + 1
            message = "expected halt as the last instruction, found end of input"
        else:
            line, col = where[index]
        raise AsmError(filename, line, col, message)
    return Program(tuple(instrs))


def assemble_bytes(data: bytes, filename: str = "<bytes>") -> Program:
    """`assemble` of a file's raw bytes: text must be UTF-8; the first byte that is not is
    an AsmError at its FILE:LINE:COL (a Latin-1 comment, a UTF-16 file, a stray 0xFF)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise AsmError(filename, line, col, f"not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    return assemble(text, filename)


def disassemble(program: Program) -> str:
    """Canonical text: one instruction per line, loop bodies indented two spaces."""
    lines = []
    depth = 0
    for ins in program.instructions:
        if ins.mnemonic == "loop.end":
            depth = max(depth - 1, 0)
        lines.append("  " * depth + str(ins))
        if ins.mnemonic == "loop.tiles":
            depth += 1
    return "".join(line + "\n" for line in lines)


def _build(insn: InsnDef, values: list[Token | Tree], filename: str) -> Instr:
    kwargs = {}
    for op, raw in zip(insn.operands, values, strict=True):
        tok = raw.children[0] if isinstance(raw, Tree) and raw.children else raw
        try:
            kwargs[op.name] = _value(op.type, raw)
        except OperandError as exc:
            tok = getattr(exc, "tok", tok)
            line, col = getattr(tok, "line", 0), getattr(tok, "column", 0)
            message = f"{insn.mnemonic}: operand {op.name}: {exc}"
            raise AsmError(filename, line, col, message) from None
    return INSTRUCTION_CLASSES[insn.mnemonic](**kwargs)


class _ListEntryError(OperandError):
    """A bad entry of an `ints` list, carrying the token to point the error at."""

    def __init__(self, message: str, tok: Token) -> None:
        super().__init__(message)
        self.tok = tok


def _value(type_name: str, raw: Token | Tree) -> object:
    if isinstance(raw, Tree):  # ints
        items = []
        for tok in raw.children:
            try:
                items.append(_value("i32", tok))
            except OperandError as exc:
                raise _ListEntryError(f"list entry: {exc}", tok) from None
        return check_value("ints", items)
    text = str(raw)
    if type_name in SIGILS:
        return check_value(type_name, text[len(SIGILS[type_name]) :])
    if type_name in INT_RANGES:
        if not _INT_LITERAL.match(text):
            raise OperandError(f"expected an integer ({type_name}), found {text!r}")
        digits = text.lstrip("+-").lstrip("0")
        if len(digits) > _MAX_DIGITS:  # range-checked before conversion (no 100k-digit ints)
            lo, hi = INT_RANGES[type_name]
            raise OperandError(f"{text[:12]}... ({len(digits)} digits) is out of range for "
                               f"{type_name} ({lo}..{hi})")
        return check_value(type_name, int(text))
    if not _FLOAT_LITERAL.match(text):
        raise OperandError(f"expected a number ({type_name}), found {text!r}")
    try:
        return to_f32(float(text))
    except OverflowError:
        raise OperandError(f"{text} is out of range for f32") from None


def _syntax_error(exc: UnexpectedInput, src: str, filename: str) -> AsmError:
    """Turn Lark's exception (position + acceptable terminals) into one friendly line."""
    lines = src.splitlines()
    line_no = exc.line if exc.line > 0 else len(lines)
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    col = exc.column if exc.column > 0 else 1
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.accepts or exc.expected)
        found_text = None if exc.token.type in ("_NL", "$END") else str(exc.token)
    else:
        assert isinstance(exc, UnexpectedCharacters)
        expected = set(exc.allowed or ())
        m = _WORD.match(src, exc.pos_in_stream)
        found_text = m.group(0) if m else src[exc.pos_in_stream]
    if found_text is None:
        col = len(line.split(";", 1)[0].rstrip()) + 1
    found = "end of line" if found_text is None else repr(found_text)
    words = _WORD.findall(line.split(";", 1)[0])
    insn = ISA.by_mnemonic.get(words[0]) if words else None
    message = _describe(expected, insn, line[: col - 1], found_text, found)
    return AsmError(filename, line_no, col, message)


def _describe(expected: set[str], insn: InsnDef | None, prefix: str, found_text: str | None,
              found: str) -> str:
    if any(t.startswith("MN_") for t in expected) or insn is None:
        close = difflib.get_close_matches(found_text or "", list(ISA.by_mnemonic), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return f"expected an instruction mnemonic, found {found}{hint}"
    name = insn.mnemonic
    keys = [t for t in expected if t.startswith("_K_")]
    if keys:
        op = next(o for o in insn.operands if "_K_" + o.name.upper() == keys[0])
        want = f"expected operand {op.name}={placeholder(op.type)}, found {found}"
        if found_text is not None and found_text in {o.name for o in insn.operands}:
            order = " ".join(o.name for o in insn.operands)
            want += f" (operands are written in definition order: {order})"
        return f"{name}: {want}"
    fields = _FIELD_BEFORE.findall(prefix)
    op_type = next((o.type for o in insn.operands if fields and o.name == fields[-1]), "?")
    if expected == {"_NL"}:
        takes = " ".join(o.name for o in insn.operands) or "no operands"
        return f"{name}: expected end of line, found {found} ({name} takes: {takes})"
    if "EQUAL" in expected:
        key = _WORD.findall(prefix)[-1]
        return f"{name}: expected '=' after operand {key}, found {found}"
    descs = []
    for t in sorted(expected):
        if t == "NUMBER":
            is_int = op_type in INT_RANGES or op_type == "ints"
            descs.append(f"an integer ({op_type})" if is_int else f"a number ({op_type})")
        else:
            descs.append(VALUE_DESCRIPTION.get(t) or {"COMMA": "','", "RSQB": "']'"}.get(t, t))
    field = fields[-1] if fields else "?"
    return f"{name}: operand {field}: expected {' or '.join(descs)}, found {found}"
