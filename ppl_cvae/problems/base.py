"""The problem contract: prior sampler, forward operator, noise model, named dimensions.

A *problem* is everything the CVAE needs to know about a survey besides training pairs: how to
draw subsurface models ``x`` from the prior, the forward operator ``F`` that maps them to noise-free
data, the observation noise, and the names, coordinates and units of every axis (they become
ArviZ dims and coords). Every problem is a :class:`Problem`: the base class holds the defaults of
the optional members, the noise model (:attr:`Problem.noise`, a
:class:`~ppl_cvae.problems.noise.GaussianNoise`), the log-likelihood and, where the prior has a
density, the log prior. Built-in problems register themselves by name in :data:`REGISTRY`.

A user's own problem needs no registration: :func:`make_problem` also accepts a reference
``"package.module:factory"`` (the CLI's ``--problem``) and checks what the factory returns with
:func:`check_problem`. The factory may return a :class:`Problem` subclass or a duck-typed object
with the required members, which is wrapped once, where it enters, in a :class:`ProblemAdapter`
(:func:`as_problem`). A reference read back from a checkpoint is untrusted input and is only
rebuilt under the safety policy of :func:`resolve_problem_factory` (:func:`rebuild_problem`).

This module holds :class:`Problem` (with :class:`LinearGaussianParts` and
:data:`NUTS_PRECONDITIONERS`); the rest of the contract lives beside it:
:mod:`~ppl_cvae.problems.adapter` (:class:`ProblemAdapter`, :func:`as_problem`,
:func:`check_problem`), :mod:`~ppl_cvae.problems.registry` (:data:`REGISTRY`,
:func:`register_problem`, :func:`make_problem`, :func:`resolve_problem_factory` and its safety
policy, :func:`rebuild_problem`), :mod:`~ppl_cvae.problems.metadata` (units, coordinates,
derived quantities, linear-Gaussian parts) and :mod:`~ppl_cvae.problems.densities` (checked
log densities, noise helpers). Their names can still be imported from here (loaded on first
access, so that those modules can import :class:`Problem` from this one).
"""

from __future__ import annotations

import abc
import importlib
import logging
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import torch
from torch.distributions import MultivariateNormal, Transform, constraints, transform_to

from ppl_cvae.checks import as_real_tensor
from ppl_cvae.config import Overrides
from ppl_cvae.device import move_tensors
from ppl_cvae.errors import (
    ConfigError,
    DataError,
    NoLikelihoodError,
    NoPriorDensityError,
    PplCvaeError,
    ShapeError,
    exception_summary,
    no_exit,
)
from ppl_cvae.problems.noise import GaussianNoise
from ppl_cvae.problems.parameterisation import Parameterisation

if TYPE_CHECKING:  # the names below moved to sibling modules; __getattr__ loads them
    from ppl_cvae.problems.adapter import ProblemAdapter as ProblemAdapter
    from ppl_cvae.problems.adapter import as_problem as as_problem
    from ppl_cvae.problems.adapter import check_problem as check_problem
    from ppl_cvae.problems.densities import checked_log_likelihood as checked_log_likelihood
    from ppl_cvae.problems.densities import checked_log_prior as checked_log_prior
    from ppl_cvae.problems.densities import noise_covariance as noise_covariance
    from ppl_cvae.problems.densities import noise_scale as noise_scale
    from ppl_cvae.problems.densities import sample_noise as sample_noise
    from ppl_cvae.problems.densities import whiten as whiten
    from ppl_cvae.problems.metadata import coord_attrs_of as coord_attrs_of
    from ppl_cvae.problems.metadata import data_units as data_units
    from ppl_cvae.problems.metadata import derived_quantities as derived_quantities
    from ppl_cvae.problems.metadata import extra_coords_of as extra_coords_of
    from ppl_cvae.problems.metadata import linear_gaussian_parts as linear_gaussian_parts
    from ppl_cvae.problems.metadata import units_of as units_of
    from ppl_cvae.problems.registry import REGISTRY as REGISTRY
    from ppl_cvae.problems.registry import make_problem as make_problem
    from ppl_cvae.problems.registry import rebuild_problem as rebuild_problem
    from ppl_cvae.problems.registry import register_problem as register_problem
    from ppl_cvae.problems.registry import resolve_problem_factory as resolve_problem_factory

__all__ = [
    "LinearGaussianParts",
    "Problem",
    "check_batch_axes",
    "check_facies_support",
    "check_layouts",
    "check_support",
    "check_support_dimension",
    "describe_support",
    "facies_family",
    "support_dimension_deficit",
]


class LinearGaussianParts(NamedTuple):
    """Pieces of a linear-Gaussian inverse problem ``y = A x + b + eps`` on flattened x and y.

    Attributes
    ----------
    matrix : Tensor, shape (m, d)
        Forward operator ``A`` (``d = prod(x_shape)``, ``m = prod(y_shape)``, C order). A
        constant term ``b`` of an affine ``forward`` is not part of the tuple:
        :func:`inference.exact.exact_posterior` reads it off ``forward`` (``F(mu_0) - A mu_0``)
        after checking that ``forward`` is ``A x + b``.
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


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _event_checked(
    value: Any, expected: tuple[int, ...], source: str, layout: str
) -> torch.Tensor:
    """Return ``value`` if it is a torch tensor of shape ``expected``.

    The one check of what a problem's ``sample_prior`` or ``forward`` returned (also through
    :func:`~ppl_cvae.problems.densities.checked_forward`).

    Parameters
    ----------
    value : object
        What the problem's code returned.
    expected : tuple of int
        The shape it must have, e.g. ``(num, *y_shape)``.
    source : str
        The call, for the message, e.g. ``"problem 'mine' forward"``.
    layout : str
        The axes of ``expected`` in words, e.g. ``"(*batch, *y_shape) for x of shape (5, 2)"``.

    Returns
    -------
    Tensor, shape ``expected``
        ``value`` itself.

    Raises
    ------
    DataError
        If ``value`` is not a torch tensor (a NumPy array, a list, a float).
    ShapeError
        If it is a tensor of another shape (the rule of :mod:`ppl_cvae.errors`).
    """
    if not isinstance(value, torch.Tensor):
        kind = type(value)
        raise DataError(
            f"{source} returned a {kind.__module__}.{kind.__qualname__}; expected a torch "
            f"tensor of shape {expected} {layout}"
        )
    if tuple(value.shape) != expected:
        raise ShapeError(
            f"{source} returned {tuple(value.shape)}; expected a torch tensor of shape "
            f"{expected} {layout}"
        )
    return value


def _is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (the command line names it as such)."""
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        "can't allocate memory" in str(err)
    )


class _problem_code:  # noqa: N801 - used as a function: ``with _problem_code(...):``
    """Turn an exception that a problem's code raises inside the block into a ConfigError.

    The rule of :mod:`ppl_cvae.errors`: problem code that fails is a
    :class:`~ppl_cvae.errors.ConfigError`, whatever it raised and wherever it was called
    from (an optimiser, a NUTS trajectory inside Pyro, the writing of a file). The package's
    own errors and allocation failures pass unchanged; ``KeyboardInterrupt`` too. A class,
    not a generator: it wraps every evaluation of a potential (about 0.3 us against 3 us).

    Parameters
    ----------
    what : str
        The member called, for the message, e.g. ``"problem 'mine' forward"``.
    detail : str
        Appended to the message, e.g. ``" for x of shape (5, 2)"``.

    Raises
    ------
    ConfigError
        If the block raises an ``Exception`` that is neither a
        :class:`~ppl_cvae.errors.PplCvaeError` nor an allocation failure (the message names
        ``what``, the exception's type and the first line of its message), or calls
        ``sys.exit`` (:func:`~ppl_cvae.errors.no_exit`).
    """

    __slots__ = ("detail", "what")

    def __init__(self, what: str, detail: str = "") -> None:
        self.what, self.detail = what, detail

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, traceback: Any
    ) -> Literal[False]:
        if err is None or isinstance(err, PplCvaeError):
            return False
        if isinstance(err, SystemExit):
            with no_exit(self.what):
                raise err
        if not isinstance(err, Exception) or _is_out_of_memory(err):
            return False
        raise ConfigError(f"{self.what} raised {exception_summary(err)}{self.detail}") from err


