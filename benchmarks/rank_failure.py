"""A torchrun rank that fails mid-fit: how often the run hangs instead of failing.

Runs ``ppl-cvae fit`` on 2 gloo ranks of the test suite's dying problem (rank 1's simulator
raises in the second epoch, right after a collective) ``--runs`` times, each with a deadline,
optionally beside ``--burners`` busy processes (CI runs two pytest workers on 2 cores). A run
that is still alive at the deadline is a hang: it is killed and counted. Before the fix
(pytorch/pytorch#56297: freeing the DDP wrapper ran gloo's process group destructor, which
joins gloo's threads with the GIL held while one of them waited for the GIL) one run in
ten hung beside two busy processes, and one CI run failed on it.

Run::

    python benchmarks/rank_failure.py [--runs 10] [--deadline 60] [--burners 2]

Prints one line per run (exit status and seconds, or HANG) and the count of hangs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_distributed import DYING_PROBLEM  # noqa: E402 - the suite's own problem


def main(args: argparse.Namespace) -> None:
    """Run the failing fit ``args.runs`` times and print the hangs."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)
    ]
    times, hangs = [], 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "dying_problem.py").write_text(DYING_PROBLEM)
            env = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([str(REPO), tmp]))  # fmt: skip
            for i in range(args.runs):
                command = [
                    sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", "-m", "ppl_cvae.cli", "fit", "--problem",
                    "dying_problem:make", "--resimulate", "--epochs", "50", "--num-train", "200",
                    "--hidden-dims", "8", "--latent-dim", "2", "--quiet", "--out", f"run{i}",
                ]  # fmt: skip
                start = time.perf_counter()
                try:
                    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True,
                                          timeout=args.deadline)  # fmt: skip
                except subprocess.TimeoutExpired:
                    hangs += 1
                    print(f"run {i + 1}: HANG (alive after {args.deadline:g} s)", flush=True)
                    continue
                times.append(time.perf_counter() - start)
                print(f"run {i + 1}: exit {done.returncode} in {times[-1]:.1f} s", flush=True)
    finally:
        for burner in burners:
            burner.kill()
    median = f"{statistics.median(times):.1f} s" if times else "n/a"
    print(f"{hangs} of {args.runs} runs hung; the others failed in a median of {median} "
          f"({args.burners} busy processes beside them)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--burners", type=int, default=0)
    main(parser.parse_args())
