"""The groups of a posterior file: log_likelihood, sample_stats, constant_data, run attributes.

Known answers come from the linear-Gaussian problem (``y = A x + eps``, ``x ~ N(0, I)``,
``eps ~ N(0, sigma^2 I)``), whose exact posterior (:mod:`inference.exact`) gives draws, and
whose marginal ``y ~ N(0, Sigma_y)``, ``Sigma_y = A A^T + sigma^2 I``, gives the
leave-one-out predictive density of every datum in closed form: with ``Q = Sigma_y^-1``,
``y_i | y_-i ~ N(y_i - (Q y)_i / Q_ii, 1 / Q_ii)`` (the conditional of a Gaussian vector).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from inference.arviz_io import (
    az,
    load_inference_data,
    save_inference_data,
    to_inference_data,
)
from inference.diagnostics.ppc import run_ppc
from inference.exact import ExactPosterior, exact_posterior
from inference.sample import inference_data_from_draws
from ppl_cvae import __version__
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems import TwoBirds
from ppl_cvae.problems.linear_gaussian import LinearGaussian

NUM_DRAWS = 4000
NUM_OBS = 3
X_DIM, Y_DIM, NOISE = 2, 10, 0.5

ALL_GROUPS = [
    "constant_data",
    "log_likelihood",
    "observed_data",
    "posterior",
    "posterior_predictive",
    "sample_stats",
]
"""The groups of a posterior file with a problem that has a forward operator and noise."""


def _problem() -> LinearGaussian:
    return LinearGaussian(x_dim=X_DIM, y_dim=Y_DIM, noise_std=NOISE)


def _case(seed: int, num_obs: int = NUM_OBS):
    """Problem, truths, observations, exact posterior and a generator for the draws."""
    problem = _problem()
    gen = torch.Generator().manual_seed(seed)
    x_true, y = problem.simulate(num_obs, gen)
    return problem, x_true, y, exact_posterior(problem, y), gen


def _closed_form_loo(problem: LinearGaussian, y: torch.Tensor, exact: ExactPosterior):
    """Return exact ``elpd_loo``, ``lppd`` (sums over all data) and the LOO-PIT values."""
    a = problem.matrix.double().numpy()
    sigma2 = problem.noise_std**2
    q = np.linalg.inv(a @ a.T + sigma2 * np.eye(a.shape[0]))  # prior_std = 1
    qy = y.double().numpy() @ q  # (M, m); Q symmetric
    qd = np.diag(q)
    elpd = float(np.sum(0.5 * np.log(qd / (2 * np.pi)) - 0.5 * qy**2 / qd))
    loo_pit = stats.norm.cdf(qy / np.sqrt(qd))  # P(y_rep_i <= y_i | y_-i)
    mean = exact.mean.double().numpy() @ a.T  # (M, m): A mu
    var = np.einsum("ij,jk,ik->i", a, exact.cov.numpy(), a) + sigma2  # a_i C a_i + sigma^2
    lppd = float(np.sum(stats.norm.logpdf(y.double().numpy(), mean, np.sqrt(var))))
    return elpd, lppd, loo_pit


def _loo_quietly(idata):
    """``az.loo`` without its warning about large k-hat (the negative controls trigger it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Estimated shape parameter of Pareto", UserWarning)
        return az.loo(idata)


# --------------------------------------------------------------------------- log-likelihood
def test_log_likelihood_lp_and_misfit_are_the_gaussian_densities(seed):
    problem, x_true, y, exact, gen = _case(seed)
    draws = exact.sample(500, gen)
    idata = inference_data_from_draws(draws, y, problem=problem, x_true=x_true, generator=gen)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "observation", "datum")
    assert idata.observed_data["y"].dims == ("observation", "datum")  # what az.loo pairs it with
    assert idata.sample_stats["lp"].dims == ("chain", "draw", "observation")
    assert idata.sample_stats["lp"].attrs["units"] == "nats"

    x = idata.posterior["x"].values[0].astype(np.float64)  # (S, M, d), as stored
    a = problem.matrix.double().numpy()
    resid = y.double().numpy()[None] - x @ a.T  # (S, M, m)
    by_hand = -0.5 * (resid / NOISE) ** 2 - math.log(NOISE) - 0.5 * math.log(2 * math.pi)
    stored = idata.log_likelihood["y"].values[0]
    # float32 storage (relative 6e-8) and a float32 forward (|r| / sigma^2 * 2^-24 |Ax|,
    # about 1e-7 here): 1e-6 is 10 times the rounding
    np.testing.assert_allclose(stored, by_hand, rtol=1e-6, atol=1e-6)
    # the same numbers as the problem's own pointwise log-likelihood, summing to the joint one
    direct = problem.log_likelihood_pointwise(torch.as_tensor(x, dtype=torch.float32), y)
    np.testing.assert_allclose(stored, direct.numpy(), rtol=1e-6, atol=1e-6)

    log_prior = stats.norm.logpdf(x).sum(-1)  # x ~ N(0, I)
    np.testing.assert_allclose(
        idata.sample_stats["lp"].values[0], log_prior + by_hand.sum(-1), rtol=1e-6
    )
    chi2 = ((resid / NOISE) ** 2).mean(-1)  # |r|^2 / (sigma^2 m)
    np.testing.assert_allclose(idata.sample_stats["chi2_per_datum"].values[0], chi2, rtol=1e-5)

    const = idata.constant_data
    np.testing.assert_allclose(const["y_noise_sd"].values, np.full(Y_DIM, NOISE))
    assert const["y_noise_sd"].attrs["correlated"] == 0 and "y_noise_cov" not in const
    assert "log_likelihood_omitted" not in idata.posterior.attrs
    ll = idata.log_likelihood["y"]
    assert ll.attrs["pointwise"] == "independent" and ll.attrs["sums_to_joint"] == 1


