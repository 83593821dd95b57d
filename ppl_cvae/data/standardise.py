"""Elementwise standardisation of ``x`` and ``y``, fitted on the training set."""

from __future__ import annotations

import torch
from torch import nn

from ppl_cvae.errors import ShapeError

__all__ = ["Standardiser"]


class Standardiser(nn.Module):
    """Affine map ``u = (v - mean) / std`` per element of an event of shape ``event_shape``.

    ``mean`` and ``std`` are buffers (saved in the checkpoint's state dict). Elements whose
    training standard deviation is below ``1e-8`` times the largest one keep ``std = 1``, so
    constant features pass through shifted but unscaled.

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one event; inputs are ``(*batch, *event_shape)``.
    """

    # buffers registered in __init__ (declared here for the type checker)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.register_buffer("mean", torch.zeros(self.event_shape))
        self.register_buffer("std", torch.ones(self.event_shape))

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> Standardiser:
        """Set ``mean`` and ``std`` from ``data`` of shape ``(num, *event_shape)``; return self.

        Raises
        ------
        ShapeError
            If ``data`` is not ``(num, *event_shape)`` with ``num >= 2``.
        """
        if tuple(data.shape[1:]) != self.event_shape or data.shape[0] < 2:
            raise ShapeError(
                f"standardiser expects (num >= 2, *{self.event_shape}), got {tuple(data.shape)}"
            )
        mean = data.mean(0)
        std = data.std(0)
        tiny = std < 1e-8 * std.max().clamp_min(1e-30)
        self.mean.copy_(mean)
        self.std.copy_(torch.where(tiny, torch.ones_like(std), std))
        return self

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Standardise ``(*batch, *event_shape)`` elementwise."""
        return (v - self.mean) / self.std

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Map standardised values back to physical units; same shape as the input."""
        return u * self.std + self.mean
