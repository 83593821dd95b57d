"""Priors (ppl_cvae.problems.priors): GRF moments and density, channel options, old draws kept."""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
import torch

from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems import Crosshole
from ppl_cvae.problems.priors import CORRELATION_KERNELS, ChannelField, GaussianRandomField


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bonferroni_z(num_tests: int, family_alpha: float = 1e-4) -> float:
    """Two-sided z threshold giving a family-wise false-alarm rate ``family_alpha``."""
    return NormalDist().inv_cdf(1 - family_alpha / (2 * num_tests))


# --------------------------------------------------------------------------------------------
# Gaussian random field


def _max_covariance_z(x: torch.Tensor, mean: float, cov: torch.Tensor) -> float:
    """Largest |standardised error| of the known-mean sample covariance over the entries i <= j.

    With ``d = x - mean`` Gaussian, ``d_i d_j`` has mean ``C_ij`` and variance
    ``C_ii C_jj + C_ij^2`` (Isserlis), so the standard error of the average of N products is
    ``sqrt((C_ii C_jj + C_ij^2) / N)``.
    """
    d = x.reshape(x.shape[0], -1).double() - mean
    n = d.shape[0]
    sample = d.T @ d / n
    diag = cov.diagonal()
    se = torch.sqrt((diag[:, None] * diag[None, :] + cov.square()) / n)
    iu = torch.triu_indices(cov.shape[0], cov.shape[0])
    return float(((sample - cov) / se)[iu[0], iu[1]].abs().max())


@pytest.mark.parametrize("kernel", CORRELATION_KERNELS)
def test_grf_sample_covariance_matches_stated_covariance(kernel: Any, seed: int) -> None:
    axes = ([0.5, 1.5, 2.5], [0.0, 2.0, 4.0])  # m
    grf = GaussianRandomField(axes, mean=2.0, sill=0.3, correlation_length=2.5, kernel=kernel)
    n_draws = 20000
    x = grf.sample(n_draws, _gen(seed))
    assert x.shape == (n_draws, 3, 3) and x.dtype == torch.float32
    cov = grf.covariance()
    num_entries = 9 * 10 // 2
    # 45 correlated entries per kernel: Bonferroni at a family-wise false-alarm rate of 1e-4
    # gives z ~ 4.6 (4 SE would give 45 * 6e-5 ~ 3e-3 per kernel); conservative under correlation
    z_max = _bonferroni_z(num_entries)
    assert _max_covariance_z(x, grf.mean, cov) < z_max
    # mean of each cell: SE sqrt(sill / N), 9 cells
    se_mean = math.sqrt(grf.sill / n_draws)
    assert float((x.double().mean(0) - grf.mean).abs().max()) < _bonferroni_z(9) * se_mean
    # negative control: a correlation length off by a factor of 2 must be flagged
    wrong = GaussianRandomField(grf.axes, 2.0, 0.3, correlation_length=5.0, kernel=kernel)
    assert _max_covariance_z(x, grf.mean, wrong.covariance()) > 2 * z_max


def test_grf_covariance_formula_and_log_prob() -> None:
    grf = GaussianRandomField(([0.0, 1.0, 3.0],), mean=-1.0, sill=2.0, correlation_length=2.0)
    cov = grf.covariance()
    # exponential kernel: C_ij = sill exp(-|r_i - r_j| / l) (+ jitter sill on the diagonal)
    assert float(cov[0, 2]) == pytest.approx(2.0 * math.exp(-1.5), rel=1e-12)
    assert float(cov[1, 1]) == pytest.approx(2.0 * (1 + 1e-8), rel=1e-12)
    reference = torch.distributions.MultivariateNormal(grf.mean_vector(), covariance_matrix=cov)
    for batch in [(), (1,), (4,), (2, 3)]:
        x = torch.randn(*batch, 3, dtype=torch.float64)
        lp = grf.log_prob(x)
        assert lp.shape == batch and lp.dtype == torch.float64
        torch.testing.assert_close(lp, reference.log_prob(x), rtol=1e-12, atol=1e-12)
    # the density is not that of another field (negative control)
    other = GaussianRandomField(grf.axes, mean=-1.0, sill=2.0, correlation_length=0.5)
    x = grf.sample(50, _gen(1))
    assert float((other.log_prob(x) - grf.log_prob(x)).abs().max()) > 1.0
    with pytest.raises(ShapeError, match=r"\(\*batch, 3\)"):
        grf.log_prob(torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sill": 0.0}, "sill"),
        ({"sill": math.inf}, "sill"),
        ({"correlation_length": -1.0}, "correlation_length"),
        ({"mean": math.nan}, "mean"),
        ({"jitter": -1e-8}, "jitter"),
        ({"kernel": "cubic"}, "kernel"),
        ({"axes": ([],)}, "axis"),
    ],
)
def test_grf_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "axes": ([0.5, 1.5],),
        "mean": 0.0,
        "sill": 1.0,
        "correlation_length": 1.0,
    }
    with pytest.raises(ConfigError, match=match):
        GaussianRandomField(**{**args, **kwargs})


