"""Hostile uses of ``x_transform="support"``: open sides, open ends, scales far from 1.

Each figure has a closed form: an open side of the box is ``inf`` in ``x_high`` (or ``-inf`` in
``x_low``), which a checkpoint must carry; a draw mapped by ``T`` lies strictly inside the box
(an open support excludes its end); the training ``x`` of a run on ``u = log x`` have location
``exp(mean log x)`` and delta-method spread ``exp(m) s`` in units of ``x``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import constraints

from inference.evaluate import evaluate_model
from inference.posterior import draw_posterior
from inference.refine import misfit_rms, refine_and_accept
from ppl_cvae import ModelConfig, build_cvae, load_checkpoint, save_checkpoint
from ppl_cvae.config import TrainConfig
from ppl_cvae.data.box import BoxTransform, support_box
from ppl_cvae.errors import CheckpointError, ConfigError
from ppl_cvae.problems.base import Problem
from ppl_cvae.train import fit
from ppl_cvae.train.resume import CheckpointPolicy, load_train_state

pytestmark = pytest.mark.usefixtures("one_thread")


class Boxed(Problem):
    """``y = x / unit + noise``; ``x`` of shape ``(2,)`` in ``support`` (set per test)."""

    name, x_shape, y_shape = "boxed", (2,), (2,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = 0.01

    def __init__(self, support=None, unit: float = 1.0) -> None:
        self.support = support
        self.unit = unit

    def sample_prior(self, num, generator=None):
        return self.unit * torch.exp(0.1 * torch.randn(num, 2, generator=generator))

    def forward(self, x):
        return x / self.unit


def flow_config(**kwargs) -> ModelConfig:
    """A tiny flow on x without a latent, on its support's box."""
    return ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,), likelihood="flow",
                       latent_dim=0, flow_hidden_dims=(8,), x_transform="support", **kwargs)


def test_a_box_with_an_open_side_is_saved_loaded_and_forged_files_are_refused(tmp_path):
    """x_high = inf (positive) round-trips; NaN, low >= high, or no x_low are refused."""
    x = Boxed(unit=3.0).sample_prior(256, torch.Generator().manual_seed(0))
    cvae = build_cvae(flow_config(x_bounds=(0.0, math.inf)), x, x / 3, seed=0)
    path = save_checkpoint(tmp_path / "model.pt", cvae)
    loaded, _ = load_checkpoint(path)
    assert loaded.x_low.tolist() == [0.0, 0.0] and loaded.x_high.tolist() == [math.inf] * 2
    y = torch.ones(1, 2)
    torch.testing.assert_close(draw_posterior(loaded, y, 8, seed=1).x,
                               draw_posterior(cvae, y, 8, seed=1).x)
    payload = torch.load(path, weights_only=False)
    for key, value, match in [("x_low", torch.tensor([math.nan, 0.0]), "NaN or inf"),
                              ("x_low", torch.tensor([math.inf, 0.0]), "NaN or inf"),
                              ("x_high", torch.tensor([-math.inf, 1.0]), "NaN or inf"),
                              ("x_low", torch.tensor([0.0, 5.0]), "x_low < x_high"),
                              ("x_low", None, "missing 'x_low'")]:
        forged = {**payload, "state_dict": dict(payload["state_dict"])}
        if value is None:
            del forged["state_dict"][key]
        else:
            forged["state_dict"][key] = value
        if key == "x_low" and value is not None and value[1] == 5.0:
            forged["state_dict"]["x_high"] = torch.tensor([math.inf, 5.0])
        torch.save(forged, tmp_path / "forged.pt")
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(tmp_path / "forged.pt")


def test_a_fit_on_a_half_open_box_resumes(tmp_path, monkeypatch):
    """The training state of a box with an open side is accepted by --resume's checks."""
    import pyro

    x = Boxed(unit=3.0).sample_prior(64, torch.Generator().manual_seed(0))
    train = TrainConfig(num_epochs=2, num_train=64, batch_size=32, val_fraction=0.0, seed=1,
                        patience=0)
    config = flow_config(x_bounds=(0.0, math.inf))
    policy = CheckpointPolicy(tmp_path / "train_state.pt", every_steps=1, every_minutes=None,
                              every_epoch=False)
    original, calls = pyro.infer.SVI.step, {"n": 0}

    def step(self, *args, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyro.infer.SVI, "step", step)
    with pytest.raises(KeyboardInterrupt):
        fit(build_cvae(config, x, x / 3, seed=1), x, x / 3, train, progress=False,
            checkpoint=policy)
    monkeypatch.undo()
    state = load_train_state(tmp_path / "train_state.pt")
    assert state.steps_done == 3
    result = fit(build_cvae(config, x, x / 3, seed=1), x, x / 3, train, progress=False,
                 checkpoint=policy, resume_from=state)
    assert len(result.step_losses) == 4


