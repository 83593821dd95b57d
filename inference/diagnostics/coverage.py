"""Held-out evaluation of an amortized posterior: coverage, RMSE, chi-squared, exact reference.

``run_evaluation`` computes the numbers of ``ppl-cvae evaluate`` from posterior draws for a set of
held-out ``(x, y)`` pairs; ``check_coverage`` turns the coverage into a verdict. Drawing from a
trained model and writing ``metrics.json`` and the plots is the pipeline of
:mod:`inference.evaluate`. Every metric is a plain float, so the dictionary is JSON-ready.

Keys of the metrics dictionary
------------------------------
``num_observations``, ``num_samples``
    Held-out pairs and posterior draws per pair.
``coverage_50``, ``coverage_90``
    Fraction of all elements of all true ``x`` inside the central 50% / 90% marginal posterior
    interval (quantiles ``(1 -+ alpha) / 2`` of the draws). Nominal: 0.5 / 0.9.
``coverage_curve``
    ``{"nominal": [...], "empirical": [...]}`` at credibility levels 0.05, 0.1, ..., 0.95, 0.99.
``coverage_standard_error``
    ``{"coverage_50": se, "coverage_90": se}``: standard error of each pooled coverage from the
    number of held-out observations ``M`` (see "Coverage verdict" below).
``rmse_posterior_mean``, ``rmse_prior_mean``, ``rmse_ratio``
    RMSE (units of ``x``) of the posterior mean against the truth, of the training mean (the
    prior's best constant guess) against the truth, and their ratio (< 1: the data informed x).
``mean_posterior_std``
    Average marginal posterior standard deviation (units of ``x``).
``posterior_contraction``
    Median over the elements of ``x`` of ``1 - E[Var(x | y)] / Var(x)``: the draws' variance
    averaged over the observations against the variance of the held-out truths (drawn from the
    prior). 0 for draws as wide as the prior (draws that ignore ``y``, which coverage, SBC and
    TARP pass), 1 for a point; a calibrated posterior's equals the fraction of the prior
    variance the data remove, up to sampling noise (Schad, Betancourt and Vasishth 2021,
    Toward a principled Bayesian workflow in cognitive science, Psychological Methods 26,
    103-126, DOI 10.1037/met0000275). NaN with fewer than 2 held-out pairs, with non-finite
    draws, or where every truth has the same value.
``chi2_per_datum``, ``chi2_per_datum_of_mean``
    With a forward operator: median over observations of the posterior predictive misfit
    ``|L^{-1} (F(x) - y)|^2 / m`` (``C_e = L L^T``) averaged over draws, and of the posterior mean
    model. For a calibrated posterior and correct noise model each observation's value has
    expectation exactly 1 (a draw and the truth are exchangeable given ``y``, and the truth's
    misfit is the noise's, ``chi2_m / m``); the median over observations sits below 1 by the
    skew of that distribution (measured on exact draws: 0.97 for ``m = 40``, 0.80 for ``m = 4``,
    0.75 for ``m = 2``, whose means were 0.99, 0.93 and 1.02).
``chi2_per_datum_mean``, ``misfit_outside``
    With a forward operator: the mean over observations of the same misfit (a few
    observations whose draws miss their data raise it where the median stays), and
    ``{"count", "observations", "range", "num_sd", "largest"}``: how many observations (and
    the first :data:`MISFIT_LISTED` indices) lie outside
    :func:`~inference.diagnostics.ppc.plausible_chi2_range` of ``m`` data at ``num_sd`` =
    :data:`MISFIT_NUM_SD` (the range ``chi2_m / m`` of draws concentrated on the truth, the
    widest a calibrated posterior gives, so each observation falls outside with probability
    at most ``2 Phi(-4) = 6.3e-5``), and the largest value; :func:`misfit_verdict` judges
    the count.
``exact``
    For a linear-Gaussian problem, against the closed-form posterior: ``mean_error_in_std``
    (median over elements of ``|mean - mean_exact| / std_exact``), ``std_ratio`` (median of
    ``std / std_exact``), and the exact posterior's own ``coverage_50``/``coverage_90`` on the
    same truths (what a perfect sampler reaches on this set).

Coverage verdict
----------------
With ``S`` draws per observation the central interval between the interpolated sample
quantiles holds the truth of a calibrated posterior with probability
``alpha (S - 1) / (S + 1)`` (the truth is exchangeable with the draws, so its rank is uniform on
``0 .. S``; up to ``O(1/S^2)``), e.g. 0.882 for ``alpha = 0.9`` and ``S = 100``: that, not
``alpha``, is the expected value (:func:`expected_coverage`). The pooled coverage is the mean
over the ``M`` independent observations of ``c_i``, the fraction of the ``d`` elements of
``x_i`` covered. The elements of one model are correlated (by the prior, the data and the
posterior), so the ``M d`` indicators are not independent binomial trials; the standard error
is taken over observations, ``sd(c_i) / sqrt(M)``, which holds for any correlation within an
observation and includes the noise of the sample quantiles. It is floored at the
independent-elements value ``sqrt(e (1 - e) / (M d))`` (``e`` the expected coverage; the
smallest it can be for non-negatively correlated elements), and with one observation it is the
fully correlated ``sqrt(e (1 - e) / M)``. :func:`check_coverage` then allows ``z`` standard
errors with ``z = Phi^{-1}(1 - false_alarm / 4)`` (two-sided, Bonferroni over the two levels;
``z = 2.81`` for ``false_alarm = 0.01``), so a calibrated posterior fails with probability at
most ``false_alarm``. Symmetric central intervals react to a shift only at second order: a
biased posterior of the right width can pass; the SBC ranks of
:mod:`inference.diagnostics.calibration` catch it.

References
----------
Cook, Gelman and Rubin 2006, Validation of software for Bayesian models using posterior
quantiles, J. Comput. Graph. Stat. 15, 675; Talts et al. 2018, Validating Bayesian inference
algorithms with simulation-based calibration, arXiv:1804.06788 (coverage as calibration).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from inference.diagnostics.ppc import plausible_chi2_range
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.densities import checked_forward, whiten

__all__ = [
    "CURVE_LEVELS",
    "MISFIT_LISTED",
    "MISFIT_NUM_SD",
    "central_coverage",
    "check_coverage",
    "coverage_verdict",
    "expected_coverage",
    "misfit_verdict",
    "run_evaluation",
]

MISFIT_NUM_SD = 4.0
"""Standard deviations of each observation's misfit range in ``misfit_outside`` (the per-
observation false alarm ``2 Phi(-4) = 6.3e-5``, as ``sample``'s and ``diagnose``'s)."""

MISFIT_LISTED = 20
"""Most observation indices ``misfit_outside`` lists."""

_VERDICT_LEVELS: tuple[tuple[str, float], ...] = (("coverage_50", 0.5), ("coverage_90", 0.9))

CURVE_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def central_coverage(
    draws: torch.Tensor, truth: torch.Tensor, levels: Sequence[float]
) -> list[float]:
    """Return the fraction of truths inside the central marginal intervals at each level.

    Parameters
    ----------
    draws : Tensor, shape (S, M, *event)
        Posterior draws (sample axis first).
    truth : Tensor, shape (M, *event)
        True values.
    levels : sequence of float in (0, 1)
        Credibility levels ``alpha``; the interval is ``[q_{(1-alpha)/2}, q_{(1+alpha)/2}]``.

    Returns
    -------
    list of float
        Empirical coverage, one per level, pooled over all observations and elements.

    Raises
    ------
    ShapeError
        If ``draws`` and ``truth`` disagree in shape.
    """
    return [float(c.mean()) for c in _coverage_per_observation(draws, truth, levels)]


def _contraction(draws: torch.Tensor, truth: torch.Tensor) -> float:
    """Median over elements of ``1 - mean posterior variance / variance of the truths``."""
    if truth.shape[0] < 2 or not bool(torch.isfinite(draws).all()):
        return math.nan
    posterior = draws.double().reshape(*draws.shape[:2], -1).var(0).mean(0)  # (elements,)
    prior = truth.double().reshape(truth.shape[0], -1).var(0)
    varied = prior > 0
    if not bool(varied.any()):
        return math.nan
    return float((1 - posterior[varied] / prior[varied]).median())


def _coverage_per_observation(
    draws: torch.Tensor, truth: torch.Tensor, levels: Sequence[float]
) -> torch.Tensor:
    """Return the covered fraction of the elements of each truth, shape ``(len(levels), M)``.

    An element whose draws are all equal to its truth (a component the prior or noise-free
    data fix: the interval has no width and the truth ties with every draw) counts as covered
    with the probability a calibrated posterior gives it, :func:`expected_coverage`: with
    ties broken at random the truth's rank is uniform on ``0 .. S``, as for distinct values.
    Counting it as covered made a correct posterior look too wide.
    """
    if draws.dim() < 2 or tuple(draws.shape[1:]) != tuple(truth.shape):
        raise ShapeError(
            f"draws {tuple(draws.shape)} must be (S, *truth shape), truth {tuple(truth.shape)}"
        )
    d = draws.double()
    t = truth.double()
    # one sort for all levels: quantiles (1 - a) / 2 and (1 + a) / 2 of every level at once
    probs = torch.tensor(
        [p for a in levels for p in ((1 - a) / 2, (1 + a) / 2)], dtype=torch.float64
    )
    bounds = torch.quantile(d, probs, dim=0)  # (2 * len(levels), *truth.shape)
    tied = (d == t).all(0) if d.shape[0] >= 2 else None
    out = []
    for k in range(len(levels)):
        lo, hi = bounds[2 * k], bounds[2 * k + 1]
        inside = ((t >= lo) & (t <= hi)).double()
        if tied is not None:  # a tie with every draw: covered with the expected probability
            inside = torch.where(tied, expected_coverage(levels[k], d.shape[0]), inside)
        out.append(inside.reshape(t.shape[0], -1).mean(1) if t.dim() > 1 else inside)
    return torch.stack(out)


def expected_coverage(level: float, num_samples: int) -> float:
    """Return the expected coverage of a calibrated posterior's central interval from S draws.

    Parameters
    ----------
    level : float in (0, 1)
        Credibility level ``alpha`` of the central interval between the sample quantiles
        ``(1 -+ alpha) / 2`` (linear interpolation, as :func:`central_coverage`).
    num_samples : int
        Draws ``S`` per observation, at least 2.

    Returns
    -------
    float
        ``alpha (S - 1) / (S + 1)``: the truth's rank among the draws is uniform on ``0 .. S``
        and the interval spans ``alpha (S - 1)`` of the ``S + 1`` gaps between order
        statistics (exact up to ``O(1/S^2)``).

    Raises
    ------
    ConfigError
        If ``level`` is not in (0, 1) or ``num_samples < 2``.

    Examples
    --------
    >>> round(expected_coverage(0.9, 100), 4)
    0.8822
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    if num_samples < 2:
        raise ConfigError(f"num_samples must be at least 2, got {num_samples!r}")
    return level * (num_samples - 1) / (num_samples + 1)


