import math

import numpy as np
import pytest
import torch

from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems import MT1D, Problem
from ppl_cvae.problems.base import linear_gaussian_parts, noise_covariance, noise_scale
from ppl_cvae.problems.mt1d import MU_0, layered_impedance, log_frequencies
from ppl_cvae.train import resolve_settings
from tests.conftest import assert_spec_round_trip


def _two_layer_reference(rho1, rho2, h, freqs):
    """Two-layer impedance by the reflection-coefficient form, in numpy (exp(+i omega t)).

    Z = z1 (1 + r E) / (1 - r E), r = (z2 - z1) / (z2 + z1), E = exp(-2 k1 h), with the
    half-space impedance z = sqrt(i omega mu0 rho) and k1 = sqrt(i omega mu0 / rho1).
    """
    omega = 2 * np.pi * np.asarray(freqs, dtype=np.float64)
    z1 = np.sqrt(1j * omega * MU_0 * rho1)
    z2 = np.sqrt(1j * omega * MU_0 * rho2)
    k1 = np.sqrt(1j * omega * MU_0 / rho1)
    r = (z2 - z1) / (z2 + z1)
    e = np.exp(-2 * k1 * h)
    imp = z1 * (1 + r * e) / (1 - r * e)
    log_rho_a = np.log10(np.abs(imp) ** 2 / (omega * MU_0))
    return log_rho_a, np.degrees(np.angle(imp))


