"""The interpreter: executes a Program exactly, one handler per opcode.

CiM GEMMs compute int8 x int8 -> int32 exactly. Three modes, bit-identical results:
- `plan` (default): the program is prepared once into an execution plan
  (flowc.runtime.plan): handlers resolved, weights unpacked once, canonical tile loops as one
  exact GEMM each, events built once and replayed; with int8 numerics, fused steps where the
  bits cannot change (flowc.runtime.fused; off with keep_buffers). A run is a walk over
  prepared steps.
- `reference`: every instruction through its handler, tile loops tile by tile; the handlers
  model the macro (each sub-macro row picks its activation from its group by the metadata;
  columns sum rows; the merging unit sums sub-macros). This is the executable specification.
- `batched`: every instruction through its handler, but a loop whose body is the canonical
  GEMM sequence (ld.tile, ld.act, cim, merge, acc on one macro) runs as a single matmul of the
  decompressed weight, which equals the tile-by-tile sum exactly (integer arithmetic; float32
  chunks of K <= 1024 hold every partial sum exactly). Any other body runs as in reference.
Cost accounting is done by listeners (flowc.runtime.events); handlers never count cycles.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from flowc import isa
from flowc.backend.image import Image
from flowc.errors import ExecutionError, UsageError
from flowc.runtime import vector, vector_masks
from flowc.runtime.events import ExecEvent, Listener, LoopEvent
from flowc.runtime.gemm import (  # noqa: F401  (re-exported: tests and tools import them here)
    _INT8_BACKEND,
    EXACT_CHUNK,
    exact_int_matmul,
    int8_backend,
    int8_matmul,
    matmul32,
)
from flowc.runtime.plan import Plan
from flowc.runtime.weights import dense_w, dense_wt

MODES = ("plan", "batched", "reference")
CANONICAL_BODY = ("ld.tile", "ld.act", "cim", "merge", "acc")
# Instructions that move no data and cost nothing (markers, and v.reshape: a view): listeners
# get no event for them (SmolLM2's program has 600 `layer` and 240 `v.reshape`).
SILENT = frozenset({"layer", "halt", "v.reshape"})


@dataclass
class Loop:
    instr: object
    body: tuple


@dataclass
class MacroState:
    keep_n: int = 0
    group_m: int = 0
    weight: str | None = None
    src: str | None = None
    tile: tuple[int, int] = (0, 0)
    psum_sub: np.ndarray | None = None  # [T, P, C] per sub-macro
    merged: np.ndarray | None = None  # [T, C]


@dataclass
class State:
    bufs: dict[str, np.ndarray] = field(default_factory=dict)
    layer: str = ""
    macros: dict[int, MacroState] = field(default_factory=dict)

    def macro(self, i: int) -> MacroState:
        return self.macros.setdefault(i, MacroState())


def structure(program: isa.Program) -> tuple:
    """Group loop bodies: a tuple of instructions and Loop(instr, body) items."""
    out, body, head = [], None, None
    for ins in program.instructions:
        if isinstance(ins, isa.LoopTiles):
            head, body = ins, []
        elif isinstance(ins, isa.LoopEnd):
            out.append(Loop(head, tuple(body)))
            body = None
        elif body is not None:
            body.append(ins)
        else:
            out.append(ins)
    return tuple(out)


class Interpreter:
    def __init__(self, image: Image, numerics: str = "int8", mode: str = "plan",
                 listeners: Sequence[Listener] = ()) -> None:
        if numerics not in ("int8", "fp32"):
            raise UsageError(f"numerics must be int8 or fp32, got {numerics!r}")
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if numerics == "fp32" and any(n.endswith(".values") for n in image.tensors) and \
                not any(n.endswith(".fvalues") for n in image.tensors):
            raise UsageError("this .fcim carries no fp32 weights (compiled with --no-fp32); "
                             "fp32 numerics need them")
        self.image = image
        self.numerics = numerics
        self.mode = mode
        self.listeners = list(listeners)
        self.geometry = image.machine["macro"]
        self.steps = structure(image.program)
        self._dense: dict[str, np.ndarray] = {}
        self._plan: Plan | None = None
        # plan mode frees each buffer after its last reader; True keeps all (tests, tools)
        self.keep_buffers = False

    # -- public ------------------------------------------------------------------------------
    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        state = self.execute(inputs)
        return [state.bufs[o.buffer].astype(np.float32, copy=False) for o in self.image.outputs]

    def execute(self, inputs: Sequence[np.ndarray]) -> State:
        """Run the program on `inputs`; the final state (every buffer) for tests and tools."""
        state = State()
        self._bind_inputs(state, inputs)
        with gc_paused():
            if self.mode == "plan":
                self.plan().run(state, self.listeners)
                return state
            for step in self.steps:
                if isinstance(step, Loop):
                    self._loop(state, step)
                else:
                    self._step(state, step)
        return state

    def plan(self) -> Plan:
        """The execution plan of this interpreter's program (prepared on first use)."""
        if self._plan is None or self._plan.keeps_buffers != self.keep_buffers:
            self._plan = Plan(self)
        return self._plan

    def profile(self, inputs: Sequence[np.ndarray]) -> dict[str, float]:
        """One plan run with wall seconds per class (flowc.runtime.plan.Plan.run_profiled)."""
        state = State()
        self._bind_inputs(state, inputs)
        with gc_paused():
            return self.plan().run_profiled(state, self.listeners)

    def _bind_inputs(self, state: State, inputs: Sequence[np.ndarray]) -> None:
        for spec, arr in zip(self.image.inputs, check_inputs(self.image, inputs), strict=True):
            state.bufs[spec.buffer] = arr

    # -- dispatch ----------------------------------------------------------------------------
    def _step(self, state: State, ins) -> None:
        handler = HANDLERS.get(ins.mnemonic)
        if handler is None:
            raise ExecutionError(f"no handler for instruction {ins.mnemonic}")
        try:
            sizes = handler(self, state, ins) or {}
        except KeyError as exc:
            raise ExecutionError(f"{ins.mnemonic}: buffer or tensor {exc} not defined") from exc
        if self.listeners and ins.mnemonic not in SILENT:
            ev = self.instr_event(state.layer, ins, sizes)
            for lis in self.listeners:
                lis.on_instr(ev)

    @staticmethod
    def instr_event(layer: str, ins, sizes: dict) -> ExecEvent:
        return ExecEvent(ins, layer, **sizes)

    def _loop(self, state: State, loop: Loop) -> None:
        n_tiles, k_tiles = loop.instr.n_tiles, loop.instr.k_tiles
        names = tuple(i.mnemonic for i in loop.body)
        macros = {i.macro for i in loop.body}
        if self.mode == "batched" and names == CANONICAL_BODY and len(macros) == 1:
            sizes = self._gemm_batched(state, loop.body)
        else:
            sizes = self._loop_reference(state, loop.body, n_tiles, k_tiles)
        if self.listeners:
            ev = self.loop_event(state.layer, loop, sizes)
            for lis in self.listeners:
                lis.on_loop(ev)

    @staticmethod
    def loop_event(layer: str, loop: Loop, sizes: dict) -> LoopEvent:
        n_tiles, k_tiles = loop.instr.n_tiles, loop.instr.k_tiles
        # the body's events differ only in the instruction: build the first one, copy the
        # rest of its fields (tuple.__new__: 0.24 us an event against 0.51 with keywords)
        first = ExecEvent(loop.body[0], layer, tiles=n_tiles * k_tiles, **sizes)
        rest = first[1:]
        body = (first,) + tuple([tuple.__new__(ExecEvent, (i,) + rest) for i in loop.body[1:]])
        return LoopEvent(loop.instr, layer, n_tiles, k_tiles, body)

    def _loop_reference(self, state: State, body: tuple, n_tiles: int, k_tiles: int) -> dict:
        for nt in range(n_tiles):
            for kt in range(k_tiles):
                for ins in body:
                    state.macro(getattr(ins, "macro", 0)).tile = (nt, kt)
                    HANDLERS[ins.mnemonic](self, state, ins)
        mac = state.macro(body[0].macro)
        return self._macro_sizes(state, mac)

    def _macro_sizes(self, state: State, mac: MacroState) -> dict:
        P, R = self.geometry["subarrays"], self.geometry["rows"]
        tokens = math.prod(state.bufs[mac.src].shape[:-1]) if mac.src else 0
        return {"tokens": tokens, "keep_n": mac.keep_n, "group_m": mac.group_m,
                "k_pass": P * R * mac.group_m // max(mac.keep_n, 1)}

    def act_gemm_sizes(self, a_shape: tuple, b_shape: tuple, y_shape: tuple) -> dict:
        """Event sizes of mm.act: b's tiles are written per head (batch entry) and per tile."""
        P, R, C = self.geometry["subarrays"], self.geometry["rows"], self.geometry["cols"]
        batch = math.prod(y_shape[:-2])
        k, n, m = a_shape[-1], b_shape[-1], a_shape[-2]
        tiles = batch * -(-n // C) * -(-k // (P * R))
        return {"tiles": tiles, "tokens": m, "keep_n": P, "group_m": P, "k_pass": P * R,
                "elements": batch * m * n, "in_elements": batch * (m * k + k * n)}

    # -- batched GEMM --------------------------------------------------------------------------
    def dense_weight(self, name: str, keep_n: int, group_m: int,
                     float_chunks: bool = False) -> np.ndarray:
        """Decompressed W^T [K_pad, N_pad], unpacked once: int8 values (int8 numerics; as
        float32 with `float_chunks`, the operand of the exact float32-chunk GEMM) or the
        float32 weights (fp32 numerics)."""
        key = self._dense_key(name, keep_n, group_m, float_chunks)
        if key not in self._dense:
            fp32 = self.numerics == "fp32"
            dtype = np.float32 if fp32 or float_chunks else np.int8
            vals = self.image.tensors[f"{name}.{'fvalues' if fp32 else 'values'}"]
            self._dense[key] = dense_wt(vals, self.image.tensors[f"{name}.meta"], keep_n,
                                        group_m, dtype)
        return self._dense[key]

    def forget_dense(self, name: str, keep_n: int, group_m: int,
                     float_chunks: bool = False) -> None:
        """Drop dense_weight's unpacked copy (a fused step that holds its own copy of the
        weight frees this one; asking again unpacks it anew)."""
        self._dense.pop(self._dense_key(name, keep_n, group_m, float_chunks), None)

    def _dense_key(self, name: str, keep_n: int, group_m: int, float_chunks: bool) -> str:
        fp32 = self.numerics == "fp32"
        dtype = np.float32 if fp32 or float_chunks else np.int8
        return f"{name}/{self.numerics}/{keep_n}:{group_m}/{np.dtype(dtype).name}"

    def embed_table(self, name: str, p: int) -> np.ndarray:
        """float32 [rows_pad, K_pad] of an embedding table packed densely at p:p (row r is
        token r): int8 values as float32 (int8 numerics) or the fp32 weights."""
        fp32 = self.numerics == "fp32"
        vals = self.image.tensors[f"{name}.{'fvalues' if fp32 else 'values'}"]
        return dense_w(vals, self.image.tensors[f"{name}.meta"], p, p, np.float32)

    def gemm_backend(self) -> str:
        """The exact int8 GEMM this host runs (int8_backend), or 'float32' for fp32 numerics."""
        return "float32" if self.numerics == "fp32" else int8_backend()

    def _gemm_batched(self, state: State, body: tuple) -> dict:
        ld_tile, ld_act, _, _, acc = body
        mac = state.macro(ld_tile.macro)
        if not mac.keep_n:
            raise ExecutionError("ld.tile before cfg.nm: the macro has no N:M configuration")
        mac.weight, mac.src = ld_tile.w, ld_act.src
        x = state.bufs[ld_act.src]
        wt = self.dense_weight(ld_tile.w, mac.keep_n, mac.group_m)
        k = x.shape[-1]
        if k > wt.shape[0]:
            raise ExecutionError(f"ld.act: {ld_act.src} has {k} inputs, the tiles of {ld_tile.w} "
                                 f"cover {wt.shape[0]}")
        x2 = x.reshape(-1, k)
        dst = state.bufs[acc.dst]
        y = matmul32(x2, wt[:k]) if self.numerics == "fp32" else int8_matmul(x2, wt[:k])
        dst += y.reshape(dst.shape).astype(dst.dtype, copy=False)
        return self._macro_sizes(state, mac)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bounded computation.

    A run allocates thousands of small objects (events for the listeners) and no reference
    cycles (reference counting frees everything). The allocations alone trigger collections,
    and with torch loaded the heap holds ~190k tracked objects: a full collection takes ~80 ms
    here, and the occasional one landed inside a run (measured: recording SmolLM2's events
    cost 5.9 ms per run with the collector on, 1.5 ms with it paused).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def check_inputs(image: Image, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Inputs as arrays of the signature's shapes (floats as float32), or one clear error."""
    specs = image.inputs
    if len(inputs) != len(specs):
        raise UsageError(f"the program takes {len(specs)} inputs, got {len(inputs)}")
    out = []
    for spec, arr in zip(specs, inputs, strict=True):
        arr = np.asarray(arr)
        if tuple(arr.shape) != spec.shape:
            want, got = "x".join(map(str, spec.shape)), "x".join(map(str, arr.shape))
            raise UsageError(f"input {spec.name}: expected shape {want}, got {got}")
        out.append(arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr)
    return out


HANDLERS: dict = {}


def handles(mnemonic: str):
    def deco(fn):
        HANDLERS[mnemonic] = fn
        return fn

    return deco


# -- control -------------------------------------------------------------------------------------
@handles("halt")
def _halt(it: Interpreter, st: State, ins) -> None:
    return None


@handles("layer")
def _layer(it: Interpreter, st: State, ins) -> None:
    st.layer = ins.name


# -- CiM macro (reference semantics, one tile per call) -------------------------------------------
@handles("cfg.nm")
def _cfg_nm(it: Interpreter, st: State, ins) -> dict:
    mac = st.macro(ins.macro)
    mac.keep_n, mac.group_m = ins.n, ins.m
    return {"keep_n": ins.n, "group_m": ins.m}


@handles("ld.tile")
def _ld_tile(it: Interpreter, st: State, ins) -> None:
    mac = st.macro(ins.macro)
    if not mac.keep_n:
        raise ExecutionError("ld.tile before cfg.nm: the macro has no N:M configuration")
    mac.weight = ins.w


@handles("ld.act")
def _ld_act(it: Interpreter, st: State, ins) -> None:
    st.macro(ins.macro).src = ins.src


@handles("cim")
def _cim(it: Interpreter, st: State, ins) -> None:
    mac = st.macro(ins.macro)
    nt, kt = mac.tile
    kind = "fvalues" if it.numerics == "fp32" else "values"
    vals = it.image.tensors[f"{mac.weight}.{kind}"][nt, kt]  # [P, R, C]
    meta = it.image.tensors[f"{mac.weight}.meta"][nt, kt]
    P, R, _ = vals.shape
    n, m = mac.keep_n, mac.group_m
    k_pass = P * R * m // n
    x = st.bufs[mac.src]
    x = x.reshape(-1, x.shape[-1])
    tile = np.zeros((x.shape[0], k_pass), dtype=np.float64 if it.numerics == "fp32" else np.int64)
    part = x[:, kt * k_pass:(kt + 1) * k_pass]
    tile[:, : part.shape[1]] = part
    q = (np.arange(P).reshape(P, 1, 1) // n) * R + np.arange(R).reshape(1, R, 1)
    sel = tile[:, q * m + meta.astype(np.int64)]  # [T, P, R, C]: the activation each cell sees
    mac.psum_sub = (sel * vals.astype(sel.dtype)).sum(axis=2)  # column adder trees: [T, P, C]
    mac.merged = None


@handles("merge")
def _merge(it: Interpreter, st: State, ins) -> None:
    mac = st.macro(ins.macro)
    if mac.psum_sub is None:
        raise ExecutionError("merge before cim")
    mac.merged = mac.psum_sub.sum(axis=1)
    mac.psum_sub = None


@handles("acc")
def _acc(it: Interpreter, st: State, ins) -> None:
    mac = st.macro(ins.macro)
    if mac.merged is None:
        raise ExecutionError("acc before merge")
    dst = st.bufs[ins.dst]
    C = mac.merged.shape[1]
    nt = mac.tile[0]
    flat = dst.reshape(-1, dst.shape[-1])
    flat[:, nt * C:(nt + 1) * C] += mac.merged.astype(dst.dtype)
    mac.merged = None


@handles("psum.clr")
def _psum_clr(it: Interpreter, st: State, ins) -> dict:
    like = st.bufs[ins.like]
    dtype = np.float32 if it.numerics == "fp32" else np.int32
    st.bufs[ins.dst] = np.zeros(like.shape[:-1] + (ins.cols,), dtype=dtype)
    return {"elements": math.prod(like.shape[:-1]) * ins.cols}


# -- attention and embedding (activation x activation GEMMs; tables in packed weights) ----------
def quantise_columns(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per column (over axis -2): the scale of each macro output channel."""
    q, s = vector.quantise_per_token(np.swapaxes(x, -1, -2))
    return np.swapaxes(q, -1, -2), s


@handles("mm.act")
def _mm_act(it: Interpreter, st: State, ins) -> dict:
    a, b = st.bufs[ins.a], st.bufs[ins.b]
    if a.shape[-1] != b.shape[-2]:
        raise ExecutionError(f"mm.act: {ins.a} {a.shape} @ {ins.b} {b.shape}: K differs")
    if it.numerics == "fp32":
        y = matmul32(a, b)
    else:
        qa, sa = vector.quantise_per_token(a)
        qb, sb = quantise_columns(b)
        y = exact_int_matmul(qa, qb).astype(np.float32) * sa[..., :, None] * sb[..., None, :]
    st.bufs[ins.dst] = y
    return it.act_gemm_sizes(a.shape, b.shape, y.shape)


@handles("v.embed")
def _embed(it: Interpreter, st: State, ins) -> dict:
    ids = st.bufs[ins.src]
    idx = ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) else np.rint(ids).astype(np.int64)
    p = it.geometry["subarrays"]
    table = it.dense_weight(ins.w, p, p)  # W^T [K_pad, rows]: column r is table row r
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[1]):
        raise ExecutionError(f"v.embed: token id out of range for @{ins.w} ({table.shape[1]} rows)")
    flat = idx.reshape(-1)
    y = table[: ins.cols, flat].T.astype(np.float32)
    if it.numerics != "fp32":
        y = y * it.image.tensors[f"{ins.w}.scale"][flat][:, None]
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(idx.shape + (ins.cols,))
    st.bufs[ins.dst] = y
    return {"elements": int(y.size), "in_elements": int(idx.size), "tokens": int(idx.size)}


vector.register(handles)
vector_masks.register(handles)
