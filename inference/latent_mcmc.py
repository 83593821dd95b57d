"""NUTS in the latent space of a generative prior, for problems whose prior is a simulator only.

A prior defined by a simulator (``Crosshole(prior="channels")``) has no density, so NUTS on
``x`` (:mod:`inference.mcmc`) cannot run. Following Laloy et al. (2018), the prior is replaced by
a generative model of its draws, ``x = g(z)``, ``z ~ N(0, I_k)``: here the decoder location of
an unconditional VAE fitted on prior draws
(:func:`~ppl_cvae.train.generative_prior.fit_generative_prior`,
``ppl-cvae fit --unconditional``). NUTS then samples the latent posterior

    p(z | y)  proportional to  N(z; 0, I_k) p(y | g(z)),

on the potential ``U(z) = |z|^2 / 2 - log p(y | g(z))`` (the problem's noise model gives
``log p(y | x)``), and the draws of ``x`` are ``g(z)``.

Choice of ``g`` and its consequence. ``g(z) = E[x | z]``, the decoder's location (its
deterministic output, as Laloy et al. use the generator): for a Bernoulli facies decoder the
field of facies probabilities ``P(x = 1 | z)``, which a facies problem reads as a fraction
of channel in each cell (the crosshole operator maps it to slowness ``p s_c + (1 - p) s_b``);
for a Gaussian decoder its mean. The decoder's own noise is not part of the target, so the
posterior is over the VAE's manifold ``{g(z)}``, not over the exact prior: where the VAE
blurs (cell probabilities between 0 and 1 at channel edges), the draws are blurred too, and
a truth off the manifold cannot be reached. The posterior probability of facies 1 in a cell
is the mean of ``g(z)`` over the draws (Rao-Blackwellised, as for the amortized draws).

The amortized CVAE does what it does for :func:`inference.mcmc.nuts_sample`: its draws of
``x`` for this ``y``, encoded by the generative prior's recognition net (``z_0 = mu_q(x)``,
the mean of ``q(z | x)``), start the chains (by default the encodings of highest target
density), and the mean and (Ledoit-Wolf) covariance of the encoded draws precondition NUTS
(a constant-Jacobian change of variables ``v = L^-1 (z - mu)``; NUTS's diagonal adaptation
runs on top).

References
----------
Laloy, Herault, Jacques and Linde (2018), Training-image based geostatistical inversion using a
spatial generative adversarial neural network, Water Resources Research 54, 381,
doi:10.1002/2017WR022148.
Hoffman and Gelman (2014), The No-U-Turn Sampler, JMLR 15, 1593.
Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC, Bayesian Analysis 16, 667.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from pyro.infer import NUTS

from inference.mcmc import ChainVerdict, chains_summary, rhat_passes, run_whitened_chain
from inference.mcmc.chains import _PotentialWatch
from ppl_cvae._memory import check_memory
from ppl_cvae.checks import (
    as_count,
    as_real_tensor,
    as_seed,
    check_finite,
    derived_seed,
    resolve_seed,
    shape_text,
)
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.densities import checked_log_likelihood

if TYPE_CHECKING:
    from inference.arviz_io import az

__all__ = [
    "ChainRun",
    "GenerativePriorSampler",
    "LatentMCMCResult",
    "check_chain_seeds",
    "check_generative_prior",
    "check_one_observation",
    "decode_latent",
    "encode_latent",
    "generative_prior_posterior",
    "latent_nuts_sample",
    "latent_nuts_summary",
    "sample_latent_nuts",
]


@dataclass(frozen=True)
class LatentMCMCResult:
    """NUTS draws of the latent posterior of a generative prior, for one observation.

    Attributes
    ----------
    z : Tensor, shape (chains, draws, latent_dim)
        Latent draws of ``p(z | y)`` (dimensionless, prior ``N(0, I)``).
    x : Tensor, shape (chains, draws, *x_shape)
        ``g(z)``, the generative prior's decoder location of every draw, units of ``x``
        (for a Bernoulli facies decoder the facies-1 probability of every cell).
    z_init : Tensor, shape (chains, latent_dim)
        Where the chains started: encoded amortized draws (see ``start`` of
        :func:`latent_nuts_sample`).
    rhat : float
        Largest rank-normalised split R-hat over the latent coordinates (inf or NaN when a
        chain never moved: not converged).
    min_ess : float
        Smallest bulk effective sample size over the latent coordinates (all chains).
    num_evaluations : int
        Evaluations of the potential and its gradient, warm-up included, all chains.
    divergences : int
        Divergent transitions after warm-up, all chains.
    seconds : float
        Wall-clock time of warm-up and sampling.
    """

    z: torch.Tensor
    x: torch.Tensor
    z_init: torch.Tensor
    rhat: float
    min_ess: float
    num_evaluations: int
    divergences: int
    seconds: float

    @cached_property
    def rhat_threshold(self) -> float:
        """The bound on the largest R-hat of the latent coordinates that mixed chains respect.

        :func:`~inference.arviz_io.rhat_bound` of ``z`` (:func:`~inference.mcmc.rhat_threshold`
        for these chains, draws and latent coordinates at the effective draws of the
        coordinate with the largest R-hat; never below 1.01), as for NUTS on ``x``.
        """
        from inference.arviz_io import rhat_bound

        return rhat_bound(self.z.double().numpy())

    @property
    def converged(self) -> bool:
        """Whether the R-hat passes and there were no divergences.

        ``rhat <= rhat_threshold <= 1.1`` (:func:`~inference.mcmc.budget.rhat_passes`).
        """
        return rhat_passes(self.rhat, self.rhat_threshold) and self.divergences == 0

    def posterior_mean(self) -> torch.Tensor:
        """Return the posterior mean of ``g(z)``, shape ``x_shape``, units of ``x``.

        For a Bernoulli facies decoder: the posterior probability of facies 1 in every cell.
        """
        return self.x.double().mean((0, 1)).to(self.x.dtype)


def check_generative_prior(prior_vae: object, problem: Problem | None = None) -> CVAE:
    """Check that ``prior_vae`` is an unconditional VAE that can serve as a generative prior.

    Parameters
    ----------
    prior_vae : CVAE
        Expected: ``config.y_shape is None`` (fitted on prior draws, no ``y``), a latent
        (``latent_dim >= 1``) and a decoder with a location (not a flow).
    problem : Problem, optional
        When given, its ``x_shape`` must be the VAE's.

    Returns
    -------
    CVAE
        ``prior_vae`` itself.

    Raises
    ------
    ConfigError
        If ``prior_vae`` is not a CVAE, is conditional (a posterior model, not a prior), has no
        latent, or has a flow decoder.
    ShapeError
        If its ``x_shape`` is not the problem's.
    """
    if not isinstance(prior_vae, CVAE):
        raise ConfigError(
            f"the generative prior must be a CVAE (an unconditional VAE run), got "
            f"{type(prior_vae).__name__}"
        )
    cfg = prior_vae.config
    if cfg.y_shape is not None:
        raise ConfigError(
            f"the generative prior must be an unconditional VAE (y_shape None), got a "
            f"conditional model with y_shape {cfg.y_shape}: fit one on prior draws with "
            "`ppl-cvae fit --unconditional` (or fit_generative_prior)"
        )
    if cfg.latent_dim < 1:
        raise ConfigError("the generative prior needs a latent (latent_dim >= 1), got 0")
    if cfg.likelihood == "flow":
        raise ConfigError(
            "the generative prior's decoder is a flow, which has no deterministic output g(z); "
            "use a Gaussian, Bernoulli or categorical decoder"
        )
    if problem is not None:
        problem = as_problem(problem)
        if tuple(problem.x_shape) != tuple(cfg.x_shape):
            raise ShapeError(
                f"the generative prior generates x of shape {tuple(cfg.x_shape)}; problem "
                f"{problem.name!r} has x_shape {tuple(problem.x_shape)}"
            )
    return prior_vae


def decode_latent(prior_vae: CVAE, z: torch.Tensor) -> torch.Tensor:
    """Return ``g(z)``: the generative prior's decoder location, in units of ``x``.

    Parameters
    ----------
    prior_vae : CVAE
        Unconditional VAE (:func:`check_generative_prior`).
    z : Tensor, shape (*batch, latent_dim)
        Latent codes; cast to the VAE's dtype; differentiable.

    Returns
    -------
    Tensor, shape (*batch, *x_shape)
        The decoder mean: for ``bernoulli`` ``P(x = 1 | z)``, for ``categorical`` the mean code
        ``sum_k k p_k(z)`` (for two facies ``P(x = 1 | z)``), for the Gaussian decoders the
        mean.

    Raises
    ------
    ShapeError
        If ``z`` does not end in ``latent_dim``.
    """
    k = prior_vae.config.latent_dim
    if z.dim() < 1 or z.shape[-1] != k:
        raise ShapeError(f"z must have shape (*batch, {k}), got {tuple(z.shape)}")
    ref = prior_vae.x_standardiser.mean
    batch = z.shape[:-1]
    flat = z.reshape(-1, k).to(ref.dtype)
    _, loc = prior_vae.x_distribution(flat, None)
    assert loc is not None  # every non-flow decoder has a location
    if prior_vae.config.likelihood == "categorical":  # class probabilities (..., K)
        codes = torch.arange(loc.shape[-1], dtype=loc.dtype, device=loc.device)
        loc = loc @ codes
    return loc.reshape(*batch, *prior_vae.config.x_shape)


@torch.no_grad()
def encode_latent(prior_vae: CVAE, x: torch.Tensor) -> torch.Tensor:
    """Encode models with the generative prior's recognition net: the mean of ``q(z | x)``.

    Parameters
    ----------
    prior_vae : CVAE
        Unconditional VAE (:func:`check_generative_prior`).
    x : Tensor, shape (N, *x_shape)
        Models in units of ``x`` (e.g. amortized posterior draws; facies codes for a facies
        decoder).

    Returns
    -------
    Tensor, shape (N, latent_dim)

    Raises
    ------
    ShapeError
        If ``x`` does not have shape ``(N, *x_shape)``.
    """
    prior_vae.check_inputs(None, x)
    ref = prior_vae.x_standardiser.mean
    loc, _ = prior_vae.recognition_params(None, x.to(ref.dtype))
    return loc


def check_chain_seeds(seed: Any, num_chains: int) -> int:
    """Return ``seed`` as an int, the seed of chains ``c = 0 .. num_chains - 1``.

    Chain ``c`` uses ``derived_seed(seed, c)`` (:func:`~ppl_cvae.checks.derived_seed`:
    ``seed + c`` wrapped below ``2**32``), so every seed :func:`~ppl_cvae.checks.as_seed`
    accepts serves any number of chains (``2**32 - num_chains`` was the largest before).

    Parameters
    ----------
    seed : int or NumPy integer
        The first chain's seed.
    num_chains : int
        Chains (at least 1).

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        If ``seed`` is not an int in ``[0, 2**32 - 1]`` or ``num_chains`` not an int >= 1.

    Examples
    --------
    >>> check_chain_seeds(np.int64(7), 4), check_chain_seeds(2**32 - 1, 4)
    (7, 4294967295)
    """
    as_count(num_chains, "num_chains")
    return as_seed(seed, optional=False)


def check_one_observation(
    problem: Problem, y: Any, init: Any, x_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return one finite observation and the finite models that start the chains, as tensors.

    What :func:`latent_nuts_sample` and :func:`~inference.facies_mcmc.facies_mcmc_sample`
    accept: a tensor, a NumPy array or a list of real numbers for each (a floating dtype is
    kept; integers and booleans become float32).

    Parameters
    ----------
    problem : Problem
        Gives ``y_shape``.
    y : array_like, shape y_shape
        One observation, units of ``y``.
    init : array_like, shape (N, *x_shape)
        Models that start the chains, units of ``x``.
    x_shape : tuple of int
        The generative prior's event shape of ``x``.

    Returns
    -------
    y : Tensor, shape y_shape
    init : Tensor, shape (N, *x_shape)

    Raises
    ------
    DataError
        If ``y`` or ``init`` is not an array of real numbers, or holds NaN or inf.
    ShapeError
        If ``y`` is not ``y_shape`` (one observation) or ``init`` not ``(N >= 1, *x_shape)``.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> y, init = check_one_observation(LinearGaussian(), [0.1, 0.2], np.zeros((4, 2)), (2,))
    >>> y.dtype, tuple(init.shape)  # Python floats are float64, as NumPy reads them
    (torch.float64, (4, 2))
    """
    y = as_real_tensor(y, "y", dtype=None)
    y_shape = tuple(problem.y_shape)
    if tuple(y.shape) != y_shape:
        raise ShapeError(
            f"y must have shape {y_shape} (one observation of problem {problem.name!r}), got "
            f"{tuple(y.shape)}"
        )
    check_finite(y, "y")
    init = as_real_tensor(init, "init", dtype=None)
    if init.dim() != len(x_shape) + 1 or tuple(init.shape[1:]) != x_shape or len(init) < 1:
        raise ShapeError(
            f"init must have shape {shape_text('N >= 1', x_shape)}: models that start the "
            f"chains, got {tuple(init.shape)}"
        )
    check_finite(init, "init")
    return y, init