def _runs(member: Any, x: torch.Tensor) -> bool:
    """Whether ``member(x)`` returns without raising (no gradient; any exception counts).

    A ``sys.exit`` in the member counts as a failure too: this probe only chooses the hint of
    an error already raised, which names the member and the ``sys.exit``.
    """
    try:
        with torch.no_grad():
            member(x)
    except (Exception, SystemExit):  # noqa: BLE001 - a user's code may raise anything
        return False
    return True


def _contract_hint(member: Any, name: str, x: torch.Tensor, x_shape: tuple[int, ...]) -> str:
    """Return what a problem's ``member`` that raised on ``x`` accepts instead, or ``""``.

    Called by :func:`check_layouts` only after ``member(x)`` raised, on at most two models,
    never inside a sampler (a failing solver is not called again there). The product calls a
    problem's ``forward`` and ``log_prior`` on the layouts and dtypes listed there. This
    calls ``member`` again on the same ``x`` and, when it fails again (a failure that does
    not repeat is not about the layout), on ``x`` cast to float32, on the same models with
    one batch axis and on one model; the first variant that works gives the sentence that
    says what arrived, what is expected and how to write it.

    Parameters
    ----------
    member : callable
        The problem's bound member, e.g. ``problem.forward``.
    name : str
        Its name for the message, ``"forward"`` or ``"log_prior"``.
    x : Tensor, shape (*batch, *x_shape)
        The models it raised on.
    x_shape : tuple of int
        The problem's event shape of ``x``.

    Returns
    -------
    str
        ``""`` or ``"; ..."``, appended to the message of the error ``member(x)`` gave.
    """
    x = x.detach()
    if _runs(member, x):
        return ""
    batch = tuple(x.shape[: x.dim() - len(x_shape)])
    flat = x.reshape(-1, *x_shape)
    if x.dtype == torch.float64 and _runs(member, x.float()):
        return (
            "; x was float64 (NUTS evaluates the problem in float64; training, importance "
            "sampling and refinement in float32) and the same x in float32 works: compute "
            "in the dtype of x (e.g. self.matrix.to(x)) and return float32 or float64"
        )
    contract = (
        f"{name} must take models with any number of batch axes, (*batch, *x_shape): none "
        "(NUTS evaluates one model of shape x_shape), one (training) or two (importance "
        "sampling and refinement: (num, M, *x_shape))"
    )
    if len(batch) != 1 and flat.shape[0] > 0 and _runs(member, flat):
        return (
            f"; the same models with one batch axis, shape {tuple(flat.shape)}, work: "
            f"{contract}; flatten them inside {name} with x.reshape(-1, *x_shape) and "
            "reshape the result back to the batch axes"
        )
    if len(batch) >= 1 and flat.shape[0] > 0 and _runs(member, flat[0]):
        return (
            f"; one model of shape {tuple(x_shape)} works: {contract}; loop over the models "
            f"inside {name} (or vectorise it with torch.vmap)"
        )
    return ""


def check_layouts(
    problem: Problem, x: torch.Tensor, *, float64: bool = False, prior: bool = False
) -> None:
    """Refuse a problem whose ``forward`` (or ``log_prior``) fails on a layout the product uses.

    The product calls a problem's ``forward`` on models with no batch axis (NUTS: one model
    of shape ``x_shape``), one (training: ``(num, *x_shape)``) or two (importance sampling
    and refinement: ``(num, M, *x_shape)``), in float32 (training, importance sampling,
    refinement) and float64 (NUTS). A member written for one layout or one dtype only
    otherwise fails after a fit, or deep inside a sampler, with an error of its own
    ("expected m1 and m2 to have the same dtype", "too many indices") that does not say what
    the product handed it. This evaluates the members on two models laid out each way,
    before any expensive work, and on a failure names what works instead
    (``_contract_hint``). A few calls on at most two models.

    Parameters
    ----------
    problem : Problem
    x : Tensor, shape (2, *x_shape)
        Two models, units of ``x`` (prior draws, the chains' starts).
    float64 : bool, default False
        Also evaluate in float64 (what NUTS does); else in float32 only.
    prior : bool, default False
        Also evaluate ``log_prior`` (a problem with a prior density, for the samplers that
        correct with it).

    Raises
    ------
    ConfigError
        If a member raises on a layout (the message names the member, the layout that
        fails, the one that works and the contract).
    ShapeError, DataError
        If ``forward`` returns a tensor of the wrong shape, or something that is not a
        tensor.
    """
    from ppl_cvae.problems.densities import checked_log_prior  # densities imports this module

    x = x.detach()
    members: list[tuple[str, Any, Any]] = [
        ("forward", problem.forward, lambda m: _forward_checked(problem, m))
    ]
    if prior:
        members.append(("log_prior", problem.log_prior, lambda m: checked_log_prior(problem, m)))
    dtypes = (torch.float32, torch.float64) if float64 else (torch.float32,)
    for dtype in dtypes:
        models = x.to(dtype)
        for name, member, checked in members:
            for layout in (models, models[0], models.unsqueeze(1)):
                try:
                    checked(layout)
                except ConfigError as err:
                    if err.__cause__ is None:  # the package's own error, unchanged
                        raise
                    hint = _contract_hint(member, name, layout, tuple(problem.x_shape))
                    if not hint:
                        raise
                    raise ConfigError(f"{err}{hint}") from err.__cause__


def check_batch_axes(
    problem: Problem, generator: torch.Generator | None = None, *, for_fit: bool = False
) -> None:
    """Refuse, before a fit, a problem whose ``forward`` takes one layout of models only.

    :func:`check_layouts` (float32, ``forward``) on two prior draws.

    Parameters
    ----------
    problem : Problem
    generator : torch.Generator, optional
        For the two prior draws.
    for_fit : bool, default False
        Before a fit: where ``forward`` takes the layout training uses, ``(num, *x_shape)``,
        a failure on another layout (one model, two batch axes) is logged as a warning
        instead of raised, since the fit and the amortized draws work; the corrections
        that need that layout refuse the problem when they run.

    Raises
    ------
    ConfigError
        If ``forward`` raises on a layout (see :func:`check_layouts`); with ``for_fit``, only
        if it raises on ``(num, *x_shape)``.
    ShapeError, DataError
        If ``forward`` returns a tensor of the wrong shape, or something that is not a
        tensor, for one model or two batch axes. A ``sample_prior`` that raises or returns
        the wrong thing, and a wrong ``forward`` of ``(2, *x_shape)``, are left to the
        simulator's own check, which names them with the number of pairs asked for.
    """
    # a user's code may draw from torch's global RNG: the fit's stream is left as it was
    with torch.random.fork_rng(devices=[]):
        what = f"problem {problem.name!r} sample_prior(2)"
        try:  # what simulate(num) checks itself is left to it, named with its own count
            with _problem_code(what):
                drawn = problem.sample_prior(2, generator)
        except ConfigError:
            return
        try:
            x = _event_checked(drawn, (2, *problem.x_shape), what, "(num, *x_shape)")
            _forward_checked(problem, x)
        except (ShapeError, DataError):
            return
        except ConfigError:  # forward raised: check_layouts says which layout works instead
            check_layouts(problem, x)
            raise  # not reached: check_layouts raises on the layout forward just raised on
        try:
            check_layouts(problem, x)
        except ConfigError as err:
            if not for_fit:
                raise
            logging.getLogger(__name__).warning(
                "%s. The fit and amortized draws work; --method importance, nuts and refine "
                "will refuse this problem until forward takes every layout",
                err,
            )


