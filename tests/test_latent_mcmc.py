"""NUTS in the latent space of a generative prior (Laloy et al. 2018), and its fit and CLI.

Known answer: a hand-built unconditional VAE whose decoder location is exactly ``x = A z``, on
a linear-Gaussian problem ``y = F x + e``, ``e ~ N(0, s^2 I)``: the latent posterior
``N(z; 0, I) N(y; F A z, s^2 I)`` is Gaussian with precision ``I + G^T G / s^2`` and mean
``P^-1 G^T y / s^2`` (``G = F A``).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import torch

import inference.latent_mcmc as latent_mcmc
from inference.latent_mcmc import (
    LatentMCMCResult,
    check_generative_prior,
    decode_latent,
    encode_latent,
    latent_nuts_sample,
    latent_nuts_summary,
    sample_latent_nuts,
)
from inference.mcmc import RHAT_JUDGE_LIMIT, rhat_threshold
from inference.posterior import draw_posterior
from inference.sample import CorrectionConfig, sample_corrected
from ppl_cvae.config import ModelConfig, Overrides
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.train.generative_prior import generative_prior_settings, prior_simulator
from tests.conftest import TINY_FIT

OFFSET = 10.0  # the decoder's hidden units see W z + OFFSET > 0: LeakyReLU is the identity


def linear_vae(a: torch.Tensor) -> CVAE:
    """An unconditional VAE with decoder location exactly ``A z`` for ``|z_i| < OFFSET``.

    ``hidden_dims=()``: the decoder is ``Linear(k, H) -> LeakyReLU -> Linear(H, d)``; the first
    layer passes ``z + OFFSET`` in its first ``k`` units (all positive), the second maps them
    with ``A`` and removes ``A OFFSET 1``. The standardiser is the identity.
    """
    d, k = a.shape
    vae = CVAE(ModelConfig(x_shape=(d,), y_shape=None, latent_dim=k, hidden_dims=(),
                           prior="standard_normal", likelihood="gaussian_fixed", fixed_scale=0.1))
    first, last = vae.decoder.input.z_part, vae.decoder.body[0]
    with torch.no_grad():
        first.weight.zero_()
        first.weight[:k] = torch.eye(k)
        first.bias.fill_(OFFSET)
        last.weight.zero_()
        last.weight[:, :k] = a
        last.bias.copy_(-OFFSET * a.sum(1))
    return vae.eval()


def exact_latent_posterior(problem, a, y):
    """Mean ``(k,)`` and covariance ``(k, k)`` of ``p(z | y)``, float64."""
    g = problem.matrix.double() @ a.double()
    s2 = problem.noise_std**2
    precision = torch.eye(a.shape[1], dtype=torch.float64) + g.T @ g / s2
    cov = torch.linalg.inv(precision)
    return cov @ g.T @ y.double() / s2, cov


A = torch.tensor([[1.0, 0.0], [0.5, 1.0], [-0.3, 0.8]])


def test_hand_built_decoder_is_the_linear_map():
    """The construction the known-answer test relies on: g(z) = A z to float32 rounding."""
    vae = linear_vae(A)
    z = torch.randn(50, 2) * 3
    assert torch.allclose(decode_latent(vae, z), z @ A.T, atol=1e-5)
    assert decode_latent(vae, z[0]).shape == (3,)  # an unbatched z keeps no batch axis


def test_latent_nuts_draws_have_the_exact_latent_posterior_moments():
    """Mean within 4 Monte Carlo standard errors (sd / sqrt(ESS)) per coordinate, variances
    within 4 sqrt(2 / ESS) relative, correlation within 4 (1 - rho^2) / sqrt(ESS); x = A z.
    Negative control: the maximum-likelihood z (the target without the prior N(0, I)) lies
    more than those 4 standard errors away, so a sampler that dropped the prior term fails."""
    problem = LinearGaussian(x_dim=3, y_dim=4, noise_std=1.0, seed=3)
    vae = linear_vae(A)
    y = problem.simulate(1, torch.Generator().manual_seed(7))[1][0]
    mean, cov = exact_latent_posterior(problem, A, y)
    sd = cov.diagonal().sqrt()
    # stand-ins for amortized draws: any models; their encodings start the chains
    init = problem.sample_prior(200, torch.Generator().manual_seed(0))
    result = latent_nuts_sample(vae, problem, y, init, num_samples=250, warmup_steps=150,
                                num_chains=2, seed=0)
    assert result.z.shape == (2, 250, 2) and result.x.shape == (2, 250, 3)
    assert torch.allclose(result.x, result.z @ A.T, atol=1e-4)
    assert result.divergences == 0 and result.rhat < 1.05  # 2 x 250 draws: R-hat scatter ~0.01
    n_e = result.min_ess
    assert n_e > 100
    z = result.z.reshape(-1, 2).double()
    tol = 4 / n_e**0.5
    assert ((z.mean(0) - mean) / sd).abs().max() < tol
    assert ((z.var(0) / sd.pow(2)) - 1).abs().max() < 4 * (2 / n_e) ** 0.5
    rho = cov[0, 1] / (sd[0] * sd[1])
    rho_hat = torch.corrcoef(z.T)[0, 1]
    assert (rho_hat - rho).abs() < 4 * (1 - rho**2) / n_e**0.5
    g = problem.matrix.double() @ A.double()
    z_ml = torch.linalg.lstsq(g, y.double().unsqueeze(-1)).solution.squeeze(-1)
    assert ((z_ml - mean) / sd).abs().max() > 2 * tol  # the control is far outside
    assert ((z.mean(0) - z_ml) / sd).abs().max() > tol


def test_chains_start_at_the_encoded_models():
    """z_init is q(z|x)'s mean of rows of ``init``: the first ``num_chains`` ones, or those of
    highest target density; not a prior draw."""
    problem = LinearGaussian(x_dim=3, y_dim=4, seed=3)
    vae = linear_vae(A)
    init = problem.sample_prior(6, torch.Generator().manual_seed(2))
    y = torch.ones(4)
    result = latent_nuts_sample(vae, problem, y, init, num_samples=4, warmup_steps=20,
                                num_chains=3, start="first")
    expected = encode_latent(vae, init[:3])
    assert torch.allclose(result.z_init, expected, atol=1e-6)
    assert not torch.allclose(result.z_init, encode_latent(vae, init[3:]))
    # start="best": the 3 encodings of lowest potential |z|^2 / 2 - log p(y | A z)
    result = latent_nuts_sample(vae, problem, y, init, num_samples=4, warmup_steps=20,
                                num_chains=3)
    z = encode_latent(vae, init).double()
    potential = 0.5 * z.pow(2).sum(-1) - problem.log_likelihood(z @ A.double().T, y.double())
    best = z[torch.argsort(potential)[:3]]
    assert torch.allclose(result.z_init.double(), best, atol=1e-6)
    with pytest.raises(ConfigError, match="start must be"):
        latent_nuts_sample(vae, problem, y, init, start="random")


def test_sample_latent_nuts_starts_from_the_cvae_amortized_draws(monkeypatch):
    """The chains' models are the CVAE's draws for that observation (seed + m), all of them."""
    problem = LinearGaussian(x_dim=3, y_dim=4, seed=3)
    cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(4,), latent_dim=2, hidden_dims=(8,)))
    vae = linear_vae(A)
    seen = []
    original = latent_mcmc.latent_nuts_sample

    def spy(prior_vae, prob, y, init, **kwargs):
        seen.append((y.clone(), init.clone()))
        return original(prior_vae, prob, y, init, **kwargs)

    monkeypatch.setattr(latent_mcmc, "latent_nuts_sample", spy)
    y = problem.simulate(2, torch.Generator().manual_seed(1))[1]
    idata, summary, ok = sample_latent_nuts(cvae, vae, y, 8, problem, chains=2,
                                            warmup_steps=3, seed=5)
    assert len(seen) == 2
    for m, (y_m, init) in enumerate(seen):
        assert torch.equal(y_m, y[m])
        expected = draw_posterior(cvae, y[m : m + 1], len(init), seed=5 + m).x[:, 0]
        assert torch.equal(init, expected)
    post = idata["posterior"]
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 4
    assert post["x"].shape[-2:] == (2, 3) and post["z"].shape[-1] == 2
    assert idata["posterior"].attrs["method"] == "latent-nuts"
    assert summary.startswith("latent NUTS: R-hat")
    rhat = idata["sample_stats"]["rhat"].values[0, 0]  # per observation, broadcast over draws
    div = idata["sample_stats"]["divergences"].values[0, 0]
    bound = rhat_threshold(2, 4, 2)  # chains, draws, latent coordinates
    assert np.allclose(idata["sample_stats"]["rhat_threshold"].values[0, 0], bound)
    assert ok == bool((rhat <= bound).all() and (div == 0).all())
    assert ("FAILED" in summary) == (not ok)


def _result(rhat, divergences):
    chains = torch.zeros(4, 500, 2)  # bound: rhat_threshold(4, 500, 2), 1.01 at this size
    return LatentMCMCResult(z=chains, x=chains, z_init=chains[:, 0], rhat=rhat, min_ess=100.0,
                            num_evaluations=10, divergences=divergences, seconds=1.0)


def test_summary_says_failed_when_rhat_is_above_threshold_or_chains_diverge():
    summary, ok = latent_nuts_summary([_result(1.001, 0), _result(1.005, 0)])
    assert ok and "FAILED" not in summary and "R-hat 1.0050" in summary
    summary, ok = latent_nuts_summary([_result(1.001, 0), _result(1.02, 0)])
    assert not ok and "FAILED for 1 of 2" in summary
    summary, ok = latent_nuts_summary([_result(1.001, 3)])
    assert not ok and "FAILED for 1 of 1" in summary
    with pytest.raises(ConfigError, match="at least one"):
        latent_nuts_summary([])


def test_errors_name_the_bad_input():
    problem = LinearGaussian(x_dim=3, y_dim=4)
    vae = linear_vae(A)
    cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(4,), latent_dim=2, hidden_dims=(8,)))
    init = torch.zeros(4, 3)
    with pytest.raises(ConfigError, match="must be an unconditional VAE"):
        latent_nuts_sample(cvae, problem, torch.zeros(4), init)  # a conditional run as prior
    with pytest.raises(ConfigError, match="must be a CVAE"):
        check_generative_prior(object())
    flow = CVAE(ModelConfig(x_shape=(3,), y_shape=None, latent_dim=2, hidden_dims=(8,),
                            prior="standard_normal", likelihood="flow", flow_layers=1))
    with pytest.raises(ConfigError, match="flow"):
        check_generative_prior(flow)
    with pytest.raises(ShapeError, match=r"x_shape \(5,\)"):
        latent_nuts_sample(vae, LinearGaussian(x_dim=5, y_dim=4), torch.zeros(4), init)
    with pytest.raises(ShapeError, match=r"y must have shape \(4,\)"):
        latent_nuts_sample(vae, problem, torch.zeros(1, 4), init)
    with pytest.raises(ShapeError, match="init must have shape"):
        latent_nuts_sample(vae, problem, torch.zeros(4), torch.zeros(4, 2))
    with pytest.raises(ConfigError, match="num_samples must be an int >= 4"):
        latent_nuts_sample(vae, problem, torch.zeros(4), init, num_samples=3)
    with pytest.raises(ConfigError, match="at least 4 per chain"):
        sample_latent_nuts(cvae, vae, torch.zeros(1, 4), 6, problem, chains=2)
    with pytest.raises(ShapeError, match=r"z must have shape"):
        decode_latent(vae, torch.zeros(3, 5))
    with pytest.raises(ShapeError):
        encode_latent(vae, torch.zeros(2, 4))
    y = torch.zeros(1, 4)
    with pytest.raises(ConfigError, match="needs a conditional model"):  # a run without y
        sample_latent_nuts(vae, vae, y, 4, problem)
    with pytest.raises(ConfigError, match="needs a generative prior"):
        sample_corrected(cvae, y, 4, problem, CorrectionConfig(method="latent-nuts"))
    other = linear_vae(torch.ones(5, 2))
    with pytest.raises(ShapeError, match="x_shape"):
        sample_latent_nuts(cvae, other, y, 4, problem)


def test_generative_prior_settings_are_unconditional_and_refuse_y_parts():
    problem = LinearGaussian(x_dim=3, y_dim=4)
    model, train = generative_prior_settings(
        problem, Overrides(model={"latent_dim": 3}, train={"num_epochs": 2}))
    assert model.y_shape is None and model.prior == "standard_normal"
    assert model.latent_dim == 3 and train.num_epochs == 2 and not model.linear_skip
    for bad in ({"model": {"prior": "learned"}}, {"model": {"linear_skip": True}},
                {"train": {"physics_weight": 0.5}}):
        with pytest.raises(ConfigError, match="generative prior"):
            generative_prior_settings(problem, Overrides(**bad))
    x, y = prior_simulator(problem)(5, torch.Generator().manual_seed(4))
    assert y is None
    assert torch.equal(x, problem.sample_prior(5, torch.Generator().manual_seed(4)))


def test_cli_fit_unconditional_then_sample_latent_nuts(tmp_path, capsys):
    """Round trip: fit a CVAE and a generative prior, sample with latent NUTS, read the file."""
    from ppl_cvae.cli import main
    from ppl_cvae.train import load_checkpoint

    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(tmp_path / "run"), *TINY_FIT]) == 0
    assert main(["fit", *lg, "--unconditional", "--out", str(tmp_path / "prior"),
                 *TINY_FIT]) == 0
    prior, meta = load_checkpoint(tmp_path / "prior")
    assert prior.config.y_shape is None and prior.config.prior == "standard_normal"
    assert meta["problem"] is not None
    # the run file repeats an unconditional fit
    assert main(["fit", "--config", str(tmp_path / "prior" / "config.json"), "--quiet",
                 "--out", str(tmp_path / "again")]) == 0
    assert load_checkpoint(tmp_path / "again")[0].config == prior.config
    assert main(["simulate", *lg, "--num", "2", "--out", str(tmp_path / "obs.npz")]) == 0
    capsys.readouterr()
    out = tmp_path / "post.nc"
    args = ["sample", str(tmp_path / "run"), "--observation", str(tmp_path / "obs.npz"),
            "--method", "latent-nuts", "--generative-prior", str(tmp_path / "prior"),
            "--num-samples", "20", "--chains", "2", "--warmup", "10", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    idata = az.from_netcdf(out)
    post = idata["posterior"]
    assert (post.sizes["chain"], post.sizes["draw"]) == (2, 10)
    assert post["z"].shape[-1] == prior.config.latent_dim
    assert post.attrs["method"] == "latent-nuts"
    rhat = idata["sample_stats"]["rhat"].values[0, 0]  # per observation, broadcast over draws
    div = idata["sample_stats"]["divergences"].values[0, 0]
    assert rhat.shape == (2,)
    bound = rhat_threshold(2, 10, prior.config.latent_dim)
    failed = bool((rhat > bound).any() or (div > 0).any() or bound > RHAT_JUDGE_LIMIT)
    assert printed.startswith("latent NUTS: R-hat") and ("FAILED" in printed) == failed
    assert np.isfinite(idata["sample_stats"]["chi2_per_datum"].values).all()
    # the two runs swapped, a missing prior, and --unconditional on a dataset of images
    bad = args[:-1] + [str(tmp_path / "p2.nc")]
    assert bad[6] == "--generative-prior"
    swapped = [bad[0], str(tmp_path / "prior"), *bad[2:7], str(tmp_path / "run"), *bad[8:]]
    assert main(swapped) == 2
    assert main(bad[:6] + bad[8:]) == 2  # --generative-prior dropped
    err = capsys.readouterr().err
    assert "unconditional VAE" in err and "go together" in err
    assert main(["fit", "--dataset", "digits", "--unconditional",
                 "--out", str(tmp_path / "x")]) == 2  # images: --condition none
    assert "--condition none" in capsys.readouterr().err
    assert not (tmp_path / "p2.nc").exists()
