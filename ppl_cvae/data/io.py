"""Reading and writing training pairs ``(x, y)`` and observations ``y``.

Formats (chosen by file suffix):

- ``.npz``: arrays ``x`` of shape ``(N, *x_shape)`` and ``y`` of shape ``(N, *y_shape)``;
- ``.nc``: NetCDF with variables ``x`` and ``y`` sharing a leading sample dimension
  (NetCDF-4/HDF5 read with xarray's h5netcdf engine, NetCDF-3 with its scipy engine; written
  files use the h5netcdf engine). Plain HDF5 datasets ``x`` and ``y`` without NetCDF dimension
  scales are read too (h5netcdf's sorted "phony" dimensions). The file is parsed in a child
  Python process stopped after :data:`ppl_cvae._isolated.NETCDF_TIMEOUT_S`, because libhdf5
  can loop forever or crash on a corrupt file; this costs about a second per file;
- ``.pt``: the Two Birds challenge's ``torch.utils.data.TensorDataset`` of ``(X, Y)`` pairs,
  each ``(1, 50, 2)``, or a plain tuple/list ``(x, y)`` or dict ``{"x": x, "y": y}`` of tensors.
  It is unpickled with ``torch.load(..., weights_only=True)``: tensors and containers only, plus
  the one class ``TensorDataset``; a file that names any other Python object is refused, so a
  ``.pt`` from someone else cannot run code.

Every loader returns C-contiguous float32 tensors. Bool, integer and real floating arrays are
accepted and cast to float32; the loaders refuse, with a :class:`~ppl_cvae.errors.DataError`
naming the variable, the file and the dtype, complex arrays (the imaginary part would be lost),
object, string, bytes, structured and datetime arrays, NaN/inf (naming the count and the first
bad element, e.g. ``x[1234, 2] = nan``), finite values beyond the float32 range, empty arrays
and zero-size axes, and (training pairs only) an element whose spread float32 or the file's own
dtype cannot resolve (:data:`MAX_STEP_FRACTION`); the lazy readers of
:mod:`ppl_cvae.data.lazy` refuse the same files with the same messages. Mismatched counts and
missing axes raise
:class:`~ppl_cvae.errors.ShapeError`. Whatever garbage a file holds, the loaders end in one of
these two errors (both :class:`~ppl_cvae.errors.PplCvaeError`) and never modify the file.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import pickle
import pickletools
import re
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ppl_cvae._atomic import atomic_path
from ppl_cvae._isolated import netcdf_timeout, run_isolated
from ppl_cvae.checks import reshape_hint, shape_text
from ppl_cvae.data.standardise import CONSTANT_RTOL
from ppl_cvae.errors import DataError, ShapeError

__all__ = [
    "load_bounds",
    "load_models",
    "load_pairs",
    "save_pairs",
    "x_only_hint",
    "load_observations",
    "npz_written_by",
    "check_pairs_dim",
    "MAX_STEP_FRACTION",
    "PAIR_SUFFIXES",
    "WRITTEN_BY_KEY",
]

PAIR_SUFFIXES = (".npz", ".nc", ".pt")

_FLOAT32_MAX = float(np.finfo(np.float32).max)

# What each library raised on garbage files in tests/test_fuzz_loaders.py (random bytes,
# truncations and bit flips of valid files). Anything else is a bug to report, not to hide.
# zipfile + numpy.lib.format (.npz/.npy): bad zip structure, CRC and size checks, encryption,
# unknown compression, corrupt deflate streams, bad .npy magic/header, short data.
_NPY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,  # numpy: bad magic, header or dtype, "EOF: reading array data"
    EOFError,
    # numpy parses the header with ast.literal_eval, then sorts its keys and calls np.dtype:
    TypeError,  # e.g. sorting a header dict with both bytes and str keys
    SyntaxError,  # e.g. IndentationError from numpy's re-tokenising of a broken header
    RecursionError,  # deeply nested literals
    zipfile.BadZipFile,  # an Exception, not an OSError
    zlib.error,  # corrupt deflate stream inside a zip entry
    tokenize.TokenError,  # numpy re-tokenises a header that does not parse as a dict
    RuntimeError,  # zipfile: "File is encrypted, password required for extraction"
    NotImplementedError,  # zipfile: "That compression method is not supported"
)

# numpy dtype kinds that cannot become float32 without losing information or meaning.
_REFUSED_KINDS = {
    "c": "complex numbers; the imaginary part would be lost: store the real and imaginary "
    "parts as two real arrays",
    "O": "Python objects (a pickle, which is never unpickled here): save a numeric array",
    "U": "unicode strings: save numbers",
    "S": "byte strings: save numbers",
    "V": "raw or structured records: save one plain numeric array per variable",
    "M": "datetimes: save numbers (e.g. seconds since a reference time)",
    "m": "timedeltas: save numbers (e.g. seconds)",
}
_ACCEPTED = "bool, integer or real floating point (cast to float32)"


def _pairs_axis_hint(x_shape: Sequence[int], y_shape: Sequence[int]) -> str:
    """Return a hint for pairs stored along the last axis (the last axes of x and y agree).

    Examples
    --------
    >>> _pairs_axis_hint((2, 5000), (8, 5000))[:40]
    ' (both end in an axis of 5000: if that i'
    >>> _pairs_axis_hint((3, 2), (4, 1))
    ''
    """
    if len(x_shape) >= 2 and len(y_shape) >= 2 and x_shape[-1] == y_shape[-1]:
        return (
            f" (both end in an axis of {x_shape[-1]}: if that is the pairs axis, store the "
            "arrays transposed, pairs first: x.T, y.T)"
        )
    return ""


def _where(name: str, path: Path) -> str:
    return f"{name} in {str(path)!r}"


def _require_file(path: Path, pairs: bool = False) -> None:
    if pairs and path.is_dir():  # a folder of x.npy and y.npy is read lazily, elsewhere
        raise DataError(
            f"data {str(path)!r} is a folder without x.npy and y.npy; expected a file (.npz, "
            ".nc, .pt) or a folder holding x.npy and y.npy"
        )
    if path.is_dir():
        raise DataError(f"data {str(path)!r} is a folder; expected a file")
    if path.exists() and not path.is_file():  # a FIFO or a device (/dev/zero) never ends
        raise DataError(f"data {str(path)!r} is not a regular file; expected a file")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")


def _check_dtype(name: str, dtype: np.dtype[Any], path: Path) -> None:
    """Refuse a dtype that does not convert to float32 without loss of meaning."""
    if dtype.kind in "biuf":
        return
    why = _REFUSED_KINDS.get(dtype.kind, "not a real number type")
    raise DataError(f"{_where(name, path)} has dtype {dtype} ({why}); expected {_ACCEPTED}")


_TRAINING_REMEDY = "replace or drop those pairs (fit and evaluate read them)"
_OBSERVATION_REMEDY = "replace them, or drop those observations, before sampling"


def _first_bad(array: np.ndarray, bad: np.ndarray, first_row: int | np.ndarray = 0) -> str:
    """Return ``"[i, j] = nan"`` for the first True of ``bad`` (C order).

    The row is that of the file: ``first_row`` plus the row in ``array`` (a chunk of rows), or
    ``first_row[row]`` when ``first_row`` holds the file row of each row of ``array``.
    """
    flat = int(np.flatnonzero(bad)[0])
    index = [int(i) for i in np.unravel_index(flat, array.shape)]
    if index:
        rows = np.asarray(first_row)
        index[0] = int(rows[index[0]]) if rows.ndim else index[0] + int(rows)
    return f"[{', '.join(map(str, index))}] = {array.reshape(-1)[flat]}"


def _nonfinite_error(
    name: str,
    path: Path,
    count: int,
    first: str,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    remedy: str = _TRAINING_REMEDY,
) -> DataError:
    """Return the refusal of NaN/inf in a file: the array, the count, the first bad element.

    ``first`` is ``"[i, j] = nan"`` (``_first_bad``), ``shape`` and ``dtype`` those of the
    whole array (or of the rows read, where ``name`` says so).
    """
    return DataError(
        f"{_where(name, path)} contains {count} NaN or inf values (the first at "
        f"{name.split(' ')[0]}{first}; shape {shape}, dtype {dtype}); {remedy}"
    )


def _to_float32(
    name: str,
    array: np.ndarray,
    path: Path,
    *,
    first_row: int | np.ndarray = 0,
    remedy: str = _TRAINING_REMEDY,
) -> torch.Tensor:
    """Check one array and return it as a C-contiguous float32 tensor.

    ``first_row`` is the file row of ``array``'s row 0 (a chunk of a lazily read file), or the
    file row of each of its rows (``_first_bad``), for the index named in a refusal;
    ``remedy`` is the refusal's last clause.

    Raises
    ------
    DataError
        If the dtype is not bool/integer/real floating, the array is empty (a zero-size axis),
        holds NaN/inf (naming the count and the first one), or holds finite values that
        overflow float32.
    """
    array = np.asarray(array)
    _check_dtype(name, array.dtype, path)
    if array.size == 0:
        raise DataError(
            f"{_where(name, path)} is empty: shape {array.shape}, dtype {array.dtype}; "
            "expected at least one value along every axis"
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        bad = int(array.size - np.count_nonzero(finite))
        if bad:
            first = _first_bad(array, ~finite, first_row)
            raise _nonfinite_error(name, path, bad, first, array.shape, array.dtype, remedy)
    # casts below are checked right after, so numpy's overflow warning would only repeat it
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(np.float32, order="C")
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        overflow = ~np.isfinite(out)
        if overflow.any():
            largest = float(np.max(np.abs(array[overflow])))
            raise DataError(
                f"{_where(name, path)} has {int(overflow.sum())} finite values beyond the "
                f"float32 range +-{_FLOAT32_MAX:.7g} (largest magnitude {largest:.3g}, dtype "
                f"{array.dtype}); rescale it (e.g. other units or a log transform) first"
            )
    return torch.from_numpy(out)


MAX_STEP_FRACTION = 1e-2
"""Largest rounding step, as a fraction of an element's standard deviation over the training
pairs, that :func:`load_pairs` accepts. The networks compute in float32, whose step near a value
``v`` is about ``|v| 2**-23``; rounding to it adds an error of sd ``step / sqrt(12)`` to every
value (0.3% of the spread at this limit). An element whose values sit on a large offset with a
small spread (1e6 +- 1: step 0.0625) is refused, as is one whose file dtype is coarser still
(float16 near 1e3: step 0.5); on a linear-Gaussian file, an offset of 1e6 (step 6% of the sd)
put the posterior mean 2.6 times further from the exact one than without the offset, one of
1e5 (step 0.8%) no further."""

# spread of a float64 element that counts as constant, relative to |mean|: well above float64's
# rounding of sums, far below what float32 resolves (after the cast it is one value, or a few
# steps apart, which the Standardiser's CONSTANT_RTOL keeps as a constant)
_CONSTANT_RTOL_WIDE = 2.0**-40


def _rounding_step(largest: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Return the rounding step, float64, of values up to magnitude ``largest`` (elementwise).

    That of ``dtype`` for float16 and float32; of float32 (the networks' dtype) for wider
    floats and for integers beyond ``2**24`` (0 for smaller integers, which are exact); 0 for
    bool. The step below ``largest`` is the widest any value up to it is rounded to
    (``np.spacing`` at float32's maximum is inf, the step above it).
    """
    largest = np.asarray(largest, dtype=np.float64)
    kind, size = dtype.kind, dtype.itemsize
    if kind not in "iuf":
        return np.zeros_like(largest)
    if kind == "f" and size <= 4:
        top = largest.astype(dtype)
        return np.spacing(np.nextafter(top, dtype.type(0))).astype(np.float64)
    with np.errstate(over="ignore"):  # beyond float32: refused by _to_float32 already
        top = largest.astype(np.float32)
    step = np.spacing(np.nextafter(top, np.float32(0))).astype(np.float64)
    return np.where(largest > 2.0**24, step, 0.0) if kind in "iu" else step


