"""Errors of the machine description: one line that names the offending field path."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MachineConfigError(ValueError):
    """A machine description is malformed; the message starts with the field path."""


class EnergyError(MachineConfigError):
    """An energy action is unknown or has no value on this machine (never a silent zero)."""


class PatternError(MachineConfigError):
    """An N:M pattern is invalid or does not fit any pattern the machine supports."""


def suggest(word: str, known: Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix for a misspelled key, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