def run_evaluation(
    x_draws: torch.Tensor,
    x_true: torch.Tensor,
    *,
    x_reference: torch.Tensor,
    y_obs: torch.Tensor | None = None,
    problem: Problem | None = None,
    exact_mean: torch.Tensor | None = None,
    exact_std: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Compute held-out posterior metrics (see the module docstring for the keys).

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Posterior draws for ``M`` held-out observations, units of ``x``.
    x_true : Tensor, shape (M, *x_shape)
        The true models of those observations.
    x_reference : Tensor, shape x_shape
        The prior's constant guess, normally the training mean of ``x``.
    y_obs : Tensor, shape (M, *y_shape), optional
        The held-out observations; with ``problem``, gives the chi-squared misfit.
    problem : Problem, optional
        Forward operator and noise model for the posterior predictive misfit.
    exact_mean : Tensor, shape (M, *x_shape), optional
    exact_std : Tensor, shape x_shape or (M, *x_shape), optional
        Exact posterior mean and marginal standard deviation (linear-Gaussian problems).

    Returns
    -------
    dict
        JSON-ready metrics.

    Raises
    ------
    ShapeError
        If the shapes disagree, or ``problem.forward`` returns a wrong shape.
    DataError, ConfigError
        As :func:`~ppl_cvae.problems.densities.checked_forward`, when ``problem`` and
        ``y_obs`` are given: its ``forward`` returns something that is not a tensor
        (``DataError``), raises or calls ``sys.exit`` (``ConfigError`` naming ``forward``
        and the original message).
    """
    num_samples, num_obs = x_draws.shape[:2]
    if tuple(x_draws.shape[1:]) != tuple(x_true.shape):
        raise ShapeError(
            f"x_draws {tuple(x_draws.shape)} must be (S, *x_true shape), x_true "
            f"{tuple(x_true.shape)}"
        )
    if tuple(x_reference.shape) != tuple(x_true.shape[1:]):
        raise ShapeError(
            f"x_reference must have shape {tuple(x_true.shape[1:])}, got {tuple(x_reference.shape)}"
        )
    if num_samples < 20:
        warnings.warn(
            f"{num_samples} draws per observation give coarse 90% intervals; use >= 100",
            stacklevel=2,
        )
    draws, truth = x_draws.double(), x_true.double()
    mean = draws.mean(0)
    std = draws.std(0)
    curve = central_coverage(draws, truth, CURVE_LEVELS)
    per_obs = _coverage_per_observation(draws, truth, (0.5, 0.9))  # (2, M)
    cov50, cov90 = (float(c.mean()) for c in per_obs)
    num_elements = math.prod(x_true.shape[1:])
    standard_error = {}
    for (key, level), c in zip(_VERDICT_LEVELS, per_obs, strict=True):
        e = expected_coverage(level, num_samples) if num_samples >= 2 else level
        if num_obs > 1:
            clustered = float(c.std()) / math.sqrt(num_obs)
            floor = math.sqrt(e * (1 - e) / (num_obs * num_elements))
            standard_error[key] = max(clustered, floor)
        else:  # one observation: its elements fully correlated, the worst case
            standard_error[key] = math.sqrt(e * (1 - e))
    rmse_post = float((mean - truth).pow(2).mean().sqrt())
    rmse_prior = float((x_reference.double() - truth).pow(2).mean().sqrt())
    metrics: dict[str, Any] = {
        "num_observations": int(num_obs),
        "num_samples": int(num_samples),
        "coverage_50": cov50,
        "coverage_90": cov90,
        "coverage_curve": {"nominal": list(CURVE_LEVELS), "empirical": curve},
        "coverage_standard_error": standard_error,
        "rmse_posterior_mean": rmse_post,
        "rmse_prior_mean": rmse_prior,
        "rmse_ratio": rmse_post / rmse_prior if rmse_prior > 0 else math.nan,
        "mean_posterior_std": float(std.mean()),
        "posterior_contraction": _contraction(draws, truth),
    }
    if problem is not None and y_obs is not None:
        m = math.prod(problem.y_shape)
        with torch.no_grad():
            resid = whiten(problem, checked_forward(problem, x_draws) - y_obs)
            chi2 = resid.double().pow(2).flatten(start_dim=2).sum(-1) / m  # (S, M)
            resid_mean = whiten(problem, checked_forward(problem, mean.to(x_draws)) - y_obs)
            chi2_mean = resid_mean.double().pow(2).flatten(start_dim=1).sum(-1) / m  # (M,)
        per_obs = chi2.mean(0)  # (M,)
        metrics["chi2_per_datum"] = float(per_obs.median())
        metrics["chi2_per_datum_of_mean"] = float(chi2_mean.median())
        metrics["chi2_per_datum_mean"] = float(per_obs.mean())
        low, high = plausible_chi2_range(m, None, MISFIT_NUM_SD)
        outside = ~((per_obs >= low) & (per_obs <= high))  # NaN counts as outside
        where = outside.nonzero().flatten().tolist()
        metrics["misfit_outside"] = {
            "count": len(where),
            "observations": where[:MISFIT_LISTED],
            "range": [low, high],
            "num_sd": MISFIT_NUM_SD,
            "largest": float(per_obs.max()),
        }
    if exact_mean is not None and exact_std is not None:
        e_mean, e_std = exact_mean.double(), exact_std.double()
        lo50, hi50 = _normal_interval(e_mean, e_std, 0.5)
        lo90, hi90 = _normal_interval(e_mean, e_std, 0.9)
        metrics["exact"] = {
            "mean_error_in_std": float(((mean - e_mean).abs() / e_std).median()),
            "std_ratio": float((std / e_std).median()),
            "coverage_50": float(((truth >= lo50) & (truth <= hi50)).double().mean()),
            "coverage_90": float(((truth >= lo90) & (truth <= hi90)).double().mean()),
        }
    return metrics


def _normal_interval(
    mean: torch.Tensor, std: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the central ``alpha`` interval of ``N(mean, std^2)``."""
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(alpha, dtype=torch.float64))
    return mean - z * std, mean + z * std


