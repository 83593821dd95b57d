"""Posterior sampling straight to ``arviz.InferenceData``."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from inference.arviz_io import az, save_inference_data, to_inference_data
from inference.posterior import as_observation_batch, bytes_per_draw, draw_posterior
from inference.refine import RefineConfig, refine_and_accept
from ppl_cvae._atomic import atomic_path
from ppl_cvae._memory import check_memory, format_bytes
from ppl_cvae.errors import ConfigError, OutputError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import (
    Problem,
    as_problem,
    coord_attrs_of,
    data_units,
    derived_quantities,
    extra_coords_of,
    units_of,
)

__all__ = [
    "CHUNK_BYTES",
    "IN_MEMORY_BYTES",
    "sample_posterior",
    "sample_posterior_to_netcdf",
]

CHUNK_BYTES = 256 * 2**20
"""Working memory of one chunk of draws when :func:`sample_posterior_to_netcdf` streams."""

IN_MEMORY_BYTES = 2**30
"""Requests whose draws need more than this are streamed to disk in chunks."""


def sample_posterior(
    cvae: CVAE,
    y: torch.Tensor,
    num_samples: int = 1000,
    *,
    problem: Problem | None = None,
    x_true: torch.Tensor | None = None,
    decoder_noise: bool | None = None,
    seed: int | None = None,
    attrs: dict[str, Any] | None = None,
    refine: RefineConfig | None = None,
) -> az.InferenceData:
    """Draw amortized posterior samples for one or many observations as ``InferenceData``.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model.
    y : Tensor, shape y_shape or (M, *y_shape)
        One observation (result has no ``observation`` dim) or a stack (result has one).
    num_samples : int, default 1000
        Draws per observation.
    problem : Problem, optional
        Supplies dims/coords, the forward operator for ``posterior_predictive`` and the derived
        quantities of ``x`` (``problem.derived``, e.g. the slowness of facies draws).
    x_true : Tensor, same leading layout as ``y`` with event shape x_shape, optional
        Stored in ``constant_data`` for plots and coverage.
    decoder_noise : bool, optional
        See :func:`inference.posterior.draw_posterior`.
    seed : int, optional
        Seed of the draws.
    attrs : dict, optional
        Extra attributes (e.g. the run folder).
    refine : RefineConfig, optional
        Refine the amortized draws with the problem's forward operator and keep those that
        fit (:func:`inference.refine.refine_and_accept`); needs ``problem``.

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior`` (``x``: ``(chain=1, draw=S, [observation,] *x_dims)``; ``z``;
        the problem's derived quantities of ``x`` on the dims of ``x``), ``observed_data``
        (``y``), and ``posterior_predictive`` / ``constant_data`` (``x_true`` and its derived
        quantities as ``<name>_true``) when available. See :mod:`inference.arviz_io`.

    Raises
    ------
    ShapeError
        If ``y`` or ``x_true`` have the wrong shape.
    ConfigError, DataError
        As :func:`~inference.posterior.draw_posterior`; ConfigError also when ``refine`` is
        given without a problem, or the problem's ``derived`` returns something malformed
        (:func:`ppl_cvae.problems.base.derived_quantities`).

    References
    ----------
    Sohn et al. (2015); Kumar et al. (2019), ArviZ a unified library for exploratory analysis
    of Bayesian models in Python, JOSS 4(33), 1143.

    Examples
    --------
    >>> from ppl_cvae import CVAE, ModelConfig
    >>> cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
    >>> idata = sample_posterior(cvae, torch.zeros(2), num_samples=10, seed=0)
    >>> dict(idata.posterior["x"].sizes)
    {'chain': 1, 'draw': 10, 'x_dim_0': 3}
    """
    y_shape = cvae.config.y_shape
    if y_shape is None:  # as draw_posterior: an unconditional model has nothing to condition on
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    problem = as_problem(problem) if problem is not None else None
    y_batch, stacked = as_observation_batch(y, y_shape)
    if x_true is not None:
        x_true_batch = x_true if stacked else x_true.unsqueeze(0)
        if tuple(x_true_batch.shape) != (y_batch.shape[0], *cvae.config.x_shape):
            raise ShapeError(
                f"x_true has shape {tuple(x_true.shape)}; expected "
                f"{'(M, ' if stacked else '('}*{cvae.config.x_shape}) matching y"
            )
    else:
        x_true_batch = None
    info: dict[str, Any] = {}
    if refine is None:
        draws = draw_posterior(
            cvae, y_batch, num_samples, decoder_noise=decoder_noise, problem=problem, seed=seed
        )
        info["inference_method"] = "amortized CVAE: z ~ prior net p(z|y), x ~ decoder p(x|z,y)"
    else:
        if problem is None:
            raise ConfigError("refinement needs a problem with a forward operator")
        draws, accepted = refine_and_accept(
            cvae,
            y_batch,
            num_samples,
            problem,
            oversample=refine.oversample,
            max_misfit=refine.max_misfit,
            num_steps=refine.num_steps,
            learning_rate=refine.learning_rate,
            seed=seed,
        )
        info["inference_method"] = (
            "amortized CVAE draws refined by misfit minimisation with F, accepted by misfit"
        )
        info["refine"] = dataclasses.asdict(refine)
        info["accepted_fraction"] = float(accepted.float().mean())
    info.update(
        {
            "independent_draws": 1,
            "decoder_noise": int(draws.decoder_noise),
        }
    )
    if problem is not None:
        try:
            info["problem"] = problem.spec()
        except Exception:  # noqa: BLE001 - user problems may not serialise; attrs are optional
            info["problem"] = repr(problem)
    info.update(attrs or {})
    info["num_samples"] = num_samples
    noise_sd = noise_cov = None
    if problem is not None and not problem.noise.is_zero:
        noise = problem.noise
        noise_sd = noise.stddev()
        if not noise.is_diagonal:
            noise_cov = noise.covariance()
    with torch.no_grad():
        derived = derived_quantities(problem, draws.x)
        derived_true = derived_quantities(problem, x_true_batch) if x_true_batch is not None else {}
    return to_inference_data(
        draws.x,
        draws.z,
        y_batch,
        stacked=stacked,
        y_rep=draws.y_rep,
        x_true=x_true_batch,
        x_dims=problem.x_dims if problem is not None else None,
        y_dims=problem.y_dims if problem is not None else None,
        coords=problem.coords if problem is not None else None,
        attrs=info,
        units=units_of(problem),
        y_units=data_units(problem),
        extra_coords=extra_coords_of(problem),
        coord_attrs=coord_attrs_of(problem),
        noise_sd=noise_sd,
        noise_cov=noise_cov,
        derived=derived,
        derived_true=derived_true,
    )


def _chunk_encoding(ds: Any, draws_per_chunk: int) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {"zlib": True}
        if "draw" in var.dims:
            event = [int(n) for d, n in var.sizes.items() if d not in ("chain", "draw")]
            per_draw = 4 * max(1, math.prod(event))
            rows = max(1, min(draws_per_chunk, 2**22 // per_draw))  # HDF5 chunks of ~4 MiB
            enc["chunksizes"] = (1, rows, *event)
        encoding[str(name)] = enc
    return encoding


def _write_first_chunk(idata: az.InferenceData, path: Path, draws_per_chunk: int) -> None:
    """Write ``idata`` as ArviZ's NetCDF layout with an unlimited ``draw`` dim."""
    import xarray as xr

    mode: Literal["w", "a"] = "w"
    if idata.attrs:
        xr.Dataset(attrs=idata.attrs).to_netcdf(path, mode=mode, engine="h5netcdf")
        mode = "a"
    for group in idata.groups():
        ds = idata[group]
        ds.to_netcdf(
            path,
            mode=mode,
            group=group,
            engine="h5netcdf",
            encoding=_chunk_encoding(ds, draws_per_chunk),
            unlimited_dims=["draw"] if "draw" in ds.dims else None,
        )
        mode = "a"


def _append_chunk(path: Path, idata: az.InferenceData, start: int) -> None:
    """Append the draws of ``idata`` at draw index ``start`` of the file's draw groups."""
    import h5netcdf

    with h5netcdf.File(path, "a") as f:
        for group in ("posterior", "posterior_predictive"):
            if group not in idata.groups():
                continue
            ds = idata[group]
            num = ds.sizes["draw"]
            target = f[group]
            target.resize_dimension("draw", start + num)
            target["draw"][start : start + num] = np.arange(start, start + num)
            for name, var in ds.data_vars.items():
                target[str(name)][:, start : start + num, ...] = var.values


def sample_posterior_to_netcdf(
    cvae: CVAE,
    y: torch.Tensor,
    num_samples: int,
    path: str | os.PathLike[str],
    *,
    problem: Problem | None = None,
    x_true: torch.Tensor | None = None,
    decoder_noise: bool | None = None,
    seed: int | None = None,
    attrs: dict[str, Any] | None = None,
    refine: RefineConfig | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    in_memory_bytes: int = IN_MEMORY_BYTES,
) -> Path:
    """Draw posterior samples as :func:`sample_posterior` does and write them to NetCDF.

    A request whose draws fit in ``in_memory_bytes`` is drawn at once (identical to
    ``save_inference_data(sample_posterior(...))``); a larger one is drawn in chunks of about
    ``chunk_bytes`` of working memory each and appended to the file along an unlimited
    ``draw`` dim, so memory stays bounded whatever ``num_samples`` is. The chunk size depends
    only on the model, the number of observations and ``chunk_bytes`` (not on the machine's
    free memory), so the same seed gives the same draws. The file is written atomically.

    Parameters
    ----------
    cvae, y, num_samples, problem, x_true, decoder_noise, seed, attrs, refine
        As in :func:`sample_posterior`.
    path : str or path
        Output ``.nc`` (ArviZ InferenceData NetCDF, readable by ``arviz.from_netcdf``).
    chunk_bytes : int, default :data:`CHUNK_BYTES`
        Working memory of one chunk, in bytes.
    in_memory_bytes : int, default :data:`IN_MEMORY_BYTES`
        Largest request drawn in one piece.

    Returns
    -------
    Path
        ``path``, once the file is complete (it appears only then).

    Raises
    ------
    ConfigError, ShapeError
        As :func:`sample_posterior`.
    OutputError
        If the file would not fit on the disk (the estimate is named).

    Notes
    -----
    With ``refine`` the accepted fraction recorded in the file's attributes is the mean over
    chunks; draws are exchangeable, so chunking changes no distribution.
    """
    path = Path(path)
    y_shape = cvae.config.y_shape
    if y_shape is None:
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    y_batch, _ = as_observation_batch(y, y_shape)
    num_obs = y_batch.shape[0]
    oversample = refine.oversample if refine is not None else 1
    per_draw = bytes_per_draw(cvae, num_obs, problem=problem, oversample=oversample)

    def draw(num: int, chunk_seed: int | None) -> az.InferenceData:
        return sample_posterior(
            cvae,
            y,
            num,
            problem=problem,
            x_true=x_true,
            decoder_noise=decoder_noise,
            seed=chunk_seed,
            attrs=attrs,
            refine=refine,
        )

    if per_draw * num_samples <= in_memory_bytes:
        return save_inference_data(draw(num_samples, seed), path)
    chunk = max(1, chunk_bytes // per_draw)
    check_memory(per_draw * chunk, f"a chunk of {chunk} posterior draws")
    stored = 4 * num_obs * (cvae.config.x_dim + cvae.config.latent_dim)
    if problem is not None:
        stored += 4 * num_obs * math.prod(y_shape)
        with torch.no_grad():  # derived quantities of x: one x-sized variable each
            num_derived = len(derived_quantities(problem, torch.zeros(1, *cvae.config.x_shape)))
        stored += 4 * num_obs * cvae.config.x_dim * num_derived
    file_bytes = stored * num_samples
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
    if file_bytes > free:
        raise OutputError(
            f"{num_samples} posterior draws would take about {format_bytes(file_bytes)} in "
            f"{str(path)!r}; {format_bytes(free)} is free on that disk"
        )
    accepted: list[tuple[int, float]] = []
    with atomic_path(path) as tmp:
        done = 0
        while done < num_samples:
            num = min(chunk, num_samples - done)
            # later chunks continue the seeded random stream
            idata = draw(num, seed if done == 0 else None)
            if refine is not None:
                accepted.append((num, float(idata.attrs["accepted_fraction"])))
            if done == 0:
                idata.attrs["num_samples"] = num_samples
                _write_first_chunk(idata, tmp, chunk)
            else:
                _append_chunk(tmp, idata, done)
            done += num
        if accepted:
            import h5netcdf

            with h5netcdf.File(tmp, "a") as f:
                f.attrs["accepted_fraction"] = sum(n * a for n, a in accepted) / num_samples
    return path
