"""The range of the training ``x`` of a model fitted on pairs alone, and draws that leave it.

Figures with a closed form: values of a standard normal outside ``[-1, 1]`` (``2 Phi(-1)``),
and exact posterior draws outside the range of ``N`` prior draws (``2 / (N + 1)`` on average
over observations from the prior: the draw and the ``N`` values are exchangeable).
"""

from __future__ import annotations

import json
import math

import arviz as az
import numpy as np
import pytest
import torch

from inference.posterior import CVAEPosterior
from inference.sample import sample_posterior, sample_posterior_to_netcdf
from inference.training_range import (
    OUTSIDE_RANGE_WARNING,
    outside_training_range,
    pool_chunks,
)
from ppl_cvae import CVAE, ModelConfig, TrainConfig, build_cvae, fit
from ppl_cvae.cli import main
from ppl_cvae.data.lazy import RunningMoments
from ppl_cvae.errors import CheckpointError, DataError, ShapeError
from ppl_cvae.problems.linear_gaussian import LinearGaussian
from ppl_cvae.train import load_checkpoint, save_checkpoint


def _box_pairs(num: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ~ U(0, 1)^2`` and ``y = x + N(0, 0.5^2)``: a bounded prior whose posterior is wide."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(num, 2, generator=gen)
    return x, x + 0.5 * torch.randn(num, 2, generator=gen)


def _fitted(x_bounds=None) -> tuple[CVAE, torch.Tensor]:
    x, y = _box_pairs()
    config = ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=2, hidden_dims=(16,),
                         x_bounds=x_bounds)
    cvae = build_cvae(config, x, y, seed=0)
    fit(cvae, x, y, TrainConfig(num_epochs=30, batch_size=128, seed=0), progress=False)
    return cvae, x


def test_counts_values_outside_against_a_normal_tail():
    """N(0, 1) draws against the range [-1, 1]: 2 Phi(-1) = 0.3173 outside, within 4 sd."""
    cvae = CVAE(ModelConfig(x_shape=(4,), y_shape=(1,), hidden_dims=(4,)))
    cvae.set_training_x_range(-torch.ones(4), torch.ones(4))
    draws = torch.randn(2500, 4, 4, generator=torch.Generator().manual_seed(1))
    per_obs, per_element = outside_training_range(cvae, draws)
    expected = math.erfc(1 / math.sqrt(2))  # 2 Phi(-1)
    sd = math.sqrt(expected * (1 - expected) / (2500 * 4))
    assert per_obs.shape == (4,) and per_element.shape == (4,)
    assert float((per_obs - expected).abs().max()) < 4 * sd
    assert float((per_element - expected).abs().max()) < 4 * sd
    # pooling two chunks equals the fractions of all draws at once
    parts = [(1000, *outside_training_range(cvae, draws[:1000])),
             (1500, *outside_training_range(cvae, draws[1000:]))]
    pooled_obs, pooled_element = pool_chunks(parts)
    torch.testing.assert_close(torch.tensor(pooled_obs, dtype=torch.float64), per_obs)
    torch.testing.assert_close(pooled_element, per_element)
    with pytest.raises(ShapeError, match=r"expected \(S, M, 4\)"):
        outside_training_range(cvae, draws[0])


def test_an_element_constant_in_the_training_pairs_counts_as_inside():
    """A fixed parameter (the same in every pair) has no range: draws near it are not
    "outside" (before, every draw of a density was, and a correct model was warned of)."""
    cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(1,), hidden_dims=(4,)))
    cvae.set_training_x_range(torch.tensor([-1.0, 3.0]), torch.tensor([1.0, 3.0]))
    draws = torch.stack([torch.zeros(100), 3.0 + 1e-3 * torch.randn(100)], -1)[:, None]
    per_obs, per_element = outside_training_range(cvae, draws)
    assert per_obs.tolist() == [0.0] and per_element.tolist() == [0.0, 0.0]


