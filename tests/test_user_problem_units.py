"""Tier 2: a user's own linear-Gaussian problem in awkward units, against closed-form answers.

The problem is the well-scaled ``x0 ~ N(0, I_4)``, ``y0 = A x0 + e``, ``A ~ N(0, 1)`` (6 x 4),
``e ~ N(0, 0.3^2 I)``, written in user units ``x = cx x0 + ox``, ``y = cy y0 + oy`` (a
:class:`~ppl_cvae.problems.base.Problem` subclass with a prior density, as a user writes it,
no ``linear_gaussian()``). Every answer in user units is the well-scaled one mapped through
the same affine change, so a check in units of the exact posterior sd is equally strict in
every unit system:

- exact posterior (data-space form, float64): ``K = A^T (A A^T + s^2 I)^-1``, mean ``K y0``,
  covariance ``I - K A``; in user units mean ``cx (K y0) + ox``, sd ``cx sd0``;
- least-squares model (what misfit minimisation converges to, 6 data for 4 unknowns):
  ``x0_LS = (A^T A)^-1 A^T y0``, in user units ``cx x0_LS + ox``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from inference.refine import refine_and_accept
from ppl_cvae import ModelConfig, build_cvae
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.base import Problem
from tests.conftest import SEED

X_DIM, Y_DIM, NOISE = 4, 6, 0.3


class ScaledLinearGaussian(Problem):
    """The well-scaled linear-Gaussian problem in user units ``x = cx x0 + ox``, ``y = cy y0 + oy``.

    ``x`` in ohm-m (event shape ``(4,)``), ``y`` in s (``(6,)``); prior
    ``N(ox, cx^2 I)``, ``y = A' x + b' + e'`` with ``A' = cy A / cx``, ``b' = oy - A' ox``,
    ``e' ~ N(0, (cy 0.3)^2 I)``. The forward operator works in float64 and returns the dtype of
    ``x`` (float32 in training, float64 under NUTS).
    """

    name = "scaled_linear_gaussian"
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    units = {"x": "ohm m", "y": "s"}
    has_prior_density = True

    def __init__(self, cx: float, cy: float, ox: float = 0.0, oy: float = 0.0) -> None:
        gen = torch.Generator().manual_seed(SEED)
        self.a = torch.randn(Y_DIM, X_DIM, generator=gen, dtype=torch.float64)
        self.cx, self.cy, self.ox, self.oy = cx, cy, ox, oy
        self.x_shape, self.y_shape = (X_DIM,), (Y_DIM,)
        self.noise_std = self.misfit_std = cy * NOISE
        self.matrix = cy * self.a / cx
        self.offset = oy - self.matrix @ torch.full((X_DIM,), ox, dtype=torch.float64)

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x ~ N(ox, cx^2 I)``; shape ``(num, 4)``, float32, ohm-m."""
        x0 = torch.randn(num, X_DIM, generator=generator, dtype=torch.float64)
        return (self.cx * x0 + self.ox).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A' x + b'``; ``(*batch, 4)`` to ``(*batch, 6)``, in s, the dtype of ``x``."""
        return (x.double() @ self.matrix.T + self.offset).to(x.dtype)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``log N(x; ox, cx^2 I)`` in nats, float64; shape ``(*batch,)``."""
        z = (x.double() - self.ox) / self.cx
        return -0.5 * z.square().sum(-1) - X_DIM * (math.log(self.cx) + 0.5 * math.log(2 * math.pi))

    def core_data(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``y0 = (y - oy) / cy`` in float64: the well-scaled data."""
        return (y.double() - self.oy) / self.cy

    def exact_sd(self) -> torch.Tensor:
        """Return the exact posterior sd of each element of ``x``, ohm-m; shape ``(4,)``."""
        gain = self.a.T @ torch.linalg.inv(self.a @ self.a.T + NOISE**2 * torch.eye(Y_DIM))
        cov0 = torch.eye(X_DIM, dtype=torch.float64) - gain @ self.a
        return self.cx * cov0.diagonal().sqrt()

    def least_squares(self, y: torch.Tensor) -> torch.Tensor:
        """Return the misfit minimiser ``cx x0_LS + ox`` for ``y`` ``(M, 6)``; ``(M, 4)``."""
        x0 = torch.linalg.lstsq(self.a, self.core_data(y).T).solution.T
        return self.cx * x0 + self.ox


UNITS = {
    "well-scaled": (1.0, 1.0, 0.0, 0.0),
    "x1e-8": (1e-8, 1e-8, 0.0, 0.0),
    "x1e8": (1e8, 1e8, 0.0, 0.0),
    # ohm-m about 1e3 +- 1e2, seconds about 1e-3 with noise sd 1e-5
    "physical": (100.0, 1e-5 / NOISE, 1e3, 1e-3),
}


def _untrained_cvae(problem: ScaledLinearGaussian, num: int = 2000):
    """A CVAE whose standardisers are fitted on ``num`` simulated pairs (no SVI step)."""
    x, y = problem.simulate(num, torch.Generator().manual_seed(SEED + 1))
    config = ModelConfig(x_shape=(X_DIM,), y_shape=(Y_DIM,), latent_dim=2, hidden_dims=(16,))
    return build_cvae(config, x, y, problem=problem), y


@pytest.mark.parametrize("case", list(UNITS))
def test_refinement_reaches_the_least_squares_model_in_any_units(case):
    """``sample --method refine`` minimises the misfit to the same answer in every unit system.

    Before, Adam's step (``--refine-lr`` 0.1) was in the units of ``x``: in units of 1e-8 the
    first steps threw the draws 1e7 posterior sds away (they ended 15 sds off, all above
    ``max_misfit``), in units of 1e8 they barely moved (7 sds off). Tolerance: 300 Adam
    steps of size 0.1 training sd on this 4-unknown least-squares problem converge to within
    1e-4 posterior sd (measured in all four unit systems); 0.02 posterior sd is two orders
    above that and two below the posterior spread an unconverged draw keeps.
    """
    problem = ScaledLinearGaussian(*UNITS[case])
    cvae, y = _untrained_cvae(problem)
    y_obs = y[:3]
    # no acceptance step: the least-squares residual has chi-squared on 6 - 4 = 2 degrees of
    # freedom, above max_misfit = 1 (chi2 > 6) for 5% of observations
    draws, _ = refine_and_accept(
        cvae, y_obs, 20, problem, oversample=1, max_misfit=None, seed=SEED
    )
    target = problem.least_squares(y_obs)  # (3, 4)
    error = ((draws.x.double() - target) / problem.exact_sd()).abs().max()
    assert float(error) < 0.02, f"{case}: refined draws {float(error):.3g} posterior sd off"
    # negative control: one step does not get there (the check can fail)
    one, _ = refine_and_accept(
        cvae, y_obs, 20, problem, oversample=1, max_misfit=None, num_steps=1, seed=SEED
    )
    assert float(((one.x.double() - target) / problem.exact_sd()).abs().max()) > 0.5


def test_refinement_step_unit_must_be_positive():
    """A zero or non-finite ``x_scale`` is refused, naming what was expected."""
    from inference.posterior import PosteriorDraws
    from inference.refine import refine_by_misfit

    problem = ScaledLinearGaussian(1.0, 1.0)
    x, y = problem.simulate(3, torch.Generator().manual_seed(SEED))
    draws = PosteriorDraws(x=x[None], z=torch.zeros(1, 3, 1), y_rep=None, decoder_noise=False)
    for bad in (torch.zeros(X_DIM), torch.full((X_DIM,), math.nan)):
        with pytest.raises(ConfigError, match="x_scale must be positive and finite"):
            refine_by_misfit(draws, y, problem, x_scale=bad)
    with pytest.raises(ConfigError, match="does not broadcast to x_shape"):
        refine_by_misfit(draws, y, problem, x_scale=torch.ones(3))


class Float32Forward(ScaledLinearGaussian):
    """A user's forward written with a float32 matrix: ``x @ matrix.T``."""

    def __init__(self) -> None:
        super().__init__(1.0, 1.0)
        self.matrix32 = self.matrix.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A x`` with a float32 ``A`` (fails on float64 ``x``: PyTorch's matmul)."""
        return x @ self.matrix32.T


class Float32Prior(ScaledLinearGaussian):
    """A user's log prior written with a float32 matrix."""

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``log N(x; 0, I)`` through a float32 matrix product (fails on float64)."""
        return -0.5 * (x @ torch.eye(X_DIM)).square().sum(-1) - 2 * math.log(2 * math.pi)


def test_a_float32_only_problem_under_nuts_is_told_that_x_was_float64():
    """NUTS evaluates the problem on float64 models; training and importance sampling on float32.

    Before, a forward written as ``x @ self.matrix.T`` with a float32 matrix fitted and
    importance-sampled fine, then failed under ``--method nuts`` with only PyTorch's
    "expected m1 and m2 to have the same dtype": nothing said the product had changed the
    dtype of ``x``. ``nuts_sample`` now evaluates the problem as NUTS will on two starts
    before any chain runs, and says so and what to do (a log prior likewise).
    """
    from inference.mcmc import nuts_sample

    kw = {"num_samples": 4, "warmup_steps": 2, "num_chains": 2}
    problem = Float32Forward()
    x, y = problem.simulate(2, torch.Generator().manual_seed(SEED))
    assert problem.log_likelihood(x, y).shape == (2,)  # float32 works
    hint = r"x was float64 .* the same x in float32 works: compute in the dtype of x"
    with pytest.raises(ConfigError, match=r"^problem 'scaled_linear_gaussian' forward raised "
                                          r"RuntimeError: .*dtype.*" + hint):
        nuts_sample(problem, y[0], x, **kw)
    with pytest.raises(ConfigError, match=r"log_prior raised RuntimeError: .*" + hint):
        nuts_sample(Float32Prior(1.0, 1.0), y[0], x, **kw)
    # negative control: the same problem computing in the dtype of x samples
    assert nuts_sample(ScaledLinearGaussian(1.0, 1.0), y[0], x, **kw).x.shape == (2, 4, X_DIM)


def test_a_failure_in_both_dtypes_keeps_its_own_message():
    """Negative control: a forward that fails on float32 too gets no dtype hint."""

    class Broken(ScaledLinearGaussian):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("solver diverged")

    problem = Broken(1.0, 1.0)
    x = torch.zeros(2, X_DIM, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"raised RuntimeError: solver diverged for x of "
                                          r"shape \(2, 4\)$"):
        problem.log_likelihood(x, torch.zeros(2, Y_DIM))


class BatchedOnly(ScaledLinearGaussian):
    """A forward written for ``(batch, 4)`` only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A' x + b'`` for ``x`` of shape ``(batch, 4)``; raise otherwise."""
        if x.dim() != 2:
            raise ValueError(f"expected x of shape (batch, 4), got {tuple(x.shape)}")
        return super().forward(x)


class UnbatchedOnly(ScaledLinearGaussian):
    """A forward written for one model ``(4,)`` only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A' x + b'`` for one ``x`` of shape ``(4,)``; raise otherwise."""
        if x.dim() != 1:
            raise ValueError(f"expected one x of shape (4,), got {tuple(x.shape)}")
        return super().forward(x)


CONTRACT = r"forward must take models with any number of batch axes, \(\*batch, \*x_shape\)"


def test_a_forward_for_one_model_only_is_refused_before_the_fit():
    """The contract is ``(*batch, *x_shape)``: training passes one batch axis. A forward for
    a single model only failed inside ``simulate``; now ``fit_problem`` (and ``ppl-cvae
    fit``) refuses it before simulating, naming the layout that works and the contract."""
    from ppl_cvae import fit_problem

    with pytest.raises(ConfigError, match=r"one model of shape \(4,\) works.*" + CONTRACT):
        fit_problem(UnbatchedOnly(1.0, 1.0), train={"num_epochs": 1, "num_train": 64})


def test_a_forward_for_one_batch_axis_only_fits_with_a_warning(caplog):
    """A forward for ``(batch, 4)`` only trains (training's layout) and draws amortized, so
    the fit goes on; it warns, naming the layout that fails and the contract, that the
    corrections (NUTS: one model; importance sampling and refinement: two batch axes) will
    refuse it (``test_a_layout_failure_at_sampling_time_names_the_contract``)."""
    from ppl_cvae import fit_problem

    with caplog.at_level("WARNING", logger="ppl_cvae.problems.base"):
        model = fit_problem(BatchedOnly(1.0, 1.0), train={"num_epochs": 1, "num_train": 64})
    assert model is not None
    text = " ".join(r.getMessage() for r in caplog.records)
    assert re.search(CONTRACT, text) and "will refuse this problem" in text, text


def test_a_layout_failure_at_sampling_time_names_the_contract():
    """A problem named only at sampling time (a run fitted on a file) meets the same words
    under NUTS (one model at a time), importance sampling and refinement (two batch axes),
    before any proposal, chain or optimiser step."""
    from inference.importance import importance_sample
    from inference.mcmc import nuts_sample

    cvae, y = _untrained_cvae(ScaledLinearGaussian(1.0, 1.0))
    x = ScaledLinearGaussian(1.0, 1.0).sample_prior(3, torch.Generator().manual_seed(SEED))
    problem = BatchedOnly(1.0, 1.0)
    words = r"expected x of shape \(batch, 4\), got \(4,\) .*the same models .*" + CONTRACT
    with pytest.raises(ConfigError, match=words):
        nuts_sample(problem, y[0], x, num_samples=4, warmup_steps=2)
    with pytest.raises(ConfigError, match=words):
        importance_sample(cvae, problem, y[:2], 16, seed=SEED)
    with pytest.raises(ConfigError, match=words):
        refine_and_accept(cvae, y[:2], 4, problem, oversample=1, num_steps=2, seed=SEED)


def test_a_forward_for_every_layout_passes_the_check():
    """Negative control: the check refuses nothing that keeps the contract."""
    from ppl_cvae.problems.base import check_batch_axes

    check_batch_axes(ScaledLinearGaussian(1e-8, 1e-8), torch.Generator().manual_seed(SEED))
