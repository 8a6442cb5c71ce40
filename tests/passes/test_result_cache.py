"""The pass cache (flowc.passes.result_cache): a hit gives the bytes of a miss; any changed
input or option misses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from flowc.backend.container import to_bytes
from flowc.frontend.load import load_hf
from flowc.passes import result_cache
from flowc.studies.compiler import CompileOptions, compile_captured

PIPELINE = "calibrate,nm-prune{n=2,m=4,skip=lm_head},verify-nm,quantize"


@pytest.fixture(scope="module")
def tiny():
    return load_hf("hf:tiny-llama", seq_len=8, calib_batches=2, eval_windows=1)


def _compile(cap, log: list[str], pipeline: str = PIPELINE, cache: bool = True,
             reference: bool = True) -> bytes:
    cap = copy.copy(cap)
    cap.gm = copy.deepcopy(cap.gm)  # every compile starts from the same captured graph
    for node in cap.gm.graph.nodes:  # (deepcopy shares the nested annotation dicts)
        if "flowc" in node.meta:
            node.meta["flowc"] = copy.deepcopy(node.meta["flowc"])
    opts = CompileOptions(pipeline=pipeline, pass_cache=cache, reference=reference)
    return to_bytes(compile_captured(cap, opts, progress=log.append))


@pytest.mark.slow
def test_hit_gives_the_bytes_of_a_miss_and_changes_miss(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWC_CACHE_DIR", str(tmp_path))
    first, second, other, uncached = [], [], [], []
    a = _compile(tiny, first)
    assert any(m.startswith("stored in the pass cache") for m in first)
    assert any(m.startswith("pass nm-prune done") for m in first)
    b = _compile(tiny, second)
    assert a == b
    assert any("cached" in m for m in second)
    assert not any(m.startswith("pass ") for m in second)  # no pass ran
    assert any(m.startswith("held-out perplexity") for m in second)
    assert any(m.startswith("reference ONNX model: cached") for m in second)
    assert not any(m.startswith("exporting") for m in second)
    # an option changes: a miss (the passes run); pruning the tied lm_head unties it, a new
    # node the cache cannot restore: not stored
    c = _compile(tiny, other, PIPELINE.replace(",skip=lm_head", ""), reference=False)
    assert c != a and any(m.startswith("pass quantize done") for m in other)
    assert "not cached: the passes changed the graph's structure" in " ".join(other)
    assert len(list((tmp_path / "passes").iterdir())) == 1
    # off: nothing read or stored, the same bytes
    assert _compile(tiny, uncached, cache=False) == a
    assert not any("cache" in m for m in uncached)


def test_key_changes_with_weights_inputs_and_options(tiny):
    gm = copy.deepcopy(tiny.gm)
    calib = [x for item in tiny.info["calib"] for x in item]
    base = result_cache.result_key(gm, calib, {"pipeline": "p"})
    assert result_cache.result_key(gm, calib, {"pipeline": "p"}) == base
    assert result_cache.result_key(gm, calib, {"pipeline": "q"}) != base
    changed = [calib[0].clone(), *calib[1:]]
    changed[0][0, 0] += 1
    assert result_cache.result_key(gm, changed, {"pipeline": "p"}) != base
    name, t = next(iter(result_cache.attr_tensors(gm).items()))
    with torch.no_grad():
        t.view(-1)[0] += 1.0
    assert result_cache.result_key(gm, calib, {"pipeline": "p"}) != base, name


def test_bytes_of_scalar_empty_and_bfloat16_tensors():
    assert bytes(result_cache._tensor_bytes(torch.tensor(1.5))) == np.float32(1.5).tobytes()
    assert bytes(result_cache._tensor_bytes(torch.zeros(0, 3))) == b""
    assert len(result_cache._tensor_bytes(torch.ones(3, dtype=torch.bfloat16))) == 6
    assert bytes(result_cache._tensor_bytes(torch.arange(6.0).reshape(2, 3).T)) == \
        np.arange(6.0, dtype=np.float32).reshape(2, 3).T.copy().tobytes()


def test_annotations_round_trip_with_their_types():
    arrays: dict[str, np.ndarray] = {}
    value = {"pattern": (2, 4), "list": [1, 2.5, None, True, "x"], "s": np.float32(0.25),
             "q": np.arange(6, dtype=np.int8).reshape(2, 3), "t": torch.ones(3),
             "nested": {"a": ((1, 2), [3])}}
    back = result_cache._decode(result_cache._encode(value, arrays), arrays)
    assert back["pattern"] == (2, 4) and isinstance(back["pattern"], tuple)
    assert back["list"] == [1, 2.5, None, True, "x"] and back["nested"] == {"a": ((1, 2), [3])}
    assert type(back["s"]) is np.float32 and back["s"] == np.float32(0.25)
    assert back["q"].dtype == np.int8 and np.array_equal(back["q"], value["q"])
    assert isinstance(back["t"], torch.Tensor) and torch.equal(back["t"], value["t"])
    with pytest.raises(result_cache.Uncacheable):
        result_cache._encode({1: "non-string key"}, arrays)


def test_the_source_of_a_pass_defined_outside_flowc_is_in_the_key(tmp_path, monkeypatch):
    """A user's own pass: editing its file changes the digest (so the key), flowc's own passes
    add nothing, and a pass class with no source file cannot be keyed (None: cache unused)."""
    import importlib
    import sys
    import types

    from flowc.passes.registry import get_pass

    monkeypatch.syspath_prepend(str(tmp_path))
    src = tmp_path / "my_cache_probe_pass.py"
    body = ("from flowc.passes.base import Pass\n\n"
            "class MyPass(Pass):\n    name = 'my-cache-probe'\n    SCALE = {}\n")
    src.write_text(body.format(1))
    module = importlib.import_module("my_cache_probe_pass")
    first = result_cache.pass_code_digest([module.MyPass])
    src.write_text(body.format(2))
    second = result_cache.pass_code_digest([module.MyPass])
    assert first != second
    builtin = get_pass("quantize")
    assert result_cache.pass_code_digest([builtin]) == result_cache.pass_code_digest([])
    fileless = types.ModuleType("fileless_pass_module")
    monkeypatch.setitem(sys.modules, "fileless_pass_module", fileless)
    orphan = type("Orphan", (module.MyPass,), {"__module__": "fileless_pass_module"})
    assert result_cache.pass_code_digest([orphan]) is None
