"""Why amortized Two Birds draws fail: a breakdown by criterion, mode count, latent radius, noise.

Fits like ``benchmarks/two_birds.py`` (the problem's recommended settings, flags override them;
the same seed gives the same weights) or loads a checkpoint, then draws ``--num-samples``
amortized samples for each of the benchmark's 50 held-out observations (simulated, seed 999)
and prints:

- the benchmark's pass rate (30 draws per observation, draw seeds 0, 1, 2);
- the loss at the last epochs (is it still falling?) and the decoder's noise scale;
- which criterion the failing draws miss (per-component y-RMSE < 0.1, monotone lines,
  ``|r| > 0.8``);
- the pass rate of observations with one and with two exact solutions;
- for a latent model: the pass rate by Mahalanobis radius of ``z`` under the prior net
  (quintiles: do failures come from the latent prior's tails?), the pass rate of the draw at
  the prior net's mean, and the reconstruction of 2000 prior models through the recognition
  net's mean (can the decoder represent the solutions at all?);
- the fraction of draws within a max-abs endpoint distance of an exact solution.

``--precision`` instead prints the pass rate of exact solutions perturbed by isotropic Gaussian
endpoint noise (the precision the challenge's criteria demand), for ``data_1`` and
``original``; no fit.

Run::

    python benchmarks/two_birds_diagnosis.py --threads 1                # the defaults
    python benchmarks/two_birds_diagnosis.py --unconstrained --init-scale 0.05 --threads 1
    python benchmarks/two_birds_diagnosis.py --likelihood flow --latent-dim 0 --threads 1
    python benchmarks/two_birds_diagnosis.py --precision

A fit takes 3-7 minutes at 1 thread on the shared 2-core machine; the analysis about a minute.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import fit_resimulated, set_flags, train_overrides

from inference import draw_posterior
from ppl_cvae import TwoBirds
from ppl_cvae.problems.two_birds import (
    endpoints_from_lines,
    enumerate_exact_solutions_batch,
    lines_from_endpoints,
    score_samples,
)
from ppl_cvae.train import load_checkpoint, save_checkpoint


def fitted(args, problem):
    if args.load:
        cvae, _ = load_checkpoint(args.load)
        print(f"loaded {args.load}")
        return cvae
    train = train_overrides(args.seed, args.epochs) | set_flags(args, ["gsnn_weight"])
    model = set_flags(args, ["likelihood", "latent_dim", "prior", "init_scale", "scale_gain"])
    if args.unconstrained:
        model["constrained_coefficients"] = False
    cvae, result, config, train_config, seconds = fit_resimulated(problem, model, train, args.seed)
    print(
        f"fit {seconds:.0f} s, {train_config.num_epochs} epochs x "
        f"{train_config.num_train} fresh pairs; likelihood {config.likelihood}, latent "
        f"{config.latent_dim}, init_scale {config.init_scale}, scale_gain {config.scale_gain}"
    )
    rows = result.history
    for row in rows[-11::5]:
        print(f"  epoch {row['epoch']}: train {row['train_loss']:.2f}, val {row['val_loss']:.2f}")
    if args.save:
        save_checkpoint(args.save, cvae, problem=problem)
    return cvae


def diagnose(args):
    problem = TwoBirds(args.functions)
    cvae = fitted(args, problem)
    cvae.eval()
    latent = cvae.config.latent_dim > 0 and cvae.config.likelihood != "flow"
    if cvae.config.likelihood in ("gaussian", "gaussian_lowrank", "gaussian_full"):
        with torch.no_grad():
            noise = cvae.decoder.diagonal_scale()
        phys = noise * cvae.x_standardiser.std
        print(
            f"decoder noise scale: median {noise.median():.3f} standardised, "
            f"{phys.median():.4f} in units of x (draws are decoder means: no noise added)"
        )
    _, y_test = problem.simulate(50, torch.Generator().manual_seed(999))
    solutions = enumerate_exact_solutions_batch(y_test, problem.functions)
    rates = []
    for seed in (0, 1, 2):
        draws = draw_posterior(cvae, y_test, 30, seed=seed)
        rates.append(score_samples(draws.x, y_test, problem.functions).pass_rate)
    print("benchmark pass rate (30 draws per observation), draw seeds 0, 1, 2:", end=" ")
    print(", ".join(f"{r:.3f}" for r in rates))

    n = args.num_samples
    draws = draw_posterior(cvae, y_test, n, seed=args.seed)
    score = score_samples(draws.x, y_test, problem.functions, exact_solutions=solutions)
    passed = score.passed  # (M, n)
    rmse = score.y_rmse_per_component
    weak_r = (np.abs(score.pearson_r) <= 0.8).any(-1) | np.isnan(score.pearson_r).any(-1)
    print(f"{n} draws per observation: pass {passed.mean():.3f}, failing {1 - passed.mean():.3f}")
    print(
        f"  failing y-RMSE of f0 {(rmse[..., 0] >= 0.1).mean():.3f}, of f1 "
        f"{(rmse[..., 1] >= 0.1).mean():.3f}, not monotone {(~score.monotone).mean():.3f}, "
        f"|r| <= 0.8 {weak_r.mean():.3f}; only the y-RMSE "
        f"{(~passed & score.monotone & ~weak_r).mean():.3f}"
    )
    counts = score.num_exact_solutions
    for k in np.unique(counts):
        sel = counts == k
        print(f"  observations with {k} exact solution(s): {sel.sum()}, ", end="")
        print(f"pass {passed[sel].mean():.3f}")
    if latent:
        with torch.no_grad():
            loc, scale = cvae.prior_params(y_test)
            at_mean, _ = cvae.decode(loc[None], y_test)
        radius = (((draws.z - loc) / scale) ** 2).sum(-1).sqrt().T.numpy()  # (M, n)
        edges = np.quantile(radius, np.linspace(0, 1, 6))
        parts = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = (radius >= lo) & (radius <= hi)
            parts.append(f"[{lo:.1f}, {hi:.1f}] {passed[sel].mean():.3f}")
        print("  pass by latent radius quintile under p(z|y): " + ", ".join(parts))
        mean_score = score_samples(at_mean, y_test, problem.functions)
        print(f"  the draw at the prior net's mean z: pass {mean_score.pass_rate:.3f}")
        x_rec, y_rec = problem.simulate(2000, torch.Generator().manual_seed(5))
        with torch.no_grad():
            q_loc, q_scale = cvae.recognition_params(y_rec, x_rec)
            recon, _ = cvae.decode(q_loc, y_rec)
        err = (endpoints_from_lines(recon) - endpoints_from_lines(x_rec)).abs()
        rec_score = score_samples(recon[None], y_rec, problem.functions)
        print(
            f"  reconstruction through q(z|x,y)'s mean: endpoint error median {err.median():.4f}"
            f", 95% {err.flatten().quantile(0.95):.4f}; pass {rec_score.pass_rate:.3f}; "
            f"q scale median {q_scale.median():.3f}, p(z|y) scale median {scale.median():.3f}"
        )
    ends = endpoints_from_lines(draws.x).numpy()  # (n, M, 4)
    dist = np.full(passed.shape, np.inf)
    for m, sol in enumerate(solutions):
        sol = np.asarray(sol)
        if len(sol):
            dist[m] = np.abs(ends[:, m, None, :] - sol[None]).max(-1).min(-1)
    near = ", ".join(f"{(dist < d).mean():.3f} within {d}" for d in (0.005, 0.01, 0.02, 0.05))
    print(f"  draws near an exact solution (max-abs endpoint distance): {near}")


def precision(args):
    """Pass rate of exact solutions plus isotropic Gaussian endpoint noise of sd s."""
    for functions in ("data_1", "original"):
        problem = TwoBirds(functions)
        x, y = problem.simulate(200, torch.Generator().manual_seed(3))
        ends = endpoints_from_lines(x)
        gen = torch.Generator().manual_seed(4)
        parts = []
        for sd in (0.001, 0.002, 0.003, 0.005, 0.01, 0.02):
            noisy = ends[None] + sd * torch.randn(30, *ends.shape, generator=gen)
            score = score_samples(lines_from_endpoints(noisy), y, problem.functions)
            rmse_ok = (score.y_rmse_per_component < 0.1).all(-1).mean()
            parts.append(f"sd {sd}: {score.pass_rate:.3f} (y-RMSE only {rmse_ok:.3f})")
        print(f"{functions}: " + "; ".join(parts))


def main(args):
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, seed {args.seed}, functions {args.functions}")
    if args.precision:
        precision(args)
    else:
        diagnose(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", default="data_1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="override the epoch budget")
    parser.add_argument("--num-samples", type=int, default=400, help="draws per observation")
    parser.add_argument("--likelihood", help="override the likelihood (e.g. flow)")
    parser.add_argument("--latent-dim", type=int, help="override the latent size (0: none)")
    parser.add_argument("--prior", help="override the prior (learned, standard_normal, flow)")
    parser.add_argument("--init-scale", type=float, help="initial decoder noise (standardised)")
    parser.add_argument("--scale-gain", type=float, help="gain of the decoder's log-scale")
    parser.add_argument("--gsnn-weight", type=float, help="weight of the GSNN term")
    parser.add_argument(
        "--unconstrained",
        action="store_true",
        help="decode unconstrained endpoints (constrained_coefficients=False; the default "
        "before issue 10)",
    )
    parser.add_argument("--save", help="write the fitted checkpoint here")
    parser.add_argument("--load", help="analyse this checkpoint instead of fitting")
    parser.add_argument("--precision", action="store_true", help="only the precision table")
    main(parser.parse_args())
