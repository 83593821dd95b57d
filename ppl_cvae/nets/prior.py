"""Prior net ``p_theta(z | y)``: the conditional prior that posterior sampling runs through."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ppl_cvae.errors import ConfigError
from ppl_cvae.nets.blocks import GaussianHead
from ppl_cvae.nets.flows import ConditionalFlow

__all__ = ["PriorNet"]


class PriorNet(nn.Module):
    """The conditional prior ``p_theta(z | y)``: a diagonal Gaussian or a conditional flow.

    Parameters
    ----------
    y_encoder : nn.Module
        Feature encoder of ``y``: ``(*batch, *y_shape) -> (*batch, y_width)``.
    y_width : int
        Width of its features.
    latent_dim : int
        Dimension of ``z``.
    flow : ConditionalFlow, optional
        For ``prior="flow"``: a flow on ``z`` with context ``f_y(y)`` (``context_dim=y_width``)
        replaces the Gaussian head.

    Raises
    ------
    ConfigError
        If ``flow`` does not have ``dim=latent_dim``.

    Notes
    -----
    ``p_theta(z | y) = Normal(mu(f_y(y)), sigma(f_y(y)))`` with
    ``sigma = softplus(raw) + SCALE_FLOOR``; with a flow, that Gaussian bent by spline layers
    (:class:`~ppl_cvae.nets.ConditionalFlow`), so that ``p(z | y)`` can have several modes.
    A model with ``prior="standard_normal"`` has no prior net (``N(0, I)``).

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

    def __init__(
        self,
        y_encoder: nn.Module,
        y_width: int,
        latent_dim: int,
        flow: ConditionalFlow | None = None,
    ) -> None:
        super().__init__()
        self.y_encoder = y_encoder
        self.gauss = GaussianHead(y_width, latent_dim) if flow is None else None
        if flow is not None and flow.dim != latent_dim:
            raise ConfigError(f"the prior flow has dim {flow.dim}, expected {latent_dim}")
        self.flow = flow

    def forward(self, y_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``, each ``(batch, latent_dim)``, of standardised ``y_std``.

        Parameters
        ----------
        y_std : Tensor, shape (batch, *y_shape)
            Standardised observations.

        Raises
        ------
        ConfigError
            For a flow prior, which is not a location-scale family (use :meth:`distribution`).
        """
        if self.gauss is None:
            raise ConfigError("a flow prior net has no (loc, scale); use distribution()")
        return self.gauss(self.y_encoder(y_std))

    def distribution(self, y_std: torch.Tensor) -> dist.TorchDistribution:
        """Return ``p(z | y)``: batch shape ``(batch,)``, event shape ``(latent_dim,)``.

        Parameters
        ----------
        y_std : Tensor, shape (batch, *y_shape)
            Standardised observations.
        """
        if self.flow is not None:
            return self.flow.distribution(self.y_encoder(y_std))
        loc, scale = self(y_std)
        return dist.Normal(loc, scale).to_event(1)
