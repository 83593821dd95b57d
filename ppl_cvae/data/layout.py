"""Names, coordinates and units of a data file's ``x`` and ``y``, kept for the posterior files.

A NetCDF file (or Zarr store) of training pairs names its dimensions and may carry coordinate
variables and ``units`` attributes (CF conventions): ``x`` on ``(sample, depth)`` with a
``depth`` coordinate in ``m`` and values in ``log10(ohm m)``, ``y`` on ``(sample,
frequency)``. A run fitted on such a file without a problem keeps them
(:attr:`CVAE.data_layout <ppl_cvae.models.cvae.CVAE.data_layout>`, saved in the checkpoint),
and its posterior files use them where a problem would give them: the dims, coordinates and
units of ``x`` and ``y``, so ArviZ selects by name (``idata.posterior.x.sel(depth=...)``) and
``ppl-cvae diagnose`` draws profiles against depth with units, not against ``x_dim_0``.

Kept: the event dims of each variable (after its first, the pairs dim), the one-dimensional
coordinate variable of each event dim (numbers or short strings, at most
:data:`MAX_COORD_VALUES` values, all finite), and the ``units`` and ``long_name``
attributes of ``x``, ``y`` and those coordinates (strings of at most 200 characters). Left
out, each with the generic names of a file without them: a variable on an unnamed (phony)
dim, a dim name that the posterior file uses for itself (:data:`RESERVED_NAMES`), and the
dims of ``y`` when one is named like a dim of ``x`` (the two could differ in size or
coordinates).

References
----------
Eaton et al. (2023), NetCDF Climate and Forecast (CF) Metadata Conventions 1.11, sections 3.1
(``units``, ``long_name``) and 4-5 (coordinate variables); Hoyer and Hamman (2017), xarray:
N-D labeled arrays and datasets in Python, Journal of Open Research Software 5(1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppl_cvae.errors import ConfigError, DataError, ShapeError

__all__ = ["MAX_COORD_VALUES", "RESERVED_NAMES", "DataLayout", "read_layout"]

MAX_COORD_VALUES = 100_000
"""Most values of one coordinate kept (a longer one is left out: its dim keeps indices)."""

RESERVED_NAMES = frozenset(
    {"chain", "draw", "observation", "latent", "datum", "datum_bis", "x", "y", "z", "x_true",
     "y_noise_sd", "y_noise_cov", "y_units"}
)
"""Names a posterior file uses for its own dims and variables; a data dim so named is left out."""

_MAX_TEXT = 200  # characters of a unit or a string coordinate value


@dataclass(frozen=True)
class DataLayout:
    """The dims, coordinates and units of one ``x`` and one ``y`` of a data file.

    Parameters
    ----------
    x_dims, y_dims : tuple of str or None
        Names of the event dims of ``x`` / ``y`` (``len(x_shape)`` / ``len(y_shape)``
        names); None for the generic ``x_dim_0, ...``.
    coords : mapping of str to tuple
        Coordinate values of named event dims (numbers or strings, one per entry of the dim).
    units : mapping of str to str
        ``units`` of ``"x"``, ``"y"`` and of coordinates, by name.
    long_names : mapping of str to str
        ``long_name`` (CF: a descriptive name, which xarray's plots put on their axes) of
        ``"x"``, ``"y"`` and of coordinates, by name.

    Raises
    ------
    ConfigError
        If a dim name is not a non-empty str, is reserved (:data:`RESERVED_NAMES`) or appears
        twice within ``x`` or within ``y``; a coordinate is not of a named dim or holds
        values other than finite numbers and strings; a unit or long name is not a str.
    """

    x_dims: tuple[str, ...] | None = None
    y_dims: tuple[str, ...] | None = None
    coords: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    long_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for which in ("x_dims", "y_dims"):
            dims = getattr(self, which)
            if dims is None:
                continue
            if not isinstance(dims, (tuple, list)) or not all(
                isinstance(d, str) and d for d in dims
            ):
                raise ConfigError(f"data layout: {which} must be names (str), got {dims!r}")
            object.__setattr__(self, which, tuple(dims))
            reserved = sorted(set(dims) & RESERVED_NAMES)
            if reserved or len(set(dims)) != len(dims):
                raise ConfigError(
                    f"data layout: {which} {tuple(dims)} repeats a name or uses one a "
                    f"posterior file reserves ({sorted(RESERVED_NAMES)})"
                )
        named = set(self.x_dims or ()) | set(self.y_dims or ())
        coords: dict[str, tuple[Any, ...]] = {}
        for name, values in dict(self.coords).items():
            if name not in named or not isinstance(values, (tuple, list)):
                raise ConfigError(
                    f"data layout: coordinate {name!r} is not a list of values of a named dim "
                    f"({sorted(named)})"
                )
            if not all(_is_value(v) for v in values):
                raise ConfigError(
                    f"data layout: coordinate {name!r} must hold finite numbers or strings"
                )
            coords[name] = tuple(values)
        object.__setattr__(self, "coords", coords)
        for which in ("units", "long_names"):
            texts = dict(getattr(self, which))
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in texts.items()):
                raise ConfigError(f"data layout: {which} must map names to str, got {texts!r}")
            object.__setattr__(self, which, texts)

    def check_shapes(self, x_shape: Sequence[int], y_shape: Sequence[int] | None) -> None:
        """Raise ShapeError when the dims or coordinates do not fit ``x_shape`` / ``y_shape``.

        Raises
        ------
        ShapeError
            If ``x_dims`` / ``y_dims`` name another number of axes, a coordinate has another
            length than its dim, or a dim shared by ``x`` and ``y`` has two sizes.
        """
        sizes: dict[str, int] = {}
        for which, dims, shape in (("x", self.x_dims, x_shape), ("y", self.y_dims, y_shape)):
            if dims is None:
                continue
            if shape is None or len(dims) != len(shape):
                raise ShapeError(
                    f"data layout: {which}_dims {dims} do not name the axes of one {which}, "
                    f"shape {None if shape is None else tuple(shape)}"
                )
            for dim, size in zip(dims, shape, strict=True):
                if sizes.setdefault(dim, int(size)) != int(size):
                    raise ShapeError(
                        f"data layout: dim {dim!r} has size {sizes[dim]} in x but {size} in y"
                    )
        for name, values in self.coords.items():
            if len(values) != sizes.get(name, -1):
                raise ShapeError(
                    f"data layout: coordinate {name!r} has {len(values)} values for a dim of "
                    f"size {sizes.get(name)}"
                )

    def to_record(self) -> dict[str, Any]:
        """Return the layout as a JSON-like dict (the checkpoint's ``data_layout``)."""
        return {
            "x_dims": None if self.x_dims is None else list(self.x_dims),
            "y_dims": None if self.y_dims is None else list(self.y_dims),
            "coords": {k: list(v) for k, v in self.coords.items()},
            "units": dict(self.units),
            "long_names": dict(self.long_names),
        }

    @classmethod
    def from_record(cls, record: Any) -> DataLayout:
        """Rebuild a layout from :meth:`to_record`'s dict.

        A record written before ``long_names`` existed (no such key) reads as none.

        Raises
        ------
        ConfigError
            If ``record`` is not such a dict (other keys, wrong types; as the constructor).
        """
        keys = {"x_dims", "y_dims", "coords", "units"}
        if not isinstance(record, dict) or set(record) - {"long_names"} != keys:
            raise ConfigError(
                f"data layout record must be a dict with keys {sorted(keys)} (and long_names)"
            )
        long_names = record.get("long_names", {})
        if not all(isinstance(record[k], dict) for k in ("coords", "units")) or not isinstance(
            long_names, dict
        ):
            raise ConfigError("data layout record: coords, units and long_names must be dicts")
        return cls(
            x_dims=None if record["x_dims"] is None else tuple(record["x_dims"]),
            y_dims=None if record["y_dims"] is None else tuple(record["y_dims"]),
            coords=record["coords"],
            units=record["units"],
            long_names=long_names,
        )

    def variable_attrs(self) -> dict[str, dict[str, str]]:
        """Return the ``long_name`` attributes of ``"x"`` and ``"y"``, ``{"x": {...}, ...}``."""
        return {k: {"long_name": v} for k, v in self.long_names.items() if k in ("x", "y")}

    def coordinate_attrs(self) -> dict[str, dict[str, str]]:
        """Return the ``long_name`` attributes of the coordinates, by coordinate name."""
        return {k: {"long_name": v} for k, v in self.long_names.items() if k in self.coords}

    def describes(self) -> bool:
        """Return whether the layout says anything beyond generic names (dims, units, names)."""
        return (
            self.x_dims is not None
            or self.y_dims is not None
            or bool(self.units)
            or bool(self.long_names)
        )


def _is_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= _MAX_TEXT


# The child reads the metadata and 1-D coordinates of x and y (ppl_cvae._isolated: libhdf5 can
# hang on a corrupt file); args: engine, the most coordinate values kept.
_LAYOUT_CHILD = r"""
import numpy as np
import xarray as xr
engine, most = args[0], int(args[1])
options = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
if engine == "zarr":
    options["consolidated"] = False
with xr.open_dataset(path, engine=engine, decode_times=False, decode_timedelta=False,
                     cache=False, **options) as ds:
    found, coords = {}, {}
    for k in ("x", "y"):
        if k not in ds.variables:
            continue
        v = ds[k]
        found[k] = {"dims": list(map(str, v.dims)), "units": v.attrs.get("units"),
                    "long_name": v.attrs.get("long_name")}
        for d in v.dims[1:]:
            if d not in ds.coords or ds[d].ndim != 1 or ds[d].size > most:
                continue
            a = np.asarray(ds[d].values)
            if a.dtype.kind in "iu":
                values = [int(t) for t in a]
            elif a.dtype.kind == "f":
                values = [float(t) for t in a] if np.isfinite(a).all() else None
            elif a.dtype.kind in "US":
                values = [t.decode() if isinstance(t, bytes) else str(t) for t in a.tolist()]
            else:
                values = None
            if values is not None:
                coords[str(d)] = {"values": values, "units": ds[d].attrs.get("units"),
                                  "long_name": ds[d].attrs.get("long_name")}
    reply(variables=found, coords=coords)
"""


def read_layout(path: str | Path) -> DataLayout | None:
    """Read the dims, coordinates and units of ``x`` and ``y`` in a NetCDF file or Zarr store.

    Parameters
    ----------
    path : str or Path
        A ``.nc`` file or ``.zarr`` store with variables ``x`` and ``y`` whose first dim is
        the pairs (as :func:`~ppl_cvae.data.io.load_pairs` reads them). Other files (``.npz``,
        ``.pt``, a folder of ``.npy``) carry no names: None.

    Returns
    -------
    DataLayout or None
        None when the file names nothing beyond generic dims (no named event dim, no units,
        no long names) or is not NetCDF/Zarr. What is left out and why: the module docstring.

    Raises
    ------
    DataError
        If the file cannot be read (a corrupt file, a reader past its time limit).
    """
    from ppl_cvae._isolated import netcdf_timeout, run_isolated
    from ppl_cvae.data.io import _netcdf_engine

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".zarr"):
        return None
    try:
        engine = "zarr" if suffix == ".zarr" else _netcdf_engine(path)
    except OSError as err:
        raise DataError(f"cannot read {str(path)!r}: {err}") from err
    timeout = netcdf_timeout(path) if path.is_file() else 60.0
    reply, _, folder = run_isolated(
        _LAYOUT_CHILD, path, [engine, str(MAX_COORD_VALUES)], timeout, "NetCDF layout"
    )
    folder.cleanup()
    if "error" in reply:
        raise DataError(f"cannot read the dims of {str(path)!r}: {reply['message']}")
    return _layout_from_reply(reply)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_TEXT else None


def _layout_from_reply(reply: Mapping[str, Any]) -> DataLayout | None:
    """Build the layout from the reader's reply, leaving out what cannot be kept."""
    variables = reply.get("variables", {})
    found = reply.get("coords", {})
    dims: dict[str, tuple[str, ...] | None] = {}
    for k in ("x", "y"):
        event = tuple(variables.get(k, {}).get("dims", [])[1:])
        usable = event and not any(
            d.startswith("phony_dim") or d in RESERVED_NAMES for d in event
        )
        dims[k] = event if usable and len(set(event)) == len(event) else None
    x_dims, y_dims = dims["x"], dims["y"]
    if x_dims is not None and y_dims is not None and set(x_dims) & set(y_dims):
        y_dims = None  # a shared name: sizes or coordinates may differ; y keeps generic names
    named = set(x_dims or ()) | set(y_dims or ())
    coords = {d: tuple(c["values"]) for d, c in found.items() if d in named}
    coords = {d: v for d, v in coords.items() if all(_is_value(t) for t in v)}
    units = {k: u for k in ("x", "y") if (u := _text(variables.get(k, {}).get("units")))}
    units.update({d: u for d, c in found.items() if d in coords and (u := _text(c.get("units")))})
    names = {k: n for k in ("x", "y") if (n := _text(variables.get(k, {}).get("long_name")))}
    names.update(
        {d: n for d, c in found.items() if d in coords and (n := _text(c.get("long_name")))}
    )
    layout = DataLayout(
        x_dims=x_dims, y_dims=y_dims, coords=coords, units=units, long_names=names
    )
    return layout if layout.describes() else None