def test_exact_posterior_draws_leave_the_range_of_n_prior_draws_2_over_n_plus_1():
    """The bound the warning's threshold rests on: 2 / (N + 1) for a correct posterior.

    50 independent 1-D problems ``x ~ N(0, 1)``, ``y = x + N(0, 0.5^2)``, each with its own
    range from ``N = 99`` prior draws; exact posterior draws for 400 observations from the
    prior. The fraction of one problem is Beta(2, N - 1) distributed around its mean 0.02
    (sd 0.014); the mean of 50 has sd 0.002.
    """
    gen = torch.Generator().manual_seed(2)
    dims, n_train, n_obs, s = 50, 99, 400, 0.5
    train = torch.randn(n_train, dims, generator=gen)
    cvae = CVAE(ModelConfig(x_shape=(dims,), y_shape=(dims,), hidden_dims=(4,)))
    cvae.set_training_x_range(train.amin(0), train.amax(0))
    truth = torch.randn(n_obs, dims, generator=gen)
    y = truth + s * torch.randn(n_obs, dims, generator=gen)
    post_mean, post_sd = y / (1 + s**2), math.sqrt(s**2 / (1 + s**2))
    draws = post_mean + post_sd * torch.randn(100, n_obs, dims, generator=gen)
    per_obs, per_element = outside_training_range(cvae, draws)
    assert abs(float(per_element.mean()) - 2 / (n_train + 1)) < 0.006
    assert abs(float(per_obs.mean()) - float(per_element.mean())) < 1e-12


def test_a_box_prior_fitted_without_bounds_is_warned_of_and_recorded(tmp_path):
    """Draws near a face of U(0, 1)^2 leak; the recorded fraction is recounted from the file."""
    cvae, x = _fitted()
    low, high = cvae.training_x_range
    torch.testing.assert_close(low, x.amin(0).double())
    torch.testing.assert_close(high, x.amax(0).double())
    y = torch.tensor([[1.1, 1.1], [0.5, 0.5]])
    with pytest.warns(UserWarning, match=r"observation\(s\) \(0.*outside the range of the "
                      r"training x .*x\[\d\].*--x-bounds"):
        idata = sample_posterior(cvae, y, 4000, seed=3)
    recorded = json.loads(idata.posterior.attrs["outside_training_range"])
    draws = idata.posterior["x"].values[0]  # (draw, observation, 2)
    recount = ((draws < low.numpy()) | (draws > high.numpy())).mean(axis=(0, 2))
    np.testing.assert_allclose(recorded, recount, rtol=1e-12)
    assert recorded[0] > OUTSIDE_RANGE_WARNING
    # the Python API's posterior object warns as sbi's DirectPosterior does of leakage
    with pytest.warns(UserWarning, match="outside the range of the training x"):
        CVAEPosterior(cvae).sample((4000,), y=y[0], seed=3)
    # the chunked writer records the same pooled fractions and warns once
    path = tmp_path / "post.nc"
    with pytest.warns(UserWarning, match="outside the range of the training x") as caught:
        sample_posterior_to_netcdf(cvae, y, 4000, path, seed=3, in_memory_bytes=0,
                                   chunk_bytes=64 * 1024)
    assert sum("training x" in str(w.message) for w in caught) == 1
    chunked = az.from_netcdf(path)
    assert chunked.posterior.sizes["draw"] == 4000
    draws = chunked.posterior["x"].values[0]
    recount = ((draws < low.numpy()) | (draws > high.numpy())).mean(axis=(0, 2))
    np.testing.assert_allclose(json.loads(chunked.attrs["outside_training_range"]), recount,
                               rtol=1e-9)


def test_the_bounds_keep_the_draws_inside_and_silence_the_warning(recwarn):
    """With x_bounds (0, 1) every draw is in the box, so almost none leave the data's range."""
    cvae, x = _fitted(x_bounds=(0.0, 1.0))
    idata = sample_posterior(cvae, torch.tensor([[1.1, 1.1]]), 4000, seed=3)
    draws = idata.posterior["x"].values
    assert draws.min() >= 0 and draws.max() <= 1
    # at most the mass of the box beyond the data's range: 2 / (N + 1) per element on average
    assert json.loads(idata.posterior.attrs["outside_training_range"])[0] <= OUTSIDE_RANGE_WARNING
    assert not [w for w in recwarn if "training x" in str(w.message)]


