"""Builders of the three CVAE networks by network family: a small registry.

``ModelConfig.network`` names a family: how an event is encoded into features and how the
decoder body turns features into ``x``. :func:`build_networks` builds the
:class:`~ppl_cvae.nets.RecognitionNet`, :class:`~ppl_cvae.nets.PriorNet` and
:class:`~ppl_cvae.nets.Decoder` of a configuration from the family's two builders;
:func:`register_network` adds a family (for example a graph or transformer encoder) without
touching the model. Built in: ``"mlp"``, ``"conv1d"``, ``"conv2d"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from torch import nn

from ppl_cvae.errors import ConfigError
from ppl_cvae.nets import blocks
from ppl_cvae.nets.decoder import Decoder
from ppl_cvae.nets.flows import ConditionalFlow, FlowLayerType
from ppl_cvae.nets.prior import PriorNet
from ppl_cvae.nets.recognition import RecognitionNet

if TYPE_CHECKING:  # ppl_cvae.config imports this package: annotations only
    from ppl_cvae.config import ModelConfig

__all__ = [
    "CVAENetworks",
    "NetworkFamily",
    "build_networks",
    "network_names",
    "register_network",
]

EncoderBuilder = Callable[["ModelConfig", tuple[int, ...]], tuple[nn.Module, int]]
"""``(config, event_shape) -> (encoder, width)``: ``(*batch, *event_shape) -> (*batch, width)``."""

BodyBuilder = Callable[["ModelConfig", int, int], nn.Module]
"""``(config, in_width, num_params) -> body``: ``(*batch, in_width)`` to
``(*batch, prod(x_shape) * num_params)`` or ``(*batch, *x_shape, num_params)``."""


@dataclass(frozen=True)
class NetworkFamily:
    """The two builders of one network family.

    Attributes
    ----------
    encoder : EncoderBuilder
        Feature encoder of an event (``x`` in the recognition net, ``y`` everywhere).
    decoder_body : BodyBuilder
        Decoder body from the first decoder layer's features to the per-element parameters.
    """

    encoder: EncoderBuilder
    decoder_body: BodyBuilder


class CVAENetworks(NamedTuple):
    """The networks of one CVAE (Sohn et al. 2015): recognition net, prior net, decoder."""

    recognition: RecognitionNet | None
    prior: PriorNet | None
    decoder: Decoder


def _first_width(config: ModelConfig) -> int:
    return config.hidden_dims[0] if config.hidden_dims else config.feature_dim


def _mlp_encoder(config: ModelConfig, shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    width = config.hidden_dims[-1] if config.hidden_dims else config.feature_dim
    enc = blocks.FlattenMLP(shape, width, config.hidden_dims[:-1], config.activation)
    return nn.Sequential(enc, blocks.make_activation(config.activation)), width


def _conv1d_encoder(config: ModelConfig, shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    enc = blocks.Conv1dEncoder(shape, config.feature_dim, config.conv_channels, config.activation)
    return nn.Sequential(enc, blocks.make_activation(config.activation)), config.feature_dim


def _conv2d_encoder(config: ModelConfig, shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    if blocks.image_shape(shape) is None:  # a data vector beside an image x: an MLP encoder
        return _mlp_encoder(config, shape)
    enc = blocks.Conv2dEncoder(shape, config.feature_dim, config.conv_channels, config.activation)
    return nn.Sequential(enc, blocks.make_activation(config.activation)), config.feature_dim


def _mlp_body(config: ModelConfig, width: int, num_params: int) -> nn.Module:
    return blocks.mlp(width, config.hidden_dims[1:], config.x_dim * num_params, config.activation)


def _conv1d_body(config: ModelConfig, width: int, num_params: int) -> nn.Module:
    return blocks.Conv1dDecoder(
        width, config.x_shape, config.conv_channels, config.activation, num_params
    )


def _conv2d_body(config: ModelConfig, width: int, num_params: int) -> nn.Module:
    return blocks.Conv2dDecoder(
        width,
        config.x_shape,
        config.conv_channels,
        config.activation,
        num_params,
        extra_channels=config.y_maps if config.y_shape is not None else 0,
    )


_FAMILIES: dict[str, NetworkFamily] = {
    "mlp": NetworkFamily(_mlp_encoder, _mlp_body),
    "conv1d": NetworkFamily(_conv1d_encoder, _conv1d_body),
    "conv2d": NetworkFamily(_conv2d_encoder, _conv2d_body),
}


def network_names() -> tuple[str, ...]:
    """Return the registered family names (valid values of ``ModelConfig.network``)."""
    return tuple(_FAMILIES)


def register_network(name: str, family: NetworkFamily, *, replace: bool = False) -> None:
    """Register a network family under ``name`` (then ``ModelConfig(network=name)`` is valid).

    Parameters
    ----------
    name : str
        Family name; a Python identifier.
    family : NetworkFamily
        Its encoder and decoder-body builders.
    replace : bool, default False
        Allow replacing an existing family.

    Raises
    ------
    ConfigError
        If ``name`` is not an identifier, is taken and ``replace`` is False, or ``family`` is
        not a :class:`NetworkFamily`.

    Notes
    -----
    A checkpoint stores the family name, so the module that registers a family must be
    imported before such a checkpoint is loaded.

    Examples
    --------
    >>> register_network("mlp2", NetworkFamily(_mlp_encoder, _mlp_body))
    >>> "mlp2" in network_names()
    True
    >>> del _FAMILIES["mlp2"]
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"a network family name must be a Python name, got {name!r}")
    if name in _FAMILIES and not replace:
        raise ConfigError(f"network family {name!r} exists; pass replace=True to replace it")
    if not isinstance(family, NetworkFamily):
        raise ConfigError(f"family must be a NetworkFamily, got {type(family).__name__}")
    _FAMILIES[name] = family