def test_half_space_has_true_resistivity_and_45_degrees():
    freqs = log_frequencies(1e-3, 1e4, 15)
    p = MT1D(num_layers=6, depth=1000.0, frequencies=freqs)
    for value in (0.0, 1.7, 3.5):
        y32 = p.forward(torch.full((6,), value))
        # float32 output: ulp(45) = 3.8e-6, so 1e-5 is a few ulps of rounding
        assert torch.allclose(y32[0], torch.full((15,), value), atol=1e-5)
        assert torch.allclose(y32[1], torch.full((15,), 45.0), atol=1e-5)
        y64 = p.forward(torch.full((6,), value, dtype=torch.float64))
        # complex128 recursion: ~N * eps = 1e-15 relative; 1e-10 is far above round-off
        assert torch.allclose(y64[0], torch.full((15,), value, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(y64[1], torch.full((15,), 45.0, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize(("rho1", "rho2", "h"), [(100.0, 10.0, 500.0), (10.0, 1000.0, 50.0)])
def test_two_layers_match_reflection_coefficient_form(rho1, rho2, h):
    freqs = log_frequencies(1e-3, 1e3, 25)
    p = MT1D(num_layers=2, depth=h, frequencies=freqs)
    x = torch.tensor([math.log10(rho1), math.log10(rho2)], dtype=torch.float64)
    y = p.forward(x).numpy()
    log_rho_a, phase = _two_layer_reference(rho1, rho2, h, freqs)
    # both float64 evaluations of the same function: 1e-9 is ~1e6 eps of headroom
    np.testing.assert_allclose(y[0], log_rho_a, rtol=0, atol=1e-9)
    np.testing.assert_allclose(y[1], phase, rtol=0, atol=1e-9)
    # the response really is two-layered (not a half-space in disguise)
    assert np.ptp(y[0]) > 0.5 and np.abs(y[1] - 45.0).max() > 5.0


def test_asymptotes_are_top_layer_and_basement():
    p = MT1D(num_layers=3, depth=400.0, frequencies=[1e-6, 1e5])
    for top, basement in [(100.0, 1000.0), (1000.0, 10.0)]:
        x = torch.tensor([math.log10(top), 1.0, math.log10(basement)])
        y = p.forward(x)
        # 1e5 Hz: skin depth in the top layer <= 50 m << 200 m, correction ~exp(-8) = 3e-4.
        # 1e-6 Hz: basement correction ~|z_b S| with conductance S <= 22 S, |z_b| <= 9e-5 ohm,
        # i.e. < 0.3 % in rho_a. 3 % (0.0128 in log10) leaves ample headroom.
        tol = math.log10(1.03)
        assert abs(float(y[0, 1]) - math.log10(top)) < tol
        assert abs(float(y[0, 0]) - math.log10(basement)) < tol
        assert abs(float(y[1, 1]) - 45.0) < 1.0 and abs(float(y[1, 0]) - 45.0) < 1.0


def test_gradients_match_finite_differences():
    p = MT1D(num_layers=4, depth=300.0, frequencies=[0.1, 10.0, 1000.0])
    g = torch.Generator().manual_seed(0)
    x = (1.0 + 2.0 * torch.rand(2, 4, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(p.forward, (x,), eps=1e-6, atol=1e-6)
    # every layer, the half-space included, influences the data
    grad = torch.autograd.grad(p.forward(x[0]).sum(), x)[0][0]
    assert (grad.abs() > 1e-6).all()


def _recursion_by_autograd(resistivity, thicknesses, frequencies):
    """The impedance recursion written plainly, differentiated by autograd (the reference)."""
    rho = resistivity.movedim(-1, 0).unsqueeze(-1)
    i_omega_mu = 2j * math.pi * MU_0 * frequencies
    z = torch.sqrt(i_omega_mu * rho)
    t = torch.tanh(i_omega_mu / z[:-1] * thicknesses.reshape(-1, *([1] * (rho.dim() - 1))))
    imp = z[-1]
    for j in range(t.shape[0] - 1, -1, -1):
        imp = z[j] * (imp + z[j] * t[j]) / (z[j] + imp * t[j])
    return imp


@pytest.mark.parametrize("num_layers", [1, 2, 32])
def test_hand_written_adjoint_equals_autograd_through_the_recursion(num_layers):
    """Values and gradients of layered_impedance (its backward is the adjoint recursion) agree
    with autograd through the plain loop to rounding (1e-10 relative; float64), for a
    (3, 2) batch of prior profiles at the default 26 frequencies, for a loss that mixes the
    real and imaginary parts (both Wirtinger halves matter)."""
    p = MT1D()
    x = p.sample_prior(6, torch.Generator().manual_seed(1)).double().reshape(3, 2, 32)
    x = x[..., :num_layers].clone().requires_grad_()
    thick, freqs = p.thicknesses[: num_layers - 1], torch.tensor(p.frequencies).double()
    weights = torch.randn(3, 2, 26, dtype=torch.complex128, generator=torch.Generator())
    outs, grads = [], []
    for fn in (layered_impedance, _recursion_by_autograd):
        imp = fn(10.0**x, thick, freqs)
        loss = (imp * weights).real.sum() + imp.abs().log().sum() + imp.angle().sum()
        outs.append(imp)
        grads.append(torch.autograd.grad(loss, x)[0])
    assert ((outs[0] - outs[1]).abs() / outs[1].abs()).max() < 1e-12
    assert (grads[0] - grads[1]).abs().max() < 1e-10 * grads[1].abs().max()
    assert grads[0].abs().min() > 0  # every layer is seen through the adjoint


@pytest.mark.parametrize("batch", [(), (1,), (3, 2)])
def test_forward_shapes(batch):
    p = MT1D(num_layers=5, depth=800.0, frequencies=[0.1, 1.0, 10.0, 100.0])
    x = p.sample_prior(math.prod(batch), torch.Generator().manual_seed(1)).reshape(*batch, 5)
    y = p.forward(x)
    assert y.shape == (*batch, 2, 4) and y.dtype == torch.float32
    flat = p.forward(x.reshape(-1, 5))
    assert torch.equal(y.reshape(-1, 2, 4), flat)
    x_sim, y_sim = p.simulate(3)
    assert x_sim.shape == (3, 5) and y_sim.shape == (3, 2, 4)
    assert y_sim.dtype == torch.float32


def test_errors():
    p = MT1D(num_layers=4, depth=300.0)
    with pytest.raises(ShapeError, match=r"x must have shape \(\*batch, 4\), got \(2, 5\)"):
        p.forward(torch.zeros(2, 5))
    with pytest.raises(ShapeError, match="got \\(\\)"):
        p.forward(torch.tensor(1.0))
    bad = [
        ({"num_layers": 1}, "num_layers must be an integer >= 2"),
        ({"num_layers": 3.0}, "num_layers must be an integer >= 2"),
        ({"depth": 0.0}, "depth must be a positive"),
        ({"frequencies": []}, "non-empty"),
        ({"frequencies": [1.0, -1.0]}, "values > 0 Hz"),
        ({"frequencies": [10.0, 1.0]}, "strictly increasing"),
        ({"relative_error": 0.0}, "relative_error must be in"),
        ({"prior_std": 0.0}, "prior_std and correlation_length"),
        ({"kernel": "cubic"}, "unknown kernel"),
        ({"min_log10_rho": 4.0, "max_log10_rho": 4.0}, "min_log10_rho < max_log10_rho"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            MT1D(**kwargs)
    with pytest.raises(ConfigError, match="min_frequency < max_frequency"):
        log_frequencies(10.0, 1.0, 5)
    freqs = torch.tensor([1.0])
    with pytest.raises(ShapeError, match="thicknesses must have shape"):
        layered_impedance(torch.ones(3), torch.ones(3), freqs)
    with pytest.raises(DataError, match="must be > 0"):
        layered_impedance(torch.tensor([1.0, -1.0]), torch.ones(1), freqs)


def _mean_within_4se(draws, target, std):
    # Monte Carlo standard error of a mean of N independent draws: std / sqrt(N)
    return abs(float(draws.mean()) - target) < 4 * std / math.sqrt(draws.numel())


def test_prior_bounds_determinism_and_moments():
    p = MT1D()
    a = p.sample_prior(4000, torch.Generator().manual_seed(3))
    b = p.sample_prior(4000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, p.sample_prior(4000, torch.Generator().manual_seed(4)))
    assert a.shape == (4000, 32) and a.dtype == torch.float32
    assert (a >= 0.0).all() and (a <= 4.0).all()
    # the bounds sit 4 sd from the mean, so clipping is negligible and the moments are the
    # random field's: top layer and half-space, mean within 4 SE (sd / sqrt(N)) and sd within
    # 4 SE (sd / sqrt(2N)); 4 checks at 6e-5 each
    for j in (0, 31):
        assert _mean_within_4se(a[:, j], 2.0, 0.5)
        assert abs(float(a[:, j].std()) - 0.5) < 4 * 0.5 / math.sqrt(2 * 4000)
    # negative control: draws shifted by 0.1 (13 SE) are rejected
    assert not _mean_within_4se(a[:, 0] + 0.1, 2.0, 0.5)
    # correlation of neighbouring layers (200 m apart, matern52, l = 1000 m): SE ~ (1 - r^2)/sqrt(N)
    s = math.sqrt(5) * 0.2
    r = (1 + s + s * s / 3) * math.exp(-s)
    r_hat = float(torch.corrcoef(a[:, :2].T)[0, 1])
    assert abs(r_hat - r) < 4 * (1 - r * r) / math.sqrt(4000)
    # the legacy clipped prior: narrow bounds do clip, exactly onto the bounds (point masses)
    narrow = MT1D(min_log10_rho=1.9, max_log10_rho=2.1, prior="clipped").sample_prior(50)
    assert (narrow >= 1.9).all() and (narrow <= 2.1).all()
    assert (narrow == 1.9).any() and (narrow == 2.1).any()


def test_noise_model_matches_noise_cov():
    p = MT1D(relative_error=0.05)
    sigma_rho, sigma_phase = 2 * 0.05 / math.log(10), math.degrees(0.05)
    diag = noise_covariance(p).diagonal()
    assert torch.allclose(diag[:26], torch.full((26,), sigma_rho**2, dtype=torch.float64))
    assert torch.allclose(diag[26:], torch.full((26,), sigma_phase**2, dtype=torch.float64))
    assert math.isclose(p.noise_std, math.sqrt((sigma_rho**2 + sigma_phase**2) / 2))
    assert p.misfit_std == p.noise_std
    assert torch.allclose(noise_scale(p)[1], torch.full((26,), sigma_phase))
    num = 2000
    x, y = p.simulate(num, torch.Generator().manual_seed(5))
    eps = (y - p.forward(x)).double()
    # pooled over 26 frequencies: relative SE of a sample sd is 1 / sqrt(2 N 26) = 0.0031
    rel_se = 1 / math.sqrt(2 * num * 26)
    for k, sigma in enumerate((sigma_rho, sigma_phase)):
        ratio = float(eps[:, k].pow(2).mean().sqrt()) / sigma
        assert abs(ratio - 1) < 4 * rel_se
        # negative control: noise 10 % too large would be flagged
        assert abs(1.1 * ratio - 1) > 4 * rel_se


def test_spec_round_trip_and_protocol():
    p = MT1D(
        num_layers=6,
        depth=900.0,
        frequencies=[0.5, 5.0, 50.0],
        relative_error=0.03,
        prior_mean=1.5,
        prior_std=0.4,
        correlation_length=300.0,
        kernel="exponential",
        min_log10_rho=-0.5,
        max_log10_rho=3.5,
    )
    assert_spec_round_trip(p, num=4)
    assert isinstance(p, Problem) and linear_gaussian_parts(p) is None
    assert p.coords["depth"] == [0.0, 180.0, 360.0, 540.0, 720.0, 900.0]
    assert set(p.units) >= {"x", "y", *p.x_dims, *p.y_dims}
    for dims, shape in ((p.x_dims, p.x_shape), (p.y_dims, p.y_shape)):
        assert [len(p.coords[d]) for d in dims] == list(shape)
    model, train = resolve_settings(p)
    assert model.x_shape == p.x_shape and train.resimulate
