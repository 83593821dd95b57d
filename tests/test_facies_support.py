"""A user's problem with a discrete support (facies codes): the family fits it, or is refused.

A density on ``R^n`` (Gaussian, flow) puts probability zero on a discrete set, so before this
check such a fit ran (its loss falling without bound) and every amortized draw was rejected
at sampling time with a message about the observation. The problem here: ``x`` holds ``d``
independent facies codes with prior probabilities ``PRIOR``, and ``y`` is pure noise, so the
posterior is the prior and every figure has a closed form.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import constraints

from inference.posterior import draw_posterior
from ppl_cvae import ModelConfig, build_cvae, fit_problem, resolve_settings
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import Problem, check_facies_support, facies_family

PRIOR = (0.5, 0.3, 0.2)  # prior probability of codes 0, 1, 2
DIM = 4


class Codes(Problem):
    """``x``: ``DIM`` i.i.d. codes ``0 .. K - 1`` (K = 2: Bernoulli(0.3)); ``y`` is noise."""

    name = "codes"
    x_dims, y_dims, coords = ("cell",), ("datum",), {}
    noise_std = misfit_std = 1.0
    x_shape = (DIM,)
    y_shape = (2,)

    def __init__(self, classes: int = 2, support: constraints.Constraint | None = None):
        self.classes = classes
        self.probs = torch.tensor([0.7, 0.3]) if classes == 2 else torch.tensor(PRIOR)
        default = (
            constraints.independent(constraints.boolean, 1)
            if classes == 2
            else constraints.integer_interval(0, classes - 1)
        )
        self.support = default if support is None else support

    def sample_prior(self, num, generator=None):
        u = torch.rand(num, DIM, 1, generator=generator)
        return (u > self.probs.cumsum(0)).sum(-1).float()

    def forward(self, x):
        return torch.zeros(*x.shape[:-1], 2)

    def simulate(self, num, generator=None):
        x = self.sample_prior(num, generator)
        return x, torch.randn(num, 2, generator=generator)


def test_facies_family_of_each_support():
    assert facies_family(constraints.boolean) == ("bernoulli", 2)
    assert facies_family(constraints.integer_interval(0, 1)) == ("bernoulli", 2)
    assert facies_family(constraints.independent(constraints.integer_interval(0, 4), 1)) == (
        "categorical",
        5,
    )
    # discrete sets no facies decoder fills, and continuous ones
    for support in (
        constraints.integer_interval(1, 3),
        constraints.nonnegative_integer,
        constraints.unit_interval,
        None,
    ):
        assert facies_family(support) is None


def test_the_defaults_choose_the_facies_decoder_of_a_discrete_support():
    model, _ = resolve_settings(Codes(2))
    assert model.likelihood == "bernoulli" and model.latent_dim > 0
    model, _ = resolve_settings(Codes(3))
    assert (model.likelihood, model.num_facies) == ("categorical", 3)
    # the user's choice wins, and is then refused by name when the fit is built
    config, _ = resolve_settings(Codes(2), overrides_likelihood("gaussian"))
    x, y = Codes(2).simulate(64, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"discrete support .*'gaussian' likelihood.*bernoulli"):
        build_cvae(config, x, y, problem=Codes(2))


def overrides_likelihood(likelihood: str):
    from ppl_cvae import Overrides

    return Overrides(model={"likelihood": likelihood})


@pytest.mark.parametrize(
    ("likelihood", "classes", "support", "missing"),
    [
        ("bernoulli", 2, constraints.positive, "0"),  # code 0 is not positive
        ("categorical", 3, constraints.boolean, "2"),
        ("flow", 2, constraints.nonnegative_integer, None),  # a discrete set, a density
    ],
)
def test_a_decoder_whose_draws_the_support_cannot_hold_is_refused(
    likelihood, classes, support, missing
):
    problem = Codes(2, support=support)
    with pytest.raises(ConfigError) as err:
        check_facies_support(problem, likelihood, classes, (DIM,))
    text = str(err.value)
    assert "problem 'codes'" in text
    assert ("does not hold " + missing if missing else "a density on R^n") in text


def test_codes_inside_a_continuous_support_pass():
    check_facies_support(Codes(2, support=constraints.unit_interval), "bernoulli", 2, (DIM,))
    check_facies_support(Codes(3, support=constraints.interval(0.0, 2.0)), "categorical", 3, (4,))
    check_facies_support(Codes(2, support=constraints.unit_interval), "gaussian", 2, (DIM,))


def test_a_run_with_a_density_is_refused_when_sampled_with_the_discrete_problem():
    # fitted without the problem (a data file), sampled with it: no draw could be kept
    x, y = Codes(2).simulate(256, torch.Generator().manual_seed(1))
    config = ModelConfig(x_shape=(DIM,), y_shape=(2,), hidden_dims=(8,), latent_dim=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the codes warning, tested below
        cvae = build_cvae(config, x, y)
    with pytest.raises(ConfigError, match="discrete support"):
        draw_posterior(cvae, y[:1], 10, problem=Codes(2))


@pytest.mark.parametrize("classes", [2, 3])
def test_a_fitted_facies_posterior_of_an_uninformative_y_is_the_prior(classes):
    """With ``y`` independent of ``x`` the posterior is the prior: code frequencies ``PRIOR``.

    The decoder's per-cell probabilities are fitted by the ELBO from 2,000 x 4 = 8,000 codes
    (binomial sd of a frequency below 0.006) and read from 4,000 draws of 4 cells (sd below
    0.008), so the tolerance 0.03 is 3 sd of both; 10 epochs at learning rate 0.01 reach it
    (measured 0.002-0.009 off). A density on R^n could not be drawn here at all (every draw
    rejected); a fit that ignored the support's codes would put mass on other values.
    """
    problem = Codes(classes)
    cvae, _, _ = fit_problem(
        problem,
        model={"hidden_dims": (16,), "latent_dim": 2},
        train={"num_epochs": 10, "num_train": 2000, "batch_size": 100, "seed": 0,
               "learning_rate": 1e-2, "lr_decay": 1.0},  # fmt: skip
    )
    assert cvae.config.likelihood == ("bernoulli" if classes == 2 else "categorical")
    y = torch.randn(1, 2, generator=torch.Generator().manual_seed(3))
    draws = draw_posterior(cvae, y, 4000, problem=problem, seed=0).x.flatten()
    assert set(draws.unique().tolist()) <= set(range(classes))
    frequencies = torch.stack([(draws == k).double().mean() for k in range(classes)])
    assert torch.allclose(frequencies, problem.probs.double(), atol=0.03), frequencies
    # without the decoder's noise a draw holds the codes' probabilities, not a model: kept
    means = draw_posterior(cvae, y, 100, problem=problem, seed=0, decoder_noise=False).x
    assert means.shape[0] == 100 and not bool(problem.support.check(means).all())


def test_a_density_fitted_to_codes_warns_and_real_values_do_not():
    x, y = Codes(2).simulate(256, torch.Generator().manual_seed(2))
    config = ModelConfig(x_shape=(DIM,), y_shape=(2,), hidden_dims=(8,), latent_dim=2)
    with pytest.warns(UserWarning, match=r"integers \{0, 1\}.*--likelihood bernoulli"):
        build_cvae(config, x, y)
    with pytest.warns(UserWarning, match=r"integers \{0, 1, 2\}.*categorical"):
        build_cvae(config, Codes(3).simulate(256, torch.Generator().manual_seed(2))[0], y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cvae(config, x + 0.01 * torch.randn_like(x), y)
        build_cvae(config, torch.round(100 * math.pi * torch.randn_like(x)), y)  # many values
