"""Weights of the exact posterior's modes for Two Birds, and an exact sampler's mode coverage.

The noise-free Two Birds posterior is a finite set of point masses at the exact solutions
(:mod:`~ppl_cvae.problems.two_birds.exact`). :func:`exact_mode_weights` gives their
probabilities as the small-noise (Laplace) limit of a Gaussian-noise posterior, and
:func:`expected_mode_coverage` the mode coverage (as
:func:`~ppl_cvae.problems.two_birds.scoring.score_samples` defines it) that an exact posterior
sampler drawing from those weights achieves in expectation (:class:`ExactSamplerCoverage`):
the reference a generator's coverage is set beside.

Conventions follow :mod:`~ppl_cvae.problems.two_birds.problem`: a pair of lines is summarised
by its endpoints ``(x0(0), x0(1), x1(0), x1(1))``, every quantity is dimensionless, nothing is
log-transformed.

References
----------
Tierney, L. and Kadane, J. B. (1986). Accurate approximations for posterior moments and
marginal densities. Journal of the American Statistical Association 81(393), 82-86.
DOI 10.1080/01621459.1986.10478240. Feller, W. (1968). An Introduction to Probability Theory
and Its Applications, Vol. 1, 3rd ed., Wiley (occupancy problems).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems.two_birds.exact import (
    _DEFAULT_SLACK,
    _DEFAULT_TOL,
    _check_finite,
    _check_solutions,
    _enumerate,
    _FunctionSequence,
    _observation_batch,
    _resolve_functions,
    _single_y,
    _to_numpy,
    _trig_pair,
)
from ppl_cvae.problems.two_birds.problem import (
    _HIGH,
    _LOW,
    NUM_POINTS,
    TrigComponent,
    lines_from_endpoints,
)
from ppl_cvae.problems.two_birds.scoring import _apply_pair, _jsonable

__all__ = ["ExactSamplerCoverage", "exact_mode_weights", "expected_mode_coverage"]

# 1 - x0(1) and 1 - x1(0) are floored at this in the prior density: the density diverges on
# the face where a line is constant at 1 (x0(1) = 1 or x1(0) = 1); same size as the default
# bound_slack, so a solution enumerated within the slack of that face stays finite.
_MIN_SPAN = 1e-6
# J^T J whose smallest eigenvalue is below this fraction of its largest counts as singular (the
# Laplace approximation does not apply). On the challenge's validation files the ratio is
# above 1e-6 for every solution.
_MIN_EIGEN_RATIO = 1e-12


def _log_prior_density(endpoints: np.ndarray) -> np.ndarray:
    """Log prior density of endpoints ``(K, 4)`` projected onto the closed prior support."""
    x0_end = np.clip(endpoints[:, 1], _LOW, _HIGH)
    x1_start = np.clip(endpoints[:, 2], _LOW, _HIGH)
    span0 = np.maximum(_HIGH - x0_end, _MIN_SPAN)
    span1 = np.maximum(_HIGH - x1_start, _MIN_SPAN)
    return -2.0 * math.log(_HIGH - _LOW) - np.log(span0) - np.log(span1)


def _check_in_support(solutions: np.ndarray, slack: float) -> None:
    """Raise DataError if a row of ``solutions`` (K, 4) leaves the prior support by > slack."""
    outside = (
        (solutions[:, 1] > solutions[:, 0] + slack)
        | (solutions[:, 3] < solutions[:, 2] - slack)
        | (solutions < _LOW - slack).any(axis=1)
        | (solutions > _HIGH + slack).any(axis=1)
    )
    if outside.any():
        rows = np.flatnonzero(outside)
        raise DataError(
            f"exact_solutions rows {rows.tolist()} (of shape {solutions.shape}) lie outside the "
            f"prior's support by more than {slack} (endpoints in [{_LOW}, {_HIGH}], x0(1) <= "
            "x0(0), x1(0) <= x1(1)); they have prior density 0 and cannot be modes: drop them"
        )


def _log_det_gram(solutions: np.ndarray, pair: tuple[Callable[..., Any], ...]) -> np.ndarray:
    """Return ``log det(J_j^T J_j)``, shape (K,), of ``e -> F(lines(e))`` at each solution."""

    def forward(endpoints: torch.Tensor) -> torch.Tensor:  # (K, 4) -> (K, 100)
        x = lines_from_endpoints(endpoints)  # (K, 1, 50, 2)
        return _apply_pair(pair, x[..., 0], x[..., 1]).reshape(endpoints.shape[0], -1)

    e = torch.as_tensor(solutions, dtype=torch.float64)
    # F(e_j) depends on e_j only, so the Jacobian of sum_j F(e_j) holds every J_j: (100, K, 4).
    # Plain reverse mode (100 backward passes, ~17 ms per observation): forward mode with vmap
    # is ~8 times faster but makes torch warn (torch.jit.script deprecation) on first use.
    jac = torch.autograd.functional.jacobian(lambda v: forward(v).sum(0), e)
    jac = jac.permute(1, 0, 2)  # (K, 100, 4)
    eig = torch.linalg.eigvalsh(jac.transpose(1, 2) @ jac).numpy()  # (K, 4), ascending
    bad = ~(eig[:, 0] > _MIN_EIGEN_RATIO * eig[:, -1])
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"the Jacobian of F at exact solutions {rows.tolist()} has (numerically) rank < 4 "
            f"(eigenvalues of J^T J: {eig[rows].tolist()}); the mode is degenerate and its "
            "small-noise weight is not given by the Laplace approximation"
        )
    return np.log(eig).sum(axis=1)


def _mode_weights(solutions: np.ndarray, pair: tuple[Callable[..., Any], ...]) -> np.ndarray:
    """Normalised Laplace weights, shape (K,), of validated solutions of shape (K, 4)."""
    if len(solutions) == 0:
        return np.empty(0)
    log_w = _log_prior_density(solutions) - 0.5 * _log_det_gram(solutions, pair)
    log_w = log_w - log_w.max()
    w = np.exp(log_w)
    return w / w.sum()


def exact_mode_weights(
    y: np.ndarray | torch.Tensor,
    functions: str | _FunctionSequence,
    *,
    exact_solutions: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Return the exact solutions of one observation and their posterior weights.

    Parameters
    ----------
    y : ndarray or Tensor, shape (1, 50, 2) or (50, 2)
        One observation, dimensionless in [-1, 1]; used to enumerate the solutions (with the
        defaults of :func:`enumerate_exact_solutions`) when ``exact_solutions`` is None.
    functions : str or pair of callables
        A name in :data:`~ppl_cvae.problems.two_birds.FUNCTION_PAIRS`, two
        :class:`~ppl_cvae.problems.two_birds.TrigComponent`, or (with ``exact_solutions``)
        two torch-differentiable callables ``f_k(x0, x1)`` acting elementwise.
    exact_solutions : ndarray or Tensor, shape (num_solutions, 4), optional
        Distinct exact solutions ``(x0(0), x0(1), x1(0), x1(1))`` of ``y``. Default:
        :func:`enumerate_exact_solutions`. Each must lie in the prior's support within 1e-6
        (the default ``bound_slack`` of the enumeration).

    Returns
    -------
    solutions : ndarray, shape (num_solutions, 4), float64
        The exact solutions (endpoints), in the order of ``exact_solutions`` or as enumerated
        (sorted lexicographically); ``num_solutions`` may be 0.
    weights : ndarray, shape (num_solutions,), float64
        Posterior probability of each solution: positive, summing to 1 (empty if there is no
        solution).

    Raises
    ------
    ConfigError
        If ``functions`` is not a name or a pair of callables, or is not a pair of
        TrigComponent and ``exact_solutions`` is None.
    UnknownProblemError
        If ``functions`` is a string not in ``FUNCTION_PAIRS``.
    ShapeError
        If ``y`` is not ``(1, 50, 2)`` or ``(50, 2)``, ``exact_solutions`` not ``(K, 4)``, or a
        function does not act elementwise.
    DataError
        If ``y`` or ``exact_solutions`` holds NaN or inf, a solution lies outside the prior's
        support, or ``J^T J`` is singular at a solution (a degenerate mode, see Notes).

    Notes
    -----
    The noise-free posterior is the small-noise limit of the posterior of the endpoints
    ``e = (x0(0), x0(1), x1(0), x1(1))`` under ``y = F(e) + eps``,
    ``eps ~ N(0, sigma^2 I_100)`` on the 100 values of ``y``,

    .. math:: p_\sigma(e \mid y) \propto p(e)\,
              \exp\!\big(-\lVert F(e) - y\rVert^2 / (2\sigma^2)\big),

    with the prior density (``x0(1) ~ U(0.1, 1)``, ``x0(0) | x0(1) ~ U(x0(1), 1)``,
    ``x1(0) ~ U(0.1, 1)``, ``x1(1) | x1(0) ~ U(x1(0), 1)``)

    .. math:: p(e) = \frac{1}{0.9^2\, (1 - x_0(1))\, (1 - x_1(0))}

    on the support ``0.1 <= x0(1) <= x0(0) <= 1``, ``0.1 <= x1(0) <= x1(1) <= 1``. Near an
    exact solution ``e_j``, ``||F(e) - y||^2 ~ (e - e_j)^T J_j^T J_j (e - e_j)`` with ``J_j``
    the ``(100, 4)`` Jacobian of ``e -> F(lines(e))`` at ``e_j`` (autograd, float64), so by
    Laplace's method the mass near ``e_j`` is ``p(e_j) (2 pi sigma^2)^2
    det(J_j^T J_j)^(-1/2)`` times factors common to all modes, and as ``sigma -> 0``

    .. math:: w_j = \frac{p(e_j)\, \det(J_j^\top J_j)^{-1/2}}
                         {\sum_k p(e_k)\, \det(J_k^\top J_k)^{-1/2}}.

    For a pair of :class:`~ppl_cvae.problems.two_birds.TrigComponent` the Jacobian factor is
    the same for every solution: component ``k`` contributes rows
    ``kind_k'(p_k(t_i)) (a_k (1 - t_i), a_k t_i, b_k (1 - t_i), b_k t_i)`` and
    ``kind_k'(p)^2 = 1 - y_k(t_i)^2`` is fixed by ``y``, so ``J_j^T J_j`` is common to all modes
    and ``w_j`` is proportional to ``p(e_j)`` (up to the float error of ``y``). The factor
    matters for functions of other forms (pass their ``exact_solutions``).

    Solutions on the boundary of the support: the density is evaluated at the solution
    projected onto the closed support (enumerated solutions may leave it by up to 1e-6), with
    ``1 - x0(1)`` and ``1 - x1(0)`` floored at 1e-6 (the density diverges where a line is
    constant at 1). The local Gaussian is not truncated by the boundary: that is the
    ``sigma -> 0`` limit for any solution strictly inside the support, but at finite noise a
    solution within a few posterior standard deviations (``sigma`` times
    ``sqrt(n^T (J^T J)^{-1} n)`` for a face with normal ``n``) of a face loses up to half its
    mass (a quarter at an edge). Solutions on the boundary have probability 0 under the
    prior. A singular ``J^T J`` (e.g. ``|y_k| = 1`` along a whole line) makes the mode's mass
    vanish more slowly than ``sigma^4`` and is reported as an error.

    References
    ----------
    Tierney, L. and Kadane, J. B. (1986). Accurate approximations for posterior moments and
    marginal densities. Journal of the American Statistical Association 81(393), 82-86.
    DOI 10.1080/01621459.1986.10478240. The "Two Birds, One Neural Network" challenge
    (problem statement and prior).

    Examples
    --------
    >>> from ppl_cvae.problems.two_birds import TwoBirds, lines_from_endpoints
    >>> true = torch.tensor([0.8, 0.3, 0.2, 0.6], dtype=torch.float64)
    >>> y = TwoBirds("original").forward(lines_from_endpoints(true))
    >>> solutions, weights = exact_mode_weights(y, "original")
    >>> solutions.shape
    (6, 4)
    >>> np.round(weights, 3)
    array([0.107, 0.179, 0.124, 0.198, 0.155, 0.238])
    """
    pair = _resolve_functions(functions)
    arr = _single_y(y)
    if exact_solutions is None:
        if not all(isinstance(f, TrigComponent) for f in pair):
            raise ConfigError(
                "exact solutions can only be enumerated for a pair of TrigComponent "
                f"functions; got {[type(f).__name__ for f in pair]}: pass exact_solutions"
            )
        solutions = _enumerate(arr, _trig_pair(pair), _DEFAULT_TOL, _DEFAULT_SLACK)
    else:
        solutions = _to_numpy(exact_solutions, "exact_solutions")
        if solutions.size == 0:
            solutions = solutions.reshape(0, 4)
        if solutions.ndim != 2 or solutions.shape[1] != 4:
            raise ShapeError(
                "exact_solutions must have shape (num_solutions, 4) (endpoints x0(0), x0(1), "
                f"x1(0), x1(1)), got {solutions.shape}"
            )
        _check_finite(solutions, "exact_solutions", "(num_solutions, 4)")
        _check_in_support(solutions, _DEFAULT_SLACK)
    return solutions, _mode_weights(solutions, pair)