def build_networks(config: ModelConfig) -> CVAENetworks:
    """Build the recognition net, prior net and decoder that ``config`` describes.

    Parameters
    ----------
    config : ModelConfig
        Architecture; ``config.network`` picks the family.

    Returns
    -------
    CVAENetworks
        ``prior`` is None for ``prior="standard_normal"``; ``recognition`` and ``prior`` are
        None for ``latent_dim=0`` (no latent). With ``y_embedding="shared"`` one ``y`` encoder
        module is shared by all three networks. ``likelihood="flow"`` and ``prior="flow"`` get
        a :class:`~ppl_cvae.nets.ConditionalFlow` with ``flow_layers`` (on ``x``) or
        ``prior_flow_layers`` (on ``z``, of type ``prior_flow_type``, with the final
        elementwise spline that ``prior_flow_final`` asks for) layers, ``flow_bins`` bins and
        ``flow_hidden_dims`` as the widths of its conditioning networks.

    Raises
    ------
    ConfigError
        If ``config.network`` is not registered.

    Notes
    -----
    Modules are created in a fixed order (recognition net, prior net, decoder; within the
    decoder: ``y`` encoder, first layer, linear skip, ``y`` maps, body, scale body), so a
    seeded build gives the same weights from one version to the next.

    Examples
    --------
    >>> from ppl_cvae.config import ModelConfig
    >>> nets = build_networks(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
    >>> type(nets.prior).__name__
    'PriorNet'
    """
    family = _FAMILIES.get(config.network)
    if family is None:
        raise ConfigError(f"unknown network {config.network!r}; expected one of {network_names()}")
    y_shape = config.y_shape
    shared: list[tuple[nn.Module, int]] = []

    def y_encoder() -> tuple[nn.Module | None, int]:
        if y_shape is None:
            return None, 0
        if config.y_embedding != "shared":
            return family.encoder(config, y_shape)
        if not shared:  # one module, registered under each network that uses it
            shared.append(family.encoder(config, y_shape))
        return shared[0]

    def flow(
        dim: int,
        context_dim: int,
        num_layers: int,
        layer_type: FlowLayerType = "autoregressive",
        final_spline: bool | None = None,
    ) -> ConditionalFlow:
        return ConditionalFlow(
            dim,
            context_dim,
            num_layers,
            config.flow_hidden_dims,
            config.flow_bins,
            layer_type,
            final_spline,
        )

    recognition = None
    if config.latent_dim > 0:
        x_enc, x_width = family.encoder(config, config.x_shape)
        rec_y, rec_y_width = y_encoder()
        recognition = RecognitionNet(
            x_enc, x_width, rec_y, rec_y_width, config.latent_dim, config.activation
        )
    prior = None
    if config.prior in ("learned", "flow") and config.latent_dim > 0:
        prior_y, prior_width = y_encoder()
        if prior_y is None:  # ModelConfig refuses a learned prior without y
            raise ConfigError("a learned prior net needs y (use prior='standard_normal')")
        prior_flow = None
        if config.prior == "flow":
            final = {"auto": None, "spline": True, "none": False}[config.prior_flow_final]
            prior_flow = flow(
                config.latent_dim,
                prior_width,
                config.prior_flow_layers,
                config.prior_flow_type,
                final,
            )
        prior = PriorNet(prior_y, prior_width, config.latent_dim, prior_flow)

    dec_y, dec_y_width = y_encoder()
    width = _first_width(config)
    input_layer = blocks.ConditionalInput(config.latent_dim, dec_y_width, width, config.activation)
    # parameters per element of x: loc and raw scale; K class logits; or one loc / logit
    num_params = {"gaussian_decoder": 2, "categorical": config.num_facies}.get(config.likelihood, 1)
    skip = None
    if config.linear_skip and y_shape is not None:
        # zero at the start: the part of E[x | y] linear in y needs no hidden layer
        skip_width = config.x_dim * (num_params if config.likelihood == "categorical" else 1)
        skip = nn.Linear(math.prod(y_shape), skip_width)
        nn.init.zeros_(skip.weight)
        nn.init.zeros_(skip.bias)
    y_maps = None
    if config.y_maps and y_shape is not None:  # after the skip: seeded builds keep their weights
        y_maps = nn.Linear(math.prod(y_shape), config.y_maps * math.prod(config.x_shape[-2:]))
    scale_body = None
    x_flow = None
    body: nn.Module
    if config.likelihood == "flow":  # the flow's context is the first layer's output
        body = nn.Identity()
        x_flow = flow(config.basis_dim or config.x_dim, width, config.flow_layers)
    elif config.basis_dim is not None:
        rest = config.hidden_dims[1:]
        body = blocks.mlp(width, rest, config.basis_dim, config.activation)
        if config.likelihood == "gaussian_decoder":
            scale_body = blocks.mlp(width, rest, config.x_dim, config.activation)
    else:
        body = family.decoder_body(config, width, num_params)
    decoder = Decoder(
        input_layer,
        body,
        config.x_shape,
        config.likelihood,
        y_encoder=dec_y,
        skip=skip,
        y_maps=y_maps,
        scale_body=scale_body,
        basis_dim=config.basis_dim,
        init_scale=config.init_scale,
        scale_gain=config.scale_gain,
        noise_rank=config.noise_rank,
        flow=x_flow,
    )
    return CVAENetworks(recognition, prior, decoder)
