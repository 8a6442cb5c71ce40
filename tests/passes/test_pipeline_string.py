"""Pipeline strings: parse, format, round trip, and one-line errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowc.passes import registry
from flowc.passes.base import Pass
from flowc.passes.calibrate import Calibrate
from flowc.passes.pipeline import PipelineError, format_pipeline, parse_pipeline
from flowc.passes.prune import NMPrune
from flowc.passes.quantize import Quantize
from flowc.passes.verify import VerifyNM


@dataclass(frozen=True)
class _Typed(Pass):
    """A pass with every supported option type."""

    name = "typed-test"
    ratio: float = 0.5
    flag: bool = False
    label: str = "x"
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    names: tuple[str, ...] = ()
    candidates: tuple[tuple[int, int], ...] = ((2, 4),)


@pytest.fixture()
def typed(monkeypatch: pytest.MonkeyPatch) -> type[_Typed]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_pass(_Typed)
    return _Typed


def test_parse_known_pipeline() -> None:
    passes = parse_pipeline(" calibrate , nm-prune{ n=2, m=4 ,score=wanda},verify-nm,quantize ")
    assert passes == [Calibrate(), NMPrune(n=2, m=4, score="wanda"), VerifyNM(), Quantize()]
    assert format_pipeline(passes) == "calibrate,nm-prune{n=2,m=4},verify-nm,quantize"
    assert parse_pipeline("") == [] and parse_pipeline(" \t ") == []
    assert parse_pipeline("  nm-prune {  }  ,\tquantize  ") == [NMPrune(), Quantize()]


def test_every_option_type_round_trips(typed: type[_Typed]) -> None:
    p = parse_pipeline(
        'typed-test{ratio=0.25,flag=true,label="a,b|c:d",mode=b,limit=7,'
        "names=lm_head|model.layers.0.*,candidates=1:4|2:8}"
    )[0]
    assert p == typed(0.25, True, "a,b|c:d", "b", 7, ("lm_head", "model.layers.0.*"),
                      ((1, 4), (2, 8)))
    for q in (p, typed(), typed(label="none", names=("",)), typed(label='say "hi"\\', limit=0),
              typed(names=("a",), candidates=()), typed(flag=True, label="true")):
        for full in (False, True):
            assert parse_pipeline(format_pipeline([q], full=full)) == [q]
    assert format_pipeline([typed()]) == "typed-test"
    assert format_pipeline([typed()], full=True) == (
        "typed-test{ratio=0.5,flag=false,label=x,mode=a,limit=none,names=,candidates=2:4}"
    )
    assert parse_pipeline("typed-test{limit=none,names=}") == [typed()]


@pytest.mark.parametrize(
    "text, message",
    [
        ("nm-prune{n=two,m=4}", "pass 'nm-prune' option 'n': expected int or none, got 'two'"),
        ("nm-prune{x=1}",
         "pass 'nm-prune' has no option 'x' (options: n, m, score, layers, skip, sequential, "
         "update, damp, blocksize)"),
        ("nm-prune{score=l2}",
         "pass 'nm-prune' option 'score': expected one of magnitude, wanda, got 'l2'"),
        ("nm-prune{n=2,n=2}", "pass 'nm-prune': option 'n' given twice"),
        ("nm-prune{n=2}",
         "pass 'nm-prune': nm-prune: give both n and m (uniform N:M) or neither (annotations)"),
        ("nm-prun", "unknown pass 'nm-prun'; did you mean nm-prune, nm-search?"),
        ("quantize,,verify-nm", "pipeline column 10: expected a pass name"),
        ("nm-prune{n=2,m=4", "pipeline column 17: expected '}' at end"),
        ('nm-prune{layers="fc1}', "pipeline column 17: unterminated string"),
        ("quantize verify-nm", "pipeline column 10: unexpected 'v'"),
    ],
)
def test_errors_name_pass_option_and_choices(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_type_errors_for_typed_options(typed: type[_Typed]) -> None:
    for text, message in [
        ("typed-test{flag=maybe}", "option 'flag': expected bool (true/false), got 'maybe'"),
        ("typed-test{ratio=}", "option 'ratio': expected float, got ''"),
        ("typed-test{candidates=2:4:8}", "option 'candidates': expected 2 values separated by"),
        ('typed-test{ratio="1.0"}', "option 'ratio': expected float, got a quoted string"),
    ]:
        with pytest.raises(PipelineError, match=re.escape(message)):
            parse_pipeline(text)


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(label=text, names=st.lists(text, max_size=4), ratio=st.floats(allow_nan=False),
       limit=st.none() | st.integers(-(2**40), 2**40))
def test_round_trip_property(label: str, names: list[str], ratio: float, limit: int | None) -> None:
    p = _Typed(ratio=ratio, label=label, names=tuple(names), limit=limit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
        registry.register_pass(_Typed)
        assert parse_pipeline(format_pipeline([p])) == [p]


@pytest.mark.parametrize(
    "text, column, message",
    [
        (",quantize", 1, "expected a pass name"),
        ("quantize,", 10, "expected a pass name"),
        ("quantize, {", 11, "expected a pass name"),
        ("nm-prune{2=1}", 10, "expected an option name"),
        ("nm-prune{n=2, }", 15, "expected an option name"),
        ("nm-prune{n}", 11, "expected '=', found '}'"),
        ("nm-prune{n", 11, "expected '=' at end"),
        ("nm-prune{n==2}", 12, "expected '}', found '='"),
        ("nm-prune{n=2{", 13, "expected '}', found '{'"),
        ("nm-prune{n=2 ", 14, "expected '}' at end"),
        ('nm-prune{layers=a"b}', 18, "unterminated string"),
        ('nm-prune{layers="b\\"}', 17, "unterminated string"),
        ("quantize}", 9, "unexpected '}'"),
        ("quantize;verify-nm", 9, "unexpected ';'"),
        ("nm-prune{n=2} {", 15, "unexpected '{'"),
    ],
)
def test_syntax_error_columns(text: str, column: int, message: str) -> None:
    """Syntax errors point at the offending character (column = 1-based index, or one past
    the end) and say what the grammar expected there."""
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert str(info.value) == f"pipeline column {column}: {message} in {text!r}"
