"""The problem contract: prior sampler, forward operator, noise model, named dimensions.

A *problem* is everything the CVAE needs to know about a survey besides training pairs: how to
draw subsurface models ``x`` from the prior, the forward operator ``F`` that maps them to noise-free
data, the observation noise, and the names, coordinates and units of every axis (they become
ArviZ dims and coords). Built-in problems register themselves by name in :data:`REGISTRY`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from ppl_cvae.errors import ShapeError, UnknownProblemError

__all__ = [
    "LinearGaussianParts",
    "Problem",
    "REGISTRY",
    "linear_gaussian_parts",
    "make_problem",
    "noise_covariance",
    "noise_scale",
    "register_problem",
    "sample_noise",
    "units_of",
    "whiten",
]


@runtime_checkable
class Problem(Protocol):
    """Protocol of an inverse problem the CVAE can be trained on.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"two_birds"``.
    x_shape, y_shape : tuple of int
        Event shapes of one subsurface model ``x`` and one observation ``y``.
    x_dims, y_dims : tuple of str
        One name per axis of ``x_shape`` / ``y_shape`` (ArviZ dims).
    coords : Mapping[str, Sequence]
        Coordinate values for the dims that have them (ArviZ coords).
    noise_std : float
        Standard deviation of the additive Gaussian observation noise, in the units of ``y``;
        ``0.0`` for noise-free problems. The physics-consistency term and the posterior
        predictive use it (a noise-free problem names a nominal misfit scale instead, see
        :attr:`misfit_std`).
    misfit_std : float
        Scale, in units of ``y``, by which the data misfit ``F(x) - y`` is divided in the
        physics-consistency term; equals ``noise_std`` when that is positive.

    Optional members, read with :func:`getattr` by the helpers below:

    units : Mapping[str, str]
        Unit strings for ``"x"``, ``"y"`` and each named dim (e.g. ``{"x": "s/m", "y": "s",
        "depth": "m"}``); they become ``units`` attributes in the ArviZ output.
    noise_cov : Tensor, shape (m, m), or None
        Full covariance of the Gaussian noise on the flattened ``y`` (``m = prod(y_shape)``), in
        units of ``y`` squared; overrides ``noise_std`` (which is then a scalar summary) in
        noise draws, chi-squared misfits and refinement. See :func:`noise_covariance`.
    linear_gaussian() -> LinearGaussianParts or None
        For a linear ``F`` with a Gaussian prior: the pieces of the closed-form posterior
        (:func:`inference.exact.exact_posterior`); None when the prior is not Gaussian.
    recommended_settings() -> dict
        ``{"model": {...}, "train": {...}}`` overrides of the config defaults for this problem.

    Methods
    -------
    sample_prior(num, generator) -> Tensor, shape (num, *x_shape)
    forward(x) -> Tensor, shape (*batch, *y_shape): the differentiable forward operator F.
    simulate(num, generator) -> (x, y): prior draws and noisy data.
    spec() -> dict: JSON-serialisable description from which :func:`make_problem` rebuilds it.
    """

    # Read-only members (properties), so that an implementation may narrow their types (e.g.
    # a class attribute ``x_shape = (1, 50, 2)``); plain attributes and properties both
    # satisfy them.
    @property
    def name(self) -> str:
        """Registry name, e.g. ``"two_birds"``."""
        ...

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Event shape of one subsurface model ``x``."""
        ...

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Event shape of one observation ``y``."""
        ...

    @property
    def x_dims(self) -> tuple[str, ...]:
        """One name per axis of ``x_shape`` (ArviZ dims)."""
        ...

    @property
    def y_dims(self) -> tuple[str, ...]:
        """One name per axis of ``y_shape`` (ArviZ dims)."""
        ...

    @property
    def coords(self) -> Mapping[str, Sequence[Any]]:
        """Coordinate values for the dims that have them (ArviZ coords)."""
        ...

    @property
    def noise_std(self) -> float:
        """Standard deviation of the additive Gaussian observation noise (units of ``y``)."""
        ...

    @property
    def misfit_std(self) -> float:
        """Scale of the data misfit ``F(x) - y`` in the physics-consistency term (units of y)."""
        ...

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` subsurface models from the prior; shape ``(num, *x_shape)``."""
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the forward operator to ``x`` of shape ``(*batch, *x_shape)``."""
        ...

    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` of shapes ``(num, *x_shape)`` and ``(num, *y_shape)``."""
        ...

    def spec(self) -> dict[str, Any]:
        """Return the JSON-serialisable keyword arguments that rebuild this problem."""
        ...


REGISTRY: dict[str, Callable[..., Problem]] = {}


