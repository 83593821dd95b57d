"""FusedClippedAdam takes the same steps as Pyro's per-parameter ClippedAdam."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from ppl_cvae.train.optim import FusedClippedAdam

ARGS = {"lr": 0.05, "clip_norm": 0.5, "lrd": 0.98, "weight_decay": 0.01, "betas": (0.8, 0.95)}


def _model(net: torch.nn.Module, data: torch.Tensor, late: bool) -> None:
    loc = pyro.module("net", net)(data[:, :3])
    if late:  # a parameter that first appears after a few steps (its own step count)
        loc = loc + pyro.param("shift", torch.zeros(2))
    with pyro.plate("rows", data.shape[0]):
        pyro.sample("obs", dist.Normal(loc, 1.0).to_event(1), obs=data[:, 3:])


def _guide(net: torch.nn.Module, data: torch.Tensor, late: bool) -> None:
    pass


def _train(optim, steps: int = 25) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.copy_(torch.linspace(-1, 1, 6).reshape(2, 3))
        net.bias.fill_(0.1)
    data = torch.randn(64, 5, generator=torch.Generator().manual_seed(1)) * 4.0  # clipped grads
    svi = SVI(_model, _guide, optim, Trace_ELBO())
    for step in range(steps):
        svi.step(net, data, step >= 7)
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def test_fused_steps_equal_pyros_per_parameter_clipped_adam():
    """Same elementwise rule, so bit for bit: clipping, weight decay, lr decay, a late param."""
    ours = _train(FusedClippedAdam(dict(ARGS)))
    pyros = _train(ClippedAdam(dict(ARGS)))
    assert ours.keys() == pyros.keys() == {"net$$$weight", "net$$$bias", "shift"}
    for name in ours:
        assert torch.equal(ours[name], pyros[name]), name
    # negative control: a different clip changes the path, so the comparison can fail
    other = _train(FusedClippedAdam({**ARGS, "clip_norm": 5.0}))
    assert not torch.equal(other["net$$$weight"], pyros["net$$$weight"])


def test_centered_variance_takes_pyros_loop():
    ours = _train(FusedClippedAdam({**ARGS, "centered_variance": True}))
    pyros = _train(ClippedAdam({**ARGS, "centered_variance": True}))
    for name in ours:
        assert torch.equal(ours[name], pyros[name]), name
