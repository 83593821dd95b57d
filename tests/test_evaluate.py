"""Held-out evaluation, exact posterior, noise helpers, adaptive defaults, shared y embedding."""

import json
import math

import numpy as np
import pytest
import torch

from inference.arviz_io import to_inference_data
from inference.diagnostics.coverage import central_coverage, check_coverage, run_evaluation
from inference.evaluate import evaluate_draws, evaluate_model
from inference.exact import exact_posterior
from ppl_cvae.cli import main
from ppl_cvae.config import ModelConfig
from ppl_cvae.data.io import load_pairs
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian, make_problem
from ppl_cvae.problems.base import noise_covariance, noise_scale, sample_noise, whiten
from ppl_cvae.train import load_checkpoint
from ppl_cvae.train.defaults import data_settings


class _FullNoise(LinearGaussian):
    """LinearGaussian with a correlated noise covariance (noise_cov overrides noise_std)."""

    def __init__(self) -> None:
        super().__init__(x_dim=3, y_dim=4, noise_std=0.5)
        b = torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        self.noise_cov = 0.1 * (b @ b.T) + 0.05 * torch.eye(4, dtype=torch.float64)


def test_noise_helpers_scalar_and_full_covariance():
    scalar = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.5)
    r = torch.randn(7, 4)
    assert torch.allclose(whiten(scalar, r), r / 0.5)
    assert torch.allclose(noise_covariance(scalar), 0.25 * torch.eye(4, dtype=torch.float64))
    full = _FullNoise()
    eps = sample_noise(full, (20000,), torch.Generator().manual_seed(0)).double()
    # empirical covariance of 20000 draws: each entry has sd <= sqrt(2) max C_ii / sqrt(N)
    emp = eps.T @ eps / eps.shape[0]
    tol = 4 * math.sqrt(2) * float(full.noise_cov.diagonal().max()) / math.sqrt(eps.shape[0])
    assert (emp - full.noise_cov).abs().max() < tol
    # whitened noise is N(0, I): chi2 per datum has mean 1 and sd sqrt(2 / (N m))
    chi2 = whiten(full, eps).pow(2).mean()
    assert abs(float(chi2) - 1.0) < 4 * math.sqrt(2 / eps.numel())
    assert torch.allclose(noise_scale(full).double(), full.noise_cov.diagonal().sqrt(), atol=1e-6)


def test_exact_posterior_against_the_information_form():
    problem = _FullNoise()
    parts = problem.linear_gaussian()
    y = torch.randn(5, 4)
    post = exact_posterior(problem, y)
    # independent formula: C = (C0^-1 + A^T Ce^-1 A)^-1, mu = C A^T Ce^-1 y (Tarantola 3.37)
    a = parts.matrix.double()
    ce_inv = torch.linalg.inv(problem.noise_cov)
    cov = torch.linalg.inv(torch.linalg.inv(parts.prior_cov) + a.T @ ce_inv @ a)
    mean = y.double() @ (cov @ a.T @ ce_inv).T
    assert torch.allclose(post.cov, cov, atol=1e-10)
    assert torch.allclose(post.mean.double(), mean, atol=1e-5)
    draws = post.sample(4000, torch.Generator().manual_seed(1))
    assert draws.shape == (4000, 5, 3)
    # mean of 4000 exact draws: 4 standard errors sd / sqrt(4000)
    assert ((draws.mean(0) - post.mean).abs() < 4 * post.std / math.sqrt(4000)).all()
    with pytest.raises(ShapeError, match="y must have shape"):
        exact_posterior(problem, torch.randn(5, 3))


def test_exact_posterior_refuses_a_problem_without_closed_form():
    from ppl_cvae.problems import TwoBirds

    with pytest.raises(ConfigError, match="no closed-form posterior"):
        exact_posterior(TwoBirds("data_1"), torch.zeros(1, 50, 2))


