"""Fused plan steps (flowc.runtime.fused) give the handlers' results bit for bit."""

from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from flowc.runtime import fused, fused_attention, fused_linear, vector
from flowc.runtime.gemm import exact_int_matmul
from flowc.runtime.interpreter import Interpreter, quantise_columns


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def test_quantise_equals_the_handlers():
    """Rows over 80 binades, an all-zero row, -0.0 entries, subnormals; along the last and the
    second-to-last axis (v.quant and mm.act's b)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 40, 96)) * np.exp(rng.uniform(-40, 40, (5, 40, 1))))
    x = x.astype(np.float32)
    x[0, 3] = 0.0
    x[1, 2, :7] = -0.0
    q, s = vector.quantise_per_token(x)
    sub = x.copy()  # subnormal rows: max|x| / 127 loses bits, the clip matters
    sub[0, 5] = rng.choice([-1, 1], 96) * rng.integers(1, 10, 96) * np.float32(1e-45)
    sub[0, 6] = rng.uniform(-1, 1, 96).astype(np.float32) * np.float32(1e-40)
    assert np.array_equal(fused.quantise(torch.from_numpy(sub), -1)[0].numpy(),
                          vector.quantise_per_token(sub)[0].astype(np.float32))
    tq, ts = fused.quantise(torch.from_numpy(x), -1)
    assert np.array_equal(bits(ts.numpy()), bits(s))
    assert np.array_equal(tq.numpy(), q.astype(np.float32))
    for rows in (x, sub):  # the numpy path of small tensors
        nq, ns = fused.quantise_np(rows)
        hq, hs = vector.quantise_per_token(rows)
        assert np.array_equal(bits(ns), bits(hs)) and np.array_equal(nq, hq.astype(np.float32))
    qc, sc = quantise_columns(x)
    tq, ts = fused.quantise(torch.from_numpy(x.copy()), -2, inplace=True)
    assert np.array_equal(bits(ts.numpy()), bits(sc))
    assert np.array_equal(tq.numpy(), qc.astype(np.float32))


@pytest.mark.parametrize("k", [64, 1024, 1500, 2048, 2500])
def test_exact_product_rounds_the_exact_sum_once(k):
    """float32 chunks (one, two, three) == the exact int32 sum cast to float32, every bit;
    a zero sum of -0.0 products comes out +0.0 as the integer sum does."""
    rng = np.random.default_rng(k)
    a = rng.integers(90, 128, (2, 7, k)).astype(np.int8)  # large sums: past 2**24 for K > 1024
    a[1] = rng.integers(-127, 128, (7, k))
    b = rng.integers(90, 128, (2, k, 9)).astype(np.int8)
    a[0, 0] = 0
    b[0, :, 0] = -3  # row 0 x column 0: every product is +0 * -3 = -0.0
    want = exact_int_matmul(a, b).astype(np.float32)
    got = fused.exact_product(torch.from_numpy(a.astype(np.float32)),
                              torch.from_numpy(b.astype(np.float32))).numpy()
    assert np.array_equal(bits(got), bits(want))
    if fused_linear.PACKED:  # oneDNN on prepacked weights, 2-D: one batch entry at a time
        for i in range(2):
            product = fused_linear._packed_product(torch.from_numpy(b[i].astype(np.float32)))
            for _ in range(2):  # the first call multiplies unpacked, the second reorders
                got = product(torch.from_numpy(a[i].astype(np.float32))).numpy()
                assert np.array_equal(bits(got), bits(want[i]))
    assert np.abs(want).max() > 2 ** 24 or k <= 1024  # past float32's exact integers


def _reference_chain(q, kt, v, mask, s):
    """mm.act, v.scale, v.add, v.softmax, mm.act as the handlers compute them."""
    def mm_act(a, b):
        qa, sa = vector.quantise_per_token(a)
        qb, sb = quantise_columns(b)
        return exact_int_matmul(qa, qb).astype(np.float32) * sa[..., :, None] * sb[..., None, :]

    x = (mm_act(q, kt) * np.float32(s)).astype(np.float32)
    x = np.add(x, mask).astype(np.float32)
    p = torch.softmax(torch.from_numpy(x), dim=-1).numpy()
    return mm_act(p, v), x.shape


@pytest.mark.parametrize("block", [1 << 22, 3 * 40 * 40, 40 * 17])  # all heads, 3, rows
def test_blocked_attention_equals_the_handlers(monkeypatch, block):
    monkeypatch.setattr(fused_attention, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(fused_attention, "SMALL_ATTENTION", 0)
    rng = np.random.default_rng(7)
    t, h, d = 40, 5, 16
    q = rng.standard_normal((1, h, t, d), dtype=np.float32)
    kt = rng.standard_normal((1, h, d, t), dtype=np.float32)
    v = rng.standard_normal((1, h, t, d), dtype=np.float32)
    mask = np.triu(np.full((t, t), np.finfo(np.float32).min, np.float32), 1)[None, None]
    want, s_shape = _reference_chain(q, kt, v, mask, 0.17)
    ops = [NS(mnemonic="v.scale", s=0.17), NS(mnemonic="v.add"), NS(mnemonic="v.softmax")]
    chain = fused_attention.Chain(0, [1, 2, 3], 4, {2: ("mask", "")})
    it = Interpreter.__new__(Interpreter)
    it.geometry = {"subarrays": 4, "rows": 8, "cols": 16}
    pending = {}
    got = fused_attention._attention(it, q, kt, v, ops, chain, {2: mask}, pending)
    assert np.array_equal(bits(got), bits(want))
    n = int(np.prod(s_shape))
    assert pending[2] == {"elements": n, "in_elements": n + mask.size, "tokens": h * t}
    assert pending[0] == it.act_gemm_sizes(q.shape, kt.shape, s_shape)
    assert pending[4] == it.act_gemm_sizes(s_shape, v.shape, (1, h, t, d))


@pytest.mark.parametrize("name", ["mlp", "block"])
def test_fused_plan_outputs_equal_the_reference_bits(compiled, name):
    """The plan fuses here (every linear layer) and its outputs equal the tile-by-tile
    reference's in every bit; with every buffer kept, nothing is fused."""
    image = compiled(name, (2, 4))
    it = Interpreter(image)
    out = it.run(list(image.samples))
    assert it.plan().fused == (5 if name == "block" else 3)
    ref = Interpreter(image, mode="reference").run(list(image.samples))
    assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(out, ref, strict=True))
    it.keep_buffers = True
    it.run(list(image.samples))
    assert it.plan().fused == 0


