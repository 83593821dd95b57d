"""Tail ESS per draw of the default NUTS, per problem and observation; the draws it implies.

:func:`inference.mcmc.nuts_draws_per_chain` divides the independent draws per chain that keep
the largest R-hat of ``dim`` coordinates under 1.01 (probability 0.9) by the tail ESS per draw
of NUTS, :data:`inference.mcmc.NUTS_TAIL_EFFICIENCY`. This script measures that efficiency:
for each problem (``--problems name:observations,...``) it fits the CVAE with the problem's
recommended settings (``--epochs`` shortens them), draws the held-out observations of
``benchmarks/posterior_correction.py`` (prior, seed 10000) and runs the ``ppl-cvae sample
--method nuts`` defaults on each (4 chains started at amortized draws, preconditioned by the
Ledoit-Wolf covariance of ``preconditioner_draws`` of them, 150 step-size-only warm-up
iterations, ``nuts_draws_per_chain(dim)`` draws per chain with the current constant, float32
potential, max tree depth 8, seed 0). It prints, per observation, the smallest tail ESS over
the coordinates divided by the draws (all chains), the smallest bulk ESS per draw, the
largest bulk and folded R-hat (ArviZ), the evaluations and the processor time, and saves the
draws (``--out``, one ``.npz`` per observation).

``--analyse`` then reads the saved draws (no sampling), prints the efficiencies again with
their quantiles and, for ``--tail-efficiency E`` (default: the rule below), the draws per chain
``nuts_draws_per_chain(dim, tail_efficiency=E)`` and the diagnostics of every saved run cut to
that many draws per chain (the first ``n`` post-warm-up draws of a chain are the draws a run
with ``num_samples=n`` gives: the warm-up does not depend on ``num_samples``, and the seed is
the same). The default constant tried is the smallest efficiency measured, rounded down to a
multiple of 0.05; the 10% quantile of the efficiencies (NumPy's default, linear
interpolation) and its standard error (the spread of the quantile over 2000 bootstrap
resamples of the runs) are printed beside it.

Run (the figures in docs/measurements.md; 1 thread, one process)::

    python benchmarks/nuts_tail_efficiency.py --epochs 10 --out /tmp/nuts_eff \\
        --problems linear_gaussian:3,crosshole:6,gravity:4,mt1d:3
    python benchmarks/nuts_tail_efficiency.py --analyse --out /tmp/nuts_eff

Thread count and load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time

import numpy as np
import torch
from _common import train_overrides

from inference.mcmc import (
    NUTS_TAIL_EFFICIENCY,
    nuts_draws_per_chain,
    nuts_sample,
    preconditioner_draws,
    rhat_threshold,
)
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem


def diagnostics(x):
    """Bulk R-hat max, folded R-hat max, min bulk ESS, min tail ESS of ``(chains, draws, dim)``."""
    import arviz as az

    ds = az.convert_to_dataset({"x": np.asarray(x, dtype=np.float64)})
    return (
        float(az.rhat(ds, method="z_scale")["x"].max()),
        float(az.rhat(ds, method="folded")["x"].max()),
        float(az.ess(ds, method="bulk")["x"].min()),
        float(az.ess(ds, method="tail")["x"].min()),
    )


def sampled_dim(problem):
    """Sampled coordinates: the basis parameters, else the cells (as ``ppl-cvae sample``)."""
    par = problem.parameterisation()
    return par.dim if par is not None else math.prod(problem.x_shape)


def run(args):
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}", flush=True)
    for item in args.problems.split(","):
        name, _, count = item.strip().partition(":")
        num_obs = int(count or 3)
        problem = make_problem(name)
        start = time.perf_counter()
        cvae, _, _ = fit_problem(problem, train=train_overrides(args.seed, args.epochs))
        _, y_obs = problem.simulate(max(num_obs, 1), torch.Generator().manual_seed(10_000))
        dim = sampled_dim(problem)
        draws = nuts_draws_per_chain(dim, args.chains)
        print(
            f"{name}: dim {dim}, fit {time.perf_counter() - start:.0f} s; {args.chains} x "
            f"(150 + {draws}), load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for i in range(num_obs):
            init = draw_posterior(cvae, y_obs[i : i + 1], preconditioner_draws(dim), seed=i).x
            res = nuts_sample(
                problem, y_obs[i], init[:, 0], num_samples=draws, warmup_steps=150,
                num_chains=args.chains, adapt_mass_matrix=False, seed=args.seed,
                potential_dtype=args.potential_dtype,
            )
            x = res.x.reshape(*res.x.shape[:2], -1).double().numpy()
            meta = {
                "problem": name, "observation": i, "dim": dim, "chains": args.chains,
                "draws": draws, "evaluations": res.num_evaluations,
                "cpu_seconds": res.cpu_seconds, "divergences": res.divergences,
                "potential_dtype": res.potential_dtype,
            }
            path = os.path.join(args.out, f"{name}_{i}.npz")
            tmp = path + ".tmp.npz"
            np.savez(tmp, x=x.astype(np.float32), meta=json.dumps(meta))
            os.replace(tmp, path)
            print("  " + line(meta, diagnostics(x), draws) + f", load {os.getloadavg()[0]:.1f}",
                  flush=True)


def line(meta, diag, draws):
    """One run's figures: efficiencies per draw, R-hats, ESS."""
    bulk_r, folded_r, bulk, tail = diag
    total = meta["chains"] * draws
    return (
        f"{meta['problem']} obs {meta['observation']} ({draws}/chain): tail ESS per draw "
        f"{tail / total:.3f}, bulk {bulk / total:.3f}; R-hat bulk {bulk_r:.4f} folded "
        f"{folded_r:.4f}; min ESS bulk {bulk:.0f} tail {tail:.0f}; {meta['evaluations']} "
        f"evaluations, {1000 * meta['cpu_seconds'] / meta['evaluations']:.2f} processor ms each, "
        f"divergences {meta['divergences']}"
    )