def register_problem(name: str) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    """Register a problem factory under ``name`` (class decorator).

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """

    def decorator(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        if name in REGISTRY:
            raise ValueError(f"problem name {name!r} is already registered")
        REGISTRY[name] = factory
        return factory

    return decorator


def make_problem(name: str, **kwargs: Any) -> Problem:
    """Build the registered problem ``name`` with keyword arguments ``kwargs``.

    Raises
    ------
    UnknownProblemError
        If ``name`` is not registered; the message lists the registered names.
    """
    # importing the built-in problems registers them
    import ppl_cvae.problems  # noqa: F401

    if name not in REGISTRY:
        raise UnknownProblemError(f"unknown problem {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)


class LinearGaussianParts(NamedTuple):
    """Pieces of a linear-Gaussian inverse problem ``y = A x + eps`` on flattened ``x`` and ``y``.

    Attributes
    ----------
    matrix : Tensor, shape (m, d)
        Forward operator ``A`` (``d = prod(x_shape)``, ``m = prod(y_shape)``, C order).
    prior_mean : Tensor, shape (d,)
    prior_cov : Tensor, shape (d, d)
        Gaussian prior ``N(mu_0, C_0)`` of the flattened ``x``.
    noise_cov : Tensor, shape (m, m)
        Covariance ``C_e`` of the Gaussian noise ``eps``.
    """

    matrix: torch.Tensor
    prior_mean: torch.Tensor
    prior_cov: torch.Tensor
    noise_cov: torch.Tensor


def linear_gaussian_parts(problem: Problem) -> LinearGaussianParts | None:
    """Return ``problem.linear_gaussian()`` if it has one, else None (no closed-form posterior)."""
    method = getattr(problem, "linear_gaussian", None)
    if method is None:
        return None
    parts = method()
    return parts if isinstance(parts, LinearGaussianParts) else None


def units_of(problem: Problem | None) -> dict[str, str]:
    """Return the problem's ``units`` mapping (``"x"``, ``"y"`` and dim names), or ``{}``."""
    units = getattr(problem, "units", None) if problem is not None else None
    return {str(k): str(v) for k, v in dict(units or {}).items()}


def noise_covariance(problem: Problem) -> torch.Tensor:
    """Return the noise covariance of the flattened ``y``; shape ``(m, m)``, float64.

    ``problem.noise_cov`` when set, else ``noise_std**2 I``. A noise-free problem gives zeros.

    Raises
    ------
    ShapeError
        If ``noise_cov`` is not ``(m, m)`` with ``m = prod(y_shape)``.
    """
    m = math.prod(problem.y_shape)
    cov = getattr(problem, "noise_cov", None)
    if cov is None:
        return float(problem.noise_std) ** 2 * torch.eye(m, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if cov.shape != (m, m):
        raise ShapeError(f"noise_cov must have shape ({m}, {m}), got {tuple(cov.shape)}")
    return cov


def noise_scale(problem: Problem) -> torch.Tensor:
    """Return the per-datum noise standard deviation; shape ``y_shape``, float32, units of y."""
    if getattr(problem, "noise_cov", None) is None:
        return torch.full(tuple(problem.y_shape), float(problem.noise_std))
    return noise_covariance(problem).diagonal().sqrt().to(torch.float32).reshape(problem.y_shape)


def sample_noise(
    problem: Problem, sample_shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw observation noise ``eps ~ N(0, C_e)``; shape ``(*sample_shape, *y_shape)``, float32.

    With only ``noise_std`` this is ``noise_std * randn``; with ``noise_cov`` it is ``L e`` for
    the Cholesky factor ``L`` of ``C_e``.
    """
    if getattr(problem, "noise_cov", None) is None:
        e = torch.randn(*sample_shape, *problem.y_shape, generator=generator)
        return float(problem.noise_std) * e
    chol = torch.linalg.cholesky(noise_covariance(problem))
    e = torch.randn(*sample_shape, chol.shape[0], generator=generator, dtype=torch.float64)
    return (e @ chol.T).to(torch.float32).reshape(*sample_shape, *problem.y_shape)


def whiten(problem: Problem, residual: torch.Tensor) -> torch.Tensor:
    """Return ``L^{-1} r`` for residuals ``r = F(x) - y`` of shape ``(*batch, *y_shape)``.

    ``L`` is the Cholesky factor of the noise covariance, so ``sum(whiten(r)**2)`` is the
    chi-squared misfit ``r^T C_e^{-1} r`` (Tarantola 2005, eq. 3.46). Without ``noise_cov`` this
    is ``r / misfit_std`` (which equals ``noise_std`` for noisy problems). Shape and dtype of
    ``residual`` are kept.
    """
    if getattr(problem, "noise_cov", None) is None:
        return residual / float(problem.misfit_std)
    chol = torch.linalg.cholesky(noise_covariance(problem)).to(residual)
    event = len(problem.y_shape)
    flat = residual.reshape(*residual.shape[: residual.dim() - event], -1)
    white = torch.linalg.solve_triangular(chol, flat.unsqueeze(-1), upper=False).squeeze(-1)
    return white.reshape(residual.shape)
