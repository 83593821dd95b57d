import math
import time

import pytest
import torch

import ppl_cvae._memory
from inference import draw_posterior
from ppl_cvae import ModelConfig, TrainConfig, TwoBirds, build_cvae, fit
from ppl_cvae.config import check_model_memory, check_model_size, count_parameters
from ppl_cvae.errors import CheckpointError, ConfigError, ResourceError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import make_problem
from ppl_cvae.train import load_checkpoint, save_checkpoint


def _small_model():
    problem = TwoBirds("data_1")
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    cfg = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        latent_dim=2,
        hidden_dims=(16,),
        basis_dim=4,
    )
    cvae = build_cvae(
        cfg,
        x,
        y,
        basis=problem.basis(),
        forward_operator=problem.forward,
        misfit_std=problem.misfit_std,
    )
    fit(cvae, x, y, TrainConfig(num_epochs=2, batch_size=32), progress=False)
    return cvae, problem, y


def test_round_trip_samples_identically(tmp_path):
    cvae, problem, y = _small_model()
    path = save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)
    loaded, meta = load_checkpoint(tmp_path)  # a run folder works too
    assert meta["problem"].functions_name == "data_1"
    assert loaded.config == cvae.config
    a = draw_posterior(cvae, y[:3], 50, seed=7, problem=problem)
    b = draw_posterior(loaded, y[:3], 50, seed=7, problem=meta["problem"])
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and torch.equal(a.y_rep, b.y_rep)
    assert path.stat().st_size > 0


def test_failed_write_keeps_existing_checkpoint(tmp_path, monkeypatch):
    cvae, problem, _ = _small_model()
    target = save_checkpoint(tmp_path / "model.pt", cvae)
    before = target.read_bytes()

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, cvae)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ppl_cvae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    # a pickled object that weights_only refuses: torch's advice to load it with
    # weights_only=False (running the file's code) must not reach the user
    from fractions import Fraction

    torch.save({"weights": Fraction(1, 2)}, tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="without running code") as info:
        load_checkpoint(tmp_path / "object.pt")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- validation
def _tiny_payload(tmp_path):
    cfg = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(4,))
    problem = make_problem("linear_gaussian", x_dim=3, y_dim=2)
    path = save_checkpoint(tmp_path / "model.pt", CVAE(cfg), problem=problem)
    return torch.load(path, weights_only=True)


def _forge(tmp_path, payload):
    path = tmp_path / "forged.pt"
    torch.save(payload, path)
    return path


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def mutate(payload):
        target = payload
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value

    return mutate


def _drop(key):
    return lambda payload: payload.pop(key)


def _drop_state(key):
    return lambda payload: payload["state_dict"].pop(key)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (_drop("state_dict"), r"lacks the keys \['state_dict'\]"),
        (_drop("misfit_std"), r"lacks the keys \['misfit_std'\]"),
        (_set("surprise", 1), "unexpected keys 'surprise'"),
        (_set("format", "other.v9"), "not a ppl_cvae checkpoint.*'other.v9'"),
        (_set("version", 3), "version must be a string"),
        (_set("model_config", [1, 2]), "model_config must be a dict, got list"),
        (_set("model_config", "depth", 3), "unknown ModelConfig keys: 'depth'"),
        (_set("model_config", "latent_dim", "8"), "latent_dim must be an integer >= 0"),
        (_set("model_config", "latent_dim", 8.5), "latent_dim must be an integer >= 0"),
        (_set("model_config", "latent_dim", True), "latent_dim must be an integer >= 0"),
        (_set("model_config", "hidden_dims", [4, "4"]), "hidden_dims must hold positive int"),
        (_set("model_config", "hidden_dims", 4), "hidden_dims must be a tuple"),
        (_set("model_config", "x_shape", [2**25]), "x_shape=.*above the limit 16777216"),
        (_set("model_config", "fixed_scale", math.inf), "fixed_scale must be a finite number"),
        (_set("model_config", "linear_skip", "yes"), "linear_skip must be True or False"),
        (_set("model_config", "activation", ["relu"]), "activation must be a string"),
        (_set("model_config", "num_facies", 1), r"num_facies must be an integer in \[2,"),
        (_set("model_config", "num_facies", "3"), "num_facies must be an integer"),
        (_set("model_config", "x_shape", torch.tensor([3])), r"\[.x_shape.\] holds a Tensor"),
        (_set("state_dict", [1]), "state_dict must be a dict, got list"),
        (
            _set("state_dict", "decoder.raw_scale", [0.0] * 3),
            "must map names to tensors.*raw_scale",
        ),
        (_set("state_dict", "decoder.raw_scale", lambda t: t[:2]), r"raw_scale has shape \(2,\)"),
        (
            _set("state_dict", "decoder.raw_scale", lambda t: t.double()),
            r"mix float32 and float64 tensors \(1 float64, e.g. decoder.raw_scale\)",
        ),
        (
            _set("state_dict", "decoder.raw_scale", lambda t: t * math.nan),
            "raw_scale holds NaN or inf",
        ),
        (_set("state_dict", "x_standardiser.std", lambda t: -t), "std holds values <= 0"),
        (_set("state_dict", "extra.weight", torch.zeros(1)), "unexpected 'extra.weight'"),
        (_drop_state("decoder.raw_scale"), "missing 'decoder.raw_scale'"),
        (_set("misfit_std", -1.0), "misfit_std must be a finite number > 0"),
        (_set("misfit_std", math.nan), "misfit_std must be a finite number > 0"),
        (_set("misfit_std", True), "misfit_std must be a finite number > 0"),
        (_set("problem", "linear_gaussian"), "problem record must be a dict or None"),
        (_set("problem", {"x_dim": 3}), "needs a 'name'"),
        (_set("problem", {"name": "linear_gaussian", "m": torch.ones(1)}), "holds a Tensor"),
        (_set("extra", [1]), "extra must be a dict, got list"),
        (_set("extra", {"a": {1: 2}}), "non-string key 1"),
    ],
)
def test_damaged_fields_raise_one_line_naming_the_file(tmp_path, mutate, match):
    payload = _tiny_payload(tmp_path)
    mutate(payload)
    path = _forge(tmp_path, payload)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_recursive_and_exponential_records_are_refused_quickly(tmp_path):
    payload = _tiny_payload(tmp_path)
    shared: list = []
    for _ in range(30):  # 2**30 leaves once expanded, 30 objects in the pickle
        shared = [shared, shared]
    payload["extra"] = {"a": shared[0]}
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="nested deeper|more than"):
        load_checkpoint(_forge(tmp_path, payload))
    assert time.perf_counter() - start < 1.0


