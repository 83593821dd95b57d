"""A model parameterisation ``x = B T(theta)``: linear basis plus optional bijection.

Some problems restrict their models to a low-dimensional linear family, ``vec(x) = B c`` with a
fixed basis ``B`` of shape ``(prod(x_shape), k)`` (Two Birds: straight lines, ``c`` their four
endpoints), and the valid coefficients to a subset of ``R^k`` reached by a bijection
``c = T(theta)`` from unconstrained ``theta`` in ``R^k``. :class:`Parameterisation` holds the
pair and maps both ways; it is the one implementation that the basis decoder
(:meth:`ppl_cvae.models.cvae.CVAE.x_from_coefficients` and
:meth:`~ppl_cvae.models.cvae.CVAE.coefficients_of`), the refinement
(:func:`inference.refine.refine_by_misfit`) and a sampler on ``theta`` (MCMC) share. A problem
hands one out through :meth:`~ppl_cvae.problems.base.Problem.parameterisation`.

Densities. ``x`` lies on the ``k``-dimensional image of ``B``, so it has no density on all of
``R^prod(x_shape)``; a problem with a basis gives its prior density with respect to Lebesgue
measure on the coefficients ``c`` (see :meth:`~ppl_cvae.problems.base.Problem.log_prior`).
:meth:`Parameterisation.log_prior` turns it into the density of ``theta`` on ``R^k`` by the
change of variables ``log p(theta) = log p_c(T(theta)) + log |det dT/dtheta|``, which is what a
sampler on ``theta`` needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.distributions import MultivariateNormal, Transform

from ppl_cvae.errors import NoPriorDensityError, ShapeError

__all__ = ["Parameterisation"]


class Parameterisation:
    """Models ``vec(x) = B T(theta)`` on a linear basis ``B`` with an optional bijection ``T``.

    Parameters
    ----------
    basis : Tensor, shape (prod(x_shape), k)
        Columns of the linear family, in units of ``x`` per unit of coefficient; used as
        given (dtype and device), so a module buffer keeps following its module.
    x_shape : sequence of int
        Event shape of one model ``x`` (C-order flattening).
    transform : torch.distributions.Transform, optional
        Bijection ``T`` from ``R^k`` onto the valid coefficients (Two Birds:
        :class:`~ppl_cvae.problems.two_birds.EndpointTransform`); None: ``theta`` are the
        coefficients themselves.
    log_prior_x : callable, optional
        The problem's prior log density of a model ``x`` of shape ``(*batch, *x_shape)``,
        read as the density of its coefficients ``c = B^+ vec(x)`` with respect to Lebesgue
        measure on ``R^k`` (:meth:`~ppl_cvae.problems.base.Problem.log_prior` of a problem
        with a basis); None when the prior has no density.
    gaussian_prior : torch.distributions.MultivariateNormal, optional
        The prior of ``theta`` when it is Gaussian, ``N(m, L L^T)`` with event shape ``(k,)``
        (float64; mt1d: the latent field ``u`` of its logit-normal prior); it must agree with
        :meth:`log_prior`. Samplers on ``theta`` then whiten by ``L`` and evaluate the prior
        as ``-|L^-1 (theta - m)|^2 / 2`` plus a constant
        (:func:`inference.mcmc.nuts_sample`, ``precondition="prior"``). None: not Gaussian,
        or not stated.

    Attributes
    ----------
    dim : int
        Number ``k`` of coefficients (and of unconstrained parameters ``theta``).

    Raises
    ------
    ShapeError
        If ``basis`` is not 2-D with ``prod(x_shape)`` rows, or ``gaussian_prior`` does not
        have event shape ``(k,)``.

    Notes
    -----
    ``to_x(theta) = reshape(B T(theta))`` and ``from_x(x) = T^-1(B^+ vec(x))`` with the
    Moore-Penrose pseudo-inverse ``B^+`` (least squares: exact on the image of ``B``, the
    orthogonal projection onto it elsewhere). The prior density of ``theta`` is
    ``log p_c(T(theta)) + log |det J_T(theta)|`` (change of variables), evaluated in float64.

    Examples
    --------
    >>> from ppl_cvae.problems import TwoBirds
    >>> par = TwoBirds().parameterisation()
    >>> par.dim, tuple(par.to_x(torch.zeros(3, 4)).shape)
    (4, (3, 1, 50, 2))
    >>> x = par.to_x(torch.zeros(4))
    >>> bool(torch.allclose(par.from_x(x), torch.zeros(4), atol=1e-4))
    True
    >>> round(float(par.log_prior(torch.zeros(4))), 4)  # four standard logistics at 0: 4 log(1/4)
    -5.5452
    """

    def __init__(
        self,
        basis: torch.Tensor,
        x_shape: Sequence[int],
        transform: Transform | None = None,
        log_prior_x: Callable[[torch.Tensor], torch.Tensor] | None = None,
        gaussian_prior: MultivariateNormal | None = None,
    ) -> None:
        self.x_shape: tuple[int, ...] = tuple(int(v) for v in x_shape)
        x_dim = math.prod(self.x_shape)
        if basis.dim() != 2 or basis.shape[0] != x_dim:
            raise ShapeError(
                f"basis must have shape ({x_dim}, k) for models of shape {self.x_shape}, "
                f"got {tuple(basis.shape)}"
            )
        self.basis = basis
        self.transform = transform
        self.log_prior_x = log_prior_x
        self.dim = int(basis.shape[1])
        if gaussian_prior is not None and tuple(gaussian_prior.event_shape) != (self.dim,):
            raise ShapeError(
                f"gaussian_prior must have event shape ({self.dim},) (one value per basis "
                f"column), got {tuple(gaussian_prior.event_shape)}"
            )
        self.gaussian_prior = gaussian_prior

    def __repr__(self) -> str:
        transform = type(self.transform).__name__ if self.transform is not None else None
        return f"Parameterisation(x_shape={self.x_shape}, dim={self.dim}, transform={transform})"

    @property
    def has_prior_density(self) -> bool:
        """Whether :meth:`log_prior` can be evaluated (the problem gave a prior density)."""
        return self.log_prior_x is not None

    def coefficients(self, theta: torch.Tensor) -> torch.Tensor:
        """Return the basis coefficients ``c = T(theta)``; shape ``(*batch, k)``, as ``theta``.

        Raises
        ------
        ShapeError
            If ``theta`` does not end in ``k``.
        """
        self._check_theta(theta)
        return self.transform(theta) if self.transform is not None else theta

    def x_from_coefficients(self, coef: torch.Tensor) -> torch.Tensor:
        """Return ``reshape(B c)`` of coefficients ``c`` ``(*batch, k)``: ``(*batch, *x_shape)``."""
        return (coef @ self.basis.T).reshape(*coef.shape[:-1], *self.x_shape)

    def to_x(self, theta: torch.Tensor) -> torch.Tensor:
        """Return the models ``x = reshape(B T(theta))``; shape ``(*batch, *x_shape)``.

        Parameters
        ----------
        theta : Tensor, shape (*batch, k)
            Unconstrained parameters (the coefficients themselves without a transform).

        Raises
        ------
        ShapeError
            If ``theta`` does not end in ``k``.
        """
        return self.x_from_coefficients(self.coefficients(theta))

    def coefficients_of(self, x: torch.Tensor) -> torch.Tensor:
        """Return the least-squares coefficients ``B^+ vec(x)``; shape ``(*batch, k)``.

        Raises
        ------
        ShapeError
            If ``x`` does not end in ``x_shape``.
        """
        k = len(self.x_shape)
        if x.dim() < k or tuple(x.shape[x.dim() - k :]) != self.x_shape:
            raise ShapeError(
                f"x must have shape (*batch, {', '.join(map(str, self.x_shape))}), "
                f"got {tuple(x.shape)}"
            )
        flat = x.reshape(*x.shape[: x.dim() - k], -1)
        return flat @ torch.linalg.pinv(self.basis).T

    def from_x(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``theta = T^-1(B^+ vec(x))``; shape ``(*batch, k)``.

        Exact for ``x`` on the image of the basis (up to the inverse transform's own
        clamping, e.g. :class:`~ppl_cvae.problems.two_birds.EndpointTransform` keeps boundary
        values finite); the least-squares projection elsewhere.

        Raises
        ------
        ShapeError
            If ``x`` does not end in ``x_shape``.
        """
        coef = self.coefficients_of(x)
        return self.transform.inv(coef) if self.transform is not None else coef

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """Return the prior log density of ``theta`` with respect to Lebesgue measure on ``R^k``.

        Parameters
        ----------
        theta : Tensor, shape (*batch, k)
            Unconstrained parameters.

        Returns
        -------
        Tensor, shape (*batch,)
            ``log p_c(T(theta)) + log |det J_T(theta)|`` in nats, float64; differentiable in
            ``theta`` (a potential for MCMC on ``theta``).

        Raises
        ------
        ShapeError
            If ``theta`` does not end in ``k``.
        NoPriorDensityError
            If the problem's prior has no density, or the transform does not implement
            ``log_abs_det_jacobian``.
        """
        self._check_theta(theta)
        if self.log_prior_x is None:
            raise NoPriorDensityError(
                "this parameterisation has no prior density: its problem's prior is defined "
                "by a sampler only (has_prior_density is False)"
            )
        theta64 = theta.to(torch.float64)
        coef = self.transform(theta64) if self.transform is not None else theta64
        x = (coef @ self.basis.to(coef).T).reshape(*coef.shape[:-1], *self.x_shape)
        log_p = self.log_prior_x(x).to(torch.float64)
        if self.transform is None:
            return log_p
        try:
            log_det = self.transform.log_abs_det_jacobian(theta64, coef)
        except NotImplementedError as err:
            raise NoPriorDensityError(
                f"the coefficient transform {type(self.transform).__name__} does not implement "
                "log_abs_det_jacobian, so the density of theta is unknown"
            ) from err
        return log_p + log_det

    def _check_theta(self, theta: torch.Tensor) -> None:
        if theta.dim() < 1 or theta.shape[-1] != self.dim:
            raise ShapeError(
                f"theta must have shape (*batch, {self.dim}) (one value per basis column), "
                f"got {tuple(theta.shape)}"
            )