class _ResolutionScan:
    """The float32 resolution check of :func:`load_pairs`, fed one chunk of rows at a time.

    Accumulates, per element of the event and in float64, the moments
    (:class:`~ppl_cvae.data.lazy.RunningMoments`) and the largest magnitude of the values as
    stored (before the cast to float32); :meth:`check` then applies the rule of
    ``_check_resolution``. The eager loaders feed it the whole array in chunks of 4096
    rows, the lazy readers (:func:`ppl_cvae.data.lazy.scan_pairs`) the chunks they read, so
    both refuse the same files with the same message.

    Parameters
    ----------
    name : str
        ``"x"`` or ``"y"``, for the message.
    dtype : numpy dtype
        The variable's dtype in the file.
    event_shape : tuple of int
        Shape of one event; chunks are ``(rows, *event_shape)``.
    path : Path
        The file, for the message.
    """

    def __init__(
        self, name: str, dtype: np.dtype[Any], event_shape: tuple[int, ...], path: Path
    ) -> None:
        from ppl_cvae.data.lazy import RunningMoments  # lazy imports this module

        self.name, self.dtype, self.path = name, np.dtype(dtype), path
        self.event_shape = tuple(event_shape)
        size = math.prod(self.event_shape)
        self.moments = RunningMoments((size,))
        self.largest = np.zeros(size)

    def update(self, chunk: np.ndarray) -> _ResolutionScan:
        """Add the rows of ``chunk`` ``(rows, *event_shape)``, as stored; return self."""
        if self.dtype.kind not in "iuf" or chunk.shape[0] == 0:
            return self
        part = np.asarray(chunk).reshape(chunk.shape[0], -1).astype(np.float64)
        self.moments.update(torch.from_numpy(part))
        self.largest = np.maximum(self.largest, np.abs(part).max(0))
        return self

    def check(self) -> None:
        """Refuse an element whose values float32 (or the file's dtype) cannot resolve.

        Raises
        ------
        DataError
            As ``_check_resolution``.
        """
        if self.dtype.kind not in "iuf" or not self.event_shape or self.moments.count < 2:
            return
        name, path, dtype = self.name, self.path, self.dtype
        mean = self.moments.mean.numpy()
        sd = self.moments.variance().sqrt().numpy()
        largest = self.largest
        kind, size = dtype.kind, dtype.itemsize
        step = _rounding_step(largest, dtype)
        if kind == "f" and size <= 4:
            varies = sd > CONSTANT_RTOL * np.abs(mean)  # the cast is exact: as the Standardiser
        elif kind in "iu":
            varies = sd > 0
        else:
            varies = sd > _CONSTANT_RTOL_WIDE * np.abs(mean)
        coarse = varies & ~(step <= MAX_STEP_FRACTION * sd)
        if not coarse.any():
            return
        flat_index = int(np.flatnonzero(coarse)[0])
        index = np.unravel_index(flat_index, self.event_shape)
        where = ", ".join(str(int(i)) for i in index)
        coarse_dtype = kind == "f" and size < 4
        what = (
            f"its dtype {dtype}"
            if coarse_dtype or kind == "f" and size == 4
            else (f"float32 (the networks' dtype; the file has {dtype})")
        )
        remedy = (
            "save the values as float32 or float64"
            if coarse_dtype
            else f"subtract a reference value from {name}[..., {where}] (e.g. its mean, "
            f"{mean[flat_index]:.6g}) before saving, and add it back to the posterior draws, "
            "or change its units"
        )
        raise DataError(
            f"{_where(name, path)}: element [..., {where}] has mean {mean[flat_index]:.6g} and "
            f"standard deviation {sd[flat_index]:.3g} ({int(coarse.sum())} element(s) of {name} "
            f"like it), but {what} rounds values of magnitude {largest[flat_index]:.3g} to steps "
            f"of {step[flat_index]:.3g}, {step[flat_index] / sd[flat_index]:.1%} of that spread "
            f"(at most {MAX_STEP_FRACTION:.0%} is accepted): training and draws would be "
            f"rounded to those steps; {remedy}"
        )


