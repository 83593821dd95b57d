"""One bad input, one error class, whichever public entry point meets it.

The rule of :mod:`ppl_cvae.errors`: a wrong shape (event shape, number of axes, sizes two
arrays must share, too few rows) is a :class:`ShapeError`; wrong values or a wrong container
(NaN/inf, not a real tensor, no values at all) a :class:`DataError`; a failing problem code
(it raises, also from inside Pyro's NUTS) a :class:`ConfigError`. Before the rule, the same
user forward operator returning the wrong shape was a ``DataError`` from ``Problem.simulate``
and ``fit_problem`` but a ``ShapeError`` from ``draw_posterior``; a log density of the wrong
shape a ``ConfigError``; a NaN density a ``ConfigError`` under importance sampling and a
``DataError`` under NUTS; the chains' starts of the wrong shape a ``ConfigError`` for NUTS on
``x`` and a ``ShapeError`` for latent NUTS and facies MCMC; a stack of zero observations a
``ShapeError`` in memory and a ``DataError`` from a file. Each test feeds one input to every
entry point that takes it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from inference.facies_mcmc import facies_mcmc_sample
from inference.importance import importance_sample
from inference.latent_mcmc import latent_nuts_sample
from inference.mcmc import nuts_sample
from inference.posterior import draw_posterior
from inference.refine import refine_and_accept
from inference.sample import inference_data_from_draws, sample_posterior
from ppl_cvae import ModelConfig, build_cvae, load_checkpoint, save_checkpoint
from ppl_cvae.checks import check_problem_matches
from ppl_cvae.data.io import load_observations, load_pairs
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian
from ppl_cvae.problems.checked_simulator import check_simulated
from ppl_cvae.problems.densities import checked_forward, checked_log_likelihood


class ShortForward(LinearGaussian):
    """``forward`` drops the last datum: shape ``(*batch, 1)`` for ``y_shape`` ``(2,)``."""

    def forward(self, x):
        return super().forward(x)[..., :1]


class NumpyForward(LinearGaussian):
    """``forward`` returns a NumPy array (a simulator wrapped without ``torch.as_tensor``)."""

    def forward(self, x):
        return super().forward(x).detach().numpy()


class RaisingForward(LinearGaussian):
    """``forward`` raises for a batch of draws (a solver that did not converge)."""

    def forward(self, x):
        if x.dim() > 2:
            raise ValueError("solver did not converge")
        return super().forward(x)


class NaNLikelihood(LinearGaussian):
    def log_likelihood(self, x, y):
        return super().log_likelihood(x, y) * float("nan")


@pytest.fixture(scope="module")
def model():
    """An untrained CVAE of ``LinearGaussian()`` (x (2,), y (2,)) and 16 simulated pairs."""
    problem = LinearGaussian()
    x, y = problem.simulate(16, torch.Generator().manual_seed(0))
    cfg = ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,), latent_dim=2)
    return build_cvae(cfg, x, y, problem=problem, seed=0), x, y


def _forward_entry_points(cvae, x, y, problem):
    """Every public entry point that runs a problem's forward operator on models."""
    return {
        "Problem.simulate": lambda: problem.simulate(4, torch.Generator().manual_seed(0)),
        "Problem.log_likelihood": lambda: problem.log_likelihood(x[:3], y[0]),
        "checked_forward": lambda: checked_forward(problem, x[:3]),
        "checked_log_likelihood": lambda: checked_log_likelihood(problem, x[:3], y[0]),
        "draw_posterior": lambda: draw_posterior(cvae, y[0], 4, problem=problem),
        "sample_posterior": lambda: sample_posterior(cvae, y[0], 4, problem=problem),
        "inference_data_from_draws": lambda: inference_data_from_draws(
            x[:4].unsqueeze(1), y[:1], problem=problem),
        "refine_and_accept": lambda: refine_and_accept(cvae, y[:1], 2, problem, num_steps=1),
        "importance_sample": lambda: importance_sample(cvae, problem, y[0], 8, seed=0),
        "nuts_sample": lambda: nuts_sample(problem, y[0], x[:2], num_samples=4, num_chains=1,
                                           warmup_steps=0),
    }


@pytest.mark.parametrize("problem, error, match", [
    (ShortForward(), ShapeError, r"forward returned \(.*1\)"),
    (NumpyForward(), DataError, "forward returned .*ndarray"),
])
def test_a_forward_operator_of_the_wrong_output_is_one_class_everywhere(model, problem, error,
                                                                        match):
    cvae, x, y = model
    calls = _forward_entry_points(cvae, x, y, problem)
    for name, call in calls.items():
        with pytest.raises(error, match=match):
            call()
            pytest.fail(f"{name} accepted the forward operator")  # pragma: no cover


