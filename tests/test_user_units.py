"""Tier 2: ``fit --data`` on a user's file in awkward units, against the closed-form posterior.

The file is a linear-Gaussian problem, ``x ~ N(m, S)``, ``y = A x + b + e``, ``e ~ N(0, s^2 I)``,
written in physical units; its exact posterior is ``cov = (S^-1 + A^T A / s^2)^-1``,
``mean = cov (S^-1 m + A^T (y - b) / s^2)`` (computed here in float64, in the data-space form
that also holds for a singular ``S``). What is checked is the posterior a data file's default
model starts from, before any SVI step: the file is read by :func:`load_pairs`, its settings
come from :func:`resolve_settings` (``x_whitening="linear"``), and :func:`build_cvae` fits the
standardisers and the linear whitening, ``x | y ~ N(A' y + b', L L^T)`` in standardised units,
which is exact for this problem up to the regression's sampling error. The decoder (a flow for
a small ``x``) only learns departures from it, so an error here is an error of the fitted
posterior (measured with ``ppl-cvae fit --data`` and ``sample``: mean errors of 0.9 and 3.0
posterior sds, sds 31% and 72% too wide, for the two bugs these tests caught).

Tolerances (``N`` pairs, ``m`` data, ``sd`` the exact posterior sd of an element):
- mean: the least-squares prediction at a typical ``y`` has error variance about
  ``sd^2 (m + 1) / N``, so 4 standard errors are ``4 sqrt((m + 1) / N)`` sd (0.15 sd for
  ``N = 5000``, ``m = 6``);
- sd: the residual variance has ``N - m - 1`` degrees of freedom, relative standard error
  ``sqrt(2 / (N - m - 1))`` of the variance, half that of the sd: 4 standard errors are
  ``2 sqrt(2 / N)`` (0.04 for ``N = 5000``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_cvae import build_cvae, resolve_settings
from ppl_cvae.data.io import MAX_STEP_FRACTION, load_pairs
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.errors import DataError
from ppl_cvae.train.settings import DataSource
from tests.conftest import SEED

NUM_PAIRS = 5000
X_DIM, Y_DIM = 4, 6
MEAN_TOL = 4 * math.sqrt((Y_DIM + 1) / NUM_PAIRS)  # 0.15 sd
SD_TOL = 2 * math.sqrt(2 / NUM_PAIRS)  # 0.04


def _problem(x_scale, x_offset, y_scale, y_offset, noise_sd=0.3, seed=SEED):
    """A well-scaled problem (m = 0, S = I, A ~ N(0, 1)) written in other units, elementwise.

    ``x' = cx x + ox`` and ``y' = cy y + oy``: ``m' = ox``, ``S' = diag(cx)^2``,
    ``A' = diag(cy) A diag(1 / cx)``, ``b' = oy - A' ox``, ``s' = cy s``; the posterior sd of
    ``x'`` in units of its own is that of ``x`` times ``cx``, so the check is as strict in
    every unit system.
    """
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(Y_DIM, X_DIM))
    cx = np.broadcast_to(np.asarray(x_scale, float), (X_DIM,))
    ox = np.broadcast_to(np.asarray(x_offset, float), (X_DIM,))
    cy = np.broadcast_to(np.asarray(y_scale, float), (Y_DIM,))
    oy = np.broadcast_to(np.asarray(y_offset, float), (Y_DIM,))
    a_units = cy[:, None] * a / cx[None, :]
    return {
        "mean": ox.copy(),
        "cov": np.diag(cx**2),
        "A": a_units,
        "b": oy - a_units @ ox,
        "s": cy * noise_sd,
    }


def _simulate(p, num, rng):
    x = p["mean"] + rng.normal(size=(num, X_DIM)) * np.sqrt(np.diag(p["cov"]))
    y = x @ p["A"].T + p["b"] + rng.normal(size=(num, Y_DIM)) * p["s"]
    return x, y


def _exact(p, y):
    """Exact posterior means (M, d) and sds (d,) for observations y (M, m), data-space form."""
    s_cov, a = p["cov"], p["A"]
    gain = s_cov @ a.T @ np.linalg.inv(a @ s_cov @ a.T + np.diag(p["s"] ** 2))
    cov = s_cov - gain @ a @ s_cov
    return p["mean"] + (y - p["b"] - p["mean"] @ a.T) @ gain.T, np.sqrt(np.diag(cov))


def _start_posterior(path: Path, y_obs: np.ndarray):
    """Means (M, d) and sds (d,) of the posterior a data file's default model starts from."""
    x, y = load_pairs(path)
    model_config, _ = resolve_settings(DataSource.of(x, y))
    assert model_config.x_whitening == "linear"  # the data file's default (README)
    cvae = build_cvae(model_config, x, y, seed=SEED)
    whitener, xs, ys = cvae.whitener, cvae.x_standardiser, cvae.y_standardiser
    assert whitener is not None and ys is not None
    with torch.no_grad():
        y_std = ys(torch.as_tensor(y_obs, dtype=torch.float32)).double()
        loc = y_std @ whitener.weight.double().T + whitener.bias.double()
        mean = loc * xs.std.double() + xs.mean.double()
        tril = whitener.scale_tril.double()
        sd = (tril @ tril.T).diagonal().sqrt() * xs.std.double()
    return mean.numpy(), sd.numpy()


