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
from ppl_cvae.errors import CheckpointError, NoPriorDensityError, ProblemChangedWarning
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
        with pytest.warns(ProblemChangedWarning,
                          match="noise_std 0.05 -> 0.5; misfit_std 0.05 -> 0.5"):  # fmt: skip
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
                                                "noise_std", "x", "x_seeded"]  # fmt: skip
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


def test_the_second_audits_misses_are_caught():
    """What the fingerprint audit changed after the fit and nothing noticed: a float32-only
    forward (no fingerprint at all), a small-magnitude block of the data beside a large one
    (within 1e-5 of the largest |F|), a log_prior without has_prior_density (importance
    sampling calls it), a prior given by its sampler alone."""

    class Float32(LinearGaussian):
        def forward(self, x):
            return x @ self.matrix.float().T  # raises for float64 models

    base = Float32(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    record = problem_fingerprint(base)
    assert record is not None
    assert fingerprint_changes(Float32(x_dim=3, y_dim=4, noise_std=0.3, seed=1), record) == []
    scaled = Float32(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    scaled.matrix = scaled.matrix * 1.1
    assert fingerprint_changes(scaled, record)[0].startswith("F(x) of the stored probe")

    class Joint(LinearGaussian):  # datum 0 about 1e-2 (sd 1e-3), the others about 1e4
        scale = 1.0

        def forward(self, x):
            out = super().forward(x) * 1e4
            return torch.cat([out[..., :1] * 1e-6 * self.scale, out[..., 1:]], -1)

    joint = Joint(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    joint.noise_cov = torch.diag(torch.tensor([1e-6, 1e6, 1e6, 1e6]))
    record = problem_fingerprint(joint)
    assert fingerprint_changes(joint, record) == []
    joint.scale = 2.0
    assert fingerprint_changes(joint, record)[0].startswith("F(x) of the stored probe")

    class Undeclared(LinearGaussian):
        has_prior_density = False  # log_prior written, the flag left False

    record = problem_fingerprint(Undeclared(x_dim=3, y_dim=4, seed=1))
    assert "log_prior" in record
    wider = Undeclared(x_dim=3, y_dim=4, seed=1, prior_std=2.0)
    assert any(c.startswith("log prior density") for c in fingerprint_changes(wider, record))

    class SamplerOnly(LinearGaussian):
        has_prior_density = False

        def log_prior(self, x):
            raise NoPriorDensityError("sampler only")

    record = problem_fingerprint(SamplerOnly(x_dim=3, y_dim=4, seed=1))
    assert "log_prior" not in record and "x_seeded" in record
    assert fingerprint_changes(SamplerOnly(x_dim=3, y_dim=4, seed=1), record) == []
    wider = SamplerOnly(x_dim=3, y_dim=4, seed=1, prior_std=2.0)
    assert "the prior's draws for seed 0 differ" in fingerprint_changes(wider, record)
