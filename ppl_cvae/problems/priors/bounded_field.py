"""A Gaussian random field squeezed smoothly into an open interval: a logit-normal field.

The prior of ``mt1d`` (``prior="logit_normal"``). A latent stationary Gaussian random field
``u`` (:class:`~ppl_cvae.problems.priors.GaussianRandomField`) is mapped cell by cell through
a scaled logistic sigmoid::

    x = lower + (upper - lower) * sigmoid(u),   u ~ N(m 1_n, s^2 R)

with ``R`` the correlation matrix of the kernel. Each ``x_i`` is a (scaled) logit-normal
variable (Aitchison and Shen 1980); the map is a smooth bijection from ``R^n`` onto the open box
``(lower, upper)^n``, so unlike a clip (point masses on the bounds) the field has a density:
``log p(x) = log N(u; m 1, s^2 R) - sum_i log |dx_i / du_i|`` with ``u = logit((x - lower) /
(upper - lower))`` and ``dx / du = (upper - lower) sigmoid(u) (1 - sigmoid(u))``.

The density is a :class:`torch.distributions.TransformedDistribution` of a
:class:`~torch.distributions.MultivariateNormal` through torch's ``SigmoidTransform`` (its
subclass :class:`MarginSigmoidTransform`) and
``AffineTransform``: the Jacobian is torch's, not written again here.

Choice of the latent parameters. The user states the field in the units of ``x``: its median
``median`` (exactly ``lower + (upper - lower) sigmoid(m)``, since the map is monotone, so
``m = logit((median - lower) / (upper - lower))``) and the marginal standard deviation ``std``
of each ``x_i``. The latent ``s`` is the root of ``sd(x_i; m, s) = std``, the standard
deviation computed by 101-point Gauss-Hermite quadrature and the root found by Brent's method
(:func:`scipy.optimize.brentq`; the sd grows with ``s`` towards ``(upper - lower) / 2``). The
correlation function and length of ``u`` are the ones given: for a nearly linear map (``std``
well inside the bounds) the correlation of ``x`` is that of ``u`` to a few 1e-4 (``mt1d``
defaults: 0.96784 against 0.96799 between neighbouring layers).

References
----------
Aitchison, J. and Shen, S. M. (1980). Logistic-normal distributions: some properties and uses.
Biometrika 67(2), 261-272. doi:10.1093/biomet/67.2.261
Rasmussen, C. E. and Williams, C. K. I. (2006). Gaussian Processes for Machine Learning.
MIT Press (the latent field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.distributions import (
    AffineTransform,
    ComposeTransform,
    IndependentTransform,
    MultivariateNormal,
    SigmoidTransform,
    Transform,
    TransformedDistribution,
)

from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.priors._checks import check_num_draws
from ppl_cvae.problems.priors.gaussian_field import GaussianRandomField, Kernel

__all__ = ["BoundedGaussianField", "logit_normal_std"]

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(101)  # probabilists' Hermite: N(0, 1)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
_MAX_LATENT_STD = 50.0  # beyond this the marginal is two point masses to 1e-4 in sd
INVERSE_MARGIN = 1e-6
"""Relative distance from the bounds at which :class:`MarginSigmoidTransform` clamps its inverse."""


def logit_normal_std(latent_mean: float, latent_std: float, lower: float, upper: float) -> float:
    """Return the standard deviation of ``lower + (upper - lower) sigmoid(u)``, ``u ~ N(m, s^2)``.

    Parameters
    ----------
    latent_mean, latent_std : float
        Mean ``m`` and standard deviation ``s >= 0`` of the latent normal ``u``.
    lower, upper : float
        Bounds of ``x``, ``lower < upper``, in the units of ``x``.

    Returns
    -------
    float
        The standard deviation of ``x`` in its units, by 101-point Gauss-Hermite quadrature
        (exact to about 1e-12 for ``s <= 5``; the logit-normal moments have no closed form).

    Examples
    --------
    >>> round(logit_normal_std(0.0, 0.5327083, 0.0, 4.0), 6)
    0.5
    """
    from scipy.special import expit  # imported on first use: scipy adds 0.35 s to a CLI start

    values = lower + (upper - lower) * expit(latent_mean + latent_std * _NODES)
    mean = float((_WEIGHTS * values).sum())
    return math.sqrt(max(float((_WEIGHTS * (values - mean) ** 2).sum()), 0.0))


class MarginSigmoidTransform(SigmoidTransform):
    """torch's ``SigmoidTransform`` whose inverse clamps to ``[margin, 1 - margin]``.

    Forward map and Jacobian are torch's. The inverse of a value at or beyond the bounds
    (an amortized draw a little outside ``(lower, upper)``, the start of a refinement or of an
    MCMC chain) lands at ``logit(margin)`` (-13.8 for 1e-6) instead of ``log(tiny)`` (-87 in
    float32, where the sigmoid's gradient underflows to zero and the point can never move).

    Parameters
    ----------
    margin : float, default INVERSE_MARGIN
        In ``(0, 1/2)``.
    """

    def __init__(self, margin: float = INVERSE_MARGIN) -> None:
        super().__init__()
        self.margin = float(margin)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MarginSigmoidTransform) and other.margin == self.margin

    def __hash__(self) -> int:
        return hash((type(self), self.margin))

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y.clamp(self.margin, 1.0 - self.margin)
        return y.log() - (-y).log1p()


class BoundedGaussianField:
    """Logit-normal random field: a Gaussian field mapped smoothly into ``(lower, upper)``.

    Parameters
    ----------
    axes : sequence of 1-D sequences of float
        Cell coordinates along each grid axis, in m (as :class:`GaussianRandomField`).
    lower, upper : float
        Open bounds of every cell value, in the field's unit, ``lower < upper``, finite.
    median : float
        Median of every cell value, in ``(lower, upper)``.
    std : float
        Marginal standard deviation of every cell value, in the field's unit, in
        ``(0, max_std)`` with ``max_std`` the value at latent sd 50 (below ``(upper - lower)
        / 2``; 1.87 for ``(0, 4)`` and median 2).
    correlation_length : float
        Correlation length of the latent field ``u``, in m, > 0.
    kernel : {"exponential", "gaussian", "matern32", "matern52"}, default "exponential"
        Correlation function of ``u``.
    jitter : float, default 1e-8
        As :class:`GaussianRandomField`.

    Attributes
    ----------
    latent : GaussianRandomField
        The field ``u`` (mean ``latent_mean``, sill ``latent_std^2``).
    latent_mean, latent_std : float
        ``m`` and ``s`` of the module docstring (dimensionless).
    transform : torch.distributions.Transform
        ``u -> x`` on the flattened field, event dim 1 (its ``log_abs_det_jacobian`` is summed
        over the cells); inverse clamped by :class:`MarginSigmoidTransform`. For samplers and
        refinement in ``u`` (:class:`~ppl_cvae.problems.parameterisation.Parameterisation`).
    distribution : torch.distributions.TransformedDistribution
        The prior of the flattened field, event shape ``(n,)``, float64, exact (torch's
        sigmoid inverse) inside the box.
    shape : tuple of int
        Shape of one field.

    Raises
    ------
    ConfigError
        If the bounds are not finite and ordered, ``median`` is not inside them, ``std`` is
        not attainable, or a :class:`GaussianRandomField` argument is invalid.

    Notes
    -----
    ``vec(x) = lower + (upper - lower) sigmoid(u)``, ``u ~ N(latent_mean 1, latent_std^2 R)``;
    see the module docstring for the density and how ``latent_mean`` and ``latent_std`` follow
    from ``median`` and ``std``.

    References
    ----------
    Aitchison and Shen (1980), Biometrika 67(2); Rasmussen and Williams (2006), MIT Press.

    Examples
    --------
    >>> f = BoundedGaussianField(([0.0, 1.0, 2.0],), 0.0, 4.0, 2.0, 0.5, 1.0)
    >>> round(f.latent_mean, 6), round(f.latent_std, 4)
    (0.0, 0.5327)
    >>> x = f.sample(2, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), bool(((x > 0) & (x < 4)).all())
    ((2, 3), True)
    >>> f.log_prob(torch.tensor([[2.0, 2.0, 4.0]])).item()  # on the bound: outside the support
    -inf
    """

    def __init__(
        self,
        axes: Sequence[Sequence[float]],
        lower: float,
        upper: float,
        median: float,
        std: float,
        correlation_length: float,
        kernel: Kernel = "exponential",
        jitter: float = 1e-8,
    ) -> None:
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ConfigError(f"need finite bounds lower < upper, got {lower!r} and {upper!r}")
        if not lower < median < upper:
            raise ConfigError(
                f"the median {median!r} must lie strictly inside the bounds ({lower}, {upper})"
            )
        self.lower, self.upper = float(lower), float(upper)
        self.median, self.std = float(median), float(std)
        p = (self.median - self.lower) / (self.upper - self.lower)
        self.latent_mean = math.log(p) - math.log1p(-p)
        max_std = logit_normal_std(self.latent_mean, _MAX_LATENT_STD, self.lower, self.upper)
        if not (math.isfinite(std) and 0 < std < max_std):
            raise ConfigError(
                f"std must be in (0, {max_std:.4g}) for a field in ({lower}, {upper}) with "
                f"median {median}, got {std!r}"
            )
        from scipy.optimize import brentq  # on first use, as expit above

        self.latent_std = float(
            brentq(
                lambda s: logit_normal_std(self.latent_mean, s, self.lower, self.upper) - std,
                1e-12,
                _MAX_LATENT_STD,
                xtol=1e-14,
            )
        )
        self.latent = GaussianRandomField(
            axes,
            mean=self.latent_mean,
            sill=self.latent_std**2,
            correlation_length=correlation_length,
            kernel=kernel,
            jitter=jitter,
        )
        self.shape = self.latent.shape
        scale = self.upper - self.lower
        self.transform: Transform = IndependentTransform(
            ComposeTransform([MarginSigmoidTransform(), AffineTransform(self.lower, scale)]), 1
        )
        base = MultivariateNormal(
            self.latent.mean_vector(), scale_tril=self.latent.cholesky(), validate_args=False
        )
        # torch's own transforms: the density's Jacobian is theirs (support handled below)
        self.distribution = TransformedDistribution(
            base, [SigmoidTransform(), AffineTransform(self.lower, scale)], validate_args=False
        )

    @property
    def num_cells(self) -> int:
        """Number of grid cells ``n``."""
        return self.latent.num_cells

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` fields; shape ``(num, *shape)``, float32, strictly inside the bounds.

        ``u = latent_mean + L e`` in float64 (``e ~ N(0, I)`` from ``generator``, ``L`` the
        latent Cholesky factor), ``x = lower + (upper - lower) sigmoid(u)``; values that
        round onto a bound in float32 (``|u - m| > 17``, never in practice) are moved one ulp
        inside.

        Raises
        ------
        ConfigError
            If ``num`` is negative.
        """
        check_num_draws(num)
        e = torch.randn(num, self.num_cells, generator=generator, dtype=torch.float64)
        u = self.latent_mean + e @ self.latent.cholesky().T
        x = self.transform(u).to(torch.float32)
        lo, hi = torch.tensor(self.lower), torch.tensor(self.upper)
        x = x.clamp(torch.nextafter(lo, hi).item(), torch.nextafter(hi, lo).item())
        return x.reshape(num, *self.shape)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Return the prior log density of each field; shape ``(*batch,)``, float64, nats.

        Parameters
        ----------
        x : Tensor, shape (*batch, *shape)
            Fields in the field's unit; evaluated in float64.

        Returns
        -------
        Tensor, shape (*batch,)
            ``log N(u; m 1, s^2 R) - sum_i log |dx_i/du_i|`` with respect to Lebesgue measure
            on ``R^n`` (the field's unit to the power ``-n``); ``-inf`` for a field with a
            value outside the open box ``(lower, upper)^n`` (zero density there), with a zero
            gradient. Differentiable inside.

        Raises
        ------
        ShapeError
            If ``x`` does not end in :attr:`shape`.
        """
        k = len(self.shape)
        if x.dim() < k or tuple(x.shape[x.dim() - k :]) != self.shape:
            raise ShapeError(
                f"x must have shape (*batch, {', '.join(map(str, self.shape))}), "
                f"got {tuple(x.shape)}"
            )
        flat = x.to(torch.float64).reshape(*x.shape[: x.dim() - k], self.num_cells)
        inside = ((flat > self.lower) & (flat < self.upper)).all(-1)
        # evaluate outside fields at the median, so no NaN reaches the gradient of the rest
        safe = torch.where(inside.unsqueeze(-1), flat, torch.full_like(flat, self.median))
        log_p = self.distribution.log_prob(safe)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))
