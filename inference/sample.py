"""Posterior sampling straight to ``arviz.InferenceData``.

:func:`inference_data_from_draws` turns posterior draws of any origin (the amortized CVAE,
refinement, importance sampling, an exact posterior) and a problem into the groups of a
posterior file (layout: :mod:`inference.arviz_io`): the posterior predictive, the pointwise
log-likelihood, the per-draw misfit and log posterior density, the data uncertainties and the
run attributes. :func:`sample_posterior` draws from a trained CVAE and calls it;
:func:`sample_posterior_to_netcdf` streams large requests to disk.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from inference.arviz_io import az, save_inference_data, to_inference_data
from inference.posterior import (
    as_observation_batch,
    bytes_per_draw,
    draw_posterior,
    warn_far_observations,
    within_run_bounds,
)
from inference.refine import RefineConfig, refine_and_accept
from inference.training_range import (
    check_training_range,
    outside_training_range,
    pool_chunks,
    warn_outside_training_range,
)
from ppl_cvae._atomic import atomic_path, check_interrupted
from ppl_cvae._memory import check_memory, format_bytes
from ppl_cvae._version import __version__
from ppl_cvae.checks import (
    as_count,
    as_real_tensor,
    check_problem_matches,
    check_type,
    derived_seed,
    resolve_seed,
    seeded_rng,
    shape_text,
)
from ppl_cvae.data.layout import DataLayout
from ppl_cvae.errors import (
    ConfigError,
    DataError,
    NoPriorDensityError,
    OutputError,
    PplCvaeError,
    ShapeError,
)
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import NUTS_PRECONDITIONERS, Problem, describe_support
from ppl_cvae.problems.densities import checked_forward, checked_log_prior, whiten
from ppl_cvae.problems.metadata import (
    coord_attrs_of,
    data_units,
    derived_quantities,
    extra_coords_of,
    units_of,
)

__all__ = [
    "CHUNK_BYTES",
    "CorrectionConfig",
    "DECODER_MEANS_NOT_SAMPLES",
    "REFINED_NOT_SAMPLES",
    "sample_corrected",
    "IN_MEMORY_BYTES",
    "NUTS_PRECONDITIONERS",
    "SUPPORT_WARNING",
    "inference_data_from_draws",
    "sample_posterior",
    "sample_posterior_to_netcdf",
    "stack_chains",
    "warn_support_acceptance",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 2**20
"""Working memory of one chunk of draws when :func:`sample_posterior_to_netcdf` streams."""

IN_MEMORY_BYTES = 2**30
"""Requests whose draws need more than this are streamed to disk in chunks."""

_DRAW_GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "sample_stats")
"""Groups with a ``draw`` dim: the ones a streamed file appends to."""

def _count_not_finite(
    values: Mapping[str, torch.Tensor | np.ndarray | None],
) -> dict[str, list[int]]:
    """Return ``{name: [not finite, total]}`` for the arrays that hold a NaN or an infinity."""
    counts = {}
    for name, value in values.items():
        if value is None:
            continue
        array = torch.as_tensor(value)
        if not array.is_floating_point():
            continue
        bad = int((~torch.isfinite(array)).sum())
        if bad:
            counts[name] = [bad, array.numel()]
    return counts


SUPPORT_WARNING = 0.5
"""Fraction of amortized draws in the prior's support below which sampling warns."""


def warn_support_acceptance(acceptance: Sequence[float], *, stacklevel: int = 3) -> list[int]:
    """Warn of observations whose amortized draws fell mostly outside the prior's support.

    Parameters
    ----------
    acceptance : sequence of float, length M
        Fraction of the amortized posterior's draws in the support, per observation
        (:attr:`PosteriorDraws.support_acceptance <inference.posterior.PosteriorDraws>`).
    stacklevel : int, default 3
        As in ``warnings.warn``.

    Returns
    -------
    list of int
        The observations below :data:`SUPPORT_WARNING` (at most one warning names them all).

    Warns
    -----
    UserWarning
        If any observation's fraction is below :data:`SUPPORT_WARNING`: the kept draws are
        the trained posterior restricted to the support, which is not the posterior where most
        of its mass lay outside; importance sampling or NUTS with the problem correct them.
    """
    low = [m for m, value in enumerate(acceptance) if value < SUPPORT_WARNING]
    if low:
        shown = ", ".join(str(m) for m in low[:10]) + (", ..." if len(low) > 10 else "")
        worst = min(acceptance)
        warnings.warn(
            f"the amortized posterior put most of its draws outside the prior's support for "
            f"{len(low)} of {len(acceptance)} observation(s) ({shown}; as few as {worst:.1%} "
            "inside): those outside were rejected, and the draws kept are the trained "
            "posterior cut to the support, not the posterior; correct them with the physics "
            "(sample --method importance or nuts) or fit longer",
            UserWarning,
            stacklevel=stacklevel,
        )
    return low


def _warn_not_finite(counts: Mapping[str, Sequence[int]]) -> None:
    """Log one warning naming each variable with non-finite values and how many."""
    if not counts:
        return
    log.warning(
        "the posterior file holds non-finite values (kept; the draws are finite): "
        "%s. The problem's density or forward operator gives NaN or inf at these draws; "
        "arviz.loo and summaries of these variables will be NaN",
        "; ".join(f"{name} at {bad} of {total}" for name, (bad, total) in counts.items()),
    )


