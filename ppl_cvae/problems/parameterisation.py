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
from torch.distributions import MultivariateNormal, Transform, biject_to, constraints

from ppl_cvae.errors import NoPriorDensityError, ShapeError

__all__ = ["ElementwiseTransform", "Parameterisation", "support_parameterisation"]


class ElementwiseTransform(Transform):
    """An elementwise bijection on models of shape ``x_shape``, seen on their flattened vector.

    ``T(theta) = vec(base(reshape(theta, x_shape)))`` for ``theta`` of shape ``(*batch, k)``,
    ``k = prod(x_shape)``: the bounds of ``base`` (e.g. ``biject_to(constraints.interval(low,
    high))`` with ``low``, ``high`` of shape ``x_shape``) broadcast against one model, and
    ``log |det J|`` is the sum of the elementwise log-derivatives (shape ``(*batch,)``).
    The inverse replaces an infinite value (a model exactly on the boundary of a closed
    support) by ``+-BOUNDARY``, so that a draw on the boundary starts a sampler at a finite
    point.

    Parameters
    ----------
    base : torch.distributions.Transform
        Elementwise (``event_dim`` 0) bijection from ``R`` onto the support, in units of ``x``.
    x_shape : sequence of int
        Event shape of one model.
    """

    domain = constraints.real_vector
    bijective = True
    BOUNDARY = 30.0

    def __init__(self, base: Transform, x_shape: Sequence[int]) -> None:
        super().__init__()
        self.base = base
        self.x_shape = tuple(int(v) for v in x_shape)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        """The base transform's codomain, on the flattened vector."""
        return constraints.independent(self.base.codomain, 1)

    def _shaped(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(*value.shape[:-1], *self.x_shape)

    def _call(self, theta: torch.Tensor) -> torch.Tensor:
        return self.base(self._shaped(theta)).reshape(theta.shape)

    def _inverse(self, coef: torch.Tensor) -> torch.Tensor:
        theta = self.base.inv(self._shaped(coef)).reshape(coef.shape)
        return torch.nan_to_num(theta, posinf=self.BOUNDARY, neginf=-self.BOUNDARY)

    def log_abs_det_jacobian(self, theta: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Return ``log |det dT/dtheta|``; shape ``theta.shape[:-1]``."""
        log_det = self.base.log_abs_det_jacobian(self._shaped(theta), self._shaped(coef))
        log_det = log_det.expand(*theta.shape[:-1], *self.x_shape)
        return log_det.reshape(*theta.shape[:-1], -1).sum(-1)


def support_parameterisation(
    support: constraints.Constraint | None,
    x_shape: Sequence[int],
    log_prior_x: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    no_density: str | None = None,
) -> Parameterisation | None:
    """Return unconstrained coordinates for models in an elementwise support, or None.

    ``x = reshape(T(theta))`` with ``T = biject_to(support)`` applied elementwise
    (:class:`ElementwiseTransform`), as Pyro's HMC and NUTS sample a constrained site in
    unconstrained space (``torch.distributions.biject_to``): a sampler on ``theta`` never
    leaves the support, and the prior density of ``theta`` gains the log-Jacobian.

    Parameters
    ----------
    support : torch.distributions.constraints.Constraint or None
        The prior's support (:attr:`Problem.support <ppl_cvae.problems.base.Problem>`);
        ``constraints.independent`` wrappers are unwrapped.
    x_shape : sequence of int
        Event shape of one model.
    log_prior_x : callable, optional
        The prior log density of ``x`` (``(*batch, *x_shape) -> (*batch,)``).
    no_density : str, optional
        Without ``log_prior_x``: the message of the error :meth:`Parameterisation.log_prior`
        raises (what is missing and what to do).

    Returns
    -------
    Parameterisation or None
        None where there is nothing to transform: no support, ``R^n``, or a constraint that
        is not elementwise (a simplex, an ordered vector) or that ``biject_to`` does not know.

    Examples
    --------
    >>> par = support_parameterisation(constraints.unit_interval, (2,))
    >>> par.to_x(torch.zeros(1, 2)).tolist()
    [[0.5, 0.5]]
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is None or support is constraints.real or support.event_dim != 0:
        return None
    try:
        base = biject_to(support)
    except NotImplementedError:
        return None
    return Parameterisation(
        None, x_shape, ElementwiseTransform(base, x_shape), log_prior_x, no_density=no_density
    )


class Parameterisation:
    """Models ``vec(x) = B T(theta)`` on a linear basis ``B`` with an optional bijection ``T``.

    Parameters
    ----------
    basis : Tensor, shape (prod(x_shape), k), or None
        Columns of the linear family, in units of ``x`` per unit of coefficient; used as
        given (dtype and device), so a module buffer keeps following its module. None: the
        identity (``k = prod(x_shape)``, the coefficients are the flattened ``x``), for a
        bijection alone (:func:`support_parameterisation`).
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
    no_density : str, optional
        Without ``log_prior_x``: the message of the :class:`~ppl_cvae.errors.NoPriorDensityError`
        that :meth:`log_prior` raises, naming the problem's missing member and what to do
        (:meth:`~ppl_cvae.problems.base.Problem.sampler_parameterisation` writes one); default
        a generic one.

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
        basis: torch.Tensor | None,
        x_shape: Sequence[int],
        transform: Transform | None = None,
        log_prior_x: Callable[[torch.Tensor], torch.Tensor] | None = None,
        gaussian_prior: MultivariateNormal | None = None,
        *,
        no_density: str | None = None,
    ) -> None:
        self.x_shape: tuple[int, ...] = tuple(int(v) for v in x_shape)
        x_dim = math.prod(self.x_shape)
        if basis is not None and (basis.dim() != 2 or basis.shape[0] != x_dim):
            raise ShapeError(
                f"basis must have shape ({x_dim}, k) for models of shape {self.x_shape}, "
                f"got {tuple(basis.shape)}"
            )
        self.basis = basis
        self.transform = transform
        self.log_prior_x = log_prior_x
        self.dim = int(basis.shape[1]) if basis is not None else x_dim
        if gaussian_prior is not None and tuple(gaussian_prior.event_shape) != (self.dim,):
            raise ShapeError(
                f"gaussian_prior must have event shape ({self.dim},) (one value per basis "
                f"column), got {tuple(gaussian_prior.event_shape)}"
            )
        self.gaussian_prior = gaussian_prior
        self.no_density = no_density

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
        if self.basis is None:
            return coef.reshape(*coef.shape[:-1], *self.x_shape)
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
        return flat if self.basis is None else flat @ torch.linalg.pinv(self.basis).T

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
                self.no_density
                or "no prior density of theta: the problem's log_prior is not defined (its "
                "has_prior_density is False); define log_prior and set has_prior_density = True"
            )
        theta64 = theta.to(torch.float64)
        coef = self.transform(theta64) if self.transform is not None else theta64
        basis = self.basis.to(coef) if self.basis is not None else None
        x = (coef if basis is None else coef @ basis.T).reshape(*coef.shape[:-1], *self.x_shape)
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
