"""Amortized posterior quality on crosshole channels: data misfit, facies calibration, accuracy.

The crosshole survey with the channel prior (``Crosshole(prior="channels")``: ``x`` is the
facies indicator, 1 channel, 0 background, mapped to slowness inside the forward operator).
A CVAE is fitted on fresh simulations every epoch (the problem's recommended settings, a
Bernoulli facies decoder, unless overridden); for held-out observations drawn from the prior
(seed 10000) it draws posterior samples (facies fields, the decoder's Bernoulli noise included)
and prints

- the amortized chi-squared per datum of the draws, ``|F(x_s) - y|^2 / (m sigma^2)`` averaged
  over draws, median over observations (:func:`inference.diagnostics.coverage.run_evaluation`;
  target <= 3), and that of the posterior mean (the expected slowness);
- the reliability curve of the posterior facies probabilities against the true facies of every
  cell (:func:`inference.diagnostics.facies.run_reliability`): the probability of channel of a
  cell is the mean over draws of the decoder's probability ``P(x = 1 | z, y)`` (site
  ``x_mean``); the maximum deviation over bins with >= 500 cells (target <= 0.05);
- the accuracy of the posterior mode (channel where that probability is above 1/2) against
  the truth (:func:`inference.diagnostics.facies.mode_accuracy`), beside the prior's per-cell
  mode (the cell's most frequent facies in 20,000 prior draws: background everywhere) and,
  with ``--baseline gaussian``, a Gaussian decoder of the same indicator (the former default)
  fitted with the same budget, its posterior mean thresholded at 1/2 (its probability of
  channel: the fraction of draws above 1/2);
- the fit time (``--threads``, default 1).

Run (the figures in the README)::

    python benchmarks/amortized_quality.py --threads 1
    python benchmarks/amortized_quality.py --threads 1 --baseline gaussian

Options override the recommended settings for exploration (``--epochs``, ``--num-train``,
``--latent-dim``, ``--hidden-dims``, ``--network``, ``--conv-channels``, ``--feature-dim``,
``--physics-weight``, ``--kl-warmup-epochs``, ...); each run prints the settings it used.
"""

from __future__ import annotations

import argparse
import time

import torch

from inference.diagnostics.coverage import run_evaluation
from inference.diagnostics.facies import mode_accuracy, run_reliability
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem


def overrides(args, likelihood):
    """Model and train overrides of the recommended settings from the flags."""
    model = {"likelihood": likelihood}
    for flag, key in (
        ("latent_dim", "latent_dim"),
        ("hidden_dims", "hidden_dims"),
        ("network", "network"),
        ("conv_channels", "conv_channels"),
        ("feature_dim", "feature_dim"),
    ):
        if getattr(args, flag) is not None:
            model[key] = getattr(args, flag)
    train = {"seed": args.seed}
    for flag, key in (
        ("epochs", "num_epochs"),
        ("num_train", "num_train"),
        ("physics_weight", "physics_weight"),
        ("kl_warmup_epochs", "kl_warmup_epochs"),
        ("batch_size", "batch_size"),
        ("learning_rate", "learning_rate"),
    ):
        if getattr(args, flag) is not None:
            train[key] = getattr(args, flag)
    return model, train


