"""Machine description: built-ins, round trips and one-line errors that name the field path."""

import json
from dataclasses import fields, replace

import pytest

from flowc.machine import (
    MachineConfig,
    MachineConfigError,
    MacroConfig,
    builtin_machines,
    load_machine,
)

BUILTINS = ("dcim-dense", "flexcim", "sdp", "stc24", "vegeta")


def test_builtins_listed_and_loadable():
    assert builtin_machines() == BUILTINS
    for name in BUILTINS:
        assert load_machine(name).name == name


def test_flexcim_defaults_match_spec():
    m = load_machine("flexcim")
    assert m.macro == MacroConfig()  # dataclass defaults are the SPEC values
    assert (m.macro.subarrays, m.macro.rows, m.macro.cols) == (4, 32, 32)
    assert m.supported() == ((1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8), (4, 4))
    assert (m.pair_select, m.residency, m.load_overlap, m.macros) == (
        "per-column", "streamed", True, 16)
    assert m.clock_mhz == 500.0 and m.macro.act_bw_bits == 1024


def test_dataclass_defaults_equal_shipped_flexcim():
    """One source of truth: MachineConfig() and flexcim.toml agree on every structural field."""
    shipped, default = load_machine("flexcim"), MachineConfig()
    for f in fields(MachineConfig):
        if f.name not in ("name", "description", "energy"):
            assert getattr(default, f.name) == getattr(shipped, f.name), f.name


def test_baselines_structure():
    dense = load_machine("dcim-dense")
    assert dense.supported() == ((4, 4),) and not dense.metadata
    assert load_machine("vegeta").supported() == ((1, 4), (2, 4), (4, 4))
    assert load_machine("stc24").supported() == ((2, 4), (4, 4))
    sdp = load_machine("sdp")
    assert sdp.supported() == ((1, 2), (4, 4)) and sdp.macro.input_bits == 2
    assert sdp.macro.bit_cycles == 4


@pytest.mark.parametrize("name", BUILTINS)
def test_dict_round_trip(name):
    m = load_machine(name)
    assert MachineConfig.from_dict(m.to_dict()) == m
    assert MachineConfig.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_from_file_toml_json_and_extends(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text('extends = "flexcim"\nname = "mine"\nmacros = 8\n[macro]\nrows = 16\n')
    m = MachineConfig.from_file(str(toml))
    assert (m.name, m.macros, m.macro.rows, m.macro.cols) == ("mine", 8, 16, 32)
    assert m.k_pass(1, 8) == 4 * 16 * 8
    js = tmp_path / "mine.json"
    js.write_text(json.dumps(m.to_dict()))
    assert load_machine(str(js)) == m


def _err(d: dict) -> str:
    with pytest.raises(MachineConfigError) as exc:
        MachineConfig.from_dict(d)
    return str(exc.value)


def _flex() -> dict:
    return load_machine("flexcim").to_dict()


def test_typo_in_key_suggests_close_match():
    d = _flex()
    d["macro"]["rowz"] = d["macro"].pop("rows")
    assert _err(d).startswith("macro.rowz: unknown key (did you mean 'rows'?)")
    d = _flex()
    d["pair_selct"] = "row-shared"
    assert _err(d).startswith("pair_selct: unknown key (did you mean 'pair_select'?)")


def test_wrong_types_name_the_path():
    d = _flex()
    d["macro"]["rows"] = "x"
    assert _err(d) == "macro.rows: expected a positive integer, got 'x'"
    d = _flex()
    d["load_overlap"] = 1
    assert _err(d) == "load_overlap: expected true or false, got 1"
    d = _flex()
    d["residency"] = "cached"
    assert _err(d) == "residency: expected one of resident, streamed, got 'cached'"
    d = _flex()
    d["macro"]["rows"] = 24
    assert _err(d) == "macro.rows: expected a power of two, got 24"
    d = _flex()
    d["patterns"] = ["1:2", "2-4"]
    assert _err(d) == "patterns[1]: expected 'n:m' with integers, got '2-4'"


def test_unknown_energy_action():
    d = _flex()
    d["energy"]["foo"] = {"pj": 1.0, "unit": "bit", "estimate": True}
    msg = _err(d)
    assert msg.startswith("energy.foo: unknown energy action 'foo'")
    assert "(known: abuf_read, dram_read," in msg


def test_energy_entry_rules():
    d = _flex()
    d["energy"]["mult_bit"]["unit"] = "byte"
    assert _err(d) == "energy.mult_bit.unit: action 'mult_bit' is counted per 'bit-op', got 'byte'"
    d = _flex()
    del d["energy"]["dram_read"]["source"]
    assert _err(d) == "energy.dram_read: needs a 'source' citation or 'estimate = true'"
    d = _flex()
    del d["energy"]["tree_l3"]
    assert _err(d).startswith("energy.tree_l3: missing value for action 'tree_l3'")
    d = _flex()
    d["macro"]["rows"] = 64  # a 6-level tree needs tree_l6: no silent default
    assert _err(d).startswith("energy.tree_l6: missing value")


def test_cross_field_rules():
    d = _flex()
    d["patterns"] = ["3:8"]
    assert _err(d) == ("patterns[0]: pattern 3:8 cannot run on this macro: "
                       "n and m must be powers of two")
    d = _flex()
    d["patterns"] = ["1:16"]
    assert "m must be at most 2 * pairs = 8" in _err(d)
    d = _flex()
    d["macro"]["input_bits"] = 3
    assert _err(d).startswith("macro.input_bits: expected 1 (bit-serial) or 2")
    d = _flex()
    d["metadata"] = False
    assert _err(d).startswith("patterns: a machine without metadata runs dense only")


def test_unknown_builtin_and_extends():
    with pytest.raises(MachineConfigError, match="did you mean 'flexcim'"):
        load_machine("flexcm")
    assert _err({"extends": "vegita"}).startswith(
        "extends: unknown built-in machine 'vegita' (did you mean 'vegeta'?)")


def test_file_errors_carry_the_file_name(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "flexcim"\n[macro]\ncols = 0\n')
    with pytest.raises(MachineConfigError) as exc:
        load_machine(str(bad))
    assert str(exc.value) == f"{bad}: macro.cols: expected a positive integer, got 0"


def test_config_is_frozen():
    m = load_machine("flexcim")
    with pytest.raises(AttributeError):
        m.macros = 3  # type: ignore[misc]
    assert replace(m, macros=3).macros == 3


def test_replace_edits_in_code_and_validates_like_a_file():
    m = load_machine("flexcim")
    w = m.replace(name="wide", macros=64, macro={"cols": 64}, patterns=[(2, 4), "1:4"])
    assert (w.name, w.macros, w.macro.cols, w.patterns) == ("wide", 64, 64, ((2, 4), (1, 4)))
    assert w.macro == replace(m.macro, cols=64) and w.energy == m.energy
    assert m.macros == 16 and m.replace() == m  # the original is untouched
    assert m.replace(macro=replace(m.macro, act_bw_bits=512)).macro.act_bw_bits == 512
    for change, message in [
        ({"macro": {"rows": 48}}, "macro.rows: expected a power of two, got 48"),
        ({"macros": 0}, "macros: expected a positive integer, got 0"),
        ({"macross": 3}, "macross: unknown key (did you mean 'macros'?)"),
        ({"macro": {"rows": 64}}, "energy.tree_l6: missing value for action 'tree_l6'"),
    ]:
        with pytest.raises(MachineConfigError) as info:
            m.replace(**change)
        assert str(info.value).startswith(message)