def low_quantile_rule(values, q=0.1, boot=2000, seed=0):
    """Return (q-quantile, its bootstrap standard error) of per-observation efficiencies."""
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    resampled = rng.choice(values, size=(boot, len(values)), replace=True)
    return float(np.quantile(values, q)), float(np.quantile(resampled, q, axis=1).std())


def analyse(args):
    runs = []
    for path in sorted(glob.glob(os.path.join(args.out, "*.npz"))):
        if path.endswith(".tmp.npz"):
            continue
        with np.load(path) as f:
            runs.append((json.loads(str(f["meta"])), f["x"].astype(np.float64)))
    effs = []
    for meta, x in runs:
        diag = diagnostics(x)
        effs.append(diag[3] / (meta["chains"] * meta["draws"]))
        print(line(meta, diag, meta["draws"]))
    q10, se = low_quantile_rule(effs)
    print(
        f"tail ESS per draw over {len(effs)} runs: min {min(effs):.3f}, 10% quantile {q10:.3f} "
        f"(bootstrap se {se:.3f}), median {np.median(effs):.3f}; q10 - se = {q10 - se:.3f}; "
        f"the smallest rounded down to 0.05: {math.floor(20 * min(effs)) / 20}; constant now "
        f"{NUTS_TAIL_EFFICIENCY}"
    )
    eff = args.tail_efficiency or math.floor(20 * min(effs)) / 20
    print(f"cut to nuts_draws_per_chain(dim, tail_efficiency={eff}):")
    ok = 0
    for meta, x in runs:
        n = nuts_draws_per_chain(meta["dim"], meta["chains"], tail_efficiency=eff)
        n = min(n, x.shape[1])
        diag = diagnostics(x[:, :n])
        rhat = max(diag[0], diag[1])
        bound = rhat_threshold(meta["chains"], n, meta["dim"])
        good = rhat <= 1.01 and diag[2] >= 400
        ok += good
        print(
            "  " + line(meta, diag, n).split("; ", 1)[0] + f"; R-hat {rhat:.4f} (bound "
            f"{bound:.4f}), min ESS bulk {diag[2]:.0f} tail {diag[3]:.0f}; evaluations about "
            f"{meta['evaluations'] * (150 + n) / (150 + meta['draws']):.0f}; R-hat <= 1.01 and "
            f"min ESS >= 400: {good}"
        )
    print(f"{ok} of {len(runs)} runs meet R-hat <= 1.01 and min ESS >= 400 at {eff}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default="linear_gaussian:3,crosshole:6,gravity:4,mt1d:3")
    parser.add_argument("--epochs", type=int, help="override the recommended epochs")
    parser.add_argument("--out", default="nuts_tail_efficiency", help="folder of the draws")
    parser.add_argument("--analyse", action="store_true", help="read the saved draws only")
    parser.add_argument("--tail-efficiency", type=float, help="--analyse: the constant to try")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--potential-dtype", default="float32", choices=["float64", "float32"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    analyse(cli) if cli.analyse else run(cli)
