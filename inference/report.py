"""The uncertainty report of ``ppl-cvae diagnose``: summary CSV, misfit CSV and PNG figures.

An edge module: it reads a posterior file's ``InferenceData``, takes the numbers from
:mod:`inference.diagnostics` (``run_ppc``) and :func:`inference.arviz_io.summary`, and draws
with :mod:`inference.plots` (imported when figures are made). Every figure is built from the
file's named dims, coordinates and ``units`` attributes, never from "the last axis":

- ``x`` on a layered earth (a ``depth`` coordinate with ``cell_position = "top"``, see
  :class:`ppl_cvae.problems.base.Problem`): a staircase against depth with the half-space
  shaded, values in ``log10(U)`` shown in ``U`` on a log axis;
- ``x`` on a 2-D grid (``depth`` x ``offset``): truth, mean, sd and draws to scale, with the
  sources and receivers of the survey where the data's ``ray`` dim carries their positions,
  plus the bands of the middle column against depth;
- otherwise, bands along the longest named coordinate, one panel per other index;
- ``y``: posterior predictive bands along the longest numeric data coordinate (log axis for a
  frequency), one panel per component with its own unit, observed data with +-1 sd noise bars.

Derived quantities of ``x`` in the posterior group (e.g. the ``slowness`` of facies draws, see
:func:`ppl_cvae.problems.base.derived_quantities`) get the same figures as ``x``. When every
draw of a variable is 0 or 1 (a facies indicator), its posterior mean is the probability of
facies 1 and the panel says so (``P(x = 1)``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from inference.arviz_io import az, summary
from inference.diagnostics.ppc import run_ppc
from ppl_cvae._atomic import atomic_path
from ppl_cvae.checks import as_count
from ppl_cvae.errors import ConfigError, DataError

if TYPE_CHECKING:
    import xarray as xr
    from matplotlib.figure import Figure

__all__ = [
    "derived_variables",
    "posterior_figures",
    "predictive_figure",
    "truth_columns",
    "write_report",
]

_RAY_ENDS = ("source_offset", "source_depth", "receiver_offset", "receiver_depth")


def _select(da: xr.DataArray, observation: int) -> xr.DataArray:
    """One observation of a variable (shared ones, e.g. the noise sd, as they are), chain 0."""
    if "chain" in da.dims:
        da = da.isel(chain=0)
    if "observation" in da.dims:
        da = da.isel(observation=observation)
    return da


def _variable(idata: az.InferenceData, group: str, var: str) -> xr.DataArray:
    """``idata[group][var]``, or a DataError naming the missing group or variable."""
    if not isinstance(idata, az.InferenceData):
        raise DataError(
            f"expected an arviz.InferenceData (a posterior file), got {type(idata).__name__}"
        )
    if group not in idata.groups():
        raise DataError(
            f"the InferenceData has no {group!r} group (groups: {list(idata.groups())}); "
            "expected a posterior file as written by ppl-cvae sample"
        )
    if var not in idata[group].data_vars:
        raise DataError(
            f"the {group} group has no variable {var!r} (variables: "
            f"{sorted(map(str, idata[group].data_vars))})"
        )
    return idata[group][var]


def _num_observations(idata: az.InferenceData) -> int:
    x = _variable(idata, "posterior", "x")
    return int(x.sizes["observation"]) if "observation" in x.dims else 1


def _observation(idata: az.InferenceData, observation: int) -> int:
    """Check ``observation`` against the file's ``observation`` dim; return it as an int."""
    index = as_count(observation, "observation", minimum=0)
    num = _num_observations(idata)
    if index >= num:
        raise ConfigError(
            f"observation={index} is out of range: the file holds {num} observation(s), "
            f"0 .. {num - 1}"
        )
    return index


def _edges(centres: np.ndarray) -> tuple[float, float]:
    """Return the outer edges of cells with the given (uniformly spaced) centres."""
    c = np.asarray(centres, dtype=float)
    half = 0.5 * (c[1] - c[0]) if c.size > 1 else 0.5
    return float(c[0] - half), float(c[-1] + half)


