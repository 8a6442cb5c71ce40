"""Fuzzing (issue 13): mutate programs, weights and containers with hypothesis and check the
property that makes the verifier sound: either the program is refused with an ImageError
(exit 4) before anything runs, or it runs and every execution mode gives the same bits
(`reference` tile by tile == `batched` == `plan`). Anything else — a crash, an
ExecutionError after verification, modes that disagree — is a bug.

Budget: FLOWC_FUZZ_EXAMPLES examples per test, default 100 (7 tests: about 80 s on 2 busy
cores; marked slow, so CI runs it and `make test-fast` does not). The long local run is
documented in tests/README.md (FLOWC_FUZZ_EXAMPLES=3000: 21,000 mutations).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tamper import members_of, reseal, zip_of

from flowc import isa
from flowc.backend.container import load_bytes, to_bytes
from flowc.backend.image import Image
from flowc.errors import ImageError, UsageError
from flowc.runtime.interpreter import Interpreter
from flowc.runtime.verifier import check_run_inputs, verify

EXAMPLES = int(os.environ.get("FLOWC_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=list(HealthCheck), database=None)
COUNTS: collections.Counter = collections.Counter()
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _report_counts(request):
    """Print each test's outcome counts (with -s), so a long run reports as it goes."""
    before = COUNTS.copy()
    yield
    delta = {k: COUNTS[k] - before.get(k, 0) for k in COUNTS if COUNTS[k] - before.get(k, 0)}
    print(f"\n[fuzz] {request.node.name}: {delta} (total {sum(delta.values())})", flush=True)


