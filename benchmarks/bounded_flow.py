"""A flow on a bounded prior: fitted on ``x`` with rejection, or on ``T^{-1}(x)`` (``x_transform``).

The problem: ``x ~ U(0, 1)^d``, ``y = x + N(0, 0.1^2)``, support declared
(``constraints.unit_interval``); its posterior is a product of normals truncated to ``[0, 1]``
(scipy's ``truncnorm``). For each dimension ``d`` and seed, ``fit_problem`` with the defaults
but ``x_transform`` (``"none"``: the flow models ``x`` and draws outside the box are rejected,
the default before; ``"support"``: the flow models ``logit(x)``, every draw inside, the default
now), then 4,000 amortized draws for each of 8 observations (truths uniform on the box, half
the coordinates of the first four within 0.05 of the face at 0). Prints per fit: the
whitening the settings chose, fit seconds, best epoch of all epochs (early stopping), the best
validation loss (negative ELBO per pair in nats, on ``x``: lower is better; the rejection
model's density is not renormalised on the box), the seconds of the draws, the share of
proposals kept (min and median over observations), the errors of the marginal means in exact
posterior sds (max and mean over all components), the range of the sd ratios with the median
``|log ratio|``, and the largest 99.9% quantile of ``|x - mean| / sd``. Figures in
docs/measurements.md, "A user's bounded prior".

Run::

    python benchmarks/bounded_flow.py [--dims 3,12] [--seeds 0,1,2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import marginal_errors, train_overrides
from scipy.stats import truncnorm
from torch.distributions import constraints

from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems.base import Problem

NOISE = 0.1


def box_problem(dim: int) -> Problem:
    """``x ~ U(0, 1)^dim``, ``y = x + N(0, 0.1^2)``, the support declared."""

    class BoxD(Problem):
        name, x_shape, y_shape = "box", (dim,), (dim,)
        x_dims, y_dims, coords = ("parameter",), ("datum",), {}
        noise_std = misfit_std = NOISE
        has_prior_density = True
        support = constraints.unit_interval

        def sample_prior(self, num, generator=None):
            return torch.rand(num, dim, generator=generator)

        def log_prior(self, x):
            return torch.where(((x >= 0) & (x <= 1)).all(-1), 0.0, -math.inf).double()

        def forward(self, x):
            return x

    return BoxD()


def run(dim: int, seed: int, transform: str) -> str:
    """Fit one model and return its line of figures."""
    problem = box_problem(dim)
    rng = np.random.default_rng(1)
    x_true = rng.uniform(0, 1, (8, dim)).astype(np.float32)
    x_true[:4, : dim // 2] = rng.uniform(0, 0.05, (4, dim // 2))  # near the faces
    y = torch.from_numpy((x_true + NOISE * rng.standard_normal(x_true.shape)).astype(np.float32))
    yn = y.numpy().astype(np.float64)
    a, b = -yn / NOISE, (1 - yn) / NOISE
    mean = truncnorm.mean(a, b, loc=yn, scale=NOISE)
    sd = truncnorm.std(a, b, loc=yn, scale=NOISE)
    t0 = time.perf_counter()
    cvae, res, _ = fit_problem(
        problem, model={"x_transform": transform}, train=train_overrides(seed, 0)
    )
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    draws = draw_posterior(cvae, y, 4000, seed=0, problem=problem)
    draw_s = time.perf_counter() - t0
    x = draws.x.numpy()
    err, ratio = marginal_errors(x, mean, sd)
    tail = np.quantile(np.abs(x - mean) / sd, 0.999, axis=0)
    kept = draws.support_acceptance
    val = min(h["val_loss"] for h in res.history)
    return (
        f"whitening {cvae.config.x_whitening} fit {fit_s:.0f}s best {res.best_epoch}/"
        f"{len(res.history)} val {val:.3f}; draws {draw_s:.1f}s kept min {kept.min():.3f} "
        f"median {kept.median():.3f}; mean err max {err.max():.3f} mean {err.mean():.3f}; "
        f"sd ratio {ratio.min():.2f}-{ratio.max():.2f} (median |log| "
        f"{np.median(np.abs(np.log(ratio))):.3f}); q999 max {tail.max():.1f}"
    )


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    for dim in (int(v) for v in args.dims.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            for transform in ("none", "support"):
                print(f"== dim {dim} seed {seed} {transform}", flush=True)
                print(run(dim, seed, transform), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="3,12")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
