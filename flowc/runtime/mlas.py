"""Exact linear products on ONNX Runtime's MLAS: the plan's GEMM engine where it is faster.

A fused linear step (flowc.runtime.fused) multiplies int8-valued float32 activations by an
int8-valued W^T and dequantises: the handlers' `psum -> float32 -> * a[..., None] * w`.
Each weight gets a small ONNX Runtime session that holds it as an initialiser (prepacked
once by MLAS, as ONNX Runtime does for any model's constant weights), in one of two graphs:

- **integer** (the default): `MatMulInteger` on uint8 operands with zero point 128 (the
  int8 values + 128, the activations' made in numpy by `offset_uint8`), i.e. the exact
  int32 sum, written in place into a numpy array; then, outside the session
  (`dequantise`), the cast to float32 (one correct rounding, +0.0 for a zero sum, as the
  handlers' cast), * a, * wscale. On this project's
  AVX2 host MLAS's uint8 x uint8 kernel took 0.65-0.75x the time of its float32 GEMM on
  SmolLM2's products (bench/gemm_engines.py). uint8 x int8 would be faster still, but
  MLAS computes it with a saturating 16-bit multiply-add on AVX2 (wrong sums, measured),
  and int8 x int8 ran 3-5x slower than float32. Exact for K up to 33,025 (255 * 255 * K
  must fit int32).
- **float chunks** (the fallback): per K chunk of <= 1,024 a float32 MatMul (every partial
  sum an integer below 2**24, exact in any order), the two chunks added (one rounding),
  + 0.0 (a -0.0 sum becomes the integer sum's +0.0), * a, * wscale. K <= 2,048.

Which one runs is decided once per process by a probe (`integer_exact`): a product of
extreme operands (every sum pattern a saturating kernel gets wrong) must equal numpy's
int64 sum, or the float graph is used. Every node is one correctly rounded float32 (or
exact integer) operation per element in the handlers' order, so the result is the
handlers' bit for bit (tests/runtime/test_mlas.py).
Graph optimisations are off, so the session runs exactly these nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from flowc.runtime.gemm import EXACT_CHUNK
from flowc.runtime.vector import ONE_THREAD

FLOAT_MAX_K = 2 * EXACT_CHUNK  # two exact chunks: their float32 sum is the one rounding
INTEGER_MAX_K = 32768  # uint8 x uint8 sums: 255 * 255 * K < 2**31
OFFSET = 128  # int8 value + 128 = the uint8 operand; 128 is the zero point of both


def available() -> bool:
    """Whether onnxruntime imports here (it is a core dependency, but a broken install must
    only cost speed: the plan then stays on torch)."""
    try:
        import onnxruntime  # noqa: F401
        from onnx import helper  # noqa: F401
    except ImportError:
        return False
    return True


def max_k() -> int:
    """The longest K one session multiplies exactly on this host."""
    return INTEGER_MAX_K if integer_exact() else FLOAT_MAX_K


_INTEGER_EXACT: list[bool] = []


def integer_exact() -> bool:
    """Whether MLAS's uint8 GEMM gives exact sums on this host (probed once per process:
    a kernel that saturates 16-bit pair sums, or any other shortcut, fails it)."""
    if not _INTEGER_EXACT:
        _INTEGER_EXACT.append(_probe())
    return _INTEGER_EXACT[0]


def _probe() -> bool:
    """Extreme operands (runs of -128 and 127, alternating signs, random) at K = 1,100, past
    the float chunk, compared with numpy's int64 sums; scales 1, so the output is the
    int32 sum cast to float32."""
    k = 1100
    rng = np.random.default_rng(0)
    x = np.stack([np.full(k, -128), np.full(k, 127), np.tile([127, -128], k // 2),
                  rng.integers(-128, 128, k)]).astype(np.float32)
    w = np.stack([np.full(k, -128), np.full(k, 127), np.tile([-128, 127], k // 2),
                  np.tile([127, 127, -128, -128], k // 4), rng.integers(-128, 128, k)], 1)
    w = w.astype(np.float32)
    want = (x.astype(np.int64) @ w.astype(np.int64)).astype(np.float32)
    try:
        product = linear_session(w, np.ones(w.shape[1], np.float32), 1, integer=True)
        return bool(np.array_equal(product(x, np.ones(len(x), np.float32)), want))
    except RuntimeError:  # onnxruntime refused the graph: the float chunks
        return False


def linear_session(wt: np.ndarray, wscale: np.ndarray, threads: int,
                   integer: bool | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function (x [m, K] float32, a [m] float32) -> float32 [m, N], the dequantised exact
    product with the int8-valued W^T = wt [K, N] (K <= max_k()), on the integer graph when
    `integer` (default: when the probe found it exact here), else the float chunks. The
    weights handed to ONNX Runtime are kept by the function."""
    import onnxruntime as ort

    if integer is None:
        integer = integer_exact()
    k, n = wt.shape
    limit = INTEGER_MAX_K if integer else FLOAT_MAX_K
    if k > limit:
        raise ValueError(f"mlas: K = {k} is past the {limit} the "
                         f"{'integer' if integer else 'float-chunk'} graph multiplies exactly")
    scale = np.ascontiguousarray(wscale, np.float32).reshape(n)
    scale_t = torch.from_numpy(scale)
    model, weights = (_integer_model if integer else _linear_model)(wt, scale)
    opts = _options(threads)
    values = {name: ort.OrtValue.ortvalue_from_numpy(v) for name, v in weights.items()}
    opts.add_external_initializers(list(values), list(values.values()))
    try:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"mlas: onnxruntime refuses a {k} x {n} linear session: {first}") from exc

    def product(x: np.ndarray, a: np.ndarray, bounds: Sequence[int] | None = None):
        """[rows, N]; with `bounds` (column offsets), its column blocks (column_blocks)."""
        rows = x.shape[0]
        bind = sess.io_binding()
        if integer:
            sums = np.empty((rows, n), np.int32)
            bind.bind_cpu_input("x", offset_uint8(x))
            bind.bind_output("y", "cpu", 0, np.int32, sums.shape, sums.ctypes.data)
            sess.run_with_iobinding(bind)
            if bounds is None:
                return dequantise(sums, a, scale, scale_t)
            # each block dequantised on its own: the cast writes it contiguous, no extra copy
            return [dequantise(sums[:, b0:b1], a, scale[b0:b1], scale_t[b0:b1])
                    for b0, b1 in zip(bounds, [*bounds[1:], n], strict=True)]
        y = np.empty((rows, n), np.float32)
        bind.bind_cpu_input("x", x)
        bind.bind_cpu_input("a", a.reshape(rows, 1))
        bind.bind_output("y", "cpu", 0, np.float32, y.shape, y.ctypes.data)  # written in place
        sess.run_with_iobinding(bind)
        return y if bounds is None else column_blocks(y, bounds)

    product.keep = (weights, values, sess)  # type: ignore[attr-defined]  # ORT reads them in place
    product.integer = integer  # type: ignore[attr-defined]
    return product