def latent_nuts_sample(
    prior_vae: CVAE,
    problem: Problem,
    y: torch.Tensor,
    init: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 4,
    max_tree_depth: int = 8,
    start: Literal["best", "first"] = "best",
    seed: int = 0,
) -> LatentMCMCResult:
    """Sample ``p(z | y)`` of a generative prior with NUTS, chains started at encoded ``init``.

    Parameters
    ----------
    prior_vae : CVAE
        The generative prior: an unconditional VAE fitted on the problem's prior draws.
    problem : Problem
        With a noise model (``log_likelihood``); its prior need not have a density.
    y : Tensor, shape y_shape
        One observation, units of ``y``.
    init : Tensor, shape (N, *x_shape)
        Models that start the chains and precondition them, units of ``x`` (pass the amortized
        CVAE's draws for ``y``): all rows are encoded (:func:`encode_latent`); the mean and
        Ledoit-Wolf covariance of the encodings precondition NUTS.
    num_samples, warmup_steps : int
        Draws kept (at least 4: R-hat needs them) and warm-up iterations per chain.
    num_chains : int, default 4
        Chains (at most ``N``; run one after the other).
    max_tree_depth : int, default 8
        NUTS's tree depth limit.
    start : {"best", "first"}, default "best"
        Which encodings start the chains: the ``num_chains`` with the highest target density
        (lowest potential; all ``N`` are evaluated in one batch), or the first ``num_chains``
        rows. "best" shortens the warm-up when the amortized posterior is much wider than
        the latent one (chains start near its bulk); the starts are then less dispersed, so
        R-hat is a weaker check of multimodality than with "first".
    seed : int, default 0
        Seed of Pyro's RNG, in ``[0, 2**32 - 1]`` (chain ``c`` uses ``derived_seed(seed, c)``).

    Returns
    -------
    LatentMCMCResult

    Raises
    ------
    ConfigError
        If ``prior_vae`` is not a generative prior (:func:`check_generative_prior`), a count
        is not an int in its range (a float, a bool, a string), ``seed`` is not an int in
        ``[0, 2**32 - 1]`` (:func:`check_chain_seeds`), or ``start`` is unknown.
    ShapeError
        If ``y`` does not have shape ``y_shape``, ``init`` not ``(N >= 1, *x_shape)``, or the
        VAE's ``x_shape`` is not the problem's.
    DataError
        If ``y`` or ``init`` is not an array of real numbers (tensors, NumPy arrays and lists
        are accepted) or holds NaN or inf, or the target density is NaN or infinite at a
        chain's start (checked before NUTS runs, as :func:`inference.mcmc.nuts_sample` does).
    ResourceError
        If the kept draws (``num_samples`` per chain) would not fit in memory.
    NoLikelihoodError
        If the problem has no noise model.

    Notes
    -----
    Target ``log N(z; 0, I_k) + log N(y; F(g(z)), C_e)``, evaluated in float64 after the
    decoder (which runs in its own dtype). See the module docstring for ``g`` and the
    consequence of sampling on the VAE's manifold.

    Examples
    --------
    >>> import torch
    >>> from ppl_cvae.config import ModelConfig
    >>> from ppl_cvae.problems import LinearGaussian
    >>> vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
    ...                        prior="standard_normal"))
    >>> res = latent_nuts_sample(vae, LinearGaussian(), torch.zeros(2), torch.zeros(2, 2),
    ...                          num_samples=5, warmup_steps=5, num_chains=2)
    >>> tuple(res.z.shape), tuple(res.x.shape)
    ((2, 5, 1), (2, 5, 2))
    """
    from sklearn.covariance import LedoitWolf  # scikit-learn is a core dependency

    from inference.arviz_io import chain_diagnostics

    problem = as_problem(problem)
    check_generative_prior(prior_vae, problem)
    if start not in ("best", "first"):
        raise ConfigError(f"start must be 'best' or 'first', got {start!r}")
    num_samples = as_count(num_samples, "num_samples", minimum=4)  # R-hat needs 4 a chain
    warmup_steps = as_count(warmup_steps, "warmup_steps", minimum=0)
    num_chains = as_count(num_chains, "num_chains")
    max_tree_depth = as_count(max_tree_depth, "max_tree_depth")
    seed = check_chain_seeds(seed, num_chains)
    y, init = check_one_observation(problem, y, init, tuple(prior_vae.config.x_shape))
    k = prior_vae.config.latent_dim
    # per kept draw of a chain: Pyro's stored sample (a tensor object of k float64, about
    # 512 bytes with its overhead), the stacked z (float64 and float32) and g(z) (float32)
    per_draw = 512 + 12 * k + 4 * prior_vae.config.x_dim
    check_memory(
        min(num_chains, len(init)) * num_samples * per_draw,
        f"num_samples={num_samples} draws in each of {min(num_chains, len(init))} chains",
        "ask for fewer draws or chains",
    )
    prior_vae.eval()
    encoded = encode_latent(prior_vae, init.to(prior_vae.x_standardiser.mean.dtype)).double()
    mu = encoded.mean(0)
    if len(encoded) > 1:  # shrunk: few encodings in k dimensions can give a singular estimate
        cov = torch.from_numpy(LedoitWolf().fit(encoded.numpy()).covariance_)
    else:
        cov = torch.eye(k, dtype=encoded.dtype)
    shrink = 1e-9 * float(cov.diagonal().mean().clamp_min(1e-12))
    tril = torch.linalg.cholesky(cov + shrink * torch.eye(k, dtype=cov.dtype))
    y64 = y.double()
    count = [0]

    def latent_potential(z: torch.Tensor) -> torch.Tensor:
        """``|z|^2 / 2 - log p(y | g(z))`` for ``z`` of shape ``(*batch, k)``."""
        x = decode_latent(prior_vae, z).double()
        return 0.5 * z.pow(2).sum(-1) - checked_log_likelihood(problem, x, y64)

    def terms(v: torch.Tensor) -> dict[str, torch.Tensor]:
        x = decode_latent(prior_vae, mu + tril @ v).double()
        return {"log_likelihood": checked_log_likelihood(problem, x, y64)}

    watch = _PotentialWatch(problem, terms)

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        count[0] += 1
        value = latent_potential(mu + tril @ params["v"])
        watch.see(params["v"], float(value.detach()))
        return value

    num_chains = min(len(encoded), num_chains)
    if start == "best":
        with torch.no_grad():
            values = torch.cat([latent_potential(b) for b in encoded.split(512)])
        order = torch.argsort(torch.nan_to_num(values, nan=float("inf")))
        start_z, start_values = encoded[order[:num_chains]], values[order[:num_chains]]
    else:
        start_z = encoded[:num_chains]
        with torch.no_grad():
            start_values = latent_potential(start_z)
    _check_starts(problem, -start_values.double())
    chains = []
    divergences = 0
    begin = time.perf_counter()
    for c in range(num_chains):
        kernel = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth, target_accept_prob=0.8)
        with watch.failures():
            draws, diverged, _ = run_whitened_chain(
                kernel, start_z[c], mu, tril, num_samples, warmup_steps, derived_seed(seed, c)
            )
        chains.append(draws)
        divergences += diverged
    seconds = time.perf_counter() - begin
    z = torch.stack(chains)  # (chains, draws, k)
    with np.errstate(divide="ignore", invalid="ignore"):  # a chain that never moved: inf/NaN
        rhat, min_ess = chain_diagnostics(z.numpy())
    with torch.no_grad():
        x = decode_latent(prior_vae, z)
    return LatentMCMCResult(
        z=z.float(),
        x=x.float(),
        z_init=start_z.float(),
        rhat=rhat,
        min_ess=min_ess,
        num_evaluations=count[0],
        divergences=divergences,
        seconds=seconds,
    )


