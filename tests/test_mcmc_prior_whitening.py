"""NUTS whitened by the prior's Cholesky factor (``precondition="prior"``, ``"prior-amortized"``).

Known answer: a linear forward operator with a correlated Gaussian prior, whose posterior is
Gaussian in closed form (:func:`inference.exact.exact_posterior`). Negative control: a problem
that states a Gaussian prior shifted from its true one must be caught by the same check (the
whitened sampler evaluates the prior through ``gaussian_prior()``).
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from inference.exact import exact_posterior
from inference.mcmc import PRECONDITIONERS, _preconditioner, nuts_sample
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems import make_problem
from ppl_cvae.problems.base import LinearGaussianParts, Problem

X_DIM, Y_DIM = 6, 2


class _CorrelatedLinear(Problem):
    """``y = A x + eps``, ``x ~ N(m, S)`` with ``S_ij = 0.95^|i - j|`` (a smooth 1-D field).

    The prior is much wider than the posterior in the 2 directions the data inform and equal
    to it in the other 4; its smallest eigenvalue is 0.026 (sd 0.16).
    """

    name = "correlated_linear"
    x_shape, y_shape = (X_DIM,), (Y_DIM,)
    x_dims, y_dims = ("parameter",), ("datum",)
    coords: dict = {}
    noise_std = misfit_std = 0.3
    has_prior_density = True

    def __init__(self, prior_shift: torch.Tensor | None = None) -> None:
        idx = torch.arange(X_DIM, dtype=torch.float64)
        self.cov = 0.95 ** (idx[:, None] - idx[None, :]).abs()
        self.mean = torch.linspace(-0.5, 0.5, X_DIM, dtype=torch.float64)
        self.matrix = torch.randn(Y_DIM, X_DIM, generator=torch.Generator().manual_seed(3))
        # not None: the prior's mean moves, but linear_gaussian() (the closed form) does
        # not (the negative control)
        self.prior_shift = torch.zeros(X_DIM) if prior_shift is None else prior_shift

    def sample_prior(self, num, generator=None):
        e = torch.randn(num, X_DIM, generator=generator, dtype=torch.float64)
        return (self.mean + e @ torch.linalg.cholesky(self.cov).T).float()

    def forward(self, x):
        return x @ self.matrix.to(x.dtype).T

    def log_prior(self, x):
        return MultivariateNormal(self.mean + self.prior_shift.double(), self.cov).log_prob(
            x.double()
        )

    def linear_gaussian(self):
        return LinearGaussianParts(
            self.matrix.double(), self.mean, self.cov, self.noise_std**2 * torch.eye(Y_DIM)
        )

    def gaussian_prior(self):
        return MultivariateNormal(self.mean + self.prior_shift.double(), self.cov)


def _mc_errors(draws, exact_mean, exact_var):
    """Largest errors of the posterior mean and variance, each in Monte Carlo standard errors.

    The standard error of the average of ``f`` over autocorrelated draws is
    ``sd(f) / sqrt(ESS_f)`` with ``ESS_f`` ArviZ's mean-ESS of ``f`` (Vehtari et al. 2021):
    ``f = x`` for the mean, ``f = (x - exact_mean)^2`` (whose average estimates the variance)
    for the variance.
    """
    draws = draws.double().numpy()  # (chains, draws, dim)
    mean, var = exact_mean.numpy(), exact_var.numpy()
    sq = (draws - mean) ** 2
    ess_mean = az.ess(az.convert_to_dataset({"f": draws}), method="mean")["f"].values
    ess_sq = az.ess(az.convert_to_dataset({"f": sq}), method="mean")["f"].values
    se_mean = np.sqrt(var / ess_mean)
    se_var = sq.reshape(-1, X_DIM).std(0) / np.sqrt(ess_sq)
    err_mean = np.abs(draws.reshape(-1, X_DIM).mean(0) - mean) / se_mean
    err_var = np.abs(sq.reshape(-1, X_DIM).mean(0) - var) / se_var
    return float(err_mean.max()), float(err_var.max()), float(min(ess_mean.min(), ess_sq.min()))


def _amortized_stand_in(problem, y, num=400):
    """Exact posterior draws plus white noise of sd 0.3: like a decoder's per-cell noise.

    In prior-whitened coordinates the noise is amplified in the prior's rough directions
    (variance 0.3^2 / 0.026 = 3.5 there, against a posterior variance near the prior's, 1),
    which is what ``"prior-amortized"`` must not take for posterior spread.
    """
    exact = exact_posterior(problem, y)
    gen = torch.Generator().manual_seed(1)
    draws = exact.sample(num, gen)[:, 0]
    return draws + 0.3 * torch.randn(draws.shape, generator=gen), exact


def _run(problem, y, init, precondition):
    return nuts_sample(
        problem, y[0], init, num_samples=200, warmup_steps=100, num_chains=2,
        precondition=precondition, seed=0,
    )


@pytest.mark.parametrize("precondition", ["prior", "prior-amortized"])
def test_prior_whitened_nuts_samples_the_exact_posterior_of_a_correlated_prior(precondition):
    """Mean and variance of every coordinate within 4 Monte Carlo standard errors of the
    closed form (two-sided false alarm 6e-5 per quantity, 12 quantities per test); no
    divergences; R-hat of 2 chains x 200 draws below 1.05 (it scatters by about 0.01)."""
    problem = _CorrelatedLinear()
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    init, exact = _amortized_stand_in(problem, y)
    result = _run(problem, y, init, precondition)
    assert result.x.shape == (2, 200, X_DIM)
    assert result.divergences == 0 and result.rhat < 1.05, (result.divergences, result.rhat)
    err_mean, err_var, ess = _mc_errors(result.x, exact.mean[0], exact.std.pow(2))
    assert ess > 100, ess
    assert err_mean < 4 and err_var < 4, (err_mean, err_var)


def test_a_wrong_gaussian_prior_is_caught_by_the_same_check():
    """Negative control: the prior's mean moved along the null space of ``A`` (which moves the
    exact posterior mean by the same vector) by one posterior sd in the coordinate where that
    is largest, while the closed form keeps the old prior: the whitened sampler follows the
    moved prior, so the error must be about sqrt(ESS) (> 10) standard errors."""
    problem = _CorrelatedLinear()
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    init, exact = _amortized_stand_in(problem, y)
    null = torch.linalg.svd(problem.matrix.double()).Vh[-1]  # A null = 0
    shift = null / (null / exact.std.double()).abs().max()
    result = _run(_CorrelatedLinear(prior_shift=shift), y, init, "prior-amortized")
    err_mean, _, _ = _mc_errors(result.x, exact.mean[0], exact.std.pow(2))
    assert err_mean > 4, err_mean


def test_prior_amortized_clips_the_whitened_covariance_at_the_prior():
    """In w = L0^-1 (theta - m), draws with variances (0.01, 100, 1, 1, 1, 1) along rotated
    axes give a preconditioner covariance with eigenvalues (0.01, 1, 1, 1, 1, 1): the draws'
    narrow direction is kept (to 4 sqrt(2 / N) relative, N = 20000), the wide one (the
    decoder's noise) is cut to the prior, and so are the chains' starts."""
    prior = make_problem("mt1d", num_layers=X_DIM, depth=1000.0).gaussian_prior()
    gen = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(X_DIM, X_DIM, generator=gen, dtype=torch.float64))
    scale = torch.tensor([0.1, 10.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    w = torch.randn(20_000, X_DIM, generator=gen, dtype=torch.float64) * scale @ rot.T
    theta = prior.loc + 2.0 + w @ prior.scale_tril.T
    mu, tril, starts = _preconditioner("prior-amortized", theta, prior)
    chol0 = prior.scale_tril
    a = torch.linalg.solve_triangular(chol0, tril, upper=False)
    lam = torch.linalg.eigvalsh(a @ a.T)
    tol = 4 * math.sqrt(2 / 20_000)
    assert abs(lam[0] / 0.01 - 1) < tol, lam
    assert ((lam[1:] - 1).abs() < tol).all() and (lam[1:] <= 1 + 1e-9).all(), lam
    # mu is the draws' mean; with fewer draws than coordinates the unseen directions get 1
    assert torch.allclose(mu, theta.mean(0), atol=1e-9)
    # the starts have the clipped covariance: the wide direction shrunk to the prior's
    w_starts = torch.linalg.solve_triangular(chol0, (starts - prior.loc).T, upper=False).T
    lam_starts = torch.linalg.eigvalsh(torch.cov(w_starts.T))
    assert abs(lam_starts[0] / 0.01 - 1) < tol and (lam_starts[1:] - 1).abs().max() < tol
    assert torch.equal(_preconditioner("prior", theta, prior)[2], starts)
    _, tril2, _ = _preconditioner("prior-amortized", theta[:3], prior)
    a2 = torch.linalg.solve_triangular(chol0, tril2, upper=False)
    lam2 = torch.linalg.eigvalsh(a2 @ a2.T)
    assert ((lam2[2:] - 1).abs() < 1e-6).all(), lam2  # 6 - (3 - 1) = 4 unseen directions


def test_gaussian_prior_is_the_problems_prior_in_the_sampled_coordinates():
    """log_prob of ``gaussian_prior()`` equals the prior density NUTS used before (mt1d: of
    u through the parameterisation, Jacobian included; the random fields: of x), to 1e-9."""
    for name in ("mt1d", "gravity", "linear_gaussian"):
        problem = make_problem(name)
        prior = problem.gaussian_prior()
        theta = prior.sample((4,))
        par = problem.parameterisation()
        if par is not None:
            expected = par.log_prior(theta)
        else:
            expected = problem.log_prior(theta.reshape(4, *problem.x_shape))
        assert torch.allclose(prior.log_prob(theta), expected, rtol=0, atol=1e-9), name
    assert make_problem("two_birds").gaussian_prior() is None
    assert make_problem("mt1d", prior="clipped").gaussian_prior() is None


def test_prior_preconditioners_need_a_gaussian_prior():
    birds = make_problem("two_birds")
    init = birds.sample_prior(2, torch.Generator().manual_seed(0))
    for precondition in ("prior", "prior-amortized"):
        with pytest.raises(ConfigError, match="not Gaussian in the sampled coordinates"):
            nuts_sample(
                birds, torch.zeros(*birds.y_shape), init, num_samples=2, warmup_steps=0,
                precondition=precondition,
            )
    assert PRECONDITIONERS == ("amortized", "prior", "prior-amortized", "none")


class _OverriddenPrior(_CorrelatedLinear):
    """``log_prior`` overridden (the moved mean) but ``gaussian_prior`` inherited: a trap."""

    def gaussian_prior(self):
        return MultivariateNormal(self.mean, self.cov)


def test_a_gaussian_prior_that_disagrees_with_log_prior_is_not_used():
    """A subclass that overrides ``log_prior`` but inherits ``gaussian_prior`` is refused by
    the ``"prior..."`` preconditioners, and the amortized one warns and evaluates the prior
    through ``log_prior``: its draws match the chains of a problem that states no Gaussian
    prior (the same potential, the same seeds), not the inherited prior's."""
    problem = _CorrelatedLinear()
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    init, exact = _amortized_stand_in(problem, y)
    null = torch.linalg.svd(problem.matrix.double()).Vh[-1]
    shift = null / (null / exact.std.double()).abs().max()
    trap = _OverriddenPrior(prior_shift=shift)
    with pytest.raises(ConfigError, match="disagrees with log_prior"):
        _run(trap, y, init, "prior")
    with pytest.warns(UserWarning, match="disagrees with log_prior"):
        result = _run(trap, y, init, "amortized")

    class _NoGaussian(_CorrelatedLinear):
        def gaussian_prior(self):
            return None

    reference = _run(_NoGaussian(prior_shift=shift), y, init, "amortized")
    assert torch.equal(result.x, reference.x)