def coverage_verdict(metrics: Mapping[str, Any], false_alarm: float = 0.01) -> dict[str, Any]:
    """Judge ``coverage_50``/``coverage_90`` with a tolerance from the number of observations.

    Parameters
    ----------
    metrics : mapping
        Output of :func:`run_evaluation` (``coverage_50``, ``coverage_90``,
        ``num_observations``, ``num_samples`` and, when present, ``coverage_standard_error``;
        without it the fully correlated ``sqrt(e (1 - e) / M)`` is used).
    false_alarm : float in (0, 1), default 0.01
        Probability that a calibrated posterior fails either level.

    Returns
    -------
    dict
        JSON-ready: ``false_alarm``, ``z`` (``Phi^{-1}(1 - false_alarm / 4)``), ``levels``:
        ``{"coverage_50": {...}, "coverage_90": {...}}`` each with ``observed``, ``nominal``,
        ``expected`` (:func:`expected_coverage`), ``standard_error`` and ``tolerance``
        (``z`` standard errors); ``failures``: one message per level whose
        ``|observed - expected| > tolerance``, saying too wide or too narrow; ``judged``: False
        when no level's tolerance is below its largest possible deviation (the verdict cannot
        fail, e.g. one held-out pair of a one-component model).

    Raises
    ------
    ConfigError
        If ``false_alarm`` is not in (0, 1).

    Notes
    -----
    See "Coverage verdict" in the module docstring.

    Examples
    --------
    >>> m = {"coverage_50": 0.49, "coverage_90": 0.70, "num_observations": 400,
    ...      "num_samples": 200}
    >>> coverage_verdict(m)["failures"]
    ['coverage_90 = 0.700, expected 0.891 (nominal 0.9) +- 0.044: posterior too narrow \
(under-covers)']
    """
    if not 0 < false_alarm < 1:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm!r}")
    z = float(torch.special.ndtri(torch.tensor(1 - false_alarm / 4, dtype=torch.float64)))
    num_obs, num_samples = int(metrics["num_observations"]), int(metrics["num_samples"])
    given = metrics.get("coverage_standard_error", {})
    levels: dict[str, dict[str, float]] = {}
    failures = []
    for key, nominal in _VERDICT_LEVELS:
        value = float(metrics[key])
        e = expected_coverage(nominal, num_samples) if num_samples >= 2 else nominal
        se = float(given.get(key, math.sqrt(e * (1 - e) / max(1, num_obs))))
        tolerance = z * se
        levels[key] = {
            "observed": value,
            "nominal": nominal,
            "expected": e,
            "standard_error": se,
            "tolerance": tolerance,
        }
        if abs(value - e) > tolerance:
            kind = "too wide (over-covers)" if value > e else "too narrow (under-covers)"
            failures.append(
                f"{key} = {value:.3f}, expected {e:.3f} (nominal {nominal}) +- "
                f"{tolerance:.3f}: posterior {kind}"
            )
    judged = any(
        level["tolerance"] < max(level["expected"], 1 - level["expected"])
        for level in levels.values()
    )
    return {
        "false_alarm": false_alarm,
        "z": z,
        "levels": levels,
        "failures": failures,
        "judged": judged,
    }