def dequantise(sums: np.ndarray, a: np.ndarray, wscale: np.ndarray,
               wscale_t: torch.Tensor) -> np.ndarray:
    """float32(sums) * a[:, None] * wscale, the handlers' v.deq (each a correctly rounded
    float32 operation, so any engine gives the same bits): in numpy below
    vector.ONE_THREAD elements (per-call costs), else in torch on its threads (ONNX
    Runtime's Cast and two Muls took 89 against 78 ms for one SmolLM2 layer's seven products
    at 2,048 tokens, median of 21, and about the same as numpy at 128)."""
    if sums.size < ONE_THREAD:
        y = sums.astype(np.float32)
        y *= a.reshape(-1, 1)
        y *= wscale
        return y
    y = torch.from_numpy(sums).float()
    return y.mul_(torch.from_numpy(a).reshape(-1, 1)).mul_(wscale_t).numpy()


def column_blocks(y: np.ndarray, bounds: Sequence[int]) -> list[np.ndarray]:
    """y's columns [b_i, b_i+1) for the offsets `bounds` (0 first; the last block ends at
    y's last column), each copied into its own C-contiguous array."""
    ends = [*bounds[1:], y.shape[1]]
    return [np.ascontiguousarray(y[:, b0:b1]) for b0, b1 in zip(bounds, ends, strict=True)]


