"""The typed machine description: one frozen object that drives compiler, cost model and reports.

Field defaults are the FlexCiM values of SPEC.md section 3 and equal the shipped
`flowc/machines/flexcim.toml` (a test checks it), except the energy table, which has no
defaults. Construct machines with `MachineConfig.from_dict`, `from_file` or `load_machine`,
which validate every field and name its path in the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowc.machine.energy import EnergyTable
from flowc.machine.errors import PatternError

PAIR_SELECTS = ("per-column", "row-shared")
RESIDENCIES = ("resident", "streamed")


@dataclass(frozen=True)
class MacroConfig:
    """Geometry of one CiM macro and its input path."""

    subarrays: int = 4  # P: sub-macros per macro (gangs are formed from them)
    rows: int = 32  # R: rows per sub-macro (column adder tree has log2(R) levels)
    cols: int = 32  # C: columns = output channels per tile
    weight_bits: int = 8
    act_bits: int = 8
    meta_bits: int = 1  # metadata bits stored per cell (the 2:1 in-pair select)
    input_bits: int = 1  # input bits consumed per cycle: 1 bit-serial, 2 radix-4 Booth
    pairs: int = 4  # activation pairs the distribution mux chooses from (so M <= 2*pairs)
    act_bw_bits: int = 1024  # activation buffer bandwidth, bits per cycle per macro

    @property
    def cells(self) -> int:
        return self.subarrays * self.rows * self.cols

    @property
    def bit_cycles(self) -> int:
        """Cycles to consume one activation: ceil(act_bits / input_bits)."""
        return -(-self.act_bits // self.input_bits)

    @property
    def tree_levels(self) -> int:
        return self.rows.bit_length() - 1

    @property
    def merge_levels(self) -> int:
        return self.subarrays.bit_length() - 1

    @property
    def psum_bits(self) -> int:
        """Width of a merged column psum: act + weight bits + log2(P*R) carry bits."""
        return self.act_bits + self.weight_bits + self.tree_levels + self.merge_levels


@dataclass(frozen=True)
class VectorConfig:
    """The vector unit: `lanes` elements per cycle, and cycles per element per op class."""

    lanes: int = 64
    elementwise: int = 1  # add, mul, bias, relu, scale, mov, const, psum.clr
    quant: int = 2  # abs-max reduction, then scale + round + clip
    deq: int = 1  # one fused multiply by two scales
    activation: int = 4  # gelu, silu (polynomial / table)
    softmax: int = 4  # max, exp, sum, divide
    norm: int = 3  # layernorm, rmsnorm: statistics pass + normalise
    permute: int = 1  # a copy with permuted strides (reshape is a view: free)


@dataclass(frozen=True)
class MachineConfig:
    """A target machine. See docs/hardware.md for every field and the formulas that use it."""

    name: str = "custom"
    description: str = ""
    macro: MacroConfig = field(default_factory=MacroConfig)
    patterns: tuple[tuple[int, int], ...] = ((1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8))
    dense: bool = True  # also runs dense layers as n = m = P
    metadata: bool = True  # False: dense DCiM, no metadata bit, distribution or merge unit
    pair_select: str = "per-column"
    residency: str = "streamed"  # "resident": one macro per weight tile (paper), one wave
    load_overlap: bool = True
    macros: int = 16  # macros computing in parallel (streamed; a lower bound when resident)
    clock_mhz: float = 500.0
    vector: VectorConfig = field(default_factory=VectorConfig)
    energy: EnergyTable = field(default_factory=EnergyTable)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MachineConfig:
        """Validate a plain dict (as read from TOML/JSON); errors name the field path."""
        from flowc.machine.load import parse_machine

        return parse_machine(d)

    @classmethod
    def from_file(cls, path: str) -> MachineConfig:
        """Load a machine from a .toml or .json file."""
        from flowc.machine.load import load_file

        return load_file(path)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict that `from_dict` turns back into an equal MachineConfig."""
        from flowc.machine.load import machine_to_dict

        return machine_to_dict(self)

    def replace(self, **changes: Any) -> MachineConfig:
        """A validated copy with `changes` applied, e.g. `m.replace(name="wide", macros=64)`.

        Top-level fields by name; a table (`macro`, `vector`, `energy`) as a dict of the fields
        to change (`macro={"rows": 64}`) or as a whole object; `patterns` as (n, m) pairs or
        'n:m' strings. The result is checked like a machine file (errors name the field path).
        The name is kept unless given: reports and comparisons key machines by name.
        """
        from flowc.machine.load import replace_fields

        return replace_fields(self, changes)

    # -- patterns --------------------------------------------------------------------------
    @property
    def dense_pattern(self) -> tuple[int, int]:
        p = self.macro.subarrays
        return (p, p)

    def supported(self) -> tuple[tuple[int, int], ...]:
        """Every pattern the machine runs natively, dense (P:P) last when supported."""
        return self.patterns + ((self.dense_pattern,) if self.dense else ())

    def supports(self, n: int, m: int) -> bool:
        return (n, m) in self.supported()

    def k_pass(self, n: int, m: int) -> int:
        """Input channels covered by one macro pass at n:m: P * R * m / n."""
        check_pattern(n, m)
        k = self.macro.subarrays * self.macro.rows * m
        if k % n:
            raise PatternError(f"pattern {n}:{m}: P*R*m/n = {k}/{n} is not an integer")
        return k // n

    @staticmethod
    def fits(n: int, m: int, n2: int, m2: int) -> bool:
        """Whether every n:m mask is also a valid n2:m2 mask (see `fits`)."""
        return fits(n, m, n2, m2)

    def fit_pattern(self, n: int, m: int) -> tuple[int, int]:
        """The cheapest supported pattern that holds any n:m mask.

        Cheapest = largest K_pass (fewest passes); ties prefer the mask's own pattern, then the
        smaller group (less pair selection). Raises PatternError when nothing fits.
        """
        check_pattern(n, m)
        cands = [(n2, m2) for n2, m2 in self.supported() if fits(n, m, n2, m2)]
        if not cands:
            raise PatternError(f"pattern {n}:{m} fits no pattern of machine '{self.name}' "
                               f"(supported: {format_patterns(self.supported())})")
        return min(cands, key=lambda p: (-self.k_pass(*p), p != (n, m), p[1], p[0]))

    # -- energy ----------------------------------------------------------------------------
    def energy_pj(self, actions: Mapping[str, float]) -> float:
        """Total energy (pJ) of a dict of action counts; unknown actions raise EnergyError."""
        return self.energy.energy_pj(actions)

    def energy_breakdown(self, actions: Mapping[str, float]) -> dict[str, float]:
        """Energy (pJ) per action."""
        return self.energy.breakdown(actions)

    def required_actions(self) -> tuple[str, ...]:
        """Energy actions the cost model may charge on this machine (all need a value)."""
        acts = ["weight_write", "mult_bit", "full_adder", "ff_write", "shift_acc",
                "abuf_read", "gbuf_read", "gbuf_write", "dram_read", "vec_op"]
        acts += [f"tree_l{k}" for k in range(1, self.macro.tree_levels + 1)]
        acts += sorted({f"merge_n{n}" for n, _ in self.supported()})
        if self.metadata:
            acts.append("mux_bit")
        return tuple(acts)


def check_pattern(n: int, m: int) -> None:
    """Raise PatternError unless 1 <= n <= m are integers."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m))
    if not ok or not 1 <= n <= m:
        raise PatternError(f"pattern {n}:{m}: expected integers with 1 <= n <= m")


def fits(n: int, m: int, n2: int, m2: int) -> bool:
    """Whether any mask keeping n of every m weights is also a valid n2:m2 mask.

    If m2 divides m, a group of m2 (aligned inside a group of m) holds at most min(n, m2)
    kept weights; if m divides m2, a group of m2 holds up to (m2 / m) * n. Otherwise the groups
    are not aligned and we say no.
    """
    check_pattern(n, m)
    check_pattern(n2, m2)
    if m % m2 == 0:
        return min(n, m2) <= n2
    if m2 % m == 0:
        return (m2 // m) * n <= n2
    return False


def format_patterns(patterns: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{n}:{m}" for n, m in patterns)
