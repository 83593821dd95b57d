"""Training pairs read lazily, in row chunks, from files larger than memory.

Formats (:func:`open_lazy_pairs`):

- a folder holding ``x.npy`` and ``y.npy`` (as written by ``numpy.save`` or
  ``numpy.lib.format.open_memmap``, C order), read with positioned reads of whole rows;
- ``.nc``: NetCDF with variables ``x`` and ``y`` sharing a leading sample dimension, opened with
  xarray (h5netcdf engine for NetCDF-4/HDF5, scipy for NetCDF-3) and indexed lazily: only the
  requested rows are read. The header is first parsed in a child process with a time limit, as
  :func:`ppl_cvae.data.io.load_pairs` does, since libhdf5 can hang on a corrupt file;
- ``.zarr``: a Zarr store with the same variables, opened with xarray's zarr engine (needs the
  optional ``zarr`` package: ``pip install "ppl_cvae[zarr]"``).

Neither dask nor ``numpy.memmap`` is used. The readers only ever ask for contiguous row blocks
(and once, in order, for the rows of a random subset), which xarray's lazily indexed backend
arrays and plain file reads serve directly; dask's task graph would add a scheduler for no gain.
A memory map would count every page of the file it touched in the process's resident set until
the kernel reclaims it, so the memory a run holds could not be read off its RSS.

Every chunk passes the checks of :mod:`ppl_cvae.data.io` (real dtypes, finite values within the
float32 range) and comes back as float32 tensors; a bad chunk raises
:class:`~ppl_cvae.errors.DataError` naming its rows. The one pass before training
(:func:`scan_pairs`) refuses what :func:`~ppl_cvae.data.io.load_pairs` refuses, with its
messages: NaN/inf counted over the whole file with the first bad element, and values float32
cannot resolve (``ppl_cvae.data.io._ResolutionScan``, fed the chunks as stored).

:class:`RunningMoments` accumulates means and variances chunk by chunk (Welford 1962; Chan,
Golub and LeVeque 1979) for the standardisers; :func:`scan_pairs` makes the one pass over a file
that a fit needs before training (moments, the validation rows and the whitening subset), and
:func:`shuffled_batches` yields one epoch's minibatches with a chunk-level and a buffer shuffle.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from ppl_cvae._isolated import netcdf_timeout, run_isolated
from ppl_cvae.checks import shape_text
from ppl_cvae.data.io import (
    _check_dtype,
    _first_bad,
    _netcdf_engine,
    _nonfinite_error,
    _pairs_axis_hint,
    _ResolutionScan,
    _to_float32,
    check_pairs_dim,
    x_only_hint,
)
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.errors import DataError, ShapeError

__all__ = [
    "LAZY_SUFFIXES",
    "LazyPairs",
    "RunningMoments",
    "ScanResult",
    "chunk_rows_for",
    "is_lazy_source",
    "open_lazy_pairs",
    "scan_pairs",
    "shuffled_batches",
]

LAZY_SUFFIXES = (".nc", ".zarr")
"""File suffixes read lazily besides a folder of ``x.npy`` and ``y.npy``."""

Batch = tuple[torch.Tensor, torch.Tensor]


class RunningMoments:
    """Count, mean, sum of squared deviations and range of events, updated chunk by chunk.

    Accumulates in float64. Each chunk's mean and ``M2 = sum (v - mean)**2`` are computed
    directly and merged with the running values by the parallel formula of Chan et al.:
    ``n = n_a + n_b``, ``delta = mean_b - mean_a``, ``mean = mean_a + delta n_b / n``,
    ``M2 = M2_a + M2_b + delta**2 n_a n_b / n``. This is exact in exact arithmetic and as
    stable as Welford's one-value update, without its Python loop. ``low`` and ``high`` hold
    the elementwise minimum and maximum (``inf`` and ``-inf`` before the first event).

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one event; chunks are ``(rows, *event_shape)``.

    References
    ----------
    Welford (1962), Note on a method for calculating corrected sums of squares and products,
    Technometrics 4(3); Chan, Golub and LeVeque (1979), Updating formulae and a pairwise
    algorithm for computing sample variances, Stanford CS report STAN-CS-79-773.

    Examples
    --------
    >>> m = RunningMoments((2,))
    >>> m.update(torch.tensor([[0.0, 1.0], [2.0, 1.0]])).update(torch.tensor([[4.0, 1.0]]))
    RunningMoments(count=3, event_shape=(2,))
    >>> m.mean.tolist(), m.variance().tolist()
    ([2.0, 1.0], [4.0, 0.0])
    """

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        self.event_shape = tuple(event_shape)
        self.count = 0
        self.mean = torch.zeros(self.event_shape, dtype=torch.float64)
        self.m2 = torch.zeros(self.event_shape, dtype=torch.float64)
        self.low = torch.full(self.event_shape, math.inf, dtype=torch.float64)
        self.high = torch.full(self.event_shape, -math.inf, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"RunningMoments(count={self.count}, event_shape={self.event_shape})"

    def update(self, chunk: torch.Tensor) -> RunningMoments:
        """Add the events of ``chunk`` ``(rows, *event_shape)``; return self.

        Raises
        ------
        ShapeError
            If ``chunk`` is not ``(rows, *event_shape)``.
        """
        if tuple(chunk.shape[1:]) != self.event_shape:
            raise ShapeError(
                f"RunningMoments expects {shape_text('rows', self.event_shape)}, "
                f"got {tuple(chunk.shape)}"
            )
        rows = chunk.shape[0]
        if rows == 0:
            return self
        values = chunk.detach().to(torch.float64)
        mean_b = values.mean(0)
        m2_b = (values - mean_b).pow(2).sum(0)
        self.merge_moments(rows, mean_b, m2_b)
        self.low = torch.minimum(self.low, values.amin(0))
        self.high = torch.maximum(self.high, values.amax(0))
        return self

    def merge_moments(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge another set's ``count``, ``mean`` and ``M2`` (Chan et al.'s formula)."""
        if count == 0:
            return
        total = self.count + count
        delta = mean.to(torch.float64) - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2.to(torch.float64) + delta.pow(2) * (self.count * count / total)
        self.count = total

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Merge the moments of ``other`` (e.g. another worker's) into these; return self."""
        if other.event_shape != self.event_shape:
            raise ShapeError(
                f"cannot merge moments of events {other.event_shape} into {self.event_shape}"
            )
        self.merge_moments(other.count, other.mean, other.m2)
        self.low = torch.minimum(self.low, other.low)
        self.high = torch.maximum(self.high, other.high)
        return self

    def variance(self) -> torch.Tensor:
        """Return the unbiased variance ``M2 / (count - 1)``, float64, shape ``event_shape``.

        Raises
        ------
        ShapeError
            If fewer than 2 events were added.
        """
        if self.count < 2:
            raise ShapeError(f"a variance needs at least 2 events, got {self.count}")
        return self.m2 / (self.count - 1)

    def standardiser(self, name: str = "values") -> Standardiser:
        """Return a :class:`Standardiser` with these moments (as ``Standardiser.fit`` would).

        ``name`` (``"x"`` or ``"y"``) is what its errors call the values
        (:meth:`Standardiser.set_moments`).
        """
        return Standardiser(self.event_shape, name).set_moments(self.mean, self.variance().sqrt())


class LazyPairs(abc.ABC):
    """Pairs ``x`` ``(num_pairs, *x_shape)`` and ``y`` ``(num_pairs, *y_shape)`` on disk.

    Use as a context manager, or call :meth:`close`. Subclasses implement :meth:`_read_raw`.

    Attributes
    ----------
    path : Path
    num_pairs : int
    x_shape, y_shape : tuple of int
        Event shapes.
    row_bytes : int
        Bytes one pair takes on disk (both variables), the unit of chunk sizes.
    dtypes : dict of str to numpy dtype
        The dtypes of ``x`` and ``y`` as stored (before the cast to float32).
    """

    path: Path
    num_pairs: int
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    row_bytes: int
    dtypes: dict[str, np.dtype[Any]]

    def _set_shapes(
        self, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype[Any]]
    ) -> None:
        """Check the two variables' shapes; record the pair count, event shapes and dtypes."""
        itemsizes = {name: dtype.itemsize for name, dtype in dtypes.items()}
        self.dtypes = dict(dtypes)
        x, y = shapes["x"], shapes["y"]
        where = str(self.path)
        if len(x) < 2 or len(y) < 2:
            raise ShapeError(
                f"x and y in {where!r} need a leading sample axis and an event axis, "
                f"got x {x} and y {y}"
            )
        if x[0] != y[0]:
            raise ShapeError(
                f"x and y in {where!r} hold different numbers of pairs: x {x}, y {y}"
                f"{_pairs_axis_hint(x, y)}"
            )
        for name, shape in shapes.items():
            if 0 in shape:
                raise DataError(f"{name} in {where!r} is empty: shape {shape}")
        if x[0] < 2:
            raise ShapeError(f"{where!r} holds {x[0]} pair(s); at least 2 are needed")
        self.num_pairs = int(x[0])
        self.x_shape, self.y_shape = tuple(x[1:]), tuple(y[1:])
        self.row_bytes = (
            math.prod(self.x_shape) * itemsizes["x"] + math.prod(self.y_shape) * itemsizes["y"]
        )

    @abc.abstractmethod
    def _read_raw(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        """Return rows of variable ``name`` as stored (a numpy array)."""

    def read(self, start: int, stop: int) -> Batch:
        """Read pairs ``start:stop`` as float32 tensors ``(rows, *x_shape)``, ``(rows, *y_shape)``.

        Raises
        ------
        DataError
            If the rows hold NaN/inf or values beyond the float32 range, or cannot be read.
        ShapeError
            If ``0 <= start <= stop <= num_pairs`` does not hold.
        """
        if not 0 <= start <= stop <= self.num_pairs:
            raise ShapeError(f"rows {start}:{stop} are outside [0, {self.num_pairs}]")
        return self._checked(slice(start, stop), f"rows {start}:{stop}")

    def read_rows(self, rows: torch.Tensor) -> Batch:
        """Read the pairs of sorted, distinct row indices ``rows`` ``(k,)``; as :meth:`read`."""
        index = rows.numpy().astype(np.int64)
        if index.size and (index[0] < 0 or index[-1] >= self.num_pairs):
            raise ShapeError(f"row indices must lie in [0, {self.num_pairs})")
        return self._checked(index, f"{index.size} selected rows")

    def _read_both(self, rows: slice | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the rows of ``x`` and ``y`` as stored (numpy arrays, not checked)."""
        return self._read_one("x", rows, what), self._read_one("y", rows, what)

    def _read_one(self, name: str, rows: slice | np.ndarray, what: str) -> np.ndarray:
        """Return the rows of variable ``name`` as stored; a reader's failure as DataError."""
        try:
            return self._read_raw(name, rows)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise DataError(
                f"cannot read {what} of {name} in {str(self.path)!r}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def digest(self, chunk_rows: int) -> str:
        """Return the SHA-256 of every pair, equal to ``data_digest(x, y)`` of the file in memory.

        :func:`~ppl_cvae.train.resume.data_digest` hashes ``x`` (dtype, shape, bytes) and then
        ``y``; here each variable is read alone in chunks of ``chunk_rows`` rows and cast to
        float32 as :meth:`read` does, so the digest costs one more pass over the file and no
        more memory than a chunk.

        Raises
        ------
        DataError
            As :meth:`read`.
        """
        digest = hashlib.sha256()
        for name, shape in (("x", self.x_shape), ("y", self.y_shape)):
            digest.update(f"{np.dtype(np.float32)}{(self.num_pairs, *shape)};".encode())
            nonfinite = _NonFinite(name)
            for start in range(0, self.num_pairs, max(1, int(chunk_rows))):
                rows = slice(start, min(start + max(1, int(chunk_rows)), self.num_pairs))
                what = f"rows {rows.start}:{rows.stop}"
                raw = self._read_one(name, rows, what)
                nonfinite.count(raw, start)
                if nonfinite.total:  # refused below: read on only to count them
                    continue
                values = _to_float32(f"{name} ({what})", raw, self.path, first_row=start)
                digest.update(values.numpy().reshape(-1).view(np.uint8).data)
            nonfinite.check(self, (self.num_pairs, *shape))
        return digest.hexdigest()

    def _checked(self, rows: slice | np.ndarray, what: str) -> Batch:
        raw = self._read_both(rows, what)
        first = rows.start if isinstance(rows, slice) else rows  # file rows, for a refusal
        x, y = (
            _to_float32(f"{name} ({what})", values, self.path, first_row=first)
            for name, values in zip(("x", "y"), raw, strict=True)
        )
        return x, y

    def close(self) -> None:  # noqa: B027 (a no-op unless the reader holds a file open)
        """Release open files (a no-op by default)."""

    def __enter__(self) -> LazyPairs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _NpyPairs(LazyPairs):
    """A folder with ``x.npy`` and ``y.npy``, read by positioned reads of whole rows."""

    def __init__(self, folder: Path) -> None:
        self.path = folder
        self._meta: dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]] = {}
        shapes, dtypes = {}, {}
        for name in ("x", "y"):
            file = folder / f"{name}.npy"
            if not file.is_file():
                raise DataError(f"{str(folder)!r} has no {name}.npy; expected x.npy and y.npy")
            offset, dtype, shape = self._header(file, name)
            self._meta[name] = (offset, dtype, shape)
            shapes[name], dtypes[name] = shape, dtype
        self._set_shapes(shapes, dtypes)

    def _header(self, file: Path, name: str) -> tuple[int, np.dtype[Any], tuple[int, ...]]:
        fmt = np.lib.format
        try:
            with open(file, "rb") as fh:
                version = fmt.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(fh)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = fmt.read_array_header_2_0(fh)
                else:
                    raise DataError(f"{str(file)!r} uses .npy format version {version}")
                offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
        except (OSError, ValueError, SyntaxError, TypeError) as err:
            raise DataError(f"cannot read {str(file)!r} as .npy: {err}") from err
        _check_dtype(name, dtype, file)
        if fortran and len(shape) > 1:
            raise DataError(
                f"{str(file)!r} is stored in Fortran order; rows are not contiguous: save it "
                "in C order (numpy.save(np.ascontiguousarray(a)))"
            )
        if math.prod(shape) * dtype.itemsize > size - offset:
            raise DataError(f"{str(file)!r} declares shape {shape} of {dtype} but is truncated")
        return offset, dtype, tuple(int(n) for n in shape)

    def _read_raw(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        offset, dtype, shape = self._meta[name]
        per_row = math.prod(shape[1:])
        row_bytes = per_row * dtype.itemsize
        file = self.path / f"{name}.npy"
        with open(file, "rb") as fh:
            if isinstance(rows, slice):
                start, stop = rows.start, rows.stop
                fh.seek(offset + start * row_bytes)
                flat = np.fromfile(fh, dtype=dtype, count=(stop - start) * per_row)
                return flat.reshape(stop - start, *shape[1:])
            out = np.empty((rows.size, *shape[1:]), dtype=dtype)
            for k, row in enumerate(rows):
                fh.seek(offset + int(row) * row_bytes)
                out[k] = np.fromfile(fh, dtype=dtype, count=per_row).reshape(shape[1:])
            return out


# Child of the NetCDF header check (ppl_cvae._isolated.run_isolated; args: engine).
_NC_HEADER_CHILD = r"""
import xarray as xr
engine = args[0]
options = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
with xr.open_dataset(path, engine=engine, decode_times=False, decode_timedelta=False,
                     cache=False, **options) as ds:
    reply(variables={str(k): {"dims": list(map(str, v.dims)), "shape": list(v.shape),
                              "dtype": v.dtype.str} for k, v in ds.variables.items()})
"""


class _XarrayPairs(LazyPairs):
    """NetCDF or Zarr variables ``x`` and ``y`` indexed lazily through xarray."""

    def __init__(self, path: Path, engine: str) -> None:
        import xarray as xr

        self.path = path
        options: dict[str, Any] = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
        if engine == "zarr":  # every store has per-array metadata; consolidated is optional
            options["consolidated"] = False
        try:
            self._ds = xr.open_dataset(
                path,
                engine=engine,
                chunks=None,  # lazily indexed backend arrays: rows are read when asked for
                cache=False,  # never keep a whole variable in memory
                decode_times=False,
                decode_timedelta=False,
                **options,
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(
                f"cannot open {str(path)!r} with xarray's {engine} engine: "
                f"{type(err).__name__}: {err}"
            ) from err
        missing = [k for k in ("x", "y") if k not in self._ds.variables]
        if missing:
            names = sorted(map(str, self._ds.variables))
            self._ds.close()
            raise DataError(
                f"{str(path)!r} has variables {names}; expected ['x', 'y'] (missing {missing})"
                + x_only_hint(missing)
            )
        shapes, dtypes = {}, {}
        for name in ("x", "y"):
            var = self._ds[name]
            _check_dtype(name, np.dtype(var.dtype), path)
            shapes[name], dtypes[name] = tuple(var.shape), np.dtype(var.dtype)
        x_dims, y_dims = self._ds["x"].dims, self._ds["y"].dims
        x_dim, y_dim = x_dims[0], y_dims[0]
        try:
            check_pairs_dim(path, [str(d) for d in x_dims], [str(d) for d in y_dims])
        except ShapeError:
            self._ds.close()
            raise
        if x_dim != y_dim:
            self._ds.close()
            raise ShapeError(
                f"x and y in {str(path)!r} start with different dimensions {x_dim!r} and "
                f"{y_dim!r}; expected one shared sample dimension"
            )
        self._dim = x_dim
        try:
            self._set_shapes(shapes, dtypes)
        except (DataError, ShapeError):
            self._ds.close()
            raise

    def _read_raw(self, name: str, rows: slice | np.ndarray) -> np.ndarray:
        return np.asarray(self._ds[name].isel({self._dim: rows}).values)

    def close(self) -> None:
        """Close the xarray dataset."""
        self._ds.close()


def is_lazy_source(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` can only be read lazily: a folder of ``.npy`` or a ``.zarr``."""
    path = Path(path)
    return path.suffix.lower() == ".zarr" or (path.is_dir() and (path / "x.npy").is_file())


def open_lazy_pairs(path: str | os.PathLike[str]) -> LazyPairs:
    """Open training pairs for lazy, chunked reading.

    Parameters
    ----------
    path : str or path
        A folder holding ``x.npy`` and ``y.npy``; a NetCDF file ``.nc``; or a Zarr store
        ``.zarr`` (see the module docstring). Only read, never modified.

    Returns
    -------
    LazyPairs
        Open reader; close it (or use ``with``).

    Raises
    ------
    DataError
        If the path is missing or of an unknown kind, a variable is missing, has a dtype that
        is not bool/integer/real floating, is empty, a ``.npy`` is truncated or in Fortran
        order, a NetCDF header cannot be parsed within its time limit, or a ``.zarr`` is given
        without the ``zarr`` package.
    ShapeError
        If ``x`` or ``y`` lacks a sample or event axis, their pair counts or sample dimensions
        differ, or there are fewer than 2 pairs.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(Path(tmp) / "x.npy", np.zeros((10, 3)))
    ...     np.save(Path(tmp) / "y.npy", np.ones((10, 2), dtype=np.float32))
    ...     with open_lazy_pairs(tmp) as pairs:
    ...         x, y = pairs.read(2, 5)
    >>> pairs.num_pairs, tuple(x.shape), x.dtype, tuple(y.shape)
    (10, (3, 3), torch.float32, (3, 2))
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() and suffix != ".zarr":
        return _NpyPairs(path)
    if not path.exists():
        raise DataError(f"data {str(path)!r} does not exist")
    if suffix == ".nc":
        try:
            engine = _netcdf_engine(path)
        except OSError as err:
            raise DataError(f"cannot read {str(path)!r}: {err}") from err
        reply, _, folder = run_isolated(
            _NC_HEADER_CHILD, path, [engine], netcdf_timeout(path), "NetCDF"
        )
        folder.cleanup()
        if "error" in reply:
            raise DataError(
                f"cannot read {str(path)!r} as NetCDF ({engine} engine): "
                f"{reply['error']}: {reply['message']}"
            )
        return _XarrayPairs(path, engine)
    if suffix == ".zarr":
        if importlib.util.find_spec("zarr") is None:
            raise DataError(
                f"reading {str(path)!r} needs the zarr package: pip install 'ppl_cvae[zarr]'"
            )
        return _XarrayPairs(path, "zarr")
    raise DataError(
        f"cannot read {str(path)!r} lazily; expected a folder with x.npy and y.npy, a .nc "
        "NetCDF file or a .zarr store"
    )


def chunk_rows_for(pairs: LazyPairs, chunk_bytes: int) -> int:
    """Return the pairs per chunk so that one chunk takes at most ``chunk_bytes`` (at least 1)."""
    return max(1, int(chunk_bytes) // max(1, pairs.row_bytes))


@dataclass
class ScanResult:
    """What one pass over a lazily read file gives a fit.

    Attributes
    ----------
    x_moments, y_moments : RunningMoments
        Moments of the ``x`` and ``y`` of every training pair (the validation rows left out).
    validation : tuple of Tensor
        ``x`` ``(k, *x_shape)`` and ``y`` ``(k, *y_shape)`` of the held-out rows.
    validation_rows : Tensor of int64, shape (k,)
        Their sorted row indices (excluded from training).
    subset : tuple of Tensor, or None
        Pairs of the requested random subset (e.g. for the linear whitener), in row order.
    pairing : RunningMoments, optional
        Moments of :func:`pairing_statistic` over the training rows: they change when ``x``
        and ``y`` are paired differently, which the moments of each leave alone.
    """

    x_moments: RunningMoments
    y_moments: RunningMoments
    validation: Batch
    validation_rows: torch.Tensor
    subset: Batch | None
    pairing: RunningMoments | None = None


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """Return an empty float32 tensor of shape ``(0, *shape)``."""
    return torch.empty((0, *shape))


def _rows_in(rows: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Return the entries of sorted ``rows`` in ``[start, stop)``."""
    lo = int(torch.searchsorted(rows, start))
    hi = int(torch.searchsorted(rows, stop))
    return rows[lo:hi]


class _NonFinite:
    """Tally of the NaN/inf of one variable over the chunks of a pass: count and first one.

    A pass that finds one reads on to count them all, so that a lazily read file is refused
    with the message :func:`~ppl_cvae.data.io.load_pairs` gives for the file loaded whole (the
    count over the whole file, its first bad element, the file's shape).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.first: str | None = None

    def count(self, values: np.ndarray, start: int) -> None:
        """Add the NaN/inf of a chunk whose first row is file row ``start``."""
        if values.dtype.kind != "f":
            return
        finite = np.isfinite(values)
        count = values.size - int(np.count_nonzero(finite))
        if count and self.first is None:
            self.first = _first_bad(values, ~finite, start)
        self.total += count

    def check(self, pairs: LazyPairs, shape: tuple[int, ...]) -> None:
        """Raise the refusal of ``load_pairs`` if any NaN/inf was counted."""
        if self.total:
            assert self.first is not None
            dtype = pairs.dtypes[self.name]
            raise _nonfinite_error(self.name, pairs.path, self.total, self.first, shape, dtype)


def scan_pairs(
    pairs: LazyPairs,
    *,
    chunk_rows: int,
    validation_rows: torch.Tensor,
    subset_rows: torch.Tensor | None = None,
) -> ScanResult:
    """Read the file once, in order: moments of the training pairs, validation rows, a subset.

    The moments leave the validation rows out, as the in-memory fit's standardisers do (they
    are fitted on the training pairs only, as in sbi); every row is still checked for NaN,
    inf and resolution.

    Parameters
    ----------
    pairs : LazyPairs
    chunk_rows : int
        Pairs read at a time (bounds the memory with the kept rows).
    validation_rows : Tensor of int64, shape (k,)
        Sorted distinct row indices to hold out and return.
    subset_rows : Tensor of int64, shape (s,), optional
        Sorted distinct row indices whose pairs to return as well.

    Returns
    -------
    ScanResult

    Raises
    ------
    DataError
        As :func:`~ppl_cvae.data.io.load_pairs` on the same values, with the same messages: NaN
        or inf in ``x`` or ``y`` (the count over the whole file and the first bad element; the
        pass reads on to count them), values beyond the float32 range, or an element whose
        values float32 (or the file's dtype) cannot resolve
        (``ppl_cvae.data.io._ResolutionScan``).
    """
    names = ("x", "y")
    shapes = {"x": pairs.x_shape, "y": pairs.y_shape}
    x_mom, y_mom = RunningMoments(pairs.x_shape), RunningMoments(pairs.y_shape)
    pair_mom, probes = RunningMoments(()), pairing_probes(pairs.x_shape, pairs.y_shape)
    resolution = {n: _ResolutionScan(n, pairs.dtypes[n], shapes[n], pairs.path) for n in names}
    nonfinite = {n: _NonFinite(n) for n in names}
    keep: dict[str, list[Batch]] = {"val": [], "sub": []}
    for start in range(0, pairs.num_pairs, chunk_rows):
        stop = min(start + chunk_rows, pairs.num_pairs)
        raw = pairs._read_both(slice(start, stop), f"rows {start}:{stop}")
        for name, values in zip(names, raw, strict=True):
            nonfinite[name].count(values, start)
        if any(tally.total for tally in nonfinite.values()):
            continue  # the file is refused below: read on only to count the NaN/inf
        x, y = (
            _to_float32(f"{name} (rows {start}:{stop})", values, pairs.path, first_row=start)
            for name, values in zip(names, raw, strict=True)
        )
        for name, values in zip(names, raw, strict=True):
            resolution[name].update(values)
        del raw
        train = _chunk_rows_kept(start, stop, validation_rows) - start  # the training rows
        x_train, y_train = x[train], y[train]
        x_mom.update(x_train)
        y_mom.update(y_train)
        pair_mom.update(pairing_statistic(x_train, y_train, probes))
        del x_train, y_train
        for key, rows in (("val", validation_rows), ("sub", subset_rows)):
            if rows is None:
                continue
            local = _rows_in(rows, start, stop) - start
            if local.numel():
                keep[key].append((x[local].clone(), y[local].clone()))
        del x, y
    for name in names:  # the order and messages of load_pairs
        nonfinite[name].check(pairs, (pairs.num_pairs, *shapes[name]))
    for name in names:
        resolution[name].check()

    def joined(parts: list[Batch]) -> Batch:
        if not parts:
            return (_empty(pairs.x_shape), _empty(pairs.y_shape))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    subset = joined(keep["sub"]) if subset_rows is not None else None
    return ScanResult(x_mom, y_mom, joined(keep["val"]), validation_rows, subset, pair_mom)


PAIRING_SEED = 20_261_203
"""Seed of the probe vectors of :func:`pairing_probes` (fixed: part of a training state)."""


def pairing_probes(
    x_shape: tuple[int, ...], y_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return fixed random probe vectors ``u`` (``prod(x_shape)``) and ``v`` (``prod(y_shape)``).

    Standard normal float64 draws seeded with :data:`PAIRING_SEED`, for
    :func:`pairing_statistic`.
    """
    generator = torch.Generator().manual_seed(PAIRING_SEED)
    u = torch.randn(math.prod(x_shape), generator=generator, dtype=torch.float64)
    v = torch.randn(math.prod(y_shape), generator=generator, dtype=torch.float64)
    return u, v


def pairing_statistic(
    x: torch.Tensor, y: torch.Tensor, probes: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Return ``(x_i . u) (y_i . v)`` of each pair, float64, shape ``(rows,)``.

    Its mean over a file's pairs is a cross moment of ``x`` and ``y`` along random
    directions: moving an ``x`` to another row's ``y`` changes it (unless by coincidence),
    while the moments of ``x`` and of ``y`` alone stay the same.

    Shapes: ``x (rows, *x_shape)``, ``y (rows, *y_shape)``.
    """
    u, v = probes
    return (x.reshape(len(x), -1).double() @ u) * (y.reshape(len(y), -1).double() @ v)


def _chunk_rows_kept(start: int, stop: int, exclude: torch.Tensor | None) -> torch.Tensor:
    """Return the row indices of chunk ``[start, stop)`` that are not in sorted ``exclude``."""
    rows = torch.arange(start, stop)
    if exclude is None:
        return rows
    held = _rows_in(exclude, start, stop) - start
    if not held.numel():
        return rows
    mask = torch.ones(stop - start, dtype=torch.bool)
    mask[held] = False
    return rows[mask]


def _read_in_order(pairs: LazyPairs, rows: torch.Tensor) -> Batch:
    """Read the pairs of distinct row indices ``rows`` (any order), returned in that order."""
    ordered, where = rows.sort()
    x, y = pairs.read_rows(ordered)
    back = where.argsort()
    return x[back], y[back]


def shuffled_batches(
    pairs: LazyPairs,
    *,
    batch_size: int,
    chunk_rows: int,
    buffer_chunks: int,
    generator: torch.Generator,
    exclude: torch.Tensor | None = None,
    first_batch: int = 0,
) -> Iterator[Batch]:
    """Yield one epoch of minibatches with a chunk-level and a buffer shuffle.

    The file is cut into chunks of ``chunk_rows`` consecutive pairs; a random permutation
    of the chunks is read ``buffer_chunks`` at a time into a buffer, whose pairs (and the
    fewer than ``batch_size`` left over from the previous buffer) are shuffled and cut into
    minibatches. Every pair not in ``exclude`` is used exactly once; all minibatches but the
    last hold ``batch_size`` pairs.

    Parameters
    ----------
    pairs : LazyPairs
    batch_size, chunk_rows, buffer_chunks : int
        Pairs per minibatch, pairs per chunk, chunks per buffer (all ``>= 1``).
    generator : torch.Generator
        Drives both shuffles.
    exclude : Tensor of int64, shape (k,), optional
        Sorted row indices to skip (the validation rows).
    first_batch : int, default 0
        Yield the epoch's minibatches from this 0-based index on (a resumed epoch). The
        shuffles draw exactly as for ``first_batch = 0``; buffers whose minibatches all come
        earlier are shuffled as row indices only, without reading the file, and the pairs
        they carry over are read by index.

    Yields
    ------
    (x, y) : Tensor ``(b, *x_shape)``, Tensor ``(b, *y_shape)``

    Notes
    -----
    Memory: about ``buffer_chunks * chunk_rows + batch_size`` pairs, plus one chunk being
    read. Randomness lost against a full shuffle: a minibatch only mixes pairs of the
    ``buffer_chunks`` chunks in one buffer (and the carried remainder), so pairs stored near
    each other tend to share minibatches; when the file is sorted (by a parameter, by
    survey) the minibatches are less diverse than i.i.d. draws and the gradient noise is
    correlated within a buffer. The order of the epoch is one of
    ``num_chunks! * prod(buffer permutations)`` orders, not all ``N!``. A larger
    ``buffer_chunks`` (or smaller chunks, at more read calls) brings it closer to a full
    shuffle; a file written in random order loses nothing.
    """
    num_chunks = math.ceil(pairs.num_pairs / chunk_rows)
    order = torch.randperm(num_chunks, generator=generator).tolist()
    carry: Batch | None = None
    carry_rows: torch.Tensor | None = None  # row indices of the carry while skipping
    done = 0  # minibatches of the epoch before the current buffer
    for first in range(0, num_chunks, buffer_chunks):
        bounds = [
            (chunk * chunk_rows, min(chunk * chunk_rows + chunk_rows, pairs.num_pairs))
            for chunk in order[first : first + buffer_chunks]
        ]
        perm = None
        if done < first_batch:  # skipping: shuffle row indices, read nothing yet
            kept = [_chunk_rows_kept(start, stop, exclude) for start, stop in bounds]
            rows = torch.cat(([] if carry_rows is None else [carry_rows]) + kept)
            perm = torch.randperm(rows.shape[0], generator=generator)
            full = rows.shape[0] // batch_size * batch_size
            if done + full // batch_size <= first_batch:  # every minibatch of it comes earlier
                rows = rows[perm]
                carry_rows = rows[full:] if full < rows.shape[0] else None
                done += full // batch_size
                continue
        if carry_rows is not None:  # the first buffer read after skipping
            carry, carry_rows = _read_in_order(pairs, carry_rows), None
        bx, by = _read_buffer(pairs, bounds, exclude, carry)
        if perm is None:
            perm = torch.randperm(bx.shape[0], generator=generator)
        bx, by = bx[perm], by[perm]
        full = bx.shape[0] // batch_size * batch_size
        for start in range(0, full, batch_size):
            if done + start // batch_size >= first_batch:
                yield bx[start : start + batch_size], by[start : start + batch_size]
        done += full // batch_size
        carry = (bx[full:].clone(), by[full:].clone()) if full < bx.shape[0] else None
        del bx, by
    if carry_rows is not None and done >= first_batch:
        carry = _read_in_order(pairs, carry_rows)
    if carry is not None and done >= first_batch:
        yield carry


def _read_buffer(
    pairs: LazyPairs,
    bounds: list[tuple[int, int]],
    exclude: torch.Tensor | None,
    carry: Batch | None,
) -> Batch:
    """Return ``carry`` followed by the pairs of chunks ``bounds`` less the ``exclude`` rows."""
    xs, ys = ([carry[0]], [carry[1]]) if carry is not None else ([], [])
    for start, stop in bounds:
        x, y = pairs.read(start, stop)
        if exclude is not None:
            held = _rows_in(exclude, start, stop) - start
            if held.numel():
                mask = torch.ones(stop - start, dtype=torch.bool)
                mask[held] = False
                x, y = x[mask], y[mask]
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)