@pytest.mark.parametrize("width", [1.0, 0.5, 2.0, "shift"])
def test_coverage_of_exact_and_wrong_posteriors(width):
    """Exact draws cover at the nominal rate; too narrow, too wide and shifted ones are flagged."""
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.5)
    gen = torch.Generator().manual_seed(4)
    x, y = problem.simulate(600, gen)
    post = exact_posterior(problem, y)
    draws = post.sample(400, gen)
    if width == "shift":
        draws = draws + 0.7 * post.std
    else:
        draws = post.mean + float(width) * (draws - post.mean)
    metrics = run_evaluation(
        draws,
        x,
        x_reference=torch.zeros(3),
        y_obs=y,
        problem=problem,
        exact_mean=post.mean,
        exact_std=post.std,
    )
    failures = check_coverage(metrics, tolerance=0.05)
    if width == 1.0:
        # 1800 elements of 600 independent truths: coverage sd <= sqrt(.25 / 600) = 0.02 even
        # if the 3 elements were fully correlated; the 400 draws add quantile error; 0.05 is
        # 2.5 sd
        assert failures == []
        assert metrics["exact"]["std_ratio"] == pytest.approx(1.0, abs=0.05)
        # median |mean error| / sd of a 400-draw mean: 0.674 / sqrt(400) = 0.034
        assert metrics["exact"]["mean_error_in_std"] < 0.1
        # E chi2/m over draws = (|y - A mu|^2_Ce + tr(Ce^-1 A C A^T)) / m; for this problem
        # between 0.5 and 1.5 is loose but shows the whitening
        assert 0.5 < metrics["chi2_per_datum"] < 1.5
        assert metrics["rmse_ratio"] < 1.0
    else:
        assert failures, f"a {width} posterior passed: {metrics['coverage_50']}"


def test_central_coverage_shape_error():
    with pytest.raises(ShapeError, match="must be"):
        central_coverage(torch.zeros(5, 2, 3), torch.zeros(2, 4), (0.5,))


def test_units_reach_inference_data():
    idata = to_inference_data(
        torch.randn(4, 1, 3),
        torch.randn(4, 1, 2),
        torch.randn(1, 2),
        x_dims=["depth"],
        y_dims=["frequency"],
        coords={"depth": [1.0, 2.0, 3.0], "frequency": [1.0, 10.0]},
        units={"x": "log10(ohm m)", "depth": "m", "frequency": "Hz"},
    )
    assert idata.posterior["x"].attrs["units"] == "log10(ohm m)"
    assert idata.posterior["depth"].attrs["units"] == "m"
    assert idata.observed_data["frequency"].attrs["units"] == "Hz"


def test_data_settings_adapt_to_shapes_and_size():
    small = data_settings((2,), (2,), 500, flow=False)
    big = data_settings((32, 32), (256,), 20000)
    assert small.model["hidden_dims"] == (64, 64)
    assert big.model["hidden_dims"] == (512, 512)
    assert small.model["latent_dim"] == 2 and big.model["latent_dim"] == 32
    # a small x gets a flow on x with no latent (NPE); a field keeps the CVAE
    flow = data_settings((2,), (2,), 500)
    assert flow.model["likelihood"] == "flow" and flow.model["latent_dim"] == 0
    assert "linear_skip" not in flow.model and big.model.get("likelihood") is None
    assert data_settings((33,), (2,), 500).model.get("likelihood") is None
    assert "y_embedding" not in small.model and big.model["y_embedding"] == "shared"
    assert small.train["batch_size"] < big.train["batch_size"]
    assert small.train["num_epochs"] > big.train["num_epochs"]
    tiny = data_settings((1,), (1,), 3)
    assert tiny.train["batch_size"] <= 2
    with pytest.raises(ConfigError, match="at least 2 pairs"):
        data_settings((2,), (2,), 1)


