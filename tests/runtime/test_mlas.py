"""Linear products on ONNX Runtime's MLAS (flowc.runtime.mlas) and every other engine of
fused_linear.LinearProduct give the handlers' bits: int32 sum -> float32 -> * a * w."""

import numpy as np
import pytest
import torch

from flowc.runtime import fused_linear, mlas
from flowc.runtime.gemm import exact_int_matmul

pytestmark = pytest.mark.skipif(not mlas.available(), reason="onnxruntime does not import")


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def operands(k: int, rows: int = 7, n: int = 9, seed: int = 0):
    """int8 x and W^T with sums past 2**24 for K > 1024, a row and a column of -0.0 products,
    per-row and per-column scales; and the handlers' result (v.deq of the int32 psum)."""
    rng = np.random.default_rng(seed + k)
    x = rng.integers(90, 128, (rows, k)).astype(np.int8)
    x[1] = rng.integers(-127, 128, k)
    w = rng.integers(90, 128, (k, n)).astype(np.int8)
    w[:, 2] = rng.integers(-127, 128, k)
    x[0] = 0
    w[:, 0] = -3  # row 0 x column 0: every product is +0 * -3 = -0.0 in float32
    a = rng.uniform(1e-3, 2, rows).astype(np.float32)
    wscale = rng.uniform(1e-3, 2, n).astype(np.float32)
    want = exact_int_matmul(x, w).astype(np.float32) * a[:, None] * wscale
    xf = x.astype(np.float32)
    xf[0, ::2] = -0.0  # quantised zeros can be -0.0 (rint of a small negative)
    return xf, w.astype(np.float32), a, wscale, want


def graph(integer: bool) -> bool:
    if integer and not mlas.integer_exact():
        pytest.skip("MLAS's uint8 GEMM failed the exactness probe on this host: the plan "
                    "uses the float-chunk graph")
    return integer


@pytest.mark.parametrize(("k", "integer"), [(k, True) for k in (64, 1024, 1500, 2048, 5000)]
                         + [(k, False) for k in (64, 1024, 1500, 2048)])
def test_mlas_session_equals_the_handlers_bits(k, integer):
    x, w, a, wscale, want = operands(k)
    assert np.abs(exact_int_matmul(x.astype(np.int8), w.astype(np.int8))).max() > 2 ** 24 \
        or k <= 1024  # the sum is past float32's exact integers: one rounding, as the cast
    for threads in (1, 2):
        product = mlas.linear_session(w, wscale, threads, integer=graph(integer))
        assert product.integer == integer
        for _ in range(2):
            assert np.array_equal(bits(product(x, a)), bits(want))


def test_large_outputs_dequantise_in_torch_with_the_handlers_bits():
    """An output past vector.ONE_THREAD elements is dequantised in torch, a small one in
    numpy: the same float32 operations in the same order, the same bits."""
    graph(True)
    x, w, a, wscale, want = operands(1500, rows=300, n=900)
    assert want.size >= mlas.ONE_THREAD
    product = mlas.linear_session(w, wscale, 2, integer=True)
    assert np.array_equal(bits(product(x, a)), bits(want))
    assert np.array_equal(bits(product(x[:7], a[:7])), bits(want[:7]))


@pytest.mark.parametrize("integer", [True, False], ids=["integer", "float-chunks"])
def test_mlas_session_refuses_past_its_k(integer):
    limit = mlas.INTEGER_MAX_K if integer else mlas.FLOAT_MAX_K
    with pytest.raises(ValueError, match=f"past the {limit}"):
        mlas.linear_session(np.zeros((limit + 1, 4), np.float32), np.ones(4, np.float32), 1,
                            integer=integer)


