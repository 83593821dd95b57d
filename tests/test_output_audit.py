"""Fourth audit: what the commands write (benchmarks/hostile_inputs.py, category "outputs").

Each test is a case that failed before the audit: ``metrics.json`` and ``config.json`` held
``NaN`` (not JSON: jq, JavaScript and strict parsers reject the file), a posterior file held
NaN log densities and predictions without a word, a column whose standard deviation overflows
float32 trained on inf (or crashed in a Cholesky factorisation), a posterior file whose groups
disagree gave a traceback, and one NaN in a forward operator made refinement return only NaN.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap

import numpy as np
import pytest
import torch

from inference.arviz_io import check_posterior, load_inference_data
from inference.evaluate import evaluate_draws, not_finite_metrics, write_evaluation
from inference.exact import exact_posterior
from inference.posterior import draw_posterior
from inference.refine import accept_by_misfit, refine_by_misfit
from inference.sample import (
    inference_data_from_draws,
    sample_posterior,
    sample_posterior_to_netcdf,
)
from ppl_cvae import ModelConfig, build_cvae
from ppl_cvae._json import dumps_strict, finite_or_null
from ppl_cvae.cli import main
from ppl_cvae.data.standardise import FLOAT32_HEADROOM, Standardiser
from ppl_cvae.errors import DataError
from ppl_cvae.problems import LinearGaussian

TINY = ["--epochs", "1", "--num-train", "128", "--batch-size", "64", "--hidden-dims", "8",
        "--latent-dim", "2", "--quiet", "--threads", "1"]


def _strict_loads(text: str):
    """``json.loads`` that refuses ``NaN``/``Infinity`` as a strict parser (jq, JS) does."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


class HalfNaNPrior(LinearGaussian):
    """The linear-Gaussian problem whose log prior is NaN where ``x_0 > 0``."""

    def log_prior(self, x):
        lp = super().log_prior(x)
        return torch.where(x[..., 0] > 0, lp * math.nan, lp)


class NaNForward(LinearGaussian):
    """The linear-Gaussian problem whose forward operator is NaN where ``x_0 > 0``."""

    def forward(self, x):
        y = super().forward(x)
        return torch.where(x[..., :1] > 0, y * math.nan, y)