def test_shared_y_embedding_is_one_module():
    sep = CVAE(ModelConfig(x_shape=(4,), y_shape=(80,), hidden_dims=(32, 32)))
    shared = CVAE(
        ModelConfig(x_shape=(4,), y_shape=(80,), hidden_dims=(32, 32), y_embedding="shared")
    )
    y_encoder = shared.recognition_net.y_encoder
    assert y_encoder is shared.prior_net.y_encoder is shared.decoder.y_encoder
    # the shared encoder (80*32 + 32 + 32*32 + 32 parameters) is counted once instead of 3 times
    enc = 80 * 32 + 32 + 32 * 32 + 32
    assert sep.num_parameters() - shared.num_parameters() == 2 * enc
    with pytest.raises(ConfigError, match="unknown y_embedding"):
        ModelConfig(x_shape=(4,), y_shape=(8,), y_embedding="both")


@pytest.mark.slow
def test_default_fit_on_a_file_is_calibrated(tmp_path, capsys):
    """``fit --data`` with default settings gives calibrated posteriors; 2 epochs of the
    unwhitened model do not."""
    problem = [
        "--problem",
        "linear_gaussian",
        "--problem-arg",
        "x_dim=4",
        "--problem-arg",
        "y_dim=3",
    ]
    for name, num, seed in (("train.npz", 3000, 1), ("test.npz", 300, 2)):
        sim = ["simulate", *problem, "--num", str(num), "--seed", str(seed)]
        assert main([*sim, "--out", str(tmp_path / name)]) == 0
    assert (
        main(
            [
                "fit",
                "--data",
                str(tmp_path / "train.npz"),
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    evaluate = ["evaluate", "--data", str(tmp_path / "test.npz"), *problem, "--num-samples", "200"]
    assert (
        main([*evaluate[:1], str(tmp_path / "run"), *evaluate[1:], "--out", str(tmp_path / "ev")])
        == 0
    )
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (tmp_path / "ev" / "coverage.png").is_file()
    assert (tmp_path / "ev" / "truth_vs_mean.png").is_file()
    # 300 truths x 4 elements: coverage sd <= sqrt(.25/300) = 0.029 (elements fully
    # correlated, worst case) -> 0.06 is about 2 sd; the exact posterior's own coverage on the
    # same truths absorbs the truths' sampling error
    for level in ("coverage_50", "coverage_90"):
        assert abs(metrics[level] - metrics["exact"][level]) < 0.06, metrics
    assert metrics["exact"]["mean_error_in_std"] < 0.3
    assert 0.85 < metrics["exact"]["std_ratio"] < 1.15
    assert metrics["rmse_ratio"] < 0.8
    # negative control: the same check fails after 2 epochs without the linear whitening of
    # the defaults (with it, training starts at the exact posterior of this linear problem)
    short = ["fit", "--data", str(tmp_path / "train.npz"), "--epochs", "2", "--quiet",
             "--x-whitening", "none"]
    assert main([*short, "--out", str(tmp_path / "run2")]) == 0
    # the metrics `evaluate` computes (its files and plots are checked above), from the library
    cvae2, _ = load_checkpoint(tmp_path / "run2")
    x_test, y_test = load_pairs(tmp_path / "test.npz")
    bad, _, _ = evaluate_model(
        cvae2, x_test, y_test, problem=make_problem("linear_gaussian", x_dim=4, y_dim=3),
        num_samples=200, seed=0,
    )  # fmt: skip
    assert not (
        bad["exact"]["mean_error_in_std"] < 0.3 and 0.85 < bad["exact"]["std_ratio"] < 1.15
    ), bad["exact"]
    out = capsys.readouterr().out
    assert "coverage 50%" in out and np.isfinite(metrics["chi2_per_datum"])


@pytest.mark.parametrize("y_embedding", ["separate", "shared"])
def test_conv2d_cvae_on_a_crosshole_grid(y_embedding):
    """A 2-D conv decoder for a slowness grid with an MLP (or shared) encoder of the rays."""
    import pyro
    from pyro.infer import Trace_ELBO

    from ppl_cvae.problems import make_problem

    problem = make_problem("crosshole", num_depth_cells=8, num_offset_cells=8, cell_size=4.0)
    x, y = problem.simulate(6, torch.Generator().manual_seed(0))
    config = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        network="conv2d",
        conv_channels=(4, 8),
        feature_dim=16,
        hidden_dims=(16,),
        y_embedding=y_embedding,
    )
    cvae = CVAE(config)
    loss = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, y, x)
    loss.backward()
    grads = [p.grad for p in cvae.parameters()]
    assert torch.isfinite(loss) and all(g is not None for g in grads)
    mean, scale = cvae.decode(torch.randn(3, 6, config.latent_dim), y)
    assert mean.shape == scale.shape == (3, 6, 8, 8)
    pyro.clear_param_store()


def test_linear_skip_starts_at_zero_and_is_validated():
    b = CVAE(ModelConfig(x_shape=(5,), y_shape=(3,), hidden_dims=(8,), linear_skip=True))
    z, y = torch.randn(4, 2, 8), torch.randn(2, 3)
    with_skip = b.decode(z, y)[0]
    skip, b.decoder.skip = b.decoder.skip, None
    without = b.decode(z, y)[0]
    b.decoder.skip = skip
    # zero-initialised: the same decoder output as without the skip path
    assert torch.allclose(with_skip, without)
    with torch.no_grad():
        b.decoder.skip.bias.fill_(1.0)  # the path reaches the mean (x standardiser is identity)
    assert torch.allclose(b.decode(z, y)[0], without + 1.0)
    with pytest.raises(ConfigError, match="linear_skip needs a conditional"):
        ModelConfig(x_shape=(5,), y_shape=None, prior="standard_normal", linear_skip=True)
    with pytest.raises(ConfigError, match="basis decoder"):
        ModelConfig(x_shape=(5,), y_shape=(3,), basis_dim=2, linear_skip=True)


def test_scale_gain_sets_the_initial_scale_and_is_validated():
    for gain in (1.0, 10.0):
        cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), init_scale=0.2, scale_gain=gain))
        _, scale = cvae.decode(torch.zeros(1, 1, cvae.config.latent_dim), torch.zeros(1, 2))
        # identity standardiser: the initial scale is init_scale whatever the gain
        assert torch.allclose(scale, torch.full((1, 1, 3), 0.2))
    with pytest.raises(ConfigError, match="scale_gain"):
        ModelConfig(x_shape=(3,), y_shape=(2,), scale_gain=0.0)


