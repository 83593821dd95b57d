"""A declared support far from the prior's mass: which flow on ``x`` the defaults should fit.

A user declares a correct but loose support: a velocity that is positive, a parameter in a
wide interval. The problem: ``x ~ N(mu, s^2)^d`` (independent), ``y = x + N(0, 0.1^2)``, with
the support declared as ``--support``; the truncation of the prior by the support is
negligible (the faces are many prior sds away), so the exact posterior is the Gaussian of
the linear-Gaussian problem. ``--support lognormal`` is the other case the whitening suits:
``log x ~ N(0, 0.3^2)``, ``y = log x + N(0, 0.1^2)``, on ``positive``, which the models come
close to; the flow is on ``log x``, where the posterior is Gaussian (errors are of ``log x``).
For each seed, ``fit_problem`` with the defaults (what the settings choose is printed), then
the three families side by side, each with the defaults but for ``x_transform`` and
``x_whitening``:

- ``none+linear``: the flow on ``x`` itself with the linear whitening (draws outside the
  support rejected at sampling);
- ``support+none``: the flow on ``T^{-1}(x)`` without the whitening (every draw inside);
- ``support+linear``: the flow on ``T^{-1}(x)`` with the whitening fitted there.

Prints per fit: the settings, fit seconds, the best validation loss (negative ELBO per pair in
nats, on the flow's own variable plus the Jacobian, so comparable between families: lower is
better), then for 8 observations of 4,000 draws each the errors of the marginal means in
exact posterior sds (max and mean over all components), the range of the sd ratios, and the
share of proposals kept (min). Figures in docs/measurements.md, "A user's bounded prior".

Run::

    python benchmarks/loose_support.py [--support interval|positive|lognormal] [--dim 3]
        [--seeds 0,1] [--epochs 30] [--threads 1] [--families defaults,support+none]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import marginal_errors, train_overrides
from torch.distributions import constraints

from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems.base import Problem

NOISE = 0.1
PRIORS = {  # support name -> (prior mean, prior sd, declared support)
    "interval": (1.0, 0.5, constraints.interval(-5.0, 7.0)),
    "positive": (2.0, 0.2, constraints.positive),
    "lognormal": (0.0, 0.3, constraints.positive),  # of log x; y = log x + noise
}


def loose_problem(dim: int, support: str) -> Problem:
    """``x ~ N(mu, s^2)^dim``, ``y = x + N(0, 0.1^2)``, a loose support declared.

    ``support="lognormal"``: ``log x ~ N(mu, s^2)`` and ``y = log x + N(0, 0.1^2)`` on the
    support ``positive``, which the models come close to (the posterior of ``log x`` is the
    linear-Gaussian one).
    """
    mu, s, declared = PRIORS[support]
    log = support == "lognormal"

    class Loose(Problem):
        name, x_shape, y_shape = "loose", (dim,), (dim,)
        x_dims, y_dims, coords = ("parameter",), ("datum",), {}
        noise_std = misfit_std = NOISE

        def sample_prior(self, num, generator=None):
            u = mu + s * torch.randn(num, dim, generator=generator)
            return u.exp() if log else u

        def forward(self, x):
            return x.log() if log else x

    problem = Loose()
    problem.support = declared
    return problem


def run(problem: Problem, seed: int, model: dict, epochs: int, support: str) -> str:
    """Fit one model and return its line of figures."""
    mu, s, _ = PRIORS[support]
    dim = problem.x_shape[0]
    rng = np.random.default_rng(1)
    x_true = (mu + s * rng.standard_normal((8, dim))).astype(np.float32)  # of log x: lognormal
    y = torch.from_numpy((x_true + NOISE * rng.standard_normal(x_true.shape)).astype(np.float32))
    precision = 1 / s**2 + 1 / NOISE**2
    sd = precision**-0.5
    mean = (mu / s**2 + y.numpy().astype(np.float64) / NOISE**2) / precision
    t0 = time.perf_counter()
    cvae, res, _ = fit_problem(problem, model=model, train=train_overrides(seed, epochs))
    fit_s = time.perf_counter() - t0
    draws = draw_posterior(cvae, y, 4000, seed=0, problem=problem)
    x = draws.x.numpy()
    if support == "lognormal":
        x = np.log(x)  # the exact posterior is of log x
    err, ratio = marginal_errors(x, mean, sd)
    kept = draws.support_acceptance
    val = min(h["val_loss"] for h in res.history)
    return (
        f"x_transform {cvae.config.x_transform} whitening {cvae.config.x_whitening} "
        f"fit {fit_s:.0f}s val {val:.3f}; mean err max {err.max():.3f} mean {err.mean():.3f}; "
        f"sd ratio {ratio.min():.2f}-{ratio.max():.2f}; kept min {float(kept.min()):.3f}"
    )


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    problem = loose_problem(args.dim, args.support)
    families = {
        "defaults": {},
        "none+linear": {"x_transform": "none", "x_whitening": "linear"},
        "support+none": {"x_transform": "support", "x_whitening": "none"},
        "support+linear": {"x_transform": "support", "x_whitening": "linear"},
    }
    chosen = args.families.split(",") if args.families else list(families)
    unknown = sorted(set(chosen) - set(families))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; expected some of {list(families)}")
    for seed in (int(v) for v in args.seeds.split(",")):
        for name in chosen:
            model = families[name]
            print(f"== {args.support} dim {args.dim} seed {seed} {name}", flush=True)
            print(run(problem, seed, model, args.epochs, args.support), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--support", choices=sorted(PRIORS), default="interval")
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--families", default="", help="comma-separated names of the families to fit (all)"
    )
    main(parser.parse_args())
