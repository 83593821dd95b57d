"""Closed-form posteriors used as references for the amortized one."""

from __future__ import annotations

import math

import torch

from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.metadata import linear_gaussian_parts

__all__ = ["ExactPosterior", "exact_posterior", "linear_gaussian_posterior"]


def linear_gaussian_posterior(
    matrix: torch.Tensor,
    noise_cov: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_cov: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the exact Gaussian posterior of ``x`` for ``y = A x + eps``.

    Parameters
    ----------
    matrix : Tensor, shape (m, d)
        Linear forward operator ``A``.
    noise_cov : Tensor, shape (m, m)
        Covariance ``C_e`` of the Gaussian noise ``eps``.
    prior_mean : Tensor, shape (d,)
    prior_cov : Tensor, shape (d, d)
        Gaussian prior ``N(mu_0, C_0)`` of ``x``.
    y : Tensor, shape (M, m)
        Observations.

    Returns
    -------
    mean : Tensor, shape (M, d)
    cov : Tensor, shape (d, d)
        The posterior covariance does not depend on ``y``.

    Raises
    ------
    ShapeError
        If the shapes are inconsistent.

    Notes
    -----
    The data-space form ``K = C_0 A^T (A C_0 A^T + C_e)^{-1}``, ``mu_post = mu_0 + K (y - A mu_0)``,
    ``C_post = C_0 - K A C_0`` (Tarantola 2005, Inverse Problem Theory, SIAM, eqs. 3.37-3.38),
    computed in float64 with a Cholesky solve of the ``(m, m)`` data covariance, so a nearly
    singular prior covariance (smooth random fields) needs no inverse.

    Examples
    --------
    >>> mean, cov = linear_gaussian_posterior(
    ...     torch.eye(1), torch.eye(1), torch.zeros(1), torch.eye(1), torch.tensor([[2.0]]))
    >>> float(mean[0, 0]), float(cov[0, 0])
    (1.0, 0.5)
    """
    m, d = matrix.shape
    if noise_cov.shape != (m, m) or prior_mean.shape != (d,) or prior_cov.shape != (d, d):
        raise ShapeError(
            f"inconsistent shapes: A {tuple(matrix.shape)}, C_e {tuple(noise_cov.shape)}, "
            f"mu_0 {tuple(prior_mean.shape)}, C_0 {tuple(prior_cov.shape)}"
        )
    if y.dim() != 2 or y.shape[1] != m:
        raise ShapeError(f"y must have shape (M, {m}), got {tuple(y.shape)}")
    a, c0, mu0 = matrix.double(), prior_cov.double(), prior_mean.double()
    a_c0 = a @ c0  # (m, d)
    chol = torch.linalg.cholesky(a_c0 @ a.T + noise_cov.double())
    gain_t = torch.cholesky_solve(a_c0, chol)  # K^T = (A C0 A^T + Ce)^{-1} A C0, (m, d)
    cov = c0 - a_c0.T @ gain_t
    cov = 0.5 * (cov + cov.T)
    mean = mu0[None, :] + (y.double() - (a @ mu0)[None, :]) @ gain_t
    return mean.to(matrix.dtype), cov.to(matrix.dtype)


class ExactPosterior:
    """Closed-form Gaussian posterior of a linear-Gaussian problem for a stack of observations.

    Attributes
    ----------
    mean : Tensor, shape (M, *x_shape)
        Posterior means, in the units of ``x``.
    cov : Tensor, shape (d, d)
        Posterior covariance of the flattened ``x`` (``d = prod(x_shape)``, C order), float64;
        the same for every observation.
    std : Tensor, shape x_shape
        Marginal posterior standard deviations ``sqrt(diag(cov))``.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, x_shape: tuple[int, ...]) -> None:
        self.mean = mean.reshape(mean.shape[0], *x_shape)
        self.cov = cov
        self.std = cov.diagonal().sqrt().to(mean.dtype).reshape(x_shape)
        self.x_shape = x_shape

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw exact posterior samples; shape ``(num_samples, M, *x_shape)``, float32."""
        chol = torch.linalg.cholesky(self.cov.double())
        num_obs, d = self.mean.shape[0], chol.shape[0]
        e = torch.randn(num_samples, num_obs, d, generator=generator, dtype=torch.float64)
        draws = self.mean.reshape(1, num_obs, d).double() + e @ chol.T
        return draws.to(torch.float32).reshape(num_samples, num_obs, *self.x_shape)


def exact_posterior(problem: Problem, y: torch.Tensor) -> ExactPosterior:
    """Return the exact posterior of ``x`` given ``y`` for a linear-Gaussian ``problem``.

    Parameters
    ----------
    problem : Problem
        A problem whose ``linear_gaussian()`` returns the matrix, Gaussian prior and noise
        covariance (``crosshole`` and ``gravity`` with a random-field prior,
        ``linear_gaussian``).
    y : Tensor, shape (M, *y_shape)
        Observations, in the units of ``y``.

    Returns
    -------
    ExactPosterior
        Means ``(M, *x_shape)`` and the shared covariance ``(d, d)``.

    Raises
    ------
    ConfigError
        If the problem has no closed-form posterior (nonlinear ``F`` or non-Gaussian prior).
    ShapeError
        If ``y`` is not ``(M, *y_shape)``.

    Notes
    -----
    :func:`linear_gaussian_posterior` on the flattened ``x`` and ``y`` (Tarantola 2005,
    eqs. 3.37-3.38).
    """
    parts = linear_gaussian_parts(problem)
    if parts is None:
        raise ConfigError(
            f"problem {problem.name!r} has no closed-form posterior: it needs a linear forward "
            "operator and a Gaussian prior (linear_gaussian() returned nothing)"
        )
    y_shape = tuple(problem.y_shape)
    if y.dim() != len(y_shape) + 1 or tuple(y.shape[1:]) != y_shape:
        raise ShapeError(f"y must have shape (M, *{y_shape}), got {tuple(y.shape)}")
    mean, cov = linear_gaussian_posterior(
        parts.matrix.double(),
        parts.noise_cov.double(),
        parts.prior_mean.double(),
        parts.prior_cov.double(),
        y.reshape(y.shape[0], math.prod(y_shape)).double(),
    )
    return ExactPosterior(mean.to(torch.float32), cov, tuple(problem.x_shape))