def _check_resolution(name: str, array: np.ndarray, path: Path) -> None:
    """Refuse an element whose values float32 (or the file's dtype) cannot resolve.

    Per element of the event (axis 0 is the sample axis), in float64 and in chunks of rows:
    the standard deviation ``sd``, the mean and the largest magnitude ``v``. The rounding step
    at ``v`` is that of the file's dtype for float16 and float32, of float32 (the networks'
    dtype) for wider floats and for integers beyond ``2**24`` (smaller integers are exact)
    (``_rounding_step``). An element that varies (``sd`` above
    :data:`~ppl_cvae.data.standardise.CONSTANT_RTOL` times ``|mean|`` for float16/float32, the
    Standardiser's rule; above ``2**-40 |mean|``, float64 rounding, for wider floats; above
    zero for integers) with a step above :data:`MAX_STEP_FRACTION` times ``sd`` raises a
    :class:`~ppl_cvae.errors.DataError` naming it; constant elements pass (the
    :class:`~ppl_cvae.data.standardise.Standardiser` keeps them as they are). The lazy
    readers run the same rule chunk by chunk (``_ResolutionScan``).
    """
    if array.dtype.kind not in "iuf" or array.ndim < 2 or array.shape[0] < 2:
        return
    scan = _ResolutionScan(name, array.dtype, tuple(array.shape[1:]), path)
    for start in range(0, array.shape[0], 4096):  # in float64, a chunk of rows at a time
        scan.update(array[start : start + 4096])
    scan.check()


def _read_npy_stream(fp: IO[bytes], name: str, path: Path, size: int) -> np.ndarray:
    """Read one ``.npy`` stream of ``size`` bytes after checking its header.

    The header is checked before any data is read: the dtype must be numeric (object arrays
    are never unpickled) and the declared shape must fit in the bytes that follow, so a
    corrupt header cannot make numpy allocate terabytes.
    """
    fmt = np.lib.format
    with warnings.catch_warnings():
        # a corrupt header can name a deprecated dtype alias (DeprecationWarning) or need
        # numpy's Python-2 header repair (UserWarning): the checks below report what matters
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs from 2.0 only in utf-8 field names
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise DataError(
                f"{_where(name, path)} uses .npy format version {version}; expected 1.0, 2.0 or 3.0"
            )
    _check_dtype(name, dtype, path)
    if any(n < 0 for n in shape):
        raise DataError(f"{_where(name, path)} declares an invalid shape {shape}")
    needed = math.prod(shape) * dtype.itemsize
    available = size - fp.tell()
    if needed > available:
        raise DataError(
            f"{_where(name, path)} declares shape {shape} of {dtype} ({needed} bytes) but only "
            f"{available} bytes follow its header: the file is truncated or corrupt"
        )
    fp.seek(0)
    with warnings.catch_warnings():  # the same header is parsed again
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return fmt.read_array(fp, allow_pickle=False)


