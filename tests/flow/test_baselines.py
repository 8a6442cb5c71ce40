"""Baselines: uniform N:M and OWL-N:M rule on known inputs; magnitude scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from flowc.errors import UsageError
from flowc.passes.flow import magnitude_scores, owl_nm, uniform_nm
from flowc.passes.flow.baselines import allowed_n


@dataclass(frozen=True)
class L:
    name: str
    params: int
    ratio_hat: float
    nd: float = 0.5


LAYERS = [L("a", 100, 0.0), L("b", 100, 0.5), L("c", 100, 1.0)]


def test_uniform_with_a_dense_layer_reports_achieved_sparsity():
    sel = uniform_nm(LAYERS, "2:4", fixed={"c": (4, 4)})
    assert sel.patterns == {"a": (2, 4), "b": (2, 4), "c": (4, 4)}
    assert sel.target == 0.5 and sel.sparsity == pytest.approx(1 / 3)
    assert sel.method == "uniform-2:4"


def test_allowed_n_on_flexcim():
    assert allowed_n(8) == [1, 2, 4, 8]
    assert allowed_n(4) == [1, 2, 4]
    assert allowed_n(4, lambda n, m: n in (1, 2)) == [1, 2]


def test_owl_shifts_n_with_outlier_ratio():
    # lam = 1: shift = [-0.5, 0, 0.5] -> N_raw = [1, 2, 3] -> 3 is a tie 2|4 -> smaller
    assert owl_nm(LAYERS, "2:8", lam=1.0).patterns == {"a": (1, 8), "b": (2, 8), "c": (2, 8)}
    sel = owl_nm(LAYERS, "2:8", lam=2.0)  # N_raw = [0, 2, 4]
    assert sel.patterns == {"a": (1, 8), "b": (2, 8), "c": (4, 8)}
    assert sel.sparsity == pytest.approx((7 / 8 + 6 / 8 + 4 / 8) / 3)
    assert sel.target == 0.75
    assert owl_nm(LAYERS, "2:8", lam=0.0).patterns == uniform_nm(LAYERS, "2:8").patterns


def test_owl_fixed_layers_excluded_from_the_mean():
    sel = owl_nm(LAYERS, "2:8", lam=2.0, fixed={"a": "8:8"})
    # free s = [1, 2], mean 1.5 -> shift [-0.5, 0.5] -> N_raw [1, 3] -> [1, 2]
    assert sel.patterns == {"a": (8, 8), "b": (1, 8), "c": (2, 8)}
    with pytest.raises(UsageError, match="lambda"):
        owl_nm(LAYERS, "2:8", lam=-1.0)


def test_magnitude_scores():
    np.testing.assert_array_equal(magnitude_scores(np.array([[-2.0, 1.0]])), [[2.0, 1.0]])
