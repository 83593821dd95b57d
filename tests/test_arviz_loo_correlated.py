"""The ``log_likelihood`` group of correlated noise: leave-one-out conditionals, and ``az.loo``.

For ``y ~ N(mu, C)`` with ``Q = C^-1`` and ``r = y - mu``, the density of one datum given all
the others is ``log p(y_i | y_-i) = -log(2 pi) / 2 + log(Q_ii) / 2 - (Q r)_i^2 / (2 Q_ii)``
(the conditional of a Gaussian vector: ``y_i | y_-i ~ N(y_i - (Q r)_i / Q_ii, 1 / Q_ii)``;
Buerkner, Gabry and Vehtari 2021, Computational Statistics 36, 1243-1261). These tests check
it against the brute-force ratio ``N(y; mu, C) / N(y_-i; mu_-i, C_-i,-i)``, its independent
limit, and, on a linear-Gaussian problem with correlated noise and exact posterior draws,
PSIS-LOO (``az.loo``) against the exact leave-one-out ``elpd`` of the marginal
``y ~ N(A m_0 + b, A S_0 A^T + C)``. Then ``ppl-cvae sample`` writes the group for such a
problem with every cheap method, and ``az.loo`` / ``az.plot_loo_pit`` read the file.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from inference.arviz_io import az, load_inference_data
from inference.exact import exact_posterior
from inference.sample import inference_data_from_draws
from ppl_cvae.problems.base import LinearGaussianParts, Problem
from ppl_cvae.problems.noise import GaussianNoise

RHO = 0.7
"""Correlation of neighbouring data (flattened, C order): ``C_ij = s_i s_j RHO^|i - j|``."""

NUM_DRAWS = 4000
NUM_OBS = 3


def _ar1_cov(sd: np.ndarray, rho: float) -> torch.Tensor:
    """``C_ij = sd_i sd_j rho^|i - j|``; shape (m, m), float64."""
    i = np.arange(sd.size)
    return torch.from_numpy(np.outer(sd, sd) * rho ** np.abs(i[:, None] - i[None, :]))


def _brute_force_loo(r: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``log N(r; 0, C) - log N(r_-i; 0, C_-i,-i)`` for every ``i``; r (N, m) -> (N, m)."""
    m = cov.shape[0]
    joint = stats.multivariate_normal(np.zeros(m), cov).logpdf(r).reshape(-1)
    out = np.empty_like(r)
    for i in range(m):
        rest = [j for j in range(m) if j != i]
        sub = stats.multivariate_normal(np.zeros(m - 1), cov[np.ix_(rest, rest)])
        out[:, i] = joint - np.atleast_1d(sub.logpdf(r[:, rest]))
    return out


# --------------------------------------------------------------------------- the formula
@pytest.mark.parametrize("y_shape", [(5,), (2, 3)])
@pytest.mark.parametrize("batch", [(), (1,), (3, 4)])
def test_loo_conditional_is_the_ratio_of_gaussian_densities(seed, y_shape, batch):
    """(a) Equal to ``log N(y; mu, C) - log N(y_-i; mu_-i, C_-i,-i)`` by brute force.

    m = 5 (or 6, a 2-D ``y`` flattened in C order), ``C_ij = s_i s_j 0.7^|i-j|`` with unequal
    sds. Both sides are float64 evaluations of well-conditioned (cond(C) < 50) quantities of
    size about 10: rounding is near 1e-14, so 1e-10 is loose and still catches any
    wrong term (the smallest, log(Q_ii) / 2 changing with the sds, is of order 0.1).
    """
    m = math.prod(y_shape)
    gen = np.random.default_rng(seed)
    sd = gen.uniform(0.2, 1.5, size=m)
    cov = _ar1_cov(sd, RHO)
    noise = GaussianNoise(y_shape, cov=cov)
    r = torch.from_numpy(gen.normal(size=(*batch, m)) * sd * 1.3)
    got = noise.log_prob_pointwise(r.reshape(*batch, *y_shape))
    assert got.shape == (*batch, *y_shape) and got.dtype == torch.float64
    expected = _brute_force_loo(r.reshape(-1, m).numpy(), cov.numpy())
    np.testing.assert_allclose(got.reshape(-1, m).numpy(), expected, rtol=1e-10, atol=1e-10)
    # float32 residuals are computed in float64: the same as the float64 of the float32 values
    r32 = r.to(torch.float32).reshape(*batch, *y_shape)
    got32 = noise.log_prob_pointwise(r32)
    assert got32.dtype == torch.float64
    torch.testing.assert_close(got32, noise.log_prob_pointwise(r32.double()), rtol=0, atol=0)
    # the terms are not the joint's factors: they do not sum to it (documented), and for
    # RHO = 0.7 they differ from it by far more than rounding
    gap = got.reshape(-1, m).sum(-1) - noise.log_prob(r.reshape(*batch, *y_shape)).reshape(-1)
    assert float(gap.abs().min()) > 0.1