def offset_uint8(x: np.ndarray) -> np.ndarray:
    """int8-valued float32 x as the uint8 x + 128 of the integer graph: the cast to int8
    (exact for integers in -128..127), its bytes with the sign bit flipped (two's
    complement v + 128 = v XOR 0x80). Here, not in the graph: ONNX Runtime's Add and Cast
    took 10 ms of a 2,048 x 1,536 x 576 product's 30, numpy 1 ms (measured)."""
    u = x.astype(np.int8).view(np.uint8)
    u ^= np.uint8(0x80)
    return u


def _options(threads: int):
    import onnxruntime as ort

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
    return opts


def _integer_model(wt: np.ndarray, wscale: np.ndarray) -> tuple[bytes, dict[str, np.ndarray]]:
    """MatMulInteger of x + 128 (uint8, made by offset_uint8) with W^T + 128 (zero points
    128): the exact int32 sums of the int8 values, dequantised by `dequantise`."""
    from onnx import TensorProto, helper

    wu = np.add(wt, OFFSET, dtype=np.float32)
    if wu.size and (wu.min() < 0 or wu.max() > 255):
        raise ValueError("mlas: weights outside int8")
    small = {"zero_point": np.array(OFFSET, np.uint8)}
    nodes = [helper.make_node("MatMulInteger", ["x", "w", "zero_point", "zero_point"], ["y"])]
    return _model(nodes, wt.shape, small, {"w": wu.astype(np.uint8)},
                  x_type=TensorProto.UINT8, y_type=TensorProto.INT32)


def _linear_model(wt: np.ndarray, wscale: np.ndarray) -> tuple[bytes, dict[str, np.ndarray]]:
    """The ONNX graph of the dequantised product (weights as external initialisers,
    supplied in memory), and its weights: per K chunk a MatMul, the chunks added (two exact
    sums, one rounding), + 0.0, * a, * wscale: each an IEEE float32 operation per element,
    the handlers' order."""
    from onnx import helper

    k = wt.shape[0]
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
    return _model(nodes, wt.shape, small, weights)


def _model(nodes: list, shape: tuple, small: dict, weights: dict[str, np.ndarray],
           x_type: int | None = None, y_type: int | None = None
           ) -> tuple[bytes, dict[str, np.ndarray]]:
    """The serialised graph of `nodes` (input x [rows, K] of `x_type`, float32 unless given,
    and when y is float32 the row scales a [rows, 1]; output y [rows, N] of `y_type`):
    `small` constants inline, `weights` as external initialisers whose data is handed over
    in memory."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = shape
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", x_type or f32, ["rows", k])]
    if (y_type or f32) == f32:
        inputs.append(helper.make_tensor_value_info("a", f32, ["rows", 1]))
    graph = helper.make_graph(
        nodes, "flowc_linear", inputs,
        [helper.make_tensor_value_info("y", y_type or f32, ["rows", n])],
        [numpy_helper.from_array(v, name) for name, v in small.items()])
    for name, v in weights.items():  # declared here, the data handed over in memory
        t = graph.initializer.add()
        t.name, t.data_type = name, helper.np_dtype_to_tensor_dtype(v.dtype)
        t.dims.extend(v.shape)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "flowc-memory"), ("offset", "0"), ("length", str(v.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), weights