def evaluate(label, problem, likelihood, args, x_true, y_obs):
    """Fit one decoder, draw for the held-out set, print and return its figures."""
    model, train = overrides(args, likelihood)
    cvae, result, fit_seconds = fit_problem(problem, model=model, train=train, progress=False)
    config, tc = cvae.config, result.config
    start = time.perf_counter()
    draws = draw_posterior(cvae, y_obs, args.num_samples, seed=args.seed)
    sample_seconds = time.perf_counter() - start
    metrics = run_evaluation(
        draws.x, x_true, x_reference=cvae.x_standardiser.mean, y_obs=y_obs, problem=problem
    )
    assert draws.x_mean is not None
    # the draws without the decoder's noise, at their most likely facies given z (Bernoulli:
    # P(x = 1 | z, y) > 1/2; Gaussian: the mean above 1/2): spread from z alone
    z_only = run_evaluation(
        (draws.x_mean > 0.5).float(),
        x_true,
        x_reference=cvae.x_standardiser.mean,
        y_obs=y_obs,
        problem=problem,
    )
    if likelihood == "bernoulli":  # Rao-Blackwellised: mean of P(x = 1 | z, y) over draws
        prob = draws.x_mean.mean(0)
    else:  # a continuous indicator: the fraction of draws above 1/2
        prob = (draws.x > 0.5).double().mean(0)
    curve = run_reliability(prob, x_true, min_count=args.min_count)
    accuracy = mode_accuracy(prob, x_true)
    print(
        f"\n{label}: {tc.num_epochs} epochs x {tc.num_train} fresh pairs, batch {tc.batch_size}, "
        f"latent {config.latent_dim}, hidden {config.hidden_dims}, {config.network}"
        + (f" {config.conv_channels}" if config.network != "mlp" else "")
        + f", linear "
        f"skip {config.linear_skip}, physics weight {tc.physics_weight}, kl warm-up "
        f"{tc.kl_warmup_epochs}; {cvae.num_parameters():,} parameters"
    )
    print(
        f"  fit {fit_seconds:.0f} s; {draws.x.shape[0] * draws.x.shape[1] / sample_seconds:,.0f} "
        f"posterior samples/s; final train loss {result.history[-1]['train_loss']:.1f} nats"
    )
    print(
        f"  chi2 per datum: draws {metrics['chi2_per_datum']:.2f}, posterior mean "
        f"{metrics['chi2_per_datum_of_mean']:.2f}; draws without decoder noise (most likely "
        f"facies given z) {z_only['chi2_per_datum']:.2f}"
    )
    print(
        f"  reliability: max deviation {curve['max_deviation']:.3f} (bins with >= "
        f"{curve['min_count']} cells), ECE {curve['expected_calibration_error']:.3f}"
    )
    print(f"  {'bin':>10s} {'cells':>7s} {'predicted':>9s} {'observed':>9s}")
    for b, count in enumerate(curve["count"]):
        if count:
            print(
                f"  {curve['bin_lower'][b]:4.1f}-{curve['bin_upper'][b]:3.1f} {count:9d} "
                f"{curve['mean_predicted'][b]:9.3f} {curve['observed_frequency'][b]:9.3f}"
            )
    print(f"  accuracy of the posterior mode: {accuracy:.4f}")
    return {
        "chi2": metrics["chi2_per_datum"],
        "max_deviation": curve["max_deviation"],
        "accuracy": accuracy,
    }


def main(args):
    torch.set_num_threads(args.threads)
    problem = make_problem("crosshole", prior="channels")
    x_true, y_obs = problem.simulate(args.num_heldout, torch.Generator().manual_seed(10_000))
    print(
        f"threads: {torch.get_num_threads()}, held-out: {args.num_heldout}, draws per "
        f"observation: {args.num_samples}"
    )
    prior_prob = problem.sample_prior(20_000, torch.Generator().manual_seed(20_000)).mean(0)
    prior_prob = prior_prob.expand_as(x_true)
    prior_curve = run_reliability(prior_prob, x_true, min_count=args.min_count)
    print(
        f"prior baseline: per-cell P(channel) in [{float(prior_prob.min()):.3f}, "
        f"{float(prior_prob.max()):.3f}]; accuracy of its mode (background everywhere) "
        f"{mode_accuracy(prior_prob, x_true):.4f}; reliability max deviation "
        f"{prior_curve['max_deviation']:.3f}"
    )
    evaluate(
        f"crosshole channels, {args.likelihood} decoder",
        problem,
        args.likelihood,
        args,
        x_true,
        y_obs,
    )
    if args.baseline == "gaussian":
        evaluate(
            "baseline: Gaussian decoder of the indicator", problem, "gaussian", args, x_true, y_obs
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--likelihood", default="bernoulli", choices=["bernoulli", "gaussian"])
    parser.add_argument("--baseline", choices=["none", "gaussian"], default="none")
    parser.add_argument("--num-heldout", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--min-count", type=int, default=500)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-train", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--latent-dim", type=int)
    parser.add_argument(
        "--hidden-dims", type=lambda s: tuple(int(v) for v in s.split(",")), default=None
    )
    parser.add_argument("--network", choices=["mlp", "conv2d"])
    parser.add_argument(
        "--conv-channels", type=lambda s: tuple(int(v) for v in s.split(",")), default=None
    )
    parser.add_argument("--feature-dim", type=int)
    parser.add_argument("--physics-weight", type=float)
    parser.add_argument("--kl-warmup-epochs", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
