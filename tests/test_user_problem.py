"""User problems given as ``package.module:factory``: building, checkpoint records, safety policy.

Each test writes a fresh user module into a temporary folder on ``sys.path`` (a unique module
name per test, removed from ``sys.modules`` afterwards), so a checkpoint load really imports it.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppl_cvae import ModelConfig, TrainConfig, build_cvae, fit
from ppl_cvae.errors import CheckpointError, ConfigError, ShapeError, UnknownProblemError
from ppl_cvae.problems.base import (
    REGISTRY,
    check_problem,
    make_problem,
    rebuild_problem,
    resolve_problem_factory,
)
from ppl_cvae.train import load_checkpoint, save_checkpoint
from tests.conftest import SCALED_PROBLEM_SOURCE

USER_MODULE = '''
"""A user's own problem module (written by the test)."""
import os
from shutil import rmtree

import torch

from ppl_cvae.problems.linear_gaussian import LinearGaussian


def make_linear(x_dim=2, y_dim=3, seed=5):
    return LinearGaussian(x_dim=x_dim, y_dim=y_dim, noise_std=0.3, seed=seed)


''' + SCALED_PROBLEM_SOURCE + '''

class Holder:
    @staticmethod
    def make(dim=2):
        return ScaledProblem(dim=dim, scale=5.0)


class NotAProblem:
    """A class without the problem methods whose constructor has a side effect."""

    def __init__(self, marker):
        open(marker, "w").close()


def returns_42():
    return 42


def failing(**kwargs):
    raise RuntimeError("the factory failed\\non two lines")


def touch(marker):
    open(marker, "w").close()
    return make_linear()
