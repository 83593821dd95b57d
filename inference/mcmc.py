"""NUTS on the problem's exact posterior, started and preconditioned by amortized draws.

For a problem whose prior has a differentiable density (``problem.log_prior``) and whose noise
model gives ``problem.log_likelihood``, the posterior of ``x`` given one observation ``y`` is
sampled with Pyro's No-U-Turn sampler on the potential ``-log p(x) - log p(y | x)``. A problem
with a basis (``problem.parameterisation()``) is sampled on its unconstrained parameters
``theta`` instead (``x = B T(theta)``, prior density with the bijection's Jacobian).

The amortized posterior does two things (``precondition="amortized"``): each chain starts from
an amortized draw, and NUTS runs in the coordinates ``v = L^-1 (x - mu)``, with ``mu`` and
``L L^T`` the mean and covariance of the amortized draws. A dense mass matrix equal to the
posterior covariance is what NUTS's own adaptation aims at; taking it from the draws saves
the warm-up it would need to estimate ``d (d + 1) / 2`` entries (a constant-Jacobian change of
variables: the target in ``x`` is unchanged). ``precondition="none"`` gives plain NUTS with
diagonal adaptation, started from prior draws (the baseline of the correction benchmark).

Where the prior of the sampled coordinates is Gaussian, ``N(m, L_0 L_0^T)``
(:meth:`Problem.gaussian_prior <ppl_cvae.problems.base.Problem.gaussian_prior>`: mt1d's
latent field, the Gaussian random fields of crosshole and gravity), two more preconditioners
whiten by the prior's Cholesky factor ``L_0`` instead (chains still start at amortized draws):

- ``"prior"``: ``theta = m + L_0 w``, so the prior of ``w`` is ``N(0, I)``; the likelihood
  narrows the few directions the data inform and leaves the others at sd 1. This is the
  whitening of Gaussian-process MCMC (Murray and Adams 2010, "whitened" parameterisation).
- ``"prior-amortized"``: the amortized draws' covariance expressed in ``w``, ``C_w``, with
  its eigenvalues clipped at 1, ``theta = m + L_0 (mu_w + V min(Lambda, 1)^(1/2) v)``. Under a
  Gaussian prior the posterior covariance is below the prior's (``I`` in ``w``; exactly for a
  linear forward operator), so an amortized variance above 1 is the decoder's own noise
  (white noise in ``theta`` is amplified by ``L_0^-1`` in the rough directions of a smooth
  field): clipping keeps what the draws say about the informed directions and the prior
  elsewhere. Directions the draws do not span (fewer draws than coordinates) get 1.

With either, the chains start at amortized draws shrunk towards the draws' mean in the
directions where the draws are wider than the prior (by ``sqrt(min(lambda, 1) / lambda)`` along
the eigenvectors of ``C_w``): the decoder's noise puts a raw draw far out in the prior's rough
directions (``|w|^2`` in the thousands on mt1d), and a chain started there spends its warm-up
coming back (R-hat 1.03 after 100 warm-up iterations on mt1d; README, "Correction on mt1d").

With a Gaussian prior the potential evaluates the prior as ``-|L_0^-1 (theta - m)|^2 / 2``
plus its constant (for every preconditioner; the same density as ``problem.log_prior``
through the parameterisation, without its change of variables and transforms).

Chains run one after the other in this process (``num_cores=1``), or in ``num_cores`` worker
processes (one ``pyro.infer.MCMC`` per chain, each seeded with its own ``seed + c``, so the
draws do not depend on ``num_cores``). Pyro's own ``MCMC(num_chains=...)`` is not used: with a
``potential_fn`` it needs the potential to be picklable, and a closure over the problem is not;
here each worker builds the potential from the chain's job. On Linux, while CUDA is not
initialised and no other Python thread runs, the workers are forked (:func:`_start_method`):
they inherit the jobs, the imported modules and the problem object, so they start in about
0.05 s instead of the 3-5 s a ``spawn`` worker spends importing torch and Pyro (README, "NUTS
within 60 s per observation"), and a problem that cannot be pickled (a class defined in
``__main__`` or in a function, a lambda) runs in parallel too (tqdm's monitor thread is stopped
first). Elsewhere (macOS, Windows, a parent that already holds CUDA or other threads, which a
fork does not copy safely) the workers are spawned, the problem travels by pickle, and one that
cannot be pickled runs its chains in this process, with a warning. R-hat and the bulk ESS come
from ArviZ (rank-normalised split R-hat, Vehtari et al. 2021).

``jit_compile=True`` traces the preconditioned potential with ``torch.jit.trace`` (what
``NUTS(jit_compile=True)`` does for a Pyro model; Pyro ignores the flag for a
``potential_fn``). A trace records the tensor operations of one call and replays them, so a
potential whose Python control flow depends on the values of ``x`` (an ``if`` on a tensor)
would be replayed wrongly elsewhere; the traced potential and its gradient are therefore
compared with the eager ones at the chains' starts, and any difference (or a failure to
trace) falls back to the eager potential with a warning. No gain was measured on crosshole
and gravity, whose cost is the matrix-vector products (README, "NUTS within 60 s per
observation"), and ``torch.jit.trace`` is deprecated in torch 2.x, so it is off by default.

Cost and precision. An evaluation of the potential with its gradient is, for a Gaussian
prior, one product with ``H`` (the prior as a quadratic form in ``v``, gradient ``c + H v``
from the same product), ``x = mu + L v`` and ``L^T`` times the likelihood's gradient, besides
the problem's own likelihood; the products read only half of ``L`` and ``H`` (BLAS ``trmv``
and ``symv``). On crosshole (1024 cells) that is 1.45x faster than the former potential in
float64 (README, "NUTS within 60 s per observation"). ``potential_dtype="float32"`` evaluates
it in float32 (the chains' state stays float64), about 1.8x faster than before. NUTS with a
potential ``U + e`` whose rounding error ``e`` is a deterministic function of the state
samples ``exp(-U - e)`` exactly (the leapfrog map is volume-preserving and reversible for any
deterministic gradient; the multinomial choice of the draw uses the same ``U + e``), so
``|e| <= delta`` moves the target by at most about ``delta`` in total variation. Float32 sums
of ``n`` terms carry a relative error of about ``sqrt(n) * 6e-8`` (random rounding; ``n *
6e-8`` at worst, Higham 2002): on crosshole, with ``U`` of a few hundred nats over sums of
1024 terms, ``|e|`` was 2e-4 nats (median; at most 9e-4 over 200 posterior draws), against
step-size adaptation that accepts energy errors of order 1 nat and a divergence threshold of
1000. :func:`nuts_sample` checks ``|e|`` at the chains' starts
(:data:`FLOAT32_POTENTIAL_TOLERANCE`, 0.01 nats) and otherwise falls back to float64.

The gradient is assembled by hand around one ``torch.autograd.grad`` of the problem's own
part (the likelihood, and the prior where it is not the quadratic form) with respect to
``theta``: ``dU/dv = c + H v - L^T g``, the same operations in the same order as autograd
would run through the whole potential, so value and gradient are the same to the bit and so
are the draws (``tests/test_nuts_potential.py``), without the graph autograd otherwise builds
and walks around the products on every evaluation. Pyro's argument checks of the
distributions it builds inside the tree are switched off during a chain
(``pyro.validation_enabled(False)``). Pyro's ``potential_grad`` on crosshole takes 0.94x
the processor time in float32; whole chains 0.86-1.01x, within the scatter of a shared
machine (README, "NUTS within 60 s per observation").

Per-draw sampler statistics (:attr:`MCMCResult.sample_stats`, ArviZ's names): ``diverging``
(from each chain's ``MCMC.diagnostics()``, laid out as ``arviz.from_pyro`` lays it out: ArviZ
0.x's converter reads Pyro's divergences and nothing else), and, recorded by the kernel,
``energy`` (the Hamiltonian at the start of each transition, after the momentum refresh:
what ``az.bfmi`` needs), ``n_steps``
(leapfrog steps), ``tree_depth`` and ``step_size``. Pyro's MCMC keeps no per-draw energy or
tree depth, so the kernel records them from public parts: the momentum is a Pyro sample site
(``r_t=...``), read with a :class:`~pyro.poutine.messenger.Messenger`, and the potential at
the chain's current state is evaluated once more per transition (not counted in
``num_evaluations``).
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.poutine.messenger import Messenger

from inference.covariance import ledoit_wolf
from ppl_cvae.errors import ConfigError, DataError, PplCvaeError, exception_summary
from ppl_cvae.problems.base import (
    Problem,
    as_problem,
    checked_log_likelihood,
    checked_log_prior,
)

__all__ = [
    "MCMCResult",
    "MIN_DRAWS_PER_CHAIN",
    "RHAT_THRESHOLD",
    "NUTS_TAIL_EFFICIENCY",
    "FLOAT32_POTENTIAL_TOLERANCE",
    "POTENTIAL_DTYPES",
    "PRECONDITIONERS",
    "PotentialDtype",
    "Preconditioner",
    "nuts_draws_per_chain",
    "nuts_sample",
    "preconditioner_draws",
    "rhat_threshold",
    "run_whitened_chain",
]

Preconditioner = Literal["amortized", "prior", "prior-amortized", "none"]
PRECONDITIONERS: tuple[str, ...] = get_args(Preconditioner)
"""The values of ``precondition`` in :func:`nuts_sample` (see the module docstring)."""

PotentialDtype = Literal["float64", "float32"]
POTENTIAL_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
"""The values of ``potential_dtype`` in :func:`nuts_sample` and their torch dtypes."""


RHAT_THRESHOLD = 1.01
"""R-hat above which one quantity's chains have not mixed (Vehtari et al. 2021 recommend
1.01); the bound for the largest over many quantities is :func:`rhat_threshold`."""

MIN_DRAWS_PER_CHAIN = 4
"""Fewest draws per chain :func:`nuts_sample` accepts: the split R-hat halves each chain and
the ESS estimator needs at least four draws (Vehtari et al. 2021; Pyro's
``pyro.ops.stats.effective_sample_size`` asserts it)."""


def rhat_threshold(
    num_chains: int, num_draws: int, num_quantities: int = 1, false_alarm: float = 0.01
) -> float:
    r"""Return the bound on the largest R-hat of many quantities that mixed chains respect.

    Parameters
    ----------
    num_chains : int
        Chains (each split in halves by the rank-normalised split R-hat).
    num_draws : int
        Draws per chain (at least 4).
    num_quantities : int, default 1
        Quantities whose largest R-hat is compared with the bound (the sampled coordinates).
    false_alarm : float in (0, 1), default 0.01
        Probability that independent draws from the target exceed the bound.

    Returns
    -------
    float
        ``max(1.01, t)``, with ``t`` the ``1 - false_alarm`` quantile of the largest of
        ``num_quantities`` rank-normalised split R-hats (ArviZ's ``az.rhat``, bulk and folded)
        of ``num_chains x num_draws`` independent draws: 1.0173 for 4 x 250 draws of 1024
        quantities (Monte Carlo over 100 sets of independent draws: 99% quantile 1.0165,
        median 1.0113; 87% of them are above 1.01).

    Raises
    ------
    ConfigError
        If a count is below its minimum or ``false_alarm`` is not in (0, 1).

    Notes
    -----
    Vehtari et al. (2021) recommend R-hat below 1.01 for each quantity. With ``m = 2 C``
    split chains of ``n = D // 2`` draws of independent draws, the rank-normalised draws are
    close to standard normal, the between-chain variance ``B / n`` over the within-chain
    variance ``W`` is ``F / n`` with ``F ~ F(m - 1, m (n - 1))`` (Gelman and Rubin 1992), and
    ``R-hat^2 = (n - 1) / n + F / n``. The largest over ``d`` quantities of the larger of the
    bulk and tail R-hats (nearly independent: a mean and a mean absolute deviation) exceeds
    ``t`` with probability ``1 - (1 - p)^{2 d}``, ``p = P(F > n t^2 - n + 1)``; solving for
    ``p`` gives ``t``. For a thousand quantities the largest R-hat of exact, independent draws
    is above 1.01 more often than not at 4 x 250 draws, so "the largest R-hat <= 1.01" would
    call most exact chains unmixed. Chains whose draws are autocorrelated have larger
    R-hats even when mixed (``n`` is then effectively smaller); the bound stays that of
    independent draws, so it asks for chains that are nearly as good as independent
    draws, and the remedy for a failure is more draws per chain. NUTS needs them for the
    folded (tail) R-hat in particular: on a 1024-dimensional standard normal (the target an
    exact preconditioner leaves), 4 x 250 draws had bulk R-hat at most 1.003 and bulk ESS
    above 1300 (trajectories of about half an orbit send ``v`` to about ``-v``), but folded
    R-hat up to 1.04 and tail ESS near 300, because ``|v|`` is what such trajectories keep
    (``benchmarks/posterior_correction.py``, README).

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC, Bayesian Analysis 16,
    667-718, DOI 10.1214/20-BA1221. Gelman and Rubin (1992), Inference from iterative
    simulation using multiple sequences, Statistical Science 7, 457-472.

    Examples
    --------
    >>> round(rhat_threshold(4, 250, 1024), 4), rhat_threshold(4, 1000, 1)
    (1.0173, 1.01)
    """
    if num_chains < 1 or num_draws < 4 or num_quantities < 1:
        raise ConfigError(
            "rhat_threshold needs num_chains >= 1, num_draws >= 4 and num_quantities >= 1, "
            f"got {num_chains}, {num_draws}, {num_quantities}"
        )
    if not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    return max(
        RHAT_THRESHOLD, _largest_rhat_quantile(num_chains, num_draws, num_quantities, false_alarm)
    )


def _largest_rhat_quantile(
    num_chains: int, num_draws: int, num_quantities: int, false_alarm: float
) -> float:
    """Return the ``1 - false_alarm`` quantile of the largest R-hat of independent draws.

    See :func:`rhat_threshold`, Notes; without the floor at 1.01.
    """
    from scipy import stats  # scipy is an ArviZ and scikit-learn dependency

    m, n = 2 * num_chains, num_draws // 2
    per_test = -math.expm1(math.log1p(-false_alarm) / (2 * num_quantities))
    f = float(stats.f.isf(per_test, m - 1, m * (n - 1)))
    return math.sqrt((n - 1 + f) / n)


NUTS_TAIL_EFFICIENCY = 0.45
"""Tail ESS per draw of NUTS with the ``ppl-cvae sample --method nuts`` defaults, the smallest
over coordinates, as measured: 0.486 to 0.676 (median 0.557) over 14 runs of those defaults
(amortized start and preconditioner, 150 step-size-only warm-up iterations, 4 chains of
``nuts_draws_per_chain`` draws at the former 0.35) on crosshole (6 held-out observations,
0.486-0.566), gravity (4, 0.572-0.617), linear_gaussian (3, 0.513-0.676) and mt1d (1, 0.515);
the constant is the smallest, rounded down to a multiple of 0.05. Cut to the draws this
constant gives (783 per chain for 1024 coordinates), all 14 runs kept R-hat <= 1.01 (largest
1.0093) and min ESS >= 400 (``benchmarks/nuts_tail_efficiency.py``; README, "NUTS within 60
s per observation"). The former 0.35 came from 4 x 250 draws after 250 warm-up iterations
with mass adaptation, whose ESS estimates are lower. The folded R-hat follows the tail ESS,
so :func:`nuts_draws_per_chain` divides by it. Other settings (``adapt_mass_matrix``, a
``"prior..."`` preconditioner, a poor amortized fit) were not measured: pass
``tail_efficiency`` to :func:`nuts_draws_per_chain`, or more draws, where the verdict fails."""


def nuts_draws_per_chain(
    dim: int,
    num_chains: int = 4,
    *,
    tail_efficiency: float = NUTS_TAIL_EFFICIENCY,
    false_alarm: float = 0.1,
    min_draws: int = 250,
    max_draws: int = 2000,
) -> int:
    r"""Return the draws per chain that keep NUTS's largest R-hat of ``dim`` values under 1.01.

    Parameters
    ----------
    dim : int
        Sampled coordinates (cells of ``x``, or the parameters of a basis), each monitored by
        R-hat.
    num_chains : int, default 4
        Chains.
    tail_efficiency : float in (0, 1], default :data:`NUTS_TAIL_EFFICIENCY`
        Tail ESS per draw of the chains (the smallest over coordinates).
    false_alarm : float in (0, 1), default 0.1
        Probability that mixed chains still exceed 1.01 somewhere.
    min_draws, max_draws : int, default 250 and 2000
        Bounds on the answer (``max_draws`` is the budget: about 20 leapfrog steps per draw).

    Returns
    -------
    int
        ``ceil(n_eff / tail_efficiency)`` clipped to ``[min_draws, max_draws]``, with
        ``n_eff`` the fewest independent draws per chain whose largest rank-normalised split
        R-hat over ``dim`` quantities (bulk and folded) stays at or under 1.01 with probability
        ``1 - false_alarm`` (the quantile of :func:`rhat_threshold`, Notes). At 4 chains:
        783 for 1024 coordinates, 734 for 512, 347 for 4 (a single R-hat of 100 independent
        draws per chain already scatters by about 0.01).

    Raises
    ------
    ConfigError
        If a count is below 1, ``tail_efficiency`` is not in (0, 1], ``false_alarm`` is not
        in (0, 1) or ``min_draws > max_draws``.

    Notes
    -----
    The folded R-hat of autocorrelated chains is distributed about as that of
    ``tail ESS`` independent draws, so the R-hat of NUTS on many coordinates is limited by the
    tail ESS (trajectories of about half an orbit keep ``|x - median|``), not by the bulk ESS.
    The verdict of :func:`nuts_sample` (``rhat <= rhat_threshold``) is 1.01 at these lengths.

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat, Bayesian Analysis 16, DOI 10.1214/20-BA1221.

    Examples
    --------
    >>> nuts_draws_per_chain(1024), nuts_draws_per_chain(512), nuts_draws_per_chain(4)
    (783, 734, 347)
    """
    if dim < 1 or num_chains < 1 or min_draws < 4 or min_draws > max_draws:
        raise ConfigError(
            "nuts_draws_per_chain needs dim >= 1, num_chains >= 1 and 4 <= min_draws <= "
            f"max_draws, got {dim}, {num_chains}, {min_draws}, {max_draws}"
        )
    if not 0.0 < tail_efficiency <= 1.0:
        raise ConfigError(f"tail_efficiency must be in (0, 1], got {tail_efficiency}")
    if not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    n_eff = 4
    while (
        n_eff < max_draws
        and _largest_rhat_quantile(num_chains, n_eff, dim, false_alarm) > RHAT_THRESHOLD
    ):
        n_eff += 2
    return int(min(max(math.ceil(n_eff / tail_efficiency), min_draws), max_draws))


_MIN_WHITENED_VARIANCE = 1e-8
"""Floor of the eigenvalues of the amortized covariance in prior-whitened coordinates."""


def preconditioner_draws(dim: int, num_chains: int = 1) -> int:
    """Return how many amortized draws to pass as ``init`` for ``dim`` sampled coordinates.

    20 per coordinate, so that their covariance (the preconditioner) is well estimated, at
    most ``2^26`` values in all, at least 2000 and at least ``num_chains``. Draws are cheap
    next to NUTS.

    Examples
    --------
    >>> preconditioner_draws(1024), preconditioner_draws(4096), preconditioner_draws(4)
    (20480, 16384, 2000)
    """
    return max(min(20 * dim, 2**26 // dim), 2000, num_chains)


class _MomentumRecorder(Messenger):
    """Collect the values of NUTS's momentum sample sites (named ``r_t=...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[torch.Tensor] = []

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        if str(msg["name"]).startswith("r_t="):
            self.values.append(msg["value"])


class _RecordingNUTS(NUTS):
    """Pyro's NUTS that records each transition's energy and number of leapfrog steps.

    ``energy_fn`` is the potential without the evaluation counter; ``counter`` is the
    one-element list the counted potential increments (one per leapfrog step); ``recent``
    the list of ``(v, U(v))`` that the counted potential appends to: the state a transition
    starts from is a point of the previous transition's trajectory, whose potential is then
    looked up there instead of evaluated again (one evaluation per transition saved, about
    6% of them at 15 leapfrog steps per transition).
    """

    def __init__(
        self,
        potential_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        energy_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        counter: list[int],
        recent: list[tuple[torch.Tensor, float]],
        **kwargs: Any,
    ) -> None:
        super().__init__(potential_fn=potential_fn, **kwargs)
        self._energy_fn = energy_fn
        self._counter = counter
        self._recent = recent
        self.energy: list[float] = []
        self.n_steps: list[int] = []

    def _potential_at(self, params: dict[str, torch.Tensor]) -> float:
        """``U`` at ``params``: from the previous trajectory's evaluations, else evaluated."""
        v = params["v"]
        for point, value in reversed(self._recent):
            if torch.equal(point, v):
                return value
        with torch.no_grad():
            return float(self._energy_fn(params))

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one NUTS transition from ``params`` and record its energy and its steps."""
        potential = self._potential_at(params)
        self._recent.clear()
        before = self._counter[0]
        recorder = _MomentumRecorder()
        with recorder:
            out: dict[str, torch.Tensor] = super().sample(params)
        # the momentum is drawn unscaled, u ~ N(0, I): kinetic energy u^T u / 2 for any mass
        kinetic = 0.5 * sum(float((u.double() ** 2).sum()) for u in recorder.values)
        self.energy.append(potential + kinetic)
        self.n_steps.append(self._counter[0] - before)
        return out


@dataclass(frozen=True)
class MCMCResult:
    """NUTS draws of ``x`` for one observation.

    Attributes
    ----------
    x : Tensor, shape (chains, draws, *x_shape)
        Posterior draws in units of ``x``.
    rhat : float
        Largest rank-normalised split R-hat over the sampled coordinates.
    min_ess : float
        Smallest bulk effective sample size over the sampled coordinates (all chains).
    num_evaluations : int
        Evaluations of the potential and its gradient, warm-up included, all chains (the
        cost: about one per leapfrog step).
    divergences : int
        Number of divergent transitions after warm-up.
    seconds : float
        Wall-clock time of the preconditioner (the covariance of the amortized draws and its
        Cholesky factor), warm-up and sampling.
    sample_stats : dict of str to ndarray, each of shape (chains, draws)
        Per-draw sampler statistics with ArviZ's names: ``diverging`` (bool, from
        ``arviz.from_pyro``), ``energy`` (Hamiltonian ``U(q) + u^T u / 2`` at the start of the
        transition that produced the draw, after the momentum refresh, in nats, with
        ``U = -log p(x) - log p(y | x)`` up to the Jacobian constant of the preconditioner),
        ``n_steps`` (leapfrog steps of the transition), ``tree_depth`` (``ceil(log2(n_steps +
        1))``, the depth of the NUTS tree that holds them) and ``step_size`` (after
        adaptation, in the preconditioned coordinates).
    rhat_threshold : float
        The R-hat bound the chains are judged by (:func:`rhat_threshold`).
    cpu_seconds : float
        Processor time of the chains (warm-up and sampling), summed over the processes that
        ran them: on an otherwise idle machine ``seconds`` is about ``cpu_seconds /
        min(num_cores, num_chains)`` plus the workers' start.
    potential_dtype : {"float64", "float32"}
        The precision the potential was evaluated in on every chain (``"float64"`` if any
        chain fell back to it; see ``nuts_sample(potential_dtype=...)``).
    """

    x: torch.Tensor
    rhat: float
    min_ess: float
    num_evaluations: int
    divergences: int
    seconds: float
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    rhat_threshold: float = RHAT_THRESHOLD
    cpu_seconds: float = 0.0
    potential_dtype: str = "float64"

    @property
    def converged(self) -> bool:
        """Whether ``rhat <= rhat_threshold`` and there were no divergences."""
        return self.rhat <= self.rhat_threshold and self.divergences == 0


def _preconditioner(
    precondition: str, start: torch.Tensor, prior: torch.distributions.MultivariateNormal | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``mu`` ``(k,)``, the factor ``L`` ``(k, k)`` of ``theta = mu + L v`` and the starts.

    ``start``: the amortized draws in the sampled coordinates, ``(N, k)``, float64; ``prior``
    the Gaussian prior of those coordinates, required for the ``"prior..."`` options (see the
    module docstring). The starts ``(N, k)`` are ``start`` itself, except for the ``"prior..."``
    options: there each draw's deviation from the draws' mean, in ``w = L0^-1 (theta - m)``,
    is shrunk along the eigenvectors of the draws' covariance ``C_w`` by
    ``sqrt(min(lambda, 1) / lambda)``, so that the starts have the clipped covariance. An
    amortized draw's white noise is far out in the prior's rough directions (``|w|^2`` of
    thousands on mt1d), where a chain would spend its warm-up coming back.
    """
    dim = start.shape[1]
    eye = torch.eye(dim, dtype=start.dtype)
    if precondition == "none":
        return start.new_zeros(dim), eye, start
    if precondition == "amortized":
        if len(start) > 1:  # shrunk: N draws in dim >= N dimensions give a singular estimate
            cov = ledoit_wolf(start)[0].to(start.dtype)
        else:
            cov = eye
        shrink = 1e-9 * float(cov.diagonal().mean().clamp_min(1e-12))
        return start.mean(0), torch.linalg.cholesky(cov + shrink * eye), start
    assert prior is not None  # checked by nuts_sample
    loc, chol0 = prior.loc.to(start), prior.scale_tril.to(start)
    if len(start) < 2:
        return loc, chol0, start
    # the draws' covariance in w = L0^-1 (theta - m), its eigenvalues clipped at 1
    w = torch.linalg.solve_triangular(chol0, (start - loc).T, upper=False).T  # (N, k)
    mean_w = w.mean(0)
    lam, vec = torch.linalg.eigh(torch.cov(w.T).reshape(dim, dim))  # ascending
    clipped = lam.clamp(_MIN_WHITENED_VARIANCE, 1.0)
    unseen = max(dim - (len(start) - 1), 0)  # the null space of N - 1 < k centred draws
    clipped[:unseen] = 1.0
    shrink = (clipped / lam.clamp_min(_MIN_WHITENED_VARIANCE)).clamp(max=1.0).sqrt()
    shrink[:unseen] = 1.0
    w_start = mean_w + ((w - mean_w) @ vec * shrink) @ vec.T
    starts = loc + w_start @ chol0.T
    if precondition == "prior":
        return loc, chol0, starts
    factor = chol0 @ (vec * clipped.sqrt())  # theta = loc + L0 (mean_w + V Lambda^(1/2) v)
    cov = factor @ factor.T
    cov = 0.5 * (cov + cov.T) + 1e-12 * float(cov.diagonal().mean()) * torch.eye(dim).to(cov)
    return loc + chol0 @ mean_w, torch.linalg.cholesky(cov), starts


def run_whitened_chain(
    kernel: NUTS,
    start: torch.Tensor,
    mu: torch.Tensor,
    tril: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    seed: int,
) -> tuple[torch.Tensor, int, MCMC]:
    """Run one chain of ``kernel`` in whitened coordinates and return it in the original ones.

    The kernel's potential takes ``{"v": v}`` with ``theta = mu + L v`` (``L = tril``, the
    preconditioner's Cholesky factor; Hoffman and Gelman 2014 with a fixed dense metric). The
    chain starts at ``v0 = L^-1 (start - mu)`` after seeding Pyro's RNG with ``seed``.

    Parameters
    ----------
    kernel : pyro.infer.NUTS
    start, mu : Tensor, shape (dim,)
    tril : Tensor, shape (dim, dim)
    num_samples, warmup_steps, seed : int

    Returns
    -------
    draws : Tensor, shape (num_samples, dim)
        ``theta`` after warm-up.
    divergences : int
        Divergent transitions after warm-up.
    mcmc : pyro.infer.MCMC
        The run (for ``az.from_pyro`` and the kernel's statistics).
    """
    pyro.set_rng_seed(seed)
    v0 = torch.linalg.solve_triangular(tril, (start - mu).unsqueeze(-1), upper=False)
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        initial_params={"v": v0.squeeze(-1)},
        disable_progbar=True,
    )
    mcmc.run()
    draws = mu + mcmc.get_samples()["v"] @ tril.T
    return draws, len(mcmc.diagnostics()["divergences"]["chain 0"]), mcmc


