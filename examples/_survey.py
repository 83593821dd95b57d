"""Steps shared by the survey examples (crosshole, gravity, mt1d); not an example itself.

Each survey example fits a CVAE on a built-in problem with its recommended settings, draws
posterior samples for one held-out synthetic observation, writes the named-dims report of
``ppl-cvae diagnose`` for it, and evaluates coverage and misfit on more held-out pairs. The
scripts keep only what is particular to their problem (figures with the exact posterior).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inference import sample_posterior
from inference.arviz_io import save_inference_data
from inference.evaluate import evaluate_model, write_evaluation
from inference.plots import plot_loss, save_figure
from inference.report import posterior_figures, write_report
from ppl_cvae import CVAE, FitResult, fit_problem

# a tiny budget for tests: the problem's recommended settings with small networks
SMOKE_MODEL = {"hidden_dims": (32,), "latent_dim": 4, "conv_channels": (4, 8), "feature_dim": 16}
SMOKE_TRAIN = {"num_epochs": 2, "num_train": 256}


@dataclass
class SurveyRun:
    """A fitted example: the model, its fit and one held-out observation with its draws.

    ``x_obs`` ``(*x_shape)`` and ``y_obs`` ``(*y_shape)`` are the true model and its data;
    ``idata`` holds the posterior draws of ``x`` for them.
    """

    cvae: CVAE
    result: FitResult
    fit_seconds: float
    x_obs: torch.Tensor
    y_obs: torch.Tensor
    idata: Any
    out: Path


def fit_and_observe(problem: Any, args: argparse.Namespace, out: Path) -> SurveyRun:
    """Fit on fresh simulations, then draw 500 (smoke: 50) posterior samples of one observation.

    Writes ``posterior.nc``, ``loss.png`` and ``report/`` (what ``ppl-cvae diagnose`` writes:
    summary and misfit tables, posterior and posterior predictive figures on named dims).
    """
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    model = SMOKE_MODEL if args.smoke else {}
    train = {"seed": args.seed, **(SMOKE_TRAIN if args.smoke else {})}
    # fit on fresh simulations every epoch (standardisers from one simulated set)
    cvae, result, fit_seconds = fit_problem(
        problem, model=model, train=train, progress=not args.smoke
    )
    cvae = cvae.to(args.device)
    x_obs, y_obs = problem.simulate(1, torch.Generator().manual_seed(10_000 + args.seed))
    x_obs, y_obs = x_obs[0], y_obs[0]
    num_draws = 50 if args.smoke else 500
    idata = sample_posterior(
        cvae, y_obs.to(args.device), num_draws, problem=problem, x_true=x_obs, seed=args.seed
    )
    save_inference_data(idata, out / "posterior.nc")
    write_report(idata, out / "report")
    plot_loss(result.history, out / "loss.png")
    return SurveyRun(cvae, result, fit_seconds, x_obs, y_obs, idata, out)


def write_fields(run: SurveyRun, exact: Any = None) -> None:
    """Write ``fields.png``: the report's section figure with the exact posterior beside it.

    ``exact`` is an :class:`inference.exact.ExactPosterior` of the one observation, or None;
    the section, its coordinates and the survey (sources, receivers) come from the file.
    """
    extra = None
    if exact is not None:
        extra = {"exact mean": exact.mean[0].numpy(), "exact sd": exact.std.numpy()}
    figures = posterior_figures(run.idata, 0, extra_panels=extra)
    save_figure(figures["posterior"], run.out / "fields.png")


def evaluate_held_out(problem: Any, run: SurveyRun, args: argparse.Namespace) -> dict:
    """Evaluate on 50 (smoke: 10) held-out pairs, write ``metrics.json`` and figures, print.

    Returns the metrics of :func:`inference.evaluate.evaluate_model`, with the fit time.
    """
    num_eval, eval_draws = (10, 50) if args.smoke else (50, 200)
    x_eval, y_eval = problem.simulate(num_eval, torch.Generator().manual_seed(20_000 + args.seed))
    metrics, x_draws, exact_eval = evaluate_model(
        run.cvae, x_eval, y_eval, problem=problem, num_samples=eval_draws, seed=args.seed
    )
    metrics.update(fit_seconds=run.fit_seconds, problem=problem.spec(), smoke=bool(args.smoke))
    write_evaluation(
        run.out, metrics, x_eval, x_draws, exact=exact_eval, problem=problem, seed=args.seed,
        y_obs=y_eval,
    )
    config = run.result.config
    print(f"fit: {run.fit_seconds:.1f} s ({config.num_epochs} epochs of {config.num_train} pairs)")
    print(
        f"held-out ({num_eval} pairs): coverage 50% {metrics['coverage_50']:.3f}, "
        f"90% {metrics['coverage_90']:.3f}; chi2 per datum {metrics['chi2_per_datum']:.3f}; "
        f"RMSE ratio {metrics['rmse_ratio']:.3f}"
    )
    if "facies" in metrics:  # a facies decoder: interval coverage says little of binary draws
        facies = metrics["facies"]
        print(
            f"facies: accuracy of the posterior mode {facies['mode_accuracy']:.3f}; reliability "
            f"max deviation {facies['reliability']['max_deviation']:.3f}"
        )
    if "exact" in metrics:
        e = metrics["exact"]
        print(
            f"vs exact posterior: mean error {e['mean_error_in_std']:.3f} exact std, std ratio "
            f"{e['std_ratio']:.3f}; exact coverage 50% {e['coverage_50']:.3f}, "
            f"90% {e['coverage_90']:.3f}"
        )
    print(f"wrote {run.out}")
    return metrics