def misfit_verdict(metrics: Mapping[str, Any], false_alarm: float = 0.01) -> dict[str, Any]:
    """Judge how many held-out observations' draws misfit their data beyond the noise model.

    Each observation's mean misfit per datum over its draws lies outside
    ``metrics["misfit_outside"]["range"]`` with probability at most ``p = 2 Phi(-num_sd)``
    for a calibrated posterior (:func:`~inference.diagnostics.ppc.plausible_chi2_range`: the
    widest spread is that of draws concentrated on the truth). The verdict fails when the
    count of such observations among ``M`` would be reached with probability below
    ``false_alarm`` by a binomial ``(M, p)``: for ``M`` up to 158 one observation outside
    fails, up to 2,345 two. A posterior whose draws miss their data on a few observations
    (a mode dropped, a tail too heavy) fails here while the median ``chi2_per_datum`` stays
    near 1.

    Parameters
    ----------
    metrics : mapping
        Output of :func:`run_evaluation` with a forward operator (``misfit_outside``,
        ``num_observations``).
    false_alarm : float in (0, 1), default 0.01

    Returns
    -------
    dict
        JSON-ready: ``count``, ``num_observations``, ``p_value`` (the binomial probability of
        at least ``count``), ``false_alarm``, ``failures`` (one message when it failed),
        ``judged`` (True: one observation outside can fail it whenever ``M p`` is small).

    Raises
    ------
    ConfigError
        If ``false_alarm`` is not in (0, 1).

    Examples
    --------
    >>> m = {"num_observations": 200, "misfit_outside": {"count": 14, "observations": [3, 31],
    ...      "range": [0.0, 6.5], "num_sd": 4.0, "largest": 1036.0}}
    >>> misfit_verdict(m)["failures"][0].split(" (first")[0]
    '14 of 200 held-out observations have draws whose mean misfit lies outside [0.000, 6.500] \
per datum'
    """
    from scipy import stats

    if not 0 < false_alarm < 1:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm!r}")
    outside = metrics["misfit_outside"]
    count, num_obs = int(outside["count"]), int(metrics["num_observations"])
    p = 2.0 * float(stats.norm.sf(float(outside["num_sd"])))
    p_value = float(stats.binom.sf(count - 1, num_obs, p)) if count > 0 else 1.0
    failures = []
    if p_value < false_alarm:
        low, high = outside["range"]
        failures.append(
            f"{count} of {num_obs} held-out observations have draws whose mean misfit lies "
            f"outside [{low:.3f}, {high:.3f}] per datum (first {outside['observations'][:5]}, "
            f"largest {outside['largest']:.3g}): the draws miss those observations' data "
            f"beyond the noise model (p = {p_value:.2g} for a calibrated posterior)"
        )
    return {
        "count": count,
        "num_observations": num_obs,
        "p_value": p_value,
        "false_alarm": false_alarm,
        "failures": failures,
        "judged": True,
    }