def test_forged_huge_model_is_refused_quickly_without_allocating(tmp_path):
    payload = _tiny_payload(tmp_path)
    payload["model_config"]["x_shape"] = [60000]
    payload["model_config"]["hidden_dims"] = [200000, 200000]
    path = _forge(tmp_path, payload)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"344,\d{3},\d{3},\d{3} parameters.*268,435,456"):
        load_checkpoint(path)
    assert time.perf_counter() - start < 1.0


def test_save_refuses_nan_weights_and_keeps_the_old_file(tmp_path):
    cfg = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(4,))
    cvae = CVAE(cfg)
    target = save_checkpoint(tmp_path / "model.pt", cvae)
    before = target.read_bytes()
    with torch.no_grad():
        cvae.decoder.raw_scale.fill_(math.nan)
    with pytest.raises(CheckpointError, match="raw_scale hold NaN or inf"):
        save_checkpoint(target, cvae)
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    ("likelihood", "num_facies", "y_maps"),
    [("bernoulli", 2, 0), ("categorical", 3, 0), ("bernoulli", 2, 2)],
)
def test_facies_run_round_trip(tmp_path, likelihood, num_facies, y_maps):
    problem = make_problem(
        "crosshole",
        prior="channels",
        num_depth_cells=6,
        num_offset_cells=5,
        num_sources=3,
        num_receivers=3,
    )
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    cfg = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        latent_dim=2,
        hidden_dims=(8,),
        likelihood=likelihood,
        num_facies=num_facies,
        linear_skip=True,
        **({"network": "conv2d", "conv_channels": (2, 3), "feature_dim": 8, "y_maps": y_maps}
           if y_maps else {}),
    )
    cvae = build_cvae(cfg, x, y, problem=problem)
    fit(cvae, x, y, TrainConfig(num_epochs=1, batch_size=32), progress=False)
    save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)
    loaded, meta = load_checkpoint(tmp_path)
    assert loaded.config == cvae.config and loaded.config.num_facies == num_facies
    assert meta["problem"].spec() == problem.spec()
    a = draw_posterior(cvae, y[:3], 20, seed=7, problem=problem)
    b = draw_posterior(loaded, y[:3], 20, seed=7, problem=meta["problem"])
    assert torch.equal(a.x, b.x) and torch.equal(a.x_mean, b.x_mean)
    assert set(a.x.unique().tolist()) <= set(map(float, range(num_facies)))


def test_checkpoint_from_before_num_facies_loads(tmp_path):
    payload = _tiny_payload(tmp_path)
    del payload["model_config"]["num_facies"]  # written before the field existed
    loaded, _ = load_checkpoint(_forge(tmp_path, payload))
    assert loaded.config.num_facies == 2


def test_checkpoint_from_before_y_maps_loads(tmp_path):
    payload = _tiny_payload(tmp_path)
    del payload["model_config"]["y_maps"]  # written before the field existed
    loaded, _ = load_checkpoint(_forge(tmp_path, payload))
    assert loaded.config.y_maps == 0 and loaded.decoder.y_maps is None


def test_registry_problem_is_rebuilt_and_problem_error_is_none(tmp_path):
    cvae, problem, _ = _small_model()
    save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)
    _, meta = load_checkpoint(tmp_path)
    assert meta["problem_error"] is None and meta["problem_spec"]["name"] == "two_birds"
    assert meta["version"] and meta["extra"] == {}


