"""The Problem base class: defaults, duck-typed adapters, noise model, likelihood and prior.

Known answers: the Gaussian log-densities are compared with the formula evaluated by hand
(numpy, float64), the random-field priors with ``torch.distributions.MultivariateNormal`` on
the exact prior covariance; Monte Carlo checks allow 4 standard errors (two-sided false alarm
about 6e-5 each) and each has a negative control that must fail them.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.refine import refine_by_misfit
from ppl_cvae import CVAE, ModelConfig
from ppl_cvae.config import Overrides
from ppl_cvae.errors import (
    ConfigError,
    NoDensityError,
    NoLikelihoodError,
    NoPriorDensityError,
    ShapeError,
)
from ppl_cvae.problems import (
    MT1D,
    REGISTRY,
    Crosshole,
    Gravity,
    LinearGaussian,
    Problem,
    TwoBirds,
    make_problem,
)
from ppl_cvae.problems.base import (
    ProblemAdapter,
    as_problem,
    check_problem,
    derived_quantities,
    linear_gaussian_parts,
    noise_covariance,
    noise_scale,
    sample_noise,
    units_of,
    whiten,
)
from ppl_cvae.problems.noise import GaussianNoise
from ppl_cvae.problems.parameterisation import Parameterisation
from ppl_cvae.problems.two_birds import EndpointTransform, endpoints_from_lines
from tests.conftest import SCALED_PROBLEM_SOURCE

LOG_2PI = math.log(2 * math.pi)


def _hand_gaussian_log_density(r: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``log N(r; 0, C)`` row by row: ``-0.5 r^T C^-1 r - 0.5 log det(2 pi C)`` (numpy)."""
    m = cov.shape[0]
    quad = np.einsum("...i,...i->...", r, np.linalg.solve(cov, r[..., None])[..., 0])
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * quad - 0.5 * logdet - 0.5 * m * LOG_2PI