@pytest.mark.parametrize("engine", ["mlas", "packed", "plain", "small"])
def test_every_gemm_engine_equals_the_reference_bits(compiled, monkeypatch, engine):
    """The block example with every product on one engine (MLAS, oneDNN reordered, plain
    torch, torch on one thread), v.quant and attention in torch or numpy alike."""
    small = 1 << 40 if engine == "small" else 0
    monkeypatch.setattr(fused_linear, "MLAS", engine == "mlas" and fused_linear.MLAS)
    monkeypatch.setattr(fused_linear, "MLAS_MIN", 0)
    monkeypatch.setattr(fused_linear, "PACKED", engine == "packed" and fused_linear.PACKED)
    monkeypatch.setattr(fused_linear, "SMALL_GEMM", small)
    monkeypatch.setattr(fused, "SMALL", small)  # v.quant likewise
    monkeypatch.setattr(fused_attention, "SMALL_ATTENTION", small)  # attention: blocked / handlers
    image = compiled("block", (2, 4))
    it = Interpreter(image)
    ref = Interpreter(image, mode="reference").run(list(image.samples))
    for _ in range(3):  # weights are reordered / MLAS sessions built on the second run
        out = it.run(list(image.samples))
        assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(out, ref, strict=True))


class _Siblings(torch.nn.Module):
    """Three projections of one input (gate and up of a gated MLP, and a narrower one beside
    them), as a transformer's q, k and v or gate and up are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gate, self.up = torch.nn.Linear(64, 96), torch.nn.Linear(64, 96)
        self.side, self.down = torch.nn.Linear(64, 40), torch.nn.Linear(96, 16)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x)) + self.side(x)[..., :16]


@pytest.mark.parametrize("engine", ["mlas", "packed", "plain", "small"])
def test_sibling_products_run_as_one_with_the_reference_bits(monkeypatch, engine):
    """Loops on the same activations and scales share one product of their weights side by
    side, split into each loop's columns; on every engine the outputs equal the
    tile-by-tile reference's bits, and each split output is its own contiguous array."""
    from flowc.frontend.load import capture
    from flowc.studies.compiler import CompileOptions, compile_captured

    small = 1 << 40 if engine == "small" else 0
    monkeypatch.setattr(fused_linear, "MLAS", engine == "mlas" and fused_linear.MLAS)
    monkeypatch.setattr(fused_linear, "MLAS_MIN", 0)
    monkeypatch.setattr(fused_linear, "PACKED", engine == "packed" and fused_linear.PACKED)
    monkeypatch.setattr(fused_linear, "SMALL_GEMM", small)
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
    image = compile_captured(capture(_Siblings().eval(), (x,), source="test:siblings"),
                             CompileOptions(nm=(2, 4)), progress=None)
    it = Interpreter(image)
    plan = it.plan()
    grouped = [(b, p.wt.shape[1]) for _, p, b in plan.products if b is not None]
    assert grouped == [([0, 96, 192], 232)]  # gate, up and side: 96 + 96 + 40 columns
    assert len(plan.products) == 2 and len(plan.fused_loops) == 4  # and down alone
    ref = Interpreter(image, mode="reference").run(list(image.samples))
    for _ in range(3):  # MLAS sessions are built on the second run
        out = it.run(list(image.samples))
        assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(out, ref, strict=True))
    product = next(p for _, p, b in plan.products if b is not None)
    xq = np.random.default_rng(2).integers(-127, 128, (5, 64)).astype(np.float32)
    a = np.linspace(0.01, 2, 5, dtype=np.float32)
    for _ in range(3):
        whole, parts = product(xq, a), product(xq, a, [0, 96, 192])
        assert [p.shape[1] for p in parts] == [96, 96, 40]
        assert all(p.flags.c_contiguous for p in parts)
        assert np.array_equal(bits(np.concatenate(parts, axis=1)), bits(whole))