def check_coverage(
    metrics: Mapping[str, Any], tolerance: float | None = None, false_alarm: float = 0.01
) -> list[str]:
    """Return the failed coverage checks of :func:`run_evaluation` metrics (empty: calibrated).

    Parameters
    ----------
    metrics : mapping
        Output of :func:`run_evaluation`.
    tolerance : float, optional
        A fixed allowed absolute distance of ``coverage_50`` / ``coverage_90`` from 0.5 / 0.9.
        By default the tolerance follows from the number of held-out observations and draws
        (:func:`coverage_verdict`).
    false_alarm : float in (0, 1), default 0.01
        With the derived tolerance: the probability that a calibrated posterior fails.

    Returns
    -------
    list of str
        One message per level outside the tolerance, saying over- or under-coverage.

    Raises
    ------
    ConfigError
        If ``false_alarm`` is not in (0, 1).

    Examples
    --------
    >>> m = {"coverage_50": 0.50, "coverage_90": 0.88, "num_observations": 400,
    ...      "num_samples": 200}
    >>> check_coverage(m), check_coverage(m, tolerance=0.005)[0]
    ([], 'coverage_90 = 0.880, nominal 0.9: posterior too narrow (under-covers)')
    """
    if tolerance is None:
        return list(coverage_verdict(metrics, false_alarm)["failures"])
    failures = []
    for key, nominal in _VERDICT_LEVELS:
        value = float(metrics[key])
        if abs(value - nominal) > tolerance:
            kind = "too wide (over-covers)" if value > nominal else "too narrow (under-covers)"
            failures.append(f"{key} = {value:.3f}, nominal {nominal}: posterior {kind}")
    return failures
