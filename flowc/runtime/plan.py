"""The execution plan: a program prepared once, then run as a walk over prepared steps.

The per-opcode handlers (flowc.runtime.interpreter) are the executable specification; the
plan runs the same arithmetic with everything that does not depend on the inputs done at
preparation time:
- each instruction's handler is resolved once (no table lookup, no mnemonic checks per run);
- the N:M configuration of every tile loop is resolved statically (the program has no
  branches: the last `cfg.nm` of the loop's macro before it), so each loop's dense weight is
  unpacked once per interpreter (`flowc.runtime.weights`, in the dtype the GEMM multiplies:
  float32 for the exact float32-chunk path, int8 for torch._int_mm), never per run;
- `v.embed` gathers rows of a float32 [rows, cols] table prepared once, not columns of W^T;
- the events the listeners get depend only on instructions and shapes, and every shape is
  fixed by the input signature (check_inputs): they are built on the first accounted run and
  replayed afterwards, so a later run only adds counts.
- with int8 numerics and intermediates not kept, flowc.runtime.fused replaces v.quant, each
  psum.clr + loop + v.deq and each attention chain by steps that skip intermediates.
Results are bit-identical to the handlers (tests compare every buffer of the unfused plan on
every test program, and the fused plan's outputs bit for bit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from flowc.errors import ExecutionError
from flowc.runtime.fused import fuse
from flowc.runtime.gemm import EXACT_CHUNK

if TYPE_CHECKING:
    from flowc.runtime.interpreter import Interpreter, Loop, State

UNPACK_THREADS = 2  # the weights' unpacking at preparation (Plan._unpack)


@dataclass
class Step:
    """One prepared step: `run(state)` executes it and returns the event sizes (or None)."""

    run: Callable[[State], dict | None]
    item: object  # the instruction, or the Loop it stands for
    kind: str  # profile class: gemm, attention, embed, vector, control
    loop: bool = False
    nm: tuple[int, int] | None = None  # a GEMM loop's N:M, resolved at preparation


def profile_kind(mnemonic: str) -> str:
    """The profile class of an instruction outside tile loops."""
    if mnemonic == "mm.act":
        return "attention"
    if mnemonic == "v.embed":
        return "embed"
    if mnemonic in ("layer", "halt", "cfg.nm"):
        return "control"
    return "vector"


class Plan:
    """A program prepared for repeated runs on one interpreter (its image and numerics)."""

    def __init__(self, interp: Interpreter) -> None:
        self.interp = interp
        t0 = time.perf_counter()
        self.steps = self._prepare(interp.steps)
        # fused steps (flowc.runtime.fused) skip intermediates: not when every buffer is kept
        self.keeps_buffers = interp.keep_buffers
        # set by fuse: (activation buffer, fused_linear.LinearProduct, column blocks or None) per
        # product, and the indices of the loops they replace (profile.gemm_floor times them)
        self.products: list[tuple] = []
        self.fused_loops: set[int] = set()
        self.fused = 0 if interp.keep_buffers or interp.numerics != "int8" else \
            fuse(self, interp.steps, self.steps)
        self.dead = dead_after(self.steps, {o.buffer for o in interp.image.outputs})
        self.prepare_seconds = time.perf_counter() - t0  # weights unpacked, steps resolved
        self._events: list | None = None  # (is_loop, event) per emitting step, first run
        self.record = False  # record the events on the next run even without listeners
        self.priced: dict = {}  # machine -> per-layer costs of the events (runtime/priced.py)

    # -- preparation ---------------------------------------------------------------------
    def _prepare(self, items: Sequence) -> list[Step]:
        from flowc.runtime.interpreter import CANONICAL_BODY, HANDLERS, Loop

        it, steps, pattern = self.interp, [], {}
        gemms: list[tuple[int, Loop, tuple[int, int]]] = []  # (step index, loop, N:M)
        for item in items:
            if isinstance(item, Loop):
                names = tuple(i.mnemonic for i in item.body)
                macros = {i.macro for i in item.body}
                nm = pattern.get(item.body[0].macro) if len(macros) == 1 else None
                if names == CANONICAL_BODY and nm is not None:
                    gemms.append((len(steps), item, nm))
                    steps.append(None)  # built below, once every weight is unpacked
                else:  # the reference tile loop (it also raises the spec's errors)
                    steps.append(Step(self._reference_loop(item), item, "gemm", loop=True))
                continue
            mn = item.mnemonic
            if mn == "cfg.nm":
                pattern[item.macro] = (item.n, item.m)
            handler = HANDLERS.get(mn)
            if handler is None:
                raise ExecutionError(f"no handler for instruction {mn}")
            run = self._embed_step(item) if mn == "v.embed" else _bound(handler, it, item)
            steps.append(Step(run, item, profile_kind(mn)))
        self._unpack({(loop.body[0].w, *nm) for _, loop, nm in gemms})
        for i, loop, nm in gemms:
            steps[i] = Step(self._gemm_step(loop, *nm), loop, "gemm", True, nm)
        return steps

    def _unpack(self, weights: set[tuple[str, int, int]]) -> None:
        """Unpack the (name, n, m) weights of the GEMM loops on UNPACK_THREADS threads:
        numpy's copies and scatters release the GIL, and the unpacking was most of a
        plan's preparation (SmolLM2-135M: 1.40-1.85 s of ~2.7 s on one thread, 1.09-1.58 s
        on two, 211 weights, measured here)."""
        from concurrent.futures import ThreadPoolExecutor

        it, chunks = self.interp, self._float_chunks()

        def unpack(spec: tuple[str, int, int]) -> None:
            it.dense_weight(*spec, float_chunks=chunks)

        # largest first, so no big one is left alone at the end
        tensors = it.image.tensors
        order = sorted(weights, key=lambda s: -getattr(tensors.get(f"{s[0]}.values"), "size", 0))
        with ThreadPoolExecutor(UNPACK_THREADS, thread_name_prefix="flowc-unpack") as pool:
            for _ in pool.map(unpack, order):  # re-raises a worker's error here
                pass

    def _float_chunks(self) -> bool:
        """Whether the GEMM loops multiply float32 weights in exact K chunks (the int8
        numerics' float32-chunk backend) rather than torch._int_mm's int8 ones."""
        it = self.interp
        return it.numerics != "fp32" and it.gemm_backend() == "float32-chunks"

    def _reference_loop(self, loop: Loop) -> Callable:
        it = self.interp
        n_tiles, k_tiles = loop.instr.n_tiles, loop.instr.k_tiles

        def run(state: State) -> dict:
            return it._loop_reference(state, loop.body, n_tiles, k_tiles)

        return run

    def _gemm_step(self, loop: Loop, keep_n: int, group_m: int) -> Callable:
        """The canonical loop as one exact GEMM with the weight prepared now."""
        it = self.interp
        ld_tile, ld_act, _, _, acc = loop.body
        macro, w, src, dst_name = ld_tile.macro, ld_tile.w, ld_act.src, acc.dst
        fp32 = it.numerics == "fp32"
        chunks = self._float_chunks()
        wt = it.dense_weight(w, keep_n, group_m, float_chunks=chunks)
        k_max = wt.shape[0]
        wt_t = torch.from_numpy(wt)
        P, R = it.geometry["subarrays"], it.geometry["rows"]
        sizes = {"keep_n": keep_n, "group_m": group_m, "k_pass": P * R * group_m // keep_n}

        def run(state: State) -> dict:
            mac = state.macro(macro)
            if mac.keep_n != keep_n or mac.group_m != group_m:  # cannot happen in a
                raise ExecutionError(f"loop on @{w}: macro {macro} is not at {keep_n}:"
                                     f"{group_m}")  # straight-line program; stay loud
            mac.weight, mac.src = w, src
            x = state.bufs[src]
            k = x.shape[-1]
            if k > k_max:
                raise ExecutionError(f"ld.act: {src} has {k} inputs, the tiles of {w} "
                                     f"cover {k_max}")
            dst = state.bufs[dst_name]
            xt = torch.from_numpy(_contiguous(x).reshape(-1, k))
            dt = torch.from_numpy(dst).view(-1, dst.shape[-1])
            if fp32:
                dt.add_(torch.matmul(xt, wt_t[:k]))
            elif chunks:
                dt.add_(_chunked_int_gemm(xt, wt_t, k))
            else:
                dt.add_(torch._int_mm(xt, wt_t[:k]))
            return {"tokens": math.prod(x.shape[:-1]), **sizes}

        return run

    def _embed_step(self, ins) -> Callable:
        it = self.interp
        p = it.geometry["subarrays"]
        table = it.embed_table(ins.w, p)  # float32 [rows, K_pad]: row r is token r
        rows = table.shape[0]
        table = np.ascontiguousarray(table[:, : ins.cols])
        scale = None if it.numerics == "fp32" else it.image.tensors[f"{ins.w}.scale"]
        src, dst, cols = ins.src, ins.dst, ins.cols

        def run(state: State) -> dict:
            ids = state.bufs[src]
            idx = ids.astype(np.int64) if np.issubdtype(ids.dtype, np.integer) \
                else np.rint(ids).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= rows):
                raise ExecutionError(f"v.embed: token id out of range for @{ins.w} "
                                     f"({rows} rows)")
            flat = idx.reshape(-1)
            y = table[flat]
            if scale is not None:
                y = y * scale[flat][:, None]
            state.bufs[dst] = y.reshape(idx.shape + (cols,))
            return {"elements": int(y.size), "in_elements": int(idx.size),
                    "tokens": int(idx.size)}

        return run

    # -- running ---------------------------------------------------------------------------
    @property
    def events(self) -> list | None:
        """(is_loop, event) of every event a run emits, in order (None before a recorded run)."""
        return self._events

    def run(self, state: State, listeners: Sequence) -> None:
        if self._events is None and (listeners or self.record):
            self._events = self._run_recording(state)
        elif self.interp.keep_buffers:
            for step in self.steps:
                step.run(state)
        else:
            bufs = state.bufs
            for step, dead in zip(self.steps, self.dead, strict=True):
                step.run(state)
                for name in dead:  # its last reader ran: free it (views keep their base)
                    bufs.pop(name, None)
        if not listeners:
            return
        for is_loop, ev in self._events:
            for lis in listeners:
                (lis.on_loop if is_loop else lis.on_instr)(ev)

    def _run_recording(self, state: State) -> list:
        """Run once and build every event (the interpreter's own event builders)."""
        from flowc.runtime.interpreter import SILENT

        it, events = self.interp, []
        for step, dead in zip(self.steps, self.dead, strict=True):
            sizes = step.run(state) or {}
            if step.loop:
                events.append((True, it.loop_event(state.layer, step.item, sizes)))
            elif step.item.mnemonic not in SILENT:
                events.append((False, it.instr_event(state.layer, step.item, sizes)))
            if not it.keep_buffers:
                for name in dead:
                    state.bufs.pop(name, None)
        return events

    def run_profiled(self, state: State, listeners: Sequence) -> dict[str, float]:
        """Run with wall time per profile class; `accounting` is the listeners' share and
        `dispatch` the walk itself (the run's time minus the steps' and the listeners')."""
        from flowc.runtime.interpreter import SILENT

        it = self.interp
        spent = dict.fromkeys(("gemm", "attention", "vector", "embed", "control"), 0.0)
        spent["accounting"] = 0.0
        clock = time.perf_counter
        t_start = clock()
        for step in self.steps:
            t0 = clock()
            sizes = step.run(state) or {}
            t1 = clock()
            spent[step.kind] += t1 - t0
            if listeners and (step.loop or step.item.mnemonic not in SILENT):
                ev = it.loop_event(state.layer, step.item, sizes) if step.loop \
                    else it.instr_event(state.layer, step.item, sizes)
                for lis in listeners:
                    (lis.on_loop if step.loop else lis.on_instr)(ev)
                spent["accounting"] += clock() - t1
        spent["dispatch"] = clock() - t_start - sum(spent.values())
        return spent


def buffers_of(item) -> set[str]:
    """Names of the buffers an instruction (or every instruction of a Loop body) names."""
    from flowc.runtime.interpreter import Loop

    if isinstance(item, Loop):
        return set().union(*(buffers_of(i) for i in item.body))
    return {getattr(item, op.name) for op in item.definition.operands if op.type == "buf"}


def dead_after(steps: Sequence[Step], keep: set[str]) -> list[tuple[str, ...]]:
    """Per step, the buffers no later step names (outputs excepted): freed right after it.
    A run otherwise keeps every intermediate until it ends (SmolLM2 at 2,048 tokens: GBs
    of attention scores)."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in buffers_of(step.item):
            last[name] = i
    dead: list[list[str]] = [[] for _ in steps]
    for name, i in last.items():
        if name not in keep:
            dead[i].append(name)
    return [tuple(sorted(d)) for d in dead]


def _bound(handler, it: Interpreter, ins) -> Callable:
    def run(state: State) -> dict | None:
        try:
            return handler(it, state, ins)
        except KeyError as exc:
            raise ExecutionError(f"{ins.mnemonic}: buffer or tensor {exc} not defined") from exc

    return run


def _contiguous(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()


def _chunked_int_gemm(xt: torch.Tensor, wt: torch.Tensor, k: int) -> torch.Tensor:
    """Exact int32 x @ wt[:k] of int8-valued operands with float32 BLAS: chunks of K <= 1024
    are exact in float32 (gemm.exact_int_matmul); their int32 sum is exact too."""
    xf = xt.to(torch.float32)
    y = None
    for k0 in range(0, k, EXACT_CHUNK):
        part = torch.matmul(xf[:, k0:k0 + EXACT_CHUNK], wt[k0:min(k, k0 + EXACT_CHUNK)])
        part = part.to(torch.int32)
        y = part if y is None else y.add_(part)
    return y


def mismatches(image, numerics: str = "int8", inputs: Sequence[np.ndarray] | None = None,
               against: str = "reference") -> list[str]:
    """Buffers (every one a run leaves, inputs to outputs) whose plan result differs from the
    handlers' in mode `against` in value, dtype or shape; [] when they agree bit for bit."""
    from flowc.runtime.interpreter import Interpreter

    inputs = list(image.samples) if inputs is None else list(inputs)
    plan = Interpreter(image, numerics, "plan")
    plan.keep_buffers = True  # every intermediate, to compare them all
    a = plan.execute(inputs).bufs
    b = Interpreter(image, numerics, against).execute(inputs).bufs
    missing = sorted(set(a) ^ set(b))
    bad = missing + [k for k in a if k in b and not _same(a[k], b[k])]
    # and the plan as it normally runs, freeing each buffer after its last reader
    outs = Interpreter(image, numerics, "plan").run(inputs)
    for spec, out in zip(image.outputs, outs, strict=True):
        if not _same(out, b[spec.buffer].astype(np.float32, copy=False)):
            bad.append(f"{spec.buffer} (output, buffers freed)")
    return bad


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
