import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from ppl_cvae import CVAE, ModelConfig, TwoBirds
from ppl_cvae.config import LIKELIHOODS, TrainConfig
from ppl_cvae.errors import ConfigError, ShapeError


def _trace(fn, *args, **kwargs):
    return poutine.trace(fn).get_trace(*args, **kwargs)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("network", ["mlp", "conv1d"])
@pytest.mark.parametrize("batch", [1, 5])
def test_model_and_guide_site_shapes(likelihood, network, batch):
    cfg = ModelConfig(
        x_shape=(1, 50, 2),
        y_shape=(1, 50, 2),
        latent_dim=3,
        hidden_dims=(16,),
        network=network,
        conv_channels=(4, 8),
        feature_dim=8,
        likelihood=likelihood,
        # a flow samples x in 100 sequential passes per layer: 2 small layers (not the
        # default 5 of 64x64) still compose a flow and give the same shapes, 3x cheaper
        flow_layers=2,
        flow_hidden_dims=(16,),
    )
    cvae = CVAE(cfg)
    y = torch.randn(batch, 1, 50, 2)
    if likelihood in ("bernoulli", "categorical"):  # facies codes (num_facies = 2)
        x = torch.rand(batch, 1, 50, 2).round()
    else:
        x = torch.randn_like(y)
    guide_tr = _trace(cvae.guide, y, x)
    assert guide_tr.nodes["z"]["value"].shape == (batch, 3)
    model_tr = _trace(poutine.replay(cvae.model, trace=guide_tr), y, x)
    assert model_tr.nodes["x"]["fn"].batch_shape == (batch,)
    assert model_tr.nodes["x"]["fn"].event_shape == (1, 50, 2)
    if likelihood != "flow":  # a flow's location costs a draw: recorded when x is sampled
        assert model_tr.nodes["x_mean"]["value"].shape == (batch, 1, 50, 2)
    free = _trace(cvae.model, y)  # x sampled
    assert free.nodes["x"]["value"].shape == (batch, 1, 50, 2)
    assert free.nodes["x_mean"]["value"].shape == (batch, 1, 50, 2)
    loss = Trace_ELBO().loss(cvae.model, cvae.guide, y, x)
    assert math.isfinite(loss)


def test_unconditional_vae_is_the_same_class():
    cfg = ModelConfig(x_shape=(4,), y_shape=None, prior="standard_normal", hidden_dims=(8,))
    vae = CVAE(cfg)
    x = torch.randn(6, 4)
    assert math.isfinite(Trace_ELBO().loss(vae.model, vae.guide, None, x))
    assert _trace(vae.model).nodes["x"]["value"].shape == (1, 4)
    with pytest.raises(ShapeError, match="unconditional VAE: y must be None"):
        vae.model(torch.zeros(6, 2), x)
    with pytest.raises(ConfigError, match="no prior net"):
        ModelConfig(x_shape=(4,), y_shape=None)


def test_fixed_standard_normal_prior():
    cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(3,), prior="standard_normal", hidden_dims=(8,)))
    fn = _trace(cvae.model, torch.randn(4, 3)).nodes["z"]["fn"]
    assert torch.equal(fn.base_dist.loc, torch.zeros(4, 8))
    assert torch.equal(fn.base_dist.scale, torch.ones(4, 8))


def test_basis_decoder_generates_exact_lines():
    problem = TwoBirds("data_1")
    cfg = ModelConfig(
        x_shape=(1, 50, 2), y_shape=(1, 50, 2), hidden_dims=(16,), basis_dim=4, latent_dim=2
    )
    cvae = CVAE(cfg, basis=problem.basis())
    mean = _trace(cvae.model, torch.randn(3, 1, 50, 2)).nodes["x_mean"]["value"]
    second_diff = mean[..., 2:, :] - 2 * mean[..., 1:-1, :] + mean[..., :-2, :]
    assert second_diff.abs().max() < 1e-5  # straight lines by construction
    with pytest.raises(ConfigError, match=r"basis must have shape \(100, 4\)"):
        CVAE(cfg, basis=torch.zeros(100, 3))


@pytest.mark.parametrize(
    "y, x, match",
    [
        (torch.zeros(3, 4), torch.zeros(3, 2), r"y must have shape \(batch, 3\)"),
        (torch.zeros(3, 3), torch.zeros(3, 5), r"x must have shape \(batch, 2\)"),
        (torch.zeros(3, 3), torch.zeros(4, 2), "same batch size"),
        (None, torch.zeros(3, 2), "y is required"),
    ],
)
def test_bad_shapes_are_named(y, x, match):
    cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(3,), hidden_dims=(8,)))
    with pytest.raises(ShapeError, match=match):
        cvae.model(y, x)


