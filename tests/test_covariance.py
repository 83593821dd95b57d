"""The Ledoit-Wolf covariance of NUTS's preconditioner against scikit-learn's estimator."""

from __future__ import annotations

import pytest
import torch
from sklearn.covariance import LedoitWolf

from inference.covariance import ledoit_wolf
from ppl_cvae.errors import ShapeError


@pytest.mark.parametrize("assume_centered", [False, True])
@pytest.mark.parametrize(("n", "k"), [(2, 2), (5, 40), (200, 3), (3000, 60)])
def test_same_estimate_as_scikit_learn(n: int, k: int, assume_centered: bool) -> None:
    """Same covariance and shrinkage as ``sklearn.covariance.LedoitWolf``, to rounding.

    Both sum the same ``O(N k^2)`` float64 products in another order: the relative difference is
    a few ``N eps``, far below ``1e-10``.
    """
    g = torch.Generator().manual_seed(n + k)
    mix = torch.randn(k, k, generator=g, dtype=torch.float64)
    x = torch.randn(n, k, generator=g, dtype=torch.float64) @ mix + 3.0
    ref = LedoitWolf(assume_centered=assume_centered).fit(x.numpy())
    cov, shrinkage = ledoit_wolf(x, assume_centered=assume_centered)
    expected = torch.from_numpy(ref.covariance_)
    assert abs(shrinkage - ref.shrinkage_) <= 1e-10 * max(1.0, ref.shrinkage_)
    assert float((cov - expected).abs().max()) <= 1e-10 * float(expected.abs().max())


def test_fewer_draws_than_dimensions_give_a_positive_definite_estimate() -> None:
    """10 draws in 50 dimensions: the empirical covariance has rank 9, the shrunk one is full."""
    x = torch.randn(10, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov, shrinkage = ledoit_wolf(x)
    assert 0.0 < shrinkage <= 1.0
    assert float(torch.linalg.eigvalsh(cov).min()) > 0.0
    torch.linalg.cholesky(cov)  # raises if not positive definite


def test_edge_cases() -> None:
    """One coordinate: no shrinkage; draws that do not vary: zero covariance; bad shapes refused."""
    x = torch.tensor([[1.0], [3.0], [5.0]])
    cov, shrinkage = ledoit_wolf(x)
    assert shrinkage == 0.0 and cov.shape == (1, 1)
    assert float(cov[0, 0]) == pytest.approx(8.0 / 3.0)  # divided by N, as scikit-learn's
    cov, shrinkage = ledoit_wolf(torch.ones(4, 3))
    assert shrinkage == 0.0 and float(cov.abs().max()) == 0.0
    with pytest.raises(ShapeError, match=r"draws must have shape \(N >= 1, k >= 1\), got \(3,\)"):
        ledoit_wolf(torch.ones(3))
    with pytest.raises(ShapeError, match="got \\(0, 2\\)"):
        ledoit_wolf(torch.ones(0, 2))
