"""The OBS update's fast pieces against their definitions (flowc.passes.obs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowc.passes import obs
from flowc.passes.obs import obs_factor, obs_sweep, obs_update
from flowc.passes.prune import nm_mask, wanda_scores


def _problem(rows: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4 * k, k)) @ rng.normal(size=(k, k))  # correlated inputs
    x[:, 1] = 0.0  # a dead channel
    w = rng.normal(size=(rows, k))
    keep = nm_mask(wanda_scores(w, np.linalg.norm(x, axis=0)), 2, 4)
    return w, keep, x.T @ x


def _factor_by_definition(h: np.ndarray, damp: float) -> np.ndarray:
    """Cholesky of H, its inverse, and the upper Cholesky factor of that (SparseGPT's code)."""
    h = h.copy()
    d = np.diagonal(h).copy()
    d[d == 0] = 1.0
    h[np.arange(len(d)), np.arange(len(d))] = d + damp * d.mean()
    inv = torch.cholesky_inverse(torch.linalg.cholesky(torch.from_numpy(h)))
    return torch.linalg.cholesky(inv, upper=True).numpy()


def _sweep_by_definition(w: np.ndarray, keep: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column by column, every later column updated at once (no blocking)."""
    w = w.astype(np.float64).copy()
    for j in range(w.shape[1]):
        err = np.where(keep[:, j], 0.0, w[:, j] / u[j, j])
        w[:, j + 1:] -= np.outer(err, u[j, j + 1:])
    return np.where(keep, w, 0.0)


@pytest.mark.parametrize("damp", [0.0, 0.01])
def test_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(damp: float) -> None:
    _, _, h = _problem(3, 40, 0)
    u = obs_factor(h, damp)
    ref = _factor_by_definition(h, damp)
    assert np.array_equal(u, np.triu(u)) and (np.diagonal(u) > 0).all()
    np.testing.assert_allclose(u, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize(("rows", "k", "blocksize"), [(5, 40, 128), (7, 70, 16), (3, 37, 5),
                                                      (4, 33, 1)])
def test_blocked_sweep_equals_the_unblocked_definition(rows: int, k: int, blocksize: int) -> None:
    w, keep, h = _problem(rows, k, rows + k)
    u = obs_factor(h, 0.01)
    got = obs_sweep(w, keep, u, blocksize)
    want = _sweep_by_definition(w, keep, u)
    assert np.array_equal(got == 0.0, want == 0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    f32 = obs_sweep(w, keep, u, blocksize, dtype=np.float32)
    np.testing.assert_allclose(f32, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_update_is_factor_then_sweep() -> None:
    w, keep, h = _problem(6, 24, 9)
    assert np.array_equal(obs_update(w, keep, h, 0.01, 8),
                          obs_sweep(w, keep, obs_factor(h, 0.01), 8))


def test_linears_sharing_an_input_share_one_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowc.passes import prune
    from flowc.passes.base import CompileContext, PassManager
    from flowc.passes.pipeline import parse_pipeline

    class Shared(torch.nn.Module):  # q/k/v-like: three linears read x, one reads their sum
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Linear(16, 16) for _ in range(3))
            self.d = torch.nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.d(self.a(x) + self.b(x) + self.c(x))

    torch.manual_seed(0)
    model = Shared().eval()
    batches = [(torch.randn(4, 16),) for _ in range(3)]
    gm = torch.export.export(model, batches[0]).module()
    calls: list[int] = []
    real = obs.obs_factor

    def counted(h, damp, layer):
        calls.append(h.shape[0])
        return real(h, damp, layer)

    monkeypatch.setattr(prune, "obs_factor", counted)
    PassManager(parse_pipeline("nm-prune{n=2,m=4,update=obs},verify-nm")).run(
        gm, CompileContext(calib_inputs=batches))
    assert calls == [16, 16]  # one for x (a, b, c), one for d's input