def _spd(m: int, seed: int) -> torch.Tensor:
    """A well-conditioned random covariance ``(m, m)`` with correlations, float64."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, m, generator=gen, dtype=torch.float64)
    return 0.04 * (a @ a.T / m + 0.5 * torch.eye(m, dtype=torch.float64))


# --------------------------------------------------------------------------- noise model
@pytest.mark.parametrize("batch", [(), (1,), (3,), (2, 4)])
def test_diagonal_log_likelihood_is_the_gaussian_density(batch, seed):
    problem = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(*batch, 4, generator=gen, dtype=torch.float64)
    got = problem.log_likelihood(x, y)
    assert got.shape == batch and got.dtype == torch.float64
    r = (y - x @ problem.matrix.double().T).numpy()
    hand = (-0.5 * (r / 0.3) ** 2 - math.log(0.3) - 0.5 * LOG_2PI).sum(-1)
    np.testing.assert_allclose(got.numpy(), hand, rtol=1e-6)
    # the per-datum terms sum to the total
    pointwise = problem.log_likelihood_pointwise(x, y)
    assert pointwise.shape == (*batch, 4)
    np.testing.assert_allclose(pointwise.sum(-1).numpy(), got.numpy(), rtol=1e-12)


def test_full_covariance_log_likelihood_is_the_gaussian_density(seed):
    problem = LinearGaussian(x_dim=3, y_dim=5, noise_std=0.3)
    cov = _spd(5, seed)
    problem.noise_cov = cov
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    got = problem.log_likelihood(x, y)
    r = (y - x @ problem.matrix.double().T).numpy()
    np.testing.assert_allclose(got.numpy(), _hand_gaussian_log_density(r, cov.numpy()), rtol=1e-6)
    # and torch's own multivariate normal agrees
    mvn = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=torch.float64), cov)
    np.testing.assert_allclose(got.numpy(), mvn.log_prob(torch.from_numpy(r)).numpy(), rtol=1e-9)
    # correlated noise has no per-datum factorisation: the pointwise terms are the
    # leave-one-out conditionals log p(y_i | y_-i, x) = joint - log N(y_-i; F(x)_-i, C_-i,-i)
    # (float64 throughout: 1e-9 relative is far above rounding), and do not sum to the joint
    pointwise = problem.log_likelihood_pointwise(x, y)
    assert pointwise.shape == (7, 5) and pointwise.dtype == torch.float64
    c = cov.numpy()
    for i in range(5):
        rest = [j for j in range(5) if j != i]
        marginal = _hand_gaussian_log_density(r[:, rest], c[np.ix_(rest, rest)])
        np.testing.assert_allclose(pointwise[:, i].numpy(), got.numpy() - marginal, rtol=1e-9)
    assert not np.allclose(pointwise.sum(-1).numpy(), got.numpy(), rtol=1e-3)


def test_mt1d_diagonal_covariance_pointwise_sums_to_the_total(seed):
    problem = MT1D(num_layers=6, depth=500.0, frequencies=[0.1, 1.0, 10.0])
    x = problem.sample_prior(5, torch.Generator().manual_seed(seed)).double()
    _, y = problem.simulate(5, torch.Generator().manual_seed(seed + 1))
    draws = x[:, None].expand(5, 5, 6)  # (S, M, N) against y (M, 2, 3): broadcast
    total = problem.log_likelihood(draws, y)
    pointwise = problem.log_likelihood_pointwise(draws, y)
    assert total.shape == (5, 5) and pointwise.shape == (5, 5, 2, 3)
    np.testing.assert_allclose(pointwise.sum((-2, -1)).numpy(), total.numpy(), rtol=1e-12)
    r = (y.double() - problem.forward(draws)).reshape(5, 5, 6).numpy()
    hand = _hand_gaussian_log_density(r, problem.noise_cov.numpy())
    np.testing.assert_allclose(total.numpy(), hand, rtol=1e-6)


def test_whitened_noise_draws_are_standard_normal(seed):
    # N draws of L^-1 eps for eps ~ N(0, C): every component N(0, 1), so the mean square of
    # its m N values is 1 with standard error sqrt(2 / (m N)); allow 4 of them
    noise = GaussianNoise((2, 3), cov=_spd(6, seed))
    num = 4000
    white = noise.whiten(noise.sample((num,), torch.Generator().manual_seed(seed))).double()
    se = math.sqrt(2 / (6 * num))
    assert abs(float(white.square().mean()) - 1) < 4 * se
    # cross-correlations vanish: each off-diagonal mean product has sd 1 / sqrt(N)
    flat = white.reshape(num, 6)
    corr = flat.T @ flat / num - torch.eye(6, dtype=torch.float64)
    assert float(corr.abs().max()) < 4.5 / math.sqrt(num)  # 4 SE, widened for 36 entries
    # negative control: the same draws whitened with too small a covariance fail
    wrong = GaussianNoise((2, 3), cov=0.5 * noise.covariance())
    too_big = wrong.whiten(noise.sample((num,), torch.Generator().manual_seed(seed))).double()
    assert abs(float(too_big.square().mean()) - 1) > 4 * se


def test_noise_helpers_delegate_to_the_noise_model():
    problem = MT1D(num_layers=4, depth=300.0, frequencies=[1.0, 10.0])
    noise = problem.noise
    assert torch.equal(noise_covariance(problem), noise.covariance())
    assert torch.equal(noise_scale(problem), noise.stddev())
    a = sample_noise(problem, (3,), torch.Generator().manual_seed(1))
    b = noise.sample((3,), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 2, 2) and a.dtype == torch.float32
    r = torch.randn(3, 2, 2)
    assert torch.equal(whiten(problem, r), noise.whiten(r))
    lg = LinearGaussian(noise_std=0.5)
    assert torch.equal(noise_covariance(lg), 0.25 * torch.eye(2, dtype=torch.float64))
    assert torch.equal(noise_scale(lg), torch.full((2,), 0.5))


def test_simulate_draws_the_same_stream_as_before(seed):
    # y = A x + noise_std * e with x, e drawn in this order from the generator
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.5, prior_std=2.0)
    x, y = problem.simulate(4, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    x_ref = 2.0 * torch.randn(4, 3, generator=gen)
    y_ref = x_ref @ problem.matrix.T + 0.5 * torch.randn(4, 2, generator=gen)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    # a full covariance draws L e in float64
    mt = MT1D(num_layers=4, depth=300.0, frequencies=[1.0, 10.0])
    x, y = mt.simulate(3, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    x_ref = mt.sample_prior(3, gen)
    e = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    eps = (e @ torch.linalg.cholesky(mt.noise_cov).T).to(torch.float32).reshape(3, 2, 2)
    assert torch.equal(x, x_ref) and torch.equal(y, mt.forward(x_ref) + eps)


def test_noise_free_problem_has_no_likelihood():
    problem = TwoBirds()
    assert problem.noise.is_zero
    assert torch.equal(problem.noise.covariance(), torch.zeros(100, 100, dtype=torch.float64))
    x = problem.sample_prior(2)
    with pytest.raises(NoLikelihoodError, match="'two_birds' is noise-free"):
        problem.log_likelihood(x, problem.forward(x))
    with pytest.raises(NoLikelihoodError, match="noise-free"):
        problem.log_likelihood_pointwise(x, problem.forward(x))
    with pytest.raises(NoLikelihoodError, match="noise is zero"):
        problem.noise.whiten(torch.zeros(1, 50, 2))
    # misfits are still whitened, by the nominal scale
    assert torch.equal(whiten(problem, torch.ones(1, 50, 2)), torch.full((1, 50, 2), 20.0))
    assert isinstance(NoLikelihoodError("x"), NoDensityError)


def test_shape_errors_name_the_expected_shape():
    problem = LinearGaussian(x_dim=3, y_dim=2)
    with pytest.raises(ShapeError, match=r"y must have shape \(\*batch, 2\), got \(4, 3\)"):
        problem.log_likelihood(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ShapeError, match=r"x must have shape \(\*batch, 3\)"):
        problem.log_likelihood(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ShapeError, match=r"noise_cov must have shape \(2, 2\), got \(3, 3\)"):
        GaussianNoise((2,), cov=torch.eye(3))
    with pytest.raises(ConfigError, match="std must be a finite number >= 0"):
        GaussianNoise((2,), std=-1.0)
    with pytest.raises(ShapeError, match="residual must have shape"):
        GaussianNoise((2,), std=1.0).log_prob(torch.zeros(3))


# --------------------------------------------------------------------------- priors
def _grf_problems() -> list[Problem]:
    return [
        Crosshole(num_depth_cells=6, num_offset_cells=5, num_sources=3, num_receivers=3),
        Crosshole(
            num_depth_cells=5, num_offset_cells=4, num_sources=2, num_receivers=2, kernel="gaussian"
        ),
        Gravity(num_depth_cells=4, num_offset_cells=6, num_stations=5),
        LinearGaussian(x_dim=4, y_dim=3, prior_std=1.7),
    ]


@pytest.mark.parametrize("problem", _grf_problems(), ids=lambda p: p.name)
def test_gaussian_log_prior_is_the_exact_multivariate_normal(problem, seed):
    assert problem.has_prior_density
    parts = linear_gaussian_parts(problem)
    assert parts is not None
    mvn = torch.distributions.MultivariateNormal(parts.prior_mean, parts.prior_cov)
    x = problem.sample_prior(6, torch.Generator().manual_seed(seed)).double()
    got = problem.log_prior(x)
    assert got.shape == (6,) and got.dtype == torch.float64
    want = mvn.log_prob(x.reshape(6, -1))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    single = problem.log_prior(x[0])  # no batch axis
    assert single.shape == () and float(single) == pytest.approx(float(want[0]), rel=1e-6)


@pytest.mark.parametrize("problem", _grf_problems(), ids=lambda p: p.name)
def test_mean_log_prior_of_prior_draws_is_minus_the_entropy(problem, seed):
    # E[log p(x)] = -H = -(n/2)(1 + log 2 pi) - (1/2) log det C under x ~ p; the sample mean
    # of N draws has standard error sd(log p) / sqrt(N) (sd = sqrt(n / 2) in theory)
    parts = linear_gaussian_parts(problem)
    assert parts is not None
    entropy = float(
        torch.distributions.MultivariateNormal(parts.prior_mean, parts.prior_cov).entropy()
    )
    num = 2000
    x = problem.sample_prior(num, torch.Generator().manual_seed(seed))
    log_p = problem.log_prior(x)
    se = float(log_p.std()) / math.sqrt(num)
    assert abs(float(log_p.mean()) + entropy) < 4 * se
    # negative control: draws 10 % too wide around the mean fail it
    mean = parts.prior_mean.reshape(problem.x_shape)
    wide = mean + 1.1 * (x.double() - mean)
    assert abs(float(problem.log_prior(wide).mean()) + entropy) > 4 * se


def test_simulator_only_priors_raise_the_clear_error():
    channels = Crosshole(prior="channels", num_depth_cells=4, num_offset_cells=4)
    assert not channels.has_prior_density
    with pytest.raises(NoPriorDensityError, match="channel prior.*generator only"):
        channels.log_prior(torch.zeros(4, 4))
    mt = MT1D(num_layers=4, prior="clipped")  # the legacy clipped field (the default has one)
    assert not mt.has_prior_density
    with pytest.raises(NoPriorDensityError, match="clipped.*point masses"):
        mt.log_prior(torch.zeros(4))
    assert isinstance(NoPriorDensityError("x"), (NoDensityError, ValueError))


# --------------------------------------------------------------------------- Two Birds prior
def test_two_birds_endpoint_density_is_the_sampler_density_by_change_of_variables(seed):
    # u ~ standard logistic (density known, normalised) is pushed onto the endpoints by T;
    # p_e(T(u)) |det J_T(u)| must equal the logistic density, with J_T from autograd (not from
    # the closed form), so p_e integrates to one over the support T maps onto
    problem = TwoBirds()
    transform = EndpointTransform()
    u = 2.0 * torch.randn(50, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(transform, ui) for ui in u])
    log_det = torch.linalg.slogdet(jac).logabsdet
    logistic = (torch.nn.functional.logsigmoid(u) + torch.nn.functional.logsigmoid(-u)).sum(-1)
    endpoints = transform(u)
    np.testing.assert_allclose(
        (problem.log_prior_endpoints(endpoints) + log_det).numpy(), logistic.numpy(), rtol=1e-6
    )
    # the closed-form Jacobian and the parameterisation's density agree with autograd
    np.testing.assert_allclose(
        transform.log_abs_det_jacobian(u, endpoints).numpy(), log_det.numpy(), rtol=1e-9
    )
    par = problem.parameterisation()
    assert par is not None and par.has_prior_density
    np.testing.assert_allclose(par.log_prior(u).numpy(), logistic.numpy(), rtol=1e-6, atol=1e-9)


def test_two_birds_prior_fractions_are_uniform_and_the_density_is_constant_on_them(seed):
    # The sampler draws s ~ U([0, 1]^4) and maps them affinely (triangular) onto endpoints:
    # in the coordinates s the density is 1 = 1 / volume([0, 1]^4), i.e. log p_e(e) plus
    # log |det de/ds| (autograd) is 0 for every draw; the fractions of the draws are uniform
    # (mean 1/2, variance 1/12 each; 4 standard errors)
    problem = TwoBirds()
    num = 4000
    e = problem.sample_endpoints(num, torch.Generator().manual_seed(seed)).double()
    x0_start, x0_end, x1_start, x1_end = e.unbind(-1)
    s = torch.stack(
        [
            (x0_end - 0.1) / 0.9,
            (x0_start - x0_end) / (1 - x0_end),
            (x1_start - 0.1) / 0.9,
            (x1_end - x1_start) / (1 - x1_start),
        ],
        dim=-1,
    )
    assert float((s.mean(0) - 0.5).abs().max()) < 4 * math.sqrt(1 / 12 / num)
    # the sample variance has variance (mu_4 - sigma^4) / N = (1/80 - 1/144) / N = 1 / (180 N)
    assert float((s.var(0) - 1 / 12).abs().max()) < 4 * math.sqrt(1 / 180 / num)

    def endpoints_of(f: torch.Tensor) -> torch.Tensor:  # the sampler's map s -> e
        x0e = 0.1 + 0.9 * f[0]
        x1s = 0.1 + 0.9 * f[2]
        return torch.stack([x0e + (1 - x0e) * f[1], x0e, x1s, x1s + (1 - x1s) * f[3]])

    log_det = torch.stack(
        [torch.linalg.slogdet(torch.autograd.functional.jacobian(endpoints_of, f)).logabsdet
         for f in s[:200]]
    )
    log_p = problem.log_prior_endpoints(e[:200])
    np.testing.assert_allclose((log_p + log_det).numpy(), 0.0, atol=1e-9)


def test_two_birds_mean_log_prior_is_minus_the_entropy(seed):
    # H = 4 log 0.9 - 2 nats (each E[log(1 - U(0.1, 1))] = log 0.9 - 1); 4 standard errors
    problem = TwoBirds()
    num = 20000
    x = problem.sample_prior(num, torch.Generator().manual_seed(seed))
    log_p = problem.log_prior(x)
    assert bool(torch.isfinite(log_p).all())
    entropy = 4 * math.log(0.9) - 2
    se = float(log_p.std()) / math.sqrt(num)
    assert abs(float(log_p.mean()) + entropy) < 4 * se
    # negative control: a density uniform on the endpoint constraints (-log of its volume,
    # (0.9^2 / 2)^2) is not the prior's; its mean differs by many standard errors
    uniform = -2 * math.log(0.9**2 / 2)
    assert abs(uniform + entropy) > 40 * se


def test_two_birds_prior_is_zero_off_its_support():
    problem = TwoBirds()
    x = problem.sample_prior(3, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(problem.log_prior(x)).all())
    rising = x.clone()
    rising[..., 0] = x[..., 0].flip(-1)  # x0 ascending: violates the prior's order
    assert bool(torch.isneginf(problem.log_prior(rising)).all())
    bent = x.clone()
    bent[..., 25, 1] += 0.01  # no longer a straight line
    assert bool(torch.isneginf(problem.log_prior(bent)).all())
    low = torch.tensor([[0.5, 0.05, 0.2, 0.3]])  # x0(1) below 0.1
    assert bool(torch.isneginf(problem.log_prior_endpoints(low)).all())
    with pytest.raises(ShapeError, match=r"x must end in shape \(1, 50, 2\)"):
        problem.log_prior(torch.zeros(50, 2))


# --------------------------------------------------------------------------- parameterisation
def test_parameterisation_round_trip_and_the_decoder_share_it(seed):
    problem = TwoBirds()
    par = problem.parameterisation()
    assert isinstance(par, Parameterisation) and par.dim == 4
    theta = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(seed))
    x = par.to_x(theta)
    assert x.shape == (5, 3, 1, 50, 2)
    np.testing.assert_allclose(par.from_x(x).numpy(), theta.numpy(), atol=1e-3)
    np.testing.assert_allclose(
        par.coefficients(theta).numpy(), endpoints_from_lines(x).numpy(), atol=1e-5
    )
    config = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        basis_dim=4,
        constrained_coefficients=True,
        latent_dim=2,
        hidden_dims=(8,),
    )
    cvae = CVAE(config, basis=problem.basis(), coefficient_transform=EndpointTransform())
    decoder = cvae.parameterisation()
    assert decoder is not None
    assert torch.equal(cvae.x_from_coefficients(theta), x)
    assert torch.equal(decoder.to_x(theta), x)
    assert torch.equal(cvae.coefficients_of(x), par.from_x(x))
    plain = CVAE(ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(4,)))
    assert plain.parameterisation() is None
    with pytest.raises(ShapeError, match=r"theta must have shape \(\*batch, 4\)"):
        par.to_x(torch.zeros(3))
    assert LinearGaussian().parameterisation() is None


def test_refinement_keeps_draws_in_the_parameterisation(seed):
    from inference.posterior import PosteriorDraws

    problem = TwoBirds()
    x_true, y = problem.simulate(2, torch.Generator().manual_seed(seed))
    start = problem.sample_prior(6, torch.Generator().manual_seed(seed + 1)).reshape(3, 2, 1, 50, 2)
    draws = PosteriorDraws(x=start, z=torch.zeros(3, 2, 1), y_rep=None, decoder_noise=False)
    refined = refine_by_misfit(draws, y, problem, num_steps=5)
    assert bool(torch.isfinite(problem.log_prior(refined.x)).all())  # prior-valid line pairs


# --------------------------------------------------------------------------- base class
class Bare(Problem):
    """A subclass that defines the required members only."""

    name = "bare"
    x_shape = (2,)
    y_shape = (3,)
    x_dims = ("parameter",)
    y_dims = ("datum",)
    coords: dict[str, list[int]] = {}
    noise_std = 0.2
    misfit_std = 0.2

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(num, 2, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., 0], x[..., 1], x.sum(-1)], dim=-1)


def test_one_noise_sd_per_datum_is_pointed_to_noise_cov():
    """A tensor of per-datum sds as ``noise_std`` (heteroscedastic data) was refused without
    saying how to give them (the own-problem audit)."""

    class PerDatum(Bare):
        noise_std = torch.full((3,), 0.2)  # type: ignore[assignment]

    with pytest.raises(ConfigError, match=r"noise_std must be .*give noise_cov.*diag"):
        check_problem(PerDatum(), "test")


def test_a_subclass_that_overrides_nothing_optional_gets_the_defaults(seed):
    p = Bare()
    assert check_problem(p, "test") is p and as_problem(p) is p
    assert dict(p.units) == {} and dict(p.extra_coords) == {} and dict(p.coord_attrs) == {}
    assert p.noise_cov is None and not p.has_prior_density
    assert p.linear_gaussian() is None and linear_gaussian_parts(p) is None
    assert p.recommended_settings() == Overrides()
    assert p.derived(torch.zeros(2)) == {} and derived_quantities(p, torch.zeros(4, 2)) == {}
    assert p.basis() is None and p.coefficient_transform() is None and p.parameterisation() is None
    assert units_of(p) == {}
    with pytest.raises(NoPriorDensityError, match="'bare' .*no prior density"):
        p.log_prior(torch.zeros(2))
    with pytest.raises(ConfigError, match="defines no spec"):
        p.spec()
    # the default simulate: x, then F(x) + noise_std * e from the same generator
    x, y = p.simulate(4, torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    x_ref = torch.randn(4, 2, generator=gen)
    assert torch.equal(x, x_ref)
    assert torch.equal(y, p.forward(x_ref) + 0.2 * torch.randn(4, 3, generator=gen))
    r = (y - p.forward(x)).double().numpy()
    hand = (-0.5 * (r / 0.2) ** 2 - math.log(0.2) - 0.5 * LOG_2PI).sum(-1)
    np.testing.assert_allclose(p.log_likelihood(x, y).numpy(), hand, rtol=1e-6)


def test_defaults_are_not_shared_mutable_state():
    with pytest.raises(TypeError):
        Bare().units["x"] = "m"  # type: ignore[index]


def test_a_subclass_without_forward_cannot_be_built():
    class NoForward(Problem):
        name = "broken"

        def sample_prior(self, num, generator=None):
            return torch.zeros(num, 1)

    with pytest.raises(TypeError, match="abstract"):
        NoForward()  # type: ignore[abstract]


def test_a_subclass_missing_a_required_member_is_named():
    class NoDims(Problem):  # forgets y_dims and misfit_std, which Problem only annotates
        name, x_shape, y_shape, x_dims, coords, noise_std = "no_dims", (1,), (1,), ("p",), {}, 0.1
        sample_prior = Bare.sample_prior
        forward = Bare.forward

    with pytest.raises(ConfigError, match="lacks y_dims, misfit_std"):
        check_problem(NoDims(), "test")


def test_nuts_preconditioner_is_checked_and_defaults_to_amortized():
    """A problem's ``nuts_preconditioner`` (the CLI's ``--preconditioner`` default) must be one
    of the choices; without one it is ``"amortized"``, for subclasses and duck-typed objects."""
    assert Bare().nuts_preconditioner == "amortized"
    assert ProblemAdapter(object()).nuts_preconditioner == "amortized"
    p = Bare()
    p.nuts_preconditioner = "whitened"
    with pytest.raises(ConfigError, match="nuts_preconditioner must be one of amortized, prior, "
                       "prior-amortized: 'whitened'"):
        check_problem(p, "test")
    assert MT1D().nuts_preconditioner == "prior-amortized"
    assert MT1D(prior="clipped").nuts_preconditioner == "amortized"


def test_every_builtin_problem_subclasses_problem():
    for name, factory in REGISTRY.items():
        problem = factory()
        assert isinstance(problem, Problem), name
        assert check_problem(problem, name) is problem


# --------------------------------------------------------------------------- duck typing
DUCK_MODULE = '''
"""A user's duck-typed problem module (written by the test)."""
import torch


