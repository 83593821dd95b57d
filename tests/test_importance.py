"""Importance sampling against the problem's model, and the CVAEPosterior object."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inference.exact import exact_posterior
from inference.importance import importance_sample, systematic_resample
from inference.posterior import CVAEPosterior
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import ConfigError, NoPriorDensityError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import make_problem
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.train.fit import build_cvae


@pytest.fixture(scope="module")
def problem_and_pairs():
    problem = LinearGaussian(x_dim=4, y_dim=3, noise_std=0.3)
    x, y = problem.simulate(5000, torch.Generator().manual_seed(1))
    return problem, x, y


def _closed_form_evidence(problem, y):
    """log p(y) = log N(y; A mu_0, A S_0 A^T + C_e) of a linear-Gaussian problem, float64."""
    parts = problem.linear_gaussian()
    a = parts.matrix.double()
    cov = a @ parts.prior_cov.double() @ a.T + parts.noise_cov.double()
    mean = a @ parts.prior_mean.double()
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(y.double())


@pytest.mark.parametrize("latent_dim, likelihood", [(2, "gaussian"), (0, "flow")])
def test_evidence_and_resampled_draws_match_the_closed_form(problem_and_pairs, latent_dim,
                                                            likelihood):
    """log mean(w) is log p(y) within 4 of its standard errors; resampled draws are exact.

    The proposal is an untrained whitened model (its decoder noise starts at the width of the
    linear-Gaussian posterior, its mean off by the random network output), so the weights do
    real work. The evidence estimate's delta-method standard error is checked on its own
    scale; the resampled moments within four of their Monte Carlo errors at the smallest ESS
    where the proposal is as wide as the posterior (k-hat < 0.5).
    """
    problem, x, y = problem_and_pairs
    cfg = ModelConfig(x_shape=(4,), y_shape=(3,), latent_dim=latent_dim, hidden_dims=(16,),
                      likelihood=likelihood, x_whitening="linear", init_scale=1.0,
                      flow_layers=0)
    cvae = build_cvae(cfg, x, y, problem=problem, seed=0)
    y_obs = problem.simulate(3, torch.Generator().manual_seed(5))[1]
    result = importance_sample(cvae, problem, y_obs, 20_000, seed=0)
    exact_log_z = _closed_form_evidence(problem, y_obs)
    assert result.reliable.all(), result.khat
    assert ((result.log_evidence - exact_log_z).abs() <= 4 * result.log_evidence_se + 1e-3).all()
    assert (result.sample_efficiency > 0.05).all()
    exact = exact_posterior(problem, y_obs)
    draws = result.resample(generator=torch.Generator().manual_seed(0))
    assert draws.shape == (20_000, 3, 4)
    if latent_dim == 0:  # the untrained flow is 0.7 times too narrow: k-hat near 0.6
        return
    # with k-hat < 0.5 the weights have a finite variance and the CLT applies: Monte Carlo
    # errors of a weighted mean and variance with ESS n_e are 1/sqrt(n_e) sd and sqrt(2/n_e)
    # relative; 4 of them (the worst of 12 components)
    assert (result.khat < 0.5).all()
    n_e = result.ess.min()
    assert ((draws.mean(0) - exact.mean) / exact.std).abs().max() < 4 / n_e.sqrt()
    var = draws.var(0)
    assert ((var / exact.std.pow(2)) - 1).abs().max() < 4 * (2 / n_e).sqrt()


def test_a_proposal_that_misses_the_posterior_is_flagged(problem_and_pairs):
    """An untrained model with a decoder noise of 0.05 prior sd (the posterior sd is several
    times wider) covers the posterior poorly: k-hat above 0.7, so the correction is flagged."""
    problem, x, y = problem_and_pairs
    cfg = ModelConfig(x_shape=(4,), y_shape=(3,), latent_dim=2, hidden_dims=(16,),
                      init_scale=0.05)
    cvae = build_cvae(cfg, x, y, problem=problem, seed=0)
    y_obs = problem.simulate(3, torch.Generator().manual_seed(5))[1]
    result = importance_sample(cvae, problem, y_obs, 4000, seed=0)
    assert (~result.reliable).all(), result.khat
    assert (result.sample_efficiency < 0.01).all()


def test_systematic_resampling_keeps_each_count_within_one_of_n_w():
    log_w = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125]))
    idx = systematic_resample(log_w, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(idx, minlength=4).double()
    expected = 10 * log_w.exp().double()
    assert ((counts - expected).abs() < 1).all() and counts.sum() == 10


def test_correction_refuses_models_without_a_density():
    channels = make_problem("crosshole", prior="channels", num_depth_cells=8, num_offset_cells=8,
                            cell_size=4.0, num_sources=4, num_receivers=4)
    cfg = ModelConfig(x_shape=channels.x_shape, y_shape=channels.y_shape, hidden_dims=(8,),
                      latent_dim=2, likelihood="bernoulli")
    y = channels.simulate(1, torch.Generator().manual_seed(0))[1]
    with pytest.raises(NoPriorDensityError):
        importance_sample(CVAE(cfg), channels, y, 10)
    birds = make_problem("two_birds")
    cfg = ModelConfig(x_shape=birds.x_shape, y_shape=birds.y_shape, hidden_dims=(8,),
                      latent_dim=2, basis_dim=4)
    with pytest.raises(ConfigError, match="basis decoder"):
        importance_sample(CVAE(cfg), birds, torch.zeros(1, *birds.y_shape), 10)


def test_iwae_log_prob_matches_quadrature_over_a_one_dimensional_latent():
    """log q(x | y) by Burda et al.'s estimate against a 1-D quadrature over z.

    With K = 4096 particles the estimate's bias and spread are far below 0.02 nats here; with
    K = 1 (the ELBO) it is lower on average, and the gap closes as K grows.
    """
    torch.manual_seed(0)
    cfg = ModelConfig(x_shape=(2,), y_shape=(1,), latent_dim=1, hidden_dims=(8,),
                      init_scale=0.5)
    cvae = CVAE(cfg).eval()
    post = CVAEPosterior(cvae, default_y=torch.tensor([0.3]))
    x = post.sample((5,), seed=0)
    assert x.shape == (5, 2)
    grid = torch.linspace(-8, 8, 8001)
    with torch.no_grad():
        y = torch.tensor([[0.3]]).expand(5, 1)
        z = grid.reshape(-1, 1, 1).expand(-1, 5, 1)
        x_dist, _ = cvae.x_distribution(z, y, location=False)
        log_joint = cvae.prior_distribution(y).log_prob(z) + x_dist.log_prob(x.expand(8001, 5, 2))
        exact = torch.logsumexp(log_joint.double(), 0) + math.log(float(grid[1] - grid[0]))
    estimate = post.log_prob(x, num_particles=4096, seed=1)
    assert (estimate - exact).abs().max() < 0.02
    gaps = [float((exact - post.log_prob(x, num_particles=k, seed=2)).mean()) for k in (1, 64)]
    assert gaps[0] > gaps[1] - 0.01 and gaps[1] < 0.05


def test_posterior_object_sample_shapes_and_errors(problem_and_pairs):
    problem, x, y = problem_and_pairs
    cfg = ModelConfig(x_shape=(4,), y_shape=(3,), latent_dim=0, hidden_dims=(16,),
                      likelihood="flow", flow_layers=1)
    cvae = build_cvae(cfg, x, y, problem=problem, seed=0)
    post = CVAEPosterior(cvae, problem=problem)
    with pytest.raises(ConfigError, match="no observation"):
        post.sample((3,))
    with pytest.raises(ShapeError, match="default y must have shape"):
        post.set_default_y(torch.zeros(2))
    assert post.sample((3, 2), y=y[:4]).shape == (3, 2, 4, 4)
    post.set_default_y(y[0])
    draws = post.sample((7,), seed=0)
    assert draws.shape == (7, 4)
    # without a latent the density is exact: the flow's own log_prob
    d, _ = cvae.x_distribution(torch.zeros(7, 0), y[:1].expand(7, 3), location=False)
    assert torch.allclose(post.log_prob(draws), d.log_prob(draws).double())
    result = post.importance_sample(100, seed=0)
    assert result.log_weight.shape == (100, 1) and result.khat.shape == (1,)
    far = y[:1] + 50 * y.std(0)  # 50 training sds out: warned of, as sample() warns
    with pytest.warns(UserWarning, match="training"):
        post.importance_sample(100, y=far, seed=0)


def test_cli_sample_methods_write_corrected_posterior_files(tmp_path, capsys):
    """`ppl-cvae sample --method importance|nuts` on a linear-Gaussian run: the files hold the
    per-observation diagnostics, NUTS's chains, and a one-line verdict is printed."""
    from inference.arviz_io import load_inference_data
    from ppl_cvae.cli import main
    from tests.conftest import TINY_FIT

    run = tmp_path / "run"
    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(run), *TINY_FIT, "--x-whitening", "linear"]) == 0
    obs = tmp_path / "obs.npz"
    assert main(["simulate", *lg, "--num", "2", "--out", str(obs)]) == 0
    out = tmp_path / "is.nc"
    assert main(["sample", str(run), "--observation", str(obs), "--method", "importance",
                 "--num-samples", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "importance sampling: sample efficiency" in printed
    idata = load_inference_data(out)
    assert idata.posterior.attrs["method"] == "importance"
    assert idata.posterior["x"].shape == (1, 50, 2, 2)
    khat = idata.sample_stats["khat"].isel(chain=0, draw=0).values
    assert khat.shape == (2,) and (("FAILED" in printed) == bool((khat > 0.7).any()))
    # each draw's normalised log weight among the proposals: systematic resampling repeats a
    # proposal of weight w floor(50 w) or ceil(50 w) times, so the draws sharing one value of x
    # (and of log_weight) number within 1 of 50 exp(log_weight)
    log_weight = idata.sample_stats["log_weight"].isel(chain=0).values  # (draw, observation)
    assert log_weight.shape == (50, 2) and (log_weight <= 0).all()
    x = idata.posterior["x"].isel(chain=0).values
    for m in range(2):
        rows, counts = np.unique(x[:, m], axis=0, return_counts=True)
        for row, count in zip(rows, counts, strict=True):
            lw = log_weight[(x[:, m] == row).all(-1), m]
            assert np.ptp(lw) == 0 and abs(count - 50 * np.exp(lw[0])) < 1 + 1e-6
    out = tmp_path / "nuts.nc"
    assert main(["sample", str(run), "--observation", str(obs), "--method", "nuts",
                 "--num-samples", "40", "--chains", "2", "--warmup", "30",
                 "--out", str(out)]) == 0
    assert "NUTS: R-hat" in capsys.readouterr().out
    idata = load_inference_data(out)
    assert dict(idata.posterior["x"].sizes) == {"chain": 2, "draw": 20, "observation": 2,
                                                 "parameter": 2}
    assert idata.sample_stats["rhat"].shape == (2, 20, 2)
    assert main(["sample", str(run), "--observation", str(obs), "--method", "nuts", "--refine",
                 "--out", str(tmp_path / "x.nc")]) != 0
    assert "--refine contradicts --method nuts" in capsys.readouterr().err
