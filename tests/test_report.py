"""The uncertainty report: whitened misfit from the file alone, figures on named dims and units."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer

from inference.arviz_io import load_inference_data, save_inference_data, to_inference_data
from inference.diagnostics.ppc import PPC_COLUMNS, check_ppc, run_ppc
from inference.report import posterior_figures, predictive_figure, write_report
from inference.sample import sample_posterior
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import ConfigError, DataError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import MT1D, Crosshole, Gravity, LinearGaussian, TwoBirds
from ppl_cvae.problems.base import (
    check_problem,
    data_units,
    extra_coords_of,
    noise_scale,
    sample_noise,
    units_of,
    whiten,
)
from ppl_cvae.train.fit import build_cvae


def _untrained(problem) -> CVAE:
    """Untrained networks, standardisers fitted on 64 of the problem's pairs.

    With the identity standardisers of a bare CVAE, MT1D's phases (about 45 deg) lie tens of
    "training" sds out and sampling warns (``warn_far_observations``).
    """
    config = ModelConfig(
        x_shape=problem.x_shape, y_shape=problem.y_shape, latent_dim=2, hidden_dims=(8,)
    )
    x, y = problem.simulate(64, torch.Generator().manual_seed(123))
    return build_cvae(config, x, y, seed=0)


def _mt1d_idata(problem: MT1D, x_true, y_obs, x_draws, seed: int = 0):
    """InferenceData of given draws as sample_posterior writes it: y_rep = F(x) + eps."""
    gen = torch.Generator().manual_seed(seed)
    y_rep = problem.forward(x_draws) + sample_noise(problem, tuple(x_draws.shape[:2]), gen)
    return to_inference_data(
        x_draws,
        torch.zeros(*x_draws.shape[:2], 2),
        y_obs,
        y_rep=y_rep,
        x_true=x_true,
        x_dims=problem.x_dims,
        y_dims=problem.y_dims,
        coords=problem.coords,
        units=units_of(problem),
        y_units=data_units(problem),
        noise_sd=noise_scale(problem),
    )


def test_compute_layers_import_no_plotting():
    """inference.diagnostics and inference.evaluate import neither matplotlib nor arviz."""
    code = (
        "import sys, inference.diagnostics, inference.evaluate; "
        "print(sorted(m for m in ('matplotlib', 'seaborn', 'arviz') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_whitened_chi2_of_ideal_draws_is_one_and_shifted_draws_are_flagged(tmp_path):
    problem = MT1D(num_layers=8, depth=1400.0)  # 26 frequencies: m = 52 data, 26 per component
    num_obs, num_draws = 40, 50
    x_true, y_obs = problem.simulate(num_obs, torch.Generator().manual_seed(1))
    # ideal posterior: every draw is the true model, so F(x_s) - y = -eps_obs
    ideal = x_true.expand(num_draws, *x_true.shape)
    path = save_inference_data(_mt1d_idata(problem, x_true, y_obs, ideal), tmp_path / "p.nc")
    table = run_ppc(load_inference_data(path))  # from the file alone
    assert list(table.columns) == list(PPC_COLUMNS)
    assert len(table) == 3 * num_obs  # "all" + one row per component, per observation
    assert table["whitened"].all()
    for data, m in (("all", 52), ("log10_rho_a", 26), ("phase", 26)):
        rows = table[table["data"] == data]
        # per observation: |e_0|^2/m + mean_s |e_s|^2/m - 1 - 2 mean_s e_s.e_0 / m with e ~ N(0, I)
        # (e_0 the observed noise, e_s the noise of y_rep_s): mean 1, variance
        # 2/m + 2/(m S) + 4/(m S); over M independent observations divide by M; 4 sd
        sd = math.sqrt((2 / m + 6 / (m * num_draws)) / num_obs)
        assert abs(rows["chi2_per_datum"].mean() - 1.0) < 4 * sd, (
            data,
            rows.mean(numeric_only=True),
        )
        assert (
            rows["rmse_units"].iloc[0]
            == {
                "all": "mixed: see the per-component rows",
                "log10_rho_a": "log10(ohm m)",
                "phase": "deg",
            }[data]
        )
    # the estimate matches the definition mean_s |L^-1 (F(x_s) - y)|^2 / m per observation:
    # the two differ by the y_rep noise terms, sd about sqrt(6 / (m S)) = 0.048 for m = 52,
    # S = 50; 5 sd for the largest of 40 (false alarm 40 * 6e-7)
    direct = whiten(problem, problem.forward(x_true) - y_obs).double().pow(2).mean((1, 2))
    all_rows = table[table["data"] == "all"]["chi2_per_datum"].to_numpy()
    assert np.abs(all_rows - direct.numpy()).max() < 5 * math.sqrt(6 / (52 * num_draws))
    assert np.isnan(table[table["data"] == "all"]["rmse_of_mean"]).all()  # no pooled units
    assert check_ppc(table) == []
    # negative control: resistivity a factor 10**0.3 = 2 too high everywhere; the apparent
    # resistivity moves by 0.3 in log10 against a noise sd of 0.043: chi2 ~ (0.3/0.043)^2 = 48
    shifted = _mt1d_idata(problem, x_true, y_obs, ideal + 0.3, seed=2)
    bad = run_ppc(shifted)
    assert (bad[bad["data"] == "log10_rho_a"]["chi2_per_datum"] > 20).all()
    assert (bad[bad["data"] == "all"]["chi2_per_datum"] > 10).all()
    assert len(check_ppc(bad)) == num_obs


def test_unwhitened_misfit_says_so():
    problem = TwoBirds("data_1")  # noise-free: no noise stored, RMSE in units of y only
    x, y = problem.simulate(2)
    idata = sample_posterior(_untrained(problem), y, 10, problem=problem, seed=0)
    assert "y_noise_sd" not in idata.get("constant_data", {})
    table = run_ppc(idata)
    assert not table["whitened"].any() and table["chi2_per_datum"].isna().all()
    assert np.isfinite(table["rmse_of_mean"]).all()
    with pytest.raises(DataError, match="not whitened"):
        check_ppc(table)


class _TwoUnits(LinearGaussian):
    """Parameters in different units: an amplitude in mV and a rate in 1/s."""

    def __init__(self, units_x):
        super().__init__(x_dim=2, y_dim=3)
        self.coords = {"parameter": ["a", "b"], "datum": [0, 1, 2]}
        self.units = {"x": units_x, "y": "mV"}


def test_parameters_in_different_units_get_an_x_units_coordinate(tmp_path):
    """``units={"x": {"a": "mV", "b": "1/s"}}`` was accepted and became the one string
    "mV | 1/s" with nothing per parameter (the trust audit); now ``x_units`` names each
    parameter's unit, as ``y_units`` does for data, and a mapping of other keys is refused."""
    problem = _TwoUnits({"a": "mV", "b": "1/s"})
    x, y = problem.simulate(2, torch.Generator().manual_seed(0))
    idata = sample_posterior(_untrained(problem), y, 10, problem=problem, x_true=x, seed=0)
    idata = load_inference_data(save_inference_data(idata, tmp_path / "post.nc"))
    for group in ("posterior", "constant_data"):
        assert list(idata[group]["x_units"].values) == ["mV", "1/s"]
    assert idata.posterior["x"].attrs["units"] == "mV | 1/s"
    bad = _TwoUnits({"a": "mV", "c": "1/s"})
    with pytest.raises(ConfigError, match=r"units\['x'\] maps \['a', 'c'\] to units; expected "
                       r"the coordinate values of exactly one of the x dims"):  # fmt: skip
        sample_posterior(_untrained(bad), y, 10, problem=bad, seed=0)


