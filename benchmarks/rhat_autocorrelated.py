"""False alarms and power of the NUTS verdict's R-hat bound on autocorrelated chains.

NUTS's draws are autocorrelated (0.3-0.5 effective draws per draw on a low-dimensional
posterior), so the largest R-hat of mixed chains is wider than that of independent draws.
For stationary AR(1) chains of a ``--dim``-D standard normal (``--chains x --draws``, the
first chain shifted by ``shift`` sd, an unmixed chain when the shift is nonzero), over
``--sets`` sets per cell, the fraction whose largest R-hat (``chain_diagnostics``) exceeds:

- the bound of independent draws, ``rhat_threshold(chains, draws, dim)`` (the verdict before
  session 31);
- ``rhat_bound``: that bound at the within-chain effective draws of the quantity with the
  largest R-hat (the verdict now).

With shift 0 the fraction is the false-alarm rate (meant: 1%), else the power.

Run (the figures in docs/measurements.md)::

    python benchmarks/rhat_autocorrelated.py --threads 1

About 3 minutes for the default 400 sets per cell on one thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.signal import lfilter

from inference.arviz_io import chain_diagnostics, rhat_bound
from inference.mcmc import rhat_threshold


def ar1_chains(rng, rho, shape, shift):
    """Stationary AR(1) chains, shape (chains, draws, dim), N(0, 1) marginals."""
    noise = rng.standard_normal((shape[0], shape[1] + 200, shape[2]))
    chains = lfilter([np.sqrt(1 - rho**2)], [1.0, -rho], noise, axis=1)[:, 200:]
    chains[0] += shift
    return chains


def main(args):
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    shape = (args.chains, args.draws, args.dim)
    independent = rhat_threshold(*shape)
    print(
        f"AR(1) chains {args.chains} x {args.draws} x {args.dim}, {args.sets} sets per cell; "
        f"bound of independent draws {independent:.4f}"
    )
    for rho in args.rho:
        for shift in args.shift:
            start = time.perf_counter()
            above_independent = above_bound = 0
            bounds = []
            for _ in range(args.sets):
                chains = ar1_chains(rng, rho, shape, shift)
                rhat, _ = chain_diagnostics(chains)
                bound = rhat_bound(chains)
                bounds.append(bound)
                above_independent += rhat > independent
                above_bound += rhat > bound
            print(
                f"rho {rho:.1f} (ESS per draw {(1 - rho) / (1 + rho):.2f}), shift {shift:.1f} "
                f"sd: above the independent bound {above_independent / args.sets:.3f}, above "
                f"rhat_bound {above_bound / args.sets:.3f} (median bound {np.median(bounds):.4f};"
                f" {time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=289, help="per chain")
    parser.add_argument("--sets", type=int, default=400)
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.4, 0.6, 0.8])
    parser.add_argument("--shift", type=float, nargs="+", default=[0.0, 0.4, 0.6])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
