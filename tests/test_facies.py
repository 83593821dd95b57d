"""Facies posteriors: reliability and mode accuracy, a categorical decoder with a known answer,
derived quantities (crosshole slowness of facies draws) in the posterior files."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from inference.arviz_io import load_inference_data
from inference.diagnostics.facies import check_reliability, mode_accuracy, run_reliability
from inference.evaluate import evaluate_model
from inference.posterior import draw_posterior
from inference.refine import refine_and_accept
from inference.sample import sample_posterior, sample_posterior_to_netcdf
from ppl_cvae import ModelConfig, TrainConfig, build_cvae, fit
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems import Crosshole, LinearGaussian
from ppl_cvae.problems.base import check_problem, derived_quantities


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# reliability curve and mode accuracy


def test_reliability_of_a_calibrated_and_a_miscalibrated_predictor(seed: int) -> None:
    n = 200_000
    p = torch.rand(n, generator=_gen(seed), dtype=torch.float64)
    outcome = (torch.rand(n, generator=_gen(seed + 1), dtype=torch.float64) < p).double()
    curve = run_reliability(p, outcome, num_bins=10, min_count=500)
    assert sum(curve["count"]) == curve["num_predictions"] == n
    # calibrated: each bin's frequency is binomial around its mean prediction; 4 standard
    # errors per bin (two-sided 6e-5) over 10 bins: a false-alarm rate near 6e-4
    se = [
        math.sqrt(m * (1 - m) / c)
        for m, c in zip(curve["mean_predicted"], curve["count"], strict=True)
    ]
    for b in range(10):
        gap = abs(curve["observed_frequency"][b] - curve["mean_predicted"][b])
        assert gap < 4 * se[b], (b, gap, se[b])
    assert curve["max_deviation"] < 4 * max(se) < 0.05
    assert check_reliability(curve, tolerance=0.05) == []
    # miscalibrated (over-confident: probabilities pushed towards 0 and 1, p' = p^3 / (p^3 +
    # (1-p)^3)); in the bin [0.1, 0.2) the truth is ~0.3: a deviation near 0.15 >> 4 SE
    sharp = p**3 / (p**3 + (1 - p) ** 3)
    bad = run_reliability(sharp, outcome, num_bins=10, min_count=500)
    assert bad["max_deviation"] > 0.1
    failures = check_reliability(bad, tolerance=0.05)
    assert failures and "predicted" in failures[0]
    # the expected calibration error tells them apart as well
    assert curve["expected_calibration_error"] < 0.01 < bad["expected_calibration_error"]


def test_reliability_bins_edges_and_errors() -> None:
    p = torch.tensor([0.0, 0.1, 0.5, 1.0])
    curve = run_reliability(p, torch.tensor([0.0, 0.0, 1.0, 1.0]), num_bins=2, min_count=1)
    assert curve["count"] == [2, 2]  # 1.0 falls into the last bin, 0.5 opens the second
    assert curve["observed_frequency"] == [0.0, 1.0]
    few = run_reliability(p, torch.tensor([0.0, 0.0, 1.0, 1.0]), min_count=100)
    assert math.isnan(few["max_deviation"])
    assert few["max_deviation_not_judged"] == (  # the null in metrics.json says why
        "no bin holds 100 predictions (the largest 1 of 4): too few cells or draws to judge "
        "the curve"
    )
    assert "max_deviation_not_judged" not in curve
    with pytest.warns(UserWarning, match="cannot be judged"):
        assert check_reliability(few) == []
    with pytest.raises(ShapeError, match="same non-empty shape"):
        run_reliability(p, torch.zeros(3))
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        run_reliability(p + 0.5, torch.zeros(4))
    with pytest.raises(ConfigError, match="only 0 and 1"):
        run_reliability(p, torch.full((4,), 0.5))
    with pytest.raises(ConfigError, match="num_bins"):
        run_reliability(p, torch.zeros(4), num_bins=0)


def test_mode_accuracy_binary_and_categorical() -> None:
    truth = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    probs = torch.tensor(
        [[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], [[0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]]
    )  # modes 0, 1, 2, 0: three of four right
    assert mode_accuracy(probs, truth) == 0.75
    assert mode_accuracy(torch.tensor([0.5, 0.51]), torch.tensor([0.0, 1.0])) == 1.0  # tie: 0
    with pytest.raises(ShapeError, match="K class probabilities"):
        mode_accuracy(torch.zeros(3, 2), torch.zeros(2))


# --------------------------------------------------------------------------------------------
# a categorical decoder with a known answer: x independent of y, known class frequencies

FREQUENCIES = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])  # (cell, class)


def _class_frequencies_of_a_fitted_model(trained: bool, seed: int) -> tuple[torch.Tensor, int]:
    num = 4000
    gen = _gen(seed)
    x = torch.stack(
        [torch.multinomial(FREQUENCIES[c], num, replacement=True, generator=gen) for c in (0, 1)],
        dim=1,
    ).float()  # (num, 2) codes
    y = torch.randn(num, 2, generator=gen)  # independent of x
    cfg = ModelConfig(
        x_shape=(2,),
        y_shape=(2,),
        latent_dim=1,
        hidden_dims=(16,),
        likelihood="categorical",
        num_facies=3,
    )
    cvae = build_cvae(cfg, x, y, seed=seed)
    if trained:
        # a decaying rate settles the optimum (seeds 0-5: at most 0.6 of the tolerance)
        config = TrainConfig(
            num_epochs=20,
            batch_size=200,
            learning_rate=1e-2,
            lr_decay=0.05,
            val_fraction=0.0,
            seed=seed,
        )
        fit(cvae, x, y, config, progress=False)
    y_new = torch.randn(200, 2, generator=gen)
    draws = draw_posterior(cvae, y_new, 200, seed=seed).x  # (200, 200, 2) codes
    one_hot = torch.nn.functional.one_hot(draws.long(), 3).double()
    return one_hot.mean((0, 1)), num  # (cell, class)


@pytest.mark.slow
def test_categorical_decoder_learns_the_class_frequencies(seed: int) -> None:
    learned, num = _class_frequencies_of_a_fitted_model(trained=True, seed=seed)
    # the fitted model's marginal is the training frequencies (maximum likelihood), which
    # differ from the truth by sqrt(p (1-p) / 4000); the 40,000 independent draws add
    # sqrt(p (1-p) / 40000); 4 combined standard errors (largest: p = 0.5, 0.033)
    p = FREQUENCIES.double()
    tolerance = 4 * torch.sqrt(p * (1 - p) * (1 / num + 1 / 40_000))
    assert bool(((learned - p).abs() < tolerance).all()), (learned, tolerance)
    # negative control: the untrained decoder (near uniform) is flagged
    untrained, _ = _class_frequencies_of_a_fitted_model(trained=False, seed=seed)
    assert bool(((untrained - p).abs() >= tolerance).any())


# --------------------------------------------------------------------------------------------
# derived quantities: the slowness of crosshole facies draws in the posterior files


def _facies_model() -> tuple[Crosshole, Any, torch.Tensor, torch.Tensor]:
    problem = Crosshole(
        prior="channels", num_depth_cells=6, num_offset_cells=5, num_sources=3, num_receivers=3
    )
    x, y = problem.simulate(64, _gen(0))
    cfg = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        latent_dim=2,
        hidden_dims=(8,),
        likelihood="bernoulli",
    )
    return problem, build_cvae(cfg, x, y, problem=problem), x[:2], y[:2]


def test_derived_slowness_in_the_inference_data(tmp_path) -> None:
    problem, cvae, x_true, y = _facies_model()
    idata = sample_posterior(cvae, y, 30, problem=problem, x_true=x_true, seed=1)
    post = idata.posterior
    assert set(post.data_vars) == {"x", "z", "slowness"}
    assert (
        post["slowness"].dims
        == post["x"].dims
        == ("chain", "draw", "observation", "depth", "offset")
    )
    assert post["slowness"].attrs["units"] == "s/m" and post["x"].attrs["units"] == "1"
    facies = torch.from_numpy(post["x"].values)
    assert bool(((facies == 0) | (facies == 1)).all())  # draws include the Bernoulli noise
    assert 0 < float(facies.mean()) < 1
    # exactly the problem's map of every draw and of the truth
    assert torch.equal(torch.from_numpy(post["slowness"].values), problem.slowness_of(facies))
    const = idata.constant_data
    assert const["slowness_true"].attrs["units"] == "s/m"
    assert torch.equal(torch.from_numpy(const["slowness_true"].values), problem.slowness_of(x_true))
    # streamed in chunks to NetCDF: the derived variable is appended with its draws
    path = sample_posterior_to_netcdf(
        cvae,
        y,
        30,
        tmp_path / "post.nc",
        problem=problem,
        x_true=x_true,
        seed=1,
        chunk_bytes=1,
        in_memory_bytes=1,
    )
    back = load_inference_data(path).posterior
    assert back.sizes["draw"] == 30 and back["slowness"].attrs["units"] == "s/m"
    back_facies = torch.from_numpy(back["x"].values)
    assert torch.equal(torch.from_numpy(back["slowness"].values), problem.slowness_of(back_facies))
    # the random-field survey's x is the slowness: nothing derived
    grf = Crosshole(num_depth_cells=6, num_offset_cells=5, num_sources=3, num_receivers=3)
    assert derived_quantities(grf, x_true) == {}


def test_evaluate_scores_the_facies_probabilities() -> None:
    problem, cvae, x_true, y = _facies_model()
    metrics, x_draws, _ = evaluate_model(cvae, x_true, y, problem=problem, num_samples=30)
    facies = metrics["facies"]
    assert facies["reliability"]["num_predictions"] == x_true.numel()
    # the probabilities are the mean over draws of P(x = 1 | z, y) (same seed: same draws)
    prob = draw_posterior(cvae, y, 30, seed=0).x_mean.mean(0)
    assert facies["mode_accuracy"] == mode_accuracy(prob, x_true)
    assert bool(((x_draws == 0) | (x_draws == 1)).all())


def test_refinement_is_refused_for_a_facies_decoder() -> None:
    problem, cvae, _, y = _facies_model()
    with pytest.raises(ConfigError, match="facies codes of a 'bernoulli' decoder"):
        refine_and_accept(cvae, y, 5, problem)


class _Derived(LinearGaussian):
    """A user problem whose ``derived`` returns what the test sets."""

    result: Any = None

    def derived(self, x: torch.Tensor) -> Any:
        return self.result(x)


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [  # names are settings (ConfigError); a wrong shape or a non-tensor is the array's fault
        (lambda x: [x], ConfigError, "must return a mapping"),
        (lambda x: {"x": x}, ConfigError, "taken"),
        (lambda x: {"parameter": x}, ConfigError, "taken"),
        (lambda x: {"rho_true": x}, ConfigError, "taken"),
        (lambda x: {"bad name": x}, ConfigError, "identifier"),
        (lambda x: {"rho": x[..., :1]}, ShapeError, r"shape of x, \(5, 2\); got \(5, 1\)"),
        (lambda x: {"rho": 3.0}, DataError, "got float"),
    ],
)
def test_malformed_derived_quantities_are_named(result: Any, error: type, match: str) -> None:
    problem = _Derived(x_dim=2)
    problem.result = result
    with pytest.raises(error, match=match):
        derived_quantities(problem, torch.zeros(5, 2))
    problem.result = lambda x: {"rho": 10**x}
    assert list(derived_quantities(problem, torch.zeros(5, 2))) == ["rho"]


def test_check_problem_refuses_a_derived_that_is_not_callable() -> None:
    problem = LinearGaussian()
    problem.derived = 42  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="derived is int, not callable"):
        check_problem(problem, "test")
