"""Shared by every subcommand: the --debug flag and the mapping of failures to one line and an
exit code (documented in docs/cli.md; the codes come from flowc/errors.py)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from flowc.errors import FlowcError


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived: unwinds like KeyboardInterrupt (temp files are removed on the
    way out) and is not an Exception, so no `except Exception` in a library swallows it."""


_RECEIVED: list[int] = []
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _on_signal(signum: int, frame) -> None:
    _RECEIVED.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def guard(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a handler; print `PROG: error: ...` (one line) and return the exit code on failure,
    or re-raise with --debug. A signal always ends the run with 128 + its number (130 for
    SIGINT, 143 for SIGTERM), even if a library caught the exception it raised."""
    _RECEIVED.clear()
    main_thread = threading.current_thread() is threading.main_thread()
    saved = {s: signal.signal(s, _on_signal) for s in _SIGNALS} if main_thread else {}
    try:
        code = _run(prog, fn, args)
    except (KeyboardInterrupt, Terminated):
        code = 130
        if not _RECEIVED:
            _RECEIVED.append(signal.SIGINT)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    if _RECEIVED:
        print(f"{prog}: interrupted ({signal.Signals(_RECEIVED[0]).name})", file=sys.stderr)
        return 128 + int(_RECEIVED[0])
    return code


def _run(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except Exception as exc:  # map every failure to one line + an exit code
        if getattr(args, "debug", False):
            raise
        code = exc.exit_code if isinstance(exc, FlowcError) else foreign_exit_code(exc)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if code == 70:
            msg = f"internal error: {type(exc).__name__}: {msg} (rerun with --debug)"
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return code


def foreign_exit_code(exc: Exception) -> int:
    """Errors raised by pass/ISA/machine modules that do not derive from FlowcError
    (matched on the class and its bases, so a subclass such as EnergyError maps too)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"AsmError", "DecodeError", "IsaError"}:
        return 4
    if names & {"PassError", "PruneError", "VerifyError", "InfeasibleTarget", "CalibrationError",
                "RegistryError", "PipelineError", "GraphError"}:
        return 3
    if "MachineConfigError" in names:
        return 2
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
        return 2
    return 70