# --------------------------------------------------------------------------- az.loo
def test_loo_of_draws_that_misfit_by_thousands_of_nats_is_a_number(tmp_path):
    """Log-likelihoods were stored in float32, and ArviZ's PSIS smoothing in float32 gave
    ``elpd_loo`` NaN for draws that misfit their data by a thousand nats (the tutorial's
    amortized file had one such observation). They are float64 now, through the file too:
    ``az.loo`` of the file equals that of the same terms recomputed in float64."""
    problem, _, y, exact, gen = _case(0)
    draws = 3 * exact.sample(NUM_DRAWS, gen) + 10.0  # far from every observation
    idata = inference_data_from_draws(draws, y, problem=problem, generator=gen)
    path = save_inference_data(idata, tmp_path / "misfit.nc")
    stored = az.from_netcdf(path)
    ll = stored.log_likelihood["y"]
    assert ll.dtype == np.float64 and float(ll.min()) < -1000
    x = torch.as_tensor(stored.posterior["x"].values[0])
    direct = problem.log_likelihood_pointwise(x.double(), y.double()).numpy()
    np.testing.assert_allclose(ll.values[0], direct, rtol=1e-5)
    recomputed = stored.copy()
    recomputed.log_likelihood["y"].values[0] = direct
    elpd = _loo_quietly(stored).elpd_loo
    assert np.isfinite(elpd)
    assert elpd == pytest.approx(_loo_quietly(recomputed).elpd_loo, rel=1e-5)


