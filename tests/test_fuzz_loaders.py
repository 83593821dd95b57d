"""Property-based tests of the data loaders (``load_pairs``, ``load_observations``).

Property: whatever a file holds, the loader either returns the right answer (C-contiguous
float32 tensors of the right shapes, finite, equal to the stored values cast to float32) or
raises one :class:`~ppl_cvae.errors.PplCvaeError` subclass, the one the specification names;
and the file's bytes are unchanged afterwards. Inputs: random shapes (0-d and zero-size
included), every numpy dtype family, NaN/inf and float32 overflow, mismatched counts, random
bytes, truncations and byte flips of valid files of every supported suffix (and of IDX files).

Budget: fixed and derandomised (``derandomize=True``), about 30 s on 2 CPU cores; NetCDF cases
are few because each one starts a reader process (about a second).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.data import TensorDataset

import ppl_cvae._isolated as isolated
from ppl_cvae.data import load_observations, load_pairs
from ppl_cvae.data.datasets import read_idx
from ppl_cvae.errors import DataError, PplCvaeError, ShapeError


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture
def short_netcdf_timeout(monkeypatch):
    # a corrupt HDF5 file can make libhdf5 loop forever: stop the reader process sooner
    monkeypatch.setattr(isolated, "NETCDF_TIMEOUT_S", 8.0)


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

REAL_DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]
REFUSED_DTYPES = ["c8", "c16", "U3", "S3", "M8[s]", "m8[s]", "O", "V"]
ALL_DTYPES = REAL_DTYPES + REFUSED_DTYPES
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
GOOD_EVENTS = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3)


@st.composite
def arrays(draw: st.DrawFn, dtypes: list[str], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An array of a drawn dtype and shape; about one float in ten is NaN, inf or beyond float32."""
    name = draw(st.sampled_from(dtypes))
    shape = draw(SHAPES) if shape is None else shape
    if name == "O":
        return draw(hnp.arrays(object, shape, elements=st.integers(-5, 5)))
    if name == "V":
        return draw(hnp.arrays(np.dtype([("a", "<i4"), ("b", "<f8")]), shape))
    dtype = np.dtype(name)
    if dtype.kind != "f":
        return draw(hnp.arrays(dtype, shape))
    if dtype.itemsize == 8:  # finite float64 beyond float32 (3.4e38) overflows the cast
        ordinary = st.floats(-1e38, 1e38)
        special = st.sampled_from([np.nan, np.inf, -np.inf, 3.5e38, -1e300, 1e-300, 3.4028235e38])
    else:
        ordinary = hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)
        special = st.sampled_from([np.nan, np.inf, -np.inf, -0.0])
    elements = st.one_of(*[ordinary] * 9, special)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def pair_arrays(draw: st.DrawFn, dtypes: list[str] = ALL_DTYPES) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: half well-formed (real dtypes, 2-4 pairs), half anything at all."""
    if draw(st.booleans()):
        n = draw(st.integers(2, 4))
        real = [d for d in dtypes if d in REAL_DTYPES]
        x = draw(arrays(real, (n, *draw(GOOD_EVENTS))))
        return x, draw(arrays(real, (n, *draw(GOOD_EVENTS))))
    n = draw(st.integers(0, 4))

    def shape() -> tuple[int, ...]:
        event = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
        return (n, *event) if draw(st.integers(0, 4)) else draw(SHAPES)

    return draw(arrays(dtypes, shape())), draw(arrays(dtypes, shape()))


@st.composite
def observation_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None]:
    """``(y, x or None)``: half a well-formed stack of 1-3 observations, half anything."""
    if draw(st.booleans()):
        m = draw(st.integers(1, 3))
        y = draw(arrays(REAL_DTYPES, (m, *draw(GOOD_EVENTS))))
        with_x = draw(st.booleans())
        return y, draw(arrays(REAL_DTYPES, (m, *draw(GOOD_EVENTS)))) if with_x else None
    return draw(arrays(ALL_DTYPES)), draw(st.none() | arrays(ALL_DTYPES))


# ---------------------------------------------------------------------------------------------
# the specification, written independently of the loader
# ---------------------------------------------------------------------------------------------


def value_errors(**named: np.ndarray | None) -> tuple[type[PplCvaeError], str] | None:
    """The DataError the arrays must raise, if any.

    Every dtype is checked while the file is read, before any value: first the dtypes of all
    arrays (in order), then empty arrays, NaN/inf and float32 overflow, array by array.
    """
    arrays = {name: a for name, a in named.items() if a is not None}
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            return DataError, f"{name} in .* has dtype (torch\\.)?{re.escape(str(a.dtype))} "
    for name, a in arrays.items():
        problem = _value_error(name, a)
        if problem:
            return problem
    return None


def _value_error(name: str, a: np.ndarray) -> tuple[type[PplCvaeError], str] | None:
    if a.size == 0:
        return DataError, f"{name} in .* is empty"
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            return DataError, f"{name} in .* NaN or inf"
        with np.errstate(over="ignore"):
            if not np.isfinite(a.astype(np.float32)).all():
                return DataError, f"{name} in .* beyond the float32 range"
    return None


def pair_error(x: np.ndarray, y: np.ndarray) -> tuple[type[PplCvaeError], str] | None:
    problem = value_errors(x=x, y=y)
    if problem:
        return problem
    if x.ndim < 2 or y.ndim < 2:
        return ShapeError, "need a leading sample axis and an event axis"
    if x.shape[0] != y.shape[0]:
        return ShapeError, "different numbers of pairs"
    if x.shape[0] < 2:
        return ShapeError, "at least 2 are needed"
    for name, a in (("x", x), ("y", y)):
        if _too_coarse(a):
            return DataError, f"{name} in .* rounds values of magnitude"
    return None


def _too_coarse(a: np.ndarray) -> bool:
    """Whether an element varies by fewer than 100 rounding steps of float32 (of float16 for a
    float16 array) at its largest magnitude; constant elements (sd 0 for integers, at most
    2**-20 |mean| for float16/float32, 2**-40 |mean| for float64) and bools never are."""
    if a.dtype.kind == "b":
        return False
    for column in a.reshape(a.shape[0], -1).astype(np.float64).T:
        sd, mean, top = column.std(ddof=1), column.mean(), np.abs(column).max()
        if a.dtype.kind in "iu":
            constant, fmt = sd == 0 or top <= 2**24, np.float32  # small integers are exact
        elif a.dtype.itemsize <= 4:
            constant, fmt = sd <= 2**-20 * abs(mean), a.dtype.type
        else:
            constant, fmt = sd <= 2**-40 * abs(mean), np.float32
        if not constant and np.spacing(np.nextafter(fmt(top), fmt(0))) > 0.01 * sd:
            return True
    return False


def as_float32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32))


def check_result(result: torch.Tensor, expected: np.ndarray) -> None:
    assert result.dtype == torch.float32 and result.is_contiguous()
    assert tuple(result.shape) == expected.shape
    assert torch.isfinite(result).all()
    assert torch.equal(result, as_float32(expected))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_pairs(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    before = digest(path)
    expected = pair_error(x, y)
    event(f"expected: {'pairs' if expected is None else expected[1]}")
    if expected is None:
        got_x, got_y = load_pairs(path)
        check_result(got_x, x)
        check_result(got_y, y)
    else:
        error, match = expected
        with pytest.raises(error, match=match):
            load_pairs(path)
    assert digest(path) == before, "the loader modified its input file"


# ---------------------------------------------------------------------------------------------
# pairs: .npz, .pt, .nc
# ---------------------------------------------------------------------------------------------


@fuzz_settings(300)
@given(pair=pair_arrays(), compressed=st.booleans())
def test_npz_pairs_follow_the_specification(pair, compressed):
    x, y = pair
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.npz"
        (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)  # pickles objects
        check_pairs(path, x, y)


TORCH_ONLY = {"bf16": torch.bfloat16, "c64": torch.complex64}


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
    """A tensor and the numpy array the loader should see in it (bfloat16 widened)."""
    kind = draw(st.sampled_from([*REAL_DTYPES, "bf16", "c64"]))
    if kind in TORCH_ONLY:
        base = draw(arrays(["f4"], shape))
        tensor = torch.from_numpy(base).to(TORCH_ONLY[kind])
        seen = tensor.float().numpy() if kind == "bf16" else tensor.numpy()
        return tensor, seen
    array = draw(arrays([kind], shape))
    return torch.from_numpy(array.copy()), array


@fuzz_settings(250)
@given(data=st.data(), container=st.sampled_from(["TensorDataset", "tuple", "list", "dict"]))
def test_pt_pairs_follow_the_specification(data, container):
    x_shape, y_shape = (np.shape(a) for a in data.draw(pair_arrays(["f4"])))
    x, x_seen = data.draw(tensors(x_shape))
    y, y_seen = data.draw(tensors(y_shape))
    dataset = TensorDataset.__new__(TensorDataset)  # skips the constructor's count check,
    dataset.tensors = (x, y)  # as a hand-made file could: the loader must check the counts
    payload: object = {
        "TensorDataset": dataset,
        "tuple": (x, y),
        "list": [x, y],
        "dict": {"x": x, "y": y},
    }[container]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.pt"
        torch.save(payload, path)
        check_pairs(path, x_seen, y_seen)


NETCDF_DTYPES = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8"]


@fuzz_settings(6)
@given(pair=pair_arrays(NETCDF_DTYPES))
def test_netcdf_pairs_follow_the_specification(short_netcdf_timeout, pair):
    x, y = pair
    ds = xr.Dataset(
        {
            "x": (tuple(f"x{i}" for i in range(x.ndim)), x),
            "y": (tuple(f"y{i}" for i in range(y.ndim)), y),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.nc"
        ds.to_netcdf(path, engine="h5netcdf")
        check_pairs(path, x, y)


# ---------------------------------------------------------------------------------------------
# observations: .npy, .npz
# ---------------------------------------------------------------------------------------------


def observation_error(
    y: np.ndarray, x: np.ndarray | None, y_shape: tuple[int, ...]
) -> tuple[type[PplCvaeError], str] | tuple[bool, int]:
    """The error ``load_observations`` must raise, else ``(stacked, M)``."""
    problem = value_errors(y=y, x=x)
    if problem:
        return problem
    if y.ndim == 0:
        return ShapeError, "y in .* is a 0-d scalar"
    if x is not None and x.ndim == 0:
        return ShapeError, "x in .* is a 0-d scalar"
    if y.shape == y_shape:
        stacked, m, x_count = False, 1, 1
    elif y.shape[1:] == y_shape:
        stacked, m, x_count = True, y.shape[0], (x.shape[0] if x is not None else y.shape[0])
    else:
        return ShapeError, "has shape .* the model expects"
    if x_count != m:
        return ShapeError, "models for"
    return stacked, m


@fuzz_settings(300)
@given(
    arrays=observation_arrays(),
    which=st.sampled_from(["single", "stack", "stack", "other"]),
    other=hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3),
    suffix=st.sampled_from([".npy", ".npz"]),
)
def test_observations_follow_the_specification(arrays, which, other, suffix):
    y, x = arrays
    y_shape = {"single": y.shape, "stack": y.shape[1:], "other": other}[which]
    if suffix == ".npy":
        x = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"obs{suffix}"
        if suffix == ".npy":
            np.save(path, y, allow_pickle=True)  # an object array is written as a pickle
        else:
            np.savez(path, y=y, **({} if x is None else {"x": x}))
        before = digest(path)
        expected = observation_error(y, x, y_shape)
        event(f"expected: {expected if isinstance(expected[0], bool) else expected[1]}")
        if isinstance(expected[0], bool):
            stacked, m = expected
            got_y, got_stacked, got_x = load_observations(path, y_shape)
            assert got_stacked == stacked
            check_result(got_y, y if stacked else y[None])
            if x is None:
                assert got_x is None
            else:
                assert got_x is not None
                check_result(got_x, x if stacked else x[None])
        else:
            error, match = expected
            with pytest.raises(error, match=match):
                load_observations(path, y_shape)
        assert digest(path) == before


# ---------------------------------------------------------------------------------------------
# garbage: random bytes, truncations and byte flips of valid files
# ---------------------------------------------------------------------------------------------


@functools.cache
def valid_file(kind: str) -> bytes:
    """Bytes of a valid file of each kind (built once, deterministically)."""
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    y = np.arange(8, dtype=np.float32).reshape(4, 2)
    buffer = io.BytesIO()
    if kind == "npz":
        np.savez(buffer, x=x, y=y)
    elif kind == "npz compressed":
        np.savez_compressed(buffer, x=x, y=y)
    elif kind == "npy":
        np.save(buffer, y)
    elif kind == "pt":
        torch.save(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), buffer)
    elif kind == "pt legacy":
        torch.save(
            (torch.from_numpy(x), torch.from_numpy(y)),
            buffer,
            _use_new_zipfile_serialization=False,
        )
    elif kind in ("nc", "nc3"):
        ds = xr.Dataset({"x": (("s", "a"), x), "y": (("s", "b"), y)})
        with tempfile.TemporaryDirectory() as tmp:
            ds.to_netcdf(Path(tmp) / "v.nc", engine="h5netcdf" if kind == "nc" else "scipy")
            return (Path(tmp) / "v.nc").read_bytes()
    else:
        raise AssertionError(kind)
    return buffer.getvalue()


SUFFIX = {
    "npz": ".npz",
    "npz compressed": ".npz",
    "npy": ".npy",
    "pt": ".pt",
    "pt legacy": ".pt",
    "nc": ".nc",
    "nc3": ".nc",
}


@st.composite
def damaged(draw: st.DrawFn, kinds: list[str]) -> tuple[str, bytes]:
    """``(kind, bytes)``: random bytes, a truncation, or byte flips of a valid file."""
    kind = draw(st.sampled_from(kinds))
    how = draw(st.sampled_from(["random", "truncate", "flip", "flip"]))
    if how == "random":
        return kind, draw(st.binary(max_size=600))
    data = valid_file(kind)
    if how == "truncate":
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    flipped = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        flipped[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    assume(bytes(flipped) != data)
    return kind, bytes(flipped)


def check_garbage(kind: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"garbage{SUFFIX[kind]}"
        path.write_bytes(data)
        try:
            if kind == "npy" or (kind.startswith("npz") and len(data) % 2):
                y, _, x = load_observations(path, (2,))
                assert y.dtype == torch.float32 and y.shape[1:] == (2,) and y.shape[0] >= 1
                assert torch.isfinite(y).all() and (x is None or x.dtype == torch.float32)
            else:
                x, y = load_pairs(path)
                assert x.dtype == y.dtype == torch.float32
                assert x.shape[0] == y.shape[0] >= 2 and x.dim() >= 2 and y.dim() >= 2
                assert torch.isfinite(x).all() and torch.isfinite(y).all()
            event(f"{kind}: loaded")
        except PplCvaeError as err:
            event(f"{kind}: {type(err).__name__}")
            assert isinstance(err, (DataError, ShapeError))
            assert str(path) in str(err), "the message must name the user's file"
        assert path.read_bytes() == data, "the loader modified its input file"


@fuzz_settings(600)
@given(case=damaged(["npz", "npz compressed", "npy", "pt", "pt legacy"]))
def test_damaged_npz_npy_pt_files_end_in_a_package_error(case):
    check_garbage(*case)


@fuzz_settings(10)
@given(case=damaged(["nc", "nc3"]))
def test_damaged_netcdf_files_end_in_a_package_error(short_netcdf_timeout, case):
    check_garbage(*case)


@fuzz_settings(60)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".npz", ".pt", ".nc", ".npy"]))
def test_random_bytes_under_every_suffix(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"noise{suffix}"
        path.write_bytes(data)
        loader = (lambda p: load_observations(p, (1,))) if suffix == ".npy" else load_pairs
        with pytest.raises(DataError, match="noise"):
            loader(path)
        assert path.read_bytes() == data


@functools.cache
def valid_idx(compressed: bool) -> bytes:
    """An IDX file of 5 images of 4 x 4 uint8 pixels (the MNIST layout), optionally gzipped."""
    header = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (5, 4, 4))
    raw = header + bytes(range(80))
    return gzip.compress(raw, mtime=0) if compressed else raw


@fuzz_settings(300)
@given(data=st.data(), compressed=st.booleans())
def test_damaged_idx_files_end_in_a_data_error(data, compressed):
    original = valid_idx(compressed)
    cut = data.draw(st.sampled_from([len(original), data.draw(st.integers(0, len(original)))]))
    damaged_bytes = bytearray(original[:cut])
    for _ in range(data.draw(st.integers(0, 3)) if damaged_bytes else 0):
        where = data.draw(st.integers(0, len(damaged_bytes) - 1))
        damaged_bytes[where] = data.draw(st.integers(0, 255))
    damaged_bytes = bytes(damaged_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train-images-idx3-ubyte"
        path.write_bytes(damaged_bytes)
        try:
            images = read_idx(path)
            raw = (
                gzip.decompress(damaged_bytes)
                if damaged_bytes[:2] == b"\x1f\x8b"
                else damaged_bytes
            )
            assert images.tobytes() == raw[4 + 4 * images.ndim :]
            event("loaded")
        except PplCvaeError as err:
            assert isinstance(err, DataError) and str(path) in str(err)
            event("DataError")
        assert path.read_bytes() == damaged_bytes
