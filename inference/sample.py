"""Posterior sampling straight to ``arviz.InferenceData``."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from inference.arviz_io import az, to_inference_data
from inference.posterior import as_observation_batch, draw_posterior
from inference.refine import RefineConfig, refine_and_accept
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem, units_of

__all__ = ["sample_posterior"]


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
        Supplies dims/coords and the forward operator for ``posterior_predictive``.
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
        Groups ``posterior`` (``x``: ``(chain=1, draw=S, [observation,] *x_dims)``; ``z``),
        ``observed_data`` (``y``), and ``posterior_predictive`` / ``constant_data`` when
        available. See :mod:`inference.arviz_io`.

    Raises
    ------
    ShapeError
        If ``y`` or ``x_true`` have the wrong shape.
    ConfigError, DataError
        As :func:`~inference.posterior.draw_posterior`; ConfigError also when ``refine`` is
        given without a problem.

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
    return to_inference_data(
        draws.x,
        draws.z,
        y_batch,
        stacked=stacked,
        y_rep=draws.y_rep,
        x_true=x_true_batch,
        x_dims=getattr(problem, "x_dims", None),
        y_dims=getattr(problem, "y_dims", None),
        coords=getattr(problem, "coords", None),
        attrs=info,
        units=units_of(problem),
    )
