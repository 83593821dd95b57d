"""Decoder ``p_theta(x | z, y)``: the generation net, in standardised units."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ppl_cvae._choices import DECODER_LIKELIHOODS
from ppl_cvae.errors import ConfigError
from ppl_cvae.nets.blocks import SCALE_FLOOR, ConditionalInput
from ppl_cvae.nets.flows import ConditionalFlow

__all__ = ["Decoder", "DECODER_LIKELIHOODS"]


class Decoder(nn.Module):
    """Return the parameters of ``p_theta(x | z, y)`` in standardised units.

    The first layer ``h = act(W_z z + W_y f_y(y) + b)``
    (:class:`~ppl_cvae.nets.ConditionalInput`) feeds a body that outputs, per element of
    ``x``, the location (or Bernoulli logit) and, for ``likelihood="gaussian_decoder"``, a raw
    scale, or for ``likelihood="categorical"`` ``K`` class logits; or, for a basis decoder,
    ``basis_dim`` coefficients of a fixed linear basis.

    Parameters
    ----------
    input_layer : ConditionalInput
        ``(z, f_y(y)) -> h``, shapes ``(*sample, batch, latent_dim)``, ``(batch, y_width)``
        -> ``(*sample, batch, width)``.
    body : nn.Module
        ``h -> (*sample, batch, prod(x_shape) * num_params)`` or
        ``(*sample, batch, *x_shape, num_params)``; for a basis decoder
        ``(*sample, batch, basis_dim)``. ``num_params`` is 2 for ``gaussian_decoder``, ``K``
        (the number of classes) for ``categorical``, else 1.
    x_shape : tuple of int
        Event shape of ``x``.
    likelihood : {"gaussian", "gaussian_decoder", "gaussian_fixed", "gaussian_lowrank", \
"gaussian_full", "bernoulli", "categorical", "flow"}
        Which scale the decoder provides (see Returns of :meth:`forward`).
    y_encoder : nn.Module, optional
        Feature encoder of the standardised ``y`` (None for an unconditional VAE).
    skip : nn.Linear, optional
        Linear map ``prod(y_shape) -> prod(x_shape)`` of the standardised ``y`` added to the
        location (or logit), ``prod(y_shape) -> prod(x_shape) * K`` for ``categorical`` (added
        to the ``K`` logits); initialised at zero by the builder.
    y_maps : nn.Linear, optional
        Linear map ``prod(y_shape) -> C H W`` of the standardised ``y``: ``C`` maps of ``x``'s
        grid ``(H, W)`` handed to ``body`` as its second argument, shape ``(batch, C, H, W)``
        (``ModelConfig.y_maps``; a :class:`~ppl_cvae.nets.blocks.Conv2dDecoder` built with
        ``extra_channels=C``).
    scale_body : nn.Module, optional
        For a basis decoder with ``gaussian_decoder``: ``h -> (*sample, batch, prod(x_shape))``
        raw scales.
    basis_dim : int, optional
        Number of basis coefficients the body returns (a basis decoder).
    init_scale : float, default 0.05
        Initial scale for ``likelihood="gaussian"`` (standardised units); see Notes.
    scale_gain : float, default 10.0
        Gain ``g`` of the learned log-scale for ``likelihood="gaussian"``,
        ``"gaussian_lowrank"`` and ``"gaussian_full"``.
    noise_rank : int, default 8
        Columns of the learned noise factor ``W`` for ``likelihood="gaussian_lowrank"``.
    flow : ConditionalFlow, optional
        Required for ``likelihood="flow"``: a flow on the flattened standardised ``x``
        (``dim=prod(x_shape)``), or for a basis decoder on its standardised coefficients
        (``dim=basis_dim``), whose context is the first layer's output ``h`` (``body`` is
        then unused: pass ``nn.Identity()``); see :meth:`flow_distribution`.

    Raises
    ------
    ConfigError
        If ``likelihood`` is unknown, ``init_scale`` is not above ``SCALE_FLOOR``, or a flow is
        missing for (or given to a decoder other than) ``likelihood="flow"``.

    Notes
    -----
    Scales, in standardised units: ``gaussian`` (and the diagonal part ``d`` of
    ``gaussian_lowrank``): one learned ``exp(g * r) + SCALE_FLOOR`` per element (``r`` starts
    where the scale is ``init_scale``: a small start makes the reconstruction term use ``z``
    before the noise absorbs the spread, Bowman et al. 2016); ``gaussian_decoder``:
    ``softplus(raw(z, y)) + SCALE_FLOOR``; ``gaussian_fixed`` and ``bernoulli``: none (the model
    sets a fixed physical scale, or has no scale); ``categorical``: none (the logits are the
    whole distribution: ``softmax`` over the last axis gives the class probabilities).
    ``gaussian_lowrank`` adds the factor ``W`` of
    shape ``(prod(x_shape), noise_rank)`` (:meth:`noise_factor`): noise ``W e + d * eps`` with
    ``e ~ N(0, I_rank)``, ``eps ~ N(0, I)``, the same for every ``(z, y)`` (a factor-analysis
    noise model, Bishop 2006, sec. 12.2.4). It starts at ``0.01`` times a standard normal draw:
    at ``W = 0`` the gradient of the likelihood with respect to ``W`` vanishes.
    ``gaussian_full``: a learned lower-triangular ``L`` of shape ``(prod(x_shape),) * 2`` with
    diagonal ``exp(g * r) + SCALE_FLOOR`` (:meth:`scale_tril`), noise ``L eps``, the same for
    every ``(z, y)``: any noise covariance ``L L^T``, for example the part of a
    linear-Gaussian posterior covariance that the latent does not carry (the whole of it,
    which does not depend on ``y``). Its strictly lower part starts at zero.

    References
    ----------
    Sohn, Lee and Yan (2015), Learning Structured Output Representation using Deep Conditional
    Generative Models, NeurIPS (the generation network ``p_theta(y | x, z)`` in their notation).

    Examples
    --------
    >>> dec = Decoder(ConditionalInput(2, 0, 8, "relu"), nn.Linear(8, 3), (3,), "gaussian")
    >>> loc, scale = dec(torch.zeros(5, 4, 2), None)
    >>> tuple(loc.shape), tuple(scale.shape)  # one learned scale per element of x
    ((5, 4, 3), (3,))
    """

    def __init__(
        self,
        input_layer: ConditionalInput,
        body: nn.Module,
        x_shape: tuple[int, ...],
        likelihood: str,
        *,
        y_encoder: nn.Module | None = None,
        skip: nn.Linear | None = None,
        y_maps: nn.Linear | None = None,
        scale_body: nn.Module | None = None,
        basis_dim: int | None = None,
        init_scale: float = 0.05,
        scale_gain: float = 10.0,
        noise_rank: int = 8,
        flow: ConditionalFlow | None = None,
    ) -> None:
        super().__init__()
        if likelihood not in DECODER_LIKELIHOODS:
            raise ConfigError(
                f"unknown likelihood {likelihood!r}; expected one of {DECODER_LIKELIHOODS}"
            )
        if (flow is None) == (likelihood == "flow"):
            raise ConfigError("a flow decoder needs a ConditionalFlow, and only it takes one")
        self.y_encoder = y_encoder
        self.input = input_layer
        self.skip = skip
        self.body = body
        self.y_maps = y_maps
        self.scale_body = scale_body
        self.x_shape = tuple(x_shape)
        self.likelihood = likelihood
        self.basis_dim = basis_dim
        self.scale_gain = float(scale_gain)
        self.flow = flow
        self.raw_scale: nn.Parameter | None = None
        self.cov_factor: nn.Parameter | None = None
        self.tril_raw: nn.Parameter | None = None
        if likelihood == "gaussian_lowrank":
            x_dim = math.prod(self.x_shape)
            self.cov_factor = nn.Parameter(0.01 * torch.randn(x_dim, noise_rank))
        if likelihood == "gaussian_full":
            x_dim = math.prod(self.x_shape)
            self.tril_raw = nn.Parameter(torch.zeros(x_dim, x_dim))
        if likelihood in ("gaussian", "gaussian_lowrank", "gaussian_full"):
            if not init_scale > SCALE_FLOOR:
                raise ConfigError(f"init_scale must be above {SCALE_FLOOR}, got {init_scale}")
            raw = math.log(init_scale - SCALE_FLOOR) / self.scale_gain
            self.raw_scale = nn.Parameter(torch.full(self.x_shape, raw))

    def forward(
        self, z: torch.Tensor, y_std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(loc, scale)`` of ``x`` in standardised units.

        Parameters
        ----------
        z : Tensor, shape (*sample, batch, latent_dim)
        y_std : Tensor, shape (batch, *y_shape), or None
            Standardised observations (None for an unconditional VAE).

        Returns
        -------
        loc : Tensor, shape (*sample, batch, *x_shape) or (*sample, batch, basis_dim)
            Standardised location (the logit for ``bernoulli``), or the standardised basis
            coefficients for a basis decoder; for ``categorical`` the class logits, shape
            ``(*sample, batch, *x_shape, K)``.
        scale : Tensor, shape (*sample, batch, *x_shape) or (*x_shape,), or None
            Standardised scale: per element for ``gaussian`` (broadcasts; for
            ``gaussian_lowrank`` the diagonal part ``d``), per draw for ``gaussian_decoder``;
            None for ``gaussian_fixed``, ``bernoulli`` and ``categorical``.
        """
        if self.flow is not None:
            raise ConfigError("a flow decoder has no (loc, scale); use flow_distribution()")
        h = self._features(z, y_std)
        batch = h.shape[:-1]
        raw: torch.Tensor | None = None
        if self.basis_dim is not None:
            loc = self.body(h)
            if self.scale_body is not None:
                raw = self.scale_body(h).reshape(*batch, *self.x_shape)
        else:
            if self.y_maps is not None and y_std is not None:
                maps = self.y_maps(y_std.flatten(start_dim=1))
                maps = maps.reshape(len(maps), -1, *self.x_shape[-2:])  # (batch, C, H, W)
                params = self.body(h, maps).reshape(*batch, *self.x_shape, -1)
            else:
                params = self.body(h).reshape(*batch, *self.x_shape, -1)
            if self.likelihood == "categorical":  # K logits per element, all of them the loc
                loc = params
                if self.skip is not None and y_std is not None:
                    skip = self.skip(y_std.flatten(start_dim=1))
                    loc = loc + skip.reshape(-1, *self.x_shape, params.shape[-1])
                return loc, None
            loc = params[..., 0]
            if self.skip is not None and y_std is not None:
                skip = self.skip(y_std.flatten(start_dim=1)).reshape(-1, *self.x_shape)
                loc = loc + skip
            raw = params[..., 1] if params.shape[-1] == 2 else None
        if self.raw_scale is not None:  # gaussian; the diagonal of gaussian_lowrank/_full
            return loc, self.diagonal_scale()
        if self.likelihood == "gaussian_decoder":
            if raw is None:
                raise ConfigError("likelihood 'gaussian_decoder' needs a decoder scale output")
            return loc, F.softplus(raw) + SCALE_FLOOR
        return loc, None

    def _features(self, z: torch.Tensor, y_std: torch.Tensor | None) -> torch.Tensor:
        hy = self.y_encoder(y_std) if self.y_encoder is not None else None
        return self.input(z, hy)  # the y part is computed once per observation

    def flow_distribution(
        self, z: torch.Tensor, y_std: torch.Tensor | None
    ) -> dist.TransformedDistribution:
        """Return the flow ``p(x_std | z, y)`` on the flattened standardised ``x``.

        For a basis decoder the flow is on the standardised basis coefficients instead.

        Parameters
        ----------
        z : Tensor, shape (*sample, batch, latent_dim)
            ``latent_dim`` may be 0 (no latent).
        y_std : Tensor, shape (batch, *y_shape), or None

        Returns
        -------
        pyro.distributions.TransformedDistribution
            Batch shape ``(*sample, batch)``, event shape ``(prod(x_shape),)`` (or
            ``(basis_dim,)``).

        Raises
        ------
        ConfigError
            If the decoder is not a flow decoder.
        """
        if self.flow is None:
            raise ConfigError(f"likelihood {self.likelihood!r} is not a flow")
        return self.flow.distribution(self._features(z, y_std))

    def flow_location(self, z: torch.Tensor, y_std: torch.Tensor | None) -> torch.Tensor:
        """Return the flow's image of its base mean, ``(*sample, batch, prod(x_shape))``.

        Standardised units; see :meth:`ConditionalFlow.location`.
        """
        if self.flow is None:
            raise ConfigError(f"likelihood {self.likelihood!r} is not a flow")
        return self.flow.location(self._features(z, y_std))

    def noise_factor(self) -> torch.Tensor | None:
        """Return ``W``, shape ``(prod(x_shape), noise_rank)``, standardised units (or None).

        Only ``likelihood="gaussian_lowrank"`` has one; see the class Notes.
        """
        return self.cov_factor

    def scale_tril(self) -> torch.Tensor | None:
        """Return ``L``, shape ``(prod(x_shape), prod(x_shape))``, standardised units (or None).

        Only ``likelihood="gaussian_full"`` has one: lower triangular, its diagonal the
        learned per-element scale (:meth:`diagonal_scale`), so ``L`` is a Cholesky factor.
        """
        if self.tril_raw is None:
            return None
        return torch.tril(self.tril_raw, -1) + torch.diag(self.diagonal_scale().reshape(-1))

    def diagonal_scale(self) -> torch.Tensor:
        """Return the learned per-element scale ``exp(g r) + SCALE_FLOOR``, shape ``x_shape``.

        Standardised units; for ``likelihood="gaussian"``, ``"gaussian_lowrank"`` and
        ``"gaussian_full"``.

        Raises
        ------
        ConfigError
            For the other likelihoods, which have no per-element scale parameter.
        """
        if self.raw_scale is None:
            raise ConfigError(f"likelihood {self.likelihood!r} has no per-element scale")
        return torch.exp(self.scale_gain * self.raw_scale) + SCALE_FLOOR
