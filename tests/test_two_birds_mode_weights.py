"""Tests of the exact posterior's mode weights and the expected mode coverage of an exact sampler.

Tier 1 (contracts): shapes, normalisation, errors. Tier 2 (known answers): the Laplace weights
of :func:`exact_mode_weights` against (a) closed forms and (b) a brute-force posterior with
Gaussian noise sigma = 0.01 on y, integrated by importance sampling in the prior's uniform
coordinates (independent of the prior-density formula and of autograd); the expected coverage
of :func:`expected_mode_coverage` against exact draws scored by :func:`score_samples`. Each
numeric check has a negative control (uniform weights, weights without the Jacobian factor)
that it must reject.

Two facts the tests rely on:

- For TrigComponent pairs ``J_j^T J_j`` is the same at every solution (``kind'(p)^2 = 1 - y^2``
  is fixed by y), so the weights are proportional to the prior density. The Jacobian factor is
  exercised with a log-periodic pair ``f_k = cos(2 pi log2 x_k)``, invariant under
  ``x_k -> 2 x_k``: doubling a line multiplies ``det(J^T J)^(-1/2)`` by 4.
- At the brute-force noise level the mass near each mode equals the Laplace limit up to the
  prior's variation over one posterior standard deviation (about 1e-4 in the endpoints). Run
  once with 20 times the draws used here, the brute-force weights of both cases matched the
  Laplace weights within 1 standard error (2e-4 and below), so the tolerance is Monte Carlo
  error alone.

A last calibration check uses simulated (x, y) pairs: x is an exact posterior draw given y,
so the weight of its solution has a known expectation that uniform weights miss.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems.two_birds import (
    ExactSamplerCoverage,
    TwoBirds,
    endpoints_from_lines,
    enumerate_exact_solutions_batch,
    exact_mode_weights,
    expected_mode_coverage,
    lines_from_endpoints,
    score_samples,
)

SIGMA = 0.01  # brute-force noise std on each of the 100 values of y
NUM_DRAWS = 20_000  # importance draws per mode
INFLATE = 1.5  # proposal std / Laplace std (wider than the target keeps the weights bounded)
# up to 6 weights compared per test at 4 standard errors: false alarm about 6 * 6e-5.
NUM_SE = 4.0


class LogPeriodic:
    """``f(x0, x1) = cos(2 pi log2 x_k)``: unchanged when line ``k`` is doubled."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return torch.cos(2 * math.pi * torch.log2((x0, x1)[self.k]))


LOG_PERIODIC = (LogPeriodic(0), LogPeriodic(1))
# x0 = 0.45 -> 0.12 and x1 = 0.15 -> 0.4 can each be doubled once inside [0.1, 1] (halving or
# quadrupling leaves it), so y has exactly the 4 solutions (a, b) = line scale exponents.
LOG_PERIODIC_TRUE = np.array([0.45, 0.12, 0.15, 0.4])
LOG_PERIODIC_SOLUTIONS = np.array(
    [LOG_PERIODIC_TRUE * np.repeat([2.0**a, 2.0**b], 2) for a in (0, 1) for b in (0, 1)]
)


def _prior_density(e: np.ndarray) -> np.ndarray:
    """p(e) = 1 / (0.9^2 (1 - x0(1)) (1 - x1(0))) for endpoints (K, 4) inside the support."""
    return 1.0 / (0.81 * (1.0 - e[:, 1]) * (1.0 - e[:, 2]))


def _forward(functions, e: np.ndarray) -> np.ndarray:
    """F(lines(e)) flattened: endpoints (N, 4) -> y (N, 100), float64."""
    x = lines_from_endpoints(torch.as_tensor(e, dtype=torch.float64))
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack([f(x0, x1) for f in functions], -1).reshape(len(e), -1).numpy()


def _endpoints_from_uniform(u: np.ndarray) -> np.ndarray:
    """The prior's generative story: u ~ U[0, 1]^4 -> endpoints (x0(0), x0(1), x1(0), x1(1))."""
    x0_end = 0.1 + 0.9 * u[:, 0]
    x0_start = x0_end + (1.0 - x0_end) * u[:, 1]
    x1_start = 0.1 + 0.9 * u[:, 2]
    x1_end = x1_start + (1.0 - x1_start) * u[:, 3]
    return np.stack([x0_start, x0_end, x1_start, x1_end], axis=-1)


def _uniform_from_endpoints(e: np.ndarray) -> np.ndarray:
    u0 = (e[:, 1] - 0.1) / 0.9
    u1 = (e[:, 0] - e[:, 1]) / (1.0 - e[:, 1])
    u2 = (e[:, 2] - 0.1) / 0.9
    u3 = (e[:, 3] - e[:, 2]) / (1.0 - e[:, 2])
    return np.stack([u0, u1, u2, u3], axis=-1)


