"""Compile-time prices (flowc.runtime.priced, the .fcim's priced.json): stored == fresh field
by field, used only under their key (machine, numerics, code) and for their own file."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile

import pytest

from flowc.backend.container import load_bytes, to_bytes
from flowc.errors import ImageError
from flowc.machine import load_machine
from flowc.runtime import priced
from flowc.runtime.cost import CostModel
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.priced import price_image, stored_layers
from flowc.runtime.report import CostListener
from flowc.runtime.session import simulate


def _rows(layers):
    return [(lc.name, lc.kind, lc.cycles, lc.macs, lc.kept_macs, lc.tokens, lc.setup_cycles,
             lc.actions, lc.setup_actions, lc.energy_pj, lc.setup_energy_pj) for lc in layers]


def _live(image, machine=None):
    """Every event priced live by a plain CostListener as the batched handlers emit them:
    an independent path to the same rows (no memo, no signatures, no stored prices)."""
    from flowc.machine import MachineConfig

    model = CostModel(machine or MachineConfig.from_dict(image.machine))
    live = CostListener(model, image.layers, image.tensors)
    Interpreter(image, mode="batched", listeners=[live]).run(list(image.samples))
    return _rows(live.finish())


def _priced_file(image) -> bytes:
    copy = dataclasses.replace(image)  # a new Image: the session fixture's stays unpriced
    price_image(copy)
    return to_bytes(copy)


def _assert_stored_equal_fresh(image) -> None:
    loaded = load_bytes(_priced_file(image))
    assert loaded.priced is not None and len(loaded.priced.entries) == 1
    stored = stored_layers(loaded, "int8")
    assert stored is not None
    want = _live(loaded)
    assert _rows(stored) == want and sum(r[2] for r in want) > 0
    outputs, report = simulate(loaded, list(loaded.samples))  # the stored path of a run
    assert _rows(report.layers) == want
    plain = Interpreter(loaded).run(list(loaded.samples))
    assert all((a == b).all() for a, b in zip(outputs, plain, strict=True))


@pytest.mark.parametrize("name", ["mlp", "block"])
def test_stored_prices_equal_fresh_pricing(compiled, name):
    _assert_stored_equal_fresh(compiled(name, (2, 4)))


@pytest.mark.slow
def test_stored_prices_equal_fresh_pricing_on_a_llama():
    from flowc.frontend.load import load_hf
    from flowc.studies.compiler import CompileOptions, compile_captured

    image = compile_captured(load_hf("hf:tiny-llama", seq_len=8, calib_batches=1),
                             CompileOptions(nm=(2, 4)), progress=None)
    _assert_stored_equal_fresh(image)


def test_another_machine_numerics_or_code_prices_afresh(compiled, monkeypatch):
    loaded = load_bytes(_priced_file(compiled("mlp", (2, 4))))
    other = dataclasses.replace(load_machine("flexcim"), residency="resident")
    moved = dataclasses.replace(loaded, machine=other.to_dict())
    assert moved.priced.valid_for(moved)  # same program: only the key differs
    assert stored_layers(moved, "int8") is None
    _, report = simulate(moved, list(moved.samples))
    assert _rows(report.layers) == _live(moved, other) != _live(loaded)
    assert stored_layers(loaded, "fp32") is None
    assert stored_layers(loaded, "int8") is not None
    monkeypatch.setattr(priced, "code_digest", lambda: "0" * 64)  # flowc's code changed
    assert stored_layers(loaded, "int8") is None


def test_prices_do_not_follow_another_program(compiled):
    """An Image rebuilt with another program keeps no prices, in memory or in the file."""
    mlp = dataclasses.replace(compiled("mlp", (2, 4)))
    price_image(mlp)
    other = dataclasses.replace(mlp, program=compiled("mlp", (1, 4)).program)
    assert stored_layers(other, "int8") is None
    assert "priced.json" not in _members(to_bytes(other))


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _resealed(members: dict[str, bytes]) -> bytes:
    """The members with every checksum recomputed (a deliberate, consistent edit)."""
    manifest = json.loads(members["manifest.json"])
    body = {k: v for k, v in members.items() if not k.startswith("manifest.")}
    manifest["checksums"] = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(body.items())}
    text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    body.update({"manifest.json": text,
                 "manifest.sha256": (hashlib.sha256(text).hexdigest() + "\n").encode()})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in sorted(body.items()):
            zf.writestr(name, data)
    return out.getvalue()


def test_tampered_prices_are_refused_or_ignored(compiled):
    data = _priced_file(compiled("mlp", (2, 4)))
    members = _members(data)
    doc = json.loads(members["priced.json"])
    key = next(iter(doc["entries"]))

    edited = dict(members, **{"priced.json": members["priced.json"].replace(b'"cycles":', b'"cycles": ')})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:  # an edit without new checksums: corruption
        for name, blob in sorted(edited.items()):
            zf.writestr(name, blob)
    with pytest.raises(ImageError, match="checksum mismatch in priced.json"):
        load_bytes(out.getvalue())

    bad = json.loads(members["priced.json"])
    bad["entries"][key][0]["cycles"] = -1
    with pytest.raises(ImageError, match=r"priced.json: entries\..*cycles"):
        load_bytes(_resealed(dict(members, **{"priced.json": json.dumps(bad).encode()})))

    bad = json.loads(members["priced.json"])
    bad["entries"][key][0]["actions"]["free_lunch"] = 1.0
    with pytest.raises(ImageError, match="unknown energy action 'free_lunch'"):
        load_bytes(_resealed(dict(members, **{"priced.json": json.dumps(bad).encode()})))

    # prices of another file (here: after the program changed) are ignored, not trusted
    other = _members(_priced_file(compiled("mlp", (1, 4))))
    swapped = load_bytes(_resealed(dict(other, **{"priced.json": members["priced.json"]})))
    assert swapped.priced is None
    _, report = simulate(swapped, list(swapped.samples))
    assert _rows(report.layers) == _live(swapped)


def test_code_digest_cache_is_keyed_by_the_sources_stamp(tmp_path, monkeypatch):
    """The digest read from the cache equals the sources' hash; a cache entry written for
    other file stamps is not trusted; caching off hashes every time."""
    monkeypatch.setenv("FLOWC_CACHE_DIR", str(tmp_path))
    priced.code_digest.cache_clear()
    try:
        fresh = priced.code_digest()
        (cache,) = tmp_path.glob("priced-code.json")
        doc = json.loads(cache.read_text())
        priced.code_digest.cache_clear()
        assert priced.code_digest() == fresh  # read back from the cache
        cache.write_text(json.dumps({"stamp": doc["stamp"], "digest": "f" * 64}))
        priced.code_digest.cache_clear()
        assert priced.code_digest() == "f" * 64  # the cache is what a matching stamp reads
        cache.write_text(json.dumps({"stamp": doc["stamp"] + ";moved", "digest": "f" * 64}))
        priced.code_digest.cache_clear()
        assert priced.code_digest() == fresh  # another stamp: hashed again, cache rewritten
        assert json.loads(cache.read_text()) == doc
        monkeypatch.setenv("FLOWC_CACHE_DIR", "off")
        priced.code_digest.cache_clear()
        assert priced.code_digest() == fresh
    finally:
        priced.code_digest.cache_clear()


@pytest.mark.parametrize("residency", ["resident", "streamed"])
@pytest.mark.parametrize("overlap", [True, False])
def test_uniform_loop_cycles_equal_the_per_wave_arrays(residency, overlap):
    """loop_cost's scalar path (every tile with the same pair passes) == the per-wave arrays
    it replaces, over tile counts around the macro count and token counts 0..3."""
    import numpy as np

    mach = dataclasses.replace(load_machine("flexcim"), residency=residency,
                               load_overlap=overlap, macros=4)
    model = CostModel(mach)
    for tiles in (1, 3, 4, 5, 8, 9, 33):
        for tokens in (0, 1, 3):
            for passes in (1, 2):
                for has_load in (True, False):
                    arrays = model._with_loads(model._wave_cycles(
                        2, 4, tokens, np.full(tiles, passes, dtype=np.int64)), has_load)
                    assert model._uniform_cycles(2, 4, tokens, passes, tiles, has_load) == arrays


@pytest.mark.slow
def test_cli_compile_stores_prices_and_flowrun_reports_the_same(tmp_path):
    """`flowc compile` (auto: the MLP is small) writes priced.json, `--price off` does not;
    flowrun's JSON report is the same either way, wall times aside."""
    from flowc.cli.flowrun import main as flowrun_main
    from flowc.cli.main import main
    from flowc.studies.examples import save_example

    save_example("mlp", tmp_path / "mlp.pt2")
    reports = {}
    for price in ("auto", "off"):
        fcim = tmp_path / f"{price}.fcim"
        assert main(["compile", str(tmp_path / "mlp.pt2"), "--nm", "2:4", "-o", str(fcim),
                     "--price", price, "-q"]) == 0
        assert ("priced.json" in _members(fcim.read_bytes())) == (price == "auto")
        assert flowrun_main([str(fcim), "--json", str(tmp_path / f"{price}.json"), "-q"]) == 0
        reports[price] = json.loads((tmp_path / f"{price}.json").read_text())
        for key in ("simulation_wall_s", "check_wall_s", "file"):
            reports[price].pop(key, None)
    assert reports["auto"] == reports["off"]


