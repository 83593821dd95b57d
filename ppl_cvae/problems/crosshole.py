"""2-D straight-ray crosshole traveltime tomography with a random-field or channelised prior.

Physics
-------
A vertical section between two boreholes is divided into ``nz x nx`` square cells of side
``cell_size`` (m), each with a constant slowness ``s_j`` (s/m, the reciprocal of the P-wave
velocity). Sources sit in the left borehole (offset 0), receivers in the right borehole
(offset ``width = nx * cell_size``). Under the high-frequency, straight-ray approximation
(Aki and Richards 2002; Aster, Borchers and Thurber 2018, crosshole tomography examples) the
traveltime of ray ``i`` is the line integral of slowness along the source-receiver segment,

    t_i = sum_j G_ij s_j,

where ``G_ij`` (m) is the exact length of ray ``i`` inside cell ``j``, computed once by a
Siddon-style walk over the grid lines (Siddon 1985). Observations are ``y = G s(x) + eps``,
``eps ~ N(0, noise_std^2 I)``, with ``y`` in s. Nothing is log-transformed.

The model ``x`` is the slowness itself (``s(x) = x``, s/m) under the random-field prior, and the
facies indicator under the channel prior (0 background, 1 channel; dimensionless): the physical
property per facies is mapped inside the forward operator,
``s(x) = x s_channel + (1 - x) s_background``, so a CVAE generates the discrete geology and the
slowness is a derived quantity (:meth:`Crosshole.derived`; the posterior files carry it as
``slowness``). The map is affine, so a facies probability in [0, 1] gives the expected
slowness and ``F`` of the probability field is the expected traveltime.

Priors
------
The prior is a :class:`~ppl_cvae.problems.priors.GaussianRandomField` of the slowness or a
:class:`~ppl_cvae.problems.priors.ChannelField` of the facies indicator (both in
:mod:`ppl_cvae.problems.priors`), built from the constructor arguments; this module holds only
the survey, the ray tracing, the facies-to-slowness map and the forward operator.

Coordinate convention
---------------------
Depth ``z`` is positive downward with origin at the top of the grid (the top of the section),
offset ``x`` is horizontal with origin at the left borehole. Cell ``(iz, ix)`` spans
``[iz, iz + 1] * cell_size`` in depth and ``[ix, ix + 1] * cell_size`` in offset; a model ``x``
has shape ``(nz, nx)`` and is flattened in C order (flat index ``iz * nx + ix``). Ray
``i = i_source * num_receivers + i_receiver`` runs from ``(source_depth[i], 0)`` to
``(receiver_depth[i], width)``.

References
----------
- Aki, K. and Richards, P. G. (2002). Quantitative Seismology, 2nd ed., University Science Books.
- Siddon, R. L. (1985). Fast calculation of the exact radiological path for a three-dimensional
  CT array. Medical Physics 12(2), 252-255. doi:10.1118/1.595715
- Tarantola, A. (2005). Inverse Problem Theory and Methods for Model Parameter Estimation, SIAM.
- Aster, R. C., Borchers, B. and Thurber, C. H. (2018). Parameter Estimation and Inverse
  Problems, 3rd ed., Elsevier (the crosshole straight-ray tomography examples).
- Laloy, E., Herault, R., Jacques, D. and Linde, N. (2018). Training-image based geostatistical
  inversion using a spatial generative adversarial neural network. Water Resources Research
  54(1), 381-406. doi:10.1002/2017WR022148
- Laloy, E., Herault, R., Lee, J., Jacques, D. and Linde, N. (2017). Inversion using a new
  low-dimensional representation of complex binary geological media based on a deep neural
  network. Advances in Water Resources 110, 387-405. doi:10.1016/j.advwatres.2017.09.029
- Lopez-Alvis, J., Laloy, E., Nguyen, F. and Hermans, T. (2021). Deep generative models in
  inversion: the impact of the generator's nonlinearity and development of a new approach based
  on a variational autoencoder. Computers & Geosciences 152, 104762.
  doi:10.1016/j.cageo.2021.104762
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.distributions import constraints

from ppl_cvae.config import ModelOverrides, Overrides, simulation_schedule
from ppl_cvae.errors import ConfigError, NoPriorDensityError, ShapeError
from ppl_cvae.problems.base import LinearGaussianParts, Problem
from ppl_cvae.problems.priors import (
    CORRELATION_KERNELS,
    ChannelField,
    GaussianRandomField,
    Kernel,
)
from ppl_cvae.problems.priors.channels import (
    _check_angle_spread,
    _check_angles,
    _check_count_range,
    _check_interval,
)
from ppl_cvae.problems.registry import register_problem

__all__ = ["Crosshole", "ray_length_matrix"]

PriorName = Literal["grf", "channels"]
PRIORS: tuple[str, ...] = ("grf", "channels")


def _cell_candidates(
    coord: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the (index, weight) pairs of the cells below and above each coordinate.

    A coordinate strictly inside a cell gives that cell with weight 1 (and a zero-weight
    duplicate); one exactly on a grid line gives the two adjacent cells with weight 1/2 each.
    """
    lower = np.searchsorted(edges, coord, side="left") - 1
    upper = np.searchsorted(edges, coord, side="right") - 1
    on_line = lower != upper
    w_lower = np.where(on_line, 0.5, 0.0)
    w_upper = np.where(on_line, 0.5, 1.0)
    return lower, w_lower, upper, w_upper


