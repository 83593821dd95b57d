"""A problem's densities, checked, and its noise: ``log p(x)``, ``log p(y | x)``, ``C_e``.

:func:`checked_forward`, :func:`checked_log_prior` and :func:`checked_log_likelihood` call the
problem's forward operator and densities and check what a user's problem returned (type,
shape, dtype; a wrong shape is a :class:`~ppl_cvae.errors.ShapeError`, a value that is not a
real tensor a :class:`~ppl_cvae.errors.DataError`, an exception the problem raises or its
``sys.exit`` a :class:`~ppl_cvae.errors.ConfigError` naming the member that failed);
:func:`noise_covariance`, :func:`noise_scale`, :func:`sample_noise` and :func:`whiten` read
its noise model (:attr:`~ppl_cvae.problems.base.Problem.noise`, a
:class:`~ppl_cvae.problems.noise.GaussianNoise`).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints

from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import (
    Problem,
    _elementwise,
    _forward_checked,
    _problem_code,
    describe_support,
)

__all__ = [
    "check_continuous_support",
    "check_forward_gradient",
    "check_log_density_values",
    "checked_forward",
    "checked_log_likelihood",
    "checked_log_prior",
    "noise_covariance",
    "noise_scale",
    "sample_noise",
    "whiten",
]


def noise_covariance(problem: Problem) -> torch.Tensor:
    """Return the noise covariance of the flattened ``y``; shape ``(m, m)``, float64.

    ``problem.noise_cov`` when set, else ``noise_std**2 I``; zeros for a noise-free problem
    (:meth:`problem.noise.covariance() <ppl_cvae.problems.noise.GaussianNoise.covariance>`).

    Raises
    ------
    ShapeError
        If ``noise_cov`` is not ``(m, m)`` with ``m = prod(y_shape)``.
    """
    return as_problem(problem).noise.covariance()


def noise_scale(problem: Problem) -> torch.Tensor:
    """Return the per-datum noise standard deviation; shape ``y_shape``, float32, units of y.

    :meth:`problem.noise.stddev() <ppl_cvae.problems.noise.GaussianNoise.stddev>`.

    Raises
    ------
    ShapeError
        If ``noise_cov`` is not ``(m, m)`` with ``m = prod(y_shape)``.
    """
    return as_problem(problem).noise.stddev()


def sample_noise(
    problem: Problem, sample_shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw observation noise ``eps ~ N(0, C_e)``; shape ``(*sample_shape, *y_shape)``, float32.

    With only ``noise_std`` this is ``noise_std * randn``; with ``noise_cov`` it is ``L e`` for
    the Cholesky factor ``L`` of ``C_e``
    (:meth:`problem.noise.sample() <ppl_cvae.problems.noise.GaussianNoise.sample>`).

    Raises
    ------
    ShapeError
        If ``noise_cov`` is not ``(m, m)`` with ``m = prod(y_shape)``.
    """
    return as_problem(problem).noise.sample(sample_shape, generator)


def whiten(problem: Problem, residual: torch.Tensor) -> torch.Tensor:
    """Return ``L^{-1} r`` for residuals ``r = F(x) - y`` of shape ``(*batch, *y_shape)``.

    ``L`` is the Cholesky factor of the noise covariance, so ``sum(whiten(r)**2)`` is the
    chi-squared misfit ``r^T C_e^{-1} r`` (Tarantola 2005, eq. 3.46). Without ``noise_cov`` this
    is ``r / misfit_std`` (which equals ``noise_std`` for noisy problems): the whitening of
    :attr:`Problem.misfit_noise`. Shape and dtype of ``residual`` are kept.

    Raises
    ------
    ShapeError
        If ``residual`` does not end in ``y_shape``.
    """
    return as_problem(problem).misfit_noise.whiten(residual)


