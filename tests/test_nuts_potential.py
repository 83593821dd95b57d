"""The NUTS potential: float32 evaluation, the prior's quadratic form, the cached noise factor.

Known answers: the float64 potential written out directly (``-|b + A v|^2 / 2`` plus the
Gaussian log-likelihood), a deterministic rounding bound for the float32 one, the exact
posterior of a linear forward operator with a correlated Gaussian prior, and the noise log
density computed from a fresh Cholesky factor.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import arviz as az
import pytest
import torch
from pyro.ops.integrator import potential_grad
from torch.distributions import MultivariateNormal

import inference.mcmc.chains
from inference.exact import exact_posterior
from inference.mcmc import (
    FLOAT32_POTENTIAL_TOLERANCE,
    _ChainJob,
    _checked_gaussian_prior,
    _gaussian_prior_term,
    _log_target_v,
    _preconditioner,
    nuts_sample,
)
from inference.mcmc.potential import _fused_energy
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import LinearGaussianParts, Problem
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.problems.noise import GaussianNoise

X_DIM, Y_DIM = 48, 12
U32 = 2.0**-24  # unit roundoff of float32


class _SmoothField(Problem):
    """``y = G x + c + eps``, ``x ~ N(m, S)``, ``S_ij = 0.9^|i - j|``, noise sd 0.05.

    ``offset`` (``c``, added to every datum) only moves the data: a large one makes the
    float32 residual lose its digits (the negative control of the float32 check).
    """

    name = "smooth_field"
    x_shape, y_shape = (X_DIM,), (Y_DIM,)
    x_dims, y_dims = ("cell",), ("datum",)
    coords: dict = {}
    noise_std = misfit_std = 0.05
    has_prior_density = True

    def __init__(self, offset: float = 0.0) -> None:
        idx = torch.arange(X_DIM, dtype=torch.float64)
        self.cov = 0.9 ** (idx[:, None] - idx[None, :]).abs()
        self.mean = 1.0 + 0.1 * torch.sin(idx)
        gen = torch.Generator().manual_seed(3)
        self.matrix = torch.randn(Y_DIM, X_DIM, generator=gen, dtype=torch.float64) / 4
        self.offset = offset

    def sample_prior(self, num, generator=None):
        e = torch.randn(num, X_DIM, generator=generator, dtype=torch.float64)
        return (self.mean + e @ torch.linalg.cholesky(self.cov).T).float()

    def forward(self, x):
        return x @ self.matrix.to(x.dtype).T + self.offset

    def log_prior(self, x):
        return MultivariateNormal(self.mean, self.cov).log_prob(x.double())

    def linear_gaussian(self):
        if self.offset:
            return None
        noise = self.noise_std**2 * torch.eye(Y_DIM, dtype=torch.float64)
        return LinearGaussianParts(self.matrix, self.mean, self.cov, noise)

    def gaussian_prior(self):
        return MultivariateNormal(self.mean, scale_tril=torch.linalg.cholesky(self.cov))


def _job(problem, y, init, precondition):
    """The job of one chain as ``nuts_sample`` builds it (float64 pieces)."""
    start = init.flatten(1).double()
    prior = _checked_gaussian_prior(problem, start[:4], precondition)
    mu, tril, start = _preconditioner(precondition, start, prior)
    return _ChainJob(
        problem=problem, y=y.double(), start=start[0], checks=start[:2], mu=mu, tril=tril,
        prior_loc=prior.loc, prior_tril=prior.scale_tril,
        prior_whitened=precondition == "prior", num_samples=1, warmup_steps=0, seed=0,
        max_tree_depth=8, adapt_mass_matrix=False, jit_compile=False,
    )


def _setup(num=400):
    problem = _SmoothField()
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1]
    exact = exact_posterior(problem, y)
    draws = exact.sample(num, torch.Generator().manual_seed(0))[:, 0]
    init = exact.mean + 1.2 * (draws - exact.mean)  # a 20% too wide stand-in for amortized
    return problem, y, exact, init


def _value_grad(fn, v):
    v = v.clone().requires_grad_(True)
    u = -fn(v)
    (g,) = torch.autograd.grad(u, v)
    return float(u.detach()), g


def _points(job, exact, num=20):
    """Exact posterior draws in the chain's coordinates ``v = L^-1 (x - mu)``."""
    x = exact.sample(num, torch.Generator().manual_seed(1))[:, 0].double()
    return torch.linalg.solve_triangular(job.tril, (x - job.mu).T, upper=False).T


