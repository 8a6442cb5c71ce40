"""The execution plan (flowc.runtime.plan) == the per-opcode handlers, bit for bit."""

import numpy as np
import pytest

from flowc.backend.pack import geometry_for, pack, unpack, unpack_slow
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.plan import Plan, mismatches
from flowc.runtime.weights import dense_w, dense_wt


@pytest.mark.parametrize("nm", [(1, 8), (2, 4), (2, 8), (4, 8), (4, 4), (8, 8)])
@pytest.mark.parametrize("shape", [(70, 100), (96, 1100)])
def test_fast_unpack_equals_unpack(nm, shape):
    """unpack, dense_wt and dense_w give the index-by-index inverse's matrix exactly, which is
    the packed weight itself, zero-padded (random N:M weights, ragged shapes)."""
    n, m = nm
    rng = np.random.default_rng(n * 10 + m)
    pad = -(-shape[1] // m) * m
    w = rng.integers(-127, 128, (shape[0], pad)).astype(np.int8)
    keep = np.argsort(rng.random((shape[0], pad // m, m)), axis=-1)[..., :n]
    mask = np.zeros((shape[0], pad // m, m), bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    w = (w.reshape(mask.shape) * mask).reshape(shape[0], pad)[:, : shape[1]]
    vals, meta, _ = pack(w, geometry_for(n, m, 8, 16, 32, shape), "t")
    ref = unpack_slow(vals, meta, n, m)
    assert np.array_equal(unpack(vals, meta, n, m), ref) and np.array_equal(ref, w_padded(w, ref))
    assert np.array_equal(dense_wt(vals, meta, n, m, np.int8), ref.T)
    assert dense_wt(vals, meta, n, m).flags.c_contiguous
    assert np.array_equal(dense_w(vals, meta, n, m, np.float32), ref.astype(np.float32))


def w_padded(w, like):
    out = np.zeros(like.shape, w.dtype)
    out[: w.shape[0], : w.shape[1]] = w
    return out


def assert_plan_matches(image, numerics):
    """Every buffer of a plan run equals the handlers' exactly: int8 against the tile-by-tile
    reference (integer arithmetic: any order gives the same bits) and the batched dispatch;
    fp32 against the batched dispatch (the same float32 GEMM; the tile-by-tile reference sums
    fp32 tiles in another order, so it differs from both by float rounding)."""
    if numerics == "int8":
        assert mismatches(image, numerics) == []
    assert mismatches(image, numerics, against="batched") == []


@pytest.mark.parametrize("numerics", ["int8", "fp32"])
@pytest.mark.parametrize("name,nm", [("mlp", (2, 4)), ("mlp", (1, 8)), ("mlp", (4, 8)),
                                     ("mlp", None), ("block", (2, 4)), ("block", None)])
def test_plan_equals_reference_on_examples(compiled, name, nm, numerics):
    assert_plan_matches(compiled(name, nm), numerics)


@pytest.mark.slow
def test_plan_equals_reference_on_a_llama():
    """Embedding, RoPE, attention (mm.act), RMSNorm, SiLU, lm_head: every buffer equal."""
    from flowc.frontend.load import load_hf
    from flowc.studies.compiler import CompileOptions, compile_captured

    cap = load_hf("hf:tiny-llama", seq_len=8, calib_batches=1)
    image = compile_captured(cap, CompileOptions(nm=(2, 4)), progress=None)
    assert any(i.mnemonic == "v.embed" for i in image.program.instructions)
    assert_plan_matches(image, "int8")
    assert_plan_matches(image, "fp32")


def test_plan_replays_the_events_it_recorded(compiled):
    """Events are built on the first accounted run and replayed: a later run's listeners get
    exactly the events the batched dispatch builds afresh (same instructions, same sizes)."""

    class Trace:
        def __init__(self):
            self.events = []

        def on_instr(self, ev):
            self.events.append(ev)

        on_loop = on_instr

    image = compiled("block", (2, 4))
    plan, fresh = Trace(), Trace()
    it = Interpreter(image, listeners=[Trace()])
    it.run(list(image.samples))  # records
    it.listeners = [plan]
    it.run(list(image.samples))  # replays
    Interpreter(image, mode="batched", listeners=[fresh]).run(list(image.samples))
    assert plan.events == fresh.events and len(plan.events) > 10


def test_profile_attributes_the_run(compiled):
    image = compiled("block", (2, 4))
    it = Interpreter(image)
    spent = it.profile(list(image.samples))
    assert set(spent) == {"gemm", "attention", "vector", "embed", "control", "accounting",
                          "dispatch"}
    assert spent["gemm"] > 0 and spent["vector"] > 0 and spent["accounting"] == 0
    assert isinstance(it.plan(), Plan) and it.plan() is it.plan()  # prepared once


def _rows(layers):
    return [(lc.name, lc.kind, lc.cycles, lc.macs, lc.kept_macs, lc.tokens, lc.setup_cycles,
             lc.actions, lc.setup_actions, lc.energy_pj, lc.setup_energy_pj) for lc in layers]


@pytest.mark.parametrize("variant", [{}, {"residency": "resident"},
                                     {"pair_select": "row-shared"}])
@pytest.mark.parametrize("name", ["mlp", "block"])
def test_priced_once_equals_per_event_pricing(compiled, name, variant):
    """Costs priced once per (program, machine) from the plan's recorded events equal, field
    for field and exactly, a plain CostListener pricing every event live as the batched
    dispatch emits it; a second run reuses the priced result and still equals it."""
    from dataclasses import replace

    from flowc.machine import load_machine
    from flowc.runtime.cost import CostModel
    from flowc.runtime.report import CostListener
    from flowc.runtime.session import priced_layers

    image = compiled(name, (2, 4))
    model = CostModel(replace(load_machine("flexcim"), **variant))
    live = CostListener(model, image.layers, image.tensors)
    Interpreter(image, mode="batched", listeners=[live]).run(list(image.samples))
    want = _rows(live.finish())
    it = Interpreter(image)
    it.plan().record = True
    it.run(list(image.samples))
    first = priced_layers(it, model)
    first[0].actions.clear()  # callers get copies: the cache is not theirs to edit
    it.run(list(image.samples))
    assert _rows(priced_layers(it, model)) == want
    assert len(it.plan().priced) == 1 and sum(r[2] for r in want) > 0
