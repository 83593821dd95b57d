"""Third audit: a new user's own problem and data files (benchmarks/hostile_inputs.py, "user
problems" and "user files"). Each test is a case that failed before the audit: ``sys.exit`` in a
user's code ended the process, a log density of the wrong shape broadcast silently, a float
density gave a traceback, a NaN density was not named, a simulator's ``torch.manual_seed``
reset the global stream, a constant column at 3e38 overflowed the standardiser, a
gzip-compressed ``.npz`` was called "not a zip file".
"""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest
import torch

from inference.importance import importance_sample
from inference.mcmc import nuts_sample
from ppl_cvae import ModelConfig, build_cvae
from ppl_cvae.data.io import load_pairs, save_pairs
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.errors import ConfigError, DataError, ShapeError, no_exit
from ppl_cvae.problems.base import Problem, checked_log_likelihood, checked_log_prior
from ppl_cvae.problems.checked_simulator import CheckedSimulator, guarded_global_rngs


class Doubling(Problem):
    """``y = 2 x + eps``, ``x ~ N(0, I_2)``, ``eps ~ N(0, 0.1^2 I_2)``."""

    name, x_shape, y_shape = "doubling", (2,), (2,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = True

    def sample_prior(self, num, generator=None):
        return torch.randn(num, 2, generator=generator)

    def forward(self, x):
        return 2 * x

    def log_prior(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)


class SummedLikelihood(Doubling):
    def log_likelihood(self, x, y):  # the batch summed into shape (1,): broadcasts silently
        return super().log_likelihood(x, y).sum().reshape(1)


class FloatPrior(Doubling):
    def log_prior(self, x):
        return float(super().log_prior(x).sum())


class NaNLikelihood(Doubling):
    def log_likelihood(self, x, y):
        return super().log_likelihood(x, y) * float("nan")


class NaNPrior(Doubling):
    def log_prior(self, x):
        return super().log_prior(x) + float("nan")


class ExitingLikelihood(Doubling):
    def log_likelihood(self, x, y):
        sys.exit(0)  # status 0: the CLI would have "succeeded" without output


def _cvae(problem: Problem):
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, latent_dim=2,
                         hidden_dims=(8,))
    return build_cvae(config, x, y, problem=problem, seed=0)


@pytest.mark.parametrize("code", [3, 0, "solver gave up"])
def test_sys_exit_in_a_simulator_is_a_config_error_naming_the_call(code):
    def simulate(num, generator=None):
        sys.exit(code)

    with pytest.raises(ConfigError, match=rf"problem 'mine' simulate\(4, generator\) called "
                                          rf"sys.exit\({code!r}\)"):
        CheckedSimulator(simulate, (2,), (2,), "problem 'mine'")(4)


def test_no_exit_lets_other_exceptions_and_keyboard_interrupt_through():
    with pytest.raises(KeyboardInterrupt), no_exit("demo"):
        raise KeyboardInterrupt
    with pytest.raises(ValueError, match="plain"), no_exit("demo"):
        raise ValueError("plain")


def test_checked_densities_accept_the_batch_shape_and_refuse_broadcasting_values():
    x = torch.randn(5, 3, 2)
    y = torch.randn(3, 2)
    good = Doubling()
    assert torch.equal(checked_log_likelihood(good, x, y), good.log_likelihood(x, y))
    assert torch.equal(checked_log_prior(good, x), good.log_prior(x))
    with pytest.raises(ShapeError, match=r"log_likelihood returned shape \(1,\); expected "
                                          r"\(5, 3\)"):
        checked_log_likelihood(SummedLikelihood(), x, y)
    with pytest.raises(DataError, match=r"log_prior returned a builtins.float; expected a "
                                          r"torch.Tensor of shape \(5, 3\)"):
        checked_log_prior(FloatPrior(), x)
    with pytest.raises(ConfigError, match=r"log_likelihood called sys.exit\(0\)"):
        checked_log_likelihood(ExitingLikelihood(), x, y)


def test_importance_refuses_a_summed_likelihood_instead_of_equal_weights():
    # before the audit a (1,) log-likelihood broadcast over the proposals: every weight equal
    problem = SummedLikelihood()
    cvae = _cvae(problem)
    with pytest.raises(ShapeError, match=r"returned shape \(1,\)"):
        importance_sample(cvae, problem, torch.zeros(1, 2), 50, seed=0)
    result = importance_sample(cvae, Doubling(), torch.zeros(1, 2), 50, seed=0)
    assert result.log_weight.shape == (50, 1)  # negative control: the correct problem runs


@pytest.mark.parametrize("problem, member", [(NaNLikelihood(), "log_likelihood"),
                                             (NaNPrior(), "log_prior")])