@pytest.fixture(scope="module")
def lg():
    """A tiny CVAE of the 2-d linear-Gaussian problem and two observations (about 0.1 s)."""
    problem = LinearGaussian(x_dim=2, y_dim=2)
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=2, hidden_dims=(8,))
    return build_cvae(config, x, y, problem=problem, seed=0), problem, y[:2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny fitted run of the linear-Gaussian problem and 8 held-out pairs (CLI)."""
    root = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--problem", "linear_gaussian", "--out", str(root / "run"),
                     *TINY]) == 0
        assert main(["simulate", "--problem", "linear_gaussian", "--num", "8", "--out",
                     str(root / "pairs.npz")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


# ----------------------------------------------------------------- strict JSON
def test_finite_or_null_replaces_and_names_every_non_finite_float():
    doc = {"a": 1.0, "b": [2.0, math.nan, (math.inf,)], "c": {"d": np.float32(-np.inf)},
           "e": np.float64(3.0), "f": torch.tensor(math.nan), "g": "NaN", "h": None, "i": 7}
    clean, found = finite_or_null(doc)
    assert found == [("b.1", "NaN"), ("b.2.0", "+inf"), ("c.d", "-inf"), ("f", "NaN")]
    assert clean == {"a": 1.0, "b": [2.0, None, [None]], "c": {"d": None}, "e": 3.0,
                     "f": None, "g": "NaN", "h": None, "i": 7}
    assert _strict_loads(dumps_strict(clean)) == clean
    with pytest.raises(ValueError, match="Out of range float"):
        dumps_strict({"x": math.nan})  # never a NaN token, even when a caller forgets


def test_metrics_json_of_one_held_out_pair_is_strict_with_nulls_named(tmp_path):
    # one pair: the pooled SBC statistics need a spread over pairs and are NaN
    problem = LinearGaussian(x_dim=2, y_dim=2)
    x, y = problem.simulate(1, torch.Generator().manual_seed(0))
    draws = exact_posterior(problem, y).sample(100, torch.Generator().manual_seed(1))
    metrics = evaluate_draws(draws, x, y, x_reference=torch.zeros(2), problem=problem)
    expected = not_finite_metrics(metrics)
    assert expected, "the negative control: one pair must give non-finite metrics"
    assert all("1 held-out pair" in m["why"] for m in expected)
    write_evaluation(tmp_path, metrics, x, draws, problem=problem, y_obs=y)
    written = _strict_loads((tmp_path / "metrics.json").read_text())  # raised before the fix
    assert written["not_finite"] == expected
    for item in expected:
        node = written
        for key in item["metric"].split("."):
            node = node[int(key)] if isinstance(node, list) else node[key]
        assert node is None


def test_evaluate_cli_warns_once_naming_the_null_metrics(run, capsys, caplog):
    out = run / "ev"
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, "ppl_cvae"), \
            pytest.warns(UserWarning, match="coarse"):
        assert main(["evaluate", str(run / "run"), "--data", str(run / "pairs.npz"),
                     "--max-observations", "1", "--num-samples", "10", "--out", str(out)]) == 0
    warned = [r.getMessage() for r in caplog.records if "not finite" in r.getMessage()]
    doc = _strict_loads((out / "metrics.json").read_text())
    assert len(warned) == 1
    assert f"{len(doc['not_finite'])} metric(s) not finite" in warned[0]
    assert doc["not_finite"][0]["metric"] in warned[0]
    # one pair and 10 draws: no SBC or TARP result could fail, so none is called "passed"
    printed = capsys.readouterr().out
    assert "SBC not judged" in printed and "TARP not judged" in printed, printed
    assert doc["calibration"]["sbc"]["judged"] is False


def test_fit_refuses_a_run_file_it_could_not_write_as_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "scaled_problem.py").write_text(textwrap.dedent("""
        from ppl_cvae.problems import LinearGaussian

        def scaled(scale=1.0):
            return LinearGaussian(x_dim=2, y_dim=2)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "run.toml").write_text(
        'problem = { name = "scaled_problem:scaled", scale = nan }\n'
        "[train]\nnum_epochs = 1\nnum_train = 128\nbatch_size = 64\n"
        "[model]\nlatent_dim = 2\nhidden_dims = [8]\n")
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:  # before: exit 0 and a config.json holding NaN
        assert main(["fit", "--config", str(tmp_path / "run.toml"), "--out",
                     str(tmp_path / "out"), "--quiet"]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "problem.scale = NaN" in err[0], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- posterior files
def test_sample_keeps_and_names_a_nan_log_density(lg, caplog, tmp_path):
    cvae, _, y = lg
    problem = HalfNaNPrior(x_dim=2, y_dim=2)
    with caplog.at_level(logging.WARNING, "inference"):
        idata = sample_posterior(cvae, y, 50, problem=problem, seed=0)
    lp = idata.sample_stats["lp"].values
    num_nan = int(np.isnan(lp).sum())
    x0 = idata.posterior["x"].values[..., 0]
    assert num_nan == int((x0 > 0).sum()) > 0  # the broken density, draw for draw
    assert np.isfinite(idata.posterior["x"].values).all()
    assert json.loads(idata.attrs["not_finite"]) == {"sample_stats.lp": [num_nan, lp.size]}
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warned) == 1 and f"sample_stats.lp at {num_nan} of {lp.size}" in warned[0]
    # streamed in chunks: one warning with the totals, and the file records them
    caplog.clear()
    with caplog.at_level(logging.WARNING, "inference"):
        path = sample_posterior_to_netcdf(cvae, y, 50, tmp_path / "p.nc", problem=problem,
                                          seed=0, in_memory_bytes=1, chunk_bytes=1000)
    streamed = load_inference_data(path)
    lp = streamed.sample_stats["lp"].values
    total = [int(np.isnan(lp).sum()), lp.size]
    assert total[0] > 0 and json.loads(streamed.attrs["not_finite"]) == {
        "sample_stats.lp": total}
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warned) == 1 and f"at {total[0]} of {total[1]}" in warned[0]


def test_sample_with_finite_densities_records_and_warns_nothing(lg, caplog):
    cvae, problem, y = lg
    with caplog.at_level(logging.WARNING, "inference"):
        idata = sample_posterior(cvae, y, 20, problem=problem, seed=0)
    assert "not_finite" not in idata.attrs and not caplog.records


