"""Amortized posterior quality on crosshole channels: data misfit, facies calibration, accuracy.

The crosshole survey with the channel prior (``Crosshole(prior="channels")``: ``x`` is the
facies indicator, 1 channel, 0 background, mapped to slowness inside the forward operator).
A CVAE is fitted on fresh simulations every epoch (the problem's recommended settings, a
Bernoulli facies decoder, unless overridden); for held-out observations drawn from the prior
(seed 10000) it draws posterior samples (facies fields, the decoder's Bernoulli noise included;
200 per observation) and prints

- the amortized chi-squared per datum of the draws, ``|F(x_s) - y|^2 / (m sigma^2)`` averaged
  over draws, median over the first 100 observations
  (:func:`inference.diagnostics.coverage.run_evaluation`; target <= 3), that of the posterior
  mean (the expected slowness), and that of the draws without the decoder's noise (each draw's
  most likely facies given ``z``);
- the reliability curve of the posterior facies probabilities against the true facies of every
  cell of 500 held-out fields (:func:`inference.diagnostics.facies.run_reliability`): the
  probability of channel of a cell is the mean over draws of the decoder's probability
  ``P(x = 1 | z, y)`` (site ``x_mean``); the maximum deviation over bins with >= 500 cells
  (target <= 0.05). The prior's own per-cell probabilities, calibrated by construction, are
  scored on the same fields: their deviation is the sampling noise of the curve (the cells of
  one field are correlated);
- the accuracy of the posterior mode (channel where that probability is above 1/2) on the same
  500 fields (:func:`inference.diagnostics.facies.mode_accuracy`), beside the prior's per-cell
  mode (the more frequent facies of each cell in 20,000 prior draws: background, except a few
  central cells where P(channel) is just above 1/2) and, with ``--baseline gaussian``, a
  Gaussian decoder of the same indicator (the former model of the channel prior) fitted with
  the same budget, whose probability of channel is the fraction of its draws above 1/2;
- the fit time (``--threads``, default 1).

Run (the figures in docs/measurements.md)::

    python benchmarks/amortized_quality.py --threads 1
    python benchmarks/amortized_quality.py --threads 1 --network mlp --baseline gaussian
    python benchmarks/amortized_quality.py --threads 1 --network mlp --physics-weight 0.1

A fit of the recommended budget (60 epochs x 20,000 pairs) took 17 minutes with the
recommended convolutional decoder and 8 with ``--network mlp`` at 1 thread on a shared 2-core
machine, plus a minute of drawing. Options override the recommended settings for
exploration (``--epochs``, ``--num-train``, ``--latent-dim``, ``--hidden-dims``, ``--network``,
``--conv-channels``, ``--feature-dim``, ``--y-maps``, ``--physics-weight``,
``--kl-warmup-epochs``, ...); each run prints the settings it used.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import print_reliability_table, set_flags

from inference.diagnostics.coverage import run_evaluation
from inference.diagnostics.facies import mode_accuracy, run_reliability
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem


def overrides(args, likelihood):
    """Model and train overrides of the recommended settings from the flags."""
    model = {"likelihood": likelihood}
    model |= set_flags(args, ["latent_dim", "hidden_dims", "network", "conv_channels",
                              "feature_dim", "y_maps"])
    train = {"seed": args.seed}
    train |= set_flags(args, [("epochs", "num_epochs"), "num_train", "physics_weight",
                              "kl_warmup_epochs", "batch_size", "learning_rate"])
    return model, train


def evaluate(label, problem, likelihood, args, x_true, y_obs):
    """Fit one decoder, draw for the held-out set, print and return its figures."""
    model, train = overrides(args, likelihood)
    cvae, result, fit_seconds = fit_problem(problem, model=model, train=train, progress=False)
    config, tc = cvae.config, result.config
    num_misfit = min(args.num_heldout, len(y_obs))
    probs, x_draws, z_only = [], [], []
    start = time.perf_counter()
    for first in range(0, len(y_obs), args.chunk):
        draws = draw_posterior(
            cvae, y_obs[first : first + args.chunk], args.num_samples, seed=args.seed + first
        )
        assert draws.x_mean is not None
        if likelihood == "bernoulli":  # Rao-Blackwellised: mean of P(x = 1 | z, y) over draws
            probs.append(draws.x_mean.double().mean(0))
        else:  # a continuous indicator: the fraction of draws above 1/2
            probs.append((draws.x > 0.5).double().mean(0))
        if first < num_misfit:  # the draws of the first observations, for the misfit
            keep = num_misfit - first
            x_draws.append(draws.x[:, :keep])
            # without the decoder's noise, the most likely facies given z (Bernoulli:
            # P(x = 1 | z, y) > 1/2; Gaussian: the mean above 1/2): spread from z alone
            z_only.append((draws.x_mean[:, :keep] > 0.5).float())
    sample_seconds = time.perf_counter() - start
    reference = cvae.x_location_scale()[0]
    misfit = {"x_reference": reference, "y_obs": y_obs[:num_misfit], "problem": problem}
    metrics = run_evaluation(torch.cat(x_draws, 1), x_true[:num_misfit], **misfit)
    z_metrics = run_evaluation(torch.cat(z_only, 1), x_true[:num_misfit], **misfit)
    prob = torch.cat(probs)
    curve = run_reliability(prob, x_true, min_count=args.min_count)
    accuracy = mode_accuracy(prob, x_true)
    print(
        f"\n{label}: {tc.num_epochs} epochs x {tc.num_train} fresh pairs, batch {tc.batch_size}, "
        f"latent {config.latent_dim}, hidden {config.hidden_dims}, {config.network}"
        + (f" {config.conv_channels}" if config.network != "mlp" else "")
        + f", y maps {config.y_maps}, linear skip {config.linear_skip}, physics weight "
        f"{tc.physics_weight}, kl warm-up {tc.kl_warmup_epochs}; "
        f"{cvae.num_parameters():,} parameters"
    )
    rate = args.num_samples * len(y_obs) / sample_seconds
    print(
        f"  fit {fit_seconds:.0f} s; {rate:,.0f} posterior samples/s; final train loss "
        f"{result.history[-1]['train_loss']:.1f} nats"
    )
    print(
        f"  chi2 per datum ({num_misfit} held-out): draws {metrics['chi2_per_datum']:.2f}, "
        f"posterior mean {metrics['chi2_per_datum_of_mean']:.2f}; draws without decoder noise "
        f"(most likely facies given z) {z_metrics['chi2_per_datum']:.2f}"
    )
    print(
        f"  reliability ({len(y_obs)} held-out): max deviation {curve['max_deviation']:.3f} "
        f"(bins with >= {curve['min_count']} cells), ECE {curve['expected_calibration_error']:.3f}"
    )
    print_reliability_table(curve)
    print(f"  accuracy of the posterior mode ({len(y_obs)} held-out): {accuracy:.4f}")
    return {
        "chi2": metrics["chi2_per_datum"],
        "max_deviation": curve["max_deviation"],
        "accuracy": accuracy,
    }


def main(args):
    torch.set_num_threads(args.threads)
    problem = make_problem("crosshole", prior="channels")
    num = max(args.num_heldout, args.num_calibration)
    x_true, y_obs = problem.simulate(num, torch.Generator().manual_seed(10_000))
    print(
        f"threads: {torch.get_num_threads()}; held-out: chi-squared on {args.num_heldout}, "
        f"reliability and accuracy on {num}; draws per observation: {args.num_samples}"
    )
    prior_prob = problem.sample_prior(20_000, torch.Generator().manual_seed(20_000)).mean(0)
    prior_prob = prior_prob.expand_as(x_true)
    prior_curve = run_reliability(prior_prob, x_true, min_count=args.min_count)
    print(
        f"prior baseline: per-cell P(channel) in [{float(prior_prob.min()):.3f}, "
        f"{float(prior_prob.max()):.3f}]; accuracy of its per-cell mode "
        f"{mode_accuracy(prior_prob, x_true):.4f}; reliability max deviation "
        f"{prior_curve['max_deviation']:.3f} (calibrated by construction: the sampling noise "
        f"of the curve on {num} fields)"
    )
    label = f"crosshole channels, {args.likelihood} decoder"
    evaluate(label, problem, args.likelihood, args, x_true, y_obs)
    if args.baseline == "gaussian":
        label = "baseline: Gaussian decoder of the indicator"
        evaluate(label, problem, "gaussian", args, x_true, y_obs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--likelihood", default="bernoulli", choices=["bernoulli", "gaussian"])
    parser.add_argument("--baseline", choices=["none", "gaussian"], default="none")
    parser.add_argument("--num-heldout", type=int, default=100, help="for the chi-squared")
    parser.add_argument(
        "--num-calibration", type=int, default=500, help="held-out for reliability, accuracy"
    )
    parser.add_argument("--chunk", type=int, default=50, help="observations drawn at once")
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
    parser.add_argument("--y-maps", type=int, help="conv2d: maps of the grid computed from y")
    parser.add_argument("--physics-weight", type=float)
    parser.add_argument("--kl-warmup-epochs", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
