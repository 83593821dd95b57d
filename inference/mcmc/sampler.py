"""The entry point :func:`nuts_sample` and its result, :class:`MCMCResult`.

:func:`nuts_sample` checks its arguments and the density at the chains' starts, builds the
preconditioner and one job per chain, runs the chains and judges them (R-hat against
:func:`~inference.mcmc.budget.rhat_threshold`, divergences). The method is described in
the package docstring, :mod:`inference.mcmc`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from inference.mcmc.budget import MIN_DRAWS_PER_CHAIN, RHAT_THRESHOLD, rhat_passes
from inference.mcmc.chains import _ChainJob, _run_chains
from inference.mcmc.potential import (
    PotentialDtype,
    _as_basis_dtype,
    _checked_gaussian_prior,
    _log_prior_theta,
    _log_target,
    _potential_dtype,
)
from inference.mcmc.preconditioner import PRECONDITIONERS, Preconditioner, _preconditioner
from ppl_cvae.checks import as_real_tensor, as_seed, derived_seed, shape_text
from ppl_cvae.errors import ConfigError, DataError, PplCvaeError, ShapeError, exception_summary
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem, check_layouts, describe_support
from ppl_cvae.problems.densities import (
    check_continuous_support,
    check_forward_gradient,
    checked_forward,
    checked_log_likelihood,
)

__all__ = ["MCMCResult", "nuts_sample"]


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
        Wall-clock time of the preconditioner (the covariance of the amortized draws and its
        Cholesky factor), warm-up and sampling.
    sample_stats : dict of str to ndarray, each of shape (chains, draws)
        Per-draw sampler statistics with ArviZ's names: ``diverging`` (bool, from
        ``arviz.from_pyro``), ``energy`` (Hamiltonian ``U(q) + u^T u / 2`` at the start of the
        transition that produced the draw, after the momentum refresh, in nats, with
        ``U = -log p(x) - log p(y | x)`` up to the Jacobian constant of the preconditioner),
        ``n_steps`` (leapfrog steps of the transition), ``tree_depth`` (``ceil(log2(n_steps +
        1))``, the depth of the NUTS tree that holds them), ``acceptance_rate`` (the mean
        Metropolis acceptance probability over the transition's proposals, in [0, 1]: its
        mean over draws is near the adaptation's target 0.8 when the step size is adapted
        well, Hoffman and Gelman 2014) and ``step_size`` (after adaptation, in the
        preconditioned coordinates).
    rhat_threshold : float
        The R-hat bound the chains are judged by (:func:`~inference.arviz_io.rhat_bound`:
        :func:`~inference.mcmc.rhat_threshold` at the effective draws of the coordinate
        with the largest R-hat).
    cpu_seconds : float
        Processor time of the chains (warm-up and sampling), summed over the processes that
        ran them: on an otherwise idle machine ``seconds`` is about ``cpu_seconds /
        min(num_cores, num_chains)`` plus the workers' start.
    potential_dtype : {"float64", "float32"}
        The precision the potential was evaluated in on every chain (``"float64"`` if any
        chain fell back to it; see ``nuts_sample(potential_dtype=...)``).
    """

    x: torch.Tensor
    rhat: float
    min_ess: float
    num_evaluations: int
    divergences: int
    seconds: float
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    rhat_threshold: float = RHAT_THRESHOLD
    cpu_seconds: float = 0.0
    potential_dtype: str = "float64"

    @property
    def converged(self) -> bool:
        """Whether the R-hat passes and there were no divergences.

        ``rhat <= rhat_threshold <= 1.1`` (:func:`~inference.mcmc.budget.rhat_passes`).
        """
        return rhat_passes(self.rhat, self.rhat_threshold) and self.divergences == 0


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
    num_cores: int = 1,
    jit_compile: bool = False,
    potential_dtype: PotentialDtype | torch.dtype = "float64",
) -> MCMCResult:
    """Sample ``p(x | y)`` of the problem with NUTS, chains started at ``init``.

    Parameters
    ----------
    problem : Problem
        With a prior density (``has_prior_density``) and a noise model.
    y : Tensor, shape y_shape
        One observation, units of ``y`` (a NumPy array or list of numbers is accepted; the
        potential is evaluated with it in float64).
    init : Tensor, shape (N, *x_shape)
        Draws that start the chains (one chain per row), units of ``x``; with
        ``precondition="amortized"`` also the draws whose mean and covariance precondition
        (pass the amortized draws: the first ``chains`` rows start the chains, all rows
        estimate the covariance, with Ledoit-Wolf shrinkage, which keeps it well conditioned
        when the rows are few against the number of sampled coordinates); with
        ``"prior-amortized"`` all rows give the covariance in prior-whitened coordinates.
    num_samples, warmup_steps : int
        Draws kept and warm-up iterations per chain (:func:`nuts_draws_per_chain` gives the
        draws that keep the largest R-hat of many coordinates under 1.01).
    precondition : {"amortized", "prior", "prior-amortized", "none"}
        See the package docstring: the amortized draws' covariance, the prior's Cholesky
        factor, the two combined, or none. ``"prior"`` and ``"prior-amortized"`` need a
        Gaussian prior in the sampled coordinates (``problem.gaussian_prior()``).
    num_chains : int, default 4
        Chains (at most ``N``), started at ``init[:num_chains]``.
    max_tree_depth : int, default 8
        NUTS's tree depth limit (at most ``2^depth - 1`` leapfrog steps per draw).
    seed : int, default 0
        Seed of Pyro's RNG, in ``[0, 2**32 - 1]`` (chain ``c`` uses ``derived_seed(seed, c)``,
        ``seed + c`` wrapped below ``2**32``, whichever process runs it).
    adapt_mass_matrix : bool, default True
        Whether NUTS's warm-up also adapts a diagonal mass matrix (in the preconditioned
        coordinates ``v``), on top of the step size. With a good preconditioner the diagonal
        is close to 1 and the warm-up can be shorter without it (Pyro's windowed adaptation
        needs a few hundred iterations to estimate it).
    num_cores : int, default 1
        Worker processes for the chains (at most ``num_chains``; forked on Linux where safe,
        else spawned: package docstring); 1 runs them one after the other here. The draws are
        the same for any value (per-chain seeds), up to the floating-point order of
        multi-threaded BLAS: workers get ``threads // workers`` threads each. A forked worker
        starts in about 0.05 s, a spawned one in a few seconds (it imports torch and Pyro).
    jit_compile : bool, default False
        Trace the potential with ``torch.jit.trace`` (checked against the eager potential at
        the chains' starts, else the eager one is used, with a warning; package docstring).
    potential_dtype : {"float64", "float32"} or torch dtype, default "float64"
        Precision of the potential and its gradient (package docstring, "Cost and
        precision"): the chains' state, the step-size adaptation and the draws stay
        float64; ``"float32"`` casts the preconditioner's factor, the prior's quadratic form
        and ``x`` to float32 (the fixed matrices once per chain), so each evaluation reads
        half the bytes. Used
        only where the float32 potential is within :data:`FLOAT32_POTENTIAL_TOLERANCE` nats
        of the float64 one (and its gradient within 1%) at every chain's start, else float64
        is used with a warning (:attr:`MCMCResult.potential_dtype` says which ran).

    Returns
    -------
    MCMCResult

    Raises
    ------
    ConfigError
        If ``precondition`` is unknown, a count is out of range (``num_samples`` below
        :data:`MIN_DRAWS_PER_CHAIN`), ``precondition`` is ``"prior"`` or
        ``"prior-amortized"`` and the problem's prior is not Gaussian in the sampled
        coordinates, or ``seed`` is not an int in ``[0, 2**32 - 1]``; if the problem
        declares a discrete support or its ``forward`` gives no gradient
        (:func:`~ppl_cvae.problems.densities.check_forward_gradient`); or, before any chain
        runs, the problem's ``forward`` or ``log_prior`` raises on two starts laid out as
        NUTS evaluates them (one model, float64; the message says when float32 or another
        batch layout works, :func:`~ppl_cvae.problems.base.check_layouts`).
    ShapeError
        If ``y`` does not have shape ``problem.y_shape`` or ``init`` not ``(N >= 1,
        *x_shape)``.
    DataError
        If ``y`` or ``init`` is not a tensor, array or list of real numbers, ``y`` holds NaN
        or inf, a model of ``init`` lies outside the problem's declared ``support``, or the
        log posterior density is not finite at a chain's start.
    NoPriorDensityError, NoLikelihoodError
        If the problem's prior has no density or it has no noise model.

    Warns
    -----
    UserWarning
        If the problem's ``gaussian_prior()`` disagrees with its ``log_prior`` at the starts
        (the prior is then evaluated through ``log_prior``), ``jit_compile`` fell back to
        the eager potential, ``potential_dtype="float32"`` fell back to float64, or
        ``num_cores > 1`` but the problem cannot be pickled (the chains then run in this
        process).

    References
    ----------
    Hoffman and Gelman (2014), The No-U-Turn Sampler, JMLR 15; Bingham et al. (2019), Pyro,
    JMLR 20; Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization,
    folding, and localization: an improved R-hat, Bayesian Analysis 16. Prior whitening:
    Murray and Adams (2010), Slice sampling covariance hyperparameters of latent Gaussian
    models, NeurIPS 23; Papaspiliopoulos, Roberts and Skold (2007), A general framework for
    the parametrization of hierarchical models, Statistical Science 22, 59-73. Rounding of
    float32 sums: Higham (2002), Accuracy and Stability of Numerical Algorithms, 2nd ed.,
    SIAM, ch. 3, DOI 10.1137/1.9780898718027.
    """
    import time

    from inference.arviz_io import chain_checks

    if precondition not in PRECONDITIONERS:
        raise ConfigError(f"precondition must be one of {PRECONDITIONERS}, got {precondition!r}")
    if num_samples < 1 or warmup_steps < 0 or num_chains < 1 or num_cores < 1:
        raise ConfigError(
            "need num_samples >= 1, warmup_steps >= 0, num_chains >= 1 and num_cores >= 1, "
            f"got {num_samples}, {warmup_steps}, {num_chains}, {num_cores}"
        )
    if max_tree_depth < 1:
        raise ConfigError(f"max_tree_depth must be >= 1, got {max_tree_depth}")
    dtype = _potential_dtype(potential_dtype)
    seed = as_seed(seed, optional=False)
    problem = as_problem(problem)
    x_shape = tuple(problem.x_shape)
    y = as_real_tensor(y, "y", dtype=torch.float64)
    if tuple(y.shape) != tuple(problem.y_shape):
        raise ShapeError(
            f"y has shape {tuple(y.shape)}; nuts_sample takes one observation of shape "
            f"{tuple(problem.y_shape)} (problem {problem.name!r})"
        )
    if not bool(torch.isfinite(y).all()):
        raise DataError(f"y contains {int((~torch.isfinite(y)).sum())} NaN or inf values")
    init = as_real_tensor(init, "init", dtype=None)
    if init.dim() != len(x_shape) + 1 or tuple(init.shape[1:]) != x_shape or len(init) < 1:
        raise ShapeError(
            f"init must have shape {shape_text('N >= 1', x_shape)}: models that start the "
            f"chains, got {tuple(init.shape)}"
        )
    if problem.declares_support():
        # a start outside would be mapped silently into it by biject_to's inverse (NaN -> 0),
        # or, for a constraint that is not elementwise, start a chain where p(x) = 0
        outside = ~problem.in_support(init)
        if bool(outside.any()):
            raise DataError(
                f"{int(outside.sum())} of {len(init)} models in init lie outside problem "
                f"{problem.name!r}'s declared support {describe_support(problem.support)}: "
                "start the chains inside it (amortized draws are kept inside by draw_posterior)"
            )
    check_continuous_support(problem, "NUTS")
    par = problem.sampler_parameterisation()
    if precondition in ("prior", "prior-amortized") and problem.gaussian_prior() is None:
        raise ConfigError(
            f"precondition={precondition!r} whitens by the prior's Cholesky factor, but the "
            f"prior of problem {problem.name!r} is not Gaussian in the sampled coordinates "
            "(gaussian_prior() is None); use precondition='amortized'"
        )
    y64 = y.double()
    if par is None:  # x reaches the problem in float64, one model at a time: probe that first
        check_layouts(problem, init[torch.arange(2) % len(init)], float64=True, prior=True)
    log_target = _log_target(problem, y64)
    with torch.no_grad():  # fails here, in this process, for a problem without a density
        rows = init[: max(num_chains, 1)]
        theta0 = (par.from_x(rows) if par is not None else rows.flatten(1)).double()
        try:
            values = log_target(theta0)
        except PplCvaeError:
            raise
        except Exception as err:  # noqa: BLE001 - a user's problem may raise anything
            raise ConfigError(
                f"problem {problem.name!r} raised {exception_summary(err)} when NUTS evaluated "
                "log_prior + log_likelihood at the chains' starts (amortized draws)"
            ) from err
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        with torch.no_grad():  # name the term that is not finite
            x0 = par.to_x(_as_basis_dtype(par, theta0)) if par is not None else rows.double()
            terms = {
                "log_prior": _log_prior_theta(problem, theta0),
                "log_likelihood": checked_log_likelihood(problem, x0, y64).double(),
            }
        culprit = [k for k, v in terms.items() if not bool(torch.isfinite(v[bad]).all())]
        if "log_likelihood" in culprit:  # the forward operator, or the density around it?
            with torch.no_grad():
                data = checked_forward(problem, x0).flatten(x0.dim() - len(problem.x_shape))
            if not bool(torch.isfinite(data[bad]).all()):
                culprit[culprit.index("log_likelihood")] = (
                    "forward (it is not finite at those models; log_likelihood calls it)"
                )
        raise DataError(
            f"the log posterior density of problem {problem.name!r} (log_prior + "
            f"log_likelihood) is {float(values[bad].flatten()[0])} at "
            f"{int(bad.sum())} of {bad.numel()} chain starts (amortized draws); NUTS needs a "
            f"finite density there: check the problem's {' and '.join(culprit or list(terms))}"
        )
    check_forward_gradient(problem, init[:1].double(), "NUTS")
    if num_samples < MIN_DRAWS_PER_CHAIN:
        raise ConfigError(
            f"num_samples={num_samples} draws per chain; the split R-hat and the ESS of a chain "
            f"need at least {MIN_DRAWS_PER_CHAIN}"
        )

    begin = time.perf_counter()  # the preconditioner is part of the cost of a correction
    with torch.no_grad():
        start = (par.from_x(init) if par is not None else init.flatten(1)).double()
    prior = _checked_gaussian_prior(problem, start[: max(num_chains, 4)], precondition)
    mu, tril, start = _preconditioner(precondition, start, prior)
    prior_loc = None if prior is None else prior.loc.to(start)
    prior_tril = None if prior is None else prior.scale_tril.to(start)

    num_chains = min(len(start), num_chains)
    jobs = [
        _ChainJob(
            problem=problem,
            y=y64,
            start=start[c],
            checks=start[:num_chains],
            mu=mu,
            tril=tril,
            prior_loc=prior_loc,
            prior_tril=prior_tril,
            prior_whitened=precondition == "prior",
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            seed=derived_seed(seed, c),
            max_tree_depth=max_tree_depth,
            adapt_mass_matrix=adapt_mass_matrix,
            jit_compile=jit_compile,
            potential_dtype=dtype,
        )
        for c in range(num_chains)
    ]
    outputs = _run_chains(jobs, num_cores)
    seconds = time.perf_counter() - begin
    fallback = next((o.jit_fallback for o in outputs if o.jit_fallback), None)
    if fallback is not None:
        warnings.warn(
            f"jit_compile=True: the eager potential is used instead ({fallback})", stacklevel=2
        )
    low = [o.dtype_fallback for o in outputs if o.dtype_fallback]
    if low:
        warnings.warn(
            f"potential_dtype={potential_dtype!r}: float64 is used instead on {len(low)} of "
            f"{len(outputs)} chains ({low[0]})",
            stacklevel=2,
        )
    used = [
        "float64" if o.dtype_fallback or dtype == torch.float64 else "float32" for o in outputs
    ]
    theta = torch.stack([o.draws for o in outputs])  # (chains, draws, dim)
    rhat, min_ess, threshold = chain_checks(theta.numpy())
    with torch.no_grad():
        if par is not None:
            x = par.to_x(_as_basis_dtype(par, theta))
        else:
            x = theta.reshape(num_chains, -1, *x_shape)
    steps = np.stack([o.n_steps for o in outputs])
    return MCMCResult(
        x=x.float(),
        rhat=rhat,
        min_ess=min_ess,
        num_evaluations=sum(o.num_evaluations for o in outputs),
        divergences=int(sum(int(o.diverging.sum()) for o in outputs)),
        seconds=seconds,
        sample_stats={
            "diverging": np.stack([o.diverging for o in outputs]),
            "energy": np.stack([o.energy for o in outputs]),
            "n_steps": steps,
            "tree_depth": np.ceil(np.log2(steps + 1)).astype(np.int64),
            "acceptance_rate": np.stack([o.acceptance_rate for o in outputs]),
            "step_size": np.stack([np.full(num_samples, o.step_size) for o in outputs]),
        },
        rhat_threshold=threshold,
        cpu_seconds=sum(o.cpu_seconds for o in outputs),
        potential_dtype="float32" if all(u == "float32" for u in used) else "float64",
    )
