"""Parse the ISA definition file (`flexcim.isa`) into typed, frozen dataclasses.

The definition is the single source of truth: the instruction classes, the assembler grammar,
the disassembler, the binary encoding and `docs/isa.md` are all derived from the `IsaDef`
returned here, so a new instruction is one edit in one file. The file format is documented in
the header comment of `flexcim.isa`; errors point at `FILE:LINE:COL`.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from flowc.isa.errors import DefinitionError

#: Operand types the toolchain implements (value checks, syntax, encoding). The definition may
#: only declare types from this set: a new type needs code, not just a line in the file.
KNOWN_TYPES = ("u8", "u16", "u32", "i32", "f32", "buf", "tensor", "label", "ints")

#: Instructions whose meaning the toolchain itself relies on (program structure rules).
REQUIRED_MNEMONICS = ("halt", "loop.tiles", "loop.end")

#: Attribute names of every instruction class; operands may not shadow them.
RESERVED_OPERAND_NAMES = frozenset({"mnemonic", "opcode", "definition", "operand_values"})

_GRAMMAR = r"""
start: _NL* version _item*
version: "version" INT _NL+
_item: type_decl | group_decl | insn_decl
type_decl: "type" NAME STRING _NL+
group_decl: "group" STRING STRING _NL+
insn_decl: "insn" OPCODE MNEMONIC STRING _NL+ operand*
operand: NAME ":" NAME STRING _NL+

OPCODE: /0[xX][0-9A-Fa-f]+/ | /[0-9]+/
MNEMONIC: /[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
INT: /[0-9]+/
STRING: /"(\\.|[^"\\\n])*"/
COMMENT: /#[^\n]*/
_NL: /\r?\n/
%ignore COMMENT
%ignore /[ \t]+/
"""

_TERMINAL_NAMES = {
    "_NL": "end of line",
    "$END": "end of file",
    "STRING": 'a "quoted doc string"',
    "NAME": "a name",
    "MNEMONIC": "a mnemonic (lower-case, dotted)",
    "OPCODE": "an opcode (0x..)",
    "INT": "an integer",
    "COLON": "':'",
    "VERSION": "'version'",
    "TYPE": "'type'",
    "GROUP": "'group'",
    "INSN": "'insn'",
}


@dataclass(frozen=True)
class OperandDef:
    """One named operand of an instruction; `type` is one of KNOWN_TYPES."""

    name: str
    type: str
    doc: str


@dataclass(frozen=True)
class InsnDef:
    """One instruction: its opcode byte, mnemonic, doc, reference section and operands."""

    opcode: int
    mnemonic: str
    doc: str
    group: str
    operands: tuple[OperandDef, ...]

    @property
    def class_name(self) -> str:
        """CamelCase Python class name: `ld.tile` -> `LdTile`, `psum.clr` -> `PsumClr`."""
        return camel_case(self.mnemonic)


@dataclass(frozen=True)
class TypeDef:
    """An operand type with its reference doc."""

    name: str
    doc: str


@dataclass(frozen=True)
class GroupDef:
    """A section of the instruction reference."""

    title: str
    doc: str


@dataclass(frozen=True)
class IsaDef:
    """The whole parsed definition, in file order."""

    version: int
    types: tuple[TypeDef, ...]
    groups: tuple[GroupDef, ...]
    insns: tuple[InsnDef, ...]

    @cached_property
    def by_mnemonic(self) -> dict[str, InsnDef]:
        return {i.mnemonic: i for i in self.insns}

    @cached_property
    def by_opcode(self) -> dict[int, InsnDef]:
        return {i.opcode: i for i in self.insns}

    def group_insns(self, title: str) -> tuple[InsnDef, ...]:
        """The instructions of one reference section, in file order."""
        return tuple(i for i in self.insns if i.group == title)


def camel_case(mnemonic: str) -> str:
    """Class name of a mnemonic: split on '.' and '_', capitalise each part, join."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[._]", mnemonic) if part)


_parser: Lark | None = None


def _get_parser() -> Lark:
    global _parser
    if _parser is None:
        _parser = Lark(_GRAMMAR, parser="lalr", propagate_positions=False)
    return _parser


def parse_definition(text: str, filename: str = "<isa>") -> IsaDef:
    """Parse and validate definition text; raise DefinitionError at the offending position."""
    try:
        tree = _get_parser().parse(text if text.endswith("\n") else text + "\n")
    except UnexpectedInput as exc:
        raise DefinitionError(filename, exc.line, exc.column, _syntax_message(exc, text)) from None
    return _Builder(filename).build(tree, text)


def load_isa() -> IsaDef:
    """Parse the package's own `flexcim.isa` (found as package data, so it works installed)."""
    res = resources.files("flowc.isa").joinpath("flexcim.isa")
    return parse_definition(res.read_text(encoding="utf-8"), str(res))


