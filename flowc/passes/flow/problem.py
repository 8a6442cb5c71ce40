"""The N:M selection problem shared by the ILP (ilp.py), the exact DP (dp.py) and baselines.

FLOW picks one candidate pattern c = (n, m) (n weights kept per group of m) per layer and
minimises sum_l alpha * |n - N_max * O^_l| + beta * |m - M_target_l| (SPEC.md 2.5), where

- ``direction="paper"`` (default): M_target_l = M_max * (1 - ND_l): clustered outliers (low ND)
  ask for a wide group, so neighbouring outliers can all be kept (paper figure: high/clustered
  -> 4:8).
- ``direction="repo"``: M_target_l = M_max * ND_l, the opposite sign, as FLOW's public code
  uses it. With ``locality="repo"`` (ND_l = 1 - minmax(locality)) this is exactly FLOW's term
  |m - M_max * (1 - minmax(1 / mean flat distance))|.

The parameter-weighted mean sparsity (1 - n/m) over *all* layers, fixed ones included, must lie
within target +- tolerance. The bounds are exact rationals of the *decimal* the user wrote
(`exact_fraction`: 0.7 is 7/10, not the binary float 0.69999999999999995559), so a target that
an assignment reaches exactly is accepted with tolerance 0. `unweighted=True` counts every
unit once instead (FLOW's code: the plain mean over decoder blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

from flowc.errors import CompileError, UsageError

Pattern = tuple[int, int]
# FLOW's candidates in the order its solver creates and reads them (N in 4, 2, 8 x M in 8, 4,
# N <= M); the order decides ties (the DP keeps the lowest index, the repo reader the first hit).
REPO_CANDIDATES: tuple[Pattern, ...] = ((4, 8), (4, 4), (2, 8), (2, 4), (8, 8))
PATTERN_VALUES = (1, 2, 4, 8)
DIRECTIONS = ("paper", "repo")


class InfeasibleTarget(UsageError):
    """No assignment of candidate patterns reaches the target sparsity within the tolerance.

    `nearest` holds the nearest achievable sparsities below and above (those that exist), so
    a caller can retry at the closest feasible target. Exit code 3 (a compile error, as
    docs/cli.md documents), although it stays a UsageError for callers that catch those.
    """

    exit_code = 3

    def __init__(self, message: str, nearest: tuple[float, ...] = ()) -> None:
        super().__init__(message)
        self.nearest = nearest


class SolverError(CompileError):
    """The selection solver failed for a reason other than infeasibility."""


class SelectLayer(Protocol):
    """What selection needs from a layer (LayerOutliers satisfies it)."""

    name: str
    params: int
    ratio_hat: float
    nd: float


@dataclass(frozen=True)
class Selection:
    """The chosen pattern per layer (in layer order) plus how well the target was met."""

    patterns: dict[str, Pattern]
    objective: float
    sparsity: float  # achieved parameter-weighted sparsity over all layers
    target: float
    tolerance: float
    method: str
    costs: dict[str, float] = field(default_factory=dict)


def flexcim_supported(n: int, m: int) -> bool:
    """FlexCiM (P = 4 sub-macros, 4 activation pairs): N <= 4 or dense, M <= 8."""
    return (n <= 4 or n == m) and m <= 8


def exact_fraction(value: float | int | str | Fraction) -> Fraction:
    """The rational a user meant: floats through their shortest decimal repr (0.7 -> 7/10).

    `Fraction(0.7)` is the binary float 3152519739159347/4503599627370496, which no finite
    assignment of N:M patterns reaches; the decimal repr round-trips to the same float, so
    nothing is lost for values that really are binary fractions (0.5, 0.375).
    """
    if isinstance(value, bool):
        raise UsageError(f"expected a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"expected a finite number, got {value!r}")
        return Fraction(repr(value))
    return Fraction(value)


def sparsity_of(pattern: Pattern) -> Fraction:
    """1 - n/m as an exact fraction."""
    n, m = pattern
    return 1 - Fraction(n, m)


def parse_pattern(text: str | Sequence[int]) -> Pattern:
    """'2:4' or (2, 4) -> (2, 4), checking 1 <= n <= m."""
    if isinstance(text, str):
        parts = text.strip().split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise UsageError(f"bad N:M pattern {text!r}: expected e.g. 2:4")
        n, m = int(parts[0]), int(parts[1])
    else:
        n, m = (int(v) for v in text)
    if not 1 <= n <= m:
        raise UsageError(f"bad N:M pattern {n}:{m}: need 1 <= N <= M")
    return (n, m)


def default_candidates(supported: Callable[[int, int], bool] = flexcim_supported,
                       values: Sequence[int] = PATTERN_VALUES) -> list[Pattern]:
    """Every (n, m), n <= m, m >= 2, from `values` that the machine runs, plus dense."""
    cands = [(n, m) for m in values for n in values if n <= m and m >= 2 and supported(n, m)]
    if not any(n == m for n, m in cands):
        top = max(values)
        cands.append((top, top))
    return cands


def resolve_candidates(spec: str | Sequence | None,
                       supported: Callable[[int, int], bool] = flexcim_supported) -> list[Pattern]:
    """None/'default' -> machine-supported set; 'repo' -> FLOW's set; else an explicit list.

    An explicit list may be a string '2:4,4:8' or a sequence of '2:4' / (2, 4) items.
    """
    if spec is None or spec == "default":
        return default_candidates(supported)
    if spec == "repo":
        return list(REPO_CANDIDATES)
    if isinstance(spec, str):
        spec = [s for s in spec.replace(";", ",").split(",") if s.strip()]
    cands = list(dict.fromkeys(parse_pattern(s) for s in spec))
    if not cands:
        raise UsageError("candidate pattern list is empty")
    return cands


def fits_layer(layer: object, pattern: Pattern) -> bool:
    """A pattern is usable if it is dense or M divides the layer's K (when K is known)."""
    n, m = pattern
    k = getattr(layer, "in_features", None)
    return n == m or k is None or k % m == 0