def _read_npz(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Read arrays ``required`` (and ``optional`` where present) from an ``.npz`` archive."""
    arrays: dict[str, np.ndarray] = {}
    where = ""  # the member being read, for the error message
    try:
        with zipfile.ZipFile(path) as archive:
            members = {
                (n[: -len(".npy")] if n.endswith(".npy") else n): n for n in archive.namelist()
            }
            missing = [k for k in required if k not in members]
            if missing:
                raise DataError(
                    f"{str(path)!r} has arrays {sorted(members)}; expected {list(required)} "
                    f"(missing {missing})" + x_only_hint(missing)
                )
            for key in required + tuple(k for k in optional if k in members):
                where = f"{key} in "
                info = archive.getinfo(members[key])
                with archive.open(info) as fp:
                    arrays[key] = _read_npy_stream(fp, key, path, info.file_size)
    except DataError:
        raise
    except MemoryError as err:  # a zip entry that claims more bytes than this machine holds
        raise DataError(
            f"cannot read {where}{str(path)!r}: its declared size does not fit in memory ({err})"
        ) from err
    except _NPY_ERRORS as err:
        raise DataError(
            f"cannot read {where}{str(path)!r} as .npz (a zip archive of .npy arrays, as "
            f"written by numpy.savez): {type(err).__name__}: {err}{_compressed_hint(path)}"
        ) from err
    return arrays


_WRAPPERS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd"}
_WRAPPER_SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


def _compressed_hint(path: Path) -> str:
    """``"; the file is gzip-compressed: ..."`` when ``path`` starts with a compressor's magic."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return ""
    for magic, name in _WRAPPERS.items():
        if head.startswith(magic):
            return (
                f"; the file is {name}-compressed as a whole: decompress it first "
                "(numpy.savez_compressed compresses inside the archive and is read as it is)"
            )
    return ""


def _read_npy(path: Path, name: str) -> np.ndarray:
    try:
        with open(path, "rb") as fp:
            return _read_npy_stream(fp, name, path, os.fstat(fp.fileno()).st_size)
    except DataError:
        raise
    except _NPY_ERRORS as err:
        raise DataError(
            f"cannot read {str(path)!r} as .npy (as written by numpy.save): "
            f"{type(err).__name__}: {err}"
        ) from err


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _netcdf_engine(path: Path) -> str:
    """Pick xarray's engine from the file signature; refuse a file that is not NetCDF."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head[:3] == b"CDF" and head[3:4] in (b"\x01", b"\x02"):
            return "scipy"
        # HDF5 looks for its signature at offset 0, 512, 1024, 2048, ... (a user block)
        offset = 0
        size = os.fstat(fh.fileno()).st_size
        while offset + 8 <= size:
            fh.seek(offset)
            if fh.read(8) == _HDF5_SIGNATURE:
                return "h5netcdf"
            offset = 512 if offset == 0 else 2 * offset
    raise DataError(
        f"{str(path)!r} is not a NetCDF file: it starts with bytes {head.hex() or '(none)'}; "
        "expected NetCDF-4/HDF5 (89 48 44 46 ...) or NetCDF-3 ('CDF\\x01' / 'CDF\\x02')"
    )


# Body of the reader process (see ppl_cvae._isolated.run_isolated; args: engine, keys...). It
# writes x.npy and y.npy into ``out``; the parent re-checks everything it reads back.
_NC_CHILD = r"""
import numpy as np
import xarray as xr
engine, keys = args[0], args[1:]
options = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
# times and timedeltas stay numbers: a variable in "seconds" must not become timedelta64
with xr.open_dataset(path, engine=engine, decode_times=False, decode_timedelta=False,
                     **options) as ds:
    missing = [k for k in keys if k not in ds.variables]
    if missing:
        reply(missing=missing, names=sorted(map(str, ds.variables)))
        sys.exit(0)
    dtypes = {}
    for k in keys:
        a = np.asarray(ds[k].values)
        if a.dtype.kind in "biufc":
            np.save(os.path.join(out, k + ".npy"), a, allow_pickle=False)
        else:
            dtypes[k] = a.dtype.str
    dims = {k: list(map(str, ds[k].dims)) for k in keys}
reply(ok=True, dtypes=dtypes, dims=dims)
"""


def check_pairs_dim(path: Path, x_dims: Sequence[str], y_dims: Sequence[str]) -> None:
    """Refuse named NetCDF/Zarr variables whose shared pairs dimension is not their first.

    Parameters
    ----------
    path : Path
        The file, for the message.
    x_dims, y_dims : sequence of str
        The dims of variables ``x`` and ``y``.

    Raises
    ------
    ShapeError
        If the first dims differ and exactly one named dim (not a phony one) is shared: the
        pairs dimension, which must come first; the message gives the transpose.
    """
    if x_dims and y_dims and x_dims[0] == y_dims[0]:
        return
    shared = [d for d in x_dims if d in y_dims and not d.startswith("phony_dim")]
    writer = "to_zarr(...)" if path.suffix.lower() == ".zarr" else "to_netcdf(...)"
    if len(shared) == 1:
        raise ShapeError(
            f"x and y in {str(path)!r} share the dimension {shared[0]!r} (the pairs), but it is "
            f"not their first (x {tuple(x_dims)}, y {tuple(y_dims)}); put it first, e.g. "
            f"ds.transpose({shared[0]!r}, ...).{writer}"
        )


def _read_nc(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read variables ``keys`` of a NetCDF file in a child process with a time limit.

    See :mod:`ppl_cvae._isolated`: libhdf5 can hang on a corrupt file.
    """
    try:
        engine = _netcdf_engine(path)
    except OSError as err:
        raise DataError(f"cannot read {str(path)!r}: {err}") from err
    if engine == "scipy" and importlib.util.find_spec("scipy") is None:
        raise DataError(
            f"{str(path)!r} is NetCDF-3, which xarray reads with scipy (not installed); install "
            "scipy or convert the file to NetCDF-4"
        )
    reply, out_path, folder = run_isolated(
        _NC_CHILD, path, [engine, *keys], netcdf_timeout(path), "NetCDF"
    )
    out = str(out_path)
    with folder:
        if "error" in reply:
            raise DataError(
                f"cannot read {str(path)!r} as NetCDF ({engine} engine): "
                f"{reply['error']}: {reply['message']}"
            )
        if "missing" in reply:
            raise DataError(
                f"{str(path)!r} has variables {reply['names']}; expected {list(keys)} "
                f"(missing {reply['missing']})" + x_only_hint(reply["missing"])
            )
        dims = reply.get("dims", {})
        if "x" in dims and "y" in dims:
            check_pairs_dim(path, dims["x"], dims["y"])
        arrays: dict[str, np.ndarray] = {}
        for key in keys:
            if key in reply["dtypes"]:
                _check_dtype(key, np.dtype(reply["dtypes"][key]), path)
            npy = Path(out) / f"{key}.npy"
            try:
                with open(npy, "rb") as fp:
                    arrays[key] = _read_npy_stream(fp, key, path, os.fstat(fp.fileno()).st_size)
            except _NPY_ERRORS as err:  # a bug of the reader, never the user's file
                raise DataError(
                    f"cannot read back {key} of {str(path)!r}: {type(err).__name__}: {err}"
                ) from err
    return arrays


# The only global a .pt data file may name: the challenge files are TensorDatasets.
# torch.load(weights_only=True) is a pickle-opcode interpreter run over the file's bytes that
# calls allowlisted rebuild functions with arguments taken from the file. On garbage it raised
# UnpicklingError, RuntimeError (zip reader, storage sizes), EOFError, struct.error,
# UnicodeDecodeError, IndexError, ValueError, TypeError, KeyError and zipfile.BadZipFile, and its
# source raises AssertionError too. No finite list is known, so _read_pt catches Exception around
# torch's two parsing calls only (never around its own checks) and names the type it got.
_PT_ALLOWED = {"torch.utils.data.dataset.TensorDataset"}
_PT_HINT = (
    "only a TensorDataset or tensors x, y can be read from .pt (unpickling anything else could "
    "run code from the file); convert it to .npz"
)


def _refuse_pt_globals(path: Path, names: list[str]) -> DataError:
    kinds = ", ".join(repr(n) for n in names)
    if len(names) == 1:
        what = f"a pickled object of type {kinds} that is not allowed"
    else:
        what = f"pickled objects of types {kinds} that are not allowed"
    return DataError(f"{str(path)!r} holds {what}; {_PT_HINT}")


_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "SHORT_BINSTRING",
    "BINSTRING",
}


