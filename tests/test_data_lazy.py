"""Lazy chunked readers, streaming moments and training on a file larger than a memory cap."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from ppl_cvae import DataError, ModelConfig, ShapeError, TrainConfig
from ppl_cvae.data.lazy import (
    RunningMoments,
    chunk_rows_for,
    open_lazy_pairs,
    shuffled_batches,
)
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.train.fit import build_cvae
from ppl_cvae.train.sources import build_lazy_cvae, prepare_lazy_fit

REPO = Path(__file__).resolve().parents[1]
EPS32 = float(np.finfo(np.float32).eps)


def _pairs(n=300, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal((n, 3, 2)) * [[1.0, 5.0]]).astype(np.float32)
    y = rng.uniform(-2, 7, size=(n, 4)).astype(np.float64)
    return x, y


def _write_npy(folder: Path, x, y) -> Path:
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return folder


def _write_nc(path: Path, x, y) -> Path:
    xr.Dataset({"x": (("sample", "a", "b"), x), "y": (("sample", "d"), y)}).to_netcdf(
        path, engine="h5netcdf"
    )
    return path


# --- RunningMoments -------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_chunked_moments_match_numpy_on_the_whole_array(offset):
    x, _ = _pairs(n=5000, seed=1, offset=offset)
    moments = RunningMoments((3, 2))
    rng = np.random.default_rng(2)
    cuts = np.sort(rng.choice(np.arange(1, 5000), size=40, replace=False))
    for part in np.split(x, cuts):
        moments.update(torch.from_numpy(part))
    ref = x.astype(np.float64)
    # float64 accumulation of float32 values: each merge rounds at about eps64 relative, over
    # 41 merges and 5000 values; 1e-10 relative leaves a margin of 1e3
    np.testing.assert_allclose(moments.mean.numpy(), ref.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(moments.variance().numpy(), ref.var(0, ddof=1), rtol=1e-10)
    # Standardiser.fit works in float32: its mean is off by at most about
    # log2(N) * eps32 * max|x| (pairwise summation), its sd by about as much relative to mean
    fitted = Standardiser((3, 2)).fit(torch.from_numpy(x))
    streamed = moments.standardiser()
    tol = 4 * math.log2(5000) * EPS32 * float(np.abs(x).max())
    np.testing.assert_allclose(streamed.mean.numpy(), fitted.mean.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(streamed.std.numpy(), fitted.std.numpy(), rtol=0, atol=tol)
    # negative control: the one-pass textbook formula E[x^2] - E[x]^2 in float32 fails the
    # same tolerance once the mean is large against the sd (cancellation)
    if offset:
        t = torch.from_numpy(x)
        naive = ((t * t).mean(0) - t.mean(0) ** 2) * (5000 / 4999)
        naive_sd = naive.clamp_min(0).sqrt().numpy()
        assert np.abs(naive_sd - ref.std(0, ddof=1)).max() > tol


def test_merging_two_partial_moments_equals_one_pass():
    x, _ = _pairs(n=101, seed=3)
    t = torch.from_numpy(x)
    a, b = RunningMoments((3, 2)).update(t[:37]), RunningMoments((3, 2)).update(t[37:])
    whole = RunningMoments((3, 2)).update(t)
    a.merge(b)
    assert a.count == 101
    torch.testing.assert_close(a.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.variance(), whole.variance(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ShapeError, match=r"\(rows, 3, 2\)"):
        a.update(torch.zeros(4, 6))


# --- readers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["npy", "nc"])
def test_readers_return_the_stored_rows_as_float32(tmp_path, kind):
    x, y = _pairs()
    path = _write_npy(tmp_path / "d", x, y) if kind == "npy" else _write_nc(tmp_path / "d.nc", x, y)
    with open_lazy_pairs(path) as pairs:
        assert (pairs.num_pairs, pairs.x_shape, pairs.y_shape) == (300, (3, 2), (4,))
        assert pairs.row_bytes == 6 * 4 + 4 * 8
        xb, yb = pairs.read(17, 60)
        assert xb.dtype == yb.dtype == torch.float32
        assert torch.equal(xb, torch.from_numpy(x[17:60]))
        assert torch.equal(yb, torch.from_numpy(y[17:60].astype(np.float32)))
        rows = torch.tensor([0, 5, 299])
        xr_, _ = pairs.read_rows(rows)
        assert torch.equal(xr_, torch.from_numpy(x[[0, 5, 299]]))
        with pytest.raises(ShapeError, match="outside"):
            pairs.read(10, 301)


@pytest.mark.parametrize("kind", ["npy", "nc"])
def test_a_chunk_with_nan_is_refused_naming_its_rows(tmp_path, kind):
    x, y = _pairs()
    y[123, 2] = np.nan
    path = _write_npy(tmp_path / "d", x, y) if kind == "npy" else _write_nc(tmp_path / "d.nc", x, y)
    with open_lazy_pairs(path) as pairs:
        pairs.read(0, 100)  # clean rows read fine
        with pytest.raises(DataError, match=r"y \(rows 100:200\).*1 NaN or inf"):
            pairs.read(100, 200)


def test_bad_npy_folders_are_refused(tmp_path):
    x, y = _pairs()
    folder = _write_npy(tmp_path / "d", x, y)
    np.save(folder / "x.npy", np.asfortranarray(x))
    with pytest.raises(DataError, match="Fortran order"):
        open_lazy_pairs(folder)
    np.save(folder / "x.npy", x[:10])
    with pytest.raises(ShapeError, match="different numbers of pairs"):
        open_lazy_pairs(folder)
    np.save(folder / "x.npy", x.astype(np.complex64))
    with pytest.raises(DataError, match="complex"):
        open_lazy_pairs(folder)
    np.save(folder / "x.npy", x)
    (folder / "y.npy").unlink()
    with pytest.raises(DataError, match="no y.npy"):
        open_lazy_pairs(folder)
    with pytest.raises(DataError, match="does not exist"):
        open_lazy_pairs(tmp_path / "missing.nc")


def test_a_netcdf_without_y_is_refused(tmp_path):
    path = tmp_path / "d.nc"
    xr.Dataset({"x": (("s", "a"), np.zeros((4, 2)))}).to_netcdf(path, engine="h5netcdf")
    with pytest.raises(DataError, match=r"missing \['y'\]"):
        open_lazy_pairs(path)


def test_zarr_store_is_read_when_zarr_is_installed(tmp_path):
    pytest.importorskip("zarr")
    x, y = _pairs()
    path = tmp_path / "d.zarr"
    xr.Dataset({"x": (("sample", "a", "b"), x), "y": (("sample", "d"), y)}).to_zarr(
        path, consolidated=False)
    with open_lazy_pairs(path) as pairs:
        assert torch.equal(pairs.read(3, 9)[0], torch.from_numpy(x[3:9]))


# --- shuffling and the preparation pass --------------------------------------------------------


def test_buffer_shuffle_visits_every_training_row_once(tmp_path):
    n = 1000
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    folder = _write_npy(tmp_path / "d", x, x * 2)
    exclude = torch.tensor([3, 400, 401, 999])
    with open_lazy_pairs(folder) as pairs:
        def epoch(seed):
            gen = torch.Generator().manual_seed(seed)
            return list(shuffled_batches(pairs, batch_size=64, chunk_rows=50, buffer_chunks=3,
                                         generator=gen, exclude=exclude))
        batches = epoch(0)
        sizes = [len(b[0]) for b in batches]
        assert sizes[:-1] == [64] * (len(sizes) - 1) and sum(sizes) == n - 4
        seen = torch.cat([b[0][:, 0] for b in batches]).long()
        assert torch.equal(seen.sort().values, torch.tensor(
            [i for i in range(n) if i not in exclude.tolist()]))
        assert all(torch.equal(b[1], 2 * b[0]) for b in batches)  # pairs stay paired
        again, other = epoch(0), epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(batches[0][0], other[0][0])
    # a minibatch mixes rows of at most buffer_chunks chunks (+ the carried remainder)
    assert len(set((batches[1][0][:, 0] // 50).long().tolist())) <= 3 + 1


class _CountingReads:
    """Wrap LazyPairs to count the rows read (chunks and rows by index)."""

    def __init__(self, pairs):
        self.pairs, self.rows_read = pairs, 0

    def __getattr__(self, name):
        return getattr(self.pairs, name)

    def read(self, start, stop):
        self.rows_read += stop - start
        return self.pairs.read(start, stop)

    def read_rows(self, rows):
        self.rows_read += int(rows.numel())
        return self.pairs.read_rows(rows)


@pytest.mark.parametrize("buffer_chunks", [1, 3])
def test_a_resumed_epoch_yields_the_same_minibatches_and_skips_reads(tmp_path, buffer_chunks):
    """``first_batch=k`` gives minibatches k, k+1, ... of the full epoch, bit for bit."""
    n = 500  # 10 chunks of 50 rows, batches of 64 rows: remainders carried across buffers
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    folder = _write_npy(tmp_path / "d", x, -x)
    exclude = torch.tensor([7, 120, 121, 499])
    with open_lazy_pairs(folder) as raw:
        def epoch(first, pairs=raw):
            gen = torch.Generator().manual_seed(11)
            return list(shuffled_batches(pairs, batch_size=64, chunk_rows=50,
                                         buffer_chunks=buffer_chunks, generator=gen,
                                         exclude=exclude, first_batch=first))
        full = epoch(0)
        assert len(full) == math.ceil((n - 4) / 64)
        for first in range(len(full) + 2):
            counting = _CountingReads(raw)
            part = epoch(first, counting)
            assert len(part) == max(0, len(full) - first)
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                       for a, b in zip(part, full[first:], strict=True))
            # skipped buffers are not read: at most the rows of the epoch from minibatch
            # `first` on, plus one buffer and its carry (< 64 rows)
            assert counting.rows_read <= (n - 4) - 64 * first + 50 * buffer_chunks + 64 + 4


def test_lazy_build_matches_the_in_memory_build(tmp_path):
    """Standardisers and whitener of a lazily read file are those of the in-memory fit: fitted
    on the training rows of the same split (``validation_split``), not on the held-out rows.
    Before, the lazy build took the moments of every row and the whitener saw the validation
    rows too (the y mean 8e-2 off the training rows' on an mt1d file): negative control below.
    """
    from ppl_cvae.train.fit import validation_split

    x, y = _pairs(n=400, seed=4)
    x = x.reshape(400, 6)
    folder = _write_npy(tmp_path / "d", x, y)
    config = ModelConfig(x_shape=(6,), y_shape=(4,), hidden_dims=(8,), x_whitening="linear")
    train = TrainConfig(val_fraction=0.1, batch_size=32, seed=7)
    with open_lazy_pairs(folder) as pairs:
        lazy = prepare_lazy_fit(pairs, config, train, chunk_rows=chunk_rows_for(pairs, 1000))
        cvae = build_lazy_cvae(config, lazy, seed=7)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    train_rows, val_rows = validation_split(400, train)
    ref = build_cvae(config, xt, yt, seed=7, fit_rows=train_rows)
    tol = 4 * math.log2(400) * EPS32 * float(np.abs(y).max())  # float32 accumulation (above)
    for name in ("mean", "std"):
        torch.testing.assert_close(getattr(cvae.y_standardiser, name),
                                   getattr(ref.y_standardiser, name), rtol=0, atol=tol)
    assert cvae.whitener is not None and ref.whitener is not None
    # the same 360 training rows (all, N < 20000) whitened: the same regression up to rounding
    torch.testing.assert_close(cvae.whitener.weight, ref.whitener.weight, rtol=1e-4, atol=1e-5)
    every_row = build_cvae(config, xt, yt, seed=7)  # negative control: the held-out rows seen
    assert (every_row.y_standardiser.mean - cvae.y_standardiser.mean).abs().max() > 10 * tol
    assert torch.equal(lazy.scan.validation_rows, val_rows.sort().values)
    # the validation rows are held out: round(0.1 * 400) rows, the ones of the scan
    vx, _ = lazy.validation
    assert vx.shape == (40, 6) and lazy.batches.pairs_per_epoch == 360
    rows = lazy.scan.validation_rows
    assert torch.equal(vx, xt[rows])


# --- bounded memory on a file larger than the cap ------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
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
                                 hidden_dims=(16,), latent_dim=2)
            train = TrainConfig(num_epochs=1, batch_size=256, val_fraction=0.01, seed=0)
            cvae, lazy = prepare_lazy_model(pairs, config, train, chunk_bytes=1 << 20)
            result = fit(cvae, None, None, train, batches=lazy.batches,
                         validation=lazy.validation, progress=False)
            return len(result.step_losses)

    small, big = sys.argv[1], sys.argv[2]
    # the baseline: the same run on a small file first, so that the code torch, pyro and the
    # readers page in and their one-off allocations (about 100 MB) are not counted as data
    lazy_fit(small)

    def growth(run):
        baseline = rss("VmRSS")
        try:  # reset the peak to the current RSS (Linux >= 4.0); else the peak so far stays
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        out = run()
        return rss("VmHWM") - baseline, out

    lazy, steps = growth(lambda: lazy_fit(big))
    # negative control: the whole file in memory
    eager, _ = growth(lambda: np.load(Path(big) / "x.npy").sum())
    print(json.dumps({"lazy": lazy, "eager": eager, "steps": steps}))
    """
)


