"""Prototype: sequential Monte Carlo from the generative prior on crosshole channels (issue 8).

Where the facies chains end in another basin (README, "Where the chains are: another basin"),
a population method is the other way in: particles start as exact draws of the generative
prior (``z ~ N(0, I)``, ``x ~ p_g(x | z)``) and the likelihood is switched on gradually,
``p(y | x)^beta`` from ``beta = 0`` to 1 (Del Moral, Doucet and Jasra 2006). Each stage picks
the next ``beta`` so that the effective sample size of the incremental weights ``exp(d_beta
log p(y | x))`` is half the particles (geometric bisection), resamples systematically, and
moves every particle by ``--steps`` steps of facies MCMC
(:func:`inference.facies_mcmc.facies_mcmc_sample`, one chain per particle, no tempering)
targeting the tempered posterior; ``--final`` steps at ``beta = 1``. A Gaussian likelihood to
the power ``beta`` is, up to a constant, the same Gaussian with noise sd ``sigma /
sqrt(beta)``, so the kernel runs on the problem with that noise. The kernel restarts ``z`` at
the recognition net's mean of each particle's field (its independence and MALA moves then
move it), so this is a prototype, not an exact SMC sampler; the log evidence it prints is the
usual product of the stages' mean weights under that caveat.

For each observation (the generative truths of ``latent_mcmc.py --truths generative``) it
prints ``log p(y | x)`` of the truth and of the final particles, the fraction of particles
that fit better than the truth (about uniform over observations if the particles were
posterior draws) and how many cells the particles differ from the truth. Run (README)::

    python benchmarks/facies_smc.py --prior-run PRIOR --particles 128 --obs 0
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from latent_mcmc import generative_draws, generative_truths

from inference.facies_mcmc import facies_mcmc_sample
from ppl_cvae.problems import make_problem
from ppl_cvae.train import load_checkpoint


def ess(logw):
    """Effective sample size of self-normalised weights ``exp(logw)``."""
    w = torch.softmax(logw, 0)
    return 1.0 / (w**2).sum()


def next_increment(ll, remaining, target):
    """Largest ``d <= remaining`` (geometric bisection) with ``ess(d ll) >= target``."""
    if ess(remaining * ll) >= target:
        return remaining
    lo, hi = remaining * 1e-8, remaining
    if ess(lo * ll) < target:
        return lo
    for _ in range(49):
        mid = math.sqrt(lo * hi)
        if ess(mid * ll) >= target:
            lo = mid
        else:
            hi = mid
    return lo


def run_observation(prior, problem, x_true, y, i, args):
    begin = time.perf_counter()
    num = args.particles
    gen = torch.Generator().manual_seed(100 + i)
    _, x, _ = generative_draws(prior, problem, num, gen, data=False)
    beta, stage, log_evidence = 0.0, 0, 0.0
    while beta < 1.0:
        ll = problem.log_likelihood(x, y).double()
        d = next_increment(ll, 1.0 - beta, num / 2)
        logw = d * ll
        log_evidence += float(torch.logsumexp(logw, 0) - math.log(num))
        beta = min(1.0, beta + d)
        u = (torch.rand(1, generator=gen).double() + torch.arange(num)) / num
        idx = torch.searchsorted(torch.cumsum(torch.softmax(logw, 0), 0), u).clamp(max=num - 1)
        tempered = make_problem(
            "crosshole", prior="channels", noise_std=problem.noise_std / math.sqrt(beta)
        )
        res = facies_mcmc_sample(
            prior,
            tempered,
            y,
            x[idx],
            num_samples=4,
            warmup_steps=args.final if beta >= 1.0 else args.steps,
            num_chains=num,
            start="first",
            temperatures=1,
            seed=1000 * i + stage,
        )
        x = res.x[:, -1]
        stage += 1
        if stage % 5 == 0 or beta >= 1.0:
            now = problem.log_likelihood(x, y)
            print(
                f"  obs {i} stage {stage} beta {beta:.3g} log p(y|x) mean {now.mean():.0f} max "
                f"{now.max():.0f}",
                flush=True,
            )
    ll = problem.log_likelihood(x, y)
    truth = float(problem.log_likelihood(x_true[i : i + 1], y))
    off = (x != x_true[i]).flatten(1).sum(-1)
    print(
        f"obs {i}: {stage} stages, {time.perf_counter() - begin:.0f} s; truth log p(y|x) "
        f"{truth:.0f}; particles median {ll.median():.0f} max {ll.max():.0f}; fraction of "
        f"particles fitting better than the truth {float((ll > truth).double().mean()):.2f}; "
        f"cells off min {off.min()} median {off.float().median():.0f}; log evidence "
        f"{log_evidence:.1f}",
        flush=True,
    )


def main(args):
    torch.set_num_threads(args.threads)
    # the kernel's own chain diagnostics (R-hat and ESS of 4 kept steps) warn; unused here
    warnings.simplefilter("ignore")
    problem = make_problem("crosshole", prior="channels")
    prior, _ = load_checkpoint(args.prior_run, problem=problem)
    prior.eval()
    x_true, y_obs = generative_truths(prior, problem, 8)
    for i in map(int, args.obs.split(",")):
        run_observation(prior, problem, x_true, y_obs[i], i, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior-run", required=True, help="the generative prior's run")
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="facies MCMC steps per stage")
    parser.add_argument("--final", type=int, default=40, help="steps at beta = 1")
    parser.add_argument("--obs", default="0,4", help="generative truths, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