def test_noise_free_data_with_more_data_than_parameters_is_a_clear_error():
    """``A C_0 A^T`` of rank 2 with 5 noise-free data is singular: a DataError that says so
    (before: torch's LinAlgError traceback out of ``ppl-cvae evaluate``); with noise the
    same call gives the closed form."""
    from inference.exact import linear_gaussian_posterior
    from ppl_cvae.errors import DataError

    a = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    prior = (torch.zeros(2), torch.eye(2), torch.zeros(1, 5))
    with pytest.raises(DataError, match=r"A C_0 A\^T \+ C_e \(5 x 5\) is singular"):
        linear_gaussian_posterior(a, torch.zeros(5, 5), *prior)
    mean, cov = linear_gaussian_posterior(a, 0.01 * torch.eye(5), *prior)
    assert torch.isfinite(mean).all() and torch.linalg.eigvalsh(cov.double()).min() > 0


def test_a_noise_covariance_with_a_datum_of_no_variance_is_named():
    """A ``noise_cov`` whose third datum has zero variance: a ConfigError naming that datum
    (before: torch's LinAlgError out of ``Problem.simulate``)."""
    from ppl_cvae.problems.noise import GaussianNoise

    noise = GaussianNoise((4,), cov=torch.diag(torch.tensor([1.0, 2.0, 0.0, 1.0])))
    with pytest.raises(ConfigError, match="fails at datum 2 .* a covariance needs every"):
        noise.sample((3,), torch.Generator().manual_seed(0))
    assert GaussianNoise((4,), cov=torch.eye(4)).sample((3,)).shape == (3, 4)


