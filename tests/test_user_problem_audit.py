"""A user's own problem, as the sixth audit wrote them: what was accepted and failed later, or
failed with a message that blamed the wrong thing, now refused or handled where it is met."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import constraints

from inference.sample import inference_data_from_draws, sample_corrected
from ppl_cvae import ModelConfig, build_cvae
from ppl_cvae.errors import ConfigError, DataError, NoPriorDensityError
from ppl_cvae.problems import LinearGaussian
from ppl_cvae.problems.adapter import check_problem


def _problem(**members):
    problem = LinearGaussian(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    for name, value in members.items():
        setattr(problem, name, value)
    return problem


@pytest.mark.parametrize(
    "members, match",
    [
        ({"coords": {"parameter": [0, 1], "datum": [0, 1, 2, 3]}},
         r"coords\['parameter'\] has 2 values for dim 'parameter' of size 3"),
        ({"units": {"x": 3, "y": "mGal"}}, r"units\['x'\] is 3, not a unit string"),
        ({"units": {"x": "m", "y": None}}, r"units\['y'\] is None, not a unit string"),
        ({"noise_cov": torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0]))},
         "noise_cov is not positive definite"),
    ],
)
def test_problems_that_would_fail_later_are_refused_when_checked(members, match):
    """Before: accepted here, then every sample crashed in xarray (coordinates), the units were
    written as the strings '3' and 'None', and a noise_cov that is no covariance failed in
    ``simulate`` with a LinAlgError."""
    with pytest.raises(ConfigError, match=match):
        check_problem(_problem(**members), "the test")


def test_a_forward_of_one_batch_axis_serves_amortized_files():
    """The posterior predictive and ``lp`` call ``forward`` / ``log_prior`` on one batch axis,
    ``(S * M, *x_shape)``: a problem written for ``(N, *x_shape)`` writes its files (before:
    "forward returned (50, 8); expected (50, 1, 8)")."""

    class OneAxis(LinearGaussian):
        def forward(self, x):
            assert x.dim() == 2, "one batch axis"
            return super().forward(x)

        def log_prior(self, x):
            assert x.dim() == 2, "one batch axis"
            return super().log_prior(x)

    problem = OneAxis(x_dim=3, y_dim=4, noise_std=0.3, seed=1)
    x, y = problem.simulate(3, torch.Generator().manual_seed(0))
    draws = x.expand(5, 3, 3)
    idata = inference_data_from_draws(draws, y, problem=problem)
    reference = inference_data_from_draws(draws, y, problem=_problem())
    for group, name in (("sample_stats", "lp"), ("log_likelihood", "y")):
        np.testing.assert_allclose(idata[group][name].values, reference[group][name].values)


def test_a_declared_density_without_log_prior_says_so():
    class Declared(LinearGaussian):
        has_prior_density = True

        def log_prior(self, x):  # the base class's: "not written"
            return super(LinearGaussian, self).log_prior(x)

    with pytest.raises(NoPriorDensityError, match="sets has_prior_density = True but defines no "
                       r"log_prior\(x\)"):
        Declared().log_prior(torch.zeros(2, 2))


def test_log_likelihood_takes_numpy_as_the_rest_of_the_api():
    problem = _problem()
    x, y = np.zeros((5, 3)), np.ones(4)
    expected = problem.log_likelihood(torch.as_tensor(x), torch.as_tensor(y))
    torch.testing.assert_close(problem.log_likelihood(x, y), expected)
    torch.testing.assert_close(problem.log_likelihood(x.tolist(), y), expected)


def test_one_truth_for_one_observation_in_the_corrected_samplers():
    """``sample_corrected(..., y=one y, x_true=one x)`` as ``sample_posterior`` takes it
    (before: ShapeError demanding ``(1, *x_shape)``)."""
    from inference.sample import CorrectionConfig

    problem = _problem()
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    cvae = build_cvae(ModelConfig(x_shape=(3,), y_shape=(4,), latent_dim=2, hidden_dims=(8,)),
                      x, y, problem=problem)
    correction = CorrectionConfig(method="importance", proposals=40)
    idata, _, _ = sample_corrected(cvae, y[0], 10, problem, correction, x_true=x[0], seed=0)
    np.testing.assert_allclose(idata.constant_data["x_true"].values, x[:1].numpy())


def test_prior_draws_outside_the_declared_support_blame_the_prior():
    """A ``sample_prior`` that leaves the support it declares is named as such, not as a
    setting the user never chose."""
    problem = _problem(support=constraints.positive)
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))  # Gaussian: some x < 0
    config = ModelConfig(x_shape=(3,), y_shape=(4,), latent_dim=0, hidden_dims=(8,),
                         likelihood="flow", x_transform="support")
    with pytest.raises(DataError, match=r"prior draws of problem 'linear_gaussian'\) must lie in "
                       r"the support it declares, GreaterThan\(lower_bound=0.0\): fix its "
                       "sample_prior or its support"):
        build_cvae(config, x, y, problem=problem)
