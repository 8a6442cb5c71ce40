"""The allocation search (flowc/passes/flow/search.py) and the nm-search pass."""

from __future__ import annotations

import random

import pytest
import torch

from flowc.passes.flow.measured import Budget, build_problem, within_budgets
from flowc.passes.flow.search import evolve, levels, mutate

CANDS = [(1, 2), (2, 4), (4, 8), (1, 4), (2, 8), (1, 8), (8, 8)]


def _problem(seed: int, layers: int = 12, latency: float = 0.6, energy: float = 0.0):
    rnd = random.Random(seed)
    params = [rnd.choice([96, 192, 384, 768]) for _ in range(layers)]
    costs = [[(1 - n / m) ** 2 * rnd.uniform(0.5, 2) + (0.1 if n < 4 and n != m else 0)
              for n, m in CANDS] for _ in params]
    lat = [[rnd.randint(20, 200) * n // m + 5 for n, m in CANDS] for _ in params]
    en = [[rnd.uniform(1, 3) * (0.4 + n / m) for n, m in CANDS] for _ in params]
    budgets = []
    dense_lat = sum(r[-1] for r in lat)
    budgets.append(Budget("latency", lat, 0.0, latency * dense_lat, dense_lat))
    if energy:
        dense_en = sum(r[-1] for r in en)
        budgets.append(Budget("energy", en, 0.0, energy * dense_en, dense_en))
    return build_problem([f"l{i}" for i in range(layers)], params, CANDS, costs,
                         target=0.5, tolerance=0.05, budgets=budgets)


def _uniform_48(prob):
    return tuple(CANDS.index((4, 8)) for _ in prob.names)


@pytest.mark.parametrize("seed", range(6))
def test_mutations_never_break_a_budget(seed):
    prob = _problem(seed, energy=0.9 if seed % 2 else 0.0)
    start = _uniform_48(prob)
    assert within_budgets(prob, start)
    rng = random.Random(seed)
    lv = levels(prob)
    current, seen = start, 0
    for _ in range(300):
        kid = mutate(prob, lv, current, rng)
        if kid is None:
            continue
        seen += 1
        assert within_budgets(prob, kid)
        assert kid != current
        current = kid
    assert seen > 50  # the walk really moves


def test_levels_keep_the_cheapest_pattern_per_sparsity():
    prob = _problem(1)
    for i, row in enumerate(levels(prob)):
        sparsities = [prob.steps[i][j] for j in row]
        assert sparsities == sorted(set(sparsities))  # one per level, ordered
        for j in row:  # no other pattern of the same sparsity is cheaper
            same = [k for k in range(len(CANDS)) if prob.steps[i][k] == prob.steps[i][j]]
            assert prob.costs[i][j] == min(prob.costs[i][k] for k in same)


def _interaction_score(prob):
    """A non-additive score: the table's costs plus a penalty for neighbouring sparse layers."""
    def score(choice):
        base = sum(prob.costs[i][j] for i, j in enumerate(choice))
        pairs = sum(prob.steps[i][a] * prob.steps[i + 1][b] for i, (a, b) in
                    enumerate(zip(choice, choice[1:], strict=False)))
        return base + 1e-9 * pairs

    return lambda choices, windows: [score(c) for c in choices]


def test_search_improves_on_its_start_deterministically_and_within_budgets():
    prob = _problem(3, layers=16, latency=0.7, energy=0.95)
    starts = {"uniform 4:8": _uniform_48(prob)}
    a = evolve(prob, starts, _interaction_score(prob), 2, generations=30, offspring=6, seed=1)
    b = evolve(prob, starts, _interaction_score(prob), 2, generations=30, offspring=6, seed=1)
    assert a.choice == b.choice and a.history == b.history
    assert within_budgets(prob, a.choice)
    assert a.score <= a.start_scores["uniform 4:8"]
    assert all(x >= y for x, y in zip(a.history, a.history[1:], strict=False))  # elitist
    assert a.evaluations > 30


def test_search_rejects_starts_that_break_the_budgets():
    prob = _problem(4)
    dense = tuple(CANDS.index((8, 8)) for _ in prob.names)
    with pytest.raises(ValueError, match="no start point"):
        evolve(prob, {"dense": dense}, _interaction_score(prob), 1)


def test_search_time_limit_stops_it():
    prob = _problem(5)
    res = evolve(prob, {"u": _uniform_48(prob)}, _interaction_score(prob), 1,
                 generations=10_000, max_time=0.2)
    assert res.stopped == "time" and res.generations < 10_000


def test_nm_search_pass_on_a_tiny_llama(tmp_path):
    from flowc.frontend.load import load_hf
    from flowc.passes.base import CompileContext, PassManager
    from flowc.passes.graph import get_param, linear_nodes
    from flowc.passes.pipeline import parse_pipeline

    cap = load_hf("hf:tiny-llama", seq_len=16, calib_batches=3)
    before = {r.name: get_param(cap.gm, r.weight_target).clone()
              for r in linear_nodes(cap.gm)}
    ctx = CompileContext(example_inputs=cap.example_inputs, calib_inputs=cap.info["calib"])
    pipe = ("calibrate,sensitivity{skip=lm_head},measured-select{target=0.5,skip=lm_head},"
            "nm-search{target=0.5,skip=lm_head,generations=4,offspring=3,windows=2}")
    PassManager(parse_pipeline(pipe)).run(cap.gm, ctx)
    rep = ctx.reports["nm-search"]
    assert 0.5 <= rep["achieved"] <= 0.505
    assert rep["search"]["kl"] <= min(rep["search"]["start_kl"].values())
    assert "annotation" in rep["search"]["start_kl"]  # measured-select's answer was a start
    for r in linear_nodes(cap.gm):  # the search restored the dense weights
        assert torch.equal(get_param(cap.gm, r.weight_target), before[r.name])


@pytest.mark.slow
def test_nm_search_on_a_process_pool_matches_in_process():
    """Candidates scored by two forked workers give the same search as in-process scoring."""
    from flowc.frontend.load import load_hf
    from flowc.passes.base import CompileContext, PassManager
    from flowc.passes.pipeline import parse_pipeline

    results = []
    for executor in ("executor=local,jobs=1", "executor=local,jobs=2"):
        cap = load_hf("hf:tiny-llama", seq_len=16, calib_batches=2)
        ctx = CompileContext(example_inputs=cap.example_inputs, calib_inputs=cap.info["calib"])
        pipe = ("calibrate,sensitivity{skip=lm_head,kl=none},"
                "measured-select{target=0.5,skip=lm_head},"
                "nm-search{target=0.5,skip=lm_head,generations=3,offspring=3,windows=2,"
                + executor + "}")
        PassManager(parse_pipeline(pipe)).run(cap.gm, ctx)
        results.append(ctx.reports["nm-search"])
    assert results[0]["units"] == results[1]["units"]
    assert results[0]["search"]["kl"] == pytest.approx(results[1]["search"]["kl"], rel=1e-6)


def test_edge_dense_start_pins_first_and_last_blocks_and_is_the_pinned_optimum():
    import dataclasses
    import math

    from flowc.passes.flow.measured import solve_exact
    from flowc.passes.flow.measured_passes import block_index, edge_dense_choice
    from flowc.passes.flow.problem import InfeasibleTarget

    assert block_index("model.layers.17.mlp.up_proj") == 17
    assert block_index("encoder.layer.0.attention.self.query") == 0
    assert block_index("lm_head") is None
    base = _problem(3, layers=16, latency=0.9)
    names = [f"model.layers.{i // 2}.proj{i % 2}" for i in range(16)]  # blocks 0..7
    prob = build_problem(names, base.params, CANDS, base.costs, target=0.35, tolerance=0.05)
    dense = CANDS.index((8, 8))
    found = 0
    for edge, pinned in ((1, {0, 7}), (2, {0, 1, 6, 7}), (3, {0, 1, 2, 5, 6, 7})):
        choice = edge_dense_choice(prob, edge, "cbc")
        costs = [[c if (i // 2 not in pinned or j == dense) else math.inf
                  for j, c in enumerate(row)] for i, row in enumerate(prob.costs)]
        try:  # the exact DP on the pinned problem is the cross-check
            best = solve_exact(dataclasses.replace(prob, costs=costs))
        except InfeasibleTarget:
            assert choice is None
            continue
        found += 1
        assert choice is not None and within_budgets(prob, choice)
        assert all(choice[i] == dense for i in range(16) if i // 2 in pinned)
        assert sum(prob.costs[i][j] for i, j in enumerate(choice)) == \
            pytest.approx(best.objective, rel=1e-9)
    assert found >= 2
    assert edge_dense_choice(prob, 4, "cbc") is None  # 8 blocks: nothing left to prune
