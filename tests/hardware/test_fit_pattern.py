"""K_pass and the 'cheapest supported pattern that contains the mask' rule (SPEC.md s3)."""

import pytest

from flowc.machine import MachineConfig, PatternError, fits, load_machine


def test_k_pass_table():
    m = load_machine("flexcim")
    got = {p: m.k_pass(*p) for p in m.supported()}
    assert got == {(1, 2): 256, (1, 4): 512, (1, 8): 1024, (2, 4): 256, (2, 8): 512,
                   (4, 8): 256, (4, 4): 128}


def test_fits_rule():
    assert fits(1, 8, 1, 4) and fits(2, 8, 2, 4) and fits(4, 8, 4, 4)
    assert not fits(4, 8, 2, 4) and not fits(2, 8, 1, 4) and not fits(2, 4, 1, 2)
    assert fits(1, 4, 2, 8)  # m divides m2: a group of 8 holds 2 * 1 kept weights
    assert not fits(2, 4, 3, 8)
    assert not fits(1, 3, 1, 2)  # groups not aligned


@pytest.mark.parametrize("machine,table", [
    ("flexcim", {(1, 8): (1, 8), (2, 8): (2, 8), (4, 8): (4, 8), (1, 16): (1, 8),
                 (8, 8): (4, 4), (3, 8): (4, 8), (1, 1): (4, 4)}),
    ("vegeta", {(1, 8): (1, 4), (2, 8): (2, 4), (4, 8): (4, 4), (1, 2): (2, 4),
                (2, 4): (2, 4), (3, 4): (4, 4)}),
    ("stc24", {(1, 8): (2, 4), (1, 4): (2, 4), (1, 2): (2, 4), (4, 8): (4, 4)}),
    ("sdp", {(1, 8): (1, 2), (1, 4): (1, 2), (2, 4): (4, 4), (1, 2): (1, 2)}),
    ("dcim-dense", {(1, 8): (4, 4), (2, 4): (4, 4), (4, 4): (4, 4)}),
])
def test_fit_pattern_tables(machine, table):
    m = load_machine(machine)
    assert {p: m.fit_pattern(*p) for p in table} == table


def test_fit_prefers_own_pattern_on_ties():
    m = load_machine("flexcim")
    assert m.fit_pattern(2, 4) == (2, 4)  # 4:8 also fits with the same K_pass
    assert m.fit_pattern(1, 2) == (1, 2)


def test_nothing_fits_raises():
    with pytest.raises(PatternError, match=r"pattern 8:8 fits no pattern of machine 'x'"):
        MachineConfig(name="x", patterns=((1, 2),), dense=False).fit_pattern(8, 8)
    with pytest.raises(PatternError, match="1 <= n <= m"):
        load_machine("flexcim").fit_pattern(5, 4)