def _coord(da: xr.DataArray, dim: str) -> tuple[np.ndarray, str]:
    """Coordinate values of ``dim`` (indices when it has none) and their unit."""
    if dim in da.coords:
        return np.asarray(da[dim].values), str(da[dim].attrs.get("units", ""))
    return np.arange(da.sizes[dim]), ""


def _label(name: str, unit: str) -> str:
    return f"{name} ({unit})" if unit else name


def _dim_name(da: xr.DataArray, dim: str) -> str:
    """Return the ``long_name`` of ``dim``'s coordinate (a data file's), else the dim's name."""
    return str(da[dim].attrs.get("long_name", dim)) if dim in da.coords else dim


def _ray_ends(idata: az.InferenceData) -> dict[str, np.ndarray] | None:
    """Source and receiver positions stored as coordinates of a ``ray`` dim, if any."""
    for group in ("observed_data", "posterior_predictive"):
        if group in idata.groups():
            ds = idata[group]
            if all(name in ds.coords for name in _RAY_ENDS):
                return {name: np.asarray(ds[name].values, dtype=float) for name in _RAY_ENDS}
    return None


def derived_variables(idata: az.InferenceData) -> list[str]:
    """Return the derived quantities in the posterior group: variables on the dims of ``x``.

    Returns
    -------
    list of str
        Names of the ``posterior`` variables other than ``x`` and ``z`` whose dims are those
        of ``x`` (e.g. ``["slowness"]`` for crosshole facies draws), in file order.
    """
    dims = _variable(idata, "posterior", "x").dims
    post = idata["posterior"]
    return [str(n) for n in post.data_vars if str(n) not in ("x", "z") and post[n].dims == dims]