# --------------------------------------------------------------------------- size limits
@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(4,)),
        ModelConfig(x_shape=(3,), y_shape=None, prior="standard_normal", hidden_dims=(5, 6)),
        ModelConfig(x_shape=(12, 2), y_shape=(4,), network="conv1d", conv_channels=(3, 4)),
        ModelConfig(x_shape=(1, 8, 8), y_shape=(4,), network="conv2d", conv_channels=(2,)),
        ModelConfig(x_shape=(7, 9), y_shape=(4,), network="conv2d", conv_channels=(2, 3), y_maps=2),
        ModelConfig(x_shape=(6,), y_shape=(4,), y_embedding="shared", linear_skip=True),
        ModelConfig(x_shape=(6,), y_shape=(4,), basis_dim=2, likelihood="gaussian_decoder"),
    ],
)
def test_count_parameters_matches_the_built_model(cfg):
    cvae = CVAE(cfg)
    assert count_parameters(cfg) == sum(p.numel() for p in cvae.parameters())
    assert count_parameters(cfg) == cvae.num_parameters()
    buffers = sum(b.numel() for b in cvae.buffers())
    assert count_parameters(cfg, buffers=True) == cvae.num_parameters() + buffers


def test_size_limits_are_config_errors_and_memory_is_checked(monkeypatch):
    with pytest.raises(ConfigError, match="has 16,781,312 elements; the limit is 16,777,216"):
        ModelConfig(x_shape=(4097, 4096), y_shape=(2,))
    with pytest.raises(ConfigError, match="hidden_dims has 65 entries"):
        ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(4,) * 65)
    with pytest.raises(ConfigError, match="latent_dim=1048577 is above the limit"):
        ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=2**20 + 1)
    huge = ModelConfig(x_shape=(60000,), y_shape=(10,), hidden_dims=(200000, 200000))
    with pytest.raises(ConfigError, match="MAX_PARAMETERS"):
        check_model_memory(huge)
    with pytest.raises(ConfigError, match="MAX_PARAMETERS"):
        check_model_size(huge)
    small = ModelConfig(x_shape=(64,), y_shape=(8,), hidden_dims=(256,))
    num = check_model_memory(small)
    assert num == count_parameters(small)
    monkeypatch.setattr(ppl_cvae._memory, "available_memory", lambda: 16 * num)
    with pytest.raises(ResourceError, match="weights, gradients and two Adam moments"):
        check_model_memory(small)  # 16 bytes per parameter > 0.8 * 16 * num
    check_model_memory(small, training=False)  # 8 bytes per parameter fits


# Weight names of a format-v1 checkpoint of
# ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8, 8), linear_skip=True), as written by
# ppl_cvae at commit ca62171 (before the networks became RecognitionNet/PriorNet/Decoder).
V1_NAMES = [
    "raw_scale", "x_standardiser.mean", "x_standardiser.std", "y_standardiser.mean",
    "y_standardiser.std", "rec_x.0.net.0.weight", "rec_x.0.net.0.bias", "rec_x.0.net.2.weight",
    "rec_x.0.net.2.bias", "rec_y.0.net.0.weight", "rec_y.0.net.0.bias", "rec_y.0.net.2.weight",
    "rec_y.0.net.2.bias", "rec_head.0.weight", "rec_head.0.bias", "rec_gauss.linear.weight",
    "rec_gauss.linear.bias", "prior_y.0.net.0.weight", "prior_y.0.net.0.bias",
    "prior_y.0.net.2.weight", "prior_y.0.net.2.bias", "prior_gauss.linear.weight",
    "prior_gauss.linear.bias", "dec_y.0.net.0.weight", "dec_y.0.net.0.bias",
    "dec_y.0.net.2.weight", "dec_y.0.net.2.bias", "dec_in.z_part.weight", "dec_in.z_part.bias",
    "dec_in.c_part.weight", "dec_skip.weight", "dec_skip.bias", "decoder.0.weight",
    "decoder.0.bias", "decoder.2.weight", "decoder.2.bias",
]


def test_v1_checkpoints_load_with_their_weights(tmp_path):
    from ppl_cvae.train.checkpoint import V1_FORMAT, _v1_name

    config = ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8, 8), linear_skip=True)
    cvae = CVAE(config)
    names = list(cvae.state_dict())
    assert sorted(_v1_name(n) for n in V1_NAMES) == sorted(names)  # one to one
    save_checkpoint(tmp_path / "v2.pt", cvae)
    payload = torch.load(tmp_path / "v2.pt", weights_only=True)
    by_new = {_v1_name(old): old for old in V1_NAMES}
    payload["state_dict"] = {by_new[k]: v for k, v in payload["state_dict"].items()}
    payload["format"] = V1_FORMAT
    torch.save(payload, tmp_path / "v1.pt")
    loaded, _ = load_checkpoint(tmp_path / "v1.pt")
    for key, value in cvae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_run_folders_other_files_are_named_as_such(tmp_path):
    """``sample run/config.json`` (a run's file, not its checkpoint) says to give the folder,
    not that the JSON failed to unpickle."""
    cvae, problem, _ = _small_model()
    save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"is the run folder's config.json, not its "
                       r"checkpoint; give the run folder '.*' \(or its model.pt\)"):
        load_checkpoint(tmp_path / "config.json")
