"""Exception classes of the ISA package.

Every error is one line that says what is wrong and where: a position in a text file for the
definition and the assembler, a byte offset for the decoder, an instruction index for program
structure. Callers (the CLI) print `str(err)` as is.
"""

from __future__ import annotations


class IsaError(Exception):
    """Base class of every error raised by `flowc.isa`."""


class LocatedError(IsaError):
    """An error at a position in a text file, rendered `FILE:LINE:COL: error: MESSAGE`."""

    def __init__(self, filename: str, line: int, column: int, message: str) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.message = message
        super().__init__(f"{filename}:{line}:{column}: error: {message}")


class DefinitionError(LocatedError):
    """The ISA definition file (`flexcim.isa`) is malformed or inconsistent."""


class AsmError(LocatedError):
    """Assembly text does not parse or describes an invalid program."""


class OperandError(IsaError, ValueError):
    """An instruction was constructed with an operand value its type does not allow."""


class ProgramError(IsaError, ValueError):
    """A Program breaks a structural rule (loop balance/nesting, the single final halt)."""

    def __init__(self, index: int, message: str) -> None:
        self.index = index
        self.message = message
        super().__init__(f"instruction {index}: {message}")


class DecodeError(IsaError, ValueError):
    """Binary program data is truncated, has a bad header or holds an invalid instruction."""