@dataclass(frozen=True, eq=False)
class ExactSamplerCoverage:
    """Mode coverage that an exact posterior sampler achieves in expectation.

    Shapes use ``M = num_observations``; ``S = num_samples`` iid draws per observation from
    the exact posterior (point masses at the exact solutions with :func:`exact_mode_weights`).
    Field names mirror :class:`~ppl_cvae.problems.two_birds.scoring.TwoBirdsScore`, so
    ``score.mode_coverage`` of a generator can be set beside ``mode_coverage`` here. Arrays are
    read-only by convention; observations with no exact solution hold NaN and are excluded from
    the aggregates.

    Attributes
    ----------
    mode_coverage : float
        Mean of ``mode_coverage_per_observation`` over observations with >= 1 solution (NaN if
        there is none): the expected ``TwoBirdsScore.mode_coverage`` of an exact sampler.
    mode_coverage_sd : float
        Standard deviation of that aggregate over repeated runs of the sampler (observations
        independent): ``sqrt(sum_m Var(C_m)) / M'`` with ``M'`` observations with solutions.
    mean_modes_hit : float
        Mean of ``modes_hit_per_observation`` over observations with >= 1 solution.
    mode_coverage_per_observation : ndarray of float, shape (M,)
        ``E[modes_hit_m] / min(S, K_m)``.
    mode_coverage_sd_per_observation : ndarray of float, shape (M,)
        ``sd(modes_hit_m) / min(S, K_m)``.
    modes_hit_per_observation : ndarray of float, shape (M,)
        Expected number of distinct solutions among the ``S`` draws.
    num_exact_solutions : ndarray of int, shape (M,)
        ``K_m``, the number of exact solutions of ``y[m]``.
    weights : tuple of ndarray, length M
        Element ``m`` has shape ``(K_m,)``: posterior weights of the solutions.
    exact_solutions : tuple of ndarray, length M
        Element ``m`` has shape ``(K_m, 4)`` (endpoints).
    num_samples : int
        ``S``.
    num_observations_without_solutions : int
        Observations excluded from the aggregates.
    """

    mode_coverage: float
    mode_coverage_sd: float
    mean_modes_hit: float
    mode_coverage_per_observation: np.ndarray
    mode_coverage_sd_per_observation: np.ndarray
    modes_hit_per_observation: np.ndarray
    num_exact_solutions: np.ndarray
    weights: tuple[np.ndarray, ...]
    exact_solutions: tuple[np.ndarray, ...]
    num_samples: int
    num_observations_without_solutions: int

    @property
    def num_observations(self) -> int:
        """Number of observations ``M``."""
        return int(self.num_exact_solutions.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Return every field as JSON-serialisable Python values (NaN becomes ``None``)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _distinct_moments(weights: np.ndarray, num_samples: int) -> tuple[float, float]:
    """Mean and variance of the number of distinct categories in ``num_samples`` iid draws."""
    miss = (1.0 - weights) ** num_samples  # P(category j never drawn), shape (K,)
    both = np.clip(1.0 - weights[:, None] - weights[None, :], 0.0, 1.0) ** num_samples
    np.fill_diagonal(both, miss)  # P(j and k both missed); diagonal: P(j missed)
    mean = float((1.0 - miss).sum())
    var = float((both - miss[:, None] * miss[None, :]).sum())
    return mean, max(var, 0.0)


def expected_mode_coverage(
    y: np.ndarray | torch.Tensor,
    functions: str | _FunctionSequence,
    num_samples: int = 30,
    *,
    exact_solutions: Sequence[np.ndarray | torch.Tensor] | None = None,
) -> ExactSamplerCoverage:
    r"""Compute the mode coverage an exact posterior sampler achieves in expectation.

    Parameters
    ----------
    y : ndarray or Tensor, shape (num_observations, 1, 50, 2)
        Observations; the first axis is a batch axis, the rest is the event shape
        ``(row, position, component)``; dimensionless.
    functions : str or pair of callables
        As in :func:`exact_mode_weights`.
    num_samples : int, default 30
        ``S``, iid draws per observation (the challenge scores 30).
    exact_solutions : sequence of ndarray or Tensor, length num_observations, optional
        Element ``m`` of shape ``(K_m, 4)``: exact solutions of ``y[m]`` (as from
        :func:`enumerate_exact_solutions_batch`). Default: enumerated from ``y``.

    Returns
    -------
    ExactSamplerCoverage
        Aggregates, per-observation arrays of shape ``(num_observations,)`` and the weights.

    Raises
    ------
    ConfigError
        If ``num_samples`` is not a positive integer, or as in :func:`exact_mode_weights`.
    UnknownProblemError
        If ``functions`` is a string not in ``FUNCTION_PAIRS``.
    ShapeError
        If ``y`` is not ``(M, 1, 50, 2)`` or ``exact_solutions`` not ``M`` arrays ``(K_m, 4)``.
    DataError
        As in :func:`exact_mode_weights`.

    Notes
    -----
    For observation ``m`` with solutions weighted ``w_1..w_K`` (:func:`exact_mode_weights`),
    ``S`` iid draws miss solution ``j`` with probability ``(1 - w_j)^S`` and miss both ``j``
    and ``k != j`` with probability ``(1 - w_j - w_k)^S``, so the number ``D_m`` of distinct
    solutions drawn has

    .. math:: E[D_m] = \sum_j \big(1 - (1 - w_j)^S\big), \qquad
              \operatorname{Var}[D_m] = \sum_{j, k} \big(P(\text{miss } j, k)
              - (1 - w_j)^S (1 - w_k)^S\big),

    with ``P(miss j, j) = (1 - w_j)^S``. Exact draws sit on the solutions, pass the challenge's
    criteria and hit their own solution, so with
    :func:`~ppl_cvae.problems.two_birds.scoring.score_samples`' definition the expected
    coverage is ``E[C_m] = E[D_m] / min(S, K_m)`` and ``sd(C_m) = sd(D_m) / min(S, K_m)``; no
    Monte Carlo is involved. ``mode_coverage`` is the mean over the ``M'``
    observations with ``K_m >= 1``, with standard deviation ``sqrt(sum_m Var[C_m]) / M'``.
    Coverage stays below 1 when weights are uneven: a solution of weight 0.02 is missed by 30
    draws with probability 0.98^30 = 0.55.

    References
    ----------
    Feller, W. (1968). An Introduction to Probability Theory and Its Applications, Vol. 1,
    3rd ed., Wiley (occupancy problems, chapters II and IV). Tierney, L. and Kadane, J. B.
    (1986). Accurate approximations for posterior moments and marginal densities. Journal of
    the American Statistical Association 81(393), 82-86. DOI 10.1080/01621459.1986.10478240.

    Examples
    --------
    >>> from ppl_cvae.problems.two_birds import TwoBirds
    >>> x, y = TwoBirds("original").simulate(3, torch.Generator().manual_seed(0))
    >>> result = expected_mode_coverage(y, "original", num_samples=30)
    >>> result.num_exact_solutions.tolist(), round(result.mode_coverage, 3)
    ([8, 18, 11], 0.751)
    """
    pair = _resolve_functions(functions)
    if not (isinstance(num_samples, numbers.Integral) and not isinstance(num_samples, bool)):
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    num_samples = int(num_samples)
    arr = _observation_batch(y)
    num_obs = arr.shape[0]
    if exact_solutions is None:
        if not all(isinstance(f, TrigComponent) for f in pair):
            raise ConfigError(
                "exact solutions can only be enumerated for a pair of TrigComponent "
                f"functions; got {[type(f).__name__ for f in pair]}: pass exact_solutions"
            )
        trig = _trig_pair(pair)
        solutions = tuple(
            _enumerate(obs.reshape(NUM_POINTS, 2), trig, _DEFAULT_TOL, _DEFAULT_SLACK)
            for obs in arr
        )
    else:
        solutions = _check_solutions(exact_solutions, num_obs)
        for sols in solutions:
            _check_in_support(sols, _DEFAULT_SLACK)

    weights = tuple(_mode_weights(sols, pair) for sols in solutions)
    num_solutions = np.array([len(s) for s in solutions], dtype=np.int64)
    modes_hit = np.full(num_obs, np.nan)
    coverage = np.full(num_obs, np.nan)
    coverage_sd = np.full(num_obs, np.nan)
    for m, w in enumerate(weights):
        if len(w) == 0:
            continue
        mean, var = _distinct_moments(w, num_samples)
        denom = min(num_samples, len(w))
        modes_hit[m] = mean
        coverage[m] = mean / denom
        coverage_sd[m] = math.sqrt(var) / denom
    with_solutions = num_solutions > 0
    count = int(with_solutions.sum())
    if count:
        agg = float(coverage[with_solutions].mean())
        agg_sd = float(np.sqrt((coverage_sd[with_solutions] ** 2).sum()) / count)
        agg_hit = float(modes_hit[with_solutions].mean())
    else:
        agg = agg_sd = agg_hit = float("nan")
    return ExactSamplerCoverage(
        mode_coverage=agg,
        mode_coverage_sd=agg_sd,
        mean_modes_hit=agg_hit,
        mode_coverage_per_observation=coverage,
        mode_coverage_sd_per_observation=coverage_sd,
        modes_hit_per_observation=modes_hit,
        num_exact_solutions=num_solutions,
        weights=weights,
        exact_solutions=solutions,
        num_samples=num_samples,
        num_observations_without_solutions=num_obs - count,
    )