def test_a_forward_operator_that_raises_is_a_config_error_naming_it(model):
    cvae, _, y = model
    for call in (lambda: draw_posterior(cvae, y[0], 4, problem=RaisingForward()),
                 lambda: refine_and_accept(cvae, y[:1], 2, RaisingForward(), num_steps=1),
                 lambda: importance_sample(cvae, RaisingForward(), y[0], 8, seed=0)):
        with pytest.raises(ConfigError, match="raised ValueError: solver did not converge"):
            call()


class FailsLater(LinearGaussian):
    """``member`` raises ``RuntimeError('boom')`` from its call ``after + 1`` on.

    The calls before pass the samplers' checks at the start, so that the raise comes from
    inside the loop: Pyro's NUTS tree for ``nuts_sample`` and ``latent_nuts_sample``.
    """

    def __init__(self, member, after):
        super().__init__()
        self.member, self.after, self.calls = member, after, 0

    def _count(self, member):
        if member == self.member:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("boom")

    def forward(self, x):
        self._count("forward")
        return super().forward(x)

    def log_likelihood(self, x, y):
        self._count("log_likelihood")
        return super().log_likelihood(x, y)


@pytest.mark.parametrize("member", ["forward", "log_likelihood"])
@pytest.mark.parametrize("sampler", ["nuts", "latent_nuts", "facies_mcmc"])
def test_a_problem_raising_inside_a_sampler_is_a_config_error_naming_the_member(
    model, member, sampler
):
    """Pyro's NUTS does not swallow or re-type the raise; the member and message are named."""
    import traceback

    _, x, y = model
    vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                           likelihood="bernoulli", prior="standard_normal"))
    after = 0 if sampler == "facies_mcmc" else 30  # facies: an affine F, called at the start
    problem = FailsLater(member, after)
    kw = {"num_samples": 4, "num_chains": 1, "warmup_steps": 4, "seed": 0}
    with pytest.raises(ConfigError) as info:
        if sampler == "nuts":
            nuts_sample(problem, y[0], x[:2], **kw)
        elif sampler == "latent_nuts":
            latent_nuts_sample(vae, problem, y[0], (x[:4] > 0).float(), **kw)
        else:
            facies_mcmc_sample(vae, problem, y[0], (x[:4] > 0).float(), **kw)
    assert str(info.value).startswith(
        f"problem 'linear_gaussian' {member} raised RuntimeError: boom for x of shape"
    )
    assert problem.calls == after + 1  # the first failing call ended the run
    files = [frame.filename for frame in traceback.extract_tb(info.value.__traceback__)]
    inside_pyro = any(f"pyro{os.sep}infer{os.sep}mcmc" in f for f in files)
    assert inside_pyro == (sampler != "facies_mcmc"), files


def test_a_nan_density_is_a_data_error_under_importance_and_nuts(model):
    cvae, x, y = model
    with pytest.raises(DataError, match="log_likelihood is nan at 8 of 8 importance proposals"):
        importance_sample(cvae, NaNLikelihood(), y[0], 8, seed=0)
    with pytest.raises(DataError, match="is nan at 2 of 2 chain starts"):
        nuts_sample(NaNLikelihood(), y[0], x[:2], num_samples=4, num_chains=2, warmup_steps=0)


def test_chain_starts_of_the_wrong_shape_are_a_shape_error_for_every_sampler(model):
    _, _, y = model
    problem = LinearGaussian()
    vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                           likelihood="bernoulli", prior="standard_normal"))
    bad = torch.zeros(4, 3)
    for sampler, prior in ((nuts_sample, None), (latent_nuts_sample, vae),
                           (facies_mcmc_sample, vae)):
        args = (problem, y[0], bad) if prior is None else (prior, problem, y[0], bad)
        with pytest.raises(ShapeError, match=r"init must have shape \(N >= 1, 2\)"):
            sampler(*args, num_samples=4, num_chains=1)


def test_zero_observations_are_a_data_error_in_memory_and_from_a_file(model, tmp_path):
    cvae, _, _ = model
    empty = torch.zeros(0, 2)
    for call in (lambda: draw_posterior(cvae, empty, 4),
                 lambda: sample_posterior(cvae, empty, 4),
                 lambda: importance_sample(cvae, LinearGaussian(), empty, 8)):
        with pytest.raises(DataError, match="no observations"):
            call()
    np.save(tmp_path / "empty.npy", empty.numpy())
    with pytest.raises(DataError, match="is empty"):
        load_observations(tmp_path / "empty.npy", (2,))