@pytest.mark.parametrize("precondition", ["amortized", "prior-amortized", "prior"])
def test_quadratic_form_prior_is_the_direct_one(precondition):
    """``-(c^T v + v^T H v / 2) - |b|^2 / 2`` is ``-|b + A v|^2 / 2``: the float64 potential
    and its gradient equal the potential written out directly to float64 rounding (relative
    1e-10: the terms are O(10^2), the roundoff of sums of 48 of them about 1e-14), with BLAS
    products and with torch's. Negative control: moving ``v`` by 1e-6 changes the value by
    more than that."""
    problem, y, exact, init = _setup()
    job = _job(problem, y, init, precondition)
    a_mat = torch.linalg.solve_triangular(job.prior_tril, job.tril, upper=False)
    b_vec = torch.linalg.solve_triangular(
        job.prior_tril, (job.mu - job.prior_loc).unsqueeze(-1), upper=False
    ).squeeze(-1)
    const = -float(job.prior_tril.diagonal().log().sum()) - 0.5 * X_DIM * math.log(2 * math.pi)

    def direct(v):
        w = b_vec + a_mat @ v
        return const - 0.5 * (w * w).sum() + problem.log_likelihood(job.mu + job.tril @ v, job.y)

    for blas in (True, False):
        fn = _log_target_v(job, torch.float64, blas=blas)
        for v in _points(job, exact):
            (u0, g0), (u1, g1) = _value_grad(direct, v), _value_grad(fn, v)
            assert abs(u1 - u0) <= 1e-10 * (1 + abs(u0))
            assert float((g1 - g0).abs().max()) <= 1e-10 * (1 + float(g0.abs().max()))
    u_moved = _value_grad(fn, v + 1e-6)[0]
    assert abs(u_moved - u0) > 1e-10 * (1 + abs(u0))


@pytest.mark.parametrize("precondition", ["amortized", "prior-amortized"])
def test_float32_potential_is_within_its_rounding_bound(precondition):
    """The float32 potential and gradient differ from float64 by at most the worst-case
    rounding bound of their sums (Higham 2002, Accuracy and Stability of Numerical
    Algorithms, eq. 3.5: ``|fl(x^T y) - x^T y| <= gamma_n |x|^T |y|``, ``gamma_n = n u / (1 -
    n u)``), taken with ``n = dim + 4`` (the rounding of the inputs and the final sums):

        |U32 - U64| <= gamma (|c|^T |v| + 2 |v|^T |H| |v|
                              + |r|^T / s^2 |G| (2 |theta| + |mu| + |L| |v|)),

    with ``r`` the residual, ``s`` the noise sd, ``c``, ``H`` the prior's quadratic form; the
    gradient's components likewise, the terms carried back through ``L^T`` and ``G^T``. The
    bound holds at every point (no tolerance of its own); the observed errors are well below
    it (about ``sqrt(n)`` times smaller, random rounding). Negative control: a float32
    potential whose factor ``L`` was rounded to bfloat16 (8 bits of mantissa, not 24) breaks
    the bound."""
    problem, y, exact, init = _setup()
    job = _job(problem, y, init, precondition)
    u64, u32 = _log_target_v(job, torch.float64), _log_target_v(job, torch.float32)
    coarse = dataclasses.replace(job, tril=job.tril.to(torch.bfloat16).double())
    u16 = _log_target_v(coarse, torch.float32)
    broken = 0
    a_mat = torch.linalg.solve_triangular(job.prior_tril, job.tril, upper=False)
    b_vec = torch.linalg.solve_triangular(
        job.prior_tril, (job.mu - job.prior_loc).unsqueeze(-1), upper=False
    ).squeeze(-1)
    hess, lin = (a_mat.T @ a_mat).abs(), (a_mat.T @ b_vec).abs()
    g_abs, l_abs = problem.matrix.abs(), job.tril.abs()
    n = X_DIM + 4
    gamma = n * U32 / (1 - n * U32)
    s2 = problem.noise_std**2
    for v in _points(job, exact):
        theta = job.mu + job.tril @ v
        r = (y[0].double() - problem.forward(theta)).abs()
        va = v.abs()
        spread = 2 * theta.abs() + job.mu.abs() + l_abs @ va  # |theta| terms of G theta
        bound = gamma * float(
            lin @ va + 2 * va @ hess @ va + (r / s2) @ (g_abs @ spread)
        )
        grad_bound = gamma * (
            lin + 2 * hess @ va + l_abs.T @ (g_abs.T @ (r / s2 + (g_abs @ spread) / s2))
        )
        (u0, g0), (u1, g1) = _value_grad(u64, v), _value_grad(u32, v)
        assert abs(u1 - u0) <= bound, (abs(u1 - u0), bound)
        assert bool(((g1 - g0).abs() <= grad_bound).all())
        assert abs(u1 - u0) < FLOAT32_POTENTIAL_TOLERANCE  # so nuts_sample keeps float32
        broken += abs(_value_grad(u16, v)[0] - u0) > bound
    assert broken > 0


