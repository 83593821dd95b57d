"""Facies SMC in the posterior file and on the command line (``--method facies-smc``).

``sample_corrected(method="facies-smc")`` on fields of 3 cells (8 facies fields) of an
untrained generative prior (latent 1, random weights) is checked against exact enumeration:
the frequencies of the fields over all populations and particles against ``p(x | y)``, and the
file's log evidence against ``log p(y) = log int N(z; 0, 1) sum_x p_g(x | z) p(y | x) dz`` on a
grid of ``z``. The command line is run on tiny crosshole-channel runs, its flags of other
methods refused, and its defaults checked against the Python ones.
"""

from __future__ import annotations

import inspect
import math

import arviz as az
import numpy as np
import pytest
import torch

import inference.facies_smc as facies_smc
from inference.facies_smc import sample_facies_smc
from inference.sample import CorrectionConfig, sample_corrected
from ppl_cvae.cli import main
from ppl_cvae.cli.sample import (
    DEFAULT_CHAINS,
    DEFAULT_FACIES_MOVES,
    DEFAULT_SMC_FINAL_STEPS,
    DEFAULT_SMC_POPULATIONS,
    DEFAULT_SMC_STEPS,
    GENERATIVE_PRIOR_METHODS,
)
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems import LinearGaussian
from tests.conftest import TINY_FIT
from tests.test_facies_mcmc import _cvae, _exact, _exact_log_evidence, _vae


def test_sample_corrected_facies_smc_file_matches_the_enumerated_posterior(monkeypatch):
    """Particles of all populations against p(x | y); log evidence against the exact one."""
    # noise 0.08 on data of scale 1: a sharp likelihood, tempered in over several stages
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.08, seed=1)
    vae = _vae(3, "bernoulli")
    cvae = _cvae(3, 2)
    x_true = torch.tensor([[1.0, 0.0, 1.0]])
    y = problem.forward(x_true)
    seen, results = [], []
    original = facies_smc.facies_smc_sample

    def spy(prior_vae, prob, y_m, **kwargs):
        seen.append(kwargs)
        results.append(original(prior_vae, prob, y_m, **kwargs))
        return results[-1]

    monkeypatch.setattr(facies_smc, "facies_smc_sample", spy)
    correction = CorrectionConfig(method="facies-smc", populations=2, flips_per_step=1,
                                  smc_steps=5, smc_final_steps=6)
    idata, summary, ok = sample_corrected(cvae, y, 4000, problem, correction, x_true=x_true,
                                          seed=5, generative_prior=vae)
    # the settings reach the sampler: chains are the populations
    assert seen == [{"num_particles": 2000, "populations": 2, "steps_per_stage": 5,
                     "final_steps": 6, "flips_per_step": 1, "seed": 5,
                     "progress": None}]
    post = idata["posterior"]
    assert (post.sizes["chain"], post.sizes["draw"], post.sizes["observation"]) == (2, 2000, 1)
    assert post.attrs["method"] == "facies-smc" and post.attrs["chains"] == 2
    assert post.attrs["steps_per_stage"] == 5 and post.attrs["final_steps"] == 6
    x = post["x"].values[:, :, 0]  # (chain, draw, 3)
    assert np.array_equal(x, results[0].x.numpy())
    assert set(np.unique(x)) <= {0.0, 1.0}
    stats = idata["sample_stats"]
    stages = int(stats["stages"].values.ravel()[0])
    assert stages >= 2  # the likelihood was tempered in, not taken in one step
    assert ok == results[0].converged and summary.startswith("facies SMC: log evidence")

    states, probs, _ = _exact(vae, problem, y[0], 2)
    draws = torch.from_numpy(x.reshape(-1, 3)).double()
    freq = torch.stack([(draws == s).all(-1).double().mean() for s in states])
    # 4000 particles, 8 fields: E[TV] is about sum_s sqrt(2 / pi) sqrt(p_s (1 - p_s) / N_eff) / 2
    # = 0.017 for an ESS of 1000 (a quarter of the particles, duplicated by resampling);
    # measured 0.001 to 0.018 over 30 seeds. Moves at beta = 0.7 instead of 1 give 0.18.
    assert 0.5 * float((freq - probs).abs().sum()) < 0.03, (freq, probs)
    # negative control: the prior's fields (the likelihood ignored) are told apart
    prior_states, prior_probs, _ = _exact(
        vae, LinearGaussian(x_dim=3, y_dim=2, noise_std=1e4, seed=1), y[0], 2
    )
    assert torch.equal(prior_states, states)
    assert 0.5 * float((freq - prior_probs).abs().sum()) > 0.3

    log_z = float(stats["log_evidence"].values.ravel()[0])
    se = float(stats["log_evidence_se"].values.ravel()[0])
    exact = _exact_log_evidence(vae, problem, y[0], 2)
    # The se of 2 populations is itself noisy (1 degree of freedom: below a quarter of its
    # value one time in five), so it is floored at the error SMC theory gives: each stage's
    # incremental weights have ESS N / 2, relative variance 1, so log mean w has variance
    # about 1 / N (delta method); T stages, N particles per population, P populations:
    # sd(log Z) about sqrt(T / N / P) = 0.032 here (0.022 measured over 8 seeds). Four of
    # those, plus 0.02 for the O(1 / N) bias of the adaptive schedule and of log of a mean.
    floor = math.sqrt(stages / 2000 / 2)
    tol = 4 * max(se, floor) + 0.02
    assert abs(log_z - exact) <= tol, (log_z, se, exact, tol)
    # (measured over 30 seeds: |log_z - exact| at most 0.47 of tol; resampling with equal
    # weights instead, the particles never follow the tempering: off by 0.32, 1.4 tol)
    # negative control: an evidence off by the prior's normalisation, log sqrt(2 pi) = 0.92
    assert abs(log_z - (exact + 0.5 * math.log(2 * math.pi))) > tol


