"""Sequential Monte Carlo from a generative facies prior to the posterior, for channel-like priors.

Facies MCMC (:mod:`inference.facies_mcmc`) moves one facies field a cell at a time; started at
the amortized draws, its chains stay in the basin of facies boundaries they start in, which on
crosshole channels is not the truth's (docs/measurements.md, "Where the chains are: another basin").
A population from the prior crosses that barrier instead. The sampler targets, in turn,

    pi_t(z, x)  proportional to  N(z; 0, I) p_g(x | z) p(y | x)^beta_t,
    0 = beta_0 < beta_1 < ... < beta_T = 1,

with ``p_g(x | z)`` the generative prior's facies decoder and ``p(y | x)`` the problem's noise
model around the forward operator (the target of :mod:`inference.facies_mcmc` at ``beta_T =
1``). The particles start as exact draws of the prior (``pi_0``); at each stage

1. the next ``beta`` is the largest one (up to 1) at which the effective sample size of the
   incremental weights ``w_i = p(y | x_i)^(beta_t+1 - beta_t)`` is ``ess_fraction`` of the
   particles (bisection; adaptive tempering, Jasra, Stephens, Doucet and Tsagaris 2011);
2. the particles are resampled by those weights (systematic resampling) and the log evidence
   gains ``log mean_i w_i``;
3. every particle ``(z, x)`` is moved by ``steps_per_stage`` steps of facies MCMC
   (:func:`~inference.facies_mcmc.facies_mcmc_sample` with ``likelihood_power=beta_t+1``,
   ``init_z`` the particle's own latent, no warm-up and no tempered replicas): a fixed kernel
   that leaves ``pi_t+1`` invariant, so the resample-move scheme is the SMC sampler of Del
   Moral, Doucet and Jasra (2006) with MCMC moves (Chopin 2002).

After the stage that reaches ``beta = 1`` the particles take ``final_steps`` steps. With an
invariant kernel at every stage the particles are consistent posterior draws as their number
grows and ``exp(log_evidence)`` is an unbiased estimate of ``p(y) = int N(z; 0, I) sum_x
p_g(x | z) p(y | x) dz`` for a fixed schedule of ``beta``; choosing the schedule from the
particles (step 1) adds a bias of order ``1 / N`` (Beskos, Jasra, Kantas and Thiery 2016).

Independent populations (``populations``, seeds ``derived_seed(seed, p)``) check one another
through their estimates of the log evidence. Where a population misses part of the posterior
(a basin of facies boundaries none of its particles reached) its evidence lacks that part's
mass. With kernels that mix perfectly, ``log Z`` of a population of ``N`` particles has
asymptotic variance ``sum_t (N / ESS_t - 1) / N = T (1 / a - 1) / N`` for ``T`` stages at ESS
fraction ``a`` (Chopin 2004; Beskos et al. 2016); the verdict allows six times the sd of the
difference of two such estimates, ``6 sqrt(2 T (1 / a - 1) / N)``, to leave room for the
imperfect mixing of a few MCMC steps per stage (crosshole channels, 512 particles: 2.4-2.7
nats, where populations in different basins differed by 31). One population has no check.

R-hat over the populations (the particles of one population in their resampling order as one
"chain") is reported, not used: the particles of a population descend from a few ancestors,
so a population's mean varies far more than that of as many independent draws, and R-hat's
bound for independent draws (:func:`~inference.mcmc.rhat_threshold`) fails populations that
agree (1.12 on a crosshole observation whose two populations' log evidence differed by 0.4
nats).

References
----------
Del Moral, Doucet and Jasra (2006), Sequential Monte Carlo samplers, JRSS B 68, 411.
Chopin (2004), Central limit theorem for sequential Monte Carlo methods and its application
to Bayesian inference, Annals of Statistics 32, 2385.
Chopin (2002), A sequential particle filter method for static models, Biometrika 89, 539.
Jasra, Stephens, Doucet and Tsagaris (2011), Inference for Levy-driven stochastic volatility
models via adaptive sequential Monte Carlo, Scandinavian Journal of Statistics 38, 1.
Beskos, Jasra, Kantas and Thiery (2016), On the convergence of adaptive sequential Monte Carlo
methods, Annals of Applied Probability 26, 1111.
Kitagawa (1996), Monte Carlo filter and smoother for non-Gaussian nonlinear state space
models, Journal of Computational and Graphical Statistics 5, 1 (systematic resampling).
Laloy, Herault, Jacques and Linde (2018), Water Resources Research 54, 381 (generative priors).
Fearnhead and Taylor (2013), An adaptive sequential Monte Carlo sampler, Bayesian Analysis 8,
411 (kernel parameters tuned from the particles between stages).
Dau and Chopin (2022), Waste-free sequential Monte Carlo, JRSS B 84, 114.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from inference.facies_mcmc import (
    _num_facies,
    check_facies_prior,
    facies_mcmc_sample,
    prior_draws,
)
from inference.importance import systematic_resample
from inference.latent_mcmc import check_one_observation
from inference.mcmc import rhat_threshold
from ppl_cvae._memory import check_memory
from ppl_cvae.checks import as_count, as_seed, check_finite, derived_seed, resolve_seed
from ppl_cvae.errors import ConfigError, DataError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.densities import check_log_density_values, checked_log_likelihood

if TYPE_CHECKING:
    from inference.arviz_io import az

__all__ = [
    "FaciesSMCResult",
    "facies_smc_sample",
    "facies_smc_summary",
    "next_temperature",
    "sample_facies_smc",
]

#: The non-centred moves' step at ``beta = 0``, the acceptance rate its tuning aims at
#: between stages, and its ceiling (units of the latent, whose prior is ``N(0, I)``).
NONCENTRED_START, NONCENTRED_TARGET, NONCENTRED_MAX = 0.5, 0.3, 2.0


@dataclass(frozen=True)
class FaciesSMCResult:
    """Particles of ``p(z, x | y)`` under a generative facies prior, for one observation.

    Attributes
    ----------
    x : Tensor, shape (populations, particles, *x_shape)
        Facies fields (codes ``0 .. K-1`` as floats), equally weighted, in resampling order.
    z : Tensor, shape (populations, particles, latent_dim), float64
        The generative prior's latent of every particle.
    log_likelihood : Tensor, shape (populations, particles)
        ``log p(y | x)`` of every particle, nats.
    log_evidence : Tensor, shape (populations,)
        Each population's estimate of ``log p(y)``, nats (module docstring).
    betas : tuple of Tensor
        Each population's schedule ``beta_0 = 0, ..., beta_T`` (``beta_T = 1`` unless the
        population stopped at ``max_stages``).
    rhat : float
        Largest rank-normalised split R-hat over the monitored quantities (the latent
        coordinates, ``log p(y | x)`` and the fraction of cells in each facies but the first),
        the populations as chains; NaN for one population of fewer than 4 particles.
        Reported, not the verdict (module docstring).
    min_ess : float
        Smallest bulk ESS over the same quantities, the particles of a population read in
        their resampling order (descendants of one ancestor are neighbours there, so the ESS
        counts them as correlated).
    num_quantities : int
        How many quantities ``rhat`` is the largest of.
    accept_z, accept_x : float
        Acceptance rates of the latent and the facies moves at ``beta = 1``, the smallest over
        the populations.
    distinct : float
        Smallest fraction, over the populations, of distinct facies fields among the final
        particles (1: no duplicates; resampling without enough moves leaves duplicates).
    ess_fraction : float
        The ESS fraction ``a`` of the incremental weights at every stage.
    accept_noncentred : float
        Acceptance rate of the non-centred moves at ``beta = 1``, the smallest over the
        populations (NaN without them).
    num_chains : int or None
        Waste-free SMC: the chains per population (``particles / steps_per_stage``), whose
        states are the particles; None for ordinary SMC, whose particles each start anew.
    num_evaluations : int
        Models passed through the forward operator.
    seconds : float
        Wall-clock time of all populations.
    """

    x: torch.Tensor
    z: torch.Tensor
    log_likelihood: torch.Tensor
    log_evidence: torch.Tensor
    betas: tuple[torch.Tensor, ...]
    rhat: float
    min_ess: float
    num_quantities: int
    accept_z: float
    accept_x: float
    distinct: float
    num_evaluations: int
    seconds: float
    ess_fraction: float = 0.5
    accept_noncentred: float = math.nan
    num_chains: int | None = None

    @property
    def stages(self) -> int:
        """The most tempering stages of any population (``T``)."""
        return max(len(b) - 1 for b in self.betas)

    @property
    def reached_posterior(self) -> bool:
        """Whether every population's schedule reached ``beta = 1``."""
        return all(float(b[-1]) >= 1.0 for b in self.betas)

    @property
    def rhat_threshold(self) -> float:
        """The bound on ``rhat`` that independent draws respect (at least 1.01; not the verdict).

        :func:`~inference.mcmc.rhat_threshold` for these populations, particles and quantities.
        """
        populations, particles = self.log_likelihood.shape
        return rhat_threshold(populations, particles, self.num_quantities)

    @property
    def evidence_spread(self) -> float:
        """Largest minus smallest ``log_evidence`` of the populations, nats (0 for one)."""
        return float(self.log_evidence.max() - self.log_evidence.min())

    @property
    def evidence_tolerance(self) -> float:
        """The bound on :attr:`evidence_spread`: ``6 sqrt(2 T (1 / a - 1) / N)``, nats.

        ``T`` the most stages, ``a`` :attr:`ess_fraction`, ``N`` the particles per population
        (module docstring), or for waste-free SMC the chains (:attr:`num_chains`): the mean
        of a chain's ``P`` states varies at most as much as one state (Cauchy-Schwarz:
        ``var(sum) <= (sum of sds)^2 = P^2 var``), so ``M`` chains give the estimator of
        ``M`` independent particles at worst (Dau and Chopin 2022 estimate the variance from
        the chains for the same reason).
        """
        independent = self.num_chains or self.log_likelihood.shape[1]
        return 6.0 * math.sqrt(2 * self.stages * (1 / self.ess_fraction - 1) / independent)

    @property
    def converged(self) -> bool:
        """Whether every population reached ``beta = 1`` and their log evidence agrees.

        :attr:`evidence_spread` at most :attr:`evidence_tolerance`; one population passes
        that part unchecked.
        """
        return self.reached_posterior and self.evidence_spread <= self.evidence_tolerance

    @property
    def log_evidence_mean(self) -> float:
        """``log`` of the mean over the populations of ``exp(log_evidence)``, nats."""
        num = len(self.log_evidence)
        return float(torch.logsumexp(self.log_evidence.double(), 0) - math.log(num))

    @property
    def log_evidence_se(self) -> float:
        """Standard error of the populations' mean ``log_evidence`` (NaN for one population)."""
        num = len(self.log_evidence)
        if num < 2:
            return math.nan
        return float(self.log_evidence.double().std() / math.sqrt(num))


