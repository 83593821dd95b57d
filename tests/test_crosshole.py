"""Crosshole traveltime tomography: ray geometry against independent calculations, priors, noise."""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
import pytest
import torch

from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems import Crosshole, Problem, make_problem
from ppl_cvae.problems.base import linear_gaussian_parts
from ppl_cvae.problems.crosshole import ray_length_matrix
from ppl_cvae.problems.priors import ChannelField
from ppl_cvae.train import resolve_settings
from tests.conftest import assert_spec_round_trip


@pytest.fixture(scope="module")
def default() -> Crosshole:
    return Crosshole()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ray_depths() -> tuple[torch.Tensor, torch.Tensor]:
    """Source and receiver depth of each default ray, float64, computed independently."""
    depths = torch.from_numpy(np.linspace(0.5, 31.5, 16))  # top to bottom cell centre, m
    return depths.repeat_interleave(16), depths.repeat(16)  # ray = i_source * 16 + i_receiver


# --------------------------------------------------------------------------------------------
# forward operator against independent calculations


def test_geometry_and_protocol(default: Crosshole) -> None:
    assert isinstance(default, Problem)
    assert default.x_shape == (32, 32) and default.y_shape == (256,)
    assert default.x_dims == ("depth", "offset") and default.y_dims == ("ray",)
    assert default.coords["depth"][0] == 0.5 and default.coords["offset"][-1] == 31.5
    assert len(default.coords["ray"]) == 256
    assert {k: default.units[k] for k in ("x", "y", "depth", "offset", "ray")} == {
        "x": "s/m",
        "y": "s",
        "depth": "m",
        "offset": "m",
        "ray": "",
    }
    assert default.units["source_depth"] == default.units["receiver_offset"] == "m"
    # sources/receivers evenly from the top to the bottom cell centre; ray = i_src * 16 + i_rec
    depths = np.linspace(0.5, 31.5, 16)
    np.testing.assert_allclose(default.source_depths.numpy(), depths, rtol=1e-6)
    np.testing.assert_allclose(default.source_depth.numpy(), np.repeat(depths, 16), rtol=1e-6)
    np.testing.assert_allclose(default.receiver_depth.numpy(), np.tile(depths, 16), rtol=1e-6)
    assert default.matrix.shape == (256, 1024) and default.matrix.dtype == torch.float32


def test_homogeneous_slowness_gives_distance_times_slowness(default: Crosshole) -> None:
    s = 1 / 2000
    zs, zr = _ray_depths()
    distance = torch.hypot(zr - zs, torch.tensor(32.0, dtype=torch.float64))  # gap 32 m
    t = default.forward(torch.full((32, 32), s)).double()
    # float32 sum of <= 63 positive terms: relative rounding error well below 1e-5
    np.testing.assert_allclose(t.numpy(), (s * distance).numpy(), rtol=1e-5)
    # row sums of G are the ray lengths: float64 G exact to rounding (1e-12), float32 G to
    # about 63 float32 ulps (1e-6)
    parts = default.linear_gaussian()
    assert parts is not None
    np.testing.assert_allclose(parts.matrix.sum(1).numpy(), distance.numpy(), rtol=1e-12)
    np.testing.assert_allclose(default.matrix.sum(1).numpy(), distance.numpy(), rtol=1e-6)
    np.testing.assert_allclose(default.ray_lengths.numpy(), distance.numpy(), rtol=1e-12)