@dataclass(frozen=True)
class _ChainJob:
    """Everything one chain needs, picklable (it travels to a worker process)."""

    problem: Problem
    y: torch.Tensor  # (*y_shape,) float64
    start: torch.Tensor  # (dim,) the chain's start in theta
    checks: torch.Tensor  # (k, dim) points where a traced potential is compared with eager
    mu: torch.Tensor  # (dim,)
    tril: torch.Tensor  # (dim, dim)
    prior_loc: torch.Tensor | None  # (dim,) the Gaussian prior of theta, when it is one
    prior_tril: torch.Tensor | None  # (dim, dim)
    prior_whitened: bool  # precondition="prior": v is the prior-whitened w itself
    num_samples: int
    warmup_steps: int
    seed: int
    max_tree_depth: int
    adapt_mass_matrix: bool
    jit_compile: bool
    potential_dtype: torch.dtype = torch.float64


@dataclass(frozen=True)
class _ChainOutput:
    """What one chain hands back: draws in theta and per-draw statistics."""

    draws: torch.Tensor  # (num_samples, dim)
    diverging: np.ndarray  # (num_samples,) bool
    energy: np.ndarray
    n_steps: np.ndarray
    step_size: float
    num_evaluations: int
    jit_fallback: str | None  # why the eager potential was used although jit was asked
    dtype_fallback: str | None  # why float64 was used although float32 was asked
    cpu_seconds: float  # processor time of this process while it ran the chain