def test_a_nan_density_is_named_under_importance_and_nuts(problem, member):
    cvae = _cvae(problem)
    with pytest.raises(DataError, match=rf"problem 'doubling' {member} is nan at 50 of 50 "
                                          "importance proposals"):
        importance_sample(cvae, problem, torch.zeros(1, 2), 50, seed=0)
    with pytest.raises(DataError, match=rf"check the problem's {member}$"):
        nuts_sample(problem, torch.zeros(2), torch.zeros(4, 2), num_samples=8, warmup_steps=2)


def test_a_simulator_reseeding_torch_keeps_later_draws_a_function_of_the_seed():
    def later_draws(outer_seed: int, reseed: bool) -> torch.Tensor:
        torch.manual_seed(outer_seed)
        with guarded_global_rngs():
            if reseed:
                torch.manual_seed(0)
        return torch.rand(3)

    # untouched: the global stream is exactly as it was
    torch.manual_seed(7)
    expected = torch.rand(3)
    assert torch.equal(later_draws(7, reseed=False), expected)
    # reseeded inside: the draws after the block still depend on the outer seed ...
    a, b = later_draws(1, reseed=True), later_draws(2, reseed=True)
    assert not torch.equal(a, b)
    # ... and are reproducible; without the guard both would be torch.manual_seed(0)'s draws
    assert torch.equal(a, later_draws(1, reseed=True))
    torch.manual_seed(0)
    assert not torch.equal(a, torch.rand(3))


def test_standardiser_of_a_constant_column_near_the_float32_limit():
    data = torch.randn(300, 3)
    data[:, 1] = 3e38  # a float32 sum of 300 of these is inf; the float64 one is not
    s = Standardiser((3,)).fit(data)
    assert float(s.mean[1]) == pytest.approx(3e38, rel=1e-6)
    assert float(s.std[1]) == 1.0  # constant: never divided by zero
    u = s(data)
    assert bool(torch.isfinite(u).all()) and float(u[:, 1].abs().max()) == 0.0
    # the other columns: mean 0, sd 1 after standardising (exactly, by construction)
    assert torch.allclose(u[:, [0, 2]].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(u[:, [0, 2]].std(0), torch.ones(2), atol=1e-5)


def test_save_pairs_refuses_what_load_pairs_would(tmp_path):
    with pytest.raises(DataError, match="x to save is a numpy.ndarray"):
        save_pairs(tmp_path / "a.npz", np.ones((3, 2)), torch.ones(3, 2))
    with pytest.raises(DataError, match="no NaN or inf"):
        save_pairs(tmp_path / "a.npz", torch.ones(3, 2), torch.full((3, 2), float("nan")))
    assert not (tmp_path / "a.npz").exists()


def test_a_gzip_compressed_npz_is_named(tmp_path):
    np.savez(tmp_path / "pairs.npz", x=np.ones((4, 2)), y=np.ones((4, 3)))
    raw = gzip.compress((tmp_path / "pairs.npz").read_bytes())
    (tmp_path / "gz.npz").write_bytes(raw)
    (tmp_path / "pairs.npz.gz").write_bytes(raw)
    with pytest.raises(DataError, match="gzip-compressed as a whole: decompress it first"):
        load_pairs(tmp_path / "gz.npz")
    with pytest.raises(DataError, match="gzip-compressed: decompress it to 'pairs.npz' first"):
        load_pairs(tmp_path / "pairs.npz.gz")


EXITING_MODULE = '''
import sys
import torch
from ppl_cvae.problems import LinearGaussian


class Exiting(LinearGaussian):
    def simulate(self, num, generator=None):
        sys.exit(0)


def make():
    return Exiting()
'''


def test_the_cli_turns_sys_exit_in_problem_code_into_an_error(tmp_path, monkeypatch, capsys):
    """``simulate`` checks the simulator as ``fit`` does; ``sys.exit`` anywhere else in problem
    code (a command that calls it) is exit status 2 with one line, while argparse's exits
    pass."""
    import ppl_cvae.cli.simulate as simulate_module
    from ppl_cvae.cli import main

    (tmp_path / "exiting_problem.py").write_text(EXITING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "pairs.npz"
    status = main(["simulate", "--problem", "exiting_problem:make", "--num", "3",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and not out.exists()
    assert "simulate(3, generator) called sys.exit(0)" in err
    with pytest.raises(SystemExit) as exc:  # argparse's own exit: unchanged
        main(["simulate", "--num", "not-a-number"])
    assert exc.value.code == 2
    capsys.readouterr()
    monkeypatch.setattr(simulate_module, "cmd_simulate", lambda args: sys.exit(5))
    assert main(["simulate", "--problem", "linear_gaussian", "--num", "3",
                 "--out", str(out)]) == 2
    assert "ppl-cvae: error: problem code called sys.exit(5)" in capsys.readouterr().err
