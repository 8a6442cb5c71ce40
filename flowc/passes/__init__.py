"""Passes over the captured fx graph, and the infrastructure to write and run your own.

    from flowc.passes import Pass, PassResult, register_pass, parse_pipeline, PassManager

See docs/writing-a-pass.md.
"""

from flowc.passes.base import (
    CompileContext,
    Instrument,
    Pass,
    PassError,
    PassManager,
    PassResult,
    ProgressInstrument,
    TimingInstrument,
)
from flowc.passes.graph import LinearRef, flowc_meta, get_param, linear_nodes, set_param
from flowc.passes.pipeline import PipelineError, format_pipeline, parse_pipeline
from flowc.passes.registry import available_passes, get_pass, register_pass

__all__ = [
    "CompileContext", "Instrument", "LinearRef", "Pass", "PassError", "PassManager",
    "PassResult", "PipelineError", "ProgressInstrument", "TimingInstrument",
    "available_passes", "flowc_meta", "format_pipeline", "get_param", "get_pass",
    "linear_nodes", "parse_pipeline", "register_pass", "set_param",
]
