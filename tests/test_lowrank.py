"""Correlated decoder noise: likelihood="gaussian_lowrank" (LowRankMultivariateNormal)."""

from __future__ import annotations

import pyro
import pytest
import torch

from ppl_cvae.cli import main
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import ConfigError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.train import load_checkpoint
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
