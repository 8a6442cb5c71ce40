"""Outlier statistics: O_l, exact locality vs brute force, repo locality, ND ordering."""

from __future__ import annotations

import numpy as np
import pytest

from flowc.errors import UsageError
from flowc.passes.flow.outliers import (
    RawOutliers,
    _sum_abs_pairwise_sorted,
    analyse_layers,
    mean_pairwise_l1,
    mean_pairwise_l1_brute,
    measure_scores,
    merge_blocks,
    normalise_layers,
    normalise_minmax,
    outlier_ratio,
    repo_locality,
    repo_mean_distance,
    wanda_scores,
)


def test_wanda_scores_known_values():
    w = np.array([[1.0, -2.0], [-3.0, 0.5]])
    x = np.array([2.0, 10.0])
    np.testing.assert_array_equal(wanda_scores(w, x), [[2.0, 20.0], [6.0, 5.0]])


def test_wanda_scores_shape_error():
    with pytest.raises(UsageError, match="input_norm"):
        wanda_scores(np.ones((2, 3)), np.ones(2))


def test_outlier_ratio_counts_strictly_above_tau_mean():
    scores = np.ones((10, 10))
    scores[0, 0] = scores[3, 7] = 100.0  # mean = (98 + 200) / 100 = 2.98, 5 * mean = 14.9
    assert outlier_ratio(scores, tau=5.0) == 0.02
    scores[5, 5] = 14.9  # not above tau * mean any more once the mean rises: still 2 outliers
    assert outlier_ratio(scores, tau=5.0) == 0.02
    assert outlier_ratio(np.ones((4, 4)), tau=0.5) == 1.0


def test_two_opposite_corners_have_distance_two():
    assert mean_pairwise_l1([0, 9], [0, 4], (10, 5)) == 2.0
    assert mean_pairwise_l1([3], [3], (10, 5)) is None


@pytest.mark.parametrize("seed", range(6))
def test_exact_distance_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(2, 40)))
    k = int(rng.integers(2, 60))
    rows = rng.integers(0, shape[0], k)
    cols = rng.integers(0, shape[1], k)
    exact = mean_pairwise_l1(rows, cols, shape)
    assert exact == pytest.approx(mean_pairwise_l1_brute(rows, cols, shape), rel=1e-12)


def test_prefix_sum_identity_is_exact_for_huge_values():
    p = np.array(sorted([0, 3, 10**15, 10**15 + 7, 4 * 10**15]), dtype=np.int64)
    brute = sum(int(b) - int(a) for i, a in enumerate(p) for b in p[i + 1:])
    assert _sum_abs_pairwise_sorted(p) == brute


def test_repo_locality_small_known_case():
    # pairs: |2-0| = 2, |6-0| = 6, |6-2| = 4 -> mean 4 -> locality 1/4
    assert repo_locality(np.array([6, 0, 2])) == 0.25
    assert repo_locality(np.array([5])) is None


def test_repo_locality_uses_first_10000_flat_indices():
    # mean |i - j| over pairs of 0..K-1 is (K + 1) / 3; indices past the prefix are ignored
    flat = np.concatenate([np.arange(10_000), np.arange(10**6, 10**6 + 500)])
    assert repo_mean_distance(flat) == pytest.approx(10_001 / 3, rel=1e-15)
    assert repo_locality(flat) == pytest.approx(3 / 10_001, rel=1e-15)


def test_normalise_minmax():
    assert normalise_minmax([1.0, 2.0, 3.0]) == [0.0, 0.5, 1.0]
    assert normalise_minmax([7.0, 7.0]) == [0.5, 0.5]
    assert normalise_minmax([None, 2.0, 4.0]) == [0.5, 0.0, 1.0]
    assert normalise_minmax([None]) == [0.5]


def _layer(outliers: list[tuple[int, int]], shape=(32, 32)) -> np.ndarray:
    scores = np.ones(shape)
    for r, c in outliers:
        scores[r, c] = 1000.0
    return scores


CLUSTERED = [(r, c) for r in range(4) for c in range(4)]  # a 4x4 corner block
SCATTERED = [(r, c) for r in range(0, 32, 10) for c in range(0, 32, 10)][:16]


@pytest.mark.parametrize("locality", ["exact", "repo"])
def test_clustered_has_lower_nd_than_scattered(locality):
    mid = [(r, c) for r in range(8, 12) for c in range(0, 32, 8)]
    layers = [("clustered", _layer(CLUSTERED)), ("scattered", _layer(SCATTERED)),
              ("middle", _layer(mid))]
    raw = [measure_scores(n, s, tau=5.0, locality=locality) for n, s in layers]
    assert [r.n_outliers for r in raw] == [16, 16, 16]
    out = normalise_layers(raw)
    nd = {o.name: o.nd for o in out}
    assert nd["clustered"] == 0.0 and nd["scattered"] == 1.0
    assert 0.0 < nd["middle"] < 1.0
    assert all(o.ratio == 16 / 1024 and o.ratio_hat == 0.5 for o in out)


def test_analyse_layers_from_weights_and_norms():
    w1 = np.ones((8, 8))
    w1[0, 0] = 50.0
    w1[7, 7] = 50.0
    w2 = np.ones((8, 8))
    norms = np.ones(8)
    out = analyse_layers([("a", w1, norms), ("b", w2, norms)], tau=5.0)
    assert [o.n_outliers for o in out] == [2, 0]
    assert out[0].ratio == 2 / 64 and out[0].ratio_hat == 1.0 and out[1].ratio_hat == 0.0
    assert out[0].distance == 2.0 and out[1].distance is None
    assert out[0].nd == 0.5 and out[1].nd == 0.5  # one defined distance: nothing to stretch


def test_merge_blocks_weights_distance_by_outlier_count():
    raw = [RawOutliers("b0.q", 100, 2, 1.0), RawOutliers("b0.k", 50, 6, 0.5),
           RawOutliers("b1.q", 100, 1, None)]
    merged = merge_blocks(raw, lambda n: n.split(".")[0])
    assert [(m.name, m.params, m.n_outliers) for m in merged] == [("b0", 150, 8), ("b1", 100, 1)]
    assert merged[0].distance == (2 * 1.0 + 6 * 0.5) / 8 and merged[1].distance is None


def test_mixed_localities_rejected():
    with pytest.raises(UsageError, match="mixed"):
        normalise_layers([RawOutliers("a", 1, 0, None, "exact"),
                          RawOutliers("b", 1, 0, None, "repo")])