def test_x_and_y_of_different_lengths_are_a_shape_error_everywhere(model, tmp_path):
    cvae, x, y = model
    np.savez(tmp_path / "pairs.npz", x=x[:5].numpy(), y=y[:4].numpy())
    for call in (lambda: build_cvae(cvae.config, x[:5], y[:4]),
                 lambda: cvae.check_inputs(y[:4], x[:5]),
                 lambda: load_pairs(tmp_path / "pairs.npz"),
                 lambda: check_simulated((x[:5], y[:4]), 5, (2,), (2,), "simulate")):
        with pytest.raises(ShapeError):
            call()


def test_a_problem_that_does_not_fit_the_model_is_a_shape_error_everywhere(model, tmp_path):
    """The same check whether the problem meets the model in memory or at loading."""
    cvae, _, y = model
    other = LinearGaussian(x_dim=3, y_dim=2)
    save_checkpoint(tmp_path / "model.pt", cvae, problem=LinearGaussian())
    for call in (lambda: check_problem_matches(other, cvae.config),
                 lambda: draw_posterior(cvae, y[0], 4, problem=other),
                 lambda: load_checkpoint(tmp_path, problem=other)):
        with pytest.raises(ShapeError, match=r"x \(3,\)"):
            call()


class BoomForward(LinearGaussian):
    """``forward`` raises ``RuntimeError('boom')`` on every call (a solver that crashed)."""

    def forward(self, x):
        raise RuntimeError("boom")


def test_a_forward_operator_that_raises_is_a_config_error_in_the_evaluation(model):
    """The evaluation's misfit (coverage metrics, SBC statistic) runs the problem's forward.

    Before, each entry point let the RuntimeError through unnamed.
    """
    from inference.diagnostics.calibration import misfit_statistic, run_calibration
    from inference.diagnostics.coverage import run_evaluation
    from inference.evaluate import evaluate_draws, evaluate_model

    cvae, x, y = model
    problem = BoomForward()
    draws = x[None].repeat(20, 1, 1) + 0.1 * torch.randn(20, *x.shape,
                                                        generator=torch.Generator().manual_seed(1))
    calls = {
        "run_evaluation": lambda: run_evaluation(draws, x, x_reference=torch.zeros(2), y_obs=y,
                                                 problem=problem),
        "misfit_statistic": lambda: misfit_statistic(problem, y)(draws),
        "run_calibration": lambda: run_calibration(draws, x, y_obs=y, problem=problem),
        "evaluate_draws": lambda: evaluate_draws(draws, x, y, x_reference=torch.zeros(2),
                                                 problem=problem),
        "evaluate_model": lambda: evaluate_model(cvae, x, y, problem=problem, num_samples=20),
    }
    for name, call in calls.items():
        with pytest.raises(ConfigError) as info:
            call()
            pytest.fail(f"{name} accepted the raising forward operator")  # pragma: no cover
        assert str(info.value).startswith(
            "problem 'linear_gaussian' forward raised RuntimeError: boom for x of shape ("
        ), (name, str(info.value))
        assert isinstance(info.value.__cause__, RuntimeError), name


def test_the_two_birds_laplace_mixture_names_a_raising_forward_operator():
    from inference.laplace_mixture import two_birds_mode_sample
    from ppl_cvae.problems.two_birds import TwoBirds, lines_from_endpoints

    class Boom(TwoBirds):
        def forward(self, x):
            raise RuntimeError("boom")

    gen = torch.Generator().manual_seed(0)
    true = TwoBirds("original").sample_endpoints(1, gen)
    y = TwoBirds("original").forward(lines_from_endpoints(true))
    with pytest.raises(ConfigError, match=r"^problem 'two_birds' forward raised RuntimeError: "
                                          r"boom for x of shape \(16, 1, 50, 2\)$"):
        two_birds_mode_sample(Boom("original"), y, true.repeat(3, 1), 0.01, 16, generator=gen)


