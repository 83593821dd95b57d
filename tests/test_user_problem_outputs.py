"""Tier 2: what the outputs say about a user's own linear-Gaussian problem, against closed forms.

The problems are those of :mod:`tests.test_user_problem_units` (``x = cx x0 + ox``,
``y = cy y0 + oy`` with the well-scaled ``y0 = A x0 + e``), given a ``linear_gaussian()`` as a
user writes it: the matrix ``A' = cy A / cx``, the prior ``N(ox, cx^2 I)`` and the noise
covariance; the constant ``b' = oy - A' ox`` of the forward operator has no place in the
parts. The exact posterior in user units is the well-scaled one mapped
through the same affine change (mean ``cx (K y0) + ox``, sd ``cx sd0``,
``K = A^T (A A^T + s^2 I)^-1``), computed here by another route than
:func:`inference.exact.linear_gaussian_posterior` (which uses ``A'``, the prior and ``y - b'``).
"""

from __future__ import annotations

import pytest
import torch

from inference.exact import exact_posterior
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import LinearGaussianParts
from tests.conftest import SEED
from tests.test_user_problem_units import NOISE, UNITS, X_DIM, Y_DIM, ScaledLinearGaussian


class WithParts(ScaledLinearGaussian):
    """:class:`ScaledLinearGaussian` with the closed-form parts a user returns (no offset)."""

    def linear_gaussian(self) -> LinearGaussianParts:
        """Return ``A'``, the prior ``N(ox, cx^2 I)`` and ``(cy 0.3)^2 I``; no offset."""
        return LinearGaussianParts(
            matrix=self.matrix,
            prior_mean=torch.full((X_DIM,), self.ox, dtype=torch.float64),
            prior_cov=self.cx**2 * torch.eye(X_DIM, dtype=torch.float64),
            noise_cov=(self.cy * NOISE) ** 2 * torch.eye(Y_DIM, dtype=torch.float64),
        )

    def exact_mean(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``cx (K y0) + ox`` for ``y`` ``(M, 6)``: the exact posterior mean, ohm-m."""
        gain = self.a.T @ torch.linalg.inv(self.a @ self.a.T + NOISE**2 * torch.eye(Y_DIM))
        return self.cx * (self.core_data(y) @ gain.T) + self.ox


@pytest.mark.parametrize("case", list(UNITS))
def test_exact_posterior_of_an_affine_user_forward(case):
    """The exact posterior of ``y = A x + b + e`` includes ``b``, read off the forward.

    Before, :func:`exact_posterior` used the parts' matrix alone, i.e. the posterior of
    ``y = A x + e``: on the "physical" units (``b' = oy - A' ox`` about 1e-3 s against noise
    1e-5 s) its mean was hundreds of posterior sd off, and ``evaluate``'s ``exact`` section
    (error in exact sd, the exact posterior's coverage) described another problem.
    Tolerance: the mean is returned in float32 (relative rounding 6e-8 of about 1e3 ohm-m
    against a posterior sd of about 20 ohm-m: 3e-6 sd); 1e-4 sd is 30 times that.
    """
    problem = WithParts(*UNITS[case])
    _, y = problem.simulate(5, torch.Generator().manual_seed(SEED))
    exact = exact_posterior(problem, y)
    error = (exact.mean.double() - problem.exact_mean(y)) / problem.exact_sd()
    assert float(error.abs().max()) < 1e-4, f"{case}: mean {float(error.abs().max()):.3g} sd off"
    # the covariance does not depend on b: its sd is the closed form's; the reference
    # exact_sd adds the noise variance 0.09 as a float32 (relative rounding 2e-8, measured
    # 1.9e-8 in every unit system), so 1e-6 is 50 times that
    assert torch.allclose(exact.cov.diagonal().sqrt(), problem.exact_sd(), rtol=1e-6)


def test_parts_that_do_not_describe_the_forward_are_refused():
    """A matrix, offset or noise covariance that is not the problem's is named, not used.

    Negative controls of the check above: each would give the closed form of another problem.
    """
    problem = WithParts(*UNITS["physical"])
    _, y = problem.simulate(2, torch.Generator().manual_seed(SEED))
    good = problem.linear_gaussian()
    wrong = {
        "matrix": good._replace(matrix=1.01 * good.matrix),
        "transposed": good._replace(matrix=good.matrix.flip(0)),
        "noise": good._replace(noise_cov=4 * good.noise_cov),
    }
    for name, parts in wrong.items():
        problem.linear_gaussian = lambda parts=parts: parts  # type: ignore[method-assign]
        words = "noise_cov that is not the problem's" if name == "noise" else "is not the A x"
        with pytest.raises(ConfigError, match=words):
            exact_posterior(problem, y)