def test_siblings_split_where_their_activations_are_written_again():
    """Two loops on one buffer form one product only if no write of the buffer (or of its
    scales) comes after the first of them."""
    def lin(j, src="x.q", scale="x.s"):
        step = NS(item=NS(body=[NS(w=f"w{j}"), NS(src=src)]), nm=(2, 4))
        return fused_linear._Linear(j - 1, j, j + 1, None, NS(ascale=scale, cols=8), step, None)

    it = NS(dense_weight=lambda *a, **kw: np.zeros((64, 8), np.float32))
    found = [lin(3), lin(7), lin(9, scale="y.s"), lin(12)]
    once = fused.Usage(written={"x.q": [0], "x.s": [0], "y.s": [0]})
    assert [[g.j for g in grp] for grp in fused_linear._siblings(it, found, once)] == [[3, 7, 12], [9]]
    again = fused.Usage(written={"x.q": [0, 5], "x.s": [0], "y.s": [0]})
    assert [[g.j for g in grp] for grp in fused_linear._siblings(it, found, again)] == [[3], [7, 12], [9]]


@pytest.mark.slow
@pytest.mark.parametrize("small", [0, 1 << 40])
def test_llama_attention_fused_equals_the_reference_bits(monkeypatch, small):
    """A tiny LLaMA (RoPE, GQA expand, causal mask, softmax): its attention chains fuse and
    run blocked (small = 0) or through the handlers; outputs equal the reference's bits."""
    from flowc.frontend.load import load_hf
    from flowc.studies.compiler import CompileOptions, compile_captured

    monkeypatch.setattr(fused_attention, "SMALL_ATTENTION", small)
    monkeypatch.setattr(fused_attention, "BLOCK_ELEMENTS", 64)  # several blocks even at 8 tokens
    monkeypatch.setattr(fused_attention, "SKIP_ROWS", 2)  # row blocks that skip masked columns
    skips, masks = [], []
    real = fused_attention.masked_extents
    monkeypatch.setattr(fused_attention, "masked_extents",
                        lambda *a: skips.append(real(*a) is not None) or real(*a))
    rows_of = fused_attention.MaskRows.of
    monkeypatch.setattr(fused_attention.MaskRows, "of",
                        classmethod(lambda cls, m: masks.append(m.shape) or rows_of(m)))
    monkeypatch.setattr(fused_attention, "_MASKS", {})
    image = compile_captured(load_hf("hf:tiny-llama", seq_len=8, calib_batches=1),
                             CompileOptions(nm=(2, 4)), progress=None)
    it = Interpreter(image)
    it.run(list(image.samples))
    out = it.run(list(image.samples))
    chains = sum(1 for i in image.program.instructions if i.mnemonic == "mm.act") // 2
    assert chains > 0 and it.plan().fused >= chains
    ref = Interpreter(image, mode="reference").run(list(image.samples))
    assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(out, ref, strict=True))
    assert not small or not skips  # through the handlers: no blocks at all
    assert small or (skips and all(skips))  # the causal mask's columns skipped in every layer
    # one v.const makes the mask, every layer reads its buffer: its rows are computed once
    # per image, not per layer or run (const_source)
    assert small or len(masks) == 1