def posterior_figures(
    idata: az.InferenceData,
    observation: int = 0,
    extra_panels: Mapping[str, np.ndarray] | None = None,
    var: str = "x",
) -> dict[str, Figure]:
    """Build the figures of the posterior of ``x`` (or a derived quantity) for one observation.

    Parameters
    ----------
    idata : arviz.InferenceData
        A posterior file (``posterior.x``; ``constant_data.x_true`` when the truth is known).
    observation : int, default 0
        Index along the ``observation`` dim.
    extra_panels : mapping of str to ndarray, optional
        For a 2-D grid: more panels of the grid's shape, in units of ``var``, drawn after the
        posterior sd (for example an exact posterior's mean and sd). A title ending in
        ``" sd"`` gets its own colour scale; the others share the truth's. Ignored otherwise.
    var : str, default "x"
        The posterior variable: ``"x"`` or a derived quantity (:func:`derived_variables`),
        whose truth is ``constant_data.<var>_true``.

    Returns
    -------
    dict of str to matplotlib.figure.Figure
        ``"posterior"`` always; ``"profile"`` (middle column against depth) for a 2-D grid
        with named dims or units (not for an image: ArviZ's generic ``x_dim_0, x_dim_1`` and
        no units, drawn with pixel axes on a linear colour scale). The layout is chosen from
        the dims and coordinate attributes (module docstring).

    Raises
    ------
    DataError
        If ``idata`` has no posterior group, or it has no variable ``var`` (or no ``x``).
    ConfigError
        If ``observation`` is not an int in ``0 .. M-1``.

    Notes
    -----
    Draws with NaN or inf values are left out of the statistics of each element (quantiles,
    mean, sd) and the figures' titles say how many (:mod:`inference.plots`).
    """
    from inference import plots

    observation = _observation(idata, observation)
    x = _select(_variable(idata, "posterior", var), observation)
    truth = None
    if "constant_data" in idata.groups() and f"{var}_true" in idata["constant_data"]:
        truth = _select(idata["constant_data"][f"{var}_true"], observation)
    dims = [str(d) for d in x.dims if d != "draw"]
    unit = str(x.attrs.get("units", ""))
    name = str(x.attrs.get("long_name", var))  # a data file's descriptive name, for the axes
    phys = plots.log10_unit(unit)
    title = f"posterior of {var}, observation {observation}"
    draws = np.asarray(x.transpose("draw", *dims).values, dtype=float)
    finite = np.isfinite(draws)
    # a facies indicator: the posterior mean is the probability of facies 1
    binary = bool(np.isin(draws[finite], (0.0, 1.0)).all())
    mean_title = f"P({var} = 1)" if binary else "posterior mean"
    true = None if truth is None else np.asarray(truth.transpose(*dims).values, dtype=float)
    if len(dims) == 2 and min(draws.shape[1:]) >= 4:  # a 2-D grid: depth (rows) x offset
        rows, row_unit = _coord(x, dims[0])
        cols, col_unit = _coord(x, dims[1])
        # ArviZ's generic dim names, no units: an image (or a grid the data did not name),
        # not a section in depth: no depth profile, pixel axes, a linear colour scale
        image = not unit and all(re.fullmatch(r"x_dim_\d+", d) for d in dims)
        top, bottom = _edges(rows)
        left, right = _edges(cols)
        panels: dict[str, np.ndarray] = {}
        if true is not None:
            panels["truth"] = true
        if not finite.any(0).all():
            raise DataError(
                f"{var} has no finite draw in {int((~finite.any(0)).sum())} cells of "
                f"observation {observation}"
            )
        kept = np.where(finite, draws, np.nan)  # statistics of the finite draws of each cell
        panels[mean_title] = np.nanmean(kept, 0)
        panels["posterior sd"] = np.nanstd(kept, 0)
        panels.update(extra_panels or {})
        whole = [k for k in range(draws.shape[0]) if finite[k].all()]
        for k in whole[:3]:
            panels[f"draw {k}"] = draws[k]
        left_out = int((~finite).sum())
        note = (
            f"({left_out} of {draws.size} values of {var} non-finite, left out)"
            if left_out
            else ""
        )
        ends = _ray_ends(idata)
        sources = receivers = None
        if ends is not None:
            sources = (ends["source_offset"], ends["source_depth"])
            receivers = (ends["receiver_offset"], ends["receiver_depth"])
        field = plots.fields_figure(
            panels,
            extent=(left, right, bottom, top),
            xlabel="column (pixel)" if image else _label(_dim_name(x, dims[1]), col_unit),
            ylabel="row (pixel)" if image else _label(_dim_name(x, dims[0]), row_unit),
            units={t: _label(name, unit) for t in panels},
            shared=[t for t in panels if not t.endswith(" sd")],
            sources=sources,
            receivers=receivers,
            title=note,
            log_scale=not image,
        )
        if image:
            return {"posterior": field}
        mid = draws.shape[2] // 2
        profile = plots.profile_figure(
            np.asarray(rows, dtype=float),
            draws[:, :, mid],
            truth=None if true is None else true[:, mid],
            xlabel=_label(name, unit),
            depth_label=_label(_dim_name(x, dims[0]), row_unit),
            title=f"{title}, column {dims[1]} = {cols[mid]:g} {col_unit}".rstrip(),
        )
        return {"posterior": field, "profile": profile}
    if len(dims) == 1 and dims[0] == "depth":
        depth, depth_unit = _coord(x, "depth")
        attrs = x["depth"].attrs if "depth" in x.coords else {}
        value_label = _label(name, phys if phys is not None else unit)
        if attrs.get("cell_position") == "top" and attrs.get("half_space") == "last":
            fig = plots.layered_profile_figure(
                np.asarray(depth, dtype=float),
                draws,
                truth=true,
                log10_values=phys is not None,
                value_label=value_label,
                depth_label=_label("depth of layer top", depth_unit),
                title=title,
            )
        else:
            fig = plots.profile_figure(
                np.asarray(depth, dtype=float),
                draws,
                truth=true,
                xlabel=_label(name, unit),
                depth_label=_label("depth", depth_unit),
                title=title,
            )
        return {"posterior": fig}
    fig = plots.bands_figure(
        x, reference=truth, reference_label="truth", value_name=var, title=title
    )
    return {"posterior": fig}


