"""One settings resolver (resolve_settings) and run files (ppl-cvae fit --config)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch

from ppl_cvae import Overrides, resolve_settings
from ppl_cvae.cli import main
from ppl_cvae.config import ModelConfig, ModelOverrides, TrainConfig, TrainOverrides
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems import LinearGaussian, TwoBirds, make_problem
from ppl_cvae.train import DataSource
from ppl_cvae.train.defaults import data_settings, image_settings
from ppl_cvae.train.runfile import MAX_RUN_FILE_BYTES, read_run_file
from tests.conftest import TINY_FIT


# ----------------------------------------------------------------------------- Overrides
def test_override_types_list_every_config_field():
    # the TypedDicts are a second list of the fields: they must not drift from the dataclasses
    model_fields = {f.name for f in fields(ModelConfig)} - {"x_shape", "y_shape"}
    assert set(get_type_hints(ModelOverrides)) == model_fields
    assert set(get_type_hints(TrainOverrides)) == {f.name for f in fields(TrainConfig)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": {"latent_dims": 3}}, "latent_dims.*expected some of"),
        ({"train": {"epochs": 3}}, "unknown TrainConfig setting 'epochs'"),
        ({"model": {"x_shape": (2,)}}, "set by the data"),
        ({"model": [("latent_dim", 2)]}, "model overrides must be a dict"),
    ],
)
def test_overrides_refuse_unknown_fields(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Overrides(**kwargs)


def test_overrides_layer_field_by_field_and_copy():
    base = {"latent_dim": 4, "hidden_dims": (8,)}
    low = Overrides(model=base, train={"num_epochs": 60})
    base["latent_dim"] = 99  # the layer holds its own copy
    both = low.updated(Overrides(model={"latent_dim": 2}))
    assert both.model == {"latent_dim": 2, "hidden_dims": (8,)}
    assert both.train == {"num_epochs": 60} and low.model["latent_dim"] == 4
    assert Overrides.coerce({"train": {"seed": 3}}).train == {"seed": 3}
    with pytest.raises(ConfigError, match="recommended_settings"):
        Overrides.coerce({"modle": {}}, "recommended_settings()")


# ----------------------------------------------------------------------------- layers
def test_problem_recommendations_under_user_overrides():
    problem = TwoBirds("data_1")
    model, train = resolve_settings(problem, Overrides(train={"num_epochs": 3}))
    rec = problem.recommended_settings()
    assert model.basis_dim == rec.model["basis_dim"] == 4
    assert model.latent_dim == rec.model["latent_dim"]
    assert train.num_epochs == 3 and train.num_train == rec.train["num_train"]
    assert model.x_shape == problem.x_shape


def test_data_file_takes_adapted_schedule_and_problem_model():
    problem = TwoBirds("data_1")
    source = DataSource(problem.x_shape, problem.y_shape, 1000)
    model, train = resolve_settings(source, problem=problem)
    adapted = data_settings(problem.x_shape, problem.y_shape, 1000)
    assert train.num_epochs == adapted.train["num_epochs"]  # the file's schedule
    assert train.resimulate is False  # the problem's resimulate does not apply to a file
    assert model.basis_dim == 4  # the problem's model recommendation does
    model, _ = resolve_settings(source, problem=problem, decoder="network")
    assert model.basis_dim is None


class _Quiet(LinearGaussian):
    """A user problem that recommends nothing (the base class's empty recommendation)."""

    name = "quiet"

    def recommended_settings(self) -> Overrides:
        return Overrides()


@pytest.mark.parametrize("x_dim, family", [(2, "flow"), (40, "gaussian")])
def test_a_problem_that_recommends_nothing_gets_a_files_settings(x_dim, family):
    """Its simulations in a file and the problem itself are fitted alike (family and schedule).

    Before, such a problem got the library defaults (a Gaussian CVAE with latent 8, no linear
    path from y, no whitening, 100 epochs): on a 2-D nonlinear user problem C2ST 0.705 against
    the grid posterior, where the same 20,000 simulations in a file gave the flow.
    """
    problem = _Quiet(x_dim=x_dim, y_dim=3)
    model, train = resolve_settings(problem)
    file_model, file_train = resolve_settings(DataSource((x_dim,), (3,), TrainConfig.num_train))
    assert model == file_model and train == file_train
    assert model.likelihood == family and model.x_whitening == "linear"
    assert model.linear_skip == (family == "gaussian")
    # the schedule follows the user's number of simulations
    _, train = resolve_settings(problem, Overrides(train={"num_train": 2000}))
    assert train.batch_size == data_settings((x_dim,), (3,), 2000).train["batch_size"] == 32
    # the user's family wins, as for a file
    model, _ = resolve_settings(problem, Overrides(model={"likelihood": "gaussian"}))
    assert model.likelihood == "gaussian" and model.latent_dim == min(max(x_dim, 2), 32)
    # a problem that recommends something keeps its own settings
    model, _ = resolve_settings(LinearGaussian(x_dim=x_dim, y_dim=3))
    assert model.likelihood != "flow"
    # its simulations in a file, the problem named for its physics: the file's family stays
    source = DataSource((x_dim,), (3,), 5000)
    assert resolve_settings(source, problem=problem) == resolve_settings(source)
    # its generative prior (fit --unconditional): a file's VAE of x alone, never a flow
    from ppl_cvae.train.generative_prior import generative_prior_settings

    model, train = generative_prior_settings(problem)
    unconditional = data_settings((x_dim,), None, TrainConfig.num_train)
    assert model.y_shape is None and model.likelihood == "gaussian" and model.latent_dim > 0
    assert model.hidden_dims == unconditional.model["hidden_dims"]
    assert train.num_epochs == unconditional.train["num_epochs"]


def test_a_flow_recommendation_gives_way_to_the_users_family():
    source = DataSource((2,), (3,), 1000)
    model, _ = resolve_settings(source)
    assert (model.likelihood, model.latent_dim) == ("flow", 0)
    # the user picks a Gaussian decoder: the CVAE rules of a file apply, latent included
    model, train = resolve_settings(source, Overrides(model={"likelihood": "gaussian"}))
    assert model.likelihood == "gaussian" and model.latent_dim == 2 and model.linear_skip
    assert train.learning_rate == data_settings((2,), (3,), 1000, flow=False).train[
        "learning_rate"]
    # the user picks a flow for a large x: the recommended linear skip is dropped
    model, _ = resolve_settings(DataSource((40,), (3,), 1000),
                                Overrides(model={"likelihood": "flow"}))
    assert model.likelihood == "flow" and not model.linear_skip and model.latent_dim == 32
    # a named problem's basis stays: the flow is then on its coefficients (Two Birds: 4)
    problem = TwoBirds("data_1")
    model, _ = resolve_settings(DataSource(problem.x_shape, problem.y_shape, 1000),
                                problem=problem, overrides=Overrides(model={"likelihood": "flow"}))
    assert model.basis_dim == 4 and model.likelihood == "flow"


def test_image_datasets_and_unconditional_prior():
    model, train = resolve_settings(DataSource((8, 8), (10,), 500, dataset="digits"))
    assert model.likelihood == "bernoulli" and model.prior == "learned"
    assert train.kl_warmup_epochs == image_settings("digits").train["kl_warmup_epochs"]
    model, _ = resolve_settings(DataSource((8, 8), None, 500, dataset="digits"))
    assert model.prior == "standard_normal"  # a VAE has no prior net
    with pytest.raises(ConfigError, match="unknown image dataset"):
        resolve_settings(DataSource((8, 8), None, 500, dataset="cifar"))


def test_resolver_errors_name_the_cause():
    problem = LinearGaussian(x_dim=2, y_dim=2)
    with pytest.raises(ShapeError, match=r"event shape \(3,\).*expects \(2,\)"):
        resolve_settings(DataSource((3,), (2,), 100), problem=problem)
    with pytest.raises(ConfigError, match="needs a problem with a basis"):
        resolve_settings(DataSource((3,), (2,), 100), decoder="basis")
    with pytest.raises(ConfigError, match="decoder must be"):
        resolve_settings(problem, decoder="lines")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="latent_dim=0 .no latent. needs likelihood='flow'"):
        resolve_settings(problem, Overrides(model={"latent_dim": 0}))