@pytest.mark.parametrize("start", ["best", "first"])
def test_latent_nuts_refuses_a_nan_density_at_its_starts_before_nuts_runs(model, monkeypatch,
                                                                          start):
    """As ``nuts_sample``: the starts are checked, and NUTS never starts on a NaN target."""
    import inference.latent_mcmc as latent_mcmc

    _, x, y = model
    vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                           prior="standard_normal"))

    def never(*args, **kwargs):  # pragma: no cover - the check must come first
        pytest.fail("NUTS ran on a NaN target")

    monkeypatch.setattr(latent_mcmc, "run_whitened_chain", never)
    with pytest.raises(DataError) as info:
        latent_nuts_sample(vae, NaNLikelihood(), y[0], x[:5], num_samples=4, num_chains=3,
                           warmup_steps=4, start=start)
    assert str(info.value) == (
        "the log posterior density of problem 'linear_gaussian' (log N(z; 0, I) + "
        "log_likelihood at x = g(z)) is nan at 3 of 3 chain starts (encoded amortized draws); "
        "NUTS needs a finite density there: check the problem's log_likelihood (and the "
        "forward operator it calls)"
    )


class NaNForwardRight(LinearGaussian):
    """``forward`` gives NaN for the models whose first value is positive."""

    def forward(self, x):
        y = super().forward(x)
        return torch.where(x[..., :1] > 0, float("nan"), y)


def test_a_forward_operator_giving_nan_is_named_by_the_misfit_statistic(model):
    """The SBC misfit names ``forward`` and counts its models; the calibration notes say so."""
    from inference.diagnostics.calibration import misfit_statistic, run_calibration

    _, x, y = model
    draws = x[None].repeat(20, 1, 1) + torch.randn(20, *x.shape,
                                                   generator=torch.Generator().manual_seed(2))
    count = int((draws[..., 0] > 0).sum())
    assert 0 < count < draws[..., 0].numel()
    problem = NaNForwardRight()
    message = (f"problem 'linear_gaussian' forward gives a chi-squared misfit that is NaN or "
               f"infinite at {count} of {draws[..., 0].numel()} models (NaN or inf in F(x)): "
               "check the problem's forward")
    with pytest.raises(DataError) as info:
        misfit_statistic(problem, y)(draws)
    assert str(info.value) == message
    notes = run_calibration(draws, x, y_obs=y, problem=problem)["notes"]
    assert f"{message}: the misfit is left out of SBC" in notes


def test_the_two_birds_laplace_mixture_checks_a_users_function_pair():
    """``two_birds_mode_sample`` differentiates ``problem.functions`` itself (the Jacobian), so
    a user's pair of callables is problem code there too: one that raises only under autograd
    is a ConfigError naming it, one that is not differentiable is refused in words, and a
    function of one line only (no gradient in the other) is accepted."""
    from inference.laplace_mixture import two_birds_mode_sample
    from ppl_cvae.problems.two_birds import TwoBirds, lines_from_endpoints

    def f0(x0, x1):
        return torch.sin(5 * x0 + 3 * x1)

    def grad_boom(x0, x1):
        if x0.requires_grad:
            raise RuntimeError("boom under autograd")
        return torch.cos(4 * x0 + 8 * x1)

    def detached(x0, x1):
        return torch.cos(4 * x0.detach() + 8 * x1.detach())

    def one_line(x0, x1):
        return torch.cos(4 * x0)

    def short_under_autograd(x0, x1):
        out = torch.cos(4 * x0 + 8 * x1)
        return out[..., :10] if x0.requires_grad else out

    gen = torch.Generator().manual_seed(0)
    true = TwoBirds((f0, one_line)).sample_endpoints(1, gen)
    for f1, error, match in [
        (grad_boom, ConfigError,
         r"^problem 'two_birds' function f1 raised RuntimeError: boom under autograd for "
         r"lines of shape \(\d+, 50\)$"),
        (detached, ConfigError, r"^problem 'two_birds' function f1 must be differentiable"),
        (short_under_autograd, ShapeError,
         r"^problem 'two_birds' function f1 must return a tensor of shape \(\d+, 50\) \(the "
         r"shape of x0\), got \(\d+, 10\)$"),
    ]:
        problem = TwoBirds((f0, f1))
        y = problem.forward(lines_from_endpoints(true))
        with pytest.raises(error, match=match):
            two_birds_mode_sample(problem, y, true.repeat(3, 1), 0.01, 16, generator=gen)
    problem = TwoBirds((f0, one_line))
    y = problem.forward(lines_from_endpoints(true))
    res = two_birds_mode_sample(problem, y, true.repeat(3, 1) + 1e-4, 0.01, 64,
                                generator=torch.Generator().manual_seed(1))
    assert len(res.draws) == 64 and bool(torch.isfinite(torch.as_tensor(res.draws)).all())
