"""The pieces of benchmarks/sbi_compare.py that need neither sbi nor sbibm.

The benchmark hands files between two environments: ``sbi_side.py`` (sbi's) writes the
training pairs and observations that ``ppl-cvae`` reads, and ``sbi_compare.py`` (ours) turns a
``ppl-cvae sample`` file into the ``(M, S, d)`` array that the C2ST scorer reads. Both
directions are checked here; the sbi half itself is not imported beyond its numpy helpers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.arviz_io import save_inference_data, to_inference_data
from ppl_cvae.data.io import load_observations, load_pairs

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sbi_side = _load("sbi_side")
sbi_compare = _load("sbi_compare")


def test_training_and_observation_files_read_by_ppl_cvae(tmp_path):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(7, 10))  # sbi's theta is our x
    data = rng.normal(size=(7, 10)).astype(np.float32)  # sbi's x is our y
    sbi_side.save_npz(tmp_path / "train.npz", x=theta, y=data)
    x, y = load_pairs(tmp_path / "train.npz")
    assert x.shape == (7, 10) and y.shape == (7, 10)
    assert torch.equal(x, torch.from_numpy(theta.astype(np.float32)))
    sbi_side.save_npz(
        tmp_path / "obs.npz", y=data[:3], x=theta[:3], num_observation=np.arange(1, 4)
    )
    y_obs, stacked, x_true = load_observations(tmp_path / "obs.npz", (10,))
    assert stacked and y_obs.shape == (3, 10) and x_true.shape == (3, 10)
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_save_npz_refuses_other_suffix(tmp_path):
    with pytest.raises(ValueError, match="expected an .npz"):
        sbi_side.save_npz(tmp_path / "train.npy", x=np.zeros(2))


@pytest.mark.parametrize("num_obs, old_layout", [(3, False), (1, False), (1, True)])
def test_posterior_samples_layout(tmp_path, num_obs, old_layout):
    num_samples = 4
    x = torch.arange(num_samples * num_obs * 6, dtype=torch.float32).reshape(
        num_samples, num_obs, 2, 3
    )
    idata = to_inference_data(x, torch.zeros(num_samples, num_obs, 1), torch.zeros(num_obs, 2))
    if old_layout:  # a file written when one observation had no observation dim
        idata = idata.isel(observation=0)
    path = save_inference_data(idata, tmp_path / "post.nc")
    samples = sbi_compare.posterior_samples(path)
    # (S, M, 2, 3) -> (M, S, 6): observation first, draws next, event flattened in C order
    expected = x.permute(1, 0, 2, 3).reshape(num_obs, num_samples, 6).numpy()
    assert samples.shape == (num_obs, num_samples, 6) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, expected)


def test_save_samples_round_trip_and_refusal(tmp_path):
    samples = np.ones((2, 5, 3), dtype=np.float32)
    sbi_compare.save_samples(tmp_path / "s.npz", samples)
    with np.load(tmp_path / "s.npz") as f:
        np.testing.assert_array_equal(f["samples"], samples)
    with pytest.raises(ValueError, match=r"\(M, S, d\)"):
        sbi_compare.save_samples(tmp_path / "t.npz", samples[0])


def test_format_table_lists_every_observation_and_summary():
    results = {
        "two_moons": {
            "ours": [{"args": "", "c2st": [0.9, 0.7], "fit_s": 10.0, "epochs": 5, "best_epoch": 4}],
            "npe": {"c2st": [0.6, 0.5], "train_s": 20.0, "epochs": 30},
        }
    }
    table = sbi_compare.format_table(results, [1, 2], threads=1)
    assert "| 1 | 0.900 | 0.600 |" in table
    assert "| median | 0.800 | 0.550 |" in table
    assert "NPE: train 20 s" in table