class _Attention(torch.nn.Module):
    """Two heads of self-attention: mm.act, reshape, permute, softmax, scale."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))
        self.o = torch.nn.Linear(d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        split = [f(x).reshape(b, t, self.heads, d // self.heads).permute(0, 2, 1, 3)
                 for f in (self.q, self.k, self.v)]
        att = torch.softmax(split[0] @ split[1].transpose(-1, -2) * 0.25, dim=-1)
        return self.o((att @ split[2]).permute(0, 2, 1, 3).reshape(b, t, d))


@pytest.fixture(scope="module")
def bases() -> list[Image]:
    from flowc.frontend.load import capture
    from flowc.studies.compiler import CompileOptions, compile_captured
    from flowc.studies.examples import Block

    torch.manual_seed(0)
    out = []
    for model, shape in ((Block(d=32, hidden=64, classes=8), (2, 4, 32)), (_Attention(), (1, 4, 32))):
        cap = capture(model.eval(), (torch.randn(*shape),), source="fuzz")
        image = compile_captured(cap, CompileOptions(nm=(2, 4), score="magnitude", reference=False),
                                 progress=None)
        out.append(load_bytes(to_bytes(image)))
    return out


def _judge(image: Image) -> str:
    """'refused' or 'ran'; fails the test on any other outcome."""
    try:
        verify(image)
        check_run_inputs(image, list(image.samples))
    except ImageError:
        COUNTS["refused"] += 1
        return "refused"
    except UsageError:  # the samples do not fit a mutated input signature
        COUNTS["refused-inputs"] += 1
        return "refused"
    runs = {mode: Interpreter(image, mode=mode).run(list(image.samples))
            for mode in ("reference", "batched", "plan")}
    for mode in ("batched", "plan"):
        for a, b in zip(runs["reference"], runs[mode], strict=True):
            assert a.shape == b.shape and np.array_equal(a, b, equal_nan=True), mode
    COUNTS["ran"] += 1
    return "ran"


# -- mutation strategies ---------------------------------------------------------------------
def _operand_values(image: Image, op: isa.OperandDef, old):
    names = sorted({getattr(i, o.name) for i in image.program.instructions
                    for o in i.definition.operands if o.type == "buf"})
    tensors = sorted(image.tensors) + sorted(image.packed)
    if op.type in ("u8", "u16", "u32", "i32"):
        lo, hi = {"u8": (0, 255), "u16": (0, 65535), "u32": (0, 2**32 - 1),
                  "i32": (-(2**31), 2**31 - 1)}[op.type]
        picks = [v for v in (0, 1, 2, 3, 4, 8, 16, 255, old - 1, old + 1, old * 2, hi, lo)
                 if lo <= v <= hi]
        return st.sampled_from(picks)
    if op.type == "buf":
        return st.sampled_from(names + ["fresh"])
    if op.type == "tensor":
        return st.sampled_from(tensors + ["fresh"])
    if op.type == "f32":
        return st.sampled_from([0.0, -1.0, 0.5, 2.0, 1e30, -1e-30])
    if op.type == "ints":
        return st.lists(st.integers(-2, 40), max_size=5).map(tuple)
    return st.sampled_from(["gemm", "vector", "attention", "bool", "int", "float", "x"])


@st.composite
def operand_mutation(draw, image: Image) -> Image:
    instrs = image.program.instructions
    candidates = [i for i, ins in enumerate(instrs) if ins.definition.operands]
    i = draw(st.sampled_from(candidates))
    op = draw(st.sampled_from(instrs[i].definition.operands))
    value = draw(_operand_values(image, op, getattr(instrs[i], op.name)))
    try:
        new = dataclasses.replace(instrs[i], **{op.name: value})
    except isa.IsaError:
        new = instrs[i]
    return dataclasses.replace(image, program=isa.Program(instrs[:i] + (new,) + instrs[i + 1:]))


@st.composite
def structure_mutation(draw, image: Image) -> Image:
    instrs = list(image.program.instructions)
    i = draw(st.integers(0, len(instrs) - 1))
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "move"]))
    if kind == "delete":
        del instrs[i]
    elif kind == "duplicate":
        instrs.insert(i, instrs[i])
    elif kind == "swap" and i + 1 < len(instrs):
        instrs[i], instrs[i + 1] = instrs[i + 1], instrs[i]
    else:
        instrs.insert(draw(st.integers(0, len(instrs) - 1)), instrs.pop(i))
    return dataclasses.replace(image, program=isa.Program(tuple(instrs)))


@st.composite
def data_mutation(draw, image: Image) -> Image:
    """Weights, metadata, scales, biases: change a few entries or the shape."""
    tensors = dict(image.tensors)
    name = draw(st.sampled_from(sorted(tensors)))
    arr = tensors[name].copy()
    kind = draw(st.sampled_from(["entry", "shape", "dtype"]))
    if kind == "entry" and arr.size:
        flat = arr.reshape(-1)
        j = draw(st.integers(0, arr.size - 1))
        pool = [0, 1, -1, 2, 3, 4, 127, -128, 255] if arr.dtype.kind in "iu" else \
            [0.0, -1.0, 1e-3, 1e30, float("nan"), float("inf")]
        value = draw(st.sampled_from(pool))
        with np.errstate(all="ignore"):
            flat[j] = np.array(value).astype(arr.dtype)
    elif kind == "shape":
        arr = arr.reshape(-1)[: max(0, arr.size - draw(st.integers(1, 4)))]
    else:
        arr = arr.astype(draw(st.sampled_from(["float32", "int8", "int32", "uint8"])))
    tensors[name] = arr
    return dataclasses.replace(image, tensors=tensors)


@st.composite
def signature_mutation(draw, image: Image) -> Image:
    """One input or output spec: a dimension, the rank or the dtype (samples follow)."""
    which = draw(st.sampled_from(["inputs", "outputs"]))
    specs = list(getattr(image, which))
    k_spec = draw(st.integers(0, len(specs) - 1))
    spec = specs[k_spec]
    shape, dtype = list(spec.shape), spec.dtype
    kind = draw(st.sampled_from(["dim", "rank", "dtype"]))
    if kind == "dim":
        k = draw(st.integers(0, len(shape) - 1))
        shape[k] = draw(st.integers(0, 2 * shape[k] + 2))
    elif kind == "rank":
        shape = shape + [1] if draw(st.booleans()) or len(shape) < 2 else shape[:-1]
    else:
        dtype = draw(st.sampled_from(["float32", "float64", "float16", "int64", "int8", "bool"]))
    specs[k_spec] = dataclasses.replace(spec, shape=tuple(shape), dtype=dtype)
    changed = dataclasses.replace(image, **{which: tuple(specs)})
    if which == "inputs":  # the samples follow the declared signature where they can
        samples = list(image.samples)
        samples[k_spec] = np.resize(samples[k_spec], shape).astype(dtype)
        changed = dataclasses.replace(changed, samples=tuple(samples))
    return changed


@st.composite
def container_mutation(draw, blobs: list[bytes]) -> bytes:
    """Byte flips anywhere, or a resealed edit of one member's bytes."""
    data = blobs[draw(st.integers(0, len(blobs) - 1))]
    if draw(st.booleans()):
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(raw)
    members = members_of(data)
    name = draw(st.sampled_from(sorted(members)))
    body = bytearray(members[name])
    if body:
        j = draw(st.integers(0, len(body) - 1))
        body[j] = draw(st.integers(0, 255))
    members[name] = bytes(body)
    if name in ("manifest.json", "manifest.sha256"):  # reseal only the manifest's own sum
        members["manifest.sha256"] = hashlib.sha256(members["manifest.json"]).hexdigest().encode()
        return zip_of(members)
    return zip_of(reseal(members))


# -- the properties ------------------------------------------------------------------------
@pytest.mark.parametrize("base", [0, 1])
def test_operand_mutations(bases, base):
    @FUZZ
    @given(st.data())
    def run(data):
        _judge(data.draw(operand_mutation(bases[base])))

    run()


@pytest.mark.parametrize("base", [0, 1])
def test_structure_mutations(bases, base):
    @FUZZ
    @given(st.data())
    def run(data):
        _judge(data.draw(structure_mutation(bases[base])))

    run()


def test_weight_and_metadata_mutations(bases):
    @FUZZ
    @given(st.data())
    def run(data):
        _judge(data.draw(data_mutation(bases[data.draw(st.integers(0, 1))])))

    run()


def test_signature_mutations(bases):
    @FUZZ
    @given(st.data())
    def run(data):
        _judge(data.draw(signature_mutation(bases[data.draw(st.integers(0, 1))])))

    run()


def test_container_mutations(bases):
    blobs = [to_bytes(b) for b in bases]

    @FUZZ
    @given(st.data())
    def run(data):
        blob = data.draw(container_mutation(blobs))
        try:
            image = load_bytes(blob)
        except ImageError:
            COUNTS["refused-container"] += 1
            return
        _judge(image)

    run()
    print(f"\n[fuzz] all tests so far: {dict(COUNTS)} (total {sum(COUNTS.values())})", flush=True)