def test_a_buffer_written_once_by_a_v_const_is_that_constant():
    """const_source: a buffer whose only write is a v.const names its tensor; written twice,
    by another op, or never (an input), it is not a constant."""
    from types import SimpleNamespace as NS

    items = [NS(mnemonic="v.const", dst="mask", t="const.mask"),
             NS(mnemonic="v.const", dst="twice", t="const.a"),
             NS(mnemonic="v.add", dst="twice", a="x", b="y"),
             NS(mnemonic="v.add", dst="sum", a="x", b="y")]
    usage = fused.Usage(written={"mask": [0], "twice": [1, 2], "sum": [3]})
    assert fused_attention.const_source(items, usage, "mask") == "const.mask"
    assert [fused_attention.const_source(items, usage, n) for n in ("twice", "sum", "x")] \
        == ["", "", ""]


def test_subnormal_rows_quantise_to_finite_values(recwarn):
    """A row whose max|x| is subnormal: max|x| / 127 underflows (to 0 below ~1.8e-43), so the
    scale is floored at the smallest normal float32; handler and fused path agree bit for
    bit, without a division by zero."""
    tiny = np.finfo(np.float32).tiny
    x = np.zeros((4, 16), np.float32)
    x[0] = np.arange(-8, 8) * np.float32(1e-45)  # max|x| = 8 ulp of 0: / 127 -> 0
    x[1] = np.linspace(-1, 1, 16, dtype=np.float32) * np.float32(5e-39)  # subnormal max
    x[2] = np.linspace(-1, 1, 16, dtype=np.float32) * np.float32(2e-37)  # normal, / 127 not
    x[3] = np.linspace(-3, 1, 16, dtype=np.float32)  # an ordinary row, untouched
    q, s = vector.quantise_per_token(x)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert np.all(s[:3] == np.float32(tiny)) and s[3] == np.float32(3.0) / np.float32(127)
    assert np.array_equal(q[0], np.arange(-8, 8) * 0)  # 8e-45 / 1.2e-38 rounds to 0
    assert np.abs(q[1:3]).max() <= 127 and q[2, 0] == -round(2e-37 / tiny)
    assert np.array_equal(q[1:3].astype(np.float32), np.rint(x[1:3] / np.float32(tiny)))
    tq, ts = fused.quantise(torch.from_numpy(x.copy()), -1, inplace=True)
    assert np.array_equal(bits(ts.numpy()), bits(s))
    assert np.array_equal(tq.numpy(), q.astype(np.float32))  # values (int8 has no -0.0)



def _masks(t: int) -> dict:
    lo = np.finfo(np.float32).min
    causal = np.triu(np.ones((t, t), bool), 1)
    rng = np.random.default_rng(11)
    alibi = -np.abs(np.arange(t)[None, :] - np.arange(t)[:, None]).astype(np.float32) * 0.5
    one_row = np.where(causal, -np.inf, 0).astype(np.float32)
    one_row[0] = -np.inf  # a row masked whole: its softmax is NaN, its row block skips nothing
    return {
        "causal finfo.min": np.where(causal, lo, 0).astype(np.float32)[None, None],
        "causal -inf": np.where(causal, -np.inf, 0).astype(np.float32)[None, None],
        "padding [1,1,1,n]": np.where(np.arange(t) >= t - 7, lo, 0).astype(np.float32)[None, None, None],
        "alibi + causal": np.where(causal, lo, alibi).astype(np.float32),
        "-10000 (too shallow for large scores)": np.where(causal, -1e4, 0).astype(np.float32),
        "a row masked whole": one_row,
        "random (nothing to skip)": rng.standard_normal((t, t)).astype(np.float32),
    }