def test_a_model_fitted_with_a_problem_records_no_range():
    """The problem's prior is known: nothing is recorded, nothing is counted."""
    problem = LinearGaussian(x_dim=2, y_dim=2)
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,))
    cvae = build_cvae(config, x, y, problem=problem)
    assert cvae.training_x_range is None
    idata = sample_posterior(cvae, y[:1], 10, seed=0)
    assert "outside_training_range" not in idata.posterior.attrs


def test_the_range_survives_the_checkpoint_and_forged_ranges_are_refused(tmp_path):
    x, y = _box_pairs(200)
    cvae = build_cvae(ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,)), x, y)
    path = save_checkpoint(tmp_path / "model.pt", cvae)
    loaded, _ = load_checkpoint(path)
    for got, want in zip(loaded.training_x_range, cvae.training_x_range, strict=True):
        assert torch.equal(got, want)
    payload = torch.load(path, weights_only=True)
    good = payload["training_x_range"]
    forged = {
        "shape": good[:, :1],
        "dtype": good.float(),
        "NaN": torch.full_like(good, math.nan),
        "low > high": good.flip(0) + torch.tensor([[1.0], [0.0]], dtype=torch.float64),
        "a list": good.tolist(),
    }
    for what, value in forged.items():
        bad = tmp_path / f"bad_{what}.pt"
        torch.save({**payload, "training_x_range": value}, bad)
        with pytest.raises(CheckpointError, match="training_x_range"):
            load_checkpoint(bad)
    older = tmp_path / "older.pt"  # written before the range was recorded
    torch.save({k: v for k, v in payload.items() if k != "training_x_range"}, older)
    assert load_checkpoint(older)[0].training_x_range is None
    with pytest.raises(DataError, match="low <= high"):
        cvae.set_training_x_range(torch.ones(2), torch.zeros(2))
    with pytest.raises(ShapeError, match="expected x_shape"):
        cvae.set_training_x_range(torch.zeros(3), torch.ones(3))


def test_running_moments_keep_the_range_over_chunks_and_merges():
    values = torch.randn(300, 3, generator=torch.Generator().manual_seed(4))
    moments = RunningMoments((3,)).update(values[:100]).update(values[100:200])
    other = RunningMoments((3,)).update(values[200:])
    moments.merge(other)
    torch.testing.assert_close(moments.low, values.amin(0).double())
    torch.testing.assert_close(moments.high, values.amax(0).double())


@pytest.mark.parametrize("lazy", [False, True], ids=["in-memory", "lazy"])
def test_a_data_file_run_warns_at_sampling(tmp_path, capsys, lazy):
    """fit --data FILE, then sample: the run's range is the file's, and the warning is shown."""
    x, y = _box_pairs(600)
    data = tmp_path / "pairs"  # a folder of x.npy and y.npy reads lazily, an .npz at once
    if lazy:
        data.mkdir()
        np.save(data / "x.npy", x.numpy())
        np.save(data / "y.npy", y.numpy())
    else:
        data = data.with_suffix(".npz")
        np.savez(data, x=x.numpy(), y=y.numpy())
    np.save(tmp_path / "obs.npy", np.array([1.2, 1.2], dtype=np.float32))
    run = tmp_path / "run"
    flags = ["--lazy", "--chunk-mb", "0.004"] if lazy else []
    assert main(["fit", "--data", str(data), "--out", str(run), "--epochs",
                 "2", "--batch-size", "64", "--hidden-dims", "8", "--quiet", *flags]) == 0
    loaded, _ = load_checkpoint(run)
    torch.testing.assert_close(loaded.training_x_range[0], x.amin(0).double())
    torch.testing.assert_close(loaded.training_x_range[1], x.amax(0).double())
    capsys.readouterr()
    with pytest.warns(UserWarning, match="outside the range of the training x"):
        code = main(["sample", str(run), "--observation", str(tmp_path / "obs.npy"),
                     "--num-samples", "2000", "--out", str(tmp_path / "post.nc")])
    assert code == 0
    if not lazy:  # evaluate reads the pairs in memory; it prints both fractions
        capsys.readouterr()
        assert main(["evaluate", str(run), "--data", str(data), "--out",
                     str(tmp_path / "eval"), "--num-samples", "20",
                     "--max-observations", "50"]) == 0
        printed = capsys.readouterr().out
        assert "values outside the training range of x: draws" in printed
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
        assert 0 <= metrics["training_range"]["truths_outside"] <= 0.01


