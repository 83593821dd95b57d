"""x_whitening="linear": the decoder models x given y as departures from a linear-Gaussian fit."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from inference.exact import exact_posterior
from ppl_cvae.cli import main
from ppl_cvae.config import MAX_FULL_NOISE, ModelConfig, Overrides, TrainConfig
from ppl_cvae.data.standardise import LinearWhitener
from ppl_cvae.errors import CheckpointError, ConfigError, ShapeError
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.train import load_checkpoint
from ppl_cvae.train.fit import build_cvae, fit
from tests.conftest import TINY_FIT

NUM_PAIRS = 20_000


@pytest.fixture(scope="module")
def pairs():
    """A 4 -> 3 linear-Gaussian problem and 20,000 prior-predictive pairs."""
    problem = LinearGaussian(x_dim=4, y_dim=3, noise_std=0.3)
    x, y = problem.simulate(NUM_PAIRS, torch.Generator().manual_seed(1))
    return problem, x, y


def _whitened_config(likelihood: str, **kw) -> ModelConfig:
    latent = 0 if likelihood == "flow" else 2
    return ModelConfig(x_shape=(4,), y_shape=(3,), latent_dim=latent, hidden_dims=(16,),
                       likelihood=likelihood, x_whitening="linear", **kw)


def test_the_fitted_whitening_is_the_exact_posterior(pairs):
    """A y + b and L L^T (mapped to physical units) are the exact posterior mean and covariance.

    Estimation error from N pairs: the regression's mean error is about sqrt((m + 1) / N) =
    0.014 posterior sd per element (so 0.06, four times that, bounds all 20 checked), and a
    sample covariance of 4 elements has a relative Frobenius error about sqrt(d (d + 1) / (2 N))
    = 0.016 (0.06 is nearly four times that).
    """
    problem, x, y = pairs
    cvae = build_cvae(_whitened_config("gaussian"), x, y, problem=problem)
    y_obs = problem.simulate(5, torch.Generator().manual_seed(2))[1]
    exact = exact_posterior(problem, y_obs)
    whitener, xs, ys = cvae.whitener, cvae.x_standardiser, cvae.y_standardiser
    mean = xs.inverse(whitener.loc(ys(y_obs)))
    tril = xs.std[:, None].double() * whitener.scale_tril.double()
    cov = tril @ tril.T
    assert ((mean - exact.mean) / exact.std).abs().max() < 0.06
    assert (cov - exact.cov).norm() / exact.cov.norm() < 0.06
    # u = L^-1 (x_std - A y - b) of prior-predictive pairs is standard normal
    u = whitener(xs(x[:5000]), ys(y[:5000]))
    assert (u.mean(0).abs() < 4 / math.sqrt(5000)).all()
    assert ((torch.cov(u.T) - torch.eye(4)).abs() < 4 * math.sqrt(2 / 5000)).all()
    assert torch.allclose(whitener.inverse(u, ys(y[:5000])), xs(x[:5000]), atol=1e-4)


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_decoder"])
def test_whitened_gaussian_decoder_is_the_stated_correlated_gaussian(pairs, likelihood):
    """N(m_u, diag(s^2)) of u is N(mean, D L diag(s^2) L^T D) of x, D = diag(sd_x)."""
    problem, x, y = pairs
    cvae = build_cvae(_whitened_config(likelihood), x[:2000], y[:2000], problem=problem)
    z, y_obs = torch.randn(7, 5, 2), y[:5]
    dist, mean = cvae.x_distribution(z, y_obs)
    loc_u, scale_u = cvae.decoder(z, cvae.y_standardiser(y_obs))
    tril_x = cvae.x_standardiser.std[:, None] * cvae.whitener.scale_tril
    cov = tril_x @ torch.diag_embed(scale_u.expand(loc_u.shape).pow(2)) @ tril_x.T
    reference = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    draws = dist.sample()
    assert draws.shape == (7, 5, 4)
    assert torch.allclose(dist.log_prob(draws), reference.log_prob(draws), atol=1e-4)
    mean_decoded, sd = cvae.decode(z, y_obs)
    assert torch.allclose(mean_decoded, mean)
    assert torch.allclose(sd, cov.diagonal(dim1=-2, dim2=-1).sqrt(), rtol=1e-5)


@pytest.mark.parametrize("likelihood", ["flow", "gaussian_full", "gaussian_lowrank"])
def test_whitened_density_is_the_change_of_variables(pairs, likelihood):
    """log p(x) = log p_u(L^-1 (x_std - A y - b)) - log|det L| - sum(log sd_x)."""
    problem, x, y = pairs
    cvae = build_cvae(_whitened_config(likelihood, noise_rank=2), x[:2000], y[:2000],
                      problem=problem)
    latent = cvae.config.latent_dim
    z, y_obs = torch.randn(6, 3, latent), y[:3]
    dist, _ = cvae.x_distribution(z, y_obs, location=False)
    base = dist.base_dist
    draws = dist.sample()
    y_std = cvae.y_standardiser(y_obs)
    u = cvae.whitener(cvae.x_standardiser(draws), y_std)
    log_det = cvae.whitener.scale_tril.diagonal().log().sum() + cvae.x_standardiser.std.log().sum()
    assert torch.allclose(dist.log_prob(draws), base.log_prob(u) - log_det, atol=1e-4)


def test_whitened_model_learns_the_exact_posterior(pairs):
    """A short fit keeps draws at the exact posterior: mean within 0.1 sd, variances within 10%.

    Started at the linear-Gaussian answer, the decoder only has to learn that u | y is
    N(0, I) (init_scale 1, z unused); 4000 draws give sample-variance errors of 2% (1 se).
    """
    problem, x, y = pairs
    cfg = _whitened_config("gaussian", init_scale=1.0)
    cvae = build_cvae(cfg, x, y, problem=problem, seed=0)
    fit(cvae, x, y, TrainConfig(num_epochs=3, batch_size=256, learning_rate=1e-3, patience=0),
        progress=False)
    y_obs = problem.simulate(1, torch.Generator().manual_seed(3))[1]
    exact = exact_posterior(problem, y_obs)
    with torch.no_grad():
        trace = pyro.poutine.trace(cvae.model).get_trace(y_obs.expand(4000, 3))
    draws = trace.nodes["x"]["value"]
    assert ((draws.mean(0) - exact.mean[0]) / exact.std).abs().max() < 0.1
    assert (torch.cov(draws.T).diagonal() / exact.cov.diagonal() - 1).abs().max() < 0.1


def test_unconditional_whitening_is_the_covariance_of_x():
    """With no y, L L^T is the (shrunk) sample covariance of the standardised x."""
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    x = torch.randn(10_000, 2, generator=g) @ torch.linalg.cholesky(cov).T
    whitener = LinearWhitener(2, 0).fit(x, None)
    fitted = whitener.scale_tril @ whitener.scale_tril.T
    assert (fitted - torch.cov(x.T)).abs().max() < 0.01
    assert whitener.weight.shape == (2, 0) and torch.allclose(whitener.loc(None), x.mean(0))


def test_whitening_configuration_errors():
    with pytest.raises(ConfigError, match="needs a Gaussian or flow likelihood"):
        ModelConfig(x_shape=(4,), y_shape=(3,), likelihood="bernoulli", x_whitening="linear")
    with pytest.raises(ConfigError, match="no basis_dim"):
        ModelConfig(x_shape=(4,), y_shape=(3,), basis_dim=2, x_whitening="linear")
    with pytest.raises(ConfigError, match="MAX_FULL_NOISE"):
        ModelConfig(x_shape=(MAX_FULL_NOISE + 1,), y_shape=(3,), x_whitening="linear")
    with pytest.raises(ConfigError, match="unknown x_whitening 'pca'"):
        ModelConfig(x_shape=(4,), y_shape=(3,), x_whitening="pca")
    with pytest.raises(ShapeError, match="LinearWhitener.fit expects"):
        LinearWhitener(4, 3).fit(torch.zeros(10, 4), torch.zeros(10, 2))


def test_whitening_round_trips_through_the_cli_and_bad_factors_are_refused(tmp_path):
    run = tmp_path / "run"
    flags = ["--x-whitening", "linear"]
    assert main(["fit", "--problem", "linear_gaussian", "--out", str(run), *TINY_FIT, *flags]) == 0
    cvae, _ = load_checkpoint(run)
    assert cvae.config.x_whitening == "linear"
    tril = cvae.whitener.scale_tril
    assert not torch.equal(tril, torch.eye(2)) and torch.equal(tril, torch.tril(tril))
    # a factor with an upper entry (or a zero pivot) is refused on load
    ckpt = run / "model.pt"
    record = torch.load(ckpt, weights_only=True)
    record["state_dict"]["whitener.scale_tril"][0, 1] = 1.0
    torch.save(record, ckpt)
    with pytest.raises(CheckpointError, match="whitener.scale_tril is not lower triangular"):
        load_checkpoint(run)


def test_file_defaults_whiten_and_give_way_to_families_that_cannot_be_whitened():
    from ppl_cvae.train.settings import DataSource, resolve_settings

    source = DataSource(x_shape=(40,), y_shape=(6,), num_pairs=1000)
    model, _ = resolve_settings(source)
    assert model.x_whitening == "linear" and model.init_scale == 1.0
    for likelihood in ("bernoulli", "gaussian_fixed"):
        model, _ = resolve_settings(source, Overrides(model={"likelihood": likelihood}))
        assert model.x_whitening == "none" and model.init_scale == 0.05
    model, _ = resolve_settings(source, Overrides(model={"x_whitening": "none"}))
    assert model.x_whitening == "none" and model.init_scale == 0.05
    big = DataSource(x_shape=(64, 65), y_shape=(6,), num_pairs=1000)  # 4160 > MAX_FULL_NOISE
    assert resolve_settings(big)[0].x_whitening == "none"
