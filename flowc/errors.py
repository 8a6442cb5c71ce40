"""The error types users see. The CLI prints `str(err)` on one line and exits with `exit_code`.

Exit codes (documented in docs/cli.md):
  0 success, 1 numerical check failed, 2 usage / bad input (model, shape, option),
  3 compile error (unsupported op, pruning/verification), 4 bad or corrupt .fcim / assembly,
  5 runtime error while executing a program, 6 a sweep stored every row but some points are
  error rows (POINT_ERRORS), 70 internal error (a bug: rerun with --debug).
"""

from __future__ import annotations

POINT_ERRORS = 6  # `flowc sweep`: finished (rows stored, summary printed), some points failed


class FlowcError(Exception):
    """Base class of every error flowc reports to a user as one line."""

    exit_code = 70


class UsageError(FlowcError):
    exit_code = 2


class ModelLoadError(FlowcError):
    exit_code = 2


class UnsupportedOpError(FlowcError):
    exit_code = 3


class CompileError(FlowcError):
    exit_code = 3


class ImageError(FlowcError):
    """A truncated, corrupt or incompatible .fcim file."""

    exit_code = 4


class ExecutionError(FlowcError):
    exit_code = 5


class CheckFailed(FlowcError):
    exit_code = 1


class WorkerError(FlowcError):
    """Parallel work failed outside the item's own code: a worker process died, or the
    item's exception could not be sent back intact (flowc/executors.py)."""

    exit_code = 70