def test_nuts_with_a_float32_potential_samples_the_exact_posterior():
    """NUTS on the float32 potential (``potential_dtype="float32"``): posterior mean within 4
    Monte Carlo standard errors (``sd / sqrt(ESS)``) and variance within 4 of
    ``sqrt(2 / ESS_2)`` relative, on each of the 48 components (two-sided false alarm 6e-5
    each, 3e-3 for all), no divergences; the draws are float64 chains (not rounded to the
    float32 grid of ``x``). ``ESS_2`` is the ESS of the squared standardised deviations of
    each component (the variance's own Monte Carlo error: NUTS's bulk ESS of the mean can
    exceed the number of draws while that of the squares is lower)."""
    problem, y, exact, init = _setup()
    result = nuts_sample(
        problem, y[0], init, num_samples=300, warmup_steps=100, num_chains=2, seed=0,
        adapt_mass_matrix=False, potential_dtype="float32",
    )
    assert result.potential_dtype == "float32" and result.divergences == 0
    draws = result.x.reshape(-1, X_DIM).double()
    n_e = result.min_ess
    assert n_e > 150
    sd = exact.std.double()
    assert float(((draws.mean(0) - exact.mean[0].double()) / sd).abs().max()) < 4 / n_e**0.5
    squares = ((draws - exact.mean[0].double()) / sd) ** 2  # (chains x draws, X_DIM)
    # chain after chain: draws c * 300 ... c * 300 + 299 are chain c
    ess_2 = torch.tensor([float(az.ess(c.reshape(2, 300).numpy())) for c in squares.T])
    assert bool(((draws.var(0) / sd**2 - 1).abs() < 4 * (2 / ess_2) ** 0.5).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("precondition", ["amortized", "prior-amortized", "prior", "none"])
def test_fused_energy_is_the_autograd_potential_to_the_bit(precondition, dtype):
    """The potential NUTS runs on (:func:`_fused_energy`: the gradient assembled around one
    ``autograd.grad`` of the likelihood) gives, through Pyro's ``potential_grad``, the value
    and gradient of ``-_log_target_v`` (autograd through the whole potential) to the bit: the
    same operations in the same order. ``"none"`` here also drops the Gaussian prior term
    (the prior through ``problem.log_prior``). Negative control: the same comparison between
    two points 1e-6 apart fails."""
    problem, y, exact, init = _setup(num=100)
    job = _job(problem, y, init, "amortized" if precondition == "none" else precondition)
    if precondition == "none":
        job = dataclasses.replace(job, prior_loc=None, prior_tril=None)
    term = _gaussian_prior_term(job)
    autograd_fn = _log_target_v(job, dtype, term)
    fused = _fused_energy(job, dtype, term)
    assert fused is not None
    for v in _points(job, exact, num=5):
        g0, u0 = potential_grad(lambda p: -autograd_fn(p["v"]), {"v": v.clone()})
        g1, u1 = potential_grad(lambda p: fused(p["v"]), {"v": v.clone()})
        assert u1.dtype == g1["v"].dtype == torch.float64
        assert torch.equal(u1, u0) and torch.equal(g1["v"], g0["v"])
        g2, u2 = potential_grad(lambda p: fused(p["v"]), {"v": v + 1e-6})
        assert not (torch.equal(u2, u0) and torch.equal(g2["v"], g0["v"]))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nuts_draws_are_those_of_the_autograd_potential(monkeypatch, dtype):
    """NUTS on the fused potential draws what it drew on autograd's potential (``_fused_energy``
    returning None brings that path back): the same draws, evaluations and step size under a
    seed. Negative control: another seed gives other draws."""
    problem, y, _, init = _setup(num=100)
    settings = dict(num_samples=20, warmup_steps=15, num_chains=1, adapt_mass_matrix=False,
                    potential_dtype=dtype)
    fused = nuts_sample(problem, y[0], init, seed=0, **settings)
    other_seed = nuts_sample(problem, y[0], init, seed=1, **settings)
    monkeypatch.setattr(inference.mcmc.chains, "_fused_energy", lambda *args: None)
    plain = nuts_sample(problem, y[0], init, seed=0, **settings)
    assert torch.equal(fused.x, plain.x) and fused.num_evaluations == plain.num_evaluations
    assert fused.sample_stats["step_size"][0, 0] == plain.sample_stats["step_size"][0, 0]
    assert not torch.equal(fused.x, other_seed.x)


def test_float32_falls_back_to_float64_where_it_loses_the_residual():
    """Data offset by 1e5 (float32 spacing 0.008 there, against a noise sd of 0.05): the
    float32 residual is off by a large fraction of a standard deviation, the check at the
    chains' starts sees it, warns, and the chains run on float64 (the same draws as asking
    for float64). A bad ``potential_dtype`` is refused."""
    problem = _SmoothField(offset=1e5)
    y = problem.simulate(1, torch.Generator().manual_seed(5))[1].double()
    init = problem.sample_prior(50, torch.Generator().manual_seed(0))
    # 5 + 5 iterations (not 10 + 10: a quarter of the cost, the warm-up's longer trees) show
    # the warning, the fallback and equal draws as well: all three are exact, not statistical
    settings = dict(num_samples=5, warmup_steps=5, num_chains=2, seed=0)
    with pytest.warns(UserWarning, match="float64 is used instead"):
        low = nuts_sample(problem, y[0], init, potential_dtype="float32", **settings)
    assert low.potential_dtype == "float64"
    assert torch.equal(low.x, nuts_sample(problem, y[0], init, **settings).x)
    with pytest.raises(ConfigError, match="potential_dtype"):
        nuts_sample(problem, y[0], init, potential_dtype="float16", **settings)


def test_cached_noise_log_prob_equals_a_fresh_factorisation():
    """``Problem.noise`` keeps its factor between calls; ``log_prob`` and ``whiten`` equal a
    fresh ``GaussianNoise`` (white, diagonal and full covariances) and the hand-written
    density ``-r^T C^-1 r / 2 - log det(C) / 2 - m log(2 pi) / 2`` to 1e-12 relative. A new
    ``noise_cov`` or ``noise_std`` takes effect at once (negative control: the density
    changes)."""
    problem = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3)
    r = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    covs = [None, torch.diag(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)),
            0.1 * b @ b.T + 0.05 * torch.eye(4, dtype=torch.float64)]
    previous = None
    for cov in covs:
        problem.noise_cov = cov
        first = problem.noise
        assert problem.noise is first  # cached
        c = cov if cov is not None else 0.09 * torch.eye(4, dtype=torch.float64)
        hand = (
            -0.5 * torch.einsum("bi,ij,bj->b", r, torch.linalg.inv(c), r)
            - 0.5 * torch.logdet(c) - 2.0 * math.log(2 * math.pi)
        )
        fresh = GaussianNoise((4,), std=0.3, cov=cov)
        for _ in range(2):  # the second call uses the cached factor
            lp = first.log_prob(r)
            assert torch.allclose(lp, hand, rtol=1e-12, atol=0)
            assert torch.allclose(lp, fresh.log_prob(r), rtol=1e-12, atol=0)
            assert torch.allclose(first.whiten(r), fresh.whiten(r), rtol=1e-12, atol=0)
        assert previous is None or not torch.allclose(lp, previous)
        previous = lp
    problem.noise_cov = None
    problem.noise_std = 0.6
    assert problem.noise.std == 0.6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(problem.log_likelihood(torch.zeros(3), torch.ones(4))) == pytest.approx(
            -0.5 * 4 / 0.36 - 4 * math.log(0.6) - 2 * math.log(2 * math.pi), rel=1e-12
        )


def test_noise_cov_edited_in_place_is_seen():
    """Scaling ``noise_cov`` in place (same tensor object) rebuilds the cached noise model:
    the log density of a zero residual moves by ``-m log(k) / 2`` for a covariance scaled by
    ``k`` (negative control: the stale factor would keep the old value)."""
    problem = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3)
    cov = torch.diag(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    problem.noise_cov = cov
    zero = torch.zeros(1, 4, dtype=torch.float64)
    before = float(problem.noise.log_prob(zero))
    cov.mul_(4.0)
    after = float(problem.noise.log_prob(zero))
    assert after == pytest.approx(before - 0.5 * 4 * math.log(4.0), rel=1e-12)
