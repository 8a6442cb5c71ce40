"""Events the interpreter sends to its listeners.

Cost accounting is an observer: the interpreter executes instructions and reports what it did
(how many tiles, tokens and elements an instruction touched) to listeners; the cost model turns
those counts into cycles and energy. A new counter never edits an instruction handler.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

# Events are NamedTuples, not dataclasses: the interpreter builds one per executed instruction
# (about 2,800 per SmolLM2 forward) and a frozen dataclass costs ~1.3 us to build, a NamedTuple
# ~0.3 us. Immutable either way; the cost of accounting must stay a few per cent of a run.


class ExecEvent(NamedTuple):
    """One executed instruction and the sizes it worked on.

    `tiles` is the number of tile iterations the event stands for: 1 outside loops (and in the
    reference tile-by-tile mode), n_tiles * k_tiles when a loop body runs batched.
    """

    instr: object  # a flowc.isa instruction (frozen dataclass)
    layer: str  # current report section (set by the `layer` instruction)
    tiles: int = 1
    tokens: int = 0  # vectors processed: product of the leading dims of the activations
    keep_n: int = 0  # current N of the macro's cfg.nm (0 outside CiM work)
    group_m: int = 0  # current M of the macro's cfg.nm
    k_pass: int = 0  # input channels per macro pass at that configuration
    elements: int = 0  # output elements written (vector unit)
    in_elements: int = 0  # input elements read (vector unit)


class LoopEvent(NamedTuple):
    """A whole tile loop, sent after its body ran (every body event has tiles = n_tiles*k_tiles)."""

    instr: object  # the loop.tiles instruction
    layer: str
    n_tiles: int
    k_tiles: int
    body: tuple[ExecEvent, ...]


class Listener(Protocol):
    def on_instr(self, event: ExecEvent) -> None: ...

    def on_loop(self, event: LoopEvent) -> None: ...
