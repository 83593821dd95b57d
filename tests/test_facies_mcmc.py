"""Facies MCMC with a generative prior (``inference.facies_mcmc``) against exact enumeration.

On fields of 3 cells (8 facies fields; 9 for 2 cells and 3 facies) the posterior
``p(x | y) proportional to p(y | x) int N(z; 0, 1) p_g(x | z) dz`` of an untrained VAE (latent
1, random weights: a prior with correlated cells) is computed by enumerating ``x`` and
integrating ``z`` on a grid; the chains' state frequencies must match it within their Monte
Carlo error, and so must the posterior mean of ``z``. The same holds for the posterior file of
``sample_corrected(method="facies-mcmc")`` and ``ppl-cvae sample --method facies-mcmc``.
"""

from __future__ import annotations

import inspect
import itertools
import math

import arviz as az
import numpy as np
import pytest
import torch

import inference.facies_mcmc as facies_mcmc
from inference.facies_mcmc import (
    FaciesMCMCResult,
    facies_mcmc_sample,
    facies_mcmc_summary,
    sample_facies_mcmc,
)
from inference.mcmc import preconditioner_draws, rhat_threshold
from inference.posterior import draw_posterior
from inference.sample import CorrectionConfig, sample_corrected
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian
from tests.conftest import TINY_FIT


def _vae(x_dim: int, likelihood: str, num_facies: int = 2, seed: int = 3) -> CVAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        x_shape=(x_dim,),
        y_shape=None,
        latent_dim=1,
        hidden_dims=(8,),
        likelihood=likelihood,
        num_facies=num_facies,
        prior="standard_normal",
    )
    vae = CVAE(cfg)
    with torch.no_grad():  # a decoder whose cells depend strongly on z
        for p in vae.parameters():
            p.mul_(3.0)
    return vae.eval()