def _brute_force_weights(functions, y, solutions, rng):
    """Posterior mass near each solution under y = F(e) + N(0, SIGMA^2 I), normalised.

    In the prior's uniform coordinates u the prior is 1 on the unit cube, so the mass of the
    region nearest to solution j is Z_j = int L(u) 1[nearest = j] du, estimated by importance
    sampling from N(u_j, INFLATE^2 SIGMA^2 (G^T G)^-1) with G the finite-difference Jacobian of
    u -> F(e(u)). Returns the weights Z_j / sum Z (K,) and their delta-method standard errors.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    centres = _uniform_from_endpoints(solutions)
    z_hat, z_var = [], []
    for j, u_j in enumerate(centres):
        h = 1e-6
        steps = u_j + h * np.concatenate([np.eye(4), -np.eye(4)])
        f_steps = _forward(functions, _endpoints_from_uniform(steps))
        jac = (f_steps[:4] - f_steps[4:]).T / (2 * h)  # (100, 4)
        chol = np.linalg.cholesky(INFLATE**2 * SIGMA**2 * np.linalg.inv(jac.T @ jac))
        std_normal = rng.standard_normal((NUM_DRAWS, 4))
        u = u_j + std_normal @ chol.T
        inside = ((u > 0) & (u < 1)).all(axis=1)
        e = _endpoints_from_uniform(np.clip(u, 1e-12, 1 - 1e-12))
        log_lik = -0.5 * ((_forward(functions, e) - y) ** 2).sum(axis=1) / SIGMA**2
        log_q = -0.5 * (std_normal**2).sum(axis=1) - np.log(np.diag(chol)).sum()
        nearest = np.abs(e[:, None, :] - solutions[None]).max(axis=-1).argmin(axis=1) == j
        ratio = np.where(inside & nearest, np.exp(log_lik - log_q), 0.0)  # common 2 pi dropped
        z_hat.append(ratio.mean())
        z_var.append(ratio.var() / NUM_DRAWS)
    z_hat, z_var = np.array(z_hat), np.array(z_var)
    total = z_hat.sum()
    weights = z_hat / total
    # w_j = Z_j / sum Z with independent Z_k: dw_j / dZ_k = (delta_jk - w_j) / sum Z
    grad = (np.eye(len(weights)) - weights[:, None]) / total
    se = np.sqrt((grad**2 * z_var[None, :]).sum(axis=1))
    return weights, se


def _max_z(estimate, se, reference) -> float:
    return float(np.max(np.abs(estimate - reference) / se))


# ---------------------------------------------------------------------------------------------
# tier 1: contracts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("functions", ["data_1", "original"])
def test_weights_positive_and_normalised(functions):
    _, y = TwoBirds(functions).simulate(4, torch.Generator().manual_seed(3))
    for obs in y:
        solutions, weights = exact_mode_weights(obs, functions)
        assert solutions.shape == (len(weights), 4) and weights.shape == (len(solutions),)
        assert len(weights) >= 1
        assert (weights > 0).all()
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_no_solution_gives_empty_weights_and_nan_coverage():
    y = torch.rand(1, 1, 50, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    solutions, weights = exact_mode_weights(y[0], "original")
    assert solutions.shape == (0, 4) and weights.shape == (0,)
    result = expected_mode_coverage(y, "original")
    assert result.num_observations_without_solutions == 1
    assert math.isnan(result.mode_coverage)
    assert np.isnan(result.mode_coverage_per_observation).all()


@pytest.mark.parametrize("num_obs", [1, 3])
def test_expected_coverage_shapes(num_obs):
    _, y = TwoBirds("original").simulate(num_obs, torch.Generator().manual_seed(5))
    result = expected_mode_coverage(y, "original", num_samples=7)
    assert isinstance(result, ExactSamplerCoverage)
    assert result.num_observations == num_obs and result.num_samples == 7
    for name in (
        "mode_coverage_per_observation",
        "mode_coverage_sd_per_observation",
        "modes_hit_per_observation",
        "num_exact_solutions",
    ):
        assert getattr(result, name).shape == (num_obs,)
    assert [w.shape for w in result.weights] == [(k,) for k in result.num_exact_solutions]
    assert (
        (result.mode_coverage_per_observation > 0) & (result.mode_coverage_per_observation <= 1)
    ).all()
    assert result.to_dict()["num_samples"] == 7


def test_errors():
    _, y = TwoBirds("data_1").simulate(2, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="pass exact_solutions"):
        exact_mode_weights(y[0], LOG_PERIODIC)
    with pytest.raises(ConfigError, match="pass exact_solutions"):
        expected_mode_coverage(y, LOG_PERIODIC)
    with pytest.raises(ShapeError, match="one observation"):
        exact_mode_weights(y, "data_1")
    with pytest.raises(ShapeError, match=r"\(num_observations, 1, 50, 2\)"):
        expected_mode_coverage(y[0], "data_1")
    with pytest.raises(ShapeError, match="num_solutions, 4"):
        exact_mode_weights(y[0], "data_1", exact_solutions=np.zeros((2, 3)))
    outside = np.array([[0.5, 0.6, 0.2, 0.3]])  # x0 ascending: prior density 0
    with pytest.raises(DataError, match="outside the prior's support"):
        exact_mode_weights(y[0], "data_1", exact_solutions=outside)
    with pytest.raises(DataError, match="NaN"):
        exact_mode_weights(y[0], "data_1", exact_solutions=np.full((1, 4), np.nan))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="num_samples"):
            expected_mode_coverage(y, "data_1", num_samples=bad)


# ---------------------------------------------------------------------------------------------
# tier 2: known answers
# ---------------------------------------------------------------------------------------------


def test_trig_weights_are_proportional_to_prior_density():
    # J^T J = B^T diag(1 - y^2) B is the same at every solution of a TrigComponent pair
    x, y = TwoBirds("original").simulate(5, torch.Generator().manual_seed(11))
    for obs in y:
        solutions, weights = exact_mode_weights(obs, "original")
        density = _prior_density(solutions)
        np.testing.assert_allclose(weights, density / density.sum(), rtol=1e-6)


def test_log_periodic_weights_closed_form():
    # doubling a line halves f' along it: det(J^T J)^(-1/2) gains a factor 4 per doubled line
    y = _forward(LOG_PERIODIC, LOG_PERIODIC_TRUE[None]).reshape(50, 2)
    solutions, weights = exact_mode_weights(y, LOG_PERIODIC, exact_solutions=LOG_PERIODIC_SOLUTIONS)
    np.testing.assert_array_equal(solutions, LOG_PERIODIC_SOLUTIONS)
    assert np.abs(_forward(LOG_PERIODIC, solutions) - y.reshape(-1)).max() < 1e-12
    doubled = np.array([0, 1, 1, 2])  # number of doubled lines of each solution
    expected = 4.0**doubled * _prior_density(solutions)
    np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-9)


@pytest.mark.parametrize("case", ["original", "log_periodic"])
def test_laplace_weights_match_brute_force_posterior(case, seed):
    if case == "original":
        functions = TwoBirds("original").functions
        true = torch.tensor([0.8, 0.3, 0.2, 0.6], dtype=torch.float64)
        y = TwoBirds("original").forward(lines_from_endpoints(true))
        solutions, weights = exact_mode_weights(y, "original")
        # negative control: every mode equally likely (the weights here span 0.11 .. 0.24)
        wrong = np.full(len(weights), 1.0 / len(weights))
    else:
        functions = LOG_PERIODIC
        y = _forward(LOG_PERIODIC, LOG_PERIODIC_TRUE[None]).reshape(50, 2)
        solutions, weights = exact_mode_weights(
            y, LOG_PERIODIC, exact_solutions=LOG_PERIODIC_SOLUTIONS
        )
        # negative control: prior density alone, without the Jacobian factor
        wrong = _prior_density(solutions) / _prior_density(solutions).sum()
    assert len(solutions) >= 4
    brute, se = _brute_force_weights(functions, y, solutions, np.random.default_rng(seed))
    # Monte Carlo error only (bias of the Laplace limit at SIGMA is ~1e-3 relative, see top)
    assert _max_z(brute, se, weights) < NUM_SE, (brute, weights, se)
    assert _max_z(brute, se, wrong) > NUM_SE, (brute, wrong, se)


def test_expected_moments_match_multinomial_draws(seed):
    _, y = TwoBirds("original").simulate(3, torch.Generator().manual_seed(2))
    num_samples, num_reps = 30, 20_000
    result = expected_mode_coverage(y, "original", num_samples=num_samples)
    rng = np.random.default_rng(seed)
    for m, w in enumerate(result.weights):
        draws = rng.choice(len(w), size=(num_reps, num_samples), p=w)
        distinct = (np.sort(draws, axis=1)[:, 1:] != np.sort(draws, axis=1)[:, :-1]).sum(1) + 1
        mean, var = distinct.mean(), distinct.var()
        # se of a mean: sd / sqrt(N); se of a variance: sqrt((mu_4 - var^2) / N)
        mu4 = ((distinct - mean) ** 4).mean()
        assert abs(mean - result.modes_hit_per_observation[m]) < NUM_SE * math.sqrt(var / num_reps)
        sd_expected = result.mode_coverage_sd_per_observation[m] * min(num_samples, len(w))
        assert abs(var - sd_expected**2) < NUM_SE * math.sqrt((mu4 - var**2) / num_reps)


@pytest.mark.parametrize("num_samples", [30, 5])
def test_expected_coverage_matches_scored_exact_draws(num_samples, seed):
    # an exact sampler: draws on the solutions with the Laplace weights, scored by score_samples
    _, y = TwoBirds("original").simulate(6, torch.Generator().manual_seed(8))
    num_reps = 60
    result = expected_mode_coverage(y, "original", num_samples=num_samples)
    rng = np.random.default_rng(seed)

    def scored_coverage(weights) -> float:
        blocks = [
            sols[rng.choice(len(sols), num_samples, p=w)]
            for _ in range(num_reps)
            for sols, w in zip(result.exact_solutions, weights, strict=True)
        ]
        # draws (S, num_reps * M, 4), sample axis first; observations repetition-major like y
        endpoints = np.stack(blocks, axis=1)
        x = lines_from_endpoints(torch.as_tensor(endpoints, dtype=torch.float32))
        score = score_samples(
            x,
            y.repeat(num_reps, 1, 1, 1),
            "original",
            exact_solutions=list(result.exact_solutions) * num_reps,
        )
        assert score.pass_rate == 1.0
        return score.mode_coverage

    # the mean of num_reps independent runs of the aggregate has sd mode_coverage_sd / sqrt(R)
    tolerance = NUM_SE * result.mode_coverage_sd / math.sqrt(num_reps)
    assert abs(scored_coverage(result.weights) - result.mode_coverage) < tolerance
    # negative control: a sampler with uniform weights covers more than the exact one
    uniform = [np.full(len(w), 1.0 / len(w)) for w in result.weights]
    assert scored_coverage(uniform) - result.mode_coverage > tolerance


def test_data_1_expected_coverage_close_to_one():
    _, y = TwoBirds("data_1").simulate(50, torch.Generator().manual_seed(999))
    result = expected_mode_coverage(y, "data_1")
    assert set(result.num_exact_solutions.tolist()) <= {1, 2}
    two = result.num_exact_solutions == 2
    assert two.any()
    np.testing.assert_array_equal(result.mode_coverage_per_observation[~two], 1.0)
    # K = 2: a mode of weight w is missed by 30 draws with probability (1 - w)^30; the
    # lightest mode of these 50 y weighs 0.113 (0.887^30 = 0.027), so C_m > 1 - 0.05 / 2
    assert (result.mode_coverage_per_observation[two] > 1 - 0.05 / 2).all()
    assert (result.mode_coverage_per_observation[two] < 1).all()
    assert 0.99 < result.mode_coverage < 1.0


def test_exact_solutions_argument_matches_enumeration():
    _, y = TwoBirds("original").simulate(3, torch.Generator().manual_seed(4))
    solutions = enumerate_exact_solutions_batch(y, "original")
    given = expected_mode_coverage(y, "original", exact_solutions=solutions)
    enumerated = expected_mode_coverage(y, "original")
    assert given.mode_coverage == enumerated.mode_coverage
    for w_given, w_enum in zip(given.weights, enumerated.weights, strict=True):
        np.testing.assert_array_equal(w_given, w_enum)


def test_true_solution_is_a_posterior_draw():
    # Simulated (x, y) pairs: x is a draw from the exact posterior given y, so the weight of
    # the solution at x has expectation sum_j w_j^2 per y (a calibration check of the weights)
    x, y = TwoBirds("original").simulate(120, torch.Generator().manual_seed(21))
    truth = endpoints_from_lines(x.double()).numpy()
    result = expected_mode_coverage(y, "original")
    w_true, mean, var, uniform = [], [], [], []
    for sols, w, e in zip(result.exact_solutions, result.weights, truth, strict=True):
        dist = np.abs(sols - e).max(axis=1)
        assert dist.min() < 1e-4
        w_true.append(w[dist.argmin()])
        mean.append((w**2).sum())
        var.append((w**3).sum() - (w**2).sum() ** 2)
        uniform.append(1.0 / len(w))  # what uniform weights would predict
    # sd of the mean of independent w_true: sqrt(sum var) / M
    sd = math.sqrt(sum(var)) / len(var)
    assert abs(np.mean(w_true) - np.mean(mean)) < NUM_SE * sd
    assert abs(np.mean(w_true) - np.mean(uniform)) > NUM_SE * sd  # negative control
