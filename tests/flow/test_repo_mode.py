"""flow-select{preset=repo}: FLOW's public code point by point, against independent answers.

Every expected value is computed here from first principles (numpy on the concatenated block
vector, brute-force pair sums, exact fractions), never read back from the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch

import flowc.passes.flow.passes  # noqa: F401  (registers the passes)
from flowc.errors import UsageError
from flowc.passes.base import CompileContext, PassManager
from flowc.passes.flow import InfeasibleTarget, select_nm, select_nm_dp
from flowc.passes.flow.outliers import (
    REPO_PREFIX,
    block_cut,
    measure_concatenated,
    measure_scores,
)
from flowc.passes.flow.passes import FlowSelect, block_of
from flowc.passes.flow.problem import _distinct
from flowc.passes.flow.repo import (
    force_dense_ends,
    read_like_repo,
    repo_scaled,
    select_repo,
)
from flowc.passes.graph import flowc_meta, get_param, linear_nodes
from flowc.passes.pipeline import parse_pipeline


class Block(torch.nn.Module):
    """`down` is registered second but runs last: FLOW concatenates a block's Linears in
    module registration order (its `find_layers`), not in execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32)
        self.up = torch.nn.Linear(32, 64)

    def forward(self, x):
        return x + self.down(torch.relu(self.gate(x)) * self.up(x))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block() for _ in range(3))
        self.lm_head = torch.nn.Linear(32, 16)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.lm_head(x)


def _run(pipeline: str):
    torch.manual_seed(0)
    x = torch.randn(8, 32)
    gm = torch.export.export(Tiny(), (x,)).module()
    ctx = CompileContext(example_inputs=(x,),
                         calib_inputs=[(torch.randn(8, 32),) for _ in range(3)])
    PassManager(parse_pipeline(pipeline)).run(gm, ctx)
    patterns = {r.name: flowc_meta(r.node).get("pattern") for r in linear_nodes(gm)}
    return gm, ctx, patterns


@dataclass(frozen=True)
class Unit:
    name: str
    params: int
    ratio_hat: float
    nd: float
    in_features: int | None = None


# (a) block-wide threshold ------------------------------------------------------------------


def test_block_threshold_counts_differ_from_per_linear():
    a = np.ones((4, 4))
    a[0, 0] = 10.0  # one large score in a small-score matrix
    b = np.full((4, 4), 10.0)
    b[3, 3] = 100.0  # a matrix of large scores
    tau = 1.0
    cat = np.concatenate([a.ravel(), b.ravel()])
    expect_block = int(np.count_nonzero(cat > tau * cat.mean()))  # mean 275/32
    expect_layer = sum(int(np.count_nonzero(m > tau * m.mean())) for m in (a, b))
    assert (expect_block, expect_layer) == (17, 2)
    cut = block_cut([a, b], tau)
    assert cut == tau * 275 / 32
    block = [measure_scores(n, m, tau, "repo", cut=cut) for n, m in (("a", a), ("b", b))]
    layer = [measure_scores(n, m, tau, "repo") for n, m in (("a", a), ("b", b))]
    assert sum(r.n_outliers for r in block) == expect_block
    assert sum(r.n_outliers for r in layer) == expect_layer
    whole = measure_concatenated("blk", [(a, cut), (b, cut)])
    assert (whole.n_outliers, whole.params, whole.in_features) == (17, 32, 4)


def test_outliers_pass_block_threshold_matches_numpy_on_the_block_vector():
    tau = 2.0
    gm, ctx, _ = _run(f"calibrate,outliers{{granularity=block,threshold=block,tau={tau},"
                      "locality=repo-block,skip=lm_head}")
    units = {u["name"]: u for u in ctx.reports["outliers"]["units"]}
    refs = {r.name: r for r in linear_nodes(gm)}
    for blk in ("layers.0", "layers.1", "layers.2"):
        members = [refs[f"{blk}.{n}"] for n in ("gate", "down", "up")]  # registration order
        scores = [np.abs(get_param(gm, r.weight_target).detach().double().numpy())
                  * np.asarray(flowc_meta(r.node)["input_norm"], dtype=np.float64)[None, :]
                  for r in members]
        cat = np.concatenate([s.ravel() for s in scores])
        out = np.flatnonzero(cat > tau * cat.mean())
        assert units[blk]["n_outliers"] == out.size and units[blk]["params"] == cat.size
        assert out.size < REPO_PREFIX and units[blk]["distance"] == _brute_mean_distance(out)
        graph_order = np.concatenate([scores[i].ravel() for i in (0, 2, 1)])
        other = np.flatnonzero(graph_order > tau * cat.mean())
        assert _brute_mean_distance(other) != units[blk]["distance"]


# (b) locality over the first 10,000 outliers of the concatenated block vector --------------