@pytest.mark.parametrize("posterior", ["exact", "too narrow", "shifted"])
def test_loo_of_exact_draws_matches_the_closed_form(seed, posterior):
    problem, _, y, exact, gen = _case(seed)
    draws = exact.sample(NUM_DRAWS, gen)
    if posterior == "too narrow":  # a third of the exact spread
        draws = exact.mean + (draws - exact.mean) / 3
    elif posterior == "shifted":  # by one posterior sd
        draws = draws + exact.std
    idata = inference_data_from_draws(draws, y, problem=problem, generator=gen)
    loo = _loo_quietly(idata)
    elpd, lppd, _ = _closed_form_loo(problem, y, exact)
    assert loo.n_data_points == NUM_OBS * Y_DIM and loo.n_samples == NUM_DRAWS

    # Monte Carlo error: per datum, the importance-sampling estimate of p(y_i | y_-i) is
    # 1 / mean_s r_s with r_s = 1 / p(y_i | x_s), and lppd's is mean_s p(y_i | x_s); by the
    # delta method their logs have sd cv(r) / sqrt(S) and cv(p) / sqrt(S). The data share
    # the draws, so the errors are summed (triangle inequality), and 4 such sums allowed.
    ll = idata.log_likelihood["y"].values[0].astype(np.float64)  # (S, M, m)
    ratio, density = np.exp(-ll), np.exp(ll)
    se_loo = np.sum(ratio.std(0) / ratio.mean(0)) / math.sqrt(NUM_DRAWS)
    se_lppd = np.sum(density.std(0) / density.mean(0)) / math.sqrt(NUM_DRAWS)
    loo_ok = abs(loo.elpd_loo - elpd) < 4 * se_loo
    lppd_ok = abs(loo.elpd_loo + loo.p_loo - lppd) < 4 * se_lppd
    if posterior == "exact":
        assert loo_ok, (loo.elpd_loo, elpd, 4 * se_loo)
        assert lppd_ok, (loo.elpd_loo + loo.p_loo, lppd, 4 * se_lppd)
        # p_loo = lppd - elpd_loo >= 0 datum by datum (AM-HM: mean(1/p) >= 1/mean(p))
        assert abs(loo.p_loo - (lppd - elpd)) < 4 * (se_loo + se_lppd) and loo.p_loo > 0
    else:  # the negative controls: a wrong posterior misses the closed form
        assert not loo_ok, (posterior, loo.elpd_loo, elpd, 4 * se_loo)


def test_loo_pit_matches_the_closed_form_and_plots(seed):
    import matplotlib.pyplot as plt

    problem, _, y, exact, gen = _case(seed)
    idata = inference_data_from_draws(
        exact.sample(NUM_DRAWS, gen), y, problem=problem, generator=gen
    )
    pit = np.asarray(az.loo_pit(idata, y="y"))  # (M, m), from log_likelihood and y_rep
    _, _, expected = _closed_form_loo(problem, y, exact)
    # a weighted fraction of draws: sd sqrt(p (1 - p) / n_eff) <= 0.5 / sqrt(n_eff) with
    # n_eff = 1 / sum w^2 of the PSIS weights; 4.5 sd for 30 values (false alarm 2e-4)
    ll = idata.log_likelihood["y"].stack(__sample__=("chain", "draw"))  # as az.loo does
    log_w, _ = az.psislw(-ll)
    n_eff = 1.0 / np.sum(np.exp(log_w.values) ** 2, axis=-1)  # (M, m)
    assert pit.shape == (NUM_OBS, Y_DIM)
    assert np.all(np.abs(pit - expected) < 4.5 * 0.5 / np.sqrt(n_eff))
    ax = az.plot_loo_pit(idata, y="y")
    assert len(ax.get_lines()) > 0
    plt.close("all")


