"""Held-out evaluation pipeline of ``ppl-cvae evaluate``: draw, compute, write metrics and plots.

``evaluate_model`` draws posterior samples from a trained model for held-out ``(x, y)`` pairs,
adds the exact posterior where one exists and computes the metrics of
:func:`inference.diagnostics.coverage.run_evaluation` (whose module docstring lists the keys)
and the ``calibration`` checks: simulation-based calibration of every component and of the
data misfit, TARP of the joint posterior
(:func:`inference.diagnostics.calibration.run_calibration`) and the coverage verdict with a
tolerance from the number of held-out observations
(:func:`inference.diagnostics.coverage.coverage_verdict`). ``write_evaluation`` writes
``metrics.json``, ``coverage.png``, ``truth_vs_mean.png``, ``sbc_ecdf.png`` and ``tarp.png``.
The CLI and the examples share both. Plotting is imported when writing, not with this module.

The ``calibration`` key of the metrics
--------------------------------------
``false_alarm``
    Probability that each verdict fails a calibrated posterior (default 0.01).
``coverage``
    :func:`~inference.diagnostics.coverage.coverage_verdict`: observed, expected (with ``S``
    draws), standard error and tolerance of ``coverage_50``/``coverage_90``, and ``failures``.
``misfit``
    With a forward operator: :func:`~inference.diagnostics.coverage.misfit_verdict`, the
    count of observations whose draws misfit their data beyond the noise model against the
    binomial count a calibrated posterior reaches, and its ``failures``.
``sbc``
    :func:`~inference.diagnostics.calibration.run_sbc` (per-component rank tests, the pooled
    test and, with a forward operator, ``statistics["misfit"]``: the rank of the truth's
    chi-squared misfit per datum among the draws') and its ``failures``.
``tarp``
    :func:`~inference.diagnostics.calibration.run_tarp` (``alpha``, ``ecp``, ``atc``,
    ``max_deviation``, ``p_value``) and its ``failures``.
``training_range``
    For a model fitted on pairs alone (given ``x_range``):
    :func:`~inference.training_range.training_range_verdict`, whether the draws leave the
    range of the training ``x`` more often than the held-out truths do (``draws_outside``,
    ``truths_outside``, ``p_value``) and its ``failures``: draws that leak beyond a bounded
    prior's support, which coverage, SBC and TARP can pass.
``finite``
    Only when some draws are NaN or infinite: its ``failures`` say how many values and which
    observations; the coverage verdict is then not judged, and there is no SBC or TARP.
``notes``
    Why a check is weak or missing (fewer than 100 held-out pairs; non-finite draws; no
    forward operator, so no misfit check, with the posterior contraction that remains to
    tell draws that learned from ``y`` from the prior's).
``passed``
    Whether no verdict failed. Each verdict also has ``judged``: False when it could not fail
    with so few held-out pairs (``ppl-cvae evaluate`` then prints "not judged", not "passed").

The ``training_range`` key of the metrics
-----------------------------------------
For a model fitted on pairs alone (:attr:`CVAE.training_x_range
<ppl_cvae.models.cvae.CVAE.training_x_range>`): ``draws_outside`` (the fraction of all drawn
values outside the training range of ``x``), ``draws_outside_max`` (the largest fraction of
one observation) and ``truths_outside`` (the fraction of the held-out truths' values outside
it). Held-out pairs from the training prior put about ``2 / (N + 1)`` of their values outside
the range of ``N`` training pairs, and so do the draws of a correct posterior, on average over
the pairs (:mod:`inference.training_range`); draws far above the truths leak beyond the data.

``metrics.json`` is strict JSON (RFC 8259): a metric that is NaN or infinite is written as
``null``, and the key ``not_finite`` lists each such metric with its value and why
(:func:`not_finite_metrics`; e.g. the TARP variance over a single held-out pair).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from inference.diagnostics.calibration import (
    component_label,
    misfit_statistic,
    run_calibration,
    sbc_ranks,
    tarp_values,
)
from inference.diagnostics.coverage import (
    central_coverage,
    coverage_verdict,
    misfit_verdict,
    run_evaluation,
)
from inference.diagnostics.facies import run_facies_evaluation
from inference.exact import ExactPosterior, exact_posterior
from inference.posterior import draw_posterior
from inference.training_range import outside_training_range, training_range_verdict
from ppl_cvae._atomic import atomic_path
from ppl_cvae._json import dumps_strict, finite_or_null
from ppl_cvae.checks import (
    as_count,
    as_probability,
    as_real_tensor,
    as_seed,
    check_finite,
    derived_seed,
    shape_text,
)
from ppl_cvae.errors import DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.metadata import linear_gaussian_parts, units_of

__all__ = ["evaluate_draws", "evaluate_model", "not_finite_metrics", "write_evaluation"]

VERDICTS = ("finite", "coverage", "misfit", "sbc", "tarp", "training_range")
"""Keys of ``metrics["calibration"]`` that hold a verdict (``failures``, ``judged``)."""


def evaluate_model(
    cvae: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    problem: Problem | None = None,
    num_samples: int = 200,
    seed: int = 0,
    chunk: int = 64,
    false_alarm: float = 0.01,
) -> tuple[dict[str, Any], torch.Tensor, ExactPosterior | None]:
    """Draw posterior samples for held-out pairs and compute :func:`run_evaluation` metrics.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model.
    x : Tensor, shape (M, *x_shape)
        True models of the held-out pairs.
    y : Tensor, shape (M, *y_shape)
        Their observations.
    problem : Problem, optional
        Forward operator and noise model (chi-squared misfit); with ``linear_gaussian()`` also
        the exact posterior, compared in ``metrics["exact"]``.
    num_samples : int, default 200
        Draws per pair; with a ``problem`` whose prior restricts its support, draws inside
        it only (:func:`~inference.posterior.draw_posterior`, ``within_support``), as
        ``ppl-cvae sample`` keeps them.
    seed : int, default 0
        Seed of the draws, in ``[0, 2**32 - 1]``; chunk ``k`` (observations ``k*chunk ...``)
        uses ``derived_seed(seed, k*chunk)`` (``seed + k*chunk``, wrapped below ``2**32``).
    chunk : int, default 64
        Observations drawn at once (bounds memory at ``num_samples * chunk`` models).
    false_alarm : float in (0, 1), default 0.01
        Probability that each calibration verdict (coverage, SBC, TARP) fails a calibrated
        posterior.

    Returns
    -------
    metrics : dict
        See the module docstring (``calibration``: SBC, TARP and the coverage verdict, seeded
        with ``seed``); for a facies decoder (``likelihood`` ``"bernoulli"`` or
        ``"categorical"``) also ``"facies"``: the accuracy of the posterior mode and the
        reliability curve of the posterior facies probabilities against ``x``
        (:func:`inference.diagnostics.facies.run_facies_evaluation`). The probabilities are
        the mean over draws of the decoder's ``P(x = 1 | z, y)`` (Bernoulli) or the class
        frequencies of the draws (categorical). For a model fitted on pairs alone also
        ``"training_range"`` (module docstring).
    x_draws : Tensor, shape (num_samples, M, *x_shape)
    exact : ExactPosterior or None
        The exact posterior of the ``M`` observations, when the problem has one.

    Raises
    ------
    ConfigError
        If ``false_alarm`` is not in (0, 1), ``num_samples`` or ``chunk`` is not an int >= 1,
        or ``seed`` not an int in ``[0, 2**32 - 1]``.
    ShapeError
        If ``x`` and ``y`` disagree with the model or each other.
    DataError
        If ``x`` or ``y`` is not a tensor, array or list of real numbers (NumPy arrays and
        lists are cast to float32), or ``y`` holds NaN or inf.

    References
    ----------
    Talts et al. 2018, arXiv:1804.06788 (SBC); Lemos et al. 2023, arXiv:2302.03026 (TARP).
    """
    x = as_real_tensor(x, "x")
    y = as_real_tensor(y, "y")
    cvae.check_inputs(y, x)  # event shapes of the model, one y per x
    num_samples = as_count(num_samples, "num_samples")
    chunk = as_count(chunk, "chunk")
    seed = as_seed(seed, optional=False)
    parts, probs = [], []
    likelihood = cvae.config.likelihood
    for start in range(0, y.shape[0], chunk):
        draws = draw_posterior(  # kept inside the prior's support, as ppl-cvae sample keeps them
            cvae,
            y[start : start + chunk],
            num_samples,
            problem=problem,
            seed=derived_seed(seed, start),
            predictive=False,
        )
        parts.append(draws.x.cpu())
        if likelihood == "bernoulli" and draws.x_mean is not None:  # P(x = 1 | y), per cell
            probs.append(draws.x_mean.double().mean(0).cpu())
        elif likelihood == "categorical":  # class frequencies of the draws, (chunk, *x, K)
            one_hot = torch.nn.functional.one_hot(draws.x.long(), cvae.config.num_facies)
            probs.append(one_hot.double().mean(0).cpu())
    x_draws = torch.cat(parts, dim=1)
    exact = None
    if problem is not None and linear_gaussian_parts(problem) is not None:
        try:
            exact = exact_posterior(problem, y)
        except DataError as err:  # noise-free data: no closed form to compare with
            warnings.warn(f"no comparison with the exact posterior: {err}", stacklevel=2)
    metrics = evaluate_draws(
        x_draws,
        x,
        y,
        x_reference=cvae.x_location_scale()[0].detach().cpu(),
        problem=problem,
        exact=exact,
        seed=seed,
        false_alarm=false_alarm,
        x_range=cvae.training_x_range,
    )
    if probs:
        metrics["facies"] = run_facies_evaluation(torch.cat(probs), x)
    outside = outside_training_range(cvae, x_draws)
    truths = outside_training_range(cvae, x.unsqueeze(0))
    if outside is not None and truths is not None:
        metrics["training_range"] = {
            "draws_outside": float(outside[0].mean()),
            "draws_outside_max": float(outside[0].max()),
            "truths_outside": float(truths[0].mean()),
        }
    return metrics, x_draws, exact


def evaluate_draws(
    x_draws: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_reference: torch.Tensor,
    problem: Problem | None = None,
    exact: ExactPosterior | None = None,
    seed: int = 0,
    false_alarm: float = 0.01,
    x_range: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Compute the metrics of :func:`evaluate_model` from posterior draws of any sampler.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Independent posterior draws for the ``M`` held-out pairs, units of ``x``.
    x : Tensor, shape (M, *x_shape)
        True models of the held-out pairs (drawn from the prior).
    y : Tensor, shape (M, *y_shape)
        Their observations.
    x_reference : Tensor, shape x_shape
        The prior's constant guess (training mean of ``x``) for ``rmse_prior_mean``.
    problem : Problem, optional
        Forward operator and noise model: chi-squared misfit and its SBC rank.
    exact : ExactPosterior, optional
        The exact posterior of the ``M`` observations, compared in ``metrics["exact"]``.
    seed : int, default 0
        Seed of the SBC tie breaks and the TARP reference points.
    false_alarm : float in (0, 1), default 0.01
        Probability that each calibration verdict fails a calibrated posterior.
    x_range : (Tensor, Tensor), optional
        The elementwise range ``(low, high)`` of the training ``x`` of a model fitted on pairs
        alone (:attr:`CVAE.training_x_range <ppl_cvae.models.cvae.CVAE.training_x_range>`):
        adds the ``training_range`` verdict
        (:func:`~inference.training_range.training_range_verdict`).

    Returns
    -------
    dict
        JSON-ready: :func:`inference.diagnostics.coverage.run_evaluation` plus
        ``calibration`` (module docstring).

    Raises
    ------
    ShapeError
        If the shapes disagree: ``x_draws`` not ``(S, *x.shape)``, ``y`` not one observation
        per truth, ``x_reference`` not ``x_shape``, or ``x``, ``y`` not the problem's shapes,
        or fewer than 2 draws per truth (a central interval of one draw has no width, and
        the coverage a calibrated posterior reaches with ``S`` draws, ``alpha (S - 1) / (S +
        1)``, is 0).
    DataError
        If an input is not an array of real numbers (tensors, NumPy arrays and lists are
        accepted), or ``x``, ``y`` or ``x_reference`` holds NaN or inf. Non-finite draws are
        accepted and fail: ``calibration["finite"]["failures"]`` names how many values and
        which observations, ``calibration["passed"]`` is False, and no coverage, SBC or TARP
        verdict is given (``calibration.notes``).
    ConfigError
        If ``false_alarm`` is not a number in (0, 1), or ``seed`` not an int in
        ``[0, 2**32 - 1]``.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> problem = LinearGaussian(x_dim=2, y_dim=2)
    >>> x, y = problem.simulate(200, torch.Generator().manual_seed(0))
    >>> exact = exact_posterior(problem, y)
    >>> draws = exact.sample(100, torch.Generator().manual_seed(1))
    >>> metrics = evaluate_draws(draws, x, y, x_reference=torch.zeros(2), problem=problem)
    >>> metrics["calibration"]["passed"]
    True
    """
    x_draws = as_real_tensor(x_draws, "x_draws", dtype=None)
    x = check_finite(as_real_tensor(x, "x", dtype=None), "x")
    y = check_finite(as_real_tensor(y, "y", dtype=None), "y")
    x_reference = check_finite(as_real_tensor(x_reference, "x_reference", dtype=None),
                               "x_reference")
    if problem is not None:
        for name, value, shape in (("x", x, problem.x_shape), ("y", y, problem.y_shape)):
            if tuple(value.shape[1:]) != tuple(shape):
                raise ShapeError(
                    f"{name} must have shape {shape_text('M', shape)} for problem "
                    f"{getattr(problem, 'name', '?')!r}, got {tuple(value.shape)}"
                )
    if x.dim() < 1 or x_draws.dim() != x.dim() + 1 or x_draws.shape[1:] != x.shape:
        raise ShapeError(
            f"x_draws must have shape (S, *x shape) = (S, {', '.join(map(str, x.shape))}): S "
            f"draws of each of the M = {len(x) if x.dim() else 0} truths, got "
            f"{tuple(x_draws.shape)}"
        )
    if x_draws.shape[0] < 2:
        raise ShapeError(
            f"x_draws must hold at least 2 draws of each truth for the coverage and calibration "
            f"verdicts, got {x_draws.shape[0]} (shape {tuple(x_draws.shape)})"
        )
    if y.dim() < 1 or len(y) != len(x):
        raise ShapeError(
            f"y must have shape (M, *y_shape) with M = {len(x)} (one observation per truth in "
            f"x), got {tuple(y.shape)}"
        )
    seed = as_seed(seed, optional=False)
    false_alarm = as_probability(false_alarm, "false_alarm")
    metrics = run_evaluation(
        x_draws,
        x,
        x_reference=x_reference,
        y_obs=y,
        problem=problem,
        exact_mean=exact.mean if exact is not None else None,
        exact_std=exact.std if exact is not None else None,
    )
    calibration = run_calibration(
        x_draws, x, y_obs=y, problem=problem, seed=seed, false_alarm=false_alarm
    )
    calibration["coverage"] = coverage_verdict(metrics, false_alarm)
    if "misfit_outside" in metrics:
        calibration["misfit"] = misfit_verdict(metrics, false_alarm)
    bad = ~torch.isfinite(x_draws)
    if bool(bad.any()):  # no verdict on the coverage of such draws: they fail as they are
        observations = bad.reshape(bad.shape[0], bad.shape[1], -1).any(2).any(0)
        where = observations.nonzero().flatten().tolist()
        calibration["finite"] = {
            "failures": [
                f"{int(bad.sum())} of {bad.numel()} draw values are NaN or infinite, in "
                f"{len(where)} of {len(x)} observations (first: {where[:5]}): the sampler "
                "failed there"
            ],
            "judged": True,
        }
        calibration["coverage"]["failures"] = []
        calibration["coverage"]["judged"] = False
        calibration["notes"].append("non-finite draws: no coverage verdict")
    if problem is None:
        calibration["notes"].append(
            "no forward operator, so no misfit check: coverage, SBC and TARP also pass draws "
            "that ignore y (the prior is calibrated); posterior contraction "
            f"{metrics['posterior_contraction']:.3f} (0: as wide as the prior) and the RMSE "
            f"ratio {metrics['rmse_ratio']:.3f} (1: no better than the prior mean) say how much "
            "the draws learned from y; give the problem (--problem) to check their fit to the data"
        )
    if x_range is not None:
        calibration["training_range"] = training_range_verdict(
            x_draws, x, x_range, false_alarm=false_alarm, seed=seed
        )
    calibration["passed"] = not any(
        calibration[key]["failures"] for key in VERDICTS if key in calibration
    )
    metrics["calibration"] = calibration
    return metrics