def test_loo_conditional_of_independent_noise_is_the_gaussian_density(seed):
    """(b) Diagonal ``C``: ``log N(r_i; 0, sigma_i^2)``, as before and in the limit rho -> 0.

    A diagonal covariance keeps its exact per-datum densities (the values existing files
    and tests pin, to float64 rounding). A covariance with correlations 1e-9 takes the
    correlated path (two triangular solves) and must agree with the independent densities
    up to terms of order rho |r|^2 / sigma^2, about 1e-8 here: 1e-7 absolute.
    """
    y_shape, m = (2, 3), 6
    gen = np.random.default_rng(seed)
    sd = gen.uniform(0.2, 1.5, size=m)
    r = gen.normal(size=(4, m)) * sd
    independent = stats.norm.logpdf(r, scale=sd)  # (4, m)
    diagonal = GaussianNoise(y_shape, cov=torch.from_numpy(np.diag(sd**2)))
    got = diagonal.log_prob_pointwise(torch.from_numpy(r).reshape(4, *y_shape)).reshape(4, m)
    np.testing.assert_allclose(got.numpy(), independent, rtol=1e-13, atol=1e-13)
    scalar = GaussianNoise(y_shape, std=0.4)
    got = scalar.log_prob_pointwise(torch.from_numpy(r).reshape(4, *y_shape)).reshape(4, m)
    np.testing.assert_allclose(got.numpy(), stats.norm.logpdf(r, scale=0.4), rtol=1e-13)

    nearly = GaussianNoise(y_shape, cov=_ar1_cov(sd, 1e-9))
    assert not nearly.is_diagonal
    got = nearly.log_prob_pointwise(torch.from_numpy(r).reshape(4, *y_shape)).reshape(4, m)
    np.testing.assert_allclose(got.numpy(), independent, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- a user's problem
class CorrelatedLinear(Problem):
    """``y = A x + b + e`` on a 2 x 3 grid of data, ``x ~ N(m_0, S_0)``, AR(1) noise.

    ``x`` (2,) is dimensionless; ``y`` (2, 3) in mV: ``component`` x ``station``, the noise
    correlated along the C-order flattened data, ``C_ij = s_i s_j 0.7^|i - j|``.
    """

    name = "correlated_linear"
    x_shape, y_shape = (2,), (2, 3)
    x_dims, y_dims = ("parameter",), ("component", "station")
    coords = {"component": ["a", "b"], "station": [0.0, 10.0, 20.0]}
    units = {"y": "mV", "station": "m"}
    has_prior_density = True
    noise_std = misfit_std = 0.3

    def __init__(self) -> None:
        self.matrix = torch.tensor(
            [[1.0, 0.2], [0.8, -0.5], [0.3, 1.1], [-0.6, 0.9], [1.2, 0.4], [0.1, -1.0]],
            dtype=torch.float64,
        )
        self.offset = torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3, -0.4], dtype=torch.float64)
        self.prior_mean = torch.tensor([0.4, -0.3], dtype=torch.float64)
        self.prior_cov = torch.tensor([[0.36, 0.12], [0.12, 0.64]], dtype=torch.float64)
        self.noise_cov = _ar1_cov(np.array([0.3, 0.4, 0.25, 0.35, 0.3, 0.45]), RHO)

    def _prior(self) -> torch.distributions.MultivariateNormal:
        return torch.distributions.MultivariateNormal(self.prior_mean, self.prior_cov)

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x ~ N(m_0, S_0)``; shape (num, 2), float32."""
        e = torch.randn(num, 2, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.prior_cov)
        return (self.prior_mean + e @ chol.T).to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A x + b`` in mV; shape (*batch, 2, 3), the dtype of ``x``."""
        a, b = self.matrix.to(x), self.offset.to(x)
        return (x @ a.T + b).reshape(*x.shape[:-1], 2, 3)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``log N(x; m_0, S_0)``; shape (*batch,), float64."""
        return self._prior().log_prob(x.to(torch.float64))

    def linear_gaussian(self) -> LinearGaussianParts:
        """Return ``A``, the prior and the noise covariance (``b`` is read off ``forward``)."""
        return LinearGaussianParts(
            matrix=self.matrix,
            prior_mean=self.prior_mean,
            prior_cov=self.prior_cov,
            noise_cov=self.noise.covariance(),
        )


def make() -> CorrelatedLinear:
    """The factory ``ppl-cvae --problem tests.test_arviz_loo_correlated:make`` calls."""
    return CorrelatedLinear()


def _exact_loo(problem: CorrelatedLinear, y: torch.Tensor) -> float:
    """Exact ``elpd_loo = sum_k sum_i log p(y_ki | y_k,-i)``, ``x`` integrated out.

    The marginal of one observation is ``N(A m_0 + b, A S_0 A^T + C)``; with ``P`` its
    precision and ``u = y - A m_0 - b``, ``log p(y_i | y_-i) = log(P_ii / 2 pi) / 2 -
    (P u)_i^2 / (2 P_ii)``, independently derived here in NumPy from the closed-form marginal.
    """
    a = problem.matrix.numpy()
    sigma_y = a @ problem.prior_cov.numpy() @ a.T + problem.noise_cov.numpy()
    p = np.linalg.inv(sigma_y)
    u = y.double().numpy().reshape(len(y), -1) - (a @ problem.prior_mean.numpy())
    u = u - problem.offset.numpy()
    pu, pd = u @ p, np.diag(p)
    return float(np.sum(0.5 * np.log(pd / (2 * np.pi)) - 0.5 * pu**2 / pd))


def _loo_quietly(idata):
    """``az.loo`` without its warning about large k-hat (the negative controls trigger it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Estimated shape parameter of Pareto", UserWarning)
        return az.loo(idata)


@pytest.mark.parametrize("case", ["exact", "shifted", "independent terms"])
def test_psis_loo_of_exact_draws_matches_the_exact_loo(seed, case):
    """(c) ``az.loo`` of exact posterior draws is the exact LOO ``elpd`` of the marginal.

    Monte Carlo error: the importance-sampling estimate of ``p(y_i | y_-i)`` is ``1 /
    mean_s w_s`` with ``w_s = 1 / p(y_i | y_-i, x_s)`` (``p(x | y_-i)`` is ``p(x | y)``
    divided by the LOO conditional, so the identity holds for non-factorised likelihoods);
    by the delta method its log has sd ``cv(w) / sqrt(S)``. The data share the draws, so the
    errors are summed over data (triangle inequality) and 4 such sums allowed (PSIS
    smoothing only lowers the variance of these light-tailed weights). Negative controls:
    draws shifted by one posterior sd, and the per-datum densities ``log N(y_i; F(x)_i,
    C_ii)`` that ignore the correlation (what a factorised model would store), both miss.
    """
    problem = CorrelatedLinear()
    gen = torch.Generator().manual_seed(seed)
    _, y = problem.simulate(NUM_OBS, gen)
    exact = exact_posterior(problem, y)
    draws = exact.sample(NUM_DRAWS, gen)
    if case == "shifted":
        draws = draws + exact.std
    idata = inference_data_from_draws(draws, y, problem=problem, generator=gen)
    assert "log_likelihood_omitted" not in idata.posterior.attrs
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "observation", "component", "station")
    assert ll.attrs["pointwise"] == "loo_conditional" and ll.attrs["sums_to_joint"] == 0
    assert "y_-i" in ll.attrs["long_name"] and "Buerkner" in ll.attrs["references"]
    assert idata.log_likelihood.attrs["pointwise"] == "loo_conditional"
    # the stored terms are the brute-force ratio of the draws' Gaussian densities (float32
    # storage of values of size 1-10: relative 6e-8; float32 forward: 1e-6 is ample)
    x = idata.posterior["x"].values[0].astype(np.float64)  # (S, M, 2)
    mean = x @ problem.matrix.numpy().T + problem.offset.numpy()  # (S, M, 6)
    resid = y.double().numpy().reshape(NUM_OBS, 6)[None] - mean
    head = resid[:50].reshape(-1, 6)
    by_hand = _brute_force_loo(head, problem.noise_cov.numpy()).reshape(50, NUM_OBS, 2, 3)
    np.testing.assert_allclose(ll.values[0, :50], by_hand, rtol=1e-6, atol=1e-5)
    # lp keeps the joint log-likelihood (the same float32 rounding of F(x))
    joint = stats.multivariate_normal(np.zeros(6), problem.noise_cov.numpy()).logpdf(head)
    prior = stats.multivariate_normal(problem.prior_mean.numpy(), problem.prior_cov.numpy())
    lp = prior.logpdf(x[:50].reshape(-1, 2)) + joint
    stored_lp = idata.sample_stats["lp"].values[0, :50].reshape(-1)
    np.testing.assert_allclose(stored_lp, lp, rtol=1e-6, atol=1e-5)

    if case == "independent terms":
        sd = np.sqrt(np.diag(problem.noise_cov.numpy()))
        naive = stats.norm.logpdf(resid, scale=sd).reshape(NUM_DRAWS, NUM_OBS, 2, 3)
        idata.log_likelihood["y"].values[0] = naive.astype(np.float32)
    loo = _loo_quietly(idata)
    assert loo.n_data_points == NUM_OBS * 6 and loo.n_samples == NUM_DRAWS
    lls = idata.log_likelihood["y"].values[0].astype(np.float64).reshape(NUM_DRAWS, -1)
    w = np.exp(-(lls - lls.max(0)))  # cv is scale-free: rescaled against overflow
    se = np.sum(w.std(0) / w.mean(0)) / math.sqrt(NUM_DRAWS)
    elpd = _exact_loo(problem, y)
    ok = abs(loo.elpd_loo - elpd) < 4 * se
    assert ok == (case == "exact"), (case, loo.elpd_loo, elpd, 4 * se)


