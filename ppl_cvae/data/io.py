"""Reading and writing training pairs ``(x, y)`` and observations ``y``.

Formats (chosen by file suffix):

- ``.npz``: arrays ``x`` of shape ``(N, *x_shape)`` and ``y`` of shape ``(N, *y_shape)``;
- ``.nc``: NetCDF with variables ``x`` and ``y`` sharing a leading sample dimension
  (read with xarray; written files use the h5netcdf engine);
- ``.pt``: the Two Birds challenge's ``torch.utils.data.TensorDataset`` of ``(X, Y)`` pairs,
  each ``(1, 50, 2)``.

Every loader returns float32 tensors and rejects NaN/inf, empty sets and mismatched counts.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ppl_cvae._atomic import atomic_path
from ppl_cvae.errors import DataError, ShapeError

__all__ = ["load_pairs", "save_pairs", "load_observations", "PAIR_SUFFIXES"]

PAIR_SUFFIXES = (".npz", ".nc", ".pt")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")


def _finite(name: str, array: np.ndarray, path: Path) -> torch.Tensor:
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise DataError(f"{name} in {str(path)!r} must be numeric, got dtype {array.dtype}")
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise DataError(f"{name} in {str(path)!r} contains {bad} NaN or inf values")
    return tensor


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(
                    f"{str(path)!r} has arrays {archive.files}; expected {list(keys)} "
                    f"(missing {missing})"
                )
            return {k: archive[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read {str(path)!r} as .npz: {err}") from err


def _read_nc(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    import xarray as xr

    try:
        with xr.open_dataset(path) as ds:
            missing = [k for k in keys if k not in ds.variables]
            if missing:
                raise DataError(
                    f"{str(path)!r} has variables {sorted(map(str, ds.variables))}; "
                    f"expected {list(keys)}"
                )
            return {k: ds[k].values for k in keys}
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {str(path)!r} as NetCDF: {err}") from err


def _read_pt(path: Path) -> dict[str, np.ndarray]:
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as err:  # torch.load raises many types for corrupt files
        raise DataError(f"cannot read {str(path)!r} as a torch file: {err}") from err
    tensors = getattr(obj, "tensors", None)
    if not isinstance(tensors, tuple) or len(tensors) != 2:
        raise DataError(
            f"{str(path)!r} must hold a TensorDataset of (X, Y) pairs, got {type(obj).__name__}"
        )
    return {"x": tensors[0].numpy(), "y": tensors[1].numpy()}


def load_pairs(path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Load training pairs from ``.npz``, ``.nc`` or the challenge's ``.pt`` files.

    Parameters
    ----------
    path : str or path
        File to read; the suffix selects the format.

    Returns
    -------
    x : Tensor, shape (N, *x_shape), float32
    y : Tensor, shape (N, *y_shape), float32

    Raises
    ------
    DataError
        If the file is missing, unreadable, lacks ``x``/``y``, or holds NaN/inf.
    ShapeError
        If ``x`` and ``y`` have different leading sizes, or fewer than 2 pairs.
    """
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        arrays = _read_npz(path, ("x", "y"))
    elif suffix == ".nc":
        arrays = _read_nc(path, ("x", "y"))
    elif suffix == ".pt":
        arrays = _read_pt(path)
    else:
        raise DataError(
            f"unknown data format {suffix!r} of {str(path)!r}; expected {PAIR_SUFFIXES}"
        )
    x = _finite("x", arrays["x"], path)
    y = _finite("y", arrays["y"], path)
    if x.dim() < 2 or y.dim() < 2:
        raise ShapeError(
            f"x and y in {str(path)!r} need a leading sample axis and an event axis, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"x and y in {str(path)!r} hold different numbers of pairs: "
            f"x {tuple(x.shape)}, y {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ShapeError(f"{str(path)!r} holds {x.shape[0]} pair(s); at least 2 are needed")
    return x, y


def save_pairs(
    path: str | os.PathLike[str], x: torch.Tensor, y: torch.Tensor, *, overwrite: bool = False
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

    Raises
    ------
    DataError
        If the suffix is not ``.npz`` or the file exists and ``overwrite`` is false.
    ShapeError
        If ``x`` and ``y`` differ in their leading size.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise DataError(f"output {str(path)!r} must end in .npz")
    if path.exists() and not overwrite:
        raise DataError(f"{str(path)!r} exists; choose another name or pass overwrite")
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ in leading size")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
    return path


def load_observations(
    path: str | os.PathLike[str], y_shape: tuple[int, ...]
) -> tuple[torch.Tensor, bool, torch.Tensor | None]:
    """Load one observation or a stack of them for posterior sampling.

    Parameters
    ----------
    path : str or path
        ``.npy`` holding one ``y`` of shape ``y_shape`` or a stack ``(M, *y_shape)``; or
        ``.npz`` with key ``y`` (same shapes) and optionally ``x`` (true models, used as the
        truth in plots).
    y_shape : tuple of int
        Event shape the trained model expects.

    Returns
    -------
    y : Tensor, shape (M, *y_shape)
    stacked : bool
        Whether the file held a stack (True) or a single observation (False, ``M = 1``).
    x_true : Tensor, shape (M, *x_shape), or None

    Raises
    ------
    DataError
        If the file is missing, unreadable, lacks ``y``, or holds NaN/inf.
    ShapeError
        If ``y`` is neither ``y_shape`` nor ``(M, *y_shape)``.
    """
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    x_true = None
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {str(path)!r} as .npy: {err}") from err
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "y" not in archive.files:
                    raise DataError(f"{str(path)!r} has arrays {archive.files}; expected 'y'")
                array = archive["y"]
                if "x" in archive.files:
                    x_true = _finite("x", archive["x"], path)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"cannot read {str(path)!r} as .npz: {err}") from err
    else:
        raise DataError(f"observation file {str(path)!r} must be .npy or .npz")
    y = _finite("y", array, path)
    y_shape = tuple(y_shape)
    if tuple(y.shape) == y_shape:
        stacked = False
        y = y.unsqueeze(0)
        if x_true is not None:
            x_true = x_true.unsqueeze(0)
    elif tuple(y.shape[1:]) == y_shape and y.shape[0] >= 1:
        stacked = True
    else:
        raise ShapeError(
            f"observation in {str(path)!r} has shape {tuple(y.shape)}; the model expects "
            f"{y_shape} or a stack (M, *{y_shape})"
        )
    if x_true is not None and x_true.shape[0] != y.shape[0]:
        raise ShapeError(
            f"x in {str(path)!r} has {x_true.shape[0]} models for {y.shape[0]} observations"
        )
    return y, stacked, x_true
