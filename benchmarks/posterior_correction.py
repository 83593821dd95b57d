"""Correction of amortized draws with the physics: importance sampling and NUTS, per observation.

For the linear-Gaussian random-field problems (``crosshole`` and ``gravity``, exact posterior
known in closed form): fit the CVAE with the problem's recommended settings (fresh simulations
every epoch; ``--epochs`` shortens the schedule), take held-out observations drawn from the prior
(seed 10000) and, for each, compare against the exact posterior

- the amortized draws (``draw_posterior``),
- importance sampling with the amortized posterior as proposal
  (:func:`inference.importance.importance_sample`): sample efficiency (ESS / S), Pareto
  k-hat, the log evidence against the closed form, and the resampled draws,
- NUTS started from amortized draws and preconditioned by their covariance
  (:func:`inference.mcmc.nuts_sample`, ``precondition="amortized"``) and plain NUTS started
  from prior draws with its own diagonal adaptation (``"none"``), on the first
  ``--nuts-observations`` observations (plain NUTS on the first ``--baseline-observations``:
  it needs hundreds of leapfrog steps per draw in 1024 dimensions): R-hat, min bulk ESS,
  seconds, ESS per second and per potential evaluation, the ratio of the two,

each scored by :func:`inference.diagnostics.coverage.run_evaluation`: chi-squared per datum of
the draws, posterior-mean error in exact sd (median over cells), sd ratio (median), coverage of
the truths by 50% / 90% central intervals, beside the exact posterior's own coverage.

Problems without a closed form (``mt1d``, its logit-normal prior having a density) are scored
without the exact posterior: chi-squared per datum and coverage of the held-out truths at 50% /
90% (pooled over cells and observations) for the amortized, importance-resampled and NUTS
draws; importance sampling's efficiency and k-hat and its log evidence ``log p(y)`` with its
standard error, per observation (the evidence has no reference); and, on the observations NUTS
ran on, the amortized and importance draws against NUTS's (amortized-start) mean and sd as the
reference (mean error in NUTS sd, sd ratio), since converged NUTS samples the exact posterior.

Run (the figures in docs/measurements.md)::

    python benchmarks/posterior_correction.py --threads 1
    python benchmarks/posterior_correction.py --problems gravity --threads 1
    python benchmarks/posterior_correction.py --problems mt1d --num-heldout 10 --threads 1

Thread count and machine load are printed with the figures; on the shared 2-core machine the
times are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from _common import train_overrides

from inference.diagnostics.coverage import run_evaluation
from inference.exact import exact_posterior
from inference.importance import importance_sample
from inference.mcmc import nuts_draws_per_chain, nuts_sample, preconditioner_draws
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem
from ppl_cvae.problems.base import linear_gaussian_parts


def score(label, draws, x_true, y_obs, problem, exact, reference, ref_name="exact"):
    """Print one row of metrics for draws ``(S, M, *x_shape)``.

    ``exact``: an object with ``mean`` ``(M, *x_shape)`` and ``std`` (the exact posterior, or
    NUTS's draws as the reference), or None (chi-squared and coverage only).
    """
    m = run_evaluation(
        draws,
        x_true,
        x_reference=reference,
        y_obs=y_obs,
        problem=problem,
        exact_mean=exact.mean if exact is not None else None,
        exact_std=exact.std if exact is not None else None,
    )
    line = f"  {label:28s} chi2 {m['chi2_per_datum']:6.3f}  "
    if exact is not None:
        ex = m["exact"]
        line += (
            f"mean err {ex['mean_error_in_std']:.3f} ({ref_name} sd)  sd ratio "
            f"{ex['std_ratio']:.3f}  "
        )
    line += f"coverage {m['coverage_50']:.3f} / {m['coverage_90']:.3f}"
    if exact is not None:
        line += f"  ({ref_name} {ex['coverage_50']:.3f} / {ex['coverage_90']:.3f})"
    print(line + f"  RMSE ratio {m['rmse_ratio']:.3f}")


class DrawMoments:
    """Mean ``(M, *x_shape)`` and sd of draws ``(S, M, *x_shape)``: a reference posterior."""

    def __init__(self, draws):
        self.mean = draws.double().mean(0)
        self.std = draws.double().std(0)


def tail_diagnostics(result):
    """Largest bulk (``z_scale``) and folded R-hat and smallest tail ESS of one NUTS run."""
    import arviz as az

    ds = az.convert_to_dataset({"x": result.x.reshape(*result.x.shape[:2], -1).double().numpy()})
    return (
        float(az.rhat(ds, method="z_scale")["x"].max()),
        float(az.rhat(ds, method="folded")["x"].max()),
        float(az.ess(ds, method="tail")["x"].min()),
    )


def fit_and_hold_out(problem, args):
    """Fit with the recommended settings (``--epochs`` shortens them); draw the held-out set.

    Returns ``(cvae, result, fit_seconds, x_true, y_obs)``: ``--num-heldout`` observations
    simulated from the prior with seed 10000.
    """
    cvae, result, fit_seconds = fit_problem(problem, train=train_overrides(args.seed, args.epochs))
    x_true, y_obs = problem.simulate(args.num_heldout, torch.Generator().manual_seed(10_000))
    return cvae, result, fit_seconds, x_true, y_obs


def draw_and_correct(cvae, problem, y_obs, args):
    """Amortized draws and their importance-sampling correction, each timed.

    Returns ``(amortized, amortized_seconds, imp, is_seconds, resampled)``: ``--num-samples``
    amortized draws ``(S, M, *x_shape)``, the :func:`importance_sample` result of
    ``--is-samples`` proposals per observation and ``--num-samples`` draws resampled from it.
    """
    start = time.perf_counter()
    amortized = draw_posterior(cvae, y_obs, args.num_samples, seed=args.seed).x
    amortized_seconds = time.perf_counter() - start
    start = time.perf_counter()
    imp = importance_sample(cvae, problem, y_obs, args.is_samples, seed=args.seed)
    is_seconds = time.perf_counter() - start
    resampled = imp.resample(args.num_samples, torch.Generator().manual_seed(args.seed))
    return amortized, amortized_seconds, imp, is_seconds, resampled


def run(name, args):
    problem = make_problem(name)
    if linear_gaussian_parts(problem) is None:
        return run_without_closed_form(problem, args)
    cvae, result, fit_seconds, x_true, y_obs = fit_and_hold_out(problem, args)
    exact = exact_posterior(problem, y_obs)
    reference = cvae.x_location_scale()[0]
    cfg = cvae.config
    print(
        f"\n{name} (x {tuple(problem.x_shape)}, y {tuple(problem.y_shape)}): "
        f"{len(result.history)} epochs x {result.config.num_train} fresh pairs, latent "
        f"{cfg.latent_dim}, x whitening {cfg.x_whitening}, likelihood {cfg.likelihood}; "
        f"fit {fit_seconds:.0f} s; {args.num_heldout} held-out observations"
    )
    amortized, amortized_seconds, imp, is_seconds, resampled = draw_and_correct(
        cvae, problem, y_obs, args
    )
    score("amortized", amortized, x_true, y_obs, problem, exact, reference)
    exact_draws = exact.sample(args.num_samples, torch.Generator().manual_seed(args.seed))
    score("exact draws", exact_draws, x_true, y_obs, problem, exact, reference)
    score("importance (resampled)", resampled, x_true, y_obs, problem, exact, reference)
    parts = problem.linear_gaussian()
    a = parts.matrix.double()
    cov = a @ parts.prior_cov.double() @ a.T + parts.noise_cov.double()
    mvn = torch.distributions.MultivariateNormal(a @ parts.prior_mean.double(), cov)
    exact_log_z = mvn.log_prob(y_obs.reshape(len(y_obs), -1).double())
    eff = imp.sample_efficiency
    print(
        f"  importance: S = {args.is_samples} per observation, {is_seconds:.1f} s; sample "
        f"efficiency median {eff.median():.4f} (min {eff.min():.4f}, max {eff.max():.4f}); "
        f"k-hat median {imp.khat.median():.2f} (max {imp.khat.max():.2f}); reliable (k-hat <= "
        f"0.7) {int(imp.reliable.sum())}/{len(eff)}; log evidence error median "
        f"{(imp.log_evidence - exact_log_z).abs().median():.3f} nats (reported se median "
        f"{imp.log_evidence_se.median():.3f}); amortized draws {amortized_seconds:.2f} s"
    )
    rows = {"amortized": [], "none": [], "current": []}
    nuts_samples = args.nuts_samples or nuts_draws_per_chain(cfg.x_dim, args.chains)
    print(
        f"  NUTS: {args.chains} chains x ({args.nuts_warmup} warm-up + {nuts_samples} draws), "
        f"mass adaptation {not args.no_mass_adaptation}, max tree depth {args.max_tree_depth}, "
        f"cores {args.cores}, jit {args.nuts_jit}, potential {args.potential_dtype}; load "
        f"{os.getloadavg()[0]:.1f}"
    )
    for i in range(min(args.nuts_observations, args.num_heldout)):
        # 20 draws per coordinate estimate the preconditioner (as ppl-cvae sample does)
        num_start = preconditioner_draws(cvae.config.x_dim)
        init_amortized = draw_posterior(cvae, y_obs[i : i + 1], num_start, seed=i).x[:, 0]
        init_prior = problem.sample_prior(args.chains, torch.Generator().manual_seed(i))
        runs = [("amortized", init_amortized)]
        if i < args.baseline_observations:  # plain NUTS is slow in 1024 dimensions
            runs.append(("none", init_prior))
        if args.compare_current:  # the settings before issue 8's 60-s work, same start
            runs.append(("current", init_amortized))
        for precondition, init in runs:
            current = precondition == "current"
            res = nuts_sample(
                problem,
                y_obs[i],
                init,
                num_samples=250 if current else nuts_samples,
                warmup_steps=250 if current else args.nuts_warmup,
                num_chains=args.chains,
                precondition="amortized" if current else precondition,
                seed=args.seed,
                max_tree_depth=8 if current else args.max_tree_depth,
                adapt_mass_matrix=current or not args.no_mass_adaptation,
                num_cores=1 if current else args.cores,
                jit_compile=False if current else args.nuts_jit,
                potential_dtype="float64" if current else args.potential_dtype,
            )
            rows[precondition].append(res)
            print(f"    observation {i}, {precondition}: {run_line(res)}", flush=True)
    for precondition, results in rows.items():
        if not results:
            continue
        draws = torch.stack([r.x.reshape(-1, *problem.x_shape) for r in results], dim=1)
        k = draws.shape[1]
        sub = type(exact)(exact.mean[:k], exact.cov, tuple(problem.x_shape))
        score(f"NUTS ({precondition})", draws, x_true[:k], y_obs[:k], problem, sub, reference)
        # the rank R-hat is the larger of the bulk and the folded (tail) R-hat: report both,
        # with the tail ESS (of |x - median|) that the folded one follows
        parts = [tail_diagnostics(r) for r in results]
        depth = np.concatenate([r.sample_stats["tree_depth"].ravel() for r in results])
        print(
            f"    R-hat bulk max {max(p[0] for p in parts):.4f}, folded max "
            f"{max(p[1] for p in parts):.4f}; min tail ESS median "
            f"{torch.tensor([p[2] for p in parts]).median():.0f}; bound for the largest R-hat "
            f"(rhat_threshold) {results[0].rhat_threshold:.4f}; converged "
            f"{sum(r.converged for r in results)}/{len(results)}; tree depth median "
            f"{float(np.median(depth)):.0f}"
        )
        print_nuts_stats(results)
    if rows["amortized"] and rows["current"]:
        new, cur = rows["amortized"], rows["current"]

        def ratio(f):
            return torch.tensor([f(a) / max(f(b), 1e-9) for a, b in zip(new, cur, strict=True)])

        print(
            "    these settings over the current ones (4 x (250 + 250), mass adaptation, 1 "
            "process), medians over observations: evaluations/s "
            f"{ratio(lambda r: r.num_evaluations / r.seconds).median():.2f}x, ESS per 1000 "
            f"evaluations {ratio(lambda r: r.min_ess / r.num_evaluations).median():.2f}x, "
            f"tail ESS per 1000 evaluations "
            f"{ratio(lambda r: tail_diagnostics(r)[2] / r.num_evaluations).median():.2f}x, "
            f"seconds {ratio(lambda r: r.seconds).median():.2f}x"
        )
    if rows["amortized"] and rows["none"]:
        ratio = torch.tensor(
            [
                (a.min_ess / a.seconds) / max(b.min_ess / b.seconds, 1e-9)
                for a, b in zip(rows["amortized"], rows["none"], strict=False)
            ]
        )
        print(f"    ESS/s of amortized-start NUTS over plain NUTS: median {ratio.median():.1f}x")


def run_line(result):
    """One NUTS run: time, evaluations, R-hat (bulk, folded, bound), ESS (bulk, tail)."""
    bulk, folded, tail = tail_diagnostics(result)
    per_1000 = 1000 * result.min_ess / result.num_evaluations
    return (
        f"{result.seconds:.1f} s ({result.cpu_seconds:.1f} s of processor time), "
        f"{result.num_evaluations} evaluations ({result.num_evaluations / result.seconds:.0f}/s, "
        f"{1000 * result.cpu_seconds / result.num_evaluations:.2f} ms of processor time "
        f"each), R-hat bulk {bulk:.4f} folded "
        f"{folded:.4f} (bound {result.rhat_threshold:.4f}), min ESS bulk {result.min_ess:.0f} "
        f"tail {tail:.0f}, ESS per 1000 evaluations {per_1000:.1f} "
        f"(tail {1000 * tail / result.num_evaluations:.1f}), divergences {result.divergences}, "
        f"converged {result.converged}"
    )


def nuts_rows(problem, cvae, y_obs, args):
    """Run amortized-start (and, on the first observations, plain) NUTS; return the results."""
    rows = {"amortized": [], "none": []}
    for i in range(min(args.nuts_observations, len(y_obs))):
        # 20 draws per coordinate estimate the preconditioner (as ppl-cvae sample does)
        num_start = preconditioner_draws(cvae.config.x_dim)
        init_amortized = draw_posterior(cvae, y_obs[i : i + 1], num_start, seed=i).x[:, 0]
        init_prior = problem.sample_prior(args.chains, torch.Generator().manual_seed(i))
        runs = [("amortized", init_amortized)]
        if i < args.baseline_observations:
            runs.append(("none", init_prior))
        for precondition, init in runs:
            rows[precondition].append(
                nuts_sample(
                    problem,
                    y_obs[i],
                    init,
                    num_samples=args.nuts_samples,
                    warmup_steps=args.nuts_warmup,
                    num_chains=args.chains,
                    precondition=precondition,
                    seed=args.seed,
                    potential_dtype=args.potential_dtype,
                )
            )
    return rows


def print_nuts_stats(results):
    """Print R-hat, ESS, time and divergences of NUTS results."""
    rhat = torch.tensor([r.rhat for r in results])
    ess = torch.tensor([r.min_ess for r in results])
    secs = torch.tensor([r.seconds for r in results])
    evals = torch.tensor([float(r.num_evaluations) for r in results])
    print(
        f"    R-hat max {rhat.max():.4f}; min ESS median {ess.median():.0f} (min "
        f"{ess.min():.0f}); {secs.median():.1f} s per observation (median); ESS/s median "
        f"{(ess / secs).median():.1f}; ESS per 1000 evaluations median "
        f"{(1000 * ess / evals).median():.2f}; divergences {sum(r.divergences for r in results)}"
    )


def run_without_closed_form(problem, args):
    """Amortized against importance-sampled against NUTS draws, no exact posterior."""
    cvae, result, fit_seconds, x_true, y_obs = fit_and_hold_out(problem, args)
    reference = cvae.x_location_scale()[0]
    cfg = cvae.config
    print(
        f"\n{problem.name} (x {tuple(problem.x_shape)}, y {tuple(problem.y_shape)}; no closed "
        f"form): {len(result.history)} epochs x {result.config.num_train} fresh pairs, latent "
        f"{cfg.latent_dim}, likelihood {cfg.likelihood}, linear skip {cfg.linear_skip}; fit "
        f"{fit_seconds:.0f} s; {args.num_heldout} held-out observations"
    )
    amortized, amortized_seconds, imp, is_seconds, resampled = draw_and_correct(
        cvae, problem, y_obs, args
    )
    score("amortized", amortized, x_true, y_obs, problem, None, reference)
    score("importance (resampled)", resampled, x_true, y_obs, problem, None, reference)
    eff = imp.sample_efficiency
    outside = int((~torch.isfinite(imp.log_weight)).sum())
    print(
        f"  importance: S = {args.is_samples} per observation, {is_seconds:.1f} s; sample "
        f"efficiency median {eff.median():.4f} (min {eff.min():.4f}, max {eff.max():.4f}); "
        f"k-hat median {imp.khat.median():.2f} (max {imp.khat.max():.2f}); reliable (k-hat <= "
        f"0.7) {int(imp.reliable.sum())}/{len(eff)}; proposals outside the prior's support "
        f"{outside}; amortized draws {amortized_seconds:.2f} s"
    )
    print("    obs  log evidence (nats)   se     k-hat  efficiency")
    for i in range(len(eff)):
        print(
            f"    {i:3d}  {float(imp.log_evidence[i]):12.3f}  {float(imp.log_evidence_se[i]):8.3f}"
            f"  {float(imp.khat[i]):6.2f}  {float(eff[i]):8.4f}"
        )
    rows = nuts_rows(problem, cvae, y_obs, args)
    ref = None
    for precondition, results in rows.items():
        if not results:
            continue
        draws = torch.stack([r.x.reshape(-1, *problem.x_shape) for r in results], dim=1)
        k = draws.shape[1]
        if precondition == "amortized":
            ref = DrawMoments(draws)
        score(
            f"NUTS ({precondition})", draws, x_true[:k], y_obs[:k], problem, ref, reference, "NUTS"
        )
        print_nuts_stats(results)
    if ref is not None:
        k = ref.mean.shape[0]
        print(f"  on the {k} NUTS observations, against NUTS (amortized start) as the reference:")
        for label, draws in (("amortized", amortized), ("importance (resampled)", resampled)):
            score(label, draws[:, :k], x_true[:k], y_obs[:k], problem, ref, reference, "NUTS")


def main(args):
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}")
    for name in args.problems.split(","):
        run(name.strip(), args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="crosshole,gravity")
    parser.add_argument("--epochs", type=int, help="override the recommended epochs")
    parser.add_argument("--num-heldout", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=1000, help="draws per observation")
    parser.add_argument("--is-samples", type=int, default=5000, help="proposals per observation")
    parser.add_argument("--nuts-observations", type=int, default=3)
    parser.add_argument(
        "--baseline-observations", type=int, default=1, help="observations for plain NUTS"
    )
    parser.add_argument(
        "--nuts-samples",
        type=int,
        default=250,
        help="per chain; 0: nuts_draws_per_chain of the dimension (as ppl-cvae sample does)",
    )
    parser.add_argument("--nuts-warmup", type=int, default=250)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--max-tree-depth", type=int, default=8, help="NUTS tree depth limit")
    parser.add_argument(
        "--no-mass-adaptation",
        action="store_true",
        help="warm-up adapts the step size only (the preconditioner is the mass matrix)",
    )
    parser.add_argument(
        "--cores", type=int, default=1, help="worker processes for the chains (num_cores)"
    )
    parser.add_argument("--nuts-jit", action="store_true", help="trace the potential")
    parser.add_argument(
        "--potential-dtype", default="float64", choices=["float64", "float32"],
        help="precision of the NUTS potential (nuts_sample(potential_dtype=...))",
    )
    parser.add_argument(
        "--compare-current",
        action="store_true",
        help="also run the settings before (4 x (250 + 250), mass adaptation, depth 8, 1 "
        "process) on the same observations and print the ratios",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
