"""Runtime semantics of the transformer instructions (mm.act, v.embed, layout and math ops),
their closed-form costs, memoised accounting and the logits check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from flowc import isa
from flowc.backend.image import Image, IOSpec, LayerInfo
from flowc.backend.pack import geometry_for, pack
from flowc.machine import load_machine
from flowc.runtime import interpreter
from flowc.runtime.check import compare, cosine, top1_agreement
from flowc.runtime.cost import CostModel
from flowc.runtime.events import ExecEvent
from flowc.runtime.interpreter import Interpreter, exact_int_matmul, int8_matmul
from flowc.runtime.report import CostListener
from flowc.runtime.session import FastCostListener, MemoCostModel, simulate
from flowc.runtime.vector import quantise_per_token

MACHINE = load_machine("flexcim")


def image_of(text: str, inputs: dict[str, tuple], outputs: dict[str, tuple], tensors=None,
             layers=(), packed=None) -> Image:
    program = isa.assemble(text + "\nhalt\n")
    return Image(program=program, tensors=tensors or {},
                 inputs=tuple(IOSpec(n, n, s, "float32") for n, s in inputs.items()),
                 outputs=tuple(IOSpec(n, n, s, "float32") for n, s in outputs.items()),
                 layers=tuple(layers), machine=MACHINE.to_dict(), packed=packed or {})


def test_int8_matmuls_are_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(-127, 128, (5, 1500)).astype(np.int8)  # K > 1024: the chunked path
    b = rng.integers(-127, 128, (1500, 7)).astype(np.int8)
    want = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(int8_matmul(a, b), want)
    for backend in ("int_mm", "float32-chunks"):  # whichever this host picks, both are exact
        interpreter._INT8_BACKEND[:] = [backend]
        np.testing.assert_array_equal(int8_matmul(a, b), want)
    interpreter._INT8_BACKEND.clear()
    np.testing.assert_array_equal(exact_int_matmul(a, b), want)
    batched = exact_int_matmul(a[None, :, :64].repeat(3, 0), b[None, :64].repeat(3, 0))
    np.testing.assert_array_equal(batched[1], a[:, :64].astype(np.int64) @ b[:64])


def test_mm_act_quantises_rows_of_a_and_columns_of_b():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 2, 6, 16)).astype(np.float32)  # [B, H, M, K]
    b = rng.standard_normal((1, 2, 16, 5)).astype(np.float32)  # [B, H, K, N]
    image = image_of("layer name=att kind=attention\nmm.act dst=%y a=%a b=%b",
                     {"a": a.shape, "b": b.shape}, {"y": (1, 2, 6, 5)},
                     layers=[LayerInfo("att", "attention", in_features=16, out_features=5)])
    y32 = Interpreter(image, numerics="fp32").run([a, b])[0]
    np.testing.assert_allclose(y32, a @ b, rtol=1e-5, atol=1e-6)
    qa, sa = quantise_per_token(a)
    qbt, sb = quantise_per_token(np.swapaxes(b, -1, -2))
    acc = qa.astype(np.int64) @ np.swapaxes(qbt, -1, -2).astype(np.int64)
    want = acc.astype(np.float32) * sa[..., :, None] * sb[..., None, :]
    outs, report = simulate(image, [a, b])
    np.testing.assert_array_equal(outs[0], want)
    (att,) = report.layers
    assert att.kind == "attention" and att.macs == 2 * 6 * 16 * 5 and att.cycles > 0


def test_mm_act_cost_is_the_dense_tile_formula_plus_vector_work():
    model = CostModel(MACHINE)
    mc = MACHINE.macro
    instr = isa.MmAct(dst="y", a="a", b="b")
    # 9 heads of Q K^T at T = 128, d = 64: per head N = 128 -> 4 column tiles, K = 64 -> 1 pass
    tiles, tokens = 9 * 4, 128
    ev = ExecEvent(instr, "att", tiles=tiles, tokens=tokens, keep_n=4, group_m=4, k_pass=128,
                   elements=9 * 128 * 128, in_elements=9 * (128 * 64 + 64 * 128))
    cost = model.instr_cost(ev)
    waves = -(-tiles // MACHINE.macros)
    wave = model.tile_timing(4, 4).cycles(tokens)
    macro = mc.cols + (waves - 1) * max(wave, mc.cols) + wave  # overlapped runtime writes
    vec = MACHINE.vector
    vector = -(-ev.in_elements // vec.lanes) * vec.quant + -(-ev.elements // vec.lanes) * vec.deq
    assert cost.cycles == macro + vector
    assert cost.actions["weight_write"] == tiles * mc.cells * (mc.weight_bits + mc.meta_bits)
    assert "dram_read" not in cost.actions  # runtime weights come from the global buffer
    assert cost.setup_cycles == 0  # never resident: they change every inference


def test_embed_gathers_rows_in_both_numerics():
    rng = np.random.default_rng(2)
    table = rng.standard_normal((70, 40)).astype(np.float32)
    from flowc.passes.quantize import quantize_weight

    q, scale = quantize_weight(table)
    geo = geometry_for(4, 4, 4, 32, 32, table.shape)
    fvalues, meta, (values,) = pack(table, geo, "t", (q,))
    scale_p = np.ones(geo.padded_out, np.float32)
    scale_p[:70] = scale
    tensors = {"t.values": values, "t.meta": meta, "t.scale": scale_p, "t.fvalues": fvalues}
    ids = np.array([[3, 69, 0, 3]])
    image = image_of("v.embed dst=%y src=%ids w=@t cols=40", {"ids": ids.shape},
                     {"y": (1, 4, 40)}, tensors)
    image.inputs = (IOSpec("ids", "ids", ids.shape, "int64"),)
    np.testing.assert_array_equal(Interpreter(image, numerics="fp32").run([ids])[0], table[ids])
    deq = q.astype(np.float32) * scale[:, None]
    np.testing.assert_array_equal(Interpreter(image).run([ids])[0], deq[ids])


def test_layout_and_math_ops():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5
    text = """v.slice dst=%s src=%x dim=2 start=1 end=4 step=2
