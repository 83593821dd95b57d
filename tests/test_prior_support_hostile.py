"""A hostile user's declared supports: matrix constraints, rounding onto a boundary, no bijection.

Each case is one where a declared ``Problem.support`` was not kept, with a known answer:

- ``constraints.positive_definite`` decides each model on its own (torch checks only symmetry
  for a whole batch once one model of it is not symmetric);
- ``constraints.greater_than(3)``: NUTS in ``x = 3 + exp(theta)`` coordinates rounds onto
  ``x = 3`` (outside the open support) for ``theta`` below about -36, where the user's forward
  is undefined; the posterior of ``x - 3 ~ Exp(1)``, ``y = x + N(0, s^2)`` is ``N(y - 3 - s^2,
  s^2)`` truncated to ``x > 3`` (scipy's ``truncnorm``);
- a support that is not elementwise (the unit disc, a user's own constraint) with a prior
  density that is finite outside it: NUTS and the refinement have no unconstrained coordinates
  for it and must not step out; the posterior is ``N(y, s^2 I)`` cut to the disc, sampled
  exactly by rejection;
- a problem's own ``in_support`` (a duck-typed method, or an override) with no declared
  support and no prior density: it must still reject draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm
from torch.distributions import constraints

from inference.mcmc import nuts_sample
from inference.posterior import PosteriorDraws
from inference.refine import refine_by_misfit
from ppl_cvae.errors import ConfigError, DataError
from ppl_cvae.problems.base import Problem

NOISE = 0.1


class ShiftedExponential(Problem):
    """``x - 3 ~ Exp(1)`` per value (``support = greater_than(3)``), ``y = x + N(0, s^2)``.

    The forward refuses a model outside the support, as a log of a negative resistivity would.
    """

    name = "shifted_exponential"
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = NOISE
    has_prior_density = True
    support = constraints.greater_than(3.0)

    def __init__(self, dim: int = 2):
        self.x_shape = self.y_shape = (dim,)

    def sample_prior(self, num, generator=None):
        return 3.0 - torch.log1p(-torch.rand(num, *self.x_shape, generator=generator))

    def log_prior(self, x):
        return torch.where((x > 3).all(-1), -(x - 3).sum(-1).double(), -math.inf)

    def forward(self, x):
        if bool((x <= 3).any()):
            raise ValueError("a model at or below 3 has no data")
        return x


class _UnitDisc(constraints.Constraint):
    """``|x| <= 1`` on the last axis: a user's constraint that ``biject_to`` does not know."""

    event_dim = 1

    def check(self, value):
        return value.pow(2).sum(-1) <= 1


