"""NUTS on the problem's posterior, started and preconditioned by amortized draws."""

from __future__ import annotations

import pytest
import torch

from inference.exact import exact_posterior
from inference.mcmc import nuts_sample
from ppl_cvae.errors import ConfigError, NoLikelihoodError
from ppl_cvae.problems import make_problem
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
    with pytest.raises(ConfigError, match="init must have shape"):
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
