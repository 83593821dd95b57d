"""NUTS on the problem's exact posterior, started and preconditioned by amortized draws.

For a problem whose prior has a differentiable density (``problem.log_prior``) and whose noise
model gives ``problem.log_likelihood``, the posterior of ``x`` given one observation ``y`` is
sampled with Pyro's No-U-Turn sampler on the potential ``-log p(x) - log p(y | x)``. A problem
with a basis (``problem.parameterisation()``) is sampled on its unconstrained parameters
``theta`` instead (``x = B T(theta)``, prior density with the bijection's Jacobian).

The amortized posterior does two things (``precondition="amortized"``): each chain starts from
an amortized draw, and NUTS runs in the coordinates ``v = L^-1 (x - mu)``, with ``mu`` and
``L L^T`` the mean and covariance of the amortized draws. A dense mass matrix equal to the
posterior covariance is what NUTS's own adaptation aims at; taking it from the draws saves
the warm-up it would need to estimate ``d (d + 1) / 2`` entries (a constant-Jacobian change of
variables: the target in ``x`` is unchanged). ``precondition="none"`` gives plain NUTS with
diagonal adaptation, started from prior draws (the baseline of the correction benchmark).

Where the prior of the sampled coordinates is Gaussian, ``N(m, L_0 L_0^T)``
(:meth:`Problem.gaussian_prior <ppl_cvae.problems.base.Problem.gaussian_prior>`: mt1d's
latent field, the Gaussian random fields of crosshole and gravity), two more preconditioners
whiten by the prior's Cholesky factor ``L_0`` instead (chains still start at amortized draws):

- ``"prior"``: ``theta = m + L_0 w``, so the prior of ``w`` is ``N(0, I)``; the likelihood
  narrows the few directions the data inform and leaves the others at sd 1. This is the
  whitening of Gaussian-process MCMC (Murray and Adams 2010, "whitened" parameterisation).
- ``"prior-amortized"``: the amortized draws' covariance expressed in ``w``, ``C_w``, with
  its eigenvalues clipped at 1, ``theta = m + L_0 (mu_w + V min(Lambda, 1)^(1/2) v)``. Under a
  Gaussian prior the posterior covariance is below the prior's (``I`` in ``w``; exactly for a
  linear forward operator), so an amortized variance above 1 is the decoder's own noise
  (white noise in ``theta`` is amplified by ``L_0^-1`` in the rough directions of a smooth
  field): clipping keeps what the draws say about the informed directions and the prior
  elsewhere. Directions the draws do not span (fewer draws than coordinates) get 1.

With either, the chains start at amortized draws shrunk towards the draws' mean in the
directions where the draws are wider than the prior (by ``sqrt(min(lambda, 1) / lambda)`` along
the eigenvectors of ``C_w``): the decoder's noise puts a raw draw far out in the prior's rough
directions (``|w|^2`` in the thousands on mt1d), and a chain started there spends its warm-up
coming back (R-hat 1.03 after 100 warm-up iterations on mt1d; README, "Correction on mt1d").

With a Gaussian prior the potential evaluates the prior as ``-|L_0^-1 (theta - m)|^2 / 2``
plus its constant (for every preconditioner; the same density as ``problem.log_prior``
through the parameterisation, without its change of variables and transforms).

Chains run one after the other in this process (Pyro's parallel chains spawn processes);
R-hat and the bulk ESS come from ArviZ (rank-normalised split R-hat, Vehtari et al. 2021).

Per-draw sampler statistics (:attr:`MCMCResult.sample_stats`, ArviZ's names): ``diverging``
from ``arviz.from_pyro`` of each chain's ``MCMC`` (ArviZ 0.x's converter reads Pyro's
divergences and nothing else), and, recorded by the kernel, ``energy`` (the Hamiltonian at the
start of each transition, after the momentum refresh: what ``az.bfmi`` needs), ``n_steps``
(leapfrog steps), ``tree_depth`` and ``step_size``. Pyro's MCMC keeps no per-draw energy or
tree depth, so the kernel records them from public parts: the momentum is a Pyro sample site
(``r_t=...``), read with a :class:`~pyro.poutine.messenger.Messenger`, and the potential at
the chain's current state is evaluated once more per transition (not counted in
``num_evaluations``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.poutine.messenger import Messenger

from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import Problem, as_problem

__all__ = [
    "PRECONDITIONERS",
    "MCMCResult",
    "Preconditioner",
    "RHAT_THRESHOLD",
    "nuts_sample",
    "preconditioner_draws",
    "rhat_threshold",
    "run_whitened_chain",
]

Preconditioner = Literal["amortized", "prior", "prior-amortized", "none"]
PRECONDITIONERS: tuple[str, ...] = get_args(Preconditioner)
"""The values of ``precondition`` in :func:`nuts_sample` (see the module docstring)."""

RHAT_THRESHOLD = 1.01
"""R-hat above which one quantity's chains have not mixed (Vehtari et al. 2021 recommend
1.01); the bound for the largest over many quantities is :func:`rhat_threshold`."""


def rhat_threshold(
    num_chains: int, num_draws: int, num_quantities: int = 1, false_alarm: float = 0.01
) -> float:
    r"""Return the bound on the largest R-hat of many quantities that mixed chains respect.

    Parameters
    ----------
    num_chains : int
        Chains (each split in halves by the rank-normalised split R-hat).
    num_draws : int
        Draws per chain (at least 4).
    num_quantities : int, default 1
        Quantities whose largest R-hat is compared with the bound (the sampled coordinates).
    false_alarm : float in (0, 1), default 0.01
        Probability that independent draws from the target exceed the bound.

    Returns
    -------
    float
        ``max(1.01, t)``, with ``t`` the ``1 - false_alarm`` quantile of the largest of
        ``num_quantities`` rank-normalised split R-hats (ArviZ's ``az.rhat``, bulk and folded)
        of ``num_chains x num_draws`` independent draws: 1.0173 for 4 x 250 draws of 1024
        quantities (Monte Carlo over 100 sets of independent draws: 99% quantile 1.0165,
        median 1.0113; 87% of them are above 1.01).

    Raises
    ------
    ConfigError
        If a count is below its minimum or ``false_alarm`` is not in (0, 1).

    Notes
    -----
    Vehtari et al. (2021) recommend R-hat below 1.01 for each quantity. With ``m = 2 C``
    split chains of ``n = D // 2`` draws of independent draws, the rank-normalised draws are
    close to standard normal, the between-chain variance ``B / n`` over the within-chain
    variance ``W`` is ``F / n`` with ``F ~ F(m - 1, m (n - 1))`` (Gelman and Rubin 1992), and
    ``R-hat^2 = (n - 1) / n + F / n``. The largest over ``d`` quantities of the larger of the
    bulk and tail R-hats (nearly independent: a mean and a mean absolute deviation) exceeds
    ``t`` with probability ``1 - (1 - p)^{2 d}``, ``p = P(F > n t^2 - n + 1)``; solving for
    ``p`` gives ``t``. For a thousand quantities the largest R-hat of exact, independent draws
    is above 1.01 more often than not at 4 x 250 draws, so "the largest R-hat <= 1.01" would
    call most exact chains unmixed. Chains whose draws are autocorrelated have larger
    R-hats even when mixed (``n`` is then effectively smaller); the bound stays that of
    independent draws, so it asks for chains that are nearly as good as independent
    draws, and the remedy for a failure is more draws per chain. NUTS needs them for the
    folded (tail) R-hat in particular: on a 1024-dimensional standard normal (the target an
    exact preconditioner leaves), 4 x 250 draws had bulk R-hat at most 1.003 and bulk ESS
    above 1300 (trajectories of about half an orbit send ``v`` to about ``-v``), but folded
    R-hat up to 1.04 and tail ESS near 300, because ``|v|`` is what such trajectories keep
    (``benchmarks/posterior_correction.py``, README).

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC, Bayesian Analysis 16,
    667-718, DOI 10.1214/20-BA1221. Gelman and Rubin (1992), Inference from iterative
    simulation using multiple sequences, Statistical Science 7, 457-472.

    Examples
    --------
    >>> round(rhat_threshold(4, 250, 1024), 4), rhat_threshold(4, 1000, 1)
    (1.0173, 1.01)
    """
    from scipy import stats  # scipy is an ArviZ and scikit-learn dependency

    if num_chains < 1 or num_draws < 4 or num_quantities < 1:
        raise ConfigError(
            "rhat_threshold needs num_chains >= 1, num_draws >= 4 and num_quantities >= 1, "
            f"got {num_chains}, {num_draws}, {num_quantities}"
        )
    if not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    m, n = 2 * num_chains, num_draws // 2
    per_test = -math.expm1(math.log1p(-false_alarm) / (2 * num_quantities))
    f = float(stats.f.isf(per_test, m - 1, m * (n - 1)))
    return max(RHAT_THRESHOLD, math.sqrt((n - 1 + f) / n))


_MIN_WHITENED_VARIANCE = 1e-8
"""Floor of the eigenvalues of the amortized covariance in prior-whitened coordinates."""


def preconditioner_draws(dim: int, num_chains: int = 1) -> int:
    """Return how many amortized draws to pass as ``init`` for ``dim`` sampled coordinates.

    20 per coordinate, so that their covariance (the preconditioner) is well estimated, at
    most ``2^26`` values in all, at least 2000 and at least ``num_chains``. Draws are cheap
    next to NUTS.

    Examples
    --------
    >>> preconditioner_draws(1024), preconditioner_draws(4096), preconditioner_draws(4)
    (20480, 16384, 2000)
    """
    return max(min(20 * dim, 2**26 // dim), 2000, num_chains)


class _MomentumRecorder(Messenger):
    """Collect the values of NUTS's momentum sample sites (named ``r_t=...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[torch.Tensor] = []

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        if str(msg["name"]).startswith("r_t="):
            self.values.append(msg["value"])


class _RecordingNUTS(NUTS):
    """Pyro's NUTS that records each transition's energy and number of leapfrog steps.

    ``energy_fn`` is the potential without the evaluation counter; ``counter`` is the
    one-element list the counted potential increments (one per leapfrog step).
    """

    def __init__(
        self,
        potential_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        energy_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        counter: list[int],
        **kwargs: Any,
    ) -> None:
        super().__init__(potential_fn=potential_fn, **kwargs)
        self._energy_fn = energy_fn
        self._counter = counter
        self.energy: list[float] = []
        self.n_steps: list[int] = []

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one NUTS transition from ``params`` and record its energy and its steps."""
        with torch.no_grad():
            potential = float(self._energy_fn(params))
        before = self._counter[0]
        recorder = _MomentumRecorder()
        with recorder:
            out: dict[str, torch.Tensor] = super().sample(params)
        # the momentum is drawn unscaled, u ~ N(0, I): kinetic energy u^T u / 2 for any mass
        kinetic = 0.5 * sum(float((u.double() ** 2).sum()) for u in recorder.values)
        self.energy.append(potential + kinetic)
        self.n_steps.append(self._counter[0] - before)
        return out


@dataclass(frozen=True)
class MCMCResult:
    """NUTS draws of ``x`` for one observation.

    Attributes
    ----------
    x : Tensor, shape (chains, draws, *x_shape)
        Posterior draws in units of ``x``.
    rhat : float
        Largest rank-normalised split R-hat over the sampled coordinates.
    min_ess : float
        Smallest bulk effective sample size over the sampled coordinates (all chains).
    num_evaluations : int
        Evaluations of the potential and its gradient, warm-up included, all chains (the
        cost: about one per leapfrog step).
    divergences : int
        Number of divergent transitions after warm-up.
    seconds : float
        Wall-clock time of warm-up and sampling.
    sample_stats : dict of str to ndarray, each of shape (chains, draws)
        Per-draw sampler statistics with ArviZ's names: ``diverging`` (bool, from
        ``arviz.from_pyro``), ``energy`` (Hamiltonian ``U(q) + u^T u / 2`` at the start of the
        transition that produced the draw, after the momentum refresh, in nats, with
        ``U = -log p(x) - log p(y | x)`` up to the Jacobian constant of the preconditioner),
        ``n_steps`` (leapfrog steps of the transition), ``tree_depth`` (``ceil(log2(n_steps +
        1))``, the depth of the NUTS tree that holds them) and ``step_size`` (after
        adaptation, in the preconditioned coordinates).
    rhat_threshold : float
        The R-hat bound the chains are judged by (:func:`rhat_threshold`).
    """

    x: torch.Tensor
    rhat: float
    min_ess: float
    num_evaluations: int
    divergences: int
    seconds: float
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    rhat_threshold: float = RHAT_THRESHOLD

    @property
    def converged(self) -> bool:
        """Whether ``rhat <= rhat_threshold`` and there were no divergences."""
        return self.rhat <= self.rhat_threshold and self.divergences == 0


def _preconditioner(
    precondition: str, start: torch.Tensor, prior: torch.distributions.MultivariateNormal | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``mu`` ``(k,)``, the factor ``L`` ``(k, k)`` of ``theta = mu + L v`` and the starts.

    ``start``: the amortized draws in the sampled coordinates, ``(N, k)``, float64; ``prior``
    the Gaussian prior of those coordinates, required for the ``"prior..."`` options (see the
    module docstring). The starts ``(N, k)`` are ``start`` itself, except for the ``"prior..."``
    options: there each draw's deviation from the draws' mean, in ``w = L0^-1 (theta - m)``,
    is shrunk along the eigenvectors of the draws' covariance ``C_w`` by
    ``sqrt(min(lambda, 1) / lambda)``, so that the starts have the clipped covariance. An
    amortized draw's white noise is far out in the prior's rough directions (``|w|^2`` of
    thousands on mt1d), where a chain would spend its warm-up coming back.
    """
    dim = start.shape[1]
    eye = torch.eye(dim, dtype=start.dtype)
    if precondition == "none":
        return start.new_zeros(dim), eye, start
    if precondition == "amortized":
        from sklearn.covariance import LedoitWolf  # scikit-learn is a core dependency

        if len(start) > 1:  # shrunk: N draws in dim >= N dimensions give a singular estimate
            cov = torch.from_numpy(LedoitWolf().fit(start.numpy()).covariance_)
        else:
            cov = eye
        shrink = 1e-9 * float(cov.diagonal().mean().clamp_min(1e-12))
        return start.mean(0), torch.linalg.cholesky(cov + shrink * eye), start
    assert prior is not None  # checked by nuts_sample
    loc, chol0 = prior.loc.to(start), prior.scale_tril.to(start)
    if len(start) < 2:
        return loc, chol0, start
    # the draws' covariance in w = L0^-1 (theta - m), its eigenvalues clipped at 1
    w = torch.linalg.solve_triangular(chol0, (start - loc).T, upper=False).T  # (N, k)
    mean_w = w.mean(0)
    lam, vec = torch.linalg.eigh(torch.cov(w.T).reshape(dim, dim))  # ascending
    clipped = lam.clamp(_MIN_WHITENED_VARIANCE, 1.0)
    unseen = max(dim - (len(start) - 1), 0)  # the null space of N - 1 < k centred draws
    clipped[:unseen] = 1.0
    shrink = (clipped / lam.clamp_min(_MIN_WHITENED_VARIANCE)).clamp(max=1.0).sqrt()
    shrink[:unseen] = 1.0
    w_start = mean_w + ((w - mean_w) @ vec * shrink) @ vec.T
    starts = loc + w_start @ chol0.T
    if precondition == "prior":
        return loc, chol0, starts
    factor = chol0 @ (vec * clipped.sqrt())  # theta = loc + L0 (mean_w + V Lambda^(1/2) v)
    cov = factor @ factor.T
    cov = 0.5 * (cov + cov.T) + 1e-12 * float(cov.diagonal().mean()) * torch.eye(dim).to(cov)
    return loc + chol0 @ mean_w, torch.linalg.cholesky(cov), starts


