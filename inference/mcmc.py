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

Chains run one after the other in this process (Pyro's parallel chains spawn processes);
R-hat and the bulk ESS come from ArviZ (rank-normalised split R-hat, Vehtari et al. 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyro
import torch
from pyro.infer import MCMC, NUTS

from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import Problem, as_problem

__all__ = ["MCMCResult", "RHAT_THRESHOLD", "nuts_sample", "preconditioner_draws"]

RHAT_THRESHOLD = 1.01
"""R-hat above which chains have not mixed (Vehtari et al. 2021 recommend 1.01)."""


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
    """

    x: torch.Tensor
    rhat: float
    min_ess: float
    num_evaluations: int
    divergences: int
    seconds: float

    @property
    def converged(self) -> bool:
        """Whether ``rhat <= RHAT_THRESHOLD`` and there were no divergences."""
        return self.rhat <= RHAT_THRESHOLD and self.divergences == 0


def nuts_sample(
    problem: Problem,
    y: torch.Tensor,
    init: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    precondition: Literal["amortized", "none"] = "amortized",
    num_chains: int = 4,
    max_tree_depth: int = 8,
    seed: int = 0,
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
        when the rows are few against the number of sampled coordinates).
    num_samples, warmup_steps : int
        Draws kept and warm-up iterations per chain.
    precondition : {"amortized", "none"}
        See the module docstring.
    num_chains : int, default 4
        Chains (at most ``N``; run one after the other), started at ``init[:num_chains]``.
    max_tree_depth : int, default 8
        NUTS's tree depth limit (at most ``2^depth - 1`` leapfrog steps per draw).
    seed : int, default 0
        Seed of Pyro's RNG (chain ``c`` uses ``seed + c``).

    Returns
    -------
    MCMCResult

    Raises
    ------
    ConfigError
        If ``precondition`` is unknown, ``init`` has the wrong shape, or fewer than 1 draw.
    NoPriorDensityError, NoLikelihoodError
        If the problem's prior has no density or it has no noise model.

    References
    ----------
    Hoffman and Gelman (2014), The No-U-Turn Sampler, JMLR 15; Bingham et al. (2019), Pyro,
    JMLR 20; Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization,
    folding, and localization: an improved R-hat, Bayesian Analysis 16.
    """
    import time

    from inference.arviz_io import chain_diagnostics

    if precondition not in ("amortized", "none"):
        raise ConfigError(f"precondition must be 'amortized' or 'none', got {precondition!r}")
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
    y64 = y.double()

    def log_target(theta: torch.Tensor) -> torch.Tensor:
        if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
            x = par.to_x(theta.float())
            return par.log_prior(theta.float()).double() + problem.log_likelihood(x, y64)
        x = theta.reshape(*theta.shape[:-1], *x_shape)
        return problem.log_prior(x) + problem.log_likelihood(x, y64)

    with torch.no_grad():
        start = (par.from_x(init) if par is not None else init.flatten(1)).double()
    dim = start.shape[1]
    if precondition == "amortized":
        from sklearn.covariance import LedoitWolf  # scikit-learn is a core dependency

        mu = start.mean(0)
        if len(start) > 1:  # shrunk: N draws in dim >= N dimensions give a singular estimate
            cov = torch.from_numpy(LedoitWolf().fit(start.numpy()).covariance_)
        else:
            cov = torch.eye(dim, dtype=start.dtype)
        shrink = 1e-9 * float(cov.diagonal().mean().clamp_min(1e-12))
        tril = torch.linalg.cholesky(cov + shrink * torch.eye(dim, dtype=cov.dtype))
    else:
        mu = start.new_zeros(dim)
        tril = torch.eye(dim, dtype=start.dtype)

    count = [0]

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        count[0] += 1
        theta = mu + tril @ params["v"]
        return -log_target(theta)

    chains = []
    divergences = 0
    begin = time.perf_counter()
    num_chains = min(len(start), num_chains)
    for c in range(num_chains):
        pyro.set_rng_seed(seed + c)
        v0 = torch.linalg.solve_triangular(tril, (start[c] - mu).unsqueeze(-1), upper=False)
        kernel = NUTS(potential_fn=potential, max_tree_depth=max_tree_depth, target_accept_prob=0.8)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            initial_params={"v": v0.squeeze(-1)},
            disable_progbar=True,
        )
        mcmc.run()
        v = mcmc.get_samples()["v"]
        chains.append(mu + v @ tril.T)
        divergences += len(mcmc.diagnostics()["divergences"]["chain 0"])
    seconds = time.perf_counter() - begin
    theta = torch.stack(chains)  # (chains, draws, dim)
    rhat, min_ess = chain_diagnostics(theta.numpy())
    with torch.no_grad():
        x = par.to_x(theta.float()) if par is not None else theta.reshape(num_chains, -1, *x_shape)
    return MCMCResult(
        x=x.float(),
        rhat=rhat,
        min_ess=min_ess,
        num_evaluations=count[0],
        divergences=divergences,
        seconds=seconds,
    )
