"""One seed check for every entry point that takes a seed (``ppl_cvae.checks.as_seed``).

Before it, the calibration diagnostics took any int >= 0 (2**40 included), the command line
and ``TrainConfig`` refused out-of-range seeds with messages of their own, and NUTS on ``x``,
latent NUTS and the generative-prior file refused the largest seed ``2**32 - 1`` because
chain ``c`` (observation ``m``) took ``seed + c``. Now every entry point accepts exactly the
ints in ``[0, 2**32 - 1]`` and refuses the rest with one message, and the derived streams wrap
(``derived_seed``) so that every accepted seed serves any number of chains.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import inference.mcmc.chains as chains
from inference.diagnostics.calibration import run_calibration, sbc_ranks, tarp_values
from inference.evaluate import evaluate_draws
from inference.facies_mcmc import facies_mcmc_sample
from inference.importance import importance_sample
from inference.latent_mcmc import latent_nuts_sample
from inference.mcmc import nuts_sample
from inference.posterior import draw_posterior
from ppl_cvae import ModelConfig, build_cvae
from ppl_cvae.checks import MAX_SEED, as_seed, derived_seed
from ppl_cvae.cli.parser import build_parser
from ppl_cvae.config import TrainConfig
from ppl_cvae.data.streaming import SimulationStream, batch_seed
from ppl_cvae.errors import ConfigError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian

MESSAGE = r"^seed must be an int in \[0, 2\*\*32 - 1\], got "


@pytest.fixture(scope="module")
def entry_points():
    """``name -> call(seed)`` for every public entry point that takes a seed."""
    problem = LinearGaussian()
    x, y = problem.simulate(16, torch.Generator().manual_seed(0))
    cfg = ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,), latent_dim=2)
    cvae = build_cvae(cfg, x, y, problem=problem, seed=0)
    vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                           likelihood="bernoulli", prior="standard_normal"))
    vae_g = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                             prior="standard_normal"))
    draws = x[:8].unsqueeze(1).expand(8, 4, 2)  # 8 draws of 4 observations
    mcmc = {"num_samples": 4, "warmup_steps": 1, "num_chains": 2}
    return {
        "TrainConfig": lambda s: TrainConfig(seed=s),
        "LinearGaussian": lambda s: LinearGaussian(seed=s),
        "build_cvae": lambda s: build_cvae(cfg, x, y, seed=s),
        "draw_posterior": lambda s: draw_posterior(cvae, y[0], 2, seed=s),
        "importance_sample": lambda s: importance_sample(cvae, problem, y[0], 4, seed=s),
        "nuts_sample": lambda s: nuts_sample(problem, y[0], x[:2], seed=s, **mcmc),
        "latent_nuts_sample": lambda s: latent_nuts_sample(vae_g, problem, y[0], x[:2], seed=s,
                                                           **mcmc),
        "facies_mcmc_sample": lambda s: facies_mcmc_sample(
            vae, problem, y[0], torch.zeros(2, 2), seed=s, temperatures=1, **mcmc),
        "sbc_ranks": lambda s: sbc_ranks(draws, x[:4], seed=s),
        "tarp_values": lambda s: tarp_values(draws, x[:4], seed=s),
        "run_calibration": lambda s: run_calibration(draws, x[:4], seed=s),
        "evaluate_draws": lambda s: evaluate_draws(draws, x[:4], y[:4], x_reference=x.mean(0),
                                                   seed=s),
        "SimulationStream": lambda s: SimulationStream(problem.simulate, 4, seed=s),
        "batch_seed": lambda s: batch_seed(s, 0),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # few observations for SBC and TARP
@pytest.mark.parametrize("seed", [-1, 2**32, 2**40, 1.5, "7", True, np.float64(3.0)])
def test_every_entry_point_refuses_the_same_seeds_with_one_message(entry_points, seed):
    for name, call in entry_points.items():
        with pytest.raises(ConfigError, match=MESSAGE):
            call(seed)
            pytest.fail(f"{name} accepted seed {seed!r}")  # pragma: no cover


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_entry_point_accepts_the_largest_seed(entry_points):
    """2**32 - 1 with two chains: NUTS and latent NUTS refused it before (seed + 1 overflowed)."""
    for call in entry_points.values():
        call(MAX_SEED)
        call(np.uint32(MAX_SEED))  # a NumPy integer is the same seed


@pytest.mark.parametrize("text", ["-1", str(2**32), "1.5", "abc"])
def test_the_command_line_refuses_with_the_same_message(capsys, text):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["simulate", "--problem", "linear_gaussian", "--num", "2",
                                   "--out", "x.npz", "--seed", text])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    got = text if text.lstrip("-").isdigit() else repr(text)
    kind = "int" if text.lstrip("-").isdigit() else "str"
    assert f"argument --seed: seed must be an int in [0, 2**32 - 1], got {got} ({kind})" in line
    with pytest.raises(ConfigError) as api:
        as_seed(int(text) if text.lstrip("-").isdigit() else text)
    assert str(api.value) in line  # the Python API's message, word for word
    assert build_parser().parse_args(["simulate", "--problem", "p", "--num", "2", "--out",
                                      "x.npz", "--seed", str(MAX_SEED)]).seed == MAX_SEED


def test_chain_c_of_seed_s_runs_with_derived_seed(monkeypatch):
    """Chain c takes (s + c) mod 2**32: s + c below the top, wrapped to 0, 1, ... above it."""
    assert [derived_seed(MAX_SEED - 1, c) for c in range(4)] == [MAX_SEED - 1, MAX_SEED, 0, 1]
    seen = []
    original = chains.run_whitened_chain

    def recording(kernel, start, mu, tril, num_samples, warmup_steps, seed):
        seen.append(seed)
        return original(kernel, start, mu, tril, num_samples, warmup_steps, seed)

    monkeypatch.setattr(chains, "run_whitened_chain", recording)
    problem = LinearGaussian()
    x, y = problem.simulate(8, torch.Generator().manual_seed(0))
    nuts_sample(problem, y[0], x[:3], num_samples=4, warmup_steps=1, num_chains=3,
                seed=MAX_SEED - 1)
    assert seen == [MAX_SEED - 1, MAX_SEED, 0]
    seen.clear()
    nuts_sample(problem, y[0], x[:3], num_samples=4, warmup_steps=1, num_chains=3, seed=5)
    assert seen == [5, 6, 7]  # below the top: the seeds of earlier versions, the same draws