def _syntax_message(exc: UnexpectedInput, text: str) -> str:
    expected: set[str] = set()
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.accepts or exc.expected)
        tok = exc.token
        found = "end of file" if tok.type == "$END" else repr(str(tok).rstrip("\r\n") or "\n")
        if tok.type == "_NL":
            found = "end of line"
    elif isinstance(exc, UnexpectedCharacters):
        expected = set(exc.allowed or ())
        found = repr(text[exc.pos_in_stream : exc.pos_in_stream + 1])
    else:  # pragma: no cover - LALR raises only the two kinds above
        return str(exc).splitlines()[0]
    names = sorted(_TERMINAL_NAMES.get(t, t) for t in expected)
    return f"expected {' or '.join(names) or 'something else'}, found {found}"


class _Builder:
    """Walk the parse tree, check consistency with token positions, build the IsaDef."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.types: dict[str, TypeDef] = {}
        self.groups: dict[str, GroupDef] = {}
        self.insns: list[InsnDef] = []
        self.opcodes: dict[int, str] = {}
        self.class_names: dict[str, str] = {}

    def fail(self, tok: Token, message: str) -> DefinitionError:
        return DefinitionError(self.filename, tok.line or 0, tok.column or 0, message)

    def build(self, tree: Tree, text: str) -> IsaDef:
        version_tok = tree.children[0].children[0]
        version = int(version_tok)
        if not 1 <= version <= 0xFFFF:
            raise self.fail(version_tok, f"version {version} does not fit u16 (1..65535)")
        for item in tree.children[1:]:
            getattr(self, "_" + item.data)(*item.children)
        known = {i.mnemonic for i in self.insns}
        for needed in REQUIRED_MNEMONICS:
            if needed not in known:
                line = text.count("\n") + 1
                raise DefinitionError(
                    self.filename, line, 1, f"the toolchain needs an instruction '{needed}'"
                )
        return IsaDef(version, tuple(self.types.values()), tuple(self.groups.values()),
                      tuple(self.insns))

    def _type_decl(self, name: Token, doc: Token) -> None:
        if name not in KNOWN_TYPES:
            raise self.fail(name, f"unknown operand type '{name}'; the toolchain implements "
                            f"{', '.join(KNOWN_TYPES)}")
        if name in self.types:
            raise self.fail(name, f"type '{name}' is declared twice")
        self.types[str(name)] = TypeDef(str(name), _unquote(doc))

    def _group_decl(self, title: Token, doc: Token) -> None:
        key = _unquote(title)
        if key in self.groups:
            raise self.fail(title, f"group {title} is declared twice")
        self.groups[key] = GroupDef(key, _unquote(doc))

    def _insn_decl(self, opcode_tok: Token, mnem: Token, doc: Token, *operands: Tree) -> None:
        if not self.groups:
            raise self.fail(opcode_tok, "instruction before the first group")
        opcode = int(opcode_tok, 0)
        if opcode > 0xFF:
            raise self.fail(opcode_tok, f"opcode {opcode_tok} does not fit u8 (0x00..0xFF)")
        if opcode in self.opcodes:
            raise self.fail(opcode_tok, f"opcode {opcode_tok} is already used by "
                            f"'{self.opcodes[opcode]}'")
        cls = camel_case(mnem)
        if cls in self.class_names:
            what = "mnemonic" if self.class_names[cls] == mnem else "class name of"
            raise self.fail(mnem, f"{what} '{mnem}' duplicates '{self.class_names[cls]}'")
        self.opcodes[opcode] = str(mnem)
        self.class_names[cls] = str(mnem)
        ops = tuple(self._operand(mnem, *op.children) for op in operands)
        names = [o.name for o in ops]
        for i, op in enumerate(operands):
            if names[i] in names[:i]:
                raise self.fail(op.children[0], f"operand '{names[i]}' of '{mnem}' is repeated")
        group = next(reversed(self.groups))
        self.insns.append(InsnDef(opcode, str(mnem), _unquote(doc), group, ops))

    def _operand(self, mnem: Token, name: Token, typ: Token, doc: Token) -> OperandDef:
        if keyword.iskeyword(name) or name in RESERVED_OPERAND_NAMES:
            raise self.fail(name, f"operand name '{name}' of '{mnem}' is reserved")
        if typ not in self.types:
            raise self.fail(typ, f"operand '{name}' of '{mnem}' has undeclared type '{typ}'")
        return OperandDef(str(name), str(typ), _unquote(doc))


def _unquote(tok: Token) -> str:
    return re.sub(r"\\(.)", r"\1", str(tok)[1:-1])
