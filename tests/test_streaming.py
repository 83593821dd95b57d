"""Large posterior requests are drawn in chunks and streamed to one NetCDF file."""

import numpy as np
import pytest
import torch

from inference.arviz_io import az, save_inference_data
from inference.posterior import bytes_per_draw, draw_posterior
from inference.sample import sample_posterior, sample_posterior_to_netcdf
from ppl_cvae import CVAE, ModelConfig
from ppl_cvae.errors import ResourceError
from ppl_cvae.problems import make_problem


@pytest.fixture
def model():
    problem = make_problem("linear_gaussian")
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)
    torch.manual_seed(0)
    return CVAE(config), problem


def test_small_requests_are_written_in_one_piece(model, tmp_path):
    cvae, problem = model
    y = torch.zeros(2, *problem.y_shape)
    sample_posterior_to_netcdf(cvae, y, 50, tmp_path / "a.nc", problem=problem, seed=3)
    save_inference_data(sample_posterior(cvae, y, 50, problem=problem, seed=3), tmp_path / "b.nc")
    a, b = az.from_netcdf(tmp_path / "a.nc"), az.from_netcdf(tmp_path / "b.nc")
    np.testing.assert_array_equal(a.posterior["x"].values, b.posterior["x"].values)


def test_chunked_draws_stream_into_one_file(model, tmp_path):
    cvae, problem = model
    y = torch.zeros(3, *problem.y_shape)
    per_draw = bytes_per_draw(cvae, 3, problem=problem)
    num, chunk = 1030, 100  # 11 chunks, the last one short
    kwargs = dict(problem=problem, seed=4, chunk_bytes=chunk * per_draw, in_memory_bytes=0)
    path = sample_posterior_to_netcdf(cvae, y, num, tmp_path / "big.nc", **kwargs)
    idata = az.from_netcdf(path)
    x = idata.posterior["x"].values
    assert x.shape == (1, num, 3, *problem.x_shape)
    assert idata.posterior_predictive["y"].shape == (1, num, 3, *problem.y_shape)
    np.testing.assert_array_equal(idata.posterior["draw"].values, np.arange(num))
    assert idata.attrs["num_samples"] == num and idata.posterior.attrs["num_samples"] == num
    # every group of draws grows chunk by chunk, each draw with its own statistics
    log_lik = idata.log_likelihood["y"].values[0]
    assert log_lik.shape == (num, 3, *problem.y_shape)
    draws = torch.as_tensor(x[0])
    expected = problem.log_likelihood_pointwise(draws, y).numpy()
    np.testing.assert_allclose(log_lik, expected, rtol=1e-6, atol=1e-6)  # float32 storage
    lp = problem.log_prior(draws) + problem.log_likelihood(draws, y)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], lp.numpy(), rtol=1e-9)
    assert idata.sample_stats["chi2_per_datum"].shape == (1, num, 3)
    # the first chunk is exactly the first draws of a seeded in-memory request of that size
    first = draw_posterior(cvae, y, chunk, problem=problem, seed=4).x.numpy()
    np.testing.assert_allclose(x[0, :chunk], first, rtol=0, atol=0)
    # every chunk carries fresh draws: no chunk repeats another
    assert not np.allclose(x[0, :chunk], x[0, chunk : 2 * chunk])
    # the same seed gives the same file contents
    again = sample_posterior_to_netcdf(cvae, y, num, tmp_path / "again.nc", **kwargs)
    np.testing.assert_array_equal(az.from_netcdf(again).posterior["x"].values, x)
    # and the chunked draws have the distribution of the one-piece ones: the mean of 1030
    # draws lies within 4 standard errors of the mean of 20000 in-memory draws
    ref = draw_posterior(cvae, y, 20000, seed=5).x.numpy()
    se = ref.std(0) * np.sqrt(1 / num + 1 / 20000)
    assert np.all(np.abs(x[0].mean(0) - ref.mean(0)) < 4 * se)


def test_an_in_memory_request_that_cannot_fit_is_refused_fast(model):
    cvae, problem = model
    with pytest.raises(ResourceError, match="stream them to disk"):
        draw_posterior(cvae, torch.zeros(problem.y_shape), 10**13)


_PEAK_SCRIPT = """
import sys, torch
from ppl_cvae import CVAE, ModelConfig
from inference.posterior import bytes_per_draw, draw_posterior


def high_water():  # this process's peak resident memory, bytes (VmHWM: reset by exec)
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


torch.set_num_threads(1)
torch.manual_seed(0)
dim, num, latent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cvae = CVAE(ModelConfig(x_shape=(dim,), y_shape=(dim,), hidden_dims=(16,), likelihood="flow",
                        latent_dim=latent))
y = torch.zeros(1, dim)
draw_posterior(cvae, y, 10, seed=0)
base = high_water()
draw_posterior(cvae, y, num, seed=0)
print((high_water() - base) / num, bytes_per_draw(cvae, 1))
"""


@pytest.mark.parametrize("latent", [0, 4])
def test_the_estimate_of_a_flow_draw_bounds_its_peak_memory(latent):
    """bytes_per_draw bounds the resident memory one draw of a spline flow adds (Linux).

    An autoregressive flow on 8 values draws in 8 passes per layer, each holding dozens of
    the spline's temporaries: about 30 KB per draw (66 KB with a latent), where the estimate
    used to count 0.6 KB, so a request it judged to fit in memory held 50 times more. The
    peak is read in a fresh process (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` keeps
    the parent's across exec).
    """
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc/self/status")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, "8", "4000", str(latent)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    grown, estimate = (float(v) for v in out.stdout.split())
    assert grown > 5e3  # the measurement sees the draws (a flow draw is not a few floats)
    assert estimate >= grown
