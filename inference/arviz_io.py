"""Conversion of posterior draws to ``arviz.InferenceData`` (the only module importing arviz).

Amortized-VI draws are independent samples, not a Markov chain: they are stored as a single
chain (leading axes ``(chain=1, draw=S)``) and R-hat / ESS must not be read as MCMC diagnostics.

Groups and dims
---------------
- ``posterior``: ``x`` (``[observation,] *x_dims``) and ``z`` (``[observation,] latent``),
  plus the problem's derived quantities of every draw of ``x`` on the dims of ``x`` (e.g.
  ``slowness`` in s/m of a facies draw; :func:`ppl_cvae.problems.base.derived_quantities`);
- ``posterior_predictive``: ``y`` (``[observation,] *y_dims``), when a forward operator exists;
- ``observed_data``: ``y`` (``[observation,] *y_dims``);
- ``constant_data``: ``x_true`` (``[observation,] *x_dims``), when the truth is known, and
  its derived quantities as ``<name>_true``;
  ``y_noise_sd`` (``*y_dims``, units of ``y``): the standard deviation of the Gaussian noise of
  every datum, when the problem has noise; ``y_noise_cov`` (``datum, datum_bis``, units of
  ``y`` squared, over the C-order flattened ``y``) when that noise is correlated. With them a
  file's misfit can be whitened without the problem (:mod:`inference.diagnostics.ppc`).

Coordinates: every named dim with the problem's values and a ``units`` attribute; extra
coordinates of a dim (e.g. ``source_depth`` along ``ray``); and, for data that stack
quantities of different units along one dim, a string coordinate ``y_units`` along that dim
(one unit per coordinate value; the ``units`` attribute of ``y`` joins them with ``" | "``).

The ``observation`` dim appears when several observations were given in one call (a stacked
input ``(M, *y_shape)``, even with ``M = 1``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl_cvae._atomic import atomic_path
from ppl_cvae._isolated import netcdf_timeout, run_isolated
from ppl_cvae.errors import DataError

with warnings.catch_warnings():
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning at import time
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "chain_diagnostics",
    "check_posterior",
    "default_dims",
    "load_inference_data",
    "pareto_smooth",
    "save_inference_data",
    "to_inference_data",
]


def default_dims(prefix: str, shape: Sequence[int]) -> tuple[str, ...]:
    """Return generic dim names ``(prefix_dim_0, ...)`` for an event of ``shape``."""
    return tuple(f"{prefix}_dim_{i}" for i in range(len(shape)))


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def to_inference_data(
    x: torch.Tensor,
    z: torch.Tensor,
    y_obs: torch.Tensor,
    *,
    stacked: bool,
    y_rep: torch.Tensor | None = None,
    x_true: torch.Tensor | None = None,
    x_dims: Sequence[str] | None = None,
    y_dims: Sequence[str] | None = None,
    coords: Mapping[str, Sequence[Any]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    units: Mapping[str, str] | None = None,
    y_units: tuple[str, Mapping[str, str]] | None = None,
    extra_coords: Mapping[str, tuple[str, Sequence[Any]]] | None = None,
    coord_attrs: Mapping[str, Mapping[str, str]] | None = None,
    noise_sd: torch.Tensor | None = None,
    noise_cov: torch.Tensor | None = None,
    derived: Mapping[str, torch.Tensor] | None = None,
    derived_true: Mapping[str, torch.Tensor] | None = None,
) -> az.InferenceData:
    """Build ``InferenceData`` from posterior draws.

    Parameters
    ----------
    x : Tensor, shape (S, M, *x_shape)
        Posterior draws of the subsurface model.
    z : Tensor, shape (S, M, latent_dim)
        Latent draws.
    y_obs : Tensor, shape (M, *y_shape)
        Observations.
    stacked : bool
        Keep an ``observation`` dim (True) or drop it (False, needs ``M = 1``).
    y_rep : Tensor, shape (S, M, *y_shape), optional
        Posterior predictive draws.
    x_true : Tensor, shape (M, *x_shape), optional
        True models (synthetic tests), stored in ``constant_data``.
    x_dims, y_dims : sequence of str, optional
        Dim names of one ``x`` / ``y``; generic names when omitted.
    coords : mapping, optional
        Coordinate values of named dims.
    attrs : mapping, optional
        Attributes; non-scalar values are stored as JSON strings (NetCDF needs scalars).
    units : mapping, optional
        Unit strings: ``"x"`` and ``"y"`` go to the ``units`` attribute of ``x``/``x_true`` and
        ``y`` (observed and predictive) and ``y_noise_sd``; a coordinate name goes to its
        coordinate's ``units``.
    y_units : (dim, mapping of coordinate value to unit), optional
        Units of data that stack several quantities along ``dim`` (one of ``y_dims``), as
        :func:`ppl_cvae.problems.base.data_units` returns; stored as the string coordinate
        ``y_units`` along ``dim``.
    extra_coords : mapping of name to (dim, values), optional
        Non-index coordinates of a named dim (e.g. ray end points along ``ray``).
    coord_attrs : mapping of coordinate name to attributes, optional
        Extra attributes of coordinates (e.g. how a ``depth`` coordinate places layers).
    noise_sd : Tensor, shape y_shape, optional
        Standard deviation of the observation noise of every datum, units of ``y``; stored as
        ``constant_data.y_noise_sd``.
    noise_cov : Tensor, shape (m, m), optional
        Full noise covariance of the flattened ``y`` (``m = prod(y_shape)``), stored as
        ``constant_data.y_noise_cov`` (give it only when it is not diagonal).
    derived : mapping of str to Tensor, each of shape (S, M, *x_shape), optional
        Derived quantities of the draws of ``x`` (e.g. slowness of facies draws), stored in
        ``posterior`` under their names on the dims of ``x``, with ``units[name]``.
    derived_true : mapping of str to Tensor, each of shape (M, *x_shape), optional
        The same of ``x_true``, stored in ``constant_data`` as ``<name>_true``.

    Returns
    -------
    arviz.InferenceData

    Raises
    ------
    DataError
        If ``stacked`` is False but ``M != 1``, the leading axes disagree, ``noise_sd`` /
        ``noise_cov`` do not match the shape of one ``y``, or a derived quantity does not have
        the shape of ``x`` (or of ``x_true``).

    Examples
    --------
    >>> idata = to_inference_data(
    ...     torch.zeros(5, 1, 3), torch.zeros(5, 1, 2), torch.zeros(1, 4), stacked=False,
    ...     y_dims=["station"], coords={"station": [0.0, 1.0, 2.0, 3.0]},
    ...     noise_sd=torch.full((4,), 0.1), units={"y": "mGal", "station": "m"})
    >>> idata.constant_data["y_noise_sd"].attrs["units"], idata.observed_data["station"].size
    ('mGal', 4)
    """
    num_samples, num_obs = x.shape[:2]
    if z.shape[:2] != x.shape[:2] or y_obs.shape[0] != num_obs:
        raise DataError(
            f"draws disagree: x {tuple(x.shape)}, z {tuple(z.shape)}, y_obs {tuple(y_obs.shape)}"
        )
    if not stacked and num_obs != 1:
        raise DataError(f"an unstacked result needs exactly one observation, got {num_obs}")
    x_dims = tuple(x_dims or default_dims("x", x.shape[2:]))
    y_dims = tuple(y_dims or default_dims("y", y_obs.shape[1:]))
    lead = ["observation"] if stacked else []

    def post(t: torch.Tensor) -> np.ndarray:  # (S, M, ...) -> (1, S, [M,] ...)
        a = _np(t)
        return (a if stacked else a[:, 0])[None]

    def const(t: torch.Tensor) -> np.ndarray:  # (M, ...) -> ([M,] ...)
        a = _np(t)
        return a if stacked else a[0]

    y_event = tuple(y_obs.shape[1:])
    if noise_sd is not None and tuple(noise_sd.shape) != y_event:
        raise DataError(f"noise_sd has shape {tuple(noise_sd.shape)}; expected one y, {y_event}")
    m = int(np.prod(y_event))
    if noise_cov is not None and tuple(noise_cov.shape) != (m, m):
        raise DataError(f"noise_cov has shape {tuple(noise_cov.shape)}; expected ({m}, {m})")
    derived = dict(derived or {})
    derived_true = dict(derived_true or {})
    for name, value in derived.items():
        if tuple(value.shape) != tuple(x.shape):
            raise DataError(
                f"derived quantity {name!r} has shape {tuple(value.shape)}; expected that of "
                f"the draws of x, {tuple(x.shape)}"
            )
    for name, value in derived_true.items():
        if x_true is None or tuple(value.shape) != tuple(x_true.shape):
            expected = None if x_true is None else tuple(x_true.shape)
            raise DataError(
                f"derived quantity {name!r} of x_true has shape {tuple(value.shape)}; expected "
                f"that of x_true, {expected}"
            )
    all_coords: dict[str, Any] = {"latent": np.arange(z.shape[-1])}
    if stacked:
        all_coords["observation"] = np.arange(num_obs)
    for name, values in (coords or {}).items():
        if name in x_dims or name in y_dims:
            all_coords[name] = list(values)
    dims = {
        "x": [*lead, *x_dims],
        "z": [*lead, "latent"],
        "y": [*lead, *y_dims],
        "x_true": [*lead, *x_dims],
        "y_noise_sd": list(y_dims),
        "y_noise_cov": ["datum", "datum_bis"],
    }
    for name in derived:
        dims[name] = [*lead, *x_dims]
    for name in derived_true:
        dims[f"{name}_true"] = [*lead, *x_dims]
    constant: dict[str, np.ndarray] = {}
    if x_true is not None:
        constant["x_true"] = const(x_true)
    for name, value in derived_true.items():
        constant[f"{name}_true"] = const(value)
    if noise_sd is not None:
        constant["y_noise_sd"] = _np(noise_sd)
    if noise_cov is not None:
        constant["y_noise_cov"] = _np(noise_cov)
    clean_attrs = {
        k: (v if isinstance(v, (str, int, float, bool)) else json.dumps(v))
        for k, v in (attrs or {}).items()
    }
    idata = az.from_dict(
        posterior={"x": post(x), "z": post(z), **{k: post(v) for k, v in derived.items()}},
        posterior_predictive={"y": post(y_rep)} if y_rep is not None else None,
        observed_data={"y": const(y_obs)},
        constant_data=constant or None,
        coords=all_coords,
        dims=dims,
        attrs=clean_attrs,
    )
    extra = dict(extra_coords or {})
    if y_units is not None:
        dim, per_value = y_units
        values = all_coords.get(dim, [])
        extra["y_units"] = (dim, [str(per_value[str(v)]) for v in values])
    for group in idata.groups():
        ds = idata[group]
        for name, (dim, values) in extra.items():
            if dim in ds.dims:
                ds.coords[name] = (dim, np.asarray(values))
    names = sorted({*derived, *derived_true})
    _attach_units(idata, dict(units or {}), coord_attrs or {}, names)
    return idata


def _attach_units(
    idata: az.InferenceData,
    units: dict[str, str],
    coord_attrs: Mapping[str, Mapping[str, str]],
    derived: Sequence[str] = (),
) -> None:
    """Set ``units`` (and extra) attributes on the variables and coordinates they describe."""
    for group in idata.groups():
        ds = idata[group]
        pairs: list[tuple[str, str]] = [
            ("x", "x"),
            ("x_true", "x"),
            ("y", "y"),
            ("y_noise_sd", "y"),
        ]
        pairs += [(n, n) for n in derived] + [(f"{n}_true", n) for n in derived]
        for var, unit_key in pairs:
            if var in ds.data_vars and units.get(unit_key):
                ds[var].attrs["units"] = units[unit_key]
        if "y_noise_cov" in ds.data_vars and units.get("y"):
            ds["y_noise_cov"].attrs["units"] = f"({units['y']})^2"
        for coord in ds.coords:
            if units.get(str(coord)):
                ds[coord].attrs["units"] = units[str(coord)]
            ds[coord].attrs.update(coord_attrs.get(str(coord), {}))


def save_inference_data(idata: az.InferenceData, path: str | os.PathLike[str]) -> Path:
    """Write ``idata`` to NetCDF (h5netcdf engine) atomically; return the path.

    Raises
    ------
    FileNotFoundError
        If the target folder does not exist.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        idata.to_netcdf(str(tmp))
    return path