def _errors(tmp_path, p):
    """Write the file, return (max |mean error| in exact sds, sd ratios) over 5 observations."""
    rng = np.random.default_rng(SEED + 1)
    x, y = _simulate(p, NUM_PAIRS, rng)
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    _, y_obs = _simulate(p, 5, rng)
    mean, sd = _start_posterior(tmp_path / "pairs.npz", y_obs)
    exact_mean, exact_sd = _exact(p, y_obs)
    return float(np.abs((mean - exact_mean) / exact_sd).max()), sd / exact_sd


UNITS = {
    # x: resistivity in ohm-m (1e3 +- 1e2); y: traveltimes in s (1e-3, noise 1e-5)
    "resistivity_traveltime": (1e2, 1e3, 3.3e-5, 1e-3),
    "reverse": (1e-5, 1e-3, 3e1, 1e3),
    "all_1e-8": (1e-8, 0.0, 1e-8, 0.0),
    "all_1e8": (1e8, 0.0, 1e8, 0.0),
    "offset_1e4": (1.0, 1e4, 1.0, 1e4),
    # permeability (m^2), porosity, resistivity (ohm-m), a log quantity: spreads 1e-14 to 1e2
    "mixed_x": ([1e-14, 0.05, 1e2, 1.0], [1e-13, 0.2, 1e3, 0.0], 1.0, 0.0),
    # data in units 21 decades apart: a column of 1e-12 is as informative as one of 1e9
    "mixed_y": (1.0, 0.0, [1e-12, 1e-3, 1.0, 1e3, 1e6, 1e9], 0.0),
}


@pytest.mark.parametrize("case", list(UNITS))
def test_the_start_posterior_is_exact_in_any_units(tmp_path, case):
    """Before the fix, mixed_x had the permeability's sd 1e10 times too wide and mixed_y
    lost its 1e-12 column (sds up to 1.7 times too wide): the standardiser called an element
    constant when its sd was below 1e-8 times the largest one of the variable."""
    err, ratio = _errors(tmp_path, _problem(*UNITS[case]))
    assert err < MEAN_TOL, f"{case}: mean error {err:.3f} exact sds (tolerance {MEAN_TOL:.3f})"
    assert np.abs(ratio - 1).max() < SD_TOL, f"{case}: sd ratios {ratio.round(3)}"


@pytest.mark.parametrize("noise_sd", [3e-2, 3e-3, 3e-4])
def test_the_start_posterior_is_exact_for_informative_data(tmp_path, noise_sd):
    """Noise far below the data's spread: the posterior is much narrower than the prior.

    Before the fix the regression's ridge (1e-3 of the data variance) shrank the mean toward
    the prior mean by about 1, 2 and 20 posterior sds (and widened the sds by up to 54% and
    12 times at the two smaller noises); the fitted flow kept much of it (noise 3e-3 in
    unit-variance data: 0.87 sds off, 31% too wide).
    """
    # resistivity-traveltime units as well: the fix must not depend on the scaling
    err, ratio = _errors(tmp_path, _problem(1e2, 1e3, 3.3e-5, 1e-3, noise_sd=noise_sd))
    assert err < MEAN_TOL, f"noise {noise_sd}: mean error {err:.3f} exact sds"
    assert np.abs(ratio - 1).max() < SD_TOL, f"noise {noise_sd}: sd ratios {ratio.round(3)}"


def test_negative_control_a_posterior_from_shifted_pairs_is_flagged(tmp_path):
    """The check can fail: pairs whose x is shifted by 0.5 prior sd give a wrong start."""
    p = _problem(1.0, 0.0, 1.0, 0.0)
    rng = np.random.default_rng(SEED + 1)
    x, y = _simulate(p, NUM_PAIRS, rng)
    np.savez(tmp_path / "pairs.npz", x=x + 0.5, y=y)
    _, y_obs = _simulate(p, 5, rng)
    mean, sd = _start_posterior(tmp_path / "pairs.npz", y_obs)
    exact_mean, exact_sd = _exact(p, y_obs)
    assert np.abs((mean - exact_mean) / exact_sd).max() > 10 * MEAN_TOL
    # and one whose noise is doubled gives sds more than SD_TOL too wide
    np.savez(tmp_path / "noisy.npz", x=x, y=y + rng.normal(size=y.shape) * p["s"] * math.sqrt(3))
    _, sd = _start_posterior(tmp_path / "noisy.npz", y_obs)
    assert (sd / exact_sd - 1).max() > 5 * SD_TOL