def test_correction_config_smc_fields_are_validated():
    with pytest.raises(ConfigError, match="CorrectionConfig.smc_steps must be an int >= 4"):
        CorrectionConfig(method="facies-smc", smc_steps=3)
    with pytest.raises(ConfigError, match="CorrectionConfig.smc_final_steps must be an int >= 4"):
        CorrectionConfig(method="facies-smc", smc_final_steps=2.5)
    with pytest.raises(ConfigError, match="CorrectionConfig.populations must be an int >= 1"):
        CorrectionConfig(method="facies-smc", populations=0)
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.4, seed=1)
    with pytest.raises(ConfigError, match="needs a generative prior"):
        sample_corrected(_cvae(3, 2), torch.zeros(1, 2), 8, problem,
                         CorrectionConfig(method="facies-smc"))


CROSS = ["--problem", "crosshole", "--problem-arg", "prior=channels",
         "--problem-arg", "num_depth_cells=6", "--problem-arg", "num_offset_cells=5",
         "--problem-arg", "num_sources=3", "--problem-arg", "num_receivers=3"]


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    """A facies CVAE, a facies generative prior and 2 observations of tiny crosshole channels."""
    root = tmp_path_factory.mktemp("smc_channels")
    threads = torch.get_num_threads()
    try:
        assert main(["fit", *CROSS, "--out", str(root / "run"), *TINY_FIT]) == 0
        assert main(["fit", *CROSS, "--unconditional", "--out", str(root / "prior"),
                     *TINY_FIT]) == 0
        assert main(["simulate", *CROSS, "--num", "2", "--out", str(root / "obs.npz")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def _sample_args(root, out, *flags: str) -> list[str]:
    return ["sample", str(root / "run"), "--observation", str(root / "obs.npz"),
            "--method", "facies-smc", "--generative-prior", str(root / "prior"), *flags,
            "--out", str(out)]


def test_cli_sample_facies_smc_on_crosshole_channels(channels, tmp_path, capsys):
    out = tmp_path / "post.nc"
    args = _sample_args(channels, out, "--num-samples", "16", "--smc-steps", "4",
                        "--smc-final-steps", "4", "--facies-moves", "1")
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("facies SMC:") for line in printed) == 1
    assert printed[0].startswith("facies SMC: log evidence")
    idata = az.from_netcdf(out)
    post = idata["posterior"]
    # the default --chains of facies-smc: 2 populations of ceil(16 / 2) = 8 particles
    assert (post.sizes["chain"], post.sizes["draw"], post.sizes["observation"]) == (2, 8, 2)
    assert post["x"].dims[-2:] == ("depth", "offset")
    assert set(np.unique(post["x"].values)) <= {0.0, 1.0}  # facies codes, not probabilities
    assert post.attrs["method"] == "facies-smc" and post.attrs["flips_per_step"] == 1
    assert post.attrs["steps_per_stage"] == 4 and post.attrs["final_steps"] == 4
    stats = idata["sample_stats"]
    stages = stats["stages"].values[0, 0]  # per observation, broadcast over the draws
    assert stages.shape == (2,) and (stages >= 1).all()
    spread = stats["evidence_spread"].values[0, 0]
    bound = stats["evidence_tolerance"].values[0, 0]
    assert ("FAILED" in printed[0]) == bool((spread > bound).any())


def test_cli_applies_the_python_defaults_of_facies_smc(channels, tmp_path, capsys, monkeypatch):
    """Without --chains, --smc-steps, --smc-final-steps, --facies-moves: the defaults arrive."""
    seen = []
    original = facies_smc.sample_facies_smc

    def spy(*args, **kwargs):
        seen.append(dict(kwargs))
        # the defaults are recorded; run cheaply
        kwargs.update(steps_per_stage=4, final_steps=4, flips_per_step=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(facies_smc, "sample_facies_smc", spy)
    assert main(_sample_args(channels, tmp_path / "post.nc", "--num-samples", "8")) == 0
    params = inspect.signature(sample_facies_smc).parameters
    assert len(seen) == 1
    for name in ("populations", "steps_per_stage", "final_steps", "flips_per_step"):
        assert seen[0][name] == params[name].default, name
    assert seen[0]["populations"] == DEFAULT_SMC_POPULATIONS != DEFAULT_CHAINS


def test_cli_defaults_are_the_python_defaults():
    params = inspect.signature(sample_facies_smc).parameters
    assert params["populations"].default == DEFAULT_SMC_POPULATIONS
    assert params["steps_per_stage"].default == DEFAULT_SMC_STEPS
    assert params["final_steps"].default == DEFAULT_SMC_FINAL_STEPS
    assert params["flips_per_step"].default == DEFAULT_FACIES_MOVES
    config = CorrectionConfig()
    assert config.smc_steps == DEFAULT_SMC_STEPS
    assert config.populations == DEFAULT_SMC_POPULATIONS  # its own field, not chains (4)
    assert config.smc_final_steps == DEFAULT_SMC_FINAL_STEPS
    assert config.flips_per_step == DEFAULT_FACIES_MOVES
    assert "facies-smc" in GENERATIVE_PRIOR_METHODS


@pytest.mark.parametrize("method, flags, match", [
    ("facies-mcmc", ["--smc-steps", "8"],
     "--smc-steps applies to --method facies-smc only, got --method facies-mcmc"),
    ("facies-mcmc", ["--smc-final-steps", "8"],
     "--smc-final-steps applies to --method facies-smc only, got --method facies-mcmc"),
    ("facies-smc", ["--temperatures", "2"],
     "--temperatures applies to --method facies-mcmc only, got --method facies-smc"),
    ("facies-smc", ["--warmup", "10"],
     "--warmup applies to --method nuts, latent-nuts or facies-mcmc only, got --method "
     "facies-smc"),
    ("facies-smc", [], "--generative-prior PRIOR_RUN go together (got --method facies-smc, "
                       "no --generative-prior)"),
    ("facies-smc", ["--smc-steps", "3"], "--smc-steps: expected a whole number >= 4, got 3"),
])
def test_cli_flags_of_facies_smc_are_refused(tmp_path, capsys, method, flags, match):
    """Refused before any run is read (the run folder need not exist)."""
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((1, 9), dtype=np.float32))
    argv = ["sample", str(tmp_path / "run"), "--observation", str(obs), "--method", method,
            *flags, "--out", str(tmp_path / "post.nc")]
    if method == "facies-mcmc":  # a prior given: only the flag is wrong
        argv[6:6] = ["--generative-prior", str(tmp_path / "prior")]
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    except SystemExit as exc:  # the argument parser
        code = exc.code
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err
    assert not (tmp_path / "post.nc").exists()
