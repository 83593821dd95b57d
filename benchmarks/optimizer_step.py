"""SVI step time with Pyro's per-tensor ClippedAdam against ppl_cvae's ``_foreach`` one.

:class:`ppl_cvae.train.optim.FusedClippedAdam` steps every tensor of a parameter group with
torch's ``_foreach`` kernels; its updates equal ``pyro.optim.ClippedAdam``'s bit for bit
(``tests/test_optim.py``), so only the time differs. On Two Birds (``data_1``, the problem's
recommended architecture, batch 256) the default CVAE and the default prior flow are each
built twice from one seed, once per optimiser (the same weights, batches and updates); their
SVI steps alternate in blocks so that machine load hits both alike, and the median per-block
step time of the ``_foreach`` optimiser is divided by the loop's.

Run::

    python benchmarks/optimizer_step.py [--threads 1] [--blocks 9] [--steps 10]

Prints one line per family: the two medians and their ratio (below 1: the ``_foreach`` step
is faster). About 1 minute at 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim.clipped_adam import ClippedAdam

from ppl_cvae import Overrides, TwoBirds, build_cvae, resolve_settings
from ppl_cvae.train.optim import FusedClippedAdam

FAMILIES = {
    "default": {},
    "--prior flow": {"prior": "flow"},
}


def main() -> None:
    """Parse the flags, time both optimisers on each family and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--blocks", type=int, default=9, help="interleaved blocks per optimiser")
    parser.add_argument("--steps", type=int, default=10, help="SVI steps per block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problem = TwoBirds("data_1")
    x, y = problem.simulate(4096, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 4096, (256,), generator=gen) for _ in range(args.steps)]
    print(f"threads {args.threads}, {args.blocks} blocks of {args.steps} steps, batch 256")
    for family, model in FAMILIES.items():
        runs = {}
        for variant in ("loop", "foreach"):
            config, _ = resolve_settings(problem, Overrides(model=model))
            cvae = build_cvae(config, x, y, problem=problem, seed=0)
            optim = FusedClippedAdam({"lr": 1e-4})
            svi = SVI(cvae.model, cvae.guide, optim, Trace_ELBO())
            svi.step(y[batches[0]], x[batches[0]])  # creates the torch optimiser
            if variant == "loop":  # the same state, stepped by Pyro's per-tensor loop
                optim._optimizer.__class__ = ClippedAdam
            runs[variant] = (svi, [])
        for _ in range(args.blocks):
            for svi, times in runs.values():
                start = time.perf_counter()
                for idx in batches:
                    svi.step(y[idx], x[idx])
                times.append((time.perf_counter() - start) / len(batches))
        loop = statistics.median(runs["loop"][1])
        foreach = statistics.median(runs["foreach"][1])
        print(
            f"{family}: loop {1e3 * loop:.1f} ms, foreach {1e3 * foreach:.1f} ms per step, "
            f"ratio {foreach / loop:.3f}"
        )


if __name__ == "__main__":
    main()