OPEN_ENDS = [
    (constraints.greater_than(3.0), -200.0),
    (constraints.positive, -200.0),
    (constraints.less_than(-1.0), -200.0),
    (constraints.half_open_interval(0.5, 1.5), 60.0),
    (constraints.unit_interval, 60.0),
    (constraints.unit_interval, -200.0),
]


@pytest.mark.parametrize("support, far", OPEN_ENDS, ids=lambda v: str(v))
def test_a_far_u_maps_strictly_inside_the_box(support, far):
    """float32 rounding would put T(u) on the end (3 + exp(-20) = 3): it stays one ulp inside."""
    low, high = support_box(support, (3,))
    box = BoxTransform(low.float(), high.float(), 1)
    u = torch.tensor([[far / 10, far / 2, far]])
    x = box(u)
    assert bool(support.check(x).all()), x
    assert bool(((x > low.float()) & (x < high.float())).all()), x
    assert bool(torch.isfinite(box.inv(x)).all())


def test_training_values_on_an_open_end_still_give_draws_inside_it():
    """An atom at 3 for greater_than(3): every amortized draw is accepted by the support."""
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + torch.rand(512, 2, generator=gen) * (torch.rand(512, 2, generator=gen) > 0.5)
    problem = Boxed(constraints.greater_than(3.0))
    cvae = build_cvae(flow_config(), x, x, problem=problem, seed=0)
    draws = draw_posterior(cvae, x[:2], 1000, seed=0, problem=problem)
    assert draws.support_acceptance.tolist() == [1.0, 1.0]
    assert bool((draws.x > 3).all())


def test_evaluation_and_refinement_measure_x_in_its_own_units():
    """x = 1e8 exp(0.1 N): reference 1e8 (not mean log x = 18.4), unit 1e7 (not sd 0.1).

    The RMSE of the reference is the sd of x about 1e8, about 1e7; refinement steps of 1e6
    (``learning_rate * 1e7``) bring the misfit of draws 1e7 away down to the noise.
    """
    problem = Boxed(constraints.positive, unit=1e8)
    gen = torch.Generator().manual_seed(0)
    x = problem.sample_prior(2000, gen)
    cvae = build_cvae(flow_config(), x, problem.forward(x), problem=problem, seed=0)
    metrics, _, _ = evaluate_model(cvae, x[:50], problem.forward(x[:50]), problem=problem,
                                   num_samples=20)
    assert 0.8e7 < metrics["rmse_prior_mean"] < 1.2e7
    real = Boxed(None, unit=1e8)  # no parameterisation: steps of learning_rate * x_scale
    y = problem.forward(x[:3])
    before = misfit_rms(draw_posterior(cvae, y, 16, seed=0).x, y, real)
    draws, _ = refine_and_accept(cvae, y, 16, real, oversample=1, seed=0, num_steps=200)
    misfit = misfit_rms(draws.x, y, real)
    assert float(before.median()) > 5 and float(misfit.median()) < 1
    location, scale = cvae.x_location_scale()
    torch.testing.assert_close(location, torch.full((2,), 1e8), rtol=0.01, atol=0)
    torch.testing.assert_close(scale, torch.full((2,), 1e7), rtol=0.1, atol=0)


def test_a_support_that_is_not_a_constraint_is_named_when_drawing():
    """support = "pos" set after fitting: a ConfigError naming support, not AttributeError."""


    x = Boxed(unit=3.0).sample_prior(64, torch.Generator().manual_seed(0))
    cvae = build_cvae(flow_config(x_bounds=(0.0, math.inf)), x, x / 3, seed=0)
    with pytest.raises(ConfigError, match="support must be"):
        draw_posterior(cvae, torch.ones(1, 2), 4, problem=Boxed("pos"))