@pytest.mark.parametrize("row", [0, 10, 31])
def test_anomalous_layer_matches_analytic(default: Crosshole, row: int) -> None:
    """A horizontal layer [row, row + 1] m of slowness s1 in a background s0.

    A straight ray from depth zs to zr (gap W = 32 m, length L) spends
    L * |[zs, zr] intersect [row, row + 1]| / |zr - zs| in the layer (W for a horizontal ray
    inside it): an independent, closed-form answer for every ray.
    """
    s0, s1 = 5e-4, 3e-4
    x = torch.full((32, 32), s0, dtype=torch.float64)
    x[row] = s1
    zs, zr = _ray_depths()
    length = torch.hypot(zr - zs, torch.tensor(32.0, dtype=torch.float64))
    lo, hi = torch.minimum(zs, zr), torch.maximum(zs, zr)
    overlap = torch.minimum(hi, torch.tensor(row + 1.0)) - torch.maximum(lo, torch.tensor(row))
    overlap = overlap.clamp(min=0)
    horizontal = (zr == zs).double()
    inside = ((zs > row) & (zs < row + 1)).double()
    in_layer = horizontal * inside * 32.0 + (1 - horizontal) * overlap * length / (hi - lo).clamp(
        min=1e-30
    )
    expected = s0 * length + (s1 - s0) * in_layer
    t = default.forward(x)  # float64 input: computed in float64
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), expected.numpy(), rtol=1e-12)
    # the layer is hit at all (else the test proves nothing): the horizontal ray inside it
    assert (in_layer > 0).sum() >= 1


def test_anomalous_column_matches_analytic(default: Crosshole) -> None:
    # every ray crosses the full 32 m gap, so it spends L / W * 1 m in any 1 m wide column
    x = torch.full((32, 32), 5e-4, dtype=torch.float64)
    x[:, 7] = 7e-4
    zs, zr = _ray_depths()
    length = torch.hypot(zr - zs, torch.tensor(32.0, dtype=torch.float64))
    expected = 5e-4 * length + 2e-4 * length / 32.0
    np.testing.assert_allclose(default.forward(x).numpy(), expected.numpy(), rtol=1e-12)


def test_ray_lengths_match_brute_force_line_integral() -> None:
    """Siddon lengths vs counting 100k midpoint samples per ray on a small non-uniform grid.

    Midpoint rule with step h = L / N: each of the two cell-boundary crossings of a piece is
    misattributed by at most h / 2, so every entry is within h = L / N (<= 1.2e-4 m here,
    about 1e-4 relative to typical 1 m pieces) of the exact length.
    """
    z_edges = np.array([0.0, 0.7, 1.5, 2.0, 3.1, 4.0])
    x_edges = np.array([-1.0, 0.2, 1.3, 1.9, 3.0])
    rng = np.random.default_rng(0)
    # random rays in every direction, partly outside the grid, plus three hand-made ones
    start = rng.uniform([-1.0, -2.0], [5.0, 4.0], size=(20, 2))
    end = rng.uniform([-1.0, -2.0], [5.0, 4.0], size=(20, 2))
    start = np.vstack([start, [[0.1, -1.0], [3.9, 3.0], [2.5, 3.5]]])
    end = np.vstack([end, [[3.9, 3.0], [0.1, -1.0], [2.5, -3.5]]])  # reversed ray, horizontal
    g = ray_length_matrix(start, end, z_edges, x_edges).numpy()
    n = 100_000
    frac = (np.arange(n) + 0.5) / n
    nz, nx = len(z_edges) - 1, len(x_edges) - 1
    for i in range(len(start)):
        pts = start[i] + frac[:, None] * (end[i] - start[i])
        iz = np.searchsorted(z_edges, pts[:, 0]) - 1
        ix = np.searchsorted(x_edges, pts[:, 1]) - 1
        ok = (iz >= 0) & (iz < nz) & (ix >= 0) & (ix < nx)
        length = np.hypot(*(end[i] - start[i]))
        brute = np.bincount(iz[ok] * nx + ix[ok], minlength=nz * nx) * length / n
        np.testing.assert_allclose(g[i], brute, rtol=0, atol=length / n + 1e-12)
    # reversing a ray does not change its lengths
    np.testing.assert_allclose(g[-3], g[-2], atol=1e-12)
    assert g[-1].sum() == pytest.approx(4.0)  # horizontal ray at 2.5 m across the 4 m grid


def test_ray_along_grid_line_is_split_between_neighbours() -> None:
    # horizontal ray on the line z = 1 between rows 0 and 1: half of each piece to each row
    g = ray_length_matrix([[1.0, 0.0]], [[1.0, 2.0]], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0])
    np.testing.assert_allclose(g[0].numpy(), [0.5, 0.5, 0.5, 0.5], atol=1e-15)