_SCAN_BYTES = 1 << 20


def _pickle_globals(path: Path, max_pickles: int = 5) -> list[str]:
    """List the globals named by the pickles at the start of a file, without executing them.

    Only used to word the refusal of a non-zip ``.pt`` file: a plain pickle, or torch's legacy
    format (up to five pickles, then raw storage bytes). The scan stops at the first opcode
    it cannot parse.
    """
    found: list[str] = []
    try:
        with open(path, "rb") as raw:
            fh = io.BytesIO(raw.read(_SCAN_BYTES))  # a huge length field then reads what is left
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # bad escapes in STRING args
            for _ in range(max_pickles):
                recent: list[object] = []  # values pushed lately, for STACK_GLOBAL
                memo: dict[object, object] = {}
                for op, arg, _pos in pickletools.genops(fh):
                    if op.name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                        found.append(f"{recent[-2]}.{recent[-1]}")
                    elif op.name in _STRING_OPS:
                        recent.append(arg)
                    elif op.name == "MEMOIZE" and recent:
                        memo[len(memo)] = recent[-1]
                    elif op.name.endswith("PUT") and recent:
                        memo[arg] = recent[-1]
                    elif op.name.endswith("GET"):
                        recent.append(memo.get(arg))
    except (ValueError, EOFError, OSError):  # what pickletools raises on bytes it cannot parse
        pass
    return [n for n in dict.fromkeys(found) if not n.startswith("torch.")]


def damaged_zip_member(path: str | os.PathLike[str]) -> str | None:
    """Return the first member of a zip archive (``torch.save``'s format) failing its CRC-32.

    ``torch.load`` does not check the CRC-32 that ``torch.save`` writes for every member, so
    a bit flipped on disk would be read as a changed number in silence. This reads every
    member once (``zipfile.ZipFile.testzip``).

    Parameters
    ----------
    path : str or path
        A file; one that is not a readable zip archive gives None (other checks name it).

    Returns
    -------
    str or None
        The member's name, or None when every member checks out.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except Exception:  # noqa: BLE001 - any failure to read (a flipped flag bit says the
        # member is encrypted: RuntimeError) is left to the reader, which names it or reads on
        return None


def _starts_like_zip(path: Path) -> bool:
    """Return whether the file begins with a zip archive's local-header signature."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _torch_message(err: BaseException) -> str:
    # torch's own text recommends turning weights_only off, i.e. running the file's code: drop it
    text = str(err).strip()
    if isinstance(err, EOFError):  # an empty or cut-off file: EOFError has no text of its own
        return "the file ends early (it is empty or was cut off)"
    if "weights_only" in text or "Weights only" in text or not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text}"


def _tensor_to_numpy(name: str, value: object, path: Path) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise DataError(
            f"{_where(name, path)} is a {type(value).__name__}, expected a tensor; {_PT_HINT}"
        )
    if value.layout != torch.strided:
        raise DataError(
            f"{_where(name, path)} is a {value.layout} tensor; expected a dense (strided) "
            "tensor: save tensor.to_dense()"
        )
    if value.is_quantized or value.is_meta:
        kind = "quantized" if value.is_quantized else "meta (shape only, no values)"
        raise DataError(
            f"{_where(name, path)} is a {kind} tensor of dtype {value.dtype}; expected a plain "
            f"tensor with values of dtype {_ACCEPTED}"
        )
    if value.is_complex():
        raise DataError(
            f"{_where(name, path)} has dtype {value.dtype} ({_REFUSED_KINDS['c']}); "
            f"expected {_ACCEPTED}"
        )
    value = value.detach().cpu().resolve_neg()
    try:
        return value.numpy()
    except TypeError:  # a dtype numpy lacks (bfloat16, float8, ...): widen floats exactly
        if value.is_floating_point():
            return value.to(torch.float32).numpy()
        raise DataError(
            f"{_where(name, path)} has dtype {value.dtype}, which numpy cannot represent; "
            f"expected {_ACCEPTED}"
        ) from None


def _read_pt(path: Path) -> dict[str, np.ndarray]:
    from torch.utils.data import TensorDataset

    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # e.g. a multi-disk end record: is_zipfile does not catch it
        is_zip = True  # let the scan below report it
    if not is_zip and _starts_like_zip(path):
        raise DataError(
            f"cannot read {str(path)!r} as a torch.save file: it starts as a zip archive (the "
            "format of torch.save) but has no end record: it was cut off or damaged"
        )
    if is_zip:
        # a static scan of the pickle (nothing is executed) names every global it imports
        try:
            named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as err:  # any type: see the note above _PT_ALLOWED
            raise DataError(
                f"cannot read {str(path)!r} as a torch.save file: the zip archive is damaged, "
                f"cut off or not written by torch.save ({_torch_message(err)})"
            ) from err
        refused = sorted(set(named) - _PT_ALLOWED)
        if refused:
            raise _refuse_pt_globals(path, refused)
        damaged = damaged_zip_member(path)
        if damaged is not None:
            raise DataError(
                f"cannot read {str(path)!r} as a torch.save file: its member {damaged!r} "
                "fails its CRC-32 check (the file was damaged after it was written)"
            )
    try:
        with torch.serialization.safe_globals([TensorDataset]), warnings.catch_warnings():
            # garbage bytes can read as an unknown pickle protocol: torch warns, then fails
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            obj = torch.load(path, weights_only=True, map_location="cpu", mmap=False)
    except pickle.UnpicklingError as err:
        # torch's message names the first refused global, but recommends turning weights_only off
        found = re.search(r"GLOBAL (\S+)|module (\S+) is blocked", str(err))
        names = [found.group(1) or found.group(2)] if found else []
        names += [n for n in _pickle_globals(path) if n not in _PT_ALLOWED]
        names = list(dict.fromkeys(names))
        if names:
            raise _refuse_pt_globals(path, names) from None
        raise DataError(
            f"cannot read {str(path)!r} as a torch.save file: it is corrupt or holds objects "
            f"other than tensors; {_PT_HINT}"
        ) from None
    except Exception as err:  # any type: see the note above _PT_ALLOWED
        raise DataError(
            f"cannot read {str(path)!r} as a torch.save file: {_torch_message(err)}"
        ) from err
    container = type(obj).__name__
    if isinstance(obj, TensorDataset):
        items: object = getattr(obj, "tensors", None)
    elif isinstance(obj, dict):
        if "x" not in obj or "y" not in obj:
            raise DataError(
                f"{str(path)!r} holds a dict with keys {sorted(map(str, obj))}; expected "
                "keys 'x' and 'y'"
            )
        items = (obj["x"], obj["y"])
    else:
        items = obj
    if not isinstance(items, (tuple, list)) or len(items) != 2:
        what = (
            f"a {container} of {len(items)} item{'' if len(items) == 1 else 's'}"
            if isinstance(items, (tuple, list))
            else f"an object of type {container}"
        )
        raise DataError(
            f"{str(path)!r} holds {what}; expected a TensorDataset of (X, Y), a tuple or list "
            "(x, y) or a dict {'x': x, 'y': y} of tensors"
        )
    return {
        "x": _tensor_to_numpy("x", items[0], path),
        "y": _tensor_to_numpy("y", items[1], path),
    }


