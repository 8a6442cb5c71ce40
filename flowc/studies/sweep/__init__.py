"""`flowc sweep`: design-space exploration over machines, models and N:M assignments.

A TOML spec (spec.py) names axes over machine fields, targets, models and patterns; each
point is one row (point.py) evaluated by an executor (flowc.executors) and appended to a
Parquet results directory (store.py) by the driver (run.py), which resumes where a killed run
stopped. docs/sweeps.md is the user reference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_results", "load_spec", "pareto_front", "points_of", "report", "run_sweep"]

_WHERE = {"load_spec": "spec", "points_of": "spec", "run_sweep": "run", "load_results": "store",
          "report": "reporter", "pareto_front": "analysis"}  # reporter.py: see its docstring


def __getattr__(name: str) -> Any:
    """Names resolve lazily: `import flowc.studies.sweep` stays cheap (no pyarrow, no pydantic)."""
    import importlib

    if name in _WHERE:
        return getattr(importlib.import_module(f"flowc.studies.sweep.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'flowc.studies.sweep' has no attribute {name!r}")
