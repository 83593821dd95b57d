import hashlib
import io
import os
import pathlib
import pickle
import time
import zipfile

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import TensorDataset

import ppl_cvae._isolated as isolated
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
        (  # pairs stored along the last axis
            {"x": np.zeros((2, 50)), "y": np.zeros((8, 50))},
            ShapeError,
            r"pairs: x \(2, 50\), y \(8, 50\) \(both end in an axis of 50.*x\.T, y\.T",
        ),
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


# ---------------------------------------------------------------------------------------------
# .pt files: weights_only loading, the challenge files, refusal of pickled code
# ---------------------------------------------------------------------------------------------

CHALLENGE_FILES = [
    "scoring_dataset.pt",
    "submission_sample.pt",
    "validation_dataset_data_1.pt",
    "validation_dataset_original.pt",
]


@pytest.mark.parametrize("name", CHALLENGE_FILES)
def test_all_challenge_files_load_with_weights_only(shared_data, name):
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"{name} is not in ../shared/data/two_birds")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    x, y = load_pairs(path)
    assert x.shape[1:] == (1, 50, 2) and y.shape == x.shape and x.shape[0] >= 2
    assert x.dtype == y.dtype == torch.float32
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


class _TouchOnUnpickle:
    """Unpickling this object calls ``Path.touch(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _write_evil(path: pathlib.Path, how: str, payload: object) -> None:
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif how.startswith("pickle protocol "):
        path.write_bytes(pickle.dumps(payload, protocol=int(how.rsplit(" ", 1)[1])))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "torch.save",
        "torch.save legacy",
        "pickle protocol 0",
        "pickle protocol 2",
        "pickle protocol 5",
    ],
)
@pytest.mark.parametrize("wrap", ["bare", "inside a TensorDataset", "as y of a dict"])
def test_pt_with_pickled_code_is_refused_unexecuted(tmp_path, how, wrap):
    marker = tmp_path / "code_ran"
    evil = _TouchOnUnpickle(marker)
    payload: object = {
        "bare": evil,
        "inside a TensorDataset": TensorDataset(torch.zeros(3, 2), torch.zeros(3, 1)),
        "as y of a dict": {"x": torch.zeros(3, 2), "y": evil},
    }[wrap]
    if wrap == "inside a TensorDataset":
        payload.tensors = (torch.zeros(3, 2), evil)
    path = tmp_path / "evil.pt"
    _write_evil(path, how, payload)
    with pytest.raises(DataError, match="that (is|are) not allowed") as info:
        load_pairs(path)
    message = str(info.value)
    assert not marker.exists(), "unpickling ran code from the file"
    assert str(path) in message and "convert it to .npz" in message
    assert "weights_only" not in message  # never advise the unsafe mode
    assert "pathlib" in message or "getattr" in message  # names what it refused


def test_pt_refusal_names_os_system(tmp_path):
    class System:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": torch.zeros(3, 2), "y": System()}, tmp_path / "s.pt")
    with pytest.raises(DataError, match=r"pickled object of type '(posix|nt)\.system' that is"):
        load_pairs(tmp_path / "s.pt")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda x, y: TensorDataset(x, y), id="TensorDataset"),
        pytest.param(lambda x, y: (x, y), id="tuple"),
        pytest.param(lambda x, y: [x, y], id="list"),
        pytest.param(lambda x, y: {"x": x, "y": y, "note": "ignored"}, id="dict"),
    ],
)
def test_pt_containers_that_are_accepted(tmp_path, payload):
    x, y = torch.randn(4, 1, 5, 2), torch.arange(8).reshape(4, 2)
    torch.save(payload(x, y), tmp_path / "d.pt")
    x2, y2 = load_pairs(tmp_path / "d.pt")
    assert torch.equal(x2, x) and torch.equal(y2, y.float()) and y2.dtype == torch.float32


@pytest.mark.parametrize(
    "payload, match",
    [
        ((torch.zeros(3, 2),) * 3, "holds a tuple of 3 items; expected a TensorDataset"),
        (TensorDataset(torch.zeros(3, 2)), "holds a TensorDataset of 1 item; expected"),
        (
            {"x": torch.zeros(3, 2)},
            r"holds a dict with keys \['x'\]; expected keys 'x' and 'y'",
        ),
        (7, "holds an object of type int"),
        (("a", torch.zeros(3)), "x in .* is a str, expected a tensor"),
        ((torch.zeros(3, 2).to_sparse(), torch.zeros(3, 1)), "sparse_coo tensor; expected a dense"),
        (
            (torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.complex64)),
            "y in .* has dtype "
            "torch.complex64 \\(complex numbers; the imaginary part would be lost",
        ),
        ((torch.zeros(3, 0), torch.zeros(3, 1)), r"x in .* is empty: shape \(3, 0\)"),
    ],
)
def test_pt_contents_that_are_refused(tmp_path, payload, match):
    torch.save(payload, tmp_path / "d.pt")
    with pytest.raises(DataError, match=match):
        load_pairs(tmp_path / "d.pt")


def test_pt_bfloat16_and_bool_tensors_are_widened(tmp_path):
    x = torch.tensor([[1.5, -2.0], [3.0, 0.25]], dtype=torch.bfloat16)
    y = torch.tensor([[True], [False]])
    torch.save((x, y), tmp_path / "d.pt")
    x2, y2 = load_pairs(tmp_path / "d.pt")
    assert torch.equal(x2, x.float()) and torch.equal(y2, torch.tensor([[1.0], [0.0]]))


# ---------------------------------------------------------------------------------------------
# dtypes, overflow, empty arrays (.npz; the checks are shared by every format)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y, match",
    [
        (np.ones((3, 2), np.complex128), r"y in .* has dtype complex128 \(complex numbers"),
        (np.array([[1], [2], [3]], dtype=object), r"y in .* has dtype object \(Python objects"),
        (np.array([["a"], ["b"], ["c"]]), r"y in .* has dtype <U1 \(unicode strings"),
        (np.array([[b"a"], [b"b"], [b"c"]]), r"y in .* has dtype \|S1 \(byte strings"),
        (np.zeros((3, 1), dtype=[("a", "<f4"), ("b", "<i4")]), r"has dtype .* \(raw or structured"),
        (np.zeros((3, 1), dtype="M8[s]"), r"y in .* has dtype datetime64\[s\] \(datetimes"),
        (np.zeros((3, 1), dtype="m8[s]"), r"y in .* has dtype timedelta64\[s\] \(timedeltas"),
        (np.full((3, 1), 1e300), r"y in .* has 3 finite values beyond the float32 range"),
        (np.array([[1.0], [np.inf], [-np.inf]]), r"y in .* contains 2 NaN or inf values"),
        (np.zeros((3, 0)), r"y in .* is empty: shape \(3, 0\), dtype float64"),
        (np.zeros((0, 2)), r"y in .* is empty: shape \(0, 2\)"),
    ],
)
def test_refused_dtypes_and_values(tmp_path, y, match):
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 2)), y=y)  # object arrays are pickled
    with pytest.raises(DataError, match=match) as info:
        load_pairs(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value)


def test_float32_range_edge_is_accepted(tmp_path):
    big = float(np.finfo(np.float32).max)
    np.savez(tmp_path / "d.npz", x=np.array([[big], [-big]]), y=np.zeros((2, 1)))
    x, _ = load_pairs(tmp_path / "d.npz")
    assert torch.equal(x, torch.tensor([[big], [-big]], dtype=torch.float32))


@pytest.mark.parametrize("dtype", ["?", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2"])
def test_bool_and_integer_dtypes_are_cast_to_float32(tmp_path, dtype):
    x = (np.arange(6).reshape(3, 2) % 2).astype(dtype)
    np.savez(tmp_path / "d.npz", x=x, y=np.ones((3, 1), dtype))
    x2, y2 = load_pairs(tmp_path / "d.npz")
    assert x2.dtype == y2.dtype == torch.float32
    assert torch.equal(x2, torch.from_numpy(x.astype(np.float32)))


# ---------------------------------------------------------------------------------------------
# garbage files end in DataError naming the user's path
# ---------------------------------------------------------------------------------------------


def _valid_npz(tmp_path: pathlib.Path) -> bytes:
    np.savez(tmp_path / "valid.npz", x=np.zeros((3, 2)), y=np.ones((3, 1)))
    return (tmp_path / "valid.npz").read_bytes()


def _saved_pt() -> bytes:
    """Return the bytes of a small ``torch.save`` file of pairs."""
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(20, 3), "y": torch.ones(20, 2)}, buffer)
    return buffer.getvalue()


def test_garbage_files_end_in_data_error(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    valid = _valid_npz(tmp_path)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("x.npy", b"this is not an npy file")
        zf.writestr("y.npy", b"neither is this")
    with h5py.File(tmp_path / "wrong.h5", "w") as f:
        f.create_group("x")
        f["y"] = np.zeros(3)
    cases = {
        "noise.npz": (noise, r"cannot read .* as \.npz"),
        "noise.pt": (noise, r"cannot read .* as a torch\.save file"),
        "noise.nc": (noise, "is not a NetCDF file"),
        "truncated.npz": (valid[: len(valid) // 2], r"cannot read .* as \.npz"),
        "empty.npz": (b"", r"cannot read .* as \.npz"),
        "zip_not_npz.npz": ((tmp_path / "other.zip").read_bytes(), r"read x in .*magic string"),
        "npz_as.nc": (valid, "is not a NetCDF file"),
        "hdf5_wrong.nc": ((tmp_path / "wrong.h5").read_bytes(), r"variables \['y'\]; expected"),
        "npz_as.pt": (valid, r"torch\.save file: the zip archive is damaged, cut off or not"),
        # an empty or cut-off .pt said "EOFError: " and "OSError: [Errno 22] Invalid argument"
        "empty.pt": (b"", r"torch\.save file: the file ends early \(it is empty or was cut"),
        "truncated.pt": (_saved_pt()[:300], r"starts as a zip archive .* was cut off or damaged"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match=match) as info:
            load_pairs(path)
        assert str(path) in str(info.value), name
        assert path.read_bytes() == data, f"{name} was modified"


def test_npz_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 10**6)}
    )
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as zf:
        zf.writestr("x.npy", buffer.getvalue() + b"\0" * 64)
        zf.writestr("y.npy", buffer.getvalue())
    with pytest.raises(DataError, match=r"x in .* declares shape \(1000000000000, 1000000\)"):
        load_pairs(tmp_path / "huge.npz")


# ---------------------------------------------------------------------------------------------
# NetCDF: read in a child process with a time limit
# ---------------------------------------------------------------------------------------------


def test_netcdf_time_units_stay_numbers_and_fill_values_are_refused(tmp_path):
    ds = xr.Dataset(
        {
            "x": (("sample", "t"), np.arange(6.0).reshape(3, 2), {"units": "seconds"}),
            "y": (("sample", "d"), np.ones((3, 1)), {"units": "days since 2000-01-01"}),
        }
    )
    ds.to_netcdf(tmp_path / "t.nc", engine="h5netcdf")
    x, y = load_pairs(tmp_path / "t.nc")
    assert torch.equal(x, torch.arange(6.0).reshape(3, 2)) and torch.equal(y, torch.ones(3, 1))
    ds["y"].encoding["_FillValue"] = -9999.0
    ds["y"][1, 0] = np.nan
    ds.to_netcdf(tmp_path / "f.nc", engine="h5netcdf")
    with pytest.raises(DataError, match="y in .* contains 1 NaN or inf"):
        load_pairs(tmp_path / "f.nc")


def test_netcdf3_and_plain_hdf5(tmp_path):
    xr.Dataset({"x": (("s", "a"), np.ones((3, 2))), "y": (("s", "b"), np.zeros((3, 1)))}).to_netcdf(
        tmp_path / "v3.nc", engine="scipy"
    )
    x, y = load_pairs(tmp_path / "v3.nc")
    assert x.shape == (3, 2) and y.shape == (3, 1)
    with h5py.File(tmp_path / "plain.nc", "w") as f:
        f["x"] = np.ones((3, 2), np.int16)
        f["y"] = np.zeros((3, 1), np.float32)
    x, y = load_pairs(tmp_path / "plain.nc")
    assert x.shape == (3, 2) and x.dtype == torch.float32


def test_netcdf_reader_is_stopped_after_its_time_limit(tmp_path, monkeypatch):
    data = {"x": (("s", "a"), np.ones((4, 3))), "y": (("s", "b"), np.ones((4, 2)))}
    xr.Dataset(data).to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    monkeypatch.setattr(isolated, "NETCDF_TIMEOUT_S", 0.05)  # too short to start Python
    with pytest.raises(DataError, match=r"d\.nc' as NetCDF did not finish within 0 s"):
        load_pairs(tmp_path / "d.nc")


def test_netcdf_file_that_hung_libhdf5_ends_quickly(tmp_path, monkeypatch):
    # one changed byte of this file made libhdf5 2.0.0 (h5py 3.16) loop forever in
    # H5DSget_num_scales; other versions may fail fast or even read it: all are fine, a hang
    # is not
    data = {"x": (("s", "a"), np.arange(12.0).reshape(4, 3)), "y": (("s", "b"), np.ones((4, 2)))}
    xr.Dataset(data).to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    raw = bytearray((tmp_path / "d.nc").read_bytes())
    raw[4144] = 0xE9
    (tmp_path / "d.nc").write_bytes(bytes(raw))
    monkeypatch.setattr(isolated, "NETCDF_TIMEOUT_S", 4.0)
    start = time.monotonic()
    try:
        x, y = load_pairs(tmp_path / "d.nc")
        assert x.dtype == y.dtype == torch.float32
    except DataError as err:
        assert "d.nc" in str(err)
    assert time.monotonic() - start < 30
    # the posterior reader opens files through the same time-limited child process
    from inference.arviz_io import load_inference_data

    start = time.monotonic()
    with pytest.raises(DataError, match="d.nc"):
        load_inference_data(tmp_path / "d.nc")
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------------------------------------
# observations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ({"y": np.float64(1.0)}, ShapeError, r"y in .* is a 0-d scalar; expected y of shape"),
        ({"y": np.zeros((1, 50, 2)), "x": np.float64(2.0)}, ShapeError,
         r"x in .* is a 0-d scalar; expected x with one model per observation, \(M, \*x_shape\)$"),
        ({"y": np.zeros((1, 50, 2), np.complex64)}, DataError, r"y in .* has dtype complex64"),
        ({"y": np.zeros((0, 1, 50, 2))}, DataError, r"y in .* is empty: shape \(0, 1, 50, 2\)"),
        ({"y": np.full((1, 50, 2), 1e39)}, DataError, "100 finite values beyond the float32"),
        ({"y": np.zeros((1, 50, 2)), "x": np.array(["a"])}, DataError, r"x in .* has dtype <U1"),
        ({"y": np.zeros((2, 1, 50, 2)), "x": np.zeros((3, 4))}, ShapeError, "3 models for 2"),
    ],
)
def test_bad_observation_files(tmp_path, arrays, error, match):
    np.savez(tmp_path / "obs.npz", **arrays)
    with pytest.raises(error, match=match):
        load_observations(tmp_path / "obs.npz", (1, 50, 2))
    if set(arrays) == {"y"}:
        np.save(tmp_path / "obs.npy", arrays["y"])
        with pytest.raises(error, match=match):
            load_observations(tmp_path / "obs.npy", (1, 50, 2))


def test_garbage_observation_files(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"y in .* has dtype object \(Python objects"):
        load_observations(tmp_path / "objects.npy", (1,))
    (tmp_path / "zip.npy").write_bytes(_valid_npz(tmp_path))
    with pytest.raises(DataError, match=r"cannot read .*zip\.npy.* as \.npy"):
        load_observations(tmp_path / "zip.npy", (1,))
    (tmp_path / "short.npy").write_bytes((tmp_path / "objects.npy").read_bytes()[:20])
    with pytest.raises(DataError, match=r"cannot read .*short\.npy"):
        load_observations(tmp_path / "short.npy", (1,))
    (tmp_path / "obs.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"must be \.npy, \.npz or a challenge \.pt, got '\.txt'"):
        load_observations(tmp_path / "obs.txt", (3,))


@pytest.mark.parametrize("flat", ["x", "y"])
def test_one_value_per_pair_gets_the_reshape_hint(tmp_path, flat):
    """A 1-D array (one value per pair) is refused with the reshape that fixes it."""
    arrays = {"x": np.zeros((30, 2)), "y": np.zeros((30, 3))}
    arrays[flat] = np.zeros(30)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ShapeError, match=rf"; {flat} of shape \(30,\) holds one value per pair: "
                       rf"save it as {flat}\.reshape\(30, 1\)$"):
        load_pairs(tmp_path / "d.npz")


def test_netcdf_pairs_dim_not_first_gets_the_transpose(tmp_path):
    """A NetCDF file whose shared pairs dimension is not first (``x`` on ``(param, sample)``)
    is refused by the eager and the lazy reader alike, naming the dim and the transpose;
    before, the eager reader said that x and y held different numbers of pairs."""
    import xarray as xr

    from ppl_cvae.data.lazy import open_lazy_pairs

    path = tmp_path / "t.nc"
    xr.Dataset({"x": (("param", "sample"), np.zeros((2, 50))),
                "y": (("sample", "datum"), np.zeros((50, 3)))}).to_netcdf(path, engine="h5netcdf")
    match = (r"share the dimension 'sample' \(the pairs\), but it is not their first \(x "
             r"\('param', 'sample'\), y \('sample', 'datum'\)\); put it first, e\.g\. "
             r"ds\.transpose\('sample', \.\.\.\)")
    with pytest.raises(ShapeError, match=match):
        load_pairs(path)
    with pytest.raises(ShapeError, match=match):
        open_lazy_pairs(path)
    from ppl_cvae.data.io import check_pairs_dim

    # a Zarr store is told to write a Zarr store (before: to_netcdf)
    with pytest.raises(ShapeError, match=r"\.to_zarr\(\.\.\.\)"):
        check_pairs_dim(tmp_path / "t.zarr", ("param", "sample"), ("sample", "datum"))


def test_a_folder_of_npy_reads_as_its_npz(tmp_path):
    """``evaluate --data FOLDER`` (``load_pairs``) reads the folder that ``fit --lazy`` takes
    (before: "is a folder without x.npy and y.npy" for a folder holding both)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2, 2))
    (tmp_path / "pairs").mkdir()
    np.save(tmp_path / "pairs" / "x.npy", x)
    np.save(tmp_path / "pairs" / "y.npy", y)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    for got, want in zip(load_pairs(tmp_path / "pairs"), load_pairs(tmp_path / "pairs.npz"),
                         strict=True):
        assert torch.equal(got, want)
    (tmp_path / "pairs" / "y.npy").write_bytes(b"not npy")
    with pytest.raises(DataError, match="y.npy"):
        load_pairs(tmp_path / "pairs")


