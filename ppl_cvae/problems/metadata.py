"""What a problem declares besides its model: units, coordinates, derived quantities.

Readers of a problem's optional members that check what they hold: the units of ``x``,
``y`` and the coordinates (:func:`units_of`, per-component data units :func:`data_units`),
extra coordinates and their attributes (:func:`extra_coords_of`, :func:`coord_attrs_of`),
derived physical quantities of ``x`` (:func:`derived_quantities`) and the pieces of a
linear-Gaussian problem (:func:`linear_gaussian_parts`). Each accepts a duck-typed problem
(:func:`~ppl_cvae.problems.adapter.as_problem`).
"""

from __future__ import annotations

import keyword
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import LinearGaussianParts, Problem

__all__ = [
    "coord_attrs_of",
    "data_units",
    "derived_quantities",
    "extra_coords_of",
    "linear_gaussian_parts",
    "units_of",
]


def linear_gaussian_parts(problem: Problem) -> LinearGaussianParts | None:
    """Return ``problem.linear_gaussian()``, or None when it gives no :class:`LinearGaussianParts`.

    None means no closed-form posterior (nonlinear ``F`` or a non-Gaussian prior).
    """
    parts = as_problem(problem).linear_gaussian()
    return parts if isinstance(parts, LinearGaussianParts) else None


def units_of(problem: Problem | None) -> dict[str, str]:
    """Return the problem's ``units`` mapping (``"x"``, ``"y"``, dims, coordinates), or ``{}``.

    A per-coordinate ``"y"`` or ``"x"`` mapping (see :func:`data_units`) is summarised as its
    distinct units joined by ``" | "`` in coordinate order.

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


def data_units(
    problem: Problem | None, name: Literal["x", "y"] = "y"
) -> tuple[str, dict[str, str]] | None:
    """Return ``(dim, {coordinate value: unit})`` when ``y`` (or ``x``) mixes quantities.

    A problem declares it by giving ``units["y"]`` as a mapping from the coordinate values of
    one of its ``y_dims`` to unit strings; that dim is the one whose coordinate values (as
    strings) are exactly the mapping's keys. ``name="x"`` reads ``units["x"]`` against the
    ``x_dims`` the same way (parameters of different units: an amplitude in mV beside a rate
    in 1/s).

    Returns
    -------
    tuple of (str, dict of str to str) or None
        The dim and the unit of each of its coordinate values, in coordinate order; None when
        ``units[name]`` is a single string or absent.

    Raises
    ------
    ConfigError
        If ``units[name]`` is a mapping whose keys are not the coordinate values of exactly
        one of the dims of ``name`` (the message lists the keys and the candidate
        coordinates).

    Examples
    --------
    >>> from ppl_cvae.problems import MT1D
    >>> data_units(MT1D())
    ('component', {'log10_rho_a': 'log10(ohm m)', 'phase': 'deg'})
    >>> data_units(MT1D(), "x") is None  # one unit for every layer
    True
    """
    if problem is None:
        return None
    problem = as_problem(problem)
    value = dict(problem.units or {}).get(name)
    if not isinstance(value, Mapping):
        return None
    keys = [str(k) for k in value]
    coords = problem.coords
    own_dims = tuple(problem.y_dims if name == "y" else problem.x_dims)
    matches = [
        d for d in own_dims if d in coords and sorted(map(str, coords[d])) == sorted(keys)
    ]
    if len(matches) != 1:
        candidates = {d: [str(c) for c in coords[d]] for d in own_dims if d in coords}
        raise ConfigError(
            f"units[{name!r}] maps {keys} to units; expected the coordinate values of exactly "
            f"one of the {name} dims {own_dims} (coordinates: {candidates})"
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
        If ``derived`` does not return a mapping, or a name is not a Python identifier or is
        reserved (``x``, ``y``, ``z``, ``x_mean``, ``*_true``, a dim or a coordinate of the
        problem).
    ShapeError
        If a value is a tensor of a shape other than that of ``x`` (the message names it and
        gives both shapes).
    DataError
        If a value is not a torch tensor.

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
        if not isinstance(value, torch.Tensor):
            raise DataError(
                f"problem.derived(x)[{name!r}] must be a tensor of the shape of x, "
                f"{tuple(x.shape)}; got {type(value).__name__}"
            )
        if tuple(value.shape) != tuple(x.shape):
            raise ShapeError(
                f"problem.derived(x)[{name!r}] must be a tensor of the shape of x, "
                f"{tuple(x.shape)}; got {tuple(value.shape)}"
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
