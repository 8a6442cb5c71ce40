"""Pipeline strings: `"nm-prune{n=2,m=4,score=wanda},verify-nm,quantize"` <-> pass instances.

Syntax (a Lark grammar, `_GRAMMAR`; whitespace around tokens is ignored):

    pipeline := item ("," item)*          item  := NAME ["{" [option ("," option)*] "}"]
    option   := KEY "=" value             value := text without , { } = (or "quoted")

A syntax error names the column of the offending character and what was expected there.

Values are coerced to the type of the pass's dataclass field:

- `int`, `float`; `bool` as true/false (also yes/no, 1/0); `str` as written;
- `X | None`: the bare word `none` is None;
- `Literal[...]`: one of the listed values;
- lists `tuple[X, ...]`: items separated by `|` (the comma separates options):
  `skip=lm_head|model.layers.0.*`; an empty value is the empty tuple;
- pairs `tuple[int, int]`: `2:4`, so a list of N:M patterns reads `candidates=2:4|4:8`.

A value containing `, { } = | :` or quotes, or a string that would read as something else
(`none`, `true`), is written in double quotes with `\\"` and `\\\\` escapes; `format_pipeline`
does that, so `parse_pipeline(format_pipeline(ps)) == ps`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union

import lark

from flowc.errors import UsageError
from flowc.passes.base import Pass
from flowc.passes.registry import get_pass

_SAFE = re.compile(r"[A-Za-z0-9_.*?/@+\-\[\]]+")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


class PipelineError(UsageError):
    """A pipeline string is malformed or names a bad pass/option/value (one line)."""


def parse_pipeline(text: str) -> list[Pass]:
    """Pass instances for a pipeline string (an empty string is the empty pipeline)."""
    return [_instantiate(name, opts) for name, opts in _parse(text)]


def format_pipeline(passes: Sequence[Pass], full: bool = False) -> str:
    """The pipeline string of `passes`; options equal to their default are left out unless
    `full`."""
    items = []
    for p in passes:
        hints = _field_types(type(p))
        opts = []
        for f in dataclasses.fields(p):
            value = getattr(p, f.name)
            if full or not _is_default(f, value):
                opts.append(f"{f.name}={_format(value, hints[f.name])}")
        items.append(p.name + (f"{{{','.join(opts)}}}" if opts else ""))
    return ",".join(items)


# --- parsing ----------------------------------------------------------------------------------

# The structure of a pipeline string. Option values stay raw text (quotes kept) here: their
# meaning depends on the option's type, so `_coerce` reads them once the pass is known.
_GRAMMAR = r"""
    pipeline: item (COMMA item)*
    item: NAME (LBRACE (option (COMMA option)*)? RBRACE)?
    option: KEY EQUAL VALUE?

    NAME: /[A-Za-z_][A-Za-z0-9_.\-]*/
    KEY: /[A-Za-z_][A-Za-z0-9_]*/
    VALUE: /(?:[^,{}="]|"(?:\\.|[^"\\])*")+/s
    COMMA: ","
    LBRACE: "{"
    RBRACE: "}"
    EQUAL: "="
    %import common.WS
    %ignore WS
"""


@functools.cache
def _parser() -> lark.Lark:
    # LALR with the contextual lexer: NAME, KEY and VALUE overlap, the parser state picks one
    return lark.Lark(_GRAMMAR, start="pipeline", parser="lalr", lexer="contextual")


def _parse(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(pass name, [(key, raw value)]) per item; an all-blank string is the empty pipeline."""
    if not text.strip():
        return []
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    items = []
    for item in tree.children:
        if isinstance(item, lark.Tree):
            name, *rest = item.children
            opts = [(str(o.children[0]), str(o.children[2]).strip() if len(o.children) > 2
                     else "") for o in rest if isinstance(o, lark.Tree)]
            items.append((str(name), opts))
    return items


def _syntax_error(text: str, exc: lark.exceptions.UnexpectedInput) -> PipelineError:
    """One line: the column of the offending character (or the end) and what was expected
    there, from the set of terminals the parser would have accepted."""
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        expected = set(exc.expected)
        pos = len(text) if exc.token.type == "$END" else exc.token.start_pos
    else:
        expected, pos = set(exc.allowed), exc.pos_in_stream
    found = text[pos] if pos < len(text) else ""
    if "NAME" in expected:
        msg = "expected a pass name"
    elif "KEY" in expected:
        msg = "expected an option name"
    elif found == '"' and "RBRACE" in expected:
        msg = "unterminated string"
    elif expected & {"EQUAL", "RBRACE"}:
        want = "=" if "EQUAL" in expected else "}"
        msg = f"expected '{want}', found {found!r}" if found else f"expected '{want}' at end"
    else:
        msg = f"unexpected {found!r}"
    return PipelineError(f"pipeline column {pos + 1}: {msg} in {text!r}")


def _end_of_quote(text: str, pos: int, error: Any) -> int:
    """Index just past the closing quote of the string starting at `pos`."""
    i = pos + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    raise error("unterminated string")


def _split(raw: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes."""
    parts, start, i = [], 0, 0
    while i < len(raw):
        if raw[i] == '"':
            i = _end_of_quote(raw, i, PipelineError)
        elif raw[i] == sep:
            parts.append(raw[start:i].strip())
            start = i = i + 1
        else:
            i += 1
    parts.append(raw[start:].strip())
    return parts


def _unquote(raw: str) -> tuple[str, bool]:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return re.sub(r"\\(.)", r"\1", raw[1:-1], flags=re.S), True
    if '"' in raw:
        raise PipelineError(f"stray quote in value {raw!r}")
    return raw, False


def _coerce(raw: str, tp: Any) -> Any:
    """Convert raw option text to `tp`; raises ValueError with 'expected ...' on mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and raw == "none":
            return None
        for member in (a for a in args if a is not type(None)):
            try:
                return _coerce(raw, member)
            except ValueError:
                pass
        raise ValueError(f"expected {_describe(tp)}, got {raw!r}")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return () if raw == "" else tuple(_coerce(p, args[0]) for p in _split(raw, "|"))
        parts = _split(raw, ":")
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} values separated by ':', got {raw!r}")
        return tuple(_coerce(p, a) for p, a in zip(parts, args, strict=True))
    if origin is Literal:
        for choice in args:
            try:
                if _coerce(raw, type(choice)) == choice:
                    return choice
            except ValueError:
                pass
        raise ValueError(f"expected one of {', '.join(map(str, args))}, got {raw!r}")
    text, quoted = _unquote(raw)
    if tp is str or tp is Any:
        return text
    if quoted:
        raise ValueError(f"expected {getattr(tp, '__name__', tp)}, got a quoted string {raw!r}")
    if tp is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected bool (true/false), got {raw!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"expected {tp.__name__}, got {raw!r}") from None
    raise ValueError(f"unsupported option type {tp!r}")


def _describe(tp: Any) -> str:
    """Human name of an option type, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        names = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(names + (["none"] if type(None) in args else []))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a '|'-separated list of {_describe(args[0])}"
        return ":".join(_describe(a) for a in args)
    if origin is Literal:
        return f"one of {', '.join(map(str, args))}"
    return getattr(tp, "__name__", str(tp))


def _field_types(cls: type[Pass]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _instantiate(name: str, opts: list[tuple[str, str]]) -> Pass:
    try:
        cls = get_pass(name)
    except Exception as exc:
        raise PipelineError(str(exc)) from None
    types_ = _field_types(cls)
    valid = ", ".join(types_) or "none"
    kwargs: dict[str, Any] = {}
    for key, raw in opts:
        if key not in types_:
            raise PipelineError(f"pass '{name}' has no option '{key}' (options: {valid})")
        if key in kwargs:
            raise PipelineError(f"pass '{name}': option '{key}' given twice")
        try:
            kwargs[key] = _coerce(raw, types_[key])
        except (ValueError, PipelineError) as exc:
            raise PipelineError(f"pass '{name}' option '{key}': {exc}") from None
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise PipelineError(f"pass '{name}' needs option(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise PipelineError(f"pass '{name}': {exc}") from exc


# --- formatting -------------------------------------------------------------------------------


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return value == f.default
    if f.default_factory is not dataclasses.MISSING:
        return value == f.default_factory()
    return False


def _format(value: Any, tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return "none"
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        for member in members:
            if _fits(value, member):
                return _format(value, member)
        return _format(value, members[0])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "|".join(_format(v, args[0]) for v in value)
        return ":".join(_format(v, a) for v, a in zip(value, args, strict=True))
    if origin is Literal:
        return _format(value, type(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _SAFE.fullmatch(text) and text.lower() not in ("none",) + _TRUE + _FALSE:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fits(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return isinstance(value, tuple)
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is float:
        return isinstance(value, float | int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True
