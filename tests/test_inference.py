import numpy as np
import pytest
import torch

from inference import draw_posterior, sample_posterior
from inference.arviz_io import load_inference_data, save_inference_data
from inference.diagnostics.ppc import run_ppc
from inference.report import write_report
from ppl_cvae import CVAE, ModelConfig, TwoBirds
from ppl_cvae.errors import ConfigError, DataError, ShapeError


@pytest.fixture
def two_birds_cvae():
    problem = TwoBirds("data_1")
    cfg = ModelConfig(
        x_shape=problem.x_shape, y_shape=problem.y_shape, latent_dim=3, hidden_dims=(16,)
    )
    return CVAE(cfg), problem


@pytest.mark.parametrize("num_obs", [1, 4])
def test_draw_shapes(two_birds_cvae, num_obs):
    cvae, problem = two_birds_cvae
    _, y = problem.simulate(num_obs)
    draws = draw_posterior(cvae, y, 7, problem=problem)
    assert draws.x.shape == (7, num_obs, 1, 50, 2)
    assert draws.z.shape == (7, num_obs, 3)
    assert draws.y_rep.shape == (7, num_obs, 1, 50, 2)
    assert torch.allclose(draws.y_rep, problem.forward(draws.x))  # noise-free problem


def test_decoder_mean_option(two_birds_cvae):
    cvae, problem = two_birds_cvae
    _, y = problem.simulate(2)
    noisy = draw_posterior(cvae, y, 5, seed=0, decoder_noise=True)
    mean = draw_posterior(cvae, y, 5, seed=0, decoder_noise=False)
    assert torch.equal(noisy.z, mean.z)  # same latent draws, different x site
    assert not torch.equal(noisy.x, mean.x)
    mean_recomputed, _ = cvae.decode(mean.z, y)
    assert torch.allclose(mean.x, mean_recomputed, atol=1e-6)


def test_single_observation_has_an_observation_dim_of_size_one(two_birds_cvae):
    cvae, problem = two_birds_cvae
    x, y = problem.simulate(1)
    idata = sample_posterior(cvae, y[0], 11, problem=problem, x_true=x[0], seed=0)
    assert dict(idata.posterior["x"].sizes) == {
        "chain": 1,
        "draw": 11,
        "observation": 1,
        "row": 1,
        "position": 50,
        "line": 2,
    }
    assert list(idata.posterior["x"].coords["line"].values) == ["x0", "x1"]
    assert dict(idata.observed_data["y"].sizes) == {
        "observation": 1,
        "row": 1,
        "position": 50,
        "component": 2,
    }
    assert dict(idata.constant_data["x_true"].sizes) == {
        "observation": 1,
        "row": 1,
        "position": 50,
        "line": 2,
    }
    assert dict(idata.posterior["z"].sizes) == {
        "chain": 1,
        "draw": 11,
        "observation": 1,
        "latent": 3,
    }
    # the same observation given as a stack of one gives the same file
    stacked = sample_posterior(cvae, y, 11, problem=problem, x_true=x, seed=0)
    np.testing.assert_array_equal(stacked.posterior["x"].values, idata.posterior["x"].values)


def test_stacked_observations_and_netcdf_round_trip(two_birds_cvae, tmp_path):
    cvae, problem = two_birds_cvae
    x, y = problem.simulate(3)
    idata = sample_posterior(cvae, y, 9, problem=problem, x_true=x, seed=0)
    assert idata.posterior["x"].dims == ("chain", "draw", "observation", "row", "position", "line")
    assert idata.posterior_predictive["y"].sizes["observation"] == 3
    path = save_inference_data(idata, tmp_path / "post.nc")
    again = load_inference_data(path)
    np.testing.assert_array_equal(again.posterior["x"].values, idata.posterior["x"].values)
    assert '"functions": "data_1"' in again.attrs["problem"]


def test_run_ppc_rmse_matches_direct_computation(two_birds_cvae):
    cvae, problem = two_birds_cvae
    _, y = problem.simulate(2)
    idata = sample_posterior(cvae, y, 20, problem=problem, seed=0)
    table = run_ppc(idata)
    rep = idata.posterior_predictive["y"].values[0]
    direct = np.sqrt(((rep[:, 1] - y[1].numpy()) ** 2).mean(axis=(1, 2, 3))).mean()
    assert table["mean_rmse"][1] == pytest.approx(direct, rel=1e-5)


def test_report_files(two_birds_cvae, tmp_path):
    cvae, problem = two_birds_cvae
    x, y = problem.simulate(2)
    idata = sample_posterior(cvae, y, 30, problem=problem, x_true=x, seed=0)
    files = write_report(idata, tmp_path / "rep")
    names = sorted(p.name for p in files)
    assert (
        "summary.csv" in names and "posterior_obs1.png" in names and "predictive_obs0.png" in names
    )
    header = (tmp_path / "rep" / "summary.csv").read_text().splitlines()[0]
    # stats only (no R-hat/ESS for independent draws), then the truth's columns
    assert header == ",mean,sd,hdi_5%,hdi_95%,true,true_z,true_in_hdi"


def test_sampling_errors(two_birds_cvae):
    cvae, _ = two_birds_cvae
    with pytest.raises(ShapeError, match=r"the model expects \(1, 50, 2\)"):
        draw_posterior(cvae, torch.zeros(50, 2), 3)
    with pytest.raises(DataError, match="NaN"):
        draw_posterior(cvae, torch.full((1, 50, 2), float("nan")), 3)
    with pytest.raises(ConfigError, match="num_samples"):
        draw_posterior(cvae, torch.zeros(1, 50, 2), 0)