@pytest.mark.parametrize("short", [True, False], ids=["short rows", "-inf tails"])
@pytest.mark.parametrize("kind", list(_masks(40)))
def test_masked_columns_are_skipped_with_the_handlers_bits(monkeypatch, kind, short):
    """Row blocks of 8: columns every row of a block masks are not multiplied and their
    probabilities are no term of P @ V; the softmax runs over rows cut to the live prefix
    (short rows) or over full rows whose skipped scores are -inf. The bits are the handlers'
    for every mask, and the skip happens exactly where it is provably exact."""
    monkeypatch.setattr(fused_attention, "PREFIX", 8)
    monkeypatch.setattr(fused_attention, "short_rows_exact", lambda: short)
    monkeypatch.setattr(fused_attention, "SMALL_ATTENTION", 0)
    monkeypatch.setattr(fused_attention, "SKIP_ROWS", 8)
    monkeypatch.setattr(fused_attention, "BLOCK_ELEMENTS", 3 * 8 * 40)  # 3 heads x 8 rows
    rng = np.random.default_rng(5)
    t, h, d = 40, 3, 16
    scale = 40.0 if kind.startswith("-10000") else 1.0  # |QK| bound far past 10,000
    q = rng.standard_normal((1, h, t, d), dtype=np.float32) * np.float32(scale)
    kt = rng.standard_normal((1, h, d, t), dtype=np.float32) * np.float32(scale)
    v = rng.standard_normal((1, h, t, d), dtype=np.float32)
    mask = _masks(t)[kind]
    want, s_shape = _reference_chain(q, kt, v, mask, 0.25)
    ops = [NS(mnemonic="v.scale", s=0.25), NS(mnemonic="v.add"), NS(mnemonic="v.softmax")]
    chain = fused_attention.Chain(0, [1, 2, 3], 4, {2: ("mask", "")})
    it = Interpreter.__new__(Interpreter)
    it.geometry = {"subarrays": 4, "rows": 8, "cols": 16}
    extents, widths = [], []
    real, product = fused_attention.masked_extents, fused_attention.exact_product
    monkeypatch.setattr(fused_attention, "masked_extents",
                        lambda *a: extents.append(real(*a)) or extents[-1])
    monkeypatch.setattr(fused_attention, "exact_product",
                        lambda x, w, **kw: widths.append((w.shape[-1], x)) or product(x, w, **kw))
    got = fused_attention._attention(it, q, kt, v, ops, chain, {2: mask}, {})
    assert np.array_equal(bits(got), bits(want))
    e = extents[0] and extents[0].extent
    assert e is None or len(widths) == 2 * 5  # skipping: 5 row blocks of all 3 heads
    skipped = e is not None and any(int(e[:, r0:r0 + 8].max()) < t for r0 in range(0, t, 8))
    expect = kind in ("causal finfo.min", "causal -inf", "padding [1,1,1,n]", "alibi + causal",
                      "a row masked whole")  # (its other row blocks)
    assert skipped == expect
    # P @ V of a block that skips reads short rows (contiguous) or full ones (a column slice)
    pv = widths[1::2]
    cuts = [] if e is None else [int(e[:, r0:r0 + 8].max()) for r0 in range(0, t, 8)]
    cuts = [min(t, -(-c // 8) * 8) if short else c for c in cuts]  # short rows: whole vectors
    assert [x.shape[-1] for _, x in pv] == (cuts or [t] * len(pv))
    assert all(x.is_contiguous() == (short or x.shape[-1] == t) for _, x in pv)
    if kind == "a row masked whole":  # softmax NaN; NaN quantises to 0 in every path
        assert (want[0, :, 0] == 0).all()


def test_the_short_row_probe_tells_prefix_exact_lengths_from_others(monkeypatch):
    """torch's softmax sums by vector lane (8 or 16 floats): prefixes of whole vectors give
    the full row's bits, and the probe says so; prefixes of 4 columns take the kernel's
    short-row path, sum in another order, and the probe catches it."""
    for align, exact in ((32, True), (8, True), (4, False)):
        monkeypatch.setattr(fused_attention, "_SHORT", {})
        assert fused_attention._probe_short(align) == exact, align
    monkeypatch.setattr(fused_attention, "_SHORT", {})
    monkeypatch.setattr(fused_attention, "PREFIX", 4)
    assert not fused_attention.short_rows_exact()


def test_scales_fold_into_the_column_scales_only_where_exact(monkeypatch):
    """A leading v.scale by a power of two multiplies sb instead of the scores, unless a
    score could leave the normal range (subnormal or past float32), a factor is not a power
    of two, or a scale is not finite; in every case the blocked chain keeps the handlers'
    bits."""
    fold = fused_attention.folded_scales
    scale, add, soft = NS(mnemonic="v.scale", s=0.125), NS(mnemonic="v.add"), NS(mnemonic="v.softmax")
    ones = torch.ones(2, 4)
    assert fold([scale, add, soft], ones, ones, 64) == 1
    assert fold([scale, NS(mnemonic="v.scale", s=-2.0), add], ones, ones, 64) == 2
    assert fold([NS(mnemonic="v.scale", s=0.3), add], ones, ones, 64) == 0
    assert fold([add, scale], ones, ones, 64) == 0
    assert fold([scale], ones * 5e-38, ones, 64) == 0  # 5e-38 / 8: subnormal
    assert fold([scale], ones * 1e25, ones * 1e4, 64) == 1
    assert fold([NS(mnemonic="v.scale", s=2.0 ** 12)], ones * 1e25, ones * 1e4, 64) == 0  # overflow
    assert fold([scale], ones * float("nan"), ones, 64) == 0
    rng = np.random.default_rng(2)
    folds, real = [], fold
    monkeypatch.setattr(fused_attention, "SMALL_ATTENTION", 0)
    monkeypatch.setattr(fused_attention, "folded_scales",
                        lambda *a: folds.append(real(*a)) or folds[-1])
    it = Interpreter.__new__(Interpreter)
    it.geometry = {"subarrays": 4, "rows": 8, "cols": 16}
    chain = fused_attention.Chain(0, [1, 2, 3], 4, {2: ("mask", "")})
    mask = _masks(16)["causal finfo.min"]
    for size in (1.0, 1e-18):  # scores ~1 (folded) and ~1e-36 * 0.125 (subnormal: not folded)
        q = rng.standard_normal((1, 2, 16, 8), dtype=np.float32) * np.float32(size)
        kt = rng.standard_normal((1, 2, 8, 16), dtype=np.float32) * np.float32(size)
        v = rng.standard_normal((1, 2, 16, 8), dtype=np.float32)
        want, _ = _reference_chain(q, kt, v, mask, 0.125)
        got = fused_attention._attention(it, q, kt, v, [scale, add, soft], chain, {2: mask}, {})
        assert folds.pop() == (1 if size == 1.0 else 0)
        assert np.array_equal(bits(got), bits(want))


def test_a_masked_chain_skips_nothing_unless_it_ends_in_softmax():
    """v.mul anywhere, a second v.add, a negative scale after the mask, or no softmax last:
    masked_extents refuses (the full rows are computed)."""
    mask = _masks(16)["causal -inf"]
    sa, sb = torch.ones(1, 16), torch.ones(1, 16)
    chain = fused_attention.Chain(0, [1, 2, 3], 4, {2: ("mask", "")})

    def extents(ops):
        return fused_attention.masked_extents(None, ops, chain, {2: mask}, (1, 1), (16, 16, 8),
                                              sa, sb)

    scale, add, soft = NS(mnemonic="v.scale", s=0.5), NS(mnemonic="v.add"), NS(mnemonic="v.softmax")
    assert extents([scale, add, soft]) is not None
    assert extents([scale, add, NS(mnemonic="v.scale", s=-1.0), soft]) is None
    assert extents([NS(mnemonic="v.mul"), add, soft]) is None
    assert extents([scale, add, scale]) is None