def test_non_finite_draws_are_an_error_naming_how_many(lg):
    _, problem, y = lg
    x = torch.zeros(8, 2, 2)
    x[3, 1, 0] = math.nan
    x[5, 1, 1] = math.inf
    with pytest.raises(DataError, match=r"2 of 16 posterior draws of x .*diverged"):
        inference_data_from_draws(x, y, problem=problem)


def test_refinement_survives_a_forward_operator_nan_at_some_draws(lg):
    cvae, _, y = lg
    problem = NaNForward(x_dim=2, y_dim=2)
    draws = draw_posterior(cvae, y, 40, seed=0)
    with pytest.warns(UserWarning, match="NaN or infinite misfit gradient"):
        refined = refine_by_misfit(draws, y, problem, num_steps=5)
    assert torch.isfinite(refined.x).all()  # before: every draw NaN after the first step
    with pytest.warns(UserWarning, match="exceed max_misfit"):
        kept, _ = accept_by_misfit(refined, y, problem, 10, max_misfit=1e-6)
    # a draw with a NaN misfit is the last to fill up: 20 of 40 per observation have x_0 <= 0
    num_finite = (refined.x[..., 0] <= 0).sum(0)
    assert bool((num_finite >= 10).all())
    assert bool((kept.x[..., 0] <= 0).all())


def test_check_posterior_refuses_groups_that_disagree(lg, tmp_path):
    cvae, problem, y = lg
    x_true = torch.zeros(2, 2)
    idata = sample_posterior(cvae, y, 10, problem=problem, x_true=x_true, seed=0)
    check_posterior(idata, "p.nc", require=(("posterior", "x"), ("observed_data", "y")))
    x_dim = idata.posterior["x"].dims[-1]
    renamed = idata.copy()
    renamed.posterior = renamed.posterior.rename({x_dim: "other"})
    with pytest.raises(DataError, match=r"posterior.x has dims \('observation', 'other'\)"):
        check_posterior(renamed, "p.nc")
    extra = idata.copy()
    extra.observed_data = extra.observed_data.expand_dims(extra=2, axis=1)
    with pytest.raises(DataError, match="observed_data.y has"):
        check_posterior(extra, "p.nc")
    fewer = idata.copy()
    fewer.observed_data = fewer.observed_data.isel(observation=[0])
    with pytest.raises(DataError, match="dim 'observation' has size 2 in posterior but 1"):
        check_posterior(fewer, "p.nc")


# ----------------------------------------------------------------- standardisation
def test_standardiser_refuses_a_column_float32_cannot_hold(tmp_path, capsys):
    data = torch.randn(64, 3, dtype=torch.float64)
    data[:, 1] = torch.where(torch.arange(64) % 2 == 0, 3.3e38, -3.3e38)  # sd 3.3e38
    with pytest.raises(DataError, match=r"x\[\.\.\., 1\] has mean 0 and standard deviation "
                                        r"3\.3\de\+38.*rescale the units of x"):
        Standardiser((3,), "x").fit(data)
    # the limit: |mean| + 1000 sd must stay below 3.4e38
    near = torch.randn(64, 3, dtype=torch.float64)
    near[:, 2] = near[:, 2] * 3e38 / FLOAT32_HEADROOM / 3
    s = Standardiser((3,), "y").fit(near)
    assert torch.isfinite(s.std).all() and torch.isfinite(s(near.float())).all()
    near[:, 2] *= 10  # an sd of about 1e36: 1000 of them overflow float32
    with pytest.raises(DataError, match=r"y\[\.\.\., 2\]"):
        Standardiser((3,), "y").fit(near)
    # the CLI: one line before training (before: a LinAlgError traceback)
    x = np.random.default_rng(0).normal(size=(512, 3))
    x[:, 1] = np.where(np.arange(512) % 2, 3.3e38, -3.3e38)
    x[:2, 1] = [3.4e38, -3.4e38]
    np.savez(tmp_path / "pairs.npz", x=x, y=x[:, :2] + 1.0)
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--data", str(tmp_path / "pairs.npz"), "--out",
                     str(tmp_path / "run"), *TINY]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x[..., 1] has mean" in err[0], err
    assert not (tmp_path / "run").exists()