def _check_starts(problem: Problem, log_density: torch.Tensor) -> None:
    """Refuse chain starts where the latent target density is not finite (before NUTS runs).

    ``log_density`` (shape ``(num_chains,)``, nats, float64) is
    ``log N(z; 0, I) + log p(y | g(z))`` at the starts; as :func:`inference.mcmc.nuts_sample`
    does at its starts, a NaN or infinite value is refused: NUTS would spend its warm-up on
    divergent steps or fail inside Pyro's tree.

    Raises
    ------
    DataError
        If ``log_density`` holds NaN or an infinity; the message names the problem, the first
        such value, how many of the starts hold one and the member to check.
    """
    bad = ~torch.isfinite(log_density)
    if bool(bad.any()):
        raise DataError(
            f"the log posterior density of problem {problem.name!r} (log N(z; 0, I) + "
            f"log_likelihood at x = g(z)) is {float(log_density[bad].flatten()[0])} at "
            f"{int(bad.sum())} of {bad.numel()} chain starts (encoded amortized draws); NUTS "
            "needs a finite density there: check the problem's log_likelihood (and the "
            "forward operator it calls)"
        )


class ChainRun(ChainVerdict, Protocol):
    """One observation's result of a generative-prior sampler, as its posterior file reads it.

    :class:`LatentMCMCResult` and :class:`~inference.facies_mcmc.FaciesMCMCResult` are ones.
    """

    @property
    def x(self) -> torch.Tensor:
        """Draws of ``x``, shape ``(chains, draws, *x_shape)``, units of ``x``."""

    @property
    def z(self) -> torch.Tensor:
        """Draws of the generative prior's latent, shape ``(chains, draws, latent_dim)``."""


