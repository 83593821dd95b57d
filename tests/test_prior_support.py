"""A user's prior with a bounded support: amortized draws, densities and correction stay inside.

The problem: ``x ~ U(0, 1)^d``, ``y = x + N(0, s^2)``. Its posterior is a product of normals
``N(y_i, s^2)`` truncated to ``[0, 1]`` (scipy's ``truncnorm``) and its evidence is
``prod_i [Phi((1 - y_i) / s) - Phi(-y_i / s)]``, so every figure here has a closed form. The
amortized posteriors are untrained networks: about half of their draws fall outside the
support, which is the case the rejection exists for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import norm, truncnorm
from torch.distributions import constraints

from inference.importance import importance_sample
from inference.mcmc import nuts_sample
from inference.posterior import MIN_SUPPORT_ACCEPTANCE, CVAEPosterior, draw_posterior
from inference.refine import refine_and_accept
from inference.sample import (
    SUPPORT_WARNING,
    CorrectionConfig,
    sample_corrected,
    sample_posterior,
    sample_posterior_to_netcdf,
)
from ppl_cvae import CVAE, ModelConfig, build_cvae, fit_problem
from ppl_cvae.cli import main
from ppl_cvae.errors import ConfigError, DataError, NoPriorDensityError, ShapeError
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem, check_support
from ppl_cvae.problems.parameterisation import ElementwiseTransform, support_parameterisation

NOISE = 0.1


class UnitBox(Problem):
    """``x ~ U(0, 1)^d``, ``y = x + N(0, 0.1^2)``; the support declared or left to log_prior."""

    name = "unit_box"
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = NOISE
    has_prior_density = True

    def __init__(self, dim: int = 1, declare: bool = True, strict_forward: bool = False):
        self.x_shape = self.y_shape = (dim,)
        self.support = constraints.unit_interval if declare else None
        self.strict_forward = strict_forward

    def sample_prior(self, num, generator=None):
        return torch.rand(num, *self.x_shape, generator=generator)

    def log_prior(self, x):
        inside = ((x >= 0) & (x <= 1)).all(-1)
        return torch.where(inside, 0.0, -math.inf).double()

    def forward(self, x):
        if self.strict_forward and bool(((x < 0) | (x > 1)).any()):
            raise ValueError("a model outside the unit box has no data")
        return x


def flow_posterior(dim: int = 1, seed: int = 0) -> CVAE:
    """An untrained flow on ``x`` given ``y`` (exact density; about half its mass in [0, 1])."""
    torch.manual_seed(seed)
    return CVAE(
        ModelConfig(
            x_shape=(dim,), y_shape=(dim,), hidden_dims=(8,), likelihood="flow", latent_dim=0
        )
    )


def test_in_support_declared_undeclared_and_none():
    """A declared constraint, a finite log_prior, and no prior density each decide as stated."""
    x = torch.tensor([[0.5, 0.5], [0.5, 1.5], [-0.1, 0.2]])
    assert UnitBox(2).in_support(x).tolist() == [True, False, False]
    assert UnitBox(2, declare=False).in_support(x).tolist() == [True, False, False]
    assert UnitBox(2).restricts_support() and UnitBox(2, declare=False).restricts_support()
    lower = torch.tensor([0.0, 1.0])  # bounds per value, broadcast against one model
    box = UnitBox(2)
    box.support = constraints.interval(lower, lower + 1)
    assert box.in_support(x).tolist() == [False, True, False]
    box.support = constraints.real
    assert not box.restricts_support() and bool(box.in_support(x).all())
    box.has_prior_density, box.support = False, None
    assert not box.restricts_support() and bool(box.in_support(x).all())
    faulty = UnitBox(2, declare=False)  # NaN: a fault of the density, not a zero: kept
    faulty.log_prior = lambda x: torch.where(x[..., 0] < 0, -math.inf, math.nan).double()
    assert faulty.in_support(x).tolist() == [True, True, False]


def test_in_support_refuses_bad_declarations():
    """Bounds that do not broadcast against one model, and a support that is no constraint."""
    box = UnitBox(2)
    box.support = constraints.interval(torch.zeros(3, 1, 2), torch.ones(3, 1, 2))
    with pytest.raises(ShapeError, match="support.check returned shape"):
        box.in_support(torch.zeros(5, 2))

    class Duck:
        name, x_shape, y_shape = "duck", (1,), (1,)
        x_dims, y_dims, coords = ("p",), ("d",), {}
        noise_std = misfit_std = 0.1
        support = (0.0, 1.0)

        def sample_prior(self, num, generator=None):
            return torch.rand(num, 1, generator=generator)

        def forward(self, x):
            return x

        def simulate(self, num, generator=None):
            x = self.sample_prior(num, generator)
            return x, x

        def spec(self):
            return {}

    with pytest.raises(ConfigError, match="support must be a torch.distributions.constraints"):
        as_problem(Duck())


@pytest.mark.parametrize("declare", [True, False])
def test_amortized_draws_are_q_cut_to_the_support(declare):
    """Every draw is inside; the kept ones are distributed as q given the support.

    The acceptance equals the fraction of unrestricted draws inside (binomial, 5 se); the mean
    of the kept draws equals the mean of the unrestricted draws that fell inside (5 se).
    """
    cvae = flow_posterior()
    problem = UnitBox(1, declare=declare)
    y = torch.tensor([[0.03], [0.6]])
    free = draw_posterior(cvae, y, 40_000, seed=1, within_support=False, problem=problem).x
    assert free.min() < 0 or free.max() > 1  # the test needs draws outside
    kept = draw_posterior(cvae, y, 4000, seed=2, problem=problem)
    assert kept.x.shape == (4000, 2, 1)
    assert bool(problem.in_support(kept.x).all())
    inside = problem.in_support(free)  # (S, M)
    share = inside.double().mean(0)
    se = (share * (1 - share) / 40_000).sqrt() + (share * (1 - share) / 4000).sqrt()
    assert bool(((kept.support_acceptance - share).abs() <= 5 * se).all())
    for m in range(2):
        ref = free[:, m, 0][inside[:, m]]
        se_mean = ref.std() * math.sqrt(1 / len(ref) + 1 / 4000)
        assert abs(float(kept.x[:, m, 0].mean() - ref.mean())) <= 5 * float(se_mean)
    # without a problem, or with within_support=False, q's own draws (some outside)
    assert draw_posterior(cvae, y, 4000, seed=2).support_acceptance is None


def test_sampling_warns_below_the_bound_and_records_the_acceptance(tmp_path, recwarn):
    """sample_posterior warns under SUPPORT_WARNING only; chunked files combine the chunks."""
    import arviz as az

    cvae = flow_posterior()
    y = torch.tensor([[0.1], [0.5]])
    wide, narrow = UnitBox(1), UnitBox(1)
    narrow.support = constraints.interval(0.0, 0.2)
    share_wide = draw_posterior(cvae, y, 20_000, seed=0, problem=wide).support_acceptance
    share = draw_posterior(cvae, y, 20_000, seed=0, problem=narrow).support_acceptance
    assert bool((share_wide > SUPPORT_WARNING).all()) and bool((share < SUPPORT_WARNING).all())
    sample_posterior(cvae, y, 500, problem=wide, seed=0)
    assert not [w for w in recwarn if "prior's support" in str(w.message)]
    with pytest.warns(UserWarning, match=r"outside the prior's support for 2 of 2 observation"):
        idata = sample_posterior(cvae, y, 500, problem=narrow, seed=0)
    recorded = np.asarray(json.loads(idata.posterior.attrs["support_acceptance"]))
    assert np.all(np.abs(recorded - share.numpy()) < 0.05)
    assert float(idata.posterior["x"].min()) >= 0 and float(idata.posterior["x"].max()) <= 0.2
    with pytest.warns(UserWarning, match="outside the prior's support") as caught:
        path = sample_posterior_to_netcdf(
            cvae, y, 3000, tmp_path / "p.nc", problem=narrow, seed=0,
            chunk_bytes=20_000, in_memory_bytes=0,
        )
    assert sum("prior's support" in str(w.message) for w in caught) == 1  # once, not per chunk
    chunked = az.from_netcdf(path)
    assert chunked.posterior.sizes["draw"] == 3000
    combined = np.asarray(json.loads(chunked.posterior.attrs["support_acceptance"]))
    assert np.all(np.abs(combined - share.numpy()) < 0.05)
    assert float(chunked.posterior["x"].max()) <= 0.2


def test_rejection_stops_and_says_why():
    """Below MIN_SUPPORT_ACCEPTANCE: a misdeclared support is named as such, else the data."""
    cvae = flow_posterior()
    far = UnitBox(1)
    far.support = constraints.interval(50.0, 51.0)  # excludes every prior draw
    with pytest.raises(DataError, match="misdeclared: 256 of 256 prior draws"):
        draw_posterior(cvae, torch.zeros(1, 1), 5, problem=far, seed=0)
    assert MIN_SUPPORT_ACCEPTANCE == 1e-3
    narrow = UnitBox(1)
    narrow.support = constraints.interval(0.0, 1e-6)

    def sample_prior(num, generator=None):
        return 1e-6 * torch.rand(num, 1, generator=generator)

    narrow.sample_prior = sample_prior
    with pytest.raises(DataError, match="check the observation"):
        draw_posterior(cvae, torch.zeros(1, 1), 5, problem=narrow, seed=0)
    # none inside: it stops once an acceptance of 1e-3 would have kept one with probability
    # 1 - exp(-14), after 14,000 proposals, not the 100,000 that 100 draws at 1e-3 would need
    # (an image run with --x-bounds 0,1 spent 5 minutes on them)
    with pytest.raises(DataError, match=r"only 0 of (\d+) amortized") as info:
        draw_posterior(cvae, torch.zeros(1, 1), 100, problem=narrow, seed=0)
    proposed = int(re.search(r"only 0 of (\d+)", str(info.value)).group(1))
    assert 14_000 <= proposed < 20_000  # the last round may be a whole first-round size


def test_log_prob_is_the_density_of_the_kept_draws():
    """exp(log_prob) integrates to 1 over the support (to 4 se of the mass estimate); -inf out.

    Without a problem it integrates to the mass q puts inside, which is below 1: the negative
    control.
    """
    cvae = flow_posterior()
    problem = UnitBox(1)
    y = torch.tensor([0.2])
    grid = torch.linspace(0.0, 1.0, 4001).unsqueeze(-1)
    cut = CVAEPosterior(cvae, problem=problem)
    plain = CVAEPosterior(cvae)
    dens = cut.log_prob(grid, y, seed=0, num_support_draws=40_000).exp()
    total = float(torch.trapezoid(dens, grid[:, 0]))
    mass = float(torch.trapezoid(plain.log_prob(grid, y).exp(), grid[:, 0]))
    se = math.sqrt((1 - mass) / (mass * 40_000))
    assert abs(total - 1) <= 4 * se + 1e-3
    assert mass < 1 - 10 * se
    assert cut.log_prob(torch.tensor([[1.5], [-0.2]]), y).tolist() == [-math.inf, -math.inf]
    assert bool(problem.in_support(cut.sample((1000,), y=y, seed=0)).all())


def test_importance_weighs_outside_zero_and_keeps_the_evidence():
    """Proposals outside a declared support never reach forward; the evidence is unbiased.

    The forward raises outside the box. Closed form:
    ``log p(y) = sum_i log[Phi((1 - y_i) / s) - Phi(-y_i / s)]``, matched within 4 standard
    errors of the estimate plus 0.02 nats (the estimator's O(1/S) bias at this sample
    efficiency).
    """
    cvae = flow_posterior(2)
    problem = UnitBox(2, strict_forward=True)
    y = torch.tensor([[0.05, 0.7], [0.95, 0.4]])
    res = importance_sample(cvae, problem, y, 40_000, seed=0)
    y64 = y.double().numpy()
    exact = torch.from_numpy(np.log(norm.cdf((1 - y64) / NOISE) - norm.cdf(-y64 / NOISE)).sum(-1))
    err = (res.log_evidence - exact).abs()
    assert bool((err <= 4 * res.log_evidence_se + 0.02).all()), (err, res.log_evidence_se)
    outside = ~problem.in_support(res.x)
    assert bool(outside.any()) and bool(torch.isinf(res.log_weight[outside]).all())


def test_elementwise_transform_jacobian_and_boundaries():
    """log |det J| equals autograd's; boundary values invert to finite coordinates."""
    lower, upper = torch.tensor([[0.0, -1.0]]), torch.tensor([[1.0, 3.0]])
    par = support_parameterisation(constraints.interval(lower, upper), (1, 2))
    assert par is not None and par.dim == 2
    transform = par.transform
    assert isinstance(transform, ElementwiseTransform)
    theta = torch.tensor([0.3, -1.2], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(transform, theta)
    expected = torch.linalg.slogdet(jac).logabsdet
    log_det = transform.log_abs_det_jacobian(theta, transform(theta))
    assert abs(float(log_det) - float(expected)) < 1e-6  # float32 bounds
    edge = par.from_x(torch.tensor([[[0.0, 3.0]]]))
    assert bool(torch.isfinite(edge).all())
    assert support_parameterisation(constraints.real, (2,)) is None
    assert support_parameterisation(constraints.simplex, (2,)) is None
    assert support_parameterisation(None, (2,)) is None


def test_nuts_samples_a_declared_support_in_unconstrained_coordinates():
    """The truncated-normal posterior by NUTS: 0 divergences, mean and sd within 4 mcse.

    Negative control: the same problem with the support left to log_prior (the chains hit the
    wall where it drops to -inf) diverges.
    """
    y = torch.tensor([0.03])
    a, b = (0 - 0.03) / NOISE, (1 - 0.03) / NOISE
    mean, sd = truncnorm.mean(a, b, loc=0.03, scale=NOISE), truncnorm.std(a, b, 0.03, NOISE)
    init = torch.rand(200, 1, generator=torch.Generator().manual_seed(0)) * 0.3
    res = nuts_sample(
        UnitBox(1), y, init, num_samples=400, warmup_steps=300, num_chains=2, seed=0
    )
    assert res.divergences == 0
    draws = res.x.reshape(-1).double()
    assert bool(((draws >= 0) & (draws <= 1)).all())
    mcse = sd / math.sqrt(res.min_ess)
    assert abs(float(draws.mean()) - mean) <= 4 * mcse
    assert abs(float(draws.std()) / sd - 1) <= 4 / math.sqrt(res.min_ess)
    # a forward that raises outside the box: the wall is found by log_prior, never by forward
    wall = nuts_sample(
        UnitBox(1, declare=False, strict_forward=True), y, init, num_samples=400,
        warmup_steps=300, num_chains=2, seed=0,
    )
    assert wall.divergences > 0
    assert bool(((wall.x >= 0) & (wall.x <= 1)).all())


def test_refinement_stays_inside_a_declared_support():
    """Data beyond the faces pull refined draws onto them, not through them.

    An undeclared support (log_prior -inf outside) is kept too, by undoing the steps out, and
    its forward, which raises outside, is never called there. Negative control: without any
    support (no declared one, no prior density) the optimiser steps out of the box.
    """
    cvae = flow_posterior()
    y = torch.tensor([[-0.3], [1.3]])
    draws, _ = refine_and_accept(cvae, y, 50, UnitBox(1), num_steps=200, seed=0)
    x = draws.x[..., 0]
    assert bool(((x >= 0) & (x <= 1)).all())
    assert float(x[:, 0].median()) < 0.05 and float(x[:, 1].median()) > 0.95
    undeclared = UnitBox(1, declare=False, strict_forward=True)
    with pytest.warns(UserWarning, match=r"support \(where its log_prior is above -inf\)"):
        held, _ = refine_and_accept(cvae, y, 50, undeclared, num_steps=200, seed=0)
    assert bool(((held.x >= 0) & (held.x <= 1)).all())
    assert float(held.x[:, 0].median()) < 0.05 and float(held.x[:, 1].median()) > 0.95
    bare = UnitBox(1, declare=False)
    bare.has_prior_density = False
    free, _ = refine_and_accept(cvae, y, 50, bare, num_steps=200, seed=0)
    assert float(free.x[:, 0].min()) < 0 and float(free.x[:, 1].max()) > 1


def test_a_fit_refuses_a_support_that_excludes_prior_draws():
    """check_support: a misdeclared interval, and a log_prior -inf at prior draws, are named."""
    wrong = UnitBox(2)
    wrong.support = constraints.interval(0.0, 0.5)
    with pytest.raises(ConfigError, match=r"of 64 prior draws of problem 'unit_box' lie outside"):
        check_support(wrong, torch.Generator().manual_seed(0))
    bad_density = UnitBox(2, declare=False)
    bad_density.log_prior = lambda x: torch.where(x[..., 0] < 0.5, 0.0, -math.inf).double()
    with pytest.raises(ConfigError, match="check log_prior"):
        check_support(bad_density, torch.Generator().manual_seed(0))
    check_support(UnitBox(2), torch.Generator().manual_seed(0))  # consistent: no error
    with pytest.raises(ConfigError, match="lie outside its declared support"):
        fit_problem(wrong, train={"num_epochs": 1, "num_train": 64})


def test_an_undeclared_support_asks_log_prior_for_the_training_layout_only():
    """Amortized draws need no log_prior of two batch axes (importance sampling does)."""

    class OneAxis(UnitBox):
        def log_prior(self, x):
            if x.dim() != 2:
                raise ValueError(f"log_prior takes (N, d), got {tuple(x.shape)}")
            return super().log_prior(x)

    problem = OneAxis(1, declare=False)
    draws = draw_posterior(flow_posterior(), torch.tensor([[0.1], [0.9]]), 300, problem=problem,
                           seed=0, predictive=False)
    assert draws.x.shape == (300, 2, 1) and bool(((draws.x >= 0) & (draws.x <= 1)).all())
    dens = CVAEPosterior(flow_posterior(), problem=problem).log_prob(
        torch.tensor([[0.5], [2.0]]), torch.tensor([0.1]), num_support_draws=500
    )
    assert bool(torch.isfinite(dens[0])) and dens[1] == -math.inf


def bounded_flow(bounds, dim: int = 1, seed: int = 0) -> CVAE:
    """:func:`flow_posterior` with ``x_bounds`` (a data file's support), no problem."""
    torch.manual_seed(seed)
    return CVAE(
        ModelConfig(
            x_shape=(dim,), y_shape=(dim,), hidden_dims=(8,), likelihood="flow", latent_dim=0,
            x_bounds=bounds,
        )
    )


def test_log_prob_estimates_the_mass_in_chunks_and_not_for_a_box_fit(monkeypatch):
    """Many observations: the mass is drawn a few observations at a time, to the same values
    (within 4 se of each estimate); a flow fitted on its box draws nothing (its mass is 1).

    Before, the draws of every distinct observation were made at once: 200 held-out pairs of
    a 12-value flow asked for 204 GiB and were refused.
    """
    import inference.posterior as posterior_module

    cvae = bounded_flow((0.0, 1.0))
    y = torch.linspace(-0.5, 1.5, 12).unsqueeze(-1)
    x = torch.full((12, 1), 0.5)
    post = CVAEPosterior(cvae)
    whole = post.log_prob(x, y, seed=0, num_support_draws=20_000)
    per_draw = posterior_module.bytes_per_draw(cvae, 1)
    monkeypatch.setattr(posterior_module, "SUPPORT_MASS_BYTES", 5 * per_draw * 20_000)
    calls = []
    real = posterior_module.draw_posterior
    monkeypatch.setattr(posterior_module, "draw_posterior",
                        lambda c, yy, *a, **k: calls.append(len(yy)) or real(c, yy, *a, **k))
    chunked = post.log_prob(x, y, seed=0, num_support_draws=20_000)
    assert calls == [5, 5, 2]
    twin = CVAE(dataclasses.replace(cvae.config, x_bounds=None))  # the same flow, unbounded
    twin.load_state_dict(cvae.state_dict())
    mass = (CVAEPosterior(twin).log_prob(x, y) - whole).exp()  # log q - (log q - log P)
    assert bool(((mass > 0.05) & (mass < 0.95)).all())  # the estimates have sampling noise
    # each log P has se sqrt((1 - P) / (P n)); the two estimates are independent
    se = ((1 - mass) / (mass * 20_000)).sqrt()
    assert bool(((chunked - whole).abs() <= 4 * math.sqrt(2) * se).all())
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(300, 1, generator=gen)
    boxed = build_cvae(
        ModelConfig(x_shape=(1,), y_shape=(1,), hidden_dims=(8,), likelihood="flow",
                    latent_dim=0, flow_hidden_dims=(8,), x_bounds=(0.0, 1.0),
                    x_transform="support"), xs, xs, seed=0,
    )
    calls.clear()
    assert bool(torch.isfinite(CVAEPosterior(boxed).log_prob(x, y)).all())
    assert calls == []


def test_x_bounds_config_round_trip_and_refusals():
    """Infinite ends are None in JSON and read back; bad pairs are named; old dicts load."""
    cfg = ModelConfig(x_shape=(2,), y_shape=(1,), x_bounds=(0, math.inf))
    assert cfg.x_bounds == (0.0, math.inf) and cfg.to_dict()["x_bounds"] == (0.0, None)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).x_bounds == cfg.x_bounds
    old = cfg.to_dict()
    del old["x_bounds"]
    assert ModelConfig.from_dict(old).x_bounds is None
    for bad, words in (((1, 0), "low < high"), ((0, float("nan")), "two numbers"),
                       ("ab", "a pair"), ((None, None), "bounds nothing")):
        with pytest.raises(ConfigError, match=words):
            ModelConfig(x_shape=(2,), y_shape=(1,), x_bounds=bad)


