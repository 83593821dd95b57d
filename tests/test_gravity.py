import math

import pytest
import torch
from scipy import integrate

from inference.exact import linear_gaussian_posterior
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems import Gravity, Problem
from ppl_cvae.problems.base import linear_gaussian_parts, noise_covariance
from ppl_cvae.problems.gravity import GRAVITATIONAL_CONSTANT, MGAL, prism_kernel
from ppl_cvae.train import resolve_settings
from tests.conftest import assert_spec_round_trip

TWO_G = 2 * GRAVITATIONAL_CONSTANT / MGAL  # mGal per (kg/m^3) per (m^2 / m) of line mass


def _quadrature(station, x1, x2, z1, z2):
    """g_z (mGal per kg/m^3) of a cell by 2-D quadrature of the line-mass kernel."""
    value, _ = integrate.dblquad(
        lambda z, x: z / ((x - station) ** 2 + z**2), x1, x2, z1, z2, epsabs=0, epsrel=1e-11
    )
    return TWO_G * value


@pytest.mark.parametrize(
    ("station", "cell"),
    [
        (0.0, (-20.0, 30.0, 10.0, 60.0)),  # station above the cell
        (200.0, (-20.0, 30.0, 10.0, 60.0)),  # far to the side
        (-75.0, (0.0, 50.0, 0.0, 50.0)),  # cell touching the surface, station beside it
        (50.0, (0.0, 50.0, 0.0, 50.0)),  # station exactly on the cell's top corner
    ],
)
def test_single_cell_matches_quadrature(station, cell):
    x1, x2, z1, z2 = cell
    k = float(prism_kernel([station], [x1, x2], [z1, z2])[0, 0, 0])
    # closed form in float64 (~1e-13) vs adaptive quadrature at epsrel 1e-11: 1e-6 is loose
    assert k == pytest.approx(_quadrature(station, x1, x2, z1, z2), rel=1e-6)
    assert k > 0


def test_small_cell_is_a_line_mass_far_away():
    a, d = 1.0, 100.0
    stations = [-300.0, -100.0, 0.0, 50.0, 300.0]
    k = prism_kernel(stations, [-a / 2, a / 2], [d - a / 2, d + a / 2])[:, 0, 0]
    line = torch.tensor([TWO_G * a * a * d / (s * s + d * d) for s in stations])
    # a square's quadrupole vanishes (90-degree symmetry): the first correction to the line
    # mass is O((a / r)^4) <= 1e-8; float64 corner sums cancel to ~1e-11 relative
    torch.testing.assert_close(k, line.double(), rtol=1e-7, atol=0)


def test_wide_slab_is_a_bouguer_slab():
    thickness, top, half_width = 200.0, 100.0, 1e6
    k = prism_kernel([0.0, 5e3], [-half_width, half_width], [top, top + thickness])[:, 0, 0]
    bouguer = 2 * math.pi * GRAVITATIONAL_CONSTANT * thickness / MGAL
    # missing far field ~ (2 / pi) * mean depth / half_width = 1.3e-4 of the slab value
    torch.testing.assert_close(k, torch.full((2,), bouguer, dtype=torch.float64), rtol=5e-4, atol=0)


def test_buried_cylinder_on_the_problem_grid():
    # 5 m cells; cylinder of radius 30 m centred on a grid node at offset 200 m, depth 100 m
    p = Gravity(num_depth_cells=40, num_offset_cells=80, depth=200.0, width=400.0, num_stations=20)
    zc = torch.tensor(p.coords["depth"])[:, None]
    xc = torch.tensor(p.coords["offset"])[None, :]
    inside = ((xc - 200.0) ** 2 + (zc - 100.0) ** 2 <= 30.0**2).float()
    delta_rho = 300.0
    y = p.forward(delta_rho * inside).double()
    area = float(inside.sum()) * 25.0  # digitised cross-section in m^2
    assert area == pytest.approx(math.pi * 30.0**2, rel=0.03)
    xs = torch.tensor(p.coords["station"], dtype=torch.float64)
    cylinder = TWO_G * delta_rho * area * 100.0 / ((xs - 200.0) ** 2 + 100.0**2)
    # the digitised disk keeps the 90-degree symmetry, so its quadrupole vanishes; the next
    # (l = 4) term is ~ (cell / d)^2 (a / d)^2 = 2e-4 of the monopole; float32 matrix adds 1e-7
    torch.testing.assert_close(y, cylinder, rtol=1e-3, atol=0)
    # negative controls: the body 20 m off sideways or deeper (wrong coordinates or
    # flattening order) misses the 0.1 % tolerance by two orders of magnitude
    for dim in (0, 1):
        shifted = p.forward(delta_rho * inside.roll(4, dims=dim)).double()
        assert ((shifted - cylinder).abs() / cylinder).max() > 0.1


def test_forward_is_the_matrix_and_linear():
    p = Gravity(num_depth_cells=3, num_offset_cells=5, num_stations=4)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    y = p.forward(2.5 * x1 - 0.7 * x2)
    torch.testing.assert_close(y, 2.5 * p.forward(x1) - 0.7 * p.forward(x2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.forward(x1.float()), x1.float().reshape(-1) @ p.matrix.T)
    assert p.matrix.dtype == torch.float32 and (p.matrix > 0).all()


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)])
def test_forward_shapes(batch):
    p = Gravity(num_depth_cells=4, num_offset_cells=6, num_stations=7)
    x = torch.randn(*batch, 4, 6)
    y = p.forward(x)
    assert y.shape == (*batch, 7) and y.dtype == torch.float32
    assert p.forward(x.double()).dtype == torch.float64
    xs, ys = p.simulate(5)
    assert xs.shape == (5, 4, 6) and ys.shape == (5, 7) and ys.dtype == torch.float32


