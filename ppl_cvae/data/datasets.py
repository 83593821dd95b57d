"""Built-in image datasets that ship with installed packages (no download).

``digits``: scikit-learn's handwritten digits (1797 images of 8 x 8 pixels, 10 classes; UCI
Optical Recognition of Handwritten Digits, Alpaydin and Kaynak 1998), grey levels 0-16 scaled to
[0, 1] and optionally binarised at 0.5 for a Bernoulli likelihood.
"""

from __future__ import annotations

import torch

from ppl_cvae.errors import ConfigError, UnknownProblemError

__all__ = ["DATASETS", "load_dataset", "load_digits", "one_hot"]

DATASETS = ("digits",)


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


def load_dataset(
    name: str, *, condition: str = "label"
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, object]]:
    """Load a built-in dataset as training pairs.

    Parameters
    ----------
    name : {"digits"}
    condition : {"label", "none"}, default "label"
        ``"label"``: ``y`` is the one-hot class (a label-conditional CVAE); ``"none"``: no
        ``y`` (an unconditional VAE).

    Returns
    -------
    x : Tensor, shape (N, *image_shape)
    y : Tensor, shape (N, num_classes), or None
    info : dict
        ``{"name", "num_classes", "labels"}`` (labels: Tensor of shape (N,)).

    Raises
    ------
    UnknownProblemError
        If ``name`` is not a built-in dataset.
    ConfigError
        If ``condition`` is not ``"label"`` or ``"none"``.
    """
    if name not in DATASETS:
        raise UnknownProblemError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    if condition not in ("label", "none"):
        raise ConfigError(f"condition must be 'label' or 'none', got {condition!r}")
    images, labels = load_digits()
    y = one_hot(labels, 10) if condition == "label" else None
    return images, y, {"name": name, "num_classes": 10, "labels": labels}
