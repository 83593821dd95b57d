"""Prior net ``p_theta(z | y)``: the conditional prior that posterior sampling runs through."""

from __future__ import annotations

import torch
from torch import nn

from ppl_cvae.nets.blocks import GaussianHead

__all__ = ["PriorNet"]


class PriorNet(nn.Module):
    """Return the location and scale of the Gaussian ``p_theta(z | y)``.

    Parameters
    ----------
    y_encoder : nn.Module
        Feature encoder of ``y``: ``(*batch, *y_shape) -> (*batch, y_width)``.
    y_width : int
        Width of its features.
    latent_dim : int
        Dimension of ``z``.

    Notes
    -----
    ``p_theta(z | y) = Normal(mu(f_y(y)), sigma(f_y(y)))`` with
    ``sigma = softplus(raw) + SCALE_FLOOR``. A model with ``prior="standard_normal"`` has no
    prior net (``N(0, I)``).

    References
    ----------
    Sohn, Lee and Yan (2015), Learning Structured Output Representation using Deep Conditional
    Generative Models, NeurIPS (the prior network ``p_theta(z | x)`` in their notation).

    Examples
    --------
    >>> net = PriorNet(nn.Linear(2, 4), 4, 3)
    >>> [tuple(t.shape) for t in net(torch.zeros(6, 2))]
    [(6, 3), (6, 3)]
    """

    def __init__(self, y_encoder: nn.Module, y_width: int, latent_dim: int) -> None:
        super().__init__()
        self.y_encoder = y_encoder
        self.gauss = GaussianHead(y_width, latent_dim)

    def forward(self, y_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``, each ``(batch, latent_dim)``, of standardised ``y_std``.

        Parameters
        ----------
        y_std : Tensor, shape (batch, *y_shape)
            Standardised observations.
        """
        return self.gauss(self.y_encoder(y_std))
