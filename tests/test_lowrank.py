"""Correlated decoder noise: likelihood="gaussian_lowrank" and "gaussian_full"."""

from __future__ import annotations

import pyro
import pytest
import torch

from ppl_cvae.cli import main
from ppl_cvae.config import ModelConfig, TrainConfig
from ppl_cvae.errors import ConfigError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.train import load_checkpoint
from ppl_cvae.train.fit import build_cvae, fit
from tests.conftest import TINY_FIT


@pytest.mark.parametrize("x_shape", [(6,), (2, 3)])
def test_lowrank_likelihood_is_the_stated_gaussian(x_shape):
    """log p(x | z, y) equals N(vec x; vec m, W_x W_x^T + diag(s^2)) in physical units."""
    cfg = ModelConfig(x_shape=x_shape, y_shape=(2,), hidden_dims=(8,),
                      likelihood="gaussian_lowrank", noise_rank=2)
    cvae = CVAE(cfg)
    with torch.no_grad():  # a non-trivial standardiser and factor
        cvae.x_standardiser.std.copy_(torch.linspace(0.5, 2.0, 6).reshape(x_shape))
        cvae.decoder.cov_factor.copy_(torch.randn(6, 2))
        cvae.decoder.raw_scale.fill_(-0.07)  # a diagonal sd near 0.5 (standardised units)
    z, y = torch.randn(4, cfg.latent_dim), torch.randn(4, 2)
    mean, scale = cvae.decode(z, y)
    d = cvae._x_distribution(mean, scale)
    assert d.event_shape == x_shape and d.batch_shape == (4,)
    w = cvae.noise_factor()
    assert w.shape == (6, 2)
    cov = w @ w.T + torch.diag_embed(scale.reshape(4, 6).pow(2))
    exact = torch.distributions.MultivariateNormal(mean.reshape(4, 6), covariance_matrix=cov)
    x = mean + torch.randn(4, *x_shape)
    # float32 Woodbury identity against a dense Cholesky: agreement to float32 rounding
    assert torch.allclose(d.log_prob(x), exact.log_prob(x.reshape(4, 6)), rtol=1e-5, atol=1e-4)
    # draws have that covariance: 4 standard errors of a sample covariance entry
    draws = d.sample((20000,))[:, 0].reshape(20000, 6)
    err = (torch.cov(draws.T) - cov[0]).abs()
    se = ((cov[0].diagonal()[:, None] * cov[0].diagonal()[None, :] + cov[0] ** 2) / 20000).sqrt()
    assert (err <= 4 * se + 1e-6).all()


def test_noise_rank_is_validated():
    with pytest.raises(ConfigError, match="noise_rank=7 is above prod"):
        ModelConfig(x_shape=(6,), y_shape=(2,), likelihood="gaussian_lowrank", noise_rank=7)
    with pytest.raises(ConfigError, match="noise_rank must be a positive integer"):
        ModelConfig(x_shape=(6,), y_shape=(2,), likelihood="gaussian_lowrank", noise_rank=0)


def test_lowrank_model_trains_and_round_trips_through_the_cli(tmp_path):
    run = tmp_path / "run"
    flags = ["--likelihood", "gaussian_lowrank", "--noise-rank", "2"]
    assert main(["fit", "--problem", "linear_gaussian", "--out", str(run), *TINY_FIT, *flags]) == 0
    cvae, _ = load_checkpoint(run)
    assert cvae.config.likelihood == "gaussian_lowrank" and cvae.noise_factor().shape == (2, 2)
    trace = pyro.poutine.trace(cvae.model).get_trace(torch.zeros(3, 2))
    assert trace.nodes["x"]["value"].shape == (3, 2)


@pytest.mark.parametrize("x_shape", [(4,), (2, 2)])
def test_full_noise_likelihood_is_the_stated_gaussian(x_shape):
    """log p(x | z, y) = N(vec x; vec m, diag(sd) L L^T diag(sd)), L lower triangular."""
    cfg = ModelConfig(x_shape=x_shape, y_shape=(2,), hidden_dims=(8,), likelihood="gaussian_full")
    cvae = CVAE(cfg)
    with torch.no_grad():
        cvae.x_standardiser.std.copy_(torch.linspace(0.5, 2.0, 4).reshape(x_shape))
        cvae.decoder.tril_raw.copy_(0.5 * torch.randn(4, 4))
        cvae.decoder.raw_scale.fill_(0.0)  # a diagonal of 1: a well-conditioned factor
    tril = cvae.decoder.scale_tril()
    assert torch.equal(tril, torch.tril(tril)) and (tril.diagonal() > 0).all()
    z, y = torch.randn(3, cfg.latent_dim), torch.randn(3, 2)
    mean, scale = cvae.decode(z, y)
    d = cvae._x_distribution(mean, scale)
    assert d.event_shape == x_shape and d.batch_shape == (3,)
    sd = cvae.x_standardiser.std.reshape(-1)
    cov = sd[:, None] * (tril @ tril.T) * sd[None, :]
    exact = torch.distributions.MultivariateNormal(mean.reshape(3, 4), covariance_matrix=cov)
    x = mean + torch.randn(3, *x_shape)
    assert torch.allclose(d.log_prob(x), exact.log_prob(x.reshape(3, 4)), rtol=1e-5, atol=1e-4)


def test_full_noise_learns_a_correlated_linear_gaussian_posterior():
    """x ~ N(0, S), y = G x + e: draws for one y have the exact posterior covariance.

    The posterior covariance ``(S^-1 + G^T R^-1 G)^-1`` does not depend on y, so a decoder
    with a linear skip and a full noise covariance holds the exact posterior; a diagonal noise
    would miss the correlation (|rho| = 0.8 here). Tolerance: 0.1 on the correlation and 15% on
    the variances, several sample standard errors at 4000 draws plus the fit's own error.
    """
    g = torch.Generator().manual_seed(1)
    s = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, 0.7], [0.5, 0.7, 1.0]])
    gmat, noise = torch.tensor([[1.0, 0.0, 1.0]]), 0.3
    x = torch.randn(6000, 3, generator=g) @ torch.linalg.cholesky(s).T
    y = x @ gmat.T + noise * torch.randn(6000, 1, generator=g)
    post = torch.linalg.inv(torch.linalg.inv(s) + gmat.T @ gmat / noise**2)
    cfg = ModelConfig(x_shape=(3,), y_shape=(1,), latent_dim=1, hidden_dims=(16,),
                      likelihood="gaussian_full", linear_skip=True, init_scale=0.5)
    cvae = build_cvae(cfg, x, y, seed=0)
    fit(cvae, x, y, TrainConfig(num_epochs=25, batch_size=128, learning_rate=5e-3,
                                lr_decay=0.1, patience=0), progress=False)
    with torch.no_grad():
        draws = pyro.poutine.trace(cvae.model).get_trace(torch.zeros(4000, 1)).nodes["x"]["value"]
    cov = torch.cov(draws.T)
    corr = cov / cov.diagonal().sqrt().outer(cov.diagonal().sqrt())
    exact_corr = post / post.diagonal().sqrt().outer(post.diagonal().sqrt())
    assert exact_corr[0, 2] < -0.5  # the data pin x0 + x2 down: a strong negative correlation
    assert (corr - exact_corr).abs().max() < 0.1
    assert ((cov.diagonal() / post.diagonal()) - 1).abs().max() < 0.15
