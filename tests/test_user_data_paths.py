"""``fit --data`` through every reader, and ``sample --observation`` on a user's files.

:mod:`tests.test_user_units` checks the eager ``.npz`` path against the closed-form posterior
of a linear-Gaussian file. Here the same file goes through the other readers (``.nc`` and
``.pt`` loaded whole, a folder of ``x.npy``/``y.npy`` and a ``.nc`` read lazily, in chunks),
which must give the same standardisers and the same start posterior, or the same refusal with
the same message; and observation files with NaN/inf, a large offset, float16 values or values
far outside the training data are refused or warned of, naming the element.

Tolerances of the closed-form comparison: as :mod:`tests.test_user_units` (``MEAN_TOL``,
``SD_TOL``: 4 standard errors of the regression with ``N = 5000`` pairs).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from inference.posterior import FAR_WARNING, warn_far_observations
from inference.sample import sample_posterior, sample_posterior_to_netcdf
from ppl_cvae import CVAE, ModelConfig, build_cvae, resolve_settings
from ppl_cvae.data.io import load_observations, load_pairs
from ppl_cvae.data.lazy import chunk_rows_for, open_lazy_pairs, scan_pairs
from ppl_cvae.errors import DataError
from ppl_cvae.train.fit import validation_split
from ppl_cvae.train.settings import DataSource
from ppl_cvae.train.sources import prepare_lazy_model
from tests.conftest import SEED
from tests.test_user_units import MEAN_TOL, NUM_PAIRS, SD_TOL, _exact, _problem, _simulate

EAGER = ("npz", "nc", "pt")
LAZY = ("folder", "nc-lazy")


def _write(root: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    """Write the pairs as .npz, .nc, .pt and a folder of .npy; return the path per reader."""
    root.mkdir(exist_ok=True)
    np.savez(root / "p.npz", x=x, y=y)
    xr.Dataset(
        {
            "x": (("sample", *(f"a{i}" for i in range(x.ndim - 1))), x),
            "y": (("sample", *(f"b{i}" for i in range(y.ndim - 1))), y),
        }
    ).to_netcdf(root / "p.nc", engine="h5netcdf")
    torch.save({"x": torch.as_tensor(x), "y": torch.as_tensor(y)}, root / "p.pt")
    folder = root / "folder"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return {"npz": root / "p.npz", "nc": root / "p.nc", "pt": root / "p.pt",
            "folder": folder, "nc-lazy": root / "p.nc"}


def _scan(path: Path, chunk_bytes: int = 1 << 13) -> None:
    """The lazy readers' one pass before training (small chunks: many of them)."""
    with open_lazy_pairs(path) as pairs:
        scan_pairs(
            pairs,
            chunk_rows=chunk_rows_for(pairs, chunk_bytes),
            validation_rows=torch.arange(0),
        )


def _refusal(reader: str, path: Path) -> str:
    """The message a reader refuses the file with ('' if it accepts it)."""
    try:
        if reader in EAGER:
            load_pairs(path)
        else:
            _scan(path)
    except DataError as err:
        return str(err).replace(str(path), "FILE")
    return ""


RESOLUTION = {
    # name: make x from standard normal z (4 columns), refused?
    "offset_1e5": (lambda z: z + 1e5, False),  # float32 step 0.8% of the sd
    "offset_1e6": (lambda z: z + 1e6, True),  # 6%
    "float16_offset_1e3": (lambda z: (z + 1e3).astype(np.float16), True),  # 50%
    "int64_above_2_pow_24": (lambda z: np.round(1000 * z).astype(np.int64) + 2**40, True),
}


@pytest.mark.parametrize("case", list(RESOLUTION))
def test_every_reader_applies_the_resolution_check(tmp_path, case):
    """Before the fix the lazy readers (a folder, ``--lazy``, a large ``.nc``) trained on
    values float32 cannot resolve that ``.npz`` refused: with float16 x near 1e3 the start
    posterior's sds were 13-42% too wide; int64 values near 2**40 were rounded to steps of
    65,536, 67 times their sd."""
    make, refused = RESOLUTION[case]
    z = np.random.default_rng(SEED).normal(size=(3000, 4))
    paths = _write(tmp_path / "d", make(z), z[:, :2])
    messages = {reader: _refusal(reader, path) for reader, path in paths.items()}
    if not refused:
        assert set(messages.values()) == {""}, messages
        return
    assert re.search(r"x in 'FILE': element \[\.\.\., 0\] has mean .* rounds values of "
                     r"magnitude .* to steps of", messages["npz"]), messages["npz"]
    assert set(messages.values()) == {messages["npz"]}, messages


