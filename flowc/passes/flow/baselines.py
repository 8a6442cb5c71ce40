"""Baselines with FLOW's interface (SPEC.md 2.8): uniform N:M, OWL-N:M, magnitude scores.

All return a `Selection`, so reports show target vs achieved sparsity the same way as FLOW.

OWL-N:M rule (decision; OWL = Yin et al. 2023, "Outlier Weighed Layerwise Sparsity",
arXiv 2310.05175, which sets layer sparsity from the layer's outlier ratio, normalised to a
band of width lambda around the target). Here M is fixed and N moves:

    s_l     = lambda * O^_l               O^_l = min-max normalised outlier ratio, in [0, 1]
    shift_l = s_l - mean_l(s_l)           unweighted mean over the free layers, as in OWL
    N_l     = the allowed N nearest to keep_n * (1 + shift_l), ties to the smaller N

Allowed N = the values in {1, 2, 4, 8, M} with N <= M that the machine supports with this M.
More outliers -> more weights kept. Rounding to allowed values means the achieved sparsity is
not exactly the nominal one; it is reported, never hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from flowc.errors import UsageError

from .problem import (
    PATTERN_VALUES,
    Pattern,
    Selection,
    SelectLayer,
    achieved_sparsity,
    flexcim_supported,
    parse_pattern,
    sparsity_of,
)

OWL_LAMBDA = 1.0


def _check_fixed(layers: Sequence[SelectLayer], fixed: Mapping[str, Pattern] | None
                 ) -> dict[str, Pattern]:
    fixed = {k: parse_pattern(v) for k, v in (fixed or {}).items()}
    unknown = sorted(set(fixed) - {layer.name for layer in layers})
    if unknown:
        raise UsageError(f"fixed layers not among the selectable layers: {', '.join(unknown)}")
    return fixed


def _selection(layers: Sequence[SelectLayer], patterns: dict[str, Pattern], nominal: Pattern,
               method: str) -> Selection:
    params = {layer.name: int(layer.params) for layer in layers}
    ordered = {layer.name: patterns[layer.name] for layer in layers}
    achieved = float(achieved_sparsity(ordered, params)) if ordered else 0.0
    return Selection(ordered, 0.0, achieved, float(sparsity_of(nominal)), 0.0, method)


def uniform_nm(layers: Sequence[SelectLayer], pattern: Pattern | str,
               fixed: Mapping[str, Pattern] | None = None) -> Selection:
    """The same N:M for every layer except the fixed ones (e.g. kept dense)."""
    pattern = parse_pattern(pattern)
    fixed = _check_fixed(layers, fixed)
    patterns = {layer.name: fixed.get(layer.name, pattern) for layer in layers}
    return _selection(layers, patterns, pattern, f"uniform-{pattern[0]}:{pattern[1]}")


def allowed_n(group_m: int, supported: Callable[[int, int], bool] = flexcim_supported,
              values: Sequence[int] = PATTERN_VALUES) -> list[int]:
    """Kept counts N the machine runs with group size M (from `values` plus M itself)."""
    return sorted({n for n in (*values, group_m) if n <= group_m and supported(n, group_m)})


def owl_nm(layers: Sequence[SelectLayer], pattern: Pattern | str, lam: float = OWL_LAMBDA,
           supported: Callable[[int, int], bool] = flexcim_supported,
           fixed: Mapping[str, Pattern] | None = None,
           base_keep: float | None = None) -> Selection:
    """OWL-N:M: M fixed, per-layer N shifted by the layer's outlier ratio (module docstring).

    `base_keep` replaces `keep_n` as the centre of the band when a target sparsity is not a
    pattern of its own (target 0.6 with M = 8: base 3.2 kept per 8).
    """
    keep_n, group_m = parse_pattern(pattern)
    centre = float(keep_n if base_keep is None else base_keep)
    if not 0 < centre <= group_m:
        raise UsageError(f"OWL base keep {centre} must lie in (0, M={group_m}]")
    if lam < 0:
        raise UsageError(f"OWL lambda must be >= 0, got {lam}")
    fixed = _check_fixed(layers, fixed)
    allowed = allowed_n(group_m, supported)
    if not allowed:
        raise UsageError(f"no N is supported with M = {group_m}")
    free = [layer for layer in layers if layer.name not in fixed]
    s = np.array([lam * layer.ratio_hat for layer in free], dtype=np.float64)
    shift = s - s.mean() if s.size else s
    patterns = dict(fixed)
    for layer, sh in zip(free, shift, strict=True):
        raw = centre * (1.0 + float(sh))
        n = min(allowed, key=lambda v: (abs(v - raw), v))
        patterns[layer.name] = (n, group_m)
    sel = _selection(layers, patterns, (keep_n, group_m), f"owl-{keep_n}:{group_m}")
    if base_keep is None:
        return sel
    return replace(sel, target=1.0 - centre / group_m, method=f"owl-{centre:g}:{group_m}")


def magnitude_scores(weight: np.ndarray) -> np.ndarray:
    """|W|: the importance the magnitude-pruning baseline ranks by."""
    return np.abs(np.asarray(weight))
