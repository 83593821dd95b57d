"""Laplace-mixture importance sampling of multimodal small-noise posteriors (issue 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.laplace_mixture import laplace_mixture_sample, polish_modes, two_birds_mode_sample
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.two_birds import (
    TwoBirds,
    exact_mode_weights,
    mode_weight_distance,
)

# y = (e1^2, e2^2) = (1, 0.25): four modes (+-1, +-0.5); prior N(0.3, 1) on each coordinate
TOY_Y = torch.tensor([1.0, 0.25])
TOY_MODES = np.array([[s1, 0.5 * s2] for s1 in (-1, 1) for s2 in (-1, 1)], dtype=float)


def _toy_forward(e: torch.Tensor) -> torch.Tensor:
    return e**2


def _toy_log_prior(e: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Normal(0.3, 1.0).log_prob(e).sum(-1).double()


def _toy_sample_prior(num: int, generator: torch.Generator) -> torch.Tensor:
    return 0.3 + torch.randn(num, 2, generator=generator, dtype=torch.float64)


def _toy_weights() -> np.ndarray:
    """Laplace weights: |det J| = 4 |e1 e2| is the same at the four modes, so w ~ p(e)."""
    log_p = _toy_log_prior(torch.from_numpy(TOY_MODES)).numpy()
    w = np.exp(log_p - log_p.max())
    return w / w.sum()


def test_toy_mode_weights_match_the_exact_ones_within_monte_carlo_error():
    """Each mode's estimated weight is within 4 standard errors sqrt(w (1 - w) / ESS) of the
    exact one (Laplace at sigma = 1e-3: relative error O(sigma^2), far below); k-hat is below
    0.7 and the four modes are found from starts in each quadrant."""
    starts = torch.tensor([[2.0, 2.0], [-2.0, 1.0], [0.5, -1.5], [-0.3, -0.1], [1.2, 0.4]])
    res = laplace_mixture_sample(_toy_forward, _toy_log_prior, _toy_sample_prior, TOY_Y,
                                 starts, 1e-3, 8000, generator=torch.Generator().manual_seed(1))
    assert len(res.modes) == 4 and res.khat < 0.7
    d = mode_weight_distance(res.draws, res.weight, TOY_MODES, _toy_weights(), radius=0.05)
    w = _toy_weights()
    se = np.sqrt(w * (1 - w) / res.ess)
    assert (np.abs(d.mode_weights - w) < 4 * se).all(), (d.mode_weights, w, se)
    assert d.unassigned < 1e-6


def test_toy_missed_mode_gets_no_weight_and_the_distance_says_so():
    """Negative control: starts in three quadrants only. The fourth mode gets no component,
    so (at sigma = 1e-3) no weight; TV is at least half its exact weight."""
    starts = torch.tensor([[2.0, 2.0], [-2.0, 1.0], [0.5, -1.5]])
    res = laplace_mixture_sample(_toy_forward, _toy_log_prior, _toy_sample_prior, TOY_Y,
                                 starts, 1e-3, 4000, generator=torch.Generator().manual_seed(2))
    assert len(res.modes) == 3
    w = _toy_weights()
    d = mode_weight_distance(res.draws, res.weight, TOY_MODES, w, radius=0.05)
    missing = int(np.argmin(np.linalg.norm(TOY_MODES - [-1.0, -0.5], axis=1)))
    assert d.mode_weights[missing] == 0 and d.missed_weight == pytest.approx(w[missing])
    assert d.total_variation >= 0.5 * w[missing]


def test_two_birds_corrected_mode_weights_match_the_laplace_weights():
    """A simulated ``original`` observation (8 exact solutions): from 1000 prior starts the
    sampler finds every solution, and the TV to the Laplace weights is within the Monte Carlo
    allowance 0.5 sum_j 4 sqrt(w_j (1 - w_j) / ESS) (each weight within 4 se). Negative
    control: starts at one solution only give TV = 1 - its weight, far above 0.1."""
    problem = TwoBirds("original")
    _, y = problem.simulate(1, torch.Generator().manual_seed(0))
    solutions, weights = exact_mode_weights(y[0], "original")
    starts = problem.sample_endpoints(1000, torch.Generator().manual_seed(3))
    res = two_birds_mode_sample(problem, y[0], starts, 1e-4, 3000,
                                generator=torch.Generator().manual_seed(4))
    assert len(res.modes) == len(solutions) == 8 and res.khat < 0.7
    d = mode_weight_distance(res.draws, res.weight, solutions, weights)
    allowance = 0.5 * (4 * np.sqrt(weights * (1 - weights) / res.ess)).sum()
    assert d.total_variation < allowance and d.missed_weight == 0, (d, allowance)
    one = torch.from_numpy(solutions[:1]) + 1e-6
    bad = two_birds_mode_sample(problem, y[0], one, 1e-4, 1000,
                                generator=torch.Generator().manual_seed(5))
    d_bad = mode_weight_distance(bad.draws, bad.weight, solutions, weights)
    assert len(bad.modes) == 1
    assert d_bad.total_variation == pytest.approx(1 - weights[0], abs=1e-6)


def test_mode_weight_distance_contract():
    sols = np.array([[0.9, 0.2, 0.3, 0.8], [0.8, 0.5, 0.2, 0.4]])
    draws = np.vstack([sols[0], sols[0], sols[1], [0.5, 0.5, 0.5, 0.5]])
    d = mode_weight_distance(draws, np.array([1.0, 1.0, 1.0, 1.0]), sols, np.array([0.5, 0.5]))
    np.testing.assert_allclose(d.mode_weights, [0.5, 0.25])
    assert d.unassigned == pytest.approx(0.25)
    assert d.total_variation == pytest.approx(0.5 * (0.0 + 0.25 + 0.25))
    with pytest.raises(ShapeError, match="exact_weights"):
        mode_weight_distance(draws, None, sols, np.ones(3) / 3)
    with pytest.raises(ShapeError, match="draws must have shape"):
        mode_weight_distance(draws[:, :3], None, sols, np.array([0.5, 0.5]))
    with pytest.raises(ConfigError, match="non-negative"):
        mode_weight_distance(draws, -np.ones(4), sols, np.array([0.5, 0.5]))


def test_sampler_validates_its_settings():
    starts = torch.zeros(2, 2)
    with pytest.raises(ConfigError, match="noise_std"):
        polish_modes(_toy_forward, _toy_log_prior, TOY_Y, starts, 0.0)
    with pytest.raises(ShapeError, match="starts must be"):
        polish_modes(_toy_forward, _toy_log_prior, TOY_Y, torch.zeros(2), 0.1)
    with pytest.raises(ConfigError, match="defensive"):
        laplace_mixture_sample(_toy_forward, _toy_log_prior, _toy_sample_prior, TOY_Y, starts,
                               0.1, 10, defensive=1.0)
    with pytest.raises(ShapeError, match="starts must be lines"):
        two_birds_mode_sample(TwoBirds("original"), torch.zeros(1, 50, 2), torch.zeros(3, 5),
                              1e-4, 10)
