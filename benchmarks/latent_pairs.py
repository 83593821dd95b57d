"""Write ``(z, y)`` pairs of a generative facies prior to an ``.npz`` for ``ppl-cvae fit --data``.

A latent NPE of crosshole channels (docs/measurements.md, "Where the chains are: another
basin"): the
file's ``x`` is the generative prior's latent ``z``, so ``ppl-cvae fit --data`` on it fits
``q(z | y)`` (a flow on the 32-D latent with the defaults), and ``benchmarks/latent_mcmc.py
--latent-npe-run RUN`` decodes its draws through the prior, ``x ~ p_g(x | z)``.

``--source generative``: ``z ~ N(0, I)``, ``x ~ p_g(x | z)`` (the facies decoder's noise
included), ``y = F(x) + e``, the generative prior's own joint (its truths are those of
``latent_mcmc.py --truths generative``, drawn with another seed). ``--source simulator``:
``x`` from the channel simulator, ``z ~ q_g(z | x)`` (the prior's recognition net), ``y = F(x)
+ e``. Run (the figures in docs/measurements.md)::

    python benchmarks/latent_pairs.py --prior-run PRIOR --out zy_gen.npz
    python benchmarks/latent_pairs.py --prior-run PRIOR --source simulator --seed 50000 \\
        --out zy_sim.npz
    ppl-cvae fit --data zy_gen.npz --out lnpe_gen --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from latent_mcmc import generative_draws

from ppl_cvae.problems import make_problem
from ppl_cvae.train import load_checkpoint


def main(args):
    torch.set_num_threads(args.threads)
    problem = make_problem("crosshole", prior="channels")
    prior, _ = load_checkpoint(args.prior_run, problem=problem)
    prior.eval()
    gen = torch.Generator().manual_seed(args.seed)
    zs, ys = [], []
    begin = time.perf_counter()
    with torch.no_grad():
        for start in range(0, args.num, 2000):
            n = min(2000, args.num - start)
            if args.source == "generative":
                z, x, y = generative_draws(prior, problem, n, gen)
            else:
                x = problem.sample_prior(n, gen)
                ref = prior.x_standardiser.mean
                loc, scale = prior.recognition_params(None, x.to(ref.dtype))
                z = loc + scale * torch.randn(loc.shape, generator=gen)
                y = problem.forward(x) + problem.noise.sample((n,), gen)
            zs.append(z.float())
            ys.append(y.float())
    z, y = torch.cat(zs).numpy(), torch.cat(ys).numpy()
    np.savez(args.out, x=z, y=y)
    print(
        f"{args.num} pairs ({args.source}) in {time.perf_counter() - begin:.0f} s -> "
        f"{args.out}; z {z.shape}, y {y.shape}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior-run", required=True, help="the generative prior's run")
    parser.add_argument("--num", type=int, default=200_000)
    parser.add_argument("--source", choices=("generative", "simulator"), default="generative")
    parser.add_argument("--seed", type=int, default=40_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
