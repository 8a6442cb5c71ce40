"""FLOW selection options and targets give their documented codes (issue 13): an infeasible
target is a compile error (exit 3), n_max=0 is refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flowc.errors import UsageError
from flowc.passes.flow.problem import InfeasibleTarget, prepare


def _layers():
    return [SimpleNamespace(name=f"l{i}", params=64 * 64, ratio_hat=0.5, nd=1.0, in_features=64)
            for i in range(2)]


def test_infeasible_target_is_exit_3():
    assert InfeasibleTarget("x").exit_code == 3
    assert issubclass(InfeasibleTarget, UsageError)


@pytest.mark.parametrize(("n_max", "m_max"), [(0, 8), (8, 0), (-1, 4)])
def test_n_max_and_m_max_must_be_positive(n_max, m_max):
    with pytest.raises(UsageError, match="n_max and m_max must be >= 1"):
        prepare(_layers(), 0.5, n_max=n_max, m_max=m_max)
