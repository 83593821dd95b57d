"""Cost of each model family: SVI step time and posterior draws/s against the default CVAE.

On Two Birds (``data_1``) with the problem's recommended architecture, each family is built
from the same seed and trained on the same batches; SVI steps of all families are interleaved
in blocks so that machine load hits them alike, and the median per-block step time of each is
divided by the default's (the issue's bound for the flow options: at most 1.5x). Draws per
second for one observation through :func:`inference.draw_posterior` (median of repeats).

Families: the default (Gaussian prior net, Gaussian basis decoder on constrained endpoints);
the same on unconstrained endpoints (the default before issue 10); ``--prior flow`` with
one autoregressive spline layer on ``z``, with one or two coupling layers (two: the default,
``prior_flow_type="coupling"``, ``prior_flow_layers=2``; one coupling layer ends with an
elementwise spline given ``y``, two do not, ``prior_flow_final="auto"``), with 5 bins instead
of 10, and the five autoregressive layers of the first prior flow; a flow on the endpoint
coefficients with no latent (``--likelihood flow --latent-dim 0``); the GSNN term
(``--gsnn-weight 1``); and, last (indices 10 and 11), two coupling layers followed by the
final elementwise spline, the default before ``prior_flow_final`` (``"spline"``), with 10 and
5 bins. Draws are timed in interleaved repeats too.

Run::

    python benchmarks/family_cost.py [--threads 1] [--blocks 9] [--steps 10] [--families 2,3,4]

Prints one line per family; about 10 minutes at 1 thread (mostly the draws of the
five-layer prior flow).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from inference import draw_posterior
from ppl_cvae import Overrides, TwoBirds, build_cvae, resolve_settings
from ppl_cvae.train.optim import FusedClippedAdam

FAMILIES = {
    "default (Gaussian prior net and decoder)": ({}, 0.0),
    "unconstrained endpoints (the default before issue 10)": (
        {"constrained_coefficients": False},
        0.0,
    ),
    "prior flow, 1 autoregressive spline layer": (
        {"prior": "flow", "prior_flow_type": "autoregressive"},
        0.0,
    ),
    "prior flow, 1 coupling spline layer": ({"prior": "flow", "prior_flow_type": "coupling"}, 0.0),
    "prior flow, 2 coupling spline layers (the default)": (
        {"prior": "flow", "prior_flow_type": "coupling", "prior_flow_layers": 2},
        0.0,
    ),
    "prior flow, 1 coupling spline layer, 5 bins": (
        {"prior": "flow", "prior_flow_type": "coupling", "flow_bins": 5},
        0.0,
    ),
    "prior flow, 2 coupling spline layers, 5 bins": (
        {"prior": "flow", "prior_flow_type": "coupling", "prior_flow_layers": 2, "flow_bins": 5},
        0.0,
    ),
    "prior flow, 5 autoregressive spline layers (the first default)": (
        {"prior": "flow", "prior_flow_type": "autoregressive", "prior_flow_layers": 5},
        0.0,
    ),
    "flow on x (endpoints), no latent": ({"likelihood": "flow", "latent_dim": 0}, 0.0),
    "GSNN term, weight 1": ({}, 1.0),
    "prior flow, 2 coupling spline layers and the final spline (the default before)": (
        {"prior": "flow", "prior_flow_type": "coupling", "prior_flow_final": "spline"},
        0.0,
    ),
    "prior flow, 2 coupling spline layers and the final spline, 5 bins": (
        {
            "prior": "flow",
            "prior_flow_type": "coupling",
            "prior_flow_final": "spline",
            "flow_bins": 5,
        },
        0.0,
    ),
}


def main(args: argparse.Namespace) -> None:
    """Time every family and print the ratios to the default."""
    torch.set_num_threads(args.threads)
    problem = TwoBirds("data_1")
    x, y = problem.simulate(4096, torch.Generator().manual_seed(0))
    steps = {}
    chosen = [int(i) for i in args.families.split(",")] if args.families else None
    for i, (name, (model, gsnn)) in enumerate(FAMILIES.items()):
        if chosen is not None and i not in chosen and i != 0:  # the default is the reference
            continue
        config, _ = resolve_settings(problem, Overrides(model=model))
        cvae = build_cvae(config, x, y, problem=problem)
        pyro.clear_param_store()
        svi = SVI(cvae.model, cvae.guide, FusedClippedAdam({"lr": 1e-4}), Trace_ELBO())
        steps[name] = (cvae, svi, gsnn, [])
    batches = [torch.randint(0, 4096, (256,)) for _ in range(args.steps)]
    for _ in range(args.blocks):
        for _cvae, svi, gsnn, times in steps.values():
            start = time.perf_counter()
            for idx in batches:
                svi.step(y[idx], x[idx], gsnn_weight=gsnn)
            times.append((time.perf_counter() - start) / args.steps)
    base = statistics.median(next(iter(steps.values()))[3])
    threads = torch.get_num_threads()
    print(f"threads {threads}, batch 256, {args.blocks} blocks x {args.steps} steps")
    print(f"load average {os.getloadavg()[0]:.2f} after the SVI steps")
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(args.repeats):  # interleaved, like the steps
        for name, (cvae, _, _, _) in steps.items():
            start = time.perf_counter()
            draw_posterior(cvae, y[:1], args.num_samples, seed=repeat)
            rates[name].append(args.num_samples / (time.perf_counter() - start))
    print(f"load average {os.getloadavg()[0]:.2f} after the draws")
    for name, (cvae, _, _, times) in steps.items():
        step = statistics.median(times)
        print(
            f"{name}: SVI step {1e3 * step:.1f} ms (x{step / base:.2f} the default), "
            f"{statistics.median(rates[name]):,.0f} draws/s for one observation, "
            f"{cvae.num_parameters():,} parameters"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--families",
        default="",
        help="comma-separated indices into FAMILIES to time (the default, 0, always runs)",
    )
    main(parser.parse_args())