# --------------------------------------------------------------------------- az.ess / az.rhat
@pytest.mark.parametrize("chain", ["independent", "sticky"])
def test_ess_of_independent_draws_is_about_the_number_of_draws(seed, chain):
    problem, _, y, exact, gen = _case(seed)
    draws = exact.sample(NUM_DRAWS, gen)
    if chain == "sticky":  # negative control: each draw repeated 4 times, ESS about S / 4
        draws = draws[: NUM_DRAWS // 4].repeat_interleave(4, dim=0)
    idata = inference_data_from_draws(draws, y, problem=problem, generator=gen)
    ess = az.ess(idata)["x"]
    assert ess.dims == ("observation", "parameter")
    # bulk ESS of S iid draws: relative sd about 2 sqrt(K / S) = 0.05 for the K ~ 4 lags
    # Geyer's truncation keeps (0.046 in 1800 simulated sets of 4000 iid normals, min 0.74:
    # the lower tail is heavier than normal); 0.6 .. 1.4 is 8 sd and excludes S / 4
    inside = bool(((ess > 0.6 * NUM_DRAWS) & (ess < 1.4 * NUM_DRAWS)).all())
    assert inside == (chain == "independent"), ess.values / NUM_DRAWS
    # one chain: R-hat compares chains, so ArviZ returns NaN (amortized draws are no chain)
    rhat = az.rhat(idata)["x"]
    assert rhat.dims == ("observation", "parameter") and bool(np.isnan(rhat).all())


@pytest.mark.parametrize("chains", ["exchangeable", "one shifted"])
def test_rhat_reads_the_layout_when_draws_are_split_into_chains(seed, chains):
    problem, _, y, exact, gen = _case(seed)
    idata = inference_data_from_draws(
        exact.sample(NUM_DRAWS, gen), y, problem=problem, generator=gen
    )
    x = idata.posterior["x"].values.reshape(4, NUM_DRAWS // 4, NUM_OBS, X_DIM)
    if chains == "one shifted":  # negative control: a chain stuck half an sd away
        x[0] += 0.5 * exact.std.numpy()
    split = az.from_dict(posterior={"x": x}, dims={"x": ["observation", "parameter"]})
    rhat = az.rhat(split)["x"].values
    # split-R-hat of 8 half-chains of n = S / 8 iid draws: R^2 ~ 1 + (chi2_7 / 7 - 1) / n,
    # so R - 1 < (q / 7 - 1) / (2 n) with q the 1 - 1e-6 quantile of chi2_7 (bulk and
    # folded R-hat for 6 elements: false alarm 1.2e-5)
    bound = 1 + (stats.chi2.ppf(1 - 1e-6, 7) / 7 - 1) / (2 * NUM_DRAWS / 8)
    assert bool((rhat < bound).all()) == (chains == "exchangeable"), rhat


# --------------------------------------------------------------------------- layout
def test_one_observation_has_an_observation_dim_of_size_one(seed):
    problem, x_true, y, exact, gen = _case(seed, num_obs=1)
    idata = inference_data_from_draws(
        exact.sample(1000, gen), y, problem=problem, x_true=x_true, generator=gen
    )
    for group, var in [
        ("posterior", "x"),
        ("posterior_predictive", "y"),
        ("log_likelihood", "y"),
        ("sample_stats", "lp"),
        ("sample_stats", "chi2_per_datum"),
        ("observed_data", "y"),
        ("constant_data", "x_true"),
    ]:
        assert idata[group][var].sizes["observation"] == 1, (group, var)
    loo = _loo_quietly(idata)
    assert loo.n_data_points == Y_DIM and math.isfinite(loo.elpd_loo)


def test_round_trip_keeps_groups_values_and_attributes(seed, tmp_path):
    problem, x_true, y, exact, gen = _case(seed)
    num = 200
    idata = inference_data_from_draws(
        exact.sample(num, gen),
        y,
        problem=problem,
        x_true=x_true,
        attrs={"run_dir": "runs/lg", "seed": seed, "model_config": {"latent_dim": 2}},
        sample_stats={"log_weight": torch.zeros(num, NUM_OBS, dtype=torch.float64)},
        observation_stats={"khat": torch.tensor([0.1, 0.2, 0.3])},
        generator=gen,
    )
    again = load_inference_data(save_inference_data(idata, tmp_path / "post.nc"))
    assert sorted(again.groups()) == sorted(idata.groups()) == ALL_GROUPS
    for group in idata.groups():
        for name, var in idata[group].data_vars.items():
            back = again[group][name]
            assert back.dims == var.dims and back.dtype == var.dtype, (group, name)
            np.testing.assert_array_equal(back.values, var.values)
            assert back.attrs == var.attrs, (group, name)
    post = again.posterior.attrs
    assert post["run_dir"] == "runs/lg" and post["seed"] == seed and post["num_samples"] == num
    assert json.loads(post["model_config"]) == {"latent_dim": 2}
    assert post["inference_library"] == "ppl_cvae"
    assert post["inference_library_version"] == __version__
    assert again.attrs["run_dir"] == "runs/lg"  # also on the root, where earlier files had it
    assert again.sample_stats["khat"].attrs["constant_along"] == "chain draw"


def test_older_single_observation_files_gain_the_dim_on_reading(tmp_path):
    """A file of the earlier layout: one observation stored without the observation dim."""
    rng = np.random.default_rng(0)
    old = az.from_dict(
        posterior={"x": rng.normal(size=(1, 50, 3)), "z": rng.normal(size=(1, 50, 2))},
        posterior_predictive={"y": rng.normal(size=(1, 50, 4))},
        observed_data={"y": np.zeros(4)},
        constant_data={"x_true": np.zeros(3), "y_noise_sd": np.ones(4)},
        dims={
            "x": ["parameter"],
            "z": ["latent"],
            "y": ["datum"],
            "x_true": ["parameter"],
            "y_noise_sd": ["datum"],
        },
    )
    idata = load_inference_data(save_inference_data(old, tmp_path / "old.nc"))
    assert idata.posterior["x"].dims == ("chain", "draw", "observation", "parameter")
    assert idata.posterior["z"].dims == ("chain", "draw", "observation", "latent")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "observation", "datum")
    assert idata.observed_data["y"].dims == ("observation", "datum")
    assert idata.constant_data["x_true"].dims == ("observation", "parameter")
    assert idata.constant_data["y_noise_sd"].dims == ("datum",)  # shared: unchanged
    np.testing.assert_array_equal(idata.posterior["x"].values[:, :, 0], old.posterior["x"])
    # readers see one layout: the misfit table of the y_rep above against y = 0, sd 1
    table = run_ppc(idata)
    expected = (old.posterior_predictive["y"].values ** 2).mean() - 1.0
    assert table["chi2_per_datum"][0] == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- the hook
def test_sample_stats_hook_stores_per_draw_and_per_observation_statistics():
    num, num_obs = 6, 2
    log_weight = torch.randn(num, num_obs, dtype=torch.float64)
    per_component = torch.randn(num, num_obs, 3)
    idata = to_inference_data(
        torch.zeros(num, num_obs, 2),
        torch.zeros(num, num_obs, 1),
        torch.zeros(num_obs, 4),
        sample_stats={"log_weight": log_weight, "misfit_by_component": per_component},
        observation_stats={"khat": np.array([0.3, 0.9]), "ess_by_component": np.ones((2, 3))},
        stats_dims={"misfit_by_component": ["component"], "ess_by_component": ["component"]},
        stats_attrs={"khat": {"long_name": "Pareto k-hat of the importance weights"}},
        units={"misfit_by_component": "1", "y": "mGal"},
        log_likelihood=torch.zeros(num, num_obs, 4),
    )
    assert idata.observed_data["y"].attrs["units"] == "mGal"
    assert "units" not in idata.log_likelihood["y"].attrs  # nats, not the units of y
    ss = idata.sample_stats
    assert ss["log_weight"].dims == ("chain", "draw", "observation")
    assert ss["log_weight"].dtype == np.float64
    np.testing.assert_array_equal(ss["log_weight"].values[0], log_weight.numpy())
    assert ss["misfit_by_component"].dims == ("chain", "draw", "observation", "component")
    assert ss["misfit_by_component"].attrs["units"] == "1"
    khat = ss["khat"]
    assert khat.dims == ("chain", "draw", "observation")
    assert khat.attrs["constant_along"] == "chain draw"
    assert khat.attrs["long_name"].startswith("Pareto")
    np.testing.assert_array_equal(khat.values, np.broadcast_to([0.3, 0.9], (1, num, num_obs)))
    assert ss["ess_by_component"].dims == ("chain", "draw", "observation", "component")
    # every variable has (chain, draw) first: ArviZ's per-draw functions read the group
    ess = az.ess(idata.sample_stats)
    assert ess["log_weight"].dims == ("observation",)
    assert ess["ess_by_component"].dims == ("observation", "component")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [  # a wrong shape is a ShapeError, a wrong value a DataError, a name a ConfigError
        ({"sample_stats": {"log_weight": torch.zeros(5, 2)}}, ShapeError,
         r"leading axes \(6, 2\)"),
        ({"observation_stats": {"khat": torch.zeros(3)}}, ShapeError, r"leading axes \(2,\)"),
        ({"sample_stats": {"x": torch.zeros(6, 2)}}, ConfigError,
         "named like the file's other variables"),
        (
            {"sample_stats": {"k": torch.zeros(6, 2)}, "observation_stats": {"k": torch.zeros(2)}},
            ConfigError,
            "both per draw and per observation",
        ),
        (
            {"sample_stats": {"k": torch.zeros(6, 2, 3)}, "stats_dims": {"k": ["a", "b"]}},
            ShapeError,
            "1 event axes",
        ),
        ({"sample_stats": {"k": np.full((6, 2), "a")}}, DataError, "expected numbers"),
        ({"log_likelihood": torch.zeros(6, 2, 3)}, ShapeError,
         r"expected one value per draw and datum"),
    ],
)
def test_malformed_statistics_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        to_inference_data(torch.zeros(6, 2, 2), torch.zeros(6, 2, 1), torch.zeros(2, 4), **kwargs)


