"""The interpreter: batched == tile-by-tile reference, int8 GEMMs == ORT MatMulInteger."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from flowc.runtime.check import run_reference
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.vector import quantise_per_token


def run_state(image, mode, numerics="int8"):
    it = Interpreter(image, numerics=numerics, mode=mode)
    state_holder = {}
    orig = it._loop

    def spy(state, loop):
        orig(state, loop)
        state_holder["state"] = state

    it._loop = spy
    outs = it.run(list(image.samples))
    return outs, state_holder["state"]


@pytest.mark.parametrize("nm", [(2, 4), (1, 8), (4, 8), None])
def test_batched_equals_reference_bit_for_bit(compiled, nm):
    image = compiled("mlp", nm)
    out_b, st_b = run_state(image, "batched")
    out_r, st_r = run_state(image, "reference")
    accs = [k for k in st_b.bufs if k.endswith(".acc")]
    assert len(accs) == 3
    for k in accs:
        assert st_b.bufs[k].dtype == np.int32
        np.testing.assert_array_equal(st_b.bufs[k], st_r.bufs[k])
    for a, b in zip(out_b, out_r, strict=True):
        np.testing.assert_array_equal(a, b)


def matmul_integer_model(k, n):
    a = helper.make_tensor_value_info("a", TensorProto.INT8, [None, k])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "mmi", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


@pytest.mark.parametrize("nm", [(2, 4), (1, 8), None])
def test_int8_gemm_equals_ort_matmulinteger(compiled, nm):
    image = compiled("mlp", nm)
    _, state = run_state(image, "batched")
    it = Interpreter(image)
    for info in [i for i in image.layers if i.kind == "gemm"]:
        # find the int8 input of this layer from the program
        body = [ins for ins in image.program.instructions if getattr(ins, "w", None) == info.name]
        src = next(ins.src for ins in image.program.instructions
                   if ins.mnemonic == "ld.act" and ins in _loop_of(image, info.name))
        xq = state.bufs[src]
        assert xq.dtype == np.int8 and body
        wt = it.dense_weight(info.name, *info.native)  # int8 [K_pad, N_pad]
        k = xq.shape[-1]
        ref = run_reference(matmul_integer_model(k, wt.shape[1]), [xq, wt[:k]])[0]
        np.testing.assert_array_equal(state.bufs[f"{info.name}.acc"], ref)


def _loop_of(image, name):
    instrs = image.program.instructions
    for i, ins in enumerate(instrs):
        if ins.mnemonic == "ld.tile" and ins.w == name:
            return instrs[i - 1: i + 5]
    raise AssertionError(name)


def test_fp32_numerics_match_ort_to_1e4(compiled):
    image = compiled("block", (2, 4))
    out = Interpreter(image, numerics="fp32").run(list(image.samples))
    ref = run_reference(image.reference_model(), list(image.samples))
    for o, r in zip(out, ref, strict=True):
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()


def test_quantise_per_token_known_values():
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    q, s = quantise_per_token(x)
    np.testing.assert_array_equal(q, [[64, -127, 32], [0, 0, 0]])  # 63.5 rounds to even
    np.testing.assert_allclose(s, [2 / 127, 1.0])


def test_wrong_input_shape_is_one_clear_error(compiled):
    from flowc.errors import UsageError

    image = compiled("mlp", (2, 4))
    with pytest.raises(UsageError, match=r"input x: expected shape 8x784, got 3x784"):
        Interpreter(image).run([np.zeros((3, 784), np.float32)])
