"""flowc: compile PyTorch models to FlexCiM programs (FLOW N:M selection) and simulate them.

Library entry points (the CLI is a thin layer over these):

    from flowc import load_model, compile_captured, CompileOptions, save_image, load_image, simulate
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "flowc.frontend.load",
    "capture": "flowc.frontend.load",
    "load_hf": "flowc.frontend.load",
    "prepare_graph": "flowc.frontend.prepare",
    "compile_captured": "flowc.studies.compiler",
    "CompileOptions": "flowc.studies.compiler",
    "simulate": "flowc.runtime.session",
    "check_outputs": "flowc.runtime.session",
    "load_machine": "flowc.machine",
}


def __getattr__(name: str):
    """Import lazily so `import flowc` stays cheap (torch loads only when needed)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in ("save_image", "load_image"):
        from flowc.backend import container

        return {"save_image": container.save, "load_image": container.load}[name]
    raise AttributeError(f"module 'flowc' has no attribute {name!r}")