def test_draws_that_do_not_match_the_observations_are_refused():
    problem, x_true, y, exact, gen = _case(0)
    draws = exact.sample(5, gen)
    with pytest.raises(ShapeError, match=r"expected \(3, \*y_shape\)"):
        inference_data_from_draws(draws, y[:2], problem=problem)
    with pytest.raises(ShapeError, match="x_true has shape"):
        inference_data_from_draws(draws, y, problem=problem, x_true=x_true[:2])
    with pytest.raises(ShapeError, match="y_rep has shape"):
        inference_data_from_draws(draws, y, problem=problem, y_rep=torch.zeros(5, 3, 2))


# --------------------------------------------------------------------------- other noise models
def test_correlated_noise_stores_its_sd_covariance_and_loo_conditional_likelihood(seed):
    problem = _problem()
    i = torch.arange(Y_DIM, dtype=torch.float64)
    cov = NOISE**2 * 0.6 ** (i[:, None] - i[None, :]).abs()  # AR(1) correlation 0.6
    cov[0, 0] *= 4  # one datum twice as uncertain
    problem.noise_cov = cov
    gen = torch.Generator().manual_seed(seed)
    _, y = problem.simulate(2, gen)
    draws = torch.randn(50, 2, X_DIM, generator=gen)
    idata = inference_data_from_draws(draws, y, problem=problem, generator=gen)
    # the pointwise terms are the leave-one-out conditionals (tests/test_arviz_loo_correlated.py
    # checks their values), marked as such: they do not sum to the joint in lp
    assert "log_likelihood_omitted" not in idata.posterior.attrs
    ll = idata.log_likelihood["y"]
    assert ll.attrs["pointwise"] == "loo_conditional" and ll.attrs["sums_to_joint"] == 0
    const = idata.constant_data
    assert const["y_noise_sd"].attrs["correlated"] == 1
    np.testing.assert_allclose(const["y_noise_sd"].values, np.sqrt(np.diag(cov.numpy())), rtol=1e-6)
    np.testing.assert_allclose(const["y_noise_cov"].values, cov.numpy())
    x32 = torch.as_tensor(idata.posterior["x"].values[0])
    direct = problem.log_likelihood_pointwise(x32, y).numpy()  # float32 storage
    np.testing.assert_allclose(ll.values[0], direct, rtol=1e-6, atol=1e-5)
    # lp uses the joint likelihood: N(x; 0, I) times N(y; A x, C_e)
    x = idata.posterior["x"].values[0].astype(np.float64)
    mean = x @ problem.matrix.double().numpy().T  # (S, M, m)
    expected = stats.norm.logpdf(x).sum(-1) + np.array(
        [
            [
                stats.multivariate_normal.logpdf(y[k].double().numpy(), mean[s, k], cov.numpy())
                for k in range(2)
            ]
            for s in range(50)
        ]
    )
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], expected, rtol=1e-6)