def test_mt1d_report_one_panel_per_component_with_units(tmp_path):
    problem = MT1D(num_layers=6, depth=1000.0, frequencies=[0.1, 1.0, 10.0, 100.0])
    x, y = problem.simulate(2, torch.Generator().manual_seed(0))
    idata = sample_posterior(_untrained(problem), y, 30, problem=problem, x_true=x, seed=0)
    idata = load_inference_data(save_inference_data(idata, tmp_path / "post.nc"))
    assert list(idata.observed_data["y_units"].values) == ["log10(ohm m)", "deg"]
    assert idata.observed_data["y"].attrs["units"] == "log10(ohm m) | deg"
    sd = idata.constant_data["y_noise_sd"]
    # sigma(log10 rho_a) = 2 e / ln 10, sigma(phase) = 180 e / pi deg, e = 0.05
    np.testing.assert_allclose(sd.sel(component="log10_rho_a"), 0.1 / math.log(10), rtol=1e-6)
    np.testing.assert_allclose(sd.sel(component="phase"), math.degrees(0.05), rtol=1e-6)

    fig = predictive_figure(idata, observation=1)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["component = log10_rho_a", "component = phase"]
    assert all(ax.get_xscale() == "log" and ax.get_xlabel() == "frequency (Hz)" for ax in axes)
    assert axes[0].get_ylabel() == "rho_a (ohm m)" and axes[0].get_yscale() == "log"
    assert axes[1].get_ylabel() == "phase (deg)" and axes[1].get_yscale() == "linear"
    assert all(any(isinstance(c, ErrorbarContainer) for c in ax.containers) for ax in axes)
    assert all(ax.get_legend() is None for ax in axes)  # the legend sits below the panels

    profile = posterior_figures(idata, observation=0)["posterior"].axes[0]
    assert profile.get_xscale() == "log" and profile.get_xlabel() == "x (ohm m)"
    assert profile.get_ylabel() == "depth of layer top (m)" and profile.yaxis_inverted()
    # the half-space continues below its top at 1000 m; the median is a staircase of 2N points
    assert profile.get_ylim()[0] > 1000.0
    median = next(line for line in profile.get_lines() if line.get_label() == "median")
    assert len(median.get_ydata()) == 2 * 6
    np.testing.assert_allclose(median.get_ydata()[:4], [0.0, 200.0, 200.0, 400.0])

    files = write_report(idata, tmp_path / "rep", max_observations=1)
    assert {p.name for p in files} >= {"misfit.csv", "posterior_obs0.png", "predictive_obs0.png"}
    header = (tmp_path / "rep" / "misfit.csv").read_text().splitlines()[0]
    assert header == ",".join(PPC_COLUMNS)