def test_guide_requires_x():
    cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(3,), hidden_dims=(8,)))
    with pytest.raises(ShapeError, match="training guide needs x"):
        cvae.guide(torch.zeros(2, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"likelihood": "poisson"}, "unknown likelihood"),
        ({"activation": "swish2"}, "unknown activation"),
        ({"hidden_dims": (8, -1)}, "hidden_dims"),
        ({"basis_dim": 7}, "basis_dim"),
        ({"fixed_scale": 0.0}, "fixed_scale"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(x_shape=(2,), y_shape=(3,), **kwargs)


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_decoder", "bernoulli"])
def test_trace_elbo_equals_hand_computed_elbo(kl_weight, likelihood):
    """Trace_ELBO's single-particle loss is -[log p(x|z,y) + beta (log p(z|y) - log q(z|x,y))]."""
    cfg = ModelConfig(
        x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(8,), likelihood=likelihood
    )
    cvae = CVAE(cfg)
    y = torch.randn(4, 2)
    x = torch.rand(4, 3).round() if likelihood == "bernoulli" else torch.randn(4, 3)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(cvae.model, cvae.guide, y, x, kl_weight=kl_weight)
    pyro.set_rng_seed(3)
    z = _trace(cvae.guide, y, x).nodes["z"]["value"]  # Trace_ELBO runs the guide first
    with torch.no_grad():
        q_loc, q_scale = cvae.recognition_params(y, x)
        p_loc, p_scale = cvae.prior_params(y)
        log_q = torch.distributions.Normal(q_loc, q_scale).log_prob(z).sum()
        log_pz = torch.distributions.Normal(p_loc, p_scale).log_prob(z).sum()
        mean, scale = cvae.decode(z, y)
        if likelihood == "bernoulli":
            log_px = (
                torch.distributions.Bernoulli(probs=mean.clamp(1e-6, 1 - 1e-6)).log_prob(x).sum()
            )
        else:
            log_px = torch.distributions.Normal(mean, scale).log_prob(x).sum()
    expected = -(log_px + kl_weight * (log_pz - log_q)).item()
    # float32 sums of ~20 terms of order 1: agreement to 1e-4 relative
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("skip", [False, True])
def test_categorical_log_prob_matches_hand_computation(skip):
    """log p(x | z, y) = sum over cells of l_{c, x_c} - log sum_k exp(l_{c, k}), K = 3 logits."""
    cfg = ModelConfig(
        x_shape=(2, 2),
        y_shape=(3,),
        latent_dim=2,
        hidden_dims=(8,),
        likelihood="categorical",
        num_facies=3,
        linear_skip=skip,
    )
    cvae = CVAE(cfg)
    if skip:  # a non-zero skip, so that its K logits per cell are tested too
        with torch.no_grad():
            cvae.decoder.skip.weight.normal_()
    y = torch.randn(4, 3)
    x = torch.tensor([0.0, 1.0, 2.0, 2.0]).expand(4, 4).reshape(4, 2, 2).contiguous()
    z = torch.randn(4, 2)
    tr = _trace(poutine.condition(cvae.model, data={"z": z}), y, x)
    assert tr.nodes["x"]["fn"].event_shape == (2, 2)
    log_px = tr.nodes["x"]["fn"].log_prob(x)  # (4,)
    with torch.no_grad():
        logits, _ = cvae.decoder(z, cvae.y_standardiser(y))  # (4, 2, 2, 3)
    assert logits.shape == (4, 2, 2, 3)
    expected = torch.zeros(4, dtype=torch.float64)
    for n in range(4):
        for i in range(2):
            for j in range(2):
                row = [float(v) for v in logits[n, i, j]]
                code = int(x[n, i, j])
                expected[n] += row[code] - math.log(sum(math.exp(v) for v in row))
    # float32 softmax of O(1) logits (no probability near the 1e-6 clamp): 1e-5 absolute
    assert float(logits.softmax(-1).min()) > 1e-4
    torch.testing.assert_close(log_px.double(), expected, rtol=0, atol=1e-5)
    # the recorded means: class probabilities and the mean code sum_k k p_k
    probs = tr.nodes["x_probs"]["value"]
    torch.testing.assert_close(probs, logits.softmax(-1))
    torch.testing.assert_close(tr.nodes["x_mean"]["value"], probs[..., 1] + 2 * probs[..., 2])
    # draws are float codes in 0..K-1
    drawn = _trace(cvae.model, y).nodes["x"]["value"]
    assert drawn.dtype == torch.float32 and set(drawn.unique().tolist()) <= {0.0, 1.0, 2.0}
    with_f = CVAE(cfg, forward_operator=lambda v: v.flatten(start_dim=-2)[..., :3])
    with pytest.raises(ConfigError, match="not defined for likelihood 'categorical'"):
        with_f.model(y, x, physics_weight=1.0)


def test_categorical_config_checks():
    with pytest.raises(ConfigError, match="num_facies must be an integer in"):
        ModelConfig(x_shape=(2,), y_shape=(3,), likelihood="categorical", num_facies=1)
    with pytest.raises(ConfigError, match="num_facies"):
        ModelConfig(x_shape=(2,), y_shape=(3,), num_facies=2.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Gaussian likelihood, not 'categorical'"):
        ModelConfig(x_shape=(2,), y_shape=(3,), likelihood="categorical", basis_dim=1)
    cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(3,), likelihood="categorical", num_facies=4))
    with pytest.raises(ValueError, match="x"):  # code 4 is outside 0..3 (Pyro validation)
        Trace_ELBO().loss(cvae.model, cvae.guide, torch.zeros(1, 3), torch.tensor([[4.0, 0.0]]))