def test_noise_free_and_problem_free_files_say_why_there_is_no_likelihood():
    problem = TwoBirds("data_1")
    x, y = problem.simulate(2, torch.Generator().manual_seed(0))
    draws = x.expand(4, *x.shape)  # the true models: zero misfit
    idata = inference_data_from_draws(draws, y, problem=problem)
    assert "log_likelihood" not in idata.groups() and "lp" not in idata.sample_stats
    assert "noise-free" in idata.posterior.attrs["log_likelihood_omitted"]
    assert "constant_data" not in idata.groups()
    chi2 = idata.sample_stats["chi2_per_datum"]
    assert chi2.attrs["whitened_by"].startswith("misfit_std")
    np.testing.assert_allclose(chi2.values, 0.0, atol=1e-10)

    bare = inference_data_from_draws(torch.zeros(4, 2, 3), torch.zeros(2, 5))
    assert sorted(bare.groups()) == ["observed_data", "posterior"]
    assert "no problem" in bare.posterior.attrs["log_likelihood_omitted"]


# --------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_posterior(tmp_path_factory):
    """``ppl-cvae sample`` of one observation (``.npy``) with a tiny linear-Gaussian run."""
    from ppl_cvae.cli import main
    from tests.conftest import TINY_FIT

    root = tmp_path_factory.mktemp("arviz_cli")
    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(root / "run"), *TINY_FIT]) == 0
    assert main(["simulate", *lg, "--num", "1", "--seed", "5", "--out", str(root / "obs.npz")]) == 0
    np.save(root / "one.npy", np.load(root / "obs.npz")["y"][0])
    assert (
        main(
            [
                "sample",
                str(root / "run"),
                "--observation",
                str(root / "one.npy"),
                "--num-samples",
                "300",
                "--seed",
                "7",
                "--out",
                str(root / "post.nc"),
            ]
        )
        == 0
    )
    return root