# --------------------------------------------------------------------------------------------
# channels: the options have the stated effect

GRID = (range(32), range(32))  # 1 m cells, D = 31 m


def _straight(**kwargs: Any) -> ChannelField:
    """A field of one straight channel (no sinuosity, no angle perturbation)."""
    options: dict[str, Any] = {
        "max_channels": 1,
        "angle_spread": 0.0,
        "amplitudes": 0.0,
        "widths": 3.0,
    }
    options.update(kwargs)
    return ChannelField(GRID, 1.0, 0.0, **options)


def test_channel_angle_zero_gives_horizontal_bands_and_ninety_vertical() -> None:
    horizontal = _straight(angles=0.0).channel_mask(200, _gen(0))
    # 0 degrees: along the offset axis, so every depth row is all channel or all background
    assert torch.equal(horizontal, horizontal[:, :, :1].expand_as(horizontal))
    vertical = _straight(angles=[90]).channel_mask(200, _gen(0))
    assert torch.equal(vertical, vertical[:, :1, :].expand_as(vertical))
    # negative control: the default angles (0/90 +- 30 degrees, sinuous) are not row-constant
    default = ChannelField(GRID, 1.0, 0.0).channel_mask(200, _gen(0))
    assert not torch.equal(default, default[:, :, :1].expand_as(default))


def test_channel_angle_sign_convention() -> None:
    # +45 degrees deepens to the right: constant along (iz + 1, ix + 1); -45 along (iz + 1, ix - 1)
    down = _straight(angles=45.0, widths=4.0).channel_mask(100, _gen(3))
    assert torch.equal(down[:, 1:, 1:], down[:, :-1, :-1])
    assert not torch.equal(down[:, 1:, :-1], down[:, :-1, 1:])
    up = _straight(angles=-45.0, widths=4.0).channel_mask(100, _gen(3))
    assert torch.equal(up[:, 1:, :-1], up[:, :-1, 1:])


@pytest.mark.parametrize("width", [1.0, 3.0, 5.0])
def test_channel_width_in_metres_gives_that_many_cells(width: float) -> None:
    # a straight horizontal band |z - z_c| <= w / 2 holds w cell centres (1 m apart) almost
    # surely, and lies inside the section (|v0| < D / 4 = 7.75 m)
    rows = _straight(angles=0.0, widths=width).channel_mask(300, _gen(2))[:, :, 0]
    assert torch.all(rows.sum(1) == int(width))
    # 2 m cells: a 6 m channel covers 3 cells; metres, not cells
    coarse = ChannelField(
        ([2.0 * i for i in range(16)], [2.0 * i for i in range(16)]),
        1.0,
        0.0,
        max_channels=1,
        angles=90.0,
        angle_spread=0.0,
        amplitudes=0.0,
        widths=6.0,
    )
    assert torch.all(coarse.channel_mask(100, _gen(2))[:, 0, :].sum(1) == 3)


def test_channel_width_range_and_two_angles() -> None:
    field = _straight(angles=(0.0, 90.0), widths=(2.0, 6.0))
    assert field.widths == (2.0, 6.0)
    mask = field.channel_mask(2000, _gen(5))
    is_row_band = (mask == mask[:, :, :1]).flatten(1).all(1)
    is_col_band = (mask == mask[:, :1, :]).flatten(1).all(1)
    assert bool((is_row_band ^ is_col_band).all())  # each field is one of the two
    # each angle with probability 1/2: SE sqrt(0.25 / 2000) ~ 0.011; 4 SE
    assert abs(float(is_row_band.double().mean()) - 0.5) < 4 * math.sqrt(0.25 / 2000)
    cells = mask.sum((1, 2)) / 32  # rows (or columns) covered, between 2 and 6
    assert bool(((cells >= 2) & (cells <= 6)).all())
    # width ~ U(2, 6) m covers floor(w) or floor(w) + 1 cells: mean ~ 4 +- a fraction of a cell
    assert 3.0 < float(cells.mean()) < 5.0