''' + SCALED_PROBLEM_SOURCE + '''

Scaled = ScaledProblem


class WithPrior(Scaled):
    units = {"x": "m", "y": "s"}

    def log_prior(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(-1)


def make(**kwargs):
    return Scaled(**kwargs)
'''
_COUNTER = itertools.count()


@pytest.fixture
def duck_module(tmp_path, monkeypatch):
    """Name of a freshly written duck-typed user module importable from a temporary folder."""
    name = f"ppl_cvae_test_duck_problem_{next(_COUNTER)}"
    (tmp_path / f"{name}.py").write_text(DUCK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_duck_typed_problem_loads_by_reference_and_gets_the_defaults(duck_module, seed):
    p = make_problem(f"{duck_module}:make", dim=3, scale=4.0)
    assert isinstance(p, ProblemAdapter) and isinstance(p, Problem)
    assert p.x_shape == (3,) and p.scale == 4.0  # required and extra members read through
    assert repr(p).startswith("<") and "Scaled" in repr(p)
    assert dict(p.units) == {} and p.noise_cov is None and not p.has_prior_density
    assert p.linear_gaussian() is None and p.derived(torch.zeros(3)) == {}
    assert p.recommended_settings() == Overrides() and p.parameterisation() is None
    with pytest.raises(NoPriorDensityError, match="'scaled'"):
        p.log_prior(torch.zeros(3))
    x, y = p.simulate(5, torch.Generator().manual_seed(seed))  # its own simulate
    r = (y - 4.0 * x).double().numpy()
    hand = (-0.5 * (r / 0.1) ** 2 - math.log(0.1) - 0.5 * LOG_2PI).sum(-1)
    np.testing.assert_allclose(p.log_likelihood(x, y).numpy(), hand, rtol=1e-6)
    clone = copy.deepcopy(p)  # an adapter copies (and pickles) like its object
    assert isinstance(clone, ProblemAdapter) and clone.scale == 4.0 and clone is not p
    p.scale = 5.0  # attributes are written to the wrapped object
    assert p.wrapped.scale == 5.0 and float(p.forward(torch.ones(3))[0]) == 5.0
    assert check_problem(p, "again") is p and as_problem(p) is p


def test_duck_typed_optional_members_are_used(duck_module):
    module = __import__(duck_module)
    p = make_problem(f"{duck_module}:WithPrior", dim=2)
    assert p.has_prior_density and units_of(p) == {"x": "m", "y": "s"}
    x = torch.randn(4, 2)
    want = torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(-1)
    assert torch.equal(p.log_prior(x), want)
    # helpers and entry points accept the raw object too
    raw = module.WithPrior(dim=2)
    assert units_of(raw) == {"x": "m", "y": "s"}
    assert torch.equal(noise_scale(raw), torch.full((2,), 0.1))
    assert isinstance(as_problem(raw), ProblemAdapter)
    with pytest.raises(ConfigError, match="lacks name"):
        as_problem(42)


def test_correlated_noise_whitens_many_residuals_without_a_factor_per_residual():
    """``whiten`` and ``log_prob`` of ``N`` residuals of ``m`` correlated data solve with all
    residuals in one right-hand side: the factor was broadcast to one ``m x m`` copy per
    residual (for m = 1000 and 500 residuals, 4 GB). Run in a fresh process whose peak
    resident memory must stay under 1 GiB (torch and the 8 MB factor need about 400 MB); the
    values match ``MultivariateNormal`` (float64, 1e-9 relative)."""
    import subprocess

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc/self/status for a process's peak memory")
    code = """
import torch
from ppl_cvae.problems.noise import GaussianNoise
m, n = 1000, 500
i = torch.arange(m, dtype=torch.float64)
cov = 0.01 * 0.9 ** (i[:, None] - i[None, :]).abs()
noise = GaussianNoise((m,), cov=cov)
r = torch.randn(n, m, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
lp = noise.log_prob(r)
chi2 = noise.whiten(r).square().sum(-1)
mvn = torch.distributions.MultivariateNormal(torch.zeros(m, dtype=torch.float64), cov)
assert torch.allclose(lp, mvn.log_prob(r), rtol=1e-9), (lp - mvn.log_prob(r)).abs().max()
assert torch.allclose(chi2, -2 * (lp - mvn.log_prob(torch.zeros(m, dtype=torch.float64))),
                      rtol=1e-9)
# VmHWM: this process image's own peak (ru_maxrss would carry over the pytest worker's
# resident size from the fork before exec)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(hwm[0].split()[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, check=True)
    peak_kib = int(out.stdout.split()[-1])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
