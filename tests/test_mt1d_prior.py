"""The logit-normal prior of mt1d: exact density, draws that match it, the u parameterisation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.integrate import quad
from scipy.special import expit, logit

from inference.mcmc import nuts_sample
from ppl_cvae.errors import ConfigError, NoPriorDensityError, ShapeError
from ppl_cvae.problems import MT1D, make_problem
from ppl_cvae.problems.priors import BoundedGaussianField
from ppl_cvae.problems.priors.bounded_field import logit_normal_std
from tests.conftest import assert_spec_round_trip

# Two KS tests at a p-value threshold of 1e-4 each: suite false-alarm budget 2e-4.
KS_ALPHA = 1e-4


def _logit_normal_logpdf(x, lo, hi, m, s):
    """Closed form of a scaled logit-normal: N(logit(p); m, s) / ((hi - lo) p (1 - p))."""
    p = (np.asarray(x, dtype=np.float64) - lo) / (hi - lo)
    return stats.norm.logpdf(logit(p), m, s) - np.log((hi - lo) * p * (1 - p))


def test_one_cell_density_is_the_closed_form_logit_normal_and_integrates_to_one():
    field = BoundedGaussianField(
        ([0.0],), lower=-1.0, upper=3.0, median=0.2, std=0.6, correlation_length=1.0
    )
    m, s = field.latent_mean, field.latent_std
    assert math.isclose(m, logit(1.2 / 4.0), rel_tol=1e-12)  # the median maps to the latent mean
    xs = np.array([-0.999, -0.5, 0.2, 1.0, 2.9, 2.9999])
    ours = field.log_prob(torch.tensor(xs).unsqueeze(-1)).numpy()
    # one cell: the covariance carries the jitter, s^2 (1 + 1e-8); relative 5e-9 in s
    ref = _logit_normal_logpdf(xs, -1.0, 3.0, m, s * math.sqrt(1 + 1e-8))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)  # both float64 closed forms
    # normalised on (lo, hi): adaptive quadrature, its error estimate is < 1e-9
    dens = lambda t: math.exp(float(field.log_prob(torch.tensor([[t]]))))  # noqa: E731
    total, err = quad(dens, -1.0, 3.0, limit=200)
    assert err < 1e-8 and abs(total - 1.0) < 1e-7
    # the marginal sd is what was asked for (quadrature root, xtol 1e-14)
    assert abs(logit_normal_std(m, s, -1.0, 3.0) - 0.6) < 1e-10


def test_two_layer_density_is_bivariate_normal_in_logit_space_minus_log_jacobian():
    p = MT1D(
        num_layers=2,
        depth=300.0,
        prior_mean=1.5,
        prior_std=0.7,
        correlation_length=500.0,
        kernel="exponential",
        min_log10_rho=0.0,
        max_log10_rho=4.0,
    )
    field = p.field
    assert isinstance(field, BoundedGaussianField)
    m, s = field.latent_mean, field.latent_std
    r = math.exp(-300.0 / 500.0)
    cov = s**2 * np.array([[1 + 1e-8, r], [r, 1 + 1e-8]])
    g = torch.Generator().manual_seed(0)
    x = p.sample_prior(5, g).double()
    u = logit(x.numpy() / 4.0)
    ref = stats.multivariate_normal(mean=[m, m], cov=cov).logpdf(u) - np.log(
        4.0 * expit(u) * (1 - expit(u))
    ).sum(-1)
    # float32 draws evaluated in float64 on both sides: agreement to round-off
    np.testing.assert_allclose(p.log_prior(x).numpy(), ref, rtol=0, atol=1e-8)
    # negative control: the latent density without the Jacobian (log 4 p (1 - p), zero at the
    # midpoint, -1.3 nats per cell at p = 0.1) misses by more than 1 nat away from the middle
    no_jacobian = stats.multivariate_normal(mean=[m, m], cov=cov).logpdf(u)
    assert np.abs(p.log_prior(x).numpy() - no_jacobian).max() > 1.0


def test_expectations_by_draws_agree_with_importance_weights_of_the_density():
    # E_p[f] two ways for a 2-layer prior on (0, 4)^2: prior draws, and a uniform proposal on the
    # box reweighted by the density, w = p(x) * 16. If log_prior lacked a term (the Jacobian) or
    # a normalising constant, E[w] = 1 and the moments would be off.
    p = MT1D(num_layers=2, depth=200.0, prior_mean=1.0, prior_std=0.6, correlation_length=400.0)
    n = 200_000
    g = torch.Generator().manual_seed(1)
    draws = p.sample_prior(n, g).double()
    xu = 4.0 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    w = torch.exp(p.log_prior(xu)) * 16.0
    # E[w] = 1; MC standard error sd(w) / sqrt(n); 4 SE (false alarm 6e-5)
    se_w = float(w.std()) / math.sqrt(n)
    assert abs(float(w.mean()) - 1.0) < 4 * se_w
    for f in (lambda x: x[:, 0], lambda x: x[:, 0] * x[:, 1], lambda x: (x[:, 1] - 1.0) ** 2):
        a, b = f(draws), f(xu) * w
        # difference of two independent means: SE sqrt(var_a / n + var_b / n)
        se = math.sqrt(float(a.var()) / n + float(b.var()) / n)
        assert abs(float(a.mean()) - float(b.mean())) < 4 * se
    # negative control: dropping the Jacobian (the latent Gaussian density of u) breaks E[w] = 1
    field = p.field
    assert isinstance(field, BoundedGaussianField)
    u = torch.logit(xu / 4.0)
    w_bad = torch.exp(field.latent.log_prob(u)) * 16.0
    assert abs(float(w_bad.mean()) - 1.0) > 4 * float(w_bad.std()) / math.sqrt(n)


def test_draws_match_the_density_marginally_and_clipped_draws_do_not():
    p = MT1D(prior_mean=1.0, prior_std=0.6)  # median off-centre: mean != median
    field = p.field
    assert isinstance(field, BoundedGaussianField)
    m, s = field.latent_mean, field.latent_std * math.sqrt(1 + 1e-8)
    x = p.sample_prior(4000, torch.Generator().manual_seed(2)).double()
    assert ((x > 0) & (x < 4)).all()
    cdf = lambda v: stats.norm.cdf(logit(np.asarray(v) / 4.0), m, s)  # noqa: E731
    # top layer and half-space, exact one-sample KS against the closed-form CDF
    for j in (0, 31):
        assert stats.kstest(x[:, j].numpy(), cdf).pvalue > KS_ALPHA
    # moments by quadrature: mean below the median 1.0 is wrong, so compute it
    nodes, weights = np.polynomial.hermite_e.hermegauss(101)
    mean = float((weights / weights.sum() * 4.0 * expit(m + s * nodes)).sum())
    assert mean > 1.0  # logit of a median below the midpoint: right-skewed
    # mean within 4 SE (sd / sqrt(N)); sd within 4 SE, its SE sd sqrt((kurtosis - 1) / 4N)
    # being below sd / sqrt(N) for kurtosis < 5 (near 3 here)
    assert abs(float(x[:, 5].mean()) - mean) < 4 * 0.6 / math.sqrt(4000)
    assert abs(float(x[:, 5].std()) - 0.6) < 4 * 0.6 / math.sqrt(4000)
    # negative control: the clipped Gaussian field of the same mean and sd on (1, 3) piles
    # 2.3 % of its mass on each bound; KS against the logit-normal with those bounds rejects
    narrow = MT1D(prior_mean=2.0, prior_std=0.5, min_log10_rho=1.0, max_log10_rho=3.0)
    nf = narrow.field
    assert isinstance(nf, BoundedGaussianField)
    clipped = MT1D(
        prior_mean=2.0, prior_std=0.5, min_log10_rho=1.0, max_log10_rho=3.0, prior="clipped"
    ).sample_prior(4000, torch.Generator().manual_seed(3))
    ncdf = lambda v: stats.norm.cdf(  # noqa: E731
        logit((np.asarray(v) - 1.0) / 2.0), nf.latent_mean, nf.latent_std
    )
    assert stats.kstest(clipped[:, 0].double().numpy(), ncdf).pvalue < 1e-10
    assert not torch.isfinite(narrow.log_prior(clipped.double())).all()  # points on the bounds


def test_default_prior_keeps_the_clipped_fields_moments_and_correlation():
    p = MT1D()
    field = p.field
    assert isinstance(field, BoundedGaussianField)
    assert field.latent_mean == 0.0 and abs(field.latent_std - 0.53271) < 1e-5
    # correlation of neighbouring layers (200 m, matern52, l = 1000 m) by 2-D Gauss-Hermite
    s5 = math.sqrt(5) * 0.2
    r = (1 + s5 + s5 * s5 / 3) * math.exp(-s5)
    t, w = np.polynomial.hermite_e.hermegauss(81)
    w = w / w.sum()
    t1, t2 = np.meshgrid(t, t)
    u1 = field.latent_std * t1
    u2 = field.latent_std * (r * t1 + math.sqrt(1 - r * r) * t2)
    rx = float((np.outer(w, w) * (4 * expit(u1) - 2) * (4 * expit(u2) - 2)).sum()) / 0.25
    assert abs(rx - r) < 5e-4  # 0.96784 against the Gaussian field's 0.96799


def test_gradients_are_finite_near_and_on_the_bounds():
    p = MT1D(num_layers=4, depth=300.0)
    x = torch.tensor(
        [[1e-9, 2.0, 2.0, 4.0 - 1e-9], [2.0, 1e-3, 3.999, 2.0], [0.0, 2.0, 2.0, 2.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    lp = p.log_prior(x)
    assert torch.isfinite(lp[:2]).all() and lp[2].item() == -math.inf
    (grad,) = torch.autograd.grad(lp[:2].sum() + lp[2].clamp_min(-1e300), x)
    assert torch.isfinite(grad).all()
    assert (grad[2] == 0).all()  # outside the support: no gradient leaks from the median stand-in
    # near the lower bound the density of x falls toward 0 (the Jacobian wins): gradient > 0
    assert grad[0, 0] > 0 and grad[0, 3] < 0
    # in the unconstrained u the density is Gaussian: finite everywhere, even far out
    par = p.parameterisation()
    theta = torch.tensor([[-30.0, 0.0, 5.0, 30.0]], dtype=torch.float64, requires_grad=True)
    (g_theta,) = torch.autograd.grad(par.log_prior(theta).sum(), theta)
    assert torch.isfinite(g_theta).all()


def test_parameterisation_density_of_u_is_the_latent_gaussian():
    p = MT1D(num_layers=6, depth=1000.0)
    par = p.parameterisation()
    field = p.field
    assert isinstance(field, BoundedGaussianField) and par.has_prior_density and par.dim == 6
    theta = field.latent.sample(7, torch.Generator().manual_seed(4)).double()
    # change of variables: log p_x(T(u)) + log |T'(u)| = log N(u; m 1, s^2 R), exact up to the
    # float64 round trip x -> logit(x) (1e-9 on a few-nats value)
    torch.testing.assert_close(
        par.log_prior(theta), field.latent.log_prob(theta), rtol=0, atol=1e-8
    )
    x = par.to_x(theta.float())
    torch.testing.assert_close(par.from_x(x).double(), theta, rtol=0, atol=1e-4)  # float32
    # a draw a little outside the bounds (an amortized Gaussian draw) starts at logit(1e-6)
    out = par.from_x(torch.tensor([[-0.1, 4.2, 2.0, 2.0, 2.0, 2.0]]))
    assert torch.isfinite(out).all() and abs(float(out[0, 0]) - math.log(1e-6 / (1 - 1e-6))) < 1e-3
    # the legacy clipped prior has no parameterisation and no density
    clipped = MT1D(num_layers=6, depth=1000.0, prior="clipped")
    assert clipped.parameterisation() is None and not clipped.has_prior_density
    with pytest.raises(NoPriorDensityError, match="clip puts point masses"):
        clipped.log_prior(torch.full((6,), 2.0))


def test_spec_records_the_prior_and_legacy_specs_load():
    for prior in ("logit_normal", "clipped"):
        p = MT1D(num_layers=5, depth=800.0, prior=prior)
        assert p.spec()["prior"] == prior
        q = assert_spec_round_trip(p, num=3)
        assert q.has_prior_density == (prior == "logit_normal")
    legacy = MT1D(num_layers=5, depth=800.0).spec()
    del legacy["prior"]  # a run saved before the logit-normal prior
    assert make_problem(legacy.pop("name"), **legacy).prior == "logit_normal"


def test_errors():
    with pytest.raises(ConfigError, match="unknown prior 'gaussian'"):
        MT1D(prior="gaussian")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="median 4.5 must lie strictly inside"):
        MT1D(prior_mean=4.5)
    with pytest.raises(ConfigError, match=r"std must be in \(0, 1.87"):
        MT1D(prior_std=1.9)
    MT1D(prior_mean=4.5, prior="clipped")  # the legacy prior needs no median inside
    with pytest.raises(ShapeError, match=r"x must have shape \(\*batch, 32\), got \(3, 5\)"):
        MT1D().log_prior(torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="num must be >= 0"):
        MT1D().sample_prior(-1)


class _PriorOnly(MT1D):
    """MT1D with a flat likelihood: its posterior is the logit-normal prior."""

    def log_likelihood(self, x, y):
        return x.double().sum(-1) * 0.0


@pytest.mark.slow  # NUTS: 2 chains x 300 iterations, about 20 s on an idle core
def test_nuts_in_u_samples_the_logit_normal_prior_when_the_data_say_nothing():
    """NUTS on u (the parameterisation, Jacobian included) must reproduce the prior of x:
    per-layer mean and sd within 4 Monte Carlo standard errors (sd / sqrt(ESS) for the mean,
    sd sqrt(2 / ESS) relative for the sd, kurtosis near 3), quadrature values as the truth.
    Without the Jacobian NUTS would sample the density p_x(T(u)) in u, not N(u; m, s^2 R)."""
    p = _PriorOnly(num_layers=3, depth=400.0, prior_mean=1.0, prior_std=0.6)
    field = p.field
    assert isinstance(field, BoundedGaussianField)
    init = p.sample_prior(200, torch.Generator().manual_seed(0))
    result = nuts_sample(
        p, torch.zeros(*p.y_shape), init, num_samples=200, warmup_steps=100, num_chains=2, seed=0
    )
    assert result.divergences == 0 and result.rhat < 1.05
    x = result.x.reshape(-1, 3).double()
    assert ((x > 0) & (x < 4)).all()
    nodes, weights = np.polynomial.hermite_e.hermegauss(101)
    mean = float(
        (weights / weights.sum() * 4.0 * expit(field.latent_mean + field.latent_std * nodes)).sum()
    )
    n_e = result.min_ess
    assert n_e > 100
    assert (x.mean(0) - mean).abs().max() < 4 * 0.6 / n_e**0.5
    assert (x.std(0) / 0.6 - 1).abs().max() < 4 * (2 / n_e) ** 0.5