R = TypeVar("R", bound=ChainRun)
R_co = TypeVar("R_co", bound=ChainRun, covariant=True)


class GenerativePriorSampler(Protocol[R_co]):
    """The per-observation sampler :func:`generative_prior_posterior` runs.

    :func:`latent_nuts_sample` and :func:`~inference.facies_mcmc.facies_mcmc_sample` are ones.
    """

    def __call__(
        self,
        prior_vae: CVAE,
        problem: Problem,
        y: torch.Tensor,
        init: torch.Tensor,
        *,
        num_samples: int,
        warmup_steps: int,
        num_chains: int,
        seed: int,
    ) -> R_co:
        """Sample one observation ``y`` with chains started from ``init``."""


def check_run_matches_prior(cvae: CVAE, generative_prior: CVAE) -> None:
    """Check that a run's CVAE and a generative prior are models of one problem.

    Parameters
    ----------
    cvae : CVAE
        The run's model; must be conditional (``y_shape`` set).
    generative_prior : CVAE
        Unconditional VAE of the prior draws.

    Raises
    ------
    ConfigError
        If ``cvae`` is not conditional.
    ShapeError
        If the two models' ``x_shape`` differ.
    """
    if cvae.config.y_shape is None:
        raise ConfigError(
            "sampling an observation needs a conditional model (y_shape set) as the run; got an "
            "unconditional VAE"
        )
    if tuple(cvae.config.x_shape) != tuple(generative_prior.config.x_shape):
        raise ShapeError(
            f"the CVAE generates x of shape {tuple(cvae.config.x_shape)} and the generative "
            f"prior {tuple(generative_prior.config.x_shape)}; they must be models of one problem"
        )