def test_cli_sample_writes_every_group(cli_posterior):
    root = cli_posterior
    idata = load_inference_data(root / "post.nc")
    assert sorted(idata.groups()) == ALL_GROUPS
    assert idata.posterior["x"].sizes["observation"] == 1
    post = idata.posterior.attrs
    assert post["method"] == "amortized" and post["seed"] == 7 and post["num_samples"] == 300
    assert post["run_dir"] == str(root / "run") and post["run_name"] == "run"
    assert post["inference_library_version"] == __version__
    assert json.loads(post["model_config"])["latent_dim"] == 2
    assert json.loads(post["problem"])["name"] == "linear_gaussian"
    # the stored log-likelihood is that of the stored draws and observation
    problem = LinearGaussian()
    x = torch.as_tensor(idata.posterior["x"].values[0])
    y = torch.as_tensor(idata.observed_data["y"].values)
    expected = problem.log_likelihood_pointwise(x, y).numpy()
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expected, rtol=1e-6, atol=1e-6)
    loo = _loo_quietly(idata)  # a one-epoch fit is a poor posterior: k-hat may be large
    assert loo.n_data_points == 2 and math.isfinite(loo.elpd_loo)


def test_misfit_warning_is_silent_for_exact_draws_and_names_shifted_ones():
    """``misfit_warning``: exact posterior draws of a linear-Gaussian problem (50 data) fit
    their data at 1 per datum on average (truth and draw are exchangeable given y), so none of
    20 observations is named; the same draws moved by 6 posterior sds in each parameter (about
    108 / 50 = 2.2 per datum more, 4 sds being 0.8) misfit every observation, and the warning
    names them (the check ``ppl-cvae sample`` runs)."""
    from inference.diagnostics.ppc import misfit_warning
    from inference.exact import exact_posterior
    from inference.sample import inference_data_from_draws
    from ppl_cvae.problems import LinearGaussian

    problem = LinearGaussian(x_dim=3, y_dim=50, noise_std=0.5)
    gen = torch.Generator().manual_seed(0)
    _, y = problem.simulate(20, gen)
    post = exact_posterior(problem, y)
    x = post.sample(400, gen).float()  # (400, 20, 3)
    exact = inference_data_from_draws(
        x, y, problem=problem, generator=torch.Generator().manual_seed(1)
    )
    assert misfit_warning(exact) is None
    shifted = inference_data_from_draws(x + 6 * post.std.float(), y, problem=problem)
    message = misfit_warning(shifted)
    assert message is not None and message.startswith("the draws misfit the data of 20 of 20")


