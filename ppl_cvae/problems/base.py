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
"""

from __future__ import annotations

import abc
import importlib
import inspect
import keyword
import math
import os
import reprlib
import site
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, cast

import torch
from torch.distributions import MultivariateNormal, Transform

from ppl_cvae.config import Overrides
from ppl_cvae.device import move_tensors
from ppl_cvae.errors import (
    ConfigError,
    NoLikelihoodError,
    NoPriorDensityError,
    PplCvaeError,
    ShapeError,
    UnknownProblemError,
    no_exit,
)
from ppl_cvae.problems.noise import GaussianNoise
from ppl_cvae.problems.parameterisation import Parameterisation

__all__ = [
    "LinearGaussianParts",
    "Problem",
    "ProblemAdapter",
    "REGISTRY",
    "as_problem",
    "check_problem",
    "checked_log_likelihood",
    "checked_log_prior",
    "linear_gaussian_parts",
    "make_problem",
    "noise_covariance",
    "noise_scale",
    "rebuild_problem",
    "register_problem",
    "resolve_problem_factory",
    "sample_noise",
    "coord_attrs_of",
    "data_units",
    "derived_quantities",
    "extra_coords_of",
    "units_of",
    "whiten",
]


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


_EMPTY: Mapping[str, Any] = MappingProxyType({})


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
        lists the units joined by ``" | "`` (see :func:`data_units`, :func:`units_of`). A
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
    nuts_preconditioner : {"amortized", "prior", "prior-amortized"}
        Default ``"amortized"``. The coordinates ``ppl-cvae sample --method nuts`` runs NUTS in
        when ``--preconditioner`` is not given (:func:`inference.mcmc.nuts_sample`,
        ``precondition``): ``"prior"`` and ``"prior-amortized"`` need
        :meth:`gaussian_prior`. mt1d's logit-normal prior declares ``"prior-amortized"``
        (3.7 to 6.3 times the effective draws per evaluation; README, "Correction on mt1d").

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
    nuts_preconditioner: str = "amortized"

    # ------------------------------------------------------------------ required methods
    @abc.abstractmethod
    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` subsurface models from the prior; shape ``(num, *x_shape)``."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the differentiable forward operator ``F`` to ``x`` ``(*batch, *x_shape)``.

        Returns noise-free data of shape ``(*batch, *y_shape)``.
        """

    # ------------------------------------------------------------------ defaults
    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return prior draws and noisy data; shapes ``(num, *x_shape)`` and ``(num, *y_shape)``.

        Default: ``x = sample_prior(num, generator)``, ``y = F(x) + eps`` with
        ``eps = noise.sample((num,), generator)`` (no noise term for a noise-free problem),
        drawn from ``generator`` in that order.
        """
        x = self.sample_prior(num, generator)
        y = self.forward(x)
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

        Default: no overrides. A ``{"model": {...}, "train": {...}}`` dict is accepted too;
        :func:`~ppl_cvae.train.resolve_settings` lays the user's settings on top.
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
        raise NoPriorDensityError(
            f"problem {self.name!r} ({type(self).__name__}) has no prior density: its prior is "
            "defined by its sampler only (has_prior_density is False); likelihood-free methods "
            "(the amortized posterior, SBC) still apply"
        )

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
            If ``x`` or ``y`` does not end in its event shape.
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
        """Return the log-likelihood of each datum, ``log N(y_i; F(x)_i, sigma_i^2)``.

        Parameters
        ----------
        x, y : Tensor
            As in :meth:`log_likelihood`.

        Returns
        -------
        Tensor, shape (*batch, *y_shape)
            Per-datum terms in nats, float64, summing over the event axes to
            :meth:`log_likelihood` (what ArviZ's ``log_likelihood`` group holds for ``loo``).

        Raises
        ------
        ShapeError
            If ``x`` or ``y`` does not end in its event shape.
        NoLikelihoodError
            If the problem is noise-free, or its noise covariance has off-diagonal terms (the
            likelihood then has no per-datum factorisation; see
            :meth:`GaussianNoise.log_prob_pointwise
            <ppl_cvae.problems.noise.GaussianNoise.log_prob_pointwise>`).
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
        for name, value, shape in (("x", x, self.x_shape), ("y", y, self.y_shape)):
            k = len(shape)
            if value.dim() < k or tuple(value.shape[value.dim() - k :]) != tuple(shape):
                raise ShapeError(
                    f"{name} must have shape (*batch, {', '.join(map(str, shape))}), got "
                    f"{tuple(value.shape)}"
                )
        return y.to(torch.float64) - self.forward(x).to(torch.float64)


class ProblemAdapter(Problem):
    """A duck-typed problem seen through :class:`Problem`.

    Wraps an object that has the required members of a problem (checked by
    :func:`check_problem`) but does not subclass :class:`Problem`: every member it has is
    read from it, every optional one it lacks gets the default of :class:`Problem`. Other
    attributes are read from and written to the wrapped object, so the adapter behaves like
    it.

    Parameters
    ----------
    wrapped : object
        The duck-typed problem.

    Examples
    --------
    >>> class Duck:
    ...     name, x_shape, y_shape = "duck", (1,), (1,)
    ...     x_dims, y_dims, coords = ("p",), ("d",), {}
    ...     noise_std = misfit_std = 1.0
    ...     scale = 3.0
    ...     def sample_prior(self, num, generator=None):
    ...         return torch.zeros(num, 1)
    ...     def forward(self, x):
    ...         return self.scale * x
    ...     simulate = spec = None
    >>> p = ProblemAdapter(Duck())
    >>> p.scale, p.units, float(p.forward(torch.ones(1)))
    (3.0, {}, 3.0)
    """

    wrapped: Any  # the duck-typed problem

    def __init__(self, wrapped: object) -> None:
        object.__setattr__(self, "wrapped", wrapped)

    def __getattr__(self, name: str) -> Any:
        # only reached for what the class does not define: the required data members and
        # the wrapped object's own extras
        try:
            wrapped = object.__getattribute__(self, "wrapped")
        except AttributeError:
            raise AttributeError(name) from None
        return getattr(wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "wrapped" or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            setattr(self.wrapped, name, value)

    def __repr__(self) -> str:
        return repr(self.wrapped)

    def to(self, device: torch.device | str) -> Problem:
        """Move the wrapped problem's tensors to ``device`` (its own ``to`` when it has one)."""
        own = getattr(self.wrapped, "to", None)
        if callable(own):
            moved = own(device)
            if moved is not None:  # torch-style: the moved object is returned
                object.__setattr__(self, "wrapped", moved)
        else:
            move_tensors(self.wrapped, device)
        return self

    def _optional(self, member: str) -> Any:
        """Return the wrapped object's ``member``, or None when it has none."""
        return getattr(self.wrapped, member, None)

    # optional data members: the wrapped object's, else the defaults
    @property
    def units(self) -> Mapping[str, Any]:
        """The wrapped object's ``units``, or ``{}``."""
        return self._optional("units") or {}

    @units.setter
    def units(self, value: Mapping[str, Any]) -> None:
        self.wrapped.units = value

    @property
    def extra_coords(self) -> Mapping[str, tuple[str, Sequence[Any]]]:
        """The wrapped object's ``extra_coords``, or ``{}``."""
        return self._optional("extra_coords") or {}

    @extra_coords.setter
    def extra_coords(self, value: Mapping[str, tuple[str, Sequence[Any]]]) -> None:
        self.wrapped.extra_coords = value

    @property
    def coord_attrs(self) -> Mapping[str, Mapping[str, str]]:
        """The wrapped object's ``coord_attrs``, or ``{}``."""
        return self._optional("coord_attrs") or {}

    @coord_attrs.setter
    def coord_attrs(self, value: Mapping[str, Mapping[str, str]]) -> None:
        self.wrapped.coord_attrs = value

    @property
    def noise_cov(self) -> torch.Tensor | None:
        """The wrapped object's ``noise_cov``, or None."""
        return cast("torch.Tensor | None", self._optional("noise_cov"))

    @noise_cov.setter
    def noise_cov(self, value: torch.Tensor | None) -> None:
        self.wrapped.noise_cov = value

    @property
    def has_prior_density(self) -> bool:
        """The wrapped object's ``has_prior_density``; else whether it has a ``log_prior``."""
        flag = self._optional("has_prior_density")
        if flag is None:
            return callable(self._optional("log_prior"))
        return bool(flag)

    @has_prior_density.setter
    def has_prior_density(self, value: bool) -> None:
        self.wrapped.has_prior_density = value

    @property
    def nuts_preconditioner(self) -> str:
        """The wrapped object's ``nuts_preconditioner``, or ``"amortized"``."""
        return cast(str, self._optional("nuts_preconditioner") or "amortized")

    @nuts_preconditioner.setter
    def nuts_preconditioner(self, value: str) -> None:
        self.wrapped.nuts_preconditioner = value

    # required methods
    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Call the wrapped object's ``sample_prior``."""
        return cast(torch.Tensor, self.wrapped.sample_prior(num, generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Call the wrapped object's ``forward``."""
        return cast(torch.Tensor, self.wrapped.forward(x))

    # methods with defaults: the wrapped object's when it has one
    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Call the wrapped object's ``simulate``, else the default of :class:`Problem`."""
        method = self._optional("simulate")
        if method is None:
            return super().simulate(num, generator)
        return cast("tuple[torch.Tensor, torch.Tensor]", method(num, generator))

    def spec(self) -> dict[str, Any]:
        """Call the wrapped object's ``spec``, else the default (which refuses)."""
        method = self._optional("spec")
        return super().spec() if method is None else cast("dict[str, Any]", method())

    def linear_gaussian(self) -> LinearGaussianParts | None:
        """Call the wrapped object's ``linear_gaussian``, else None."""
        method = self._optional("linear_gaussian")
        return None if method is None else cast("LinearGaussianParts | None", method())

    def recommended_settings(self) -> Overrides | Mapping[str, Any]:
        """Call the wrapped object's ``recommended_settings``, else no overrides."""
        method = self._optional("recommended_settings")
        return super().recommended_settings() if method is None else method()

    def derived(self, x: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Call the wrapped object's ``derived``, else ``{}``."""
        method = self._optional("derived")
        return {} if method is None else method(x)

    def basis(self) -> torch.Tensor | None:
        """Call the wrapped object's ``basis``, else None."""
        method = self._optional("basis")
        return None if method is None else cast("torch.Tensor | None", method())

    def coefficient_transform(self) -> Transform | None:
        """Call the wrapped object's ``coefficient_transform``, else None."""
        method = self._optional("coefficient_transform")
        return None if method is None else cast("Transform | None", method())

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Call the wrapped object's ``log_prior``, else the default (which refuses)."""
        method = self._optional("log_prior")
        return super().log_prior(x) if method is None else cast(torch.Tensor, method(x))

    def gaussian_prior(self) -> MultivariateNormal | None:
        """Call the wrapped object's ``gaussian_prior``, else the default of :class:`Problem`."""
        method = self._optional("gaussian_prior")
        if method is None:
            return super().gaussian_prior()
        return cast("MultivariateNormal | None", method())


def as_problem(obj: object, source: str = "a problem argument") -> Problem:
    """Return ``obj`` as a :class:`Problem`: itself if it is one, else a checked adapter.

    Parameters
    ----------
    obj : object
        A :class:`Problem`, or a duck-typed object with its required members.
    source : str, default "a problem argument"
        Where it came from, for the message of :func:`check_problem`.

    Returns
    -------
    Problem
        ``obj`` itself, or a :class:`ProblemAdapter` around it.

    Raises
    ------
    ConfigError
        If a duck-typed ``obj`` is not a valid problem (see :func:`check_problem`).

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> p = LinearGaussian()
    >>> as_problem(p) is p
    True
    """
    if isinstance(obj, Problem):
        return obj
    return check_problem(obj, source)


REGISTRY: dict[str, Callable[..., Problem]] = {}


def register_problem(name: str) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    """Register a problem factory under ``name`` (decorator of a class or a function).

    A registered factory can be built by name with :func:`make_problem`, and a checkpoint
    that references it as ``"package.module:factory"`` rebuilds it wherever it is defined
    (case (b) of the policy in :func:`resolve_problem_factory`), once its module is imported.

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
    """Build a problem from a registry name or a ``package.module:factory`` reference.

    Parameters
    ----------
    name : str
        A registered name (``"two_birds"``, ``"linear_gaussian"``, ``"crosshole"``, ``"mt1d"``,
        ``"gravity"``, or one added with :func:`register_problem`), or a reference
        ``"package.module:factory"``: the module is imported, the (possibly dotted) attribute
        after the colon is looked up (``"pkg.mod:Class"``, ``"pkg.mod:holder.factory"``) and
        called with ``kwargs``. A reference is trusted: use it for names a user typed, never
        for names read from a file (see :func:`rebuild_problem`).
    **kwargs
        Keyword arguments of the factory.

    Returns
    -------
    Problem
        The built problem, checked with :func:`check_problem`.

    Raises
    ------
    UnknownProblemError
        If ``name`` is neither registered nor a reference; the message lists the registered
        names.
    ConfigError
        If the module of a reference cannot be imported (the message names it and the import
        error), the attribute is missing or not callable, the factory rejects ``kwargs``
        (a ``TypeError`` from the call), raises another exception (its type and message are
        kept), or returns something that is not a problem.

    Examples
    --------
    >>> make_problem("linear_gaussian", x_dim=3).x_shape
    (3,)
    >>> make_problem("ppl_cvae.problems.linear_gaussian:LinearGaussian", y_dim=4).y_shape
    (4,)
    """
    if not isinstance(name, str):
        raise ConfigError(f"a problem name must be a string, got {type(name).__name__}")
    if ":" in name:
        factory = resolve_problem_factory(name)
        source = f"problem factory {name!r}"
    else:
        factory = _registered(name)
        source = f"problem {name!r}"
    try:
        with no_exit(source):
            problem = factory(**kwargs)
    except (PplCvaeError, MemoryError):
        raise
    except TypeError as err:
        raise ConfigError(
            f"{source} does not accept the arguments {sorted(kwargs)}: {err}"
        ) from err
    except Exception as err:  # noqa: BLE001 - a user's factory may raise anything
        raise ConfigError(f"{source} failed: {type(err).__name__}: {err}") from err
    return check_problem(problem, source)


def _registered(name: str) -> Callable[..., Any]:
    """Return the registered factory ``name``, or raise UnknownProblemError."""
    # importing the built-in problems registers them
    import ppl_cvae.problems  # noqa: F401

    if name not in REGISTRY:
        raise UnknownProblemError(
            f"unknown problem {name!r}; expected one of {sorted(REGISTRY)} or a reference "
            "'package.module:factory'"
        )
    return REGISTRY[name]


_PROTOCOL_METHODS = ("sample_prior", "forward", "simulate", "spec")
_PROTOCOL_ATTRIBUTES = (
    "name",
    "x_shape",
    "y_shape",
    "x_dims",
    "y_dims",
    "coords",
    "noise_std",
    "misfit_std",
)
NUTS_PRECONDITIONERS: tuple[str, ...] = ("amortized", "prior", "prior-amortized")
"""The values of :attr:`Problem.nuts_preconditioner` (``ppl-cvae sample --preconditioner``)."""

_OPTIONAL_METHODS = (
    "derived",
    "linear_gaussian",
    "recommended_settings",
    "basis",
    "coefficient_transform",
    "log_prior",
)


def check_problem(obj: object, source: str) -> Problem:
    """Check that ``obj`` is a valid problem; return it as a :class:`Problem`.

    Parameters
    ----------
    obj : object
        What a problem factory returned: a :class:`Problem` or a duck-typed object with the
        required members (``name``, ``x_shape``, ``y_shape``, ``x_dims``, ``y_dims``,
        ``coords``, ``noise_std``, ``misfit_std``, ``sample_prior``, ``forward``,
        ``simulate``, ``spec``).
    source : str
        Where it came from, for the message (e.g. ``"problem factory 'pkg.mod:make'"``).

    Returns
    -------
    Problem
        ``obj`` itself if it is a :class:`Problem`, else a :class:`ProblemAdapter` around it
        (optional members it lacks get the defaults of :class:`Problem`).

    Raises
    ------
    ConfigError
        If a member of the protocol is missing (the message lists every missing one) or has
        the wrong type: ``sample_prior``, ``forward``, ``simulate`` and ``spec`` must be
        callable; ``name`` a string; ``x_shape`` and ``y_shape`` non-empty tuples of positive
        ints; ``x_dims`` and ``y_dims`` sequences of strings, one per axis; ``coords`` a
        mapping; ``noise_std >= 0`` and ``misfit_std > 0`` finite numbers; a per-component
        ``units["y"]`` must match one y dim (:func:`data_units`) and ``extra_coords`` name
        dims with matching lengths (:func:`extra_coords_of`); the optional methods
        (``derived``, ``linear_gaussian``, ``recommended_settings``, ``basis``,
        ``coefficient_transform``, ``log_prior``), when present, must be callable (what
        ``derived`` returns is checked where it is called, by :func:`derived_quantities`).

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> check_problem(LinearGaussian(), "example").name
    'linear_gaussian'
    """
    missing: list[str] = []
    values: dict[str, Any] = {}
    for member in (*_PROTOCOL_ATTRIBUTES, *_PROTOCOL_METHODS):
        try:
            values[member] = getattr(obj, member)
        except AttributeError:
            missing.append(member)
        except Exception as err:  # a user's property may raise anything: report it
            raise ConfigError(
                f"{source} returned a {type(obj).__name__} whose member {member!r} raised "
                f"{type(err).__name__}: {err}"
            ) from err
    what = f"{source} returned {type(obj).__name__}"
    if missing:
        raise ConfigError(
            f"{what}, which is not a problem: it lacks {', '.join(missing)} "
            "(see ppl_cvae.problems.base.Problem)"
        )
    problems: list[str] = []
    for member in _PROTOCOL_METHODS:
        if not callable(values[member]):
            problems.append(f"{member} is not callable")
    if not isinstance(values["name"], str):
        problems.append(f"name is {type(values['name']).__name__}, not str")
    for shape_name, dims_name in (("x_shape", "x_dims"), ("y_shape", "y_dims")):
        shape, dims = values[shape_name], values[dims_name]
        if not (
            isinstance(shape, tuple)
            and shape
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            problems.append(
                f"{shape_name} must be a non-empty tuple of positive ints: {reprlib.repr(shape)}"
            )
        elif not (
            isinstance(dims, Sequence)
            and not isinstance(dims, str)
            and len(dims) == len(shape)
            and all(isinstance(d, str) for d in dims)
        ):
            problems.append(
                f"{dims_name} must name each of the {len(shape)} axes: {reprlib.repr(dims)}"
            )
    for member in _OPTIONAL_METHODS:  # a Problem has them all; a duck-typed object may not
        method = getattr(obj, member, None)
        if method is not None and not callable(method):
            problems.append(f"{member} is {type(method).__name__}, not callable")
    if not isinstance(values["coords"], Mapping):
        problems.append(f"coords is {type(values['coords']).__name__}, not a mapping")
    preconditioner = getattr(obj, "nuts_preconditioner", "amortized")
    if preconditioner not in NUTS_PRECONDITIONERS:
        problems.append(
            f"nuts_preconditioner must be one of {', '.join(NUTS_PRECONDITIONERS)}: "
            f"{reprlib.repr(preconditioner)}"
        )
    for member, bound in (("noise_std", ">= 0"), ("misfit_std", "> 0")):
        value = values[member]
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= 0 if bound == ">= 0" else value > 0)
        )
        if not ok:
            problems.append(f"{member} must be a finite number {bound}: {reprlib.repr(value)}")
    problem = obj if isinstance(obj, Problem) else ProblemAdapter(obj)
    if not problems:
        try:  # the optional plotting metadata must resolve against the dims
            data_units(problem)
            extra_coords_of(problem)
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError(f"{what}, which is not a valid problem: {'; '.join(problems)}")
    return problem


# ----------------------------------------------------------------------- references
def _parse_reference(reference: str) -> tuple[str, list[str]]:
    """Split ``"package.module:attr.attr"`` into the module name and the attribute path."""
    module_name, sep, attr = reference.partition(":")
    parts = [*module_name.split("."), *attr.split(".")]
    if not sep or not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        raise ConfigError(
            f"problem reference {reference!r} is not of the form 'package.module:factory'"
        )
    return module_name, attr.split(".")


def _excluded_roots() -> list[Path]:
    """Folders whose code is not "the user's own": the standard library and installed packages."""
    paths = sysconfig.get_paths()
    roots = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    roots += [*site.getsitepackages(), site.getusersitepackages()]
    for prefix in (sys.base_prefix, sys.base_exec_prefix):
        if Path(prefix).resolve() != Path(Path(prefix).resolve().anchor):  # never all of "/"
            roots.append(prefix)
    return [Path(os.path.realpath(r)) for r in roots]


def _is_user_file(filename: str) -> bool:
    """Whether ``filename`` is a source file outside the standard library and site-packages."""
    if not os.path.isabs(filename) or not os.path.isfile(filename):
        return False
    path = Path(os.path.realpath(filename))
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return not any(path.is_relative_to(root) for root in _excluded_roots())


_OWN_PACKAGES = ("ppl_cvae", "inference")


def resolve_problem_factory(reference: str, *, untrusted: bool = False) -> Callable[..., Any]:
    """Import the module of ``"package.module:factory"`` and return the factory it names.

    Parameters
    ----------
    reference : str
        ``"package.module:attr"``, where ``attr`` may be dotted (``"Outer.factory"``).
    untrusted : bool, default False
        The reference was read from a file (a checkpoint), so it may be forged: apply the
        safety policy below and refuse anything else, before calling it and, for the
        standard library, before importing it.

    Returns
    -------
    callable
        The factory; nothing has called it.

    Raises
    ------
    ConfigError
        If the reference is malformed, the module cannot be imported (the message names it
        and the import error), the attribute is missing or not callable, or, with
        ``untrusted``, the policy refuses it (the message says why).

    Notes
    -----
    Safety policy for untrusted references. A forged checkpoint could otherwise name, say,
    ``shutil:rmtree`` or ``subprocess:Popen`` with arguments of its choosing, so a reference
    is only resolved when

    - no component of it starts with ``__`` (no ``__main__``, ``__builtins__``, ...);
    - its top-level package is not part of the standard library or built into the
      interpreter (checked by name, before importing: ``os``, ``shutil``, ``subprocess``,
      ``builtins``, ... are never imported or looked into);
    - every dotted step of the attribute path goes through a module or a class, read
      statically (no properties or ``__getattr__`` hooks run); and the object it names is

      (a) a class (not a built-in one) that defines the problem methods ``forward``,
          ``sample_prior`` and ``simulate``; or
      (b) a function or class registered with :func:`register_problem`; or
      (c) a plain Python function (not a builtin, method, ``functools.partial`` or other
          callable object) whose ``__module__`` is the named module and whose source file
          lies outside the standard library, ``site-packages``/``dist-packages`` and the
          interpreter's installation prefix (``sys.base_prefix``), i.e. the user's own
          code, and not in this package (``ppl_cvae``, ``inference``), whose functions are
          not problem factories unless registered.

    Importing the module of an allowed reference runs its top-level code, as any import
    does. The policy does not make a forged checkpoint harmless: it limits the callables it
    can reach to problem classes, registered factories and functions in the user's own
    modules, each called with JSON-like keyword arguments.
    """
    module_name, attrs = _parse_reference(reference)
    if untrusted:
        parts = [*module_name.split("."), *attrs]
        if any(p.startswith("__") for p in parts):
            raise ConfigError(
                f"problem reference {reference!r} names a dunder attribute or module; refused"
            )
        top = module_name.split(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            raise ConfigError(
                f"problem reference {reference!r} names the standard-library module "
                f"{top!r}, which holds no problem factories; refused"
            )
    try:
        with no_exit(f"importing module {module_name!r} of problem reference {reference!r}"):
            module = sys.modules.get(module_name) or importlib.import_module(module_name)
    except PplCvaeError:
        raise
    except Exception as err:  # an import runs arbitrary module code: report any failure
        raise ConfigError(
            f"cannot import module {module_name!r} of problem reference {reference!r}: "
            f"{type(err).__name__}: {err}"
        ) from err
    obj: Any = module
    for i, attr in enumerate(attrs):
        where = f"{module_name}:{'.'.join(attrs[:i])}" if i else f"module {module_name!r}"
        try:
            if untrusted:
                if not (inspect.ismodule(obj) or inspect.isclass(obj)):
                    raise ConfigError(
                        f"problem reference {reference!r} looks up {attr!r} on a "
                        f"{type(obj).__name__}, not a module or class; refused"
                    )
                obj = inspect.getattr_static(obj, attr)
            else:
                obj = getattr(obj, attr)
        except AttributeError as err:
            raise ConfigError(
                f"problem reference {reference!r}: {where} has no attribute {attr!r}"
            ) from err
    if untrusted:
        if isinstance(obj, staticmethod):
            obj = obj.__func__
        refusal = _policy_refusal(obj, module_name)
        if refusal is not None:
            raise ConfigError(
                f"problem reference {reference!r} names {refusal}; refused: a checkpoint "
                "only rebuilds problem classes, registered factories and functions of the "
                "user's own modules"
            )
    if not callable(obj):
        raise ConfigError(
            f"problem reference {reference!r} names a {type(obj).__name__}, not a callable"
        )
    return cast(Callable[..., Any], obj)


def _policy_refusal(obj: Any, module_name: str) -> str | None:
    """Return why the policy refuses ``obj`` (a short phrase), or None if it allows it."""
    if inspect.isbuiltin(obj) or getattr(obj, "__module__", None) == "builtins":
        return f"the builtin {getattr(obj, '__name__', type(obj).__name__)!r}"
    if any(obj is factory for factory in REGISTRY.values()):
        return None  # (b) registered
    if inspect.isclass(obj):
        methods = ("forward", "sample_prior", "simulate")
        lacking = [m for m in methods if not callable(inspect.getattr_static(obj, m, None))]
        if not lacking:
            return None  # (a) a problem class
        return f"the class {obj.__qualname__!r}, which lacks the problem methods {lacking}"
    if inspect.isfunction(obj):
        own = str(obj.__module__).split(".")[0] in _OWN_PACKAGES
        if obj.__module__ != module_name:
            return (
                f"the function {obj.__qualname__!r} of module {obj.__module__!r}, imported "
                f"into {module_name!r}"
            )
        if own:
            return f"the function {obj.__qualname__!r} of ppl_cvae itself, not registered"
        if not _is_user_file(inspect.getfile(obj)):
            return (
                f"the function {obj.__qualname__!r} from {inspect.getfile(obj)!r}, which is "
                "in the standard library or an installed package"
            )
        return None  # (c) the user's own function
    return f"a {type(obj).__name__}, which is neither a problem class nor a plain function"


def rebuild_problem(name: str, kwargs: Mapping[str, Any]) -> Problem:
    """Rebuild a problem from a record read from an untrusted file (a checkpoint).

    Parameters
    ----------
    name : str
        Registry name or ``"package.module:factory"`` reference.
    kwargs : Mapping[str, Any]
        Keyword arguments of the factory (JSON-like values).

    Returns
    -------
    Problem
        The rebuilt problem, checked with :func:`check_problem`.

    Raises
    ------
    UnknownProblemError
        If ``name`` is not a reference and not registered.
    ConfigError
        If a reference is refused by the policy of :func:`resolve_problem_factory`, its
        module cannot be imported, the factory raises anything (its exception is named in
        the message) or returns something that is not a problem.

    Notes
    -----
    Registry names are always rebuilt; references only under the safety policy described
    in :func:`resolve_problem_factory` (``untrusted=True``).
    """
    if ":" not in name:
        return make_problem(name, **kwargs)
    factory = resolve_problem_factory(name, untrusted=True)
    source = f"problem factory {name!r}"
    try:
        with no_exit(source):
            problem = factory(**kwargs)
    except PplCvaeError:
        raise
    except Exception as err:  # user code may raise anything; loading must not crash on it
        raise ConfigError(
            f"{source} failed on the arguments {sorted(kwargs)}: {type(err).__name__}: {err}"
        ) from err
    return check_problem(problem, source)


def linear_gaussian_parts(problem: Problem) -> LinearGaussianParts | None:
    """Return ``problem.linear_gaussian()``, or None when it gives no :class:`LinearGaussianParts`.

    None means no closed-form posterior (nonlinear ``F`` or a non-Gaussian prior).
    """
    parts = as_problem(problem).linear_gaussian()
    return parts if isinstance(parts, LinearGaussianParts) else None


def units_of(problem: Problem | None) -> dict[str, str]:
    """Return the problem's ``units`` mapping (``"x"``, ``"y"``, dims, coordinates), or ``{}``.

    A per-component ``"y"`` mapping (see :func:`data_units`) is summarised as its distinct
    units joined by ``" | "`` in coordinate order.

    Examples
    --------
    >>> from ppl_cvae.problems import MT1D
    >>> units_of(MT1D())["y"]
    'log10(ohm m) | deg'
    """
    units = as_problem(problem).units if problem is not None else None
    out: dict[str, str] = {}
    for key, value in dict(units or {}).items():
        if isinstance(value, Mapping):
            distinct = list(dict.fromkeys(str(v) for v in value.values()))
            out[str(key)] = " | ".join(distinct)
        else:
            out[str(key)] = str(value)
    return out


def data_units(problem: Problem | None) -> tuple[str, dict[str, str]] | None:
    """Return ``(dim, {coordinate value: unit})`` when ``y`` mixes physical quantities.

    A problem declares it by giving ``units["y"]`` as a mapping from the coordinate values of
    one of its ``y_dims`` to unit strings; that dim is the one whose coordinate values (as
    strings) are exactly the mapping's keys.

    Returns
    -------
    tuple of (str, dict of str to str) or None
        The dim and the unit of each of its coordinate values, in coordinate order; None when
        ``units["y"]`` is a single string or absent.

    Raises
    ------
    ConfigError
        If ``units["y"]`` is a mapping whose keys are not the coordinate values of exactly one
        of ``y_dims`` (the message lists the keys and the candidate coordinates).

    Examples
    --------
    >>> from ppl_cvae.problems import MT1D
    >>> data_units(MT1D())
    ('component', {'log10_rho_a': 'log10(ohm m)', 'phase': 'deg'})
    """
    if problem is None:
        return None
    problem = as_problem(problem)
    value = dict(problem.units or {}).get("y")
    if not isinstance(value, Mapping):
        return None
    keys = [str(k) for k in value]
    coords = problem.coords
    matches = [
        d for d in problem.y_dims if d in coords and sorted(map(str, coords[d])) == sorted(keys)
    ]
    if len(matches) != 1:
        candidates = {d: [str(c) for c in coords[d]] for d in problem.y_dims if d in coords}
        raise ConfigError(
            f"units['y'] maps {keys} to units; expected the coordinate values of exactly one "
            f"of the y dims {tuple(problem.y_dims)} (coordinates: {candidates})"
        )
    dim = matches[0]
    lookup = {str(k): str(v) for k, v in value.items()}
    return dim, {str(c): lookup[str(c)] for c in coords[dim]}


_RESERVED_NAMES = ("x", "y", "z", "x_mean", "y_noise_sd", "y_noise_cov", "observation")


def derived_quantities(problem: Problem | None, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return the problem's derived quantities of ``x`` (``problem.derived(x)``), or ``{}``.

    Parameters
    ----------
    problem : Problem or None
        A problem (its :meth:`Problem.derived`), or None.
    x : Tensor, shape (*batch, *x_shape)
        Subsurface models (e.g. posterior draws ``(num_samples, M, *x_shape)``), units of
        ``x``.

    Returns
    -------
    dict of str to Tensor
        ``name -> value``, each value of shape ``(*batch, *x_shape)`` (the shape of ``x``) in
        the unit ``problem.units[name]``, in insertion order; ``{}`` without a problem or
        derived quantities.

    Raises
    ------
    ConfigError
        If ``derived`` does not return a mapping, a name is not a Python identifier or is
        reserved (``x``, ``y``, ``z``, ``x_mean``, ``*_true``, a dim or a coordinate of the
        problem), or a value is not a tensor of the shape of ``x`` (the message names it and
        gives both shapes).

    Examples
    --------
    >>> from ppl_cvae.problems import Crosshole
    >>> p = Crosshole(prior="channels", num_depth_cells=4, num_offset_cells=4)
    >>> d = derived_quantities(p, torch.ones(2, 4, 4))  # all channel: 1/2400 s/m
    >>> list(d), tuple(d["slowness"].shape), round(float(d["slowness"][0, 0, 0]) * 2400, 6)
    (['slowness'], (2, 4, 4), 1.0)
    """
    if problem is None:
        return {}
    problem = as_problem(problem)
    values = problem.derived(x)
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"problem.derived(x) must return a mapping of name to tensor, got "
            f"{type(values).__name__}"
        )
    taken = {*_RESERVED_NAMES, *problem.x_dims, *problem.y_dims, *problem.coords}
    taken |= set(extra_coords_of(problem))
    out: dict[str, torch.Tensor] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ConfigError(
                f"problem.derived(x) returned the name {name!r}; expected a Python identifier"
            )
        if name in taken or name.endswith("_true"):
            raise ConfigError(
                f"problem.derived(x) returned {name!r}, a name taken by a variable, dim or "
                f"coordinate of the posterior file (or ending in '_true'); rename it"
            )
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(x.shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ConfigError(
                f"problem.derived(x)[{name!r}] must be a tensor of the shape of x, "
                f"{tuple(x.shape)}; got {got}"
            )
        out[name] = value
    return out


def extra_coords_of(problem: Problem | None) -> dict[str, tuple[str, list[Any]]]:
    """Return the problem's ``extra_coords`` (``name -> (dim, values)``), or ``{}``.

    Raises
    ------
    ConfigError
        If an entry is not a ``(dim, values)`` pair naming one of ``x_dims``/``y_dims`` with
        one value per entry of that dim.
    """
    if problem is None:
        return {}
    problem = as_problem(problem)
    extra = problem.extra_coords
    if not extra:
        return {}
    sizes = dict(zip(problem.x_dims, problem.x_shape, strict=True))
    sizes.update(zip(problem.y_dims, problem.y_shape, strict=True))
    out: dict[str, tuple[str, list[Any]]] = {}
    for name, entry in dict(extra).items():
        ok = (
            isinstance(entry, (tuple, list))
            and len(entry) == 2
            and isinstance(entry[0], str)
            and entry[0] in sizes
            and isinstance(entry[1], Sequence)
        )
        if not ok or len(entry[1]) != sizes[entry[0]]:
            raise ConfigError(
                f"extra_coords[{name!r}] must be (dim, values) with dim one of {sorted(sizes)} "
                f"and one value per entry of it; got {reprlib.repr(entry)}"
            )
        out[str(name)] = (str(entry[0]), list(entry[1]))
    return out


def coord_attrs_of(problem: Problem | None) -> dict[str, dict[str, str]]:
    """Return the problem's ``coord_attrs`` (coordinate name -> attributes), or ``{}``."""
    attrs = as_problem(problem).coord_attrs if problem is not None else None
    return {
        str(k): {str(a): str(v) for a, v in dict(d).items()} for k, d in dict(attrs or {}).items()
    }


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
        raise ConfigError(
            f"{what} returned a {type(value).__module__}.{type(value).__name__}; expected a "
            f"torch.Tensor of shape {expected}: one log density (nats) per model of the batch"
        )
    if tuple(value.shape) != expected:
        raise ConfigError(
            f"{what} returned shape {tuple(value.shape)}; expected {expected}: one log "
            "density (nats) per model of the batch, summed over the event axes only (a "
            "value that broadcasts would give every model the same weight)"
        )
    if value.is_complex() or not value.is_floating_point():
        raise ConfigError(f"{what} returned dtype {value.dtype}; expected a real float dtype")
    return value


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
        If ``x`` does not end in ``x_shape``.
    ConfigError
        If the problem returns anything but a real floating tensor of shape ``batch``, or
        calls ``sys.exit``.
    NoPriorDensityError
        From the problem, if its prior has no density.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> tuple(checked_log_prior(LinearGaussian(), torch.zeros(5, 3, 2)).shape)
    (5, 3)
    """
    batch = _event_batch(x, tuple(problem.x_shape), "x")
    with no_exit(f"problem {problem.name!r} log_prior"):
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
        If ``x`` or ``y`` does not end in its event shape or the batches do not broadcast.
    ConfigError
        If the problem returns anything but a real floating tensor of shape ``batch``, or
        calls ``sys.exit``.
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
    with no_exit(f"problem {problem.name!r} log_likelihood"):
        value = problem.log_likelihood(x, y)
    return _checked_density(problem, "log_likelihood", value, batch)