def _event_batch(value: torch.Tensor, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    k = len(shape)
    if value.dim() < k or tuple(value.shape[value.dim() - k :]) != tuple(shape):
        raise ShapeError(
            f"{name} must have shape (*batch, {', '.join(map(str, shape))}), got "
            f"{tuple(value.shape)}"
        )
    return tuple(value.shape[: value.dim() - k])


def _checked_density(
    problem: Problem, member: str, value: object, expected: tuple[int, ...]
) -> torch.Tensor:
    what = f"problem {problem.name!r} {member}"
    if not isinstance(value, torch.Tensor):
        raise DataError(
            f"{what} returned a {type(value).__module__}.{type(value).__name__}; expected a "
            f"torch.Tensor of shape {expected}: one log density (nats) per model of the batch"
        )
    if tuple(value.shape) != expected:
        raise ShapeError(
            f"{what} returned shape {tuple(value.shape)}; expected {expected}: one log "
            "density (nats) per model of the batch, summed over the event axes only (a "
            "value that broadcasts would give every model the same weight)"
        )
    if value.is_complex() or not value.is_floating_point():
        raise DataError(f"{what} returned dtype {value.dtype}; expected a real float dtype")
    return value


def checked_forward(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """Return ``problem.forward(x)`` after checking what the problem returned.

    Parameters
    ----------
    problem : Problem
    x : Tensor, shape (*batch, *x_shape)
        Models, in the units of ``x``.

    Returns
    -------
    Tensor, shape (*batch, *y_shape)
        The noise-free data ``F(x)``, in the units of ``y``, the dtype the problem returned.

    Raises
    ------
    ShapeError
        If ``x`` does not end in ``x_shape``, or ``forward`` returns a tensor of a shape
        other than ``(*batch, *y_shape)``.
    DataError
        If ``forward`` returns something that is not a torch tensor (e.g. a NumPy array).
    ConfigError
        If ``forward`` raises (its exception type and first line are named; an allocation
        failure and the package's own errors pass unchanged) or calls ``sys.exit``.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> tuple(checked_forward(LinearGaussian(), torch.zeros(5, 3, 2)).shape)
    (5, 3, 2)
    """
    return _forward_checked(problem, x)


def check_forward_gradient(problem: Problem, x: torch.Tensor, method: str) -> None:
    """Refuse, before a gradient-based method runs, a forward operator that gives no gradient.

    NUTS and misfit refinement follow ``d log p(y | F(x)) / dx``; a forward operator computed
    outside torch's autograd (through NumPy, ``.detach()``, ``.item()`` or under
    ``torch.no_grad()``) returns data that do not depend on ``x`` for autograd, and the
    method would then run on the prior's gradient alone, or raise deep inside torch.

    Parameters
    ----------
    problem : Problem
    x : Tensor, shape (*batch, *x_shape)
        Models inside the support (e.g. one amortized draw), in the units and dtype the method
        evaluates ``forward`` in; a detached copy is probed.
    method : str
        The method, for the message (e.g. ``"NUTS"``).

    Raises
    ------
    ConfigError
        If ``F(x)`` does not require grad; the message names the problem and says to write
        ``forward`` in torch or use importance sampling, which needs no gradient.
    ShapeError, DataError
        From :func:`checked_forward`.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> check_forward_gradient(LinearGaussian(), torch.zeros(1, 2), "NUTS")  # no error
    """
    probe = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        data = checked_forward(as_problem(problem), probe)
    if not data.requires_grad:
        raise ConfigError(
            f"{method} follows the gradient of the misfit through problem {problem.name!r}'s "
            "forward operator, and it gives none: its output does not depend on x through "
            "torch operations (computed with NumPy, .detach(), .item() or under "
            "torch.no_grad()); write forward in torch, or use importance sampling "
            "(--method importance), which needs no gradient"
        )


def check_continuous_support(problem: Problem, method: str) -> None:
    """Refuse a gradient-based method on a problem whose declared support is discrete.

    A support of codes (``constraints.integer_interval``, ``boolean``; facies fields) has no
    gradient to follow: NUTS and refinement move ``x`` continuously.

    Parameters
    ----------
    problem : Problem
    method : str
        The method, for the message (e.g. ``"NUTS"``).

    Raises
    ------
    ConfigError
        If :attr:`Problem.support <ppl_cvae.problems.base.Problem.support>` is discrete; the
        message names it and the samplers that draw codes.
    """
    support = as_problem(problem).support
    if isinstance(support, constraints.Constraint) and _elementwise(support).is_discrete:
        raise ConfigError(
            f"{method} moves x continuously, but problem {problem.name!r} declares the "
            f"discrete support {describe_support(support)}: sample its codes with "
            "--method facies-mcmc or facies-smc (a facies generative prior), or weigh "
            "amortized draws with --method importance"
        )


def checked_log_prior(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """Return ``problem.log_prior(x)`` after checking what the problem returned.

    A user's :meth:`Problem.log_prior` may return a Python float (the batch summed), a tensor
    of shape ``(1,)`` or ``(*batch, 1)`` that broadcasts silently against the other terms
    (every draw then gets the same prior weight), or call ``sys.exit``; each is one error here.

    Parameters
    ----------
    problem : Problem
    x : Tensor, shape (*batch, *x_shape)
        Models, in the units of ``x``.

    Returns
    -------
    Tensor, shape (*batch,)
        ``log p(x)`` in nats, the dtype the problem returned.

    Raises
    ------
    ShapeError
        If ``x`` does not end in ``x_shape``, or the problem returns a tensor of a shape other
        than ``batch``.
    DataError
        If the problem returns something that is not a real floating tensor.
    ConfigError
        If the problem raises (its exception type and first line are named; an allocation
        failure and the package's own errors pass unchanged) or calls ``sys.exit``.
    NoPriorDensityError
        From the problem, if its prior has no density.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> tuple(checked_log_prior(LinearGaussian(), torch.zeros(5, 3, 2)).shape)
    (5, 3)
    """
    batch = _event_batch(x, tuple(problem.x_shape), "x")
    what = f"problem {problem.name!r} log_prior"
    with _problem_code(what, f" for x of shape {tuple(x.shape)}"):
        value = problem.log_prior(x)
    return _checked_density(problem, "log_prior", value, batch)


def checked_log_likelihood(problem: Problem, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return ``problem.log_likelihood(x, y)`` after checking what the problem returned.

    The same checks as :func:`checked_log_prior`, against the broadcast batch shape.

    Parameters
    ----------
    problem : Problem
    x : Tensor, shape (*batch_x, *x_shape)
    y : Tensor, shape (*batch_y, *y_shape)
        ``batch_x`` and ``batch_y`` broadcast.

    Returns
    -------
    Tensor, shape (*batch,)
        ``log p(y | x)`` in nats, ``batch`` the broadcast of ``batch_x`` and ``batch_y``.

    Raises
    ------
    ShapeError
        If ``x`` or ``y`` does not end in its event shape, the batches do not broadcast, or
        the problem returns a tensor of a shape other than ``batch``.
    DataError
        If the problem returns something that is not a real floating tensor.
    ConfigError
        If the problem raises (its exception type and first line are named; an allocation
        failure and the package's own errors pass unchanged) or calls ``sys.exit``.
    NoLikelihoodError
        From the problem, if it is noise-free.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> p = LinearGaussian()
    >>> tuple(checked_log_likelihood(p, torch.zeros(5, 3, 2), torch.zeros(3, 2)).shape)
    (5, 3)
    """
    batch_x = _event_batch(x, tuple(problem.x_shape), "x")
    batch_y = _event_batch(y, tuple(problem.y_shape), "y")
    try:
        batch = tuple(torch.broadcast_shapes(batch_x, batch_y))
    except RuntimeError as err:
        raise ShapeError(
            f"the batch shapes of x {batch_x} and y {batch_y} do not broadcast"
        ) from err
    with _problem_code(
        f"problem {problem.name!r} log_likelihood",
        f" for x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}",
    ):
        value = problem.log_likelihood(x, y)
    return _checked_density(problem, "log_likelihood", value, batch)


def check_log_density_values(
    problem: Problem, member: str, value: torch.Tensor, where: str
) -> torch.Tensor:
    """Return ``value`` as float64 if it holds no NaN and no ``+inf``.

    A log density is finite, or ``-inf`` where the density is zero (outside the support, a
    forward operator that overflows); NaN and ``+inf`` are never a density, and a sampler
    that met them would weigh, accept or reject draws on noise.

    Parameters
    ----------
    problem : Problem
        Named in the message.
    member : str
        The problem's member that gave ``value``, e.g. ``"log_likelihood"``.
    value : Tensor, shape (*batch,)
        Log densities in nats, any real float dtype.
    where : str
        What the batch holds, for the message, e.g. ``"importance proposals"``.

    Returns
    -------
    Tensor, shape (*batch,)
        ``value`` as float64.

    Raises
    ------
    DataError
        If ``value`` holds NaN or ``+inf``; the message names the problem, ``member``, the
        first such value and how many of the batch hold one.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> value = torch.tensor([0.0, -math.inf])
    >>> check_log_density_values(LinearGaussian(), "log_prior", value, "draws").tolist()
    [0.0, -inf]
    """
    value = value.double()
    bad = torch.isnan(value) | (value == math.inf)
    if bool(bad.any()):
        first = float(value[bad].flatten()[0])
        also = " (and the forward operator it calls)" if member == "log_likelihood" else ""
        raise DataError(
            f"problem {problem.name!r} {member} is {first} at {int(bad.sum())} of "
            f"{value.numel()} {where}; a log density must be finite, or -inf where the density "
            f"is zero: check the problem's {member}{also}"
        )
    return value
