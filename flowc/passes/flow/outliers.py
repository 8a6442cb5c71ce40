"""Outlier statistics that drive FLOW's N:M choice (SPEC.md 2.2-2.3).

Per layer we need two numbers: how many outliers it has (O_l) and how spread out they are
(ND_l). Both are computed from Wanda scores s_ij = |W_ij| * ||X_j||_2.

Locality has two definitions, never mixed:

- ``"exact"`` (default): the mean pairwise L1 distance over *all* outliers, on (row, column)
  coordinates normalised to [0, 1] by the matrix shape (row / (out - 1), col / (in - 1)).
  Computed exactly in O(K log K) with the sorted prefix-sum identity
  sum_{a<b} |p_b - p_a| = sum_b p_b (2b - K - 1) (0-based b over the sorted p), per axis.
- ``"repo"``: FLOW's measure applied to one Linear at a time: the flat (row-major) indices of
  its first 10,000 outliers, 1 / their mean pairwise |i_b - i_a| (a "locality", high =
  clustered); a block then takes the outlier-weighted mean of its members' distances.
- ``"repo-block"``: what FLOW's public code really measures: the first 10,000 outliers of the
  *block's* scores, all its Linears flattened and concatenated in module order, so distances
  cross matrix boundaries (`measure_concatenated`; needs granularity="block").

The outlier threshold is tau x the mean score of one Linear (``threshold="layer"``, OWL's
definition) or of the whole block's concatenated scores (``"block"``, FLOW's code): pass the
absolute cut from `block_cut` to `measure_scores(cut=...)`.

ND_l always means "normalised distance, high = scattered": in exact mode it is the min-max
normalised distance; in repo mode it is 1 - min-max normalised locality, so FLOW's locality
enters the ILP exactly as its code uses it (see ilp.py, ``direction``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from flowc.errors import UsageError

REPO_PREFIX = 10_000
LOCALITIES = ("exact", "repo", "repo-block")
THRESHOLDS = ("layer", "block")


@dataclass(frozen=True)
class RawOutliers:
    """Per-layer measurements before any cross-layer normalisation."""

    name: str
    params: int
    n_outliers: int
    distance: float | None  # exact: mean L1 on normalised coords; repo: mean flat distance
    locality: str = "exact"
    in_features: int | None = None  # K (gcd of members' K for a block): which M divide it

    @property
    def ratio(self) -> float:
        """O_l: the fraction of the layer's weights that are outliers."""
        return self.n_outliers / self.params if self.params else 0.0


@dataclass(frozen=True)
class LayerOutliers:
    """One layer as the ILP sees it: O_l, O^_l, raw distance and ND_l."""

    name: str
    params: int
    n_outliers: int
    ratio: float  # O_l
    ratio_hat: float  # O^_l, min-max normalised across layers
    distance: float | None  # raw distance (None: fewer than two outliers)
    nd: float  # ND_l in [0, 1], high = scattered
    locality: str = "exact"
    in_features: int | None = None


def wanda_scores(weight: np.ndarray, input_norm: np.ndarray) -> np.ndarray:
    """Wanda importance |W_ij| * ||X_j||_2 for a weight [out, in] and input norms [in].

    float64, like the `nm-prune` pass, so outlier counts and pruning ranks see the same scores.
    """
    weight = np.asarray(weight, dtype=np.float64)
    input_norm = np.asarray(input_norm, dtype=np.float64)
    if weight.ndim != 2 or input_norm.shape != (weight.shape[1],):
        raise UsageError(
            f"wanda_scores: weight {weight.shape} needs input_norm of shape "
            f"({weight.shape[1] if weight.ndim == 2 else '?'},), got {input_norm.shape}"
        )
    return np.abs(weight) * input_norm[None, :]


def outlier_mask(scores: np.ndarray, tau: float = 5.0) -> np.ndarray:
    """Boolean mask of scores strictly above tau * mean(score) (OWL's definition)."""
    mean = float(np.mean(scores, dtype=np.float64))
    return np.asarray(scores) > tau * mean


def block_cut(scores: Sequence[np.ndarray], tau: float) -> float:
    """tau x the mean of several score matrices taken together (FLOW's block-wide threshold).

    The mean of the concatenation is the total of all scores over their total count, summed
    in float64 per matrix, so the block never needs one concatenated copy in memory.
    """
    size = sum(int(np.asarray(s).size) for s in scores)
    if size == 0:
        raise UsageError("block_cut: no scores")
    return tau * (sum(float(np.sum(s, dtype=np.float64)) for s in scores) / size)


def outlier_ratio(scores: np.ndarray, tau: float = 5.0) -> float:
    """O_l: the fraction of entries whose score exceeds tau * mean(score)."""
    scores = np.asarray(scores)
    return int(np.count_nonzero(outlier_mask(scores, tau))) / scores.size if scores.size else 0.0


