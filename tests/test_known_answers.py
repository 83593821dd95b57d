"""Tier 2: the amortized posterior against the exact one on a linear-Gaussian problem."""

import math

import pytest
import torch

from inference import draw_posterior, linear_gaussian_posterior
from ppl_cvae import CVAE, LinearGaussian, Overrides, build_cvae, fit, resolve_settings
from ppl_cvae.train import negative_elbo
from tests.conftest import SEED

NUM_DRAWS = 4000
NUM_OBS = 20
# Tolerances, per observation and element (sd = exact posterior standard deviation):
# - mean: Monte Carlo standard error sd/sqrt(4000) = 0.016 sd, 4 SE = 0.063 sd, plus an
#   amortization budget of 0.2 sd  -> |mean error| <= 0.263 sd;
# - std: the sample std has relative SE 1/sqrt(2 * 4000) = 1.1 %, 4 SE = 4.5 %, plus a 10 %
#   budget -> ratio in [0.855, 1.145];
# - correlation (2-D case): SE of r about (1 - r^2)/sqrt(N) = 0.01; budget 0.1.
MEAN_TOL = 0.2 + 4 / math.sqrt(NUM_DRAWS)
STD_TOL = 0.1 + 4 / math.sqrt(2 * NUM_DRAWS)
CORR_TOL = 0.1


def posterior_violations(draws, mean, cov):
    """List what is off: draws (S, M, d) against the exact N(mean (M, d), cov (d, d))."""
    sd = cov.diagonal().sqrt()
    problems = []
    err = ((draws.mean(0) - mean) / sd).abs().max().item()
    if err > MEAN_TOL:
        problems.append(f"mean error {err:.3f} sd")
    ratio = draws.std(0) / sd
    if ratio.min() < 1 - STD_TOL or ratio.max() > 1 + STD_TOL:
        problems.append(f"std ratio in [{ratio.min():.3f}, {ratio.max():.3f}]")
    exact_r = (cov[0, 1] / (sd[0] * sd[1])).item()
    r = torch.stack([torch.corrcoef(draws[:, m].T)[0, 1] for m in range(draws.shape[1])])
    if (r - exact_r).abs().max() > CORR_TOL:
        problems.append(f"correlation {r.mean():.3f} vs exact {exact_r:.3f}")
    return problems


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(SEED)
    problem = LinearGaussian(x_dim=2, y_dim=2, noise_std=0.5, seed=0)
    config, train_config = resolve_settings(problem, Overrides(train={"seed": SEED}))
    x, y = problem.simulate(4096, torch.Generator().manual_seed(1))
    cvae = build_cvae(config, x, y)
    # start away from the answer: the untrained net's posterior is checked to fail below
    untrained = CVAE(config, cvae.x_standardiser, cvae.y_standardiser)
    untrained.load_state_dict(cvae.state_dict())
    result = fit(
        cvae,
        None,
        None,
        train_config,
        simulator=problem.simulate,
        progress=False,
    )
    x_test, y_test = problem.simulate(NUM_OBS, torch.Generator().manual_seed(2))
    mean, cov = linear_gaussian_posterior(
        problem.matrix, problem.noise_std**2 * torch.eye(2), torch.zeros(2), torch.eye(2), y_test
    )
    return problem, cvae, untrained, result, y_test, mean, cov


@pytest.mark.slow
def test_amortized_posterior_matches_exact(trained):
    _, cvae, _, _, y_test, mean, cov = trained
    draws = draw_posterior(cvae, y_test, NUM_DRAWS, seed=0).x
    assert posterior_violations(draws, mean, cov) == []


@pytest.mark.slow
def test_check_flags_wrong_posteriors(trained):
    """Negative controls: untrained net, exact draws shifted, too wide, too narrow."""
    _, _, untrained, _, y_test, mean, cov = trained
    assert posterior_violations(draw_posterior(untrained, y_test, NUM_DRAWS, seed=0).x, mean, cov)
    chol = torch.linalg.cholesky(cov)
    exact = mean + torch.randn(NUM_DRAWS, NUM_OBS, 2) @ chol.T
    assert posterior_violations(exact, mean, cov) == []  # the check accepts the truth
    sd = cov.diagonal().sqrt()
    assert posterior_violations(exact + 0.4 * sd, mean, cov)
    assert posterior_violations(mean + 1.25 * (exact - mean), mean, cov)
    assert posterior_violations(mean + 0.8 * (exact - mean), mean, cov)


@pytest.mark.slow
def test_elbo_approaches_the_exact_evidence(trained):
    """The loss falls during training and ends just above its theoretical minimum.

    For a conditional density, E[-ELBO] >= E[-log p(x|y)] = H = 0.5 log det(2 pi e C_post)
    (the posterior covariance is the same for every y). On 20000 fresh pairs the loss per
    observation has standard error about 0.01 nats; allow 4 SE below H and 0.2 nats above it.
    """
    problem, cvae, _, result, _, _, cov = trained
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] - 1.0
    entropy = 0.5 * (2 * math.log(2 * math.pi * math.e) + torch.logdet(cov.double()).item())
    x, y = problem.simulate(20000, torch.Generator().manual_seed(3))
    loss = negative_elbo(cvae, y, x, num_particles=4)
    assert entropy - 0.04 < loss < entropy + 0.2