def test_crosshole_rays_carry_source_and_receiver_positions(tmp_path):
    problem = Crosshole(num_depth_cells=8, num_offset_cells=6, num_sources=3, num_receivers=4)
    x, y = problem.simulate(1, torch.Generator().manual_seed(0))
    idata = sample_posterior(_untrained(problem), y[0], 12, problem=problem, x_true=x[0], seed=0)
    idata = load_inference_data(save_inference_data(idata, tmp_path / "post.nc"))
    obs = idata.observed_data
    for name, expected in (
        ("source_depth", problem.source_depth),
        ("receiver_depth", problem.receiver_depth),
        ("source_offset", torch.zeros(12)),
        ("receiver_offset", torch.full((12,), problem.width)),
    ):
        assert obs[name].dims == ("ray",) and obs[name].attrs["units"] == "m"
        np.testing.assert_allclose(obs[name].values, expected.numpy(), rtol=1e-6)
    assert "source_depth" in idata.posterior_predictive.coords
    field = posterior_figures(idata)["posterior"]
    truth = next(ax for ax in field.axes if ax.get_title() == "truth")
    sources = next(line for line in truth.get_lines() if line.get_label() == "source")
    np.testing.assert_allclose(sources.get_xdata(), 0.0)
    np.testing.assert_allclose(np.unique(sources.get_ydata()), problem.source_depths.numpy())