'''

_COUNTER = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Name of a freshly written user module importable from a temporary folder."""
    name = f"ppl_cvae_test_user_problem_{next(_COUNTER)}"
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


def _fit_tiny(problem):
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    config = ModelConfig(
        x_shape=problem.x_shape, y_shape=problem.y_shape, latent_dim=2, hidden_dims=(8,)
    )
    cvae = build_cvae(config, x, y, problem=problem)
    fit(cvae, x, y, TrainConfig(num_epochs=1, batch_size=32, patience=0), progress=False)
    return cvae


def _forget(name: str) -> None:
    """Drop the user module, as a new process would not have it imported."""
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------- make_problem
def test_make_problem_builds_function_and_class_references(user_module):
    p = make_problem(f"{user_module}:make_linear", x_dim=4, y_dim=2)
    assert p.x_shape == (4,) and p.y_shape == (2,)
    q = make_problem(f"{user_module}:ScaledProblem", dim=3, scale=2.0)
    assert q.x_shape == (3,)
    r = make_problem(f"{user_module}:Holder.make", dim=2)  # dotted attribute
    assert torch.equal(r.forward(torch.ones(2)), torch.full((2,), 5.0))


def test_make_problem_factory_returning_non_problem_names_missing_members(user_module):
    with pytest.raises(ConfigError, match="returned int.*lacks name, x_shape.*forward.*spec"):
        make_problem(f"{user_module}:returns_42")


def test_make_problem_clear_errors(user_module):
    with pytest.raises(ConfigError, match=r"does not accept the arguments \['bogus'\]"):
        make_problem(f"{user_module}:make_linear", bogus=1)
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        make_problem(f"{user_module}:nope")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod_xyz'.*ModuleNot"):
        make_problem("no_such_mod_xyz:factory")
    with pytest.raises(ConfigError, match="not of the form"):
        make_problem("a b:c")
    with pytest.raises(UnknownProblemError, match="unknown problem 'nope'.*linear_gaussian"):
        make_problem("nope")
    with pytest.raises(ConfigError, match="does not accept the arguments"):
        make_problem("linear_gaussian", bogus=1)


def test_check_problem_accepts_builtins_and_reports_bad_members():
    for name, factory in REGISTRY.items():
        check_problem(factory(), name)

    class Broken:
        name = "broken"
        x_shape = [3]  # a list, not a tuple
        y_shape = (0,)
        x_dims = ("a",)
        y_dims = ("b",)
        coords: dict[str, list[int]] = {}
        noise_std = -1.0
        misfit_std = 1.0
        sample_prior = forward = simulate = spec = staticmethod(lambda *a: None)

    with pytest.raises(ConfigError, match="x_shape must be.*y_shape must be.*noise_std"):
        check_problem(Broken(), "test")


# --------------------------------------------------------------------------- round trips
def test_function_reference_round_trip_without_passing_problem(user_module, tmp_path):
    problem = make_problem(f"{user_module}:make_linear", x_dim=2, y_dim=3, seed=5)
    cvae = _fit_tiny(problem)
    ref = {"name": f"{user_module}:make_linear", "x_dim": 2, "y_dim": 3, "seed": 5}
    save_checkpoint(tmp_path / "model.pt", cvae, problem=problem, problem_ref=ref)
    _forget(user_module)
    loaded, meta = load_checkpoint(tmp_path)
    assert meta["problem_error"] is None
    assert meta["problem_spec"] == ref  # stored in preference to problem.spec()
    x = torch.randn(5, 2)
    assert torch.equal(meta["problem"].forward(x), problem.forward(x))
    assert loaded.forward_operator is not None
    assert loaded.config == cvae.config


def test_class_reference_round_trip(user_module, tmp_path):
    problem = make_problem(f"{user_module}:ScaledProblem", dim=2, scale=3.0)
    cvae = _fit_tiny(problem)
    ref = {"name": f"{user_module}:ScaledProblem", "dim": 2, "scale": 3.0}
    save_checkpoint(tmp_path / "model.pt", cvae, problem=problem, problem_ref=ref)
    _forget(user_module)
    _, meta = load_checkpoint(tmp_path / "model.pt")
    x = torch.randn(4, 2)
    assert torch.equal(meta["problem"].forward(x), problem.forward(x))


def test_unserialisable_problem_without_ref_stores_none_and_says_how(user_module, tmp_path):
    problem = make_problem(f"{user_module}:ScaledProblem")
    cvae = _fit_tiny(problem)
    save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)  # spec() raises
    _, meta = load_checkpoint(tmp_path)
    assert meta["problem"] is None and meta["problem_spec"] is None
    assert "stores no problem" in meta["problem_error"]
    assert "--problem package.module:factory" in meta["problem_error"]
    # the caller's problem overrides; it must fit the model (a ShapeError, as from
    # check_problem_matches: the file is sound, the argument is not)
    _, meta = load_checkpoint(tmp_path, problem=problem)
    assert meta["problem"] is problem and meta["problem_error"] is None
    with pytest.raises(ShapeError, match=r"has x \(3,\), y \(3,\); the model has x \(2,\)"):
        load_checkpoint(tmp_path, problem=make_problem(f"{user_module}:ScaledProblem", dim=3))


def test_problem_ref_must_be_json_like(user_module, tmp_path):
    cvae = _fit_tiny(make_problem(f"{user_module}:make_linear"))
    with pytest.raises(ConfigError, match="holds a Tensor"):
        save_checkpoint(tmp_path / "m.pt", cvae, problem_ref={"name": "m:f", "a": torch.ones(1)})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        save_checkpoint(tmp_path / "m.pt", cvae, problem_ref={"x_dim": 2})
    with pytest.raises(ConfigError, match="extra"):
        save_checkpoint(tmp_path / "m.pt", cvae, extra={"when": object()})
    assert not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------- safety policy
def _model_with_record(tmp_path: Path, record: dict) -> Path:
    problem = make_problem("linear_gaussian", x_dim=2, y_dim=2)
    config = ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,))
    x, y = problem.simulate(8, torch.Generator().manual_seed(0))
    cvae = build_cvae(config, x, y, problem=problem)
    path = tmp_path / "forged.pt"
    save_checkpoint(path, cvae)
    payload = torch.load(path, weights_only=True)
    payload["problem"] = record  # what a forger would write
    torch.save(payload, path)
    return path


def test_forged_rmtree_reference_is_not_called(tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data.txt").write_text("keep me")
    path = _model_with_record(tmp_path, {"name": "shutil:rmtree", "path": str(victim)})
    cvae, meta = load_checkpoint(path)
    assert (victim / "data.txt").read_text() == "keep me"
    assert meta["problem"] is None
    assert "'shutil:rmtree'" in meta["problem_error"] and "refused" in meta["problem_error"]
    assert "--problem package.module:factory" in meta["problem_error"]
    assert "\n" not in meta["problem_error"]
    assert cvae.config.x_shape == (2,)  # the model itself loads


@pytest.mark.parametrize(
    "reference, make_kwargs",
    [
        ("subprocess:Popen", lambda m: {"args": ["touch", str(m)]}),
        ("subprocess:run", lambda m: {"args": ["touch", str(m)]}),
        ("os:system", lambda m: {"command": f"touch {m}"}),
        ("builtins:eval", lambda m: {"source": f"open({str(m)!r}, 'w')"}),
        ("builtins:open", lambda m: {"file": str(m), "mode": "w"}),
        ("{mod}:touch.__globals__", lambda m: {"marker": str(m)}),
        ("{mod}:rmtree", lambda m: {"path": str(m.parent / "precious")}),  # imported, not own
        ("{mod}:os.system", lambda m: {"command": f"touch {m}"}),
        ("{mod}:NotAProblem", lambda m: {"marker": str(m)}),  # a class without the methods
        ("ppl_cvae.cli:main", lambda m: {"argv": ["--help"]}),  # our own functions
        ("pathlib:Path.touch", lambda m: {"self": str(m)}),
    ],
)
def test_forged_references_are_refused(tmp_path, user_module, reference, make_kwargs):
    marker = tmp_path / "marker"
    (tmp_path / "precious").mkdir()
    reference = reference.format(mod=user_module)
    path = _model_with_record(tmp_path, {"name": reference, **make_kwargs(marker)})
    _, meta = load_checkpoint(path)
    assert meta["problem"] is None
    assert reference in meta["problem_error"]
    assert "refused" in meta["problem_error"] or "not of the form" in meta["problem_error"]
    time.sleep(0.05)  # a spawned process would have had time to touch the marker
    assert not marker.exists()
    assert (tmp_path / "precious").is_dir()


def test_standard_library_is_not_even_imported(tmp_path):
    # antigravity opens a web browser when imported
    assert "antigravity" not in sys.modules
    path = _model_with_record(tmp_path, {"name": "antigravity:geohash"})
    _, meta = load_checkpoint(path)
    assert "standard-library module 'antigravity'" in meta["problem_error"]
    assert "antigravity" not in sys.modules


def test_unimportable_module_and_failing_factory_give_problem_error(tmp_path, user_module):
    path = _model_with_record(tmp_path, {"name": "no_such_module_xyz.sub:make"})
    _, meta = load_checkpoint(path)
    assert meta["problem"] is None
    assert "cannot import module 'no_such_module_xyz.sub'" in meta["problem_error"]
    assert "ModuleNotFoundError" in meta["problem_error"]

    path = _model_with_record(tmp_path, {"name": f"{user_module}:failing", "a": 1})
    _, meta = load_checkpoint(path)
    assert "RuntimeError: the factory failed on two lines" in meta["problem_error"]

    path = _model_with_record(tmp_path, {"name": f"{user_module}:returns_42"})
    _, meta = load_checkpoint(path)
    assert "lacks name, x_shape" in meta["problem_error"]

    # an allowed factory whose problem does not fit the model
    path = _model_with_record(tmp_path, {"name": f"{user_module}:make_linear", "x_dim": 5})
    _, meta = load_checkpoint(path)
    assert meta["problem"] is None and "has x (5,)" in meta["problem_error"]


def test_registered_factory_is_allowed_even_outside_user_code(tmp_path, user_module, monkeypatch):
    # a function defined in another module: refused by __module__ unless registered
    module = __import__(user_module)
    alias_module = tmp_path / "user_code" / f"{user_module}_alias.py"
    alias_module.write_text(f"from {user_module} import make_linear as alias\n")
    reference = f"{user_module}_alias:alias"
    with pytest.raises(ConfigError, match="imported into"):
        resolve_problem_factory(reference, untrusted=True)
    monkeypatch.setitem(REGISTRY, "test_user_registered", module.make_linear)
    assert resolve_problem_factory(reference, untrusted=True) is module.make_linear
    assert rebuild_problem(reference, {"x_dim": 3}).x_shape == (3,)
    sys.modules.pop(f"{user_module}_alias", None)


def test_registry_record_that_cannot_be_built_is_a_checkpoint_error(tmp_path):
    path = _model_with_record(tmp_path, {"name": "linear_gaussian", "x_dim": -1})
    with pytest.raises(CheckpointError, match="problem record that cannot be built.*x_dim"):
        load_checkpoint(path)
    path = _model_with_record(tmp_path, {"name": "linear_gaussian", "x_dim": 3})
    with pytest.raises(CheckpointError, match=r"'linear_gaussian' has x \(3,\)"):
        load_checkpoint(path)


def test_cli_style_loading_prints_no_traceback(tmp_path):
    """A forged file fails in a fresh interpreter with one line, not a traceback."""
    path = _model_with_record(tmp_path, {"name": "shutil:rmtree", "path": str(tmp_path)})
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["x_shape"] = [60000]
    payload["model_config"]["hidden_dims"] = [200000, 200000]
    torch.save(payload, path)
    code = (
        "import sys\n"
        "from ppl_cvae.errors import PplCvaeError\n"
        "from ppl_cvae.train import load_checkpoint\n"
        "try:\n"
        f"    load_checkpoint({str(path)!r})\n"
        "except PplCvaeError as err:\n"
        "    print(err)\n"
        "    sys.exit(2)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "MAX_PARAMETERS" in lines[0] and "344," in lines[0]
    assert time.perf_counter() - start < 60  # mostly interpreter start-up and imports
    assert tmp_path.is_dir()


@pytest.mark.slow
def test_user_two_birds_problem_survives_fit_through_the_cli(tmp_path, monkeypatch):
    """The issue's scenario: a Two Birds problem with a user's own pair of functions."""
    from ppl_cvae.cli import main

    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "my_birds.py").write_text(
        "import torch\n"
        "from ppl_cvae.problems.two_birds import TwoBirds\n"
        "def f0(x0, x1):\n    return torch.sin(3 * x0 + 2 * x1)\n"
        "def f1(x0, x1):\n    return torch.cos(2 * x0 + 5 * x1)\n"
        "def make(misfit_std=0.05):\n"
        "    return TwoBirds(functions=(f0, f1), misfit_std=misfit_std)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    run, obs = tmp_path / "run", tmp_path / "obs.npz"
    tiny = ["--epochs", "2", "--num-train", "512", "--hidden-dims", "32", "--latent-dim", "2",
            "--quiet"]
    problem = ["--problem", "my_birds:make", "--problem-arg", "misfit_std=0.05"]
    assert main(["fit", *problem, "--out", str(run), *tiny]) == 0
    assert main(["simulate", *problem, "--num", "2", "--out", str(obs)]) == 0
    # no --problem at sampling time: the checkpoint rebuilds the user's problem
    post = tmp_path / "post.nc"
    assert main(["sample", str(run), "--observation", str(obs), "--num-samples", "8",
                 "--refine", "--refine-steps", "150", "--out", str(post)]) == 0
    from inference.arviz_io import load_inference_data

    idata = load_inference_data(post)
    assert "posterior_predictive" in idata.groups()
    # refinement used the user's forward operator: the accepted draws reproduce y through it
    import my_birds

    x = torch.as_tensor(idata.posterior["x"].values[0])  # (S, M, 1, 50, 2)
    y = torch.as_tensor(idata.observed_data["y"].values)  # (M, 1, 50, 2)
    y_hat = my_birds.make().forward(x)
    rms = ((y_hat - y) / 0.05).pow(2).mean(dim=(-3, -2, -1)).sqrt()
    assert idata.attrs["accepted_fraction"] > 0
    assert (rms <= 1.0).float().mean() >= idata.attrs["accepted_fraction"] - 1e-6
    assert main(["evaluate", str(run), "--data", str(obs), "--num-samples", "20", "--out",
                 str(tmp_path / "ev")]) == 0
    monkeypatch.delitem(sys.modules, "my_birds", raising=False)


def test_a_problem_module_off_the_import_path_gets_the_pythonpath_hint(tmp_path, monkeypatch):
    """``ppl-cvae`` (a console script) does not import from the current folder: a user's
    ``decay.py`` there gave a bare ModuleNotFoundError (the own-problem audit)."""
    (tmp_path / "own_decay_xyz.py").write_text("def make():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"PYTHONPATH=<that folder>; .*own_decay_xyz.py exists"):
        make_problem("own_decay_xyz:make")
    with pytest.raises(ConfigError, match=r"PYTHONPATH=<that folder>\)"):
        make_problem("no_such_mod_xyz:factory")
