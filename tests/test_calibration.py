"""Tier 3: SBC, TARP and the coverage verdict on exact linear-Gaussian posteriors.

The exact posterior of ``LinearGaussian(x_dim=3, y_dim=2)`` (closed form, ``inference/exact.py``)
gives independent exact draws for held-out truths drawn from the prior: it must pass; three
negative controls built from it must be flagged: over-dispersed (deviations from the posterior
mean scaled by 1.5), under-dispersed (scaled by 0.5) and biased (shifted by +0.5 posterior sd).

False-alarm budget. Every verdict here runs at ``FALSE_ALARM = 1e-3`` (SBC family-wise over its
components, misfit and pooled sets by Bonferroni; TARP; coverage, Bonferroni over its two
levels), so the exact posterior fails one of its three verdicts with probability at most
3e-3 for any seed (``PPL_CVAE_TEST_SEED``); the numerical asserts allow 4 standard errors
(two-sided 6e-5 each). Power, measured over 300 seeds with these sizes (400 truths x 100
draws): SBC flags all three controls in every seed (the smallest component p-values are below
1e-7, the threshold is 2e-4), TARP and coverage flag the over- and under-dispersed ones
(TARP's p-value, as a two-sided normal score, averages 7.8 and 14.5 against a threshold of
3.3, with a spread of 0.7 and 1.3: a miss probability below 1e-10). Central coverage and TARP
are not asked to see the shift: symmetric intervals react to it only at second order (flagged
in about two thirds of the seeds), and TARP with references independent of ``y`` flagged it in
about one seed in four.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from inference.diagnostics.calibration import (
    check_sbc,
    check_tarp,
    misfit_statistic,
    run_calibration,
    run_sbc,
    run_tarp,
    sbc_ranks,
    tarp_values,
    uniformity_tests,
)
from inference.diagnostics.coverage import (
    check_coverage,
    coverage_verdict,
    expected_coverage,
    run_evaluation,
)
from inference.evaluate import evaluate_draws, write_evaluation
from inference.exact import exact_posterior
from ppl_cvae.cli import main
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems import LinearGaussian
from tests.conftest import SEED, make_cli_workspace

FALSE_ALARM = 1e-3
NUM_OBS = 400
NUM_DRAWS = 100
X_DIM = 3


@pytest.fixture(scope="module")
def case():
    """Truths from the prior, their data, the exact posterior and 100 exact draws of each."""
    problem = LinearGaussian(x_dim=X_DIM, y_dim=2, noise_std=0.5)
    gen = torch.Generator().manual_seed(1000 + SEED)
    x, y = problem.simulate(NUM_OBS, gen)
    post = exact_posterior(problem, y)
    draws = post.sample(NUM_DRAWS, gen)
    controls = {
        "exact": draws,
        "over-dispersed": post.mean + 1.5 * (draws - post.mean),
        "under-dispersed": post.mean + 0.5 * (draws - post.mean),
        "biased high": draws + 0.5 * post.std,
    }
    return problem, x, y, post, controls


def _calibration(case, name):
    problem, x, y, _, controls = case
    out = run_calibration(
        controls[name], x, y_obs=y, problem=problem, seed=SEED, false_alarm=FALSE_ALARM
    )
    metrics = run_evaluation(controls[name], x, x_reference=torch.zeros(X_DIM))
    return out, metrics


def test_exact_posterior_passes_sbc_tarp_and_coverage(case):
    out, metrics = _calibration(case, "exact")
    sbc, tarp = out["sbc"], out["tarp"]
    assert out["notes"] == []
    assert sbc["failures"] == [] and tarp["failures"] == []
    assert check_coverage(metrics, false_alarm=FALSE_ALARM) == []
    # uniform normalised ranks: mean 1/2 with SE sqrt(1/(12 M)), mean (u - 1/2)^2 1/12 with SE
    # sqrt(1/(180 M)); 4 SE each
    mean_se, var_se = math.sqrt(1 / (12 * NUM_OBS)), math.sqrt(1 / (180 * NUM_OBS))
    assert sbc["mean_standard_error"] == pytest.approx(mean_se)
    for name in ("rank_mean", "rank_variance"):
        target, se = (0.5, mean_se) if name == "rank_mean" else (1 / 12, var_se)
        values = [*sbc["components"][name], sbc["statistics"]["misfit"][name]]
        assert all(abs(v - target) < 4 * se for v in values), (name, values)
    # TARP: ECP(alpha) of M uniform credibilities is binomial, SE <= sqrt(0.25 / M) = 0.025
    ecp = np.array(tarp["ecp"])
    assert np.abs(ecp - np.array(tarp["alpha"])).max() < 4 * 0.025
    assert abs(tarp["atc"]) < 4 * math.sqrt(5 / 192 / NUM_OBS)
    # coverage of central intervals from S draws: alpha (S - 1) / (S + 1), pooled over
    # observations; the clustered SE is at most the fully correlated sqrt(e (1 - e) / M)
    verdict = coverage_verdict(metrics, FALSE_ALARM)
    for key, level in (("coverage_50", 0.5), ("coverage_90", 0.9)):
        e = expected_coverage(level, NUM_DRAWS)
        assert verdict["levels"][key]["expected"] == pytest.approx(e)
        se = verdict["levels"][key]["standard_error"]
        assert se <= math.sqrt(e * (1 - e) / NUM_OBS) + 1e-12
        assert abs(metrics[key] - e) < 4 * math.sqrt(e * (1 - e) / NUM_OBS)


@pytest.mark.parametrize("name", ["over-dispersed", "under-dispersed", "biased high"])
def test_negative_controls_are_flagged_with_their_direction(case, name):
    out, metrics = _calibration(case, name)
    sbc, tarp = out["sbc"], out["tarp"]
    component_messages = [m for m in sbc["failures"] if m.startswith("x[")]
    # every component is off by the same factor or shift: each one is flagged, with its shape
    assert len(component_messages) == X_DIM, sbc["failures"]
    assert all(name in m for m in component_messages), component_messages
    pooled = [m for m in sbc["failures"] if m.startswith("all components")]
    assert pooled and name in pooled[0]
    coverage = check_coverage(metrics, false_alarm=FALSE_ALARM)
    if name == "biased high":
        # the rank mean sits below 1/2: the truth lies below most draws
        assert max(sbc["components"]["mean_z"]) < 0
        return
    # wider draws misfit the data more than the truth does; narrower ones less
    misfit = sbc["statistics"]["misfit"]
    assert any(m.startswith("statistic 'misfit'") for m in sbc["failures"])
    assert (misfit["mean_z"] < 0) == (name == "over-dispersed")
    assert tarp["failures"], tarp
    assert (tarp["atc"] > 0) == (name == "over-dispersed")
    word = "too wide" if name == "over-dispersed" else "too narrow"
    assert coverage and all(word in m for m in coverage), coverage


def test_tarp_on_a_field_passes_when_calibrated_and_sees_a_10_percent_spread_error():
    """A 32 x 32 field (d = 1024): TARP's distances concentrate, so it sees small width errors.

    Each truth is ``mu_i + e``, its draws ``mu_i + e_s`` (``e`` standard normal per cell): an
    exact posterior whose mean ``mu_i ~ N(0, 0.5^2)`` varies between observations. The
    standardisation comes from the pooled draws; with the truths' own mean and sd (the paper's
    code, sbi) calibrated fields like this one fail in some seeds (module docstring of
    ``inference.diagnostics.calibration``).
    """
    gen = torch.Generator().manual_seed(6000 + SEED)
    num_obs, num_draws = 100, 100
    mu = 0.5 * torch.randn(num_obs, 32, 32, generator=gen)
    truth = mu + torch.randn(num_obs, 32, 32, generator=gen)
    draws = mu + torch.randn(num_draws, num_obs, 32, 32, generator=gen)
    out = run_calibration(draws, truth, seed=SEED, false_alarm=FALSE_ALARM)
    assert out["sbc"]["failures"] == [] and out["tarp"]["failures"] == []
    assert out["sbc"]["num_components"] == 1024
    # 10% too narrow / too wide: ATC z-scores near -20 and +8 over five seeds tried
    narrow = run_tarp(mu + 0.9 * (draws - mu), truth, seed=SEED)
    wide = run_tarp(mu + 1.1 * (draws - mu), truth, seed=SEED)
    assert check_tarp(narrow, FALSE_ALARM) and narrow["atc"] < 0
    assert check_tarp(wide, FALSE_ALARM) and wide["atc"] > 0


def test_random_tie_breaks_keep_the_ranks_of_discrete_models_uniform():
    """Facies-like 0/1 models tie often; the ranks stay uniform only with random tie breaks."""
    gen = torch.Generator().manual_seed(2000 + SEED)
    num_obs, num_draws = 2000, 20
    truth = torch.bernoulli(torch.full((num_obs, 1), 0.3), generator=gen)
    draws = torch.bernoulli(torch.full((num_draws, num_obs, 1), 0.3), generator=gen)
    ranks = sbc_ranks(draws, truth, seed=SEED)
    assert ranks.ranks.min() >= 0 and ranks.ranks.max() <= num_draws
    u = ranks.normalised[:, 0]
    mean_tol = 4 * math.sqrt(1 / (12 * num_obs))  # 4 SE of the mean of U(0, 1)
    var_tol = 4 * math.sqrt(1 / (180 * num_obs))  # 4 SE of mean (u - 1/2)^2
    assert abs(u.mean() - 0.5) < mean_tol
    assert abs(((u - 0.5) ** 2).mean() - 1 / 12) < var_tol
    assert uniformity_tests(u)["p_value"][0] > FALSE_ALARM
    # counting strictly lower draws only (no tie break) is far from uniform: E u ~ 0.22
    below = (draws < truth).sum(0)[:, 0].numpy()
    naive = (below + np.random.default_rng(0).random(num_obs)) / (num_draws + 1)
    assert abs(naive.mean() - 0.5) > 10 * mean_tol


@pytest.mark.parametrize("x_shape", [(1,), (2, 3)])
@pytest.mark.parametrize("num_obs", [1, 5])
def test_rank_and_tarp_contracts(x_shape, num_obs):
    gen = torch.Generator().manual_seed(3)
    truth = torch.randn(num_obs, *x_shape, generator=gen)
    draws = torch.randn(7, num_obs, *x_shape, generator=gen)
    ranks = sbc_ranks(draws, truth, statistics={"sum": lambda x: x.flatten(2).sum(-1)})
    d = math.prod(x_shape)
    assert ranks.ranks.shape == ranks.normalised.shape == (num_obs, d)
    assert ranks.statistic_normalised["sum"].shape == (num_obs,)
    # the rank counts the draws below the truth (no ties with continuous draws)
    below = (draws < truth).reshape(7, num_obs, d).sum(0).numpy()
    assert np.array_equal(ranks.ranks, below)
    assert np.all((ranks.normalised > ranks.ranks / 8) & (ranks.normalised < (ranks.ranks + 1) / 8))
    # the same seed gives the same ranks; TARP values in (0, 1), one per observation
    again = sbc_ranks(draws, truth, statistics={"sum": lambda x: x.flatten(2).sum(-1)})
    assert np.array_equal(again.normalised, ranks.normalised)
    u = tarp_values(draws, truth, seed=1)
    assert u.shape == (num_obs,) and np.all((u > 0) & (u < 1))


def test_rank_errors_name_the_bad_input():
    truth, draws = torch.zeros(4, 2), torch.randn(5, 4, 2)
    with pytest.raises(ShapeError, match=r"x_draws \(5, 3, 2\) must be"):
        sbc_ranks(torch.randn(5, 3, 2), truth)
    bad = draws.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(DataError, match="x_draws holds NaN"):
        run_tarp(bad, truth)
    with pytest.raises(ShapeError, match="statistic 'flat' must map"):
        sbc_ranks(draws, truth, statistics={"flat": lambda x: x.sum(-1).flatten()})
    with pytest.raises(ConfigError, match="seed must be"):
        sbc_ranks(draws, truth, seed=-1)
    with pytest.raises(ConfigError, match="false_alarm must be in"):
        check_tarp({"p_value": 0.5}, false_alarm=1.0)
    with pytest.raises(ShapeError, match="loc must have shape"):
        tarp_values(draws, truth, loc=torch.zeros(3))
    with pytest.raises(ShapeError, match="y_obs must have shape"):
        misfit_statistic(LinearGaussian(x_dim=2, y_dim=2), torch.zeros(4, 3))
    # a pipeline run reports non-finite draws instead of raising
    report = run_calibration(bad, truth)
    assert "sbc" not in report and "NaN" in report["notes"][0]


def test_few_observations_warn():
    truth, draws = torch.zeros(10, 2), torch.randn(5, 10, 2)
    with pytest.warns(UserWarning, match="10 held-out observations is weak"):
        run_sbc(draws, truth)
    with pytest.warns(UserWarning, match="TARP with 10"):
        run_tarp(draws, truth)


def test_a_verdict_that_cannot_fail_is_not_judged():
    """With one pair, every truth outside all its draws (the worst case) still passes SBC.

    The component test's smallest p-value with one rank at 0.5 / (S + 1) is 3 x the KS
    p-value 2 x 0.5 / (S + 1) = 0.06 for S = 49, above any threshold: the verdict is void and
    must say so; with 2 pairs the KS p-value is about (1 / (S + 1))^2 and the verdict stands.
    """
    gen = torch.Generator().manual_seed(SEED)
    for num_obs, judged in ((1, False), (2, True)):
        truth = torch.full((num_obs, 3), 100.0)  # far outside every draw: the worst posterior
        report = run_calibration(torch.randn(49, num_obs, 3, generator=gen), truth)
        assert report["sbc"]["judged"] is judged
        assert bool(report["sbc"]["failures"]) is judged  # a judged worst case fails
        assert any("SBC not judged" in n for n in report["notes"]) is not judged
    one = {"coverage_50": 0.0, "coverage_90": 0.0, "num_observations": 1, "num_samples": 3}
    # 3 draws: the expected coverages are 0.25 and 0.45, tolerances 1.22 and 1.40
    assert coverage_verdict(one)["judged"] is False and not coverage_verdict(one)["failures"]
    one["num_samples"] = 1000
    assert coverage_verdict(one)["judged"] is True and coverage_verdict(one)["failures"]


def test_expected_coverage_of_intervals_from_few_draws():
    """The central interval of S exact draws covers alpha (S - 1) / (S + 1), not alpha."""
    gen = torch.Generator().manual_seed(4000 + SEED)
    num_obs, num_draws = 20000, 20
    truth = torch.randn(num_obs, 1, generator=gen)
    draws = torch.randn(num_draws, num_obs, 1, generator=gen)
    metrics = run_evaluation(draws, truth, x_reference=torch.zeros(1))
    for key, level in (("coverage_50", 0.5), ("coverage_90", 0.9)):
        e = expected_coverage(level, num_draws)
        # binomial SE of 20000 independent truths, 4 SE, plus the O(1/S^2) = 0.0025 remainder
        assert abs(metrics[key] - e) < 4 * math.sqrt(e * (1 - e) / num_obs) + 1 / num_draws**2
    # with 20 draws the nominal 0.9 is 0.082 away: a fixed tolerance against alpha misjudges
    assert abs(metrics["coverage_90"] - 0.9) > 0.06


def test_coverage_tolerance_follows_the_number_of_observations():
    z = stats.norm.isf(0.01 / 4)  # two-sided, Bonferroni over the two levels
    for num_obs in (100, 400):
        m = {"coverage_50": 0.5, "coverage_90": 0.9, "num_observations": num_obs,
             "num_samples": 200}
        verdict = coverage_verdict(m, 0.01)
        e = 0.9 * 199 / 201
        # without a clustered SE: fully correlated elements, sqrt(e (1 - e) / M)
        assert verdict["levels"]["coverage_90"]["tolerance"] == pytest.approx(
            z * math.sqrt(e * (1 - e) / num_obs)
        )
    assert check_coverage(m, tolerance=0.05) == []  # the fixed tolerance still works


def test_verdicts_keep_their_false_alarm_rate():
    """Over 300 calibrated experiments each verdict at false_alarm 0.2 fails at most ~20%."""
    problem = LinearGaussian(x_dim=X_DIM, y_dim=2, noise_std=0.5)
    gen = torch.Generator().manual_seed(5000 + SEED)
    num_runs, level = 300, 0.2
    failed = {"sbc": 0, "tarp": 0, "coverage": 0}
    for run in range(num_runs):
        x, y = problem.simulate(100, gen)
        draws = exact_posterior(problem, y).sample(50, gen)
        out = run_calibration(draws, x, y_obs=y, problem=problem, seed=run, false_alarm=level)
        metrics = run_evaluation(draws, x, x_reference=torch.zeros(X_DIM))
        failed["sbc"] += bool(check_sbc(out["sbc"], level))
        failed["tarp"] += bool(check_tarp(out["tarp"], level))
        failed["coverage"] += bool(check_coverage(metrics, false_alarm=level))
    # binomial SE of a 0.2 rate over 300 runs: 0.023; 4 SE above the nominal rate
    limit = level + 4 * math.sqrt(level * (1 - level) / num_runs)
    assert all(n / num_runs < limit for n in failed.values()), failed


def test_evaluate_draws_writes_the_calibration_and_its_plots(case, tmp_path):
    problem, x, y, post, controls = case
    metrics = evaluate_draws(
        controls["exact"], x, y, x_reference=torch.zeros(X_DIM), problem=problem, exact=post,
        seed=SEED, false_alarm=FALSE_ALARM,
    )
    calibration = metrics["calibration"]
    assert calibration["passed"] and calibration["false_alarm"] == FALSE_ALARM
    assert set(calibration) >= {"coverage", "sbc", "tarp", "notes"}
    written = write_evaluation(
        tmp_path, metrics, x, controls["exact"], exact=post, problem=problem, seed=SEED, y_obs=y
    )
    names = {p.name for p in written}
    assert names == {"metrics.json", "coverage.png", "truth_vs_mean.png", "sbc_ecdf.png",
                     "tarp.png"}
    assert all(p.stat().st_size > 0 for p in written)
    back = json.loads((tmp_path / "metrics.json").read_text())
    assert back["calibration"]["sbc"]["statistics"]["misfit"]["p_value"] > FALSE_ALARM
    assert len(back["calibration"]["sbc"]["components"]["p_value"]) == X_DIM
    # the same draws through the negative control: the pipeline's verdict turns
    bad = evaluate_draws(
        controls["under-dispersed"], x, y, x_reference=torch.zeros(X_DIM), problem=problem,
        seed=SEED, false_alarm=FALSE_ALARM,
    )
    assert not bad["calibration"]["passed"]


def test_evaluate_command_reports_calibration(tmp_path, capsys):
    ws = make_cli_workspace(tmp_path)
    out = tmp_path / "ev"
    assert main(["evaluate", str(ws / "run"), "--data", str(ws / "pairs.npz"), "--problem",
                 "linear_gaussian", "--num-samples", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibration (false alarm 0.01)" in printed and "note: 40 held-out" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["sbc"]["num_observations"] == 40
    assert "misfit" in calibration["sbc"]["statistics"]
    assert len(calibration["tarp"]["ecp"]) == len(calibration["tarp"]["alpha"])
    assert (out / "sbc_ecdf.png").is_file() and (out / "tarp.png").is_file()
    # one epoch of a width-8 network on 128 pairs is nowhere near the posterior: its ranks
    # fail (p-values near 1e-20 on the seeds tried) while the old keys stay
    assert calibration["sbc"]["failures"] and not calibration["passed"]
    assert {"coverage_50", "coverage_90", "chi2_per_datum", "exact"} <= set(metrics)


def test_ranks_piled_at_one_end_are_named_a_shift_not_a_u_shape(case):
    """Truths below all their draws are a bias (or a too-large misfit), not a narrow posterior.

    Seen on a nonlinear field problem: every held-out truth's misfit ranked below its draws'
    (rank mean 0.003) and the verdict said "U-shaped ranks: the draws' misfit is too
    concentrated", the opposite of the failure (the draws misfit the data 9 times more than
    the truth). ``mean (u - 1/2)^2`` of ranks piled at 0 is 1/4, 39 standard errors above 1/12
    at M = 400 against 35 for the rank mean's shift, so naming the larger z-score named a U.
    Here the draws sit 4 posterior sds above the truth (every rank is 0 or 1 of 100 in all but
    about 3e-5 of the cases: P(N(0,1) > 4)), and, through the misfit, 3 times too wide
    (the truth's misfit lies below nearly every draw's). The control: draws 4 times too
    narrow (ranks at both ends, mean near 1/2) are still called U-shaped.
    """
    problem, x, y, post, controls = case
    shifted = controls["exact"] + 4.0 * post.std
    out = run_calibration(shifted, x, y_obs=y, problem=problem, seed=SEED, false_alarm=FALSE_ALARM)
    components = [m for m in out["sbc"]["failures"] if m.startswith("x[")]
    assert len(components) == X_DIM, out["sbc"]["failures"]
    assert all("biased high" in m and "U-shaped" not in m for m in components), components
    pooled = [m for m in out["sbc"]["failures"] if m.startswith("all components")]
    assert pooled and "biased high" in pooled[0], pooled
    wide = post.mean + 3.0 * (controls["exact"] - post.mean)
    out = run_calibration(wide, x, y_obs=y, problem=problem, seed=SEED, false_alarm=FALSE_ALARM)
    misfit = [m for m in out["sbc"]["failures"] if m.startswith("statistic 'misfit'")]
    assert misfit and "draws' misfit too large" in misfit[0], out["sbc"]["failures"]
    narrow = post.mean + 0.25 * (controls["exact"] - post.mean)
    out = run_calibration(narrow, x, y_obs=y, problem=problem, seed=SEED, false_alarm=FALSE_ALARM)
    components = [m for m in out["sbc"]["failures"] if m.startswith("x[")]
    assert components and all("U-shaped" in m for m in components), components


def test_non_finite_draws_fail_and_name_their_count(case):
    """One NaN among 120,000 exact draw values fails the calibration and says where.

    Before, the NaN switched SBC and TARP off and the coverage verdict alone decided:
    ``passed`` was True for exact draws with a NaN, and for prior draws (which SBC on the
    misfit rejects at p ~ 1e-160) as well."""
    problem, x, y, post, controls = case
    draws = controls["exact"].clone()
    draws[3, 7, 1] = float("nan")
    out = evaluate_draws(draws, x, y, x_reference=torch.zeros(X_DIM), problem=problem,
                         false_alarm=FALSE_ALARM)["calibration"]
    assert out["passed"] is False
    assert out["finite"]["failures"] == [
        f"1 of {draws.numel()} draw values are NaN or infinite, in 1 of {NUM_OBS} observations "
        "(first: [7]): the sampler failed there"
    ]
    assert out["coverage"]["judged"] is False and out["coverage"]["failures"] == []
    assert "sbc" not in out and "tarp" not in out
    clean = evaluate_draws(controls["exact"], x, y, x_reference=torch.zeros(X_DIM),
                           problem=problem, false_alarm=FALSE_ALARM)["calibration"]
    assert clean["passed"] is True and "finite" not in clean  # the control passes


def test_one_draw_per_truth_is_refused_by_evaluate_draws(case):
    """One draw gives an interval of no width (expected coverage 0): refused, not judged
    against the nominal level (before: coverage 0.000, "posterior too narrow")."""
    problem, x, y, _, controls = case
    with pytest.raises(ShapeError, match="at least 2 draws of each truth"):
        evaluate_draws(controls["exact"][:1], x, y, x_reference=torch.zeros(X_DIM))


def test_a_component_fixed_by_the_prior_counts_as_calibrated(case):
    """A component whose draws and truth are all equal (fixed by the prior, or noise-free
    data) covers with the probability a calibrated posterior gives it, ``alpha (S - 1) /
    (S + 1)``; before, it counted as covered and the exact posterior was "too wide"
    (coverage_50 0.66 against 0.49 for two free components and a fixed one)."""
    _, x, _, _, controls = case
    fixed_x = torch.cat([x, torch.full((NUM_OBS, 1), 2.5)], dim=1)
    fixed_draws = torch.cat([controls["exact"], torch.full((NUM_DRAWS, NUM_OBS, 1), 2.5)], 2)
    metrics = run_evaluation(fixed_draws, fixed_x, x_reference=torch.zeros(X_DIM + 1))
    free = run_evaluation(controls["exact"], x, x_reference=torch.zeros(X_DIM))
    for key, level in (("coverage_50", 0.5), ("coverage_90", 0.9)):
        e = expected_coverage(level, NUM_DRAWS)
        # the fixed component adds exactly e to each observation's mean over 4 components
        assert metrics[key] == pytest.approx((3 * free[key] + e) / 4, abs=1e-12)
    assert coverage_verdict(metrics, FALSE_ALARM)["failures"] == []


def test_a_tarp_verdict_that_failed_is_judged():
    """With one held-out pair TARP is not judged (the worst posterior fails it less than half
    the time), but when the tie-break makes it fail, the result says judged and the notes do
    not claim it could not fail."""
    gen = torch.Generator().manual_seed(SEED)
    failed = 0
    for seed in range(40):
        report = run_calibration(torch.randn(100, 1, 3, generator=gen),
                                 torch.full((1, 3), 100.0), seed=seed)
        tarp = report["tarp"]
        assert tarp["judged"] is bool(tarp["failures"])
        assert any("TARP not judged" in n for n in report["notes"]) is not tarp["judged"]
        failed += bool(tarp["failures"])
    # p = 2 (1 - u), u uniform on (100/101, 1): below 0.01 for about half of the tie-breaks
    assert 5 <= failed <= 35, failed  # binomial(40, 0.505): 4.4 sds either side
