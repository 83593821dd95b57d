"""Linear-Gaussian benchmark: the amortized CVAE posterior against the exact one.

For ``crosshole`` and ``gravity`` with their Gaussian random field priors (linear forward
operator, Gaussian prior and noise, so the posterior is Gaussian in closed form,
:func:`inference.exact.exact_posterior`): fit the CVAE on the problem's recommended simulation
budget (fresh simulations every epoch), draw posterior samples for 100 held-out observations
drawn from the prior, and print against the exact posterior

- the error of the posterior mean in units of the exact posterior sd (median over all cells of
  all observations; target <= 0.3),
- the ratio of the sample sd to the exact sd (median; target 0.9 to 1.1),
- the coverage of the true x by the central 50% and 90% marginal intervals (target within 0.03
  of nominal), beside the exact posterior's own coverage of the same truths,

and the same for a Tikhonov (damped least-squares) baseline: ``x = argmin |A x - y|^2_{C_e} +
|x - mu_0|^2 / sill``, i.e. the right prior variance but no spatial correlation, with its
Gaussian uncertainty ``(A^T C_e^-1 A + I / sill)^-1``. Also the fit time and posterior samples
per second. Problems without a closed form (``mt1d``, ``crosshole:channels``) can be named too:
they print coverage and the posterior predictive chi-squared per datum (target near 1) only.

Run::

    python benchmarks/linear_gaussian.py [--problems crosshole,gravity] [--threads 2]
    python benchmarks/linear_gaussian.py --problems mt1d,crosshole:channels

About 3 to 5 minutes per problem at 1 thread with the recommended budgets (20 epochs for the
whitened random fields; fit 83 s for gravity, 192 s for crosshole beside other jobs).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import train_overrides

from inference.diagnostics.coverage import run_evaluation
from inference.exact import exact_posterior, linear_gaussian_posterior
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem
from ppl_cvae.problems.base import linear_gaussian_parts


def tikhonov(problem, y):
    """Damped least squares with prior variance ``sill`` and no correlation: mean, sd."""
    parts = linear_gaussian_parts(problem)
    sill = float(parts.prior_cov.diagonal().mean())
    d = parts.prior_cov.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    mean, cov = linear_gaussian_posterior(
        parts.matrix.double(),
        parts.noise_cov,
        parts.prior_mean,
        sill * eye,
        y.reshape(y.shape[0], -1).double(),
    )
    return mean.reshape(y.shape[0], *problem.x_shape), cov.diagonal().sqrt().reshape(
        problem.x_shape
    )


def gaussian_metrics(mean, std, x_true, exact):
    """Metrics of a Gaussian approximation (mean, marginal sd) against the exact posterior."""
    z50 = math.sqrt(2) * float(torch.special.erfinv(torch.tensor(0.5)))
    z90 = math.sqrt(2) * float(torch.special.erfinv(torch.tensor(0.9)))
    err = (mean.double() - exact.mean.double()).abs() / exact.std.double()
    inside = lambda z: float(((x_true - mean).abs() <= z * std).double().mean())  # noqa: E731
    return {
        "mean_error_in_std": float(err.median()),
        "std_ratio": float((std.double() / exact.std.double()).median()),
        "coverage_50": inside(z50),
        "coverage_90": inside(z90),
    }


def run(label, args):
    name, _, prior = label.partition(":")
    problem = make_problem(name, **({"prior": prior or "grf"} if name == "crosshole" else {}))
    train = train_overrides(args.seed, args.epochs)
    if args.num_train:
        train["num_train"] = args.num_train
    model = {}
    if args.latent_dim:
        model["latent_dim"] = args.latent_dim
    if args.linear_skip is not None:
        model["linear_skip"] = args.linear_skip
    if args.likelihood:
        model["likelihood"] = args.likelihood
    if args.noise_rank:
        model["noise_rank"] = args.noise_rank
    if args.x_whitening:
        model["x_whitening"] = args.x_whitening
    if args.init_scale:
        model["init_scale"] = args.init_scale
    cvae, result, fit_seconds = fit_problem(problem, model=model, train=train)
    config, train = cvae.config, result.config
    x_true, y_obs = problem.simulate(args.num_heldout, torch.Generator().manual_seed(10_000))
    draw_posterior(cvae, y_obs[:2], 10, seed=0)  # warm-up
    start = time.perf_counter()
    draws = draw_posterior(cvae, y_obs, args.num_samples, seed=args.seed).x
    sample_seconds = time.perf_counter() - start
    exact = exact_posterior(problem, y_obs) if linear_gaussian_parts(problem) else None
    metrics = run_evaluation(
        draws,
        x_true,
        x_reference=cvae.x_location_scale()[0],
        y_obs=y_obs,
        problem=problem,
        exact_mean=exact.mean if exact else None,
        exact_std=exact.std if exact else None,
    )
    budget = (
        f"{train.num_epochs} epochs x {train.num_train} fresh pairs, batch {train.batch_size}, "
        f"latent {config.latent_dim}, hidden {config.hidden_dims}, {config.network}, "
        f"linear skip {config.linear_skip}, likelihood {config.likelihood}"
        + (f" (rank {config.noise_rank})" if config.likelihood == "gaussian_lowrank" else "")
        + f", x whitening {config.x_whitening}, init scale {config.init_scale}"
    )
    print(f"\n{label} (x {tuple(problem.x_shape)}, y {tuple(problem.y_shape)}): {budget}")
    print(
        f"  fit {fit_seconds:.0f} s ({len(result.history)} epochs); "
        f"{draws.shape[0] * draws.shape[1] / sample_seconds:,.0f} posterior samples/s"
    )
    print(
        f"  coverage 50% {metrics['coverage_50']:.3f}, 90% {metrics['coverage_90']:.3f}; "
        f"RMSE posterior mean / prior mean {metrics['rmse_ratio']:.3f}; chi2 per datum "
        f"{metrics['chi2_per_datum']:.3f} (draws), {metrics['chi2_per_datum_of_mean']:.3f} "
        "(posterior mean)"
    )
    if exact is None:  # no closed form (mt1d, channels): coverage and misfit only
        return
    t_mean, t_std = tikhonov(problem, y_obs)
    tik = gaussian_metrics(t_mean, t_std, x_true, exact)
    exact_draws = exact.sample(200, torch.Generator().manual_seed(args.seed))
    exact_chi2 = run_evaluation(
        exact_draws, x_true, x_reference=cvae.x_location_scale()[0], y_obs=y_obs, problem=problem
    )["chi2_per_datum"]
    ex = metrics["exact"]
    print(f"  {'':10s} {'mean err/sd':>12s} {'sd ratio':>9s} {'cov50':>6s} {'cov90':>6s}")
    rows = (
        (
            "CVAE",
            ex["mean_error_in_std"],
            ex["std_ratio"],
            metrics["coverage_50"],
            metrics["coverage_90"],
        ),
        ("exact", 0.0, 1.0, ex["coverage_50"], ex["coverage_90"]),
        (
            "Tikhonov",
            tik["mean_error_in_std"],
            tik["std_ratio"],
            tik["coverage_50"],
            tik["coverage_90"],
        ),
    )
    for row, err, ratio, c50, c90 in rows:
        print(f"  {row:10s} {err:12.3f} {ratio:9.3f} {c50:6.3f} {c90:6.3f}")
    print(f"  chi2 per datum of exact posterior draws (reference): {exact_chi2:.3f}")


def main(args):
    torch.set_num_threads(args.threads)
    print(
        f"threads: {torch.get_num_threads()}, held-out: {args.num_heldout}, "
        f"draws per observation: {args.num_samples}"
    )
    for name in args.problems.split(","):
        run(name.strip(), args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="crosshole,gravity")
    parser.add_argument("--num-heldout", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, help="override the recommended epochs")
    parser.add_argument("--num-train", type=int, help="override the pairs per epoch")
    parser.add_argument("--latent-dim", type=int, help="override the recommended latent size")
    parser.add_argument(
        "--linear-skip", action=argparse.BooleanOptionalAction, help="override linear_skip"
    )
    parser.add_argument("--likelihood", help="override the likelihood, e.g. gaussian_lowrank")
    parser.add_argument("--noise-rank", type=int, help="rank of the gaussian_lowrank factor")
    parser.add_argument("--x-whitening", help="override x_whitening: none or linear")
    parser.add_argument("--init-scale", type=float, help="override the decoder's initial scale")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
