"""Exact linear products on ONNX Runtime's MLAS: the plan's GEMM engine where it is faster.

A fused linear step (flowc.runtime.fused) multiplies int8-valued float32 activations by an
int8-valued float32 W^T in K chunks of <= 1,024, so every partial sum is an integer below
2**24 and exact in any summation order, blocking or kernel: any float32 GEMM gives the same
bits. On this project's AMD AVX2 host torch's GEMMs (MKL, or oneDNN on reordered weights)
took 1.0-2x ONNX Runtime's MLAS on the same products (bench/gemm_engines.py measures it), so
each weight gets a small ONNX Runtime session that holds it as an initialiser (prepacked
once by MLAS, as ONNX Runtime does for any model's constant weights) and computes, per K
chunk, x[:, chunk] @ W[chunk], then

    y = ((y0 + y1) + 0.0) * a[:, None] * wscale

- the handlers' `psum -> float32 -> * a[..., None] * w`, the product rounded once from the
exact integer sum (two exact chunks added in float32; the + 0.0 turns a -0.0 zero sum into
the +0.0 of the integer sum). Those are ONNX Add and Mul nodes in the same session, written
straight into a numpy array: each is one correctly rounded float32 operation per element,
in the handlers' order, so the result is the handlers' bit for bit (tests/runtime/
test_mlas.py), and the dequantisation runs on the session's threads without a pass through
torch (measured on SmolLM2's 211 products at 128 tokens, alternating: 277/351/313 ms against
356/371/338 ms with the scaling in torch after the session). Graph optimisations are off, so
the session runs exactly these nodes. Products of more than two chunks stay in torch (their
chunk sums need float64).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flowc.runtime.gemm import EXACT_CHUNK

MAX_K = 2 * EXACT_CHUNK  # two exact chunks: their float32 sum is the one rounding


def available() -> bool:
    """Whether onnxruntime imports here (it is a core dependency, but a broken install must
    only cost speed: the plan then stays on torch)."""
    try:
        import onnxruntime  # noqa: F401
        from onnx import helper  # noqa: F401
    except ImportError:
        return False
    return True


def linear_session(wt: np.ndarray, wscale: np.ndarray, threads: int
                   ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function (x [m, K] float32, a [m] float32) -> float32 [m, N], the dequantised exact
    product with W^T = wt [K, N] (K <= MAX_K). `wt` is handed to ONNX Runtime without a copy
    and must stay alive as long as the function (it keeps it)."""
    import onnxruntime as ort

    k, n = wt.shape
    if k > MAX_K:
        raise ValueError(f"mlas: K = {k} needs more than two exact chunks")
    model, weights = _linear_model(wt, np.ascontiguousarray(wscale, np.float32).reshape(n))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # idle workers sleep: spinning ones starve torch's threads on a 2-core host (check.py)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no arena per session: one per weight would keep its largest intermediates for good
    # (SmolLM2 at 2,048 tokens: 6.9 GB after two runs with arenas, measured)
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    values = {name: ort.OrtValue.ortvalue_from_numpy(v) for name, v in weights.items()}
    opts.add_external_initializers(list(values), list(values.values()))
    try:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"mlas: onnxruntime refuses a {k} x {n} linear session: {first}") from exc

    def product(x: np.ndarray, a: np.ndarray) -> np.ndarray:
        rows = x.shape[0]
        y = np.empty((rows, n), np.float32)
        bind = sess.io_binding()
        bind.bind_cpu_input("x", x)
        bind.bind_cpu_input("a", a.reshape(rows, 1))
        bind.bind_output("y", "cpu", 0, np.float32, y.shape, y.ctypes.data)  # written in place
        sess.run_with_iobinding(bind)
        return y

    product.keep = (weights, values, sess)  # type: ignore[attr-defined]  # ORT reads them in place
    return product


def _linear_model(wt: np.ndarray, wscale: np.ndarray) -> tuple[bytes, dict[str, np.ndarray]]:
    """The ONNX graph of the dequantised product (weights as external initialisers,
    supplied in memory), and its weights: per K chunk a MatMul, the chunks added (two exact
    sums, one rounding), + 0.0, * a, * wscale: each an IEEE float32 operation per element,
    the handlers' order."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = wt.shape
    f32 = TensorProto.FLOAT
    nodes, small, weights = [], {"zero": np.zeros((), np.float32)}, {"wscale": wscale}
    chunks = [(k0, min(k, k0 + EXACT_CHUNK)) for k0 in range(0, k, EXACT_CHUNK)]
    for i, (k0, k1) in enumerate(chunks):
        xi = "x"
        if len(chunks) > 1:
            xi = f"x{i}"
            small.update({f"start{i}": np.array([k0], np.int64), f"end{i}": np.array([k1], np.int64),
                          "axis": np.array([1], np.int64)})
            nodes.append(helper.make_node("Slice", ["x", f"start{i}", f"end{i}", "axis"], [xi]))
        weights[f"w{i}"] = np.ascontiguousarray(wt[k0:k1], dtype=np.float32)
        nodes.append(helper.make_node("MatMul", [xi, f"w{i}"], [f"y{i}"]))
    total = "y0"
    if len(chunks) == 2:
        nodes.append(helper.make_node("Add", ["y0", "y1"], ["ysum"]))
        total = "ysum"
    nodes += [helper.make_node("Add", [total, "zero"], ["ypos"]),
              helper.make_node("Mul", ["ypos", "a"], ["ya"]),
              helper.make_node("Mul", ["ya", "wscale"], ["y"])]
    graph = helper.make_graph(
        nodes, "flowc_linear", [helper.make_tensor_value_info("x", f32, ["rows", k]),
                                helper.make_tensor_value_info("a", f32, ["rows", 1])],
        [helper.make_tensor_value_info("y", f32, ["rows", n])],
        [numpy_helper.from_array(v, name) for name, v in small.items()])
    for name, v in weights.items():  # declared here, the data handed over in memory
        t = graph.initializer.add()
        t.name, t.data_type = name, f32
        t.dims.extend(v.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "flowc-memory"), ("offset", "0"), ("length", str(v.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), weights
