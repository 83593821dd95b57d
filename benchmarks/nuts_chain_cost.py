"""Processor time per potential evaluation of one NUTS chain, Pyro's tree building included.

One chain of :func:`inference.mcmc.nuts_sample` (``--warmup`` step-size-only warm-up +
``--draws``, seed 0) on observation 0 of the held-out set of
``benchmarks/posterior_correction.py`` (prior draws, seed 10000), started and preconditioned
by exact posterior draws widened by 5% (as ``benchmarks/nuts_potential.py``), printing the
processor seconds of the chain divided by its potential evaluations. ``--potential-dtype old``
calls ``nuts_sample`` without the argument, so the same script times an older checkout.

To compare two checkouts under a shared machine's load, alternate them in one loop and take
the ratios of the medians (the figures in docs/measurements.md; ``OLD`` is a checkout of the
commit before)::

    for r in 1 2 3; do
      (cd OLD && PYTHONPATH=$PWD python $NEW/benchmarks/nuts_chain_cost.py --potential-dtype old)
      for d in float64 float32; do
        PYTHONPATH=$NEW python $NEW/benchmarks/nuts_chain_cost.py --potential-dtype $d
      done
    done

Thread count and load average are printed with the figure.
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import exact_start

from inference.mcmc import nuts_sample


def main(args):
    torch.set_num_threads(args.threads)
    problem, _, y, _, init = exact_start(args.problem)
    extra = {} if args.potential_dtype == "old" else {"potential_dtype": args.potential_dtype}
    res = nuts_sample(
        problem, y, init, num_samples=args.draws, warmup_steps=args.warmup, num_chains=1,
        adapt_mass_matrix=False, seed=0, **extra,
    )
    print(
        f"{problem.name} {args.potential_dtype:8s} {res.num_evaluations} evaluations "
        f"{1000 * res.cpu_seconds / res.num_evaluations:.3f} processor ms per evaluation, min "
        f"bulk ESS {res.min_ess:.0f}; threads {torch.get_num_threads()}, load "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="crosshole")
    parser.add_argument("--potential-dtype", default="float64",
                        choices=["old", "float64", "float32"])
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