def not_finite_metrics(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """List the metrics that are NaN or infinite, each with its value and why.

    Parameters
    ----------
    metrics : mapping
        Output of :func:`evaluate_model` or :func:`evaluate_draws` (nested, JSON-ready).

    Returns
    -------
    list of dict
        One ``{"metric", "value", "why"}`` per non-finite float, in document order:
        ``metric`` is its dotted path (``"calibration.tarp.p_value"``), ``value`` is
        ``"NaN"``, ``"+inf"`` or ``"-inf"``, ``why`` the likely cause. Empty when all are
        finite.

    Examples
    --------
    >>> not_finite_metrics({"num_observations": 1, "tarp": {"variance_t": float("nan")}})
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'metric': 'tarp.variance_t', 'value': 'NaN',
      'why': 'undefined for 1 held-out pair (a spread or a test needs at least 2)'}]
    """
    _, found = finite_or_null(metrics)
    num = metrics.get("num_observations")
    out = []
    for path, word in found:
        if word == "NaN" and isinstance(num, int) and num < 2:
            why = f"undefined for {num} held-out pair (a spread or a test needs at least 2)"
        elif word == "NaN":
            why = (
                "undefined: a statistic of draws or held-out values that are constant or not "
                "finite (0/0)"
            )
        else:
            why = (
                "overflow or division by zero: draws, their forward predictions or the "
                "reference error are too large or zero"
            )
        out.append({"metric": path, "value": word, "why": why})
    return out


def write_evaluation(
    out_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    x_true: torch.Tensor,
    x_draws: torch.Tensor,
    *,
    exact: ExactPosterior | None = None,
    problem: Problem | None = None,
    seed: int = 0,
    y_obs: torch.Tensor | None = None,
    max_rank_panels: int = 8,
    x_unit: str | None = None,
) -> list[Path]:
    """Write ``metrics.json`` and the coverage, truth, SBC and TARP plots into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Existing folder.
    metrics : mapping
        Output of :func:`evaluate_model` (plus any JSON-ready extras). Written as strict
        JSON: non-finite values become ``null`` and are listed under ``not_finite``
        (:func:`not_finite_metrics`).
    x_true : Tensor, shape (M, *x_shape)
    x_draws : Tensor, shape (S, M, *x_shape)
    exact : ExactPosterior, optional
        Drawn ``S`` times (seed ``seed``) for the dashed exact coverage curve.
    problem : Problem, optional
        Supplies the unit of ``x`` for the axis labels; with ``y_obs`` the misfit panel of the
        SBC plot.
    y_obs : Tensor, shape (M, *y_shape), optional
        The held-out observations (for the misfit ranks).
    max_rank_panels : int, default 8
        Components shown in ``sbc_ecdf.png``: all when there are no more, else the two with the
        smallest p-values and evenly spaced others.
    x_unit : str, optional
        Unit of ``x`` for the axis labels of ``truth_vs_mean.png``; default the problem's (none
        without a problem). ``ppl-cvae evaluate`` passes a data file's ``units`` of ``x``
        (:attr:`CVAE.data_layout <ppl_cvae.models.cvae.CVAE.data_layout>`).

    Returns
    -------
    list of Path
        The files written (each atomically): ``metrics.json``, ``coverage.png``,
        ``truth_vs_mean.png`` and, when ``metrics["calibration"]`` holds SBC and TARP results,
        ``sbc_ecdf.png`` (ECDF-difference plots of the normalised ranks with 99% simultaneous
        bands) and ``tarp.png`` (expected coverage against credibility). The ranks are
        recomputed from ``x_draws`` with the seed recorded in the metrics, so they are the
        ones the metrics describe.

    Raises
    ------
    ConfigError
        If ``seed`` is not an int in ``[0, 2**32 - 1]`` (checked before anything is written).
    """
    from inference.plots import plot_coverage, plot_rank_ecdf, plot_tarp, plot_truth_vs_mean

    seed = as_seed(seed, optional=False)
    out = Path(out_dir)
    document, _ = finite_or_null(metrics)
    not_finite = not_finite_metrics(metrics)
    if not_finite:
        document["not_finite"] = not_finite
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(dumps_strict(document, indent=2))
    curve = metrics["coverage_curve"]
    reference = None
    if exact is not None:
        ref_draws = exact.sample(x_draws.shape[0], torch.Generator().manual_seed(seed))
        reference = central_coverage(ref_draws, x_true, curve["nominal"])
    written = [
        out / "metrics.json",
        plot_coverage(
            curve["nominal"],
            curve["empirical"],
            out / "coverage.png",
            num_observations=int(metrics["num_observations"]),
            reference=reference,
        ),
        plot_truth_vs_mean(
            x_true.numpy(),
            x_draws.mean(0).numpy(),
            x_draws.std(0).numpy(),
            out / "truth_vs_mean.png",
            unit=units_of(problem).get("x", "") if x_unit is None else x_unit,
        ),
    ]
    calibration = metrics.get("calibration", {})
    if "sbc" in calibration and "tarp" in calibration:
        sbc = calibration["sbc"]
        statistics = {}
        if problem is not None and y_obs is not None and "misfit" in sbc["statistics"]:
            statistics["misfit"] = misfit_statistic(problem, y_obs)
        ranks = sbc_ranks(x_draws, x_true, statistics=statistics, seed=int(sbc["seed"]))
        p_values = sbc["components"]["p_value"]
        panels = {}
        for i in _rank_panels(p_values, max_rank_panels):
            panels[f"{component_label(i, ranks.x_shape)}  p = {p_values[i]:.2g}"] = (
                ranks.normalised[:, i]
            )
        for name, u in ranks.statistic_normalised.items():
            panels[f"{name}  p = {sbc['statistics'][name]['p_value']:.2g}"] = u
        written.append(plot_rank_ecdf(panels, out / "sbc_ecdf.png"))
        tarp = calibration["tarp"]
        u = tarp_values(x_draws, x_true, seed=int(tarp["seed"]))
        written.append(plot_tarp(u, out / "tarp.png"))
    return written


def _rank_panels(p_values: list[float], max_panels: int) -> list[int]:
    """Pick component indices to plot: all, or the two smallest p-values and evenly spaced."""
    num = len(p_values)
    if num <= max_panels:
        return list(range(num))
    worst = sorted(range(num), key=lambda i: p_values[i])[: min(2, max_panels)]
    chosen = set(worst)
    for i in torch.linspace(0, num - 1, max_panels).round().long().tolist():
        if len(chosen) >= max_panels:
            break
        chosen.add(int(i))
    return sorted(chosen)
