"""Importance sampling with the amortized posterior as proposal: exact for the stated model.

A trained CVAE proposes ``(z, x)`` for an observation ``y``: ``z ~ p(z | y)`` (prior net),
``x ~ p(x | z, y)`` (decoder, its noise included). Its marginal ``q(x | y)`` has no closed form,
so the weights are taken on the joint ``(x, z)`` against the extended target
``p(x | y) r(z | x, y)``, with the recognition net ``r = q_phi(z | x, y)`` as the auxiliary
conditional of ``z`` (any normalised density of ``z`` given ``(x, y)`` keeps the ``x``-marginal
of the target exact)::

    log w = log p(x) + log p(y | x) + log r(z | x, y) - log p(z | y) - log p(x | z, y)

``E[w] = p(y)``, the evidence, for any proposal that covers the target; the self-normalised
weights give expectations under the exact posterior ``p(x | y)`` of the problem's prior and
noise model. This is the DINGO-IS scheme of Dax et al. (2023) for a latent-variable proposal;
the alternative, weighting ``x`` alone by an importance-weighted estimate of ``q(x | y)``
(Burda et al. 2016), is biased for a finite number of inner particles, which the joint weights
avoid. Without a latent (a flow on ``x``) the weight is ``p(x) p(y | x) / q(x | y)`` exactly.

The weights are Pareto-smoothed (PSIS, Vehtari et al. 2024, through ArviZ's ``psislw``); the
shape estimate ``k-hat`` says whether the estimate can be trusted (``k-hat > 0.7``: the proposal
misses part of the posterior and the correction failed). The sample efficiency is Kish's
effective sample size of the smoothed weights over the number of draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch

from ppl_cvae._memory import check_memory
from ppl_cvae.checks import as_count, as_seed, check_problem_matches, seeded_rng
from ppl_cvae.errors import ConfigError, DataError, PplCvaeError, exception_summary
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import (
    Problem,
    check_batch_axes,
    check_support_dimension,
    describe_support,
)
from ppl_cvae.problems.densities import (
    check_log_density_values,
    checked_forward,
    checked_log_likelihood,
    checked_log_prior,
)

__all__ = ["KHAT_THRESHOLD", "ImportanceResult", "importance_sample", "systematic_resample"]

KHAT_THRESHOLD = 0.7
"""Pareto ``k-hat`` above which importance-sampling estimates are unreliable (Vehtari et al.
2024, sec. 3: the weights' variance is then effectively infinite for the sample sizes used)."""


@dataclass(frozen=True)
class ImportanceResult:
    """Importance-sampling correction of amortized draws for ``M`` observations.

    Attributes
    ----------
    x : Tensor, shape (S, M, *x_shape)
        Proposal draws from the amortized posterior (decoder noise included), units of ``x``.
    z : Tensor, shape (S, M, latent_dim)
        Their latent codes (``latent_dim = 0`` for a flow without latent).
    log_weight : Tensor, shape (S, M)
        Raw log importance weights ``log w`` (nats), float64.
    smoothed_log_weight : Tensor, shape (S, M)
        Pareto-smoothed log weights, normalised over the ``S`` draws of each observation.
    khat : Tensor, shape (M,)
        Pareto shape estimate per observation (trust the correction where ``<= 0.7``).
    ess : Tensor, shape (M,)
        Kish effective sample size ``1 / sum(w_norm^2)`` of the smoothed weights.
    log_evidence : Tensor, shape (M,)
        ``log p(y)`` estimated as ``log mean(w)`` (nats, with the problem's prior and noise
        model; the raw weights, unbiased for ``p(y)`` itself).
    log_evidence_se : Tensor, shape (M,)
        Its delta-method standard error ``sqrt(sum(w_norm^2) - 1/S)`` (raw normalised weights;
        meaningless when ``khat > 0.7``).
    """

    x: torch.Tensor
    z: torch.Tensor
    log_weight: torch.Tensor
    smoothed_log_weight: torch.Tensor
    khat: torch.Tensor
    ess: torch.Tensor
    log_evidence: torch.Tensor
    log_evidence_se: torch.Tensor

    @property
    def sample_efficiency(self) -> torch.Tensor:
        """``ess / S`` per observation, shape ``(M,)``, in (0, 1]."""
        return self.ess / self.log_weight.shape[0]

    @property
    def reliable(self) -> torch.Tensor:
        """Boolean ``(M,)``: ``khat <= KHAT_THRESHOLD`` (the correction can be trusted)."""
        return self.khat <= KHAT_THRESHOLD

    def resample(
        self, num_draws: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return equally weighted posterior draws, shape ``(num_draws, M, *x_shape)``.

        Systematic resampling (:func:`systematic_resample`) of :attr:`x` by the smoothed
        weights; ``num_draws`` defaults to ``S``. Draws repeat: about ``ess`` are distinct.
        """
        return self.draws_at(self.resample_indices(num_draws, generator))

    def draws_at(self, index: torch.Tensor) -> torch.Tensor:
        """Return the proposals ``x[index[:, m], m]``, shape ``(n, M, *x_shape)``.

        ``index`` ``(n, M)`` int64, e.g. from :meth:`resample_indices`.
        """
        return torch.stack([self.x[index[:, m], m] for m in range(self.x.shape[1])], dim=1)

    def resample_indices(
        self, num_draws: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return the proposal index of each resampled draw, shape ``(num_draws, M)``, int64.

        What :meth:`resample` takes (the same random stream: ``resample(n, g)`` is ``x`` at
        ``resample_indices(n, g')`` for ``g'`` in the same state as ``g``). With it,
        ``smoothed_log_weight.gather(0, idx)`` is the normalised log weight each draw carried
        before resampling (the draws themselves are equally weighted).
        """
        num = self.x.shape[0] if num_draws is None else int(num_draws)
        cols = [
            systematic_resample(self.smoothed_log_weight[:, m], num, generator)
            for m in range(self.x.shape[1])
        ]
        return torch.stack(cols, dim=1)


def _refuse_weightless(
    problem: Problem, x: torch.Tensor, y: torch.Tensor, log_w: torch.Tensor
) -> None:
    """Refuse an observation whose every proposal has weight zero, naming the member.

    ``x`` ``(S, M, *x_shape)``, ``y`` ``(M, *y_shape)``, ``log_w`` ``(S, M)``. NaN and
    ``+inf`` densities were refused already; left are ``-inf`` ones (a density of zero), and a
    forward operator that overflows gives those through the likelihood. Which member is at
    fault is found on the observation's proposals (a declared support, the prior's density,
    then the forward operator's values where the prior is not zero, else the likelihood).
    """
    dead = ~torch.isfinite(log_w).any(0)
    if not bool(dead.any()):
        return
    m = int(dead.nonzero()[0])
    models = x[:, m]
    with torch.no_grad():
        if problem.declares_support():  # the problem is never asked outside it
            models = models[problem.in_support(models)]
        prior = checked_log_prior(problem, models) if len(models) else torch.zeros(0)
        if not len(models):
            culprit = (
                f"the model lies outside the declared support {describe_support(problem.support)}"
            )
        elif not bool(torch.isfinite(prior).any()):
            culprit = "log_prior is -inf (a prior density of zero)"
        else:  # forward only where the prior is not zero (it may be undefined elsewhere)
            data = checked_forward(problem, models[torch.isfinite(prior)]).flatten(1)
            if not bool(torch.isfinite(data).all(-1).any()):
                culprit = "forward is not finite (so log_likelihood is -inf)"
            else:
                culprit = "log_likelihood is -inf (a likelihood of zero)"
    raise DataError(
        f"problem {problem.name!r}: {culprit} at every one of the {x.shape[0]} importance "
        f"proposals of observation {m} ({int(dead.sum())} of {dead.numel()} observation(s) "
        "like it), so no weight is left to resample: the amortized posterior puts its draws "
        "where the problem's posterior density is zero; check that member there, or use "
        "--method nuts"
    )


def systematic_resample(
    log_weight: torch.Tensor, num_draws: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return ``num_draws`` indices drawn by systematic resampling from log weights.

    One uniform offset ``u ~ U(0, 1/n)``, points ``u + k/n``, each mapped through the
    cumulative normalised weights: every index ``i`` appears ``floor(n w_i)`` or
    ``ceil(n w_i)`` times, a lower-variance scheme than multinomial resampling (Kitagawa 1996;
    Douc, Cappe and Moulines 2005).

    Parameters
    ----------
    log_weight : Tensor, shape (S,)
        Log weights (need not be normalised).
    num_draws : int
        Number of indices ``n >= 1``.
    generator : torch.Generator, optional

    Returns
    -------
    Tensor, shape (num_draws,), int64
        Indices into ``0 .. S-1``.

    Raises
    ------
    ConfigError
        If ``num_draws < 1`` or every weight is zero or not finite.
    """
    if num_draws < 1:
        raise ConfigError(f"num_draws must be >= 1, got {num_draws}")
    lw = log_weight.double()
    if not bool(torch.isfinite(lw).any()):
        raise ConfigError(
            "every importance weight is zero or not finite: nothing to resample (the log "
            "weights log p(x) + log p(y | x) - log q(x | y) are -inf, NaN or +inf at every "
            "proposal: the prior or the likelihood is zero, or not defined, wherever the "
            "amortized posterior puts its draws)"
        )
    w = torch.softmax(torch.nan_to_num(lw, nan=-math.inf), dim=0)
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    offset = torch.rand((), generator=generator, dtype=torch.float64)
    points = (offset + torch.arange(num_draws, dtype=torch.float64)) / num_draws
    return torch.searchsorted(cdf, points).clamp_max(w.shape[0] - 1)


@torch.no_grad()
def importance_sample(
    cvae: CVAE,
    problem: Problem,
    y: torch.Tensor,
    num_samples: int,
    *,
    seed: int | None = None,
    chunk_size: int = 1024,
) -> ImportanceResult:
    """Correct amortized posterior draws by importance sampling against the problem's model.

    Parameters
    ----------
    cvae : CVAE
        A trained conditional model whose draws have a density: a decoder with noise
        (Gaussian, flow; not a basis decoder, whose draws are decoder means on a manifold, and
        not a facies decoder, whose priors have no density here).
    problem : Problem
        Supplies ``log_prior(x)`` (a prior with a density) and ``log_likelihood(x, y)`` (a noise
        model): the target ``p(x | y)`` is the problem's own posterior. Proposals outside a
        declared :attr:`~ppl_cvae.problems.base.Problem.support` weigh zero without calling
        either, and those where ``log_prior`` is ``-inf`` (an undeclared support) without
        calling ``log_likelihood`` (nor ``forward``, which may be undefined there); the
        proposals are the untruncated amortized draws, whose density is known, so the evidence
        stays unbiased.
    y : Tensor, shape (M, *y_shape) or y_shape
        Observations, units of ``y`` (one without a batch axis counts as ``M = 1``); a NumPy
        array or list of numbers is accepted, any real dtype is cast to float32.
    num_samples : int
        Proposal draws ``S`` per observation (an int >= 2).
    seed : int, optional
        Seed of the proposal draws (a forked torch RNG: the global one is left as it was).
    chunk_size : int, default 1024
        Draws evaluated at once per observation (bounds the memory of the recognition net).

    Returns
    -------
    ImportanceResult

    Raises
    ------
    ConfigError
        If the model is unconditional, has a basis decoder, the problem is None,
        ``num_samples`` is not an int >= 2, ``chunk_size`` not an int >= 1 or ``seed`` not an
        int in ``[0, 2**32 - 1]``, or the problem raises while the weights are computed (its
        exception is named), or declares a support of lower dimension than ``x``
        (:func:`~ppl_cvae.problems.base.check_support_dimension`); or its ``forward``
        raises on two prior draws with two batch axes or none
        (:func:`~ppl_cvae.problems.base.check_batch_axes`: the message names the layout
        that works).
    DataError
        If ``y`` is not a tensor, array or list of real numbers, holds NaN or inf or no
        observation (a stack of zero rows), or the problem's ``log_prior`` or
        ``log_likelihood`` is NaN or ``+inf`` at a proposal, or returns something that is not
        a real tensor, or every proposal of an observation has weight zero (the message names
        ``log_prior``, ``forward`` or ``log_likelihood``).
    ResourceError
        If the proposals would not fit in memory (estimated before any is drawn).
    NoPriorDensityError, NoLikelihoodError
        If the problem's prior has no density or it has no noise model
        (:mod:`ppl_cvae.errors`).
    ShapeError
        If ``y`` is not ``(M, *y_shape)`` or ``y_shape``, the problem's event shapes are not
        the model's, or its ``log_prior`` or ``log_likelihood`` returns a tensor of a shape
        other than one value per proposal.

    References
    ----------
    Dax, Green, Gair, Puerrer, Wildberger, Macke, Buonanno and Schoelkopf (2023), Neural
    importance sampling for rapid and reliable gravitational-wave inference, Phys. Rev. Lett.
    130, 171403. Vehtari, Simpson, Gelman, Yao and Gabry (2024), Pareto smoothed importance
    sampling, JMLR 25(72).
    """
    from inference.arviz_io import pareto_smooth  # ArviZ at the edge (STYLE.md)

    cfg = cvae.config
    if cfg.y_shape is None:
        raise ConfigError("importance sampling needs a conditional model (y_shape set)")
    if cfg.basis_dim is not None:
        raise ConfigError(
            "importance sampling needs draws with a density of x; a basis decoder's draws are "
            "its means on the basis span (use --method refine, or a flow on the coefficients)"
        )
    num_samples = as_count(num_samples, "num_samples", minimum=2)
    chunk_size = as_count(chunk_size, "chunk_size")
    seed = as_seed(seed)
    if problem is None:
        raise ConfigError(
            "importance sampling needs the problem's prior and noise model; got problem=None"
        )
    problem = as_problem(problem)
    check_problem_matches(problem, cfg)
    check_support_dimension(problem)  # full-dimensional proposals would all weigh zero
    # a forward for one layout of models only is named now, not after the proposals
    check_batch_axes(problem, torch.Generator().manual_seed(0))
    from inference.posterior import as_observation_batch  # posterior imports this module

    y, _ = as_observation_batch(y, cfg.y_shape)
    num_obs = cvae.check_inputs(y, None)
    cvae.check_finite(y=y)
    # kept: x, z and the log-weight of every proposal in float32, in chunks and concatenated
    # (twice), and the log-weights again in float64 for the Pareto smoothing (three arrays)
    per_draw = (cfg.x_dim + cfg.latent_dim + 1) * 4 * 2 + 8 * 3
    check_memory(
        float(num_samples) * num_obs * per_draw,
        f"{num_samples} importance proposals of {cfg.x_dim} values for {num_obs} "
        "observation(s)",
        hint="ask for fewer proposals (--proposals; default 10 x --num-samples) or "
        "observations",
    )
    was_training = cvae.training
    cvae.eval()
    xs, zs, lws = [], [], []
    with seeded_rng(seed):
        done = 0
        while done < num_samples:
            n = min(chunk_size, num_samples - done)
            try:
                x, z, lw = _weigh(cvae, problem, y, n)
            except PplCvaeError:
                raise
            except Exception as err:  # noqa: BLE001 - a user's problem may raise anything
                raise ConfigError(
                    f"problem {problem.name!r} raised {exception_summary(err)} while the "
                    "importance weights were computed (log_prior, log_likelihood of float32 draws)"
                ) from err
            xs.append(x)
            zs.append(z)
            lws.append(lw)
            done += n
    cvae.train(was_training)
    x, z, log_w = torch.cat(xs), torch.cat(zs), torch.cat(lws)
    _refuse_weightless(problem, x, y, log_w)
    smoothed, khat = pareto_smooth(log_w.T.numpy())
    smoothed_t = torch.from_numpy(smoothed).T.contiguous()
    ess = 1.0 / torch.exp(2 * smoothed_t).sum(0)
    norm = torch.softmax(torch.nan_to_num(log_w, nan=-math.inf), dim=0)
    log_evidence = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
    se = (norm.pow(2).sum(0) - 1.0 / num_samples).clamp_min(0).sqrt()
    return ImportanceResult(
        x=x,
        z=z,
        log_weight=log_w,
        smoothed_log_weight=smoothed_t,
        khat=torch.as_tensor(khat, dtype=torch.float64).reshape(num_obs),
        ess=ess,
        log_evidence=log_evidence,
        log_evidence_se=se,
    )


def _weigh(
    cvae: CVAE, problem: Problem, y: torch.Tensor, num: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num`` proposals ``(x, z)`` per observation and return them with ``log w``."""
    cfg = cvae.config
    y_shape = cfg.y_shape
    assert y_shape is not None
    num_obs = y.shape[0]
    if cfg.latent_dim > 0:
        z_dist = cvae.prior_distribution(y)
        z = z_dist.sample((num,))
        log_q = z_dist.log_prob(z)
    else:
        z = y.new_zeros(num, num_obs, 0)
        log_q = y.new_zeros(num, num_obs)
    x_dist, _ = cvae.x_distribution(z, y, location=False)
    x = x_dist.sample()
    log_q = log_q + x_dist.log_prob(x)
    if cfg.latent_dim > 0:  # the auxiliary r(z | x, y): the recognition net
        flat_y = y.expand(num, *y.shape).reshape(num * num_obs, *y_shape)
        loc, scale = cvae.recognition_params(flat_y, x.reshape(num * num_obs, *cfg.x_shape))
        log_r = dist.Normal(loc, scale).to_event(1).log_prob(z.reshape(num * num_obs, -1))
        log_q = log_q - log_r.reshape(num, num_obs)
    where = "importance proposals"
    # the prior first, then the likelihood only where the prior is not zero: a proposal
    # outside a declared support, or where log_prior is -inf (an undeclared support), weighs
    # zero without reaching forward, which may be undefined there (a negative resistivity);
    # a NaN log_prior is refused as before (check_log_density_values)
    alive = (
        problem.in_support(x)  # (num, M)
        if problem.declares_support()
        else torch.ones(num, num_obs, dtype=torch.bool)
    )
    log_prior = torch.full((num, num_obs), -math.inf, dtype=torch.float64)
    if bool(alive.all()):
        log_prior = check_log_density_values(
            problem, "log_prior", checked_log_prior(problem, x), where
        )
    elif bool(alive.any()):
        log_prior[alive] = check_log_density_values(
            problem, "log_prior", checked_log_prior(problem, x[alive]), where
        )
    alive &= log_prior != -math.inf
    log_p = log_prior.clone()
    if bool(alive.all()):
        log_p = log_p + check_log_density_values(
            problem, "log_likelihood", checked_log_likelihood(problem, x, y), where
        )
    elif bool(alive.any()):
        y_each = y.expand(num, *y.shape)[alive]
        log_p[alive] = log_p[alive] + check_log_density_values(
            problem, "log_likelihood", checked_log_likelihood(problem, x[alive], y_each), where
        )
    return x, z, log_p - log_q.double()