def _grid_joint(vae: CVAE, problem: LinearGaussian, y: torch.Tensor, k: int):
    """All fields, a grid on ``z`` ([-9, 9], 6001 points), ``log N(z; 0, 1) p_g(x | z) p(y | x)``.

    Shapes ``(k**d, d)``, ``(6001, 1)`` and ``(6001, k**d)``; the tails beyond the grid hold
    ``2e-19`` of the prior's mass.
    """
    d = problem.x_shape[0]
    states = torch.tensor(list(itertools.product(range(k), repeat=d)), dtype=torch.float64)
    z = torch.linspace(-9, 9, 6001, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        dist, _ = vae.x_distribution(z.float(), None)
        log_px_z = torch.stack([dist.log_prob(s.float()).double() for s in states], -1)
    log_pz = -0.5 * z.squeeze(-1) ** 2 - 0.5 * math.log(2 * math.pi)
    log_lik = problem.log_likelihood(states, y.double()).double()
    return states, z, log_pz.unsqueeze(-1) + log_px_z + log_lik


def _exact(vae: CVAE, problem: LinearGaussian, y: torch.Tensor, k: int):
    """Enumerated ``p(x | y)`` over all fields and ``E[z | y]`` (grid on z)."""
    states, z, joint = _grid_joint(vae, problem, y, k)
    weights = torch.softmax(joint.flatten(), 0).reshape(joint.shape)
    return states, weights.sum(0), float((weights.sum(1) * z.squeeze(-1)).sum())


def _exact_log_evidence(vae: CVAE, problem: LinearGaussian, y: torch.Tensor, k: int) -> float:
    """``log p(y) = log int N(z; 0, 1) sum_x p_g(x | z) p(y | x) dz`` (Riemann sum on the grid)."""
    _, z, joint = _grid_joint(vae, problem, y, k)
    return float(torch.logsumexp(joint.flatten(), 0)) + math.log(float(z[1, 0] - z[0, 0]))


def _assert_matches_enumeration(x, z, states, probs, z_mean, ess_fraction=0.25):
    """Field frequencies and mean ``z`` of draws against the enumeration (``_exact``).

    ``x`` ``(..., d)`` and ``z`` ``(..., 1)`` draws, correlated: their ESS is taken as
    ``ess_fraction`` of their number. Each field's frequency within 4 binomial sds (plus
    0.002), the total variation below 0.03, the mean ``z`` within 4 sds of its mean.
    """
    draws = x.reshape(-1, states.shape[-1]).double()
    freq = torch.stack([(draws == s).all(-1).double().mean() for s in states])
    n_eff = draws.shape[0] * ess_fraction
    tol = 4 * torch.sqrt(probs * (1 - probs) / n_eff) + 2e-3
    assert torch.all((freq - probs).abs() <= tol), (freq, probs, tol)
    assert 0.5 * float((freq - probs).abs().sum()) < 0.03
    z_sd = float(z.double().std())
    assert abs(float(z.double().mean()) - z_mean) <= 4 * z_sd / math.sqrt(n_eff)


class _Bent(LinearGaussian):
    """A forward operator that is not affine in x (``A x + 0.3 x0 x1``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.3 * (x[..., :1] * x[..., 1:2])


class _StudentT(LinearGaussian):
    """Affine forward operator, non-Gaussian likelihood (Student-t, 3 dof, scale noise_std)."""

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        residual = (y.double() - self.forward(x).double()) / self.noise_std
        t = torch.distributions.StudentT(3.0)
        return (t.log_prob(residual) - math.log(self.noise_std)).sum(-1)


@pytest.mark.parametrize(
    ("likelihood", "k", "d", "kind", "neighbours", "affine", "temps", "mala", "nc", "beta0"),
    [
        ("bernoulli", 2, 3, LinearGaussian, "auto", True, 1, 2, 0, 0.05),
        ("bernoulli", 2, 3, LinearGaussian, "forward", False, 1, 1, 0, 0.05),
        ("categorical", 3, 2, LinearGaussian, "auto", True, 1, 1, 0, 0.05),
        ("categorical", 3, 2, LinearGaussian, "forward", False, 1, 2, 0, 0.05),
        ("bernoulli", 2, 3, _Bent, "auto", False, 1, 1, 0, 0.05),
        ("bernoulli", 2, 3, _StudentT, "auto", False, 1, 1, 0, 0.05),
        ("bernoulli", 2, 3, LinearGaussian, "auto", True, 3, 1, 0, 0.05),
        ("categorical", 3, 2, _Bent, "auto", False, 3, 1, 0, 0.05),
        ("bernoulli", 2, 3, LinearGaussian, "auto", True, 1, 0, 2, 0.05),
        ("categorical", 3, 2, _Bent, "auto", False, 2, 1, 2, 0.05),
        # the exact reference: the hottest replica a fresh draw of the generative prior
        ("bernoulli", 2, 3, LinearGaussian, "auto", True, 3, 1, 0, 0.0),
        ("categorical", 3, 2, _Bent, "auto", False, 2, 0, 0, 0.0),
    ],
)
def test_chains_match_the_enumerated_posterior(
    likelihood, k, d, kind, neighbours, affine, temps, mala, nc, beta0
):
    problem = kind(x_dim=d, y_dim=2, noise_std=0.4, seed=1)
    vae = _vae(d, likelihood, k)
    x_true = torch.tensor([1.0, 0.0, 1.0][:d])
    y = problem.forward(x_true)
    states, probs, z_mean = _exact(vae, problem, y, k)
    init = torch.randint(0, k, (8, d), generator=torch.Generator().manual_seed(0)).float()
    res = facies_mcmc_sample(
        vae, problem, y, init, num_samples=3000, warmup_steps=100, num_chains=4,
        flips_per_step=1, start="first", seed=0, neighbours=neighbours, temperatures=temps,
        min_beta=beta0, latent_moves=mala, noncentred_moves=nc,
    )
    assert res.affine is affine
    assert (temps > 1) == (0 < res.swap_accept <= 1)
    # Monte Carlo error: the draws are correlated; ESS at least 1/4 of the 12,000 draws here
    _assert_matches_enumeration(res.x, res.z, states, probs, z_mean)
    assert 0 < res.accept_z <= 1 and 0 < res.accept_x <= 1
    assert (nc > 0) == (0 < res.accept_noncentred < 1)
    assert res.num_quantities == 1 + 1 + (k - 1)
    assert torch.allclose(
        res.facies_probabilities(k).sum(-1), torch.ones(d), atol=1e-6
    )
    expected_ll = problem.log_likelihood(res.x.double(), y.double())
    assert torch.allclose(res.log_likelihood, expected_ll, atol=1e-5)  # float32 forward


def test_same_seed_same_chains_and_bad_inputs():
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.4, seed=1)
    vae = _vae(3, "bernoulli")
    y = torch.zeros(2)
    init = torch.zeros(4, 3)
    a = facies_mcmc_sample(vae, problem, y, init, num_samples=20, warmup_steps=5, seed=7)
    b = facies_mcmc_sample(vae, problem, y, init, num_samples=20, warmup_steps=5, seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z)
    with pytest.raises(DataError, match="facies codes"):
        facies_mcmc_sample(vae, problem, y, init + 0.5, num_samples=4, warmup_steps=0)
    with pytest.raises(ShapeError, match="init"):
        facies_mcmc_sample(vae, problem, y, torch.zeros(4, 2), num_samples=4)
    with pytest.raises(ShapeError, match="one observation"):
        facies_mcmc_sample(vae, problem, torch.zeros(3), init, num_samples=4)
    with pytest.raises(ConfigError, match="num_samples"):
        facies_mcmc_sample(vae, problem, y, init, num_samples=2)
    cfg = ModelConfig(
        x_shape=(3,), y_shape=None, latent_dim=1, hidden_dims=(4,), prior="standard_normal"
    )
    gaussian = CVAE(cfg)
    with pytest.raises(ConfigError, match="bernoulli or categorical"):
        facies_mcmc_sample(gaussian, problem, y, init, num_samples=4)


# --------------------------------------------------------------------------------------------
# the posterior file: sample_facies_mcmc / sample_corrected(method="facies-mcmc") / the CLI


def _cvae(x_dim: int, y_dim: int, likelihood: str = "bernoulli", num_facies: int = 2) -> CVAE:
    """An untrained conditional model whose draws are facies codes (they start the chains)."""
    torch.manual_seed(0)
    cfg = ModelConfig(x_shape=(x_dim,), y_shape=(y_dim,), latent_dim=1, hidden_dims=(8,),
                      likelihood=likelihood, num_facies=num_facies)
    return CVAE(cfg).eval()


def test_sample_corrected_facies_mcmc_file_matches_the_enumerated_posteriors(monkeypatch):
    """Chains started at the CVAE's draws, laid out per observation, with the exact marginals."""
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.4, seed=1)
    vae = _vae(3, "bernoulli")
    cvae = _cvae(3, 2)
    x_true = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    y = problem.forward(x_true)
    seen, results = [], []
    original = facies_mcmc.facies_mcmc_sample

    def spy(prior_vae, prob, y_m, init, **kwargs):
        seen.append((y_m.clone(), init.clone(), kwargs))
        results.append(original(prior_vae, prob, y_m, init, **kwargs))
        return results[-1]

    monkeypatch.setattr(facies_mcmc, "facies_mcmc_sample", spy)
    correction = CorrectionConfig(method="facies-mcmc", chains=4, warmup_steps=50,
                                  flips_per_step=1)
    idata, summary, ok = sample_corrected(cvae, y, 2000, problem, correction, x_true=x_true,
                                          seed=5, generative_prior=vae)
    # the starts: preconditioner_draws(latent_dim, chains) amortized draws, seed + m
    assert len(seen) == 2
    for m, (y_m, init, kwargs) in enumerate(seen):
        assert torch.equal(y_m, y[m])
        assert len(init) == preconditioner_draws(1, 4)
        assert torch.equal(init, draw_posterior(cvae, y[m : m + 1], len(init), seed=5 + m).x[:, 0])
        # chains seeded 5 + m * 4 + c: no stream shared with the other observation's
        assert kwargs == {"num_samples": 500, "warmup_steps": 50, "num_chains": 4,
                          "flips_per_step": 1, "temperatures": 8, "seed": 5 + 4 * m}
    post = idata["posterior"]
    assert (post.sizes["chain"], post.sizes["draw"], post.sizes["observation"]) == (4, 500, 2)
    assert post["z"].shape[-1] == 1
    assert post.attrs["method"] == "facies-mcmc" and post.attrs["flips_per_step"] == 1
    assert post.attrs["chains"] == 4 and post.attrs["warmup_steps"] == 50
    x = post["x"].values  # (chain, draw, observation, 3)
    assert set(np.unique(x)) <= {0.0, 1.0}  # every draw a facies field
    for m in range(2):  # observation m of the file is chain after chain of result m
        assert np.array_equal(x[:, :, m], results[m].x.numpy())
        assert np.array_equal(post["z"].values[:, :, m], results[m].z.numpy())
    stats = idata["sample_stats"]
    for name, attr in (("rhat", "rhat"), ("rhat_threshold", "rhat_threshold"),
                       ("ess_bulk", "min_ess"), ("accept_z", "accept_z"),
                       ("accept_x", "accept_x")):
        # per observation, broadcast over the draws
        assert np.allclose(stats[name].values[0, 0], [getattr(r, attr) for r in results])
    bound = rhat_threshold(4, 500, 3)  # chains, draws, quantities: z, log p(y|x), fraction
    assert np.allclose(stats["rhat_threshold"].values[0, 0], bound)
    rhat = stats["rhat"].values[0, 0]
    assert ok == bool((rhat <= bound).all())
    assert summary.startswith("facies MCMC: R-hat") and ("FAILED" in summary) == (not ok)
    # the exact cell marginals P(x_i = 1 | y_m); Monte Carlo error with an ESS of at least a
    # quarter of the 2000 draws (as above), 4 standard errors
    n_eff = 2000 / 4
    exact = []
    for m in range(2):
        states, probs, _ = _exact(vae, problem, y[m], 2)
        exact.append(probs @ states)
    for m in range(2):
        freq = torch.from_numpy(x[:, :, m].reshape(-1, 3)).double().mean(0)
        tol = 4 * torch.sqrt(exact[m] * (1 - exact[m]) / n_eff) + 2e-3
        assert torch.all((freq - exact[m]).abs() <= tol), (m, freq, exact[m], tol)
        # negative control: the other observation's posterior is told apart (a swap fails)
        assert torch.any((freq - exact[1 - m]).abs() > tol)