def _log_ess(log_weight: torch.Tensor) -> torch.Tensor:
    """``log`` of the effective sample size ``(sum w)^2 / sum w^2`` of ``w = exp(log_weight)``."""
    return 2 * torch.logsumexp(log_weight, 0) - torch.logsumexp(2 * log_weight, 0)


def next_temperature(log_likelihood: torch.Tensor, beta: float, target_ess: float) -> float:
    """Return the next inverse temperature of adaptive tempering.

    The largest ``beta' <= 1`` with ``ESS(exp((beta' - beta) log_likelihood)) >= target_ess``
    (Jasra et al. 2011), by bisection on ``log(beta' - beta)`` down to ``1e-12 (1 - beta)``
    (the ESS falls as the increment grows). Particles with ``log_likelihood = -inf`` have zero
    weight at every increment.

    Parameters
    ----------
    log_likelihood : Tensor, shape (N,)
        ``log p(y | x_i)`` of the equally weighted particles, nats.
    beta : float
        The current inverse temperature, in ``[0, 1)``.
    target_ess : float
        In ``(0, N]``.

    Returns
    -------
    float
        In ``(beta, 1]``; the smallest increment tried when even it falls below the target.

    Raises
    ------
    DataError
        If ``log_likelihood`` holds NaN or ``+inf``, or every value is ``-inf``.

    Examples
    --------
    >>> import torch
    >>> next_temperature(torch.zeros(10), 0.0, 5.0)
    1.0
    >>> b = next_temperature(torch.arange(100.0), 0.0, 50.0)
    >>> 0.0 < b < 1.0
    True
    """
    ll = log_likelihood.detach().double()
    if bool(torch.isnan(ll).any()) or bool((ll == math.inf).any()):
        raise DataError("a particle's log p(y | x) is NaN or +inf; expected finite or -inf")
    if not bool(torch.isfinite(ll).any()):
        raise DataError(
            "every particle has zero likelihood (log p(y | x) = -inf): no draw of the "
            "generative prior can explain this observation"
        )
    remaining = 1.0 - beta
    log_target = math.log(target_ess)
    if float(_log_ess(remaining * ll)) >= log_target:
        return 1.0
    lo, hi = math.log(remaining) - 12 * math.log(10), math.log(remaining)
    if float(_log_ess(math.exp(lo) * ll)) < log_target:
        return beta + math.exp(lo)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(_log_ess(math.exp(mid) * ll)) >= log_target:
            lo = mid
        else:
            hi = mid
    return beta + math.exp(lo)


