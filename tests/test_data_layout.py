"""A NetCDF data file's dims, coordinates and units reach the posterior files of its run.

Before, a run fitted on ``x(sample, depth)`` in ``log10(ohm m)`` with a ``depth`` coordinate
in ``m`` wrote posterior files on ``x_dim_0`` without units, and ``diagnose`` drew bands
against an index.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import torch
import xarray as xr

from ppl_cvae import ModelConfig, build_cvae
from ppl_cvae.cli import main
from ppl_cvae.data.layout import DataLayout, read_layout
from ppl_cvae.errors import CheckpointError, ConfigError, ShapeError
from ppl_cvae.train import load_checkpoint, save_checkpoint

DEPTH = np.linspace(0.0, 90.0, 10)
FREQUENCY = np.logspace(-1, 2, 6)


def _earth(path, num=300, x_dims=("sample", "depth"), y_dims=("sample", "frequency"),
           depth=DEPTH):
    """Layered-earth pairs: x a smooth log-resistivity profile, y a noisy linear view of it."""
    rng = np.random.default_rng(0)
    x = 2.0 + 0.2 * rng.normal(size=(num, 10)).cumsum(1)
    y = 0.5 * x[:, :6] + 0.1 * rng.normal(size=(num, 6))
    coords = {}
    if "depth" in x_dims:
        coords["depth"] = ("depth", depth, {"units": "m", "long_name": "depth below surface"})
    if "frequency" in y_dims:
        coords["frequency"] = ("frequency", FREQUENCY, {"units": "Hz"})
    xr.Dataset(
        {"x": (x_dims, x, {"units": "log10(ohm m)", "long_name": "log10 resistivity"}),
         "y": (y_dims, y, {"units": "mV", "long_name": "apparent potential"})},
        coords=coords,
    ).to_netcdf(path, engine="h5netcdf")
    return x, y


def test_read_layout_keeps_names_coordinates_and_units(tmp_path):
    _earth(tmp_path / "earth.nc")
    layout = read_layout(tmp_path / "earth.nc")
    assert layout == DataLayout(
        x_dims=("depth",), y_dims=("frequency",),
        coords={"depth": tuple(DEPTH.tolist()), "frequency": tuple(FREQUENCY.tolist())},
        units={"x": "log10(ohm m)", "y": "mV", "depth": "m", "frequency": "Hz"},
        long_names={"x": "log10 resistivity", "y": "apparent potential",
                    "depth": "depth below surface"},
    )
    assert DataLayout.from_record(layout.to_record()) == layout
    # a record written before long names existed reads as none
    record = layout.to_record()
    del record["long_names"]
    assert DataLayout.from_record(record).long_names == {}
    np.savez(tmp_path / "pairs.npz", x=np.zeros((3, 2)), y=np.zeros((3, 2)))
    assert read_layout(tmp_path / "pairs.npz") is None  # .npz names nothing


def test_what_cannot_be_kept_is_left_out(tmp_path):
    """A reserved dim name (``draw``) and a dim of y named like one of x fall back to generic
    names; a coordinate with NaN is left out while its dim keeps its name."""
    _earth(tmp_path / "a.nc", x_dims=("sample", "draw"))
    layout = read_layout(tmp_path / "a.nc")
    assert layout.x_dims is None and layout.y_dims == ("frequency",)
    _earth(tmp_path / "b.nc", y_dims=("sample", "depth2"))
    xr.Dataset({"x": (("sample", "cell"), np.zeros((4, 3))),
                "y": (("sample", "cell"), np.zeros((4, 3)))}).to_netcdf(tmp_path / "c.nc")
    shared = read_layout(tmp_path / "c.nc")
    assert shared.x_dims == ("cell",) and shared.y_dims is None
    depth = DEPTH.copy()
    depth[3] = np.nan
    _earth(tmp_path / "d.nc", depth=depth)
    layout = read_layout(tmp_path / "d.nc")
    assert layout.x_dims == ("depth",) and "depth" not in layout.coords
    assert "depth" not in layout.units and layout.units["x"] == "log10(ohm m)"


@pytest.mark.parametrize(
    "record, error, match",
    [
        ({"x_dims": ["chain"], "y_dims": None, "coords": {}, "units": {}}, ConfigError,
         "reserves"),
        ({"x_dims": ["a", "a"], "y_dims": None, "coords": {}, "units": {}}, ConfigError,
         "repeats a name"),
        ({"x_dims": ["a"], "y_dims": None, "coords": {"b": [1]}, "units": {}}, ConfigError,
         "not a list of values of a named dim"),
        ({"x_dims": ["a"], "y_dims": None, "coords": {"a": [float("nan")]}, "units": {}},
         ConfigError, "finite numbers or strings"),
        ({"x_dims": ["a"], "y_dims": None, "coords": {}, "units": {"x": 3}}, ConfigError,
         "units must map names to str"),
        ({"x_dims": ["a"]}, ConfigError, "dict with keys"),
        ({"x_dims": ["a"], "y_dims": None, "coords": {}, "units": {}, "long_names": {"x": 1}},
         ConfigError, "long_names must map names to str"),
    ],
)
def test_bad_layout_records_are_refused(record, error, match):
    with pytest.raises(error, match=match):
        DataLayout.from_record(record)


def test_the_layout_must_fit_the_model_and_survives_the_checkpoint(tmp_path):
    x, y = torch.randn(64, 10), torch.randn(64, 6)
    cvae = build_cvae(ModelConfig(x_shape=(10,), y_shape=(6,), latent_dim=2, hidden_dims=(8,)),
                      x, y)
    with pytest.raises(ShapeError, match=r"x_dims \('a', 'b'\) do not name the axes of one x"):
        cvae.set_data_layout(DataLayout(x_dims=("a", "b"), y_dims=None))
    with pytest.raises(ShapeError, match="dim 'cell' has size 10 in x but 6 in y"):
        cvae.set_data_layout(DataLayout(x_dims=("cell",), y_dims=("cell",)))
    with pytest.raises(ShapeError, match="coordinate 'depth' has 3 values for a dim of size 10"):
        cvae.set_data_layout(DataLayout(x_dims=("depth",), coords={"depth": (1, 2, 3)}))
    _earth(tmp_path / "earth.nc")
    layout = read_layout(tmp_path / "earth.nc")
    cvae.set_data_layout(layout)
    save_checkpoint(tmp_path / "model.pt", cvae)
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    assert loaded.data_layout == layout
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["data_layout"]["coords"]["depth"] = [0.0, 1.0]  # forged: a coordinate too short
    torch.save(payload, tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="coordinate 'depth' has 2 values"):
        load_checkpoint(tmp_path / "forged.pt")


def test_a_run_on_a_named_file_writes_named_posterior_files(tmp_path):
    """fit --data earth.nc, sample, diagnose: the posterior file's x is on ``depth`` (in m)
    with the file's units, y on ``frequency``, and the report draws a profile against depth."""
    x, y = _earth(tmp_path / "earth.nc")
    np.savez(tmp_path / "obs.npz", y=y[:2], x=x[:2])
    assert main(["fit", "--data", str(tmp_path / "earth.nc"), "--out", str(tmp_path / "run"),
                 "--epochs", "2", "--quiet"]) == 0
    assert main(["sample", str(tmp_path / "run"), "--observation", str(tmp_path / "obs.npz"),
                 "--num-samples", "20", "--out", str(tmp_path / "post.nc")]) == 0
    idata = az.from_netcdf(tmp_path / "post.nc")
    post = idata.posterior
    assert post["x"].dims == ("chain", "draw", "observation", "depth")
    assert post["x"].attrs["units"] == "log10(ohm m)" and post["depth"].attrs["units"] == "m"
    np.testing.assert_allclose(post["depth"].values, DEPTH)
    assert idata.observed_data["y"].dims == ("observation", "frequency")
    assert idata.observed_data["y"].attrs["units"] == "mV"
    assert idata.constant_data["x_true"].dims == ("observation", "depth")
    # the file's long names: on x, x_true, the data and the depth coordinate
    assert post["x"].attrs["long_name"] == "log10 resistivity"
    assert idata.constant_data["x_true"].attrs["long_name"] == "log10 resistivity"
    assert post["depth"].attrs["long_name"] == "depth below surface"
    assert idata.observed_data["y"].attrs["long_name"] == "apparent potential"
    # ArviZ selects by the file's names
    assert post["x"].sel(depth=DEPTH[4]).shape == (1, 20, 2)
    assert main(["diagnose", str(tmp_path / "post.nc"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "posterior_obs0.png").is_file()


def test_evaluate_warns_of_held_out_pairs_in_other_units(tmp_path, caplog):
    """Held-out pairs whose file says x is in ohm m and depth in ft, evaluated by a run trained
    on log10(ohm m) and m, are warned of (before: metrics of nothing, in silence)."""
    import logging

    _earth(tmp_path / "train.nc")
    assert main(["fit", "--data", str(tmp_path / "train.nc"), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--quiet"]) == 0
    x, y = _earth(tmp_path / "same.nc", num=40)
    path = tmp_path / "feet.nc"
    xr.Dataset({"x": (("sample", "depth"), 10**x, {"units": "ohm m"}),
                "y": (("sample", "frequency"), y, {"units": "mV"})},
               coords={"depth": ("depth", DEPTH * 3.28, {"units": "ft"}),
                       "frequency": ("frequency", FREQUENCY, {"units": "Hz"})}
               ).to_netcdf(path, engine="h5netcdf")
    run = ["evaluate", str(tmp_path / "run"), "--num-samples", "20"]
    with caplog.at_level(logging.WARNING, logger="ppl_cvae"):
        assert main([*run, "--data", str(tmp_path / "same.nc"), "--out", str(tmp_path / "e1")]) == 0
        assert "does not describe its pairs" not in caplog.text
        assert main([*run, "--data", str(path), "--out", str(tmp_path / "e2")]) == 0
    assert "x in 'ohm m', trained on 'log10(ohm m)'; coordinate 'depth' (ft) has other " \
        "values" in caplog.text


def test_evaluate_labels_the_truth_plot_with_the_files_units(tmp_path, monkeypatch):
    """A run fitted on a NetCDF file without a problem: truth_vs_mean.png is labelled in the
    file's units of x (before: no unit, as for a bare .npz)."""
    import inference.plots as plots

    units = []
    original = plots.truth_vs_mean_figure

    def spy(*args, **kwargs):
        units.append(kwargs.get("unit"))
        return original(*args, **kwargs)

    monkeypatch.setattr(plots, "truth_vs_mean_figure", spy)
    _earth(tmp_path / "train.nc")
    assert main(["fit", "--data", str(tmp_path / "train.nc"), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--quiet"]) == 0
    _earth(tmp_path / "held.nc", num=40)
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "20", "--data",
                 str(tmp_path / "held.nc"), "--out", str(tmp_path / "eval")]) == 0
    assert units == ["log10(ohm m)"]


EARTH_PROBLEMS = '''
import torch

from ppl_cvae.problems.base import Problem


class Earth(Problem):
    name, x_shape, y_shape = "earth", (10,), (6,)
    noise_std = misfit_std = 0.1

    def __init__(self, named):
        if named:
            self.x_dims, self.y_dims = ("depth",), ("frequency",)
            self.units = {"x": "log10(ohm m)", "y": "mV"}
        else:
            self.x_dims, self.y_dims = ("cell",), ("datum",)
        self.coords = {}

    def sample_prior(self, num, generator=None):
        return 2.0 + 0.2 * torch.randn(num, 10, generator=generator).cumsum(1)

    def forward(self, x):
        return 0.5 * x[..., :6]


def plain():
    return Earth(False)


def named():
    return Earth(True)
'''


def test_sampling_with_a_problem_that_renames_the_files_axes_is_warned_of(
    tmp_path, monkeypatch, caplog
):
    """A run fitted on earth.nc sampled with --problem: a problem naming other dims and no
    units is warned of (its names replace the file's, before in silence); one naming the
    file's dims and units is not."""
    import logging

    (tmp_path / "earth_problems.py").write_text(EARTH_PROBLEMS)
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = _earth(tmp_path / "earth.nc")
    np.savez(tmp_path / "obs.npz", y=y[:1])
    assert main(["fit", "--data", str(tmp_path / "earth.nc"), "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--quiet"]) == 0
    for factory, warned in (("plain", True), ("named", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ppl_cvae"):
            assert main(["sample", str(tmp_path / "run"), "--observation",
                         str(tmp_path / "obs.npz"), "--num-samples", "20", "--problem",
                         f"earth_problems:{factory}", "--out",
                         str(tmp_path / f"{factory}.nc")]) == 0
        text = caplog.text
        assert ("problem 'earth' names x on ('cell',) (the data file: ('depth',))" in text) \
            == warned, text
        assert ("x without units (the data file: in 'log10(ohm m)')" in text) == warned


def test_long_names_go_to_the_data_not_to_the_log_likelihood():
    """``var_attrs`` name ``x``, ``x_true`` and ``y`` in the observed data and the posterior
    predictive; ``log_likelihood.y``, a log density in nats, keeps its own ``long_name``; the
    report labels the axes with the long names."""
    from inference.arviz_io import to_inference_data
    from inference.report import posterior_figures

    x, y = torch.randn(20, 2, 10), torch.randn(2, 6)
    idata = to_inference_data(
        x, None, y, y_rep=torch.randn(20, 2, 6), x_true=torch.randn(2, 10),
        x_dims=("depth",), coords={"depth": DEPTH.tolist()},
        units={"x": "log10(ohm m)", "depth": "m"},
        coord_attrs={"depth": {"long_name": "depth below surface"}},
        var_attrs={"x": {"long_name": "log10 resistivity"}, "y": {"long_name": "potential"}},
        log_likelihood=torch.randn(20, 2, 6),
    )
    assert idata.posterior["x"].attrs["long_name"] == "log10 resistivity"
    assert idata.constant_data["x_true"].attrs["long_name"] == "log10 resistivity"
    for group in ("observed_data", "posterior_predictive"):
        assert idata[group]["y"].attrs["long_name"] == "potential"
    assert idata.log_likelihood["y"].attrs["long_name"].startswith("log-likelihood")
    fig = posterior_figures(idata)["posterior"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "log10 resistivity (log10(ohm m))"
    assert ax.get_ylabel() == "depth (m)"  # a profile against depth: the depth label stays
