"""Image datasets: built-in digits, the user's MNIST IDX files, and image folders.

- ``digits``: scikit-learn's handwritten digits (1797 images of 8 x 8 pixels, 10 classes; UCI
  Optical Recognition of Handwritten Digits, Alpaydin and Kaynak 1998), grey levels 0-16 scaled
  to [0, 1] and optionally binarised at 0.5 for a Bernoulli likelihood. Ships with the package
  scikit-learn: no download.
- ``mnist``: the user's own IDX files (``train-images-idx3-ubyte[.gz]`` and
  ``train-labels-idx1-ubyte[.gz]``; LeCun et al. 1998), read by :func:`read_idx`.
- ``folder``: PNG/JPEG images, optionally one sub-folder per class, resized with Pillow
  (:func:`load_image_folder`).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, DataError, UnknownProblemError

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "one_hot",
    "read_idx",
]

DATASETS = ("digits", "mnist", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return float one-hot rows for integer ``labels``.

    Parameters
    ----------
    labels : Tensor of int, shape (N,)
        Values in ``[0, num_classes)``.
    num_classes : int

    Returns
    -------
    Tensor, shape (N, num_classes), float32

    Raises
    ------
    ConfigError
        If a label is outside ``[0, num_classes)``.
    """
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def load_digits(*, binarize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load scikit-learn's handwritten digits.

    Parameters
    ----------
    binarize : bool, default True
        Threshold the [0, 1] grey levels at 0.5 (for a Bernoulli likelihood).

    Returns
    -------
    images : Tensor, shape (1797, 8, 8), float32 in [0, 1] (or {0, 1})
    labels : Tensor, shape (1797,), int64 in [0, 9]

    References
    ----------
    Alpaydin and Kaynak (1998), Optical Recognition of Handwritten Digits, UCI Machine
    Learning Repository, doi:10.24432/C50P49 (as shipped by ``sklearn.datasets.load_digits``).
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    if binarize:
        images = (images > 0.5).float()
    return images, torch.as_tensor(bunch.target, dtype=torch.int64)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), checking its magic number and size.

    Format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``d``, then ``d`` big-endian uint32
    sizes and the data in C order (LeCun et al. 1998, the MNIST database).

    Returns
    -------
    ndarray
        Shape given by the header.

    Raises
    ------
    DataError
        If the file is missing, its gzip stream is corrupt, the magic number is wrong, or the
        data size does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:  # zlib.error: corrupt deflate data
            raise DataError(f"cannot decompress {str(path)!r}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{str(path)!r} is not an IDX file: magic number {raw[:4].hex() or 'missing'}, "
            "expected 0000TTDD (TT a type code in 08/09/0b/0c/0d/0e)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} ends inside its IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap at 2**63
    if len(raw) - header != expected:
        raise DataError(
            f"{str(path)!r} holds {len(raw) - header} data bytes; its header {shape} of "
            f"{dtype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{str(folder)!r} has no {stem} or {stem}.gz")


def load_mnist(
    folder: str | os.PathLike[str], *, split: str = "train", binarize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST images and labels from the user's IDX files.

    Parameters
    ----------
    folder : path
        Holds ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``
        (``split`` is ``train`` or ``t10k``).
    binarize : bool, default True
        Threshold grey levels (scaled to [0, 1]) at 0.5.

    Returns
    -------
    images : Tensor, shape (N, 28, 28) (the header's sizes), float32 in [0, 1]
    labels : Tensor, shape (N,), int64

    Raises
    ------
    DataError
        If a file is missing or malformed, the images are not 3-D uint8, the labels not 1-D,
        or their counts differ.
    """
    folder = Path(folder)
    images = read_idx(_find(folder, f"{split}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{split}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"MNIST images must be 3-D uint8, got {images.shape} {images.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"MNIST labels {labels.shape} do not match {images.shape[0]} images")
    x = torch.as_tensor(images.astype(np.float32) / 255.0)
    if binarize:
        x = (x > 0.5).float()
    return x, torch.as_tensor(labels.astype(np.int64))


def _image_files(directory: Path) -> list[Path]:
    """Return the image files of ``directory`` by suffix, sorted, hidden ones (``._x.png``) out."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _has_colour(file: Path) -> bool:
    """Return whether an image has pixels whose red, green and blue values differ."""
    from PIL import Image

    with Image.open(file) as opened:
        if opened.mode in ("1", "L", "LA", "I", "I;16", "F") or opened.mode.startswith("I;"):
            return False
        rgb = np.asarray(opened.convert("RGB"), dtype=np.int16)
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def _read_image(file: Path, size: tuple[int, int], grayscale: bool) -> Any:
    """Decode one image into float32 ``(H, W)`` or ``(H, W, 3)`` in [0, 1], resized (bilinear).

    8-bit modes go through Pillow's ``L``/``RGB`` conversion and are divided by 255; 16-bit
    and 32-bit grey modes (``I;16``, ``I``: a 16-bit PNG) by 65535, and float ones (``F``) are
    clipped to [0, 1], before resizing (Pillow's ``L`` conversion would clip them at 255).
    """
    from PIL import Image

    with Image.open(file) as opened:
        if opened.mode.startswith("I") or opened.mode == "F":
            values = np.asarray(opened, dtype=np.float64)
            scale = 1.0 if opened.mode == "F" else 65535.0
            grey = np.clip(values / scale, 0.0, 1.0).astype(np.float32)
            resized = np.asarray(
                Image.fromarray(grey, mode="F").resize(
                    (size[1], size[0]), Image.Resampling.BILINEAR
                ),
                dtype=np.float32,
            )
            return resized if grayscale else np.repeat(resized[..., None], 3, axis=-1)
        converted = opened.convert("L" if grayscale else "RGB")
    scaled = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(scaled, dtype=np.float32) / 255.0


def load_image_folder(
    folder: str | os.PathLike[str],
    *,
    size: tuple[int, int] = (150, 150),
    grayscale: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load PNG/JPEG images, resized with Pillow (bilinear), with class labels from sub-folders.

    Parameters
    ----------
    folder : path
        Images directly inside (one class, label 0) or in one sub-folder per class (labels in
        sorted sub-folder order; hidden sub-folders, whose names start with ``.`` or ``__``,
        are skipped).
    size : (int, int), default (150, 150)
        Output ``(height, width)`` in pixels.
    grayscale : bool, default True
        Convert to one channel (``(N, H, W)``, Pillow's ``L`` luma; a folder with colour
        images is warned about); otherwise RGB (``(N, 3, H, W)``).

    Returns
    -------
    images : Tensor, float32 in [0, 1]
    labels : Tensor, shape (N,), int64
    classes : list of str

    Raises
    ------
    DataError
        If the folder is missing, holds no images, has a class sub-folder without images or
        two that are one folder (a symbolic link), or an image is not a regular file (a FIFO)
        or cannot be decoded (Pillow's decompression-bomb limit included). Hidden files
        (``._x.png``) are left out; images beside class sub-folders are left out with a
        warning. 16-bit images are scaled by 65535, not clipped.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {str(folder)!r} does not exist")
    # hidden folders (.ipynb_checkpoints, .git, __MACOSX) are not classes
    subdirs = sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
    )
    real = [p.resolve() for p in subdirs]
    if len(set(real)) != len(real):  # a symbolic link to another class's folder
        twice = sorted(p.name for p, r in zip(subdirs, real, strict=True) if real.count(r) > 1)
        raise DataError(
            f"the class sub-folders {twice} of {str(folder)!r} are the same folder (a symbolic "
            "link): each class needs its own images"
        )
    if subdirs:
        loose = [p.name for p in _image_files(folder)]
        if loose:
            log.warning(
                "%d image(s) directly in %s (e.g. %s) are in no class sub-folder: left out",
                len(loose),
                folder,
                loose[0],
            )
    groups = [(p.name, p) for p in subdirs] if subdirs else [(folder.name, folder)]
    arrays, labels, classes = [], [], []
    coloured: Path | None = None  # the first colour image read as grey, for the warning
    for label, (name, directory) in enumerate(groups):
        classes.append(name)
        files = _image_files(directory)
        if not files and subdirs:
            raise DataError(
                f"the class sub-folder {str(directory)!r} holds no {'/'.join(IMAGE_SUFFIXES)} "
                "images: a class without images cannot be learnt or conditioned on; remove the "
                "folder or add its images"
            )
        for file in files:
            if not file.is_file():  # a FIFO or a device would block or never end
                raise DataError(f"{str(file)!r} is not a regular file; expected an image")
            try:
                arrays.append(_read_image(file, size, grayscale))
                if grayscale and coloured is None and _has_colour(file):
                    coloured = file
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
                raise DataError(f"cannot read image {str(file)!r}: {err}") from err
            labels.append(label)
    if not arrays:
        raise DataError(f"{str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    if coloured is not None:
        log.warning(
            "%s holds colour images (the first: %s), read as grey (Pillow's 'L' luma, "
            "0.299 R + 0.587 G + 0.114 B): colours of equal luma become one grey; for colour "
            "load them with ppl_cvae.data.datasets.load_image_folder(folder, grayscale=False) "
            "and fit the pairs from a file (--data)",
            str(folder),
            coloured.name,
        )
    x = torch.as_tensor(np.stack(arrays))
    if not grayscale:
        x = x.permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(labels, dtype=torch.int64), classes


def load_dataset(
    name: str,
    *,
    condition: str = "label",
    path: str | os.PathLike[str] | None = None,
    size: tuple[int, int] = (150, 150),
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, object]]:
    """Load a built-in dataset as training pairs.

    Parameters
    ----------
    name : {"digits", "mnist", "folder"}
    condition : {"label", "none"}, default "label"
        ``"label"``: ``y`` is the one-hot class (a label-conditional CVAE); ``"none"``: no
        ``y`` (an unconditional VAE).
    path : path, optional
        Folder of the IDX files (``mnist``) or of the images (``folder``).
    size : (int, int), default (150, 150)
        Image size for ``folder``.

    Returns
    -------
    x : Tensor, shape (N, *image_shape)
    y : Tensor, shape (N, num_classes), or None
    info : dict
        ``{"name", "num_classes", "labels", "classes"}`` (labels: Tensor of shape (N,);
        classes: the class names in label order, the sub-folder names for ``folder``).

    Raises
    ------
    UnknownProblemError
        If ``name`` is not a built-in dataset.
    ConfigError
        If ``condition`` is not ``"label"`` or ``"none"``, or ``path`` is missing for
        ``mnist``/``folder``.
    DataError
        As the loaders.
    """
    if name not in DATASETS:
        raise UnknownProblemError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    if condition not in ("label", "none"):
        raise ConfigError(f"condition must be 'label' or 'none', got {condition!r}")
    classes = [str(k) for k in range(10)]
    if name == "digits":
        images, labels = load_digits()
        num_classes = 10
    elif path is None:
        raise ConfigError(f"dataset {name!r} needs a path (--dataset-path)")
    elif name == "mnist":
        images, labels = load_mnist(path)
        num_classes = 10
    else:
        images, labels, classes = load_image_folder(path, size=size)
        num_classes = len(classes)
    y = one_hot(labels, num_classes) if condition == "label" else None
    info = {"name": name, "num_classes": num_classes, "labels": labels, "classes": classes}
    return images, y, info
