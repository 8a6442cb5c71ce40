"""Layer-wise (sequential) execution, sequential Wanda pruning and the OBS weight update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from flowc.passes.base import CompileContext, PassManager
from flowc.passes.calibrate import collect_input_norms, feeding_nodes, run_layerwise
from flowc.passes.graph import get_param, linear_nodes
from flowc.passes.pipeline import parse_pipeline
from flowc.passes.prune import PruneError, nm_mask, obs_update, wanda_scores
from flowc.passes.verify import check_nm


class _Net(nn.Module):
    """fc1 and gate share an input; head's output feeds nothing but the graph output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.gate = nn.Linear(8, 16, bias=False)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) * self.gate(x)
        return self.head(x + self.fc2(h))


def _setup(windows: int = 3):
    torch.manual_seed(0)
    model = _Net().eval()
    batches = [(torch.randn(1, 5, 8),) for _ in range(windows)]
    return model, torch.export.export(model, batches[0]).module(), batches


def test_layerwise_norms_equal_the_one_shot_interpreter() -> None:
    _, gm, batches = _setup()
    sums: dict[str, torch.Tensor] = {}

    def hook(ref, inputs):
        sums[ref.node.name] = sum(x.reshape(-1, x.shape[-1]).double().square().sum(0)
                                  for x in inputs)

    run_layerwise(gm, batches, hook)
    expected = collect_input_norms(gm, batches)
    assert set(sums) == set(expected)
    for name, value in sums.items():
        assert np.array_equal(np.sqrt(value.numpy()).astype(np.float32), expected[name])


def test_outputs_nobody_reads_are_not_needed() -> None:
    _, gm, _ = _setup()
    by_name = {r.name: r.node for r in linear_nodes(gm)}
    needed = feeding_nodes(by_name.values())
    assert by_name["fc2"] in needed and by_name["fc1"] in needed
    assert by_name["head"] not in needed  # logits: never computed during calibration


def test_sequential_wanda_sees_pruned_earlier_layers() -> None:
    model, gm, batches = _setup()
    ctx = CompileContext(calib_inputs=batches)
    PassManager(parse_pipeline("nm-prune{n=2,m=4,sequential=true}")).run(gm, ctx)
    x = torch.cat([b[0].reshape(-1, 8) for b in batches]).double()
    weights = {n: getattr(model, n).weight.detach().double().numpy()
               for n in ("fc1", "gate", "fc2", "head")}
    xn = x.norm(dim=0).numpy()
    expected = {n: np.where(nm_mask(wanda_scores(weights[n], xn), 2, 4), weights[n], 0.0)
                for n in ("fc1", "gate")}
    fc1 = torch.from_numpy(expected["fc1"]) .float()
    gate = torch.from_numpy(expected["gate"]).float()
    with torch.no_grad():  # fc2's input through the already-pruned fc1 and gate
        h = (torch.relu(x.float() @ fc1.T + model.fc1.bias) * (x.float() @ gate.T)).double()
    expected["fc2"] = np.where(nm_mask(wanda_scores(weights["fc2"], h.norm(dim=0).numpy()),
                                       2, 4), weights["fc2"], 0.0)
    got = {r.name: get_param(gm, r.weight_target).detach().numpy() for r in linear_nodes(gm)}
    for name in ("fc1", "gate", "fc2"):
        np.testing.assert_allclose(got[name], expected[name].astype(np.float32), rtol=0, atol=0)
    report = ctx.reports["nm-prune"]
    assert report["sequential"] is True and report["update"] == "none"


def _recon_error(x: np.ndarray, w: np.ndarray, w_new: np.ndarray) -> float:
    return float(np.square(x @ (w - w_new).T).sum())


def test_obs_keeps_everything_when_nothing_is_pruned() -> None:
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(3, 6)), rng.normal(size=(20, 6))
    out = obs_update(w, np.ones_like(w, dtype=bool), x.T @ x)
    np.testing.assert_allclose(out, w, rtol=0, atol=1e-12)


