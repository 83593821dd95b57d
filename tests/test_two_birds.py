import dataclasses

import pytest
import torch
from scipy import stats

from ppl_cvae.data import load_pairs
from ppl_cvae.errors import ConfigError, ShapeError, UnknownProblemError
from ppl_cvae.problems import TwoBirds, make_problem
from ppl_cvae.problems.two_birds import endpoints_from_lines, lines_from_endpoints

# Suite-wide false-alarm budget for the KS tests in this file: 1e-3 over 4 statistics.
ALPHA = 1e-3 / 4


def _uniformised(endpoints):
    """Map endpoints to the four independent U(0, 1) variables of the claimed prior."""
    s0, e0, s1, e1 = endpoints.unbind(-1)
    return [
        (e0 - 0.1) / 0.9,  # x0 end ~ U(0.1, 1)
        (s0 - e0) / (1 - e0),  # x0 start | end ~ U(end, 1)
        (s1 - 0.1) / 0.9,  # x1 start ~ U(0.1, 1)
        (e1 - s1) / (1 - s1),  # x1 end | start ~ U(start, 1)
    ]


def test_forward_reproduces_challenge_files(shared_data):
    for name, functions in [
        ("validation_dataset_data_1.pt", "data_1"),
        ("validation_dataset_original.pt", "original"),
    ]:
        x, y = load_pairs(shared_data / name)
        # float32 phases reach ~90 rad (ulp ~8e-6): allow a few ulps of the phase
        assert torch.allclose(TwoBirds(functions).forward(x), y, atol=5e-5)


def test_prior_matches_challenge_models(shared_data):
    x, _ = load_pairs(shared_data / "validation_dataset_data_1.pt")
    ours = TwoBirds().sample_endpoints(3000, torch.Generator().manual_seed(0))
    theirs = endpoints_from_lines(x)
    for a, b in zip(_uniformised(ours), _uniformised(theirs), strict=True):
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > ALPHA
    # negative control: independent U(0.1, 1) starts would be rejected by the same test
    wrong = 0.1 + 0.9 * torch.rand(3000, generator=torch.Generator().manual_seed(1))
    assert stats.ks_2samp(wrong.numpy(), theirs[:, 0].numpy()).pvalue < ALPHA


def test_prior_models_are_valid_lines():
    x = TwoBirds().sample_prior(500, torch.Generator().manual_seed(0))
    assert x.shape == (500, 1, 50, 2)
    assert (x >= 0.1).all() and (x <= 1.0).all()
    assert (x[..., 1:, 0] <= x[..., :-1, 0] + 1e-6).all()  # x0 descends
    assert (x[..., 1:, 1] >= x[..., :-1, 1] - 1e-6).all()  # x1 ascends


def test_endpoint_round_trip_and_basis():
    problem = TwoBirds()
    ends = problem.sample_endpoints(7)
    assert torch.allclose(endpoints_from_lines(lines_from_endpoints(ends)), ends, atol=1e-5)
    flat = (problem.basis() @ ends.T).T.reshape(7, 1, 50, 2)
    assert torch.allclose(flat, lines_from_endpoints(ends), atol=1e-6)


def test_custom_functions_and_errors():
    problem = TwoBirds((lambda a, b: a * b, lambda a, b: a - b))
    x = problem.sample_prior(2)
    assert torch.allclose(problem.forward(x)[..., 0], x[..., 0] * x[..., 1])
    with pytest.raises(ConfigError, match="cannot be stored by name"):
        problem.spec()
    with pytest.raises(UnknownProblemError, match="unknown Two Birds function pair 'data_9'"):
        TwoBirds("data_9")
    with pytest.raises(ShapeError, match=r"must end in shape \(1, 50, 2\)"):
        problem.forward(torch.zeros(3, 50, 2))
    with pytest.raises(UnknownProblemError, match="unknown problem 'nope'"):
        make_problem("nope")


def test_endpoint_transform_round_trip_and_prior(shared_data):
    from ppl_cvae.problems.two_birds import EndpointTransform

    t = EndpointTransform()
    ends = TwoBirds().sample_endpoints(1000, torch.Generator().manual_seed(0))
    assert torch.allclose(t(t.inv(ends)), ends, atol=1e-4)
    # logistic u pushes forward to the prior: compare with the challenge's models
    u = torch.rand(3000, 4, generator=torch.Generator().manual_seed(2))
    pushed = t(torch.logit(u))
    x, _ = load_pairs(shared_data / "validation_dataset_original.pt")
    for a, b in zip(_uniformised(pushed), _uniformised(endpoints_from_lines(x)), strict=True):
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > ALPHA


def test_constrained_decoder_draws_valid_lines():
    from inference import draw_posterior
    from ppl_cvae import ModelConfig, build_cvae

    problem = TwoBirds("original")
    x, y = problem.simulate(64)
    config = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        hidden_dims=(16,),
        basis_dim=4,
        constrained_coefficients=True,
        latent_dim=2,
    )
    cvae = build_cvae(config, x, y, problem=problem)  # untrained: arbitrary decoder outputs
    draws = draw_posterior(cvae, y[:4], 500, seed=0).x  # decoder mean by default
    assert (draws >= 0.1).all() and (draws <= 1.0).all()
    assert (draws[..., 1:, 0] <= draws[..., :-1, 0] + 1e-6).all()
    assert (draws[..., 1:, 1] >= draws[..., :-1, 1] - 1e-6).all()


def test_default_family_decodes_monotone_lines():
    # issue 10: the recommended family decodes constrained endpoints, so every amortized draw
    # meets the challenge's monotonicity criterion whatever the network outputs
    from ppl_cvae import build_cvae, resolve_settings
    from ppl_cvae.problems.two_birds import score_samples

    problem = TwoBirds("data_1")
    config, _ = resolve_settings(problem)
    assert config.constrained_coefficients and config.basis_dim == 4
    x, y = problem.simulate(256, torch.Generator().manual_seed(0))
    # arbitrary standardised decoder outputs, 3 training sds wide: (200 draws, 4 obs, 4)
    outputs = 3 * torch.randn(200, 4, 4, generator=torch.Generator().manual_seed(1))

    def monotone_fraction(constrained):
        cfg = dataclasses.replace(config, constrained_coefficients=constrained)
        cvae = build_cvae(cfg, x, y, problem=problem, seed=0)
        lines = cvae.x_from_coefficients(cvae.coef_mean + cvae.coef_std * outputs)
        return score_samples(lines, y[:4], "data_1").monotone.mean()

    assert monotone_fraction(True) == 1.0
    # negative control: the same outputs on unconstrained endpoints break the criterion
    # (each line's endpoints swap with probability about 1/2)
    assert monotone_fraction(False) < 0.5