def test_duck_typed_problem_may_return_a_dict():
    class Mine(LinearGaussian):
        def recommended_settings(self):  # a user problem written against the old protocol
            return {"model": {"latent_dim": 3}}

    model, train = resolve_settings(Mine(x_dim=2, y_dim=2))
    assert model.latent_dim == 3 and train == TrainConfig()


# ----------------------------------------------------------------------------- run files
def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_run_file_toml_and_json(tmp_path):
    toml = _write(
        tmp_path / "run.toml",
        'problem = { name = "two_birds", functions = "data_1" }\n'
        'decoder = "network"\n[model]\nhidden_dims = [16, 16]\n[train]\nnum_epochs = 2\n',
    )
    run = read_run_file(toml)
    assert run.problem == ("two_birds", {"functions": "data_1"})
    assert run.decoder == "network" and run.overrides.model == {"hidden_dims": [16, 16]}
    doc = {"model": {"x_shape": [2], "y_shape": None, "latent_dim": 2}, "torch_threads": 4}
    run = read_run_file(_write(tmp_path / "config.json", json.dumps(doc)))
    assert run.x_shape == (2,) and run.overrides.model == {"latent_dim": 2}


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("run.toml", "[model]\nlatent_dim = \n", "does not parse.*line 2"),
        ("run.toml", "epochs = 3\n", r"unknown keys \['epochs'\]"),
        ("run.toml", "[train]\nepoch = 3\n", "unknown TrainConfig setting 'epoch'"),
        ("run.toml", "model = 3\n", "'model' must be a table"),
        ("run.toml", "problem = 3\n", "'problem' must be a name"),
        ("run.toml", 'dataset = { name = "digits", size = 3 }\n', "unknown dataset keys"),
        ("run.json", "[1, 2]", "top level must be a table"),
        ("run.json", "[" * 100_000, "does not parse"),
        ("run.yaml", "a: 1", "must end in .toml or .json"),
    ],
)
def test_bad_run_files_are_refused_with_the_reason(tmp_path, name, text, match):
    with pytest.raises(ConfigError, match=match):
        read_run_file(_write(tmp_path / name, text))


