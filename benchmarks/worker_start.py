"""Wall time of NUTS chains in worker processes: forked against spawned workers.

:func:`inference.mcmc.nuts_sample` with ``num_cores=2`` runs its chains in worker processes,
forked where that is safe (Linux, no CUDA, no other thread) and spawned elsewhere. A spawned
worker imports torch, Pyro and this package before its first chain; a forked one inherits them.
This script runs the same short chains (``--chains`` x (``--warmup`` + ``--draws``), seed 0,
on observation 0 of the held-out set of ``benchmarks/posterior_correction.py``, started and
preconditioned by exact posterior draws widened by 5%, as ``benchmarks/nuts_chain_cost.py``)
with each start method in turn, ``--repeats`` interleaved rounds, and prints the medians of
``MCMCResult.seconds`` (wall time from the preconditioner to the last chain's end) and their
difference, which is the workers' start. The draws are checked to be the same for both.
``--pool-only`` times instead a pool of 2 workers (started as ``nuts_sample`` starts them) that
runs 4 trivial jobs, for each start method.

    python benchmarks/worker_start.py --threads 2
    python benchmarks/worker_start.py --pool-only

Thread count and load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from _common import exact_start

import inference.mcmc as mcmc
import inference.mcmc.chains as chains  # the chain runner looks its start method up here


def _trivial(index: int) -> int:
    return index


def pool_only(args):
    """Print the medians of the wall time of a 2-worker pool running 4 trivial jobs."""
    seconds: dict[str, list[float]] = {"fork": [], "forkserver": [], "spawn": []}
    for _ in range(args.repeats):
        for method in seconds:
            begin = time.perf_counter()
            with ProcessPoolExecutor(
                max_workers=2, mp_context=multiprocessing.get_context(method),
                initializer=chains._init_worker, initargs=(1,),
            ) as pool:
                list(pool.map(_trivial, range(4)))
            seconds[method].append(time.perf_counter() - begin)
    figures = ", ".join(f"{m} {statistics.median(v):.2f} s" for m, v in seconds.items())
    print(
        f"2-worker pool, 4 trivial jobs: {figures} (medians of {args.repeats}); load "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main(args):
    torch.set_num_threads(args.threads)
    if args.pool_only:
        pool_only(args)
        return
    problem, _, y, _, init = exact_start(args.problem)
    native = chains._start_method
    chains._stop_tqdm_monitors()
    forks = native() == "fork"
    seconds: dict[str, list[float]] = {"fork": [], "spawn": []}
    results = {}
    for _ in range(args.repeats):
        for method in seconds:
            chains._start_method = lambda method=method: method  # type: ignore[misc]
            res = mcmc.nuts_sample(
                problem, y, init, num_samples=args.draws, warmup_steps=args.warmup,
                num_chains=args.chains, adapt_mass_matrix=False, seed=0, num_cores=2,
                potential_dtype="float32",
            )
            seconds[method].append(res.seconds)
            results[method] = res
    chains._start_method = native
    same = torch.equal(results["fork"].x, results["spawn"].x)
    fork, spawn = (statistics.median(seconds[m]) for m in ("fork", "spawn"))
    print(
        f"{problem.name}, {args.chains} x ({args.warmup} + {args.draws}), 2 workers: forked "
        f"{fork:.2f} s, spawned {spawn:.2f} s (medians of {args.repeats}; difference "
        f"{spawn - fork:.2f} s, ratio {fork / spawn:.2f}); same draws: {same}; threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}; this platform forks: "
        f"{forks}; threads left running: {[t.name for t in threading.enumerate()]}",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="crosshole")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-only", action="store_true", help="time bare worker pools")
    main(parser.parse_args())
