import numpy as np
import pytest
import torch
import xarray as xr

from ppl_cvae.data import Standardiser, load_observations, load_pairs, save_pairs
from ppl_cvae.errors import DataError, ShapeError


def test_npz_round_trip(tmp_path):
    x, y = torch.randn(5, 3), torch.randn(5, 2, 2)
    save_pairs(tmp_path / "d.npz", x, y)
    x2, y2 = load_pairs(tmp_path / "d.npz")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(DataError, match="exists"):
        save_pairs(tmp_path / "d.npz", x, y)


def test_netcdf_pairs(tmp_path):
    ds = xr.Dataset(
        {
            "x": (("sample", "depth"), np.random.rand(4, 3)),
            "y": (("sample", "freq"), np.random.rand(4, 6)),
        }
    )
    ds.to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    x, y = load_pairs(tmp_path / "d.nc")
    assert x.shape == (4, 3) and y.shape == (4, 6) and x.dtype == torch.float32


def test_challenge_pt_file(shared_data):
    x, y = load_pairs(shared_data / "validation_dataset_data_1.pt")
    assert x.shape == (3000, 1, 50, 2) and y.shape == (3000, 1, 50, 2)


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ({"x": np.zeros((3, 2))}, DataError, r"expected \['x', 'y'\]"),
        ({"x": np.zeros((3, 2)), "y": np.full((3, 1), np.nan)}, DataError, "3 NaN or inf"),
        ({"x": np.zeros((3, 2)), "y": np.zeros((4, 1))}, ShapeError, "different numbers of pairs"),
        ({"x": np.zeros((1, 2)), "y": np.zeros((1, 1))}, ShapeError, "at least 2"),
    ],
)
def test_bad_pair_files(tmp_path, arrays, error, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=match):
        load_pairs(tmp_path / "bad.npz")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_pairs(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_pairs(tmp_path / "junk.npz")
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown data format"):
        load_pairs(tmp_path / "a.csv")


def test_observations_single_and_stacked(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((1, 50, 2)))
    y, stacked, truth = load_observations(tmp_path / "one.npy", (1, 50, 2))
    assert y.shape == (1, 1, 50, 2) and not stacked and truth is None
    np.savez(tmp_path / "many.npz", y=np.zeros((3, 1, 50, 2)), x=np.ones((3, 1, 50, 2)))
    y, stacked, truth = load_observations(tmp_path / "many.npz", (1, 50, 2))
    assert y.shape == (3, 1, 50, 2) and stacked and truth.shape == (3, 1, 50, 2)
    np.save(tmp_path / "bad.npy", np.zeros((50, 2)))
    with pytest.raises(ShapeError, match=r"has shape \(50, 2\); the model expects \(1, 50, 2\)"):
        load_observations(tmp_path / "bad.npy", (1, 50, 2))


def test_standardiser_round_trip_and_constant_features():
    data = torch.cat([torch.randn(100, 2) * 3 + 1, torch.full((100, 1), 5.0)], dim=1)
    s = Standardiser((3,)).fit(data)
    u = s(data)
    assert torch.allclose(u[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(u[:, :2].std(0), torch.ones(2), atol=1e-5)
    assert s.std[2] == 1.0  # constant feature: shifted, not scaled
    assert torch.allclose(s.inverse(u), data, atol=1e-5)