class UnitDisc(Problem):
    """``x ~ U(unit disc)``, ``y = x + N(0, s^2 I)``; log_prior is the constant everywhere."""

    name = "unit_disc"
    x_shape = y_shape = (2,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = NOISE
    has_prior_density = True
    support = _UnitDisc()

    def sample_prior(self, num, generator=None):
        radius = torch.rand(num, generator=generator).sqrt()
        angle = 2 * math.pi * torch.rand(num, generator=generator)
        return torch.stack([radius * angle.cos(), radius * angle.sin()], -1)

    def log_prior(self, x):  # the user's density: finite off the disc too
        return torch.full(x.shape[:-1], -math.log(math.pi), dtype=torch.float64)

    def forward(self, x):
        return x


class SPD(Problem):
    """A simulator of 2x2 symmetric positive definite models (no density)."""

    name = "spd"
    x_shape = y_shape = (2, 2)
    x_dims, y_dims, coords = ("row", "col"), ("r", "c"), {}
    noise_std = misfit_std = NOISE
    support = constraints.positive_definite

    def sample_prior(self, num, generator=None):
        a = torch.randn(num, 2, 2, generator=generator)
        return a @ a.mT + 0.1 * torch.eye(2)

    def forward(self, x):
        return x


def test_positive_definite_decides_each_model_on_its_own():
    """A symmetric matrix with a negative eigenvalue is outside, whatever else is in the batch.

    torch's check alone answers True for it when another model of the batch is not symmetric
    (the negative control: the raw check on the same batch).
    """
    x = torch.tensor(
        [
            [[1.0, 0.5], [0.0, 1.0]],  # not symmetric
            [[1.0, 2.0], [2.0, 1.0]],  # symmetric, eigenvalues 3 and -1
            [[2.0, 0.1], [0.1, 1.0]],  # positive definite
        ]
    )
    assert constraints.positive_definite.check(x).tolist() == [False, True, True]
    problem = SPD()
    assert problem.in_support(x).tolist() == [False, False, True]
    assert problem.in_support(x.expand(4, 3, 2, 2)).tolist() == [[False, False, True]] * 4
    assert [bool(problem.in_support(one)) for one in x] == [False, False, True]


def test_nuts_rounding_onto_an_open_boundary_is_outside_not_a_crash():
    """Near x = 3 the chains' theta = log(x - 3) reaches values where 3 + exp(theta) == 3.

    The target is -inf there (a divergence), the forward is never called there, and the draws
    match the truncated normal: mean within 4 Monte Carlo standard errors (sd / sqrt(ESS)).
    """
    y = torch.tensor([3.02, 4.0])
    init = 3.0 + 0.3 * torch.rand(100, 2, generator=torch.Generator().manual_seed(0))
    res = nuts_sample(
        ShiftedExponential(), y, init, num_samples=200, warmup_steps=150, num_chains=2, seed=0
    )
    draws = res.x.reshape(-1, 2).double().numpy()
    assert draws.min() > 3
    loc = y.double().numpy() - 3 - NOISE**2
    mean = 3 + truncnorm.mean(-loc / NOISE, np.inf, loc=loc, scale=NOISE)
    sd = truncnorm.std(-loc / NOISE, np.inf, loc=loc, scale=NOISE)
    assert np.all(np.abs(draws.mean(0) - mean) <= 4 * sd / math.sqrt(res.min_ess))


def test_nuts_keeps_a_support_that_is_not_elementwise():
    """On the unit disc with a prior density finite off it, every NUTS draw is on the disc.

    The mean of x_1 matches exact draws (rejection from N(y, s^2 I)) within 4 standard errors
    (sd / sqrt(ESS) for NUTS plus sd / sqrt(n) for the exact draws). Negative control, on the
    exact draws: more than a quarter of N(y, s^2 I) lies off the disc (y lies on its rim), so
    chains that ignored the support would put draws there.
    """
    y = torch.tensor([0.98, 0.0])
    problem = UnitDisc()
    exact = y + NOISE * torch.randn(40_000, 2, generator=torch.Generator().manual_seed(1))
    outside = ~problem.in_support(exact)
    assert float(outside.double().mean()) > 0.25  # q without the cut would leave the disc
    exact = exact[~outside].double()
    init = problem.sample_prior(200, torch.Generator().manual_seed(0)) * 0.5 + torch.tensor(
        [0.45, 0.0]
    )
    res = nuts_sample(problem, y, init, num_samples=200, warmup_steps=150, num_chains=2, seed=0)
    draws = res.x.reshape(-1, 2).double()
    assert bool(problem.in_support(draws).all())
    sd = float(exact[:, 0].std())
    se = sd / math.sqrt(res.min_ess) + sd / math.sqrt(len(exact))
    assert abs(float(draws[:, 0].mean() - exact[:, 0].mean())) <= 4 * se


def test_nuts_refuses_a_start_outside_a_declared_support():
    """biject_to's inverse would silently move it (NaN -> 0): the start is named instead."""
    init = torch.tensor([[2.0, 4.0], [3.5, 4.0]])
    with pytest.raises(DataError, match=r"1 of 2 models in init lie outside problem"):
        nuts_sample(ShiftedExponential(), torch.tensor([3.02, 4.0]), init, num_samples=100)


def test_refinement_undoes_steps_out_of_a_support_that_is_not_elementwise():
    """Data beyond the rim pull draws onto it, not through it; the warning says so.

    Negative control: the same refinement with the support undeclared leaves the disc.
    """
    problem = UnitDisc()
    start = problem.sample_prior(40, torch.Generator().manual_seed(0)).reshape(20, 2, 2) * 0.5
    draws = PosteriorDraws(x=start, z=torch.zeros(20, 2, 0), y_rep=None, decoder_noise=True)
    y = torch.tensor([[1.6, 0.0], [0.0, -1.6]])
    with pytest.warns(UserWarning, match="outside problem 'unit_disc''s declared support"):
        refined = refine_by_misfit(draws, y, problem, num_steps=100)
    assert bool(problem.in_support(refined.x).all())
    radius = refined.x.pow(2).sum(-1).sqrt()
    assert float(radius.median()) > 0.8  # moved out to the rim, towards the data
    problem.support = None
    free = refine_by_misfit(draws, y, problem, num_steps=100)
    assert float(free.x.pow(2).sum(-1).sqrt().max()) > 1


def test_nuts_advice_for_a_declared_support_that_is_not_elementwise():
    """Divergences at the rim of a declared disc: the advice is not to declare the support."""
    from inference.sample import CorrectionConfig, sample_corrected
    from ppl_cvae import CVAE, ModelConfig

    torch.manual_seed(0)
    cvae = CVAE(
        ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,), likelihood="flow", latent_dim=0)
    )
    correction = CorrectionConfig(
        method="nuts", chains=2, warmup_steps=50, adapt_mass_matrix=False
    )
    _, summary, _ = sample_corrected(
        cvae, torch.tensor([[0.98, 0.0]]), 100, UnitDisc(), correction, seed=0
    )
    assert "divergent" in summary and " 0 divergent" not in summary
    assert "is not elementwise" in summary and "declare its support" not in summary


