"""The pass infrastructure: `Pass`, `PassResult`, `CompileContext`, `PassManager`, instruments.

A pass is a small frozen dataclass whose fields are its options (so a pass instance *is* its
configuration: printable, comparable, hashable, round-trippable through a pipeline string), with
a class-level `name` and `__call__(gm, ctx) -> PassResult`. This is the shape of torch.fx's
`PassResult` and xDSL's `ModulePass`. Passes talk to each other only through the graph
(`node.meta["flowc"]`, parameters) and the `CompileContext` (calibration data, machine, reports).

The `PassManager` runs passes in order, checks their `requires` against the passes that already
ran, runs instruments around each pass (timing, progress) and turns any failure into one
`PassError` line that names the failing pass and the passes that ran before it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, TextIO

import torch.fx as fx

from flowc.errors import CompileError


class PassError(CompileError):
    """A pass failed or could not run; the message is one line naming the pass and its history.

    The exit code is the one of the underlying flowc error (a bad option stays a usage error),
    or the compile-error code otherwise.
    """

    def __init__(
        self, message: str, pass_name: str = "", ran: Sequence[str] = (), exit_code: int = 3
    ) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.ran = tuple(ran)
        self.exit_code = exit_code


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the (possibly new) GraphModule and whether anything changed."""

    graph_module: fx.GraphModule
    modified: bool


@dataclass
class CompileContext:
    """Everything a pass may read besides the graph, plus the place where passes report.

    `reports[pass_name]` is the report of that pass (plain JSON-able values where possible).
    `completed` lists the names of passes that finished, in order, across PassManager runs, so a
    second pipeline run on the same context still sees that `calibrate` ran.
    `progress` is an optional hook for long passes (calibration batches, ILP solve): passes call
    `ctx.log(msg)`, which is silent unless a hook is set.
    `price(out_features, in_features, (n, m)) -> (cycles, energy_pj)` prices one static-weight
    GEMM at a pattern on the target machine; the compile driver binds it to the runtime's cost
    model (passes come before the runtime and must not import it), None when no machine is set.
    `memo` holds measurements a later pass may reuse instead of running the model again, each
    stored with the `flowc.passes.graph.GraphState` it was measured on (e.g. nm-prune's
    layer-wise run leaves the activation max-abs that quantize{smooth} needs).
    """

    example_inputs: tuple[Any, ...] = ()
    calib_inputs: list[tuple[Any, ...]] = field(default_factory=list)
    machine: object | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    completed: list[str] = field(default_factory=list)
    price: Callable[[int, int, tuple[int, int]], tuple[float, float]] | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        """Send a progress message to the hook, if any (passes never print directly)."""
        if self.progress is not None:
            self.progress(message)


@dataclass(frozen=True)
class Pass:
    """Base class of all passes. Subclasses are `@dataclass(frozen=True)` and set `name`.

    `requires` names passes that must have completed before this one (checked by the
    PassManager); a pass whose needs depend on its options overrides `required()` instead.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()

    def __call__(self, gm: fx.GraphModule, ctx: CompileContext) -> PassResult:
        raise NotImplementedError(f"pass {type(self).__name__} does not implement __call__")

    def required(self) -> tuple[str, ...]:
        """Passes that must have run before this instance (default: the class's `requires`)."""
        return self.requires

    def options(self) -> dict[str, Any]:
        """The option values of this instance, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Instrument(Protocol):
    """Observer run by the PassManager around every pass (timing, progress, IR dumps...)."""

    def before(self, pass_: Pass, gm: fx.GraphModule, ctx: CompileContext) -> None: ...

    def after(self, pass_: Pass, result: PassResult, ctx: CompileContext) -> None: ...


class TimingInstrument:
    """Collects the wall time of every pass run, in order (a pass may run twice)."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._start = 0.0

    def before(self, pass_: Pass, gm: fx.GraphModule, ctx: CompileContext) -> None:
        self._start = time.perf_counter()

    def after(self, pass_: Pass, result: PassResult, ctx: CompileContext) -> None:
        self.timings.append((pass_.name, time.perf_counter() - self._start))

    def total(self, name: str | None = None) -> float:
        """Seconds spent in passes called `name` (all passes when None)."""
        return sum(t for n, t in self.timings if name is None or n == name)


class ProgressInstrument:
    """Prints `[flowc] pass-name ... 0.12 s` to a stream (stderr) after every pass."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._start = 0.0

    def before(self, pass_: Pass, gm: fx.GraphModule, ctx: CompileContext) -> None:
        self._start = time.perf_counter()

    def after(self, pass_: Pass, result: PassResult, ctx: CompileContext) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(f"[flowc] {pass_.name} ... {time.perf_counter() - self._start:.2f} s", file=stream)


def _one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, so a PassError stays a single line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class PassManager:
    """Runs passes in order with instruments; failures become one-line `PassError`s.

    `lint=True` runs `gm.graph.lint()` after every pass that reports a modification, so a pass
    that breaks the graph is blamed at once rather than by the backend much later.
    """

    def __init__(
        self,
        passes: Sequence[Pass],
        instruments: Sequence[Instrument] = (),
        lint: bool = True,
    ) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"PassManager takes Pass instances, got {p!r}")
        self.passes = tuple(passes)
        self.instruments = tuple(instruments)
        self.lint = lint

    def run(self, gm: fx.GraphModule, ctx: CompileContext | None = None) -> PassResult:
        """Run every pass on `gm`; returns the final module and whether any pass changed it."""
        ctx = ctx if ctx is not None else CompileContext()
        ran: list[str] = []
        modified = False
        for p in self.passes:
            self._check_requires(p, ctx, ran)
            try:
                for inst in self.instruments:
                    inst.before(p, gm, ctx)
                result = p(gm, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"returned {type(result).__name__}, expected PassResult")
                if self.lint and result.modified:
                    result.graph_module.graph.lint()
                for inst in self.instruments:
                    inst.after(p, result, ctx)
            except Exception as exc:
                raise PassError(
                    f"pass '{p.name}' failed (ran before: {_history(ran)}): {_one_line(exc)}",
                    pass_name=p.name,
                    ran=ran,
                    exit_code=getattr(exc, "exit_code", 3),
                ) from exc
            gm = result.graph_module
            modified = modified or result.modified
            ran.append(p.name)
            ctx.completed.append(p.name)
        return PassResult(gm, modified)

    @staticmethod
    def _check_requires(p: Pass, ctx: CompileContext, ran: list[str]) -> None:
        missing = [r for r in p.required() if r not in ctx.completed]
        if missing:
            raise PassError(
                f"pass '{p.name}' requires {', '.join(repr(m) for m in missing)} to run first "
                f"(ran before: {_history(ran)})",
                pass_name=p.name,
                ran=ran,
                exit_code=2,
            )


def _history(ran: Sequence[str]) -> str:
    return ", ".join(ran) if ran else "none"