# --------------------------------------------------------------------------- ppl-cvae sample
@pytest.fixture(scope="module")
def correlated_run(tmp_path_factory):
    """A one-epoch fit of :class:`CorrelatedLinear` and two observations."""
    from ppl_cvae.cli import main
    from tests.conftest import TINY_FIT

    root = tmp_path_factory.mktemp("loo_correlated")
    problem = ["--problem", "tests.test_arviz_loo_correlated:make"]
    assert main(["fit", *problem, "--out", str(root / "run"), *TINY_FIT]) == 0
    obs = ["--num", "2", "--seed", "3", "--out", str(root / "obs.npz")]
    assert main(["simulate", *problem, *obs]) == 0
    return root


@pytest.mark.parametrize(
    "method",
    [
        ["--method", "amortized"],
        ["--method", "importance", "--proposals", "400"],
        ["--method", "refine", "--refine-steps", "5"],
        ["--method", "nuts", "--chains", "2", "--warmup", "30"],
    ],
    ids=lambda m: m[1],
)
def test_cli_sample_writes_the_loo_conditional_for_correlated_noise(correlated_run, method):
    """The file of each sampler holds the LOO conditionals; ``az.loo`` and LOO-PIT read it.
    A refined file holds none (its draws are optimised, not sampled).

    The stored terms are those of the stored draws (float32 storage: 1e-6 relative, 1e-5
    absolute on values of size 1-10); the joint stays in ``sample_stats.lp``.
    """
    import matplotlib.pyplot as plt

    from ppl_cvae.cli import main

    root = correlated_run
    out = root / f"post_{method[1]}.nc"
    args = ["sample", str(root / "run"), "--observation", str(root / "obs.npz"),
            "--num-samples", "200", "--seed", "7", "--out", str(out), *method]
    assert main(args) == 0
    idata = load_inference_data(out)
    if method[1] == "refine":  # optimised draws: PSIS-LOO of them would win az.compare
        assert "log_likelihood" not in idata.groups()
        assert "not posterior samples" in idata.posterior.attrs["log_likelihood_omitted"]
        return
    assert "log_likelihood" in idata.groups(), idata.posterior.attrs.get("log_likelihood_omitted")
    ll = idata.log_likelihood["y"]
    assert ll.attrs["pointwise"] == "loo_conditional" and ll.attrs["sums_to_joint"] == 0
    assert idata.constant_data["y_noise_sd"].attrs["correlated"] == 1
    problem = make()
    x = torch.as_tensor(idata.posterior["x"].values).reshape(-1, 2, 2)  # (chains * S, M, 2)
    y = torch.as_tensor(idata.observed_data["y"].values)
    expected = problem.log_likelihood_pointwise(x, y).numpy()
    stored = ll.values.reshape(expected.shape)
    np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-5)
    resid = (y.double() - problem.forward(x.double())).reshape(-1, 6).numpy()
    by_hand = _brute_force_loo(resid[:20], problem.noise_cov.numpy())
    np.testing.assert_allclose(stored.reshape(-1, 6)[:20], by_hand, rtol=1e-6, atol=1e-5)
    if "lp" in idata.sample_stats:
        joint = problem.log_prior(x) + problem.log_likelihood(x, y)
        lp = idata.sample_stats["lp"].values.reshape(joint.shape)
        np.testing.assert_allclose(lp, joint.numpy(), rtol=1e-6, atol=1e-5)
    loo = _loo_quietly(idata)  # a one-epoch fit is a poor posterior: k-hat may be large
    assert loo.n_data_points == 2 * 6 and math.isfinite(loo.elpd_loo)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Estimated shape parameter of Pareto", UserWarning)
        pit = np.asarray(az.loo_pit(idata, y="y"))
        ax = az.plot_loo_pit(idata, y="y")
    assert pit.shape == (2, 2, 3) and np.all((pit >= 0) & (pit <= 1))
    assert len(ax.get_lines()) > 0
    plt.close("all")