def test_an_own_in_support_without_a_declared_support_is_used():
    """A duck-typed problem's in_support (no support, no density) rejects draws, as stated.

    Negative control: the untrained flow puts most of its draws outside [0, 1]^2 for this y.
    """
    from inference.posterior import draw_posterior
    from ppl_cvae import CVAE, ModelConfig
    from ppl_cvae.problems.adapter import as_problem

    class Duck:
        name, x_shape, y_shape = "duck", (2,), (2,)
        x_dims, y_dims, coords = ("p",), ("d",), {}
        noise_std = misfit_std = NOISE

        def sample_prior(self, num, generator=None):
            return torch.rand(num, 2, generator=generator)

        def in_support(self, x):
            return ((x >= 0) & (x <= 1)).all(-1)

        def forward(self, x):
            return x

        def simulate(self, num, generator=None):
            x = self.sample_prior(num, generator)
            return x, x + NOISE * torch.randn(x.shape, generator=generator)

        def spec(self):
            return {}

    class Subclass(UnitDisc):
        has_prior_density = False
        support = None

        def in_support(self, x):
            return ((x >= 0) & (x <= 1)).all(-1)

    torch.manual_seed(0)
    cvae = CVAE(
        ModelConfig(x_shape=(2,), y_shape=(2,), hidden_dims=(8,), likelihood="flow", latent_dim=0)
    )
    y = torch.tensor([[0.1, 0.9]])
    free = draw_posterior(cvae, y, 2000, seed=0).x
    assert float(((free >= 0) & (free <= 1)).all(-1).double().mean()) < 0.5
    for problem in (as_problem(Duck()), Subclass()):
        assert problem.restricts_support()
        draws = draw_posterior(cvae, y, 500, problem=problem, seed=0)
        assert bool(((draws.x >= 0) & (draws.x <= 1)).all())
        assert draws.support_acceptance is not None


class Simplex(Problem):
    """Proportions ``x ~ Dirichlet(1, 1, 1)`` on the 2-simplex in R^3, ``y = x + N(0, s^2 I)``."""

    name = "simplex"
    x_shape = y_shape = (3,)
    x_dims, y_dims, coords = ("component",), ("datum",), {}
    noise_std = misfit_std = NOISE
    has_prior_density = True
    support = constraints.simplex

    def sample_prior(self, num, generator=None):
        e = -torch.log1p(-torch.rand(num, 3, generator=generator))  # Exp(1) each
        return e / e.sum(-1, keepdim=True)

    def log_prior(self, x):  # Dirichlet(1, 1, 1): the constant log 2 on the simplex
        return torch.full(x.shape[:-1], math.log(2.0), dtype=torch.float64)

    def forward(self, x):
        return x


