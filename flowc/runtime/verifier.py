"""The program verifier: a `.fcim` program is checked completely before anything executes.

Like WebAssembly's validator or the eBPF verifier, it walks the instruction stream once with
static types (shape + element kind of every buffer) and refuses the program at the first
instruction that could fail, read undefined data, or compute something other than what the
program and its cost report say. Checks:
- structure: loops closed and not nested, exactly one halt, at the end (flowc.isa);
- operands, by their ISA type (flowc.isa definition, not a second table): every `buf` read is
  defined earlier, every `tensor` is in the image, `f32` operands are finite;
- semantics per mnemonic (flowc.runtime.verifier_rules, verifier_layout): shapes, dtypes and
  lengths agree (broadcasts, reshapes, slices, biases and scales of the right length);
- the CiM macro: `cfg.nm` is a pattern the embedded machine runs and equals the one the weight
  was packed for; a tile loop is the canonical body on one macro and its counts equal the
  packed weight's tiles (so batched mode executes exactly what the program says); int8 values,
  metadata inside its group with exactly N distinct indices per group, scales finite and > 0;
- every layer is in the layer table, every output is written with its declared shape;
- peak live memory and total work are within flowc.backend.limits. Live memory is counted as
  the plan runs it: a buffer is freed after the last instruction that names it (a tile loop's
  buffers after its loop.end), outputs are kept; `Verified.kept_bytes` is the peak when every
  buffer is kept instead (the reference mode), which run_image checks for that mode.
A failure is ProgramInvalid (exit 4): instruction index, mnemonic, operand and reason.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flowc import isa
from flowc.backend import limits as limits_mod
from flowc.backend.image import Image
from flowc.errors import ImageError, UsageError
from flowc.runtime import verifier_layout  # noqa: F401  (registers the layout rules)
from flowc.runtime.verifier_rules import F32, I8, I32, INT, RULES, WRITES, Val

CANONICAL_BODY = ("ld.tile", "ld.act", "cim", "merge", "acc")
_BYTES = {F32: 4, I8: 1, I32: 4, INT: 8}


class ProgramInvalid(ImageError):
    """The program of a .fcim fails verification (exit 4)."""


@dataclass(frozen=True)
class Verified:
    """What verification established: instruction count, peak live bytes (buffers freed after
    their last use, as the plan frees them, plus the decompressed weights), work estimate,
    and the peak with every buffer kept (the reference mode)."""

    instructions: int
    peak_bytes: int
    work: int
    kept_bytes: int = 0


def verify(image: Image, limits: limits_mod.Limits | None = None) -> Verified:
    """Check `image.program` against the image; raise ProgramInvalid at the first problem."""
    return _verified(image, limits or limits_mod.current())[0]


# The last image verified, held weakly (flowrun asks twice: the program, then the inputs).
_LAST: list[tuple[tuple, weakref.ref, Verified, dict[str, int]]] = []


def _verified(image: Image, limits: limits_mod.Limits) -> tuple[Verified, dict[str, int]]:
    key = (id(image), id(image.program), id(image.tensors), limits)
    if _LAST and _LAST[0][0] == key and _LAST[0][1]() is image:
        return _LAST[0][2], _LAST[0][3]
    v = _Verifier(image, limits)
    result = v.run()
    _LAST[:] = [(key, weakref.ref(image), result, v.embed_inputs)]
    return result, v.embed_inputs


def check_run_inputs(image: Image, arrays: Sequence[np.ndarray]) -> None:
    """Refuse (UsageError, exit 2) inputs the verified program cannot take: non-finite
    floats, and token ids that are not integers inside the real vocabulary of the table
    they index (the padded rows of a packed table are not tokens)."""
    rows = _verified(image, limits_mod.current())[1]
    for spec, arr in zip(image.inputs, arrays, strict=True):
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UsageError(f"input {spec.name}: holds NaN or infinite values")
        if spec.buffer in rows and arr.size:
            if arr.dtype.kind == "f" and not np.array_equal(arr, np.rint(arr)):
                raise UsageError(f"input {spec.name}: token ids must be integers")
            lo, hi = arr.min(), arr.max()
            if lo < 0 or hi >= rows[spec.buffer]:
                raise UsageError(f"input {spec.name}: token ids {lo}..{hi} outside the "
                                 f"vocabulary 0..{rows[spec.buffer] - 1}")


class _Verifier:
    def __init__(self, image: Image, limits: limits_mod.Limits) -> None:
        from flowc.machine import MachineConfig

        self.image, self.limits = image, limits
        self.tensors = image.tensors
        self.geometry = image.machine["macro"]
        self.machine = MachineConfig.from_dict(image.machine)
        self.supported = set(self.machine.supported())
        self.layers = {info.name: info for info in image.layers}
        self.bufs: dict[str, Val] = {}
        self.live = self.peak = self.work = 0
        self.kept = self.kept_peak = 0  # every buffer written so far, none freed (reference)
        self.last: dict[int, list[str]] = {}  # instruction index -> buffers it names last
        self.index = 0
        self.embed_inputs: dict[str, int] = {}
        self.nm: dict[int, tuple[int, int]] = {}
        self.checked: dict[str, dict] = {}
        self.finite: set[str] = set()
        self.loop: tuple[int, object] | None = None
        self.body: list = []

    # -- helpers the rules call --------------------------------------------------------------
    def fail(self, ins, operand: str, reason: str) -> ProgramInvalid:
        return ProgramInvalid(f"program instruction {self.index} ({ins.mnemonic}) operand "
                              f"{operand}: {reason}")

    def buf(self, ins, name: str) -> Val:
        key = getattr(ins, name)
        if key not in self.bufs:
            raise self.fail(ins, name, f"buffer %{key} is not defined before this instruction")
        return self.bufs[key]

    def tensor(self, ins, name: str) -> np.ndarray:
        key = getattr(ins, name)
        if key not in self.tensors:
            raise self.fail(ins, name, f"tensor @{key} is not in the image")
        t = self.tensors[key]
        if key not in self.finite:
            if t.dtype.kind not in "biuf" or (t.dtype.kind == "f" and not np.isfinite(t).all()):
                raise self.fail(ins, name, f"tensor @{key} ({t.dtype}) holds values that are not "
                                "finite numbers")
            self.finite.add(key)
        return t

    def packed(self, ins, name: str) -> dict:
        """The packed weight `@w` (checked once: int8 values, metadata, tile geometry)."""
        key = getattr(ins, name)
        if key not in self.checked:
            from flowc.runtime.verifier_weights import check_packed

            reason = check_packed(self.image, key)
            if reason:
                raise self.fail(ins, name, f"packed weight @{key}: {reason}")
            self.checked[key] = self.image.packed[key]
        return self.checked[key]

    def weight_scale(self, ins, name: str) -> np.ndarray:
        key = getattr(ins, name)
        self.packed(ins, name)
        s = self.tensors.get(f"{key}.scale")
        if s is None or s.dtype.kind != "f" or s.ndim != 1:
            raise self.fail(ins, name, f"@{key}.scale is missing or not a float vector")
        if not (np.isfinite(s).all() and (s > 0).all()):
            raise self.fail(ins, name, f"@{key}.scale holds a value that is not finite and > 0")
        return s

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> Verified:
        instrs = self.image.program.instructions
        err = isa.instructions.structure_error(instrs)
        if err is not None:
            i, msg = err
            name = instrs[i].mnemonic if i < len(instrs) else "end"
            raise ProgramInvalid(f"program instruction {i} ({name}): {msg}")
        self.last = _last_uses(instrs, {spec.buffer for spec in self.image.outputs})
        self._bind_inputs()
        for self.index, ins in enumerate(instrs):
            self._step(ins)
            for name in self.last.get(self.index, ()):
                val = self.bufs.pop(name, None)
                if val is not None:
                    self.live -= val.size * _BYTES[val.kind]
        self._check_outputs()
        self._add_weight_memory()
        if self.work > self.limits.work:
            raise ProgramInvalid(f"program: about {self.work:.3g} operations, over the work limit "
                                 f"of {self.limits.work:.3g} (flowrun --max-work)")
        return Verified(len(instrs), self.peak, self.work, self.kept_peak)

    def _bind_inputs(self) -> None:
        for spec in self.image.inputs:
            if spec.buffer in self.bufs:
                raise ProgramInvalid(f"program input {spec.name}: buffer %{spec.buffer} is bound twice")
            kind = F32 if spec.dtype.startswith("float") else INT
            self._write(spec.buffer, Val(spec.shape, kind))

    def _step(self, ins) -> None:
        self._operands(ins)
        if ins.mnemonic == "loop.tiles":
            self.loop, self.body = (self.index, ins), []
            return
        if self.loop is not None and ins.mnemonic != "loop.end":
            self.body.append((self.index, ins))
            return
        if ins.mnemonic == "loop.end":
            self._close_loop()
            return
        if ins.mnemonic in CANONICAL_BODY:
            raise self.fail(ins, "macro", "CiM macro instructions run only inside a tile loop")
        if ins.mnemonic == "cfg.nm":
            self._cfg_nm(ins)
            return
        if ins.mnemonic == "layer" and ins.name not in self.layers:
            raise self.fail(ins, "name", f"layer {ins.name!r} is not in the image's layer table")
        rule = RULES.get(ins.mnemonic)
        if rule is None:  # pragma: no cover - a test checks every mnemonic has a rule
            raise self.fail(ins, "-", "no verifier rule for this instruction")
        outs = rule(self, ins)
        for name, val in outs.items():
            self.work += val.size
            self._write(getattr(ins, name), val)

    def _operands(self, ins) -> None:
        """The type-level operand rules, from the ISA definition of the instruction."""
        writes = WRITES.get(ins.mnemonic, ())
        for op in ins.definition.operands:
            value = getattr(ins, op.name)
            if op.type == "buf" and op.name not in writes:
                self.buf(ins, op.name)
            elif op.type == "f32" and not math.isfinite(value):
                raise self.fail(ins, op.name, f"{value} is not finite")

    def _write(self, name: str, val: Val) -> None:
        if any(d < 0 for d in val.shape):
            raise ProgramInvalid(f"program instruction {self.index}: %{name} gets shape {val.shape}")
        old = self.bufs.get(name)
        grow = val.size * _BYTES[val.kind] - (old.size * _BYTES[old.kind] if old else 0)
        self.live += grow
        self.kept += grow
        self.kept_peak = max(self.kept_peak, self.kept)
        self.bufs[name] = val
        self.peak = max(self.peak, self.live)
        if self.peak > self.limits.peak_bytes:
            raise ProgramInvalid(f"program instruction {self.index}: live buffers reach "
                                 f"{self.peak} bytes, over the memory limit of "
                                 f"{self.limits.peak_bytes} (flowrun --max-memory)")

    def _check_outputs(self) -> None:
        for spec in self.image.outputs:
            val = self.bufs.get(spec.buffer)
            if val is None:
                raise ProgramInvalid(f"program output {spec.name}: buffer %{spec.buffer} is never "
                                     "written")
            if val.shape != tuple(spec.shape):
                raise ProgramInvalid(f"program output {spec.name}: %{spec.buffer} has shape "
                                     f"{val.shape}, the signature says {tuple(spec.shape)}")

    def _add_weight_memory(self) -> None:
        """The runtime keeps each weight decompressed once: count it against the limit."""
        dense = sum(math.prod(self.tensors[f"{k}.values"].shape) for k in self.checked)
        self.peak += dense * 4
        self.kept_peak += dense * 4
        if self.peak > self.limits.peak_bytes:
            raise ProgramInvalid(f"program: buffers and decompressed weights need {self.peak} "
                                 f"bytes, over the memory limit of {self.limits.peak_bytes} "
                                 "(flowrun --max-memory)")

    # -- the CiM macro ------------------------------------------------------------------------
    def _cfg_nm(self, ins) -> None:
        if ins.macro >= self.machine.macros:
            raise self.fail(ins, "macro", f"macro {ins.macro}; the machine has {self.machine.macros}")
        if (ins.n, ins.m) not in self.supported:
            pats = ", ".join(f"{n}:{m}" for n, m in sorted(self.supported))
            raise self.fail(ins, "n", f"N:M {ins.n}:{ins.m} is not a pattern this machine runs "
                            f"({pats})")
        self.nm[ins.macro] = (ins.n, ins.m)

    def _close_loop(self) -> None:
        head_index, head = self.loop
        body, self.loop = self.body, None
        names = tuple(ins.mnemonic for _, ins in body)
        here = self.index
        self.index = head_index
        if names != CANONICAL_BODY or len({ins.macro for _, ins in body}) != 1:
            raise self.fail(head, "body", f"a tile loop body is {' '.join(CANONICAL_BODY)} on one "
                            f"macro, got {' '.join(names) or 'nothing'}")
        (ti, ld_tile), (ai, ld_act), _, _, (ci, acc) = body
        self.index = ti
        if ld_tile.macro not in self.nm:
            raise self.fail(ld_tile, "macro", f"macro {ld_tile.macro} has no cfg.nm before the loop")
        info = self.packed(ld_tile, "w")
        n, m = self.nm[ld_tile.macro]
        if (info["n"], info["m"]) != (n, m):
            raise self.fail(ld_tile, "w", f"@{ld_tile.w} is packed {info['n']}:{info['m']}, the "
                            f"macro is configured {n}:{m}")
        nt, kt = self.tensors[f"{ld_tile.w}.values"].shape[:2]
        self.index = head_index
        if (head.n_tiles, head.k_tiles) != (nt, kt):
            raise self.fail(head, "n_tiles" if head.n_tiles != nt else "k_tiles",
                            f"loop runs {head.n_tiles}x{head.k_tiles} tiles, @{ld_tile.w} has "
                            f"{nt}x{kt} packed tiles")
        self._loop_data(ai, ld_act, ci, acc, info, nt, kt, n, m)
        self.index = here

    def _loop_data(self, ai, ld_act, ci, acc, info, nt, kt, n, m) -> None:
        P, R, C = self.geometry["subarrays"], self.geometry["rows"], self.geometry["cols"]
        k_pass = P * R * m // n
        self.index = ai
        x = self.buf(ld_act, "src")
        if x.kind != I8 or not x.shape:
            raise self.fail(ld_act, "src", f"%{ld_act.src} is {x.kind}{list(x.shape)}, expected int8 rows")
        if x.shape[-1] > kt * k_pass:
            raise self.fail(ld_act, "src", f"{x.shape[-1]} inputs, the tiles cover {kt * k_pass}")
        self.index = ci
        dst = self.buf(acc, "dst")
        want = x.shape[:-1] + (nt * C,)
        if dst.kind != I32 or dst.shape != want:
            raise self.fail(acc, "dst", f"%{acc.dst} is {dst.kind}{list(dst.shape)}, expected "
                            f"int32{list(want)}")
        self.work += math.prod(x.shape[:-1]) * nt * C * kt * k_pass


def _last_uses(instrs: Sequence, keep: set[str]) -> dict[int, list[str]]:
    """{instruction index: the buffers no later instruction names} (`keep` excepted), each
    buffer named inside a tile loop counted at the loop's loop.end, where the verifier (and
    the plan) finish the loop: the plan frees a buffer right after that step."""
    last: dict[str, int] = {}
    loop_end = None
    for i in range(len(instrs) - 1, -1, -1):  # backwards: each body knows its loop.end
        ins = instrs[i]
        if ins.mnemonic == "loop.end":
            loop_end = i
        at = i if loop_end is None else loop_end
        for op in ins.definition.operands:
            if op.type == "buf":
                last.setdefault(getattr(ins, op.name), at)
        if ins.mnemonic == "loop.tiles":
            loop_end = None
    out: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            out.setdefault(i, []).append(name)
    return out
