"""Duck-typed problems: :class:`ProblemAdapter`, :func:`as_problem` and :func:`check_problem`.

A problem that does not subclass :class:`~ppl_cvae.problems.base.Problem` but has its
required members is checked once, where it enters (:func:`check_problem`: the protocol's
members and their types, the plotting metadata), and wrapped in a :class:`ProblemAdapter`,
which forwards every member it has and gives the defaults of
:class:`~ppl_cvae.problems.base.Problem` for the optional ones it lacks.
"""

from __future__ import annotations

import copy
import math
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch.distributions import MultivariateNormal, Transform, constraints

from ppl_cvae.config import Overrides
from ppl_cvae.device import move_tensors
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import NUTS_PRECONDITIONERS, LinearGaussianParts, Problem

__all__ = ["ProblemAdapter", "as_problem", "check_problem"]


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

    def __copy__(self) -> ProblemAdapter:
        # attributes are set on the wrapped object, so a shallow copy of the problem copies
        # it too: setting a member of the copy must leave the user's object as it was
        return type(self)(copy.copy(self.wrapped))

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
    def support(self) -> constraints.Constraint | None:
        """The wrapped object's ``support``, or None."""
        return cast("constraints.Constraint | None", self._optional("support"))

    @support.setter
    def support(self, value: constraints.Constraint | None) -> None:
        self.wrapped.support = value

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

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        """Call the wrapped object's ``in_support``, else the default of :class:`Problem`."""
        method = self._optional("in_support")
        return super().in_support(x) if method is None else cast(torch.Tensor, method(x))

    def _has_own_in_support(self) -> bool:
        """Return whether the wrapped object has an ``in_support`` of its own."""
        return self._optional("in_support") is not None

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
_OPTIONAL_METHODS = (
    "derived",
    "linear_gaussian",
    "recommended_settings",
    "basis",
    "coefficient_transform",
    "log_prior",
    "in_support",
)


def _coordinate_problems(values: Mapping[str, Any]) -> list[str]:
    """Say which ``coords`` entries of a dim have another length than the dim."""
    sizes: dict[str, int] = {}
    for shape_name, dims_name in (("x_shape", "x_dims"), ("y_shape", "y_dims")):
        for dim, size in zip(values[dims_name], values[shape_name], strict=True):
            sizes.setdefault(dim, size)
    found = []
    for name, coordinate in values["coords"].items():
        if name not in sizes:
            continue  # a coordinate of no dim is not used
        try:
            length = len(coordinate)
        except TypeError:
            found.append(f"coords[{name!r}] is a {type(coordinate).__name__}, not a sequence")
            continue
        if length != sizes[name]:
            found.append(
                f"coords[{name!r}] has {length} values for dim {name!r} of size {sizes[name]}"
            )
    return found


def _units_problems(units: Any) -> list[str]:
    """Say which ``units`` entries are not unit strings (``"x"``, ``"y"`` may map to strings)."""
    if units is None:
        return []
    if not isinstance(units, Mapping):
        return [f"units is {type(units).__name__}, not a mapping of names to unit strings"]
    found = []
    for key, unit in units.items():
        ok = isinstance(unit, str) or (
            key in ("x", "y")
            and isinstance(unit, Mapping)
            and all(isinstance(u, str) for u in unit.values())
        )
        if not ok:
            found.append(f"units[{key!r}] is {reprlib.repr(unit)}, not a unit string")
    return found


def _noise_cov_problems(noise_cov: Any, y_shape: tuple[int, ...]) -> list[str]:
    """Say when a ``noise_cov`` of the right shape holds NaN/inf or is not positive definite.

    Other types and shapes are refused where the noise model reads it, naming the shape.
    """
    m = math.prod(y_shape)
    if not isinstance(noise_cov, torch.Tensor) or tuple(noise_cov.shape) != (m, m):
        return []
    cov = noise_cov.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(cov).all()):
        return ["noise_cov holds NaN or inf; expected a covariance (units of y squared)"]
    if torch.linalg.cholesky_ex(cov).info != 0:
        return [
            "noise_cov is not positive definite (its Cholesky factorisation fails): a "
            "covariance needs every eigenvalue > 0"
        ]
    return []


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
        ``units["y"]`` must match one y dim
        (:func:`~ppl_cvae.problems.metadata.data_units`) and ``extra_coords`` name dims with
        matching lengths (:func:`~ppl_cvae.problems.metadata.extra_coords_of`); the optional
        methods (``derived``, ``linear_gaussian``, ``recommended_settings``, ``basis``,
        ``coefficient_transform``, ``log_prior``, ``in_support``), when present, must be
        callable (what ``derived`` returns is checked where it is called, by
        :func:`~ppl_cvae.problems.metadata.derived_quantities`); ``support``, when set, a
        ``torch.distributions.constraints.Constraint``.

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
    elif not problems:  # a coordinate has one value per entry of its dim (ArviZ refuses others)
        problems.extend(_coordinate_problems(values))
    problems.extend(_units_problems(getattr(obj, "units", None)))
    if not problems:
        problems.extend(_noise_cov_problems(getattr(obj, "noise_cov", None), values["y_shape"]))
    support = getattr(obj, "support", None)
    if support is not None and not isinstance(support, constraints.Constraint):
        problems.append(
            f"support must be a torch.distributions.constraints.Constraint or None: "
            f"{reprlib.repr(support)}"
        )
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
            hint = ""
            if member == "noise_std" and hasattr(value, "__len__"):  # one sd per datum
                hint = (
                    " (for one sd per datum give noise_cov, the covariance of the flattened y: "
                    "torch.diag(std.flatten() ** 2), and a number as noise_std, e.g. the "
                    "sds' mean, which then only summarises them)"
                )
            problems.append(
                f"{member} must be a finite number {bound}: {reprlib.repr(value)}{hint}"
            )
    problem = obj if isinstance(obj, Problem) else ProblemAdapter(obj)
    if not problems:
        # imported here: the metadata helpers wrap their argument with as_problem (this module)
        from ppl_cvae.problems.metadata import data_units, extra_coords_of

        try:  # the optional plotting metadata must resolve against the dims
            data_units(problem, "y")
            data_units(problem, "x")
            extra_coords_of(problem)
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError(f"{what}, which is not a valid problem: {'; '.join(problems)}")
    return problem