def _with_support(problem, support):
    problem.support = support
    return problem


@pytest.mark.parametrize(
    ("problem", "words"),
    [
        (Simplex(), r"each event of shape \(3,\) has 3 values but the set is 2-dimensional"),
        (SPD(), r"shape \(2, 2\) has 4 values but the set is 3-dimensional"),  # n(n+1)/2
        (_with_support(SPD(), constraints.lower_cholesky), "the set is 3-dimensional"),
        (_with_support(SPD(), constraints.corr_cholesky), "the set is 1-dimensional"),
    ],
)
def test_a_fit_refuses_a_support_of_lower_dimension(problem, words):
    """A simplex or a set of matrices with fewer free values than x: refused before the fit.

    The dimensions are the sets' own (2 of 3 for proportions, n(n+1)/2 = 3 of 4 for 2x2
    symmetric or triangular matrices, n(n-1)/2 = 1 for a 2x2 correlation's Cholesky factor).
    """
    from ppl_cvae import fit_problem
    from ppl_cvae.problems.base import check_support

    with pytest.raises(ConfigError, match=words) as err:
        check_support(problem, torch.Generator().manual_seed(0))
    message = str(err.value)
    assert f"problem {problem.name!r} declares the support" in message
    assert "unconstrained coordinates" in message and "biject_to(support)" in message
    with pytest.raises(ConfigError, match="of lower dimension than its models"):
        fit_problem(problem, train={"num_epochs": 1, "num_train": 64})


def test_full_dimensional_supports_are_not_refused():
    """Elementwise, independent, vector and a user's own constraints keep working."""
    from ppl_cvae.problems.base import check_support, support_dimension_deficit

    check_support(UnitDisc(), torch.Generator().manual_seed(0))  # a user's constraint
    shifted = ShiftedExponential()
    for support in (
        constraints.greater_than(3.0),
        constraints.independent(constraints.interval(torch.full((2,), 3.0), 1e9), 1),
        constraints.independent(constraints.greater_than(3.0), 1),
    ):
        check_support(_with_support(shifted, support), torch.Generator().manual_seed(0))
    from pyro.distributions import constraints as pyro_constraints

    for support in (constraints.real_vector, pyro_constraints.ordered_vector,
                    constraints.independent(constraints.real, 2), constraints.square):
        assert support_dimension_deficit(support, (3, 3)) is None
    assert support_dimension_deficit(constraints.simplex, (5, 3)) is not None  # per row


def test_sampling_refuses_a_support_of_lower_dimension():
    """A run fitted elsewhere, sampled with such a problem: draws, log_prob and importance.

    Negative control: of 20,000 draws of the full-dimensional flow none lies on the simplex
    (a set of measure zero), so rejection would never end.
    """
    from inference.importance import importance_sample
    from inference.posterior import CVAEPosterior, draw_posterior
    from ppl_cvae import CVAE, ModelConfig

    torch.manual_seed(0)
    cvae = CVAE(
        ModelConfig(x_shape=(3,), y_shape=(3,), hidden_dims=(8,), likelihood="flow", latent_dim=0)
    )
    problem = Simplex()
    y = torch.tensor([[0.2, 0.3, 0.5]])
    free = draw_posterior(cvae, y, 20_000, seed=0, problem=problem, within_support=False).x
    assert not bool(problem.in_support(free).any())
    words = r"declares the support Simplex\(\), a set of lower dimension"
    with pytest.raises(ConfigError, match=words):
        draw_posterior(cvae, y, 10, problem=problem, seed=0)
    with pytest.raises(ConfigError, match=words):
        CVAEPosterior(cvae, problem=problem).log_prob(torch.full((1, 3), 1 / 3), y)
    with pytest.raises(ConfigError, match=words):
        importance_sample(cvae, problem, y, 100, seed=0)
