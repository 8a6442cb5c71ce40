"""Known answers for the N:M mask rule and the per-layer pruning helper."""

from __future__ import annotations

import numpy as np
import pytest

from flowc.passes.prune import PruneError, nm_mask, prune_layer


def test_keeps_top_n_per_group_of_m() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.3, 4.0, 1.0, 2.0, 3.0]])
    mask = nm_mask(scores, keep_n=2, group_m=4)
    assert mask.tolist() == [[False, True, True, False, True, False, False, True]]


def test_tie_break_keeps_lower_index() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0], [0.0, -0.0, 0.0, 0.0]])
    mask = nm_mask(scores, keep_n=2, group_m=4)
    assert mask.tolist() == [
        [True, True, False, False],
        [False, True, True, False],
        [True, True, False, False],
    ]


def test_one_of_eight_and_dense() -> None:
    scores = np.array([[3, 7, 7, 1, 0, 2, 5, 6]], dtype=np.int8)
    assert np.flatnonzero(nm_mask(scores, 1, 8)).tolist() == [1]
    assert nm_mask(scores, 8, 8).all()


def test_matches_a_per_group_reference_on_random_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(37, 48)).astype(np.float32)  # many ties
    for n, m in [(1, 2), (2, 4), (1, 4), (3, 8), (4, 8)]:
        mask = nm_mask(scores, n, m)
        expected = np.zeros_like(mask)
        for r in range(scores.shape[0]):
            for g in range(0, scores.shape[1], m):
                group = list(scores[r, g : g + m])
                order = sorted(range(m), key=lambda i, grp=group: (-grp[i], i))
                expected[r, [g + i for i in order[:n]]] = True
        assert np.array_equal(mask, expected), (n, m)
        assert (mask.reshape(37, -1, m).sum(-1) == n).all()


def test_k_not_multiple_of_m_groups_over_zero_padded_k() -> None:
    """K = 10 at M = 4: groups [0..3], [4..7], [8, 9, pad, pad]; the pad counts as pruned, so
    the partial group keeps min(N, 2) real weights (the best by score, lower index on ties)."""
    rng = np.random.default_rng(3)
    scores = rng.random((6, 10))
    for n in (1, 2, 3):
        mask = nm_mask(scores, n, 4, layer="fc9")
        assert mask.shape == (6, 10)
        padded = np.concatenate([scores, np.full((6, 2), -np.inf)], axis=1)
        for r in range(6):
            for g in range(0, 12, 4):
                group = list(padded[r, g:g + 4])
                keep = sorted(range(4), key=lambda i, grp=group: (-grp[i], i))[:n]
                want = [g + i for i in keep if g + i < 10]
                assert sorted(np.flatnonzero(mask[r, g:g + 4]) + g) == sorted(want)
        assert (mask[:, 8:].sum(axis=1) == min(n, 2)).all()


@pytest.mark.parametrize("n,m", [(0, 4), (5, 4), (-1, 2)])
def test_invalid_pattern(n: int, m: int) -> None:
    with pytest.raises(PruneError, match="invalid N:M pattern"):
        nm_mask(np.ones((2, 8)), n, m)


def test_prune_layer_magnitude_and_given_scores() -> None:
    w = np.array([[0.5, -2.0, 0.1, 1.0], [3.0, 0.0, -3.0, 0.2]], dtype=np.float32)
    pruned, mask = prune_layer(w, 2, 4)
    assert pruned.dtype == np.float32
    assert pruned.tolist() == [[0.0, -2.0, 0.0, 1.0], [3.0, 0.0, -3.0, 0.0]]
    assert mask.sum() == 4
    # explicit scores override magnitude: keep the two last inputs
    pruned, _ = prune_layer(w, 2, 4, scores=np.tile([0.0, 0.0, 1.0, 1.0], (2, 1)))
    expected = np.array([[0.0, 0.0, 0.1, 1.0], [0.0, 0.0, -3.0, 0.2]], dtype=np.float32)
    assert np.array_equal(pruned, expected)