def test_ray_length_matrix_rejects_bad_input() -> None:
    with pytest.raises(ShapeError, match="num_rays, 2"):
        ray_length_matrix([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], [0.0, 1.0], [0.0, 1.0])
    with pytest.raises(ConfigError, match="depth_edges"):
        ray_length_matrix([[0.0, 0.0]], [[1.0, 1.0]], [1.0, 0.0], [0.0, 1.0])


# --------------------------------------------------------------------------------------------
# shape contract and validation


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)])
def test_forward_batch_shapes_and_gradient(batch: tuple[int, ...]) -> None:
    p = Crosshole(num_depth_cells=6, num_offset_cells=5, num_sources=3, num_receivers=2)
    x = (5e-4 + 1e-5 * torch.randn(*batch, 6, 5)).requires_grad_(True)
    t = p.forward(x)
    assert t.shape == (*batch, 6) and t.dtype == torch.float32
    expected = x.detach().reshape(*batch, 30) @ p.matrix.T
    torch.testing.assert_close(t.detach(), expected)
    t.sum().backward()
    assert x.grad is not None  # d sum(t) / d x = column sums of G
    torch.testing.assert_close(x.grad, p.matrix.sum(0).reshape(6, 5).expand(*batch, 6, 5))


@pytest.mark.parametrize("shape", [(32, 31), (32,), (1024,), (2, 31, 32)])
def test_forward_rejects_wrong_shape(default: Crosshole, shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=r"x must have shape \(\*batch, 32, 32\)"):
        default.forward(torch.zeros(shape))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior": "gaussian"}, "unknown prior"),
        ({"kernel": "cubic"}, "unknown kernel"),
        ({"num_sources": 0}, "num_sources"),
        ({"num_receivers": True}, "num_receivers"),
        ({"num_depth_cells": 2.5}, "num_depth_cells"),
        ({"cell_size": -1.0}, "cell_size"),
        ({"noise_std": 0.0}, "noise_std"),
        ({"noise_std": math.nan}, "noise_std"),
        ({"correlation_length": 0}, "correlation_length"),
        ({"slowness_std": -1e-5}, "slowness_std"),
        ({"channel_slowness": -1.0}, "channel_slowness"),
        ({"background_slowness": math.inf}, "background_slowness"),
        ({"min_channels": 4}, "min_channels must be <= max_channels"),
        ({"max_channels": 0}, "max_channels"),
        ({"channel_angles": []}, "channel_angles"),
        ({"channel_angle_spread": 120.0}, "channel_angle_spread"),
        ({"channel_widths": (0.0, 2.0)}, "channel_widths"),
        ({"channel_amplitudes": -1.0}, "channel_amplitudes"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Crosshole(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# priors


def test_grf_prior_moments_and_correlation(seed: int) -> None:
    sd, ell, n = 5e-5, 3.0, 4000
    p = Crosshole(
        num_depth_cells=8,
        num_offset_cells=8,
        num_sources=2,
        num_receivers=2,
        slowness_std=sd,
        correlation_length=ell,
    )
    x = p.sample_prior(n, _gen(seed)).double()
    assert x.shape == (n, 8, 8) and p.sample_prior(1).dtype == torch.float32
    for cell in [(0, 0), (4, 5)]:
        v = x[:, cell[0], cell[1]]
        # SE of the mean: sd / sqrt(n); of the variance: sd^2 sqrt(2 / (n - 1)); 4 SE each
        assert abs(float(v.mean()) - 5e-4) < 4 * sd / math.sqrt(n)
        assert abs(float(v.var()) - sd**2) < 4 * sd**2 * math.sqrt(2 / (n - 1))
    # correlation of horizontal neighbours 1 m apart: exp(-1 / 3); SE ~ (1 - rho^2) / sqrt(n)
    rho = math.exp(-1 / ell)
    se = (1 - rho**2) / math.sqrt(n)
    r = float(torch.corrcoef(torch.stack([x[:, 3, 3], x[:, 3, 4]]))[0, 1])
    assert abs(r - rho) < 4 * se
    # the check can fail: a Gaussian kernel (exp(-1/9)) would lie far outside the band
    assert abs(math.exp(-1 / ell**2) - rho) > 8 * se


def test_channel_prior_values_fraction_and_seeding(seed: int) -> None:
    p = Crosshole(prior="channels")
    x = p.sample_prior(400, _gen(seed))
    assert x.shape == (400, 32, 32) and x.dtype == torch.float32
    assert torch.all((x == 0) | (x == 1))  # the facies indicator
    cs, bg = torch.tensor(1 / 2400), torch.tensor(1 / 1800)  # float32 like the fields
    assert torch.equal(p.slowness_of(x), torch.where(x == 1, cs, bg))
    frac = x.double().mean((1, 2))
    # every field has >= 1 channel crossing the section and never fills it; channel widths are
    # 0.08-0.2 of the 31 m section (~14 % of the area per channel) and 1-3 channels (mean 2,
    # overlapping), so the mean fraction is ~0.28; [0.15, 0.45] is >> 4 SE (~0.02) wide
    assert bool((frac > 0).all()) and bool((frac < 0.9).all())
    assert 0.15 < float(frac.mean()) < 0.45
    again = p.sample_prior(400, _gen(seed))
    assert torch.equal(x, again)
    assert not torch.equal(x, p.sample_prior(400, _gen(seed + 1)))


def test_channel_field_counts_vary() -> None:
    # 1..3 channels: single-channel fields are narrower on average than the rest
    field = ChannelField((range(32), range(32)), channel_value=1.0, background_value=0.0)
    frac = field.channel_mask(600, _gen(1)).double().mean((1, 2))
    assert float(frac.std()) > 0.05  # not a constant coverage
    with pytest.raises(ConfigError, match="max_channels"):
        ChannelField((range(4), range(4)), 1.0, 0.0, max_channels=0)


# --------------------------------------------------------------------------------------------
# facies: the channel prior's x is the indicator, mapped to slowness inside the forward operator


def _pair(**kwargs: object) -> tuple[Crosshole, Crosshole]:
    """A channel-prior survey and a random-field survey of the same geometry."""
    grid = {"num_depth_cells": 9, "num_offset_cells": 7, "num_sources": 4, "num_receivers": 5}
    channels = Crosshole(prior="channels", **grid, **kwargs)  # type: ignore[arg-type]
    return channels, Crosshole(prior="grf", **grid)  # type: ignore[arg-type]


def test_facies_forward_is_the_ray_operator_of_the_mapped_slowness(seed: int) -> None:
    channels, grf = _pair(channel_slowness=4e-4, background_slowness=6e-4)
    facies = channels.sample_prior(6, _gen(seed)).double()
    assert bool(((facies == 0) | (facies == 1)).all()) and bool(facies.any())
    # the slowness written down independently of slowness_of; the GRF survey's forward is
    # G s, so the two agree to float64 rounding of sums of <= 15 terms of 1e-3 s (1e-12 rel)
    sand, shale = (torch.tensor(v, dtype=torch.float64) for v in (4e-4, 6e-4))
    slowness = torch.where(facies == 1, sand, shale)
    torch.testing.assert_close(channels.forward(facies), grf.forward(slowness), rtol=1e-12, atol=0)
    parts = grf.linear_gaussian()
    assert parts is not None
    torch.testing.assert_close(
        channels.forward(facies), slowness.reshape(6, -1) @ parts.matrix.T, rtol=1e-12, atol=0
    )
    # the map is affine: a channel probability p gives the expected traveltime
    p = torch.rand(9, 7, generator=_gen(seed + 1), dtype=torch.float64)
    expected = p.flatten() @ parts.matrix.T * 4e-4 + (1 - p).flatten() @ parts.matrix.T * 6e-4
    torch.testing.assert_close(channels.forward(p), expected, rtol=1e-12, atol=0)
    # negative control: the indicator itself is not a slowness
    assert not torch.allclose(channels.forward(facies), grf.forward(facies))


def test_facies_units_derived_slowness_and_recommendation() -> None:
    channels, grf = _pair()
    assert channels.units["x"] == "1" and channels.units["slowness"] == "s/m"
    assert grf.units["x"] == "s/m" and "slowness" not in grf.units
    x = (torch.arange(63) % 2).float().reshape(1, 9, 7)  # both facies
    derived = channels.derived(x)
    assert list(derived) == ["slowness"] and derived["slowness"].shape == (1, 9, 7)
    # exact at 0 and 1: the two slownesses rounded once to float32
    assert set(derived["slowness"].unique().tolist()) == {
        float(torch.tensor(1 / 2400)),
        float(torch.tensor(1 / 1800)),
    }
    assert grf.derived(x) == {}
    model, _ = resolve_settings(channels)
    assert model.likelihood == "bernoulli" and model.network == "conv2d"
    assert resolve_settings(grf)[0].likelihood == "gaussian"
    with pytest.raises(ShapeError, match="depth, offset"):
        channels.slowness_of(torch.zeros(9, 8))


# --------------------------------------------------------------------------------------------
# noise, spec, linear-Gaussian parts


def test_simulate_noise_level(default: Crosshole, seed: int) -> None:
    x, y = default.simulate(500, _gen(seed))
    assert x.shape == (500, 32, 32) and y.shape == (500, 256)
    residual = (y.double() - default.forward(x.double())).flatten()
    n = residual.numel()
    sd = default.noise_std
    assert sd == 5e-5 and default.misfit_std == sd and default.noise_cov is None
    # SE of the mean: sd / sqrt(n); of the std: sd / sqrt(2 n); 4 SE (float32 rounding of
    # y ~ 0.02 s is ~2e-9 s, 1e-4 of sd)
    assert abs(float(residual.mean())) < 4 * sd / math.sqrt(n)
    assert abs(float(residual.std()) - sd) < 4 * sd / math.sqrt(2 * n)


@pytest.mark.parametrize("prior", ["grf", "channels"])
def test_spec_round_trip(prior: Literal["grf", "channels"]) -> None:
    p = Crosshole(
        prior=prior,
        num_depth_cells=10,
        num_offset_cells=7,
        cell_size=2.0,
        num_sources=4,
        num_receivers=3,
        noise_std=1e-4,
        correlation_length=5.0,
        kernel="matern32",
        channel_slowness=4e-4,
    )
    q = assert_spec_round_trip(p, num=3, seed=2)
    torch.testing.assert_close(q.matrix, p.matrix, rtol=0, atol=0)


CHANNEL_OPTIONS: dict[str, object] = {
    "prior": "channels",
    "num_depth_cells": 12,
    "num_offset_cells": 10,
    "num_sources": 3,
    "num_receivers": 3,
    "min_channels": 2,
    "max_channels": 2,
    "channel_angles": [90],
    "channel_angle_spread": 0,
    "channel_widths": 2.0,
    "channel_amplitudes": [0, 0],
}


def test_channel_options_reach_the_prior_and_survive_spec() -> None:
    p = Crosshole(**CHANNEL_OPTIONS)  # type: ignore[arg-type]
    spec = p.spec()
    assert spec["channel_angles"] == [90.0] and spec["channel_widths"] == [2.0, 2.0]
    assert spec["min_channels"] == 2 and spec["channel_amplitudes"] == [0.0, 0.0]
    # a checkpoint stores the spec as JSON; the rebuilt problem draws the same fields
    spec = json.loads(json.dumps(spec))
    q = make_problem(spec.pop("name"), **spec)
    assert isinstance(q, Crosshole) and q.spec() == p.spec()
    x = q.sample_prior(50, _gen(4))
    torch.testing.assert_close(x, p.sample_prior(50, _gen(4)), rtol=0, atol=0)
    # two straight vertical 2-m channels: every column is all sand or all shale, and the two
    # bands of 2 columns cover 2 (on top of each other) to 4 (apart) columns
    assert torch.equal(x, x[:, :1, :].expand_as(x))
    columns = (x[:, 0, :] == 1).sum(1)  # channel facies
    assert bool(((columns >= 2) & (columns <= 4)).all()) and bool((columns == 4).any())
    # negative control: the default channel prior of the same grid draws other fields
    default = Crosshole(prior="channels", num_depth_cells=12, num_offset_cells=10)
    assert not torch.equal(default.sample_prior(50, _gen(4)), x)


def test_channel_options_from_the_cli(tmp_path) -> None:
    from ppl_cvae.cli import main

    out = tmp_path / "pairs.npz"
    args = [f"{k}={json.dumps(v) if k != 'prior' else v}" for k, v in CHANNEL_OPTIONS.items()]
    cli = ["simulate", "--problem", "crosshole", "--num", "20", "--out", str(out)]
    assert main(cli + [a for arg in args for a in ("--problem-arg", arg)]) == 0
    x = torch.from_numpy(np.load(out)["x"])
    assert x.shape == (20, 12, 10) and torch.equal(x, x[:, :1, :].expand_as(x))


def test_facies_fit_sample_diagnose_from_the_cli(tmp_path) -> None:
    from inference.arviz_io import load_inference_data
    from ppl_cvae.cli import main

    problem = ["--problem", "crosshole", "--problem-arg", "prior=channels"]
    for key in ("num_depth_cells", "num_offset_cells", "num_sources", "num_receivers"):
        problem += ["--problem-arg", f"{key}=6"]
    tiny = ["--epochs", "1", "--num-train", "128", "--hidden-dims", "8", "--latent-dim", "2"]
    assert main(["fit", *problem, *tiny, "--quiet", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["likelihood"] == "bernoulli"  # the problem's recommendation
    obs = tmp_path / "obs.npz"
    assert main(["simulate", *problem, "--num", "1", "--out", str(obs)]) == 0
    post = tmp_path / "post.nc"
    cli = ["sample", str(tmp_path / "run"), "--observation", str(obs), "--num-samples", "10"]
    assert main([*cli, "--out", str(post)]) == 0
    idata = load_inference_data(post)
    x = torch.from_numpy(idata.posterior["x"].values)
    assert bool(((x == 0) | (x == 1)).all())
    assert idata.posterior["slowness"].attrs["units"] == "s/m"
    assert "slowness_true" in idata.constant_data
    assert main(["diagnose", str(post), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "posterior_slowness_obs0.png").is_file()
    # a categorical decoder of the same codes through --likelihood and --num-facies
    flags = ["--likelihood", "categorical", "--num-facies", "3", "--quiet"]
    assert main(["fit", *problem, *tiny, *flags, "--out", str(tmp_path / "run3")]) == 0
    config = json.loads((tmp_path / "run3" / "config.json").read_text())
    assert config["model"]["num_facies"] == 3


def test_linear_gaussian_parts() -> None:
    p = Crosshole(
        num_depth_cells=6,
        num_offset_cells=5,
        num_sources=3,
        num_receivers=4,
        slowness_std=4e-5,
        correlation_length=2.0,
    )
    parts = linear_gaussian_parts(p)
    assert parts is not None
    assert parts.matrix.shape == (12, 30) and parts.prior_mean.shape == (30,)
    assert parts.prior_cov.shape == (30, 30) and parts.noise_cov.shape == (12, 12)
    assert all(t.dtype == torch.float64 for t in parts)
    torch.testing.assert_close(parts.prior_mean, torch.full((30,), 5e-4, dtype=torch.float64))
    torch.testing.assert_close(parts.prior_cov.diagonal(), torch.full((30,), 1.6e-9).double())
    # cells (0, 0) and (0, 1) are 1 m apart: 1.6e-9 * exp(-1 / 2)
    assert float(parts.prior_cov[0, 1]) == pytest.approx(1.6e-9 * math.exp(-0.5), rel=1e-12)
    torch.testing.assert_close(parts.noise_cov, (5e-5) ** 2 * torch.eye(12).double())
    x = p.sample_prior(2, _gen(0)).double()
    torch.testing.assert_close(x.reshape(2, 30) @ parts.matrix.T, p.forward(x))
    assert (
        Crosshole(prior="channels", num_depth_cells=4, num_offset_cells=4).linear_gaussian() is None
    )


def test_recommended_settings_build_configs(default: Crosshole) -> None:
    model, train = resolve_settings(default)
    assert model.linear_skip and train.resimulate