def _log_prior_theta(problem: Problem, theta: torch.Tensor) -> torch.Tensor:
    """``log p(theta)`` (nats, float64; shape ``theta.shape[:-1]``) through the problem."""
    par = problem.parameterisation()
    if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
        return par.log_prior(theta.float()).double()
    x = theta.reshape(*theta.shape[:-1], *problem.x_shape)
    return checked_log_prior(problem, x).double()


def _log_target(problem: Problem, y64: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta -> log p(x) + log p(y | x)`` (nats, float64) of one observation."""
    par = problem.parameterisation()
    x_shape = tuple(problem.x_shape)

    def log_target(theta: torch.Tensor) -> torch.Tensor:
        if par is not None:
            x = par.to_x(theta.float())
        else:
            x = theta.reshape(*theta.shape[:-1], *x_shape)
        return _log_prior_theta(problem, theta) + checked_log_likelihood(problem, x, y64)

    return log_target


def _checked_gaussian_prior(
    problem: Problem, theta: torch.Tensor, precondition: str
) -> torch.distributions.MultivariateNormal | None:
    """Return ``problem.gaussian_prior()`` if its density is the problem's prior at ``theta``.

    ``theta``: ``(N, k)`` points in the sampled coordinates (the chains' starts). A subclass
    that overrides ``log_prior`` but inherits ``gaussian_prior`` (e.g. from
    ``LinearGaussian``) would otherwise be sampled under the wrong prior: where the two
    disagree by more than ``1e-3 (1 + |log p|)`` nats at a point, the prior is evaluated
    through ``log_prior`` instead, with a warning, or, for the ``"prior..."`` preconditioners,
    a :class:`ConfigError`.
    """
    prior = problem.gaussian_prior()
    if prior is None:
        return None
    with torch.no_grad():
        stated = _log_prior_theta(problem, theta)
        gaussian = prior.log_prob(theta.to(prior.loc))
    if bool(((stated - gaussian).abs() <= 1e-3 * (1.0 + gaussian.abs())).all()):
        return prior
    message = (
        f"problem {problem.name!r}: gaussian_prior() disagrees with log_prior at the chains' "
        f"starts (by up to {float((stated - gaussian).abs().max()):.3g} nats); override "
        "gaussian_prior() to return None where the prior is not that Gaussian"
    )
    if precondition in ("prior", "prior-amortized"):
        raise ConfigError(f"precondition={precondition!r}: {message}")
    warnings.warn(f"{message}; the prior is evaluated through log_prior", stacklevel=3)
    return None


def _potential_dtype(value: PotentialDtype | torch.dtype) -> torch.dtype:
    """Return the torch dtype of ``potential_dtype`` (``"float64"``, ``"float32"`` or a dtype).

    Raises
    ------
    ConfigError
        If it is neither float64 nor float32.
    """
    dtype = POTENTIAL_DTYPES.get(value) if isinstance(value, str) else value
    if dtype not in (torch.float64, torch.float32):
        raise ConfigError(
            f"potential_dtype must be one of {tuple(POTENTIAL_DTYPES)} (or torch.float64, "
            f"torch.float32), got {value!r}"
        )
    return dtype


@dataclass(frozen=True)
class _GaussianPriorTerm:
    """The Gaussian prior as a quadratic form in ``v``, computed once per chain (float64).

    With ``w = L_0^-1 (theta - m) = b + A v`` (``A = L_0^-1 L``, ``b = L_0^-1 (mu - m)``),
    ``-|w|^2 / 2 = -|b|^2 / 2 - (c^T v + v^T H v / 2)`` with ``H = A^T A`` and ``c = A^T b``.
    ``hess`` is None for ``precondition="prior"`` (``w = v``, ``H = I``, ``c = 0``).
    """

    const: float  # log normaliser of the prior minus |b|^2 / 2, nats
    hess: torch.Tensor | None  # (dim, dim) H = A^T A, symmetric
    lin: torch.Tensor | None  # (dim,) c = A^T b


def _gaussian_prior_term(job: _ChainJob) -> _GaussianPriorTerm | None:
    """Return the quadratic form of the Gaussian prior in ``v`` of a chain job, or None."""
    if job.prior_loc is None or job.prior_tril is None:
        return None
    chol0 = job.prior_tril
    dim = len(job.mu)
    const = -float(chol0.diagonal().log().sum()) - 0.5 * dim * math.log(2 * math.pi)
    if job.prior_whitened:
        return _GaussianPriorTerm(const=const, hess=None, lin=None)
    a_mat = torch.linalg.solve_triangular(chol0, job.tril, upper=False)
    b_vec = torch.linalg.solve_triangular(
        chol0, (job.mu - job.prior_loc).unsqueeze(-1), upper=False
    ).squeeze(-1)
    hess = a_mat.T @ a_mat
    return _GaussianPriorTerm(
        const=const - 0.5 * float(b_vec @ b_vec),
        hess=0.5 * (hess + hess.T),
        lin=a_mat.T @ b_vec,
    )


class _TriangularProducts:
    """Products with a fixed lower-triangular ``L`` and a fixed symmetric ``H``, ``(k, k)``.

    ``L v`` and ``L^T g`` by BLAS ``trmv`` and ``H v`` by ``symv`` (SciPy's BLAS wrappers),
    which read half of the matrix: on crosshole (``k = 1024``, 1 thread) the three products
    took 0.49 ms in float64 and 0.29 ms in float32 against 0.93 and 0.48 ms with torch's dense
    ``mv`` (``benchmarks/nuts_potential.py --profile``). With ``blas=False`` (a traced
    potential: ``torch.jit.trace`` would record a NumPy call's result as a constant), or for
    tensors that are not on the CPU or not float32/float64, torch's dense products are used.
    The results are the same products up to rounding.
    """

    def __init__(self, tril: torch.Tensor, hess: torch.Tensor | None, blas: bool) -> None:
        from scipy.linalg import blas as scipy_blas  # scipy: an ArviZ and scikit-learn dependency

        self.tril, self.hess = tril, hess
        self.blas = blas and tril.device.type == "cpu" and tril.dtype in _BLAS_PREFIX
        if self.blas:
            prefix = _BLAS_PREFIX[tril.dtype]
            self._trmv = getattr(scipy_blas, prefix + "trmv")
            self._symv = getattr(scipy_blas, prefix + "symv")
            self._tril_f = np.asfortranarray(tril.numpy())  # Fortran order: no copy per call
            self._hess_f = None if hess is None else np.asfortranarray(hess.numpy())

    def tril_mv(self, vec: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Return ``L v`` (``L^T v`` with ``transpose``), no gradient; ``vec`` ``(k,)``."""
        if not self.blas:
            return (vec @ self.tril if transpose else self.tril @ vec).detach()
        out = self._trmv(self._tril_f, vec.detach().numpy(), lower=1, trans=int(transpose))
        return torch.from_numpy(out)

    def hess_mv(self, vec: torch.Tensor) -> torch.Tensor:
        """Return ``H v``, no gradient; ``vec`` ``(k,)``."""
        assert self.hess is not None
        if not self.blas or self._hess_f is None:
            return (self.hess @ vec).detach()
        return torch.from_numpy(self._symv(1.0, self._hess_f, vec.detach().numpy(), lower=1))

    def affine(self, mu: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Return ``mu + L v``, differentiable in ``v`` (gradient ``L^T g``)."""
        if not self.blas:
            return mu + self.tril @ vec
        return mu + _TrilMatVec.apply(vec, self)


_BLAS_PREFIX = {torch.float64: "d", torch.float32: "s"}


class _TrilMatVec(torch.autograd.Function):
    """``L v`` by :class:`_TriangularProducts`, with the gradient ``L^T g`` by ``trmv``."""

    @staticmethod
    def forward(ctx: Any, vec: torch.Tensor, products: _TriangularProducts) -> torch.Tensor:
        """Return ``L v``."""
        ctx.products = products
        return products.tril_mv(vec)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Return ``L^T g`` for ``v``."""
        return ctx.products.tril_mv(grad.contiguous(), transpose=True), None


def _log_target_v(
    job: _ChainJob,
    dtype: torch.dtype = torch.float64,
    prior_term: _GaussianPriorTerm | None = None,
    blas: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> log p(x) + log p(y | x)`` (nats, float64) at ``theta = mu + L v`` of a chain job.

    ``v`` (shape ``(dim,)``) is float64 (the chain's state); the potential is evaluated in
    ``dtype``: ``v``, ``mu``, ``L`` and the prior's quadratic form are cast to it (the fixed
    matrices once, here), ``x`` is ``mu + L v`` in ``dtype``, the problem's
    ``log_likelihood`` returns float64 (its residual is formed in float64) and the constant
    terms are added in float64.

    With a Gaussian prior of ``theta`` (``job.prior_loc``, ``job.prior_tril``: ``N(m, L_0
    L_0^T)``) the prior is ``-|w|^2 / 2`` plus its constant, ``w = L_0^-1 (theta - m) = b + A
    v``, evaluated as the quadratic form ``-|b|^2 / 2 - c^T v - v^T H v / 2``
    (:class:`_GaussianPriorTerm`, ``prior_term``; computed here when not given) whose gradient
    ``-(c + H v)`` reuses the product ``H v`` of the value: one matrix-vector product per
    evaluation instead of two (``A v`` and ``A^T`` times the gradient), the same density to
    rounding. ``w = v`` for ``precondition="prior"``. Otherwise the prior is evaluated
    through ``problem.log_prior``. The products with ``L`` and ``H`` read half of each matrix
    (BLAS ``trmv`` and ``symv``, :class:`_TriangularProducts`) unless ``blas`` is False.
    """
    problem = as_problem(job.problem)
    mu = job.mu.to(dtype)
    if prior_term is None:
        prior_term = _gaussian_prior_term(job)
    if prior_term is None:
        products = _TriangularProducts(job.tril.to(dtype), None, blas)
        log_target = _log_target(problem, job.y)

        def log_target_v(v: torch.Tensor) -> torch.Tensor:
            return log_target(products.affine(mu, v.to(dtype)))

        return log_target_v
    par = problem.parameterisation()
    x_shape = tuple(problem.x_shape)
    const = prior_term.const
    hess = None if prior_term.hess is None else prior_term.hess.to(dtype)
    lin = None if prior_term.lin is None else prior_term.lin.to(dtype)
    products = _TriangularProducts(job.tril.to(dtype), hess, blas)

    def log_likelihood(theta: torch.Tensor) -> torch.Tensor:
        if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
            return checked_log_likelihood(problem, par.to_x(theta.float()), job.y)
        x = theta.reshape(*theta.shape[:-1], *x_shape)
        return checked_log_likelihood(problem, x, job.y)

    def log_target_gaussian(v: torch.Tensor) -> torch.Tensor:
        vd = v.to(dtype)
        if hess is None or lin is None:  # precondition="prior": w = v
            quad = 0.5 * (vd * vd).sum()
        else:
            # c^T v + v^T H v / 2 with the gradient c + H v from the one product H v: the
            # detached hv makes autograd return (c + hv) instead of computing H^T (...) again
            hv = products.hess_mv(vd)
            quad = ((lin + hv) * vd).sum() - 0.5 * (hv * vd).sum().detach()
        return const - quad.double() + log_likelihood(products.affine(mu, vd))

    return log_target_gaussian


class _EnergyWithGradient(torch.autograd.Function):
    """``U(v)`` whose gradient was computed with its value: one autograd node per evaluation.

    ``evaluate`` maps ``v`` ``(dim,)`` float64 to ``(U, dU/dv)`` (a 0-d and a ``(dim,)``
    float64 tensor); the backward pass scales the stored gradient by the incoming one (1.0
    when Pyro's ``potential_grad`` differentiates ``U``: exact).
    """

    @staticmethod
    def forward(
        ctx: Any, v: torch.Tensor, evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    ) -> torch.Tensor:
        """Return ``U(v)``; keep ``dU/dv`` for the backward pass."""
        value, grad = evaluate(v)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Return ``grad_out * dU/dv`` for ``v``."""
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def _grad_or_zero(value: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``d value / d theta`` (contiguous), zeros where ``value`` does not depend on ``theta``."""
    if not value.requires_grad:
        return torch.zeros_like(theta)
    (g,) = torch.autograd.grad(value, theta, allow_unused=True)
    return torch.zeros_like(theta) if g is None else g.contiguous()


def _fused_energy(
    job: _ChainJob,
    dtype: torch.dtype,
    prior_term: _GaussianPriorTerm | None,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``v -> U(v) = -log p(x) - log p(y | x)``, the same numbers as ``-_log_target_v``.

    The potential of :func:`_log_target_v` (BLAS products) with its gradient assembled by
    hand around one ``torch.autograd.grad`` of the problem's own part with respect to
    ``theta = mu + L v`` (a leaf): ``dU/dv = c + H v - L^T g`` with ``g = d log p / d
    theta`` (the likelihood, plus the prior where it is not the Gaussian quadratic form), the
    same operations in the same precision as autograd runs through :func:`_log_target_v`
    (whose backward is linear in its seed, so ``L^T (-g) = -(L^T g)`` to the bit), without
    the graph of the preconditioner's products, the casts and the custom ``L v`` node that
    autograd otherwise builds and walks on every evaluation. Returned through
    :class:`_EnergyWithGradient`, so Pyro's ``potential_grad`` (value, then
    ``torch.autograd.grad``) gets the same value and gradient. None where the products are
    not BLAS's (not CPU float32/float64): :func:`_log_target_v` is used there.
    """
    problem = as_problem(job.problem)
    products = _TriangularProducts(
        job.tril.to(dtype),
        None if prior_term is None or prior_term.hess is None else prior_term.hess.to(dtype),
        True,
    )
    if not products.blas:
        return None
    mu = job.mu.to(dtype)
    if prior_term is None:
        log_target = _log_target(problem, job.y)

        def evaluate(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            theta = (mu + products.tril_mv(v.detach().to(dtype))).requires_grad_(True)
            with torch.enable_grad():
                value = log_target(theta)
            grad = -products.tril_mv(_grad_or_zero(value, theta), transpose=True)
            return -value.detach(), grad.to(torch.float64)

        return lambda v: _EnergyWithGradient.apply(v, evaluate)
    par = problem.parameterisation()
    x_shape = tuple(problem.x_shape)
    const = prior_term.const
    lin = None if prior_term.lin is None else prior_term.lin.to(dtype)
    y = job.y

    def evaluate_gaussian(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vd = v.detach().to(dtype)
        theta = (mu + products.tril_mv(vd)).requires_grad_(True)
        with torch.enable_grad():
            if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
                value = checked_log_likelihood(problem, par.to_x(theta.float()), y)
            else:
                x = theta.reshape(*theta.shape[:-1], *x_shape)
                value = checked_log_likelihood(problem, x, y)
        grad_likelihood = products.tril_mv(_grad_or_zero(value, theta), transpose=True)
        if lin is None:  # precondition="prior": w = v; autograd's order of the three terms
            quad = 0.5 * (vd * vd).sum()
            half = 0.5 * vd
            grad = (half - grad_likelihood) + half
        else:
            hv = products.hess_mv(vd)
            grad_quad = lin + hv
            quad = (grad_quad * vd).sum() - 0.5 * (hv * vd).sum()
            grad = grad_quad - grad_likelihood
        return -(const - quad.double() + value.detach()), grad.to(torch.float64)

    return lambda v: _EnergyWithGradient.apply(v, evaluate_gaussian)


def _trace_energy(
    energy: Callable[[torch.Tensor], torch.Tensor], checks: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    """Trace ``energy`` (``v -> U``) with ``torch.jit.trace``; check it against ``energy``.

    Returns the traced function and None, or ``energy`` itself and the reason it was kept:
    tracing failed, or the traced value or gradient differs from the eager one at a row of
    ``checks`` (by more than ``1e-9`` relative: replayed operations are the same operations).
    """
    try:
        with warnings.catch_warnings():
            # shape checks in the problems convert tensors to Python booleans (TracerWarning);
            # torch 2.x deprecates torch.jit.trace (DeprecationWarning); neither is the user's
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(energy, (checks[0].clone(),), check_trace=False)
    except (RuntimeError, TypeError, ValueError) as err:
        return energy, f"torch.jit.trace failed: {err}"
    for point in checks:
        values = []
        for fn in (energy, traced):
            v = point.clone().requires_grad_(True)
            u = fn(v)
            (grad,) = torch.autograd.grad(u, v)
            values.append((u.detach(), grad))
        (u0, g0), (u1, g1) = values
        scale = 1e-9 * (1.0 + float(u0.abs()))
        gscale = 1e-9 * (1.0 + float(g0.abs().max()))
        if not (
            torch.isfinite(u0)
            and float((u1 - u0).abs()) <= scale
            and float((g1 - g0).abs().max()) <= gscale
        ):
            return energy, (
                "the traced potential differs from the eager one at a chain's start (its "
                "Python control flow depends on x)"
            )
    return traced, None


FLOAT32_POTENTIAL_TOLERANCE = 0.01
"""Largest difference, in nats, between the float32 and the float64 potential at the chains'
starts for ``potential_dtype="float32"`` to be used (else float64 is, with a warning).

NUTS with a potential ``U + e`` (``e`` the rounding error, a deterministic function of the
float64 state) samples ``exp(-U - e)`` exactly: the leapfrog map stays volume-preserving and
reversible for any deterministic gradient, and the trajectory's draw is weighted by
``exp(-H)`` of the same ``U + e``. If ``|e| <= delta``, the density ratio to the float64 target
is within ``exp(+-2 delta)``, so the total variation distance is at most about ``delta``: 0.01
is below the Monte Carlo error of any mean estimated from fewer than ``10^4`` effective draws
(``1 / sqrt(ESS)`` sd). The typical ``|e|`` is far smaller (README, "NUTS within 60 s per
observation": about ``1e-4`` nats on crosshole)."""


def _check_low_precision(
    energy: Callable[[torch.Tensor], torch.Tensor],
    low: Callable[[torch.Tensor], torch.Tensor],
    checks: torch.Tensor,
) -> str | None:
    """Compare a lower-precision potential with the float64 one at the rows of ``checks``.

    Returns None when the values agree within :data:`FLOAT32_POTENTIAL_TOLERANCE` nats and the
    gradients within 1% of the largest float64 component at every row, else the reason (the
    lower precision is then not used).
    """
    for point in checks:
        values = []
        for fn in (energy, low):
            v = point.clone().requires_grad_(True)
            try:
                u = fn(v)
                (grad,) = torch.autograd.grad(u, v)
            except Exception as err:  # noqa: BLE001 - a user's problem may refuse float32
                if fn is energy:
                    raise
                return f"the float32 potential raised {exception_summary(err)}"
            values.append((float(u.detach()), grad))
        (u0, g0), (u1, g1) = values
        if not math.isfinite(u1) or abs(u1 - u0) > FLOAT32_POTENTIAL_TOLERANCE:
            return (
                f"the float32 potential differs from the float64 one by {abs(u1 - u0):.3g} nats "
                f"at a chain's start (tolerance {FLOAT32_POTENTIAL_TOLERANCE})"
            )
        if float((g1 - g0).abs().max()) > 0.01 * float(g0.abs().max()):
            return (
                "the float32 gradient of the potential differs from the float64 one by more "
                "than 1% of its largest component at a chain's start"
            )
    return None


def _run_chain(job: _ChainJob) -> _ChainOutput:
    """Run one NUTS chain of :func:`nuts_sample` (in this process or in a worker)."""
    import time

    cpu = time.process_time()
    prior_term = _gaussian_prior_term(job)
    blas = not job.jit_compile  # a trace would record the BLAS calls' results as constants
    log_target_v = _log_target_v(job, torch.float64, prior_term, blas)
    mu, tril = job.mu, job.tril
    checks = torch.linalg.solve_triangular(tril, (job.checks - mu).T, upper=False).T
    checks = checks.contiguous()

    def energy_v(v: torch.Tensor) -> torch.Tensor:
        return -log_target_v(v)

    fn: Callable[[torch.Tensor], torch.Tensor] = energy_v
    dtype_fallback = None
    if job.potential_dtype != torch.float64:
        low = _log_target_v(job, job.potential_dtype, prior_term, blas)

        def energy_low(v: torch.Tensor) -> torch.Tensor:
            return -low(v)

        dtype_fallback = _check_low_precision(energy_v, energy_low, checks)
        if dtype_fallback is None:
            fn = energy_low

    fallback = None
    if job.jit_compile:
        fn, fallback = _trace_energy(fn, checks)
    else:  # the same value and gradient, without autograd's graph around the problem's part
        fused = _fused_energy(
            job, job.potential_dtype if fn is not energy_v else torch.float64, prior_term
        )
        fn = fused if fused is not None else fn
    count = [0]
    recent: list[tuple[torch.Tensor, float]] = []

    def energy(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(params["v"])

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        count[0] += 1
        value = fn(params["v"])
        recent.append((params["v"].detach().clone(), float(value.detach())))
        return value

    kernel = _RecordingNUTS(
        potential,
        energy,
        count,
        recent,
        max_tree_depth=job.max_tree_depth,
        target_accept_prob=0.8,
        adapt_mass_matrix=job.adapt_mass_matrix,
    )
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # (sklearn)

    # SciPy's BLAS (the products above) runs on one thread: matrix-vector products are bound by
    # memory, not arithmetic, and a thread count changes their rounding, so that a chain would
    # differ between this process and a worker process (num_cores) with fewer threads
    # Pyro's argument checks of the distributions NUTS builds inside its tree (a Bernoulli per
    # subtree merge, the momentum's Normal) are off during the chain: their parameters come
    # from Pyro's own arithmetic on the energies (a NaN energy is set to inf before), and the
    # checks cost about 3% of an evaluation on linear_gaussian; the draws are the same
    with threadpool_limits(limits=1, user_api="blas"), pyro.validation_enabled(False):
        draws, _, mcmc = run_whitened_chain(
            kernel, job.start, mu, tril, job.num_samples, job.warmup_steps, job.seed
        )
    # laid out as arviz.from_pyro lays out Pyro's divergences (indices of post-warm-up draws)
    diverging = np.zeros(job.num_samples, dtype=bool)
    diverging[mcmc.diagnostics()["divergences"]["chain 0"]] = True
    return _ChainOutput(
        draws=draws.detach(),
        diverging=diverging,
        energy=np.asarray(kernel.energy[-job.num_samples :], dtype=np.float64),
        n_steps=np.asarray(kernel.n_steps[-job.num_samples :], dtype=np.int64),
        step_size=float(kernel.step_size),
        num_evaluations=count[0],
        jit_fallback=fallback,
        dtype_fallback=dtype_fallback,
        cpu_seconds=time.process_time() - cpu,
    )


def _init_worker(num_threads: int) -> None:
    torch.set_num_threads(num_threads)


_FORKED_JOBS: list[_ChainJob] = []
"""The jobs a forked worker inherits (set by :func:`_run_chains` around the pool's life)."""


def _run_forked_chain(index: int) -> _ChainOutput:
    """Run the inherited job ``index`` (in a forked worker: the jobs are not pickled)."""
    return _run_chain(_FORKED_JOBS[index])


def _stop_tqdm_monitors() -> None:
    """Stop tqdm's monitor threads, so that only this thread is left to fork.

    tqdm starts a daemon thread (``TMonitor``) with its first progress bar and keeps it;
    Pyro's MCMC and our progress bars start one. ``exit`` wakes and joins it, and tqdm starts
    a new one with its next bar (it replaces a monitor that no longer reports).
    """
    if "tqdm" not in sys.modules:
        return
    from tqdm._monitor import TMonitor

    for thread in threading.enumerate():
        if isinstance(thread, TMonitor):
            thread.exit()


def _start_method() -> str:
    """Return how chain workers start: ``"fork"`` where that is safe, else ``"spawn"``.

    A fork copies the parent's memory, so the worker needs no import (about 0.05 s against
    3-5 s for ``spawn``), but it copies only the calling thread: a lock held by another
    thread stays locked in the child, and CUDA cannot be used in a forked child once the
    parent initialised it. So fork only on Linux (macOS frameworks are not fork-safe; Windows
    has no fork), with CUDA uninitialised and this the only Python thread. torch's own
    intra-op thread pool is re-created in the child (torch registers ``pthread_atfork``), as
    in a ``DataLoader`` worker, which is forked the same way.

    Returns
    -------
    str
        ``"fork"`` or ``"spawn"``, a start method of :mod:`multiprocessing`.
    """
    if (
        sys.platform.startswith("linux")
        and threading.active_count() == 1
        and not torch.cuda.is_initialized()
    ):
        return "fork"
    return "spawn"


def _run_chains(jobs: list[_ChainJob], num_cores: int) -> list[_ChainOutput]:
    """Run the chains one after the other, or on ``num_cores`` worker processes."""
    global _FORKED_JOBS
    workers = min(num_cores, len(jobs))
    if workers > 1:
        _stop_tqdm_monitors()
    method = _start_method()
    if workers > 1 and method == "spawn":
        try:
            pickle.dumps(jobs[0].problem)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            warnings.warn(
                f"num_cores={num_cores} asked for chains in worker processes, but the problem "
                f"{type(jobs[0].problem).__name__} cannot be pickled ({err}); the chains run "
                "one after the other in this process (define the problem class in an "
                "importable module to run them in parallel)",
                stacklevel=3,
            )
            workers = 1
    if workers <= 1:
        return [_run_chain(job) for job in jobs]
    threads = max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(threads,),
    )
    if method == "spawn":
        with pool:
            return list(pool.map(_run_chain, jobs))
    _FORKED_JOBS = jobs  # the workers fork on the first submit and inherit this list
    try:
        with pool:
            return list(pool.map(_run_forked_chain, range(len(jobs))))
    finally:
        _FORKED_JOBS = []


def nuts_sample(
    problem: Problem,
    y: torch.Tensor,
    init: torch.Tensor,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    precondition: Preconditioner = "amortized",
    num_chains: int = 4,
    max_tree_depth: int = 8,
    seed: int = 0,
    adapt_mass_matrix: bool = True,
    num_cores: int = 1,
    jit_compile: bool = False,
    potential_dtype: PotentialDtype | torch.dtype = "float64",
) -> MCMCResult:
    """Sample ``p(x | y)`` of the problem with NUTS, chains started at ``init``.

    Parameters
    ----------
    problem : Problem
        With a prior density (``has_prior_density``) and a noise model.
    y : Tensor, shape y_shape
        One observation, units of ``y``.
    init : Tensor, shape (N, *x_shape)
        Draws that start the chains (one chain per row), units of ``x``; with
        ``precondition="amortized"`` also the draws whose mean and covariance precondition
        (pass the amortized draws: the first ``chains`` rows start the chains, all rows
        estimate the covariance, with Ledoit-Wolf shrinkage, which keeps it well conditioned
        when the rows are few against the number of sampled coordinates); with
        ``"prior-amortized"`` all rows give the covariance in prior-whitened coordinates.
    num_samples, warmup_steps : int
        Draws kept and warm-up iterations per chain (:func:`nuts_draws_per_chain` gives the
        draws that keep the largest R-hat of many coordinates under 1.01).
    precondition : {"amortized", "prior", "prior-amortized", "none"}
        See the module docstring: the amortized draws' covariance, the prior's Cholesky
        factor, the two combined, or none. ``"prior"`` and ``"prior-amortized"`` need a
        Gaussian prior in the sampled coordinates (``problem.gaussian_prior()``).
    num_chains : int, default 4
        Chains (at most ``N``), started at ``init[:num_chains]``.
    max_tree_depth : int, default 8
        NUTS's tree depth limit (at most ``2^depth - 1`` leapfrog steps per draw).
    seed : int, default 0
        Seed of Pyro's RNG (chain ``c`` uses ``seed + c``, whichever process runs it).
    adapt_mass_matrix : bool, default True
        Whether NUTS's warm-up also adapts a diagonal mass matrix (in the preconditioned
        coordinates ``v``), on top of the step size. With a good preconditioner the diagonal
        is close to 1 and the warm-up can be shorter without it (Pyro's windowed adaptation
        needs a few hundred iterations to estimate it).
    num_cores : int, default 1
        Worker processes for the chains (at most ``num_chains``; forked on Linux where safe,
        else spawned: module docstring); 1 runs them one after the other here. The draws are
        the same for any value (per-chain seeds), up to the floating-point order of
        multi-threaded BLAS: workers get ``threads // workers`` threads each. A forked worker
        starts in about 0.05 s, a spawned one in a few seconds (it imports torch and Pyro).
    jit_compile : bool, default False
        Trace the potential with ``torch.jit.trace`` (checked against the eager potential at
        the chains' starts, else the eager one is used, with a warning; module docstring).
    potential_dtype : {"float64", "float32"} or torch dtype, default "float64"
        Precision of the potential and its gradient (module docstring, "Cost and
        precision"): the chains' state, the step-size adaptation and the draws stay
        float64; ``"float32"`` casts the preconditioner's factor, the prior's quadratic form
        and ``x`` to float32 (the fixed matrices once per chain), so each evaluation reads
        half the bytes. Used
        only where the float32 potential is within :data:`FLOAT32_POTENTIAL_TOLERANCE` nats
        of the float64 one (and its gradient within 1%) at every chain's start, else float64
        is used with a warning (:attr:`MCMCResult.potential_dtype` says which ran).

    Returns
    -------
    MCMCResult

    Raises
    ------
    ConfigError
        If ``precondition`` is unknown, ``init`` has the wrong shape, a count is out of
        range (``num_samples`` below :data:`MIN_DRAWS_PER_CHAIN`), or ``precondition`` is
        ``"prior"`` or ``"prior-amortized"`` and the problem's prior is not Gaussian in the
        sampled coordinates.
    NoPriorDensityError, NoLikelihoodError
        If the problem's prior has no density or it has no noise model.

    Warns
    -----
    UserWarning
        If the problem's ``gaussian_prior()`` disagrees with its ``log_prior`` at the starts
        (the prior is then evaluated through ``log_prior``), ``jit_compile`` fell back to
        the eager potential, ``potential_dtype="float32"`` fell back to float64, or
        ``num_cores > 1`` but the problem cannot be pickled (the chains then run in this
        process).

    References
    ----------
    Hoffman and Gelman (2014), The No-U-Turn Sampler, JMLR 15; Bingham et al. (2019), Pyro,
    JMLR 20; Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization,
    folding, and localization: an improved R-hat, Bayesian Analysis 16. Prior whitening:
    Murray and Adams (2010), Slice sampling covariance hyperparameters of latent Gaussian
    models, NeurIPS 23; Papaspiliopoulos, Roberts and Skold (2007), A general framework for
    the parametrization of hierarchical models, Statistical Science 22, 59-73. Rounding of
    float32 sums: Higham (2002), Accuracy and Stability of Numerical Algorithms, 2nd ed.,
    SIAM, ch. 3, DOI 10.1137/1.9780898718027.
    """
    import time

    from inference.arviz_io import chain_diagnostics

    if precondition not in PRECONDITIONERS:
        raise ConfigError(f"precondition must be one of {PRECONDITIONERS}, got {precondition!r}")
    if num_samples < 1 or warmup_steps < 0 or num_chains < 1 or num_cores < 1:
        raise ConfigError(
            "need num_samples >= 1, warmup_steps >= 0, num_chains >= 1 and num_cores >= 1, "
            f"got {num_samples}, {warmup_steps}, {num_chains}, {num_cores}"
        )
    if max_tree_depth < 1:
        raise ConfigError(f"max_tree_depth must be >= 1, got {max_tree_depth}")
    dtype = _potential_dtype(potential_dtype)
    problem = as_problem(problem)
    x_shape = tuple(problem.x_shape)
    if init.dim() != len(x_shape) + 1 or tuple(init.shape[1:]) != x_shape or len(init) < 1:
        raise ConfigError(f"init must have shape (N >= 1, *{x_shape}), got {tuple(init.shape)}")
    par = problem.parameterisation()
    if precondition in ("prior", "prior-amortized") and problem.gaussian_prior() is None:
        raise ConfigError(
            f"precondition={precondition!r} whitens by the prior's Cholesky factor, but the "
            f"prior of problem {problem.name!r} is not Gaussian in the sampled coordinates "
            "(gaussian_prior() is None); use precondition='amortized'"
        )
    y64 = y.double()
    log_target = _log_target(problem, y64)
    with torch.no_grad():  # fails here, in this process, for a problem without a density
        rows = init[: max(num_chains, 1)]
        theta0 = (par.from_x(rows) if par is not None else rows.flatten(1)).double()
        try:
            values = log_target(theta0)
        except PplCvaeError:
            raise
        except Exception as err:  # noqa: BLE001 - a user's problem may raise anything
            raise ConfigError(
                f"problem {problem.name!r} raised {exception_summary(err)} when NUTS evaluated "
                "log_prior + log_likelihood at the chains' starts (amortized draws)"
            ) from err
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        with torch.no_grad():  # name the term that is not finite
            x0 = par.to_x(theta0.float()) if par is not None else rows.double()
            terms = {
                "log_prior": _log_prior_theta(problem, theta0),
                "log_likelihood": checked_log_likelihood(problem, x0, y64).double(),
            }
        culprit = [k for k, v in terms.items() if not bool(torch.isfinite(v[bad]).all())]
        raise DataError(
            f"the log posterior density of problem {problem.name!r} (log_prior + "
            f"log_likelihood) is {float(values[bad].flatten()[0])} at "
            f"{int(bad.sum())} of {bad.numel()} chain starts (amortized draws); NUTS needs a "
            f"finite density there: check the problem's {' and '.join(culprit or list(terms))}"
        )
    if num_samples < MIN_DRAWS_PER_CHAIN:
        raise ConfigError(
            f"num_samples={num_samples} draws per chain; the split R-hat and the ESS of a chain "
            f"need at least {MIN_DRAWS_PER_CHAIN}"
        )

    begin = time.perf_counter()  # the preconditioner is part of the cost of a correction
    with torch.no_grad():
        start = (par.from_x(init) if par is not None else init.flatten(1)).double()
    dim = start.shape[1]
    prior = _checked_gaussian_prior(problem, start[: max(num_chains, 4)], precondition)
    mu, tril, start = _preconditioner(precondition, start, prior)
    prior_loc = None if prior is None else prior.loc.to(start)
    prior_tril = None if prior is None else prior.scale_tril.to(start)

    num_chains = min(len(start), num_chains)
    jobs = [
        _ChainJob(
            problem=problem,
            y=y64,
            start=start[c],
            checks=start[:num_chains],
            mu=mu,
            tril=tril,
            prior_loc=prior_loc,
            prior_tril=prior_tril,
            prior_whitened=precondition == "prior",
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            seed=seed + c,
            max_tree_depth=max_tree_depth,
            adapt_mass_matrix=adapt_mass_matrix,
            jit_compile=jit_compile,
            potential_dtype=dtype,
        )
        for c in range(num_chains)
    ]
    outputs = _run_chains(jobs, num_cores)
    seconds = time.perf_counter() - begin
    fallback = next((o.jit_fallback for o in outputs if o.jit_fallback), None)
    if fallback is not None:
        warnings.warn(
            f"jit_compile=True: the eager potential is used instead ({fallback})", stacklevel=2
        )
    low = [o.dtype_fallback for o in outputs if o.dtype_fallback]
    if low:
        warnings.warn(
            f"potential_dtype={potential_dtype!r}: float64 is used instead on {len(low)} of "
            f"{len(outputs)} chains ({low[0]})",
            stacklevel=2,
        )
    used = [
        "float64" if o.dtype_fallback or dtype == torch.float64 else "float32" for o in outputs
    ]
    theta = torch.stack([o.draws for o in outputs])  # (chains, draws, dim)
    rhat, min_ess = chain_diagnostics(theta.numpy())
    threshold = rhat_threshold(num_chains, num_samples, dim) if num_samples >= 4 else RHAT_THRESHOLD
    with torch.no_grad():
        x = par.to_x(theta.float()) if par is not None else theta.reshape(num_chains, -1, *x_shape)
    steps = np.stack([o.n_steps for o in outputs])
    return MCMCResult(
        x=x.float(),
        rhat=rhat,
        min_ess=min_ess,
        num_evaluations=sum(o.num_evaluations for o in outputs),
        divergences=int(sum(int(o.diverging.sum()) for o in outputs)),
        seconds=seconds,
        sample_stats={
            "diverging": np.stack([o.diverging for o in outputs]),
            "energy": np.stack([o.energy for o in outputs]),
            "n_steps": steps,
            "tree_depth": np.ceil(np.log2(steps + 1)).astype(np.int64),
            "step_size": np.stack([np.full(num_samples, o.step_size) for o in outputs]),
        },
        rhat_threshold=threshold,
        cpu_seconds=sum(o.cpu_seconds for o in outputs),
        potential_dtype="float32" if all(u == "float32" for u in used) else "float64",
    )