def test_run_file_size_and_encoding_limits(tmp_path):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_RUN_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        read_run_file(big)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'data = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_run_file(latin)


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def test_fit_config_json_repeats_a_run_and_flags_vary_it(tmp_path):
    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(tmp_path / "a"), *TINY_FIT, "--seed", "3"]) == 0
    record = tmp_path / "a" / "config.json"
    assert main(["fit", "--config", str(record), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == json.loads(
        record.read_text()
    ) | {"torch_threads": torch.get_num_threads()}
    # a flag overrides the file: another seed, other weights, everything else the same
    args = ["fit", "--config", str(record), "--seed", "4", "--out", str(tmp_path / "c")]
    assert main([*args, "--quiet"]) == 0
    c = _state(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    doc = json.loads((tmp_path / "c" / "config.json").read_text())
    assert doc["train"]["seed"] == 4 and doc["model"] == json.loads(record.read_text())["model"]


def test_fit_toml_run_file_with_data_and_recorded_shapes(tmp_path, capsys):
    lg = ["--problem", "linear_gaussian"]
    assert main(["simulate", *lg, "--num", "64", "--out", str(tmp_path / "pairs.npz")]) == 0
    run = _write(
        tmp_path / "run.toml",
        f'data = "{tmp_path / "pairs.npz"}"\n[model]\nhidden_dims = [8]\nlatent_dim = 2\n'
        "[train]\nnum_epochs = 1\n",
    )
    assert main(["fit", "--config", str(run), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    assert doc["data"] == str(tmp_path / "pairs.npz") and doc["model"]["hidden_dims"] == [8]
    # a record whose shapes do not match the data is refused, naming the entry
    doc["model"]["x_shape"] = [5]
    wrong = _write(tmp_path / "wrong.json", json.dumps(doc))
    assert main(["fit", "--config", str(wrong), "--out", str(tmp_path / "w"), "--quiet"]) == 2
    assert "model.x_shape=(5,)" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_bad_value_in_a_run_file_names_the_file(tmp_path, capsys):
    run = _write(tmp_path / "run.toml", 'problem = "linear_gaussian"\n[model]\nlatent_dim = "8"\n')
    assert main(["fit", "--config", str(run), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "latent_dim must be an integer >= 0" in err and "run.toml" in err


def test_run_file_problem_reference_is_untrusted(tmp_path, capsys):
    marker = tmp_path / "owned"
    run = _write(
        tmp_path / "evil.toml", f'problem = {{ name = "os:system", command = "touch {marker}" }}\n'
    )
    assert main(["fit", "--config", str(run), "--out", str(tmp_path / "r"), *TINY_FIT]) == 2
    assert "ppl-cvae: error:" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_cli_and_python_api_resolve_the_same_settings(tmp_path):
    """`ppl-cvae fit --problem` and fit_problem go through one resolver: same configs."""
    flags = ["--epochs", "1", "--num-train", "64", "--quiet"]
    assert main(["fit", "--problem", "mt1d", "--out", str(tmp_path / "r"), *flags]) == 0
    doc = json.loads((tmp_path / "r" / "config.json").read_text())
    model, train = resolve_settings(
        make_problem("mt1d"), Overrides(train={"num_epochs": 1, "num_train": 64})
    )
    assert (
        ModelConfig.from_dict(
            {
                **doc["model"],
                "x_shape": tuple(doc["model"]["x_shape"]),
                "y_shape": tuple(doc["model"]["y_shape"]),
            }
        )
        == model
    )
    assert TrainConfig.from_dict(doc["train"]) == train


# ----------------------------------------------------------------------------- fuzz
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_KEYS = st.sampled_from(["problem", "data", "dataset", "decoder", "model", "train", "x", ""])


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(doc=st.dictionaries(_KEYS, _JSON, max_size=5) | _JSON, raw=st.binary(max_size=64))
def test_read_run_file_returns_or_raises_config_error(tmp_path, doc, raw):
    """Any JSON document or byte string: a RunFile or one ConfigError, nothing else."""
    for name, content in (("a.json", json.dumps(doc).encode()), ("b.toml", raw)):
        path = tmp_path / name
        path.write_bytes(content)
        try:
            run = read_run_file(path)
        except ConfigError:
            continue
        assert isinstance(run.overrides, Overrides)


def test_fit_names_the_family_it_fitted(tmp_path, capsys):
    """The settings may be chosen for the user (a file's, or a problem's that recommends none):
    the closing line of ``ppl-cvae fit`` names the family, so the choice is never silent."""
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    data = tmp_path / "pairs.npz"
    np.savez(data, x=x.numpy(), y=(x @ torch.tensor([[1.0, 0.5], [0.0, 1.0]])).numpy())
    threads = torch.get_num_threads()
    try:
        assert main([str(a) for a in ["fit", "--data", data, "--out", tmp_path / "flow",
                                      "--epochs", 1, "--quiet", "--threads", 1]]) == 0
        assert "fitted a conditional spline flow on x (5 layers, no latent) in" in (
            capsys.readouterr().out)
        assert main([str(a) for a in ["fit", "--data", data, "--out", tmp_path / "cvae",
                                      "--epochs", 1, "--likelihood", "gaussian", "--quiet",
                                      "--threads", 1]]) == 0
        assert ("fitted a CVAE (latent 2, gaussian decoder, x whitened given y, linear path "
                "from y) in") in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