def test_mixed_units_are_each_standardised():
    """Each element is scaled by its own sd; only elements constant to float32 keep std 1."""
    data = torch.stack(
        [
            1e-13 + 1e-14 * torch.randn(1000, dtype=torch.float64),
            3e38 * torch.ones(1000, dtype=torch.float64),
            1e9 * torch.randn(1000, dtype=torch.float64),
            torch.full((1000,), 5.0, dtype=torch.float64),
            torch.zeros(1000, dtype=torch.float64),
        ],
        dim=1,
    ).float()
    s = Standardiser((5,), "x").fit(data)
    assert float(s.std[0]) == pytest.approx(1e-14, rel=0.1)
    assert float(s.std[2]) == pytest.approx(1e9, rel=0.1)
    assert s.std[1] == s.std[3] == s.std[4] == 1.0  # constants
    u = s(data)
    assert torch.allclose(u[:, [0, 2]].std(0), torch.ones(2), atol=1e-3)


RESOLUTION = {
    # name: (x, accepted?); y is a well-scaled column; the step is float32's unless noted
    "offset_1e5": (lambda z: z + 1e5, True),  # step 0.0078 = 0.8% of sd 1
    "offset_1e6": (lambda z: z + 1e6, False),  # step 0.0625 = 6%
    "utm_northing": (lambda z: 5e6 + 10 * z, False),  # 5e6 m +- 10 m: step 0.5 m = 5%
    "float32_offset_1e6": (lambda z: (z + 1e6).astype(np.float32), False),
    "float16": (lambda z: z.astype(np.float16), True),  # step 0.004 near 4
    "float16_offset_1e3": (lambda z: (z + 1e3).astype(np.float16), False),  # step 0.5
    "int64_millimetres": (lambda z: np.round(1000 * z).astype(np.int64), True),
    "int64_above_2_pow_24": (lambda z: np.round(1000 * z).astype(np.int64) + 2**40, False),
    "constant_column": (lambda z: np.c_[z[:, :3], np.full(len(z), 5.0)], True),
    "constant_up_to_float64_rounding": (
        lambda z: np.c_[z[:, :3], 0.1 + 1e-17 * z[:, 3]],
        True,
    ),
    "permeability": (lambda z: 1e-13 + 1e-14 * z, True),
}


@pytest.mark.parametrize("case", list(RESOLUTION))
def test_values_float32_cannot_resolve_are_refused(tmp_path, case):
    """A spread below 100 rounding steps would be rounded in training and in the draws.

    Measured with ``fit --data``: an offset of 1e6 on unit-sd x and y put the posterior mean
    2.6 times further from the exact one than the same file without it (0.20 against 0.076
    sds); float16 values near 1e3 gave 1.5 sds and sds 50% too wide; an offset of 1e5 (step
    0.8% of the sd) and float16 values near 4 were as good as the baseline.
    """
    make, accepted = RESOLUTION[case]
    z = np.random.default_rng(SEED).normal(size=(2000, 4))
    np.savez(tmp_path / "pairs.npz", x=make(z), y=z[:, :2])
    if accepted:
        x, _ = load_pairs(tmp_path / "pairs.npz")
        assert x.dtype == torch.float32
        return
    with pytest.raises(
        DataError,
        match=r"x in .*element \[\.\.\., \d\] has mean .* rounds "
        r"values of magnitude .* to steps of",
    ):
        load_pairs(tmp_path / "pairs.npz")


def test_the_refusal_names_the_remedy_and_covers_y(tmp_path):
    z = np.random.default_rng(SEED).normal(size=(2000, 3))
    np.savez(tmp_path / "pairs.npz", x=z, y=np.c_[z, 1e6 + z[:, 0]])
    with pytest.raises(
        DataError,
        match=r"y in .*element \[\.\.\., 3\].*6\.\d% of that spread "
        r"\(at most 1% is accepted\).*subtract a reference "
        r"value from y\[\.\.\., 3\]",
    ):
        load_pairs(tmp_path / "pairs.npz")
    np.savez(tmp_path / "half.npz", x=(1e3 + z).astype(np.float16), y=z)
    with pytest.raises(DataError, match="its dtype float16 rounds.*save the values as float32"):
        load_pairs(tmp_path / "half.npz")
    assert MAX_STEP_FRACTION == 1e-2