def test_evaluate_compares_the_draws_outside_with_the_held_out_truths(tmp_path):
    """Held-out truths from the prior stay inside (about 2 / (N + 1)); the leaking draws do not."""
    from inference.evaluate import evaluate_model

    cvae, _ = _fitted()
    x_held, y_held = _box_pairs(200, seed=7)
    metrics, x_draws, _ = evaluate_model(cvae, x_held, y_held, num_samples=200, seed=0)
    outside = metrics["training_range"]
    low, high = (end.float() for end in cvae.training_x_range)
    truths = ((x_held < low) | (x_held > high)).double().mean()
    assert outside["truths_outside"] == pytest.approx(float(truths))
    assert outside["truths_outside"] <= 10 * 2 / 2001  # 2 / (N + 1) per value on average
    assert outside["draws_outside"] == pytest.approx(
        float(((x_draws < low) | (x_draws > high)).double().mean())
    )
    assert outside["draws_outside"] > 10 * outside["truths_outside"] + 0.005
    assert outside["draws_outside_max"] >= outside["draws_outside"]
    # the verdict (before: coverage, SBC and TARP could pass such draws, and nothing failed)
    verdict = metrics["calibration"]["training_range"]
    assert verdict["judged"] and verdict["p_value"] < 0.01 and verdict["failures"]
    assert not metrics["calibration"]["passed"]


