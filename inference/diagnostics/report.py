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


def write_report(
    idata: az.InferenceData, out_dir: str | os.PathLike[str], *, max_observations: int = 3
) -> list[Path]:
    """Write the uncertainty report of a posterior file into ``out_dir``.

    Files: ``summary.csv`` (``az.summary`` of ``x`` with mean, sd and 90% HDI, no MCMC
    diagnostics since the draws are independent), ``misfit.csv`` (see
    :func:`posterior_predictive_misfit`), and per observation (up to ``max_observations``):
    ``posterior_obsK.png`` (mean and 90% HDI band of ``x`` against the truth when known),
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
    has_truth = "constant_data" in idata.groups() and "x_true" in idata["constant_data"]
    has_pp = "posterior_predictive" in idata.groups()
    for m in range(min(num_obs, max_observations)):
        sel: dict[str, Any] = {"observation": m} if stacked else {}  # keyword indexers of isel
        draws = x.isel(chain=0, **sel).values
        truth = idata["constant_data"]["x_true"].isel(**sel).values if has_truth else None
        written.append(
            plots.plot_bands(
                draws,
                x_dims,
                coords,
                out / f"posterior_obs{m}.png",
                band=hdi(draws, 0.9),
                reference=truth,
                title=f"posterior of x, observation {m}",
                ylabel="x",
            )
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