def _brute_mean_distance(idx: np.ndarray) -> float:
    """O(K^2) mean |i_b - i_a| over pairs a < b, exact integers, in row chunks."""
    idx = idx.astype(np.int64)
    k = idx.size
    total = 0
    for start in range(0, k, 1000):
        part = idx[start:start + 1000]
        total += int(np.abs(part[:, None] - idx[None, :]).sum())
    return (total // 2) / (k * (k - 1) // 2)


def test_repo_block_locality_spans_two_matrices():
    rng = np.random.default_rng(7)
    a = rng.random((100, 100))
    b = rng.random((100, 120))
    a[a > 0.3] *= 10  # ~6000 outliers in a, so the first 10,000 reach into b
    b[b > 0.4] *= 10
    tau = 1.0
    cat = np.concatenate([a.ravel(), b.ravel()])
    cut = tau * cat.mean()
    out = np.flatnonzero(cat > cut)
    first = out[:REPO_PREFIX]
    assert out.size > REPO_PREFIX and first[0] < a.size <= first[-1]  # spans both matrices
    whole = measure_concatenated("blk", [(a, block_cut([a, b], tau)), (b, block_cut([a, b], tau))])
    assert whole.n_outliers == out.size
    assert whole.distance == _brute_mean_distance(first)
    # per-Linear (locality=repo, outlier-weighted mean) is a different number
    per = [measure_scores(n, m, tau, "repo", cut=cut) for n, m in (("a", a), ("b", b))]
    merged = sum(r.n_outliers * r.distance for r in per) / sum(r.n_outliers for r in per)
    assert abs(merged - whole.distance) > 1.0


# (c) forced-dense first/last blocks and the shipped sparsity ------------------------------


def test_force_dense_ends_on_30_equal_blocks_ships_7_15():
    units = [Unit(f"model.layers.{i}", 1000, (i % 7) / 6, (i % 5) / 4, 576) for i in range(30)]
    sel = select_repo(units, 0.5, candidates="2:4,4:8", solver_status="check")
    assert sel.sparsity == 0.5 and set(sel.patterns.values()) <= {(2, 4), (4, 8)}
    unit_of = {f"model.layers.{i}.mlp.up_proj": f"model.layers.{i}" for i in range(30)}
    shipped, forced = force_dense_ends(sel.patterns, unit_of, block_of)
    assert forced == ["model.layers.0", "model.layers.29"]
    assert shipped["model.layers.0"] == shipped["model.layers.29"] == (8, 8)
    params = {u.name: u.params for u in units}
    total = sum((params[k] * (1 - Fraction(n, m)) for k, (n, m) in shipped.items()), Fraction(0))
    assert total / sum(params.values()) == Fraction(7, 15)  # 0.5 * 28 / 30 = 0.4667


def test_repo_preset_ships_below_target_and_reports_it():
    gm, ctx, patterns = _run("calibrate,flow-select{preset=repo,target=0.5,candidates=2:4|4:8,"
                             "skip=lm_head},nm-prune{skip=lm_head},verify-nm")
    rep = ctx.reports["flow-select"]
    assert rep["ilp_sparsity"] == 0.5 and rep["forced_dense"] == ["layers.0", "layers.2"]
    assert set(rep["ilp_patterns"].values()) <= {"2:4", "4:8"}  # sparse in the ILP
    assert rep["achieved"] == 1 / 6  # three equal blocks, only the middle one at 0.5
    assert rep["shipped_unweighted"] == 1 / 6
    refs = {r.name: r for r in linear_nodes(gm)}
    zeros = total = 0
    for name in patterns:
        if name != "lm_head":
            w = get_param(gm, refs[name].weight_target)
            zeros += int((w == 0).sum())
            total += w.numel()
    assert Fraction(zeros, total) == Fraction(1, 6)


# (d) exact decimal targets -----------------------------------------------------------------


def test_target_0_7_at_tolerance_0_on_30_blocks_is_reachable():
    units = [Unit(f"b{i}", 4096, (i % 7) / 6, (i % 5) / 4) for i in range(30)]
    for sel in (select_nm(units, 0.7, 0.0, candidates="repo"),
                select_nm_dp(units, 0.7, 0.0, candidates="repo"),
                select_repo(units, 0.7, candidates="repo", solver_status="check")):
        exact = sum((1 - Fraction(n, m) for n, m in sel.patterns.values()), Fraction(0)) / 30
        assert exact == Fraction(7, 10) and sel.sparsity == 0.7


def test_infeasible_target_names_neighbours_not_itself():
    units = [Unit(f"b{i}", 4096, 0.5, 0.5) for i in range(30)]
    with pytest.raises(InfeasibleTarget) as info:
        select_nm(units, 0.71, 0.0, candidates="repo")
    # sparsities are multiples of 1/4 per block: the means are k/120
    assert info.value.nearest == (85 / 120, 86 / 120)
    near = str(info.value).split("nearest achievable:")[1]
    assert "0.7100" not in near and "0.7083, 0.7167" in near
    close = Fraction(7, 10) - Fraction(1, 10**13)
    assert _distinct(close, Fraction(7, 10)) == "0.69999999999990"
    assert _distinct(Fraction(1, 3), Fraction(1, 3) + Fraction(1, 10**30)) == "1/3"


# FLOW's reading of the solver output, its normalisation, and the preset's options ----------


@dataclass
class _Var:
    varValue: float | None


def test_read_like_repo_skips_fractional_rows_shifts_and_pads():
    units = [Unit(f"b{i}", 10, 0.5, 0.5) for i in range(4)]
    from flowc.passes.flow.problem import prepare

    prob = prepare(units, 0.5, 0.0, candidates="repo", direction="repo", unweighted=True)
    cands = prob.cands  # 4:8, 4:4, 2:8, 2:4, 8:8
    values = [[0, 0, 1, 0, 0], [0, 0, 0.6, 0.4, 0], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0]]
    z = {(i, j): _Var(v) for i, row in enumerate(values) for j, v in enumerate(row)}
    got, skipped, padded = read_like_repo(prob, z)
    # row 1 has no exact 1: row 2's 4:8 and row 3's 2:4 move up, 4:8 pads the end
    assert got == [cands[2], cands[0], cands[3], (4, 8)] and (skipped, padded) == (1, 1)


