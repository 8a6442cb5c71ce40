"""Python objects as model sources (`flowc.load(obj)`): an `nn.Module` with example inputs,
or an `ExportedProgram` (with the inputs it was exported with, else seeded ones of its shapes).

They take the route a file takes (torch.export, then `prepare_graph`), on a deep copy: the
caller's object is never changed (not its weights, not its train/eval mode), so it can be
loaded again, trained further or compiled elsewhere.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from flowc.errors import UsageError
from flowc.frontend.index_range import index_bounds
from flowc.frontend.load import (
    Captured,
    _exported_input_specs,
    _finish,
    capture,
    example_inputs_for,
    recorded_inputs,
)


def as_inputs(inputs: torch.Tensor | Sequence[torch.Tensor] | None
              ) -> tuple[torch.Tensor, ...] | None:
    """One tensor or a sequence of them as a tuple of detached copies (None stays None)."""
    if inputs is None:
        return None
    items = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    for i, x in enumerate(items):
        if not isinstance(x, torch.Tensor):
            raise UsageError(f"inputs[{i}]: expected a torch.Tensor, got {type(x).__name__}")
    return tuple(x.detach().clone() for x in items)


def load_module(module: torch.nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor] | None,
                name: str | None = None) -> Captured:
    """Capture a copy of `module` on `inputs` (required: a module records no shapes)."""
    args = as_inputs(inputs)
    label = name or type(module).__name__
    if not args:
        raise UsageError(f"{label}: an nn.Module needs example inputs, e.g. "
                         "flowc.load(module, inputs=torch.randn(1, 784))")
    return capture(copy.deepcopy(module), args, source=f"module:{label}")


def load_exported(ep: torch.export.ExportedProgram,
                  inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
                  name: str = "ExportedProgram") -> Captured:
    """Prepare a copy of `ep`; inputs default to the recorded ones, else seeded ones."""
    specs = _exported_input_specs(ep)
    args = as_inputs(inputs)
    if args is None:
        args = recorded_inputs(ep, specs)
    if args is None:
        high = index_bounds(ep.graph, tuple(ep.graph_signature.user_inputs))
        args = example_inputs_for([s for s, _ in specs], [d for _, d in specs], high=high)
    got = [tuple(x.shape) for x in args]
    want = [s for s, _ in specs]
    if got != want:
        raise UsageError(f"{name}: inputs of shapes {got} given, the program was exported with "
                         f"{want}")
    return _finish(copy.deepcopy(ep), args, f"exported:{name}")