def test_gravity_colour_bars_sit_below_wide_sections():
    problem = Gravity(num_depth_cells=4, num_offset_cells=8, num_stations=6)  # 2:1 section
    x, y = problem.simulate(1, torch.Generator().manual_seed(0))
    idata = sample_posterior(_untrained(problem), y[0], 12, problem=problem, x_true=x[0], seed=0)
    fig = posterior_figures(idata)["posterior"]
    fig.draw_without_rendering()
    images = [ax for ax in fig.axes if ax.get_images()]
    bars = [ax for ax in fig.axes if ax not in images and ax.get_visible()]
    assert len(bars) == len(images) == 6  # truth, mean, sd and 3 draws, one bar each
    for image, bar in zip(images, bars, strict=True):
        box, bar_box = image.get_position(), bar.get_position()
        assert bar_box.y1 <= box.y0 and bar_box.height < box.height  # below, not beside
        # drawn to scale: the panel's width over height is the section's 1600 m / 800 m
        assert box.width * fig.get_figwidth() / (box.height * fig.get_figheight()) == (
            pytest.approx(2.0, rel=0.02)
        )


def test_an_image_gets_pixel_axes_a_linear_scale_and_no_depth_profile():
    """Pixel probabilities from 1e-4 to 0.9 were drawn on a log scale, with a 'depth
    profile' of the middle column (the seventeenth audit); a named section keeps both."""
    from matplotlib.colors import LogNorm

    rng = np.random.default_rng(0)
    probabilities = torch.as_tensor(10 ** rng.uniform(-4, -0.05, size=(6, 1, 8, 8)))
    for named in (False, True):
        idata = to_inference_data(
            probabilities, None, torch.zeros(1, 10),
            x_dims=("depth", "offset") if named else None,
            units={"x": "m/s"} if named else None,
        )  # fmt: skip
        figures = posterior_figures(idata)
        assert sorted(figures) == (["posterior", "profile"] if named else ["posterior"])
        axes = [ax for ax in figures["posterior"].axes if ax.get_images()]
        logs = [isinstance(ax.get_images()[0].norm, LogNorm) for ax in axes]
        assert all(logs) if named else not any(logs[:1] + logs[2:])  # the sd panel aside
        assert (axes[0].get_xlabel() == "column (pixel)") != named


def test_per_component_units_must_match_one_dim():
    problem = LinearGaussian(x_dim=2, y_dim=3)
    problem.units = {"x": "", "y": {"a": "m", "b": "s"}}  # no y dim has coordinates a, b
    with pytest.raises(ConfigError, match="exactly one of the y dims"):
        check_problem(problem, "test")
    problem.units = {"x": "", "y": "m"}
    assert data_units(check_problem(problem, "test")) is None


@pytest.mark.parametrize("entry", [("datum", 5), (["datum"], [1, 2, 3]), "datum", ("nope", [1])])
def test_malformed_extra_coords_are_refused(entry):
    problem = LinearGaussian(x_dim=2, y_dim=3)
    problem.extra_coords = {"station_height": entry}
    with pytest.raises(ConfigError, match=r"extra_coords\['station_height'\] must be"):
        check_problem(problem, "test")
    problem.extra_coords = {"station_height": ("datum", [1.0, 2.0, 3.0])}
    assert extra_coords_of(check_problem(problem, "test")) == {
        "station_height": ("datum", [1.0, 2.0, 3.0])
    }


def test_the_summary_of_one_draw_has_a_nan_sd_and_no_numpy_warning():
    """A posterior file of one draw: ``sd`` is NaN in summary.csv (before: NumPy's "Degrees of
    freedom <= 0" printed as a warning line of ``diagnose``)."""
    import torch

    from inference.arviz_io import summary, to_inference_data

    idata = to_inference_data(torch.zeros(1, 1, 3), None, torch.zeros(1, 2))
    table = summary(idata)  # filterwarnings = error: a RuntimeWarning fails here
    assert table["mean"].tolist() == [0.0, 0.0, 0.0] and table["sd"].isna().all()