def run_whitened_chain(
    kernel: NUTS,
    start: torch.Tensor,
    mu: torch.Tensor,
    tril: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    seed: int,
) -> tuple[torch.Tensor, int, MCMC]:
    """Run one chain of ``kernel`` in whitened coordinates and return it in the original ones.

    The kernel's potential takes ``{"v": v}`` with ``theta = mu + L v`` (``L = tril``, the
    preconditioner's Cholesky factor; Hoffman and Gelman 2014 with a fixed dense metric). The
    chain starts at ``v0 = L^-1 (start - mu)`` after seeding Pyro's RNG with ``seed``.

    Parameters
    ----------
    kernel : pyro.infer.NUTS
    start, mu : Tensor, shape (dim,)
    tril : Tensor, shape (dim, dim)
    num_samples, warmup_steps, seed : int

    Returns
    -------
    draws : Tensor, shape (num_samples, dim)
        ``theta`` after warm-up.
    divergences : int
        Divergent transitions after warm-up.
    mcmc : pyro.infer.MCMC
        The run (for ``az.from_pyro`` and the kernel's statistics).
    """
    pyro.set_rng_seed(seed)
    v0 = torch.linalg.solve_triangular(tril, (start - mu).unsqueeze(-1), upper=False)
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={"v": v0.squeeze(-1)},
        disable_progbar=True,
    )
    mcmc.run()
    draws = mu + mcmc.get_samples()["v"] @ tril.T
    return draws, len(mcmc.diagnostics()["divergences"]["chain 0"]), mcmc