def load_bounds(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load per-element bounds of ``x`` (``fit --x-bounds FILE``) from an ``.npz`` archive.

    The archive holds arrays ``low`` and ``high`` (as ``numpy.savez(path, low=..., high=...)``
    writes them), each of ``x_shape`` or a scalar, units of ``x``, ``-inf``/``inf`` for an
    open side: sbi's ``BoxUniform(low, high)``. Read without pickles; the file is not modified.

    Returns
    -------
    low, high : ndarray, float64

    Raises
    ------
    DataError
        If the file is missing, not an ``.npz``, lacks ``low`` or ``high``, holds another dtype
        than real numbers, or holds NaN. (The shapes and ``low < high`` are checked against
        ``x_shape`` by :class:`~ppl_cvae.config.ModelConfig`.)
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise DataError(
            f"x bounds file {str(path)!r} must be an .npz archive of arrays low and high "
            "(numpy.savez(path, low=..., high=...))"
        )
    if path.is_dir() or not path.is_file():
        raise DataError(f"x bounds file {str(path)!r} does not exist or is a folder")
    arrays = _read_npz(path, ("low", "high"))
    out = []
    for name in ("low", "high"):
        _check_dtype(name, arrays[name].dtype, path)
        value = arrays[name].astype(np.float64)
        if bool(np.isnan(value).any()):
            raise DataError(f"{_where(name, path)} holds NaN; expected numbers (inf allowed)")
        out.append(value)
    return out[0], out[1]


def _read_npy_folder(path: Path) -> dict[str, np.ndarray]:
    """Read ``x.npy`` and ``y.npy`` of a folder (headers checked first, as in ``.npz``)."""
    arrays: dict[str, np.ndarray] = {}
    for key in ("x", "y"):
        file = path / f"{key}.npy"
        try:
            with open(file, "rb") as fp:
                arrays[key] = _read_npy_stream(fp, key, path, os.fstat(fp.fileno()).st_size)
        except _NPY_ERRORS as err:
            raise DataError(
                f"cannot read {str(file)!r} as .npy: {type(err).__name__}: {err}"
            ) from err
    return arrays


def x_only_hint(missing: Any) -> str:
    """Return the hint for a file that lacks only ``y``: how to fit ``x`` alone, else "".

    The command line fits pairs; a file of models without observations trains an
    unconditional VAE through the Python API.

    Examples
    --------
    >>> x_only_hint(["x", "y"])
    ''
    """
    if list(missing) != ["y"]:
        return ""
    return (
        "; a file of x alone (prior models, no observations) fits an unconditional VAE, a "
        "generative prior: ppl-cvae fit --data FILE --unconditional"
    )


def load_models(path: str | os.PathLike[str]) -> torch.Tensor:
    """Load the models ``x`` alone from an ``.npz`` or ``.nc`` file (any ``y`` is not read).

    What ``ppl-cvae fit --data FILE --unconditional`` trains a generative prior (an
    unconditional VAE, as in Laloy et al. 2018) on: prior draws or training images of the
    subsurface without observations. The checks are those :func:`load_pairs` applies to ``x``.

    Parameters
    ----------
    path : str or path
        An ``.npz`` archive with an array ``x`` or a NetCDF file with a variable ``x``, sample
        axis first. Only read, never modified.

    Returns
    -------
    Tensor, shape (N, *x_shape), float32
        ``N >= 2`` models.

    Raises
    ------
    DataError
        If the file is missing or not ``.npz``/``.nc``, cannot be parsed, lacks ``x``, or its
        ``x`` fails a check of :func:`load_pairs` (dtype, empty, NaN/inf, beyond float32, an
        element float32 cannot resolve).
    ShapeError
        If ``x`` has fewer than 2 axes or fewer than 2 models.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.savez(Path(tmp) / "m.npz", x=np.zeros((5, 3)))
    ...     load_models(Path(tmp) / "m.npz").shape
    torch.Size([5, 3])
    """
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(path, ("x",))
    elif suffix == ".nc":
        arrays = _read_nc(path, ("x",))
    else:
        raise DataError(
            f"models without observations are read from an .npz or .nc file holding x; got "
            f"{str(path)!r}"
        )
    x = _to_float32("x", arrays["x"], path)
    if x.dim() < 2:
        hint = f": save it as x.reshape({len(x)}, 1)" if x.dim() == 1 else ""
        raise ShapeError(
            f"x in {str(path)!r} needs a leading sample axis and an event axis, got "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[0] < 2:
        raise ShapeError(f"{str(path)!r} holds {x.shape[0]} model(s); at least 2 are needed")
    _check_resolution("x", np.asarray(arrays["x"]), path)
    return x


def load_pairs(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Load training pairs from ``.npz``, ``.nc``, the challenge's ``.pt`` files or a folder.

    Parameters
    ----------
    path : str or path
        File to read; the suffix selects the format (see the module docstring). A folder
        holding ``x.npy`` and ``y.npy`` (what ``fit --lazy`` reads in chunks) is read whole.
        Only read, never modified.

    Returns
    -------
    x : Tensor, shape (N, *x_shape), float32
        ``N >= 2`` samples (batch axis first); every event axis has size >= 1.
    y : Tensor, shape (N, *y_shape), float32

    Raises
    ------
    DataError
        If the file is missing, has an unknown suffix, cannot be parsed in its format
        (random bytes, truncation, a zip that is not ``.npz``, an ``.nc`` that is not NetCDF,
        an HDF5 file without variables ``x``/``y``, a NetCDF file whose reader process crashes
        or runs past :data:`ppl_cvae._isolated.NETCDF_TIMEOUT_S`), or lacks ``x``/``y``; if ``x`` or
        ``y`` has a complex, object, string, bytes, structured or datetime dtype, is empty or
        has a zero-size axis (e.g. shape ``(5, 0)``), holds NaN/inf, or holds finite values
        beyond the float32 range (about 3.4e38); if an element of ``x`` or ``y`` varies but
        the rounding step of float32 (or of a float16 file) at its largest magnitude exceeds
        :data:`MAX_STEP_FRACTION` (1%) of its standard deviation over the pairs (a large
        offset with a small spread: 1e6 +- 1); if a ``.pt`` file names any pickled global
        other than ``TensorDataset`` (it is refused unexecuted), or holds anything other than
        two dense real tensors.
    ShapeError
        If ``x`` or ``y`` has fewer than 2 axes, their leading sizes differ, or there are
        fewer than 2 pairs.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     f = save_pairs(Path(tmp) / "d.npz", torch.zeros(4, 3), torch.ones(4, 2))
    ...     x, y = load_pairs(f)
    >>> x.shape, y.dtype
    (torch.Size([4, 3]), torch.float32)
    """
    path = Path(path)
    folder = path.is_dir() and (path / "x.npy").is_file() and (path / "y.npy").is_file()
    if not folder:
        _require_file(path, pairs=True)
    suffix = path.suffix.lower()
    if folder:
        arrays = _read_npy_folder(path)  # what fit --lazy reads in chunks, here read whole
    elif suffix == ".npz":
        arrays = _read_npz(path, ("x", "y"))
    elif suffix == ".nc":
        arrays = _read_nc(path, ("x", "y"))
    elif suffix == ".pt":
        arrays = _read_pt(path)
    else:
        hint = ""
        if suffix in _WRAPPER_SUFFIXES:
            hint = (
                f"; it is {_WRAPPER_SUFFIXES[suffix]}-compressed: decompress it to "
                f"{path.stem!r} first"
            )
        raise DataError(
            f"unknown data format {suffix!r} of {str(path)!r}; expected a file "
            f"({', '.join(PAIR_SUFFIXES)}) or a folder holding x.npy and y.npy{hint}"
        )
    x = _to_float32("x", arrays["x"], path)
    y = _to_float32("y", arrays["y"], path)
    if x.dim() < 2 or y.dim() < 2:
        flat = [(n, a) for n, a in (("x", x), ("y", y)) if a.dim() == 1]
        hint = "".join(
            f"; {n} of shape ({len(a)},) holds one value per pair: save it as "
            f"{n}.reshape({len(a)}, 1)"
            for n, a in flat
        )
        raise ShapeError(
            f"x and y in {str(path)!r} need a leading sample axis and an event axis, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}{hint}"
        )
    if x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"x and y in {str(path)!r} hold different numbers of pairs: "
            f"x {tuple(x.shape)}, y {tuple(y.shape)}{_pairs_axis_hint(x.shape, y.shape)}"
        )
    if x.shape[0] < 2:
        raise ShapeError(f"{str(path)!r} holds {x.shape[0]} pair(s); at least 2 are needed")
    for name in ("x", "y"):  # after the checks of dtype, values and shapes
        _check_resolution(name, np.asarray(arrays[name]), path)
    return x, y


WRITTEN_BY_KEY = "ppl_cvae_command"
"""The ``.npz`` array (0-d str) and JSON key naming the ``ppl-cvae`` command that wrote a file.

``--overwrite`` replaces only a file that names its own command there (a posterior ``.nc`` by
its ``posterior`` attributes instead), so it never replaces a user's own data.
"""


def save_pairs(
    path: str | os.PathLike[str],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    overwrite: bool = False,
    written_by: str | None = None,
) -> Path:
    """Write pairs to ``.npz`` (arrays ``x``, ``y``) atomically.

    Parameters
    ----------
    path : str or path
        Target ending in ``.npz``.
    x : Tensor, shape (N, *x_shape)
    y : Tensor, shape (N, *y_shape)
    overwrite : bool, default False
        Replace an existing file.
    written_by : str, optional
        The command writing the file (e.g. ``"ppl-cvae simulate"``), stored as the 0-d str
        array :data:`WRITTEN_BY_KEY` beside ``x`` and ``y`` (readers ignore it).

    Returns
    -------
    Path
        ``path``, written.

    Raises
    ------
    DataError
        If the suffix is not ``.npz``, the file exists and ``overwrite`` is false, or ``x`` or
        ``y`` is not a real torch tensor with a sample axis and finite values (a file that
        :func:`load_pairs` would refuse is not written).
    ShapeError
        If ``x`` and ``y`` differ in their leading size.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise DataError(f"output {str(path)!r} must end in .npz")
    if path.exists() and not overwrite:
        raise DataError(f"{str(path)!r} exists; choose another name or pass overwrite")
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor):
            raise DataError(
                f"{name} to save is a {type(value).__module__}.{type(value).__name__}; "
                "expected a torch.Tensor (a simulator must return torch tensors: wrap its "
                "arrays in torch.as_tensor)"
            )
        if value.dim() < 1 or value.is_complex() or not bool(torch.isfinite(value).all()):
            raise DataError(
                f"{name} to save (shape {tuple(value.shape)}, dtype {value.dtype}) must be a "
                "real tensor with a leading sample axis and no NaN or inf; such a file could "
                "not be read back (see load_pairs)"
            )
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ in leading size")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            arrays: dict[str, Any] = {
                "x": x.detach().cpu().numpy(),
                "y": y.detach().cpu().numpy(),
            }
            if written_by is not None:
                arrays[WRITTEN_BY_KEY] = np.array(written_by)
            np.savez(fh, **arrays)
    return path


_UNREADABLE_MARKER: tuple[type[BaseException], ...] = (KeyError, MemoryError, *_NPY_ERRORS)
"""No marker array (KeyError), or an archive that cannot be read: nobody's output."""


def npz_written_by(path: str | os.PathLike[str]) -> str | None:
    """Return the command recorded in an ``.npz`` by :func:`save_pairs`, or None.

    None when the file has no :data:`WRITTEN_BY_KEY` array, it is not a 0-d str, or the file
    cannot be read as ``.npz`` (it is then nobody's output that may be replaced).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(WRITTEN_BY_KEY + ".npy")
            if info.file_size > 4096:  # a name, not data
                return None
            with archive.open(info) as fp:
                found = np.lib.format.read_array(fp, allow_pickle=False)
    except _UNREADABLE_MARKER:
        return None
    if found.shape != () or found.dtype.kind != "U":
        return None
    return str(found)


def load_observations(
    path: str | os.PathLike[str],
    y_shape: tuple[int, ...],
    *,
    y_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
    """Load one observation or a stack of them for posterior sampling.

    Parameters
    ----------
    path : str or path
        ``.npy`` holding one ``y`` of shape ``y_shape`` or a stack ``(M, *y_shape)``; or
        ``.npz`` with key ``y`` (same shapes) and optionally ``x`` (true models, used as the
        truth in plots); or a Two Birds challenge ``.pt`` (``scoring_dataset.pt``: ``Y`` the
        observations, ``X`` their truths). The file is only read, never modified.
    y_shape : tuple of int
        Event shape the trained model expects.
    y_scale : Tensor, shape y_shape, optional
        The training standard deviation of each element of ``y`` (a fitted model's
        ``y_standardiser.std``), in the units of ``y``. With it, an element of an observation
        whose rounding step exceeds :data:`MAX_STEP_FRACTION` of that sd (the rule of
        :func:`load_pairs` for training pairs) is refused when the cast to float32 (the
        networks' dtype) changes it (a float64 value of magnitude beyond about ``2**23``
        hundredths of that sd), and warned of when the file stored it as float16 or float32
        (rounded when saved: a float16 value near 1e3 whose training sd is 1 is rounded to
        steps of 0.5).

    Returns
    -------
    y : Tensor, shape (M, *y_shape), float32
        ``M >= 1`` observations (batch axis first).
    stacked : bool
        Whether the file held a stack (True) or a single observation (False, ``M = 1``).
    x_true : Tensor, shape (M, *x_shape), float32, or None

    Raises
    ------
    DataError
        If the file is missing, is not ``.npy``, ``.npz`` or ``.pt`` (the Two Birds
        challenge's TensorDataset of ``(X, Y)``, read as ``x`` and ``y`` under the safe
        unpickling rule of :func:`load_pairs`), cannot be parsed (random
        bytes, truncation, a zip that is not ``.npz``, a pickled object array), or lacks
        ``y``; if ``y`` or ``x`` has a complex, object, string, bytes, structured or datetime
        dtype, is empty or has a zero-size axis, holds NaN/inf, or holds finite values beyond
        the float32 range (about 3.4e38) (the message names the count and the first bad
        element); with ``y_scale``, if the cast to float32 rounds an element of ``y`` to
        steps above :data:`MAX_STEP_FRACTION` of its training sd.

    Warns
    -----
    UserWarning
        With ``y_scale``, if ``y`` is stored as float16 or float32 with steps above
        :data:`MAX_STEP_FRACTION` of an element's training sd.
    ShapeError
        If ``y`` or ``x`` is 0-d (a bare scalar), ``y`` is neither ``y_shape`` nor
        ``(M, *y_shape)``, or ``x`` does not hold one model per observation; if ``y_scale``
        does not have shape ``y_shape``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(Path(tmp) / "y.npy", np.zeros((1, 50, 2)))
    ...     y, stacked, x_true = load_observations(Path(tmp) / "y.npy", (1, 50, 2))
    >>> tuple(y.shape), stacked, x_true is None
    ((1, 1, 50, 2), False, True)
    """
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arrays = {"y": _read_npy(path, "y")}
    elif suffix == ".npz":
        arrays = _read_npz(path, ("y",), optional=("x",))
    elif suffix == ".pt":  # the Two Birds challenge's TensorDataset: Y observed, X the truth
        arrays = _read_pt(path)
    else:
        raise DataError(
            f"observation file {str(path)!r} must be .npy, .npz or a challenge .pt, got "
            f"{suffix!r}"
        )
    y = _to_float32("y", arrays["y"], path, remedy=_OBSERVATION_REMEDY)
    x_true = (
        _to_float32("x", arrays["x"], path, remedy="replace them, or drop x (the truth)")
        if "x" in arrays
        else None
    )
    y_shape = tuple(y_shape)
    for name, tensor in (("y", y), ("x", x_true)):
        if tensor is not None and tensor.dim() == 0:
            expected = (
                f"y of shape {y_shape} or a stack {shape_text('M', y_shape)}"
                if name == "y"
                else "x with one model per observation, (M, *x_shape)"
            )
            raise ShapeError(f"{_where(name, path)} is a 0-d scalar; expected {expected}")
    if tuple(y.shape) == y_shape:
        stacked = False
        y = y.unsqueeze(0)
        if x_true is not None:
            x_true = x_true.unsqueeze(0)
    elif y.dim() >= 1 and tuple(y.shape[1:]) == y_shape:
        stacked = True
    else:
        raise ShapeError(
            f"observation in {str(path)!r} has shape {tuple(y.shape)}; the model expects "
            f"{y_shape} or a stack {shape_text('M', y_shape)}"
            f"{reshape_hint(y.shape, y_shape)}"
        )
    if x_true is not None and x_true.shape[0] != y.shape[0]:
        raise ShapeError(
            f"x in {str(path)!r} has {x_true.shape[0]} models for {y.shape[0]} observations"
        )
    if y_scale is not None:
        _check_observation_resolution(np.asarray(arrays["y"]), y_shape, y_scale, path)
    return y, stacked, x_true


def _check_observation_resolution(
    raw: np.ndarray, y_shape: tuple[int, ...], y_scale: torch.Tensor, path: Path
) -> None:
    """Refuse (or warn of) observation values rounded to steps above MAX_STEP_FRACTION of sd.

    A value the cast to float32 changes (float64, or an integer beyond ``2**24``) is refused:
    the rounding happens here. A value stored as float16 or float32 is exact in float32 but
    was rounded when it was saved: a warning.
    """
    if tuple(y_scale.shape) != y_shape:
        raise ShapeError(
            f"y_scale has shape {tuple(y_scale.shape)}; expected the event shape {y_shape}"
        )
    values = raw.reshape(-1, *y_shape)  # (M, *y_shape); a 0-d y was refused before
    wide = values.astype(np.float64)
    step = _rounding_step(np.abs(wide), raw.dtype)
    sd = y_scale.detach().cpu().double().numpy()
    coarse = ~(step <= MAX_STEP_FRACTION * sd)
    stored_coarse = raw.dtype.kind == "f" and raw.dtype.itemsize <= 4
    if not stored_coarse:  # only values the cast changes (a constant such as 1e7 is exact)
        coarse &= wide.astype(np.float32).astype(np.float64) != wide
    if not coarse.any():
        return
    flat = int(np.flatnonzero(coarse)[0])
    obs, *element = (int(i) for i in np.unravel_index(flat, values.shape))
    where = ", ".join(map(str, element))
    value, width, spread = float(wide.reshape(-1)[flat]), step.reshape(-1)[flat], sd[tuple(element)]
    head = (
        f"y in {str(path)!r}: observation {obs}, element [..., {where}] = {value:.6g} "
        f"({int(coarse.sum())} value(s) like it)"
    )
    tail = (
        f"{width / spread:.1%} of the training standard deviation {spread:.3g} of that element "
        f"(at most {MAX_STEP_FRACTION:.0%} is accepted)"
    )
    if stored_coarse:
        warnings.warn(
            f"{head} is stored as {raw.dtype}, whose steps there are {width:.3g}, {tail}: the "
            "observation was rounded when it was saved, and the posterior is that of the "
            "rounded values; save it as float32 or float64 from the original values",
            UserWarning,
            stacklevel=3,
        )
        return
    raise DataError(
        f"{head}: float32 (the networks' dtype; the file has {raw.dtype}) rounds it to steps "
        f"of {width:.3g}, {tail}; such a magnitude lies far outside the training data: check "
        "the units and the offset of the observation against the training y"
    )
