"""A problem whose code changed after the fit is not used in silence (problem fingerprints).

Before: the checkpoint of a CLI fit stored only ``{"name": "module:factory", **args}``; the
problem rebuilt from it on loading was checked for its shapes alone, so a user's module whose
default noise went from 0.05 to 0.5 after the fit had ``sample --method importance`` correct
the draws with the new noise, exit 0 (misfit 0.81 -> 0.05 per datum in the audit).
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch

from ppl_cvae import ModelConfig
from ppl_cvae.cli import main
from ppl_cvae.errors import CheckpointError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian
from ppl_cvae.problems.fingerprint import fingerprint_changes, problem_fingerprint
from ppl_cvae.train.checkpoint import load_checkpoint, save_checkpoint

MODULE = """
import torch
from ppl_cvae.problems.base import Problem

class Layered(Problem):
    name, x_shape, y_shape = "layered", (3,), (4,)
    x_dims, y_dims, coords = ("layer",), ("datum",), {{}}
    has_prior_density = True

    def __init__(self, noise_sd={noise}):
        self.noise_std = self.misfit_std = float(noise_sd)
        self.matrix = torch.arange(12.0).reshape(4, 3) / 10 + {shift}

    def sample_prior(self, num, generator=None):
        return torch.randn(num, 3, generator=generator)

    def log_prior(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(-1)

    def forward(self, x):
        return x @ self.matrix.to(x.dtype).T
"""


def _write_module(folder, name, noise=0.05, shift=0.0):
    (folder / f"{name}.py").write_text(textwrap.dedent(MODULE.format(noise=noise, shift=shift)))
    sys.modules.pop(name, None)  # import the file as it is now, not the module imported before
    importlib.invalidate_caches()


def test_a_user_module_changed_after_the_fit_is_not_used_in_silence(
    tmp_path, monkeypatch, capsys, caplog
):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc within one second
    name = "fingerprint_layered"
    _write_module(tmp_path, name, noise=0.05)
    run, obs = tmp_path / "run", tmp_path / "obs.npz"
    common = ["--threads", "1", "--seed", "0"]
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--problem", f"{name}:Layered", "--out", str(run), "--epochs", "1",
                     "--num-train", "128", "--batch-size", "64", "--hidden-dims", "8",
                     "--latent-dim", "2", "--quiet", *common]) == 0  # fmt: skip
        assert main(["simulate", "--problem", f"{name}:Layered", "--num", "2", "--out",
                     str(obs), "--seed", "1"]) == 0  # fmt: skip
        sample = ["sample", str(run), "--observation", str(obs), "--num-samples", "50",
                  *common]  # fmt: skip
        # unchanged module: the rebuilt problem is the fitted one, importance runs
        assert main([*sample, "--method", "importance", "--out", str(tmp_path / "a.nc")]) == 0
        unchanged = load_checkpoint(run)[1]

        _write_module(tmp_path, name, noise=0.5)  # the user edits the default noise
        capsys.readouterr()
        assert main([*sample, "--method", "importance", "--out", str(tmp_path / "b.nc")]) == 2
        assert unchanged["problem_changes"] == [] and unchanged["problem"] is not None
        err = capsys.readouterr().err
        assert "is not the one the model was fitted with (noise_std 0.05 -> 0.5" in err
        assert not (tmp_path / "b.nc").exists()
        caplog.clear()  # evaluate goes on without the problem, and says what it lacks
        assert main(["evaluate", str(run), "--data", str(obs), "--num-samples", "20", "--out",
                     str(tmp_path / "ev"), *common]) == 0  # fmt: skip
        assert "the report has no data misfit and no exact posterior: problem" in caplog.text
        # named explicitly, the changed problem is the user's choice: used, with a warning
        caplog.clear()
        assert main([*sample, "--method", "importance", "--out", str(tmp_path / "c.nc"),
                     "--problem", f"{name}:Layered"]) == 0  # fmt: skip
        assert "is not the one the model was fitted with: noise_std 0.05 -> 0.5" in caplog.text
        with pytest.warns(UserWarning, match="noise_std 0.05 -> 0.5; misfit_std 0.05 -> 0.5"):
            load_checkpoint(run, problem=importlib.import_module(name).Layered())

        _write_module(tmp_path, name, noise=0.05, shift=0.01)  # an edited forward operator
        _, meta = load_checkpoint(run)
        assert meta["problem"] is None
        assert meta["problem_changes"][0].startswith("F(x) of the stored probe models moved")
    finally:
        torch.set_num_threads(threads)


def _saved(tmp_path, problem):
    cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(4,), latent_dim=1, hidden_dims=(4,)))
    return save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)


def test_each_part_of_the_physics_is_compared():
    base = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    record = problem_fingerprint(base)
    assert fingerprint_changes(LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=1),
                               record) == []  # fmt: skip
    # another forward operator (another random matrix), prior density and noise covariance
    assert fingerprint_changes(LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=2),
                               record)[0].startswith("F(x)")  # fmt: skip
    wider = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=1, prior_std=2.0)
    assert any(c.startswith("log prior density") for c in fingerprint_changes(wider, record))
    correlated = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    correlated.noise_cov = 0.09 * (torch.eye(4) + 0.5 * torch.ones(4, 4))
    assert fingerprint_changes(correlated, record) == ["noise_cov added"]
    changed = problem_fingerprint(correlated)
    correlated.noise_cov = 0.09 * (torch.eye(4) + 0.4 * torch.ones(4, 4))
    assert fingerprint_changes(correlated, changed) == ["noise_cov changed"]


def test_files_without_a_fingerprint_load_and_forged_ones_are_refused(tmp_path):
    problem = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    path = _saved(tmp_path, problem)
    payload = torch.load(path, weights_only=True)
    assert sorted(payload["problem_check"]) == ["forward", "log_prior", "misfit_std",
                                                "noise_std", "x"]  # fmt: skip
    del payload["problem_check"]  # a file written before fingerprints
    torch.save(payload, path)
    _, meta = load_checkpoint(path)
    assert meta["problem"] is not None and meta["problem_changes"] == []
    scalar = torch.tensor(0.3, dtype=torch.float64)
    payload["problem_check"] = {"x": torch.zeros(2, 3), "forward": torch.zeros(2, 4),
                                "noise_std": scalar, "misfit_std": scalar}  # fmt: skip
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="problem_check 'x' must be a float64 CPU tensor"):
        load_checkpoint(path)


def test_a_problem_that_cannot_be_evaluated_is_saved_without_a_fingerprint(tmp_path):
    class Broken(LinearGaussian):
        def sample_prior(self, num, generator=None):
            raise RuntimeError("no prior today")

    assert problem_fingerprint(Broken(x_dim=3, y_dim=4)) is None
    path = _saved(tmp_path, Broken(x_dim=3, y_dim=4))
    assert "problem_check" not in torch.load(path, weights_only=True)
