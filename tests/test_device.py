"""Devices: ``--device`` parsing, moving problems, and tensors created on the right device.

Without a GPU, placement is checked on PyTorch's ``meta`` device: an operation that mixes a
meta tensor with a CPU tensor raises, so a forward operator, likelihood, prior or Pyro model
that creates a tensor on the default device (instead of next to its inputs) fails here as it
would on CUDA. Meta tensors carry no values, so these tests check placement only; the numbers
on a real GPU are checked by the ``cuda`` tests, skipped when CUDA is absent.
"""

from __future__ import annotations

import copy
import json
from typing import NamedTuple

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_cvae import ModelConfig, TrainConfig
from ppl_cvae.cli import main
from ppl_cvae.device import module_device, move_tensors, problem_on, resolve_device
from ppl_cvae.errors import ConfigError, NoDensityError
from ppl_cvae.problems import make_problem
from ppl_cvae.problems.base import ProblemAdapter
from ppl_cvae.train import build_cvae, fit, load_checkpoint, save_checkpoint

META = torch.device("meta")
def cuda(test):
    """Mark a test as a GPU test, skipped with the reason where CUDA is absent."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here")
    return pytest.mark.gpu(skip(test))


# ------------------------------------------------------------------ resolve_device
def test_cpu_and_auto_resolve_to_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("cpu") == resolve_device("auto")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_auto_takes_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="2 CUDA device.*numbered 0 to 1"):
        resolve_device("cuda:2")


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("spec", ["gpu", "tpu:0", "", "cuda:-1", "meta", "cpu:x"])
def test_unknown_devices_name_the_choices(spec):
    with pytest.raises(ConfigError, match="cpu, cuda, cuda:N or auto"):
        resolve_device(spec)


# ------------------------------------------------------------------ move_tensors
class _Pair(NamedTuple):
    a: torch.Tensor
    b: int


class _Holder:
    def __init__(self) -> None:
        self.matrix = torch.eye(2)
        self.parts = {"offset": torch.zeros(2), "nested": [torch.ones(1), _Pair(torch.ones(3), 4)]}
        self.net = torch.nn.Linear(2, 1)
        self.generator = torch.Generator()
        self.scale = 2.0
        self.itself = self  # a cycle must not recurse forever


def test_move_tensors_reaches_nested_tensors_and_modules():
    holder = move_tensors(_Holder(), META)
    assert holder.matrix.device == META and holder.parts["offset"].device == META
    assert holder.parts["nested"][0].device == META
    pair = holder.parts["nested"][1]
    assert isinstance(pair, _Pair) and pair.a.device == META and pair.b == 4
    assert module_device(holder.net) == META
    assert holder.generator.device == torch.device("cpu") and holder.scale == 2.0


def test_problem_on_the_cpu_is_the_problem_itself_and_a_copy_elsewhere():
    problem = make_problem("linear_gaussian")
    assert problem_on(problem, "cpu") is problem
    moved = problem_on(problem, META)
    assert moved is not problem
    x = problem.sample_prior(2, torch.Generator().manual_seed(0))
    assert problem.forward(x).device == torch.device("cpu")  # the original stays on the CPU


def test_a_problem_that_cannot_be_copied_is_named():
    class Locked:
        name, x_shape, y_shape = "locked", (1,), (1,)
        x_dims, y_dims, coords = ("p",), ("d",), {}
        noise_std = misfit_std = 1.0

        def sample_prior(self, num, generator=None):
            return torch.zeros(num, 1)

        def forward(self, x):
            return x

        def __deepcopy__(self, memo):
            raise TypeError("holds an open file")

        simulate = spec = None

    with pytest.raises(ConfigError, match="'locked' cannot be copied onto meta"):
        problem_on(ProblemAdapter(Locked()), META)


# ------------------------------------------------------------------ placement on meta
PROBLEMS = [
    ("linear_gaussian", {}),
    ("crosshole", {}),
    ("crosshole", {"prior": "channels"}),
    ("gravity", {}),
    ("mt1d", {}),
    ("two_birds", {}),
]


def _on_meta(call):
    """Run ``call``; skip what meta tensors cannot express (values read back with .item())."""
    try:
        return call()
    except NoDensityError:
        return None  # no density to place (a simulator-only prior, a noise-free problem)
    except (RuntimeError, ConfigError) as err:
        # the default log_likelihood names its forward operator's raise as a ConfigError
        cause = err.__cause__ if isinstance(err, ConfigError) else err
        if "cannot be called on meta tensors" in str(cause):
            return None  # reads a value (a range check): placement cannot be checked on meta
        raise


@pytest.mark.parametrize(("name", "kwargs"), PROBLEMS, ids=lambda v: str(v))
def test_problem_densities_and_forward_operator_follow_their_inputs(name, kwargs):
    problem = make_problem(name, **kwargs)
    x, y = problem.simulate(3, torch.Generator().manual_seed(0))
    moved = problem_on(problem, META)
    xm, ym = x.to(META), y.to(META)
    for call in (
        lambda: moved.forward(xm),
        lambda: moved.log_likelihood(xm, ym),
        lambda: moved.log_prior(xm),
    ):
        out = _on_meta(call)
        assert out is None or out.device == META


def test_a_duck_typed_problem_moves_through_the_adapter():
    class Duck:
        name, x_shape, y_shape = "duck", (2,), (2,)
        x_dims, y_dims, coords = ("p",), ("d",), {}
        noise_std = misfit_std = 1.0

        def __init__(self):
            self.matrix = torch.tensor([[2.0, 0.0], [1.0, 1.0]])

        def sample_prior(self, num, generator=None):
            return torch.randn(num, 2, generator=generator)

        def forward(self, x):
            return x @ self.matrix.T

        simulate = spec = None

    moved = problem_on(ProblemAdapter(Duck()), META)
    assert moved.matrix.device == META
    assert moved.log_likelihood(
        torch.zeros(4, 2, device=META), torch.zeros(4, 2, device=META)
    ).shape == (4,)


MODEL_CASES = [
    {},
    {"likelihood": "gaussian_decoder"},
    {"likelihood": "gaussian_full"},
    {"likelihood": "gaussian_lowrank", "noise_rank": 1},
    {"x_whitening": "linear"},
    {"prior": "standard_normal"},
    {"network": "conv1d"},
]


@pytest.mark.parametrize("gsnn_weight", [0.0, 0.5])
@pytest.mark.parametrize("kwargs", MODEL_CASES, ids=lambda v: ",".join(v) or "default")
def test_model_and_guide_create_their_tensors_on_the_device_of_the_networks(kwargs, gsnn_weight):
    """Flows are not covered: Pyro's spline flows call torch.nonzero, which meta cannot run."""
    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    config = ModelConfig(
        x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,), latent_dim=2, **kwargs
    )
    cvae = build_cvae(config, x, y, problem=problem).to(META)
    ym, xm = y[:4].to(META), x[:4].to(META)
    options = {"kl_weight": 1.0, "gsnn_weight": gsnn_weight}
    with pyro.validation_enabled(False):
        guide = poutine.trace(cvae.guide).get_trace(ym, xm, **options)
        model = poutine.trace(poutine.replay(cvae.model, trace=guide)).get_trace(ym, xm, **options)
    for trace in (guide, model):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert site["value"].device == META, site["name"]
                assert site["fn"].log_prob(site["value"]).device == META, site["name"]