@pytest.mark.parametrize(("num_data", "num_draws"), [(1, 3), (2, 3), (4, 1), (4, 20), (40, 2)])
def test_plausible_chi2_range_keeps_its_false_alarm_for_few_data(num_data, num_draws):
    """The range's tails hold ``Phi(-4)`` each of the statistic it bounds, simulated from its
    exact distribution: for draws concentrated on the truth, ``m (v + 1)`` is
    ``(1 + 1/S) chi2_m + (1/S) chi2_(m (S-1))``. 4 million values: the count outside has mean
    253 and sd 16 at the promised 6.3e-5; 5 sd either way. Before, the three-cumulant range let
    through 2.2e-2 of them for one datum and 1.4e-3 for two (three draws)."""
    from scipy import stats

    from inference.diagnostics.ppc import plausible_chi2_range

    n, m, s = 4_000_000, num_data, num_draws
    rng = np.random.default_rng(100 * m + s)
    spread = rng.chisquare(m * (s - 1), n) / s if s > 1 else 0.0
    v = ((1 + 1 / s) * rng.chisquare(m, n) + spread) / m - 1
    low, high = plausible_chi2_range(m, s)
    expected = 2 * stats.norm.sf(4.0) * n
    outside = int(((v < low) | (v > high)).sum())
    assert abs(outside - expected) < 5 * math.sqrt(expected), (outside, expected)


@pytest.mark.parametrize("num_draws", [1, 3])
def test_exact_draws_keep_the_misfit_verdicts_false_alarm_with_few_draws(num_draws):
    """Exact posterior draws with 1 or 3 predictive draws per observation are flagged at most
    as often as ``num_sd`` promises: at ``num_sd=2`` (two-sided 0.0455, so the test has counts
    to compare) over 2,000 observations of 40 data. The predictive noise of few draws adds
    ``6 / (S m)`` to the variance; before, the range ignored it and ``1 +- 2 sqrt(2 / m)``
    flagged about a third of the observations at ``S = 1`` (4.3% at ``num_sd=4``, against
    6.3e-5 promised). The range is an upper bound (draws concentrated on the truth spread the
    most), so exact draws, which vary, stay below it."""
    from inference.exact import exact_posterior
    from inference.sample import inference_data_from_draws

    problem = LinearGaussian(x_dim=4, y_dim=40, noise_std=0.5, seed=3)
    gen = torch.Generator().manual_seed(11)
    _, y = problem.simulate(2000, gen)
    draws = exact_posterior(problem, y).sample(num_draws, gen)
    idata = inference_data_from_draws(
        draws, y, problem=problem, generator=torch.Generator().manual_seed(5)
    )
    table = run_ppc(idata)
    assert (table["num_draws"] == num_draws).all()
    rate = len(check_ppc(table, num_sd=2.0)) / 2000
    assert rate < 0.0455 + 4 * math.sqrt(0.0455 * 0.9545 / 2000), rate
    values = table["chi2_per_datum"].to_numpy()
    assert abs(values.mean() - 1) < 4 * values.std() / math.sqrt(2000)  # unbiased: mean 1
    old = np.abs(values - 1) > 2 * math.sqrt(2 / 40)  # the former range
    if num_draws == 1:
        assert old.mean() > 0.15, old.mean()  # the former rule's false alarms


