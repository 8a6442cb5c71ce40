"""flowc: compile PyTorch models to FlexCiM programs (FLOW N:M selection) and simulate them.

    import flowc
    model = flowc.load("mlp.pt2")                       # or an nn.Module with inputs=...
    image = flowc.compile(model, "calibrate,nm-prune{n=2,m=4},verify-nm,quantize")
    report = flowc.run(image)                            # cycles, energy, ONNX Runtime check

docs/api.md documents every name in `__all__`. Names resolve on first use, so `import flowc`
stays cheap (torch loads only when a function needs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flowc.api import analytic, compare, compile, evaluate, load, run, sweep
    from flowc.backend.container import load as load_image
    from flowc.backend.container import save as save_image
    from flowc.backend.image import Image
    from flowc.errors import FlowcError
    from flowc.frontend.load import Captured as Model
    from flowc.machine import MachineConfig, builtin_machines, load_machine
    from flowc.passes import Pass, register_pass
    from flowc.studies.results import CostReport, EvalReport

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "load": ("flowc.api", "load"),
    "compile": ("flowc.api", "compile"),
    "run": ("flowc.api", "run"),
    "compare": ("flowc.api", "compare"),
    "analytic": ("flowc.api", "analytic"),
    "evaluate": ("flowc.api", "evaluate"),
    "sweep": ("flowc.api", "sweep"),
    "save_image": ("flowc.backend.container", "save"),
    "load_image": ("flowc.backend.container", "load"),
    "load_machine": ("flowc.machine", "load_machine"),
    "builtin_machines": ("flowc.machine", "builtin_machines"),
    "register_pass": ("flowc.passes", "register_pass"),
    "Model": ("flowc.frontend.load", "Captured"),
    "Image": ("flowc.backend.image", "Image"),
    "MachineConfig": ("flowc.machine", "MachineConfig"),
    "CostReport": ("flowc.studies.results", "CostReport"),
    "EvalReport": ("flowc.studies.results", "EvalReport"),
    "Pass": ("flowc.passes", "Pass"),
    "FlowcError": ("flowc.errors", "FlowcError"),
}

__all__ = [
    "CostReport", "EvalReport", "FlowcError", "Image", "MachineConfig",
    "Model", "Pass", "__version__", "analytic", "builtin_machines", "compare",
    "compile", "evaluate", "load", "load_image", "load_machine", "register_pass", "run",
    "save_image", "sweep",
]


def __getattr__(name: str) -> object:
    """Import on first use (see the module docstring)."""
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flowc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