def _result(rhat: float, accept_x: float = 0.3) -> FaciesMCMCResult:
    chains = torch.zeros(4, 500, 3)  # bound: rhat_threshold(4, 500, 3) = 1.01 at this size
    return FaciesMCMCResult(x=chains, z=chains[..., :1], log_likelihood=chains[..., 0],
                            rhat=rhat, min_ess=100.0, num_quantities=3, accept_z=0.9,
                            accept_x=accept_x, num_evaluations=10, seconds=1.0)


def test_summary_says_failed_when_rhat_is_above_threshold():
    assert _result(1.0).rhat_threshold == pytest.approx(rhat_threshold(4, 500, 3))
    summary, ok = facies_mcmc_summary([_result(1.001), _result(1.005, 0.2)])
    assert ok and "FAILED" not in summary and "R-hat 1.0050" in summary
    assert "acceptance z 0.90, x 0.200 (min), swaps nan (min)" in summary
    summary, ok = facies_mcmc_summary([_result(1.001), _result(1.02)])
    assert not ok and "FAILED for 1 of 2" in summary and "--facies-moves" in summary
    summary, ok = facies_mcmc_summary([_result(math.inf, math.nan)])  # no facies moves
    assert not ok and "never moved" in summary and "x nan" in summary
    with pytest.raises(ConfigError, match="at least one"):
        facies_mcmc_summary([])