@pytest.mark.parametrize("where", ["x", "y"])
def test_nan_and_inf_are_refused_alike_naming_the_first_and_the_count(tmp_path, where):
    """Before the fix the lazy readers counted only the chunk that held the first bad value
    (1 of 3 here) and no reader named the element."""
    rng = np.random.default_rng(SEED)
    x, y = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 6))
    bad = x if where == "x" else y
    bad[1234, 2], bad[1500, 1], bad[2900, 3] = np.nan, np.inf, -np.inf  # three chunks apart
    paths = _write(tmp_path / "d", x, y)
    shape = "(3000, 4)" if where == "x" else "(3000, 6)"
    expected = (
        f"{where} in 'FILE' contains 3 NaN or inf values (the first at {where}[1234, 2] = nan; "
        f"shape {shape}, dtype float64); replace or drop those pairs (fit and evaluate read them)"
    )
    for reader, path in paths.items():
        assert _refusal(reader, path) == expected, reader
    # the command line's first pass over a lazy file is the digest of its pairs (for
    # --resume): it counted only the chunk of the first bad value (the README audit, session
    # 34: "x (rows 0:37449) ... contains 1 NaN or inf values" for a file holding 3)
    for reader in ("folder", "nc-lazy"):
        with open_lazy_pairs(paths[reader]) as pairs, pytest.raises(DataError) as err:
            pairs.digest(200)
        assert str(err.value).replace(str(paths[reader]), "FILE") == expected, reader
    # a chunk read while training (the file changed after the scan) names its file rows
    with open_lazy_pairs(paths["folder"]) as pairs, pytest.raises(
        DataError, match=rf"{where} \(rows 1400:1600\) in .* contains 1 NaN or inf values "
        rf"\(the first at {where}\[1500, 1\] = inf"
    ):
        pairs.read(1400, 1600)


def _start_posterior(cvae: CVAE, y_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means (M, d) and sds (d,) of the linear-whitening start (tests/test_user_units)."""
    whitener, xs, ys = cvae.whitener, cvae.x_standardiser, cvae.y_standardiser
    assert whitener is not None and ys is not None
    with torch.no_grad():
        y_std = ys(torch.as_tensor(y_obs, dtype=torch.float32)).double()
        mean = (y_std @ whitener.weight.double().T + whitener.bias.double()) * xs.std + xs.mean
        tril = whitener.scale_tril.double()
        sd = (tril @ tril.T).diagonal().sqrt() * xs.std.double()
    return mean.numpy(), sd.numpy()


def test_lazy_readers_fit_the_eager_standardisers_and_the_exact_start(tmp_path):
    """The folder and the lazily read .nc give the .npz path's moments and start posterior."""
    p = _problem(1e2, 1e3, 3.3e-5, 1e-3)  # resistivity in ohm-m, traveltimes in s
    rng = np.random.default_rng(SEED + 1)
    x, y = _simulate(p, NUM_PAIRS, rng)
    _, y_obs = _simulate(p, 5, rng)
    paths = _write(tmp_path / "d", x, y)
    exact_mean, exact_sd = _exact(p, y_obs)
    xe, ye = load_pairs(paths["npz"])
    config, train = resolve_settings(DataSource.of(xe, ye))
    # both fit their standardisers on the training rows of the same split
    eager = build_cvae(config, xe, ye, seed=SEED, fit_rows=validation_split(len(xe), train)[0])
    for reader in LAZY:
        with open_lazy_pairs(paths[reader]) as pairs:
            cvae, _ = prepare_lazy_model(pairs, config, train, chunk_bytes=1 << 13)
        for name in ("x_standardiser", "y_standardiser"):
            a, b = getattr(eager, name), getattr(cvae, name)
            # float64 sums of the same float32 values in other orders: about 1e-16 relative
            torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=0)
            torch.testing.assert_close(a.std, b.std, rtol=1e-6, atol=0)
        mean, sd = _start_posterior(cvae, y_obs)
        err = float(np.abs((mean - exact_mean) / exact_sd).max())
        assert err < MEAN_TOL, f"{reader}: mean error {err:.3f} exact sds"
        assert np.abs(sd / exact_sd - 1).max() < SD_TOL, f"{reader}: sd ratios {sd / exact_sd}"