def test_obs_single_pruned_column_is_the_least_squares_optimum() -> None:
    # pruning only column 0 of every row, the OBS update is the exact optimum: the kept
    # weights solve min ||X w_kept - X w||^2 (damp = 0)
    rng = np.random.default_rng(1)
    w, x = rng.normal(size=(4, 6)), rng.normal(size=(50, 6))
    keep = np.ones_like(w, dtype=bool)
    keep[:, 0] = False
    out = obs_update(w, keep, x.T @ x, damp=0.0, blocksize=4)
    best = np.linalg.lstsq(x[:, 1:], x @ w.T, rcond=None)[0].T
    np.testing.assert_allclose(out[:, 1:], best, rtol=1e-9, atol=1e-9)
    assert np.all(out[:, 0] == 0.0)


@pytest.mark.parametrize("blocksize", [1, 3, 128])
def test_obs_update_reduces_reconstruction_error_and_keeps_the_mask(blocksize: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))  # correlated inputs
    w = rng.normal(size=(8, 16))
    keep = nm_mask(wanda_scores(w, np.linalg.norm(x, axis=0)), 2, 4)
    plain = np.where(keep, w, 0.0)
    updated = obs_update(w, keep, x.T @ x, damp=0.01, blocksize=blocksize)
    assert np.all(updated[~keep] == 0.0)
    check_nm(updated, 2, 4, "w")
    best = 0.0  # per-row least-squares optimum on the same mask: a lower bound
    for r in range(w.shape[0]):
        cols = x[:, keep[r]]
        sol = np.linalg.lstsq(cols, x @ w[r], rcond=None)[0]
        best += float(np.square(x @ w[r] - cols @ sol).sum())
    got = _recon_error(x, w, updated)
    assert best - 1e-9 <= got < 0.8 * _recon_error(x, w, plain)


def test_obs_blocksize_does_not_change_the_result() -> None:
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(64, 12)), rng.normal(size=(5, 12))
    keep = nm_mask(np.abs(w), 1, 4)
    a = obs_update(w, keep, x.T @ x, blocksize=1)
    b = obs_update(w, keep, x.T @ x, blocksize=5)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_obs_dead_channel_and_bad_inputs() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 4))
    x[:, 2] = 0.0  # a channel that never fires: zero Hessian row/column
    w = rng.normal(size=(2, 4))
    keep = nm_mask(np.abs(w), 2, 4)
    out = obs_update(w, keep, x.T @ x)
    assert np.isfinite(out).all() and np.all(out[~keep] == 0)
    with pytest.raises(PruneError, match="Hessian"):
        obs_update(w, keep, np.eye(3))
    with pytest.raises(PruneError, match="positive definite"):
        obs_update(w, keep, -np.eye(4), damp=0.0)


def test_obs_pass_lowers_the_output_error_of_the_model() -> None:
    model, _, batches = _setup(windows=8)
    outs = {}
    for update in ("none", "obs"):
        gm = torch.export.export(model, batches[0]).module()
        ctx = CompileContext(calib_inputs=batches)
        text = f"nm-prune{{n=2,m=4,sequential=true,update={update}}},verify-nm"
        PassManager(parse_pipeline(text)).run(gm, ctx)
        assert ctx.reports["nm-prune"]["sequential"] is True
        with torch.no_grad():
            outs[update] = torch.cat([gm(*b) - model(*b) for b in batches]).square().sum()
    assert outs["obs"] < outs["none"]


def test_obs_float32_sweep_matches_float64() -> None:
    # nm-prune runs the column sweep in float32 (SparseGPT's precision): same zeros, same
    # kept weights up to float32 rounding, and the same reconstruction error
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24))
    w = rng.normal(size=(10, 24))
    keep = nm_mask(wanda_scores(w, np.linalg.norm(x, axis=0)), 2, 4)
    a = obs_update(w, keep, x.T @ x, blocksize=8)
    b = obs_update(w, keep, x.T @ x, blocksize=8, dtype=np.float32)
    assert np.array_equal(a == 0.0, b == 0.0)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert _recon_error(x, w, b) == pytest.approx(_recon_error(x, w, a), rel=1e-4)