def test_physics_term_adds_weighted_chi_squared():
    problem = TwoBirds("data_1")
    cfg = ModelConfig(x_shape=(1, 50, 2), y_shape=(1, 50, 2), latent_dim=2, hidden_dims=(8,))
    cvae = CVAE(cfg, forward_operator=problem.forward, misfit_std=problem.misfit_std)
    x, y = problem.simulate(3)
    pyro.set_rng_seed(1)
    base = Trace_ELBO().loss(cvae.model, cvae.guide, y, x)
    pyro.set_rng_seed(1)
    with_physics = Trace_ELBO().loss(cvae.model, cvae.guide, y, x, physics_weight=2.0)
    pyro.set_rng_seed(1)
    z = _trace(cvae.guide, y, x).nodes["z"]["value"]
    with torch.no_grad():
        mean, _ = cvae.decode(z, y)
        chi2 = (((problem.forward(mean) - y) / problem.misfit_std) ** 2).sum().item()
    assert with_physics - base == pytest.approx(0.5 * 2.0 * chi2, rel=1e-4)
    no_forward = CVAE(cfg)
    with pytest.raises(ConfigError, match="forward operator"):
        Trace_ELBO().loss(no_forward.model, no_forward.guide, y, x, physics_weight=1.0)


def test_model_is_a_proper_generative_story():
    """Sampling the model gives x ~ Normal(decoder mean, scale) for z from the prior net."""
    cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(1,), hidden_dims=(8,), latent_dim=2))
    tr = _trace(cvae.model, torch.zeros(1, 1))
    assert isinstance(tr.nodes["z"]["fn"], dist.Independent)
    assert tr.nodes["x"]["is_observed"] is False


def test_unconditional_vae_trains_with_the_same_fit_loop():
    """A VAE (no y) on N(mu, diag(sd^2)) data: the loss approaches the data entropy."""
    from ppl_cvae import TrainConfig, build_cvae, fit

    gen = torch.Generator().manual_seed(0)
    sd = torch.tensor([0.5, 2.0])
    x = 1.0 + sd * torch.randn(4096, 2, generator=gen)
    cfg = ModelConfig(
        x_shape=(2,), y_shape=None, prior="standard_normal", hidden_dims=(32, 32), latent_dim=2
    )
    vae = build_cvae(cfg, x, None)
    result = fit(
        vae,
        x,
        None,
        TrainConfig(num_epochs=20, batch_size=128, learning_rate=3e-3, patience=0),
        progress=False,
    )
    # E[-log p(x)] = 0.5 log det(2 pi e C) = 2.43 nats; the validation set (410 pairs) gives a
    # standard error of about 1/sqrt(410) * sqrt(d/2) = 0.05: allow 4 SE below, 0.25 above
    entropy = 0.5 * (2 * math.log(2 * math.pi * math.e) + 2 * torch.log(sd).sum().item())
    assert entropy - 0.2 < result.history[-1]["val_loss"] < entropy + 0.25
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_decoder"])
def test_conv2d_cvae_with_vector_condition(likelihood):
    """Grid x through 2-D convolutions; a label vector y falls back to an MLP encoder."""
    cfg = ModelConfig(
        x_shape=(12, 10),
        y_shape=(4,),
        latent_dim=3,
        hidden_dims=(16,),
        network="conv2d",
        conv_channels=(4, 8),
        feature_dim=8,
        likelihood=likelihood,
    )
    cvae = CVAE(cfg)
    y = torch.eye(4)[[0, 1, 3]]
    x = torch.rand(3, 12, 10).round()
    assert math.isfinite(Trace_ELBO().loss(cvae.model, cvae.guide, y, x))
    assert _trace(cvae.model, y).nodes["x"]["value"].shape == (3, 12, 10)
    with pytest.raises(ConfigError, match="2-D convolutional decoder"):
        CVAE(ModelConfig(x_shape=(7,), y_shape=(4,), network="conv2d"))


