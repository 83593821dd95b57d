"""Amortized crosshole posterior (small grid) against the exact linear-Gaussian posterior."""

import pytest
import torch

from inference.diagnostics.coverage import run_evaluation
from inference.exact import exact_posterior
from inference.posterior import draw_posterior
from ppl_cvae import ModelConfig, TrainConfig, build_cvae, fit
from ppl_cvae.problems import make_problem


def _small_problem():
    # 8 x 8 cells of 4 m, 6 sources x 6 receivers: d = 64 cells, m = 36 traveltimes
    return make_problem(
        "crosshole",
        num_depth_cells=8,
        num_offset_cells=8,
        cell_size=4.0,
        num_sources=6,
        num_receivers=6,
    )


def _fit(problem, seed, num_epochs):
    x, y = problem.simulate(4096, torch.Generator().manual_seed(seed + 1))
    config = ModelConfig(
        x_shape=problem.x_shape, y_shape=problem.y_shape, latent_dim=64, hidden_dims=(128, 128)
    )
    train = TrainConfig(
        num_epochs=num_epochs,
        batch_size=128,
        learning_rate=3e-3,
        lr_decay=0.1,
        resimulate=True,
        num_train=4096,
        patience=0,
        seed=seed,
    )
    cvae = build_cvae(config, x, y, problem=problem)
    fit(cvae, x, y, train, simulator=problem.simulate, progress=False)
    return cvae


def _draws(problem, cvae, seed):
    """Return 200 held-out truths, their exact posterior and 300 amortized draws of each."""
    x_true, y_obs = problem.simulate(200, torch.Generator().manual_seed(seed + 100))
    return x_true, exact_posterior(problem, y_obs), draw_posterior(cvae, y_obs, 300, seed=seed).x


def _evaluate(draws, x_true, exact, cvae):
    return run_evaluation(
        draws,
        x_true,
        x_reference=cvae.x_standardiser.mean,
        exact_mean=exact.mean,
        exact_std=exact.std,
    )


def _compare(problem, cvae, seed):
    x_true, exact, draws = _draws(problem, cvae, seed)
    return _evaluate(draws, x_true, exact, cvae)


def _agrees(m):
    """Tolerances against the exact posterior (200 observations x 64 cells, 300 draws each).

    - mean error: a 300-draw mean has median |error| 0.674/sqrt(300) = 0.04 exact sd; the
      benchmark's target is 0.3, allowed here as is.
    - sd ratio: a 300-draw sd has relative error 1/sqrt(2*300) = 0.04; 0.85..1.15 allows a
      short fit's bias on top.
    - coverage: against the exact posterior's own coverage of the same truths, which removes
      the truths' sampling error; 300-draw quantiles shift coverage by about 0.01; 0.05.
    """
    ex = m["exact"]
    return (
        ex["mean_error_in_std"] < 0.3
        and 0.85 < ex["std_ratio"] < 1.15
        and abs(m["coverage_50"] - ex["coverage_50"]) < 0.05
        and abs(m["coverage_90"] - ex["coverage_90"]) < 0.05
    )


@pytest.mark.slow
def test_small_crosshole_posterior_matches_the_exact_one(seed):
    """100 epochs (3200 SVI steps) pass the check with room to spare.

    Measured (seeds 0-3, this check's 200 truths x 300 draws): mean error 0.16-0.18 exact sd
    (tolerance 0.3, seed-to-seed sd about 0.008), sd ratio 1.03 (0.85..1.15), coverage within
    0.01 of the exact posterior's (0.05). 150 epochs, used before, gave 0.12-0.13 and 1.015-1.02:
    a closer fit that costs half as much again, with the same verdict.
    """
    problem = _small_problem()
    cvae = _fit(problem, seed, num_epochs=100)
    x_true, exact, draws = _draws(problem, cvae, seed)
    metrics = _evaluate(draws, x_true, exact, cvae)
    assert _agrees(metrics), {k: metrics[k] for k in ("coverage_50", "coverage_90", "exact")}
    # negative control: the same model's posterior mean shifted by one exact sd, and draws
    # squeezed to half their spread, must both fail the same check
    for bad in (draws + exact.std, draws.mean(0) + 0.5 * (draws - draws.mean(0))):
        m = _evaluate(bad, x_true, exact, cvae)
        assert not _agrees(m), m["exact"]


@pytest.mark.slow
def test_an_underfitted_crosshole_posterior_fails_the_check(seed):
    """An underfit must fail the check.

    10 epochs leave the posterior mean 0.44 exact sd off (seeds 0 and 1, measured; the check
    allows 0.3). 30 epochs, the control used before the decoder scale moved to a log scale
    with gain 10, now end at 0.30 with an sd ratio of 1.10: too close to the tolerance to be a
    control.
    """
    problem = _small_problem()
    metrics = _compare(problem, _fit(problem, seed, num_epochs=10), seed)
    assert not _agrees(metrics), metrics["exact"]
