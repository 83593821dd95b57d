"""Facies posteriors: reliability of facies probabilities and accuracy of the posterior mode.

For discrete geology (a facies indicator ``x`` in {0, 1}, or codes ``0 .. K-1``) the posterior
of every cell is a probability vector; these functions score it against held-out true facies.
``run_reliability`` computes and ``check_reliability`` gives the verdict, as the other
diagnostics here; nothing draws or writes files.

Definitions
-----------
Reliability (calibration) curve of probabilities ``p_i`` of an event with outcomes
``o_i`` in {0, 1} (Murphy and Winkler 1977; DeGroot and Fienberg 1983): the predictions are
binned by value (``num_bins`` equal bins of [0, 1]); in bin ``b`` with ``n_b`` predictions the
mean prediction ``pbar_b`` is compared with the observed frequency ``obar_b = mean(o_i)``. A
calibrated predictor has ``obar_b = pbar_b`` up to the binomial standard error
``sqrt(pbar_b (1 - pbar_b) / n_b)`` (larger when the outcomes in a bin are correlated, as
neighbouring cells of one field are). ``max_deviation`` is ``max_b |obar_b - pbar_b|`` over the
bins with at least ``min_count`` predictions; ``expected_calibration_error`` is the
``n_b``-weighted mean of ``|obar_b - pbar_b|`` over all bins (Naeini et al. 2015).

Accuracy of the posterior mode: the fraction of cells whose most probable facies (per-cell
argmax of the posterior facies probabilities; for two facies ``p > 1/2``, ties to facies 0)
equals the true facies.

References
----------
Murphy, A. H. and Winkler, R. L. (1977). Reliability of subjective probability forecasts of
precipitation and temperature. Applied Statistics 26(1), 41-47. doi:10.2307/2346866
DeGroot, M. H. and Fienberg, S. E. (1983). The comparison and evaluation of forecasters.
The Statistician 32, 12-22. doi:10.2307/2987588
Naeini, M. P., Cooper, G. F. and Hauskrecht, M. (2015). Obtaining well calibrated
probabilities using Bayesian binning. AAAI 2015, 2901-2907.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from ppl_cvae.errors import ConfigError, ShapeError

__all__ = ["check_reliability", "mode_accuracy", "run_facies_evaluation", "run_reliability"]


def run_reliability(
    prob: torch.Tensor,
    outcome: torch.Tensor,
    *,
    num_bins: int = 10,
    min_count: int = 500,
) -> dict[str, Any]:
    """Bin predicted probabilities and compare each bin's mean with the observed frequency.

    Parameters
    ----------
    prob : Tensor, any shape
        Predicted probabilities of an event, in [0, 1] (e.g. posterior probability of channel
        facies per cell, ``(M, nz, nx)``).
    outcome : Tensor, shape of ``prob``
        Whether the event happened: 0 or 1 (e.g. the true facies indicator).
    num_bins : int, default 10
        Equal-width bins of [0, 1]; the last bin includes 1.
    min_count : int, default 500
        Bins with fewer predictions are reported but left out of ``max_deviation`` (with 500
        independent outcomes the binomial standard error is at most 0.022).

    Returns
    -------
    dict
        JSON-ready: ``bin_lower``, ``bin_upper``, ``mean_predicted``, ``observed_frequency``
        (NaN for an empty bin), ``count`` (one entry per bin); ``max_deviation`` (NaN when no
        bin has ``min_count`` predictions, and then ``max_deviation_not_judged`` says so),
        ``expected_calibration_error``, ``num_predictions``, ``min_count``. Definitions in the
        module docstring.

    Raises
    ------
    ShapeError
        If ``prob`` and ``outcome`` differ in shape or are empty.
    ConfigError
        If ``num_bins`` or ``min_count`` is not a positive integer, ``prob`` leaves [0, 1] or
        holds NaN, or ``outcome`` holds anything but 0 and 1.

    Examples
    --------
    >>> p = torch.tensor([0.05, 0.05, 0.95, 0.95])
    >>> curve = run_reliability(p, torch.tensor([0.0, 0.0, 1.0, 1.0]), num_bins=2, min_count=1)
    >>> curve["observed_frequency"], round(curve["max_deviation"], 2)
    ([0.0, 1.0], 0.05)
    """
    if tuple(prob.shape) != tuple(outcome.shape) or prob.numel() == 0:
        raise ShapeError(
            f"prob {tuple(prob.shape)} and outcome {tuple(outcome.shape)} must have the same "
            "non-empty shape"
        )
    for name, value in (("num_bins", num_bins), ("min_count", min_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    p = prob.detach().double().flatten().cpu()
    o = outcome.detach().double().flatten().cpu()
    if torch.isnan(p).any() or bool((p < 0).any()) or bool((p > 1).any()):
        raise ConfigError(
            f"prob must hold probabilities in [0, 1], got values in [{float(p.min())}, "
            f"{float(p.max())}]"
        )
    if not bool(((o == 0) | (o == 1)).all()):
        raise ConfigError("outcome must hold only 0 and 1 (whether the event happened)")
    index = (p * num_bins).long().clamp(max=num_bins - 1)  # p = 1 into the last bin
    count = torch.bincount(index, minlength=num_bins).double()
    sum_p = torch.bincount(index, weights=p, minlength=num_bins)
    sum_o = torch.bincount(index, weights=o, minlength=num_bins)
    safe = count.clamp_min(1)
    mean_p = torch.where(count > 0, sum_p / safe, torch.full_like(count, math.nan))
    freq = torch.where(count > 0, sum_o / safe, torch.full_like(count, math.nan))
    gap = (freq - mean_p).abs()
    enough = count >= min_count
    max_dev = float(gap[enough].max()) if bool(enough.any()) else math.nan
    ece = float((count * torch.nan_to_num(gap)).sum() / count.sum())
    result = {
        "bin_lower": [b / num_bins for b in range(num_bins)],
        "bin_upper": [(b + 1) / num_bins for b in range(num_bins)],
        "mean_predicted": mean_p.tolist(),
        "observed_frequency": freq.tolist(),
        "count": [int(c) for c in count.tolist()],
        "max_deviation": max_dev,
        "expected_calibration_error": ece,
        "num_predictions": int(p.numel()),
        "min_count": min_count,
    }
    if not bool(enough.any()):  # say why there is no figure, beside the null it becomes
        result["max_deviation_not_judged"] = (
            f"no bin holds {min_count} predictions (the largest {int(count.max())} of "
            f"{int(p.numel())}): too few cells or draws to judge the curve"
        )
    return result


def check_reliability(curve: dict[str, Any], tolerance: float = 0.05) -> list[str]:
    """Return the failed bins of a :func:`run_reliability` (empty: calibrated within tolerance).

    Parameters
    ----------
    curve : dict
        Output of :func:`run_reliability`.
    tolerance : float, default 0.05
        Largest allowed ``|observed frequency - mean predicted|`` in a bin with at least
        ``min_count`` predictions.

    Returns
    -------
    list of str
        One message per bin outside the tolerance, saying whether the predictions there are
        over- or under-confident; a warning (``UserWarning``) when no bin has enough
        predictions to judge.

    Examples
    --------
    >>> p = torch.tensor([0.25] * 8)
    >>> check_reliability(run_reliability(p, torch.tensor([1.0] * 8), min_count=4))
    ['bin [0.2, 0.3): predicted 0.250, observed 1.000 (deviation 0.750 > 0.05)']
    """
    failures = []
    judged = 0
    for b, count in enumerate(curve["count"]):
        if count < curve["min_count"]:
            continue
        judged += 1
        predicted, observed = curve["mean_predicted"][b], curve["observed_frequency"][b]
        if abs(observed - predicted) > tolerance:
            failures.append(
                f"bin [{curve['bin_lower'][b]:.1f}, {curve['bin_upper'][b]:.1f}): predicted "
                f"{predicted:.3f}, observed {observed:.3f} (deviation "
                f"{abs(observed - predicted):.3f} > {tolerance:g})"
            )
    if judged == 0:
        warnings.warn(
            f"no bin holds {curve['min_count']} predictions; the reliability cannot be judged",
            stacklevel=2,
        )
    return failures


def mode_accuracy(prob: torch.Tensor, truth: torch.Tensor) -> float:
    """Return the fraction of cells whose most probable facies is the true one.

    Parameters
    ----------
    prob : Tensor, shape (*cells) or (*cells, K)
        Facies probabilities per cell: the probability of facies 1 of a binary indicator
        (shape of ``truth``), or the ``K`` class probabilities (last axis).
    truth : Tensor, shape (*cells)
        True facies codes (0 or 1; or ``0 .. K-1``), float or integer.

    Returns
    -------
    float
        Accuracy of the per-cell mode: ``mean(argmax_k prob[..., k] == truth)``, with
        ``prob > 1/2`` for the binary form (ties go to facies 0).

    Raises
    ------
    ShapeError
        If ``prob`` is neither the shape of ``truth`` nor that shape plus a class axis.

    Examples
    --------
    >>> mode_accuracy(torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 0.0]))
    0.6666666666666666
    >>> mode_accuracy(torch.tensor([[0.1, 0.7, 0.2]]), torch.tensor([1]))
    1.0
    """
    if tuple(prob.shape) == tuple(truth.shape):
        mode = (prob > 0.5).to(torch.long)
    elif prob.dim() == truth.dim() + 1 and tuple(prob.shape[:-1]) == tuple(truth.shape):
        mode = prob.argmax(-1)
    else:
        raise ShapeError(
            f"prob {tuple(prob.shape)} must have the shape of truth {tuple(truth.shape)} "
            "(probability of facies 1) or that shape plus a last axis of K class probabilities"
        )
    return float((mode == truth.to(torch.long)).double().mean())


def run_facies_evaluation(
    prob: torch.Tensor, truth: torch.Tensor, *, num_bins: int = 10, min_count: int = 500
) -> dict[str, Any]:
    """Score posterior facies probabilities against the true facies of held-out models.

    Parameters
    ----------
    prob : Tensor, shape (M, *x_shape) or (M, *x_shape, K)
        Posterior probability of facies 1 per cell (binary indicator), or the ``K`` class
        probabilities per cell (last axis), for ``M`` held-out observations.
    truth : Tensor, shape (M, *x_shape)
        True facies codes.
    num_bins, min_count : int
        As in :func:`run_reliability`.

    Returns
    -------
    dict
        JSON-ready: ``mode_accuracy`` (:func:`mode_accuracy`); ``reliability``:
        :func:`run_reliability` of the
        probability of facies 1 against the indicator, or with ``K`` classes of every class
        probability against its one-vs-rest indicator, pooled over classes.

    Raises
    ------
    ShapeError, ConfigError
        As :func:`mode_accuracy` and :func:`run_reliability`.

    Examples
    --------
    >>> prob = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    >>> out = run_facies_evaluation(prob, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), min_count=1)
    >>> out["mode_accuracy"], out["reliability"]["num_predictions"]
    (1.0, 4)
    """
    accuracy = mode_accuracy(prob, truth)  # checks the shapes
    if tuple(prob.shape) == tuple(truth.shape):
        curve = run_reliability(prob, truth, num_bins=num_bins, min_count=min_count)
    else:
        classes = torch.arange(prob.shape[-1], device=truth.device)
        outcome = (truth.to(torch.long).unsqueeze(-1) == classes).to(prob.dtype)
        curve = run_reliability(prob, outcome, num_bins=num_bins, min_count=min_count)
    return {"mode_accuracy": accuracy, "reliability": curve}
