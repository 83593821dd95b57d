"""Data at scale: simulation-stream throughput against the SVI step rate; lazy-file peak memory.

Part ``stream``: for mt1d and crosshole at their recommended settings (batch size 256), the
pairs per second a :class:`~ppl_cvae.data.streaming.SimulationStream` delivers with 0, 1 and 2
DataLoader workers (simulation only), the pairs per second SVI consumes (steps on a fixed
minibatch, no simulation), and the pairs per second of training on the stream (simulation and
steps together) with 0, 1 and 2 workers. With 0 workers the two costs add; with workers the
simulation runs beside the steps, so training goes at the slower of the two rates, if there
are free cores.

Part ``lazy``: writes a file of pairs (a folder of x.npy/y.npy, and the same as NetCDF)
several times larger than a memory cap, then in a fresh interpreter trains one epoch on it
read lazily in 1 MiB chunks and reports the growth of the peak resident set over the
interpreter that has run the same fit on a small file (so that the code paged in and one-off
allocations are not counted as data), next to the growth from loading the file whole.

Run::

    python benchmarks/scale_data.py [--part stream|lazy|all] [--threads 1] [--file-mb 256]

Prints one line per figure; takes about 2-4 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_cvae import build_cvae, make_problem, resolve_settings
from ppl_cvae.data.streaming import SimulationStream
from ppl_cvae.train.optim import FusedClippedAdam
from ppl_cvae.train.sources import StreamBatches

REPO = Path(__file__).resolve().parents[1]


def _stream_rate(problem, batch_size, workers, steps):
    """Pairs per second delivered by the stream (after the workers have started)."""
    stream = SimulationStream(problem.simulate, batch_size, seed=0)
    source = StreamBatches(stream, steps_per_epoch=steps + 2, num_workers=workers)
    try:
        batches = source.epoch_batches(1)
        for _ in itertools.islice(batches, 2):  # start-up: fork, first simulations
            pass
        start = time.perf_counter()
        count = sum(1 for _ in batches)
        return count * batch_size / (time.perf_counter() - start)
    finally:
        source.close()


def _svi(problem):
    config, train = resolve_settings(problem)
    x, y = problem.simulate(2048, torch.Generator().manual_seed(0))
    cvae = build_cvae(config, x, y, problem=problem)
    pyro.clear_param_store()
    optim = FusedClippedAdam({"lr": 1e-4, "clip_norm": 10.0})
    return SVI(cvae.model, cvae.guide, optim, Trace_ELBO()), train.batch_size, x, y


def _svi_rate(problem, steps):
    """Pairs per second SVI consumes on a fixed minibatch (no simulation)."""
    svi, batch_size, x, y = _svi(problem)
    xb, yb = x[:batch_size], y[:batch_size]
    with pyro.validation_enabled(False):
        svi.step(yb, xb)
        start = time.perf_counter()
        for _ in range(steps):
            svi.step(yb, xb)
    return steps * batch_size / (time.perf_counter() - start), batch_size


def _train_rate(problem, workers, steps):
    """Pairs per second of SVI steps on stream minibatches (simulation included)."""
    svi, batch_size, _, _ = _svi(problem)
    stream = SimulationStream(problem.simulate, batch_size, seed=1)
    source = StreamBatches(stream, steps_per_epoch=steps + 2, num_workers=workers)
    try:
        batches = source.epoch_batches(1)
        with pyro.validation_enabled(False):
            for xb, yb in itertools.islice(batches, 2):
                svi.step(yb, xb)
            start = time.perf_counter()
            count = 0
            for xb, yb in batches:
                svi.step(yb, xb)
                count += 1
        return count * batch_size / (time.perf_counter() - start)
    finally:
        source.close()


def part_stream(args):
    for name in ("mt1d", "crosshole"):
        problem = make_problem(name)
        svi_rate, batch_size = _svi_rate(problem, args.steps)
        print(f"{name}: SVI consumes {svi_rate:8.0f} pairs/s (batch {batch_size}, steps only)")
        for workers in (0, 1, 2):
            rate = _stream_rate(problem, batch_size, workers, args.steps)
            print(f"{name}: stream delivers {rate:8.0f} pairs/s with {workers} worker(s)")
        for workers in (0, 1, 2):
            rate = _train_rate(problem, workers, args.steps)
            print(f"{name}: training on the stream {rate:8.0f} pairs/s with {workers} worker(s)")


_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    torch.set_num_threads(1)
    from ppl_cvae import ModelConfig, TrainConfig
    from ppl_cvae.data.lazy import open_lazy_pairs
    from ppl_cvae.train.fit import fit
    from ppl_cvae.train.sources import prepare_lazy_model

    def rss(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def lazy_fit(path):
        with open_lazy_pairs(path) as pairs:
            config = ModelConfig(x_shape=pairs.x_shape, y_shape=pairs.y_shape,
                                 hidden_dims=(64,), latent_dim=4)
            train = TrainConfig(num_epochs=1, batch_size=256, val_fraction=0.01, seed=0)
            cvae, lazy = prepare_lazy_model(pairs, config, train, chunk_bytes=1 << 20)
            return len(fit(cvae, None, None, train, batches=lazy.batches,
                           validation=lazy.validation, progress=False).step_losses)

    def growth(run):
        baseline = rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (Linux >= 4.0)
        start = __import__("time").perf_counter()
        out = run()
        return rss("VmHWM") - baseline, out, __import__("time").perf_counter() - start

    small, big = sys.argv[1], sys.argv[2]
    lazy_fit(small)
    lazy, steps, seconds = growth(lambda: lazy_fit(big))
    if big.endswith(".nc"):
        import xarray as xr
        eager, _, _ = growth(lambda: xr.open_dataset(big, engine="h5netcdf")["x"].values.sum())
    else:
        eager, _, _ = growth(lambda: np.load(Path(big) / "x.npy").sum())
    print(json.dumps({"lazy": lazy, "eager": eager, "steps": steps, "seconds": seconds}))
    """
)


