"""Feature encoders, decoders and Gaussian heads shared by all CVAE networks.

Every module here maps inputs with arbitrary leading batch axes: an encoder for an event of
shape ``in_shape`` accepts ``(*batch, *in_shape)`` and returns ``(*batch, out_dim)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from ppl_cvae.errors import ConfigError, ShapeError

__all__ = [
    "ACTIVATIONS",
    "make_activation",
    "mlp",
    "FlattenMLP",
    "Conv1dEncoder",
    "Conv1dDecoder",
    "GaussianHead",
    "ConditionalInput",
    "Conv2dDecoder",
    "Conv2dEncoder",
    "image_shape",
    "SCALE_FLOOR",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}

SCALE_FLOOR = 1e-3
"""Smallest standard deviation a Gaussian head returns (in standardised units)."""


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name.

    Raises
    ------
    ConfigError
        If ``name`` is not in :data:`ACTIVATIONS`.
    """
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str) -> nn.Sequential:
    """Build a multilayer perceptron ``in_dim -> hidden_dims... -> out_dim``.

    The last layer is linear (no activation), so the output is unconstrained.
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden_dims]
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), make_activation(activation)]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


def _flatten_batch(
    t: torch.Tensor, event_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Size]:
    n = len(event_shape)
    if tuple(t.shape[t.dim() - n :]) != tuple(event_shape):
        raise ShapeError(
            f"expected a tensor ending in event shape {tuple(event_shape)}, got {tuple(t.shape)}"
        )
    batch = t.shape[: t.dim() - n]
    return t.reshape(-1, *event_shape), batch


class FlattenMLP(nn.Module):
    """Flatten an event of shape ``in_shape`` and map it through an MLP to ``out_dim`` features.

    Parameters
    ----------
    in_shape : tuple of int
        Event shape of the input.
    out_dim : int
        Number of output features.
    hidden_dims : sequence of int
        Widths of the hidden layers.
    activation : str
        Name in :data:`ACTIVATIONS`.

    Shapes: ``(*batch, *in_shape) -> (*batch, out_dim)``.
    """

    def __init__(
        self, in_shape: tuple[int, ...], out_dim: int, hidden_dims: Sequence[int], activation: str
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.net = mlp(math.prod(self.in_shape), hidden_dims, out_dim, activation)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map ``(*batch, *in_shape)`` to ``(*batch, out_dim)``."""
        flat, batch = _flatten_batch(t, self.in_shape)
        out = self.net(flat.reshape(flat.shape[0], -1))
        return out.reshape(*batch, -1)


def _check_stages(channels: Sequence[int]) -> None:
    """Raise ConfigError if ``channels`` (conv_channels) names no convolution stage."""
    if not channels:
        raise ConfigError("conv_channels must name at least one convolution stage")


def _length_channels(shape: tuple[int, ...]) -> tuple[int, int]:
    core = [s for s in shape if s != 1] if math.prod(shape) > 1 else [1]
    if len(core) == 1:
        return core[0], 1
    if len(core) != 2:
        raise ConfigError(
            f"a 1-D convolutional network needs an event shape of (length, channels) "
            f"up to singleton axes, got {tuple(shape)}"
        )
    return core[0], core[1]


class Conv1dEncoder(nn.Module):
    """1-D convolutional feature encoder for sequence-shaped events (channels last).

    The event shape ``in_shape`` must be ``(length, channels)`` once singleton axes are dropped
    (Two Birds: ``(1, 50, 2)`` is 50 positions x 2 lines). Each stage is a stride-2 convolution
    (kernel 5) plus activation; the result is flattened and mapped linearly to ``out_dim``.

    Shapes: ``(*batch, *in_shape) -> (*batch, out_dim)``.

    Raises
    ------
    ConfigError
        If ``in_shape`` is not of (length, channels) form or ``channels`` is empty.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_dim: int,
        channels: Sequence[int],
        activation: str,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        _check_stages(channels)
        self.in_shape = tuple(in_shape)
        self.length, self.in_channels = _length_channels(self.in_shape)
        layers: list[nn.Module] = []
        c_in, length = self.in_channels, self.length
        for c_out in channels:
            layers += [
                nn.Conv1d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2),
                make_activation(activation),
            ]
            c_in, length = c_out, (length - 1) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in * length, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map ``(*batch, *in_shape)`` to ``(*batch, out_dim)``."""
        flat, batch = _flatten_batch(t, self.in_shape)
        seq = flat.reshape(-1, self.length, self.in_channels).transpose(1, 2)
        out = self.linear(self.conv(seq).flatten(1))
        return out.reshape(*batch, -1)


