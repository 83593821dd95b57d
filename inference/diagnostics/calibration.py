"""Simulation-based calibration (SBC) and TARP of posterior draws for held-out truths.

Both checks take posterior draws ``x_draws`` of shape ``(S, M, *x_shape)`` (sample axis first,
as everywhere in :mod:`inference`) for ``M`` held-out observations whose true models
``x_true`` ``(M, *x_shape)`` were drawn from the prior, and ask whether each truth looks like
one more draw from its posterior. Inputs are torch tensors; the outputs are numpy arrays and
JSON-ready dictionaries. As in the other diagnostics, ``run_*`` computes and ``check_*``
judges; nothing here plots or writes files (the pipeline that does is
:mod:`inference.evaluate`).

Definitions
-----------
Rank (Talts et al. 2018): for one scalar ``t`` of a model (a component of ``x``, or a derived
statistic such as the data misfit) the rank of the truth is the number of draws below it,
``r = #{s : t(x_s) < t(x_true)}``, in ``0 .. S``; ties (discrete ``x``, e.g. facies) are broken
at random (seeded), so that ``r`` is uniform on ``0 .. S`` whenever the truth and the draws are
exchangeable, which they are when the draws come from the exact posterior. The normalised rank
is ``u = (r + v) / (S + 1)`` with ``v ~ U(0, 1)``: a randomised probability integral transform
(Czado, Gneiting and Held 2009), exactly ``U(0, 1)`` under calibration, so the tests below need
no correction for the discreteness of ``r``. Draws must be independent (amortized draws are):
there is no thinning.

Reading the ranks. ``u`` near 0 means the truth lies below most draws. Ranks piling in the
middle (variance of ``u`` below 1/12) mean the posterior is over-dispersed (too wide); a U shape
(variance above 1/12) that it is under-dispersed (too narrow); a mean of ``u`` below 1/2 that
the posterior sits above the truth (biased high), above 1/2 that it sits below (biased low).
The dispersion test measures ``(u - 1/2)^2``, about 1/2, so a shift raises it too (ranks all
near 0 give 1/4, three times 1/12, without a U shape); the verdicts' words judge the spread
about the ranks' own mean instead and name the larger of the shift and the spread error
(``_describe``).

Tests of one set of ``M`` normalised ranks. Under calibration the ``u_i`` are independent
``U(0, 1)``, so

- the mean ``ubar`` has mean 1/2 and standard error ``sqrt(1 / (12 M))`` (z-score ``mean_z``);
- ``v = mean_i (u_i - 1/2)^2`` has mean 1/12 and standard error ``sqrt(1 / (180 M))``
  (``Var (u - 1/2)^2 = 1/80 - 1/144``; z-score ``variance_z``), the test for dispersion;
- the Kolmogorov-Smirnov statistic ``ks_statistic`` ``sup |ECDF(u) - u|``, the omnibus test,
  has an exact p-value (:data:`scipy.stats.kstwo`) wherever the asymptotic (Kolmogorov) one is
  below 0.2; above, the asymptotic value is reported (the exact one is then above 0.14 and
  never decides a verdict) because exact p-values of thousands of components take seconds;

and the set's ``p_value`` is ``min(1, 3 min(p_mean, p_variance, p_KS))`` (two-sided normal
p-values for the z-scores; Bonferroni over the three). The moment tests carry the power against
the failures named above (at ``M = 200`` a posterior 1.5 times too wide moves ``v`` by 6 standard
errors and a shift of half a posterior sd moves ``ubar`` by 7; ``E v = arcsin(1 / (1 + c^2)) /
(2 pi)`` for a Gaussian posterior ``c`` times too wide, a standard computation with the
bivariate normal orthant probability); KS catches the rest.

Verdict over many sets (:func:`check_sbc`). One set per component of ``x`` (``d`` of them), one
per derived statistic, and a pooled set: the per-observation averages over components of ``u``
and of ``(u - 1/2)^2``, tested against 1/2 and 1/12 with one-sample t-tests (standard errors
from the spread over the ``M`` independent observations, so they hold whatever the correlation
between the components of one model). Components of one ``x`` are correlated, so the p-values
are dependent; Bonferroni (a set fails when its ``p_value < false_alarm / K`` for ``K`` sets)
keeps the family-wise false-alarm probability at most ``false_alarm`` under any dependence,
where a simultaneous band across components would need their joint law. It is conservative
when ``d`` is large, which the pooled set compensates for.

TARP (Lemos et al. 2023). ``x`` is standardised per component (the paper and sbi's
``z_score_theta`` recommend it, so that no component dominates the distances), one reference
point ``r_i`` per observation is drawn uniformly in a box, and ``f_i`` is the fraction of draws
closer (Euclidean) to ``r_i`` than the truth: the credibility of the smallest ball around
``r_i`` that contains the truth. The expected coverage probability ``ECP(alpha)`` is the
fraction of ``f_i`` below ``alpha``; a calibrated joint posterior has ``ECP(alpha) = alpha``
(``f`` uniform) whenever ``r_i`` is independent of the truth given ``y_i``. The paper's code and
sbi standardise by the truths and draw ``r_i`` in the box they span, which makes ``r_i`` depend
on the truth; harmless in a few dimensions, it is not in many: standardised by their own mean
and sd the ``M`` truths come out shorter than the draws by ``O(d / M)`` in squared distance,
against a spread of ``O(sqrt(d))`` (a posterior equal to the prior on a 64 x 64 grid, 100
truths x 200 draws, failed with p = 5e-12 that way). Here
the standardisation is the mean and sd of all ``S M`` draws pooled (for a calibrated posterior
the prior's), or ``loc``/``scale`` given by the caller (e.g. the training set's), and ``r_i``
is uniform on ``[-sqrt(3), sqrt(3)]^d`` in standardised units (mean 0 and variance 1 per
component, like the standardised prior): neither uses the truths. The closeness count is a
rank (the truth's distance among the draws'), so it is
normalised as above (``u``, random ties) and ``ECP`` is the ECDF of ``u``. Summaries: the
area-to-curve ``atc = int_{1/2}^1 (ECP(alpha) - alpha) d alpha`` (sbi's ``check_tarp``, computed
exactly as ``mean(1 - max(u, 1/2)) - 3/8``; null standard error ``sqrt(5 / 192 / M)``; > 0: too
wide, < 0: too narrow), and ``max_deviation = sup |ECP(alpha) - alpha|``, the KS statistic of
``u`` with its exact p-value. ``p_value = min(1, 2 min(p_ATC, p_KS))``. With one reference
distribution that does not depend on ``y``, passing TARP is necessary for calibration, not
sufficient (the paper's sufficiency result concerns all reference distributions); it
complements the per-component SBC with a check of the joint posterior.

Why our own code. The PyPI ``tarp`` package (0.1.1, 2023) declares only ``numpy`` but imports
``tqdm`` and ``deprecation`` (the second is not a dependency here, so it does not import),
reseeds numpy's global generator (``np.random.seed``) on every call, overwrites the caller's
arrays in its bootstrap and bins ``f`` in a histogram. sbi's ``run_tarp``/``check_tarp`` would
bring all of sbi, and its ``check_tarp`` p-value is a two-sample KS test between the curve
values and the alpha grid, not a test of ``f``. The algorithm itself is the few lines of
:func:`tarp_values`.

References
----------
Talts, S., Betancourt, M., Simpson, D., Vehtari, A. and Gelman, A. (2018). Validating Bayesian
inference algorithms with simulation-based calibration. arXiv:1804.06788
Lemos, P., Coogan, A., Hezaveh, Y. and Perreault-Levasseur, L. (2023). Sampling-based accuracy
testing of posterior estimators for general inference. ICML 2023, arXiv:2302.03026
Czado, C., Gneiting, T. and Held, L. (2009). Predictive model assessment for count data.
Biometrics 65(4), 1254-1261. doi:10.1111/j.1541-0420.2009.01191.x
Säilynoja, T., Bürkner, P.-C. and Vehtari, A. (2022). Graphical test for discrete uniformity
and its applications in goodness-of-fit evaluation and multiple sample comparison. Statistics
and Computing 32, 32. doi:10.1007/s11222-022-10090-6 (the simultaneous ECDF bands of the plots)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from ppl_cvae.checks import as_probability, as_seed, shape_text
from ppl_cvae.errors import DataError, ShapeError
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.densities import checked_forward, whiten

__all__ = [
    "MIN_OBSERVATIONS",
    "TARP_LEVELS",
    "SBCRanks",
    "Statistic",
    "check_sbc",
    "check_tarp",
    "component_label",
    "misfit_statistic",
    "run_calibration",
    "run_sbc",
    "run_tarp",
    "sbc_ranks",
    "tarp_values",
    "uniformity_tests",
]

# a scalar of a model: maps x of shape (N, M, *x_shape) to (N, M)
Statistic = Callable[[torch.Tensor], torch.Tensor]

MIN_OBSERVATIONS = 100
"""Held-out observations below which SBC and TARP warn (and the evaluate report notes it)."""

TARP_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(21))
"""Credibility levels ``alpha`` of the reported TARP curve: 0, 0.05, ..., 1."""

_MEAN_SD = math.sqrt(1 / 12)  # sd of U(0, 1)
_SQ_SD = math.sqrt(1 / 180)  # sd of (U - 1/2)^2: 1/80 - 1/144 = 1/180
_ATC_SD = math.sqrt(5 / 192)  # sd of 1 - max(U, 1/2): 1/6 - (3/8)^2 = 5/192
_CHUNK_ELEMENTS = 2**22  # elements of one (S, chunk, d) comparison block (32 MiB in float64)


@dataclass(frozen=True)
class SBCRanks:
    """Ranks of held-out truths among their posterior draws (:func:`sbc_ranks`).

    Attributes
    ----------
    ranks : ndarray of int64, shape (M, d)
        Rank of every component of every truth, ``0 .. S``; components in C order of
        ``x_shape`` (``d = prod(x_shape)``).
    normalised : ndarray of float64, shape (M, d)
        ``(rank + v) / (S + 1)`` with ``v ~ U(0, 1)``: exactly uniform on (0, 1) under
        calibration.
    statistic_ranks, statistic_normalised : dict of str to ndarray, shape (M,)
        The same for each derived statistic.
    num_draws : int
        ``S``.
    x_shape : tuple of int
    seed : int
        Seed of the tie breaks and of ``v``.
    """

    ranks: np.ndarray
    normalised: np.ndarray
    num_draws: int
    x_shape: tuple[int, ...]
    seed: int
    statistic_ranks: dict[str, np.ndarray] = field(default_factory=dict)
    statistic_normalised: dict[str, np.ndarray] = field(default_factory=dict)


def _check_pair(x_draws: torch.Tensor, x_true: torch.Tensor) -> tuple[int, int, int]:
    """Return ``(S, M, d)`` after checking shapes and finiteness."""
    if x_draws.dim() < 2 or tuple(x_draws.shape[1:]) != tuple(x_true.shape):
        raise ShapeError(
            f"x_draws {tuple(x_draws.shape)} must be (S, *x_true shape) with x_true "
            f"{tuple(x_true.shape)} = (M, *x_shape)"
        )
    num_draws, num_obs = int(x_draws.shape[0]), int(x_draws.shape[1])
    if num_draws < 1 or num_obs < 1:
        raise ShapeError(
            f"need at least one draw and one observation, got x_draws {tuple(x_draws.shape)}"
        )
    for name, t in (("x_draws", x_draws), ("x_true", x_true)):
        if not bool(torch.isfinite(t).all()):
            raise DataError(f"{name} holds NaN or infinite values; ranks need finite models")
    return num_draws, num_obs, math.prod(x_true.shape[1:])


def _counts(values: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Count draws below and equal to the truth: ``values`` (S, M, k), ``truth`` (M, k)."""
    num_draws, num_obs, k = values.shape
    dtype = torch.promote_types(values.dtype, truth.dtype)  # compare without rounding
    step = max(1, _CHUNK_ELEMENTS // max(1, num_draws * k))
    less, equal = [], []
    for start in range(0, num_obs, step):
        v = values[:, start : start + step].to(dtype)
        t = truth[start : start + step].to(dtype).unsqueeze(0)
        less.append((v < t).sum(0))
        equal.append((v == t).sum(0))
    return torch.cat(less).numpy().astype(np.int64), torch.cat(equal).numpy().astype(np.int64)


def _rank_and_normalise(
    less: np.ndarray, equal: np.ndarray, num_draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Break ties uniformly and return ``(rank, (rank + v) / (S + 1))``."""
    rank = less + rng.integers(0, equal + 1)
    return rank, (rank + rng.random(rank.shape)) / (num_draws + 1)


def sbc_ranks(
    x_draws: torch.Tensor,
    x_true: torch.Tensor,
    *,
    statistics: Mapping[str, Statistic] | None = None,
    seed: int = 0,
) -> SBCRanks:
    """Rank every component of every truth, and each derived statistic, among the draws.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Independent posterior draws (sample axis first) for ``M`` held-out observations, units
        of ``x``.
    x_true : Tensor, shape (M, *x_shape)
        The true models, drawn from the prior.
    statistics : mapping of str to callable, optional
        Derived scalars ``name -> f`` with ``f(x)`` of shape ``(N, M)`` for ``x`` of shape
        ``(N, M, *x_shape)`` (applied to the draws, ``N = S``, and to the truths, ``N = 1``),
        e.g. :func:`misfit_statistic`.
    seed : int, default 0
        Seed of the random tie breaks and of the randomised normalisation.

    Returns
    -------
    SBCRanks
        Ranks ``(M, d)`` in ``0 .. S`` and normalised ranks, and ``(M,)`` for each statistic.

    Raises
    ------
    ShapeError
        If ``x_draws`` is not ``(S, *x_true shape)``, or a statistic returns another shape than
        ``(N, M)``.
    DataError
        If the draws, the truths or a statistic hold NaN or infinite values.
    ConfigError
        If ``seed`` is not an int in ``[0, 2**32 - 1]`` (:func:`~ppl_cvae.checks.as_seed`).

    Notes
    -----
    ``rank = #{s : t_s < t_true} + U{0 .. #{s : t_s = t_true}}``; uniform on ``0 .. S`` when the
    truth and the draws are exchangeable (Talts et al. 2018, theorem 1).

    Examples
    --------
    >>> draws = torch.arange(4.0).reshape(4, 1, 1)  # 4 draws 0, 1, 2, 3 for one observation
    >>> sbc_ranks(draws, torch.tensor([[2.5]])).ranks
    array([[3]])
    """
    num_draws, num_obs, dim = _check_pair(x_draws, x_true)
    seed = as_seed(seed, optional=False)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        less, equal = _counts(
            x_draws.detach().cpu().reshape(num_draws, num_obs, dim),
            x_true.detach().cpu().reshape(num_obs, dim),
        )
    ranks, normalised = _rank_and_normalise(less, equal, num_draws, rng)
    stat_ranks: dict[str, np.ndarray] = {}
    stat_norm: dict[str, np.ndarray] = {}
    for name, fn in (statistics or {}).items():
        with torch.no_grad():
            drawn = fn(x_draws).detach().cpu()
            true = fn(x_true.unsqueeze(0)).detach().cpu()
        if tuple(drawn.shape) != (num_draws, num_obs) or tuple(true.shape) != (1, num_obs):
            raise ShapeError(
                f"statistic {name!r} must map (N, M, *x_shape) to (N, M) = "
                f"({num_draws}, {num_obs}) and (1, {num_obs}); got {tuple(drawn.shape)} and "
                f"{tuple(true.shape)}"
            )
        if not (bool(torch.isfinite(drawn).all()) and bool(torch.isfinite(true).all())):
            raise DataError(f"statistic {name!r} returned NaN or infinite values")
        s_less, s_equal = _counts(drawn.unsqueeze(-1), true[0].unsqueeze(-1))
        s_rank, s_norm = _rank_and_normalise(s_less[:, 0], s_equal[:, 0], num_draws, rng)
        stat_ranks[name], stat_norm[name] = s_rank, s_norm
    return SBCRanks(
        ranks=ranks,
        normalised=normalised,
        num_draws=num_draws,
        x_shape=tuple(int(n) for n in x_true.shape[1:]),
        seed=seed,
        statistic_ranks=stat_ranks,
        statistic_normalised=stat_norm,
    )


def misfit_statistic(problem: Problem, y_obs: torch.Tensor) -> Statistic:
    """Return the chi-squared data misfit per datum of a model, as an SBC statistic.

    Parameters
    ----------
    problem : Problem
        Forward operator ``F`` and noise model (covariance ``C_e = L L^T``).
    y_obs : Tensor, shape (M, *y_shape)
        The held-out observations; model ``i`` of any ``x`` is scored against ``y_obs[i]``.

    Returns
    -------
    callable
        ``x`` ``(N, M, *x_shape)`` -> ``|L^{-1} (F(x) - y_obs)|^2 / m``, shape ``(N, M)``,
        float64 (dimensionless; about 1 for a model that fits within the noise), ``m =
        prod(y_shape)``. The truth's value is computed against the same ``y_obs``, so the
        truth and calibrated draws are exchangeable and the rank is uniform.

    Raises
    ------
    ShapeError
        If ``y_obs`` is not ``(M, *y_shape)``; from the callable, as
        :func:`~ppl_cvae.problems.densities.checked_forward` (``forward`` returns a wrong
        shape).
    DataError
        From the callable, if the problem's ``forward`` returns something that is not a
        tensor, or a misfit is NaN or infinite (``forward`` gave NaN or inf); the message
        names ``forward``.
    ConfigError
        From the callable, if the problem's ``forward`` raises or calls ``sys.exit``
        (:func:`~ppl_cvae.problems.densities.checked_forward`).

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> p = LinearGaussian(x_dim=2, y_dim=2, noise_std=0.5)
    >>> misfit = misfit_statistic(p, torch.zeros(3, 2))
    >>> tuple(misfit(torch.zeros(5, 3, 2)).shape)
    (5, 3)
    """
    y_shape = tuple(problem.y_shape)
    if y_obs.dim() != len(y_shape) + 1 or tuple(y_obs.shape[1:]) != y_shape:
        raise ShapeError(
            f"y_obs must have shape {shape_text('M', y_shape)}, got {tuple(y_obs.shape)}"
        )
    num_data = math.prod(y_shape)

    def misfit(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            resid = whiten(problem, checked_forward(problem, x) - y_obs.to(x))
        value = resid.double().pow(2).flatten(start_dim=2).sum(-1) / num_data
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise DataError(
                f"problem {problem.name!r} forward gives a chi-squared misfit that is NaN or "
                f"infinite at {int(bad.sum())} of {bad.numel()} models (NaN or inf in F(x)): "
                "check the problem's forward"
            )
        return value

    return misfit


def uniformity_tests(normalised: np.ndarray) -> dict[str, list[float]]:
    """Test each column of normalised ranks for uniformity (moments and Kolmogorov-Smirnov).

    Parameters
    ----------
    normalised : ndarray, shape (M,) or (M, K)
        ``M`` independent normalised ranks in (0, 1) per column, ``K`` columns.

    Returns
    -------
    dict of str to list of float (one entry per column)
        ``rank_mean`` (uniform: 1/2), ``rank_variance`` (``mean (u - 1/2)^2``; uniform: 1/12),
        ``mean_z``, ``variance_z`` (z-scores with the null standard errors ``sqrt(1/(12 M))``
        and ``sqrt(1/(180 M))``), ``ks_statistic``, ``ks_p_value``, and ``p_value``
        (``min(1, 3 min(p_mean, p_variance, p_KS))``). See the module docstring.

    Raises
    ------
    ShapeError
        If there is no rank or ``normalised`` has more than two axes.

    Examples
    --------
    >>> u = (np.arange(200) + 0.5) / 200  # perfectly uniform
    >>> out = uniformity_tests(u)
    >>> round(out["rank_mean"][0], 3), out["p_value"][0]
    (0.5, 1.0)
    """
    u = np.asarray(normalised, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if u.ndim != 2 or u.shape[0] == 0:
        raise ShapeError(f"normalised must be (M,) or (M, K) with M >= 1, got {u.shape}")
    num_obs = u.shape[0]
    mean = u.mean(0)
    sq = ((u - 0.5) ** 2).mean(0)
    mean_z = (mean - 0.5) / (_MEAN_SD / math.sqrt(num_obs))
    var_z = (sq - 1 / 12) / (_SQ_SD / math.sqrt(num_obs))
    ks_stat, ks_p = _ks_uniform(u)
    p_mean = 2 * stats.norm.sf(np.abs(mean_z))
    p_var = 2 * stats.norm.sf(np.abs(var_z))
    p_value = np.minimum(1.0, 3 * np.minimum(np.minimum(p_mean, p_var), ks_p))
    return {
        "rank_mean": mean.tolist(),
        "rank_variance": sq.tolist(),
        "mean_z": mean_z.tolist(),
        "variance_z": var_z.tolist(),
        "ks_statistic": ks_stat.tolist(),
        "ks_p_value": ks_p.tolist(),
        "p_value": p_value.tolist(),
    }


def _ks_uniform(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KS statistic of each column of ``u`` (M, K) against U(0, 1) and its p-value."""
    num_obs = u.shape[0]
    s = np.sort(u, axis=0)
    i = np.arange(1, num_obs + 1)[:, None]
    stat = np.maximum((i / num_obs - s).max(0), (s - (i - 1) / num_obs).max(0))
    p = stats.kstwobign.sf(stat * math.sqrt(num_obs))
    exact = p < 0.2  # exact <= asymptotic; above 0.2 the exact value is above 0.14
    p[exact] = stats.kstwo.sf(stat[exact], num_obs)
    return stat, np.clip(p, 0.0, 1.0)


def _pooled_test(normalised: np.ndarray) -> dict[str, float]:
    """One-sample t-tests of per-observation means of ``u`` and ``(u - 1/2)^2``."""
    per_obs_mean = normalised.mean(1)
    per_obs_sq = ((normalised - 0.5) ** 2).mean(1)
    out = {
        "rank_mean": float(per_obs_mean.mean()),
        "rank_variance": float(per_obs_sq.mean()),
        "mean_t": math.nan,
        "variance_t": math.nan,
        "p_value": math.nan,
    }
    if normalised.shape[0] < 3:  # t-tests need a spread
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        t_mean = stats.ttest_1samp(per_obs_mean, 0.5)
        t_var = stats.ttest_1samp(per_obs_sq, 1 / 12)
    p_values = [float(t_mean.pvalue), float(t_var.pvalue)]
    out["mean_t"], out["variance_t"] = float(t_mean.statistic), float(t_var.statistic)
    if all(math.isfinite(p) for p in p_values):
        out["p_value"] = min(1.0, 2 * min(p_values))
    return out


def _warn_few(num_obs: int, what: str) -> None:
    if num_obs < MIN_OBSERVATIONS:
        warnings.warn(
            f"{what} with {num_obs} held-out observations is weak (uniformity tests need about "
            f"{MIN_OBSERVATIONS} or more); use more held-out pairs",
            stacklevel=3,
        )


def _sbc_summary(ranks: SBCRanks) -> dict[str, Any]:
    num_obs = int(ranks.ranks.shape[0])
    summary: dict[str, Any] = {
        "num_observations": num_obs,
        "num_draws": ranks.num_draws,
        "num_components": int(ranks.ranks.shape[1]),
        "seed": ranks.seed,
        "uniform_mean": 0.5,
        "uniform_variance": 1 / 12,
        "mean_standard_error": _MEAN_SD / math.sqrt(num_obs),
        "variance_standard_error": _SQ_SD / math.sqrt(num_obs),
        "components": uniformity_tests(ranks.normalised),
        "pooled": _pooled_test(ranks.normalised),
        "statistics": {
            name: {k: v[0] for k, v in uniformity_tests(u).items()}
            for name, u in ranks.statistic_normalised.items()
        },
    }
    return summary


def run_sbc(
    x_draws: torch.Tensor,
    x_true: torch.Tensor,
    *,
    statistics: Mapping[str, Statistic] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute SBC rank statistics and uniformity tests of held-out truths among their draws.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Independent posterior draws for ``M`` held-out observations.
    x_true : Tensor, shape (M, *x_shape)
        The true models, drawn from the prior.
    statistics : mapping of str to callable, optional
        Derived scalars, as in :func:`sbc_ranks` (e.g. ``{"misfit": misfit_statistic(...)}``).
    seed : int, default 0
        Seed of the tie breaks and of the randomised normalisation.

    Returns
    -------
    dict
        JSON-ready: ``num_observations``, ``num_draws``, ``num_components`` (``d``), ``seed``,
        the uniform reference values ``uniform_mean`` (1/2) and ``uniform_variance`` (1/12)
        with their null standard errors ``mean_standard_error`` and
        ``variance_standard_error``; ``components``: :func:`uniformity_tests` of the ``d``
        components (lists of length ``d``, C order of ``x_shape``); ``pooled``: the
        per-observation averages over components (``rank_mean``, ``rank_variance``, t-scores
        ``mean_t``, ``variance_t``, ``p_value``; NaN below 3 observations); ``statistics``:
        name -> the tests of that statistic (floats). Definitions in the module docstring.

    Raises
    ------
    ShapeError, DataError, ConfigError
        As :func:`sbc_ranks`.

    Warns
    -----
    UserWarning
        With fewer than :data:`MIN_OBSERVATIONS` held-out observations.

    References
    ----------
    Talts et al. 2018, arXiv:1804.06788.

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> truth, draws = torch.randn(200, 2, generator=gen), torch.randn(50, 200, 2, generator=gen)
    >>> check_sbc(run_sbc(draws, truth))  # truth and draws from the same law: calibrated
    []
    """
    ranks = sbc_ranks(x_draws, x_true, statistics=statistics, seed=seed)
    _warn_few(ranks.ranks.shape[0], "SBC")
    return _sbc_summary(ranks)


def _describe(
    rank_mean: float,
    rank_variance: float,
    mean_se: float,
    variance_se: float,
    statistic: str | None = None,
) -> str:
    """Name the rank shape of one set of ranks: a shift or a wrong spread, whichever is larger.

    ``rank_variance`` is ``mean (u - 1/2)^2``, measured about 1/2, so a shift of the ranks
    raises it too: ranks piled at one end (every truth below its draws) have ``mean (u -
    1/2)^2`` near 1/4, three times 1/12, with no U shape. The spread is therefore judged about
    the ranks' own mean, ``mean (u - ubar)^2 = rank_variance - (rank_mean - 1/2)^2`` (an
    identity), with the same standard error as ``rank_variance`` (to first order under the
    null), and compared with the shift in units of their standard errors.

    Parameters
    ----------
    rank_mean, rank_variance : float
        ``ubar`` and ``mean (u - 1/2)^2`` of the set (uniform: 1/2 and 1/12); for the pooled
        set, their averages over observations.
    mean_se, variance_se : float
        Their standard errors (for the pooled set, those of the t-tests).
    statistic : str, optional
        The derived statistic the ranks are of (``"misfit"``); None: components of ``x``.

    Returns
    -------
    str
        The shape in words: ranks piling in the middle (too wide), U-shaped (too narrow), or
        the truth below / above most draws (biased).
    """
    shift_z = (rank_mean - 0.5) / mean_se if mean_se > 0 else math.nan
    centred = rank_variance - (rank_mean - 0.5) ** 2
    spread_z = (centred - 1 / 12) / variance_se if variance_se > 0 else math.nan
    spread = not abs(shift_z) > abs(spread_z)  # NaN z-scores (no spread): name the spread
    if statistic is not None:
        if spread:
            if spread_z < 0:
                return f"ranks pile in the middle: the draws' {statistic} spreads too widely"
            return f"U-shaped ranks: the draws' {statistic} is too concentrated"
        if shift_z < 0:
            return f"the truth's {statistic} lies below most draws': draws' {statistic} too large"
        return f"the truth's {statistic} lies above most draws': draws' {statistic} too small"
    subject = "posterior"
    if spread:
        if spread_z < 0:
            return f"ranks pile in the middle: {subject} over-dispersed (too wide)"
        return f"U-shaped ranks: {subject} under-dispersed (too narrow)"
    if shift_z < 0:
        return f"truth below most draws: {subject} biased high"
    return f"truth above most draws: {subject} biased low"


def _t_standard_error(difference: float, t_score: float) -> float:
    """Return the standard error ``|difference / t|`` a t-score was computed with (inf if 0)."""
    if not math.isfinite(t_score) or t_score == 0:
        return math.inf
    return abs(difference / t_score)


def _check_false_alarm(false_alarm: float) -> float:
    return as_probability(false_alarm, "false_alarm")


def component_label(index: int, x_shape: tuple[int, ...]) -> str:
    """Name component ``index`` (C order) of an ``x`` of shape ``x_shape``.

    Examples
    --------
    >>> component_label(5, (2, 3)), component_label(5, (8,))
    ('x[1, 2]', 'x[5]')
    """
    if len(x_shape) <= 1:
        return f"x[{index}]"
    return "x[" + ", ".join(str(int(i)) for i in np.unravel_index(index, x_shape)) + "]"


def check_sbc(
    summary: Mapping[str, Any],
    false_alarm: float = 0.01,
    *,
    x_shape: tuple[int, ...] | None = None,
    max_messages: int = 10,
) -> list[str]:
    """Return the failed SBC tests of a :func:`run_sbc` summary (empty: calibrated).

    Parameters
    ----------
    summary : mapping
        Output of :func:`run_sbc`.
    false_alarm : float in (0, 1), default 0.01
        Family-wise probability of a failure for a calibrated posterior: each of the ``K =
        d + (number of statistics) + 1`` sets (components, statistics, pooled) fails when its
        ``p_value < false_alarm / K`` (Bonferroni, valid for correlated components).
    x_shape : tuple of int, optional
        Names components by their index in ``x_shape`` (``x[2, 3]``) instead of the flat index.
    max_messages : int, default 10
        At most this many component messages (the smallest p-values), then one line with the
        count of the others.

    Returns
    -------
    list of str
        One message per failed set, naming it, its rank mean and variance against 1/2 and 1/12,
        its p-value and the rank shape (over-dispersed, under-dispersed, biased).

    Raises
    ------
    ConfigError
        If ``false_alarm`` is not in (0, 1).

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> truth, draws = torch.randn(200, 1, generator=gen), torch.randn(50, 200, 1, generator=gen)
    >>> check_sbc(run_sbc(2 * draws, truth))[0].split(":")[0]  # draws twice too wide
    'x[0]'
    """
    alpha = _check_false_alarm(false_alarm)
    comp = summary["components"]
    statistics = summary.get("statistics", {})
    pooled = summary.get("pooled", {})
    pooled_p = float(pooled.get("p_value", math.nan))
    num_sets = len(comp["p_value"]) + len(statistics) + (1 if math.isfinite(pooled_p) else 0)
    threshold = alpha / max(1, num_sets)
    num_obs = max(1, int(summary.get("num_observations", 1)))
    mean_se = float(summary.get("mean_standard_error", _MEAN_SD / math.sqrt(num_obs)))
    var_se = float(summary.get("variance_standard_error", _SQ_SD / math.sqrt(num_obs)))
    failures: list[str] = []
    bad = [i for i, p in enumerate(comp["p_value"]) if p < threshold]
    bad.sort(key=lambda i: comp["p_value"][i])
    shape = x_shape if x_shape is not None else (len(comp["p_value"]),)
    for i in bad[:max_messages]:
        failures.append(
            f"{component_label(i, shape)}: rank mean {comp['rank_mean'][i]:.3f} (uniform 0.5), "
            f"variance {comp['rank_variance'][i]:.4f} (uniform 0.0833), p = "
            f"{comp['p_value'][i]:.2g} < {threshold:.2g}: "
            f"{_describe(comp['rank_mean'][i], comp['rank_variance'][i], mean_se, var_se)}"
        )
    if len(bad) > max_messages:
        failures.append(
            f"... and {len(bad) - max_messages} more of {len(comp['p_value'])} components"
        )
    for name, test in statistics.items():
        if test["p_value"] < threshold:
            failures.append(
                f"statistic {name!r}: rank mean {test['rank_mean']:.3f} (uniform 0.5), "
                f"variance {test['rank_variance']:.4f} (uniform 0.0833), p = "
                f"{test['p_value']:.2g} < {threshold:.2g}: "
                + _describe(test["rank_mean"], test["rank_variance"], mean_se, var_se, name)
            )
    if math.isfinite(pooled_p) and pooled_p < threshold:
        failures.append(
            f"all components pooled per observation: rank mean {pooled['rank_mean']:.3f}, "
            f"variance {pooled['rank_variance']:.4f}, p = {pooled_p:.2g} < {threshold:.2g}: "
            + _describe(
                pooled["rank_mean"],
                pooled["rank_variance"],
                _t_standard_error(pooled["rank_mean"] - 0.5, pooled["mean_t"]),
                _t_standard_error(pooled["rank_variance"] - 1 / 12, pooled["variance_t"]),
            )
        )
    return failures


def tarp_values(
    x_draws: torch.Tensor,
    x_true: torch.Tensor,
    *,
    seed: int = 0,
    loc: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> np.ndarray:
    """Return the TARP credibility of every truth, normalised as an SBC rank.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Independent posterior draws for ``M`` held-out observations.
    x_true : Tensor, shape (M, *x_shape)
        The true models, drawn from the prior.
    seed : int, default 0
        Seed of the reference points, the tie breaks and the randomised normalisation.
    loc, scale : Tensor, shape x_shape, optional
        Standardisation ``(x - loc) / scale`` before distances, units of ``x``; default the
        mean and standard deviation of all ``S M`` draws pooled (a zero scale counts as 1). Do
        not pass statistics of the truths (module docstring).

    Returns
    -------
    ndarray, shape (M,)
        ``u_i = (r_i + v_i) / (S + 1)`` with ``r_i`` the number of draws closer to the
        reference point than the truth (random ties) and ``v_i ~ U(0, 1)``; uniform on (0, 1)
        for the exact posterior. ``mean(u <= alpha)`` is the expected coverage probability.

    Raises
    ------
    ShapeError
        If the shapes disagree (``loc``/``scale`` not ``x_shape``).
    DataError, ConfigError
        As :func:`sbc_ranks`.

    Notes
    -----
    Lemos et al. 2023, algorithm 2, with references uniform on ``[-sqrt(3), sqrt(3)]^d`` in
    standardised units (see the module docstring).

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> truth, draws = torch.randn(300, 3, generator=gen), torch.randn(50, 300, 3, generator=gen)
    >>> u = tarp_values(draws, truth)
    >>> u.shape, bool(0 < u.min() and u.max() < 1)
    ((300,), True)
    """
    num_draws, num_obs, dim = _check_pair(x_draws, x_true)
    rng = np.random.default_rng(as_seed(seed, optional=False))
    x_shape = tuple(x_true.shape[1:])
    for name, value in (("loc", loc), ("scale", scale)):
        if value is not None and tuple(value.shape) != x_shape:
            raise ShapeError(f"{name} must have shape {x_shape}, got {tuple(value.shape)}")
    draws = x_draws.detach().cpu().reshape(num_draws, num_obs, dim)
    truth = x_true.detach().cpu().reshape(num_obs, dim).double()
    with torch.no_grad():
        centre, spread = _pooled_moments(draws)
        if loc is not None:
            centre = loc.detach().cpu().double().reshape(dim)
        if scale is not None:
            spread = scale.detach().cpu().double().reshape(dim)
        spread = torch.where(
            torch.isfinite(spread) & (spread > 0), spread, torch.ones_like(spread)
        )
        refs = math.sqrt(3.0) * (2 * torch.from_numpy(rng.random((num_obs, dim))) - 1)
        # distances in units of x: |(x - loc) / scale - r|^2 = |(x - c) / scale|^2
        centres = centre + spread * refs  # (M, d)
        weight = spread.pow(-2)
        dist_true = ((truth - centres).pow(2) * weight).sum(-1)  # (M,)
        step = max(1, _CHUNK_ELEMENTS // max(1, num_draws * dim))
        parts = []
        for start in range(0, num_obs, step):
            diff = draws[:, start : start + step].double() - centres[start : start + step]
            parts.append((diff.pow(2) * weight).sum(-1))
        dist_draws = torch.cat(parts, dim=1)  # (S, M)
    less, equal = _counts(dist_draws.unsqueeze(-1), dist_true.unsqueeze(-1))
    _, normalised = _rank_and_normalise(less[:, 0], equal[:, 0], num_draws, rng)
    return normalised


def _pooled_moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd over the first two axes of ``draws`` (S, M, d), float64, in chunks."""
    num_draws, num_obs, dim = draws.shape
    shift = draws[0, 0].double()  # shifted sums avoid cancellation
    total = torch.zeros(dim, dtype=torch.float64)
    squares = torch.zeros(dim, dtype=torch.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, num_draws * dim))
    for start in range(0, num_obs, step):
        block = draws[:, start : start + step].double() - shift
        total += block.sum((0, 1))
        squares += block.pow(2).sum((0, 1))
    n = num_draws * num_obs
    mean = total / n
    if n < 2:
        return mean + shift, torch.ones(dim, dtype=torch.float64)
    var = ((squares - n * mean.pow(2)) / (n - 1)).clamp_min(0.0)
    return mean + shift, var.sqrt()


def _tarp_summary(u: np.ndarray, num_draws: int, seed: int) -> dict[str, Any]:
    num_obs = int(u.shape[0])
    atc = float((1 - np.maximum(u, 0.5)).mean() - 3 / 8)
    atc_se = _ATC_SD / math.sqrt(num_obs)
    atc_z = atc / atc_se
    ks = stats.kstest(u, "uniform")
    p_atc = float(2 * stats.norm.sf(abs(atc_z)))
    return {
        "num_observations": num_obs,
        "num_draws": num_draws,
        "seed": seed,
        "alpha": list(TARP_LEVELS),
        "ecp": [float((u <= a).mean()) for a in TARP_LEVELS],
        "atc": atc,
        "atc_standard_error": atc_se,
        "atc_z": atc_z,
        "max_deviation": float(ks.statistic),
        "ks_p_value": float(ks.pvalue),
        "p_value": min(1.0, 2 * min(p_atc, float(ks.pvalue))),
    }


def run_tarp(
    x_draws: torch.Tensor,
    x_true: torch.Tensor,
    *,
    seed: int = 0,
    loc: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Compute the TARP expected coverage curve of the joint posterior and its summaries.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Independent posterior draws for ``M`` held-out observations.
    x_true : Tensor, shape (M, *x_shape)
        The true models, drawn from the prior.
    seed : int, default 0
        Seed of the reference points and tie breaks.
    loc, scale : Tensor, shape x_shape, optional
        Standardisation of ``x`` (default: the mean and sd of all draws pooled, as
        :func:`tarp_values`; not statistics of the truths, module docstring).

    Returns
    -------
    dict
        JSON-ready: ``num_observations``, ``num_draws``, ``seed``; ``alpha``
        (:data:`TARP_LEVELS`) and ``ecp`` (fraction of truths inside the credibility-``alpha``
        ball around their reference point; calibrated: ``ecp = alpha``); ``atc`` (area between
        the curve and the diagonal for ``alpha >= 1/2``; > 0 too wide, < 0 too narrow) with
        ``atc_standard_error`` and ``atc_z``; ``max_deviation`` (``sup |ECP - alpha|``) with
        its exact KS ``ks_p_value``; ``p_value`` ``min(1, 2 min(p_ATC, p_KS))``.

    Raises
    ------
    ShapeError, DataError, ConfigError
        As :func:`tarp_values`.

    Warns
    -----
    UserWarning
        With fewer than :data:`MIN_OBSERVATIONS` held-out observations.

    References
    ----------
    Lemos et al. 2023, arXiv:2302.03026.

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> truth, draws = torch.randn(300, 3, generator=gen), torch.randn(50, 300, 3, generator=gen)
    >>> check_tarp(run_tarp(draws, truth))
    []
    """
    seed = as_seed(seed, optional=False)  # recorded in the summary as a plain int
    u = tarp_values(x_draws, x_true, seed=seed, loc=loc, scale=scale)
    _warn_few(u.shape[0], "TARP")
    return _tarp_summary(u, int(x_draws.shape[0]), seed)


def check_tarp(summary: Mapping[str, Any], false_alarm: float = 0.01) -> list[str]:
    """Return the failed TARP test of a :func:`run_tarp` summary (empty: calibrated).

    Parameters
    ----------
    summary : mapping
        Output of :func:`run_tarp`.
    false_alarm : float in (0, 1), default 0.01
        Probability of a failure for a calibrated posterior (the summary's ``p_value`` already
        combines the ATC and KS tests).

    Returns
    -------
    list of str
        Empty, or one message with the ATC, the maximum deviation and the p-value, saying
        whether the joint posterior looks too wide or too narrow.

    Raises
    ------
    ConfigError
        If ``false_alarm`` is not in (0, 1).

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(0)
    >>> truth, draws = torch.randn(300, 3, generator=gen), torch.randn(50, 300, 3, generator=gen)
    >>> check_tarp(run_tarp(0.3 * draws, truth))[0].split(":")[0]
    'TARP'
    """
    alpha = _check_false_alarm(false_alarm)
    p_value = float(summary["p_value"])
    if not p_value < alpha:
        return []
    atc = float(summary["atc"])
    kind = "too wide (under-confident)" if atc > 0 else "too narrow or shifted (over-confident)"
    return [
        f"TARP: ATC {atc:+.3f} (0 expected, standard error {summary['atc_standard_error']:.3f}), "
        f"max |ECP - alpha| {summary['max_deviation']:.3f}, p = {p_value:.2g} < {alpha:g}: "
        f"joint posterior {kind}"
    ]


def _extreme_ranks(num_obs: int, num_draws: int) -> np.ndarray:
    """Every truth below every draw: ``M`` normalised ranks at rank 0 (mid tie-break), (M, 1)."""
    return np.full((num_obs, 1), 0.5 / (num_draws + 1))


def _sbc_can_fail(summary: Mapping[str, Any], alpha: float) -> bool:
    """Whether the most extreme ranks fail one component's test at :func:`check_sbc`'s threshold.

    When they do not, no posterior can fail the verdict with this many observations.
    """
    num_sets = summary["num_components"] + len(summary.get("statistics", {}))
    num_sets += 1 if math.isfinite(summary.get("pooled", {}).get("p_value", math.nan)) else 0
    extreme = _extreme_ranks(summary["num_observations"], summary["num_draws"])
    return bool(uniformity_tests(extreme)["p_value"][0] < alpha / max(1, num_sets))


def _tarp_can_fail(num_obs: int, num_draws: int, alpha: float) -> bool:
    """Whether every truth outside its draws would fail :func:`check_tarp`."""
    u = 1.0 - _extreme_ranks(num_obs, num_draws)[:, 0]
    return bool(_tarp_summary(u, num_draws, 0)["p_value"] < alpha)


def run_calibration(
    x_draws: torch.Tensor,
    x_true: torch.Tensor,
    *,
    y_obs: torch.Tensor | None = None,
    problem: Problem | None = None,
    seed: int = 0,
    false_alarm: float = 0.01,
) -> dict[str, Any]:
    """Run SBC (components, and the misfit with a forward operator) and TARP, with verdicts.

    The entry point of ``ppl-cvae evaluate``: unlike :func:`run_sbc` and :func:`run_tarp` it
    does not warn about few observations but says so in the result, and it reports non-finite
    draws instead of raising.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Independent posterior draws for ``M`` held-out observations.
    x_true : Tensor, shape (M, *x_shape)
        The true models.
    y_obs : Tensor, shape (M, *y_shape), optional
        The observations; with ``problem`` the misfit (:func:`misfit_statistic`) is ranked too.
    problem : Problem, optional
        Forward operator and noise model.
    seed : int, default 0
        Seed of the tie breaks, normalisation and TARP references.
    false_alarm : float in (0, 1), default 0.01
        False-alarm probability of each verdict (SBC family-wise; TARP).

    Returns
    -------
    dict
        JSON-ready: ``false_alarm``; ``sbc``: :func:`run_sbc` plus ``failures``
        (:func:`check_sbc`) and ``judged``; ``tarp``: :func:`run_tarp` plus ``failures``
        (:func:`check_tarp`) and ``judged``; ``notes``: list of str (few observations; a
        verdict not judged; non-finite draws, in which case ``sbc`` and ``tarp`` are absent).
        ``judged`` is False when even every truth outside its draws (all ranks 0, ties broken
        in the middle) would pass: with so few observations the verdict fails even the worst
        posterior less than half the time, so a pass says nothing. A verdict that failed is
        judged.

    Raises
    ------
    ShapeError, ConfigError
        As :func:`sbc_ranks`, or for a bad ``false_alarm``.

    Examples
    --------
    >>> gen = torch.Generator().manual_seed(1)
    >>> truth, draws = torch.randn(200, 2, generator=gen), torch.randn(50, 200, 2, generator=gen)
    >>> out = run_calibration(draws, truth)
    >>> out["sbc"]["failures"], out["tarp"]["failures"], out["notes"]
    ([], [], [])
    """
    alpha = _check_false_alarm(false_alarm)
    seed = as_seed(seed, optional=False)  # also when the draws end the run early
    out: dict[str, Any] = {"false_alarm": alpha, "notes": []}
    num_obs = int(x_true.shape[0]) if x_true.dim() > 0 else 0
    if not (bool(torch.isfinite(x_draws).all()) and bool(torch.isfinite(x_true).all())):
        out["notes"].append("draws or truths hold NaN or infinite values: no SBC or TARP")
        return out
    if num_obs < MIN_OBSERVATIONS:
        out["notes"].append(
            f"{num_obs} held-out observations: SBC and TARP have little power below "
            f"{MIN_OBSERVATIONS}"
        )
    statistics = {}
    if problem is not None and y_obs is not None:
        statistics["misfit"] = misfit_statistic(problem, y_obs)
    try:
        ranks = sbc_ranks(x_draws, x_true, statistics=statistics, seed=seed)
    except DataError as exc:  # a forward operator that overflows on some draws
        out["notes"].append(f"{exc}: the misfit is left out of SBC")
        ranks = sbc_ranks(x_draws, x_true, seed=seed)
    sbc = _sbc_summary(ranks)
    sbc["failures"] = check_sbc(sbc, alpha, x_shape=ranks.x_shape)
    sbc["judged"] = _sbc_can_fail(sbc, alpha) or bool(sbc["failures"])
    u = tarp_values(x_draws, x_true, seed=seed)
    tarp = _tarp_summary(u, ranks.num_draws, seed)
    tarp["failures"] = check_tarp(tarp, alpha)
    tarp["judged"] = _tarp_can_fail(num_obs, ranks.num_draws, alpha) or bool(tarp["failures"])
    for name, verdict in (("SBC", sbc), ("TARP", tarp)):
        if not verdict["judged"]:
            out["notes"].append(
                f"{name} not judged: with {num_obs} held-out observations it fails even "
                "draws that miss every truth less than half the time"
            )
    out["sbc"], out["tarp"] = sbc, tarp
    return out
