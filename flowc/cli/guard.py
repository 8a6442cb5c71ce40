"""Shared by every subcommand: the global flags (--debug, -v, -q, accepted before or after the
subcommand), the mapping of failures to one line and an exit code (documented in docs/cli.md;
the codes come from flowc/errors.py), and a quiet exit when the reader of stdout goes away."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from flowc.errors import FlowcError

# the flags every subcommand takes; `flowc --debug compile ...` means `flowc compile --debug ...`
GLOBAL_FLAGS = ("--debug", "-v", "-vv", "--verbose", "-q", "--quiet")
EXIT_PIPE = 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)


def add_debug(p: argparse.ArgumentParser) -> None:
    """Add the global flags to one (sub)command's parser."""
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail: Python warnings and library log messages on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def hoist_global_flags(argv: Sequence[str], commands: Sequence[str]) -> list[str]:
    """Move global flags given before the subcommand to just after it, so they are parsed by
    the subcommand's parser like flags given after it."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in commands:
            before = [a for a in argv[:i] if a in GLOBAL_FLAGS]
            rest = [a for a in argv[:i] if a not in GLOBAL_FLAGS]
            return rest + [arg] + before + argv[i + 1:]
        if not arg.startswith("-"):
            break
    return argv


def set_verbosity(args: argparse.Namespace, prog: str = "flowc") -> None:
    """-v: show Python warnings and flowc's log messages (both are held back otherwise).
    Warnings are one line, `PROG: warning: ...` (e.g. a pass plugin that does not import)."""
    import warnings

    warnings.formatwarning = lambda message, *_a, **_k: f"{prog}: warning: {message}\n"
    if getattr(args, "verbose", 0):
        import logging

        logging.basicConfig(level=logging.INFO if args.verbose == 1 else logging.DEBUG,
                            format="%(name)s: %(message)s")
        warnings.simplefilter("default")


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
    import warnings

    old_format = warnings.formatwarning
    with warnings.catch_warnings():  # the one-line format and filters last for this command
        try:
            set_verbosity(args, prog)
            return _handle(prog, fn, args)
        finally:
            warnings.formatwarning = old_format


def _handle(prog: str, fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        code = fn(args)
        sys.stdout.flush()  # a closed pipe shows up here for buffered output
        return code
    except BrokenPipeError:
        return closed_pipe()
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


def closed_pipe() -> int:
    """The reader of stdout went away (`flowc compare ... | head`): stop quietly. Output files
    were written before the report was printed; stdout is pointed at /dev/null so the
    interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_PIPE