def generative_prior_posterior(
    cvae: CVAE,
    generative_prior: CVAE,
    y: torch.Tensor,
    num_samples: int,
    problem: Problem,
    sampler: GenerativePriorSampler[R],
    *,
    chains: int,
    warmup_steps: int,
    stats: Sequence[str],
    method_attrs: Mapping[str, Any],
    x_true: torch.Tensor | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[az.InferenceData, list[R]]:
    """Run a generative-prior sampler for every observation and build the posterior file.

    What :func:`sample_latent_nuts` and :func:`~inference.facies_mcmc.sample_facies_mcmc`
    share: the checks, the draws per chain, the starts (``preconditioner_draws(latent_dim,
    chains)`` amortized draws of ``cvae`` for observation ``m``, seed ``derived_seed(seed,
    m)``, decoder noise as :func:`~inference.posterior.draw_posterior`'s default: facies codes
    for a facies decoder) and the file.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model (``y_shape`` set).
    generative_prior : CVAE
        Unconditional VAE of the prior draws (:func:`check_generative_prior`).
    y : Tensor, shape (M, *y_shape) or y_shape
        Observations, units of ``y``.
    num_samples : int
        Draws per observation, split between the chains (``ceil(num_samples / chains)``
        per chain, at least 4).
    problem : Problem
        With a noise model.
    sampler : callable
        Samples one observation: ``sampler(generative_prior, problem, y_m, start,
        num_samples=per_chain, warmup_steps=warmup_steps, num_chains=chains, seed=seed)``
        returning a :class:`ChainRun`.
    chains, warmup_steps : int
        Chains per observation (at least 1) and warm-up steps per chain.
    stats : sequence of str
        Attributes of the results stored per observation in ``sample_stats`` besides
        ``rhat``, ``rhat_threshold`` and ``ess_bulk`` (the results' ``min_ess``).
    method_attrs : mapping
        The method's attributes (``method``, ``inference_method``, ...); ``chains``,
        ``warmup_steps``, ``generative_prior_latent_dim`` and ``independent_draws = 0`` are
        added.
    x_true : Tensor, shape (M, *x_shape), optional
        Truths for ``constant_data``.
    seed : int, optional
        Seed of the amortized draws (``derived_seed(seed, m)`` for observation ``m``) and the
        chains (chain ``c`` of observation ``m``: ``derived_seed(seed, m * chains + c)``),
        recorded as the ``seed`` attribute; None: drawn from torch's global RNG
        (:func:`~ppl_cvae.checks.resolve_seed`) and recorded all the same.
    attrs : mapping, optional
        Run attributes; the method's override them.

    Returns
    -------
    idata : arviz.InferenceData
        ``posterior.x`` and ``posterior.z`` in ``chains`` chains (dims ``chain, draw``), the
        groups of :func:`~inference.sample.inference_data_from_draws` and the statistics per
        observation in ``sample_stats``.
    results : list
        The sampler's result for every observation, in order.

    Raises
    ------
    ConfigError
        If ``cvae`` is not conditional, ``generative_prior`` is not an unconditional VAE, a
        count or ``seed`` is not an int in its range, or there are fewer than 4 draws per
        chain.
    ShapeError
        If ``y`` does not have shape ``(M, *y_shape)``, or the two models' ``x_shape`` differ.
    DataError
        If ``y`` holds NaN or inf.
    ResourceError
        If the amortized draws that start the chains (their number grows with ``chains``) or
        the sampler's draws would not fit in memory.
    NoLikelihoodError
        If the problem has no noise model.
    """
    from inference.mcmc import preconditioner_draws
    from inference.posterior import as_observation_batch, bytes_per_draw, draw_posterior

    problem = as_problem(problem)
    check_generative_prior(generative_prior, problem)
    check_run_matches_prior(cvae, generative_prior)
    chains = as_count(chains, "chains")
    num_samples = as_count(num_samples, "num_samples")
    warmup_steps = as_count(warmup_steps, "warmup_steps", minimum=0)
    seed = resolve_seed(seed)
    per_chain = math.ceil(num_samples / chains)
    if per_chain < 4:
        raise ConfigError(
            f"num_samples={num_samples} draws in {chains} chains: R-hat needs at least 4 per "
            f"chain; ask for num_samples >= {4 * chains} (--num-samples on the command line)"
        )
    assert cvae.config.y_shape is not None  # check_run_matches_prior
    y_batch, _ = as_observation_batch(y, cvae.config.y_shape)
    check_finite(y_batch, "y")
    num_start = preconditioner_draws(generative_prior.config.latent_dim, chains)
    check_memory(  # before the starts are drawn: their number grows with the chains
        num_start * bytes_per_draw(cvae, 1),
        f"{num_start} amortized draws per observation to start {chains} chains",
        "ask for fewer chains",
    )
    results = []
    for m in range(y_batch.shape[0]):
        start = draw_posterior(
            cvae, y_batch[m : m + 1], num_start, seed=derived_seed(seed, m)
        ).x[:, 0]
        results.append(
            sampler(
                generative_prior,
                problem,
                y_batch[m],
                start,
                num_samples=per_chain,
                warmup_steps=warmup_steps,
                num_chains=chains,
                seed=derived_seed(seed, m * chains),  # no stream shared across the file
            )
        )
    idata = generative_prior_file(
        results,
        y_batch,
        problem,
        generative_prior,
        chains=chains,
        stats={name: name for name in stats},
        method_attrs={**method_attrs, "warmup_steps": warmup_steps},
        x_true=x_true,
        seed=seed,
        attrs=attrs,
    )
    return idata, results


def generative_prior_file(
    results: Sequence[ChainRun],
    y: torch.Tensor,
    problem: Problem,
    generative_prior: CVAE,
    *,
    chains: int,
    stats: Mapping[str, str],
    method_attrs: Mapping[str, Any],
    x_true: torch.Tensor | None = None,
    seed: int,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Build the posterior file of a generative-prior sampler's results, one per observation.

    What :func:`generative_prior_posterior` (the MCMC samplers) and
    :func:`~inference.facies_smc.sample_facies_smc` (populations as chains) share.

    Parameters
    ----------
    results : sequence of ChainRun
        Observation ``m``'s draws ``x`` ``(chains, draws, *x_shape)`` and ``z``
        ``(chains, draws, latent_dim)``, with ``rhat``, ``rhat_threshold`` and ``min_ess``.
    y : Tensor, shape (M, *y_shape)
        The observations, units of ``y``.
    problem : Problem
    generative_prior : CVAE
        Its ``latent_dim`` is recorded.
    chains : int
        Chains (or populations) per observation.
    stats : mapping of str to str
        ``sample_stats`` name to the results' attribute, stored per observation besides
        ``rhat``, ``rhat_threshold`` and ``ess_bulk`` (``min_ess``).
    method_attrs : mapping
        The method's attributes; ``chains``, ``generative_prior_latent_dim`` and
        ``independent_draws = 0`` are added.
    x_true : Tensor, shape (M, *x_shape), optional
    seed : int
        The sampler's seed (resolved: never None), recorded as the ``seed`` attribute.
    attrs : mapping, optional
        Run attributes; the method's override them.

    Returns
    -------
    arviz.InferenceData
        The groups of :func:`~inference.sample.inference_data_from_draws`, split into
        ``chains`` chains (:func:`~inference.arviz_io.with_chains`).
    """
    from inference.arviz_io import with_chains
    from inference.sample import inference_data_from_draws, stack_chains

    per_observation = {
        "rhat": torch.tensor([r.rhat for r in results]),
        "rhat_threshold": torch.tensor([r.rhat_threshold for r in results]),
        "ess_bulk": torch.tensor([r.min_ess for r in results]),
    }
    for key, name in stats.items():
        per_observation[key] = torch.tensor([getattr(r, name) for r in results])
    info: dict[str, Any] = {"seed": seed}
    info.update(attrs or {})
    info.update(
        method_attrs,
        chains=chains,
        independent_draws=0,
        generative_prior_latent_dim=generative_prior.config.latent_dim,
    )
    # stored chain after chain along draw, then split into chains
    idata = inference_data_from_draws(
        stack_chains([r.x for r in results]),
        y,
        z=stack_chains([r.z for r in results]),
        problem=problem,
        x_true=x_true,
        attrs=info,
        observation_stats=per_observation,
    )
    return with_chains(idata, chains)


def sample_latent_nuts(
    cvae: CVAE,
    generative_prior: CVAE,
    y: torch.Tensor,
    num_samples: int,
    problem: Problem,
    *,
    chains: int = 4,
    warmup_steps: int = 500,
    x_true: torch.Tensor | None = None,
    seed: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[az.InferenceData, str, bool]:
    """Run :func:`latent_nuts_sample` for every observation and build the posterior file.

    What ``ppl-cvae sample RUN --method latent-nuts --generative-prior PRIOR_RUN`` and
    :func:`inference.sample.sample_corrected` (``method="latent-nuts"``) call.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model: its amortized draws (``preconditioner_draws(latent_dim)``
        per observation, decoder noise as :func:`~inference.posterior.draw_posterior`'s
        default: facies codes for a facies decoder) are encoded to start and precondition the
        chains.
    generative_prior : CVAE
        Unconditional VAE of the prior draws (:func:`check_generative_prior`).
    y : Tensor, shape (M, *y_shape)
        Observations, units of ``y``.
    num_samples : int
        Draws per observation, rounded up to a multiple of ``chains`` (at least 4 per chain).
    problem : Problem
        With a noise model.
    chains, warmup_steps : int
        Chains per observation and warm-up iterations per chain.
    x_true : Tensor, shape (M, *x_shape), optional
        Truths for ``constant_data``.
    seed : int, optional
        Seed of the amortized draws and of the chains (per observation as in
        :func:`generative_prior_posterior`); None: drawn from torch's global RNG
        (:func:`~ppl_cvae.checks.resolve_seed`) and recorded as the ``seed`` attribute.
    attrs : mapping, optional
        Run attributes.

    Returns
    -------
    idata : arviz.InferenceData
        ``posterior.x = g(z)`` and ``posterior.z`` (the generative prior's latent) in
        ``chains`` chains (dims ``chain, draw``), the groups of
        :func:`~inference.sample.inference_data_from_draws`, and ``rhat``,
        ``rhat_threshold``, ``ess_bulk``, ``divergences`` per observation in ``sample_stats``.
    summary : str
        One line of diagnostics; it says FAILED when an observation's chains have not mixed.
    ok : bool
        False when any observation has R-hat above its
        :attr:`LatentMCMCResult.rhat_threshold` (at least 1.01) or divergent transitions.

    Raises
    ------
    ConfigError
        If ``cvae`` is not conditional, ``generative_prior`` is not an unconditional VAE,
        a count is below 1, or there are fewer than 4 draws per chain.
    ShapeError
        If ``y`` does not have shape ``(M, *y_shape)``, or the two models' ``x_shape`` differ.
    DataError
        If ``y`` holds NaN or inf, or is not an array of real numbers.
    ResourceError
        If the amortized draws that start the chains or the chains' draws would not fit in
        memory.
    NoLikelihoodError
        If the problem has no noise model.
    """
    method_attrs = {
        "method": "latent-nuts",
        "inference_method": (
            "NUTS (Pyro) on the latent z of a generative prior (unconditional VAE of the prior "
            "draws, Laloy et al. 2018): log N(z; 0, I) + log p(y | g(z)), x = g(z) the "
            "decoder's location; chains started at amortized draws encoded by q(z|x)"
        ),
    }
    idata, results = generative_prior_posterior(
        cvae,
        generative_prior,
        y,
        num_samples,
        problem,
        latent_nuts_sample,
        chains=chains,
        warmup_steps=warmup_steps,
        stats=("divergences",),
        method_attrs=method_attrs,
        x_true=x_true,
        seed=seed,
        attrs=attrs,
    )
    summary, ok = latent_nuts_summary(results)
    return idata, summary, ok


def latent_nuts_summary(results: Sequence[LatentMCMCResult]) -> tuple[str, bool]:
    """Return the one-line verdict of latent NUTS runs and whether all converged.

    Parameters
    ----------
    results : sequence of LatentMCMCResult
        One per observation (at least one).

    Returns
    -------
    summary : str
        Worst R-hat, smallest ESS, divergences and time; ends in ``FAILED for n of M
        observation(s) ...`` when some did not converge (:attr:`LatentMCMCResult.converged`).
    ok : bool

    Raises
    ------
    ConfigError
        If ``results`` is empty.
    """
    divergences = sum(r.divergences for r in results)
    return chains_summary(
        "latent NUTS",
        results,
        f"{divergences} divergent transition(s)",
        ", or divergences",
        "--warmup, --num-samples",
    )