def _by_name(layers: Sequence[SelectLayer], name: str) -> SelectLayer:
    return next(layer for layer in layers if layer.name == name)


def pattern_cost(layer: SelectLayer, pattern: Pattern, alpha: float, beta: float,
                 n_max: int, m_max: int, direction: str) -> float:
    """alpha * |n - N_max * O^_l| + beta * |m - M_target_l| (see module docstring)."""
    n, m = pattern
    m_target = m_max * (1.0 - layer.nd) if direction == "paper" else m_max * layer.nd
    return alpha * abs(n - n_max * layer.ratio_hat) + beta * abs(m - m_target)


@dataclass(frozen=True)
class Problem:
    """A validated instance: free layers with their cost rows, fixed layers, the window.

    A cost of math.inf marks a candidate the layer cannot use (M does not divide its K).
    """

    free: list[SelectLayer]
    costs: list[list[float]]
    cands: list[Pattern]
    fixed: dict[str, Pattern]
    params: dict[str, int]  # every layer, in layer order
    lo: Fraction
    hi: Fraction
    target: float
    tolerance: float


def prepare(layers: Sequence[SelectLayer], target: float, tolerance: float = 0.005,
            alpha: float = 1.0, beta: float = 4.0, n_max: int = 8, m_max: int = 8,
            candidates: str | Sequence | None = None,
            supported: Callable[[int, int], bool] = flexcim_supported,
            fixed: Mapping[str, Pattern | str] | None = None,
            direction: str = "paper", unweighted: bool = False) -> Problem:
    """Check the options and precompute every layer x candidate cost.

    `unweighted`: every unit weighs 1 in the sparsity constraint (FLOW's block mean), so
    `Selection.sparsity` is then that plain mean, not the parameter-weighted one.
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if n_max < 1 or m_max < 1:
        raise UsageError(f"n_max and m_max must be >= 1, got n_max={n_max}, m_max={m_max}")
    if not 0.0 <= target < 1.0 or tolerance < 0:
        raise UsageError(f"target sparsity {target} must be in [0, 1) and tolerance >= 0")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise UsageError("layer names passed to N:M selection are not unique")
    fixed_p = {k: parse_pattern(v) for k, v in (fixed or {}).items()}
    unknown = sorted(set(fixed_p) - set(names))
    if unknown:
        raise UsageError(f"fixed layers not among the selectable layers: {', '.join(unknown)}")
    params = {layer.name: int(layer.params) for layer in layers}
    if not params or any(p <= 0 for p in params.values()):
        raise UsageError("N:M selection needs at least one layer, each with params > 0")
    if unweighted:
        params = dict.fromkeys(params, 1)
    cands = resolve_candidates(candidates, supported)
    for name, pattern in fixed_p.items():
        if not fits_layer(_by_name(layers, name), pattern):
            raise UsageError(f"fixed layer {name}: K is not a multiple of M in {pattern[0]}:"
                             f"{pattern[1]}")
    free = [layer for layer in layers if layer.name not in fixed_p]
    costs = [[pattern_cost(layer, c, alpha, beta, n_max, m_max, direction)
              if fits_layer(layer, c) else math.inf for c in cands] for layer in free]
    for layer, row in zip(free, costs, strict=True):
        if all(math.isinf(c) for c in row):
            raise UsageError(f"layer {layer.name}: no candidate pattern has an M dividing its "
                             f"K = {getattr(layer, 'in_features', None)}")
    lo = exact_fraction(target) - exact_fraction(tolerance)
    hi = exact_fraction(target) + exact_fraction(tolerance)
    return Problem(free, costs, cands, fixed_p, params, lo, hi, target, tolerance)


def achieved_sparsity(patterns: Mapping[str, Pattern], params: Mapping[str, int]) -> Fraction:
    """Parameter-weighted mean sparsity of an assignment, exactly."""
    total = sum(params[name] for name in patterns)
    return sum((params[k] * sparsity_of(p) for k, p in patterns.items()), Fraction(0)) / total


def finish(prob: Problem, choice: Sequence[int], method: str) -> Selection:
    """Turn a candidate index per free layer into a Selection (objective summed in order)."""
    chosen = dict(prob.fixed)
    costs = {}
    objective = 0.0
    for layer, row, j in zip(prob.free, prob.costs, choice, strict=True):
        chosen[layer.name] = prob.cands[j]
        costs[layer.name] = row[j]
        objective += row[j]
    patterns = {name: chosen[name] for name in prob.params}
    sp = achieved_sparsity(patterns, prob.params)
    return Selection(patterns, objective, float(sp), prob.target, prob.tolerance, method, costs)


def _distinct(value: Fraction | float, target: Fraction) -> str:
    """`value` printed with as many digits as it takes to differ from the target's print.

    A nearest achievable sparsity is never the target itself (it lies outside the window), so
    the message must not read as if it were: 4 decimals, more when they coincide, and the
    exact fraction when even 17 digits do not separate them.
    """
    exact = Fraction(value)
    for digits in (4, 6, 8, 10, 12, 14, 17):
        text = f"{float(exact):.{digits}f}"
        if text != f"{float(target):.{digits}f}":
            return text
    return f"{exact.numerator}/{exact.denominator}"


def infeasible_error(prob: Problem, below: Fraction | float | None,
                     above: Fraction | float | None, note: str = "") -> InfeasibleTarget:
    """The one-line error naming the nearest achievable sparsities around the window."""
    target = exact_fraction(prob.target)
    found = [v for v in (below, above) if v is not None]
    near = ", ".join(_distinct(v, target) for v in found) or "none"
    pats = ", ".join(f"{n}:{m}" for n, m in prob.cands)
    return InfeasibleTarget(
        f"target sparsity {prob.target:.4f} +- {prob.tolerance:.4f} is not achievable with "
        f"patterns {pats} ({len(prob.fixed)} fixed layers); nearest achievable: {near}{note}",
        tuple(float(v) for v in found))