def facies_smc_sample(
    prior_vae: CVAE,
    problem: Problem,
    y: torch.Tensor,
    *,
    num_particles: int = 500,
    populations: int = 2,
    steps_per_stage: int = 8,
    final_steps: int = 40,
    ess_fraction: float = 0.5,
    flips_per_step: int = 16,
    latent_moves: int = 2,
    noncentred_moves: int = 0,
    waste_free: bool = False,
    max_stages: int = 1000,
    seed: int = 0,
    batch_models: int = 4096,
    dtype: torch.dtype = torch.float32,
    neighbours: Literal["auto", "forward"] = "auto",
    progress: bool | None = None,
) -> FaciesSMCResult:
    """Sample ``p(z, x | y)`` of a generative facies prior by tempered SMC (module docstring).

    Parameters
    ----------
    prior_vae : CVAE
        The generative prior: an unconditional VAE with a ``bernoulli`` or ``categorical``
        decoder (:func:`~inference.facies_mcmc.check_facies_prior`).
    problem : Problem
        With a noise model (``log_likelihood``); its forward operator reads facies codes.
    y : Tensor, shape y_shape
        One observation, units of ``y``.
    num_particles : int, default 500
        Particles per population (the draws it returns).
    populations : int, default 2
        Independent populations (their agreement on the log evidence is the check; 1: none).
    steps_per_stage, final_steps : int, default 8 and 40
        Facies MCMC steps (each ``1 + latent_moves`` latent moves and ``flips_per_step``
        facies moves; :func:`~inference.facies_mcmc.facies_mcmc_sample`) after each stage's
        resampling, and after the stage that reaches ``beta = 1``; at least 4 each.
    ess_fraction : float, default 0.5
        The effective sample size of each stage's incremental weights, as a fraction of the
        particles, in ``(0, 1)``: smaller fractions take fewer, larger steps in ``beta``.
    flips_per_step, latent_moves : int, default 16 and 2
        As in :func:`~inference.facies_mcmc.facies_mcmc_sample`.
    noncentred_moves : int, default 0
        Non-centred joint moves of ``(z, x)`` per step (those of
        :func:`~inference.facies_mcmc.facies_mcmc_sample`: ``z`` moves and the channel
        boundaries with it). Their step starts at ``0.5`` and is tuned between stages
        (Notes).
    waste_free : bool, default False
        Waste-free SMC (Dau and Chopin 2022): each stage resamples only ``M = num_particles
        // steps_per_stage`` particles and keeps every state of their ``steps_per_stage``-step
        chains as the next ``N = M steps_per_stage`` particles (``num_particles`` is rounded
        down to that multiple), instead of resampling ``N`` and keeping each chain's last
        state: the same stages for a ``steps_per_stage``-th of the moves. At ``beta = 1``
        the chains first take ``final_steps - steps_per_stage`` steps more, discarded.
    max_stages : int, default 1000
        Stages after which a population stops below ``beta = 1`` (then ``converged`` is
        False).
    seed : int, default 0
        Population ``p`` draws from ``torch.Generator().manual_seed(derived_seed(seed, p))``.
    batch_models, dtype, neighbours
        As in :func:`~inference.facies_mcmc.facies_mcmc_sample`.
    progress : bool, optional
        A tqdm progress bar per population on stderr, filled as ``beta`` goes from 0 to 1,
        with the stage; None (default): only where stderr is a terminal.

    Returns
    -------
    FaciesSMCResult

    Raises
    ------
    ConfigError
        If ``prior_vae`` is not an unconditional VAE with a facies decoder, a count or
        ``seed`` is not an int in its range, or ``ess_fraction`` is not in ``(0, 1)``.
    ShapeError
        If ``y`` is not one observation, or the VAE's ``x_shape`` not the problem's.
    DataError
        If ``y`` is not an array of real numbers or holds NaN or inf, or ``log p(y | x)`` is
        NaN or ``+inf`` at a particle, or ``-inf`` at all of them.
    ResourceError
        If the particles' working state (that of ``num_particles`` facies MCMC chains with
        their kept steps) would not fit in memory.
    NoLikelihoodError
        If the problem has no noise model.

    Notes
    -----
    The non-centred moves' step is adapted from the particles, as in adaptive SMC (Jasra et
    al. 2011; Fearnhead and Taylor 2013): after each stage it is multiplied by ``exp(2 (r -
    0.3))``, ``r`` the stage's acceptance rate, so that it follows the shrinking tempered
    posterior; within a stage the kernel is fixed, hence invariant for that stage's target.

    Waste-free SMC keeps the estimators above (the particles of a stage are draws of its
    target, correlated along each chain, all weighted at the next stage); its particles
    descend from more ancestors per move, which Dau and Chopin (2022) found more robust to a
    slowly mixing kernel. The verdict's bound counts the ``N / steps_per_stage`` chains,
    not the ``N`` states (:attr:`FaciesSMCResult.evidence_tolerance`).

    Cost: about ``populations x stages x num_particles x steps_per_stage x flips_per_step``
    facies moves (each evaluating ``D (K - 1)`` neighbours; no forward pass where the
    operator is affine in the facies, :func:`~inference.facies_mcmc.facies_mcmc_sample`).
    The stages grow with the information the data carry about the field: crosshole channels
    (1024 cells, 256 traveltimes) took 40-58 stages with 512 particles.

    Examples
    --------
    >>> import torch
    >>> from ppl_cvae.config import ModelConfig
    >>> from ppl_cvae.problems import LinearGaussian
    >>> vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
    ...                        likelihood="bernoulli", prior="standard_normal"))
    >>> res = facies_smc_sample(vae, LinearGaussian(), torch.zeros(2), num_particles=16,
    ...                         steps_per_stage=4, final_steps=4)
    >>> tuple(res.x.shape), tuple(res.log_evidence.shape)
    ((2, 16, 2), (2,))
    """
    from inference.arviz_io import chain_diagnostics

    problem = as_problem(problem)
    check_facies_prior(prior_vae, problem)
    cfg = prior_vae.config
    num_particles = as_count(num_particles, "num_particles", minimum=1)
    populations = as_count(populations, "populations", minimum=1)
    steps_per_stage = as_count(steps_per_stage, "steps_per_stage", minimum=4)
    final_steps = as_count(final_steps, "final_steps", minimum=4)
    max_stages = as_count(max_stages, "max_stages", minimum=1)
    noncentred_moves = as_count(noncentred_moves, "noncentred_moves", minimum=0)
    if not isinstance(waste_free, bool):
        raise ConfigError(f"waste_free must be True or False, got {waste_free!r}")
    seed = as_seed(seed) or 0
    if not (
        isinstance(ess_fraction, (int, float))
        and not isinstance(ess_fraction, bool)
        and 0.0 < float(ess_fraction) < 1.0
    ):
        raise ConfigError(f"ess_fraction must be a number in (0, 1), got {ess_fraction!r}")
    x_shape = tuple(cfg.x_shape)
    y, _ = check_one_observation(problem, y, torch.zeros(1, *x_shape), x_shape)
    num_cells = math.prod(x_shape)
    num_facies = _num_facies(cfg)
    # waste-free: M chains of steps_per_stage kept states each
    num_chains = num_particles // steps_per_stage if waste_free else num_particles
    if num_chains < 1:
        raise ConfigError(
            f"waste_free needs num_particles >= steps_per_stage, got {num_particles} and "
            f"{steps_per_stage}"
        )
    if waste_free:
        num_particles = num_chains * steps_per_stage
    check_memory(  # the particles of all populations: codes (float32) and z (float64)
        populations * num_particles * (4 * num_cells + 8 * cfg.latent_dim + 8),
        f"{populations} populations of {num_particles} particles ({num_cells} cells)",
        "ask for fewer particles",
    )
    prior_vae.eval()
    y_ll = y.detach().to("cpu", dtype)
    begin = time.perf_counter()
    evaluations = 0
    xs, zs, lls, log_z, schedules = [], [], [], [], []
    accept_z, accept_x, accept_nc = [], [], []
    for pop in range(populations):
        gen = torch.Generator().manual_seed(derived_seed(seed, pop))
        z, codes, _ = prior_draws(prior_vae, num_particles, gen)
        x = codes.to(torch.float32).reshape(num_particles, *x_shape)
        parts = []
        for part in x.split(batch_models):
            value = checked_log_likelihood(problem, part.to(dtype), y_ll)
            parts.append(
                check_log_density_values(problem, "log_likelihood", value, "facies fields")
            )
        ll = torch.cat(parts).double()
        evaluations += num_particles
        beta, log_evidence, schedule = 0.0, 0.0, [0.0]
        shift = NONCENTRED_START
        bar = tqdm(
            total=1.0,
            desc=f"facies SMC {pop + 1}/{populations}",
            bar_format="{desc}: {bar} beta {n:.3g}{postfix} [{elapsed}]",
            disable=None if progress is None else not progress,
        )
        while beta < 1.0 and len(schedule) <= max_stages:
            new_beta = next_temperature(ll, beta, ess_fraction * num_particles)
            bar.update(new_beta - beta)
            bar.set_postfix_str(f"stage {len(schedule)}", refresh=False)
            log_w = (new_beta - beta) * ll
            log_evidence += float(torch.logsumexp(log_w, 0)) - math.log(num_particles)
            beta = new_beta
            schedule.append(beta)
            idx = systematic_resample(log_w, num_chains, gen)
            if not waste_free:
                kept, discarded = (final_steps if beta >= 1.0 else steps_per_stage), 0
            else:  # every state of the chains; at beta = 1 after final_steps in all
                kept, discarded = steps_per_stage, (
                    max(0, final_steps - steps_per_stage) if beta >= 1.0 else 0
                )
            with warnings.catch_warnings():
                # the kernel's R-hat and ESS over a few steps per particle are not used here:
                # ArviZ's "More chains than draws" and NumPy's/ArviZ's RuntimeWarnings on them
                warnings.filterwarnings("ignore", "More chains", UserWarning)
                warnings.filterwarnings("ignore", category=RuntimeWarning, module="(numpy|arviz)")
                res = facies_mcmc_sample(
                    prior_vae,
                    problem,
                    y,
                    x[idx],
                    init_z=z[idx],
                    likelihood_power=beta,
                    num_samples=kept,
                    warmup_steps=discarded,
                    num_chains=num_chains,
                    flips_per_step=flips_per_step,
                    latent_moves=latent_moves,
                    start="first",
                    seed=int(torch.randint(2**31, (1,), generator=gen)),
                    batch_models=batch_models,
                    dtype=dtype,
                    neighbours=neighbours,
                    temperatures=1,
                    noncentred_moves=noncentred_moves,
                    noncentred_scale=shift,
                )
            if noncentred_moves:  # tuned from the stage's acceptance (Notes)
                shift = min(
                    NONCENTRED_MAX,
                    shift * math.exp(2.0 * (res.accept_noncentred - NONCENTRED_TARGET)),
                )
            if waste_free:  # (chains, steps, ...) -> particles, a chain's states adjacent
                x = res.x.reshape(num_particles, *x_shape)
                z = res.z.reshape(num_particles, -1).double()
                ll = res.log_likelihood.reshape(num_particles).double()
            else:
                x, z = res.x[:, -1], res.z[:, -1].double()
                ll = res.log_likelihood[:, -1].double()
            evaluations += res.num_evaluations
        bar.close()
        xs.append(x)
        zs.append(z)
        lls.append(ll)
        log_z.append(log_evidence)
        schedules.append(torch.tensor(schedule, dtype=torch.float64))
        accept_z.append(res.accept_z)
        accept_x.append(res.accept_x)
        accept_nc.append(res.accept_noncentred)
    seconds = time.perf_counter() - begin
    x_all = torch.stack(xs)
    z_all = torch.stack(zs)
    ll_all = torch.stack(lls)
    flat = x_all.reshape(populations, num_particles, num_cells)
    fractions = [(flat == k).double().mean(-1).unsqueeze(-1) for k in range(1, num_facies)]
    monitored = torch.cat([z_all, ll_all.unsqueeze(-1), *fractions], -1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat, min_ess = chain_diagnostics(monitored)
    distinct = min(len(torch.unique(f, dim=0)) / num_particles for f in flat)
    return FaciesSMCResult(
        x=x_all,
        z=z_all,
        log_likelihood=ll_all,
        log_evidence=torch.tensor(log_z, dtype=torch.float64),
        betas=tuple(schedules),
        rhat=rhat,
        min_ess=min_ess,
        num_quantities=monitored.shape[-1],
        accept_z=min(accept_z),
        accept_x=min(accept_x),
        distinct=distinct,
        num_evaluations=evaluations,
        seconds=seconds,
        ess_fraction=float(ess_fraction),
        accept_noncentred=min(accept_nc),
        num_chains=num_chains if waste_free else None,
    )


def sample_facies_smc(
    cvae: CVAE,
    generative_prior: CVAE,
    y: torch.Tensor,
    num_samples: int,
    problem: Problem,
    *,
    populations: int = 2,
    steps_per_stage: int = 8,
    final_steps: int = 40,
    flips_per_step: int = 16,
    x_true: torch.Tensor | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> tuple[az.InferenceData, str, bool]:
    """Run :func:`facies_smc_sample` for every observation and build the posterior file.

    What ``ppl-cvae sample RUN --method facies-smc --generative-prior PRIOR_RUN`` and
    :func:`inference.sample.sample_corrected` (``method="facies-smc"``) call.

    Parameters
    ----------
    cvae : CVAE
        The run's conditional model: checked against the generative prior (one problem),
        not drawn from (the particles start at the prior).
    generative_prior : CVAE
        Unconditional VAE of the prior draws with a ``bernoulli`` or ``categorical`` decoder.
    y : Tensor, shape (M, *y_shape)
        Observations, units of ``y``.
    num_samples : int
        Draws per observation, split between the populations (``ceil(num_samples /
        populations)`` particles each, at least 4).
    problem : Problem
        With a noise model; its forward operator reads facies codes.
    populations : int, default 2
        Independent populations per observation (the file's ``chain`` dim).
    steps_per_stage, final_steps, flips_per_step : int
        As in :func:`facies_smc_sample`.
    x_true : Tensor, shape (M, *x_shape), optional
        Truths for ``constant_data``.
    seed : int, optional
        Observation ``m`` runs with seed ``derived_seed(seed, m * populations)``, so no two
        populations of a file share a seed; None: drawn from torch's global RNG
        (:func:`~ppl_cvae.checks.resolve_seed`). Recorded as the ``seed`` attribute.
    attrs : mapping, optional
        Run attributes.
    progress : bool, optional
        Progress bars (:func:`facies_smc_sample`); None: where stderr is a terminal.

    Returns
    -------
    idata : arviz.InferenceData
        ``posterior.x`` (facies codes) and ``posterior.z`` with the populations as chains
        (dims ``chain, draw``), the groups of
        :func:`~inference.sample.inference_data_from_draws`, and per observation in
        ``sample_stats``: ``rhat``, ``rhat_threshold``, ``ess_bulk``, ``log_evidence`` (the
        log of the populations' mean evidence), ``log_evidence_se``, ``stages``,
        ``accept_z``, ``accept_x``, ``distinct``, ``evidence_spread`` and
        ``evidence_tolerance`` (:class:`FaciesSMCResult`).
    summary : str
        One line of diagnostics (:func:`facies_smc_summary`).
    ok : bool
        False when an observation did not converge (:attr:`FaciesSMCResult.converged`: the
        populations' log evidence disagrees, or ``beta = 1`` was not reached).

    Raises
    ------
    ConfigError
        If ``cvae`` is not conditional, ``generative_prior`` is not a facies generative prior,
        a count or ``seed`` is out of range, or there are fewer than 4 particles per
        population.
    ShapeError
        If ``y`` does not have shape ``(M, *y_shape)``, or the two models' ``x_shape`` differ.
    DataError
        If ``y`` holds NaN or inf, or is not an array of real numbers.
    ResourceError
        If an observation's particles would not fit in memory.
    NoLikelihoodError
        If the problem has no noise model.

    References
    ----------
    Del Moral, Doucet and Jasra (2006), JRSS B 68, 411 (module docstring).

    Examples
    --------
    >>> from ppl_cvae.config import ModelConfig
    >>> from ppl_cvae.problems import LinearGaussian
    >>> cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,),
    ...                         likelihood="bernoulli"))
    >>> vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
    ...                        likelihood="bernoulli", prior="standard_normal"))
    >>> idata, summary, ok = sample_facies_smc(cvae, vae, torch.zeros(1, 2), 16,
    ...                                        LinearGaussian(), steps_per_stage=4,
    ...                                        final_steps=4)
    >>> dict(idata.posterior["x"].sizes)
    {'chain': 2, 'draw': 8, 'observation': 1, 'parameter': 2}
    """
    from inference.latent_mcmc import check_run_matches_prior, generative_prior_file
    from inference.posterior import as_observation_batch

    problem = as_problem(problem)
    check_facies_prior(generative_prior, problem)
    check_run_matches_prior(cvae, generative_prior)
    populations = as_count(populations, "populations")
    num_samples = as_count(num_samples, "num_samples")
    steps_per_stage = as_count(steps_per_stage, "steps_per_stage", minimum=4)
    final_steps = as_count(final_steps, "final_steps", minimum=4)
    flips_per_step = as_count(flips_per_step, "flips_per_step", minimum=0)
    seed = resolve_seed(seed)
    particles = math.ceil(num_samples / populations)
    if particles < 4:
        raise ConfigError(
            f"num_samples={num_samples} draws in {populations} populations: R-hat needs at "
            f"least 4 particles per population; ask for num_samples >= {4 * populations} "
            "(--num-samples on the command line)"
        )
    assert cvae.config.y_shape is not None  # check_run_matches_prior
    y_batch, _ = as_observation_batch(y, cvae.config.y_shape)
    check_finite(y_batch, "y")
    results = [
        facies_smc_sample(
            generative_prior,
            problem,
            y_batch[m],
            num_particles=particles,
            populations=populations,
            steps_per_stage=steps_per_stage,
            final_steps=final_steps,
            flips_per_step=flips_per_step,
            seed=derived_seed(seed, m * populations),
            progress=progress,
        )
        for m in range(y_batch.shape[0])
    ]
    stats = {
        "log_evidence": "log_evidence_mean",
        **{name: name for name in ("log_evidence_se", "stages", "accept_z", "accept_x")},
        **{name: name for name in ("distinct", "evidence_spread", "evidence_tolerance")},
    }
    method_attrs = {
        "method": "facies-smc",
        "inference_method": (
            "sequential Monte Carlo on (z, x) of a generative facies prior (unconditional VAE "
            "of the prior draws): particles from the prior, likelihood tempered in adaptively "
            "(ESS of the incremental weights half the particles), systematic resampling, "
            "facies MCMC moves (Del Moral, Doucet and Jasra 2006); populations as chains"
        ),
        "particles": particles,
        "steps_per_stage": steps_per_stage,
        "final_steps": final_steps,
        "flips_per_step": flips_per_step,
    }
    idata = generative_prior_file(
        results,
        y_batch,
        problem,
        generative_prior,
        chains=populations,
        stats=stats,
        method_attrs=method_attrs,
        x_true=x_true,
        seed=seed,
        attrs=attrs,
    )
    summary, ok = facies_smc_summary(results)
    return idata, summary, ok


def facies_smc_summary(results: Sequence[FaciesSMCResult]) -> tuple[str, bool]:
    """Return the one-line verdict of facies SMC runs and whether all converged.

    Parameters
    ----------
    results : sequence of FaciesSMCResult
        One per observation (at least one).

    Returns
    -------
    summary : str
        ``facies SMC: log evidence <first> +- <se>, spread between populations <s> nats (max;
        bound <b>), ...`` with the most stages, R-hat (reported, not the verdict), the
        smallest ESS, acceptance rates and fraction of distinct fields, and the time; ends in
        ``FAILED for n of M observation(s) ...`` when some did not converge
        (:attr:`FaciesSMCResult.converged`).
    ok : bool

    Raises
    ------
    ConfigError
        If ``results`` is empty.

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> run = SimpleNamespace(log_evidence_mean=10.0, log_evidence_se=2.0, evidence_spread=4.0,
    ...                       evidence_tolerance=2.5, stages=40, rhat=1.1, min_ess=30.0,
    ...                       accept_z=0.4, accept_x=0.3, distinct=1.0, seconds=5.0,
    ...                       reached_posterior=True, converged=False,
    ...                       log_evidence=torch.zeros(2))
    >>> summary, ok = facies_smc_summary([run])
    >>> ok, summary.split("; ")[-1][:32]
    (False, 'FAILED for 1 of 1 observation(s)')
    """
    if not results:
        raise ConfigError("the facies SMC summary needs at least one result")
    first = results[0]
    evidence = f"log evidence {first.log_evidence_mean:.1f}"
    if not math.isnan(first.log_evidence_se):
        evidence += f" +- {first.log_evidence_se:.1f}"
    if len(results) > 1:
        evidence += " (first observation)"
    worst = max(results, key=lambda r: r.evidence_spread - r.evidence_tolerance)
    summary = (
        f"facies SMC: {evidence}, spread between populations {worst.evidence_spread:.2f} nats "
        f"(worst; bound {worst.evidence_tolerance:.2f}), {max(r.stages for r in results)} "
        f"stages (max), R-hat {max(r.rhat for r in results):.3f} (max; not the verdict), min "
        f"ESS {min(r.min_ess for r in results):.0f}, acceptance z "
        f"{min(r.accept_z for r in results):.2f}, x {min(r.accept_x for r in results):.3f} "
        f"(min), distinct fields {min(r.distinct for r in results):.2f} (min), "
        f"{sum(r.seconds for r in results):.1f} s"
    )
    failed = sum(not r.converged for r in results)
    if failed:
        unreached = sum(not r.reached_posterior for r in results)
        summary += (
            f"; FAILED for {failed} of {len(results)} observation(s) (populations' log "
            "evidence differs by more than the bound: they found different parts of the "
            "posterior"
            + (f"; beta = 1 not reached in {unreached}" if unreached else "")
            + "): run more particles (--num-samples) or moves (--smc-steps)"
        )
    if len(first.log_evidence) < 2:
        summary += "; one population: no check between populations"
    return summary, failed == 0