@pytest.mark.slow
def test_conv2d_bernoulli_vae_reaches_the_pixel_entropy():
    """Independent Bernoulli pixels: the best negative ELBO is the entropy sum_i h(p_i).

    A VAE whose decoder ignores z attains it exactly, so after training the validation loss
    must be close: 410 validation images give a standard error of sqrt(var)/sqrt(410), with
    var = sum_i p_i (1 - p_i) log(p_i / (1 - p_i))^2 (11.2 here), i.e. 0.17 nats; allow 4 SE
    below and 1.5 nats (of 37.2) above for the optimisation (one epoch ends 5.2 above).
    """
    from ppl_cvae import TrainConfig, build_cvae, fit

    gen = torch.Generator().manual_seed(0)
    probs = 0.1 + 0.8 * torch.rand(8, 8, generator=gen)
    x = torch.bernoulli(probs.expand(4096, 8, 8), generator=gen)
    cfg = ModelConfig(
        x_shape=(8, 8),
        y_shape=None,
        prior="standard_normal",
        latent_dim=2,
        hidden_dims=(32,),
        network="conv2d",
        conv_channels=(8,),
        feature_dim=16,
        likelihood="bernoulli",
    )
    vae = build_cvae(cfg, x, None)
    result = fit(
        vae,
        x,
        None,
        TrainConfig(num_epochs=15, batch_size=128, learning_rate=3e-3, patience=0),
        progress=False,
    )
    entropy = -(probs * probs.log() + (1 - probs) * (1 - probs).log()).sum().item()
    var = (probs * (1 - probs) * (probs / (1 - probs)).log() ** 2).sum().item()
    se = math.sqrt(var / 410)
    assert entropy - 4 * se < result.history[-1]["val_loss"] < entropy + 1.5
    assert result.history[0]["val_loss"] > entropy + 1.5  # it started away from the answer


def test_kl_warmup_rises_to_one_and_runs():
    from ppl_cvae import TrainConfig, build_cvae, fit
    from ppl_cvae.errors import ConfigError as Err

    x, y = torch.randn(64, 2), torch.randn(64, 3)
    cvae = build_cvae(ModelConfig(x_shape=(2,), y_shape=(3,), hidden_dims=(8,)), x, y)
    result = fit(
        cvae, x, y, TrainConfig(num_epochs=4, batch_size=32, kl_warmup_epochs=2), progress=False
    )
    assert [row["kl_weight"] for row in result.history] == pytest.approx([0.01, 0.505, 1, 1])
    with pytest.raises(Err, match="kl_start"):
        TrainConfig(kl_start=0.0)


@pytest.mark.parametrize("prior", ["learned", "flow"])
def test_gsnn_term_is_the_reconstruction_through_the_prior_net(prior):
    """The factor "gsnn" is w * log p(x | z_p, y) with z_p ~ p(z | y) (Sohn et al. 2015, eq. 7)."""
    cfg = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(8,), prior=prior,
                      flow_layers=1)
    cvae = CVAE(cfg)
    y, x, z0 = torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 2)
    conditioned = pyro.poutine.condition(cvae.model, data={"z": z0})  # z takes no random draw
    pyro.set_rng_seed(5)
    trace = pyro.poutine.trace(conditioned).get_trace(y, x, gsnn_weight=0.7)
    pyro.set_rng_seed(5)
    z_prior = cvae.prior_distribution(y).rsample()
    expected = 0.7 * cvae.x_distribution(z_prior, y)[0].log_prob(x)
    assert torch.allclose(trace.nodes["gsnn"]["fn"].log_factor, expected, atol=1e-5)
    # without x (posterior sampling) and at weight 0 there is no such term
    assert "gsnn" not in pyro.poutine.trace(cvae.model).get_trace(y, gsnn_weight=0.7).nodes
    assert "gsnn" not in pyro.poutine.trace(cvae.model).get_trace(y, x).nodes
    with pytest.raises(ConfigError, match="gsnn_weight must|invalid gsnn_weight"):
        TrainConfig(gsnn_weight=-1.0)


def test_a_users_own_guide_trains_the_prior_net_and_decoder():
    """The model registers its networks (pyro.module's idiom): SVI with an AutoNormal guide on
    z changes every prior-net and decoder parameter and no recognition-net parameter."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    torch.manual_seed(0)
    cfg = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(8,))
    cvae = CVAE(cfg)
    before = {k: v.detach().clone() for k, v in cvae.named_parameters()}
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    svi = SVI(cvae.model, AutoNormal(cvae.model), pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        svi.step(y, x)
    changed = {k for k, v in cvae.named_parameters() if not torch.equal(v, before[k])}
    generative = {k for k in before if not k.startswith("recognition_net.")}
    assert changed == generative and len(generative) > 0
    pyro.clear_param_store()
