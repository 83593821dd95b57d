"""MCMC on facies fields and the latent of a generative prior, for simulator-only facies priors.

:mod:`inference.latent_mcmc` samples ``p(z | y)`` on the manifold ``g(z)`` of a generative
prior; for a facies decoder ``g(z)`` is a field of facies probabilities, so its draws are
blurred at the facies boundaries and a truth off the manifold cannot be fitted (on crosshole
channels the best ``g(z)`` near the truth misfits by 22 per datum; README). This module samples the
generative prior's whole model instead, facies noise included:

    p(z, x | y)  proportional to  N(z; 0, I_k) p_g(x | z) p(y | x),

where ``p_g(x | z)`` is the unconditional VAE's facies decoder (independent Bernoulli or
categorical cells given ``z``) and ``p(y | x)`` the problem's noise model around the forward
operator. Its ``x``-marginal is the posterior under the VAE's prior
``p_g(x) = int N(z; 0, I) p_g(x | z) dz``, which is a proper density of facies fields (the
model the ELBO fitted to the prior draws), and every draw is a facies field.

The chain alternates two Metropolis-Hastings moves, each leaving the target invariant:

- ``z`` given ``x`` (the data do not enter): an independence proposal from the generative
  prior's recognition net, ``z' ~ q(z | x)``, accepted with probability
  ``min(1, w(z') / w(z))``, ``w(z) = N(z; 0, I) p_g(x | z) / q(z | x)``. This is the
  importance weight of the VAE's own ELBO; where the recognition net is close to ``p_g(z | x)``
  nearly every proposal is accepted. Then Metropolis-adjusted Langevin moves (MALA, Roberts
  and Tweedie 1996) with the gradient of ``log N(z; 0, I) + log p_g(x | z)`` through the
  decoder and the proposal variance ``(s sd_q(x))^2`` per coordinate, ``s`` adapted during
  warm-up towards an acceptance of 0.574 (Robbins-Monro) and frozen after: they move ``z``
  where ``q(z | x)`` is too wide for a ``p_g(z | x)`` made sharp by many cells.
- ``x`` given ``z``: single-cell changes with a locally balanced proposal (Zanella 2020): every
  neighbour ``x'`` of ``x`` (one cell set to another facies; ``D (K - 1)`` of them for ``D``
  cells and ``K`` facies) is evaluated exactly, ``d(x') = log pi(x') - log pi(x)`` with
  ``pi(x) = p_g(x | z) p(y | x)``, one is proposed with probability proportional to
  ``exp(d / 2)``, and it is accepted with the Metropolis-Hastings ratio of the forward and
  reverse proposal probabilities. The neighbours go through the forward operator in batches,
  so any forward operator serves (a differentiable one is not needed); one step costs
  ``D (K - 1)`` forward evaluations per chain, none where the operator is affine in the facies
  and the likelihood the problem's Gaussian noise model (tested at the start; a neighbour's
  misfit is then one whitened column of the operator away). Gibbs with gradients (Grathwohl
  et al. 2021) would estimate ``d`` from one gradient instead; with a sharp likelihood (one
  flipped cell moves a crosshole traveltime by three noise sds) its first-order estimate is
  poor, so the exact neighbours are used.

A third, optional move (``noncentred_moves``) changes both: it moves ``z`` and carries the
field's departures from the decoder's most likely facies along, so facies boundaries move with
the latent instead of cell by cell (:func:`facies_mcmc_sample`, Notes).

By default (``temperatures=8``) each chain runs replicas at flattened likelihoods
``p(y | x)^beta`` that swap states with their neighbours (parallel tempering), so that a chain
held in one configuration of facies boundaries by a sharp likelihood can leave it through the
hotter replicas; the ladder of inverse temperatures is re-spaced during warm-up so that
neighbouring replicas swap equally often.

Chains start at the amortized CVAE's facies draws for ``y`` (by default the ``num_chains`` of
highest target density, with ``z`` at the recognition net's mean), as latent NUTS does.

References
----------
Zanella (2020), Informed proposals for local MCMC in discrete spaces, Journal of the American
Statistical Association 115, 852.
Grathwohl, Swersky, Hashemi, Duvenaud and Maddison (2021), Oops I took a gradient: scalable
sampling for discrete distributions, ICML.
Laloy, Herault, Jacques and Linde (2018), Training-image based geostatistical inversion using a
spatial generative adversarial neural network, Water Resources Research 54, 381.
Roberts and Tweedie (1996), Exponential convergence of Langevin distributions and their discrete
approximations, Bernoulli 2, 341 (MALA).
Papaspiliopoulos, Roberts and Skold (2007), A general framework for the parametrization of
hierarchical models, Statistical Science 22, 59 (the non-centred move).
Yu and Meng (2011), To center or not to center: that is not the question, Journal of
Computational and Graphical Statistics 20, 531.
Tierney (1994), Markov chains for exploring posterior distributions, Annals of Statistics 22,
1701 (independence Metropolis-Hastings; cycles of kernels).
Geyer (1991), Markov chain Monte Carlo maximum likelihood, Computing Science and Statistics:
Proceedings of the 23rd Symposium on the Interface, 156 (parallel tempering).
Syed, Bouchard-Cote, Deligiannidis and Doucet (2021), Non-reversible parallel tempering: a
scalable highly parallel MCMC scheme, JRSS B 84, 321 (even and odd swaps in turn).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from inference.latent_mcmc import (
    check_generative_prior,
    check_one_observation,
    encode_latent,
    generative_prior_posterior,
)
from inference.mcmc import chains_summary, rhat_passes, rhat_threshold
from ppl_cvae._memory import check_memory
from ppl_cvae.checks import as_count, as_real_tensor, as_seed
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.densities import (
    check_log_density_values,
    checked_forward,
    checked_log_likelihood,
)

if TYPE_CHECKING:
    from inference.arviz_io import az
    from ppl_cvae.config import ModelConfig

__all__ = [
    "FACIES_LIKELIHOODS",
    "FaciesMCMCResult",
    "check_facies_prior",
    "facies_mcmc_sample",
    "facies_mcmc_summary",
    "prior_draws",
    "sample_facies_mcmc",
]

_EPS = 1e-6  # the facies decoders clamp their probabilities to [eps, 1 - eps] (CVAE)

FACIES_LIKELIHOODS = ("bernoulli", "categorical")
"""Decoders (``ModelConfig.likelihood``) whose draws are facies codes ``0 .. K-1``."""


@dataclass(frozen=True)
class FaciesMCMCResult:
    """Draws of ``p(z, x | y)`` under a generative facies prior, for one observation.

    Attributes
    ----------
    x : Tensor, shape (chains, draws, *x_shape)
        Facies fields (codes ``0 .. K-1`` as floats; for two facies the indicator of facies 1).
    z : Tensor, shape (chains, draws, latent_dim), float64
        The generative prior's latent of every draw.
    log_likelihood : Tensor, shape (chains, draws)
        ``log p(y | x)`` of every draw, nats.
    rhat : float
        Largest rank-normalised split R-hat over the monitored quantities: the latent
        coordinates, ``log p(y | x)`` and the fraction of cells in each facies but the first.
    min_ess : float
        Smallest bulk ESS over the same quantities (all chains).
    num_quantities : int
        How many quantities ``rhat`` is the largest of.
    accept_z, accept_x : float
        Acceptance rates of the latent moves (both kinds together) and of the facies moves,
        after warm-up.
    num_evaluations : int
        Models passed through the forward operator, warm-up and starts included.
    affine : bool
        Whether the neighbours' log-likelihoods came from the affine forward operator's columns
        (``neighbours="auto"`` found ``F`` affine), not from forward passes.
    swap_accept : float
        Acceptance rate of the swaps between neighbouring replicas after warm-up (all pairs;
        NaN without tempering).
    accept_noncentred : float
        Acceptance rate of the non-centred moves after warm-up (NaN without them).
    rhat_data : float
        Largest R-hat of the quantities of ``x`` alone (``log p(y | x)`` and the facies
        fractions), beside ``rhat`` which includes the latent: the latent, sharp given ``x``,
        is the slowest to mix (crosshole channels: README).
    seconds : float
        Wall-clock time from the first evaluation of the starts to the last draw.
    """

    x: torch.Tensor
    z: torch.Tensor
    log_likelihood: torch.Tensor
    rhat: float
    min_ess: float
    num_quantities: int
    accept_z: float
    accept_x: float
    num_evaluations: int
    seconds: float
    affine: bool = False
    swap_accept: float = math.nan
    rhat_data: float = math.nan
    accept_noncentred: float = math.nan

    @property
    def rhat_threshold(self) -> float:
        """The bound on the largest R-hat that mixed chains respect (at least 1.01).

        :func:`~inference.mcmc.rhat_threshold` for these chains, draws and monitored quantities.
        """
        chains, draws = self.log_likelihood.shape
        return rhat_threshold(chains, draws, self.num_quantities)

    @property
    def converged(self) -> bool:
        """Whether the R-hat passes (:func:`~inference.mcmc.budget.rhat_passes`).

        ``rhat <= rhat_threshold <= 1.1``; there are no divergences in this sampler.
        """
        return rhat_passes(self.rhat, self.rhat_threshold)

    def facies_probabilities(self, num_facies: int = 2) -> torch.Tensor:
        """Return the posterior probability of each facies in every cell.

        Parameters
        ----------
        num_facies : int, default 2
            ``K``; the codes of ``x`` are ``0 .. K-1``.

        Returns
        -------
        Tensor, shape (*x_shape, K)
            Fraction of the draws (all chains) with each facies; sums to 1 over the last axis.
        """
        codes = self.x.long().flatten(0, 1)
        onehot = torch.nn.functional.one_hot(codes, num_facies).double()
        return onehot.mean(0).float()


def _num_facies(config: ModelConfig) -> int:
    """``K``: ``num_facies`` of a categorical decoder, 2 for a Bernoulli one."""
    return int(config.num_facies) if config.likelihood == "categorical" else 2


def check_facies_prior(prior_vae: object, problem: Problem | None = None) -> CVAE:
    """Check that ``prior_vae`` is a generative prior whose draws are facies fields.

    Parameters
    ----------
    prior_vae : CVAE
        Expected: an unconditional VAE
        (:func:`~inference.latent_mcmc.check_generative_prior`) with a ``bernoulli`` or
        ``categorical`` decoder.
    problem : Problem, optional
        When given, its ``x_shape`` must be the VAE's.

    Returns
    -------
    CVAE
        ``prior_vae`` itself.

    Raises
    ------
    ConfigError
        If ``prior_vae`` is not a generative prior, or its decoder is not a facies decoder.
    ShapeError
        If its ``x_shape`` is not the problem's.
    """
    vae = check_generative_prior(prior_vae, problem)
    likelihood = vae.config.likelihood
    if likelihood not in FACIES_LIKELIHOODS:
        raise ConfigError(
            f"facies MCMC needs a generative prior with a bernoulli or categorical decoder, got "
            f"likelihood {likelihood!r} (use latent NUTS for a continuous x)"
        )
    return vae


def _class_log_probs(prior_vae: CVAE, z: torch.Tensor, num_facies: int) -> torch.Tensor:
    """``log p_g(x_i = k | z)`` for ``z`` of shape ``(C, k)``: shape ``(C, D, K)``, float64."""
    _, loc = prior_vae.x_distribution(z.to(prior_vae.x_standardiser.mean.dtype), None)
    assert loc is not None
    probs = loc.double().clamp(_EPS, 1 - _EPS).reshape(len(z), -1, *loc.shape[-1:])
    if num_facies == 2 and prior_vae.config.likelihood == "bernoulli":
        probs = probs.reshape(len(z), -1)
        return torch.stack([torch.log1p(-probs), torch.log(probs)], -1)
    return torch.log(probs)


def prior_draws(
    prior_vae: CVAE, num: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``(z, x)`` exactly from a generative facies prior: ``z ~ N(0, I)``, ``x ~ p_g(x | z)``.

    Parameters
    ----------
    prior_vae : CVAE
        Unconditional VAE with a ``bernoulli`` or ``categorical`` decoder
        (:func:`check_facies_prior`).
    num : int
        Draws.
    generator : torch.Generator
        Source of the draws (CPU).

    Returns
    -------
    z : Tensor, shape (num, latent_dim), float64
    codes : Tensor, shape (num, D), int64
        Facies codes ``0 .. K-1`` of the ``D`` cells (independent given ``z``: ancestral
        sampling by inversion of each cell's cumulative class probabilities).
    class_log_probs : Tensor, shape (num, D, K), float64
        ``log p_g(x_i = k | z)``.
    """
    num_facies = _num_facies(prior_vae.config)
    z = torch.randn((num, prior_vae.config.latent_dim), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        class_lp = _class_log_probs(prior_vae, z, num_facies)
    u = torch.rand(class_lp.shape[:-1], generator=generator, dtype=torch.float64)
    codes = (class_lp.exp().cumsum(-1)[..., :-1] < u.unsqueeze(-1)).sum(-1)
    return z, codes, class_lp


def _weight_from(
    z: torch.Tensor,
    codes: torch.Tensor,
    class_log_p: torch.Tensor,
    loc: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """Return ``log N(z; 0, I) + log p_g(x | z) [- log q(z | x)]`` from class log-probabilities.

    Without ``loc`` and ``scale`` the target of ``z`` given ``x``; with them the independence
    sampler's log weight. Shape ``(C,)``.
    """
    log_prior = -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
    log_decoder = class_log_p.gather(-1, codes.unsqueeze(-1)).squeeze(-1).sum(-1)
    if loc is None or scale is None:  # the target of z given x only
        return log_prior + log_decoder
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    return log_prior + log_decoder - log_q


def facies_mcmc_sample(
    prior_vae: CVAE,
    problem: Problem,
    y: torch.Tensor,
    init: torch.Tensor,
    *,
    num_samples: int = 200,
    warmup_steps: int = 300,
    num_chains: int = 4,
    flips_per_step: int = 16,
    latent_moves: int = 2,
    start: Literal["best", "first"] = "best",
    seed: int = 0,
    batch_models: int = 4096,
    dtype: torch.dtype = torch.float32,
    neighbours: Literal["auto", "forward"] = "auto",
    temperatures: int = 8,
    min_beta: float = 0.01,
    noncentred_moves: int = 0,
    init_z: torch.Tensor | None = None,
    likelihood_power: float = 1.0,
    noncentred_scale: float = 0.05,
) -> FaciesMCMCResult:
    """Sample ``p(z, x | y)`` of a generative facies prior (module docstring), all chains at once.

    Parameters
    ----------
    prior_vae : CVAE
        The generative prior: an unconditional VAE with a ``bernoulli`` or ``categorical``
        decoder, fitted on the problem's prior draws (``ppl-cvae fit --unconditional``).
    problem : Problem
        With a noise model (``log_likelihood``); its forward operator reads facies codes.
    y : Tensor, shape y_shape
        One observation, units of ``y``.
    init : Tensor, shape (N, *x_shape)
        Facies fields (codes ``0 .. K-1``) that start the chains: pass the amortized CVAE's
        draws for ``y``.
    num_samples, warmup_steps : int
        Steps kept (at least 4) and discarded per chain. One step is ``1 + latent_moves``
        latent moves and ``flips_per_step`` facies moves.
    num_chains : int, default 4
        Chains (at most ``N``), run together in one batch.
    flips_per_step : int, default 16
        Facies moves per step (each evaluates all ``D (K - 1)`` neighbours of every chain).
    latent_moves : int, default 2
        Metropolis-adjusted Langevin (MALA) moves of ``z`` per step, after the independence
        move (each one pass of the prior's decoder and its gradient).
    start : {"best", "first"}, default "best"
        The ``num_chains`` rows of ``init`` of highest target density (``z`` at the mean of
        ``q(z | x)``), or the first ``num_chains``.
    seed : int, default 0
        Seed of the sampler's own ``torch.Generator``.
    batch_models : int, default 4096
        Most models passed to ``problem.log_likelihood`` in one call (bounds the memory).
    dtype : torch.dtype, default float32
        Dtype of the facies fields and the observation given to the forward operator (its
        ``log p(y | x)`` is then accumulated in float64). float32 halves the cost of the
        neighbours' evaluations (crosshole: 33 against 83 ms for 4 chains x 1024 neighbours,
        1 thread); its rounding moves ``log p(y | x)`` by about ``1e-7 |log p(y | x)|`` nats,
        which the acceptance ratios tolerate near the posterior (chi-squared of order the
        number of data). Pass ``torch.float64`` for a badly scaled user problem.
    neighbours : {"auto", "forward"}, default "auto"
        How the neighbours' ``log p(y | x')`` are computed. ``"forward"``: every neighbour
        through ``problem.log_likelihood`` (any forward operator and noise model). ``"auto"``:
        first test whether the forward operator is affine in the facies codes,
        ``F(x) = F(0) + J x`` (the columns of ``J`` from ``D`` forward passes of the unit
        fields, in float64), on the chains' starts and on 64 random facies fields, and
        whether ``log_likelihood`` is the problem's Gaussian noise model around ``F``
        (:attr:`~ppl_cvae.problems.base.Problem.noise`); where both hold to 1e-9 relative, a
        neighbour's data are ``F(x) + (x'_i - x_i) J_i`` and its log-likelihood the noise
        model's, with no forward pass (crosshole's straight-ray traveltimes: about 40x fewer
        operations per facies move); otherwise as ``"forward"``.
    temperatures : int, default 8
        Replicas per chain at the inverse temperatures ``beta_t = min_beta^(t / (T - 1))``,
        ``t = 0 .. T-1``, each targeting ``N(z; 0, I) p_g(x | z) p(y | x)^beta_t``, with
        swaps of neighbouring replicas after every step (even and odd pairs in turn,
        accepted with ``min(1, exp((beta_t - beta_t+1)(log p(y | x_t+1) - log p(y | x_t))))``;
        parallel tempering, Geyer 1991; the alternation of Syed et al. 2021). The betas start
        geometric and are re-spaced three times during warm-up (after each of its first three
        quarters, when it has at least 40 steps) so that neighbouring replicas swap equally
        often (Syed et al. 2021, sec. 5.1), then fixed. Only the ``beta = 1`` replica is kept.
        1: no tempering. The cost grows about ``T``-fold.
    min_beta : float, default 0.01
        The hottest replica's inverse temperature, in ``[0, 1)``. 0: the hottest replica is
        the generative prior itself, replaced by an exact draw ``z ~ N(0, I)``, ``x ~ p_g(x |
        z)`` before every round of swaps (an independent reference, Syed et al. 2021), so that
        configurations of facies far from the chains' can enter through the ladder; the
        other replicas start geometric from 1 to ``1e-6`` and are re-spaced as above.
    noncentred_moves : int, default 0
        Joint moves of ``(z, x)`` per step that move ``z`` and carry the field's departures
        from the decoder's most likely facies with it (Notes), after the latent moves. Each
        costs a pass of the prior's decoder and one ``log p(y | x)`` per replica.
    noncentred_scale : float, default 0.05
        The non-centred move's step ``s`` in units of the latent (whose prior is ``N(0, I)``)
        at the start, positive and finite; adapted during warm-up, then frozen (with
        ``warmup_steps=0`` it is the step of every move).
    init_z : Tensor, shape (N, latent_dim), optional
        The latent of every row of ``init``, where the chains continue a state ``(z, x)``
        (sequential Monte Carlo, :mod:`inference.facies_smc`); by default the mean of the
        recognition net's ``q(z | x)``.
    likelihood_power : float, default 1.0
        ``beta_0`` in ``(0, 1]``: the kept chains target ``N(z; 0, I) p_g(x | z) p(y |
        x)^beta_0`` (a tempered posterior), their replicas ``beta_0 beta_t``. With
        ``warmup_steps=0`` nothing adapts, so every step is the same kernel, invariant for that
        target (what :func:`~inference.facies_smc.facies_smc_sample` moves its particles with).

    Returns
    -------
    FaciesMCMCResult

    Raises
    ------
    ConfigError
        If ``prior_vae`` is not an unconditional VAE with a facies decoder, a count or
        ``seed`` is not an int in its range (a float, a bool, a string), ``start`` is unknown,
        ``dtype`` is not a floating torch dtype, ``likelihood_power`` not in ``(0, 1]`` or
        ``noncentred_scale`` not a positive finite number.
    ShapeError
        If ``y`` is not one observation, ``init`` not ``(N >= 1, *x_shape)``, ``init_z`` not
        ``(N, latent_dim)``, or the VAE's ``x_shape`` not the problem's.
    DataError
        If ``y`` or ``init`` is not an array of real numbers (tensors, NumPy arrays and lists
        are accepted; also for ``init_z``), ``y`` or ``init_z`` holds NaN or inf, or ``init``
        holds a value that is not a facies code ``0 .. K-1``.
    ResourceError
        If the kept steps (``num_samples`` per chain) or the working state of the
        ``num_chains x temperatures`` replicas would not fit in memory.
    NoLikelihoodError
        If the problem has no noise model.

    Notes
    -----
    The centred moves above update ``z`` given ``x`` and ``x`` given ``z``; where the decoder is
    sharp each pins the other, and a configuration of facies boundaries changes only through
    improbable intermediate states. The non-centred move (the non-centred parametrisation of
    Papaspiliopoulos, Roberts and Skold 2007, interleaved with the centred one as in Yu and
    Meng 2011) writes the field as the decoder's most likely facies plus a departure,
    ``x = (m(z) + e) mod K`` with ``m(z)`` the argmax of ``p_g(x_i | z)``, and moves ``z``
    with ``e`` held: ``z' = z + s eps``, ``eps ~ N(0, I)``, ``x' = (x - m(z) + m(z')) mod K``,
    so the boundaries move with ``z``. For a given ``eps`` the map is a bijection of
    ``(z, x)`` whose inverse is the same move with ``-eps``, and the discrete part has no
    Jacobian, so it is accepted with ``min(1, pi(z', x') / pi(z, x))``. ``s`` is adapted per
    replica during warm-up towards an acceptance of 0.3 (Robbins-Monro), then frozen.

    The latent move's proposal is ``q(z | x)``, a Gaussian with full support, so the cycle of
    the two moves is irreducible on ``(z, x)`` wherever the facies moves can connect the
    fields; the facies move is reversible with respect to ``pi(x | z)`` by construction
    (Zanella 2020, with the balancing function ``sqrt``). The chains' cost is
    ``num_chains (warmup_steps + num_samples) flips_per_step D (K - 1)`` forward evaluations
    (none with the affine path of ``neighbours="auto"``, after its ``D + 1`` for ``J``).

    Examples
    --------
    >>> import torch
    >>> from ppl_cvae.config import ModelConfig
    >>> from ppl_cvae.problems import LinearGaussian
    >>> vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
    ...                        likelihood="bernoulli", prior="standard_normal"))
    >>> res = facies_mcmc_sample(vae, LinearGaussian(), torch.zeros(2), torch.zeros(3, 2),
    ...                          num_samples=5, warmup_steps=5, num_chains=2)
    >>> tuple(res.x.shape), tuple(res.z.shape)
    ((2, 5, 2), (2, 5, 1))
    """
    from inference.arviz_io import chain_diagnostics

    problem = as_problem(problem)
    check_facies_prior(prior_vae, problem)
    cfg = prior_vae.config
    if start not in ("best", "first"):
        raise ConfigError(f"start must be 'best' or 'first', got {start!r}")
    if neighbours not in ("auto", "forward"):
        raise ConfigError(f"neighbours must be 'auto' or 'forward', got {neighbours!r}")
    temperatures = as_count(temperatures, "temperatures", minimum=1)
    if not (
        isinstance(min_beta, (int, float))
        and not isinstance(min_beta, bool)
        and 0.0 <= float(min_beta) < 1.0
    ):
        raise ConfigError(f"min_beta must be a number in [0, 1), got {min_beta!r}")
    if not (
        isinstance(likelihood_power, (int, float))
        and not isinstance(likelihood_power, bool)
        and 0.0 < float(likelihood_power) <= 1.0
    ):
        raise ConfigError(
            f"likelihood_power must be a number in (0, 1], got {likelihood_power!r}"
        )
    if not (
        isinstance(noncentred_scale, (int, float))
        and not isinstance(noncentred_scale, bool)
        and 0.0 < float(noncentred_scale) < math.inf
    ):
        raise ConfigError(
            f"noncentred_scale must be a positive finite number, got {noncentred_scale!r}"
        )
    num_samples = as_count(num_samples, "num_samples", minimum=4)
    warmup_steps = as_count(warmup_steps, "warmup_steps", minimum=0)
    num_chains = as_count(num_chains, "num_chains", minimum=1)
    flips_per_step = as_count(flips_per_step, "flips_per_step", minimum=0)
    latent_moves = as_count(latent_moves, "latent_moves", minimum=0)
    noncentred_moves = as_count(noncentred_moves, "noncentred_moves", minimum=0)
    batch_models = as_count(batch_models, "batch_models", minimum=1)
    seed = as_seed(seed) or 0
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"dtype must be a floating torch.dtype (torch.float32 or torch.float64), got "
            f"{dtype!r}"
        )
    num_facies = _num_facies(cfg)
    x_shape = tuple(cfg.x_shape)
    y, init = check_one_observation(problem, y, init, x_shape)
    init = init.detach().to("cpu", torch.float64)
    num_chains = min(num_chains, len(init))
    if init_z is not None:
        init_z = as_real_tensor(init_z, "init_z", dtype=torch.float64)
        if tuple(init_z.shape) != (len(init), cfg.latent_dim):
            raise ShapeError(
                f"init_z must have shape (N, latent_dim) = {(len(init), cfg.latent_dim)} (one "
                f"latent per row of init), got {tuple(init_z.shape)}"
            )
        if not bool(torch.isfinite(init_z).all()):
            raise DataError("init_z holds NaN or inf; expected finite latent values")
    # per kept step of a chain: the codes (int8, then float32), z (float64 and float32),
    # log p(y | x) (float64) and the monitored quantities (float64)
    per_step = 5 * math.prod(x_shape) + 12 * cfg.latent_dim + 16 + 8 * (cfg.latent_dim + num_facies)
    check_memory(
        num_chains * num_samples * per_step,
        f"num_samples={num_samples} steps kept in each of {num_chains} chains",
        "ask for fewer draws or chains",
    )
    # per replica (chains x temperatures rows), 8 bytes a value: the codes, the class
    # log-probabilities of the state and of two latent proposals (D K each), the neighbours'
    # changes of the target, new codes and changes of log p(y | x) for the state and the
    # proposed state (D (K - 1) each), z and the latent proposals
    num_neighbours = math.prod(x_shape) * (num_facies - 1)
    per_replica = 8 * (
        math.prod(x_shape) * (1 + 3 * num_facies) + 6 * num_neighbours + 4 * cfg.latent_dim
    )
    check_memory(
        num_chains * temperatures * per_replica,
        f"temperatures={temperatures} tempered replicas of each of {num_chains} chains "
        f"({math.prod(x_shape)} cells, {num_facies} facies)",
        "ask for fewer temperatures or chains",
    )
    valid = (init == init.round()) & (init >= 0) & (init <= num_facies - 1)
    if not bool(valid.all()):
        bad = init[~valid][0].item()
        raise DataError(
            f"init must hold facies codes 0 .. {num_facies - 1} (the generative prior's "
            f"facies), got {bad!r}"
        )
    prior_vae.eval()
    gen = torch.Generator().manual_seed(seed)
    y_ll = y.detach().to("cpu", dtype)
    num_cells = math.prod(x_shape)
    count = [0]

    def log_lik_forward(codes: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` of codes ``(..., D)``, float64, in batches of ``batch_models``."""
        flat = codes.reshape(-1, num_cells)
        out = []
        for part in flat.split(batch_models):
            models = part.to(dtype).reshape(-1, *x_shape)
            value = checked_log_likelihood(problem, models, y_ll)
            out.append(check_log_density_values(problem, "log_likelihood", value, "facies fields"))
            count[0] += len(part)
        return torch.cat(out).reshape(codes.shape[:-1])

    def encoder(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ref = prior_vae.x_standardiser.mean
        loc, scale = prior_vae.recognition_params(None, codes.to(ref.dtype).reshape(-1, *x_shape))
        return loc.double(), scale.double()

    begin = time.perf_counter()
    with torch.no_grad():
        codes_all = init.long().reshape(len(init), num_cells)
        affine = None
        if neighbours == "auto":
            affine = _affine_columns(
                problem, codes_all, num_facies, x_shape, y, batch_models, count
            )
        y64 = y.detach().to("cpu", torch.float64)
        y_shape = tuple(problem.y_shape)

        def log_lik(codes: torch.Tensor) -> torch.Tensor:
            """``log p(y | x)`` of codes ``(..., D)``, float64 (from ``J`` when affine)."""
            if affine is None:
                return log_lik_forward(codes)
            base, cols, _ = affine
            pred = base + codes.reshape(-1, num_cells).to(torch.float64) @ cols
            residual = y64 - pred.reshape(*codes.shape[:-1], *y_shape)
            return problem.noise.log_prob(residual)

        def neighbour_log_lik(codes: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            """``log p(y | x')`` of every neighbour, ``(C, D (K - 1))``, float64."""
            if affine is None:  # the neighbours built and evaluated batch_models at a time
                out = []
                width = max(1, batch_models // len(codes))
                for idx in torch.arange(new.shape[-1]).split(width):
                    models = codes.to(torch.int8).unsqueeze(1).expand(-1, len(idx), -1).clone()
                    models[:, torch.arange(len(idx)), cells[idx]] = new[:, idx].to(torch.int8)
                    out.append(log_lik_forward(models))
                return torch.cat(out, 1)
            # Gaussian noise: with w = L^-1 (y - F(x)) and W = L^-1 J, changing cell i by c
            # changes log p(y | x) by c w.W_i - c^2 |W_i|^2 / 2 (exact: the density is quadratic)
            base, cols, white = affine
            pred = base + codes.to(torch.float64) @ cols  # (C, m)
            residual = (y64 - pred).reshape(len(codes), *y_shape)
            w = problem.noise.whiten(residual).reshape(len(codes), -1)
            change = (new - codes[:, cells]).to(torch.float64)  # (C, N)
            along = (w @ white.T)[:, cells]
            square = white.pow(2).sum(-1)[cells]
            current = problem.noise.log_prob(residual).unsqueeze(-1)
            return current + change * along - 0.5 * change.pow(2) * square

        if init_z is None:
            z_all = encode_latent(prior_vae, init.to(prior_vae.x_standardiser.mean.dtype))
        else:
            z_all = init_z
        z_all = z_all.detach().to("cpu", torch.float64)
        if start == "best":
            lp = _class_log_probs(prior_vae, z_all, num_facies)
            target = (
                -0.5 * z_all.pow(2).sum(-1)
                + lp.gather(-1, codes_all.unsqueeze(-1)).squeeze(-1).sum(-1)
                + log_lik(codes_all)
            )
            order = torch.argsort(torch.nan_to_num(target, nan=-math.inf), descending=True)
            pick = order[:num_chains]
        else:
            pick = torch.arange(num_chains)
        # rows: chain c's replica t at row c T + t (all replicas of a chain start alike)
        num_rows = num_chains * temperatures
        codes = codes_all[pick].repeat_interleave(temperatures, 0)  # (R, D)
        z = z_all[pick].repeat_interleave(temperatures, 0)  # (R, k)
        class_lp = _class_log_probs(prior_vae, z, num_facies)  # (R, D, K)
        ll = log_lik(codes)  # (R,)
        ladder = _initial_ladder(temperatures, float(min_beta))
        beta = likelihood_power * ladder.repeat(num_chains)  # (R,)
        cold = torch.arange(num_chains) * temperatures  # the kept, beta = 1 rows
        reference = temperatures > 1 and float(min_beta) == 0.0  # exact beta = 0 replicas
        shifts = torch.arange(1, num_facies)  # neighbour (i, m): cell i to (x_i + m) mod K
        rows = torch.arange(num_rows)
        cells = torch.arange(num_cells).repeat_interleave(num_facies - 1)  # cell of neighbour

        def prior_deltas(codes: torch.Tensor, class_lp: torch.Tensor) -> torch.Tensor:
            """Each neighbour's ``log p_g(x' | z) - log p_g(x | z)``; ``(C, D (K - 1))``."""
            new = (codes.unsqueeze(-1) + shifts) % num_facies  # (C, D, K-1)
            d_prior = class_lp.gather(-1, new) - class_lp.gather(-1, codes.unsqueeze(-1))
            return d_prior.reshape(num_rows, -1)

        def neighbour_deltas(
            codes: torch.Tensor, class_lp: torch.Tensor, ll: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Each neighbour's ``log pi(x') - log pi(x)``, new code and ``log p(y|x')`` change.

            All three of shape ``(C, D (K - 1))``.
            """
            new = ((codes.unsqueeze(-1) + shifts) % num_facies).reshape(num_rows, -1)
            d_lik = neighbour_log_lik(codes, new) - ll.unsqueeze(-1)
            return prior_deltas(codes, class_lp) + beta.unsqueeze(-1) * d_lik, new, d_lik

        def latent_move(
            z: torch.Tensor,
            class_lp: torch.Tensor,
            proposal: torch.Tensor,
            codes: torch.Tensor,
            loc: torch.Tensor | None,
            scale: torch.Tensor | None,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """One Metropolis-Hastings move of ``z`` given ``x``; new ``z``, class log-probs, mask.

            The proposal is the independence draw from ``q(z | x)`` of ``loc``, ``scale``
            (weights as :func:`_weight_from`).
            """
            class_lp_new = _class_log_probs(prior_vae, proposal, num_facies)
            log_new = _weight_from(proposal, codes, class_lp_new, loc, scale)
            log_old = _weight_from(z, codes, class_lp, loc, scale)
            u = torch.rand(num_rows, generator=gen, dtype=torch.float64)
            take = torch.log(u) < log_new - log_old
            z = torch.where(take.unsqueeze(-1), proposal, z)
            return z, torch.where(take.view(-1, 1, 1), class_lp_new, class_lp), take

        def latent_target(
            z: torch.Tensor, codes: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """``log N(z; 0, I) + log p_g(x | z)``, its gradient in ``z``, class log-probs."""
            with torch.enable_grad():
                leaf = z.detach().requires_grad_(True)
                class_lp = _class_log_probs(prior_vae, leaf, num_facies)
                value = _weight_from(leaf, codes, class_lp, None, None)
                (grad,) = torch.autograd.grad(value.sum(), leaf)
            return value.detach(), grad.detach(), class_lp.detach()

        deltas, new_codes, d_lik = neighbour_deltas(codes, class_lp, ll)
        total = warmup_steps + num_samples
        keep_x = torch.empty(num_samples, num_chains, num_cells, dtype=torch.int8)
        keep_z = torch.empty(num_samples, num_chains, z.shape[-1], dtype=torch.float64)
        keep_ll = torch.empty(num_samples, num_chains, dtype=torch.float64)
        accepted_z = accepted_x = 0
        swaps_tried = swaps_done = 0
        pair_accept = torch.zeros(max(1, temperatures - 1), dtype=torch.float64)
        pair_tries = torch.zeros(max(1, temperatures - 1), dtype=torch.float64)
        # the ladder is re-spaced after each quarter of the first three of the warm-up
        adapt_at = {warmup_steps * q // 4 for q in (1, 2, 3)} if warmup_steps >= 40 else set()
        walk = torch.full((num_rows,), 0.5, dtype=torch.float64)  # MALA's scale s
        shift = torch.full((num_rows,), float(noncentred_scale), dtype=torch.float64)
        noncentred_done = 0
        for step in range(total):
            # latent moves (the data do not enter): an independence proposal from q(z | x),
            # then MALA moves with q's sd times a scale adapted during warm-up
            loc, scale = encoder(codes)
            proposal = loc + scale * torch.randn(loc.shape, generator=gen, dtype=loc.dtype)
            z, class_lp, take = latent_move(z, class_lp, proposal, codes, loc, scale)
            moved = take
            if latent_moves:
                target, grad, _ = latent_target(z, codes)
            for _ in range(latent_moves):
                # MALA with the proposal's variance (h sd_q(x))^2 per coordinate
                var = (walk.unsqueeze(-1) * scale).pow(2)
                forth = z + 0.5 * var * grad
                proposal = forth + var.sqrt() * torch.randn(z.shape, generator=gen, dtype=z.dtype)
                target_p, grad_p, class_lp_p = latent_target(proposal, codes)
                back = proposal + 0.5 * var * grad_p
                log_ratio = (
                    target_p
                    - target
                    - 0.5 * ((z - back).pow(2) / var).sum(-1)
                    + 0.5 * ((proposal - forth).pow(2) / var).sum(-1)
                )
                u = torch.rand(num_rows, generator=gen, dtype=torch.float64)
                walked = torch.log(u) < log_ratio
                z = torch.where(walked.unsqueeze(-1), proposal, z)
                target = torch.where(walked, target_p, target)
                grad = torch.where(walked.unsqueeze(-1), grad_p, grad)
                class_lp = torch.where(walked.view(-1, 1, 1), class_lp_p, class_lp)
                moved = moved | walked
                if step < warmup_steps:  # Robbins-Monro towards acceptance 0.57, frozen after
                    walk = walk * torch.exp((walked.double() - 0.574) / math.sqrt(step + 1))
                else:
                    accepted_z += int(walked[cold].sum())
            if step >= warmup_steps:
                accepted_z += int(take[cold].sum())
            for _ in range(noncentred_moves):  # z moved with the departures from m(z) held
                z_p = z + shift.unsqueeze(-1) * torch.randn(z.shape, generator=gen, dtype=z.dtype)
                class_lp_p = _class_log_probs(prior_vae, z_p, num_facies)
                codes_p = (codes - class_lp.argmax(-1) + class_lp_p.argmax(-1)) % num_facies
                ll_p = log_lik(codes_p)
                log_ratio = (
                    _weight_from(z_p, codes_p, class_lp_p, None, None)
                    - _weight_from(z, codes, class_lp, None, None)
                    + beta * (ll_p - ll)
                )
                u = torch.rand(num_rows, generator=gen, dtype=torch.float64)
                ok = torch.log(u) < log_ratio
                z = torch.where(ok.unsqueeze(-1), z_p, z)
                class_lp = torch.where(ok.view(-1, 1, 1), class_lp_p, class_lp)
                codes = torch.where(ok.unsqueeze(-1), codes_p, codes)
                ll = torch.where(ok, ll_p, ll)
                if step < warmup_steps:  # Robbins-Monro towards acceptance 0.3, frozen after
                    shift = shift * torch.exp((ok.double() - 0.3) / math.sqrt(step + 1))
                else:
                    noncentred_done += int(ok[cold].sum())
                if bool(ok.any()):  # the field changed: every neighbour's change is new
                    _, new_codes, d_lik = neighbour_deltas(codes, class_lp, ll)
                    moved = torch.ones_like(moved)
            if bool(moved.any()):  # only the prior part of the deltas changes
                deltas = prior_deltas(codes, class_lp) + beta.unsqueeze(-1) * d_lik
            # facies moves: locally balanced single-cell proposals (Zanella 2020)
            for _ in range(flips_per_step):
                log_q_fwd = torch.log_softmax(deltas / 2, -1)
                # a field whose every neighbour has zero density has no move (NaN weights):
                # a uniform pick there, whose log ratio (-inf + NaN) is then rejected
                weights = torch.nan_to_num(log_q_fwd.exp(), nan=1.0)
                j = torch.multinomial(weights, 1, generator=gen).squeeze(-1)
                prop = codes.clone()
                prop[rows, cells[j]] = new_codes[rows, j]
                ll_prop = ll + d_lik[rows, j]
                deltas_p, new_p, d_lik_p = neighbour_deltas(prop, class_lp, ll_prop)
                # the reverse move from prop sets cell j back: the same neighbour index when
                # K = 2; for K > 2 the shift that undoes it
                back = _reverse_index(j, codes, prop, cells, num_facies)
                log_q_rev = torch.log_softmax(deltas_p / 2, -1)[rows, back]
                log_ratio = deltas[rows, j] + log_q_rev - log_q_fwd[rows, j]
                u = torch.rand(num_rows, generator=gen, dtype=torch.float64)
                ok = torch.log(u) < log_ratio
                codes = torch.where(ok.unsqueeze(-1), prop, codes)
                ll = torch.where(ok, ll_prop, ll)
                deltas = torch.where(ok.unsqueeze(-1), deltas_p, deltas)
                new_codes = torch.where(ok.unsqueeze(-1), new_p, new_codes)
                d_lik = torch.where(ok.unsqueeze(-1), d_lik_p, d_lik)
                if step >= warmup_steps:
                    accepted_x += int(ok[cold].sum())
            if reference:  # the beta = 0 replicas: an exact draw of the generative prior
                z_ref, codes_ref, lp_ref = prior_draws(prior_vae, num_chains, gen)
                hot = cold + temperatures - 1
                codes, z, class_lp = codes.clone(), z.clone(), class_lp.clone()
                codes[hot], z[hot], class_lp[hot] = codes_ref, z_ref, lp_ref
                ll = ll.clone()
                ll[hot] = log_lik(codes[hot])
                _, new_p, d_lik_p = neighbour_deltas(codes, class_lp, ll)
                fresh = torch.zeros(num_rows, dtype=torch.bool)
                fresh[hot] = True
                new_codes = torch.where(fresh.unsqueeze(-1), new_p, new_codes)
                d_lik = torch.where(fresh.unsqueeze(-1), d_lik_p, d_lik)
                deltas = prior_deltas(codes, class_lp) + beta.unsqueeze(-1) * d_lik
            if temperatures > 1:  # swaps of neighbouring replicas, even and odd pairs in turn
                lower = torch.arange(step % 2, temperatures - 1, 2)
                a = (cold.unsqueeze(-1) + lower).reshape(-1)
                if len(a):
                    b = a + 1
                    log_r = (beta[a] - beta[b]) * (ll[b] - ll[a])
                    u = torch.rand(len(a), generator=gen, dtype=torch.float64)
                    swap = torch.log(u) < log_r
                    order = torch.arange(num_rows)
                    order[a[swap]], order[b[swap]] = b[swap], a[swap]
                    codes, z, class_lp = codes[order], z[order], class_lp[order]
                    ll, d_lik, new_codes = ll[order], d_lik[order], new_codes[order]
                    deltas = prior_deltas(codes, class_lp) + beta.unsqueeze(-1) * d_lik
                    if step >= warmup_steps:
                        swaps_tried += len(a)
                        swaps_done += int(swap.sum())
                    else:  # swap probabilities per pair, for the ladder's adaptation
                        pair_accept.index_add_(
                            0, lower.repeat(num_chains), log_r.clamp(max=0.0).exp()
                        )
                        pair_tries.index_add_(
                            0, lower.repeat(num_chains), torch.ones(len(a), dtype=torch.float64)
                        )
                if step + 1 in adapt_at:  # equal rejection rates between neighbours
                    ladder = _respaced_ladder(ladder, pair_accept, pair_tries)
                    beta = likelihood_power * ladder.repeat(num_chains)
                    deltas = prior_deltas(codes, class_lp) + beta.unsqueeze(-1) * d_lik
                    pair_accept.zero_()
                    pair_tries.zero_()
            if step >= warmup_steps:
                keep_x[step - warmup_steps] = codes[cold].to(torch.int8)
                keep_z[step - warmup_steps] = z[cold]
                keep_ll[step - warmup_steps] = ll[cold]
    seconds = time.perf_counter() - begin
    x = keep_x.transpose(0, 1).float().reshape(num_chains, num_samples, *x_shape)
    zs = keep_z.transpose(0, 1)
    lls = keep_ll.transpose(0, 1)
    fractions = [
        (keep_x.transpose(0, 1) == k).double().mean(-1).unsqueeze(-1) for k in range(1, num_facies)
    ]
    monitored = torch.cat([zs, lls.unsqueeze(-1), *fractions], -1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat, min_ess = chain_diagnostics(monitored)
        rhat_data, _ = chain_diagnostics(monitored[..., zs.shape[-1] :])
    moves = num_chains * num_samples
    return FaciesMCMCResult(
        x=x,
        z=zs,
        log_likelihood=lls,
        rhat=rhat,
        min_ess=min_ess,
        num_quantities=monitored.shape[-1],
        accept_z=accepted_z / ((1 + latent_moves) * moves),
        accept_x=accepted_x / (moves * flips_per_step) if flips_per_step else math.nan,
        num_evaluations=count[0],
        seconds=seconds,
        affine=affine is not None,
        swap_accept=swaps_done / swaps_tried if swaps_tried else math.nan,
        rhat_data=rhat_data,
        accept_noncentred=noncentred_done / (moves * noncentred_moves)
        if noncentred_moves
        else math.nan,
    )


_AFFINE_RTOL = 1e-9  # the affine test's tolerance, relative to the largest |F(x)|
_AFFINE_MAX_BYTES = 2**29  # the columns of J kept in float64 (512 MiB at most)


def _affine_columns(
    problem: Problem,
    starts: torch.Tensor,
    num_facies: int,
    x_shape: tuple[int, ...],
    y: torch.Tensor,
    batch_models: int,
    count: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Return ``(F(0), J^T, (L^-1 J)^T)`` when ``F`` is affine in the codes, likelihood Gaussian.

    ``starts``: codes ``(N, D)``. ``F(0)`` has shape ``(m,)``, ``J^T`` and its columns whitened
    by the noise's Cholesky factor ``L`` (``L L^T = C_e``) ``(D, m)``, float64.
    None when the problem has no Gaussian noise model, ``J`` would exceed
    :data:`_AFFINE_MAX_BYTES`, or ``F(x) = F(0) + J x`` or ``log p(y | x) = log N(y - F(x);
    0, C_e)`` fails on the starts (at most 2048) and 64 random facies fields to
    :data:`_AFFINE_RTOL`. ``count`` is incremented by the forward passes.
    """
    num_cells = math.prod(x_shape)
    num_data = math.prod(problem.y_shape)
    if num_cells * num_data * 8 > _AFFINE_MAX_BYTES:
        return None
    try:
        noise = problem.noise
    except Exception:  # a user problem without the base class's noise model: forward passes
        return None
    if noise.is_zero:
        return None

    def forward(flat: torch.Tensor) -> torch.Tensor:
        out = []
        for part in flat.split(batch_models):
            data = checked_forward(problem, part.to(torch.float64).reshape(-1, *x_shape))
            out.append(data.to(torch.float64).reshape(len(part), num_data))
            count[0] += len(part)
        return torch.cat(out)

    base = forward(torch.zeros(1, num_cells))[0]
    columns = []
    for first in range(0, num_cells, batch_models):
        width = min(batch_models, num_cells - first)
        unit = torch.zeros(width, num_cells)
        unit[torch.arange(width), first + torch.arange(width)] = 1.0
        columns.append(forward(unit) - base)
    cols = torch.cat(columns)  # (D, m)
    gen = torch.Generator().manual_seed(0)
    test = torch.cat(
        [starts[:2048], torch.randint(0, num_facies, (64, num_cells), generator=gen)]
    ).to(torch.float64)
    actual = forward(test)
    scale = float(actual.abs().max()) + 1e-300
    if not float((base + test @ cols - actual).abs().max()) <= _AFFINE_RTOL * scale:
        return None
    y64 = y.to(torch.float64)
    from_noise = noise.log_prob(y64 - actual.reshape(len(test), *problem.y_shape))
    from_problem = checked_log_likelihood(
        problem, test.reshape(len(test), *x_shape), y64
    ).to(torch.float64)
    count[0] += len(test)
    tol = _AFFINE_RTOL * (1.0 + float(from_problem.abs().max()))
    if not float((from_noise - from_problem).abs().max()) <= tol:
        return None
    white = noise.whiten(cols.reshape(num_cells, *problem.y_shape)).reshape(num_cells, num_data)
    return base, cols, white


_REFERENCE_START = 1e-6
"""With ``min_beta=0``: the smallest positive beta of the initial ladder (re-spaced after)."""


def _initial_ladder(temperatures: int, min_beta: float) -> torch.Tensor:
    """Return the initial inverse temperatures, ``(T,)`` float64, decreasing from 1.

    Geometric from 1 to ``min_beta``; for ``min_beta = 0`` geometric from 1 to
    :data:`_REFERENCE_START` over the first ``T - 1`` replicas, then 0 (the reference).
    """
    if temperatures == 1:
        return torch.ones(1, dtype=torch.float64)
    if min_beta > 0.0:
        return torch.tensor(
            [min_beta ** (t / (temperatures - 1)) for t in range(temperatures)],
            dtype=torch.float64,
        )
    steps = max(1, temperatures - 2)
    positive = [_REFERENCE_START ** (t / steps) for t in range(temperatures - 1)]
    return torch.tensor([*positive, 0.0], dtype=torch.float64)


def _respaced_ladder(
    ladder: torch.Tensor, accept: torch.Tensor, tries: torch.Tensor
) -> torch.Tensor:
    """Re-space inverse temperatures so that neighbouring replicas swap equally often.

    ``ladder``: ``(T,)``, decreasing from 1 to the smallest beta (both kept; the smallest may
    be 0, the exact reference); ``accept`` and ``tries``: ``(T - 1,)`` sums of the swap
    acceptance probabilities of each pair and their counts. The cumulative rejection rate
    ("communication barrier", Syed et al. 2021, sec. 5.1), piecewise linear in ``log beta``
    (in ``beta`` itself between 0 and the smallest positive beta), is inverted at equal steps.
    """
    rejection = (1.0 - accept / tries.clamp(min=1.0)).clamp(min=1e-3)
    barrier = torch.cat([torch.zeros(1, dtype=rejection.dtype), rejection.cumsum(0)])
    betas = ladder.numpy()
    zero_end = betas[-1] == 0.0
    positive = betas[:-1] if zero_end else betas
    logs_known = np.log(positive)
    # beta = 0 sits one unit below the smallest positive log beta; that last segment maps to
    # beta linearly: v in [v0, v0 + 1] <-> beta = b_min (v - v0)
    knots = np.concatenate([logs_known, [logs_known[-1] - 1.0]]) if zero_end else logs_known
    levels = (barrier[-1] - barrier).numpy()[::-1]  # the barrier above each knot, increasing
    targets = np.linspace(0.0, float(barrier[-1]), len(ladder))
    values = np.interp(targets, levels, knots[::-1])[::-1].copy()  # decreasing from 0
    out = np.exp(values)
    if zero_end:
        floor = logs_known[-1] - 1.0
        low = values < logs_known[-1]
        out[low] = positive[-1] * (values[low] - floor)
        out[-1] = 0.0
    else:
        out[-1] = betas[-1]
    out[0] = 1.0
    return torch.from_numpy(out).to(ladder.dtype)


def _reverse_index(
    j: torch.Tensor, codes: torch.Tensor, prop: torch.Tensor, cells: torch.Tensor, k: int
) -> torch.Tensor:
    """Index of the neighbour of ``prop`` that restores ``codes`` (cell ``cells[j]``)."""
    if k == 2:
        return j
    rows = torch.arange(len(j))
    cell = cells[j]
    shift = (codes[rows, cell] - prop[rows, cell]) % k  # in 1 .. K-1
    return cell * (k - 1) + shift - 1


def sample_facies_mcmc(
    cvae: CVAE,
    generative_prior: CVAE,
    y: torch.Tensor,
    num_samples: int,
    problem: Problem,
    *,
    chains: int = 4,
    warmup_steps: int = 300,
    flips_per_step: int = 16,
    temperatures: int = 8,
    x_true: torch.Tensor | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[az.InferenceData, str, bool]:
    """Run :func:`facies_mcmc_sample` for every observation and build the posterior file.

    What ``ppl-cvae sample RUN --method facies-mcmc --generative-prior PRIOR_RUN`` and
    :func:`inference.sample.sample_corrected` (``method="facies-mcmc"``) call.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model with a facies decoder: its amortized draws
        (``preconditioner_draws(latent_dim, chains)`` facies fields per observation, decoder
        noise included) start the chains (the ``chains`` of highest target density).
    generative_prior : CVAE
        Unconditional VAE of the prior draws with a ``bernoulli`` or ``categorical`` decoder
        (:func:`check_facies_prior`).
    y : Tensor, shape (M, *y_shape)
        Observations, units of ``y``.
    num_samples : int
        Draws per observation, rounded up to a multiple of ``chains`` (at least 4 per chain).
    problem : Problem
        With a noise model; its forward operator reads facies codes.
    chains, warmup_steps : int
        Chains per observation and warm-up steps per chain.
    flips_per_step : int, default 16
        Single-cell facies moves per step (:func:`facies_mcmc_sample`).
    temperatures : int, default 8
        Tempered replicas per chain (:func:`facies_mcmc_sample`; 1: no tempering).
    x_true : Tensor, shape (M, *x_shape), optional
        Truths for ``constant_data``.
    seed : int, optional
        Seed of the amortized draws (``derived_seed(seed, m)`` for observation ``m``) and of the
        chains (chain ``c`` of observation ``m``: ``derived_seed(seed, m * chains + c)``), in
        ``[0, 2**32 - 1]``; None: drawn from torch's global RNG
        (:func:`~ppl_cvae.checks.resolve_seed`). Recorded as the ``seed`` attribute.
    attrs : mapping, optional
        Run attributes.

    Returns
    -------
    idata : arviz.InferenceData
        ``posterior.x`` (facies codes ``0 .. K-1``, every draw a facies field) and
        ``posterior.z`` (the generative prior's latent) in ``chains`` chains (dims ``chain,
        draw``), the groups of :func:`~inference.sample.inference_data_from_draws`, and
        ``rhat``, ``rhat_threshold``, ``ess_bulk``, ``accept_z``, ``accept_x``,
        ``swap_accept`` and ``rhat_data`` (:class:`FaciesMCMCResult`) per observation in
        ``sample_stats``.
    summary : str
        One line of diagnostics (:func:`facies_mcmc_summary`); it says FAILED when an
        observation's chains have not mixed.
    ok : bool
        False when any observation has R-hat above its
        :attr:`FaciesMCMCResult.rhat_threshold` (at least 1.01).

    Raises
    ------
    ConfigError
        If ``cvae`` is not conditional or has no facies decoder of at most the prior's ``K``
        facies, ``generative_prior`` is not an unconditional VAE with a facies decoder, a
        count is out of range, or there are fewer than 4 draws per chain.
    ShapeError
        If ``y`` does not have shape ``(M, *y_shape)``, or the two models' ``x_shape`` differ.
    DataError
        If ``y`` holds NaN or inf, or is not an array of real numbers.
    ResourceError
        If the amortized draws that start the chains, the kept steps of an observation or the
        working state of its tempered replicas would not fit in memory.
    NoLikelihoodError
        If the problem has no noise model.

    Notes
    -----
    Target ``N(z; 0, I) p_g(x | z) p(y | x)`` (module docstring); the chains of one
    observation run as one batch. Observation ``m`` costs about ``chains (warmup_steps +
    ceil(num_samples / chains)) flips_per_step D (K - 1)`` forward evaluations.

    References
    ----------
    Zanella (2020), Informed proposals for local MCMC in discrete spaces, JASA 115, 852;
    Laloy et al. (2018), Water Resources Research 54, 381 (generative priors).

    Examples
    --------
    >>> from ppl_cvae.config import ModelConfig
    >>> from ppl_cvae.problems import LinearGaussian
    >>> cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,),
    ...                         likelihood="bernoulli"))
    >>> vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
    ...                        likelihood="bernoulli", prior="standard_normal"))
    >>> idata, summary, ok = sample_facies_mcmc(cvae, vae, torch.zeros(1, 2), 8,
    ...                                         LinearGaussian(), chains=2, warmup_steps=2)
    >>> dict(idata.posterior["x"].sizes)
    {'chain': 2, 'draw': 4, 'observation': 1, 'parameter': 2}
    """
    problem = as_problem(problem)
    check_facies_prior(generative_prior, problem)
    num_facies = _num_facies(generative_prior.config)
    cfg = cvae.config
    if cfg.likelihood not in FACIES_LIKELIHOODS or _num_facies(cfg) > num_facies:
        raise ConfigError(
            "the chains start at the CVAE's amortized draws, which must be facies codes "
            f"0 .. {num_facies - 1} of the generative prior; the CVAE's decoder is "
            f"{cfg.likelihood!r}"
            + (f" with {cfg.num_facies} facies" if cfg.likelihood == "categorical" else "")
            + ": use a CVAE fitted with a bernoulli or categorical decoder on the same facies"
        )
    warmup_steps = as_count(warmup_steps, "warmup_steps", minimum=0)
    flips_per_step = as_count(flips_per_step, "flips_per_step", minimum=0)
    temperatures = as_count(temperatures, "temperatures", minimum=1)
    method_attrs = {
        "method": "facies-mcmc",
        "inference_method": (
            "Metropolis-Hastings on (z, x) of a generative facies prior (unconditional VAE of "
            "the prior draws): N(z; 0, I) p_g(x | z) p(y | x), z by independence proposals "
            "from q(z|x) and MALA, x by locally balanced single-cell moves (Zanella "
            "2020); every draw "
            "a facies field; chains started at amortized draws"
        ),
        "flips_per_step": flips_per_step,
        "temperatures": temperatures,
    }
    idata, results = generative_prior_posterior(
        cvae,
        generative_prior,
        y,
        num_samples,
        problem,
        partial(facies_mcmc_sample, flips_per_step=flips_per_step, temperatures=temperatures),
        chains=chains,
        warmup_steps=warmup_steps,
        stats=("accept_z", "accept_x", "swap_accept", "rhat_data"),
        method_attrs=method_attrs,
        x_true=x_true,
        seed=seed,
        attrs=attrs,
    )
    summary, ok = facies_mcmc_summary(results)
    return idata, summary, ok


def facies_mcmc_summary(results: Sequence[FaciesMCMCResult]) -> tuple[str, bool]:
    """Return the one-line verdict of facies MCMC runs and whether all converged.

    Parameters
    ----------
    results : sequence of FaciesMCMCResult
        One per observation (at least one).

    Returns
    -------
    summary : str
        Worst R-hat, smallest ESS, the smallest acceptance rates of the latent and the facies
        moves over the observations, and the time; ends in ``FAILED for n of M
        observation(s) ...`` when some did not converge (:attr:`FaciesMCMCResult.converged`).
    ok : bool

    Raises
    ------
    ConfigError
        If ``results`` is empty.
    """

    def smallest(values: list[float]) -> float:
        """Smallest of the values that are not NaN (NaN when none, e.g. no facies moves)."""
        finite = [v for v in values if not math.isnan(v)]
        return min(finite) if finite else math.nan

    accept_z = smallest([r.accept_z for r in results])
    accept_x = smallest([r.accept_x for r in results])
    return chains_summary(
        "facies MCMC",
        results,
        f"acceptance z {accept_z:.2f}, x {accept_x:.3f} (min), swaps "
        f"{smallest([r.swap_accept for r in results]):.2f} (min), R-hat of log p(y|x) and the "
        f"facies fractions {-smallest([-r.rhat_data for r in results]):.4f} (max)",
        "",
        "--warmup, --num-samples, --facies-moves",
    )
