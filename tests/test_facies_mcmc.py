"""Facies MCMC with a generative prior (``inference.facies_mcmc``) against exact enumeration.

On fields of 3 cells (8 facies fields; 9 for 2 cells and 3 facies) the posterior
``p(x | y) proportional to p(y | x) int N(z; 0, 1) p_g(x | z) dz`` of an untrained VAE (latent
1, random weights: a prior with correlated cells) is computed by enumerating ``x`` and
integrating ``z`` on a grid; the chains' state frequencies must match it within their Monte
Carlo error, and so must the posterior mean of ``z``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from inference.facies_mcmc import facies_mcmc_sample
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian


def _vae(x_dim: int, likelihood: str, num_facies: int = 2, seed: int = 3) -> CVAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        x_shape=(x_dim,),
        y_shape=None,
        latent_dim=1,
        hidden_dims=(8,),
        likelihood=likelihood,
        num_facies=num_facies,
        prior="standard_normal",
    )
    vae = CVAE(cfg)
    with torch.no_grad():  # a decoder whose cells depend strongly on z
        for p in vae.parameters():
            p.mul_(3.0)
    return vae.eval()


def _exact(vae: CVAE, problem: LinearGaussian, y: torch.Tensor, k: int):
    """Enumerated ``p(x | y)`` over all fields and ``E[z | y]`` (grid on z)."""
    d = problem.x_shape[0]
    states = torch.tensor(list(itertools.product(range(k), repeat=d)), dtype=torch.float64)
    z = torch.linspace(-9, 9, 6001, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        dist, _ = vae.x_distribution(z.float(), None)
        log_px_z = torch.stack([dist.log_prob(s.float()).double() for s in states], -1)
    log_pz = -0.5 * z.squeeze(-1) ** 2
    log_lik = problem.log_likelihood(states, y.double()).double()
    joint = log_pz.unsqueeze(-1) + log_px_z + log_lik  # (grid, states)
    weights = torch.softmax(joint.flatten(), 0).reshape(joint.shape)
    return states, weights.sum(0), float((weights.sum(1) * z.squeeze(-1)).sum())


@pytest.mark.parametrize(("likelihood", "k", "d"), [("bernoulli", 2, 3), ("categorical", 3, 2)])
def test_chains_match_the_enumerated_posterior(likelihood, k, d):
    problem = LinearGaussian(x_dim=d, y_dim=2, noise_std=0.4, seed=1)
    vae = _vae(d, likelihood, k)
    x_true = torch.tensor([1.0, 0.0, 1.0][:d])
    y = problem.forward(x_true)
    states, probs, z_mean = _exact(vae, problem, y, k)
    init = torch.randint(0, k, (8, d), generator=torch.Generator().manual_seed(0)).float()
    res = facies_mcmc_sample(
        vae, problem, y, init, num_samples=3000, warmup_steps=100, num_chains=4,
        flips_per_step=1, start="first", seed=0,
    )
    draws = res.x.reshape(-1, d).double()
    freq = torch.stack([(draws == s).all(-1).double().mean() for s in states])
    # Monte Carlo error: the draws are correlated; ESS at least 1/4 of the 12,000 draws here
    n_eff = draws.shape[0] / 4
    tol = 4 * torch.sqrt(probs * (1 - probs) / n_eff) + 2e-3
    assert torch.all((freq - probs).abs() <= tol), (freq, probs, tol)
    assert 0.5 * float((freq - probs).abs().sum()) < 0.03
    z_sd = float(res.z.double().std())
    assert abs(float(res.z.double().mean()) - z_mean) <= 4 * z_sd / math.sqrt(n_eff)
    assert 0 < res.accept_z <= 1 and 0 < res.accept_x <= 1
    assert res.num_quantities == 1 + 1 + (k - 1)
    assert torch.allclose(
        res.facies_probabilities(k).sum(-1), torch.ones(d), atol=1e-6
    )
    expected_ll = problem.log_likelihood(res.x.double(), y.double())
    assert torch.allclose(res.log_likelihood, expected_ll, atol=1e-5)  # float32 forward


def test_same_seed_same_chains_and_bad_inputs():
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.4, seed=1)
    vae = _vae(3, "bernoulli")
    y = torch.zeros(2)
    init = torch.zeros(4, 3)
    a = facies_mcmc_sample(vae, problem, y, init, num_samples=20, warmup_steps=5, seed=7)
    b = facies_mcmc_sample(vae, problem, y, init, num_samples=20, warmup_steps=5, seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z)
    with pytest.raises(DataError, match="facies codes"):
        facies_mcmc_sample(vae, problem, y, init + 0.5, num_samples=4, warmup_steps=0)
    with pytest.raises(ShapeError, match="init"):
        facies_mcmc_sample(vae, problem, y, torch.zeros(4, 2), num_samples=4)
    with pytest.raises(ShapeError, match="one observation"):
        facies_mcmc_sample(vae, problem, torch.zeros(3), init, num_samples=4)
    with pytest.raises(ConfigError, match="num_samples"):
        facies_mcmc_sample(vae, problem, y, init, num_samples=2)
    cfg = ModelConfig(
        x_shape=(3,), y_shape=None, latent_dim=1, hidden_dims=(4,), prior="standard_normal"
    )
    gaussian = CVAE(cfg)
    with pytest.raises(ConfigError, match="bernoulli or categorical"):
        facies_mcmc_sample(gaussian, problem, y, init, num_samples=4)
