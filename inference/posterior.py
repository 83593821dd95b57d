"""Amortized posterior draws of ``x`` given observations ``y`` (a thin layer over Predictive).

The approximate posterior of a trained CVAE is
``q(x | y) = integral p_theta(x | z, y) p_theta(z | y) dz``: ``z`` from the prior net,
``x`` from the decoder. :func:`draw_posterior` runs the Pyro ``model`` forward with
``pyro.infer.Predictive(..., parallel=True)``: the prior net and the ``y`` branch of the
decoder run once per observation, the decoder body once per draw, with no Python loop over draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import Predictive

from ppl_cvae._memory import check_memory
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem, as_problem, derived_quantities

__all__ = ["PosteriorDraws", "as_observation_batch", "bytes_per_draw", "draw_posterior"]


@dataclass(frozen=True)
class PosteriorDraws:
    """Posterior draws for ``M`` observations.

    Attributes
    ----------
    x : Tensor, shape (num_samples, M, *x_shape)
        Subsurface models in physical units (decoder noise included or not, see
        ``decoder_noise``).
    z : Tensor, shape (num_samples, M, latent_dim)
        Latent codes drawn from the prior net.
    y_rep : Tensor, shape (num_samples, M, *y_shape), or None
        Posterior predictive ``F(x) + noise`` when a problem with a forward operator was given.
    decoder_noise : bool
        Whether ``x`` includes the decoder's noise (site ``"x"``) or is its mean (``"x_mean"``).
    x_mean : Tensor, shape (num_samples, M, *x_shape), or None
        The decoder mean ``E[x | z, y]`` of every draw (site ``"x_mean"``), units of ``x``; for
        a Bernoulli facies decoder the probability of facies 1 given ``z``, whose average over
        draws estimates the posterior facies probability with less Monte Carlo noise than the
        average of the binary draws (Rao-Blackwellisation). None where not recorded (refined
        draws).
    y_model : Tensor, shape (num_samples, M, *y_shape), or None
        ``F(x)``, the noise-free data every draw predicts (``y_rep`` before the noise is
        added), units of ``y``; kept so that the likelihood and misfit of the draws need no
        second run of the forward operator. None where not recorded.
    """

    x: torch.Tensor
    z: torch.Tensor
    y_rep: torch.Tensor | None
    decoder_noise: bool
    x_mean: torch.Tensor | None = None
    y_model: torch.Tensor | None = None


def as_observation_batch(y: torch.Tensor, y_shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """Return ``y`` as a batch ``(M, *y_shape)`` and whether it was already stacked.

    Raises
    ------
    ShapeError
        If ``y`` is neither ``y_shape`` nor ``(M, *y_shape)``.
    """
    y_shape = tuple(y_shape)
    if tuple(y.shape) == y_shape:
        return y.unsqueeze(0), False
    if y.dim() == len(y_shape) + 1 and tuple(y.shape[1:]) == y_shape:
        return y, True
    raise ShapeError(
        f"observation has shape {tuple(y.shape)}; the model expects {y_shape} "
        f"or a stack (M, *{y_shape})"
    )


def bytes_per_draw(
    cvae: CVAE, num_observations: int, *, problem: Problem | None = None, oversample: int = 1
) -> int:
    """Estimate the peak working memory of one posterior draw for ``num_observations``.

    Counts float32 ``x`` (draw, decoder mean and scale), ``z`` (draw, loc, scale), the hidden
    activations of the decoder, and with a problem the posterior predictive, the forward
    operator's output, the float64 residual, temporaries and pointwise log-likelihood of the
    posterior file (:func:`inference.sample.inference_data_from_draws`) and the problem's derived
    quantities of ``x``; refinement multiplies by
    ``oversample`` candidates and four copies of each candidate (value, gradient, two Adam
    moments).

    Returns
    -------
    int
        Bytes per draw (all observations together).
    """
    config = cvae.config
    y_dim = math.prod(config.y_shape or (0,))
    per = 3 * config.x_dim + 3 * config.latent_dim + 2 * sum(config.hidden_dims)
    if problem is not None:
        # y_rep, F(x); float64 residual, two temporaries and the log-likelihood (2 units each)
        per += 10 * y_dim
        with torch.no_grad():  # derived quantities of x (e.g. slowness of facies): x-sized each
            derived = derived_quantities(problem, torch.zeros(1, *config.x_shape))
        per += config.x_dim * len(derived)
    per *= num_observations * 4
    return per * (4 * oversample if oversample > 1 else 1)


@torch.no_grad()
def draw_posterior(
    cvae: CVAE,
    y: torch.Tensor,
    num_samples: int,
    *,
    decoder_noise: bool | None = None,
    problem: Problem | None = None,
    seed: int | None = None,
) -> PosteriorDraws:
    """Draw ``num_samples`` amortized posterior samples of ``x`` for each observation.

    Parameters
    ----------
    cvae : CVAE
        A trained conditional model.
    y : Tensor, shape (M, *y_shape) or y_shape
        Observations in physical units; a single observation is treated as ``M = 1``.
    num_samples : int
        Draws per observation.
    decoder_noise : bool, optional
        True: ``x ~ p(x | z, y)`` (site ``"x"``, the full predictive density of the decoder;
        for a Bernoulli or categorical decoder the draws are facies codes). False:
        ``x = E[x | z, y]`` (site ``"x_mean"``), smoother draws whose spread comes from ``z``
        alone (for ``bernoulli`` a facies probability, not a facies field). Default:
        ``cvae.samples_decoder_noise`` (False for a basis decoder, True otherwise).
    problem : Problem, optional
        With a forward operator: also return the posterior predictive ``y_rep = F(x) + eps``,
        ``eps ~ N(0, C_e)`` (:attr:`problem.noise <ppl_cvae.problems.base.Problem.noise>`).
    seed : int, optional
        Seed of Pyro's RNG for these draws.

    Returns
    -------
    PosteriorDraws
        ``x`` and ``x_mean`` of shape ``(num_samples, M, *x_shape)``.

    Raises
    ------
    ConfigError
        If the model is unconditional or ``num_samples < 1``.
    ShapeError
        If ``y`` has the wrong shape.
    DataError
        If ``y`` holds NaN or inf.
    ResourceError
        If the draws cannot fit in memory (:func:`bytes_per_draw`).
    """
    y_shape = cvae.config.y_shape
    if y_shape is None:  # an unconditional model (config.conditional False)
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    y_batch, _ = as_observation_batch(y, y_shape)
    cvae.check_finite(y=y_batch)
    check_memory(
        bytes_per_draw(cvae, y_batch.shape[0], problem=problem) * num_samples,
        f"{num_samples} posterior draws for {y_batch.shape[0]} observation(s)",
        hint="draw fewer, or stream them to disk with "
        "inference.sample.sample_posterior_to_netcdf (ppl-cvae sample does)",
    )
    if seed is not None:
        pyro.set_rng_seed(seed)
    if decoder_noise is None:
        decoder_noise = cvae.samples_decoder_noise
    was_training = cvae.training
    cvae.eval()
    predictive = Predictive(
        cvae.model, num_samples=num_samples, parallel=True, return_sites=("z", "x", "x_mean")
    )
    with pyro.validation_enabled(False):
        out = predictive(y_batch)
    cvae.train(was_training)
    x = out["x"] if decoder_noise else out["x_mean"]
    y_rep = y_model = None
    if problem is not None:
        problem = as_problem(problem)
        y_rep = y_model = problem.forward(x)
        if not problem.noise.is_zero:
            y_rep = y_model + problem.noise.sample(tuple(x.shape[:2])).to(y_model)
    return PosteriorDraws(
        x=x,
        z=out["z"],
        y_rep=y_rep,
        decoder_noise=decoder_noise,
        x_mean=out["x_mean"],
        y_model=y_model,
    )