def describe_support(support: constraints.Constraint | None) -> str:
    """Name a declared support in one short line, for messages (``"none"`` for None).

    Its ``repr`` when that is one line of at most 120 characters; else the constraint's class
    with the shape and range of each tensor bound (an ``interval`` with bounds of a large
    ``x_shape`` would print whole tensors).

    Examples
    --------
    >>> describe_support(constraints.interval(0.0, 1.0))
    'Interval(lower_bound=0.0, upper_bound=1.0)'
    >>> describe_support(constraints.interval(torch.zeros(4, 5), torch.ones(4, 5)))[-41:]
    'upper_bound: shape (4, 5), values 1 to 1)'
    """
    if support is None:
        return "none"
    text = repr(support)
    if len(text) <= 120 and "\n" not in text:
        return text
    parts = [
        f"{name}: shape {tuple(value.shape)}, values {float(value.min()):.4g} to "
        f"{float(value.max()):.4g}"
        for name, value in vars(support).items()
        if isinstance(value, torch.Tensor) and value.numel()
    ]
    name = type(support).__name__.lstrip("_")
    return f"{name}({'; '.join(parts)})" if parts else text[:120] + "..."


FACIES_LIKELIHOODS = ("bernoulli", "categorical")
"""Likelihoods whose draws are facies codes ``0 .. K - 1`` (K = 2 for Bernoulli)."""