def test_the_code_digest_covers_modules_loaded_before_it_is_taken():
    """Every Python source in the digest is imported by flowc.runtime.priced, which takes the
    digest at import: the digest describes the code the process runs."""
    import sys

    names = {"flowc." + rel.removesuffix(".py").replace("/", ".")
             for rel in priced.PRICED_SOURCES if rel.endswith(".py")}
    assert names <= set(sys.modules), sorted(names - set(sys.modules))


def test_row_fields_are_the_layer_cost_fields_in_order():
    from flowc.runtime.report import LayerCost

    assert tuple(f.name for f in dataclasses.fields(LayerCost)) == priced.ROW_FIELDS


def test_a_machine_edited_in_place_prices_afresh(compiled):
    """Keys compare machine contents, not objects: an Image whose machine dict is edited in
    place after a lookup does not reuse the key (or the reader's hash) of the old machine."""
    loaded = load_bytes(_priced_file(compiled("mlp", (2, 4))))
    assert stored_layers(loaded, "int8") is not None
    loaded.machine["residency"] = "resident" if loaded.machine["residency"] != "resident" \
        else "streamed"
    assert stored_layers(loaded, "int8") is None


def test_compile_help_states_the_auto_pricing_bound():
    """`flowc compile --help` (and docs/cli.md, generated from it) names the bound up to which
    `--price auto` stores prices: it must be the one the compile applies."""
    import argparse

    from flowc.cli.main import build_flowc_parser

    work = priced.AUTO_PRICE_WORK
    assert work == 1 << (work.bit_length() - 1)  # a power of two, as the help states it
    sub = next(a for a in build_flowc_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    price = next(a for a in sub.choices["compile"]._actions if "--price" in a.option_strings)
    assert f"at most 2^{work.bit_length() - 1} operations" in price.help


def test_the_profile_accounts_as_the_flowrun_call_does(compiled):
    """`flowrun --profile` times the accounting a call pays: with prices stored for this
    machine, reading them (no event built: the plan records none); without, a fresh
    listener per run."""
    from flowc.runtime.profile import profile_image

    image = compiled("mlp", (2, 4))
    plain = profile_image(image, list(image.samples), ort=False)
    assert not plain.stored and plain.spent["accounting"] > 0
    loaded = load_bytes(_priced_file(image))
    it = Interpreter(loaded)
    prof = profile_image(loaded, list(loaded.samples), interp=it, ort=False)
    assert prof.stored and it.plan().events is None  # nothing recorded
    assert prof.spent["accounting"] > 0 and "prices read from the .fcim" in prof.render()
