"""A user's prior with a bounded support: every method against the exact posterior.

The problem, written as a user writes one: ``x ~ U(0, 1)^3``, ``y = x + N(0, 0.1^2)``, with
``log_prior`` ``-inf`` outside the box and the support declared (``support =
constraints.unit_interval``) or not. Its posterior is a product of normals ``N(y_i, 0.1^2)``
truncated to ``[0, 1]`` (scipy's ``truncnorm``). Fit with the problem's defaults (what ``fit
--problem module:factory`` gives it: a flow on ``x``), then for 5 observations, three of them
near the faces of the box, print per method the share of draws outside the box, the largest
error of a marginal mean in exact posterior sds and the range of the sd ratios; for the
amortized draws also the share of the trained posterior's own draws outside (what was
returned before the support was known) and the share kept; for NUTS R-hat and divergences,
with the support declared (NUTS in unconstrained coordinates) and left to ``log_prior`` (the
chains meet the bound as a wall). Figures in docs/measurements.md, "A user's bounded prior".

Since the fit maps a flow on a box from ``R`` (``x_transform="support"``, the default here),
``--x-transform none`` gives the flow on ``x`` with rejection, the default before.

Run::

    python benchmarks/bounded_prior.py [--threads 1] [--seed 0] [--x-transform none]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import train_overrides
from scipy.stats import truncnorm
from torch.distributions import constraints

from inference.posterior import draw_posterior
from inference.sample import CorrectionConfig, sample_corrected
from ppl_cvae import fit_problem
from ppl_cvae.problems.base import Problem

NOISE = 0.1
TRUTHS = [[0.02, 0.5, 0.98], [0.05, 0.05, 0.95], [0.5, 0.5, 0.5], [0.0, 1.0, 0.3], [0.1, 0.9, 0.01]]


class Box(Problem):
    """``x ~ U(0, 1)^3``, ``y = x + N(0, 0.1^2)``; ``declare``: the support as a constraint."""

    name, x_shape, y_shape = "box", (3,), (3,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = NOISE
    has_prior_density = True

    def __init__(self, declare: bool = True) -> None:
        self.support = constraints.unit_interval if declare else None

    def sample_prior(self, num, generator=None):
        return torch.rand(num, 3, generator=generator)

    def log_prior(self, x):
        inside = ((x >= 0) & (x <= 1)).all(-1)
        return torch.where(inside, 0.0, -math.inf).double()

    def forward(self, x):
        return x


def errors(draws: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Share outside, max |mean error| / exact sd, min and max sd ratio; draws (S, M, 3)."""
    a, b = (0 - y) / NOISE, (1 - y) / NOISE
    mean = truncnorm.mean(a, b, loc=y, scale=NOISE)
    sd = truncnorm.std(a, b, loc=y, scale=NOISE)
    outside = float(((draws < 0) | (draws > 1)).any(-1).mean())
    err = np.abs(draws.mean(0) - mean) / sd
    ratio = draws.std(0) / sd
    return outside, float(err.max()), float(ratio.min()), float(ratio.max())


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    problem = Box()
    t0 = time.perf_counter()
    model = {} if args.x_transform == "auto" else {"x_transform": args.x_transform}
    cvae, _, _ = fit_problem(problem, model=model, train=train_overrides(args.seed, args.epochs))
    print(f"fit {time.perf_counter() - t0:.0f} s ({cvae.config.likelihood}, x_transform "
          f"{cvae.config.x_transform}), {torch.get_num_threads()} thread(s)", flush=True)
    rng = np.random.default_rng(1)
    x_true = np.asarray(TRUTHS, dtype=np.float32)
    y = torch.from_numpy((x_true + NOISE * rng.standard_normal(x_true.shape)).astype(np.float32))
    y_np = y.numpy().astype(np.float64)
    n = args.num_samples
    free = draw_posterior(cvae, y, n, seed=0, problem=problem, within_support=False).x.numpy()
    kept = draw_posterior(cvae, y, n, seed=0, problem=problem)
    out_q = ((free < 0) | (free > 1)).any(-1).mean(0)
    print(f"amortized, q itself: outside per observation {np.round(out_q, 3).tolist()}; "
          "outside %.3f, mean error <= %.2f sd, sd ratio %.2f-%.2f" % errors(free, y_np))
    print(f"amortized, kept in the support: kept {np.round(kept.support_acceptance, 3).tolist()}"
          "; outside %.3f, mean error <= %.2f sd, sd ratio %.2f-%.2f"
          % errors(kept.x.numpy(), y_np))
    if args.amortized_only:
        return
    runs = [
        ("importance", Box(), CorrectionConfig(method="importance", proposals=10 * n)),
        ("nuts, support declared", Box(),
         CorrectionConfig(method="nuts", chains=4, warmup_steps=150, adapt_mass_matrix=False)),
        ("nuts, support left to log_prior", Box(declare=False),
         CorrectionConfig(method="nuts", chains=4, warmup_steps=150, adapt_mass_matrix=False)),
    ]
    for label, prob, correction in runs:
        t0 = time.perf_counter()
        idata, summary, ok = sample_corrected(cvae, y, n, prob, correction, seed=0)
        draws = idata.posterior["x"].values  # (chain, draw, M, 3)
        draws = draws.reshape(-1, *draws.shape[2:])
        print(f"{label} ({time.perf_counter() - t0:.0f} s): outside %.3f, mean error <= %.2f "
              "sd, sd ratio %.2f-%.2f" % errors(draws, y_np), flush=True)
        print(f"  {summary}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=0, help="0: the problem's default")
    parser.add_argument("--num-samples", type=int, default=2000, help="draws per observation")
    parser.add_argument(
        "--x-transform", choices=["auto", "none", "support"], default="auto",
        help="auto: the fit's default (support for this flow on a box); support: the flow "
        "models T^-1(x), T from R onto [0, 1]; none: the flow models x, draws outside rejected",
    )
    parser.add_argument(
        "--amortized-only", action="store_true", help="skip importance sampling and NUTS"
    )
    main(parser.parse_args())
