"""Draws outside the training range of x: fit and sample sbibm tasks as a user of a file would.

Reads the ``train.npz`` and ``observations.npz`` that ``benchmarks/sbi_compare.py`` wrote for
each task (its ``--work-dir``), fits ``ppl-cvae fit --data train.npz`` (with ``--fit-args``,
default none: the defaults, which do not know the prior's bounds), samples the observations
and prints, per observation, the fraction of drawn values outside the training range that the
posterior file records (``outside_training_range``), the fraction recounted from the draws,
the fraction of draws with any value outside, and whether ``sample`` warned.

Run::

    python benchmarks/training_range.py --work-dir runs/sbi_more --tasks slcp gaussian_mixture \
        [--fit-args "--x-bounds=-3,3"] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_task(work: Path, args: argparse.Namespace) -> None:
    """Fit, sample and print the figures of one task's folder."""
    import arviz as az

    label = "range_" + ("defaults" if not args.fit_args else "flags")
    run = work / label
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cli = [sys.executable, "-m", "ppl_cvae.cli"]
    start = time.perf_counter()
    subprocess.run(
        [*cli, "fit", "--data", str(work / "train.npz"), "--out", str(run), "--seed",
         str(args.seed), "--threads", str(args.threads), "--quiet", "--overwrite",
         *shlex.split(args.fit_args)],
        check=True, env=env,
    )
    fit_s = time.perf_counter() - start
    post = work / f"{label}_posterior.nc"
    sampled = subprocess.run(
        [*cli, "sample", str(run), "--observation", str(work / "observations.npz"),
         "--num-samples", str(args.num_samples), "--seed", str(args.seed), "--out", str(post),
         "--overwrite"],
        check=True, env=env, capture_output=True, text=True,
    )
    warned = "outside the range of the training x" in sampled.stderr
    idata = az.from_netcdf(post)
    recorded = json.loads(idata.posterior.attrs.get("outside_training_range", "null"))
    x_train = np.load(work / "train.npz")["x"]
    low, high = x_train.min(0), x_train.max(0)
    draws = idata.posterior["x"].values[0]  # (draw, observation, d)
    outside = (draws < low) | (draws > high)
    print(f"{work.name} ({args.fit_args or 'defaults'}): fit {fit_s:.0f} s, warned {warned}")
    for m in range(draws.shape[1]):
        print(
            f"  observation {m + 1}: recorded {recorded[m] if recorded else float('nan'):.4f}, "
            f"recounted {outside[:, m].mean():.4f}, draws with one outside "
            f"{outside[:, m].any(-1).mean():.4f}"
        )
    for line in sampled.stderr.splitlines():
        if "training x" in line:
            print("  " + line.strip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "sbi_compare"))
    parser.add_argument("--tasks", nargs="+", default=["slcp", "gaussian_mixture"])
    parser.add_argument("--fit-args", default="", help="extra `ppl-cvae fit` flags, quoted")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    cli_args = parser.parse_args()
    for task in cli_args.tasks:
        run_task(Path(cli_args.work_dir) / task, cli_args)