def nuts_sample(
    problem: Problem,
    y: torch.Tensor,
    init: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    precondition: Preconditioner = "amortized",
    num_chains: int = 4,
    max_tree_depth: int = 8,
    seed: int = 0,
    adapt_mass_matrix: bool = True,
) -> MCMCResult:
    """Sample ``p(x | y)`` of the problem with NUTS, chains started at ``init``.

    Parameters
    ----------
    problem : Problem
        With a prior density (``has_prior_density``) and a noise model.
    y : Tensor, shape y_shape
        One observation, units of ``y``.
    init : Tensor, shape (N, *x_shape)
        Draws that start the chains (one chain per row), units of ``x``; with
        ``precondition="amortized"`` also the draws whose mean and covariance precondition
        (pass the amortized draws: the first ``chains`` rows start the chains, all rows
        estimate the covariance, with Ledoit-Wolf shrinkage, which keeps it well conditioned
        when the rows are few against the number of sampled coordinates); with
        ``"prior-amortized"`` all rows give the covariance in prior-whitened coordinates.
    num_samples, warmup_steps : int
        Draws kept and warm-up iterations per chain.
    precondition : {"amortized", "prior", "prior-amortized", "none"}
        See the module docstring: the amortized draws' covariance, the prior's Cholesky
        factor, the two combined, or none. ``"prior"`` and ``"prior-amortized"`` need a
        Gaussian prior in the sampled coordinates (``problem.gaussian_prior()``).
    num_chains : int, default 4
        Chains (at most ``N``; run one after the other), started at ``init[:num_chains]``.
    max_tree_depth : int, default 8
        NUTS's tree depth limit (at most ``2^depth - 1`` leapfrog steps per draw).
    seed : int, default 0
        Seed of Pyro's RNG (chain ``c`` uses ``seed + c``).
    adapt_mass_matrix : bool, default True
        Whether NUTS's warm-up also adapts a diagonal mass matrix (in the preconditioned
        coordinates ``v``), on top of the step size. With a good preconditioner the diagonal
        is close to 1 and the warm-up can be shorter without it (Pyro's windowed adaptation
        needs a few hundred iterations to estimate it).

    Returns
    -------
    MCMCResult

    Raises
    ------
    ConfigError
        If ``precondition`` is unknown, ``init`` has the wrong shape, or fewer than 1 draw,
        or ``precondition`` is ``"prior"`` or ``"prior-amortized"`` and the problem's prior is
        not Gaussian in the sampled coordinates.
    NoPriorDensityError, NoLikelihoodError
        If the problem's prior has no density or it has no noise model.

    References
    ----------
    Hoffman and Gelman (2014), The No-U-Turn Sampler, JMLR 15; Bingham et al. (2019), Pyro,
    JMLR 20; Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization,
    folding, and localization: an improved R-hat, Bayesian Analysis 16. Prior whitening:
    Murray and Adams (2010), Slice sampling covariance hyperparameters of latent Gaussian
    models, NeurIPS 23; Papaspiliopoulos, Roberts and Skold (2007), A general framework for
    the parametrization of hierarchical models, Statistical Science 22, 59-73.
    """
    import time

    from inference.arviz_io import chain_diagnostics

    if precondition not in PRECONDITIONERS:
        raise ConfigError(
            f"precondition must be one of {PRECONDITIONERS}, got {precondition!r}"
        )
    if num_samples < 1 or warmup_steps < 0 or num_chains < 1:
        raise ConfigError(
            "need num_samples >= 1, warmup_steps >= 0 and num_chains >= 1, got "
            f"{num_samples}, {warmup_steps}, {num_chains}"
        )
    problem = as_problem(problem)
    x_shape = tuple(problem.x_shape)
    if init.dim() != len(x_shape) + 1 or tuple(init.shape[1:]) != x_shape or len(init) < 1:
        raise ConfigError(f"init must have shape (N >= 1, *{x_shape}), got {tuple(init.shape)}")
    par = problem.parameterisation()
    prior = problem.gaussian_prior()
    if precondition in ("prior", "prior-amortized") and prior is None:
        raise ConfigError(
            f"precondition={precondition!r} whitens by the prior's Cholesky factor, but the "
            f"prior of problem {problem.name!r} is not Gaussian in the sampled coordinates "
            "(gaussian_prior() is None); use precondition='amortized'"
        )
    y64 = y.double()

    with torch.no_grad():
        start = (par.from_x(init) if par is not None else init.flatten(1)).double()
    dim = start.shape[1]
    mu, tril, start = _preconditioner(precondition, start, prior)

    def log_likelihood(theta: torch.Tensor) -> torch.Tensor:
        if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
            return problem.log_likelihood(par.to_x(theta.float()), y64)
        return problem.log_likelihood(theta.reshape(*theta.shape[:-1], *x_shape), y64)

    if prior is None:

        def log_target_v(v: torch.Tensor) -> torch.Tensor:
            theta = mu + tril @ v
            if par is not None:
                return par.log_prior(theta.float()).double() + log_likelihood(theta)
            x = theta.reshape(*theta.shape[:-1], *x_shape)
            return problem.log_prior(x) + log_likelihood(theta)

    else:
        # the Gaussian prior in v: L0^-1 (theta - m) = b + A v, A = L0^-1 L, b = L0^-1 (mu - m)
        loc, chol0 = prior.loc.to(start), prior.scale_tril.to(start)
        identity = precondition == "prior"  # then A = I and b = 0 exactly
        a_mat = torch.linalg.solve_triangular(chol0, tril, upper=False)
        b_vec = torch.linalg.solve_triangular(
            chol0, (mu - loc).unsqueeze(-1), upper=False
        ).squeeze(-1)
        const = -float(chol0.diagonal().log().sum()) - 0.5 * dim * math.log(2 * math.pi)

        def log_target_v(v: torch.Tensor) -> torch.Tensor:
            w = v if identity else b_vec + a_mat @ v
            return const - 0.5 * (w * w).sum() + log_likelihood(mu + tril @ v)

    count = [0]

    def energy(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return -log_target_v(params["v"])

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        count[0] += 1
        return energy(params)

    import arviz as az  # ArviZ converts the chains' divergences (az.from_pyro)

    chains = []
    divergences = 0
    stats: dict[str, list[np.ndarray]] = {
        k: [] for k in ("diverging", "energy", "n_steps", "tree_depth", "step_size")
    }
    begin = time.perf_counter()
    num_chains = min(len(start), num_chains)
    for c in range(num_chains):
        kernel = _RecordingNUTS(
            potential,
            energy,
            count,
            max_tree_depth=max_tree_depth,
            target_accept_prob=0.8,
            adapt_mass_matrix=adapt_mass_matrix,
        )
        draws, diverged, mcmc = run_whitened_chain(
            kernel, start[c], mu, tril, num_samples, warmup_steps, seed + c
        )
        chains.append(draws)
        divergences += diverged
        stats["diverging"].append(az.from_pyro(mcmc).sample_stats["diverging"].values[0])
        steps = np.asarray(kernel.n_steps[-num_samples:], dtype=np.int64)
        stats["energy"].append(np.asarray(kernel.energy[-num_samples:], dtype=np.float64))
        stats["n_steps"].append(steps)
        stats["tree_depth"].append(np.ceil(np.log2(steps + 1)).astype(np.int64))
        stats["step_size"].append(np.full(num_samples, float(kernel.step_size)))
    seconds = time.perf_counter() - begin
    theta = torch.stack(chains)  # (chains, draws, dim)
    rhat, min_ess = chain_diagnostics(theta.numpy())
    threshold = rhat_threshold(num_chains, num_samples, dim) if num_samples >= 4 else RHAT_THRESHOLD
    with torch.no_grad():
        x = par.to_x(theta.float()) if par is not None else theta.reshape(num_chains, -1, *x_shape)
    return MCMCResult(
        x=x.float(),
        rhat=rhat,
        min_ess=min_ess,
        num_evaluations=count[0],
        divergences=divergences,
        seconds=seconds,
        sample_stats={k: np.stack(v) for k, v in stats.items()},
        rhat_threshold=threshold,
    )