def test_x_bounds_refuse_training_values_outside_and_cut_the_draws():
    """build_cvae names the first value outside; draws, log_prob and files keep inside."""
    x = torch.rand(100, 1)
    with pytest.raises(DataError, match=r"outside x_bounds \[0.5, 1\]"):
        build_cvae(ModelConfig(x_shape=(1,), y_shape=(1,), x_bounds=(0.5, 1.0)), x, x)
    cvae = bounded_flow((0.0, 1.0))
    y = torch.tensor([[0.1], [0.6]])
    draws = draw_posterior(cvae, y, 3000, seed=0)  # no problem: the run's bounds alone
    assert bool(((draws.x >= 0) & (draws.x <= 1)).all())
    free = draw_posterior(cvae, y, 3000, seed=0, within_support=False).x
    share = ((free >= 0) & (free <= 1)).double().mean(0)[:, 0]
    assert bool(((draws.support_acceptance - share).abs() < 0.05).all())
    post = CVAEPosterior(cvae)
    grid = torch.linspace(0.0, 1.0, 2001).unsqueeze(-1)
    total = float(torch.trapezoid(post.log_prob(grid, y[0], seed=0).exp(), grid[:, 0]))
    assert abs(total - 1) < 0.03  # 10,000 support draws: 4 se of the mass is below 0.03
    assert post.log_prob(torch.tensor([[1.5]]), y[0]).item() == -math.inf
    one_sided = draw_posterior(bounded_flow((0.0, math.inf)), y, 2000, seed=0)
    assert float(one_sided.x.min()) >= 0


