"""Data-parallel speed-up: time per epoch and peak memory of 1 vs 2 gloo processes on the CPU.

Runs ``ppl-cvae fit`` once in one process and once under ``torchrun --nproc-per-node 2`` with
the same settings (global batch, seed, epochs), each process on ``--threads`` torch threads,
and prints the median seconds per epoch (from the run's ``metrics.csv``, excluding the first
epoch, which pays for warm-up), the speed-up, the last validation loss of each, and the peak
resident memory of the largest process of each run (``ru_maxrss``).

    python benchmarks/scale_ddp.py --problem crosshole --epochs 4 --threads 1

The configuration should be compute-bound (large minibatches, wide networks): with small
minibatches each step's gradient all-reduce dominates and two processes gain little.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# run a command and print the largest RSS (KiB) of its processes: ru_maxrss of the waited-for
# children of a fresh interpreter, so that each run is measured on its own
_PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def _run(command: list[str], cwd: Path, threads: int) -> tuple[float, int]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *command], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1])  # KiB


def _epochs(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main() -> None:
    """Parse arguments, run both fits and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="crosshole")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--num-train", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--hidden-dims", default="512,512")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    fit = [
        "fit", "--problem", args.problem, "--epochs", str(args.epochs),
        "--num-train", str(args.num_train), "--batch-size", str(args.batch_size),
        "--hidden-dims", args.hidden_dims, "--patience", str(args.epochs + 1), "--no-resimulate",
        "--threads", str(args.threads), "--quiet",
    ]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for procs in (1, 2):
            launcher = [sys.executable, "-m", "ppl_cvae.cli"]
            if procs > 1:
                launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node", str(procs), "-m", "ppl_cvae.cli"]  # fmt: skip
            wall, peak_kib = _run([*launcher, *fit, "--out", f"p{procs}"], work, args.threads)
            epochs = _epochs(work / f"p{procs}")
            per_epoch = statistics.median(e["seconds"] for e in epochs[1:] or epochs)
            rows.append((procs, per_epoch, wall, peak_kib / 1024, epochs[-1]["val_loss"]))
    base = rows[0][1]
    print(
        f"{args.problem}: {args.num_train} pairs, batch {args.batch_size}, hidden "
        f"{args.hidden_dims}, {args.epochs} epochs, {args.threads} thread(s) per process, "
        f"{os.cpu_count()} CPUs"
    )
    print("processes | s/epoch (median) | speed-up | wall s | peak RSS/process MiB | val loss")
    for procs, per_epoch, wall, peak, val in rows:
        print(
            f"{procs} | {per_epoch:.2f} | {base / per_epoch:.2f}x | {wall:.1f} | {peak:.0f} | "
            f"{val:.4f}"
        )


if __name__ == "__main__":
    main()
