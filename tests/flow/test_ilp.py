"""FLOW selection: candidates, direction, ILP == DP, infeasible targets, fixed layers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from flowc.errors import UsageError
from flowc.passes.flow import (
    InfeasibleTarget,
    default_candidates,
    measure_scores,
    normalise_layers,
    resolve_candidates,
    select_nm,
    select_nm_dp,
)
from flowc.passes.flow.problem import pattern_cost


@dataclass(frozen=True)
class L:
    name: str
    params: int
    ratio_hat: float
    nd: float


def test_default_candidates_flexcim():
    assert default_candidates() == [(1, 2), (2, 2), (1, 4), (2, 4), (4, 4), (1, 8), (2, 8),
                                    (4, 8), (8, 8)]


def test_candidate_specs():
    assert resolve_candidates("repo") == [(4, 8), (4, 4), (2, 8), (2, 4), (8, 8)]  # FLOW order
    assert resolve_candidates("2:4, 4:8") == [(2, 4), (4, 8)]
    assert resolve_candidates([(1, 4), "1:4"]) == [(1, 4)]
    vegeta = default_candidates(lambda n, m: m == 4 and n in (1, 2, 4))
    assert vegeta == [(1, 4), (2, 4), (4, 4)]
    assert default_candidates(lambda n, m: m == 2 and n == 1) == [(1, 2), (8, 8)]
    with pytest.raises(UsageError, match="bad N:M"):
        resolve_candidates("4:2")


def test_cost_formula_both_directions():
    layer = L("a", 10, ratio_hat=0.25, nd=0.75)
    # paper: alpha |2 - 8*0.25| + beta |4 - 8*(1-0.75)| = 0 + 4*2 = 8
    assert pattern_cost(layer, (2, 4), 1.0, 4.0, 8, 8, "paper") == 8.0
    # repo: beta |4 - 8*0.75| = 8 as well; 4:8 differs: paper 2 + 4*6 = 26, repo 2 + 4*2 = 10
    assert pattern_cost(layer, (4, 8), 1.0, 4.0, 8, 8, "paper") == 26.0
    assert pattern_cost(layer, (4, 8), 1.0, 4.0, 8, 8, "repo") == 10.0


def _scores(outliers, shape=(32, 32)):
    s = np.ones(shape)
    for r, c in outliers:
        s[r, c] = 1000.0
    return s


@pytest.mark.parametrize("direction, clustered_m, scattered_m", [("paper", 8, 4), ("repo", 4, 8)])
def test_direction_clustered_gets_larger_m_in_paper_mode(direction, clustered_m, scattered_m):
    clustered = [(r, c) for r in range(4) for c in range(4)]
    scattered = [(r, c) for r in range(0, 32, 10) for c in range(0, 32, 10)]
    layers = normalise_layers([measure_scores("clustered", _scores(clustered)),
                               measure_scores("scattered", _scores(scattered))])
    # both 2:4 and 4:8 have sparsity 0.5, so the window leaves M to the cost alone
    sel = select_nm(layers, 0.5, 0.0, candidates="2:4,4:8", direction=direction)
    assert sel.patterns == {"clustered": (clustered_m // 2, clustered_m),
                            "scattered": (scattered_m // 2, scattered_m)}
    assert sel.sparsity == 0.5


def _random_instance(rng, n_layers):
    return [L(f"l{i}", int(rng.integers(1, 40)) * int(rng.choice([1, 3, 8])),
              float(rng.random()), float(rng.random())) for i in range(n_layers)]


@pytest.mark.parametrize("seed", range(12))
def test_ilp_equals_dp_on_random_instances(seed):
    rng = np.random.default_rng(seed)
    layers = _random_instance(rng, int(rng.integers(2, 7)))
    target = float(rng.uniform(0.2, 0.8))
    kwargs = dict(tolerance=0.03, direction=["paper", "repo"][seed % 2],
                  candidates=[None, "repo"][seed % 3 == 0])
    try:
        dp = select_nm_dp(layers, target, **kwargs)
    except InfeasibleTarget:
        with pytest.raises(InfeasibleTarget):
            select_nm(layers, target, **kwargs)
        return
    ilp = select_nm(layers, target, **kwargs)
    assert ilp.objective == pytest.approx(dp.objective, abs=1e-9)
    for sel in (ilp, dp):
        assert abs(sel.sparsity - target) <= 0.03 + 1e-12
        assert sum(sel.costs.values()) == pytest.approx(sel.objective, abs=1e-12)


def test_brute_force_agrees_on_one_instance():
    rng = np.random.default_rng(99)
    layers = _random_instance(rng, 4)
    cands = default_candidates()
    best = np.inf
    for combo in np.ndindex(*(len(cands),) * 4):
        pats = [cands[j] for j in combo]
        total = sum(x.params for x in layers)
        sp = sum(x.params * (1 - n / m) for x, (n, m) in zip(layers, pats, strict=True)) / total
        if abs(sp - 0.6) <= 0.05:
            best = min(best, sum(pattern_cost(x, p, 1.0, 4.0, 8, 8, "paper")
                                 for x, p in zip(layers, pats, strict=True)))
    assert select_nm(layers, 0.6, 0.05).objective == pytest.approx(best, abs=1e-9)
    assert select_nm(layers, 0.6, 0.05, solver="highs").objective == pytest.approx(best, abs=1e-9)


def test_infeasible_target_names_nearest_achievable():
    layers = [L("a", 100, 0.5, 0.5), L("b", 100, 0.5, 0.5)]
    # 2:4 or dense per layer: achievable sparsities 0, 0.25, 0.5
    for solve in (select_nm, select_nm_dp):
        with pytest.raises(InfeasibleTarget, match=r"nearest achievable: 0\.2500, 0\.5000") as e:
            solve(layers, 0.4, 0.005, candidates="2:4,4:4")
        assert e.value.nearest == (0.25, 0.5)
    with pytest.raises(InfeasibleTarget, match=r"nearest achievable: 0\.5000$"):
        select_nm(layers, 0.9, 0.005, candidates="2:4,4:4")


def test_fixed_dense_layers_can_make_the_target_infeasible():
    layers = [L("first", 100, 0.0, 0.0), L("mid", 100, 0.5, 0.5), L("last", 200, 1.0, 1.0)]
    # only "mid" is free: at most 100 * 0.75 / 400 = 0.1875 of the model can be pruned
    with pytest.raises(InfeasibleTarget, match=r"nearest achievable: 0\.1875$"):
        select_nm(layers, 0.25, 0.005, candidates="1:2,2:4,1:4,4:4",
                  fixed={"first": (4, 4), "last": "8:8"})
    sel = select_nm(layers, 0.1875, 0.0, candidates="1:2,1:4", fixed={"first": (4, 4),
                                                                          "last": "8:8"})
    assert sel.patterns == {"first": (4, 4), "mid": (1, 4), "last": (8, 8)}


def test_fixed_layers_share_of_sparsity():
    layers = [L("first", 100, 0.0, 0.0), L("mid", 300, 0.5, 0.5)]
    sel = select_nm(layers, 0.375, 0.0, candidates="1:2,1:4,4:4", fixed={"first": "4:4"})
    assert sel.patterns == {"first": (4, 4), "mid": (1, 2)}  # 300 * 0.5 / 400 = 0.375
    assert sel.sparsity == 0.375 and "first" not in sel.costs
    with pytest.raises(UsageError, match="not among"):
        select_nm(layers, 0.375, candidates="1:2", fixed={"lm_head": "4:4"})


def test_bad_options():
    layers = [L("a", 10, 0.0, 0.0)]
    with pytest.raises(UsageError, match="direction"):
        select_nm(layers, 0.5, direction="sideways")
    with pytest.raises(UsageError, match="solver"):
        select_nm(layers, 0.5, 0.5, solver="gurobi")


@dataclass(frozen=True)
class LK:
    name: str
    params: int
    ratio_hat: float
    nd: float
    in_features: int


def test_patterns_whose_m_does_not_divide_k_are_not_used():
    # K = 12: 1:8 and 2:8 are unusable, so the best feasible choice for 0.75 is 1:4
    layers = [LK("a", 120, 0.0, 0.0, 12)]
    for solve in (select_nm, select_nm_dp):
        assert solve(layers, 0.75, 0.0, candidates="1:4,2:8,1:8").patterns == {"a": (1, 4)}
    with pytest.raises(UsageError, match="no candidate pattern"):
        select_nm(layers, 0.75, candidates="1:8")
    with pytest.raises(UsageError, match="not a multiple"):
        select_nm(layers + [LK("b", 8, 0.0, 0.0, 8)], 0.5, 0.5, candidates="1:4",
                  fixed={"a": "1:8"})


def test_time_limited_incumbent_is_settled_by_the_exact_dp():
    from dataclasses import replace

    from flowc.passes.flow.ilp import _settle_time_limit
    from flowc.passes.flow.problem import prepare

    layers = [L("a", 100, 0.2, 0.9), L("b", 300, 0.8, 0.1)]
    prob = prepare(layers, 0.5, 0.1)
    best = select_nm_dp(layers, 0.5, 0.1)
    worse = replace(best, objective=best.objective + 1.0, method="ilp-cbc")
    assert _settle_time_limit(prob, worse, "cbc", 10.0).method.startswith("dp (cbc stopped")
    same = replace(best, method="ilp-cbc")
    assert "confirmed by exact dp" in _settle_time_limit(prob, same, "cbc", 10.0).method
