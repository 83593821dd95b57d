"""Binary channelised facies: sinuous channels of one value in a background of another.

The ``prior="channels"`` prior of the ``crosshole`` problem. Channel count, orientations,
widths and sinuosity amplitudes are constructor arguments of :class:`ChannelField`; its
defaults are those of the generator that lived in ``ppl_cvae.problems.crosshole`` before it
moved here, and reproduce its draws bit for bit for the same generator.

Coordinate convention: axis 0 of a field is depth (positive downward), axis 1 is horizontal
offset; angles are measured from the offset axis towards depth, in degrees, so 0 is a channel
running left to right and 90 one running top to bottom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.priors._checks import check_num_draws, is_number

__all__ = ["ChannelField"]

# (low, span) of the default width and amplitude as fractions of the section size D, kept in
# this form because the draws were computed as (low + span * u) * D
_DEFAULT_WIDTH = (0.08, 0.12)
_DEFAULT_AMPLITUDE = (0.05, 0.10)
_DEFAULT_ANGLES = (0.0, 90.0)
_DEFAULT_ANGLE_SPREAD = 30.0


def _check_count_range(min_value: int, max_value: int, names: tuple[str, str]) -> None:
    """Raise ConfigError unless ``1 <= min_value <= max_value`` are integers (named ``names``)."""
    for key, value in zip(names, (min_value, max_value), strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if min_value > max_value:
        raise ConfigError(
            f"{names[0]} must be <= {names[1]}, got {min_value} > {max_value}; lower "
            f"{names[0]} or raise {names[1]}"
        )


def _check_angles(value: object, name: str) -> tuple[float, ...]:
    """Return ``value`` (a number or a non-empty sequence of finite degrees) as a float tuple."""
    items = [value] if is_number(value) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) == 0:
        raise ConfigError(
            f"{name} must be an angle or a non-empty list of angles in degrees, got {value!r}"
        )
    if not all(is_number(a) and math.isfinite(a) for a in items):
        raise ConfigError(f"{name} must hold finite angles in degrees, got {value!r}")
    return tuple(float(a) for a in items)


def _check_angle_spread(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a number in [0, 90] (degrees)."""
    if not (is_number(value) and 0 <= value <= 90):  # type: ignore[operator]
        raise ConfigError(f"{name} must be a number of degrees in [0, 90], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_interval(value: object, name: str, positive: bool) -> tuple[float, float] | None:
    """Return ``value`` (None, a number or a pair ``(low, high)`` in m) as a pair or None.

    ``positive`` demands ``low > 0``; otherwise ``low >= 0``. A number ``w`` means ``(w, w)``.
    """
    if value is None:
        return None
    pair = [value, value] if is_number(value) else value
    bound = "> 0" if positive else ">= 0"
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ConfigError(
            f"{name} must be None, a length in m or a pair (low, high) in m, got {value!r}"
        )
    low, high = pair
    if not all(is_number(v) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{name} must hold finite lengths in m, got {value!r}")
    if not ((low > 0) if positive else (low >= 0)) or high < low:
        raise ConfigError(f"{name} must satisfy {bound} low <= high (in m), got {value!r}")
    return (float(low), float(high))


class ChannelField:
    """Binary channelised facies: sinuous channels of one value in a background of another.

    Parameters
    ----------
    axes : pair of 1-D sequences of float
        Cell-centre coordinates ``(depth_centres, offset_centres)`` in m (depth positive
        downward); fields have shape ``(len(depth_centres), len(offset_centres))``.
    channel_value, background_value : float
        Value inside and outside the channels, in the field's unit (s/m for slowness).
    min_channels : int, default 1
        Fewest channels in a field, >= 1.
    max_channels : int, default 3
        Most channels in a field, >= ``min_channels``; the count is uniform on
        ``min_channels, ..., max_channels``.
    angles : float or sequence of float, default (0.0, 90.0)
        Mean orientations of the channel axes, in degrees from the offset axis towards depth
        (0: left to right; 90: top to bottom; 45: deepening to the right). Each channel picks
        one of them with equal probability.
    angle_spread : float, default 30.0
        Half-width of the uniform perturbation added to the picked angle, in degrees, in
        [0, 90]; 0 gives channels exactly at the listed angles.
    widths : float or pair of float or None, default None
        Channel width, in m, measured across the channel: ``(low, high)`` draws it uniformly,
        a number fixes it; each > 0. None: ``(0.08 D, 0.2 D)``.
    amplitudes : float or pair of float or None, default None
        Sinuosity amplitude ``A`` of the centreline, in m, as ``(low, high)`` or a number;
        each >= 0 (0 gives straight channels). None: ``(0.05 D, 0.15 D)``. With
        ``high <= D / 4`` every channel crosses the section (see Notes).

    Attributes
    ----------
    shape : tuple of int
        ``(nz, nx)``.
    size : float
        ``D``, the smaller span of the cell centres, in m.
    widths, amplitudes : pair of float
        The ranges in effect, in m (the defaults resolved against ``D``).
    angles : tuple of float
        The mean orientations, in degrees.

    Raises
    ------
    ConfigError
        If there are not two non-empty axes, a channel count is not a positive integer or
        ``min_channels > max_channels``, ``angles`` is empty or not finite, ``angle_spread``
        is outside [0, 90], or ``widths`` / ``amplitudes`` is not a number or an ordered pair
        of finite lengths (widths > 0, amplitudes >= 0). The message names the argument.

    Notes
    -----
    Let ``D`` be the smaller span of the cell centres and ``(u, v)`` coordinates along and
    across a channel axis through the section centre, the axis at angle ``theta`` to the offset
    direction. A field has ``K ~ U{min_channels, ..., max_channels}`` channels; for each,
    independently:

    - ``theta = a + U(-s, s)`` with ``a`` drawn uniformly from ``angles`` and ``s`` =
      ``angle_spread`` (defaults: the channel runs roughly left-to-right or top-to-bottom);
    - centreline ``v_c(u) = v0 + A sin(2 pi u / lambda + phi)`` with ``v0 ~ U(-D/4, D/4)``,
      ``A ~ U(amplitudes)``, ``lambda ~ U(0.5, 1.5) D``, ``phi ~ U(0, 2 pi)``;
    - width ``w ~ U(widths)``; a cell centre is channel when its distance to the centreline,
      approximated to first order by ``|v - v_c(u)| / sqrt(1 + v_c'(u)^2)``, is at most
      ``w / 2``.

    ``|v0| + A < D/2`` (true when ``A <= D/4``, as by default) puts the centreline point at
    ``u = 0`` inside the section, so every channel crosses it. Channels may overlap. A straight
    channel (``A = 0``) at 0 degrees is a band of rows: with cells of side ``c`` m and
    ``w = k c`` it covers ``k`` rows (almost surely). This is a simple, parametric stand-in for
    the training-image channel models of Laloy et al. (2017) and Lopez-Alvis et al. (2021);
    draws are vectorised over fields (a loop over at most ``max_channels`` channels). Every
    field consumes ``8 max_channels`` uniforms of the generator, whatever the options.

    References
    ----------
    Laloy, E., Herault, R., Lee, J., Jacques, D. and Linde, N. (2017). Inversion using a new
    low-dimensional representation of complex binary geological media based on a deep neural
    network. Advances in Water Resources 110, 387-405. doi:10.1016/j.advwatres.2017.09.029

    Lopez-Alvis, J., Laloy, E., Nguyen, F. and Hermans, T. (2021). Deep generative models in
    inversion: the impact of the generator's nonlinearity and development of a new approach
    based on a variational autoencoder. Computers & Geosciences 152, 104762.
    doi:10.1016/j.cageo.2021.104762

    Examples
    --------
    >>> field = ChannelField((range(8), range(8)), channel_value=1.0, background_value=0.0)
    >>> x = field.sample(2, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), sorted(set(x.unique().tolist())) == [0.0, 1.0]
    ((2, 8, 8), True)
    >>> straight = ChannelField(
    ...     (range(8), range(8)), 1.0, 0.0, max_channels=1, angles=0, angle_spread=0,
    ...     widths=2.0, amplitudes=0.0,
    ... )
    >>> straight.sample(1, torch.Generator().manual_seed(0))[0].sum(1).tolist()  # 2 full rows
    [0.0, 0.0, 0.0, 0.0, 8.0, 8.0, 0.0, 0.0]
    """

    def __init__(
        self,
        axes: tuple[Sequence[float], Sequence[float]],
        channel_value: float,
        background_value: float,
        *,
        min_channels: int = 1,
        max_channels: int = 3,
        angles: float | Sequence[float] = _DEFAULT_ANGLES,
        angle_spread: float = _DEFAULT_ANGLE_SPREAD,
        widths: float | Sequence[float] | None = None,
        amplitudes: float | Sequence[float] | None = None,
    ) -> None:
        if len(axes) != 2 or any(len(a) == 0 for a in axes):
            raise ConfigError("a channel field needs two non-empty axes (depth, offset) in m")
        _check_count_range(min_channels, max_channels, ("min_channels", "max_channels"))
        values = (("channel_value", channel_value), ("background_value", background_value))
        for key, value in values:
            if not (is_number(value) and math.isfinite(value)):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
        self.angles = _check_angles(angles, "angles")
        self.angle_spread = _check_angle_spread(angle_spread, "angle_spread")
        width_range = _check_interval(widths, "widths", positive=True)
        amplitude_range = _check_interval(amplitudes, "amplitudes", positive=False)
        self.depth = torch.as_tensor(list(axes[0]), dtype=torch.float64).reshape(-1)
        self.offset = torch.as_tensor(list(axes[1]), dtype=torch.float64).reshape(-1)
        self.shape = (len(self.depth), len(self.offset))
        self.channel_value = float(channel_value)
        self.background_value = float(background_value)
        self.min_channels = min_channels
        self.max_channels = max_channels
        spans = [float(a.max() - a.min()) for a in (self.depth, self.offset)]
        self.size = max(min(spans), 1e-12)  # D, m
        # each range as (low, span, scale): value = (low + span * u) * scale, the form of the
        # original generator for the defaults (relative to D), scale 1 for ranges given in m
        self._width = _affine(width_range, _DEFAULT_WIDTH, self.size)
        self._amplitude = _affine(amplitude_range, _DEFAULT_AMPLITUDE, self.size)
        self.widths = _bounds(self._width)
        self.amplitudes = _bounds(self._amplitude)

    def channel_mask(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` channel indicators; shape ``(num, nz, nx)``, bool (True = channel).

        Raises
        ------
        ConfigError
            If ``num`` is negative.
        """
        check_num_draws(num)
        c = self.max_channels
        k = c - self.min_channels + 1  # number of possible counts
        u = torch.rand(num, c, 8, generator=generator, dtype=torch.float64)
        count = self.min_channels + torch.clamp((u[:, 0, 0] * k).long(), max=k - 1)  # (num,)
        d = self.size
        # angle index: bins of u taken in reverse, so that with the default (0, 90) the old
        # rule "vertical if u < 1/2" gives the same channels
        n_ang = len(self.angles)
        pick = n_ang - 1 - torch.clamp((u[..., 1] * n_ang).long(), max=n_ang - 1)
        mean_theta = torch.tensor([math.radians(a) for a in self.angles], dtype=torch.float64)
        theta = mean_theta[pick] + (u[..., 2] - 0.5) * (2 * math.radians(self.angle_spread))
        v0 = (u[..., 3] - 0.5) * (d / 2)
        low, span, scale = self._amplitude
        amplitude = (low + span * u[..., 4]) * scale
        wavelength = (0.5 + 1.0 * u[..., 5]) * d
        phase = 2 * math.pi * u[..., 6]
        low, span, scale = self._width
        width = (low + span * u[..., 7]) * scale
        # grid arithmetic in float32: halves the cost of the (num, nz, nx) operations
        pz = (self.depth - 0.5 * (self.depth.max() + self.depth.min()))[:, None].float()
        px = (self.offset - 0.5 * (self.offset.max() + self.offset.min()))[None, :].float()
        wavenumber = 2 * math.pi / wavelength
        params = torch.stack(
            [
                torch.cos(theta),
                torch.sin(theta),
                v0,
                amplitude,
                wavenumber,
                amplitude * wavenumber,
                phase,
                (width / 2) ** 2,
            ],
            dim=-1,
        ).float()
        mask = torch.zeros(num, *self.shape, dtype=torch.bool)
        for j in range(c):
            # each (num, 1, 1): broadcast against the (nz, 1) and (1, nx) cell coordinates
            cos, sin, off, amp, kw, max_slope, phi, half_w2 = params[:, j, :, None, None].unbind(1)
            arg = kw * (px * cos + pz * sin) + phi  # along-axis u -> phase of the centreline
            across = pz * cos - px * sin - off - amp * torch.sin(arg)  # v - v_c(u)
            slope = max_slope * torch.cos(arg)  # dv_c / du
            # |v - v_c| / sqrt(1 + slope^2) <= w / 2, squared to avoid the square root
            inside = across.square() <= half_w2 * (1 + slope.square())
            mask |= inside & (count > j)[:, None, None]
        return mask

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` fields; shape ``(num, nz, nx)``, float32, values channel or background.

        Raises
        ------
        ConfigError
            If ``num`` is negative.
        """
        mask = self.channel_mask(num, generator)
        x = torch.full(mask.shape, self.background_value, dtype=torch.float32)
        return x.masked_fill(mask, self.channel_value)


def _affine(
    given: tuple[float, float] | None, default: tuple[float, float], size: float
) -> tuple[float, float, float]:
    """Return ``(low, span, scale)``: a range in m, or the default fractions of ``size``."""
    if given is None:
        return (default[0], default[1], size)
    return (given[0], given[1] - given[0], 1.0)


def _bounds(affine: tuple[float, float, float]) -> tuple[float, float]:
    """Return the ``(low, high)`` range, in m, of ``(low + span * u) * scale``."""
    low, span, scale = affine
    return (low * scale, (low + span) * scale)