def ray_length_matrix(
    start: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    end: Sequence[Sequence[float]] | np.ndarray | torch.Tensor,
    depth_edges: Sequence[float] | np.ndarray | torch.Tensor,
    offset_edges: Sequence[float] | np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """Return the exact length of each straight ray segment inside each cell of a 2-D grid.

    Parameters
    ----------
    start, end : array-like, shape (num_rays, 2)
        End points of the rays as ``(depth, offset)`` pairs, in m (depth positive downward).
        Segments may extend beyond the grid; the parts outside contribute nothing.
    depth_edges : array-like, shape (nz + 1,)
        Strictly increasing depths of the horizontal grid lines, in m.
    offset_edges : array-like, shape (nx + 1,)
        Strictly increasing offsets of the vertical grid lines, in m.

    Returns
    -------
    Tensor, shape (num_rays, nz * nx)
        ``G[i, iz * nx + ix]``: length in m of ray ``i`` inside cell ``(iz, ix)``, float64.

    Raises
    ------
    ShapeError
        If ``start`` and ``end`` are not both ``(num_rays, 2)`` or an edge array is not 1-D.
    ConfigError
        If an edge array has fewer than two values or is not strictly increasing.

    Notes
    -----
    Siddon's (1985) parametrisation: a ray is ``p(a) = start + a (end - start)``, ``a`` in
    [0, 1]. The parameters at which it crosses any grid line, plus 0 and 1, are sorted; between
    two consecutive ones the ray lies in a single cell, found from the midpoint, and the piece
    has length ``(a_{k+1} - a_k) |end - start|``. A piece running exactly along a grid line is
    split equally between the two cells it separates (the limit of rays just above and below).

    References
    ----------
    Siddon, R. L. (1985). Fast calculation of the exact radiological path for a
    three-dimensional CT array. Medical Physics 12(2), 252-255. doi:10.1118/1.595715

    Examples
    --------
    >>> g = ray_length_matrix([[0.5, 0.0]], [[1.5, 2.0]], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    >>> [round(v, 4) for v in g[0].tolist()]  # sqrt(5) m split over cells (0, 0) and (1, 1)
    [1.118, 0.0, 0.0, 1.118]
    """
    p0 = np.asarray(start, dtype=np.float64)
    p1 = np.asarray(end, dtype=np.float64)
    if p0.ndim != 2 or p0.shape[1] != 2 or p0.shape != p1.shape:
        raise ShapeError(
            f"start and end must both have shape (num_rays, 2) of (depth, offset) pairs, got "
            f"{p0.shape} and {p1.shape}"
        )
    edges = []
    for label, values in (("depth_edges", depth_edges), ("offset_edges", offset_edges)):
        e = np.asarray(values, dtype=np.float64)
        if e.ndim != 1:
            raise ShapeError(f"{label} must be 1-D, got shape {e.shape}")
        if e.size < 2 or not np.all(np.diff(e) > 0):
            raise ConfigError(f"{label} must hold >= 2 strictly increasing values, got {e}")
        edges.append(e)
    z_edges, x_edges = edges
    nz, nx = z_edges.size - 1, x_edges.size - 1
    g = np.zeros((p0.shape[0], nz * nx))
    for i in range(p0.shape[0]):
        delta = p1[i] - p0[i]
        length = float(np.hypot(delta[0], delta[1]))
        if length == 0.0:
            continue
        params = [np.array([0.0, 1.0])]
        for axis, e in enumerate(edges):
            if delta[axis] != 0.0:
                a = (e - p0[i, axis]) / delta[axis]
                params.append(a[(a > 0.0) & (a < 1.0)])
        a = np.unique(np.concatenate(params))  # sorted
        pieces = np.diff(a) * length
        mid = p0[i] + 0.5 * (a[:-1] + a[1:])[:, None] * delta  # (num_pieces, 2)
        z_lo, wz_lo, z_hi, wz_hi = _cell_candidates(mid[:, 0], z_edges)
        x_lo, wx_lo, x_hi, wx_hi = _cell_candidates(mid[:, 1], x_edges)
        for iz, wz in ((z_lo, wz_lo), (z_hi, wz_hi)):
            for ix, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
                keep = (wz * wx > 0) & (iz >= 0) & (iz < nz) & (ix >= 0) & (ix < nx)
                np.add.at(g[i], iz[keep] * nx + ix[keep], (pieces * wz * wx)[keep])
    return torch.from_numpy(g)


def _check_positive(**values: float) -> None:
    """Raise ConfigError naming the first value that is not a finite number > 0."""
    for key, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")


def _check_count(**values: int) -> None:
    """Raise ConfigError naming the first value that is not a positive integer."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _borehole_depths(num: int, num_cells: int, cell_size: float) -> torch.Tensor:
    """Return ``num`` depths spread evenly from the top to the bottom cell centre, in m."""
    if num == 1:
        return torch.tensor([0.5 * num_cells * cell_size], dtype=torch.float64)
    return torch.linspace(0.5 * cell_size, (num_cells - 0.5) * cell_size, num, dtype=torch.float64)


@register_problem("crosshole")
class Crosshole(Problem):
    """Straight-ray crosshole traveltime tomography: slowness or facies grid to first arrivals.

    Parameters
    ----------
    prior : {"grf", "channels"}, default "grf"
        ``"grf"``: ``x`` is the slowness (s/m) with a stationary Gaussian random field prior
        (the problem is then linear-Gaussian, see :meth:`linear_gaussian`). ``"channels"``:
        ``x`` is the facies indicator (0 background, 1 channel; float32, dimensionless) of
        binary sinuous channels (:class:`~ppl_cvae.problems.priors.ChannelField`), mapped to
        slowness inside :meth:`forward` (:meth:`slowness_of`); the slowness is a derived
        quantity (:meth:`derived`) and the recommended likelihood is ``"bernoulli"``.
    num_depth_cells, num_offset_cells : int, default 32
        Grid size ``nz`` (rows, along depth) and ``nx`` (columns, along offset).
    cell_size : float, default 1.0
        Side of the square cells, in m (default section: 32 m deep, 32 m between boreholes).
    num_sources, num_receivers : int, default 16
        Sources in the left and receivers in the right borehole, spread evenly from the depth
        of the top to that of the bottom cell centre (one source or receiver sits at mid-depth);
        every pair is a ray, ``num_rays = num_sources * num_receivers``.
    noise_std : float, default 5e-5
        Standard deviation of the Gaussian traveltime noise, in s (0.05 ms: a first-break
        picking error, 0.3 % of the 16 ms horizontal traveltime at 2000 m/s, about 1/20 of the
        prior spread of the traveltimes under the default random field).
    mean_slowness : float, default 5e-4
        Mean of the random field, in s/m (2000 m/s).
    slowness_std : float, default 5e-5
        Standard deviation of the random field, in s/m (10 % of the mean; the sill is its
        square).
    correlation_length : float, default 8.0
        Correlation length of the random field, in m.
    kernel : {"exponential", "gaussian", "matern32", "matern52"}, default "exponential"
        Correlation function of the random field
        (:class:`~ppl_cvae.problems.priors.GaussianRandomField`).
    channel_slowness : float, default 1/2400
        Slowness inside the channels (sand, 2400 m/s), in s/m.
    background_slowness : float, default 1/1800
        Slowness of the background (shale, 1800 m/s), in s/m.
    min_channels, max_channels : int, default 1 and 3
        Channel count per field, uniform on ``min_channels..max_channels``;
        ``1 <= min_channels <= max_channels``.
    channel_angles : float or sequence of float, default (0.0, 90.0)
        Mean orientations of the channels, in degrees from the offset axis towards depth
        (0: horizontal, left to right; 90: vertical); each channel picks one uniformly.
    channel_angle_spread : float, default 30.0
        Half-width of the uniform perturbation of each channel's angle, in degrees, in [0, 90].
    channel_widths : float or pair of float or None, default None
        Channel width in m, fixed (a number) or uniform on ``(low, high)``, > 0; None gives
        ``(0.08 D, 0.2 D)`` with ``D = (min(nz, nx) - 1) cell_size`` the smaller span of the
        cell centres (2.48-6.2 m on the default grid).
    channel_amplitudes : float or pair of float or None, default None
        Sinuosity amplitude of the channel centrelines in m, fixed or uniform on
        ``(low, high)``, >= 0 (0: straight channels); None gives ``(0.05 D, 0.15 D)``.

        The ``channel_*``, ``min_channels`` and ``max_channels`` arguments shape the channel
        prior only (they are checked, and recorded by :meth:`spec`, whatever ``prior``); the
        defaults give the same draws as before these options existed.

    Attributes
    ----------
    matrix : Tensor, shape (num_rays, nz * nx)
        Ray-length matrix ``G`` in m, float32 (C-order cells).
    source_depth, receiver_depth : Tensor, shape (num_rays,)
        Source and receiver depth of every ray, in m, float32.
    source_depths, receiver_depths : Tensor, shape (num_sources,) and (num_receivers,)
        Borehole positions, in m, float32.
    units : dict of str
        ``x`` in s/m (``"1"``, dimensionless, for the facies indicator of the channel prior,
        whose derived ``slowness`` is in s/m), ``y`` in s, ``depth``, ``offset`` and the ray
        end points in m; ``ray`` is an index.
    extra_coords : dict
        ``source_depth``, ``source_offset``, ``receiver_depth``, ``receiver_offset``: the end
        points of every ray, in m, as ``("ray", values)`` coordinates of the ``ray`` dim
        (sources in the left borehole at offset 0, receivers in the right one at ``width``).

    Raises
    ------
    ConfigError
        If ``prior`` or ``kernel`` is unknown, a count is not a positive integer, a length,
        slowness or standard deviation is not a finite number > 0, ``min_channels >
        max_channels``, or a ``channel_*`` option is out of its range (the message names it).

    Notes
    -----
    ``x ~ p(x)`` (Gaussian random field of slowness, or channel facies), ``y = G vec(s(x)) +
    eps`` with ``s(x) = x`` (random field) or ``s(x) = x s_c + (1 - x) s_b`` (channels: ``s_c``
    = ``channel_slowness``, ``s_b`` = ``background_slowness``), ``eps ~ N(0, noise_std^2
    I_{num_rays})`` and ``vec`` the C-order flattening; see the module docstring for the
    physics, the coordinate convention and references.

    Examples
    --------
    >>> p = Crosshole(num_depth_cells=8, num_offset_cells=6, num_sources=3, num_receivers=4)
    >>> x, y = p.simulate(5, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((5, 8, 6), (5, 12))
    >>> t = p.forward(torch.full((8, 6), 5e-4))  # homogeneous 2000 m/s
    >>> round(float(t[0]) * 1e3, 3)  # horizontal ray across 6 m: 3 ms
    3.0
    >>> c = Crosshole(prior="channels", num_depth_cells=8, num_offset_cells=6, num_sources=3,
    ...               num_receivers=4)
    >>> round(float(c.forward(torch.ones(8, 6))[0]) * 1e3, 3)  # all channel, 2400 m/s: 2.5 ms
    2.5
    """

    name = "crosshole"
    x_dims = ("depth", "offset")
    y_dims = ("ray",)

    def __init__(
        self,
        prior: PriorName = "grf",
        num_depth_cells: int = 32,
        num_offset_cells: int = 32,
        cell_size: float = 1.0,
        num_sources: int = 16,
        num_receivers: int = 16,
        noise_std: float = 5e-5,
        mean_slowness: float = 5e-4,
        slowness_std: float = 5e-5,
        correlation_length: float = 8.0,
        kernel: Kernel = "exponential",
        channel_slowness: float = 1 / 2400,
        background_slowness: float = 1 / 1800,
        min_channels: int = 1,
        max_channels: int = 3,
        channel_angles: float | Sequence[float] = (0.0, 90.0),
        channel_angle_spread: float = 30.0,
        channel_widths: float | Sequence[float] | None = None,
        channel_amplitudes: float | Sequence[float] | None = None,
    ) -> None:
        if prior not in PRIORS:
            raise ConfigError(f"unknown prior {prior!r}; expected one of {PRIORS}")
        if kernel not in CORRELATION_KERNELS:
            raise ConfigError(f"unknown kernel {kernel!r}; expected one of {CORRELATION_KERNELS}")
        _check_count(
            num_depth_cells=num_depth_cells,
            num_offset_cells=num_offset_cells,
            num_sources=num_sources,
            num_receivers=num_receivers,
        )
        _check_positive(
            cell_size=cell_size,
            noise_std=noise_std,
            mean_slowness=mean_slowness,
            slowness_std=slowness_std,
            correlation_length=correlation_length,
            channel_slowness=channel_slowness,
            background_slowness=background_slowness,
        )
        _check_count_range(min_channels, max_channels, ("min_channels", "max_channels"))
        self.min_channels = min_channels
        self.max_channels = max_channels
        self.channel_angles = _check_angles(channel_angles, "channel_angles")
        self.channel_angle_spread = _check_angle_spread(
            channel_angle_spread, "channel_angle_spread"
        )
        self.channel_widths = _check_interval(channel_widths, "channel_widths", positive=True)
        self.channel_amplitudes = _check_interval(
            channel_amplitudes, "channel_amplitudes", positive=False
        )
        self.prior: PriorName = prior
        self.has_prior_density = prior == "grf"  # the channel prior is a simulator only
        # a Gaussian field: R^n (no density to evaluate per draw); channels: facies codes, or
        # their probabilities for draws without decoder noise, so nothing to check either
        self.support = constraints.real
        self.cell_size = float(cell_size)
        self.num_sources = num_sources
        self.num_receivers = num_receivers
        self.noise_std = float(noise_std)
        self.misfit_std = float(noise_std)
        self.noise_cov: torch.Tensor | None = None
        self.mean_slowness = float(mean_slowness)
        self.slowness_std = float(slowness_std)
        self.correlation_length = float(correlation_length)
        self.kernel: Kernel = kernel
        self.channel_slowness = float(channel_slowness)
        self.background_slowness = float(background_slowness)

        nz, nx = num_depth_cells, num_offset_cells
        self.x_shape = (nz, nx)
        num_rays = num_sources * num_receivers
        self.y_shape = (num_rays,)
        self.width = nx * self.cell_size
        self.height = nz * self.cell_size
        depth_centres = ((torch.arange(nz, dtype=torch.float64) + 0.5) * self.cell_size).tolist()
        offset_centres = ((torch.arange(nx, dtype=torch.float64) + 0.5) * self.cell_size).tolist()
        self.coords: dict[str, list[Any]] = {
            "depth": depth_centres,
            "offset": offset_centres,
            "ray": list(range(num_rays)),
        }
        self.units: dict[str, str] = {
            "x": "s/m" if prior == "grf" else "1",
            "y": "s",
            "depth": "m",
            "offset": "m",
            "ray": "",
            "source_depth": "m",
            "source_offset": "m",
            "receiver_depth": "m",
            "receiver_offset": "m",
        }
        if prior == "channels":
            self.units["slowness"] = "s/m"  # the derived quantity of the facies indicator

        sources = _borehole_depths(num_sources, nz, self.cell_size)
        receivers = _borehole_depths(num_receivers, nz, self.cell_size)
        src = sources.repeat_interleave(num_receivers)  # ray i = i_source * num_receivers + i_rec
        rec = receivers.repeat(num_sources)
        start = torch.stack([src, torch.zeros_like(src)], dim=-1)
        end = torch.stack([rec, torch.full_like(rec, self.width)], dim=-1)
        self._start, self._end = start, end  # (num_rays, 2) of (depth, offset), m, float64
        self._matrix64 = ray_length_matrix(
            start.numpy(),
            end.numpy(),
            (torch.arange(nz + 1, dtype=torch.float64) * self.cell_size).numpy(),
            (torch.arange(nx + 1, dtype=torch.float64) * self.cell_size).numpy(),
        )
        self._matrix32 = self._matrix64.to(torch.float32)  # cast once (forward in float32)
        self.source_depths = sources.to(torch.float32)
        self.receiver_depths = receivers.to(torch.float32)
        self.source_depth = src.to(torch.float32)
        self.receiver_depth = rec.to(torch.float32)
        # where every ray starts and ends: coordinates of the ray dim in the InferenceData
        self.extra_coords: dict[str, tuple[str, list[float]]] = {
            "source_depth": ("ray", src.tolist()),
            "source_offset": ("ray", [0.0] * num_rays),
            "receiver_depth": ("ray", rec.tolist()),
            "receiver_offset": ("ray", [self.width] * num_rays),
        }

        self.field: GaussianRandomField | ChannelField
        if prior == "grf":
            self.field = GaussianRandomField(
                (depth_centres, offset_centres),
                mean=self.mean_slowness,
                sill=self.slowness_std**2,
                correlation_length=self.correlation_length,
                kernel=kernel,
            )
        else:
            self.field = ChannelField(  # the facies indicator: 1 channel, 0 background
                (depth_centres, offset_centres),
                channel_value=1.0,
                background_value=0.0,
                min_channels=self.min_channels,
                max_channels=self.max_channels,
                angles=self.channel_angles,
                angle_spread=self.channel_angle_spread,
                widths=self.channel_widths,
                amplitudes=self.channel_amplitudes,
            )

    @property
    def matrix(self) -> torch.Tensor:
        """Ray-length matrix ``G``; shape ``(num_rays, nz * nx)``, in m, float32."""
        return self._matrix32.clone()

    @property
    def ray_lengths(self) -> torch.Tensor:
        """Source-receiver distance of every ray; shape ``(num_rays,)``, in m, float64."""
        return torch.hypot(self._end[:, 0] - self._start[:, 0], self._end[:, 1] - self._start[:, 1])

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` models from the prior; shape ``(num, nz, nx)``, float32.

        Slowness in s/m for ``prior="grf"``; the facies indicator (exactly 0.0 or 1.0) for
        ``prior="channels"``.

        Raises
        ------
        ConfigError
            If ``num`` is negative.
        """
        return self.field.sample(num, generator)

    def slowness_of(self, x: torch.Tensor) -> torch.Tensor:
        """Return the slowness of the models ``x``; same shape, dtype and device, in s/m.

        Parameters
        ----------
        x : Tensor, shape (*batch, nz, nx)
            Slowness in s/m (``prior="grf"``: returned as it is), or the facies indicator
            (``prior="channels"``): 1 channel, 0 background; a value in [0, 1] is read as the
            probability of channel and gives the expected slowness.

        Returns
        -------
        Tensor, shape (*batch, nz, nx)
            ``x`` for the random field; ``x s_c + (1 - x) s_b`` for channels (``s_c`` =
            ``channel_slowness``, ``s_b`` = ``background_slowness``; exact at 0 and 1, so an
            indicator gives the two slownesses rounded once to the dtype of ``x``).

        Raises
        ------
        ShapeError
            If ``x`` does not end in ``(nz, nx)``.

        Examples
        --------
        >>> c = Crosshole(prior="channels", num_depth_cells=2, num_offset_cells=2)
        >>> s = c.slowness_of(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        >>> [round(1 / v) for v in s.flatten().tolist()]  # velocities in m/s
        [1800, 2400, 2400, 1800]
        """
        if x.dim() < 2 or tuple(x.shape[-2:]) != self.x_shape:
            raise ShapeError(
                f"x must have shape (*batch, {self.x_shape[0]}, {self.x_shape[1]}) "
                f"(depth, offset), got {tuple(x.shape)}"
            )
        if self.prior == "grf":
            return x
        return x * self.channel_slowness + (1 - x) * self.background_slowness

    def derived(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the derived quantities of ``x``: ``{"slowness": s(x)}`` for channels, else ``{}``.

        Parameters
        ----------
        x : Tensor, shape (*batch, nz, nx)
            Facies indicator (``prior="channels"``) or slowness (``prior="grf"``).

        Returns
        -------
        dict of str to Tensor
            ``slowness`` (s/m, ``units["slowness"]``), shape ``(*batch, nz, nx)``, from
            :meth:`slowness_of`; empty for the random field, whose ``x`` is the slowness.
            Posterior files carry it beside ``x`` (see
            :func:`ppl_cvae.problems.base.derived_quantities`).

        Raises
        ------
        ShapeError
            If ``x`` does not end in ``(nz, nx)``.
        """
        if self.prior == "grf":
            return {}
        return {"slowness": self.slowness_of(x)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the traveltimes ``G vec(s(x))``; shape ``(*batch, num_rays)``, in s.

        Parameters
        ----------
        x : Tensor, shape (*batch, nz, nx)
            Slowness in s/m (``prior="grf"``) or facies indicator (``prior="channels"``,
            mapped by :meth:`slowness_of`); ``batch`` may be empty. Differentiable; computed in
            the dtype and on the device of ``x``.

        Raises
        ------
        ShapeError
            If ``x`` does not end in ``(nz, nx)``.
        """
        slowness = self.slowness_of(x)
        flat = slowness.reshape(*x.shape[:-2], self.x_shape[0] * self.x_shape[1])
        # the copy per dtype is made once (a cast of G on every call cost 0.1 ms in NUTS)
        matrix = self._matrix32 if flat.dtype == torch.float32 else self._matrix64
        return flat @ matrix.to(flat).T

    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return prior draws and noisy traveltimes; shapes ``(num, nz, nx)``, ``(num, num_rays)``.

        ``y = G vec(s(x)) + eps``, ``eps ~ N(0, noise_std^2 I)``, in s; ``x`` as
        :meth:`sample_prior` draws it (slowness or facies indicator).
        """
        return super().simulate(num, generator)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return the random-field prior log density ``log N(vec(x); mean 1, C_0)`` (``"grf"``).

        Parameters
        ----------
        x : Tensor, shape (*batch, nz, nx)
            Slowness in s/m.

        Returns
        -------
        Tensor, shape (*batch,)
            In nats, float64, with respect to Lebesgue measure on ``R^(nz nx)`` ((s/m) to the
            power ``-nz nx``); ``C_0`` is the covariance of :meth:`linear_gaussian`
            (:meth:`GaussianRandomField.log_prob
            <ppl_cvae.problems.priors.GaussianRandomField.log_prob>`).

        Raises
        ------
        NoPriorDensityError
            For ``prior="channels"``: the channel generator defines the prior by simulation
            only (:attr:`has_prior_density` is False).
        ShapeError
            If the trailing axes of ``x`` are not ``(nz, nx)``.
        """
        if not isinstance(self.field, GaussianRandomField):
            raise NoPriorDensityError(
                "the crosshole channel prior (prior='channels') is defined by its generator "
                "only: binary facies drawn by a simulator have no density to evaluate; use a "
                "likelihood-free method (the amortized posterior, SBC), or prior='grf'"
            )
        return self.field.log_prob(x)

    def linear_gaussian(self) -> LinearGaussianParts | None:
        """Return ``G``, the random-field prior and the noise; None for the channel prior.

        Returns
        -------
        LinearGaussianParts or None
            ``matrix`` ``(num_rays, nz * nx)`` in m, ``prior_mean`` ``(nz * nx,)`` in s/m,
            ``prior_cov`` ``(nz * nx, nz * nx)`` in (s/m)^2 and ``noise_cov``
            ``(num_rays, num_rays)`` in s^2, all float64 and C order; None when
            ``prior="channels"`` (not Gaussian).
        """
        if not isinstance(self.field, GaussianRandomField):
            return None
        return LinearGaussianParts(
            matrix=self._matrix64.clone(),
            prior_mean=self.field.mean_vector(),
            prior_cov=self.field.covariance(),
            noise_cov=self.noise.covariance(),
        )

    def recommended_settings(self) -> Overrides:
        """Return default ``ModelConfig``/``TrainConfig`` overrides: MLPs with a linear y path.

        Measured with ``benchmarks/linear_gaussian.py`` on the GRF prior against the exact
        posterior (README): the linear skip halves the posterior-mean error. The channel
        prior's facies indicator gets a Bernoulli decoder (``likelihood="bernoulli"``) and
        2-D convolutions over the grid (``network="conv2d"``, channels 8 and 16, 64 features):
        measured with ``benchmarks/amortized_quality.py`` (README), they bring the reliability
        of the facies probabilities within 0.05 and cut the data misfit of the draws by a third
        against the MLP, at twice its training time. The random-field prior gets the linear
        whitening of ``x`` given ``y`` (``x_whitening="linear"``, decoder scale starting at 1)
        and 20 epochs: the draws' misfit drops from 6.06 to about 1.2 per datum, and 10 epochs
        were already within 0.02 of 60 (README).
        """
        model = ModelOverrides(
            network="mlp", latent_dim=32, hidden_dims=(512, 512), linear_skip=True
        )
        if self.prior == "grf":  # a Gaussian decoder of the whitened residual, started at N(0, I)
            model["x_whitening"] = "linear"
            model["init_scale"] = 1.0
        if self.prior == "channels":
            model["likelihood"] = "bernoulli"
            model["network"] = "conv2d"
            model["conv_channels"] = (8, 16)
            model["feature_dim"] = 64
            return Overrides(model=model, train=simulation_schedule())
        return Overrides(model=model, train=simulation_schedule(20))

    def spec(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this problem, plus its name.

        JSON-serialisable: tuples become lists, the channel options included, so a checkpoint
        rebuilds the same prior.
        """
        return {
            "name": self.name,
            "prior": self.prior,
            "num_depth_cells": self.x_shape[0],
            "num_offset_cells": self.x_shape[1],
            "cell_size": self.cell_size,
            "num_sources": self.num_sources,
            "num_receivers": self.num_receivers,
            "noise_std": self.noise_std,
            "mean_slowness": self.mean_slowness,
            "slowness_std": self.slowness_std,
            "correlation_length": self.correlation_length,
            "kernel": self.kernel,
            "channel_slowness": self.channel_slowness,
            "background_slowness": self.background_slowness,
            "min_channels": self.min_channels,
            "max_channels": self.max_channels,
            "channel_angles": list(self.channel_angles),
            "channel_angle_spread": self.channel_angle_spread,
            "channel_widths": None if self.channel_widths is None else list(self.channel_widths),
            "channel_amplitudes": (
                None if self.channel_amplitudes is None else list(self.channel_amplitudes)
            ),
        }
