"""NUTS preconditioners compared on one problem's posterior: ESS per potential evaluation.

For each of the first ``--observations`` held-out observations (drawn from the prior with seed
10000, as in ``benchmarks/posterior_correction.py``), amortized draws (20 per sampled
coordinate, :func:`inference.mcmc.preconditioner_draws`) start the chains, and NUTS
(:func:`inference.mcmc.nuts_sample`) runs once per preconditioner, one after the other for
that observation, with the same seed and the same starting draws:

- ``amortized``: the amortized draws' (Ledoit-Wolf) covariance;
- ``prior``: the prior's Cholesky factor (NUTS on ``w`` with ``theta = m + L_0 w``);
- ``prior-amortized``: the amortized covariance in ``w``, eigenvalues clipped at 1.

Printed per run: the largest R-hat (rank-normalised split, bulk and folded), the smallest bulk
and tail ESS over the sampled coordinates, potential evaluations, ESS per 1000 evaluations
(the measure that does not depend on machine load), seconds, ms per evaluation, the median
tree depth and step size, divergences; then each run's posterior mean and sd against the
first preconditioner's (all sample the same posterior). ``--profile`` also times the pieces
of one potential evaluation with its gradient (medians of interleaved blocks).

Run (the figures in docs/measurements.md, section "Correction on mt1d")::

    python benchmarks/nuts_preconditioners.py --problem mt1d --epochs 20 --observations 2 \\
        --threads 1 --profile

``--run RUN`` reuses a fitted run (``ppl-cvae fit --problem mt1d --epochs 20 --seed 0 --out
RUN`` fits the same model as ``--epochs 20``). Thread count and load average are printed with
the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import arviz as az
import numpy as np
import torch
from _common import train_overrides

from inference.mcmc import nuts_sample, preconditioner_draws
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem
from ppl_cvae.problems.mt1d import MU_0


def load_or_fit(args):
    """Return the problem and the CVAE: loaded from ``--run`` or fitted for ``--epochs``."""
    if args.run:
        from ppl_cvae.train import load_checkpoint

        cvae, meta = load_checkpoint(args.run)
        problem = meta["problem"]
        print(f"loaded {args.run} (problem {problem.name})")
        return problem, cvae
    problem = make_problem(args.problem)
    cvae, result, seconds = fit_problem(problem, train=train_overrides(args.seed, args.epochs))
    print(f"fit {len(result.history)} epochs in {seconds:.0f} s")
    return problem, cvae


def tail_stats(x):
    """Largest folded R-hat and smallest tail ESS of draws ``(chains, draws, dim)``."""
    ds = az.convert_to_dataset({"theta": x.reshape(*x.shape[:2], -1).double().numpy()})
    return (
        float(az.rhat(ds, method="folded")["theta"].max()),
        float(az.ess(ds, method="tail")["theta"].min()),
    )


def impedance_by_autograd(resistivity, thicknesses, frequencies):
    """mt1d's impedance recursion differentiated by autograd through the loop (before the
    hand-written adjoint of :func:`ppl_cvae.problems.mt1d.layered_impedance`)."""
    rho = resistivity.movedim(-1, 0).unsqueeze(-1)
    i_omega_mu = 2j * math.pi * MU_0 * frequencies
    z = torch.sqrt(i_omega_mu * rho)
    e = torch.exp(-2.0 * i_omega_mu / z[:-1] * thicknesses.reshape(-1, *([1] * (rho.dim() - 1))))
    t = (1.0 - e) / (1.0 + e)
    imp = z[-1]
    for j in range(t.shape[0] - 1, -1, -1):
        imp = z[j] * (imp + z[j] * t[j]) / (z[j] + imp * t[j])
    return imp


def median_ms(fn, repeats=5, number=40):
    """Median over ``repeats`` blocks of the time of one call of ``fn``, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number * 1e3)
    return statistics.median(times)


def profile(problem, y, theta0):
    """Time the pieces of one potential evaluation and its gradient at ``theta0``."""
    par = problem.parameterisation()
    prior = problem.gaussian_prior()
    y64 = y.double()

    def to_x(theta):
        return par.to_x(theta.float()) if par is not None else theta.reshape(problem.x_shape)

    def likelihood():
        th = theta0.clone().requires_grad_()
        torch.autograd.grad(-problem.log_likelihood(to_x(th), y64), th)

    def forward_no_grad():
        with torch.no_grad():
            problem.forward(to_x(theta0))

    def forward_grad():
        th = theta0.clone().requires_grad_()
        torch.autograd.grad(problem.forward(to_x(th)).double().sum(), th)

    def prior_through_x():  # the prior density before gaussian_prior (mt1d: x = T(u))
        th = theta0.clone().requires_grad_()
        if par is not None:
            lp = par.log_prior(th.float())
        else:
            lp = problem.log_prior(to_x(th))
        torch.autograd.grad(-lp, th)

    def prior_gaussian():  # what nuts_sample evaluates with precondition="prior": -|v|^2 / 2
        v = torch.linalg.solve_triangular(
            prior.scale_tril, (theta0 - prior.loc).unsqueeze(-1), upper=False
        ).squeeze(-1)
        v = v.clone().requires_grad_()
        torch.autograd.grad(0.5 * (v * v).sum(), v)

    pieces = [("likelihood + gradient", likelihood), ("forward, no gradient", forward_no_grad),
              ("forward + gradient", forward_grad), ("prior through x + gradient",
                                                     prior_through_x)]
    if problem.name == "mt1d":

        def forward_grad_autograd_loop():  # the recursion as it was: autograd through the loop
            th = theta0.clone().requires_grad_()
            x = to_x(th).double()
            imp = impedance_by_autograd(10.0**x, problem.thicknesses, problem._frequencies)
            omega_mu = 2.0 * math.pi * MU_0 * problem._frequencies
            log_rho_a = torch.log10(imp.real**2 + imp.imag**2) - torch.log10(omega_mu)
            phase = torch.rad2deg(torch.atan2(imp.imag, imp.real))
            torch.autograd.grad(log_rho_a.sum() + phase.sum(), th)

        pieces.append(("forward + gradient, autograd loop", forward_grad_autograd_loop))
    if prior is not None:
        pieces.append(("Gaussian prior in w + gradient", prior_gaussian))
    results = {label: [] for label, _ in pieces}
    for _ in range(3):  # interleaved rounds
        for label, fn in pieces:
            results[label].append(median_ms(fn))
    load = os.getloadavg()[0]
    print(f"  cost of one evaluation (median of 3 interleaved rounds, load {load:.1f}):")
    for label, values in results.items():
        print(f"    {label:34s} {statistics.median(values):7.3f} ms")