def test_cli_fit_data_with_x_bounds(tmp_path, capsys):
    """fit --data --x-bounds records the bounds; sample keeps the draws inside them."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (512, 2)).astype(np.float32)
    np.savez(tmp_path / "pairs.npz", x=x, y=x + 0.1 * rng.standard_normal(x.shape).astype("f4"))
    np.savez(tmp_path / "obs.npz", y=np.array([[0.02, 0.97]], dtype=np.float32))
    run = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "pairs.npz"), "--x-bounds", "0,1", "--epochs",
                 "1", "--out", str(run), "--quiet", "--threads", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["x_bounds"] == [0.0, 1.0]
    out = tmp_path / "post.nc"
    assert main(["sample", str(run), "--observation", str(tmp_path / "obs.npz"),
                 "--num-samples", "500", "--out", str(out)]) == 0
    import arviz as az

    idata = az.from_netcdf(out)
    values = idata.posterior["x"].values
    assert values.min() >= 0 and values.max() <= 1
    assert len(json.loads(idata.posterior.attrs["support_acceptance"])) == 1
    with pytest.raises(SystemExit):
        main(["fit", "--data", str(tmp_path / "pairs.npz"), "--x-bounds", "1,0", "--out",
              str(tmp_path / "bad")])
    assert "LOW < HIGH" in capsys.readouterr().err


def test_messages_name_a_support_with_large_bounds_in_one_line():
    """Bounds of a (32, 32) x_shape are summarised by shape and range, not printed whole."""
    box = UnitBox(2)
    box.x_shape = (32, 32)
    box.support = constraints.interval(torch.full((32, 32), 5.0), torch.full((32, 32), 6.0))
    box.sample_prior = lambda num, generator=None: torch.rand(num, 32, 32, generator=generator)
    with pytest.raises(ConfigError) as err:
        check_support(box, torch.Generator().manual_seed(0))
    message = str(err.value)
    assert "\n" not in message and len(message) < 400
    assert "lower_bound: shape (32, 32), values 5 to 5" in message


def test_nuts_names_the_missing_log_prior_of_a_declared_support():
    """A declared support without a prior density: the message names log_prior, not coordinates.

    NUTS runs in the support's biject_to coordinates, whose density needs the problem's
    log_prior; the error says the problem lacks it and how to give it.
    """
    problem = UnitBox(1)
    problem.has_prior_density = False
    init = torch.rand(10, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NoPriorDensityError) as err:
        nuts_sample(problem, torch.tensor([0.3]), init, num_samples=100, num_chains=1, seed=0)
    message = str(err.value)
    assert "problem 'unit_box' (UnitBox) declares the support Interval(" in message
    assert "its log_prior is not defined (has_prior_density is False)" in message
    assert "define the problem's log_prior" in message and "has_prior_density = True" in message
    assert "parameterisation" not in message


def test_importance_with_an_undeclared_support_never_calls_forward_outside():
    """A log_prior of -inf outside the box, no declared support, a forward that raises there.

    The weights equal those of the declared support (the same proposals: the prior is 0 nats
    inside, -inf outside, in both); the evidence matches the closed form
    ``sum_i log[Phi((1 - y_i) / s) - Phi(-y_i / s)]`` within 4 se + 0.02 nats, and the
    self-normalised mean of x_1 the truncated normal's within 4 sd / sqrt(ESS).
    """
    cvae = flow_posterior(2)
    problem = UnitBox(2, declare=False, strict_forward=True)
    y = torch.tensor([[0.05, 0.7], [0.95, 0.4]])
    res = importance_sample(cvae, problem, y, 20_000, seed=0)
    declared = importance_sample(cvae, UnitBox(2, strict_forward=True), y, 20_000, seed=0)
    assert torch.equal(res.log_weight, declared.log_weight)
    assert bool(torch.isinf(res.log_weight[~problem.in_support(res.x)]).all())
    y64 = y.double().numpy()
    exact = torch.from_numpy(np.log(norm.cdf((1 - y64) / NOISE) - norm.cdf(-y64 / NOISE)).sum(-1))
    assert bool(((res.log_evidence - exact).abs() <= 4 * res.log_evidence_se + 0.02).all())
    a, b = -y64[:, 0] / NOISE, (1 - y64[:, 0]) / NOISE
    mean = truncnorm.mean(a, b, loc=y64[:, 0], scale=NOISE)
    sd = truncnorm.std(a, b, loc=y64[:, 0], scale=NOISE)
    w = res.smoothed_log_weight.exp()  # (S, M), normalised per observation
    est = (w * res.x[..., 0].double()).sum(0).numpy()
    assert np.all(np.abs(est - mean) <= 4 * sd / np.sqrt(res.ess.numpy()))
    # every proposal outside: log_prior is named, forward is never called
    far = UnitBox(1, declare=False, strict_forward=True)
    far.log_prior = lambda x: torch.full(x.shape[:-1], -math.inf, dtype=torch.float64)
    with pytest.raises(DataError, match="log_prior is -inf .* at every one of the 50"):
        importance_sample(flow_posterior(), far, torch.tensor([0.5]), 50, seed=0)


def test_rejection_rounds_grow_with_the_acceptance():
    """At 2% acceptance a few rounds, not num_samples / (2% of a round); the draws stay exact.

    A fake posterior ``x ~ N(mu_m, 1)``, support ``x <= 0``: ``mu_0 = -Phi^-1(0.02)`` keeps
    2%, ``mu_1 = 0`` keeps half. Bound: round 1 (2000 proposals, about 40 inside) estimates
    the acceptance to about 1 / sqrt(40) = 16%; round 2 then falls short by at most a few
    estimate errors; from round 3 on the estimate rests on about 1e5 proposals (2%) and the
    round adds 2 binomial sds of margin, so it falls short with probability about 3%: more
    than 6 rounds has probability below 1e-4 (the fixed rounds of 2000 took about 50). The
    kept draws are the normal truncated to ``x <= 0``: mean ``mu - phi(b) / Phi(b)``,
    ``b = -mu``, within 4 se (sd / sqrt(2000)). With a memory bound every round stays in it.
    """
    from inference.posterior import _keep_in_support, _Support

    mu = torch.tensor([[-norm.ppf(0.02)], [0.0]], dtype=torch.float32)  # (M, 1)
    calls: list[tuple[int, int]] = []
    gen = torch.Generator().manual_seed(0)

    def draw(y_sub, n):
        calls.append((n, y_sub.shape[0]))
        x = y_sub + torch.randn(n, *y_sub.shape, generator=gen)
        return {"x": x, "x_mean": x, "z": torch.zeros(n, y_sub.shape[0], 0)}

    support = _Support(None, (torch.tensor([-math.inf]), torch.tensor([0.0])))
    sites, acceptance = _keep_in_support(draw, support, mu, 2000, True, 2000, 10**7)
    assert len(calls) <= 6, calls
    proposals = sum(n for n, _ in calls)  # observation 0 (2%) is in every round
    assert abs(float(acceptance[0]) - 0.02) <= 4 * math.sqrt(0.02 * 0.98 / proposals)
    x = sites["x"][..., 0].double()  # (2000, 2)
    assert x.shape == (2000, 2) and bool((x <= 0).all())
    for m in range(2):
        b = -float(mu[m, 0])
        ratio = norm.pdf(b) / norm.cdf(b)
        mean, sd = -b - ratio, math.sqrt(1 - b * ratio - ratio**2)
        assert abs(float(x[:, m].mean()) - mean) <= 4 * sd / math.sqrt(2000)
        assert abs(float(x[:, m].std()) / sd - 1) <= 4 / math.sqrt(2 * 2000)
    calls.clear()
    _keep_in_support(draw, support, mu, 2000, True, 2000, 8000)  # a 8,000-draw memory bound
    assert all(n * pending <= 8000 for n, pending in calls[1:]), calls


def test_a_runs_x_bounds_restrict_the_corrections_support():
    """within_run_bounds: the problem the corrections see carries the run's x_bounds.

    A declared box is intersected with them, no support becomes their interval, a prior
    density without a declared support gets -inf outside them; the user's problem object is
    not changed, and bounds that cut nothing give it back as it is.
    """
    from inference.posterior import within_run_bounds

    def box(low, high):
        return torch.tensor([float(low)], dtype=torch.float64), torch.tensor([float(high)],
                                                                            dtype=torch.float64)

    declared = UnitBox(1)
    cut = within_run_bounds(declared, box(0.25, 2.0))
    assert cut is not declared and declared.support is constraints.unit_interval
    assert (cut.support.lower_bound, cut.support.upper_bound) == (0.25, 1.0)
    assert within_run_bounds(declared, box(-1.0, 2.0)) is declared  # cuts nothing
    bare = UnitBox(1, declare=False)
    bare.has_prior_density = False
    boxed = within_run_bounds(bare, box(0.0, math.inf))
    assert boxed.support.lower_bound == 0.0 and bare.support is None
    density = within_run_bounds(UnitBox(1, declare=False), box(0.0, 0.5))
    lp = density.log_prior(torch.tensor([[0.2], [0.7], [-0.1]]))
    assert lp.tolist() == [0.0, -math.inf, -math.inf]
    duck = DuckAboveMinusOne()  # duck-typed: as_problem's adapter sets members on it
    duck.support = constraints.unit_interval
    adapted = as_problem(duck)
    cut = within_run_bounds(adapted, box(0.25, 2.0))
    assert (cut.support.lower_bound, cut.support.upper_bound) == (0.25, 1.0)
    assert duck.support is constraints.unit_interval and adapted.support is duck.support


def test_refinement_and_importance_keep_a_runs_x_bounds():
    """A run fitted with x_bounds [0, 1] (a data file's prior) and a problem without a support.

    Data at 1.3 pull refinement through the face without the bounds (the negative control of
    test_refinement_stays_inside_a_declared_support); with them the refined draws stay in
    [0, 1] and gather at the face. Importance sampling weighs proposals outside zero, so its
    resampled draws stay inside too, and its posterior mean is the truncated normal's.
    """
    cvae = bounded_flow((0.0, 1.0))
    bare = UnitBox(1, declare=False)
    bare.has_prior_density = False
    y = torch.tensor([[1.3]])
    draws, _ = refine_and_accept(cvae, y, 50, bare, num_steps=200, seed=0)
    assert bool(((draws.x >= 0) & (draws.x <= 1)).all()) and float(draws.x.median()) > 0.95
    # importance sampling needs a prior density: U(0, 1) as log_prior (0 everywhere), which
    # the bounds cut to [0, 1]
    flat = UnitBox(1, declare=False)
    flat.log_prior = lambda x: torch.zeros(x.shape[:-1], dtype=torch.float64)
    idata, _, _ = sample_corrected(cvae, torch.tensor([[0.95]]), 400, flat,
                                   CorrectionConfig(method="importance", proposals=4000),
                                   seed=0)  # fmt: skip
    x = torch.as_tensor(idata.posterior["x"].values).flatten()
    assert bool(((x >= 0) & (x <= 1)).all())
    assert json.loads(idata.posterior.attrs["model_config"])["x_bounds"] == [0.0, 1.0]
    exact = truncnorm.mean(-0.95 / NOISE, 0.05 / NOISE, loc=0.95, scale=NOISE)
    sd = truncnorm.std(-0.95 / NOISE, 0.05 / NOISE, loc=0.95, scale=NOISE)
    assert abs(float(x.double().mean()) - exact) < 4 * sd / math.sqrt(100)


class AboveMinusOne(UnitBox):
    """No declared support, no prior density: the problem checks models itself (x > -1)."""

    has_prior_density = False

    def __init__(self):
        super().__init__(1, declare=False)

    def in_support(self, x):
        return (x > -1).all(-1)


class DuckAboveMinusOne:
    """The same problem duck-typed (no Problem base class), through ``as_problem``."""

    name = "duck_above"
    x_shape = y_shape = (1,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = NOISE

    def sample_prior(self, num, generator=None):
        return torch.rand(num, 1, generator=generator)

    def simulate(self, num, generator=None):
        x = self.sample_prior(num, generator)
        return x, x + NOISE * torch.randn(x.shape, generator=generator)

    def spec(self):
        return {"name": self.name}

    def forward(self, x):
        return x

    def in_support(self, x):
        return (x > -1).all(-1)


@pytest.mark.parametrize("make", [AboveMinusOne, lambda: as_problem(DuckAboveMinusOne())])
def test_refinement_keeps_x_bounds_for_a_problem_with_its_own_in_support(make):
    """A problem's own in_support (x > -1) and a run's x_bounds [0, 1]: both bound refinement.

    Data at 1.3 pull refined draws through the face at 1, which only the run's bounds hold
    (the negative control: the problem alone lets them pass, below); data at -1.5 pull them
    towards -1, where the problem's own check holds them inside [0, 1] too.
    """
    from inference.posterior import within_run_bounds

    cvae = bounded_flow((0.0, 1.0))
    problem = make()
    x = torch.tensor([[0.5], [1.5], [-0.5], [-2.0]])
    cut = within_run_bounds(problem, cvae.config.x_bounds_box())
    assert cut is not problem and cut.in_support(x).tolist() == [True, False, False, False]
    assert problem.in_support(x).tolist() == [True, True, True, False]  # the user's, unchanged
    for datum, edge in ((1.3, 1.0), (-1.5, 0.0)):
        with pytest.warns(UserWarning, match="those steps were undone"):
            draws, _ = refine_and_accept(cvae, torch.tensor([[datum]]), 50, problem,
                                         num_steps=200, seed=0)  # fmt: skip
        assert bool(((draws.x >= 0) & (draws.x <= 1)).all())
        assert abs(float(draws.x.median()) - edge) < 0.05
    # without the bounds (a run fitted with none) the same refinement leaves [0, 1]
    free = flow_posterior()
    draws, _ = refine_and_accept(free, torch.tensor([[1.3]]), 50, problem, num_steps=200, seed=0)
    assert float(draws.x.median()) > 1.1


def test_per_element_x_bounds_config_round_trip_and_refusals():
    """sbi's BoxUniform(low, high): ends of x_shape (lists, arrays, tensors); JSON keeps them."""
    low, high = [0.0, -1.0, -math.inf], [2.0, 1.0, 0.0]
    cfg = ModelConfig(x_shape=(3,), y_shape=(1,), x_bounds=(np.array(low), torch.tensor(high)))
    assert cfg.x_bounds == (tuple(low), tuple(high))
    box = cfg.x_bounds_box()
    assert box[0].tolist() == low and box[1].tolist() == high
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.x_bounds == cfg.x_bounds and cfg.to_dict()["x_bounds"][0][2] is None
    for bad, words in (
        (([0, 0], [1, 1]), r"arrays of x_shape \(3,\)"),  # two elements for three
        (([0, 1, 0], [1, 1, 1]), r"low < high at every element, got low 1 and high 1 at x\[1\]"),
        (([0, float("nan"), 0], 1), "two numbers or two arrays"),
        (([None] * 3, [None] * 3), "bounds nothing"),
        (([0, [1, 2], 0], 1), "got shapes ragged"),
        (([[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]], 1), "nest deeper"),
    ):
        with pytest.raises(ConfigError, match=words):
            ModelConfig(x_shape=(3,), y_shape=(1,), x_bounds=bad)


def test_cli_fit_data_with_per_element_x_bounds(tmp_path, capsys):
    """--x-bounds FILE.npz: each element of x keeps its own box through fit and sample.

    x_1 ~ U(0, 1) and x_2 ~ U(10, 20): one scalar pair cannot bound both; the draws of the
    default flow on x (fitted on T^{-1}(x)) stay in each element's box, data near the faces
    included. A bad file is one error line.
    """
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0, 1, 512), rng.uniform(10, 20, 512)], 1).astype(np.float32)
    y = x + np.array([0.1, 1.0], dtype=np.float32) * rng.standard_normal(x.shape).astype("f4")
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    np.savez(tmp_path / "box.npz", low=np.array([0.0, 10.0]), high=np.array([1.0, 20.0]))
    np.savez(tmp_path / "obs.npz", y=np.array([[0.98, 10.1], [0.02, 19.9]], dtype=np.float32))
    run = tmp_path / "run"
    assert main(["fit", "--data", str(tmp_path / "pairs.npz"), "--x-bounds",
                 str(tmp_path / "box.npz"), "--epochs", "2", "--out", str(run), "--quiet",
                 "--threads", "1"]) == 0  # fmt: skip
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["x_bounds"] == [[0.0, 10.0], [1.0, 20.0]] and model["x_transform"] == "support"
    out = tmp_path / "post.nc"
    assert main(["sample", str(run), "--observation", str(tmp_path / "obs.npz"),
                 "--num-samples", "500", "--out", str(out)]) == 0  # fmt: skip
    import arviz as az

    values = az.from_netcdf(out).posterior["x"].values.reshape(-1, 2)
    assert values[:, 0].min() >= 0 and values[:, 0].max() <= 1
    assert values[:, 1].min() >= 10 and values[:, 1].max() <= 20
    np.savez(tmp_path / "nan.npz", low=np.array([0.0, np.nan]), high=np.array([1.0, 20.0]))
    np.savez(tmp_path / "short.npz", low=np.zeros(3), high=np.ones(3))
    for name, words in (("nan.npz", "holds NaN"), ("short.npz", "arrays of x_shape (2,)"),
                        ("missing.npz", "does not exist")):  # fmt: skip
        capsys.readouterr()
        assert main(["fit", "--data", str(tmp_path / "pairs.npz"), "--x-bounds",
                     str(tmp_path / name), "--epochs", "1", "--out", str(tmp_path / "bad"),
                     "--quiet"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()