v.cat dst=%c a=%s b=%x dim=2
v.expand dst=%e src=%m shape=[2,3,4]
v.mean dst=%m src=%x
v.pow dst=%p src=%x e=3.0
v.tanh dst=%t src=%x
v.rsqrt dst=%r src=%p"""
    text = text.replace("v.expand dst=%e src=%m shape=[2,3,4]\nv.mean dst=%m src=%x",
                        "v.mean dst=%m src=%x\nv.expand dst=%e src=%m shape=[2,3,4]")
    outs = {"s": (2, 3, 2), "c": (2, 3, 6), "e": (2, 3, 4), "p": (2, 3, 4), "t": (2, 3, 4),
            "r": (2, 3, 4)}
    image = image_of(text, {"x": x.shape}, outs)
    s, c, e, p, t, r = Interpreter(image).run([x])
    np.testing.assert_array_equal(s, x[:, :, 1:4:2])
    np.testing.assert_array_equal(c, np.concatenate([x[:, :, 1:4:2], x], axis=2))
    np.testing.assert_allclose(e, np.broadcast_to(x.mean(-1, keepdims=True), x.shape), rtol=1e-6)
    np.testing.assert_allclose(p, x ** 3, rtol=1e-6)
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(r, 1 / np.sqrt(x ** 3), rtol=1e-6)


MACHINE_VARIANTS = {"streamed": {}, "resident": {"residency": "resident"},
                    "row-shared": {"pair_select": "row-shared"}}


@pytest.mark.parametrize("variant", sorted(MACHINE_VARIANTS))
@pytest.mark.parametrize("source", ["block", "tiny-llama"])
def test_memoised_costs_equal_plain_costs(compiled, source, variant):
    """FastCostListener (deferred, priced once per layer signature, memo shared across runs)
    gives the plain CostListener's report field for field: setup once per weight (resident),
    exact per-tile pair passes (row-shared), MACs and tokens per layer."""
    if source == "block":
        image = compiled("block", (2, 4))
    else:
        from flowc.frontend.load import load_hf
        from flowc.studies.compiler import CompileOptions, compile_captured

        cap = load_hf("hf:tiny-llama", seq_len=8, calib_batches=1)
        image = compile_captured(cap, CompileOptions(nm=(2, 4)), progress=None)
    model = CostModel(replace(MACHINE, **MACHINE_VARIANTS[variant]))
    shared = MemoCostModel(model)
    reports = []
    for listener in (CostListener(model, image.layers, image.tensors),
                     CostListener(MemoCostModel(model), image.layers, image.tensors),
                     FastCostListener(model, image.layers, image.tensors),
                     FastCostListener(shared, image.layers, image.tensors),
                     FastCostListener(shared, image.layers, image.tensors)):  # warm memo
        Interpreter(image, listeners=[listener]).run(list(image.samples))
        reports.append([(lc.name, lc.kind, lc.cycles, lc.macs, lc.kept_macs, lc.tokens,
                         lc.setup_cycles, {k: round(v, 6) for k, v in lc.actions.items()},
                         {k: round(v, 6) for k, v in lc.setup_actions.items()},
                         round(lc.energy_pj, 6), round(lc.setup_energy_pj, 6))
                        for lc in listener.finish()])
    assert all(r == reports[0] for r in reports[1:])
    assert sum(row[2] for row in reports[0]) > 0
    if variant == "resident":  # setup is counted, and only once per weight
        assert sum(row[6] for row in reports[0]) > 0


def test_int8_reference_check_is_relative_to_the_noise_floor():
    """vs the int8 reference: a simulator as close to it as ORT's int8 is to the fp32 model
    passes; one equal to it passes; a wrong lowering (shifted vocabulary) fails however
    noisy int8 is; the fidelity comparison is part of the verdict."""
    rng = np.random.default_rng(5)
    fp32 = rng.standard_normal((1, 64, 40)).astype(np.float32)
    int8 = fp32 + 0.05 * rng.standard_normal(fp32.shape).astype(np.float32)  # ORT int8
    sim = fp32 + 0.05 * rng.standard_normal(fp32.shape).astype(np.float32)  # another draw
    res = compare(["logits"], [sim], [int8], "int8", reference="int8", floor=[fp32])
    out = res.outputs[0]
    assert res.passed and res.reference == "int8"
    assert out.floor_cosine == pytest.approx(float(cosine(int8, fp32)))
    assert out.floor_top1 == top1_agreement(int8, fp32) < 1.0
    assert 1 - out.cosine > 1 - out.floor_cosine  # two draws differ more than one from fp32
    assert compare(["logits"], [int8], [int8], "int8", "int8", floor=[fp32]).outputs[0].cosine \
        == pytest.approx(1.0)
    bad = compare(["logits"], [np.roll(int8, 1, axis=-1)], [int8], "int8", "int8", floor=[fp32])
    assert not bad.passed and "floor" in bad.criterion
    # decided positions: fp32 margin > 2 x the int8 logit noise; there a wrong lowering shows
    assert out.logit_noise == pytest.approx(float(np.std(int8.astype(np.float64) - fp32)))
    assert out.decided_positions > 10 and out.decided_top1 >= 0.9
    assert bad.outputs[0].decided_positions == out.decided_positions
    assert bad.outputs[0].decided_top1 < 0.2
    d = res.to_dict()["outputs"][0]
    assert d["noise_floor"]["top1_agreement"] == out.floor_top1
    with pytest.raises(ValueError, match="floor"):
        compare(["logits"], [sim], [int8], "int8", reference="int8")
    failed_fidelity = compare(["logits"], [np.roll(int8, 1, axis=-1)], [fp32], "int8")
    assert res.passed and not replace(res, fidelity=failed_fidelity).passed


def test_logits_check_uses_top1_agreement():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((1, 10, 50)).astype(np.float32)
    noisy = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    assert top1_agreement(ref, ref) == 1.0
    res = compare(["logits"], [noisy], [ref], "int8")
    assert res.passed and res.outputs[0].positions == 10 and res.top1_agreement >= 0.9
    shuffled = np.roll(ref, 1, axis=-1)  # a wrong lowering: everything off by one
    bad = compare(["logits"], [shuffled], [ref], "int8")
    assert not bad.passed and bad.top1_agreement < 0.5
    assert "top-1 agreement >= 0.5" in bad.criterion


@pytest.mark.parametrize("numerics", ["int8", "fp32"])
def test_markers_send_no_events(compiled, numerics):
    image = compiled("mlp", (2, 4))
    seen = []

    class Spy:
        def on_instr(self, ev):
            seen.append(ev.instr.mnemonic)

        def on_loop(self, ev):
            seen.append("loop")

    Interpreter(image, numerics=numerics, listeners=[Spy()]).run(list(image.samples))
    assert not {"layer", "halt", "v.reshape"} & set(seen) and seen.count("loop") == 3
