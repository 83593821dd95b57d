"""``ppl-cvae fit --stream --workers K`` and ``fit --data FILE --lazy`` (issue 11)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import xarray as xr

from ppl_cvae.cli import main
from ppl_cvae.train import load_checkpoint

TINY = ["--epochs", "2", "--batch-size", "32", "--hidden-dims", "8", "--latent-dim", "2",
        "--quiet"]


def _train_losses(run):
    with open(run / "metrics.csv") as fh:
        return [float(row["train_loss"]) for row in csv.DictReader(fh)]


def test_stream_fit_is_the_same_run_with_and_without_workers(tmp_path):
    flags = ["fit", "--problem", "linear_gaussian", "--stream", "--num-train", "96", *TINY]
    assert main([*flags, "--out", str(tmp_path / "w0")]) == 0
    assert main([*flags, "--workers", "2", "--out", str(tmp_path / "w2")]) == 0
    assert _train_losses(tmp_path / "w0") == _train_losses(tmp_path / "w2")
    _, meta = load_checkpoint(tmp_path / "w2" / "model.pt")
    # 2 epochs of ceil(96 / 32) = 3 minibatches: the stream resumes at minibatch 6
    assert meta["extra"]["data_source"]["stream"]["state"]["position"] == 6


def test_lazy_npy_folder_and_lazy_netcdf_train_the_same(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3)).astype(np.float32)
    y = (x @ rng.standard_normal((3, 2)) + 0.1 * rng.standard_normal((300, 2))).astype(np.float32)
    folder = tmp_path / "pairs"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    xr.Dataset({"x": (("s", "a"), x), "y": (("s", "b"), y)}).to_netcdf(
        tmp_path / "pairs.nc", engine="h5netcdf")
    lazy = ["--chunk-mb", str(50 * 20 / 2**20), "--buffer-chunks", "2"]  # 50-pair chunks
    assert main(["fit", "--data", str(folder), *TINY, *lazy, "--out", str(tmp_path / "a")]) == 0
    assert main(["fit", "--data", str(tmp_path / "pairs.nc"), "--lazy", *TINY, *lazy,
                 "--out", str(tmp_path / "b")]) == 0
    a, b = _train_losses(tmp_path / "a"), _train_losses(tmp_path / "b")
    assert a == b and len(a) == 2
    cvae, meta = load_checkpoint(tmp_path / "a" / "model.pt")
    assert meta["extra"]["data_source"]["lazy"] == {"chunk_rows": 50, "buffer_chunks": 2}
    # the standardisers saw the training pairs (float64 moments of float32 data, stored as
    # float32), not the 30 held out: those of the split fit draws in memory
    import json

    from ppl_cvae.config import TrainConfig
    from ppl_cvae.train.fit import validation_split

    train = TrainConfig.from_dict(json.loads((tmp_path / "a" / "config.json").read_text())["train"])
    rows = validation_split(300, train)[0].numpy()
    assert len(rows) == 270
    np.testing.assert_allclose(cvae.x_standardiser.mean.numpy(), x[rows].mean(0), atol=1e-6)
    assert np.abs(cvae.x_standardiser.mean.numpy() - x.mean(0)).max() > 1e-3  # not every pair


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--problem", "linear_gaussian", "--workers", "2"], "add --stream"),
        (["--data", "pairs.npz", "--stream"], "not --data"),
        (["--problem", "linear_gaussian", "--lazy"], "give --data FILE"),
    ],
)
def test_inconsistent_flags_are_refused(tmp_path, capsys, flags, message):
    assert main(["fit", *flags, "--out", str(tmp_path / "r"), *TINY]) == 2
    assert message in capsys.readouterr().err


def _pairs_nc(path, flip=False):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 3)).astype(np.float32)
    y = (x @ rng.standard_normal((3, 2)) + 0.1 * rng.standard_normal((300, 2))).astype(np.float32)
    if flip:  # other pairs, the same moments of x and of y
        x = x[::-1].copy()
    xr.Dataset({"x": (("s", "a"), x), "y": (("s", "b"), y)}).to_netcdf(path, engine="h5netcdf")


def _weights_equal(a, b):
    import torch

    wa = load_checkpoint(a / "model.pt")[0].state_dict()
    wb = load_checkpoint(b / "model.pt")[0].state_dict()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_lazy_file_is_digested_like_the_file_in_memory(tmp_path):
    """``LazyPairs.digest`` reads each variable alone in chunks and equals ``data_digest`` of
    the pairs ``load_pairs`` reads, whatever the chunk size."""
    from ppl_cvae.data.io import load_pairs
    from ppl_cvae.data.lazy import open_lazy_pairs
    from ppl_cvae.train.resume import data_digest

    _pairs_nc(tmp_path / "p.nc")
    expected = data_digest(*load_pairs(tmp_path / "p.nc"))
    with open_lazy_pairs(tmp_path / "p.nc") as pairs:
        assert {pairs.digest(rows) for rows in (1, 7, 300, 1000)} == {expected}


def test_a_run_file_repeats_a_lazy_run_and_refuses_other_pairs(tmp_path, monkeypatch, capsys):
    """``config.json`` records how the pairs were read (``data_source``) and their digest for
    a lazily read file too. ``fit --config`` of a lazy run reads lazily with its chunk sizes
    (the same weights, bit for bit; before, it read the file into memory: 57 of 85 tensors
    differed), and refuses a file whose pairs changed at the same path (before, a lazy repeat
    trained on them)."""
    import json

    monkeypatch.chdir(tmp_path)
    _pairs_nc(tmp_path / "pairs.nc")
    lazy = ["--lazy", "--chunk-mb", str(50 * 20 / 2**20), "--buffer-chunks", "2"]
    assert main(["fit", "--data", "pairs.nc", *TINY, *lazy, "--out", "a"]) == 0
    doc = json.loads((tmp_path / "a" / "config.json").read_text())
    assert doc["data_source"]["lazy"]["buffer_chunks"] == 2 and len(doc["data_digest"]) == 64
    assert main(["fit", "--config", "a/config.json", "--quiet", "--out", "b"]) == 0
    assert _weights_equal(tmp_path / "a", tmp_path / "b")
    _pairs_nc(tmp_path / "pairs.nc", flip=True)
    capsys.readouterr()
    assert main(["fit", "--config", "a/config.json", "--quiet", "--out", "c"]) == 2
    assert "fitted on other pairs" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_run_read_in_memory_is_repeated_and_resumed_in_memory(tmp_path, monkeypatch, caplog):
    """A ``.nc`` larger than half the free memory is read lazily, unless the run file (or the
    training state) records that the run read it into memory: then it is read into memory
    with a warning, and the repeat has the same weights (before, the repeat was read lazily:
    other minibatches, and a resume was refused as "other training data")."""
    import ppl_cvae.cli.fit as fit_cli

    monkeypatch.chdir(tmp_path)
    _pairs_nc(tmp_path / "pairs.nc")
    assert main(["fit", "--data", "pairs.nc", *TINY, "--out", "a"]) == 0
    monkeypatch.setattr(fit_cli, "LAZY_MEMORY_FRACTION", 1e-12)  # every file is "large"
    assert main(["fit", "--config", "a/config.json", "--quiet", "--out", "b"]) == 0
    assert "reading it into memory all the same" in caplog.text
    assert _weights_equal(tmp_path / "a", tmp_path / "b")
    caplog.clear()
    assert main(["fit", "--data", "pairs.nc", *TINY, "--out", "c"]) == 0  # a new run: lazily
    assert "reading it lazily" in caplog.text
    assert not _weights_equal(tmp_path / "a", tmp_path / "c")


def test_the_training_range_of_x_is_the_same_in_memory_and_lazily(tmp_path):
    """Both readers take the range of ``x`` (for the "draws outside the training range"
    check) over the training pairs, without the held-out ones; before, the in-memory fit's
    range included the validation rows (max 2.9726 against 2.8745 on the audit's file)."""
    import torch

    _pairs_nc(tmp_path / "pairs.nc")
    for name, extra in (("m", []), ("l", ["--lazy"])):
        assert main(["fit", "--data", str(tmp_path / "pairs.nc"), *TINY, *extra,
                     "--out", str(tmp_path / name)]) == 0
    m = load_checkpoint(tmp_path / "m" / "model.pt")[0].training_x_range
    lazy = load_checkpoint(tmp_path / "l" / "model.pt")[0].training_x_range
    assert all(torch.equal(a, b) for a, b in zip(m, lazy, strict=True))