class Conv1dDecoder(nn.Module):
    """1-D convolutional decoder: features to a (length, channels) event by upsampling.

    A linear layer maps ``in_dim`` features to ``channels[0]`` sequences of length
    ``ceil(length / 2**len(channels))``; each stage doubles the length by linear interpolation
    and applies a convolution (kernel 5) and activation; a final 1x1 convolution gives
    ``out_channels * channels_per_output`` outputs, cropped to ``length``.

    Shapes: ``(*batch, in_dim) -> (*batch, *out_shape, num_params)`` where ``num_params`` is
    the number of distribution parameters per output element.
    """

    def __init__(
        self,
        in_dim: int,
        out_shape: tuple[int, ...],
        channels: Sequence[int],
        activation: str,
        num_params: int = 1,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        _check_stages(channels)
        self.out_shape = tuple(out_shape)
        self.length, self.out_channels = _length_channels(self.out_shape)
        self.num_params = num_params
        chans = list(reversed(channels))
        self.start_length = math.ceil(self.length / 2 ** len(chans))
        self.linear = nn.Linear(in_dim, chans[0] * self.start_length)
        self.act = make_activation(activation)
        stages: list[nn.Module] = []
        c_in = chans[0]
        for c_out in chans:
            stages.append(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv1d(c_in, self.out_channels * num_params, 1)
        self.start_channels = chans[0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Map ``(*batch, in_dim)`` to ``(*batch, *out_shape, num_params)``."""
        batch = h.shape[:-1]
        seq = self.act(self.linear(h.reshape(-1, h.shape[-1])))
        seq = seq.reshape(-1, self.start_channels, self.start_length)
        for conv in self.stages:
            seq = F.interpolate(seq, scale_factor=2.0, mode="linear", align_corners=False)
            seq = self.act(conv(seq))
        out = self.out(seq)[..., : self.length]  # (n, out_channels * num_params, length)
        out = out.reshape(-1, self.out_channels, self.num_params, self.length)
        out = out.permute(0, 3, 1, 2)  # (n, length, channels, num_params)
        return out.reshape(*batch, *self.out_shape, self.num_params)


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """Return ``(channels, height, width)`` if ``shape`` is a 2-D grid event, else None.

    ``(H, W)`` is one channel, ``(C, H, W)`` is channels-first; both sides must be >= 4.
    """
    if len(shape) == 2:
        c, h, w = 1, shape[0], shape[1]
    elif len(shape) == 3:
        c, h, w = shape
    else:
        return None
    return (c, h, w) if h >= 4 and w >= 4 else None


def _checked_grid(
    shape: tuple[int, ...], channels: Sequence[int], what: str
) -> tuple[int, int, int]:
    grid = image_shape(shape)
    if grid is None:
        raise ConfigError(
            f"a 2-D convolutional {what} needs an event shape (H, W) or (C, H, W) with "
            f"H, W >= 4, got {shape}"
        )
    _check_stages(channels)
    return grid


class Conv2dEncoder(nn.Module):
    """2-D convolutional feature encoder for gridded events (images, 2-D model grids).

    The event shape must be ``(H, W)`` or channels-first ``(C, H, W)`` (see
    :func:`image_shape`). Each stage is a stride-2 3x3 convolution plus activation; the result
    is flattened and mapped linearly to ``out_dim``.

    Shapes: ``(*batch, *in_shape) -> (*batch, out_dim)``.

    Raises
    ------
    ConfigError
        If ``in_shape`` is not a grid or ``channels`` is empty.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_dim: int,
        channels: Sequence[int],
        activation: str,
    ) -> None:
        super().__init__()
        grid = _checked_grid(tuple(in_shape), channels, "network")
        self.in_shape = tuple(in_shape)
        self.grid = grid
        c_in, h, w = grid
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), make_activation(activation)]
            c_in, h, w = c_out, (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in * h * w, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map ``(*batch, *in_shape)`` to ``(*batch, out_dim)``."""
        flat, batch = _flatten_batch(t, self.in_shape)
        out = self.linear(self.conv(flat.reshape(-1, *self.grid)).flatten(1))
        return out.reshape(*batch, -1)


class Conv2dDecoder(nn.Module):
    """2-D decoder by bilinear upsampling plus convolution, to a grid event.

    A linear layer maps ``in_dim`` features to ``channels[-1]`` maps of size
    ``ceil(H / 2**n) x ceil(W / 2**n)`` (``n = len(channels)``); each stage doubles the size by
    bilinear interpolation and applies a 3x3 convolution and activation; a 1x1 convolution
    gives ``C * num_params`` maps, cropped to ``H x W``.

    With ``extra_channels > 0`` each stage's convolution also reads ``extra_channels`` maps
    given to :meth:`forward` on the full ``H x W`` grid, average-pooled to the stage's size
    (``ModelConfig.y_maps``: maps computed from ``y``).

    Shapes: ``(*batch, in_dim) -> (*batch, *out_shape, num_params)``; the extra maps
    ``(batch, extra_channels, H, W)``, broadcast over the leading sample axes of ``h``.

    Raises
    ------
    ConfigError
        If ``out_shape`` is not a grid or ``channels`` is empty; from :meth:`forward`, if the
        extra maps are missing or given to a decoder built without them.

    References
    ----------
    Jin, McCann, Froustey and Unser (2017), Deep convolutional neural network for inverse
    problems in imaging, IEEE Transactions on Image Processing 26, 4509 (convolutions on a
    linear inverse of the data: the extra maps).
    """

    def __init__(
        self,
        in_dim: int,
        out_shape: tuple[int, ...],
        channels: Sequence[int],
        activation: str,
        num_params: int = 1,
        extra_channels: int = 0,
    ) -> None:
        super().__init__()
        grid = _checked_grid(tuple(out_shape), channels, "decoder")
        self.out_shape = tuple(out_shape)
        self.grid = grid
        self.num_params = num_params
        self.extra_channels = extra_channels
        chans = list(reversed(channels))
        scale = 2 ** len(chans)
        self.start = (chans[0], math.ceil(grid[1] / scale), math.ceil(grid[2] / scale))
        self.linear = nn.Linear(in_dim, math.prod(self.start))
        self.act = make_activation(activation)
        stages: list[nn.Module] = []
        c_in = chans[0]
        for c_out in chans:
            stages.append(nn.Conv2d(c_in + extra_channels, c_out, 3, padding=1))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(c_in, grid[0] * num_params, 1)

    def forward(self, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``(*batch, in_dim)`` to ``(*batch, *out_shape, num_params)``.

        ``extra``: ``(batch, extra_channels, H, W)`` maps (required when ``extra_channels >
        0``), the same for every leading sample index of ``h``.
        """
        batch = h.shape[:-1]
        if (extra is None) != (self.extra_channels == 0):
            raise ConfigError(
                f"this decoder takes {self.extra_channels} extra maps, got "
                f"{'none' if extra is None else tuple(extra.shape)}"
            )
        maps = self.act(self.linear(h.reshape(-1, h.shape[-1]))).reshape(-1, *self.start)
        if extra is not None:  # zero-padded at the bottom and right, as the output is cropped
            full = 2 ** len(self.stages)
            right = self.start[2] * full - extra.shape[-1]
            extra = F.pad(extra, (0, right, 0, self.start[1] * full - extra.shape[-2]))
        for k, conv in enumerate(self.stages):
            maps = F.interpolate(maps, scale_factor=2.0, mode="bilinear", align_corners=False)
            if extra is not None:  # pooled to this stage's size, repeated over the samples
                factor = 2 ** (len(self.stages) - 1 - k)
                pooled = F.avg_pool2d(extra, factor) if factor > 1 else extra
                pooled = pooled.expand(*batch, *pooled.shape[-3:]).reshape(-1, *pooled.shape[-3:])
                maps = torch.cat([maps, pooled], 1)
            maps = self.act(conv(maps))
        c, height, width = self.grid
        out = self.out(maps)[..., :height, :width]  # (n, C * num_params, H, W)
        out = out.reshape(-1, c, self.num_params, height, width).permute(0, 1, 3, 4, 2)
        return out.reshape(*batch, *self.out_shape, self.num_params)


class ConditionalInput(nn.Module):
    """First decoder layer ``act(W_z z + W_c c + b)`` with the condition part computed once.

    Equal to a linear layer on ``concat(z, c)``, but ``W_c c + b`` is evaluated on the
    condition's own batch and broadcast over the sample axes of ``z``: drawing ``S`` samples
    for ``M`` observations costs ``S * M`` products with ``W_z`` and only ``M`` with ``W_c``.

    Shapes: ``z (*sample, batch, z_dim)``, ``c (batch, c_dim)`` or None ->
    ``(*sample, batch, out_dim)``. With ``z_dim=0`` (no latent) the layer is
    ``act(W_c c + b)``, broadcast over the sample axes of the empty ``z``.
    """

    def __init__(self, z_dim: int, c_dim: int, out_dim: int, activation: str) -> None:
        super().__init__()
        if not z_dim and not c_dim:
            raise ConfigError("a decoder input layer needs a latent or a condition (both are 0)")
        self.z_part = nn.Linear(z_dim, out_dim) if z_dim else None
        self.c_part = nn.Linear(c_dim, out_dim, bias=not z_dim) if c_dim else None
        self.act = make_activation(activation)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Return ``act(W_z z + W_c c + b)``, broadcasting the condition over sample axes."""
        if self.z_part is None:  # no latent: the condition alone, on z's sample axes
            assert self.c_part is not None and c is not None
            h = self.c_part(c)
            return self.act(h.expand(*z.shape[:-1], h.shape[-1]))
        h = self.z_part(z)
        if self.c_part is not None:
            h = h + self.c_part(c)
        return self.act(h)


class GaussianHead(nn.Module):
    """Map features to the location and scale of a diagonal Gaussian over ``out_dim`` values.

    ``scale = softplus(raw) + SCALE_FLOOR`` keeps the scale positive and bounded away from 0.

    Shapes: ``(*batch, in_dim) -> ((*batch, out_dim), (*batch, out_dim))``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``, each ``(*batch, out_dim)``; ``scale > SCALE_FLOOR``."""
        loc, raw = self.linear(h).chunk(2, dim=-1)
        return loc, F.softplus(raw) + SCALE_FLOOR
