"""GPU against CPU on crosshole: SVI steps/s, posterior samples/s for one observation, fit time.

Run on a machine with CUDA (the figures for the README's GPU rows)::

    python benchmarks/gpu.py --device cuda --threads 4

1. SVI steps per second with the recommended crosshole model and batch, on the CPU and on
   the device (median over blocks of steps, blocks interleaved so load hits both alike).
2. Posterior samples per second for one observation through ``inference.draw_posterior``
   (networks on the device, draws copied back to the CPU), ``--num-samples`` per call,
   median over repeats; the CPU at a tenth of the draws.
3. Wall time of ``fit_problem`` with the recommended settings on the device.

Targets (issue 11): >= 1e6 posterior samples/s for one observation and a crosshole fit under
one minute on one modern GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from inference import draw_posterior
from ppl_cvae import build_cvae, make_problem, resolve_settings
from ppl_cvae.device import resolve_device
from ppl_cvae.train import fit_problem
from ppl_cvae.train.fit import _make_svi


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(device, cvae, x, y, train, blocks, steps):
    """Median SVI steps/s of ``steps``-step blocks on ``device``."""
    cvae.to(device)
    svi, _ = _make_svi(cvae, train, x.shape[0])
    xb, yb = x[: train.batch_size].to(device), y[: train.batch_size].to(device)
    rates = []
    for _ in range(blocks):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            svi.step(yb, xb, kl_weight=1.0)
        _sync(device)
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def samples_per_second(device, cvae, y, num, repeats):
    """Median posterior samples/s for one observation, ``num`` draws per call."""
    cvae.to(device)
    draw_posterior(cvae, y, min(num, 1000), seed=0)  # warm-up
    rates = []
    for r in range(repeats):
        _sync(device)
        start = time.perf_counter()
        draw_posterior(cvae, y, num, seed=r)
        _sync(device)
        rates.append(num / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    """Print the three figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    problem = make_problem("crosshole")
    config, train = resolve_settings(problem)
    x, y = problem.simulate(4096, torch.Generator().manual_seed(0))
    cvae = build_cvae(config, x, y, problem=problem, seed=0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}); CPU threads {args.threads}; batch {train.batch_size}")
    cpu = torch.device("cpu")
    svi = {d: steps_per_second(d, cvae, x, y, train, args.blocks, args.steps)
           for d in dict.fromkeys([cpu, device])}  # fmt: skip
    for d, rate in svi.items():
        print(f"SVI steps/s on {d}: {rate:.1f} ({rate / svi[cpu]:.1f}x the CPU)")
    obs = y[:1]
    draws = {cpu: samples_per_second(cpu, cvae, obs, args.num_samples // 10, args.repeats)}
    if device != cpu:
        draws[device] = samples_per_second(device, cvae, obs, args.num_samples, args.repeats)
    for d, rate in draws.items():
        print(f"posterior samples/s, one observation, on {d}: {rate:.3g}")
    if not args.skip_fit:
        _, result, seconds = fit_problem(problem, device=device)
        print(
            f"crosshole fit, recommended settings, on {device}: {seconds:.1f} s, "
            f"{len(result.history)} epochs, validation loss {result.history[-1]['val_loss']:.2f}"
        )


if __name__ == "__main__":
    main()
