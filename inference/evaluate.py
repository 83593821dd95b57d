"""Held-out evaluation pipeline of ``ppl-cvae evaluate``: draw, compute, write metrics and plots.

``evaluate_model`` draws posterior samples from a trained model for held-out ``(x, y)`` pairs,
adds the exact posterior where one exists and computes the metrics of
:func:`inference.diagnostics.coverage.run_evaluation` (whose module docstring lists the keys);
``write_evaluation`` writes ``metrics.json``, ``coverage.png`` and ``truth_vs_mean.png``. The CLI
and the examples share both. Plotting is imported when writing, not with this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from inference.diagnostics.coverage import central_coverage, run_evaluation
from inference.diagnostics.facies import run_facies_evaluation
from inference.exact import ExactPosterior, exact_posterior
from inference.posterior import draw_posterior
from ppl_cvae._atomic import atomic_path
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem, linear_gaussian_parts, units_of

__all__ = ["evaluate_model", "write_evaluation"]


def evaluate_model(
    cvae: CVAE,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    problem: Problem | None = None,
    num_samples: int = 200,
    seed: int = 0,
    chunk: int = 64,
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
        Draws per pair.
    seed : int, default 0
        Seed of the draws; chunk ``k`` (observations ``k*chunk ...``) uses ``seed + k*chunk``.
    chunk : int, default 64
        Observations drawn at once (bounds memory at ``num_samples * chunk`` models).

    Returns
    -------
    metrics : dict
        See the module docstring; for a facies decoder (``likelihood`` ``"bernoulli"`` or
        ``"categorical"``) also ``"facies"``: the accuracy of the posterior mode and the
        reliability curve of the posterior facies probabilities against ``x``
        (:func:`inference.diagnostics.facies.run_facies_evaluation`). The probabilities are
        the mean over draws of the decoder's ``P(x = 1 | z, y)`` (Bernoulli) or the class
        frequencies of the draws (categorical).
    x_draws : Tensor, shape (num_samples, M, *x_shape)
    exact : ExactPosterior or None
        The exact posterior of the ``M`` observations, when the problem has one.
    """
    parts, probs = [], []
    likelihood = cvae.config.likelihood
    for start in range(0, y.shape[0], chunk):
        draws = draw_posterior(cvae, y[start : start + chunk], num_samples, seed=seed + start)
        parts.append(draws.x.cpu())
        if likelihood == "bernoulli" and draws.x_mean is not None:  # P(x = 1 | y), per cell
            probs.append(draws.x_mean.double().mean(0).cpu())
        elif likelihood == "categorical":  # class frequencies of the draws, (chunk, *x, K)
            one_hot = torch.nn.functional.one_hot(draws.x.long(), cvae.config.num_facies)
            probs.append(one_hot.double().mean(0).cpu())
    x_draws = torch.cat(parts, dim=1)
    exact = None
    if problem is not None and linear_gaussian_parts(problem) is not None:
        exact = exact_posterior(problem, y)
    metrics = run_evaluation(
        x_draws,
        x,
        x_reference=cvae.x_standardiser.mean.detach().cpu(),
        y_obs=y,
        problem=problem,
        exact_mean=exact.mean if exact is not None else None,
        exact_std=exact.std if exact is not None else None,
    )
    if probs:
        metrics["facies"] = run_facies_evaluation(torch.cat(probs), x)
    return metrics, x_draws, exact


def write_evaluation(
    out_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    x_true: torch.Tensor,
    x_draws: torch.Tensor,
    *,
    exact: ExactPosterior | None = None,
    problem: Problem | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``metrics.json``, ``coverage.png`` and ``truth_vs_mean.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Existing folder.
    metrics : mapping
        Output of :func:`evaluate_model` (plus any JSON-ready extras).
    x_true : Tensor, shape (M, *x_shape)
    x_draws : Tensor, shape (S, M, *x_shape)
    exact : ExactPosterior, optional
        Drawn ``S`` times (seed ``seed``) for the dashed exact coverage curve.
    problem : Problem, optional
        Supplies the unit of ``x`` for the axis labels.

    Returns
    -------
    list of Path
        The files written (each atomically).
    """
    from inference.plots import plot_coverage, plot_truth_vs_mean

    out = Path(out_dir)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(dict(metrics), indent=2))
    curve = metrics["coverage_curve"]
    reference = None
    if exact is not None:
        ref_draws = exact.sample(x_draws.shape[0], torch.Generator().manual_seed(seed))
        reference = central_coverage(ref_draws, x_true, curve["nominal"])
    return [
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
            unit=units_of(problem).get("x", ""),
        ),
    ]