def stack_chains(per_observation: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack the Markov chains of each observation into one draw axis, chain after chain.

    Parameters
    ----------
    per_observation : sequence of Tensor, each shape (chains, draws, *event_shape)
        One entry per observation ``m = 0 .. M-1``, e.g. the ``x`` or ``z`` of the MCMC
        results of :func:`~inference.mcmc.nuts_sample`,
        :func:`~inference.latent_mcmc.latent_nuts_sample` or
        :func:`~inference.facies_mcmc.facies_mcmc_sample`.

    Returns
    -------
    Tensor, shape (chains * draws, M, *event_shape)
        Row ``c * draws + d`` holds draw ``d`` of chain ``c``: the layout of
        :func:`inference_data_from_draws` that :func:`~inference.arviz_io.with_chains` splits
        back into ``chains`` chains.

    Raises
    ------
    RuntimeError
        From :func:`torch.stack`, if the entries differ in shape or there are none.

    Examples
    --------
    >>> stack_chains([torch.zeros(2, 3, 4), torch.ones(2, 3, 4)]).shape
    torch.Size([6, 2, 4])
    """
    stacked = torch.stack(list(per_observation), dim=2)  # (chains, draws, M, *event_shape)
    return stacked.flatten(0, 1)


def _importance_remedy(problem: Problem, x: torch.Tensor) -> str:
    """Return what to try after importance sampling failed, by what the problem allows.

    NUTS where the support is continuous and the forward operator has a gradient (probed at
    ``x``, shape ``(*batch, *x_shape)``); otherwise more proposals, or the facies samplers for
    a discrete support.
    """
    from ppl_cvae.problems.densities import check_continuous_support, check_forward_gradient

    try:
        check_continuous_support(problem, "NUTS")
    except ConfigError:
        return "try more --proposals, or --method facies-mcmc or facies-smc (facies codes)"
    try:
        check_forward_gradient(problem, x, "NUTS")
    except PplCvaeError:  # no gradient (or a forward that fails on this layout)
        return "try more --proposals (NUTS needs a forward operator with a gradient)"
    return "try --method nuts, or more --proposals"


def _truth_batch(
    x_true: Any, stacked: bool, num_obs: int, x_shape: tuple[int, ...]
) -> torch.Tensor | None:
    """Return the truths as ``(M, *x_shape)``: one ``x_true`` for one unstacked observation.

    Raises
    ------
    ShapeError
        If ``x_true`` is neither ``(M, *x_shape)`` nor, for one observation given without a
        leading axis, ``x_shape``.
    """
    if x_true is None:
        return None
    x_true = as_real_tensor(x_true, "x_true")
    batch = x_true if stacked or x_true.dim() != len(x_shape) else x_true.unsqueeze(0)
    if tuple(batch.shape) != (num_obs, *x_shape):
        raise ShapeError(
            f"x_true has shape {tuple(x_true.shape)}; expected "
            f"{shape_text('M', x_shape) if stacked else tuple(x_shape)} matching y"
        )
    return batch


def problem_record(problem: Problem) -> dict[str, Any]:
    """Return the ``problem`` attribute of a posterior file: what rebuilds the problem.

    The problem's :meth:`~ppl_cvae.problems.base.Problem.spec` (its name and keyword
    arguments, e.g. ``{"name": "linear_gaussian", "x_dim": 2, ...}``); for a problem without
    one (a user's problem), its name and class, ``{"name": ..., "class": "module.Class"}``
    (the command line records its ``--problem package.module:factory`` reference instead).

    Returns
    -------
    dict
        JSON-serialisable; stored as a JSON string attribute.
    """
    try:
        record = problem.spec()
        json.dumps(record)
    except Exception:  # noqa: BLE001 - user problems may not serialise; the record says so
        record = None
    if not isinstance(record, dict) or "name" not in record:
        kind = type(problem)
        record = {"name": str(problem.name), "class": f"{kind.__module__}.{kind.__qualname__}"}
    return record


REFINED_NOT_SAMPLES = (
    "the draws were refined by misfit minimisation: they are not posterior samples, and "
    "PSIS-LOO or WAIC of them (az.loo, az.compare) would rank this file above any sampler's"
)
"""Why a refined posterior file has no ``log_likelihood`` group (its
``log_likelihood_omitted`` attribute)."""

DECODER_MEANS_NOT_SAMPLES = (
    "the draws are decoder means E[x|z,y] of a model whose draws include the decoder's noise "
    "(--decoder-noise mean): they are not posterior samples, and PSIS-LOO or WAIC of them "
    "(az.loo, az.compare) would rank this file above any sampler's"
)
"""Why the posterior file of decoder means has no ``log_likelihood`` group, for a model whose
posterior draws include the decoder's noise (:attr:`CVAE.samples_decoder_noise
<ppl_cvae.models.cvae.CVAE.samples_decoder_noise>`); a basis decoder's draws are its means."""


def inference_data_from_draws(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    z: torch.Tensor | None = None,
    problem: Problem | None = None,
    y_model: torch.Tensor | None = None,
    y_rep: torch.Tensor | None = None,
    x_true: torch.Tensor | None = None,
    attrs: Mapping[str, Any] | None = None,
    sample_stats: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    observation_stats: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    stats_dims: Mapping[str, Sequence[str]] | None = None,
    stats_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    generator: torch.Generator | None = None,
    warn_not_finite: bool = True,
    layout: DataLayout | None = None,
    omit_log_likelihood: str | None = None,
) -> az.InferenceData:
    """Build the ``InferenceData`` of a posterior file from draws of ``x`` and a problem.

    Parameters
    ----------
    x : Tensor, shape (S, M, *x_shape)
        Posterior draws, ``S`` for each of ``M`` observations, in the units of ``x``.
    y : Tensor, shape (M, *y_shape)
        The observations, in the units of ``y``.
    z : Tensor, shape (S, M, latent_dim), optional
        Latent draws (none for draws that have no latent code, e.g. an exact posterior).
    problem : Problem, optional
        Supplies dims, coords and units, the derived quantities of ``x``, and with its forward
        operator ``F`` and noise ``C_e`` the groups computed from the draws (Notes).
    y_model : Tensor, shape (S, M, *y_shape), optional
        ``F(x)`` when already computed (:attr:`inference.posterior.PosteriorDraws.y_model`);
        else computed here once.
    y_rep : Tensor, shape (S, M, *y_shape), optional
        Posterior predictive draws; with a problem and none given, ``F(x) + eps``,
        ``eps ~ N(0, C_e)`` drawn here (with ``generator``).
    x_true : Tensor, shape (M, *x_shape), optional
        True models (synthetic tests), stored in ``constant_data``.
    attrs : mapping, optional
        Run attributes (posterior group and file root); they update the defaults
        ``inference_library = "ppl_cvae"``, ``inference_library_version``,
        ``num_samples = S`` and ``num_observations = M``.
    sample_stats, observation_stats, stats_dims, stats_attrs : mapping, optional
        Statistics the caller adds to ``sample_stats``, per draw ``(S, M, ...)`` (e.g.
        importance ``log_weight``) and per observation ``(M, ...)`` (e.g. ``khat``); see
        :func:`inference.arviz_io.to_inference_data`. An entry replaces a computed statistic
        of the same name.
    generator : torch.Generator, optional
        Random stream of the noise of ``y_rep`` when it is drawn here.
    warn_not_finite : bool, default True
        Warn (once) when a kept variable holds NaN or infinite values; the file's
        ``not_finite`` attribute records them either way. False for a caller that collects
        the counts itself (the chunks of :func:`sample_posterior_to_netcdf`). Statistics in
        ``observation_stats`` that are not finite (an R-hat of ``inf`` for chains that never
        moved, the NaN acceptance rate of moves that were not made) are recorded in
        ``not_finite`` too, counted as stored (repeated along the draws), without a warning:
        the sampler's summary line reports them.
    layout : DataLayout, optional
        Without a problem: the dims, coordinates and units of ``x`` and ``y`` of the data
        file the model was fitted on (:attr:`CVAE.data_layout
        <ppl_cvae.models.cvae.CVAE.data_layout>`); ignored when a problem gives them.
    omit_log_likelihood : str, optional
        A reason to leave out the ``log_likelihood`` group, stored in the attribute
        ``log_likelihood_omitted``: for draws that are not posterior samples (refined draws,
        :data:`REFINED_NOT_SAMPLES`).

    Returns
    -------
    arviz.InferenceData
        ``posterior`` (``x``, ``z``, derived quantities; run attributes), ``observed_data``
        and, by what the problem provides, ``posterior_predictive``, ``log_likelihood``,
        ``sample_stats`` and ``constant_data`` (layout: :mod:`inference.arviz_io`).

    Raises
    ------
    ShapeError
        If ``y``, ``x_true``, ``y_model`` or ``y_rep`` do not match the draws, or the
        problem's ``forward`` or ``derived`` returns a tensor of another shape
        (:func:`~ppl_cvae.problems.densities.checked_forward`,
        :func:`~ppl_cvae.problems.metadata.derived_quantities`).
    ConfigError
        If the problem's ``derived`` returns a malformed mapping (a name that is not an
        identifier or is taken).
    DataError
        If the draws hold NaN or inf, the problem's ``forward`` or ``derived`` returns
        something that is not a torch tensor, or as :func:`inference.arviz_io.to_inference_data`
        (statistics that are not numbers).

    Notes
    -----
    With ``r_s = F(x_s) - y`` (``m = prod(y_shape)`` data) and ``C_e = L L^T``:

    - ``sample_stats.chi2_per_datum``: ``|L^-1 r_s|^2 / m``, the chi-squared misfit of each
      draw (Tarantola 2005, eq. 3.46); a noise-free problem whitens by its nominal
      ``misfit_std`` instead (attribute ``whitened_by``). Its mean over draws is what
      :func:`inference.diagnostics.ppc.run_ppc` estimates from ``y_rep``.
    - ``log_likelihood.y``: ``log p(y_i | y_-i, x_s)`` per datum
      (:meth:`~ppl_cvae.problems.base.Problem.log_likelihood_pointwise`), when the problem
      has noise: ``log N(y_i; F(x_s)_i, sigma_i^2)`` for independent noise; for correlated
      noise the leave-one-out conditional ``-log(2 pi) / 2 + log(Q_ii) / 2 - (Q r_s)_i^2 /
      (2 Q_ii)`` with ``Q = C_e^-1`` and ``r_s = y - F(x_s)`` (Buerkner, Gabry and Vehtari
      2021), whose terms do not sum to the joint log-likelihood (attributes ``pointwise =
      "loo_conditional"``, ``sums_to_joint = 0``; ``sample_stats.lp`` keeps the joint).
      Skipped, with the reason logged and stored in the attribute ``log_likelihood_omitted``,
      for a noise-free problem, no problem, or draws that are not posterior samples
      (``omit_log_likelihood``: refined draws, which PSIS-LOO and ``az.compare`` would
      otherwise rank above every sampler's).
    - ``sample_stats.lp``: ``log p(x_s) + log N(y; F(x_s), C_e)`` in nats, the unnormalised
      log posterior density (ArviZ's name), when the problem has a prior density
      (:attr:`~ppl_cvae.problems.base.Problem.has_prior_density`; for a problem with a
      basis, with respect to its coefficients) and noise.
    - ``constant_data.y_noise_sd``: ``sqrt(diag(C_e))`` in units of ``y``, and
      ``y_noise_cov`` when ``C_e`` is not diagonal.

    References
    ----------
    Tarantola (2005), Inverse Problem Theory, SIAM, eq. 3.46; Vehtari, Gelman and Gabry
    (2017), Statistics and Computing 27, 1413, doi:10.1007/s11222-016-9696-4 (PSIS-LOO);
    Buerkner, Gabry and Vehtari (2021), Efficient leave-one-out cross-validation for Bayesian
    non-factorized normal and Student-t models, Computational Statistics 36, 1243-1261,
    doi:10.1007/s00180-020-01045-4 (the pointwise terms of correlated noise).

    Examples
    --------
    >>> from ppl_cvae.problems import make_problem
    >>> problem = make_problem("linear_gaussian")
    >>> x, y = problem.simulate(3, torch.Generator().manual_seed(0))
    >>> idata = inference_data_from_draws(x.expand(4, 3, 2), y, problem=problem)
    >>> sorted(idata.groups())  # doctest: +NORMALIZE_WHITESPACE
    ['constant_data', 'log_likelihood', 'observed_data', 'posterior', 'posterior_predictive',
     'sample_stats']
    >>> idata.log_likelihood["y"].dims
    ('chain', 'draw', 'observation', 'datum')
    """
    num_samples, num_obs = int(x.shape[0]), int(x.shape[1])
    problem = as_problem(problem) if problem is not None else None
    if y.shape[0] != num_obs or (
        problem is not None and tuple(y.shape[1:]) != tuple(problem.y_shape)
    ):
        raise ShapeError(
            f"y has shape {tuple(y.shape)}; expected ({num_obs}, *y_shape) for draws x of shape "
            f"{tuple(x.shape)}"
        )
    if x_true is not None and tuple(x_true.shape) != tuple(x.shape[1:]):
        raise ShapeError(
            f"x_true has shape {tuple(x_true.shape)}; expected {tuple(x.shape[1:])} (M, *x_shape)"
        )
    for name, value in (("y_model", y_model), ("y_rep", y_rep)):
        if value is not None and tuple(value.shape) != (num_samples, *y.shape):
            raise ShapeError(
                f"{name} has shape {tuple(value.shape)}; expected (S, M, *y_shape) = "
                f"{(num_samples, *y.shape)}"
            )
    finite = torch.isfinite(x.detach()).flatten(2).all(-1)  # (S, M)
    if not bool(finite.all()):
        raise DataError(
            f"{int((~finite).sum())} of {finite.numel()} posterior draws of x (over "
            f"{int((~finite).all(0).sum())} of {num_obs} observation(s) entirely) hold NaN or "
            "inf: the sampler or the trained networks diverged there; nothing was written "
            "(refit, or check the observation against the training data)"
        )
    info: dict[str, Any] = {
        "inference_library": "ppl_cvae",
        "inference_library_version": __version__,
        "num_samples": num_samples,
        "num_observations": num_obs,
    }
    info.update(attrs or {})
    stats: dict[str, torch.Tensor | np.ndarray] = {}
    stat_attrs: dict[str, dict[str, Any]] = {}
    log_lik = noise_sd = noise_cov = None
    reason = "no problem was given (no forward operator, no noise model)"
    with torch.no_grad():
        derived = derived_quantities(problem, x)
        derived_true = derived_quantities(problem, x_true) if x_true is not None else {}
        if problem is not None:
            noise = problem.noise
            flat = x.reshape(num_samples * num_obs, *x.shape[2:])  # one batch axis, as in fit
            if y_model is None:
                y_model = checked_forward(problem, flat).reshape(num_samples, *y.shape)
            if y_rep is None:
                y_rep = y_model + noise.sample((num_samples, num_obs), generator).to(y_model)
            resid = y_model.to(torch.float64) - y.to(torch.float64)  # (S, M, *y_shape)
            m = math.prod(problem.y_shape)
            chi2 = whiten(problem, resid).pow(2).reshape(num_samples, num_obs, m).sum(-1) / m
            stats["chi2_per_datum"] = chi2
            stat_attrs["chi2_per_datum"] = {
                "long_name": "chi-squared data misfit per datum |L^-1 (F(x) - y)|^2 / m",
                "whitened_by": (
                    "misfit_std (nominal scale of a noise-free problem)"
                    if noise.is_zero
                    else "the noise covariance C_e = L L^T"
                ),
            }
            if noise.is_zero:
                reason = "the problem is noise-free (y = F(x) exactly): no likelihood density"
            else:
                noise_sd = noise.stddev()
                # log p(y_i | y_-i, x): the per-datum densities of independent noise, the
                # leave-one-out conditionals of correlated noise; (S, M, *y_shape), nats
                # (even in the residual: F(x) - y serves as y - F(x))
                log_lik = noise.log_prob_pointwise(resid)
                if not noise.is_diagonal:
                    noise_cov = noise.covariance()
                if problem.has_prior_density:
                    try:
                        log_prior = (  # (S, M), nats
                            checked_log_prior(problem, flat)
                            .reshape(num_samples, num_obs)
                            .to(torch.float64)
                        )
                        stats["lp"] = log_prior + noise.log_prob(resid)
                        stat_attrs["lp"] = {
                            "long_name": "log p(x) + log N(y; F(x), C_e), unnormalised log "
                            "posterior density, nats",
                            "units": "nats",
                        }
                    except NoPriorDensityError as err:
                        log.info("no sample_stats.lp: %s", err)
    if omit_log_likelihood is not None:
        log_lik, reason = None, omit_log_likelihood
    if log_lik is None:
        info["log_likelihood_omitted"] = reason
        log.info("no log_likelihood group in the posterior file: %s", reason)
    stats.update(sample_stats or {})
    for name, extra in (stats_attrs or {}).items():
        stat_attrs.setdefault(name, {}).update(extra)
    for name in observation_stats or {}:
        stats.pop(name, None)
    not_finite = _count_not_finite(
        {
            "posterior_predictive.y": y_rep,
            "log_likelihood.y": log_lik,
            **{f"sample_stats.{name}": value for name, value in stats.items()},
        }
    )
    if not_finite and warn_not_finite:
        _warn_not_finite(not_finite)
    # a sampler's own statistics (R-hat inf for chains that never moved, the NaN acceptance
    # rate of moves not made): listed, as stored (repeated along the draws), not warned about
    # (the sampler's summary line reports them)
    for name, (bad, total) in _count_not_finite(
        {f"sample_stats.{name}": value for name, value in (observation_stats or {}).items()}
    ).items():
        not_finite[name] = [bad * num_samples, total * num_samples]
    if not_finite:  # the file says it too: {variable: [not finite, total]}
        info["not_finite"] = not_finite
    names = problem if problem is not None else layout  # dims, coords and units
    return to_inference_data(
        x,
        z,
        y,
        y_rep=y_rep,
        x_true=x_true,
        x_dims=names.x_dims if names is not None else None,
        y_dims=names.y_dims if names is not None else None,
        coords=names.coords if names is not None else None,
        attrs=info,
        units=units_of(problem) if problem is not None or layout is None else layout.units,
        y_units=data_units(problem),
        x_units=data_units(problem, "x"),
        extra_coords=extra_coords_of(problem),
        coord_attrs=(
            coord_attrs_of(problem)
            if problem is not None or layout is None
            else layout.coordinate_attrs()
        ),
        var_attrs=layout.variable_attrs() if problem is None and layout is not None else None,
        noise_sd=noise_sd,
        noise_cov=noise_cov,
        derived=derived,
        derived_true=derived_true,
        log_likelihood=log_lik,
        log_likelihood_loo_conditional=noise_cov is not None,
        sample_stats=stats,
        observation_stats=observation_stats,
        stats_dims=stats_dims,
        stats_attrs=stat_attrs,
    )


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
    warn_not_finite: bool = True,
    warn_far: bool = True,
    warn_support: bool = True,
) -> az.InferenceData:
    """Draw amortized posterior samples for one or many observations as ``InferenceData``.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model.
    y : Tensor, shape y_shape or (M, *y_shape)
        One observation or a stack of ``M``; the result has the ``observation`` dim either
        way (size 1 for one observation).
    num_samples : int, default 1000
        Draws per observation.
    problem : Problem, optional
        Supplies dims/coords, the forward operator for ``posterior_predictive`` and the derived
        quantities of ``x`` (``problem.derived``, e.g. the slowness of facies draws).
    x_true : Tensor, same leading layout as ``y`` with event shape x_shape, optional
        Stored in ``constant_data`` for plots and coverage (a NumPy array or list of numbers
        is accepted, cast to float32).
    decoder_noise : bool, optional
        See :func:`inference.posterior.draw_posterior`.
    seed : int, optional
        Seed of the draws; None: one drawn from torch's global RNG
        (:func:`~ppl_cvae.checks.resolve_seed`). Recorded as the ``seed`` attribute either way.
    attrs : dict, optional
        Extra run attributes (e.g. the run folder), added to ``method`` (``"amortized"`` or
        ``"amortized_refined"``), ``inference_method`` (in words), ``model_config`` (JSON),
        ``seed``, ``num_samples``, ``problem`` (its spec, JSON), ``decoder_noise`` and those of
        :func:`inference_data_from_draws`; stored on the posterior group and the file root.
    refine : RefineConfig, optional
        Refine the amortized draws with the problem's forward operator and keep those that
        fit (:func:`inference.refine.refine_and_accept`); needs ``problem``.
    warn_not_finite : bool, default True
        As :func:`inference_data_from_draws`.
    warn_far : bool, default True
        Warn of observations far outside the training ``y``
        (:func:`~inference.posterior.warn_far_observations`); False where the caller warned
        once already (the chunks of :func:`sample_posterior_to_netcdf`).
    warn_support : bool, default True
        Warn when fewer than :data:`SUPPORT_WARNING` of the amortized draws for an observation
        fell in the prior's support (:func:`warn_support_acceptance`), or more than
        :data:`~inference.training_range.OUTSIDE_RANGE_WARNING` of their values outside the
        range of the training ``x`` of a model fitted on pairs alone
        (:func:`~inference.training_range.warn_outside_training_range`); False where the
        caller warns once for all chunks.

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior`` (``x``: ``(chain=1, draw=S, observation=M, *x_dims)``; ``z``;
        the problem's derived quantities of ``x`` on the dims of ``x``), ``observed_data``
        (``y``), and with a problem ``posterior_predictive``, ``log_likelihood`` (per datum,
        for independent noise), ``sample_stats`` (``chi2_per_datum``, ``lp``) and
        ``constant_data`` (``x_true`` and its derived quantities as ``<name>_true``, the
        noise sd); see :func:`inference_data_from_draws` and :mod:`inference.arviz_io`. Draws
        that are not posterior samples have no ``log_likelihood`` group (attribute
        ``log_likelihood_omitted``): refined draws (:data:`REFINED_NOT_SAMPLES`) and decoder
        means of a model whose draws include the decoder's noise
        (:data:`DECODER_MEANS_NOT_SAMPLES`).

    Raises
    ------
    ShapeError
        If ``y`` or ``x_true`` have the wrong shape.
    ConfigError, DataError
        As :func:`~inference.posterior.draw_posterior`; ConfigError also when ``cvae`` is not
        a CVAE, ``refine`` is given without a problem, or the problem's ``derived`` returns
        something malformed (:func:`ppl_cvae.problems.base.derived_quantities`).

    Warns
    -----
    UserWarning
        If an element of ``y`` lies more than :data:`~inference.posterior.FAR_WARNING`
        training sds from the training mean (``warn_far``); if less than
        :data:`SUPPORT_WARNING` of the draws for an observation fell in the prior's support,
        or more than :data:`~inference.training_range.OUTSIDE_RANGE_WARNING` of their values
        outside the training range of ``x`` (``warn_support``).

    Notes
    -----
    With a problem whose prior restricts its support (:meth:`Problem.restricts_support
    <ppl_cvae.problems.base.Problem.restricts_support>`) the draws outside it are rejected
    and drawn again (:func:`~inference.posterior.draw_posterior`, ``within_support``); the
    fraction kept per observation is the ``support_acceptance`` attribute (a JSON list, one
    value per observation). A model fitted on pairs alone records the range of its training
    ``x`` (:attr:`CVAE.training_x_range <ppl_cvae.models.cvae.CVAE.training_x_range>`); the
    fraction of each observation's drawn values outside it is the ``outside_training_range``
    attribute (:mod:`inference.training_range`).

    References
    ----------
    Sohn et al. (2015), Learning structured output representation using deep conditional
    generative models, NeurIPS 28; Kumar et al. (2019), ArviZ a unified library for
    exploratory analysis of Bayesian models in Python, JOSS 4(33), 1143.

    Examples
    --------
    >>> from ppl_cvae import CVAE, ModelConfig
    >>> cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
    >>> idata = sample_posterior(cvae, torch.zeros(2), num_samples=10, seed=0)
    >>> dict(idata.posterior["x"].sizes)
    {'chain': 1, 'draw': 10, 'observation': 1, 'x_dim_0': 3}
    """
    check_type(cvae, CVAE, "sample_posterior()'s cvae", "load one with load_checkpoint(run)")
    y_shape = cvae.config.y_shape
    if y_shape is None:  # as draw_posterior: an unconditional model has nothing to condition on
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    seed = resolve_seed(seed)
    problem = as_problem(problem) if problem is not None else None
    y_batch, stacked = as_observation_batch(y, y_shape)
    if warn_far:
        warn_far_observations(cvae, y_batch)
    x_true_batch = _truth_batch(x_true, stacked, y_batch.shape[0], cvae.config.x_shape)
    info: dict[str, Any] = {"method": "amortized"}
    y_model = y_rep = omit = None
    if refine is None:
        draws = draw_posterior(
            cvae, y_batch, num_samples, decoder_noise=decoder_noise, problem=problem, seed=seed
        )
        info["inference_method"] = "amortized CVAE: z ~ prior net p(z|y), " + (
            "x ~ decoder p(x|z,y)" if draws.decoder_noise else "x = decoder mean E[x|z,y]"
        )
        if not draws.decoder_noise and cvae.samples_decoder_noise:
            omit = DECODER_MEANS_NOT_SAMPLES
        y_model, y_rep = draws.y_model, draws.y_rep
        if draws.support_acceptance is not None:
            acceptance = [float(v) for v in draws.support_acceptance]
            info["support_acceptance"] = acceptance
            info["inference_method"] += ", kept inside the prior's support"
            if warn_support:
                warn_support_acceptance(acceptance)
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
        info["method"] = "amortized_refined"
        info["inference_method"] = (
            "amortized CVAE draws refined by misfit minimisation with F, accepted by misfit"
        )
        info["refine"] = dataclasses.asdict(refine)
        info["accepted_fraction"] = float(accepted.float().mean())
        omit = REFINED_NOT_SAMPLES
        y_model = draws.y_rep  # refined draws carry the noise-free F(x); the noise is added below
    outside = check_training_range(cvae, draws.x, warn=warn_support)
    if outside is not None:
        info["outside_training_range"] = outside
    info.update(
        {
            "independent_draws": 1,
            "decoder_noise": int(draws.decoder_noise),
            "model_config": cvae.config.to_dict(),
            "seed": seed,
        }
    )
    if problem is not None:
        info["problem"] = problem_record(problem)
    info.update(attrs or {})
    info["num_samples"] = num_samples
    return inference_data_from_draws(
        draws.x,
        y_batch,
        z=draws.z,
        problem=problem,
        y_model=y_model,
        y_rep=y_rep,
        x_true=x_true_batch,
        attrs=info,
        warn_not_finite=warn_not_finite,
        layout=cvae.data_layout,  # the data file's names, for a run without a problem
        omit_log_likelihood=omit,
        # the noise of refined draws' y_rep: a stream of its own
        generator=torch.Generator().manual_seed(derived_seed(seed, 1)),
    )


def _chunk_encoding(ds: Any, draws_per_chunk: int) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {"zlib": True}
        if "draw" in var.dims:
            event = [max(1, int(n)) for d, n in var.sizes.items() if d not in ("chain", "draw")]
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


def _set_run_attr(f: Any, name: str, value: Any) -> None:
    """Set a run attribute pooled over the chunks on the file, its posterior and other groups.

    Every group that carries the attribute gets it: the first chunk's value there is stale.
    """
    f.attrs[name] = value
    for group in f.groups.values():
        if group.name.strip("/") == "posterior" or name in group.attrs:
            group.attrs[name] = value


def _append_chunk(path: Path, idata: az.InferenceData, start: int) -> None:
    """Append the draws of ``idata`` at draw index ``start`` of the file's draw groups."""
    import h5netcdf

    with h5netcdf.File(path, "a") as f:
        for group in _DRAW_GROUPS:
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
    ConfigError, ShapeError, DataError
        As :func:`sample_posterior`; ConfigError also when ``num_samples``, ``seed``,
        ``chunk_bytes`` or ``in_memory_bytes`` is not an int in its range (at least 1, in
        ``[0, 2**32 - 1]``, at least 1 and at least 0).
    OutputError
        If the file would not fit on the disk (``num_samples`` and the estimate are named).

    Warns
    -----
    UserWarning
        As :func:`sample_posterior` (once, not once per chunk).

    Notes
    -----
    With ``refine`` the accepted fraction recorded in the file's attributes is the mean over
    chunks; draws are exchangeable, so chunking changes no distribution. Every group with a
    ``draw`` dim (``posterior``, ``posterior_predictive``, ``log_likelihood``,
    ``sample_stats``) grows chunk by chunk.
    """
    check_type(cvae, CVAE, "sample_posterior_to_netcdf()'s cvae", "load one with "
               "load_checkpoint(run)")
    path = Path(path)
    y_shape = cvae.config.y_shape
    if y_shape is None:
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    num_samples = as_count(num_samples, "num_samples")
    seed = resolve_seed(seed)
    chunk_bytes = as_count(chunk_bytes, "chunk_bytes")
    in_memory_bytes = as_count(in_memory_bytes, "in_memory_bytes", minimum=0)
    y_batch, _ = as_observation_batch(y, y_shape)
    warn_far_observations(cvae, y_batch)  # once here, not once per chunk
    num_obs = y_batch.shape[0]
    oversample = refine.oversample if refine is not None else 1
    per_draw = bytes_per_draw(cvae, num_obs, problem=problem, oversample=oversample)

    def draw(num: int, chunk_seed: int | None, warn: bool = True) -> az.InferenceData:
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
            warn_not_finite=warn,
            warn_far=False,
            warn_support=warn,
        )

    if per_draw * num_samples <= in_memory_bytes:
        return save_inference_data(draw(num_samples, seed), path)
    chunk = max(1, chunk_bytes // per_draw)
    check_memory(per_draw * chunk, f"a chunk of {chunk} posterior draws")
    stored = 4 * num_obs * (cvae.config.x_dim + cvae.config.latent_dim)
    if problem is not None:
        # y_rep (float32), the pointwise log-likelihood, lp and chi2_per_datum (float64)
        stored += (4 + 8) * num_obs * math.prod(y_shape) + 16 * num_obs
        with torch.no_grad():  # derived quantities of x: one x-sized variable each
            num_derived = len(derived_quantities(problem, torch.zeros(1, *cvae.config.x_shape)))
        stored += 4 * num_obs * cvae.config.x_dim * num_derived
    file_bytes = stored * num_samples
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
    if file_bytes > free:
        raise OutputError(
            f"num_samples={num_samples} posterior draws would take about "
            f"{format_bytes(file_bytes)} in {str(path)!r}; {format_bytes(free)} is free on that "
            "disk: ask for fewer"
        )
    accepted: list[tuple[int, float]] = []
    in_support: list[tuple[int, list[float]]] = []
    outside: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    not_finite: dict[str, list[int]] = {}
    with atomic_path(path) as tmp, seeded_rng(seed):
        done = 0
        while done < num_samples:
            check_interrupted()  # a Ctrl-C that a finalizer swallowed stops at the next chunk
            num = min(chunk, num_samples - done)
            # the first chunk is the in-memory request's first draws; each later one draws its
            # seed from the stream seeded here (the caller's global RNG is restored after);
            # one warning for all chunks
            idata = draw(num, seed if done == 0 else None, warn=False)
            if refine is not None:
                accepted.append((num, float(idata.attrs["accepted_fraction"])))
            if "support_acceptance" in idata.attrs:
                in_support.append((num, json.loads(idata.attrs["support_acceptance"])))
            if "outside_training_range" in idata.attrs:
                chunk_x = torch.as_tensor(idata["posterior"]["x"].values[0])
                fractions = outside_training_range(cvae, chunk_x)
                assert fractions is not None  # the attribute says the model has a range
                outside.append((num, *fractions))
            if "not_finite" in idata.attrs:
                for name, (bad, total) in json.loads(idata.attrs["not_finite"]).items():
                    counts = not_finite.setdefault(name, [0, 0])  # sizes grow with the draws
                    counts[0], counts[1] = counts[0] + bad, total // num * num_samples
            if done == 0:
                idata.attrs["num_samples"] = num_samples
                for group in idata.groups():  # every group carries the run's attributes
                    if "num_samples" in idata[group].attrs:
                        idata[group].attrs["num_samples"] = num_samples
                        idata[group].attrs["seed"] = seed  # not the chunk's derived seed
                idata.attrs["seed"] = seed
                _write_first_chunk(idata, tmp, chunk)
            else:
                _append_chunk(tmp, idata, done)
            done += num
        if accepted:
            import h5netcdf

            with h5netcdf.File(tmp, "a") as f:
                fraction = sum(n * a for n, a in accepted) / num_samples
                _set_run_attr(f, "accepted_fraction", fraction)
        if in_support:  # proposals per kept draw add up over chunks: a harmonic mean
            import h5netcdf

            per_obs = [
                num_samples / sum(n / max(values[m], 1e-300) for n, values in in_support)
                for m in range(num_obs)
            ]
            with h5netcdf.File(tmp, "a") as f:
                _set_run_attr(f, "support_acceptance", json.dumps(per_obs))
            warn_support_acceptance(per_obs)
        if outside:
            import h5netcdf

            per_obs, per_element = pool_chunks(outside)
            with h5netcdf.File(tmp, "a") as f:
                _set_run_attr(f, "outside_training_range", json.dumps(per_obs))
            warn_outside_training_range(cvae, per_obs, per_element)
        if not_finite:  # the totals over all chunks, in the file and in one warning
            import h5netcdf

            with h5netcdf.File(tmp, "a") as f:
                _set_run_attr(f, "not_finite", json.dumps(not_finite))
            _warn_not_finite(not_finite)
    return path


_PRECONDITIONED_BY = {
    "amortized": "preconditioned by their covariance",
    "prior": "whitened by the prior's Cholesky factor",
    "prior-amortized": (
        "preconditioned by their covariance in prior-whitened coordinates, clipped at the prior"
    ),
}


@dataclasses.dataclass(frozen=True)
class CorrectionConfig:
    """Settings of a per-observation correction (``ppl-cvae sample --method``).

    Attributes
    ----------
    method : {"importance", "nuts", "latent-nuts", "facies-mcmc", "facies-smc"}
        Importance sampling with the amortized posterior as proposal
        (:func:`inference.importance.importance_sample`), NUTS started and preconditioned
        by amortized draws (:func:`inference.mcmc.nuts_sample`), NUTS in the latent space
        of a generative prior (:func:`inference.latent_mcmc.sample_latent_nuts`; for a prior
        without a density), Metropolis-Hastings on the facies field and the latent of a
        generative facies prior, every draw a facies field
        (:func:`inference.facies_mcmc.sample_facies_mcmc`), or sequential Monte Carlo from
        that generative facies prior to the posterior, the likelihood tempered in with facies
        MCMC moves (:func:`inference.facies_smc.sample_facies_smc`); the last three need
        ``generative_prior`` in :func:`sample_corrected`.
    proposals : int
        Importance sampling: proposal draws per observation (the file holds ``num_samples``
        draws resampled from them).
    chains, warmup_steps : int
        NUTS and facies MCMC: chains per observation (``num_samples`` is split between them)
        and warm-up iterations per chain (facies SMC uses neither: ``populations``, and it has
        no warm-up).
    flips_per_step : int, default 16
        Facies MCMC and facies SMC: single-cell facies moves per step
        (``facies_mcmc_sample(flips_per_step=...)``; each evaluates all ``D (K - 1)``
        neighbours of every chain or particle).
    temperatures : int, default 8
        Facies MCMC: tempered replicas per chain (``facies_mcmc_sample(temperatures=...)``;
        1: no tempering).
    populations : int, default 2
        Facies SMC: independent populations per observation (``sample_facies_smc(
        populations=...)``; the file's chains; ``num_samples`` is split between them).
    smc_steps : int, default 8
        Facies SMC: facies MCMC steps per particle after each stage's resampling
        (``sample_facies_smc(steps_per_stage=...)``), at least 4.
    smc_final_steps : int, default 40
        Facies SMC: facies MCMC steps per particle after the stage that reaches the
        posterior (``sample_facies_smc(final_steps=...)``), at least 4.
    adapt_mass_matrix : bool, default True
        NUTS on ``x``: also adapt the (diagonal) mass matrix during warm-up, on top of the
        amortized preconditioner; False adapts the step size only (about a third fewer
        evaluations at equal ESS on crosshole; see :func:`inference.mcmc.nuts_sample`).
    cores : int, default 1
        NUTS on ``x``: worker processes for the chains (``nuts_sample(num_cores=...)``).
    jit_compile : bool, default False
        NUTS on ``x``: trace the potential (``nuts_sample(jit_compile=...)``).
    potential_dtype : {"float64", "float32"}, default "float32"
        NUTS on ``x``: precision of the potential (``nuts_sample(potential_dtype=...)``;
        float32 sampled the same posterior as float64 on crosshole and gravity, 1.2x faster
        per evaluation on crosshole; docs/measurements.md, "NUTS within 60 s per observation").
        Where the float32 potential is off by more than 0.01 nats at a chain's start, float64 is
        used.
    preconditioner : {"amortized", "prior", "prior-amortized"}, default "amortized"
        NUTS on ``x``: the coordinates NUTS runs in (``precondition`` of
        :func:`inference.mcmc.nuts_sample`): whitened by the amortized draws' covariance,
        by the prior's Cholesky factor, or by the amortized covariance in prior-whitened
        coordinates clipped at the prior; the last two need a Gaussian prior in the sampled
        coordinates (:meth:`~ppl_cvae.problems.base.Problem.gaussian_prior`: mt1d, the
        Gaussian random fields).

    Raises
    ------
    ConfigError
        If ``proposals < 2``, ``chains < 1``, ``warmup_steps < 0``, ``cores < 1``,
        ``flips_per_step < 0``, ``temperatures < 1``, ``smc_steps < 4``,
        ``smc_final_steps < 4``, ``populations < 1`` (or a count that is not an int), or
        ``preconditioner`` or ``potential_dtype`` is not one of these.
    """

    method: Literal["importance", "nuts", "latent-nuts", "facies-mcmc", "facies-smc"] = (
        "importance"
    )
    proposals: int = 10_000
    chains: int = 4
    warmup_steps: int = 500
    adapt_mass_matrix: bool = True
    cores: int = 1
    jit_compile: bool = False
    preconditioner: Literal["amortized", "prior", "prior-amortized"] = "amortized"
    potential_dtype: Literal["float64", "float32"] = "float32"
    flips_per_step: int = 16
    temperatures: int = 8
    populations: int = 2
    smc_steps: int = 8
    smc_final_steps: int = 40

    def __post_init__(self) -> None:
        if self.proposals < 2 or self.chains < 1 or self.warmup_steps < 0 or self.cores < 1:
            raise ConfigError(
                "CorrectionConfig needs proposals >= 2, chains >= 1, warmup_steps >= 0 and "
                f"cores >= 1, got {self.proposals}, {self.chains}, {self.warmup_steps}, "
                f"{self.cores}"
            )
        as_count(self.flips_per_step, "CorrectionConfig.flips_per_step", minimum=0)
        as_count(self.temperatures, "CorrectionConfig.temperatures", minimum=1)
        as_count(self.populations, "CorrectionConfig.populations", minimum=1)
        as_count(self.smc_steps, "CorrectionConfig.smc_steps", minimum=4)
        as_count(self.smc_final_steps, "CorrectionConfig.smc_final_steps", minimum=4)
        if self.potential_dtype not in ("float64", "float32"):
            raise ConfigError(
                f"potential_dtype must be 'float64' or 'float32', got {self.potential_dtype!r}"
            )
        if self.preconditioner not in NUTS_PRECONDITIONERS:
            raise ConfigError(
                f"preconditioner must be one of {NUTS_PRECONDITIONERS}, got {self.preconditioner!r}"
            )


def _stores_verdict(
    sampler: Callable[..., tuple[az.InferenceData, str, bool]],
) -> Callable[..., tuple[az.InferenceData, str, bool]]:
    """Store a correction's one-line verdict in every group of the file it returns.

    ``correction_summary`` (the line) and ``correction_ok`` (1, or 0 for FAILED): the verdict
    travels with the draws, so ``ppl-cvae diagnose`` and a reader of the file see it.
    """

    @functools.wraps(sampler)
    def stored(*args: Any, **kwargs: Any) -> tuple[az.InferenceData, str, bool]:
        idata, summary, ok = sampler(*args, **kwargs)
        for group in idata.groups():
            idata[group].attrs["correction_summary"] = summary
            idata[group].attrs["correction_ok"] = int(ok)
        return idata, summary, ok

    return stored


@_stores_verdict
def sample_corrected(
    cvae: CVAE,
    y: torch.Tensor,
    num_samples: int,
    problem: Problem,
    correction: CorrectionConfig,
    *,
    x_true: torch.Tensor | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    generative_prior: CVAE | None = None,
) -> tuple[az.InferenceData, str, bool]:
    """Draw posterior samples corrected with the problem's prior and noise model.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model (the proposal, or the chains' start and preconditioner).
    y : Tensor, shape y_shape or (M, *y_shape)
        Observation(s), units of ``y``.
    num_samples : int
        Draws per observation in the file (rounded up to a multiple of ``correction.chains``
        for NUTS, of ``correction.populations`` for facies SMC).
    problem : Problem
        With a prior density and a noise model (the target ``p(x | y)``).
    correction : CorrectionConfig
    x_true : Tensor, shape (M, *x_shape), optional
        Truths for ``constant_data``.
    seed : int, optional
        Seed of the draws, in ``[0, 2**32 - 1]``; None: one drawn from torch's global RNG
        (:func:`~ppl_cvae.checks.resolve_seed`), recorded as the ``seed`` attribute. NUTS:
        observation ``m`` starts from amortized draws seeded ``derived_seed(seed, m)`` and runs
        chain ``c`` with ``derived_seed(seed, m * chains + c)``, so no two chains of a file
        share a random stream (two equal observations get independent chains).
    attrs : mapping, optional
        Run attributes; ``model_config`` (the CVAE's configuration as JSON, its ``x_bounds``
        among it) is added, as :func:`sample_posterior` does.
    generative_prior : CVAE, optional
        ``method="latent-nuts"``, ``"facies-mcmc"`` or ``"facies-smc"`` (required there): the
        unconditional VAE of the prior draws whose model is sampled (for facies MCMC and SMC
        with a ``bernoulli`` or ``categorical`` decoder); the problem then needs no prior
        density.

    Returns
    -------
    idata : arviz.InferenceData
        Latent NUTS: chains and draws of ``x = g(z)`` and ``z`` with ``rhat``,
        ``rhat_threshold``, ``ess_bulk`` and ``divergences`` per observation (no per-draw
        sampler statistics; :mod:`inference.latent_mcmc`). Facies MCMC: chains and draws of
        the facies field ``x`` (codes ``0 .. K-1``) and ``z`` with ``rhat``,
        ``rhat_threshold``, ``ess_bulk``, ``accept_z``, ``accept_x``, ``swap_accept`` and
        ``rhat_data`` per observation (:mod:`inference.facies_mcmc`). Facies SMC: the
        ``correction.populations`` populations as chains, their particles as draws, of the
        facies field ``x`` and ``z``, with ``rhat``, ``rhat_threshold``, ``ess_bulk``,
        ``log_evidence``, ``log_evidence_se``, ``stages``, ``accept_z``, ``accept_x``,
        ``distinct``, ``evidence_spread`` and ``evidence_tolerance`` per observation
        (:mod:`inference.facies_smc`).
        Importance sampling: ``num_samples`` draws per observation resampled (systematic
        resampling) from ``correction.proposals`` weighted proposals, with ``khat``,
        ``sample_efficiency``, ``log_evidence`` and ``log_evidence_se`` per observation in
        ``sample_stats``. NUTS: ``chains`` chains (dims ``chain, draw``) with ``rhat``,
        ``rhat_threshold``, ``ess_bulk`` and ``divergences`` per observation, and per draw
        the sampler's ``diverging`` (through ``arviz.from_pyro``), ``energy``, ``n_steps``,
        ``tree_depth``, ``acceptance_rate`` and ``step_size``
        (:attr:`inference.mcmc.MCMCResult.sample_stats`),
        so ``az.rhat`` and ``az.ess`` read the file, and ``az.bfmi`` and ``az.plot_energy``
        the draws of one observation, ``idata.sel(observation=k)``.
    summary : str
        One line of diagnostics, saying plainly when the correction failed; stored with
        ``ok`` in the attributes ``correction_summary`` and ``correction_ok`` (0 or 1) of
        every group, so ``ppl-cvae diagnose`` and a reader of the file see the verdict.
    ok : bool
        False when any observation failed: k-hat above
        :data:`~inference.importance.KHAT_THRESHOLD` (0.7), or R-hat above
        its bound (the largest over the coordinates, against
        :func:`inference.arviz_io.rhat_bound`, the bound of mixed chains at their effective
        draws; at least :data:`~inference.mcmc.RHAT_THRESHOLD`, 1.01), or a bound above
        :data:`~inference.mcmc.RHAT_JUDGE_LIMIT` (1.1: too few draws to judge), or divergent
        transitions; for facies
        SMC, populations whose log evidence differs by more than its bound, or one that did
        not reach the posterior (``beta = 1``).

    Raises
    ------
    ConfigError
        If ``cvae`` is not a CVAE, the method is unknown, ``problem`` is None,
        ``num_samples`` is not an int >= 1,
        ``seed`` not an int in ``[0, 2**32 - 1]``, or the model cannot propose; for
        ``latent-nuts``, ``facies-mcmc`` and ``facies-smc``, if ``generative_prior`` is
        missing or not an unconditional VAE (for the facies methods: with a facies decoder,
        as the CVAE's); for ``facies-smc``, if there are fewer than 4 particles per
        population; for ``nuts``, if ``num_samples`` gives a chain fewer than
        :data:`~inference.mcmc.MIN_DRAWS_PER_CHAIN` draws.
    ResourceError
        For ``nuts``, if the draws would not fit in memory.
    NoPriorDensityError, NoLikelihoodError
        If the problem has no prior density or no noise model.

    Warns
    -----
    UserWarning
        If an element of ``y`` lies more than :data:`~inference.posterior.FAR_WARNING`
        training sds from the training mean
        (:func:`~inference.posterior.warn_far_observations`).
    """
    from inference.arviz_io import with_chains
    from inference.importance import KHAT_THRESHOLD, importance_sample
    from inference.mcmc import (
        MIN_DRAWS_PER_CHAIN,
        chains_summary,
        nuts_sample,
        preconditioner_draws,
    )

    check_type(cvae, CVAE, "sample_corrected()'s cvae", "load one with load_checkpoint(run)")
    num_samples = as_count(num_samples, "num_samples")
    seed = resolve_seed(seed)
    y_shape = cvae.config.y_shape
    if y_shape is None:
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    if problem is None:
        raise ConfigError(
            "a corrected posterior needs the problem's prior and noise model; got problem=None"
        )
    problem = as_problem(problem)
    check_problem_matches(problem, cvae.config)
    record = problem_record(problem)  # of the problem itself, before the run's bounds
    # the run's x_bounds are part of its prior: the corrections read the support from problem
    problem = within_run_bounds(problem, cvae.config.x_bounds_box())
    # the CVAE's configuration (its x_bounds among it) and the problem, as for amortized draws
    attrs = {"model_config": cvae.config.to_dict(), "problem": record, **(attrs or {})}
    y_batch, stacked = as_observation_batch(y, y_shape)
    x_true = _truth_batch(x_true, stacked, y_batch.shape[0], cvae.config.x_shape)
    cvae.check_finite(y=y_batch)
    warn_far_observations(cvae, y_batch)
    if correction.method in ("latent-nuts", "facies-mcmc", "facies-smc"):
        if generative_prior is None:
            raise ConfigError(
                f"method {correction.method!r} needs a generative prior (an unconditional VAE "
                "of the prior draws; ppl-cvae sample --generative-prior PRIOR_RUN)"
            )
        from inference.facies_mcmc import sample_facies_mcmc
        from inference.latent_mcmc import sample_latent_nuts

        if correction.method == "facies-smc":
            from inference.facies_smc import sample_facies_smc

            return sample_facies_smc(
                cvae,
                generative_prior,
                y_batch,
                num_samples,
                problem,
                populations=correction.populations,
                steps_per_stage=correction.smc_steps,
                final_steps=correction.smc_final_steps,
                flips_per_step=correction.flips_per_step,
                x_true=x_true,
                seed=seed,
                attrs=attrs,
            )

        sampler: Callable[..., tuple[az.InferenceData, str, bool]] = sample_latent_nuts
        if correction.method == "facies-mcmc":
            sampler = partial(
                sample_facies_mcmc,
                flips_per_step=correction.flips_per_step,
                temperatures=correction.temperatures,
            )
        return sampler(
            cvae,
            generative_prior,
            y_batch,
            num_samples,
            problem,
            chains=correction.chains,
            warmup_steps=correction.warmup_steps,
            x_true=x_true,
            seed=seed,
            attrs=attrs,
        )
    info: dict[str, Any] = {"seed": seed}
    info.update(attrs or {})
    if correction.method == "importance":
        imp = importance_sample(cvae, problem, y_batch, correction.proposals, seed=seed)
        generator = torch.Generator().manual_seed(seed)
        idx = imp.resample_indices(num_samples, generator)
        x = imp.draws_at(idx)
        # the normalised (Pareto-smoothed) log weight each draw had among the proposals
        log_weight = imp.smoothed_log_weight.gather(0, idx)
        stats = {
            "khat": imp.khat,
            "sample_efficiency": imp.sample_efficiency,
            "log_evidence": imp.log_evidence,
            "log_evidence_se": imp.log_evidence_se,
        }
        info.update(
            method="importance",
            inference_method=(
                "importance sampling on (x, z) with the amortized CVAE as proposal and its "
                "recognition net as auxiliary, Pareto-smoothed weights, systematic resampling"
            ),
            proposals=correction.proposals,
            independent_draws=0,
        )
        idata = inference_data_from_draws(
            x,
            y_batch,
            problem=problem,
            x_true=x_true,
            attrs=info,
            observation_stats=stats,
            generator=generator,  # y_rep's noise continues the seeded resampling stream
            sample_stats={"log_weight": log_weight},
            stats_attrs={
                "log_weight": {
                    "long_name": "normalised Pareto-smoothed log importance weight of the "
                    "proposal this draw was resampled from (the draws are equally weighted)",
                    "units": "nats",
                }
            },
        )
        failed = int((~imp.reliable).sum())
        eff = imp.sample_efficiency
        summary = (
            f"importance sampling: sample efficiency {float(eff.min()):.4f} (min over "
            f"{len(eff)} observation(s)), k-hat {float(imp.khat.max()):.2f} (max)"
        )
        if failed:
            summary += (
                f"; FAILED for {failed} of {len(eff)} observation(s) (k-hat > {KHAT_THRESHOLD}):"
                " the importance weights have a heavy tail there (the amortized proposal's tails"
                " are lighter than the posterior's somewhere), so the resampled draws may miss"
                " posterior mass the proposal seldom reaches, whatever the sample efficiency"
                " (Vehtari et al. 2024: estimates from such weights are unreliable); "
                f"{_importance_remedy(problem, x[:1, :1])}"
            )
        return idata, summary, failed == 0
    if correction.method != "nuts":
        raise ConfigError(
            f"unknown correction {correction.method!r}; expected importance, nuts, latent-nuts, "
            "facies-mcmc or facies-smc"
        )
    chains = correction.chains
    per_chain = math.ceil(num_samples / chains)
    if per_chain < MIN_DRAWS_PER_CHAIN:
        raise ConfigError(
            f"{num_samples} NUTS draws over {chains} chains is {per_chain} per chain; R-hat and "
            f"the ESS need at least {MIN_DRAWS_PER_CHAIN} per chain: ask for at least "
            f"{MIN_DRAWS_PER_CHAIN * chains} draws or fewer chains"
        )
    # Pyro keeps every chain's draws in float64, and the file holds them again in float32
    check_memory(
        chains * per_chain * y_batch.shape[0] * cvae.config.x_dim * (8 + 4) * 2,
        f"{chains} chains x {per_chain} NUTS draws of {cvae.config.x_dim} values for "
        f"{y_batch.shape[0]} observation(s)",
        hint="ask for fewer draws (--num-samples) or observations",
    )
    # the chains' start and preconditioner: many cheap amortized draws per observation
    num_start = preconditioner_draws(cvae.config.x_dim, chains)
    results = []
    for m in range(y_batch.shape[0]):
        # observation m: its own starts, and chains seeded base + m * chains + c, so that no
        # two chains of the file share a stream (two equal observations get independent draws)
        start = draw_posterior(  # inside the prior's support: a chain starts where p(x) > 0
            cvae,
            y_batch[m : m + 1],
            num_start,
            problem=problem,
            seed=derived_seed(seed, m),
            predictive=False,
        ).x[:, 0]
        results.append(
            nuts_sample(
                problem,
                y_batch[m],
                start,
                num_samples=per_chain,
                warmup_steps=correction.warmup_steps,
                num_chains=chains,
                seed=derived_seed(seed, m * chains),
                adapt_mass_matrix=correction.adapt_mass_matrix,
                num_cores=correction.cores,
                jit_compile=correction.jit_compile,
                precondition=correction.preconditioner,
                potential_dtype=correction.potential_dtype,
            )
        )
    # stored chain after chain along draw, then split into chains
    x = stack_chains([r.x for r in results])
    stats = {
        "rhat": torch.tensor([r.rhat for r in results]),
        "rhat_threshold": torch.tensor([r.rhat_threshold for r in results]),
        "ess_bulk": torch.tensor([r.min_ess for r in results]),
        "divergences": torch.tensor([r.divergences for r in results]),
    }
    # per draw: (chains, draws) per observation -> (chains * draws, M), chain after chain
    draw_stats = {
        name: np.stack([r.sample_stats[name].reshape(-1) for r in results], axis=1)
        for name in results[0].sample_stats
    }
    info.update(
        method="nuts",
        inference_method=(
            "NUTS (Pyro) on log p(x) + log p(y|x), chains started at amortized draws and "
            + _PRECONDITIONED_BY[correction.preconditioner]
        ),
        preconditioner=correction.preconditioner,
        potential_dtype=(
            "float32" if all(r.potential_dtype == "float32" for r in results) else "float64"
        ),
        chains=chains,
        warmup_steps=correction.warmup_steps,
        adapt_mass_matrix=int(correction.adapt_mass_matrix),
        independent_draws=0,
    )
    idata = inference_data_from_draws(
        x,
        y_batch,
        problem=problem,
        x_true=x_true,
        attrs=info,
        sample_stats=draw_stats,
        observation_stats=stats,
        # y_rep's noise: its own seeded stream (the chains run on forked RNGs)
        generator=torch.Generator().manual_seed(seed),
    )
    idata = with_chains(idata, chains)
    divergences = sum(r.divergences for r in results)
    advice = (
        "--warmup, --num-samples; chains that sit in different modes of a multimodal "
        "posterior do not mix however long they run: --method importance weighs every mode "
        "the amortized draws reach"
    )
    if divergences and problem.sampler_parameterisation() is None and problem.restricts_support():
        # chains that hit a wall where log_prior drops to -inf diverge: a declared support
        # lets NUTS run in unconstrained coordinates instead (Problem.sampler_parameterisation)
        advice += (
            f"; if problem {problem.name!r}'s prior is bounded, declare its support (e.g. "
            "support = constraints.interval(low, high) on the problem) so that NUTS samples "
            "in unconstrained coordinates and never meets the bound"
            if problem.support is None
            else f"; problem {problem.name!r}'s declared support "
            f"{describe_support(problem.support)} is not elementwise, so NUTS meets its "
            "boundary as a wall (no unconstrained coordinates "
            "for it): --method importance weighs the proposals outside it zero instead"
        )
    summary, ok = chains_summary(
        "NUTS",
        results,
        f"{divergences} divergent transition(s)",
        ", or divergences",
        advice,
    )
    return idata, summary, ok

