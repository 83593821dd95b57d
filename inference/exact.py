"""Closed-form posteriors used as references for the amortized one."""

from __future__ import annotations

import math

import torch

from ppl_cvae.checks import shape_text
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems.base import LinearGaussianParts, Problem
from ppl_cvae.problems.densities import checked_forward
from ppl_cvae.problems.metadata import linear_gaussian_parts

__all__ = [
    "ExactPosterior",
    "exact_posterior",
    "linear_gaussian_offset",
    "linear_gaussian_posterior",
]

AFFINE_TOLERANCE = 0.01
"""Largest whitened disagreement ``|L^-1 (F(x) - A x - b)|`` allowed at the checked models.

A data shift ``delta`` moves the exact posterior mean by ``K delta``, whose Mahalanobis length
in the posterior covariance is at most ``|L^-1 delta|`` (``C_e = L L^T``;
``L^-1 A C_post A^T L^-T <= I``): 0.01 keeps the closed form within 0.01 posterior sd of the
problem's own posterior, while a forward computed in float32 (relative error 6e-8) passes up
to data 1e5 noise sd away from zero."""


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
    DataError
        If ``A C_0 A^T + C_e`` is singular (noise-free data with ``m`` larger than the rank
        of ``A C_0 A^T``: no Gaussian density).

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
    chol, info = torch.linalg.cholesky_ex(a_c0 @ a.T + noise_cov.double())
    if int(info) != 0:
        raise DataError(
            f"the data covariance A C_0 A^T + C_e ({m} x {m}) is singular (its Cholesky "
            f"factorisation fails at row {int(info)}): with noise-free data (C_e = 0) and more "
            "data than independent parameters, or a degenerate noise covariance, the posterior "
            "is concentrated on a subspace and has no Gaussian density; give the noise a "
            "positive variance"
        )
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
        If the problem has no closed-form posterior (nonlinear ``F`` or non-Gaussian prior),
        or its parts do not describe its ``forward`` or noise (:func:`linear_gaussian_offset`).
    ShapeError
        If ``y`` is not ``(M, *y_shape)``, or the parts' shapes disagree with the problem's.
    DataError
        If the data covariance is singular (:func:`linear_gaussian_posterior`).

    Notes
    -----
    :func:`linear_gaussian_posterior` on the flattened ``x`` and ``y - b`` (Tarantola 2005,
    eqs. 3.37-3.38), with the offset ``b`` of an affine forward operator and the parts checked
    against the problem's ``forward`` and noise by :func:`linear_gaussian_offset`.
    """
    parts = linear_gaussian_parts(problem)
    if parts is None:
        raise ConfigError(
            f"problem {problem.name!r} has no closed-form posterior: it needs a linear forward "
            "operator and a Gaussian prior (linear_gaussian() returned nothing)"
        )
    y_shape = tuple(problem.y_shape)
    if y.dim() != len(y_shape) + 1 or tuple(y.shape[1:]) != y_shape:
        raise ShapeError(f"y must have shape {shape_text('M', y_shape)}, got {tuple(y.shape)}")
    offset = linear_gaussian_offset(problem, parts)
    mean, cov = linear_gaussian_posterior(
        parts.matrix.double(),
        parts.noise_cov.double(),
        parts.prior_mean.double(),
        parts.prior_cov.double(),
        y.reshape(y.shape[0], math.prod(y_shape)).double() - offset.to(y.device),
    )
    return ExactPosterior(mean.to(torch.float32), cov, tuple(problem.x_shape))


def linear_gaussian_offset(problem: Problem, parts: LinearGaussianParts) -> torch.Tensor:
    """Return the offset ``b`` of ``F(x) = A x + b``, checking the parts against the problem.

    A user's ``linear_gaussian()`` describes the problem's ``forward`` and noise model only by
    what it returns; nothing else ties them together. The parts hold no constant term, so a
    forward ``y = A x + b + eps`` (e.g. a background field, or a change of units with an
    offset) made the closed form that of ``A x`` (the exact posterior mean of a user's problem
    7 to 200 posterior sd off), and a noise covariance other than the problem's silently
    described another likelihood. Here ``F`` is evaluated at two models, the prior
    mean ``mu_0`` and ``mu_0 + L_0 v`` (``C_0 = L_0 L_0^T``, ``v`` a fixed vector of entries
    ``sin(k)``, about one prior sd away in a direction that is generic for any ``A``).

    Parameters
    ----------
    problem : Problem
        A problem whose ``linear_gaussian()`` returned ``parts``.
    parts : LinearGaussianParts
        Its matrix ``A`` ``(m, d)``, prior ``N(mu_0, C_0)`` and noise covariance ``C_e``
        ``(m, m)``.

    Returns
    -------
    Tensor, shape (m,)
        ``b = F(mu_0) - A mu_0`` in units of ``y``, float64 (zeros for a linear ``F``).

    Raises
    ------
    ConfigError
        If ``parts.noise_cov`` is not the problem's noise covariance (relative difference
        above 1e-5 of its largest variance), or ``F(x) - A x`` differs between the two models
        by more than :data:`AFFINE_TOLERANCE` in whitened length (the matrix is not the
        forward's, or the forward is not affine).
    ShapeError
        If the parts' shapes disagree with ``x_shape``/``y_shape``, or ``forward`` returns
        another shape.

    Notes
    -----
    The whitened length ``|L^-1 r|`` (``C_e = L L^T``; for a noise-free problem ``C_e`` is
    replaced by the prior predictive covariance ``A C_0 A^T``) bounds the shift of the exact
    posterior mean in posterior sd that ``r`` would cause (:data:`AFFINE_TOLERANCE`).

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> problem = LinearGaussian(x_dim=2, y_dim=3)
    >>> linear_gaussian_offset(problem, problem.linear_gaussian()).abs().max().item() < 1e-6
    True
    """
    d, m = math.prod(problem.x_shape), math.prod(problem.y_shape)
    a = parts.matrix.detach().cpu().double()
    mu0 = parts.prior_mean.detach().cpu().double()
    c0 = parts.prior_cov.detach().cpu().double()
    ce = parts.noise_cov.detach().cpu().double()
    if a.shape != (m, d) or mu0.shape != (d,) or c0.shape != (d, d) or ce.shape != (m, m):
        raise ShapeError(
            f"problem {problem.name!r} linear_gaussian() returned A {tuple(a.shape)}, mu_0 "
            f"{tuple(mu0.shape)}, C_0 {tuple(c0.shape)}, C_e {tuple(ce.shape)}; expected "
            f"({m}, {d}), ({d},), ({d}, {d}), ({m}, {m}) for x_shape "
            f"{tuple(problem.x_shape)} and y_shape {tuple(problem.y_shape)}"
        )
    own = problem.noise.covariance().detach().cpu().double()
    scale = float(own.diagonal().max()) if m else 0.0
    if float((own - ce).abs().max()) > 1e-5 * max(scale, float(ce.diagonal().max())):
        raise ConfigError(
            f"problem {problem.name!r} linear_gaussian() returned a noise_cov that is not the "
            f"problem's noise covariance (largest difference {float((own - ce).abs().max()):.3g}"
            f" in units of y squared, largest variance {scale:.3g}): return "
            "noise_cov=self.noise.covariance(), or set the problem's noise_cov / noise_std to "
            "the noise it simulates"
        )
    chol, info = torch.linalg.cholesky_ex(ce)
    if int(info) != 0:  # noise-free: whiten by the prior predictive covariance
        chol, info = torch.linalg.cholesky_ex(a @ c0 @ a.T + ce)
    if int(info) != 0:
        chol = torch.diag((a @ c0 @ a.T + ce).diagonal().clamp_min(1e-300).sqrt())
    prior_chol, info = torch.linalg.cholesky_ex(c0)
    if int(info) != 0:
        prior_chol = torch.diag(c0.diagonal().clamp_min(0).sqrt())
    step = prior_chol @ torch.sin(torch.arange(1, d + 1, dtype=torch.float64))
    models = torch.stack([mu0, mu0 + step])  # (2, d)
    with torch.no_grad():
        data = checked_forward(problem, models.reshape(2, *problem.x_shape))
    residual = data.detach().cpu().double().reshape(2, m) - models @ a.T  # F(x) - A x
    offset = residual[0]
    misfit = torch.linalg.solve_triangular(chol, (residual[1] - offset)[:, None], upper=False)
    worst = float(misfit.square().sum().sqrt())
    if not worst <= AFFINE_TOLERANCE:
        raise ConfigError(
            f"problem {problem.name!r} forward is not the A x + b of its linear_gaussian(): "
            f"F(x) - A x changes by {worst:.3g} noise sd (whitened length; at most "
            f"{AFFINE_TOLERANCE} expected) between the prior mean and a model one prior sd "
            "away, so the closed-form posterior would not be this problem's; check the "
            "matrix (shape (prod(y_shape), prod(x_shape)), C order) against forward"
        )
    return offset
