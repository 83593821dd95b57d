"""Recognition net ``q_phi(z | x, y)``: the encoder of the amortized training guide."""

from __future__ import annotations

import torch
from torch import nn

from ppl_cvae.nets.blocks import GaussianHead, make_activation

__all__ = ["RecognitionNet"]


class RecognitionNet(nn.Module):
    """Return the location and scale of the Gaussian ``q_phi(z | x, y)``.

    ``q_phi(z | x, y) = Normal(mu(x, y), sigma(x, y))`` with features
    ``h = act(W [f_x(x), f_y(y)] + b)`` of the standardised ``x`` and ``y``.

    Parameters
    ----------
    x_encoder : nn.Module
        Feature encoder of ``x``: ``(*batch, *x_shape) -> (*batch, x_width)``.
    x_width : int
        Width of its features.
    y_encoder : nn.Module or None
        Feature encoder of ``y``: ``(*batch, *y_shape) -> (*batch, y_width)``; None for an
        unconditional VAE (then ``y_width`` is 0).
    y_width : int
        Width of its features.
    latent_dim : int
        Dimension of ``z``.
    activation : str
        Activation after the joint layer (a name of ``ppl_cvae.nets.ACTIVATIONS``).

    Notes
    -----
    The networks return distribution parameters and never sample; ``scale`` is
    ``softplus(raw) + SCALE_FLOOR`` (see :class:`~ppl_cvae.nets.GaussianHead`).

    References
    ----------
    Sohn, Lee and Yan (2015), Learning Structured Output Representation using Deep Conditional
    Generative Models, NeurIPS (the recognition network ``q_phi(z | x, y)``).

    Examples
    --------
    >>> net = RecognitionNet(nn.Linear(3, 8), 8, nn.Linear(2, 4), 4, 5, "relu")
    >>> [tuple(t.shape) for t in net(torch.zeros(7, 3), torch.zeros(7, 2))]
    [(7, 5), (7, 5)]
    """

    def __init__(
        self,
        x_encoder: nn.Module,
        x_width: int,
        y_encoder: nn.Module | None,
        y_width: int,
        latent_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.x_encoder = x_encoder
        self.y_encoder = y_encoder
        self.head = nn.Sequential(
            nn.Linear(x_width + y_width, x_width), make_activation(activation)
        )
        self.gauss = GaussianHead(x_width, latent_dim)

    def forward(
        self, x_std: torch.Tensor, y_std: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``, each ``(batch, latent_dim)``.

        Parameters
        ----------
        x_std : Tensor, shape (batch, *x_shape)
            Standardised models.
        y_std : Tensor, shape (batch, *y_shape), or None
            Standardised observations (None for an unconditional VAE).
        """
        h = self.x_encoder(x_std)
        if self.y_encoder is not None:
            h = torch.cat([h, self.y_encoder(y_std)], dim=-1)
        return self.gauss(self.head(h))