# Body of the probe process (see ppl_cvae._isolated.run_isolated): opens the metadata of every
# group and variable, which is where libhdf5 was seen to hang on a corrupt file.
_PROBE_CHILD = r"""
import h5netcdf
def walk(group):
    for var in group.variables.values():
        var.dimensions, var.shape, dict(var.attrs)
    for child in group.groups.values():
        walk(child)
with h5netcdf.File(path, "r", phony_dims="sort") as f:
    walk(f)
reply(ok=True)
"""


def load_inference_data(path: str | os.PathLike[str]) -> az.InferenceData:
    """Read an InferenceData NetCDF file.

    The file's metadata is opened first in a child process with a time limit
    (:func:`ppl_cvae._isolated.run_isolated`), since libhdf5 can hang on a corrupt file.

    Raises
    ------
    DataError
        If the file is missing, unreadable, corrupt (the reader crashed or ran past its time
        limit), or has no ``posterior`` group.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"posterior file {str(path)!r} does not exist")
    # open every group's metadata in a child process first: libhdf5 can hang on a corrupt file
    reply, _, folder = run_isolated(
        _PROBE_CHILD, path, [], netcdf_timeout(path), "InferenceData NetCDF"
    )
    folder.cleanup()
    if "error" in reply:
        raise DataError(
            f"cannot read {str(path)!r} as InferenceData NetCDF: {reply['error']}: "
            f"{reply['message']}"
        )
    try:
        idata = az.from_netcdf(str(path))
    except (OSError, ValueError, KeyError, RuntimeError, IndexError, AttributeError) as err:
        raise DataError(f"cannot read {str(path)!r} as InferenceData NetCDF: {err}") from err
    if "posterior" not in idata.groups():
        raise DataError(f"{str(path)!r} has no posterior group (groups: {idata.groups()})")
    return idata


def check_posterior(
    idata: az.InferenceData,
    source: str | os.PathLike[str],
    *,
    require: Sequence[tuple[str, str]] = (("posterior", "x"),),
) -> None:
    """Check that a posterior file holds what a command reads, with usable draws.

    Parameters
    ----------
    idata : arviz.InferenceData
        As read by :func:`load_inference_data`.
    source : str or path
        The file, for messages.
    require : sequence of (group, variable)
        Variables that must be present; ``("posterior", "x")`` and ``("posterior", "z")`` must
        have ``(chain, draw, ...)`` leading dims with at least one draw and at least one finite
        value.

    Raises
    ------
    DataError
        If a required group or variable is missing, a posterior variable has no draws or no
        ``chain``/``draw`` dims, or holds only NaN/inf.
    """
    for group, var in require:
        if group not in idata.groups():
            raise DataError(
                f"{str(source)!r} has no {group} group (groups: {idata.groups()}); it is not a "
                "posterior file written by 'ppl-cvae sample'"
            )
        ds = idata[group]
        if var not in ds.data_vars:
            raise DataError(
                f"{str(source)!r} has no variable {var!r} in its {group} group "
                f"(variables: {sorted(map(str, ds.data_vars))})"
            )
        da = ds[var]
        if group in ("posterior", "posterior_predictive"):
            if tuple(da.dims[:2]) != ("chain", "draw"):
                raise DataError(
                    f"{group}.{var} in {str(source)!r} has dims {tuple(map(str, da.dims))}; "
                    "expected (chain, draw, ...)"
                )
            if da.sizes["draw"] < 1 or da.sizes["chain"] < 1:
                raise DataError(f"{group}.{var} in {str(source)!r} holds no draws")
        values = np.asarray(da.values)
        if not np.issubdtype(values.dtype, np.number):
            raise DataError(
                f"{group}.{var} in {str(source)!r} has dtype {values.dtype}; expected numbers"
            )
        if values.size == 0 or not np.isfinite(values).any():
            raise DataError(f"{group}.{var} in {str(source)!r} holds no finite value")


def summary(
    idata: az.InferenceData, var_names: Sequence[str] = ("x",), hdi_prob: float = 0.9
) -> pd.DataFrame:
    """Return ``az.summary`` statistics (mean, sd, HDI) of ``var_names``, no MCMC diagnostics.

    Returns
    -------
    pandas.DataFrame
        One row per element, columns ``mean, sd, hdi_5%, hdi_95%`` for ``hdi_prob=0.9``.
    """
    return az.summary(idata, var_names=list(var_names), kind="stats", hdi_prob=hdi_prob)


def hdi(draws: np.ndarray, hdi_prob: float = 0.9) -> np.ndarray:
    """Return the highest-density interval over the first axis; shape ``(*rest, 2)``."""
    return az.hdi(np.asarray(draws)[None], hdi_prob=hdi_prob)


def pareto_smooth(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smooth importance log weights with ArviZ's ``psislw`` (PSIS).

    Parameters
    ----------
    log_weights : ndarray, shape (..., S)
        Raw log weights, the draws along the last axis.

    Returns
    -------
    smoothed : ndarray, shape (..., S)
        Smoothed log weights, normalised over the last axis (they log-sum-exp to 0).
    khat : ndarray, shape (...)
        Generalised Pareto shape estimates (``> 0.7``: unreliable).

    References
    ----------
    Vehtari, Simpson, Gelman, Yao and Gabry (2024), Pareto smoothed importance sampling, JMLR
    25(72).
    """
    smoothed, khat = az.psislw(np.asarray(log_weights, dtype=np.float64), reff=1.0)
    return np.asarray(smoothed), np.asarray(khat)


def chain_diagnostics(draws: np.ndarray) -> tuple[float, float]:
    """Return the largest R-hat and the smallest bulk ESS over the coordinates of MCMC draws.

    Parameters
    ----------
    draws : ndarray, shape (chains, draws, dim)

    Returns
    -------
    rhat : float
        Rank-normalised split R-hat (ArviZ's ``rhat``), the largest over ``dim``; NaN for one
        chain of fewer than 4 draws.
    min_ess : float
        Bulk effective sample size (ArviZ's ``ess``), the smallest over ``dim``.

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC, Bayesian Analysis 16.
    """
    data = az.convert_to_dataset({"theta": np.asarray(draws, dtype=np.float64)})
    rhat = float(az.rhat(data)["theta"].max())
    ess = float(az.ess(data, method="bulk")["theta"].min())
    return rhat, ess