def test_sample_facies_mcmc_refuses_what_cannot_give_facies_fields():
    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.4, seed=1)
    vae = _vae(3, "bernoulli")
    cvae = _cvae(3, 2)
    y = torch.zeros(1, 2)
    with pytest.raises(ConfigError, match="needs a generative prior"):
        sample_corrected(cvae, y, 8, problem, CorrectionConfig(method="facies-mcmc"))
    gaussian_prior = CVAE(ModelConfig(x_shape=(3,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                                      prior="standard_normal"))
    with pytest.raises(ConfigError, match="bernoulli or categorical decoder"):
        sample_facies_mcmc(cvae, gaussian_prior, y, 8, problem)
    gaussian_cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=1, hidden_dims=(4,)))
    with pytest.raises(ConfigError, match="must be facies codes 0 .. 1"):
        sample_facies_mcmc(gaussian_cvae, vae, y, 8, problem)
    with pytest.raises(ConfigError, match="with 3 facies"):  # more facies than the prior's
        sample_facies_mcmc(_cvae(3, 2, "categorical", 3), vae, y, 8, problem)
    with pytest.raises(ConfigError, match="unconditional VAE"):  # the two runs swapped
        sample_facies_mcmc(vae, cvae, y, 8, problem)
    with pytest.raises(ConfigError, match="at least 4 per chain"):
        sample_facies_mcmc(cvae, vae, y, 6, problem, chains=2)
    with pytest.raises(ConfigError, match="flips_per_step must be an int >= 0"):
        sample_facies_mcmc(cvae, vae, y, 8, problem, flips_per_step=-1)
    with pytest.raises(ConfigError, match="flips_per_step must be an int >= 0, got -1"):
        CorrectionConfig(method="facies-mcmc", flips_per_step=-1)
    with pytest.raises(ShapeError, match="x_shape"):
        sample_facies_mcmc(_cvae(4, 2), _vae(4, "bernoulli"), y, 8, problem)