def test_channel_count_range() -> None:
    one = _straight(angles=0.0, widths=1.0).channel_mask(400, _gen(4))[:, :, 0].sum(1)
    three = _straight(angles=0.0, widths=1.0, min_channels=3, max_channels=3)
    rows = three.channel_mask(400, _gen(4))[:, :, 0].sum(1)
    assert torch.all(one == 1)
    # three 1-m channels at v0 ~ U(-7.75, 7.75) m: 1..3 rows, rarely sharing one
    assert bool(((rows >= 1) & (rows <= 3)).all()) and float(rows.double().mean()) > 2.5


def test_default_channel_ranges_resolve_against_section_size() -> None:
    field = ChannelField(GRID, 1.0, 0.0)
    assert field.size == 31.0
    assert field.widths == pytest.approx((0.08 * 31, 0.2 * 31))
    assert field.amplitudes == pytest.approx((0.05 * 31, 0.15 * 31))
    assert field.angles == (0.0, 90.0) and field.angle_spread == 30.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_channels": 0}, "min_channels"),
        ({"max_channels": 0}, "max_channels"),
        ({"max_channels": True}, "max_channels"),
        ({"min_channels": 4, "max_channels": 3}, "min_channels must be <= max_channels"),
        ({"angles": []}, "angles"),
        ({"angles": "0"}, "angles"),
        ({"angles": [0.0, math.nan]}, "angles"),
        ({"angle_spread": -1.0}, "angle_spread"),
        ({"angle_spread": 91.0}, "angle_spread"),
        ({"widths": 0.0}, "widths"),
        ({"widths": (3.0, 2.0)}, "widths"),
        ({"widths": (1.0, 2.0, 3.0)}, "widths"),
        ({"widths": "wide"}, "widths"),
        ({"amplitudes": -1.0}, "amplitudes"),
        ({"amplitudes": (0.0, math.inf)}, "amplitudes"),
        ({"channel_value": math.nan}, "channel_value"),
        ({"axes": (range(4),)}, "two non-empty axes"),
    ],
)
def test_channel_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"axes": GRID, "channel_value": 1.0, "background_value": 0.0}
    with pytest.raises(ConfigError, match=match):
        ChannelField(**{**args, **kwargs})


# --------------------------------------------------------------------------------------------
# the defaults reproduce the draws of the code before the move


def _old_channel_mask(
    depth: torch.Tensor, offset: torch.Tensor, c: int, num: int, gen: torch.Generator
) -> torch.Tensor:
    """``ChannelField.channel_mask`` as it was in ppl_cvae/problems/crosshole.py (ca62171).

    Copied verbatim (hard-coded orientations 0/90 +- 30 degrees, widths 0.08-0.2 D, amplitudes
    0.05-0.15 D, 1..c channels) as a frozen reference: do not edit.
    """
    size = max(min(float(a.max() - a.min()) for a in (depth, offset)), 1e-12)
    u = torch.rand(num, c, 8, generator=gen, dtype=torch.float64)
    count = 1 + torch.clamp((u[:, 0, 0] * c).long(), max=c - 1)
    d = size
    vertical = (u[..., 1] < 0.5).double()
    theta = vertical * math.pi / 2 + (u[..., 2] - 0.5) * (math.pi / 3)
    v0 = (u[..., 3] - 0.5) * (d / 2)
    amplitude = (0.05 + 0.10 * u[..., 4]) * d
    wavelength = (0.5 + 1.0 * u[..., 5]) * d
    phase = 2 * math.pi * u[..., 6]
    width = (0.08 + 0.12 * u[..., 7]) * d
    pz = (depth - 0.5 * (depth.max() + depth.min()))[:, None].float()
    px = (offset - 0.5 * (offset.max() + offset.min()))[None, :].float()
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
    mask = torch.zeros(num, len(depth), len(offset), dtype=torch.bool)
    for k in range(c):
        cos, sin, off, amp, kw, max_slope, phi, half_w2 = params[:, k, :, None, None].unbind(1)
        arg = kw * (px * cos + pz * sin) + phi
        across = pz * cos - px * sin - off - amp * torch.sin(arg)
        slope = max_slope * torch.cos(arg)
        inside = across.square() <= half_w2 * (1 + slope.square())
        mask |= inside & (count > k)[:, None, None]
    return mask