def _truncated_normal_posterior(num_obs: int, num_draws: int, seed: int):
    """``x ~ U(0, 1)``, ``y = x + N(0, 0.3^2)``: truths, and draws of the exact posterior (a
    normal truncated to [0, 1], by rejection) and of the untruncated normal around ``y``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(num_obs, 1, generator=gen)
    y = x + 0.3 * torch.randn(num_obs, 1, generator=gen)
    exact = torch.empty(num_draws, num_obs, 1)
    for m in range(num_obs):
        kept = torch.empty(0)
        while kept.numel() < num_draws:
            proposals = y[m] + 0.3 * torch.randn(4 * num_draws, generator=gen)
            kept = torch.cat([kept, proposals[(proposals >= 0) & (proposals <= 1)]])
        exact[:, m, 0] = kept[:num_draws]
    leaky = y + 0.3 * torch.randn(num_draws, num_obs, 1, generator=gen)
    return x, exact, leaky


def test_the_training_range_verdict_keeps_its_false_alarm_rate_and_fails_leaks():
    """Exact posterior draws (truncated to the prior's box) fail at most at ``false_alarm``
    (binomial bound over 200 repeats: rate <= 0.05 + 3 sd; 0.043 measured over 300), and the
    test is judged there; untruncated draws, which put about a quarter of their values
    outside [0, 1], fail every time."""
    from inference.training_range import training_range_verdict

    box = (torch.zeros(1), torch.ones(1))  # the range of many prior draws of U(0, 1)
    false_alarms, misses = 0, 0
    repeats = 200
    for seed in range(repeats):
        x, exact, leaky = _truncated_normal_posterior(60, 20, seed)
        # a narrower range than the box, so that truths and exact draws do leave it sometimes
        narrow = (torch.full((1,), 0.05), torch.full((1,), 0.95))
        verdict = training_range_verdict(exact, x, narrow, false_alarm=0.05, seed=seed)
        assert verdict["judged"]
        false_alarms += bool(verdict["failures"])
        if seed < 20:
            misses += not training_range_verdict(leaky, x, box, false_alarm=0.05)["failures"]
    rate = false_alarms / repeats
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / repeats)
    assert misses == 0


def test_the_training_range_verdict_is_not_judged_when_it_cannot_fail():
    """With draws that leave the range for one observation only, no total of the truths
    could reach p < 0.01: the verdict says so instead of passing."""
    from inference.training_range import training_range_verdict

    x = torch.full((5, 1), 0.5)
    draws = torch.full((10, 5, 1), 0.5)
    draws[:, 0] = 2.0  # every draw of observation 0 outside, its truth inside
    verdict = training_range_verdict(draws, x, (torch.zeros(1), torch.ones(1)))
    assert not verdict["judged"] and verdict["failures"] == []
    assert verdict["draws_outside"] == pytest.approx(0.2) and verdict["truths_outside"] == 0
    # no draw outside: a pass that means something (nothing leaks), not "not judged"
    inside = training_range_verdict(torch.full((10, 5, 1), 0.5), x, (torch.zeros(1), torch.ones(1)))
    assert inside["judged"] and inside["failures"] == [] and inside["draws_outside"] == 0


def test_fit_warns_when_draws_rarely_fall_inside_the_bounds(tmp_path, caplog):
    """A CVAE (not a flow mapped onto the bounds) on 96 half-normal values bounded below by 0:
    a Gaussian draw of one value is positive with probability about 0.9, of all 96 about
    0.9^96 = 4e-5, and sampling would fail; ``fit`` says so and names the flow that keeps
    every draw inside (before: silent)."""
    import logging

    gen = torch.Generator().manual_seed(0)
    x = 0.05 * torch.randn(300, 96, generator=gen).abs()
    y = x[:, :4] + 0.1 * torch.randn(300, 4, generator=gen)
    np.savez(tmp_path / "pairs.npz", x=x.numpy(), y=y.numpy())
    with caplog.at_level(logging.WARNING, logger="ppl_cvae"):
        assert main(["fit", "--data", str(tmp_path / "pairs.npz"), "--x-bounds", "0,inf",
                     "--likelihood", "gaussian", "--latent-dim", "2", "--epochs", "1",
                     "--hidden-dims", "16", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "of this model's draws lie inside --x-bounds" in caplog.text
    assert "--likelihood flow --latent-dim 0" in caplog.text


def test_a_lazy_fit_with_bounds_says_the_flow_is_not_mapped_onto_them(tmp_path, caplog):
    """``fit --lazy --x-bounds`` keeps the flow on x itself (the scan gives the moments of x,
    not of T^-1(x)); it says so, and how to map it (before: silent)."""
    import logging

    x, y = _box_pairs(num=200)
    (tmp_path / "pairs").mkdir()
    np.save(tmp_path / "pairs" / "x.npy", x.numpy())
    np.save(tmp_path / "pairs" / "y.npy", y.numpy())
    with caplog.at_level(logging.WARNING, logger="ppl_cvae"):
        assert main(["fit", "--data", str(tmp_path / "pairs"), "--lazy", "--x-bounds", "0,1",
                     "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "a lazily read file is fitted on x itself, not mapped onto --x-bounds" in caplog.text


def test_the_training_range_verdict_refuses_bad_arguments_and_takes_scalar_models():
    """The hostile audit: a NaN or reversed range, ``false_alarm`` 1.5, ``seed=-1`` and no draws
    were taken (NaN fractions); a scalar ``x_shape`` raised ``IndexError``."""
    from inference.training_range import training_range_verdict
    from ppl_cvae.errors import ConfigError

    x, box = torch.full((4, 1), 0.5), (torch.zeros(1), torch.ones(1))
    draws = torch.full((3, 4, 1), 0.5)
    for bad_range in ((torch.full((1,), math.nan), torch.ones(1)), (torch.ones(1), torch.zeros(1))):
        with pytest.raises(DataError, match="finite with low <= high"):
            training_range_verdict(draws, x, bad_range)
    with pytest.raises(ConfigError, match="false_alarm"):
        training_range_verdict(draws, x, box, false_alarm=1.5)
    with pytest.raises(ConfigError, match="seed"):
        training_range_verdict(draws, x, box, seed=-1)
    with pytest.raises(ShapeError, match="S >= 1"):
        training_range_verdict(draws[:0], x, box)
    scalar = training_range_verdict(torch.full((3, 4), 2.0), torch.full((4,), 0.5),
                                    (torch.tensor(0.0), torch.tensor(1.0)))  # fmt: skip
    assert scalar["draws_outside"] == 1.0 and scalar["truths_outside"] == 0.0
