"""Facies SMC on crosshole channels: does a population from the prior find the truth's basin?

Where the facies chains end in another basin (docs/measurements.md, "Where the chains are:
another basin"),
:func:`inference.facies_smc.facies_smc_sample` starts particles at exact draws of the
generative prior and tempers the likelihood in. For each observation (the generative truths of
``latent_mcmc.py --truths generative``, exact draws of the sampler's own target, so the truth
is a posterior draw) it prints ``log p(y | x)`` of the truth and of the particles, the fraction
of each population's particles that fit better than the truth (its misfit rank: uniform over
observations if the particles are posterior draws; near 0 where the particles sit in a basin of
worse fit), how many cells the particles differ from the truth, each population's log evidence,
whether they agree (the sampler's verdict), the stages and the R-hat over the populations.
Run (figures in docs/measurements.md)::

    python benchmarks/facies_smc.py --prior-run PRIOR --particles 512 --populations 2 --obs 3
"""

from __future__ import annotations

import argparse

import torch
from latent_mcmc import generative_truths

from inference.facies_smc import facies_smc_sample
from ppl_cvae.problems import make_problem
from ppl_cvae.train import load_checkpoint


def main(args):
    torch.set_num_threads(args.threads)
    problem = make_problem("crosshole", prior="channels")
    prior, _ = load_checkpoint(args.prior_run, problem=problem)
    prior.eval()
    x_true, y_obs = generative_truths(prior, problem, 8)
    print(
        f"{args.populations} population(s) x {args.particles} particles, {args.steps} steps per "
        f"stage, {args.final} at beta = 1, {args.flips} facies moves and {args.noncentred} "
        f"non-centred moves per step, waste-free {args.waste_free}, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )
    for i in map(int, args.obs.split(",")):
        res = facies_smc_sample(
            prior,
            problem,
            y_obs[i],
            num_particles=args.particles,
            populations=args.populations,
            steps_per_stage=args.steps,
            final_steps=args.final,
            flips_per_step=args.flips,
            noncentred_moves=args.noncentred,
            waste_free=args.waste_free,
            seed=100 + i,
        )
        truth = float(problem.log_likelihood(x_true[i : i + 1], y_obs[i]))
        ll = res.log_likelihood
        better = (ll > truth).double().mean(-1)
        off = (res.x != x_true[i]).flatten(2).sum(-1).float()
        print(
            f"obs {i}: {res.seconds:.0f} s, stages {[len(b) - 1 for b in res.betas]}; truth log "
            f"p(y|x) {truth:.0f}; particles median {ll.median():.0f} max {ll.max():.0f}; "
            f"better than truth {[round(float(b), 2) for b in better]}; cells off min "
            f"{off.min():.0f} median {off.median():.0f}; log evidence "
            f"{[round(float(v), 1) for v in res.log_evidence]} (spread "
            f"{res.evidence_spread:.2f}, bound {res.evidence_tolerance:.2f}: "
            f"{'agree' if res.converged else 'FAILED'}); R-hat {res.rhat:.3f} (bound "
            f"{res.rhat_threshold:.3f}, not the verdict); distinct {res.distinct:.2f}; "
            f"acceptance z {res.accept_z:.2f} x {res.accept_x:.3f} non-centred "
            f"{res.accept_noncentred:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior-run", required=True, help="the generative prior's run")
    parser.add_argument("--particles", type=int, default=512, help="per population")
    parser.add_argument("--populations", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="facies MCMC steps per stage")
    parser.add_argument("--final", type=int, default=40, help="steps at beta = 1")
    parser.add_argument("--flips", type=int, default=16, help="facies moves per step")
    parser.add_argument("--noncentred", type=int, default=0, help="non-centred moves per step")
    parser.add_argument(
        "--waste-free", action="store_true",
        help="waste-free SMC: --particles / --steps chains, every state kept",
    )
    parser.add_argument("--obs", default="0,4", help="generative truths, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
