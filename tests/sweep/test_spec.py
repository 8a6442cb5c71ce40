"""The sweep spec: one-line errors with the field path, grid / random / explicit points in a
deterministic order, machines built from dotted paths, keys that identify the inputs."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from flowc.errors import UsageError
from flowc.machine import load_machine
from flowc.studies.sweep.build import nested_changes
from flowc.studies.sweep.spec import canonical_nm, load_spec, points_of, spec_hash


def base(**over):
    d = {"fixed": {"model": "llama-2-7b", "tokens": 64},
         "axes": {"target": ["flexcim", "vegeta"], "nm": ["2:4", "dense"], "macros": [8, 16]}}
    for k, v in over.items():
        d[k] = v
    return d


@pytest.mark.parametrize("spec, message", [
    ({"sweep": {"mode": "fast"}}, r"^<dict>: sweep\.mode: Input should be 'analytic' or 'run'"),
    ({"sweep": {"bogus": 1}}, r"^<dict>: sweep\.bogus: Extra inputs are not permitted"),
    ({"sweep": {"sample": "random"}}, r"sweep\.samples: required when sample"),
    ({"sweep": {"samples": 3}}, r"sweep\.samples: only for sample = \"random\""),
    ({"axes": {"macros": 8}}, r"^<dict>: axes\.macros: Input should be a valid list"),
    ({"axes": {"nm": ["2:4", "3:2"]}}, r'axes\.nm\[1\]: expected "n:m"'),
    ({"axes": {"tokens": [16, 0]}}, r"axes\.tokens\[1\]: expected a positive integer, got 0"),
    ({"axes": {"macro rows": [1]}}, r'axes\."macro rows"\[0\]: not a sweep input'),
    ({"axes": {"macros": []}}, r"axes\.macros: empty list"),
    ({"fixed": {"tokens": 4}, "axes": {"tokens": [8]}}, r"axes\.tokens: also in \[fixed\]"),
    ({"fixed": {}, "axes": {"nm": ["2:4"]}}, r"fixed\.model: required"),
    ({"axes": {"phase": ["prefil"]}}, r'axes\.phase\[0\]: expected "prefill" or "decode"'),
    ({"sweep": {"mode": "run"}, "fixed": {"model": "mlp", "tokens": 8}},
     r"fixed\.tokens: analytic mode only"),
    ({"axes": {"nm": [{"pipeline": "quantize"}]}}, r"needs mode = \"run\""),
    ({"axes": {"macros": [1]}, "points": [{"nm": "2:4"}]}, r"points\[0\]: missing axis 'macros'"),
    ({"axes": {"macros": [1]}, "points": [{"macros": 2, "foo": 1}]},
     r"points\[0\]\.foo: not an axis or fixed key"),
])
def test_structure_errors_are_one_line_with_the_field_path(spec, message):
    spec.setdefault("fixed", {"model": "llama-2-7b"})
    with pytest.raises(UsageError, match=message) as err:
        points_of(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("axis, values, message", [
    ("macro.rows", [32, 48], r"point 1 \(.*macro\.rows=48\): macro\.rows: expected a power of two"),
    ("macros", [0], r"point 0 \(.*macros=0\): macros: expected a positive integer, got 0"),
    ("macro.rowz", [32], r"macro\.rowz: unknown key \(did you mean 'rows'\?\)"),
    ("energy.dram_rd.pj", [1.0], r"energy\.dram_rd"),
    ("target", ["flexcim", "nope"], r"point 1 \(target=nope.*machine 'nope': not a built-in"),
])
def test_every_machine_is_validated_up_front_naming_the_point_and_field(axis, values, message):
    with pytest.raises(UsageError, match=message) as err:
        points_of({"fixed": {"model": "llama-2-7b"}, "axes": {axis: values}})
    assert "\n" not in str(err.value)


def test_a_toml_error_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[sweep]\nmode = \n")
    with pytest.raises(UsageError, match=r"bad\.toml: not valid TOML"):
        load_spec(path)
    path.write_text("[axes]\nmacros = [0]\n[fixed]\nmodel = \"llama-2-7b\"\n")
    with pytest.raises(UsageError, match=r"bad\.toml: point 0 .*macros: expected a positive"):
        points_of(path)


def test_grid_is_the_full_product_in_spec_order_last_axis_fastest():
    points = points_of(base())
    axes = base()["axes"]
    expected = list(itertools.product(*axes.values()))
    got = [tuple(p.values[k] if k != "nm" else p.values["nm"] for k in axes) for p in points]
    assert got == expected
    assert [p.index for p in points] == list(range(8))
    assert points[0].values == {"target": "flexcim", "model": "llama-2-7b", "nm": "2:4",
                                "phase": "prefill", "tokens": 64, "macros": 8}


def test_machines_come_from_the_target_and_dotted_path_overrides():
    spec = {"fixed": {"model": "llama-2-7b"},
            "axes": {"target": ["vegeta"], "macro.act_bw_bits": [512],
                     "energy.dram_read.pj": [2.5], "macros": [4]}}
    (p,) = points_of(spec)
    direct = load_machine("vegeta").replace(
        macro={"act_bw_bits": 512}, macros=4,
        energy={"dram_read": {"pj": 2.5, "source": "flowc sweep: energy.dram_read.pj = 2.5"}})
    assert p.machine == direct
    assert p.machine.name == "vegeta" and p.machine.energy["dram_read"].pj == 2.5
    assert nested_changes({"macro.rows": 16, "macros": 2, "energy.x.pj": 1.0}) == {
        "macro": {"rows": 16}, "macros": 2, "energy": {"x": {"pj": 1.0}}}


def test_random_sample_is_seeded_and_a_subset_of_the_grid():
    grid = {p.key: p for p in points_of(base())}
    a = points_of(base(sweep={"sample": "random", "samples": 5, "seed": 3}))
    b = points_of(base(sweep={"sample": "random", "samples": 5, "seed": 3}))
    c = points_of(base(sweep={"sample": "random", "samples": 5, "seed": 4}))
    assert [p.key for p in a] == [p.key for p in b]
    assert len(a) == 5 and {p.key for p in a} <= set(grid)
    assert [p.key for p in a] != [p.key for p in c]
    # the sample is random.Random(seed).sample of the grid indices, in grid order
    picks = sorted(random.Random(3).sample(range(8), 5))
    assert [p.key for p in a] == [list(grid)[i] for i in picks]
    # more samples than the grid: the whole grid
    assert len(points_of(base(sweep={"sample": "random", "samples": 99}))) == 8


def test_explicit_points_follow_the_grid_and_duplicates_are_refused():
    spec = base(points=[{"target": "flexcim", "nm": "1:8", "macros": 64}])
    points = points_of(spec)
    assert len(points) == 9 and points[-1].values["nm"] == "1:8"
    assert points[-1].machine.macros == 64
    dup = base(points=[{"target": "flexcim", "nm": [2, 4], "macros": 8}])
    with pytest.raises(UsageError, match=r"point 8 .*same inputs as point 0"):
        points_of(dup)


def test_keys_depend_on_the_inputs_only():
    a, b = points_of(base()), points_of(json.loads(json.dumps(base())))
    assert [p.key for p in a] == [p.key for p in b]
    assert len({p.key for p in a}) == len(a)
    other = points_of(base(fixed={"model": "llama-2-7b", "tokens": 65}))
    assert not {p.key for p in a} & {p.key for p in other}
    assert spec_hash(load_spec(base()), a) != spec_hash(load_spec(base()), other)
    chunked = base(sweep={"chunk": 3})  # chunking changes no result: same hash
    assert spec_hash(load_spec(chunked), points_of(chunked)) == spec_hash(load_spec(base()), a)


def test_an_assignment_file_is_part_of_the_key(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"layers": {"lm_head": "dense"}, "default": "2:4"}))
    spec = tmp_path / "s.toml"
    spec.write_text('[fixed]\nmodel = "llama-2-7b"\n[axes]\nnm = [{ assignment = "a.json" }]\n')
    (p,) = points_of(spec)
    assert p.values["nm"] == "assignment:a.json" and p.assignment == str(f)
    f.write_text(json.dumps({"layers": {}, "default": "1:8"}))
    (q,) = points_of(spec)
    assert q.key != p.key  # a changed file is a different point for --resume


@pytest.mark.parametrize("given, text", [("2:4", "2:4"), ([1, 8], "1:8"), ("dense", "dense"),
                                         ("4:4", "dense"), ({"pipeline": "quantize"},
                                                            "pipeline:quantize")])
def test_nm_values_have_one_text_form(given, text):
    assert canonical_nm(given) == text


def test_the_spec_in_docs_sweeps_md_is_valid(tmp_path):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sweeps.md").read_text()
    block = re.search(r"```toml\n(.*?)```", doc, flags=re.S).group(1)
    path = tmp_path / "study.toml"
    path.write_text(block)
    points = points_of(path)
    assert len(points) == 3 * 3 * 3 * 3 * 2 + 1
    last = points[-1]
    assert last.values["nm"] == "4:8" and last.machine.macros == 64
    assert last.machine.macro.act_bw_bits == 4096


def test_without_axes_the_fixed_values_are_one_point_and_inputs_are_checked_up_front():
    (p,) = points_of({"fixed": {"model": "llama-2-7b", "macros": 4}})
    assert p.values["macros"] == 4 and p.machine.macros == 4
    with pytest.raises(UsageError, match=r"point 0 \(.*model=llama-2-7bb.*\): model: unknown model"):
        points_of({"fixed": {"model": "llama-2-7bb"}})
    with pytest.raises(UsageError, match=r"nm: .*nope\.json: cannot read the N:M assignment"):
        points_of({"fixed": {"model": "llama-2-7b", "nm": {"assignment": "nope.json"}}})
