"""The uncertainty report of ``ppl-cvae diagnose``: summary CSV, misfit CSV and PNG plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from inference.arviz_io import az, hdi, summary
from ppl_cvae._atomic import atomic_path

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["write_report", "posterior_predictive_misfit"]


def _coords(idata: az.InferenceData) -> dict[str, list]:
    out: dict[str, list] = {}
    for group in idata.groups():
        ds = idata[group]
        for name, coord in ds.coords.items():
            out[str(name)] = coord.values.tolist()
    return out


def _event_dims(da: xr.DataArray, lead: tuple[str, ...]) -> list[str]:
    return [str(d) for d in da.dims if d not in lead]  # names as in _coords (dims are str here)


def posterior_predictive_misfit(idata: az.InferenceData) -> pd.DataFrame:
    """Tabulate the posterior predictive data misfit per observation.

    Returns
    -------
    pandas.DataFrame
        One row per observation with ``rmse_of_mean`` (RMSE between the posterior predictive
        mean and the observed ``y``) and ``mean_rmse`` / ``median_rmse`` (RMSE of each draw,
        averaged / median over draws), in units of ``y``. Empty without a
        ``posterior_predictive`` group.
    """
    if "posterior_predictive" not in idata.groups():
        return pd.DataFrame(columns=["observation", "rmse_of_mean", "mean_rmse", "median_rmse"])
    y_rep = idata["posterior_predictive"]["y"]
    y_obs = idata["observed_data"]["y"]
    stacked = "observation" in y_obs.dims
    rep = y_rep.values[0]  # (S, [M,] ...)
    obs = y_obs.values
    if not stacked:
        rep, obs = rep[:, None], obs[None]
    axes = tuple(range(2, rep.ndim))
    per_draw = np.sqrt(((rep - obs[None]) ** 2).mean(axis=axes))  # (S, M)
    of_mean = np.sqrt(((rep.mean(0) - obs) ** 2).mean(axis=tuple(range(1, obs.ndim))))
    return pd.DataFrame(
        {
            "observation": np.arange(obs.shape[0]),
            "rmse_of_mean": of_mean,
            "mean_rmse": per_draw.mean(0),
            "median_rmse": np.median(per_draw, axis=0),
        }
    )


def _edges(centres: list[Any]) -> tuple[float, float]:
    """Return the outer edges of cells with the given (uniformly spaced) centres."""
    c = np.asarray(centres, dtype=float)
    half = 0.5 * (c[1] - c[0]) if c.size > 1 else 0.5
    return float(c[0] - half), float(c[-1] + half)


def _plot_x(
    draws: np.ndarray,
    truth: np.ndarray | None,
    x_dims: list[str],
    coords: dict[str, list],
    unit: str,
    out: Path,
    m: int,
    dim_units: dict[str, str],
) -> list[Path]:
    """Posterior plots of ``x`` for one observation, chosen by the layout of ``x``."""
    from inference import plots

    def dim_label(dim: str) -> str:
        return f"{dim} ({dim_units[dim]})" if dim_units.get(dim) else dim

    label = f"x ({unit})" if unit else "x"
    title = f"posterior of x, observation {m}"
    shape = draws.shape[1:]
    if len(shape) == 2 and min(shape) >= 4:  # a 2-D grid: depth (rows) x offset (columns)
        rows = coords.get(x_dims[0], list(range(shape[0])))
        cols = coords.get(x_dims[1], list(range(shape[1])))
        top, bottom = _edges(rows)
        left, right = _edges(cols)
        panels: dict[str, np.ndarray] = {}
        if truth is not None:
            panels["truth"] = truth
        panels["posterior mean"] = draws.mean(0)
        panels["posterior sd"] = draws.std(0)
        for k in range(min(3, draws.shape[0])):
            panels[f"draw {k}"] = draws[k]
        field = plots.plot_fields(
            panels,
            out / f"posterior_obs{m}.png",
            extent=(left, right, bottom, top),
            xlabel=dim_label(x_dims[1]),
            ylabel=dim_label(x_dims[0]),
            units={t: unit for t in panels},
            shared=[t for t in panels if t != "posterior sd"],
        )
        mid = shape[1] // 2
        profile = plots.plot_profile(
            np.asarray(rows, dtype=float),
            draws[:, :, mid],
            out / f"profile_obs{m}.png",
            truth=None if truth is None else truth[:, mid],
            xlabel=label,
            depth_label=dim_label(x_dims[0]),
            title=f"{title}, column {x_dims[1]} = {cols[mid]}",
        )
        return [field, profile]
    if len(shape) == 1 and x_dims[0] == "depth":
        depth = np.asarray(coords.get("depth", list(range(shape[0]))), dtype=float)
        return [
            plots.plot_profile(
                depth,
                draws,
                out / f"posterior_obs{m}.png",
                truth=truth,
                xlabel=label,
                depth_label=dim_label("depth"),
                title=title,
            )
        ]
    return [
        plots.plot_bands(
            draws,
            x_dims,
            coords,
            out / f"posterior_obs{m}.png",
            band=hdi(draws, 0.9),
            reference=truth,
            title=title,
            ylabel=label,
        )
    ]


def write_report(
    idata: az.InferenceData, out_dir: str | os.PathLike[str], *, max_observations: int = 3
) -> list[Path]:
    """Write the uncertainty report of a posterior file into ``out_dir``.

    Files: ``summary.csv`` (``az.summary`` of ``x`` with mean, sd and 90% HDI, no MCMC
    diagnostics since the draws are independent), ``misfit.csv`` (see
    :func:`posterior_predictive_misfit`), and per observation (up to ``max_observations``):
    ``posterior_obsK.png`` (mean and 90% HDI band of ``x`` against the truth when known; for a
    2-D grid ``x``: truth, posterior mean, posterior sd and three draws side by side, plus
    ``profile_obsK.png``, the credible bands of the middle column against depth; for a 1-D
    ``x`` along ``depth``: the bands against depth),
    ``predictive_obsK.png`` (posterior predictive mean and 90% HDI against observed ``y``) and
    ``latent_pairs_obsK.png`` (seaborn pair plot of up to 4 latent dims).

    Returns
    -------
    list of Path
        The files written.
    """
    from inference import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    table = summary(idata, ("x",), hdi_prob=0.9)
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp)
    written.append(out / "summary.csv")
    misfit = posterior_predictive_misfit(idata)
    with atomic_path(out / "misfit.csv") as tmp:
        misfit.to_csv(tmp, index=False)
    written.append(out / "misfit.csv")

    coords = _coords(idata)
    x = idata["posterior"]["x"]
    stacked = "observation" in x.dims
    lead = ("chain", "draw", "observation")
    x_dims = _event_dims(x, lead)
    num_obs = x.sizes["observation"] if stacked else 1
    dim_units = {d: str(x[d].attrs.get("units", "")) for d in x_dims if d in x.coords}
    has_truth = "constant_data" in idata.groups() and "x_true" in idata["constant_data"]
    has_pp = "posterior_predictive" in idata.groups()
    for m in range(min(num_obs, max_observations)):
        sel: dict[str, Any] = {"observation": m} if stacked else {}  # keyword indexers of isel
        draws = x.isel(chain=0, **sel).values
        truth = idata["constant_data"]["x_true"].isel(**sel).values if has_truth else None
        written.extend(
            _plot_x(draws, truth, x_dims, coords, x.attrs.get("units", ""), out, m, dim_units)
        )
        if has_pp:
            y_rep = idata["posterior_predictive"]["y"]
            y_dims = _event_dims(y_rep, lead)
            rep = y_rep.isel(chain=0, **sel).values
            written.append(
                plots.plot_bands(
                    rep,
                    y_dims,
                    coords,
                    out / f"predictive_obs{m}.png",
                    band=hdi(rep, 0.9),
                    reference=idata["observed_data"]["y"].isel(**sel).values,
                    reference_label="observed",
                    title=f"posterior predictive, observation {m}",
                    ylabel="y",
                )
            )
        z = idata["posterior"]["z"].isel(chain=0, **sel).values
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