def test_misfit_warning_judges_the_draws_own_misfit_and_flags_overfitting_with_few_data():
    """4 data: the predictive estimate's plausible range reached below 0 ([-0.26, 6.65] in the
    ArviZ audit), so draws that fit the data exactly were never named. The draws' own misfit
    (``sample_stats.chi2_per_datum``, as ``evaluate`` judges it) has a positive lower end:
    exact draws pass, draws that solve ``A x = y`` (misfit 0: they fit the noise) are named."""
    from inference.diagnostics.ppc import misfit_warning, plausible_chi2_range
    from inference.exact import exact_posterior
    from inference.sample import inference_data_from_draws

    problem = LinearGaussian(x_dim=4, y_dim=4, noise_std=0.5)
    gen = torch.Generator().manual_seed(0)
    _, y = problem.simulate(5, gen)
    assert plausible_chi2_range(4)[0] > 0
    exact = exact_posterior(problem, y).sample(200, gen).float()  # (200, 5, 4)
    assert misfit_warning(inference_data_from_draws(exact, y, problem=problem)) is None
    solved = torch.linalg.solve(problem.matrix.double(), y.double().T).T.float()  # F(x) = y
    tight = inference_data_from_draws(solved.expand(200, 5, 4), y, problem=problem)
    message = misfit_warning(tight)
    assert message is not None and message.startswith("the draws misfit the data of 5 of 5")
    assert "(the draws' own misfit): the draws fit the noise" in message


def test_refined_files_have_no_log_likelihood_and_latent_free_files_no_empty_z():
    """Refined draws are optimised, not sampled: their file has no log_likelihood group (PSIS-LOO
    of them would win every az.compare), with the reason in ``log_likelihood_omitted``; nor
    have decoder means of a model with decoder noise (before: kept, ranked ~4 dse above exact
    NUTS by az.compare in the ArviZ audit); the
    amortized file of the same model keeps it. A flow on x without a latent writes no ``z``
    (an empty ``latent`` dim broke ``az.extract``, ``az.plot_trace`` and ``az.plot_forest``).
    """
    from inference.refine import RefineConfig
    from inference.sample import DECODER_MEANS_NOT_SAMPLES, REFINED_NOT_SAMPLES, sample_posterior
    from ppl_cvae import ModelConfig, build_cvae

    problem = LinearGaussian(x_dim=X_DIM, y_dim=Y_DIM, noise_std=NOISE)
    x, y = problem.simulate(256, torch.Generator().manual_seed(0))
    for latent_dim, likelihood in ((2, "gaussian"), (0, "flow")):
        config = ModelConfig(x_shape=(X_DIM,), y_shape=(Y_DIM,), hidden_dims=(8,),
                             latent_dim=latent_dim, likelihood=likelihood)
        cvae = build_cvae(config, x, y, problem=problem)
        plain = sample_posterior(cvae, y[:2], 20, problem=problem, seed=0)
        assert "log_likelihood" in plain.groups()
        assert ("z" in plain.posterior) == (latent_dim > 0)
        extracted = az.extract(plain)
        assert extracted["x"].sizes["sample"] == 20
        refined = sample_posterior(cvae, y[:2], 20, problem=problem, seed=0,
                                   refine=RefineConfig(num_steps=5, max_misfit=None))
        assert "log_likelihood" not in refined.groups()
        assert refined.posterior.attrs["log_likelihood_omitted"] == REFINED_NOT_SAMPLES
        if likelihood == "gaussian":  # decoder means are not draws of this model either
            means = sample_posterior(cvae, y[:2], 20, problem=problem, seed=0,
                                     decoder_noise=False)
            assert "log_likelihood" not in means.groups()
            assert means.posterior.attrs["log_likelihood_omitted"] == DECODER_MEANS_NOT_SAMPLES
            assert means.posterior.attrs["inference_method"].endswith(
                "x = decoder mean E[x|z,y]")