def _write_big_npy(folder: Path, rows: int, x_dim: int) -> int:
    """Write x (rows, x_dim) float32 and y (rows, 4) chunk by chunk; return the bytes."""
    folder.mkdir()
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, x_dim))
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, 4))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 2048):
        stop = min(rows, start + 2048)
        x[start:stop] = rng.standard_normal((stop - start, x_dim), dtype=np.float32)
        y[start:stop] = x[start:stop, :4] + rng.standard_normal((stop - start, 4),
                                                                 dtype=np.float32)
    x.flush()
    y.flush()
    del x, y
    return sum(f.stat().st_size for f in folder.iterdir())


def _run_child(small: Path, big: Path) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(small), str(big)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin",
                               # glibc raises its mmap threshold after each freed large
                               # buffer, so later buffers land in the heap, whose freed holes
                               # are not returned: the RSS then wanders by 0-50 MB from run to
                               # run. A fixed threshold returns every buffer >= 128 KiB.
                               "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_on_a_file_larger_than_the_cap_keeps_memory_bounded(tmp_path):
    rows, x_dim = 27_000, 2000  # 8 KB per pair: 216 MB
    size = _write_big_npy(tmp_path / "big", rows, x_dim)
    _write_big_npy(tmp_path / "small", 1000, x_dim)
    # Cap on the RSS growth over the interpreter that has run the same fit on a small file:
    # (4 buffered + 1 read + 1 carried) chunks of 1 MiB, each held about 3 times (read,
    # float32 copy, shuffled copy) = 18 MiB; 270 validation pairs = 2 MiB; the model
    # (2000 -> 16 -> ... weights, Adam moments, a 256-pair batch's activations) under
    # 10 MiB; allocator slack. 64 MiB, about a third of the file.
    cap = 64 * 2**20
    assert size > 3 * cap
    got = _run_child(tmp_path / "small", tmp_path / "big")
    assert got["steps"] == math.ceil((rows - 270) / 256)  # one full pass was trained on
    assert got["lazy"] < cap, got
    # negative control: reading the file into memory exceeds the cap
    assert got["eager"] > cap, got
