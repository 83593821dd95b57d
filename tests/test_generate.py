"""Draws of an unconditional VAE's generative model (``inference.generate``; ``sample`` without
``--observation``).

The draws must follow the model itself: ``z ~ N(0, I)`` and ``x | z`` the decoder's
distribution. With ``N`` draws the sample mean of a standard normal has sd ``1 / sqrt(N)`` and
its variance sd ``sqrt(2 / N)``; the tolerances are 4 of those sds.
"""

from __future__ import annotations

import math

import pytest
import torch

from inference.generate import generate, generated_inference_data
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import ConfigError
from ppl_cvae.models.cvae import CVAE

N = 20_000


def _vae(**model) -> CVAE:
    torch.manual_seed(0)
    config = ModelConfig(x_shape=(2, 3), y_shape=None, latent_dim=4, hidden_dims=(16,),
                         prior="standard_normal", **model)  # fmt: skip
    return CVAE(config)


def _standard_normal(values: torch.Tensor) -> None:
    flat = values.reshape(values.shape[0], -1).double()
    assert flat.mean(0).abs().max() <= 4 / math.sqrt(N)
    assert (flat.var(0) - 1).abs().max() <= 4 * math.sqrt(2 / N)


def test_draws_follow_the_generative_model():
    vae = _vae()
    draws = generate(vae, N, seed=0)
    assert draws["x"].shape == (N, 2, 3) and draws["z"].shape == (N, 4)
    _standard_normal(draws["z"])  # the prior p(z)
    x_dist, _ = vae.x_distribution(draws["z"], None)
    _standard_normal((draws["x"] - x_dist.mean) / x_dist.stddev)  # the decoder's noise
    torch.testing.assert_close(draws["x_mean"], x_dist.mean)
    means = generate(vae, 5, seed=1, decoder_noise=False)
    torch.testing.assert_close(means["x"], means["x_mean"])
    again = generate(vae, 5, seed=1, decoder_noise=False)
    assert torch.equal(means["x"], again["x"])


def test_bernoulli_draws_are_pixels_and_means_probabilities():
    vae = _vae(likelihood="bernoulli")
    pixels = generate(vae, 2000, seed=0)["x"]
    assert set(pixels.unique().tolist()) <= {0.0, 1.0}
    probabilities = generate(vae, 2000, seed=0, decoder_noise=False)["x"]
    assert bool(((probabilities > 0) & (probabilities < 1)).all())
    # the pixel frequencies match the mean probabilities (binomial sd <= 0.5 / sqrt(2000))
    assert (pixels.mean(0) - probabilities.mean(0)).abs().max() <= 4 * 0.5 / math.sqrt(2000)


def test_a_cvae_is_refused_and_the_file_layout():
    cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(8,)))
    with pytest.raises(ConfigError, match="this model is conditioned on y"):
        generate(cvae, 3)
    vae = _vae()
    idata = generated_inference_data(vae, generate(vae, 7, seed=0), attrs={"run_dir": "r"})
    assert list(idata.groups()) == ["prior"]
    assert idata.prior["x"].dims == ("chain", "draw", "x_dim_0", "x_dim_1")
    assert idata.prior["z"].shape == (1, 7, 4) and idata.prior.attrs["run_dir"] == "r"


def test_a_request_beyond_memory_is_refused_before_drawing():
    from ppl_cvae.errors import ResourceError

    with pytest.raises(ResourceError, match="1000000000000 generated draws of 6 values"):
        generate(_vae(), 10**12)