def predictive_figure(idata: az.InferenceData, observation: int = 0) -> Figure | None:
    """Build the posterior predictive figure of one observation, or None without draws.

    Parameters
    ----------
    idata : arviz.InferenceData
        A posterior file with ``posterior_predictive.y`` and ``observed_data.y``; the noise
        standard deviation ``constant_data.y_noise_sd`` gives the error bars when present.
    observation : int, default 0
        Index along the ``observation`` dim.

    Returns
    -------
    matplotlib.figure.Figure or None
        See :func:`inference.plots.bands_figure`: one panel per component, the longest
        numeric data coordinate on the horizontal axis.

    Raises
    ------
    DataError
        If ``idata`` has no posterior group with ``x``, or has a posterior predictive but no
        ``observed_data.y``.
    ConfigError
        If ``observation`` is not an int in ``0 .. M-1``.
    """
    from inference import plots

    observation = _observation(idata, observation)
    if "posterior_predictive" not in idata.groups():
        return None
    y_rep = _select(_variable(idata, "posterior_predictive", "y"), observation)
    y_obs = _select(_variable(idata, "observed_data", "y"), observation)
    noise = None
    if "constant_data" in idata.groups() and "y_noise_sd" in idata["constant_data"]:
        noise = idata["constant_data"]["y_noise_sd"]
    return plots.bands_figure(
        y_rep,
        reference=y_obs,
        reference_sd=noise,
        reference_label="observed",
        value_name="y",
        title=f"posterior predictive, observation {observation}",
    )


def _latent_draws(idata: az.InferenceData, observation: int) -> np.ndarray | None:
    """Return the ``(draws, latent_dim)`` latent draws of one observation, or None.

    None when the posterior has no ``z`` (importance sampling, NUTS), a ``z`` of size 0 (a
    flow on x without a latent) or a ``z`` without one finite value.
    """
    if "z" not in idata["posterior"].data_vars:
        return None
    z = np.asarray(_select(idata["posterior"]["z"], observation).values, dtype=float)
    if z.ndim != 2 or z.shape[-1] == 0 or not np.isfinite(z).any():
        return None
    return z


def truth_columns(
    idata: az.InferenceData, table: pd.DataFrame, var_names: Sequence[str]
) -> pd.DataFrame:
    """Return ``table`` with the truth of each row where the file holds one.

    For each variable of ``var_names`` whose truth ``constant_data.<var>_true`` the file holds
    (a synthetic observation: ``sample --observation`` of a file with ``x``), three columns:
    ``true`` (the value, units of the variable), ``true_z`` (``(true - mean) / sd``, NaN for
    ``sd = 0``) and ``true_in_hdi`` (whether the truth lies in the row's HDI, inclusive).
    Rows of variables without a truth get empty cells.

    Parameters
    ----------
    idata : arviz.InferenceData
        The posterior file ``table`` summarises.
    table : pandas.DataFrame
        :func:`inference.arviz_io.summary` of ``var_names`` (rows in ArviZ's order: each
        variable's elements in C order of its dims after ``chain`` and ``draw``; two
        ``hdi_*`` columns).
    var_names : sequence of str
        The variables of ``table``, in its order.

    Returns
    -------
    pandas.DataFrame
        A copy with the three columns; ``table`` itself when no variable has a truth.

    Raises
    ------
    DataError
        If the rows of ``table`` do not match the sizes of ``var_names`` in the file.

    Notes
    -----
    One observation's elements are correlated, so the fraction of truths inside a 90% HDI
    scatters around 0.9 far more than a binomial count; calibration over many observations is
    ``ppl-cvae evaluate``'s (coverage, SBC, TARP).
    """
    post = idata["posterior"]
    constant = idata["constant_data"] if "constant_data" in idata.groups() else None
    blocks: list[np.ndarray] = []
    found = False
    for var in var_names:
        da = post[var]
        dims = [str(d) for d in da.dims if d not in ("chain", "draw")]
        size = int(np.prod([da.sizes[d] for d in dims]))
        true_name = f"{var}_true"
        truth = constant[true_name] if constant is not None and true_name in constant else None
        if truth is not None and sorted(map(str, truth.dims)) == sorted(dims):
            values = np.asarray(truth.transpose(*dims).values, dtype=float).ravel()
            found = True
        else:
            values = np.full(size, np.nan)
        blocks.append(values)
    if not found:
        return table
    true = np.concatenate(blocks)
    if true.size != len(table):
        raise DataError(
            f"the summary has {len(table)} rows but {', '.join(var_names)} hold {true.size} "
            "values in the file"
        )
    out = table.copy()
    low, high = (c for c in out.columns if str(c).startswith("hdi_"))
    mean, sd = out["mean"].to_numpy(dtype=float), out["sd"].to_numpy(dtype=float)
    known = np.isfinite(true)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(known & (sd > 0), (true - mean) / sd, np.nan)
    inside = (out[low].to_numpy(dtype=float) <= true) & (true <= out[high].to_numpy(dtype=float))
    out["true"] = true
    out["true_z"] = z
    out["true_in_hdi"] = pd.array(np.where(known, inside, False), dtype="boolean")
    out.loc[~known, "true_in_hdi"] = pd.NA
    return out