def test_the_report_places_the_truth_in_the_summary_and_says_so(tmp_path, capsys):
    """``summary.csv`` gets the truth of each element in ArviZ's row order, its z-score and
    whether it lies in the 90% HDI. Draws ``N(mu_j, 1)`` (4,000 per observation, distinct
    ``mu_j``) and truths ``mu_j + d_j`` with ``d = 0, 0.5, 3, -5`` repeated: ``true_z`` is
    ``d_j`` within 4 standard errors of a mean and an sd of 4,000 draws (0.1 at ``|d| = 5``),
    and only ``|d| >= 3`` lie outside the 90% HDI (+-1.645). ``diagnose`` prints the count."""
    from ppl_cvae.cli import main

    gen = torch.Generator().manual_seed(0)
    num_obs, dim, draws = 2, 8, 4000
    mu = torch.arange(num_obs * dim, dtype=torch.float32).reshape(num_obs, dim) * 10
    offset = torch.tensor([0.0, 0.5, 3.0, -5.0]).repeat(dim // 4)
    x = mu + torch.randn(draws, num_obs, dim, generator=gen)
    idata = to_inference_data(x, None, torch.zeros(num_obs, 3), x_true=mu + offset)
    table = write_report(idata, tmp_path / "report", max_observations=0)
    import pandas as pd

    summary = pd.read_csv(tmp_path / "report" / "summary.csv", index_col=0)
    np.testing.assert_allclose(summary["true"], (mu + offset).reshape(-1).numpy(), rtol=1e-6)
    z = summary["true_z"].to_numpy()
    np.testing.assert_allclose(z, offset.repeat(num_obs).numpy(), atol=0.15)
    inside = summary["true_in_hdi"].to_numpy()
    assert list(inside) == [bool(abs(d) < 1) for d in offset.repeat(num_obs)]
    assert len(table) == 2  # summary.csv and misfit.csv
    save_inference_data(idata, tmp_path / "post.nc")
    assert main(["diagnose", str(tmp_path / "post.nc"), "--out", str(tmp_path / "r2"),
                 "--max-observations", "1"]) == 0
    printed = capsys.readouterr().out
    assert "truth: x inside the 90% HDI at 8 of 16 values (0.500)" in printed


def test_a_file_without_truth_has_no_truth_columns(tmp_path):
    idata = to_inference_data(torch.randn(50, 1, 3), None, torch.zeros(1, 2))
    write_report(idata, tmp_path, max_observations=0)
    import pandas as pd

    assert "true" not in pd.read_csv(tmp_path / "summary.csv").columns


def test_diagnose_judges_the_draws_own_misfit_as_sample_does(tmp_path, capsys):
    """A file with ``sample_stats.chi2_per_datum`` is judged on it, as ``ppl-cvae sample`` does.

    Draws shifted off the exact posterior so that their own misfit is 1.45 per datum
    (m = 400 data: exact draws lie in 1 +- 0.28 at the verdict's 4 sd), one draw per
    observation. ``sample`` warned about them; ``diagnose`` judged the posterior predictive's
    estimate, whose range for one draw is 1 +- 0.57, and said they fit.
    """
    from inference.arviz_io import save_inference_data
    from inference.diagnostics.ppc import misfit_warning
    from inference.exact import exact_posterior
    from inference.sample import inference_data_from_draws
    from ppl_cvae.cli import main

    problem = LinearGaussian(x_dim=4, y_dim=400, noise_std=0.5, seed=3)
    gen = torch.Generator().manual_seed(11)
    _, y = problem.simulate(6, gen)
    draws = exact_posterior(problem, y).sample(1, gen)
    direction = torch.randn(4, generator=gen)
    a_dir = problem.forward(direction) - problem.forward(torch.zeros(4))
    scale = math.sqrt(0.45 * 400 * 0.25) / float(a_dir.norm())  # +0.45 per datum
    idata = inference_data_from_draws(draws + scale * direction, y, problem=problem,
                                      generator=torch.Generator().manual_seed(5))
    own = idata["sample_stats"]["chi2_per_datum"].values.ravel()
    assert np.all(np.abs(own - 1.45) < 0.25), own  # the construction
    assert misfit_warning(idata) is not None  # what sample says
    save_inference_data(idata, tmp_path / "post.nc")
    assert main(["diagnose", str(tmp_path / "post.nc"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("misfit:"))
    assert verdict.startswith("misfit: WARNING: the draws of"), out
    assert "each draw's own misfit, as ppl-cvae sample judged" in verdict