def _sum_abs_pairwise_sorted(p: np.ndarray) -> int:
    """Exact sum_{a<b} (p_b - p_a) for sorted non-negative ints, as a Python int.

    Uses sum_b p_b (2b - K - 1); accumulated in int64 chunks small enough never to overflow.
    """
    k = p.size
    if k < 2:
        return 0
    p = p.astype(np.int64, copy=False)
    biggest = max(int(p[-1]), 1) * k
    chunk = max(1, (1 << 62) // biggest)
    total = 0
    for start in range(0, k, chunk):
        part = p[start:start + chunk]
        coef = 2 * np.arange(start, start + part.size, dtype=np.int64) - (k - 1)
        total += int(np.dot(part, coef))
    return total


def mean_pairwise_l1(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> float | None:
    """Exact mean pairwise L1 distance of outliers at (rows, cols) on normalised coordinates.

    Coordinates are row / (out - 1) and col / (in - 1) (a length-1 axis contributes 0), so the
    distance lies in [0, 2] whatever the matrix shape. None when there are fewer than 2 points.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    k = rows.size
    if k < 2:
        return None
    pairs = k * (k - 1) // 2
    total = 0.0
    for coords, extent in ((rows, shape[0]), (cols, shape[1])):
        if extent > 1:
            total += _sum_abs_pairwise_sorted(np.sort(coords, kind="stable")) / (extent - 1)
    return total / pairs


def mean_pairwise_l1_brute(rows: np.ndarray, cols: np.ndarray,
                           shape: tuple[int, int]) -> float | None:
    """O(K^2) reference for mean_pairwise_l1 (tests only)."""
    if len(rows) < 2:
        return None
    r = np.asarray(rows, dtype=np.float64) / max(shape[0] - 1, 1)
    c = np.asarray(cols, dtype=np.float64) / max(shape[1] - 1, 1)
    d = np.abs(r[:, None] - r[None, :]) + np.abs(c[:, None] - c[None, :])
    k = len(rows)
    return float(np.triu(d, 1).sum()) / (k * (k - 1) / 2)


def repo_mean_distance(flat_indices: np.ndarray, prefix: int = REPO_PREFIX) -> float | None:
    """Mean |i_b - i_a| over pairs a<b of the first `prefix` outliers in row-major order."""
    flat = np.sort(np.asarray(flat_indices, dtype=np.int64))[:prefix]
    k = flat.size
    if k < 2:
        return None
    return _sum_abs_pairwise_sorted(flat) / (k * (k - 1) // 2)


def repo_locality(flat_indices: np.ndarray, prefix: int = REPO_PREFIX) -> float | None:
    """FLOW's locality: 1 / mean pairwise flat-index distance of the first 10,000 outliers.

    FLOW's code builds a 10k x 10k distance matrix; the sorted prefix-sum identity gives the
    same mean over pairs a<b without it. None when fewer than two outliers exist.
    """
    mean = repo_mean_distance(flat_indices, prefix)
    return None if mean is None or mean == 0 else 1.0 / mean


def normalise_minmax(values: Sequence[float | None]) -> list[float]:
    """Min-max normalise to [0, 1]; all-equal values give 0.5, None entries give 0.5.

    None stands for "undefined" (a layer with fewer than two outliers has no distance); it
    gets the neutral middle and does not stretch the range of the others.
    """
    known = [float(v) for v in values if v is not None]
    if not known:
        return [0.5] * len(values)
    lo, hi = min(known), max(known)
    if hi == lo:
        return [0.5] * len(values)
    return [0.5 if v is None else (float(v) - lo) / (hi - lo) for v in values]


def measure_scores(name: str, scores: np.ndarray, tau: float = 5.0,
                   locality: str = "exact", cut: float | None = None) -> RawOutliers:
    """Count outliers in one layer's score matrix and measure their spread.

    `cut`: an absolute threshold (e.g. `block_cut` of the layer's block) instead of tau x the
    layer's own mean. "repo-block" on a single matrix is "repo" (one matrix, no boundary).
    """
    if locality not in LOCALITIES:
        raise UsageError(f"locality must be one of {LOCALITIES}, got {locality!r}")
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise UsageError(f"layer {name}: scores must be 2-D [out, in], got {scores.shape}")
    mask = outlier_mask(scores, tau) if cut is None else scores > cut
    if locality == "exact":
        rows, cols = np.nonzero(mask)
        dist = mean_pairwise_l1(rows, cols, scores.shape)
        count = rows.size
    else:
        flat = np.flatnonzero(mask)
        dist = repo_mean_distance(flat)
        count = flat.size
    return RawOutliers(name, int(scores.size), int(count), dist, locality, int(scores.shape[1]))


def measure_concatenated(name: str, members: Sequence[tuple[np.ndarray, float]],
                         prefix: int = REPO_PREFIX) -> RawOutliers:
    """One unit measured on its members' scores flattened and concatenated in the given order.

    `members` are (scores [out, in], absolute cut) in FLOW's order (module registration order
    within the block). Outliers count over the whole unit; the distance is the mean pairwise
    |i_b - i_a| of the first `prefix` outliers of the concatenated row-major vector, so pairs
    may straddle two matrices (FLOW's `calculate_outlier_locality_index` on the block vector).
    Only the prefix's indices are kept, never the concatenated scores.
    """
    offset = count = 0
    firsts: list[np.ndarray] = []
    need = prefix
    ks = []
    for scores, cut in members:
        scores = np.asarray(scores)
        if scores.ndim != 2:
            raise UsageError(f"unit {name}: scores must be 2-D [out, in], got {scores.shape}")
        flat = np.flatnonzero(scores > cut)
        count += flat.size
        if need > 0:
            firsts.append(flat[:need].astype(np.int64) + offset)
            need -= min(need, flat.size)
        offset += scores.size
        ks.append(int(scores.shape[1]))
    if not ks:
        raise UsageError(f"unit {name}: no member matrices")
    head = np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64)
    return RawOutliers(name, offset, count, repo_mean_distance(head, prefix), "repo-block",
                       math.gcd(*ks))


def measure_layer(name: str, weight: np.ndarray, input_norm: np.ndarray, tau: float = 5.0,
                  locality: str = "exact") -> RawOutliers:
    """Wanda scores of one Linear, then measure_scores (the scores are not kept)."""
    return measure_scores(name, wanda_scores(weight, input_norm), tau, locality)


def merge_blocks(raw: Sequence[RawOutliers], block_of: Callable[[str], str]) -> list[RawOutliers]:
    """Group per-Linear measurements into one entry per block (granularity="block").

    Decision: params and outliers add up; the block distance is the outlier-weighted mean of
    its members' distances (distances are only defined inside one matrix). Block order is the
    order of first appearance.
    """
    groups: dict[str, list[RawOutliers]] = {}
    for r in raw:
        groups.setdefault(block_of(r.name), []).append(r)
    merged = []
    for block, members in groups.items():
        if len(members) == 1 and members[0].name == block and members[0].locality == "repo-block":
            merged.append(members[0])  # already measured as one unit: keep its distance exact
            continue
        known = [(m.n_outliers, m.distance) for m in members if m.distance is not None]
        weight = sum(n for n, _ in known)
        dist = sum(n * d for n, d in known) / weight if weight else None
        ks = [m.in_features for m in members]
        k = math.gcd(*ks) if all(v is not None for v in ks) else None
        merged.append(RawOutliers(block, sum(m.params for m in members),
                                  sum(m.n_outliers for m in members), dist, members[0].locality,
                                  k))
    return merged


def normalise_layers(raw: Sequence[RawOutliers]) -> list[LayerOutliers]:
    """Cross-layer normalisation: O^_l = minmax(O_l); ND_l per the locality mode."""
    if not raw:
        return []
    modes = {r.locality for r in raw}
    if len(modes) != 1:
        raise UsageError(f"cannot normalise layers measured with mixed localities {sorted(modes)}")
    ratios = [r.ratio for r in raw]
    o_hat = normalise_minmax(ratios)
    if raw[0].locality == "exact":
        nd = normalise_minmax([r.distance for r in raw])
    else:
        loc = [None if not r.distance else 1.0 / r.distance for r in raw]
        nd = [1.0 - v for v in normalise_minmax(loc)]
    return [
        LayerOutliers(r.name, r.params, r.n_outliers, r.ratio, o_hat[i], r.distance, nd[i],
                      r.locality, r.in_features)
        for i, r in enumerate(raw)
    ]


def analyse_layers(layer_stats: Iterable[tuple[str, np.ndarray, np.ndarray]], tau: float = 5.0,
                   locality: str = "exact",
                   block_of: Callable[[str], str] | None = None) -> list[LayerOutliers]:
    """O_l, O^_l, raw distance and ND_l for layers given as (name, weight, input_norm).

    `layer_stats` may be a generator: each layer's scores are dropped after measuring, so
    peak memory is one layer. With `block_of`, layers are grouped into blocks first.
    """
    raw = [measure_layer(name, w, x, tau, locality) for name, w, x in layer_stats]
    if block_of is not None:
        raw = merge_blocks(raw, block_of)
    return normalise_layers(raw)