def test_errors():
    p = Gravity(num_depth_cells=4, num_offset_cells=6)
    with pytest.raises(ShapeError, match=r"x must have shape \(\*batch, 4, 6\), got \(24,\)"):
        p.forward(torch.zeros(24))
    with pytest.raises(ShapeError, match="got \\(2, 6, 4\\)"):
        p.forward(torch.zeros(2, 6, 4))
    bad = [
        ({"num_depth_cells": 0}, "num_depth_cells must be a positive integer"),
        ({"num_stations": 2.0}, "num_stations must be a positive integer"),
        ({"depth": -1.0}, "depth must be a finite number > 0"),
        ({"noise_std": 0.0}, "noise_std must be"),
        ({"correlation_length": float("inf")}, "correlation_length must be"),
        ({"kernel": "cubic"}, "unknown kernel"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            Gravity(**kwargs)
    with pytest.raises(ConfigError, match="strictly increasing"):
        prism_kernel([0.0], [1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ConfigError, match="depth edges must be >= 0"):
        prism_kernel([0.0], [0.0, 1.0], [-1.0, 1.0])


def test_prior_moments_and_determinism():
    p = Gravity()
    num = 2000
    x = p.sample_prior(num, torch.Generator().manual_seed(2))
    assert torch.equal(x, p.sample_prior(num, torch.Generator().manual_seed(2)))
    assert x.shape == (num, 16, 32) and x.dtype == torch.float32
    # two corner cells: mean within 4 SE (100 / sqrt(N) = 2.2 kg/m^3), sd within 4 SE
    # (100 / sqrt(2N) = 1.6 kg/m^3); 4 checks at 6e-5 each
    for cell in (x[:, 0, 0], x[:, 15, 31]):
        assert abs(float(cell.mean())) < 4 * 100 / math.sqrt(num)
        assert abs(float(cell.std()) - 100) < 4 * 100 / math.sqrt(2 * num)
    # negative control: a 10 kg/m^3 shift (4.5 SE) is flagged
    assert abs(float(x[:, 0, 0].mean()) + 10) > 4 * 100 / math.sqrt(num)
    # correlation with the horizontal neighbour (50 m, matern52, l = 200 m)
    s = math.sqrt(5) * 0.25
    r = (1 + s + s * s / 3) * math.exp(-s)
    r_hat = float(torch.corrcoef(x[:, 8, 10:12].T)[0, 1])
    assert abs(r_hat - r) < 4 * (1 - r * r) / math.sqrt(num)


def test_linear_gaussian_parts_are_consistent_with_simulate():
    p = Gravity(num_depth_cells=3, num_offset_cells=4, num_stations=6, noise_std=0.02)
    parts = linear_gaussian_parts(p)
    assert parts is not None and p.noise_cov is None
    assert all(t.dtype == torch.float64 for t in parts)
    assert parts.matrix.shape == (6, 12) and parts.prior_cov.shape == (12, 12)
    torch.testing.assert_close(parts.noise_cov, noise_covariance(p))
    torch.testing.assert_close(parts.matrix.float(), p.matrix)
    num = 500
    x, y = p.simulate(num, torch.Generator().manual_seed(7))

    def mean_chi2(prior_cov):
        mean, cov = linear_gaussian_posterior(
            parts.matrix, parts.noise_cov, parts.prior_mean, prior_cov, y.double()
        )
        r = x.reshape(num, -1).double() - mean
        chol = torch.linalg.cholesky(cov)
        return float(torch.linalg.solve_triangular(chol, r.T, upper=False).pow(2).sum(0).mean())

    # the true x is a posterior draw: its Mahalanobis distance is chi2 with d = 12 degrees of
    # freedom; the mean of N of them has SE sqrt(2 d / N) = 0.22, allow 4 SE
    se = math.sqrt(2 * 12 / num)
    assert abs(mean_chi2(parts.prior_cov) - 12) < 4 * se
    # negative control: a prior 30 % too narrow makes the posterior overconfident
    assert abs(mean_chi2(0.49 * parts.prior_cov) - 12) > 4 * se


def test_spec_round_trip_and_protocol():
    p = Gravity(
        num_depth_cells=5,
        num_offset_cells=7,
        depth=250.0,
        width=700.0,
        num_stations=9,
        noise_std=0.03,
        prior_mean=10.0,
        prior_std=50.0,
        correlation_length=120.0,
        kernel="exponential",
    )
    assert_spec_round_trip(p, num=3)
    assert isinstance(p, Problem)
    assert p.coords["depth"] == [25.0, 75.0, 125.0, 175.0, 225.0]
    assert p.coords["station"][0] == pytest.approx(700.0 / 18)
    assert set(p.units) >= {"x", "y", *p.x_dims, *p.y_dims}
    for dims, shape in ((p.x_dims, p.x_shape), (p.y_dims, p.y_shape)):
        assert [len(p.coords[d]) for d in dims] == list(shape)
    model, train = resolve_settings(p)
    assert model.x_shape == p.x_shape and train.resimulate
