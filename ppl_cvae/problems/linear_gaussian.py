"""Linear-Gaussian toy problem with a closed-form posterior (the known-answer test bed).

``x ~ N(0, prior_std**2 I_d)``, ``y = A x + eps``, ``eps ~ N(0, noise_std**2 I_m)``; ``A`` is a
fixed ``(m, d)`` matrix drawn from ``N(0, 1/d)`` with the problem's ``seed``. The posterior is
Gaussian, see :func:`inference.exact.linear_gaussian_posterior`. All quantities dimensionless.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import constraints

from ppl_cvae.checks import as_seed
from ppl_cvae.config import ModelOverrides, Overrides, simulation_schedule
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.base import LinearGaussianParts, Problem
from ppl_cvae.problems.registry import register_problem

__all__ = ["LinearGaussian"]


@register_problem("linear_gaussian")
class LinearGaussian(Problem):
    """Linear forward operator, Gaussian prior and Gaussian noise.

    Parameters
    ----------
    x_dim : int, default 2
        Dimension ``d`` of ``x``.
    y_dim : int, default 2
        Dimension ``m`` of ``y``.
    noise_std : float, default 0.5
        Standard deviation of the observation noise.
    prior_std : float, default 1.0
        Standard deviation of each component of ``x`` under the prior.
    seed : int, default 0
        Seed of the matrix ``A``, in ``[0, 2**32 - 1]``.

    Raises
    ------
    ConfigError
        If a dimension is not a positive integer, a standard deviation is not positive or
        ``seed`` is not an int in ``[0, 2**32 - 1]`` (:func:`~ppl_cvae.checks.as_seed`).

    Examples
    --------
    >>> p = LinearGaussian(x_dim=3, y_dim=2)
    >>> x, y = p.simulate(4, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 3), (4, 2))
    """

    name = "linear_gaussian"
    has_prior_density = True
    support = constraints.real  # Gaussian: no draw to reject

    def __init__(
        self,
        x_dim: int = 2,
        y_dim: int = 2,
        noise_std: float = 0.5,
        prior_std: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not (isinstance(x_dim, int) and x_dim > 0 and isinstance(y_dim, int) and y_dim > 0):
            raise ConfigError(f"x_dim and y_dim must be positive integers, got {x_dim}, {y_dim}")
        if not (noise_std > 0 and prior_std > 0):
            raise ConfigError(f"noise_std and prior_std must be > 0, got {noise_std}, {prior_std}")
        self.x_shape = (x_dim,)
        self.y_shape = (y_dim,)
        self.x_dims = ("parameter",)
        self.y_dims = ("datum",)
        self.coords = {"parameter": list(range(x_dim)), "datum": list(range(y_dim))}
        self.units = {"x": "", "y": ""}  # dimensionless
        self.noise_cov = None
        self.noise_std = float(noise_std)
        self.misfit_std = float(noise_std)
        self.prior_std = float(prior_std)
        self.seed = as_seed(seed, optional=False)
        gen = torch.Generator().manual_seed(self.seed)
        self.matrix = torch.randn(y_dim, x_dim, generator=gen) / x_dim**0.5

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x ~ N(0, prior_std^2 I)``; shape ``(num, x_dim)``."""
        return self.prior_std * torch.randn(num, *self.x_shape, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A x`` for ``x`` of shape ``(*batch, x_dim)``; shape ``(*batch, y_dim)``.

        Raises
        ------
        ShapeError
            If the last axis of ``x`` is not ``x_dim``.
        """
        if x.shape[-1] != self.x_shape[0]:
            raise ShapeError(f"x must end in size {self.x_shape[0]}, got {tuple(x.shape)}")
        return x @ self.matrix.to(x).T

    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` with ``y = A x + noise``; shapes ``(num, d)``, ``(num, m)``."""
        return super().simulate(num, generator)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``log N(x; 0, prior_std^2 I_d)`` in nats; shape ``(*batch,)``, float64.

        Parameters
        ----------
        x : Tensor, shape (*batch, x_dim)
            Models (dimensionless).

        Returns
        -------
        Tensor, shape (*batch,)
            ``-0.5 |x|^2 / prior_std^2 - d log(prior_std) - (d / 2) log(2 pi)``, with respect
            to Lebesgue measure on ``R^d``; differentiable in ``x``.

        Raises
        ------
        ShapeError
            If the last axis of ``x`` is not ``x_dim``.
        """
        d = self.x_shape[0]
        if x.dim() < 1 or x.shape[-1] != d:
            raise ShapeError(f"x must have shape (*batch, {d}), got {tuple(x.shape)}")
        z = x.to(torch.float64) / self.prior_std
        half_logdet = d * math.log(self.prior_std)
        return -0.5 * z.square().sum(-1) - half_logdet - 0.5 * d * math.log(2 * math.pi)

    def linear_gaussian(self) -> LinearGaussianParts:
        """Return ``A``, the prior ``N(0, prior_std^2 I)`` and the noise covariance."""
        d = self.x_shape[0]
        return LinearGaussianParts(
            matrix=self.matrix,
            prior_mean=torch.zeros(d, dtype=torch.float64),
            prior_cov=self.prior_std**2 * torch.eye(d, dtype=torch.float64),
            noise_cov=self.noise.covariance(),
        )

    def recommended_settings(self) -> Overrides:
        """Return default ``ModelConfig``/``TrainConfig`` overrides: small nets, few epochs."""
        return Overrides(
            # 2 d latent dims: spare dimensions make training robust to dead latents
            model=ModelOverrides(latent_dim=2 * self.x_shape[0], hidden_dims=(64, 64)),
            train=simulation_schedule(batch_size=128, learning_rate=3e-3, num_train=4096),
        )

    def spec(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this problem, plus its name."""
        return {
            "name": self.name,
            "x_dim": self.x_shape[0],
            "y_dim": self.y_shape[0],
            "noise_std": self.noise_std,
            "prior_std": self.prior_std,
            "seed": self.seed,
        }