# ------------------------------------------------------------------ fit and the CLI on the CPU
def _tiny_fit(device):
    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(96, torch.Generator().manual_seed(1))
    config = ModelConfig(
        x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,), latent_dim=2
    )
    cvae = build_cvae(config, x, y, problem=problem, seed=0)
    result = fit(
        cvae, x, y, TrainConfig(num_epochs=2, batch_size=32, seed=0), progress=False, device=device
    )
    return cvae, result


def test_fit_on_the_cpu_device_is_the_default_fit_exactly():
    a, ra = _tiny_fit(None)
    b, rb = _tiny_fit("cpu")
    assert ra.step_losses == rb.step_losses
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


def test_cli_fit_records_the_device_and_refuses_missing_cuda(tmp_path, monkeypatch, capsys):
    common = [
        "fit",
        "--problem",
        "linear_gaussian",
        "--epochs",
        "1",
        "--num-train",
        "64",
        "--hidden-dims",
        "8",
        "--latent-dim",
        "2",
        "--quiet",
    ]
    assert main([*common, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["device"] == "cpu"
    # the recorded run file is accepted again (device is read and ignored)
    assert (
        main(
            [
                "fit",
                "--config",
                str(tmp_path / "run" / "config.json"),
                "--quiet",
                "--out",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
    assert not (tmp_path / "gpu").exists()


# ------------------------------------------------------------------ CUDA (skipped without it)
@cuda
def test_a_model_trained_on_cuda_loads_on_the_cpu_with_the_same_density(tmp_path):
    cvae, _ = _tiny_fit("cuda")
    assert module_device(cvae).type == "cuda"
    path = save_checkpoint(tmp_path / "model.pt", cvae)
    loaded, _ = load_checkpoint(path)
    assert module_device(loaded).type == "cpu"
    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(8, torch.Generator().manual_seed(2))
    z = torch.zeros(8, 2)
    with torch.no_grad():
        on_gpu, _ = cvae.x_distribution(z.cuda(), y.cuda(), location=False)
        on_cpu, _ = loaded.x_distribution(z, y, location=False)
        gpu_lp, cpu_lp = on_gpu.log_prob(x.cuda()).cpu(), on_cpu.log_prob(x)
    torch.testing.assert_close(gpu_lp, cpu_lp, rtol=1e-4, atol=1e-4)


@cuda
def test_amortized_draws_on_cuda_come_back_to_the_cpu():
    from inference.posterior import draw_posterior

    cvae, _ = _tiny_fit("cuda")
    problem = make_problem("linear_gaussian")
    _, y = problem.simulate(3, torch.Generator().manual_seed(3))
    draws = draw_posterior(cvae, y, 50, problem=problem, seed=0)
    assert draws.x.device.type == "cpu" and draws.x.shape == (50, 3, *problem.x_shape)
    assert draws.y_rep is not None and bool(torch.isfinite(draws.y_rep).all())


def test_copying_a_problem_keeps_its_simulations():
    problem = make_problem("gravity")
    twin = copy.deepcopy(problem)
    a = problem.simulate(2, torch.Generator().manual_seed(5))
    b = twin.simulate(2, torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
