"""Assembly text that is not UTF-8 or holds absurd integers is an AsmError at FILE:LINE:COL
(issue 13), never an internal error."""

from __future__ import annotations

import pytest

from flowc import isa


@pytest.mark.parametrize(("data", "where", "byte"), [
    (b"halt ; caf\xe9\n", "x.s:1:11:", "0xe9"),  # a Latin-1 comment
    ("halt\n".encode("utf-16"), "x.s:1:1:", "0xff"),  # UTF-16 with its BOM
    (b"layer name=a kind=vector\nhalt\xff\n", "x.s:2:5:", "0xff"),  # a stray byte
])
def test_non_utf8_is_an_error_at_its_position(data, where, byte):
    with pytest.raises(isa.AsmError) as err:
        isa.assemble_bytes(data, "x.s")
    assert str(err.value).startswith(where) and byte in str(err.value)


@pytest.mark.parametrize("digits", [11, 100_000])
def test_huge_integer_literals_are_range_errors(digits):
    text = f"loop.tiles n_tiles={'9' * digits} k_tiles=1\nloop.end\nhalt\n"
    with pytest.raises(isa.AsmError, match=r"x\.s:1:20: .*out of range for u32"):
        isa.assemble_bytes(text.encode(), "x.s")


def test_leading_zeros_are_not_digits_of_magnitude():
    prog = isa.assemble_bytes(b"loop.tiles n_tiles=" + b"0" * 50 + b"7 k_tiles=1\nloop.end\nhalt\n")
    assert prog.instructions[0].n_tiles == 7
