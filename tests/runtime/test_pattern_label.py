"""Reports name dense layers "dense", whatever the machine's dense mode is called inside."""

from flowc.machine import load_machine
from flowc.runtime.report import pattern_label


def test_dense_mode_of_every_machine_reads_dense():
    for name in ("flexcim", "dcim-dense", "vegeta", "sdp", "stc24"):
        m = load_machine(name)
        dense = m.dense_pattern
        assert pattern_label(dense, dense) == "dense"
        # the asked dense pattern of another machine (e.g. 8:8) runs as this machine's dense
        assert pattern_label((8, 8), m.fit_pattern(8, 8)) == "dense"


def test_rounded_and_unsupported_patterns_name_both_sides():
    m = load_machine("flexcim")
    assert pattern_label((2, 4), m.fit_pattern(2, 4)) == "2:4"
    assert pattern_label((3, 4), m.fit_pattern(3, 4)) == "3:4->dense"
    assert pattern_label((1, 16), (1, 8)) == "1:16->1:8"
