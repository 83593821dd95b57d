"""Closed-form posteriors used as references for the amortized one."""

from __future__ import annotations

import torch

from ppl_cvae.errors import ShapeError

__all__ = ["linear_gaussian_posterior"]


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
    ``C_post = (C_0^{-1} + A^T C_e^{-1} A)^{-1}`` and
    ``mu_post = C_post (C_0^{-1} mu_0 + A^T C_e^{-1} y)`` (Tarantola 2005, Inverse Problem Theory,
    SIAM, eqs. 3.37-3.38), computed in float64.

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
    a = matrix.double()
    ce_inv = torch.linalg.inv(noise_cov.double())
    c0_inv = torch.linalg.inv(prior_cov.double())
    precision = c0_inv + a.T @ ce_inv @ a
    cov = torch.linalg.inv(precision)
    rhs = (c0_inv @ prior_mean.double())[None, :] + y.double() @ (ce_inv @ a)
    mean = rhs @ cov.T
    return mean.to(matrix.dtype), cov.to(matrix.dtype)