def test_a_streamed_file_keeps_the_loo_conditional_and_its_attributes(tmp_path):
    """Chunked writing (``sample_posterior_to_netcdf``) appends the same terms, attributes kept.

    11 chunks of an untrained CVAE's draws; the stored terms are those of the stored draws
    (float32 storage: 1e-6 relative, 1e-5 absolute).
    """
    from inference.posterior import bytes_per_draw
    from inference.sample import sample_posterior_to_netcdf
    from ppl_cvae import CVAE, ModelConfig

    problem = make()
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)
    cvae = CVAE(config)
    _, y = problem.simulate(2, torch.Generator().manual_seed(1))
    chunk = 10 * bytes_per_draw(cvae, 2, problem=problem)
    path = sample_posterior_to_netcdf(cvae, y, 105, tmp_path / "big.nc", problem=problem, seed=2,
                                      chunk_bytes=chunk, in_memory_bytes=0)
    idata = load_inference_data(path)
    ll = idata.log_likelihood["y"]
    assert ll.shape == (1, 105, 2, 2, 3)
    assert ll.attrs["pointwise"] == "loo_conditional" and ll.attrs["sums_to_joint"] == 0
    x = torch.as_tensor(idata.posterior["x"].values[0])
    expected = problem.log_likelihood_pointwise(x, y).numpy()
    np.testing.assert_allclose(ll.values[0], expected, rtol=1e-6, atol=1e-5)
    # every group that records the run's draw count says 105, not the first chunk's 10
    counts = {g: idata[g].attrs["num_samples"] for g in idata.groups()
              if "num_samples" in idata[g].attrs}
    assert {"posterior", "observed_data"} <= set(counts) and set(counts.values()) == {105}