def test_cli_defaults_are_the_python_defaults():
    from ppl_cvae.cli.sample import (
        DEFAULT_CHAINS,
        DEFAULT_FACIES_MOVES,
        DEFAULT_TEMPERATURES,
        FACIES_MCMC_WARMUP,
    )

    params = inspect.signature(sample_facies_mcmc).parameters
    assert params["warmup_steps"].default == FACIES_MCMC_WARMUP
    assert params["flips_per_step"].default == DEFAULT_FACIES_MOVES
    assert params["chains"].default == DEFAULT_CHAINS
    assert CorrectionConfig().flips_per_step == DEFAULT_FACIES_MOVES
    assert params["temperatures"].default == DEFAULT_TEMPERATURES
    assert CorrectionConfig().temperatures == DEFAULT_TEMPERATURES
    assert inspect.signature(facies_mcmc_sample).parameters["temperatures"].default == (
        DEFAULT_TEMPERATURES
    )


def test_cli_sample_facies_mcmc_on_crosshole_channels(tmp_path, capsys):
    """Fit a facies CVAE and a facies generative prior, sample with facies MCMC, read the file."""
    from ppl_cvae.cli import main

    cross = ["--problem", "crosshole", "--problem-arg", "prior=channels",
             "--problem-arg", "num_depth_cells=6", "--problem-arg", "num_offset_cells=5",
             "--problem-arg", "num_sources=3", "--problem-arg", "num_receivers=3"]
    assert main(["fit", *cross, "--out", str(tmp_path / "run"), *TINY_FIT]) == 0
    assert main(["fit", *cross, "--unconditional", "--out", str(tmp_path / "prior"),
                 *TINY_FIT]) == 0
    assert main(["simulate", *cross, "--num", "2", "--out", str(tmp_path / "obs.npz")]) == 0
    capsys.readouterr()
    out = tmp_path / "post.nc"
    args = ["sample", str(tmp_path / "run"), "--observation", str(tmp_path / "obs.npz"),
            "--method", "facies-mcmc", "--generative-prior", str(tmp_path / "prior"),
            "--num-samples", "20", "--chains", "2", "--warmup", "10", "--facies-moves", "2",
            "--temperatures", "3", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    idata = az.from_netcdf(out)
    post = idata["posterior"]
    assert (post.sizes["chain"], post.sizes["draw"], post.sizes["observation"]) == (2, 10, 2)
    assert post["x"].dims[-2:] == ("depth", "offset")
    assert set(np.unique(post["x"].values)) <= {0.0, 1.0}  # facies fields, not probabilities
    assert "slowness" in post  # the crosshole operator's derived quantity of every draw
    assert post.attrs["method"] == "facies-mcmc" and post.attrs["flips_per_step"] == 2
    assert post.attrs["warmup_steps"] == 10 and post.attrs["temperatures"] == 3
    stats = idata["sample_stats"]
    rhat = stats["rhat"].values[0, 0]  # per observation, broadcast over draws
    assert rhat.shape == (2,)
    bound = rhat_threshold(2, 10, 2 + 1 + 1)  # latent 2, log p(y|x), fraction of facies 1
    assert np.allclose(stats["rhat_threshold"].values[0, 0], bound)
    acc = stats["accept_x"].values[0, 0]
    assert ((acc >= 0) & (acc <= 1)).all()
    failed = bool((rhat > bound).any())
    assert printed.startswith("facies MCMC: R-hat") and ("FAILED" in printed) == failed
    # the pairing with --generative-prior, both ways, refused before anything is written
    bad = args[:-1] + [str(tmp_path / "p2.nc")]
    assert bad[6] == "--generative-prior"
    assert main(bad[:6] + bad[8:]) == 2  # --generative-prior dropped
    err = capsys.readouterr().err
    assert "go together" in err and "got --method facies-mcmc, no --generative-prior" in err
    assert bad[14:18] == ["--facies-moves", "2", "--temperatures", "3"]
    nuts = [*bad[:5], "nuts", *bad[6:14], *bad[18:]]
    assert main(nuts) == 2  # a generative prior with a method that has none
    assert "go together (got --method nuts)" in capsys.readouterr().err
    swapped = [bad[0], str(tmp_path / "prior"), *bad[2:7], str(tmp_path / "run"), *bad[8:]]
    assert main(swapped) == 2
    assert "unconditional VAE" in capsys.readouterr().err
    assert not (tmp_path / "p2.nc").exists()


@pytest.mark.parametrize("beta0", [0.01, 0.0])
def test_ladder_respacing_equalises_the_barrier(beta0):
    """Re-spacing puts equal shares of the communication barrier between neighbours.

    With swap rejection rates ``r`` per pair and the barrier piecewise linear between knots
    (Syed et al. 2021), a second re-spacing on the rates the first ladder implies (by the
    same interpolation) is a fixed point; the ends stay at 1 and ``min_beta`` (0: the exact
    reference), and the betas decrease.
    """
    ladder = facies_mcmc._initial_ladder(6, beta0)
    assert float(ladder[0]) == 1.0 and float(ladder[-1]) == beta0
    assert bool((ladder[1:] < ladder[:-1]).all())
    if beta0 == 0.0:
        assert math.isclose(float(ladder[-2]), facies_mcmc._REFERENCE_START)
    rejection = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.9], dtype=torch.float64)  # last pair hard
    tries = torch.full((5,), 100.0, dtype=torch.float64)
    new = facies_mcmc._respaced_ladder(ladder, (1 - rejection) * tries, tries)
    assert float(new[0]) == 1.0 and float(new[-1]) == beta0
    assert bool((new[1:] < new[:-1]).all())
    # the rejection a pair of the new ladder meets: the barrier's growth between its betas,
    # read off the piecewise-linear barrier of the old ladder (in the respacing's variable)
    def var(b: torch.Tensor) -> np.ndarray:
        b = b.numpy()
        if beta0 > 0:
            return np.log(b)
        small = float(ladder[-2])
        out = np.log(np.maximum(b, 1e-300))
        low = b < small
        out[low] = np.log(small) - 1.0 + b[low] / small
        return out

    barrier = np.concatenate([[0.0], np.cumsum(rejection.numpy())])
    old_v, new_v = var(ladder)[::-1], var(new)[::-1]
    at_new = np.interp(new_v, old_v, barrier[::-1])
    shares = np.diff(at_new[::-1])
    np.testing.assert_allclose(shares, barrier[-1] / 5, rtol=1e-9)