def test_the_probe_rejects_a_kernel_that_saturates(monkeypatch):
    """A uint8 x int8 product whose 16-bit pair sums saturate (what MLAS does on AVX2) fails
    the probe, so the plan's default graph is then the float chunks."""
    def saturating(wt, wscale, threads, integer=None):
        def product(x, a):
            xu, w = (x + 128).astype(np.int64), wt.astype(np.int64)  # uint8 x int8 pairs
            k = (len(w) // 2) * 2
            pairs = xu[:, 0:k:2, None] * w[None, 0:k:2] + xu[:, 1:k:2, None] * w[None, 1:k:2]
            s = np.clip(pairs, -2 ** 15, 2 ** 15 - 1).sum(1) - 128 * w.sum(0)
            return (s.astype(np.float32) * a[:, None] * wscale).astype(np.float32)
        return product

    monkeypatch.setattr(mlas, "linear_session", saturating)
    assert not mlas._probe()
    monkeypatch.undo()
    monkeypatch.setattr(mlas, "_INTEGER_EXACT", [False])
    assert mlas.max_k() == mlas.FLOAT_MAX_K
    assert not mlas.linear_session(np.ones((8, 4), np.float32), np.ones(4, np.float32), 1).integer


@pytest.mark.parametrize("engine", ["mlas", "small", "packed", "plain"])
@pytest.mark.parametrize("k", [500, 1500, 2500])
def test_linear_product_engines_equal_the_handlers_bits(monkeypatch, engine, k):
    """Each engine LinearProduct can pick (MLAS from the second call on; torch on one thread;
    oneDNN on reordered weights; plain chunked torch), three calls each, same bits."""
    monkeypatch.setattr(fused_linear, "MLAS", engine == "mlas")
    monkeypatch.setattr(fused_linear, "MLAS_MIN", 0)
    monkeypatch.setattr(fused_linear, "SMALL_GEMM", 1 << 40 if engine == "small" else 0)
    monkeypatch.setattr(fused_linear, "PACKED", engine == "packed" and fused_linear.PACKED)
    x, w, a, wscale, want = operands(k, rows=5, n=11, seed=1)
    wt = np.zeros((k + 64, 11), np.float32)  # a padded W^T, as the plan's dense weights are
    wt[:k] = w
    product = fused_linear.LinearProduct(torch.from_numpy(wt), wscale)
    for _ in range(3):
        assert np.array_equal(bits(product(x, a)), bits(want))
    built = [s for s in product.mlas.values() if s is not None]
    assert len(built) == (engine == "mlas" and k <= mlas.max_k())


def test_profile_floor_runs_the_plan_engine(compiled, monkeypatch):
    """`flowrun --profile`'s GEMM floor times the products on the engine the plan picks
    (here MLAS for every product), each session's result the plan's bits."""
    from flowc.runtime import profile
    from flowc.runtime.interpreter import Interpreter

    monkeypatch.setattr(fused_linear, "MLAS_MIN", 0)
    built = []
    real = mlas.linear_session
    monkeypatch.setattr(mlas, "linear_session", lambda *a, **kw: built.append(a[0].shape) or real(*a, **kw))
    image = compiled("mlp", (2, 4))
    prof = profile.profile_image(image, list(image.samples), interp=Interpreter(image), ort=False)
    loops = sum(1 for s in Interpreter(image).plan().steps if s.nm is not None)
    assert prof.gemm_floor > 0 and len(built) >= loops  # the plan's own and the floor's
    text = prof.render()  # two rich tables: every class, then the floor with the ratio
    assert all(profile.LABELS[k] in text for k in profile.CLASSES)
    assert f"{prof.run / prof.gemm_floor:.2f}x" in text.split("the same GEMMs alone")[1]


def test_without_onnxruntime_the_plan_stays_on_torch(monkeypatch):
    """onnxruntime missing: available() says so; a session onnxruntime refuses: torch for
    that K from then on (tried once), the same bits."""
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    assert not mlas.available()
    monkeypatch.undo()
    tries = []

    def refuse(*args):
        tries.append(args[0].shape)
        raise RuntimeError("mlas: refused")

    monkeypatch.setattr(mlas, "linear_session", refuse)
    monkeypatch.setattr(fused_linear, "MLAS", True)
    monkeypatch.setattr(fused_linear, "MLAS_MIN", 0)
    x, w, a, wscale, want = operands(700, seed=2)
    product = fused_linear.LinearProduct(torch.from_numpy(w), wscale)
    for _ in range(3):
        assert np.array_equal(bits(product(x, a)), bits(want))
    assert tries == [(700, 9)] and product.failed == {700}