def write_report(
    idata: az.InferenceData, out_dir: str | os.PathLike[str], *, max_observations: int = 3
) -> list[Path]:
    """Write the uncertainty report of a posterior file into ``out_dir``.

    Files: ``summary.csv`` (``az.summary`` of ``x`` and its derived quantities with mean, sd
    and 90% HDI; R-hat and ESS too for draws of several chains:
    :func:`inference.arviz_io.summary`; where the file holds the truth, its value, z-score
    and whether it lies in the HDI: :func:`truth_columns`), ``misfit.csv``
    (:func:`inference.diagnostics.ppc.run_ppc`: noise-whitened chi-squared per datum when the
    file holds the noise, else RMSE in the units of ``y``, said in its columns), and per
    observation (up to ``max_observations``): ``posterior_obsK.png`` (and ``profile_obsK.png``
    for a 2-D grid; :func:`posterior_figures`; ``posterior_<name>_obsK.png`` and
    ``profile_<name>_obsK.png`` for each derived quantity), ``predictive_obsK.png``
    (:func:`predictive_figure`) and ``latent_pairs_obsK.png`` (seaborn pair plot of up to 4
    latent dims, when the posterior has a ``z`` with a finite value: not for importance sampling
    or NUTS files, nor a flow on x without a latent).

    Parameters
    ----------
    idata : arviz.InferenceData
        A posterior file as written by ``ppl-cvae sample``.
    out_dir : path
        Folder, created if missing; files are written atomically.
    max_observations : int, default 3
        Observations with figures.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    DataError
        If ``idata`` has no posterior group with ``x``, or the stored noise does not match
        the data (from :func:`run_ppc`).
    ConfigError
        If ``max_observations`` is not an int >= 0.
    """
    from inference import plots

    max_observations = as_count(max_observations, "max_observations", minimum=0)
    _variable(idata, "posterior", "x")  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    derived = derived_variables(idata)
    table = summary(idata, ("x", *derived), hdi_prob=0.9)
    table = truth_columns(idata, table, ("x", *derived))
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp)
    written.append(out / "summary.csv")
    misfit = run_ppc(idata)
    with atomic_path(out / "misfit.csv") as tmp:
        misfit.to_csv(tmp, index=False)
    written.append(out / "misfit.csv")

    for m in range(min(_num_observations(idata), max_observations)):
        for name, fig in posterior_figures(idata, m).items():
            written.append(plots.save_figure(fig, out / f"{name}_obs{m}.png"))
        for var in derived:
            for name, fig in posterior_figures(idata, m, var=var).items():
                written.append(plots.save_figure(fig, out / f"{name}_{var}_obs{m}.png"))
        predictive = predictive_figure(idata, m)
        if predictive is not None:
            written.append(plots.save_figure(predictive, out / f"predictive_obs{m}.png"))
        z = _latent_draws(idata, m)
        if z is None:  # draws without a latent code (importance, NUTS, a flow on x)
            continue
        k = min(4, z.shape[-1])
        written.append(
            plots.plot_pairs(
                z[:, :k],
                [f"z{i}" for i in range(k)],
                out / f"latent_pairs_obs{m}.png",
                title=f"latent draws, observation {m}",
            )
        )
    return written