def test_a_bit_flipped_on_disk_is_named_not_read(tmp_path):
    """torch.load skips the CRC-32s torch.save writes: a flipped bit in a tensor was read as
    3.0000153 in silence (the eighteenth audit); pairs and checkpoints now check them."""
    from ppl_cvae import ModelConfig
    from ppl_cvae.errors import CheckpointError
    from ppl_cvae.models.cvae import CVAE
    from ppl_cvae.train.checkpoint import load_checkpoint, save_checkpoint

    def flipped(data: bytes, value: bytes) -> bytes:
        at = data.index(value)
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]

    buffer = io.BytesIO()
    torch.save({"x": torch.full((20, 3), 3.0), "y": torch.ones(20, 2)}, buffer)
    (tmp_path / "ok.pt").write_bytes(buffer.getvalue())
    assert load_pairs(tmp_path / "ok.pt")[0].max() == 3.0
    (tmp_path / "bad.pt").write_bytes(flipped(buffer.getvalue(), np.float32(3.0).tobytes()))
    with pytest.raises(DataError, match="member '.*' fails its CRC-32 check"):
        load_pairs(tmp_path / "bad.pt")
    cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(8,)))
    with torch.no_grad():
        cvae.x_standardiser.std.fill_(7.0)
    save_checkpoint(tmp_path / "model.pt", cvae)
    load_checkpoint(tmp_path / "model.pt")
    damaged = flipped((tmp_path / "model.pt").read_bytes(), np.float32(7.0).tobytes())
    (tmp_path / "model.pt").write_bytes(damaged)
    with pytest.raises(CheckpointError, match="fails its CRC-32 check"):
        load_checkpoint(tmp_path / "model.pt")
