"""SVI step time of the Pyro CVAE against a hand-written PyTorch ELBO, and posterior draws/s.

Both trainers use the same networks (the Two Birds model with the problem's recommended
architecture), the same optimiser class (ClippedAdam over all parameters) and the same batch;
steps are interleaved in blocks so that machine load hits both alike, and medians of the
per-block step times are compared as a ratio. Posterior sampling is timed for one observation
through ``inference.draw_posterior`` (Predictive, parallel) against raw module calls.

Run::

    python benchmarks/throughput.py [--threads 1] [--blocks 15] [--steps 20]

Prints one line per figure; takes about 1-2 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim.clipped_adam import ClippedAdam

from inference import draw_posterior
from ppl_cvae import TwoBirds, build_cvae, resolve_settings
from ppl_cvae.train.optim import FusedClippedAdam


def make_model(problem):
    config, _ = resolve_settings(problem)
    x, y = problem.simulate(4096, torch.Generator().manual_seed(0))
    return build_cvae(config, x, y, problem=problem), x, y


def hand_written_loss(cvae, y, x):
    """Single-particle negative ELBO written directly in torch (same networks)."""
    q_loc, q_scale = cvae.recognition_params(y, x)
    q = torch.distributions.Normal(q_loc, q_scale)
    z = q.rsample()
    p_loc, p_scale = cvae.prior_params(y)
    mean, scale = cvae.decode(z, y)
    log_px = torch.distributions.Normal(mean, scale).log_prob(x).sum()
    log_pz = torch.distributions.Normal(p_loc, p_scale).log_prob(z).sum()
    return -(log_px + log_pz - q.log_prob(z).sum())


def time_steps(step, num_steps):
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    return (time.perf_counter() - start) / num_steps


def bench_training(batch_size, blocks, steps):
    problem = TwoBirds("original")
    pyro_model, x, y = make_model(problem)
    torch_model, _, _ = make_model(problem)
    torch_model.load_state_dict(pyro_model.state_dict())
    xb, yb = x[:batch_size], y[:batch_size]
    pyro.clear_param_store()
    svi = SVI(pyro_model.model, pyro_model.guide, FusedClippedAdam({"lr": 1e-4}), Trace_ELBO())
    optim = ClippedAdam(torch_model.parameters(), lr=1e-4)

    def pyro_step():
        svi.step(yb, xb)

    def torch_step():
        optim.zero_grad()
        hand_written_loss(torch_model, yb, xb).backward()
        optim.step()

    pyro_times, torch_times = [], []
    with pyro.validation_enabled(False):
        time_steps(pyro_step, 5)
        time_steps(torch_step, 5)
        for _ in range(blocks):
            pyro_times.append(time_steps(pyro_step, steps))
            torch_times.append(time_steps(torch_step, steps))
    ratios = [p / t for p, t in zip(pyro_times, torch_times, strict=True)]
    return statistics.median(pyro_times), statistics.median(torch_times), statistics.median(ratios)


def bench_sampling(num_samples, repeats):
    problem = TwoBirds("original")
    cvae, _, y = make_model(problem)
    cvae.eval()
    y1 = y[:1]

    def raw():
        with torch.no_grad():
            loc, scale = cvae.prior_params(y1)
            z = loc + scale * torch.randn(num_samples, *loc.shape)
            return cvae.decode(z, y1)[0]

    pred_times, raw_times = [], []
    draw_posterior(cvae, y1, 1000)
    for _ in range(repeats):
        start = time.perf_counter()
        draw_posterior(cvae, y1, num_samples)
        pred_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        raw()
        raw_times.append(time.perf_counter() - start)
    ratios = [p / r for p, r in zip(pred_times, raw_times, strict=True)]
    return num_samples / statistics.median(pred_times), statistics.median(ratios)


def main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}")
    for batch in (256, 1024):
        p, t, r = bench_training(batch, args.blocks, args.steps)
        print(
            f"batch {batch}: Pyro SVI step {p * 1e3:.2f} ms, hand-written step {t * 1e3:.2f} ms, "
            f"median ratio {r:.3f}"
        )
    rate, ratio = bench_sampling(args.num_samples, args.repeats)
    print(
        f"posterior sampling, 1 observation x {args.num_samples} draws: {rate:,.0f} samples/s, "
        f"{ratio:.3f}x the raw module calls"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    main(parser.parse_args())