def _write_pairs(root: Path, rows: int, x_dim: int) -> tuple[Path, Path]:
    """Write the same pairs as a folder of .npy and as NetCDF, chunk by chunk."""
    import h5netcdf

    folder, nc = root / "pairs", root / "pairs.nc"
    folder.mkdir()
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, x_dim))
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, 4))
    rng = np.random.default_rng(0)
    with h5netcdf.File(nc, "w") as fh:
        fh.dimensions = {"sample": rows, "element": x_dim, "datum": 4}
        vx = fh.create_variable("x", ("sample", "element"), "f4", chunks=(min(64, rows), x_dim))
        vy = fh.create_variable("y", ("sample", "datum"), "f4", chunks=(min(4096, rows), 4))
        for start in range(0, rows, 2048):
            stop = min(rows, start + 2048)
            xb = rng.standard_normal((stop - start, x_dim), dtype=np.float32)
            yb = xb[:, :4] + rng.standard_normal((stop - start, 4), dtype=np.float32)
            x[start:stop], y[start:stop] = xb, yb
            vx[start:stop], vy[start:stop] = xb, yb
    x.flush()
    y.flush()
    del x, y
    return folder, nc


def part_lazy(args):
    x_dim = 2000  # 8 KB per pair
    rows = int(args.file_mb * 2**20 // (4 * (x_dim + 4)))
    cap = args.cap_mb * 2**20
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": "131072"}  # see tests/test_data_lazy.py
    with tempfile.TemporaryDirectory(prefix="scale_data_") as tmp:
        root = Path(tmp)
        small_root, big_root = root / "small", root / "big"
        small_root.mkdir()
        big_root.mkdir()
        small = _write_pairs(small_root, 1000, x_dim)
        big = _write_pairs(big_root, rows, x_dim)
        for kind, s, b in (("npy", small[0], big[0]), ("nc", small[1], big[1])):
            size = sum(f.stat().st_size for f in b.iterdir()) if b.is_dir() else b.stat().st_size
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(s), str(b)], cwd=REPO,
                                  capture_output=True, text=True, env=env, check=True)
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"lazy {kind}: file {size / 2**20:.0f} MiB ({rows} pairs), cap "
                f"{args.cap_mb} MiB: peak RSS growth {got['lazy'] / 2**20:.0f} MiB while "
                f"training one epoch ({got['steps']} steps, {got['seconds']:.1f} s, 1 MiB "
                f"chunks, 4-chunk buffer); loading the file whole: "
                f"{got['eager'] / 2**20:.0f} MiB; lazy under the cap: {got['lazy'] < cap}"
            )


def main(args):
    torch.set_num_threads(args.threads)
    if args.part in ("stream", "all"):
        part_stream(args)
    if args.part in ("lazy", "all"):
        part_lazy(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["stream", "lazy", "all"], default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="minibatches per timing")
    parser.add_argument("--file-mb", type=float, default=256.0, help="size of the lazy file")
    parser.add_argument("--cap-mb", type=int, default=64, help="memory cap to compare with")
    main(parser.parse_args())