@pytest.mark.parametrize(
    ("axes", "max_channels", "seed"),
    [
        ((range(32), range(32)), 3, 0),
        ((range(32), range(32)), 3, 11),
        ((range(9), [0.5 * k for k in range(13)]), 5, 7),
        (([1.5 * k for k in range(20)], range(6)), 1, 3),
    ],
)
def test_channel_defaults_match_frozen_old_implementation(
    axes: tuple[Any, Any], max_channels: int, seed: int
) -> None:
    new = ChannelField(axes, 1.0, 0.0, max_channels=max_channels).channel_mask(64, _gen(seed))
    depth, offset = (torch.as_tensor(list(a), dtype=torch.float64) for a in axes)
    old = _old_channel_mask(depth, offset, max_channels, 64, _gen(seed))
    assert torch.equal(new, old)
    # negative control: a changed option changes the draws of the same generator
    other = ChannelField(axes, 1.0, 0.0, max_channels=max_channels, angle_spread=29.0)
    assert not torch.equal(other.channel_mask(64, _gen(seed)), old)


def test_grf_defaults_match_old_formula() -> None:
    # the old GaussianRandomField.sample for Crosshole(): mean + e L^T, L = chol(C), float64
    p = Crosshole(num_depth_cells=10, num_offset_cells=7, cell_size=2.0)
    centres = [(i + 0.5) * 2.0 for i in range(10)], [(i + 0.5) * 2.0 for i in range(7)]
    pts = torch.cartesian_prod(*(torch.tensor(c, dtype=torch.float64) for c in centres))
    cov = 5e-5**2 * (torch.exp(-torch.cdist(pts, pts) / 8.0) + 1e-8 * torch.eye(70).double())
    e = torch.randn(5, 70, generator=_gen(9), dtype=torch.float64)
    old = (5e-4 + e @ torch.linalg.cholesky(cov).T).to(torch.float32).reshape(5, 10, 7)
    assert torch.equal(p.sample_prior(5, _gen(9)), old)


def _sha16(x: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(x.numpy()).tobytes()).hexdigest()[:16]


def test_default_draws_digest() -> None:
    # Produced by running the OLD code (commit ca62171, before the priors moved to
    # ppl_cvae/problems/priors/) with the pinned torch of constraints.txt on x86-64 CPU:
    #   x = Crosshole(prior=P).sample_prior(16, torch.Generator().manual_seed(2026))
    #   hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
    #   ChannelField((range(9), [0.5 * k for k in range(13)]), 1.0, 0.0, max_channels=5)
    #       .channel_mask(32, torch.Generator().manual_seed(7)) -> same digest and row sums
    # A different torch build could round float32 sin/cos or LAPACK differently and change a
    # digest without a code change; the frozen-reference tests above tell the two apart.
    # the old code drew slowness; the channel prior now draws the facies indicator, which
    # slowness_of maps to the same float32 values
    problem = Crosshole(prior="channels")
    channels = problem.slowness_of(problem.sample_prior(16, _gen(2026)))
    assert _sha16(channels) == "6cbf65d11c17dc42"
    sand = (channels < 0.5 * (1 / 2400 + 1 / 1800)).sum((1, 2)).tolist()
    assert sand == [123, 155, 265, 204, 383, 176, 212, 184, 279, 509, 360, 165, 356, 376, 175, 294]
    assert _sha16(Crosshole(prior="grf").sample_prior(16, _gen(2026))) == "e7df6738ec806817"
    field = ChannelField((range(9), [0.5 * k for k in range(13)]), 1.0, 0.0, max_channels=5)
    mask = field.channel_mask(32, _gen(7))
    assert _sha16(mask) == "b2042d57245c8d47"
    assert mask.sum((1, 2)).tolist()[:8] == [33, 34, 54, 39, 38, 12, 34, 30]