def main(args):
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}; load average {os.getloadavg()}")
    problem, cvae = load_or_fit(args)
    num = max(args.observations, 1)
    _, y_obs = problem.simulate(num, torch.Generator().manual_seed(10_000))
    preconditioners = [p.strip() for p in args.preconditioners.split(",")]
    num_start = preconditioner_draws(cvae.config.x_dim, args.chains)
    print(
        f"{problem.name}: {args.chains} chains x {args.nuts_samples} draws after "
        f"{args.nuts_warmup} warm-up, max tree depth {args.max_tree_depth}, {num_start} "
        f"amortized draws per observation, seed {args.seed}, mass matrix adaptation "
        f"{not args.no_mass_adaptation}, potential {args.potential_dtype}"
    )
    if args.profile:
        init = draw_posterior(cvae, y_obs[:1], num_start, seed=0).x[:, 0]
        par = problem.parameterisation()
        with torch.no_grad():
            theta0 = (par.from_x(init[:1]) if par is not None else init[:1].flatten(1))[0]
        profile(problem, y_obs[0], theta0.double())
    for i in range(args.observations):
        init = draw_posterior(cvae, y_obs[i : i + 1], num_start, seed=i).x[:, 0]
        results = {}
        for precondition in preconditioners:
            res = nuts_sample(
                problem,
                y_obs[i],
                init,
                num_samples=args.nuts_samples,
                warmup_steps=args.nuts_warmup,
                num_chains=args.chains,
                precondition=precondition,
                seed=args.seed,
                max_tree_depth=args.max_tree_depth,
                adapt_mass_matrix=not args.no_mass_adaptation,
                potential_dtype=args.potential_dtype,
            )
            results[precondition] = res
            folded, tail_ess = tail_stats(res.x)
            depth = float(np.median(res.sample_stats["tree_depth"]))
            step = float(np.median(res.sample_stats["step_size"]))
            print(
                f"  obs {i} {precondition:16s} R-hat {res.rhat:.4f} (folded {folded:.4f}, bound "
                f"{res.rhat_threshold:.4f}); min ESS bulk {res.min_ess:6.0f} tail {tail_ess:6.0f}; "
                f"{res.num_evaluations:7d} evaluations; ESS/1000 eval "
                f"{1000 * res.min_ess / res.num_evaluations:6.2f}; {res.seconds:7.1f} s "
                f"({1000 * res.seconds / res.num_evaluations:.2f} ms/eval); tree depth "
                f"{depth:.0f}, step {step:.3f}; divergences {res.divergences}; load "
                f"{os.getloadavg()[0]:.1f}",
                flush=True,
            )
        ref_name = preconditioners[0]
        ref = results[ref_name].x.reshape(-1, *problem.x_shape).double()
        mean, sd = ref.mean(0), ref.std(0)
        for name, res in results.items():
            if name == ref_name:
                continue
            x = res.x.reshape(-1, *problem.x_shape).double()
            err = ((x.mean(0) - mean) / sd).abs()
            ratio = x.std(0) / sd
            print(
                f"  obs {i} {name} against {ref_name}: mean difference median "
                f"{float(err.median()):.3f} (max {float(err.max()):.3f}) {ref_name} sd; sd ratio "
                f"median {float(ratio.median()):.3f} (range {float(ratio.min()):.3f} to "
                f"{float(ratio.max()):.3f})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="mt1d")
    parser.add_argument("--run", help="a fitted run folder (instead of fitting)")
    parser.add_argument("--epochs", type=int, help="override the recommended epochs")
    parser.add_argument("--observations", type=int, default=1)
    parser.add_argument("--preconditioners", default="amortized,prior-amortized,prior")
    parser.add_argument("--nuts-samples", type=int, default=150, help="per chain")
    parser.add_argument("--nuts-warmup", type=int, default=100)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--max-tree-depth", type=int, default=8)
    parser.add_argument(
        "--no-mass-adaptation",
        action="store_true",
        help="warm-up adapts the step size only (the preconditioner is the mass matrix)",
    )
    parser.add_argument("--profile", action="store_true", help="time one evaluation's pieces")
    parser.add_argument(
        "--potential-dtype", default="float64", choices=["float64", "float32"],
        help="precision of the potential (nuts_sample(potential_dtype=...))",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