def test_a_few_observations_whose_draws_miss_their_data_fail_the_misfit_verdict():
    """Exact posterior draws of 200 held-out pairs pass every verdict, the misfit's too: each
    observation's mean misfit lies outside its range ``chi2_m / m`` at 4 sd with probability
    at most 6.3e-5. A fifth of the draws of 3 observations replaced by far-off models (a
    spurious mode, as a flow's tail gives) leaves the pooled coverage, SBC and TARP passing and
    the median ``chi2_per_datum`` near 1; the misfit verdict fails and names them (before,
    ``evaluate`` passed such a fit: the audit's bimodal problem, 14 of 200 observations with
    draws at impossible values)."""
    from inference.evaluate import evaluate_draws

    problem = LinearGaussian(x_dim=4, y_dim=40, noise_std=0.5, seed=3)
    gen = torch.Generator().manual_seed(12)
    x, y = problem.simulate(200, gen)
    exact = exact_posterior(problem, y)
    draws = exact.sample(100, gen)
    good = evaluate_draws(draws, x, y, x_reference=torch.zeros(4), problem=problem)
    assert good["calibration"]["passed"], good["calibration"]
    assert good["misfit_outside"]["count"] == 0
    assert abs(good["chi2_per_datum_mean"] - 1) < 4 * math.sqrt(2 / 40 / 200)
    bad_draws = draws.clone()
    for k in (7, 50, 123):
        bad_draws[:20, k] = draws[:20, k] + 30 * exact.std  # 20 of 100 draws 30 sd off
    bad = evaluate_draws(bad_draws, x, y, x_reference=torch.zeros(4), problem=problem)
    calibration = bad["calibration"]
    for key in ("coverage", "sbc", "tarp"):
        assert not calibration[key]["failures"], (key, calibration[key]["failures"])
    assert abs(bad["chi2_per_datum"] - good["chi2_per_datum"]) < 0.05
    assert bad["misfit_outside"]["observations"] == [7, 50, 123]
    assert calibration["misfit"]["failures"] and not calibration["passed"]
    assert "3 of 200 held-out observations" in calibration["misfit"]["failures"][0]


def test_posterior_contraction_matches_theory_and_flags_draws_that_ignore_y():
    """Without a forward operator coverage, SBC and TARP pass draws that ignore ``y`` (the prior
    is calibrated): a 1-epoch data fit with sd ratio 4.5 against the exact posterior passed
    (twenty-third audit). The metrics now give the posterior contraction and the verdict a note.
    Linear-Gaussian, exact draws: ``1 - Var(x | y) / Var(x)`` per element, known in closed form
    (the posterior variance does not depend on y); the estimate's error is dominated by the
    truths' variance over M = 1000, relative sd sqrt(2 / M) = 0.045, so 4 sd of (1 - c) is the
    tolerance. Prior draws: contraction 0 within the same tolerance, and the note is given."""
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.5)
    x, y = problem.simulate(1000, torch.Generator().manual_seed(11))
    exact = exact_posterior(problem, y)
    draws = exact.sample(60, torch.Generator().manual_seed(12))
    metrics = evaluate_draws(draws, x, y, x_reference=torch.zeros(3))
    expected = float((1 - exact.std.double() ** 2 / problem.prior_std**2).median())  # (3,)
    assert 0.1 < expected < 0.9  # the data inform, but not completely
    tolerance = 4 * (1 - expected) * (2 / 1000) ** 0.5
    assert abs(metrics["posterior_contraction"] - expected) < tolerance
    notes = metrics["calibration"]["notes"]
    assert any("no misfit check" in n and "posterior contraction" in n for n in notes)
    prior = problem.sample_prior(60 * 1000, torch.Generator().manual_seed(13)).reshape(60, 1000, 3)
    ignored = evaluate_draws(prior, x, y, x_reference=torch.zeros(3))
    assert ignored["calibration"]["passed"]  # the limitation the note states
    assert abs(ignored["posterior_contraction"]) < 4 * (2 / 1000) ** 0.5
    with_problem = evaluate_draws(draws, x, y, x_reference=torch.zeros(3), problem=problem)
    assert not any("no misfit check" in n for n in with_problem["calibration"]["notes"])
