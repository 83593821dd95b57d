"""NUTS on the problem's posterior, started and preconditioned by amortized draws."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from inference.exact import exact_posterior
from inference.mcmc import NUTS_TAIL_EFFICIENCY, nuts_sample
from ppl_cvae.errors import ConfigError, NoLikelihoodError, ShapeError
from ppl_cvae.problems import Problem, make_problem
from ppl_cvae.problems.linear_gaussian import LinearGaussian


@pytest.mark.parametrize("precondition", ["amortized", "none"])
def test_nuts_draws_have_the_exact_posterior_moments(precondition):
    """Mean within 4 Monte Carlo standard errors (1/sqrt(ESS) sd), variance within 4 of
    sqrt(2/ESS) relative, for the 4 components; no divergences. R-hat of 2 chains of 300 draws
    scatters by about 0.01 around 1, so 1.05 bounds a mixed run (1.01, the reporting
    threshold, is asserted for the preconditioned chains, whose ESS is higher)."""
    problem = LinearGaussian(x_dim=4, y_dim=3, noise_std=0.3)
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    exact = exact_posterior(problem, y)
    if precondition == "amortized":  # stand-ins for amortized draws: a 20% too wide Gaussian
        init = exact.mean + 1.2 * (exact.sample(200, torch.Generator().manual_seed(0))[:, 0]
                                   - exact.mean)
    else:
        init = problem.sample_prior(2, torch.Generator().manual_seed(1))
    result = nuts_sample(problem, y[0], init, num_samples=300, warmup_steps=200, num_chains=2,
                         precondition=precondition, seed=0)
    assert result.x.shape == (2, 300, 4)
    assert result.divergences == 0 and result.rhat < 1.05
    if precondition == "amortized":
        assert result.converged, result.rhat
    draws = result.x.reshape(-1, 4)
    n_e = result.min_ess
    assert n_e > 100
    assert ((draws.mean(0) - exact.mean[0]) / exact.std).abs().max() < 4 / n_e**0.5
    assert ((draws.var(0) / exact.std.pow(2)) - 1).abs().max() < 4 * (2 / n_e) ** 0.5


def test_nuts_needs_a_likelihood_and_valid_settings():
    birds = make_problem("two_birds")  # noise-free: no likelihood
    init = birds.sample_prior(2, torch.Generator().manual_seed(0))
    with pytest.raises(NoLikelihoodError):
        nuts_sample(birds, torch.zeros(*birds.y_shape), init, num_samples=2, warmup_steps=0)
    problem = LinearGaussian(x_dim=2, y_dim=2)
    with pytest.raises(ConfigError, match="precondition"):
        nuts_sample(problem, torch.zeros(2), torch.zeros(3, 2), precondition="dense")
    with pytest.raises(ShapeError, match="init must have shape"):  # as latent NUTS, facies MCMC
        nuts_sample(problem, torch.zeros(2), torch.zeros(3, 5))


def test_with_chains_splits_the_draw_axis_chain_by_chain():
    """Draws stored chain after chain along ``draw`` become (chain, draw); R-hat then sees a
    chain that differs from the others."""
    import arviz as az

    from inference.arviz_io import with_chains
    from inference.sample import inference_data_from_draws

    problem = LinearGaussian(x_dim=2, y_dim=2)
    y = problem.simulate(1, torch.Generator().manual_seed(0))[1]
    x = torch.randn(400, 1, 2, generator=torch.Generator().manual_seed(1))
    x[300:] += 3.0  # the fourth chain is off
    idata = with_chains(inference_data_from_draws(x, y, problem=problem), 4)
    post = idata.posterior["x"]
    assert dict(post.sizes) == {"chain": 4, "draw": 100, "observation": 1, "parameter": 2}
    assert torch.equal(torch.from_numpy(post.values[3, :, 0]), x[300:, 0])
    assert idata.sample_stats["chi2_per_datum"].shape == (4, 100, 1)
    assert float(az.rhat(idata, var_names=["x"])["x"].max()) > 1.2  # 1 + O(1/sqrt(S)) if mixed


class _TiltedGaussian(LinearGaussian):
    """A linear-Gaussian problem whose prior has an ``if`` on the value of ``x``.

    ``log p(x) = log N(x; 0, I) - 0.5 |x_0|`` written with a Python branch on the sign of
    ``x_0`` (a valid, continuous density): ``torch.jit.trace`` records one branch only.
    """

    def gaussian_prior(self):
        return None  # the tilt makes the prior non-Gaussian

    def log_prior(self, x):
        lp = super().log_prior(x)
        if bool(x[..., 0].sum() > 0):  # value-dependent control flow
            return lp - 0.5 * x[..., 0].double()
        return lp + 0.5 * x[..., 0].double()


def _lg_init():
    problem = LinearGaussian(x_dim=4, y_dim=3, noise_std=0.3)
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    exact = exact_posterior(problem, y)
    init = exact.sample(200, torch.Generator().manual_seed(0))[:, 0]
    return problem, y, exact, init


def test_traced_potential_samples_the_same_posterior():
    """The traced potential replays the eager one: with the same seed the chains are the same
    to rounding; with another seed the moments agree with the eager chains' and with the
    exact posterior's within Monte Carlo error. For two independent estimates of a mean the
    difference has sd ``sd sqrt(1/ESS_1 + 1/ESS_2)``; 4 of them (two-sided false alarm 6e-5
    per component)."""
    problem, y, exact, init = _lg_init()
    settings = dict(num_samples=250, warmup_steps=100, num_chains=2)
    short = dict(num_samples=20, warmup_steps=10, num_chains=2, seed=0)
    same = nuts_sample(problem, y[0], init, jit_compile=True, **short)
    assert torch.allclose(same.x, nuts_sample(problem, y[0], init, **short).x, atol=1e-6)
    eager = nuts_sample(problem, y[0], init, seed=0, **settings)
    traced = nuts_sample(problem, y[0], init, seed=100, jit_compile=True, **settings)
    assert traced.divergences == 0 and traced.converged
    sd = exact.std
    a, b = eager.x.reshape(-1, 4).double(), traced.x.reshape(-1, 4).double()
    se = (1 / eager.min_ess + 1 / traced.min_ess) ** 0.5
    assert ((a.mean(0) - b.mean(0)) / sd).abs().max() < 4 * se
    assert ((b.mean(0) - exact.mean[0]) / sd).abs().max() < 4 / traced.min_ess**0.5
    assert ((b.var(0) / sd.pow(2)) - 1).abs().max() < 4 * (2 / traced.min_ess) ** 0.5


class _LaplaceTanh(Problem):
    """A non-Gaussian prior (independent Laplace) and a nonlinear forward operator (tanh)."""

    name = "laplace_tanh"
    x_shape, y_shape = (3,), (4,)
    x_dims, y_dims = ("parameter",), ("datum",)
    coords: dict[str, list[int]] = {}
    noise_std = misfit_std = 0.1
    has_prior_density = True
    _a = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5], [0.3, 0.0, 1.0], [0.5, 0.5, 0.5]])

    def sample_prior(self, num, generator=None):
        u = torch.rand(num, 3, generator=generator) - 0.5
        return -u.sign() * torch.log1p(-2 * u.abs())

    def log_prior(self, x):
        return -(x.abs().sum(-1) + 3 * math.log(2.0))

    def forward(self, x):
        return torch.tanh(x @ self._a.to(x.dtype).T)


def test_fused_potential_of_a_non_gaussian_prior_follows_autograds_chains():
    """Without ``jit_compile`` the potential's gradient is assembled by hand around one
    ``torch.autograd.grad`` (``_fused_energy``); traced, it is autograd's through the whole
    graph. A wrong value or gradient changes the NUTS trajectories (the accept test uses the
    value, the leapfrog the gradient): the chains must agree to float64 rounding. The prior is
    not Gaussian, so this is the branch the linear-Gaussian test above does not reach."""
    problem = _LaplaceTanh()
    y = problem.simulate(1, torch.Generator().manual_seed(3))[1][0]
    init = problem.sample_prior(50, torch.Generator().manual_seed(4))
    short = dict(num_samples=30, warmup_steps=20, num_chains=2, seed=0)
    fused = nuts_sample(problem, y, init, **short)
    traced = nuts_sample(problem, y, init, jit_compile=True, **short)
    assert fused.x.reshape(-1, 3).std(0).min() > 0.05  # the chains moved
    assert torch.allclose(fused.x, traced.x, atol=1e-6, rtol=0)


def test_untraceable_potential_falls_back_to_eager():
    """A prior with an ``if`` on ``x`` is traced wrongly for starts on the other side: the
    check at the chains' starts catches it, warns, and the chains are the eager ones.
    Negative control: the trace of that prior does differ from it at the second start."""
    problem = _TiltedGaussian(x_dim=4, y_dim=3, noise_std=0.3)
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    init = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    init[0, 0], init[1, 0] = 1.0, -1.0  # the two chains start on both sides of x_0 = 0
    settings = dict(num_samples=30, warmup_steps=20, num_chains=2, precondition="none")
    eager = nuts_sample(problem, y[0], init, **settings)
    with pytest.warns(UserWarning, match="eager potential is used"):
        fallback = nuts_sample(problem, y[0], init, jit_compile=True, **settings)
    assert torch.equal(fallback.x, eager.x)

    import warnings

    def potential(x):
        return -problem.log_prior(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(potential, (init[0].double(),), check_trace=False)
    assert abs(float(traced(init[1].double()) - potential(init[1].double()))) > 0.5


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parallel_chains_are_reproducible_under_a_seed(method, monkeypatch):
    """Chains on 2 worker processes (forked or spawned) are the chains run here, draw for
    draw (each chain is seeded with ``seed + c`` wherever it runs); another seed gives other
    draws."""
    import inference.mcmc.chains as mcmc  # where _run_chains looks up these names

    mcmc._stop_tqdm_monitors()
    if method == "fork" and mcmc._start_method() != "fork":
        pytest.skip("fork is not this platform's start method for chain workers")
    monkeypatch.setattr(mcmc, "_start_method", lambda: method)
    problem, y, _, init = _lg_init()
    settings = dict(num_samples=40, warmup_steps=30, num_chains=2, seed=3)
    here = nuts_sample(problem, y[0], init, **settings)
    parallel = nuts_sample(problem, y[0], init, num_cores=2, **settings)
    assert torch.equal(parallel.x, here.x)
    assert parallel.num_evaluations == here.num_evaluations
    for name, values in here.sample_stats.items():
        assert np.array_equal(parallel.sample_stats[name], values), name
    assert mcmc._FORKED_JOBS == []  # the inherited jobs do not outlive the pool
    if method == "spawn":
        return
    other = nuts_sample(problem, y[0], init, **{**settings, "seed": 4})
    assert not torch.equal(other.x, here.x)


def test_unpicklable_problem_runs_its_chains_here_or_in_forks(monkeypatch):
    """A problem class local to a function cannot be pickled: forked workers inherit it and
    run its chains in parallel (the same draws as here); spawned ones cannot, so the chains
    run here, with a warning."""
    import inference.mcmc.chains as mcmc  # where _run_chains looks up these names

    class Local(LinearGaussian):
        pass

    problem = Local(x_dim=2, y_dim=2, noise_std=0.5)
    init = torch.zeros(2, 2)
    settings = dict(num_samples=5, warmup_steps=5, num_chains=2, seed=1)
    here = nuts_sample(problem, torch.zeros(2), init, **settings)
    mcmc._stop_tqdm_monitors()
    if mcmc._start_method() == "fork":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            forked = nuts_sample(problem, torch.zeros(2), init, num_cores=2, **settings)
        assert torch.equal(forked.x, here.x)
    monkeypatch.setattr(mcmc, "_start_method", lambda: "spawn")
    with pytest.warns(UserWarning, match="cannot be pickled"):
        result = nuts_sample(problem, torch.zeros(2), init, num_cores=2, **settings)
    assert torch.equal(result.x, here.x)


def test_nuts_draws_per_chain_meets_the_rhat_quantile():
    """The answer ``n`` is the shortest chain whose ``tail_efficiency * n`` independent
    draws keep the largest R-hat at or under 1.01 with probability 0.9 (the quantile that
    ``rhat_threshold`` computes, checked against Monte Carlo in test_mcmc_stats)."""
    from inference.mcmc import _largest_rhat_quantile, nuts_draws_per_chain

    n = nuts_draws_per_chain(1024, 4, tail_efficiency=1.0, min_draws=4)
    assert _largest_rhat_quantile(4, n, 1024, 0.1) <= 1.01 < _largest_rhat_quantile(
        4, n - 2, 1024, 0.1
    )
    assert nuts_draws_per_chain(1024) == math.ceil(n / NUTS_TAIL_EFFICIENCY)
    assert nuts_draws_per_chain(16) < nuts_draws_per_chain(512) < nuts_draws_per_chain(1024)
    assert nuts_draws_per_chain(1024, 2) > nuts_draws_per_chain(1024, 4)
    assert nuts_draws_per_chain(1024, tail_efficiency=0.1) == 2000  # the budget caps it
    with pytest.raises(ConfigError, match="tail_efficiency"):
        nuts_draws_per_chain(10, tail_efficiency=0.0)
    with pytest.raises(ConfigError, match="num_cores >= 1"):
        problem, y, _, init = _lg_init()
        nuts_sample(problem, y[0], init, num_cores=0)


def test_cli_nuts_defaults_follow_the_dimension():
    """``sample --method nuts`` without ``--num-samples``: chains x nuts_draws_per_chain of
    the sampled values; step-size-only warm-up of 150 (500 when the mass matrix adapts)."""
    import argparse

    from inference.mcmc import nuts_draws_per_chain
    from ppl_cvae.cli.sample import _nuts_defaults

    problem = make_problem("crosshole")
    args = argparse.Namespace(num_samples=None, chains=4, warmup=None, adapt_mass_matrix=None)
    _nuts_defaults(args, problem)
    assert args.num_samples == 4 * nuts_draws_per_chain(1024, 4) == 4 * 783
    assert (args.warmup, args.adapt_mass_matrix) == (150, False)
    args = argparse.Namespace(num_samples=80, chains=2, warmup=None, adapt_mass_matrix=True)
    _nuts_defaults(args, problem)
    assert (args.num_samples, args.warmup, args.adapt_mass_matrix) == (80, 500, True)