def test_repo_scaled_is_min_max_except_in_the_degenerate_branch():
    ratio, loc = [3.0, 1.0, 2.0, 7.0], [0.5, 0.25, 0.0, 1.0]
    o, d = repo_scaled(ratio, loc)
    assert o == pytest.approx([1 / 3, 0.0, 1 / 6, 1.0], abs=1e-15)
    assert d == pytest.approx([0.5, 0.25, 0.0, 1.0], abs=1e-15)
    # centred O and D cancel (O_l + D_l = 0 for every l): FLOW skips the renormalisation
    o, d = repo_scaled([0.0, 1.0], [1.0, 0.0])
    assert o == pytest.approx([-0.1, 0.1]) and d == pytest.approx([0.1, -0.1])
    with pytest.raises(UsageError, match="divides by zero"):
        repo_scaled([1.0, 1.0], [0.0, 1.0])


def test_preset_defaults_and_explicit_overrides():
    paper = FlowSelect().resolved()
    assert (paper["tau"], paper["locality"], paper["constraint"], paper["force_dense_ends"]) == (
        5.0, "exact", "weighted-window", False)
    (p,) = parse_pipeline("flow-select{preset=repo,tau=5.0,force_dense_ends=false}")
    eff = p.resolved()
    assert (eff["tau"], eff["force_dense_ends"], eff["threshold"]) == (5.0, False, "block")
    for bad, msg in (("preset=repo,tolerance=0.01", "exact equality"),
                     ("preset=repo,granularity=layer", "granularity=block"),
                     ("solver_status=ignore", "repo-equality")):
        (p,) = parse_pipeline(f"flow-select{{{bad}}}")
        with pytest.raises(UsageError, match=msg):
            p.resolved()


# (e) end to end through the pass ------------------------------------------------------------


def test_flow_select_repo_preset_end_to_end_annotations():
    gm, ctx, patterns = _run("calibrate,flow-select{preset=repo,target=0.5,skip=lm_head},"
                             "nm-prune{skip=lm_head},verify-nm")
    rep = ctx.reports["flow-select"]
    assert rep["options"]["preset"] == "repo" and rep["options"]["tau"] == 0.5
    assert rep["constraint"] == "repo-equality" and rep["ilp_sparsity"] == 0.5
    assert set(rep["units"]) == {"layers.0", "layers.1", "layers.2"}
    refs = linear_nodes(gm)
    for ref in refs:
        meta = flowc_meta(ref.node)
        if ref.name == "lm_head":
            assert "selection" not in meta
            continue
        blk = block_of(ref.name)
        assert meta["selection"]["unit"] == blk
        assert meta["outliers"]["locality"] == "repo-block"
        if blk in ("layers.0", "layers.2"):  # forced dense after the ILP, as prune_flow does
            assert meta["selection"]["pattern"] == (8, 8) and "pattern" not in meta
    assert patterns["layers.1.up"] == patterns["layers.1.down"] == patterns["layers.1.gate"]
    n, m = flowc_meta(next(r for r in refs if r.name == "layers.1.up").node)["selection"][
        "pattern"]
    assert rep["achieved"] == float((1 - Fraction(n, m)) / 3)  # three equal blocks