# --- observation files -------------------------------------------------------------------------


def test_nan_in_an_observation_names_the_element_and_the_step(tmp_path):
    y = np.zeros((3, 6))
    y[1, 3], y[2, 0] = np.nan, -np.inf
    np.save(tmp_path / "obs.npy", y)
    with pytest.raises(
        DataError,
        match=r"y in .* contains 2 NaN or inf values \(the first at y\[1, 3\] = nan; shape "
        r"\(3, 6\), dtype float64\); replace them, or drop those observations, before sampling",
    ):
        load_observations(tmp_path / "obs.npy", (6,))


def test_an_observation_float32_cannot_resolve_is_refused(tmp_path):
    """Training y of sd 0.7 near 0: an observation with an offset of 1e6 was drawn for
    silently (its float32 steps, 0.0625, are 9% of the sd)."""
    scale = torch.full((6,), 0.7)
    np.save(tmp_path / "offset.npy", np.random.default_rng(SEED).normal(size=(3, 6)) + 1e6)
    with pytest.raises(
        DataError,
        match=r"observation 0, element \[\.\.\., 0\] = 1e\+06 \(18 value\(s\) like it\): "
        r"float32 .* rounds it to steps of 0\.0625, 8\.9% of the training standard deviation",
    ):
        load_observations(tmp_path / "offset.npy", (6,), y_scale=scale)
    # values float32 holds exactly (a constant of 1e6, small integers) are not refused
    np.save(tmp_path / "exact.npy", np.full((6,), 1e6))
    load_observations(tmp_path / "exact.npy", (6,), y_scale=scale)
    np.save(tmp_path / "int.npy", np.arange(6, dtype=np.int64))
    load_observations(tmp_path / "int.npy", (6,), y_scale=scale)


def test_a_float16_observation_coarser_than_the_training_spread_is_warned_of(tmp_path):
    """float16 near 1e3 has steps of 0.5, half the training sd of 1: the observation was
    rounded when saved, and the posterior is that of the rounded values."""
    scale = torch.ones(6)
    np.save(tmp_path / "half.npy", (1e3 + np.zeros((2, 6))).astype(np.float16))
    with pytest.warns(UserWarning, match=r"observation 0, element \[\.\.\., 0\] = 1000 .* "
                      r"stored as float16, whose steps there are 0\.5, 50\.0% of the training"):
        load_observations(tmp_path / "half.npy", (6,), y_scale=scale)
    np.save(tmp_path / "small.npy", np.full((6,), 4.0, dtype=np.float16))  # steps 0.4% of 1
    load_observations(tmp_path / "small.npy", (6,), y_scale=scale)  # no warning (error filter)


@pytest.fixture(scope="module")
def tiny() -> CVAE:
    """An untrained CVAE whose y standardiser has training mean 10 and sd 2."""
    cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
    assert cvae.y_standardiser is not None
    cvae.y_standardiser.set_moments(torch.full((2,), 10.0), torch.full((2,), 2.0))
    return cvae


def test_an_observation_far_outside_the_training_y_is_warned_of(tiny, tmp_path):
    """100 training sds out, the draws were finite and came back without a word."""
    near = torch.tensor([[10.0, 10.0], [30.0, -9.0]])  # 10 and 9.5 sds: not warned
    assert warn_far_observations(tiny, near) == 0
    sample_posterior(tiny, near, 5, seed=0)  # the error filter turns any warning into a failure
    far = torch.tensor([[10.0, 10.0], [12.0, 10.0 - 100 * 2.0]])
    match = (r"observation 1, y\[\.\.\., 1\] = -190 lies 100 training standard deviations from "
             r"the mean of the training y there \(10, sd 2\); 1 value\(s\) of 2 observation")
    with pytest.warns(UserWarning, match=match):
        sample_posterior(tiny, far, 5, seed=0)
    # drawn in chunks: one warning, not one per chunk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_posterior_to_netcdf(tiny, far, 50, tmp_path / "p.nc", seed=0, chunk_bytes=1,
                                   in_memory_bytes=0)
    assert [str(w.message)[:40] for w in caught] == ["observation 1, y[..., 1] = -190 lies 100"]
    assert FAR_WARNING == 10.0
