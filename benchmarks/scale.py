"""Scaling figures of the training loop: the cost of resumable runs (``--part resume``).

The other scaling figures of issue 11 have their own scripts: ``benchmarks/scale_data.py``
(``--part stream``: simulation workers against the SVI rate; ``--part lazy``: peak memory of a
file read in chunks), ``benchmarks/scale_ddp.py`` (1 against 2 gloo processes under torchrun)
and ``benchmarks/gpu.py`` (a GPU against the CPU).

``--part resume``: the cost of periodic training-state files (:mod:`ppl_cvae.train.resume`).
A problem is fitted with its recommended settings (``--epochs`` of them) three times, in
interleaved rounds so that machine load hits every variant alike: without checkpoints, with
the CLI default (a save at the end of every epoch, plus a 10-minute timer that does not fire
here) and with a save every ``--every-steps`` SVI steps. Printed: the median seconds per epoch
of each and its difference to no checkpoints, the measured seconds per save, the size of the
state file, and the overhead computed from the save time (saves per epoch x seconds per save /
seconds per epoch), which is the figure to quote on a loaded machine where whole fits vary by
more than the saves cost. ``--source stream`` fits on a simulation stream instead
(``fit --stream``, ``--workers`` DataLoader processes): its state also holds the stream's
position and the SHA-256 of the last minibatch.

Run::

    python benchmarks/scale.py --part resume [--problem mt1d] [--epochs 2] [--rounds 2]
        [--every-steps 10] [--threads 1] [--source pairs|stream] [--workers 0]

Takes about 2-4 minutes for mt1d on one loaded core.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ppl_cvae.config import Overrides
from ppl_cvae.data.streaming import SimulationStream
from ppl_cvae.problems.base import make_problem
from ppl_cvae.train import build_cvae, fit, resolve_settings
from ppl_cvae.train.resume import STATE_FILE, CheckpointPolicy, TrainingSession
from ppl_cvae.train.sources import StreamBatches


def _timed_saves() -> tuple[list[float], Callable[[], None]]:
    """Wrap TrainingSession._save to record each save's seconds; return the list and an undo."""
    seconds: list[float] = []
    original = TrainingSession._save

    def save(self: TrainingSession, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        original(self, *args, **kwargs)
        seconds.append(time.perf_counter() - start)

    TrainingSession._save = save  # type: ignore[method-assign]

    def undo() -> None:
        TrainingSession._save = original  # type: ignore[method-assign]

    return seconds, undo


def part_resume(args: argparse.Namespace) -> None:
    """Print the per-epoch time with and without periodic checkpoints, and the cost of a save."""
    problem = make_problem(args.problem)
    overrides = Overrides(train={"num_epochs": args.epochs})
    model_config, train_config = resolve_settings(problem, overrides)
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    x, y = problem.simulate(train_config.num_train, gen)
    steps = -(-train_config.num_train // train_config.batch_size)
    source = (
        f"a simulation stream, {args.workers} worker(s)"
        if args.source == "stream"
        else f"resimulate={train_config.resimulate}"
    )
    print(
        f"{args.problem}: recommended settings, {train_config.num_train} pairs per epoch "
        f"({source}), batch {train_config.batch_size} "
        f"({steps} SVI steps per epoch), {args.epochs} epochs per fit, {args.rounds} rounds, "
        f"{torch.get_num_threads()} thread(s)"
    )
    variants = {
        "none": lambda folder: None,
        "every epoch (CLI default)": lambda folder: CheckpointPolicy(folder / STATE_FILE),
        f"every {args.every_steps} steps": lambda folder: CheckpointPolicy(
            folder / STATE_FILE, every_steps=args.every_steps
        ),
    }
    per_epoch: dict[str, list[float]] = {name: [] for name in variants}
    save_seconds: list[float] = []
    state_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = list(variants)
        for round_index in range(args.rounds):
            # rotate the order each round so that a drift in machine load hits all alike
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                make_policy = variants[name]
                policy = make_policy(folder)
                cvae = build_cvae(model_config, x, y, problem=problem, seed=train_config.seed)
                seconds, undo = _timed_saves()
                try:
                    start = time.perf_counter()
                    if args.source == "stream":
                        stream = SimulationStream(
                            problem.simulate, train_config.batch_size, seed=train_config.seed
                        )
                        batches = StreamBatches(stream, steps, num_workers=args.workers)
                        fit(cvae, None, None, train_config, simulator=problem.simulate,
                            batches=batches, progress=False, checkpoint=policy)
                    else:
                        fit(cvae, x, y, train_config, simulator=problem.simulate,
                            progress=False, checkpoint=policy)
                    per_epoch[name].append((time.perf_counter() - start) / args.epochs)
                finally:
                    undo()
                save_seconds += seconds
                if (folder / STATE_FILE).exists():
                    state_bytes = (folder / STATE_FILE).stat().st_size
                    (folder / STATE_FILE).unlink()
    base = statistics.median(per_epoch["none"])
    for name, values in per_epoch.items():
        median = statistics.median(values)
        print(
            f"checkpoints {name:<28s} {median:7.2f} s/epoch  overhead "
            f"{100 * (median / base - 1):+5.1f} %  (fits: {', '.join(f'{v:.2f}' for v in values)})"
        )
    if save_seconds:
        save = statistics.median(save_seconds)
        print(
            f"one save: median {1000 * save:.0f} ms over {len(save_seconds)} saves; "
            f"{STATE_FILE} {state_bytes / 2**20:.1f} MiB"
        )
        # on a loaded machine whole-fit times vary more than the saves cost: the overhead
        # from the measured save time is the figure to quote
        every = -(-steps // args.every_steps)
        for name, saves in (("every epoch", 1), (f"every {args.every_steps} steps", every)):
            print(
                f"overhead from save times, {name}: {saves} save(s) per epoch = "
                f"{100 * saves * save / base:.2f} % of {base:.2f} s/epoch"
            )


PARTS = {"resume": part_resume}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--problem", default="mt1d", help="built-in problem (resume)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit (resume)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (resume)")
    parser.add_argument("--every-steps", type=int, default=10, help="step trigger (resume)")
    parser.add_argument(
        "--source", choices=("pairs", "stream"), default="pairs", help="what to fit on (resume)"
    )
    parser.add_argument("--workers", type=int, default=0, help="stream workers (resume)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