def _elementwise(support: constraints.Constraint) -> constraints.Constraint:
    """Return the constraint inside ``constraints.independent`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def facies_family(support: constraints.Constraint | None) -> tuple[str, int] | None:
    """Return the facies decoder whose codes fill a discrete support: ``(likelihood, K)``.

    ``constraints.boolean`` and ``integer_interval(0, 1)`` give ``("bernoulli", 2)``;
    ``integer_interval(0, K - 1)`` with scalar bounds gives ``("categorical", K)`` (codes
    ``0 .. K - 1``, one class per element, :class:`~ppl_cvae.config.ModelConfig`'s
    ``num_facies``). None for a continuous support, no support, and a discrete one that no
    facies decoder fills (integers without an upper bound, an interval not starting at 0,
    per-element bounds).

    Examples
    --------
    >>> facies_family(constraints.independent(constraints.boolean, 1))
    ('bernoulli', 2)
    >>> facies_family(constraints.integer_interval(0, 3))
    ('categorical', 4)
    >>> facies_family(constraints.positive) is None
    True
    """
    if support is None:
        return None
    base = _elementwise(support)
    if not base.is_discrete:
        return None
    if isinstance(base, type(constraints.boolean)):
        return "bernoulli", 2
    low, high = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    if isinstance(base, constraints.integer_interval) and all(
        isinstance(v, int) or (isinstance(v, torch.Tensor) and v.numel() == 1)
        for v in (low, high)
    ):
        low_i, high_i = int(cast(Any, low)), int(cast(Any, high))
        if low_i == 0 and high_i >= 1:
            return ("bernoulli", 2) if high_i == 1 else ("categorical", high_i + 1)
    return None


def _facies_words(family: tuple[str, int] | None) -> str:
    """Say what to fit for a discrete support, in flag words."""
    if family is None:
        return (
            "a facies decoder (likelihood 'bernoulli' or 'categorical', codes 0 .. K-1) on a "
            "support that holds those codes"
        )
    likelihood, classes = family
    if likelihood == "bernoulli":
        return "likelihood='bernoulli' (--likelihood bernoulli)"
    return f"likelihood='categorical' with num_facies={classes} (--likelihood categorical " \
        f"--num-facies {classes})"


def check_facies_support(
    problem: Problem, likelihood: str, num_facies: int, x_shape: Sequence[int]
) -> None:
    """Refuse a decoder whose draws the problem's declared support cannot hold.

    A discrete support (``is_discrete``: facies codes, booleans) needs a facies decoder: a
    density on ``R^n`` (Gaussian, flow) puts probability zero on it, so its fit is degenerate
    and every amortized draw is rejected. A facies decoder draws the codes ``0 .. K - 1``
    (``K = 2`` for Bernoulli, ``num_facies`` for categorical), each of which the support
    must hold at every element, else its draws are rejected.

    Parameters
    ----------
    problem : Problem
        Its :attr:`~Problem.support` (None: nothing to check).
    likelihood : str
        :class:`~ppl_cvae.config.ModelConfig`'s ``likelihood``.
    num_facies : int
        Classes of the categorical likelihood.
    x_shape : sequence of int
        Event shape of one model.

    Raises
    ------
    ConfigError
        If the support is discrete and the likelihood is not a facies one, or a facies code
        lies outside the support; the message names the support and the decoder to fit.
    """
    support = problem.support
    if support is None or not isinstance(support, constraints.Constraint):
        return
    family = facies_family(support)
    if likelihood not in FACIES_LIKELIHOODS:
        if _elementwise(support).is_discrete:
            raise ConfigError(
                f"problem {problem.name!r} declares the discrete support "
                f"{describe_support(support)}, but the {likelihood!r} likelihood is a density "
                "on R^n whose draws never land on it (a degenerate fit, every draw rejected): "
                f"fit {_facies_words(family)}"
            )
        return
    classes = 2 if likelihood == "bernoulli" else int(num_facies)
    shape = tuple(int(v) for v in x_shape)
    for code in range(classes):
        try:
            held = bool(support.check(torch.full(shape, float(code))).all())
        except Exception:  # noqa: BLE001 - a user's constraint that cannot judge the codes
            return
        if not held:
            raise ConfigError(
                f"a {likelihood} decoder draws the codes 0 .. {classes - 1}, but the support "
                f"{describe_support(support)} of problem {problem.name!r} does not hold "
                f"{code} (every such draw would be rejected): fit {_facies_words(family)}, "
                "or declare the support the codes live in"
            )


MAX_JACOBIAN_EVENT = 1024
"""Values of one event of a declared support above which :func:`support_dimension_deficit`
judges the same constraint on a smaller event (the Jacobian of ``transform_to`` holds the
square of the event's size)."""


def support_dimension_deficit(
    support: constraints.Constraint, x_shape: Sequence[int]
) -> str | None:
    """Say why a support is a set of lower dimension than the models, or None when it is not.

    A full-dimensional density on ``R^prod(x_shape)`` (every amortized family here but a
    basis decoder) puts probability zero on such a set: its draws land on it only by
    rounding. Decided on one event of the constraint (``constraints.independent`` wrappers
    unwrapped; an elementwise one, event_dim 0, is full-dimensional): symmetric matrices
    (``symmetric``, ``positive_definite``, ``positive_semidefinite``) have ``n (n + 1) / 2``
    free values of ``n^2``; otherwise the rank of the Jacobian of
    ``torch.distributions.transform_to(support)`` at a random unconstrained point (seeded)
    is compared with the event's number of values (``simplex``, ``lower_cholesky``,
    ``corr_cholesky``, ``sphere``: rank below it), for an event of more than
    :data:`MAX_JACOBIAN_EVENT` values on the same constraint with at most 4 values per
    axis. A discrete
    constraint (``is_discrete``: the codes of a facies decoder land on it exactly), one that
    ``transform_to`` does not know (a user's own), and one whose event is longer than
    ``x_shape`` are not judged (None).

    Parameters
    ----------
    support : torch.distributions.constraints.Constraint
        The declared support of one model.
    x_shape : sequence of int
        Event shape of one model.

    Returns
    -------
    str or None
        The reason in words (the event shape, its number of values and the dimension of the
        set), or None.

    Examples
    --------
    >>> support_dimension_deficit(constraints.simplex, (4,))
    'each event of shape (4,) has 4 values but the set is 3-dimensional'
    >>> support_dimension_deficit(constraints.independent(constraints.positive, 1), (4,)) is None
    True
    """
    base = _elementwise(support)
    x_shape = tuple(int(v) for v in x_shape)
    if base.is_discrete or not 0 < base.event_dim <= len(x_shape):
        return None
    event = x_shape[len(x_shape) - base.event_dim :]
    size = math.prod(event)
    if isinstance(base, type(constraints.symmetric)) and len(event) >= 2:
        n = event[-1]
        free = size // (n * n) * (n * (n + 1) // 2) if event[-2] == n else size
        return _deficit_words(event, size, free) if free < size else None
    if size <= MAX_JACOBIAN_EVENT:
        rank = _image_dimension(base, event)
        return _deficit_words(event, size, rank) if rank is not None and rank < size else None
    # a large event: the same constraint on an event of at most 4 values per axis
    small = tuple(min(v, 4) for v in event)
    dim = _image_dimension(base, small)
    if dim is None or dim >= math.prod(small):
        return None
    return (
        f"each event of shape {event} has {size} values but the set is of lower dimension "
        f"(an event of shape {small} of the same constraint: {dim}-dimensional of "
        f"{math.prod(small)})"
    )


def _image_dimension(base: constraints.Constraint, event: tuple[int, ...]) -> int | None:
    """Rank of the Jacobian of ``transform_to(base)`` onto one event (None: not known).

    At a random unconstrained point (seeded; float64): the dimension of the set the
    transform reaches, except on a set of points of measure zero.
    """
    try:
        transform = transform_to(base)
        theta = torch.randn(
            tuple(transform.inverse_shape(event)),
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float64,
        )
        jac = torch.autograd.functional.jacobian(transform, theta, vectorize=True)
        return int(torch.linalg.matrix_rank(jac.reshape(math.prod(event), -1)))
    except Exception:  # noqa: BLE001 - a constraint torch cannot map, or a user's transform
        return None


def _deficit_words(event: tuple[int, ...], size: int, dim: int) -> str:
    """``support_dimension_deficit``'s reason in words."""
    return f"each event of shape {event} has {size} values but the set is {dim}-dimensional"


def check_support_dimension(problem: Problem) -> None:
    """Refuse a declared support of lower dimension than the models (a simplex, SPD matrices).

    An amortized posterior draws ``x`` from a density on all of ``R^prod(x_shape)``: its
    draws land on such a support only by rounding (0.3 to 3% kept, by a probe of simplex and
    positive-definite supports), so the fit, its rejection sampling and its ``log_prob``
    would be meaningless (:func:`support_dimension_deficit`). A problem with a
    :meth:`~Problem.basis` is left alone: its draws lie on the basis span by construction.

    Parameters
    ----------
    problem : Problem

    Raises
    ------
    ConfigError
        If the declared support is lower-dimensional; the message names the support, why,
        and what to do (unconstrained coordinates for ``x``). If the support is not a
        ``Constraint`` (set on a problem after it was checked).
    """
    support = problem.support
    if support is not None and not isinstance(support, constraints.Constraint):
        raise ConfigError(
            f"problem {problem.name!r}: support must be a "
            f"torch.distributions.constraints.Constraint or None, got {type(support).__name__}"
        )
    if support is None or problem.basis() is not None:
        return
    why = support_dimension_deficit(support, tuple(problem.x_shape))
    if why is None:
        return
    raise ConfigError(
        f"problem {problem.name!r} declares the support {describe_support(support)}, a set "
        f"of lower dimension than its models of shape {tuple(problem.x_shape)} ({why}): an "
        "amortized posterior is a density on all of R^n, whose draws land on such a set only "
        "by rounding; write the problem in unconstrained coordinates instead and declare no "
        "support (models theta with x = biject_to(support)(theta), or "
        "transform_to(support)(theta), applied inside forward, sample_prior returning "
        "biject_to(support).inv of its draws; or a basis and coefficient_transform, "
        "Problem.parameterisation)"
    )


def check_support(
    problem: Problem, generator: torch.Generator | None = None, num: int = 64
) -> None:
    """Refuse, before a fit, a support that excludes the problem's own prior draws.

    Where :meth:`Problem.restricts_support`, ``num`` prior draws must all be
    :meth:`Problem.in_support` (a declared :attr:`~Problem.support`, else a
    :meth:`~Problem.log_prior` above ``-inf``): otherwise every amortized draw near them would
    later be rejected, or weighed zero by importance sampling.

    Parameters
    ----------
    problem : Problem
    generator : torch.Generator, optional
        For the prior draws (torch's global RNG is left as it was).
    num : int, default 64
        Prior draws checked.

    Raises
    ------
    ConfigError
        If a prior draw lies outside the support (the message names how many, the range of
        the first such draw's values and what to fix), or ``sample_prior`` raises; or the
        declared support is of lower dimension than the models
        (:func:`check_support_dimension`).
    ShapeError, DataError
        If ``sample_prior`` returns a wrong shape or not a tensor.
    """
    check_support_dimension(problem)
    if not problem.restricts_support():
        return
    with torch.random.fork_rng(devices=[]):  # the fit's stream is left as it was
        with _problem_code(f"problem {problem.name!r} sample_prior({num})"):
            x = problem.sample_prior(num, generator)
    x = _event_checked(
        x, (num, *problem.x_shape), f"problem {problem.name!r} sample_prior({num})",
        "(num, *x_shape)",
    )
    inside = problem.in_support(x)
    if bool(inside.all()):
        return
    if problem.support is not None:
        flat = x[~inside][0].reshape(-1)
        what = (
            f"its declared support {describe_support(problem.support)} (the first such draw "
            f"has values from {float(flat.min()):.4g} to {float(flat.max()):.4g})"
        )
        fix = "declare the set the prior's draws lie in (Problem.support)"
    else:
        what = "the set where its log_prior is above -inf"
        fix = "check log_prior: it must be finite wherever sample_prior draws"
    raise ConfigError(
        f"{int((~inside).sum())} of {num} prior draws of problem {problem.name!r} lie outside "
        f"{what}: {fix}"
    )


def _forward_checked(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """``problem.forward(x)``, shape ``(*batch, *y_shape)``, checked (see ``checked_forward``)."""
    k = len(problem.x_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != tuple(problem.x_shape):
        raise ShapeError(
            f"x must have shape (*batch, {', '.join(map(str, problem.x_shape))}), got "
            f"{tuple(x.shape)}"
        )
    what = f"problem {problem.name!r} forward"
    detail = f" for x of shape {tuple(x.shape)}"
    with _problem_code(what, detail):
        value = problem.forward(x)
    expected = (*x.shape[: x.dim() - k], *problem.y_shape)
    return _event_checked(value, expected, what, f"(*batch, *y_shape){detail}")


class Problem(abc.ABC):
    """Base class of an inverse problem the CVAE can be trained on.

    Subclass it, set the required members (as class attributes or in ``__init__``) and
    implement :meth:`sample_prior` and :meth:`forward`; every optional member has a default
    here. A duck-typed object with the required members still works wherever a problem is
    expected: :func:`check_problem` and :func:`as_problem` wrap it in a
    :class:`ProblemAdapter`.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"two_birds"``. Required.
    x_shape, y_shape : tuple of int
        Event shapes of one subsurface model ``x`` and one observation ``y``. Required.
    x_dims, y_dims : tuple of str
        One name per axis of ``x_shape`` / ``y_shape`` (ArviZ dims). Required.
    coords : Mapping[str, Sequence]
        Coordinate values for the dims that have them (ArviZ coords). Required.
    noise_std : float
        Standard deviation of the additive Gaussian observation noise, in the units of ``y``;
        ``0.0`` for noise-free problems. The physics-consistency term and the posterior
        predictive use it (a noise-free problem names a nominal misfit scale instead, see
        :attr:`misfit_std`). Required.
    misfit_std : float
        Scale, in units of ``y``, by which the data misfit ``F(x) - y`` is divided in the
        physics-consistency term; equals ``noise_std`` when that is positive. Required.
    units : Mapping[str, str], the ``"y"`` entry optionally a Mapping[str, str]
        Default ``{}``. Unit strings for ``"x"``, ``"y"``, each named dim and each extra
        coordinate (e.g. ``{"x": "s/m", "y": "s", "depth": "m"}``); they become ``units``
        attributes in the ArviZ output. Data that stack several physical quantities along
        one dim (MT apparent resistivity and phase along ``component``) give ``"y"`` as a
        mapping from each coordinate value of that dim to its unit, e.g.
        ``{"log10_rho_a": "log10(ohm m)", "phase": "deg"}``: ``y`` stays one variable, the
        file gets a ``y_units`` coordinate along that dim and the ``units`` attribute of ``y``
        lists the units joined by ``" | "`` (see :func:`data_units`, :func:`units_of`);
        ``"x"`` may be such a mapping too, over the coordinate values of one of ``x_dims``
        (parameters in different units: ``{"a": "mV", "b": "1/s"}``; coordinate ``x_units``). A
        unit written ``log10(U)`` says the values are decimal logarithms of a quantity in
        ``U`` (plots show ``U`` on a log axis).
    extra_coords : Mapping[str, tuple[str, Sequence]]
        Default ``{}``. Coordinates that are not dims, ``name -> (dim, values)`` with one
        value per entry of ``dim``, e.g. the source and receiver depth of every ray of a
        crosshole survey (``{"source_depth": ("ray", [...]), ...}``). They become non-index
        coordinates of that dim in the ArviZ output; their units go in ``units`` under their
        name.
    coord_attrs : Mapping[str, Mapping[str, str]]
        Default ``{}``. Extra attributes of a coordinate. The uncertainty report reads
        ``{"cell_position": "top", "half_space": "last"}`` on a ``depth`` coordinate as a
        layered earth (coordinates are layer tops, the last entry is the half-space below)
        and draws it as a staircase.
    noise_cov : Tensor, shape (m, m), or None
        Default None. Full covariance of the Gaussian noise on the flattened ``y``
        (``m = prod(y_shape)``), in units of ``y`` squared; overrides ``noise_std`` (which
        is then a scalar summary) in noise draws, chi-squared misfits, likelihoods and
        refinement (see :attr:`noise`).
    has_prior_density : bool
        Default False. Whether :meth:`log_prior` is defined; False for a prior given by its
        sampler only (a simulator-only prior such as the channel facies of ``crosshole``).
    support : torch.distributions.constraints.Constraint or None
        Default None. The set the prior's draws lie in, as a constraint on one model ``x``
        in the units of ``x`` (elementwise ones such as ``constraints.unit_interval``,
        ``constraints.positive`` or ``constraints.interval(low, high)`` with bounds of shape
        ``x_shape`` apply to every value; others check a whole event). Amortized draws outside
        it are rejected (:meth:`in_support`, :func:`inference.posterior.draw_posterior`), as
        sbi rejects draws outside the prior's support. None: the support is what the
        problem's own :meth:`in_support` accepts where it overrides it, else the set where
        :meth:`log_prior` is above ``-inf`` for a problem with a prior density and no
        :meth:`basis`, everything otherwise (:meth:`restricts_support`).
        Declare ``constraints.real`` to skip the check where the support is all of ``R^n``
        and the prior density is costly (crosshole and gravity Gaussian random fields).
    nuts_preconditioner : {"amortized", "prior", "prior-amortized"}
        Default ``"amortized"``. The coordinates ``ppl-cvae sample --method nuts`` runs NUTS in
        when ``--preconditioner`` is not given (:func:`inference.mcmc.nuts_sample`,
        ``precondition``): ``"prior"`` and ``"prior-amortized"`` need
        :meth:`gaussian_prior`. mt1d's logit-normal prior declares ``"prior-amortized"``
        (3.7 to 6.3 times the effective draws per evaluation; docs/measurements.md, "Correction on
        mt1d").

    Notes
    -----
    Generative story: ``x ~ p(x)`` (:meth:`sample_prior`), ``y = F(x) + eps`` with
    ``eps ~ N(0, C_e)`` on the flattened ``y`` (:meth:`forward`, :attr:`noise`);
    :meth:`log_prior` and :meth:`log_likelihood` evaluate ``log p(x)`` and
    ``log N(y; F(x), C_e)`` where these densities exist.

    Examples
    --------
    A user problem that overrides nothing optional:

    >>> class Doubling(Problem):
    ...     name, x_shape, y_shape = "doubling", (2,), (2,)
    ...     x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    ...     noise_std = misfit_std = 0.1
    ...     def sample_prior(self, num, generator=None):
    ...         return torch.randn(num, 2, generator=generator)
    ...     def forward(self, x):
    ...         return 2 * x
    >>> p = Doubling()
    >>> x, y = p.simulate(3, torch.Generator().manual_seed(0))
    >>> tuple(y.shape), p.units, p.linear_gaussian(), p.has_prior_density
    ((3, 2), mappingproxy({}), None, False)
    >>> tuple(p.log_likelihood(x, y).shape)
    (3,)
    """

    # required members: class attributes or instance attributes of a subclass
    name: str
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    x_dims: tuple[str, ...]
    y_dims: tuple[str, ...]
    coords: Mapping[str, Sequence[Any]]
    noise_std: float
    misfit_std: float

    # optional members with their defaults (read-only mappings: never shared mutable state)
    units: Mapping[str, Any] = _EMPTY
    extra_coords: Mapping[str, tuple[str, Sequence[Any]]] = _EMPTY
    coord_attrs: Mapping[str, Mapping[str, str]] = _EMPTY
    noise_cov: torch.Tensor | None = None
    has_prior_density: bool = False
    support: constraints.Constraint | None = None
    nuts_preconditioner: str = "amortized"

    # ------------------------------------------------------------------ required methods
    @abc.abstractmethod
    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` subsurface models from the prior; shape ``(num, *x_shape)``."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the differentiable forward operator ``F`` to ``x`` ``(*batch, *x_shape)``.

        Returns noise-free data of shape ``(*batch, *y_shape)``. ``batch`` is any number of
        axes, none included (NUTS evaluates one model of shape ``x_shape``, importance
        sampling ``(num, M, *x_shape)``). ``x`` is float32 in training, importance sampling
        and refinement and float64 under NUTS: compute in the dtype of ``x`` (e.g.
        ``self.matrix.to(x)``); float32 or float64 data are both accepted.
        """

    # ------------------------------------------------------------------ defaults
    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return prior draws and noisy data; shapes ``(num, *x_shape)`` and ``(num, *y_shape)``.

        Default: ``x = sample_prior(num, generator)``, ``y = F(x) + eps`` with
        ``eps = noise.sample((num,), generator)`` (no noise term for a noise-free problem),
        drawn from ``generator`` in that order.

        Raises
        ------
        ShapeError
            If ``sample_prior`` returns a tensor of a shape other than ``(num, *x_shape)``, or
            ``forward`` one of a shape other than ``(num, *y_shape)`` (a broadcast with the
            noise would hide a wrong shape).
        DataError
            If ``sample_prior`` or ``forward`` returns something that is not a torch tensor.
        """
        x = _event_checked(
            self.sample_prior(num, generator), (num, *self.x_shape),
            f"problem {self.name!r} sample_prior({num})", "(num, *x_shape)",
        )
        y = _event_checked(
            self.forward(x), (num, *self.y_shape),
            f"problem {self.name!r} forward", f"(num, *y_shape) for x of shape {tuple(x.shape)}",
        )
        noise = self.noise
        if noise.is_zero:
            return x, y
        return x, y + noise.sample((num,), generator)

    def to(self, device: torch.device | str) -> Problem:
        """Move the problem's tensors (forward operator, noise, prior) to ``device``; return self.

        Default: :func:`~ppl_cvae.device.move_tensors` on the instance's attributes. A problem
        whose tensors live elsewhere (computed on each call, in a global) overrides it. Its
        :meth:`forward`, :meth:`log_likelihood` and :meth:`log_prior` then take and return
        tensors on ``device``. Simulation stays on the CPU (see
        :func:`~ppl_cvae.device.problem_on`).
        """
        return move_tensors(self, device)

    def spec(self) -> dict[str, Any]:
        """Return the JSON-serialisable keyword arguments that rebuild this problem, plus its name.

        Default: refuse; a checkpoint then stores no problem and is loaded with the problem
        passed again (or rebuilt from the ``--problem package.module:factory`` reference it
        was fitted with).

        Raises
        ------
        ConfigError
            Always, in this default.
        """
        raise ConfigError(
            f"problem {self.name!r} ({type(self).__name__}) defines no spec(), so it cannot be "
            "stored by name; rebuild it with --problem package.module:factory or pass it "
            "again when loading"
        )

    def linear_gaussian(self) -> LinearGaussianParts | None:
        """Return the pieces of the closed-form posterior of a linear-Gaussian problem.

        Default None: no closed form. A linear ``F`` with a Gaussian prior returns
        :class:`LinearGaussianParts` (:func:`inference.exact.exact_posterior`).
        """
        return None

    def recommended_settings(self) -> Overrides | Mapping[str, Any]:
        """Return :class:`~ppl_cvae.config.Overrides` of the config defaults for this problem.

        Default: no overrides, and then :func:`~ppl_cvae.train.resolve_settings` gives the
        problem what a data file of its ``num_train`` simulations would get
        (:func:`~ppl_cvae.train.defaults.data_settings`: a conditional spline flow on ``x`` for
        at most 32 values of ``x``, else a CVAE with a linear path from ``y`` and the linear
        whitening of ``x`` given ``y``; epochs and batch size from the number of pairs). A
        ``{"model": {...}, "train": {...}}`` dict is accepted too; the user's settings are laid
        on top.
        """
        return Overrides()

    def derived(self, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Return physical quantities computed from ``x`` ``(*batch, *x_shape)``; default ``{}``.

        Each value has the shape of ``x`` (one value per element of ``x``, on the same dims),
        e.g. the slowness in s/m of a facies field (``{"slowness": ...}``). Posterior files
        carry them beside ``x`` (a variable of that name in ``posterior``, the truth's as
        ``<name>_true`` in ``constant_data``), with the unit ``units[name]``; names must be
        Python identifiers other than ``x``, ``y``, ``z`` and the dims and coordinates.
        Read with :func:`derived_quantities`, which checks what it returns.
        """
        return {}

    def basis(self) -> torch.Tensor | None:
        """Return a linear basis ``B`` of the models, ``vec(x) = B c``; default None (no basis).

        A problem whose models lie in a ``k``-dimensional linear family returns ``B`` of
        shape ``(prod(x_shape), k)``; a CVAE built with ``ModelConfig.basis_dim = k`` then
        decodes coefficients (see :meth:`parameterisation`).
        """
        return None

    def coefficient_transform(self) -> Transform | None:
        """Return the bijection from ``R^k`` onto the valid basis coefficients; default None."""
        return None

    def parameterisation(self) -> Parameterisation | None:
        """Return the models' parameterisation ``x = B T(theta)``, or None without a basis.

        Built from :meth:`basis`, :meth:`coefficient_transform` and (when
        :attr:`has_prior_density`) :meth:`log_prior`; shared by the basis decoder, the
        refinement and samplers on ``theta``.

        Returns
        -------
        Parameterisation or None
        """
        basis = self.basis()
        if basis is None:
            return None
        return Parameterisation(
            basis,
            self.x_shape,
            self.coefficient_transform(),
            log_prior_x=self.log_prior if self.has_prior_density else None,
            no_density=self._no_density_message("the density of its basis coefficients"),
        )

    def sampler_parameterisation(self) -> Parameterisation | None:
        """Return the coordinates MCMC samples on; None for the flattened ``x`` itself.

        :meth:`parameterisation` when the problem has one; else, for a declared elementwise
        :attr:`support` other than ``R^n``, the unconstrained coordinates
        ``x = biject_to(support)(theta)``
        (:func:`~ppl_cvae.problems.parameterisation.support_parameterisation`), as Pyro's NUTS
        samples a constrained site: chains never step outside the support, where the
        potential would be infinite.

        Returns
        -------
        Parameterisation or None
        """
        par = self.parameterisation()
        if par is not None or self.support is None:
            return par
        from ppl_cvae.problems.parameterisation import support_parameterisation

        return support_parameterisation(
            self.support,
            self.x_shape,
            self.log_prior if self.has_prior_density else None,
            no_density=self._no_density_message(
                "e.g. -sum(log(high - low)) inside interval(low, high) for a uniform prior"
            ),
        )

    def _no_density_message(self, example: str) -> str:
        """Say that :meth:`log_prior` is missing where a sampler needs the prior's density."""
        declared = (
            f" declares the support {describe_support(self.support)} but"
            if self.support is not None
            else ""
        )
        return (
            f"problem {self.name!r} ({type(self).__name__}){declared} has no prior density: "
            "its log_prior is not defined (has_prior_density is False), and NUTS, importance "
            "sampling and the posterior file's lp need log_prior + log_likelihood (a support "
            "says where the prior is not zero, not its density); define the problem's "
            f"log_prior ({example}) and set has_prior_density = True, or use the amortized "
            "draws without a correction (--method amortized)"
        )

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return the prior log density of models ``x`` ``(*batch, *x_shape)``; shape ``(*batch,)``.

        In nats, float64, with respect to Lebesgue measure on ``R^prod(x_shape)``; for a
        problem with a :meth:`basis` (models on a ``k``-dimensional linear family) with
        respect to Lebesgue measure on the coefficients ``c = B^+ vec(x)`` in ``R^k`` instead
        (see :class:`~ppl_cvae.problems.parameterisation.Parameterisation`). Only defined when
        :attr:`has_prior_density`.

        Raises
        ------
        NoPriorDensityError
            In this default: the prior is defined by its sampler only.
        """
        if self.has_prior_density:  # declared, but the method was not written
            raise NoPriorDensityError(
                f"problem {self.name!r} ({type(self).__name__}) sets has_prior_density = True "
                "but defines no log_prior(x): write log_prior (the prior log density in nats, "
                "shape (*batch,)) or set has_prior_density = False"
            )
        raise NoPriorDensityError(
            f"problem {self.name!r} ({type(self).__name__}) has no prior density: its prior is "
            "defined by its sampler only (has_prior_density is False); likelihood-free methods "
            "(the amortized posterior, SBC) still apply"
        )

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        """Return whether each model lies in the prior's support; shape ``(*batch,)``, bool.

        Checks :attr:`support` when it is declared (every value of an elementwise constraint,
        the whole event of another; each model on its own, though torch's
        ``constraints.positive_definite`` checks only symmetry once a model of the batch is
        not symmetric); without it, a problem with a prior density counts a model in the
        support where :meth:`log_prior` is not ``-inf``, as sbi's ``within_support`` does for
        a prior without a declared support (a NaN, a fault of the density rather than a zero,
        counts in: the draw is kept and the posterior file lists its non-finite ``lp``); a
        problem without either counts every model in.

        Parameters
        ----------
        x : Tensor, shape (*batch, *x_shape)
            Models, in the units of ``x``.

        Raises
        ------
        ShapeError
            If ``x`` does not end in ``x_shape``.
        ConfigError
            If :meth:`log_prior` or the declared constraint's ``check`` raises (named).
        DataError
            As :func:`~ppl_cvae.problems.densities.checked_log_prior`.

        Examples
        --------
        >>> from torch.distributions import constraints
        >>> from ppl_cvae.problems import LinearGaussian
        >>> p = LinearGaussian()
        >>> p.support = constraints.positive
        >>> p.in_support(torch.tensor([[1.0, 2.0], [1.0, -2.0]])).tolist()
        [True, False]
        """
        from ppl_cvae.problems.densities import _event_batch, checked_log_prior

        batch = _event_batch(x, tuple(self.x_shape), "x")
        support = self.support
        if support is not None:
            what = f"problem {self.name!r} support.check"
            with _problem_code(what, f" for x of shape {tuple(x.shape)}"):
                ok = torch.as_tensor(support.check(x), dtype=torch.bool)
            if ok.dim() < len(batch) or tuple(ok.shape[: len(batch)]) != batch:
                raise ShapeError(
                    f"{what} returned shape {tuple(ok.shape)} for x of shape {tuple(x.shape)}; "
                    f"expected {batch} followed by (part of) x_shape {tuple(self.x_shape)} (a "
                    "constraint's bounds must broadcast against one model)"
                )
            ok = ok.reshape(*batch, -1).all(-1)
            # torch's matrix constraints (positive_definite, positive_semidefinite, symmetric)
            # check only a necessary condition of every model once one model of the batch
            # fails it: the models that passed are checked again, on their own, until final
            flat, rows = ok.reshape(-1), x.reshape(-1, *self.x_shape)
            passed = flat.nonzero().squeeze(-1)
            while 0 < len(passed) < len(flat):
                again = torch.as_tensor(support.check(rows[passed]), dtype=torch.bool)
                again = again.reshape(len(passed), -1).all(-1)
                if bool(again.all()):
                    break
                flat[passed[~again]] = False
                passed = passed[again]
            return flat.reshape(batch)
        if self.has_prior_density:  # NaN is a fault of the density, not a zero: kept
            return checked_log_prior(self, x) != -math.inf
        return torch.ones(batch, dtype=torch.bool)

    def restricts_support(self) -> bool:
        """Return whether :meth:`in_support` can reject a model (False for ``R^n``).

        True for a declared :attr:`support` other than ``constraints.real`` (or its
        ``real_vector`` / ``independent`` forms), for an undeclared one of a problem with a
        prior density and no :meth:`basis`, and for a problem that checks models with its own
        :meth:`in_support` (an override, or a duck-typed problem's method) and declares no
        support; False otherwise. Samplers skip the check when it is False. A problem with a
        basis keeps its models valid through :meth:`coefficient_transform` (the basis
        decoder's draws are valid by construction) and gives its prior density on the
        coefficients, not on ``x``, so only a declared support restricts it.
        """
        support = None if self.support is None else _elementwise(self.support)
        if support is None:
            if self._has_own_in_support():
                return True
            return bool(self.has_prior_density) and self.basis() is None
        return not (support is constraints.real or support is constraints.real_vector)

    def declares_support(self) -> bool:
        """Return whether :attr:`support` is declared and other than ``R^n``.

        The samplers that must never evaluate the problem outside its support (importance
        weights, NUTS's potential and starts) guard on a declared one only: an undeclared
        support is known through :meth:`log_prior`, which they evaluate first (importance
        sampling calls ``log_likelihood`` only where it is above ``-inf``). Refinement, which
        evaluates no prior, guards on :meth:`restricts_support`.
        """
        return self.support is not None and self.restricts_support()

    def _has_own_in_support(self) -> bool:
        """Return whether a subclass checks models itself (overrides :meth:`in_support`)."""
        return type(self).in_support is not Problem.in_support

    def gaussian_prior(self) -> MultivariateNormal | None:
        """Return the prior of the sampler's coordinates when it is Gaussian, else None.

        The coordinates are those NUTS runs on (:func:`inference.mcmc.nuts_sample`): the
        unconstrained ``theta`` of :meth:`parameterisation` when the problem has one, else the
        flattened ``x`` (C order). A Gaussian prior there, ``N(m, L L^T)``, lets the sampler
        whiten by its Cholesky factor ``L`` (``precondition="prior"``) and evaluate the prior
        as ``-|L^-1 (theta - m)|^2 / 2`` plus a constant.

        Returns
        -------
        torch.distributions.MultivariateNormal or None
            Event shape ``(k,)`` (``k`` = ``parameterisation().dim``, else ``prod(x_shape)``),
            float64, in the units of the coordinates; its ``log_prob`` equals
            :meth:`log_prior` (of ``theta`` through the parameterisation's change of
            variables, :meth:`Parameterisation.log_prior
            <ppl_cvae.problems.parameterisation.Parameterisation.log_prior>`). Default: the
            parameterisation's ``gaussian_prior`` when there is one (mt1d: the latent field
            of its logit-normal prior); else, without a parameterisation, the prior of
            :meth:`linear_gaussian` (crosshole and gravity with a Gaussian random field,
            ``linear_gaussian``); else None.

        Examples
        --------
        >>> from ppl_cvae.problems import make_problem
        >>> tuple(make_problem("mt1d").gaussian_prior().event_shape)
        (32,)
        >>> make_problem("two_birds").gaussian_prior() is None
        True
        """
        par = self.parameterisation()
        if par is not None:
            return par.gaussian_prior
        parts = self.linear_gaussian()
        if parts is None:
            return None
        cov = parts.prior_cov.to(torch.float64)
        return MultivariateNormal(
            parts.prior_mean.to(torch.float64).reshape(-1),
            scale_tril=torch.linalg.cholesky(cov),
            validate_args=False,
        )

    # ------------------------------------------------------------------ noise and likelihood
    @property
    def noise(self) -> GaussianNoise:
        """The observation noise model: ``N(0, noise_cov)``, else ``N(0, noise_std^2 I)``.

        Built from :attr:`noise_cov` and :attr:`noise_std` and kept while both stay the same
        (the same ``noise_cov`` tensor object and the same ``noise_std``; shape ``y_shape``),
        so that its factorisation (:meth:`GaussianNoise.cholesky
        <ppl_cvae.problems.noise.GaussianNoise.cholesky>`) is computed once, not on every
        :meth:`log_likelihood` (NUTS evaluates it tens of thousands of times). Assigning
        another ``noise_cov`` or ``noise_std``, or editing ``noise_cov`` in place (seen through
        the tensor's version counter), takes effect at the next access. Zero for a noise-free
        problem (:attr:`GaussianNoise.is_zero <ppl_cvae.problems.noise.GaussianNoise.is_zero>`).
        """
        std, cov, y_shape = float(self.noise_std), self.noise_cov, tuple(self.y_shape)
        # torch counts in-place edits of a tensor in its _version
        version = cov._version if isinstance(cov, torch.Tensor) else None
        cached = self.__dict__.get("_noise_cache")
        if cached is not None:
            key_std, key_cov, key_version, key_shape, noise = cached
            if (
                key_std == std
                and key_cov is cov
                and key_version == version
                and key_shape == y_shape
            ):
                return cast("GaussianNoise", noise)
        noise = GaussianNoise(y_shape, std=std, cov=cov)
        # object.__setattr__: a ProblemAdapter would forward the attribute to what it wraps
        object.__setattr__(self, "_noise_cache", (std, cov, version, y_shape, noise))
        return noise

    @property
    def misfit_noise(self) -> GaussianNoise:
        """The noise model that whitens data misfits (chi-squared, refinement).

        :attr:`noise` when the problem has a :attr:`noise_cov`; else white noise of
        :attr:`misfit_std` (equal to ``noise_std`` for a noisy problem, a nominal scale for a
        noise-free one).
        """
        if self.noise_cov is not None:
            return self.noise
        return GaussianNoise(tuple(self.y_shape), std=float(self.misfit_std))

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return ``log N(y; F(x), C_e)`` in nats.

        Parameters
        ----------
        x : Tensor, shape (*batch_x, *x_shape)
            Models, in the units of ``x``.
        y : Tensor, shape (*batch_y, *y_shape)
            Observations, in the units of ``y``; ``batch_x`` and ``batch_y`` broadcast (e.g.
            draws ``(S, M, *x_shape)`` against observations ``(M, *y_shape)``).

        Returns
        -------
        Tensor, shape (*batch,)
            With ``batch`` the broadcast of ``batch_x`` and ``batch_y``; float64, density
            with respect to Lebesgue measure on ``R^m`` (``m = prod(y_shape)``);
            differentiable in ``x``.

        Raises
        ------
        ShapeError
            If ``x`` or ``y`` does not end in its event shape, or ``forward`` returns a tensor
            of a shape other than ``(*batch_x, *y_shape)``.
        DataError
            If ``forward`` returns something that is not a torch tensor.
        ConfigError
            If ``forward`` raises or calls ``sys.exit`` (the message names ``forward`` and the
            original exception).
        NoLikelihoodError
            If the problem is noise-free (``noise_std = 0`` and no ``noise_cov``): ``y = F(x)``
            has no density.

        Notes
        -----
        ``-0.5 |L^-1 (y - F(x))|^2 - sum_i log L_ii - (m / 2) log(2 pi)`` with ``L L^T = C_e``
        (:meth:`GaussianNoise.log_prob <ppl_cvae.problems.noise.GaussianNoise.log_prob>`;
        Tarantola 2005, eq. 3.46).
        """
        return self._noise_for_likelihood().log_prob(self._residual(x, y))

    def log_likelihood_pointwise(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return each datum's log-likelihood given the other data, ``log p(y_i | y_-i, x)``.

        Parameters
        ----------
        x, y : Tensor
            As in :meth:`log_likelihood`.

        Returns
        -------
        Tensor, shape (*batch, *y_shape)
            Per-datum terms in nats, float64 (what ArviZ's ``log_likelihood`` group holds for
            ``loo``). For independent noise they are ``log N(y_i; F(x)_i, sigma_i^2)`` and
            sum over the event axes to :meth:`log_likelihood`. For correlated noise
            (a :attr:`noise_cov` with off-diagonal terms) they are the leave-one-out
            conditional densities of Buerkner, Gabry and Vehtari (2021) and do **not** sum to
            :meth:`log_likelihood`, which stays the joint ``log N(y; F(x), C_e)``.

        Raises
        ------
        ShapeError
            If ``x`` or ``y`` does not end in its event shape, or ``forward`` returns a tensor
            of another shape.
        DataError
            If ``forward`` returns something that is not a torch tensor.
        ConfigError
            If ``forward`` raises or calls ``sys.exit``.
        NoLikelihoodError
            If the problem is noise-free (``y = F(x)`` has no density).

        Notes
        -----
        With ``Q = C_e^-1`` on the flattened ``y`` (C order) and ``r = y - F(x)``:
        ``log p(y_i | y_-i, x) = -log(2 pi) / 2 + log(Q_ii) / 2 - (Q r)_i^2 / (2 Q_ii)``
        (:meth:`GaussianNoise.log_prob_pointwise
        <ppl_cvae.problems.noise.GaussianNoise.log_prob_pointwise>`; two triangular solves
        with the cached Cholesky factor per draw, ``diag(Q)`` computed once).

        References
        ----------
        Buerkner, P.-C., Gabry, J. and Vehtari, A. (2021). Efficient leave-one-out
        cross-validation for Bayesian non-factorized normal and Student-t models.
        Computational Statistics 36, 1243-1261. doi:10.1007/s00180-020-01045-4.
        """
        return self._noise_for_likelihood().log_prob_pointwise(self._residual(x, y))

    def _noise_for_likelihood(self) -> GaussianNoise:
        noise = self.noise
        if noise.is_zero:
            raise NoLikelihoodError(
                f"problem {self.name!r} is noise-free (noise_std = 0, no noise_cov): y = F(x) "
                "exactly, so the likelihood has no density; its misfit_std "
                f"({self.misfit_std}) is a nominal scale for misfits, not a noise model"
            )
        return noise

    def _residual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # NumPy arrays and lists as the rest of the API takes them (a float dtype is kept)
        x = x if isinstance(x, torch.Tensor) else as_real_tensor(x, "x", dtype=None)
        y = y if isinstance(y, torch.Tensor) else as_real_tensor(y, "y", dtype=None)
        k = len(self.y_shape)
        if y.dim() < k or tuple(y.shape[y.dim() - k :]) != tuple(self.y_shape):
            raise ShapeError(
                f"y must have shape (*batch, {', '.join(map(str, self.y_shape))}), got "
                f"{tuple(y.shape)}"
            )
        data = _forward_checked(self, x)  # the forward operator that fails is named
        return y.to(torch.float64) - data.to(torch.float64)


NUTS_PRECONDITIONERS: tuple[str, ...] = ("amortized", "prior", "prior-amortized")
"""The values of :attr:`Problem.nuts_preconditioner` (``ppl-cvae sample --preconditioner``)."""

_MOVED: dict[str, str] = {
    "ProblemAdapter": "ppl_cvae.problems.adapter",
    "as_problem": "ppl_cvae.problems.adapter",
    "check_problem": "ppl_cvae.problems.adapter",
    "REGISTRY": "ppl_cvae.problems.registry",
    "make_problem": "ppl_cvae.problems.registry",
    "rebuild_problem": "ppl_cvae.problems.registry",
    "register_problem": "ppl_cvae.problems.registry",
    "resolve_problem_factory": "ppl_cvae.problems.registry",
    "linear_gaussian_parts": "ppl_cvae.problems.metadata",
    "units_of": "ppl_cvae.problems.metadata",
    "data_units": "ppl_cvae.problems.metadata",
    "derived_quantities": "ppl_cvae.problems.metadata",
    "extra_coords_of": "ppl_cvae.problems.metadata",
    "coord_attrs_of": "ppl_cvae.problems.metadata",
    "noise_covariance": "ppl_cvae.problems.densities",
    "noise_scale": "ppl_cvae.problems.densities",
    "sample_noise": "ppl_cvae.problems.densities",
    "whiten": "ppl_cvae.problems.densities",
    "checked_log_prior": "ppl_cvae.problems.densities",
    "checked_log_likelihood": "ppl_cvae.problems.densities",
}
"""The names that moved out of this module, and their modules (all still importable here)."""


def __getattr__(name: str) -> Any:
    """Return a name that moved to a sibling module (:data:`_MOVED`), importing it then."""
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
