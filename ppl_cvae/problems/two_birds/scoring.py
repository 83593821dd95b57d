"""The "Two Birds, One Neural Network" challenge's scoring of generated samples.

:func:`score_samples` applies the challenge's validity criteria (monotone lines, strong
correlation with position, small misfit) to posterior draws and measures how many of the exact
solutions (:mod:`~ppl_cvae.problems.two_birds.exact`) the valid draws reach, their diversity and
their clusters; the result is a :class:`TwoBirdsScore`.

Draws come with the sample axis first, like every posterior draw in :mod:`inference`:
``x`` of shape ``(num_samples, num_observations, 1, 50, 2)``. The per-sample arrays of the
score are observation-major, ``(num_observations, num_samples)``. Conventions otherwise follow
:mod:`~ppl_cvae.problems.two_birds.problem`: positions ``t_i = i / 49``, event shape
``(1, 50, 2)`` (row, position, line/component), every quantity dimensionless, nothing
log-transformed; the distance between two pairs of lines is the max-abs difference of their
endpoints ``(x0(0), x0(1), x1(0), x1(1))``.

References
----------
The "Two Birds, One Neural Network" challenge (problem statement, validity criteria and data
files: ``scoring_dataset.pt``, ``submission_sample.pt``). Pearson, K. (1895). Notes on
regression and inheritance in the case of two parents. Proceedings of the Royal Society of
London 58, 240-242. DOI 10.1098/rspl.1895.0041.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.problems.two_birds.exact import (
    _DEFAULT_SLACK,
    _DEFAULT_TOL,
    _EVENT_SHAPE,
    _T,
    _check_finite,
    _check_positive,
    _check_solutions,
    _enumerate,
    _FunctionSequence,
    _is_real,
    _resolve_functions,
    _trig_pair,
)
from ppl_cvae.problems.two_birds.problem import NUM_POINTS, TrigComponent, endpoints_from_lines

__all__ = ["TwoBirdsScore", "score_samples"]


@dataclass(frozen=True, eq=False)
class TwoBirdsScore:
    """Validity, misfit, diversity and mode coverage of generated Two Birds samples.

    Shapes use ``M = num_observations`` and ``S = num_samples`` (samples per observation).
    Per-sample arrays are observation-major, ``(M, S)``: entry ``[m, s]`` is about draw
    ``x[s, m]`` of the sample-first draws given to :func:`score_samples`. Arrays are numpy
    arrays owned by the score; treat them as read-only (they are not write-protected because
    ``torch.as_tensor`` warns on write-protected arrays). Mode fields are ``None`` when the
    functions are not a pair of :class:`~ppl_cvae.problems.two_birds.TrigComponent` and no
    exact solutions were given.
    Undefined values (e.g. the diversity of an observation with fewer than 2 valid samples)
    are NaN in arrays and in float aggregates.

    Attributes
    ----------
    passed : ndarray of bool, shape (M, S)
        The sample meets all four criteria (see :func:`score_samples`).
    monotone : ndarray of bool, shape (M, S)
        ``x0`` non-increasing and ``x1`` non-decreasing (within ``monotone_tolerance``).
    pearson_r : ndarray of float, shape (M, S, 2)
        Pearson correlation of line ``k`` with position; NaN for a constant line.
    y_rmse : ndarray of float, shape (M, S)
        RMSE over the 100 values between ``F(sample)`` and ``y``.
    y_rmse_per_component : ndarray of float, shape (M, S, 2)
        RMSE over the 50 positions of each component ``k``.
    hit_index : ndarray of int, shape (M, S), or None
        Index into ``exact_solutions[m]`` of the solution the sample hits; -1 if it fails or
        hits none.
    pass_rate_per_observation : ndarray of float, shape (M,)
        Fraction of the ``S`` samples that pass.
    diversity_per_observation : ndarray of float, shape (M,)
        Mean pairwise distance between the passing samples (NaN if fewer than 2 pass).
    num_clusters_per_observation : ndarray of int, shape (M,)
        Number of greedy clusters of radius ``hit_tolerance`` among the passing samples.
    num_exact_solutions : ndarray of int, shape (M,), or None
        Number of exact solutions of ``y[m]``.
    modes_hit_per_observation : ndarray of int, shape (M,), or None
        Number of distinct exact solutions hit by at least one passing sample.
    mode_coverage_per_observation : ndarray of float, shape (M,), or None
        ``modes_hit / min(S, num_exact_solutions)``; NaN when there is no exact solution.
    exact_solutions : tuple of ndarray, or None
        Element ``m`` has shape ``(num_exact_solutions[m], 4)`` (endpoints).
    pass_rate : float
        Fraction of all ``M * S`` samples that pass.
    mean_y_rmse : float
        Mean of ``y_rmse`` over all ``M * S`` samples (passing or not).
    diversity : float
        Mean of ``diversity_per_observation`` over observations with >= 2 passing samples.
    mean_num_clusters : float
        Mean of ``num_clusters_per_observation`` over all observations.
    mode_coverage : float or None
        Mean of ``mode_coverage_per_observation`` over observations with >= 1 exact solution.
    mean_num_exact_solutions : float or None
        Mean of ``num_exact_solutions`` over all observations.
    mean_modes_hit : float or None
        Mean of ``modes_hit_per_observation`` over observations with >= 1 exact solution.
    num_observations_without_solutions : int or None
        Observations excluded from the coverage aggregates because they have no solution.
    rmse_threshold, pearson_threshold, hit_tolerance, monotone_tolerance : float
        The settings the score was computed with.
    rmse_per_component : bool
        Whether the misfit criterion applied to each component separately.
    """

    passed: np.ndarray
    monotone: np.ndarray
    pearson_r: np.ndarray
    y_rmse: np.ndarray
    y_rmse_per_component: np.ndarray
    hit_index: np.ndarray | None
    pass_rate_per_observation: np.ndarray
    diversity_per_observation: np.ndarray
    num_clusters_per_observation: np.ndarray
    num_exact_solutions: np.ndarray | None
    modes_hit_per_observation: np.ndarray | None
    mode_coverage_per_observation: np.ndarray | None
    exact_solutions: tuple[np.ndarray, ...] | None
    pass_rate: float
    mean_y_rmse: float
    diversity: float
    mean_num_clusters: float
    mode_coverage: float | None
    mean_num_exact_solutions: float | None
    mean_modes_hit: float | None
    num_observations_without_solutions: int | None
    rmse_threshold: float
    pearson_threshold: float
    hit_tolerance: float
    monotone_tolerance: float
    rmse_per_component: bool

    @property
    def num_observations(self) -> int:
        """Number of observations ``M``."""
        return int(self.passed.shape[0])

    @property
    def num_samples(self) -> int:
        """Number of samples per observation ``S``."""
        return int(self.passed.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """Return every field as JSON-serialisable Python values.

        Returns
        -------
        dict
            Field name to value: floats, ints, bools, ``None`` and (nested) lists; arrays
            become nested lists, ``exact_solutions`` a list of ``(K_m, 4)`` nested lists. NaN
            becomes ``None`` (strict JSON has no NaN).
        """
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable_list(value.tolist())
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable_list(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable_list(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """Return ``value`` as a floating tensor (float32 for integer or bool input)."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{name} must be a numeric array or tensor: {exc}") from exc
    tensor = tensor.detach()
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _pearson_with_position(lines: np.ndarray) -> np.ndarray:
    """Pearson r of each line with position; ``lines`` (..., 50) -> (...); NaN if constant."""
    centred_t = _T - _T.mean()
    centred = lines - lines.mean(axis=-1, keepdims=True)
    cov = (centred * centred_t).sum(axis=-1)
    norm = np.sqrt((centred**2).sum(axis=-1) * (centred_t**2).sum())
    constant = np.ptp(lines, axis=-1) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / norm
    return np.where(constant, np.nan, r)


def _greedy_clusters(points: np.ndarray, radius: float) -> int:
    """Count greedy clusters: a point opens a cluster if farther than radius from every seed."""
    seeds: list[np.ndarray] = []
    for p in points:
        if not seeds or np.abs(np.asarray(seeds) - p).max(axis=1).min() > radius:
            seeds.append(p)
    return len(seeds)


def _apply_pair(pair: _FunctionSequence, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Stack ``(f_0(x0, x1), f_1(x0, x1))`` on a new last axis; check they act elementwise."""
    outputs = []
    for k, f in enumerate(pair):
        out = torch.as_tensor(f(x0, x1))
        if tuple(out.shape) != tuple(x0.shape):
            raise ShapeError(
                f"function {k} returned shape {tuple(out.shape)} for inputs of shape "
                f"{tuple(x0.shape)}; functions must act elementwise"
            )
        outputs.append(out)
    return torch.stack(outputs, dim=-1)


def score_samples(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    functions: str | _FunctionSequence,
    *,
    rmse_threshold: float = 0.1,
    pearson_threshold: float = 0.8,
    hit_tolerance: float = 0.05,
    monotone_tolerance: float = 1e-6,
    rmse_per_component: bool = True,
    exact_solutions: Sequence[np.ndarray | torch.Tensor] | None = None,
) -> TwoBirdsScore:
    """Score generated Two Birds samples with the challenge's criteria and against exact modes.

    Parameters
    ----------
    x : ndarray or Tensor, shape (num_samples, num_observations, 1, 50, 2)
        Generated samples (posterior draws), sample axis first as everywhere in
        :mod:`inference` (e.g. ``draw_posterior(...).x``): axis 0 is the sample axis, axis 1
        the batch (observation) axis, the rest is the event shape ``(row, position, line)``
        with ``x[..., 0, :, 0] = x0``. Dimensionless. Integer input is cast to the default
        float dtype.
    y : ndarray or Tensor, shape (num_observations, 1, 50, 2)
        The observation ``x[:, m]`` was generated for is ``y[m]``; dimensionless.
    functions : str or pair of callables
        A name in :data:`~ppl_cvae.problems.two_birds.FUNCTION_PAIRS` or two torch callables
        ``f_k(x0, x1)`` acting elementwise (e.g. :class:`TrigComponent`). Mode coverage needs
        TrigComponent functions or ``exact_solutions`` and is ``None`` otherwise.
    rmse_threshold : float, default 0.1
        A sample passes only if its y-RMSE is below this.
    pearson_threshold : float, default 0.8
        A sample passes only if ``|r|`` of both lines with position is above this; in [0, 1).
    hit_tolerance : float, default 0.05
        Max-abs endpoint distance within which a passing sample hits its nearest exact
        solution; also the radius of the diversity clusters.
    monotone_tolerance : float, default 1e-6
        Consecutive differences up to this size count as non-increasing (x0) / non-decreasing
        (x1); absorbs float32 rounding of straight lines (spacing 6e-8 near 1).
    rmse_per_component : bool, default True
        If True (the default), each component's RMSE over its 50 values must be below
        ``rmse_threshold``; this reading reproduces the pass rate quoted for the challenge's
        sample submission (0.397, quoted about 0.40). If False, the criterion is the RMSE over
        all 100 values of ``y`` (looser: 0.569 on the same submission).
    exact_solutions : sequence of ndarray or Tensor, length num_observations, optional
        Exact solutions to measure mode coverage against, element ``m`` of shape
        ``(num_solutions_m, 4)`` (endpoints, as returned by
        :func:`enumerate_exact_solutions_batch`). Default: enumerated from ``y`` when the
        functions are TrigComponents (about 3 ms per observation), else no mode fields.
        Pass them to score several generators against the same ``y`` without re-enumerating,
        or to get mode coverage for functions of another form whose solutions you know.

    Returns
    -------
    TwoBirdsScore
        Per-sample arrays of shape ``(num_observations, num_samples)`` (observation-major:
        ``score.passed[m, s]`` is about ``x[s, m]``), per-observation arrays of shape
        ``(num_observations,)`` and aggregates.

    Raises
    ------
    ShapeError
        If ``x`` is not ``(S, M, 1, 50, 2)``, ``y`` not ``(M, 1, 50, 2)`` with the same ``M``,
        a function returns a shape other than its inputs', or ``exact_solutions`` is not
        ``M`` arrays of shape ``(K_m, 4)``.
    DataError
        If ``x``, ``y`` or ``exact_solutions`` holds NaN or inf, or is not numeric.
    ConfigError
        If ``functions`` is not a name or a pair of callables, or a threshold is out of range.
    UnknownProblemError
        If ``functions`` is a string not in ``FUNCTION_PAIRS``.

    Notes
    -----
    With ``x0 = x[s, m, 0, :, 0]``, ``x1 = x[s, m, 0, :, 1]``, ``t_i = i / 49``, a sample
    passes (the challenge's criteria) when all of

    - ``x0[i+1] - x0[i] <= monotone_tolerance`` and ``x1[i+1] - x1[i] >= -monotone_tolerance``
      for every ``i``;
    - ``|r(x_k, t)| > pearson_threshold`` for ``k = 0, 1``, with Pearson's
      ``r(u, t) = sum((u_i - mean u)(t_i - mean t)) / sqrt(sum (u_i - mean u)^2
      sum (t_i - mean t)^2)``; ``r`` of a constant line is undefined (0 / 0) and fails;
    - ``sqrt(mean_{i,k} (f_k(x0_i, x1_i) - y[m, 0, i, k])^2) < rmse_threshold`` (100 values),
      or with ``rmse_per_component`` ``sqrt(mean_i (...)^2) < rmse_threshold`` for each ``k``.

    The functions are evaluated in the dtype of ``x``; ``y`` is cast to it.
    Each sample is summarised by the endpoints of its least-squares straight lines
    (:func:`~ppl_cvae.problems.two_birds.endpoints_from_lines`), and
    ``d(u, v) = max_j |u_j - v_j|`` over the 4 endpoints. For observation ``m`` with passing
    samples ``P_m`` (``n_m = |P_m|``):

    - diversity ``D_m = mean_{i<j in P_m} d(u_i, u_j)`` (NaN if ``n_m < 2``); ``diversity``
      averages ``D_m`` over observations with ``n_m >= 2``;
    - clusters ``C_m``: scan ``P_m`` in sample order, a sample farther than ``hit_tolerance``
      from every seed so far becomes a new seed; ``C_m`` is the number of seeds (0 if
      ``n_m = 0``; the count can depend on the order when passing samples form chains with
      gaps close to ``hit_tolerance``);
    - with exact solutions ``s_1..s_K`` (``exact_solutions[m]``, or
      :func:`enumerate_exact_solutions` with its default ``tol``), a passing sample hits
      ``argmin_j d(u, s_j)`` if that distance is ``<= hit_tolerance``;
      ``modes_hit_m`` counts distinct hit solutions and coverage is
      ``modes_hit_m / min(S, K_m)``. Observations with ``K_m = 0`` (``y`` not produced by
      the prior within float error) are excluded from the coverage aggregates and counted in
      ``num_observations_without_solutions``.

    References
    ----------
    The "Two Birds, One Neural Network" challenge (validity criteria, 30 samples per scoring
    observation). Pearson, K. (1895). Notes on regression and inheritance in the case of two
    parents. Proceedings of the Royal Society of London 58, 240-242. DOI 10.1098/rspl.1895.0041.

    Examples
    --------
    >>> from ppl_cvae.problems.two_birds import TwoBirds
    >>> x, y = TwoBirds("original").simulate(2, torch.Generator().manual_seed(0))
    >>> score = score_samples(x[None], y, "original")  # one sample per observation
    >>> score.pass_rate, score.mode_coverage
    (1.0, 1.0)
    """
    pair = _resolve_functions(functions)
    rmse_threshold = _check_positive("rmse_threshold", rmse_threshold)
    hit_tolerance = _check_positive("hit_tolerance", hit_tolerance)
    monotone_tolerance = _check_positive("monotone_tolerance", monotone_tolerance)
    if not (_is_real(pearson_threshold) and 0.0 <= pearson_threshold < 1.0):
        raise ConfigError(f"pearson_threshold must be in [0, 1), got {pearson_threshold!r}")
    pearson_threshold = float(pearson_threshold)

    xt = _as_tensor(x, "x")
    yt = _as_tensor(y, "y")
    if xt.ndim != 5 or tuple(xt.shape[2:]) != _EVENT_SHAPE:
        raise ShapeError(
            f"x must have shape (num_samples, num_observations, 1, 50, 2), got "
            f"{tuple(xt.shape)}; for one sample per observation pass x[None]"
        )
    if yt.ndim != 4 or tuple(yt.shape[1:]) != _EVENT_SHAPE or yt.shape[0] != xt.shape[1]:
        raise ShapeError(
            f"y must have shape (num_observations, 1, 50, 2) = ({xt.shape[1]}, 1, 50, 2) to "
            f"match x of shape {tuple(xt.shape)}, got {tuple(yt.shape)}"
        )
    if xt.shape[0] == 0 or xt.shape[1] == 0:
        raise ShapeError(
            f"x must hold at least one sample and one observation, got {tuple(xt.shape)}"
        )
    _check_finite(xt, "x", "(num_samples, num_observations, 1, 50, 2)")
    _check_finite(yt, "y", "(num_observations, 1, 50, 2)")
    xt = xt.transpose(0, 1)  # (M, S, 1, 50, 2): observation-major, as the score's arrays
    num_obs, num_samples = int(xt.shape[0]), int(xt.shape[1])
    y64 = yt.to(torch.float64).cpu().numpy()
    yt = yt.to(device=xt.device, dtype=xt.dtype)

    # misfit: F(x) evaluated in x's dtype
    with torch.no_grad():
        y_rec = _apply_pair(pair, xt[..., 0], xt[..., 1])
        sq = ((y_rec - yt[:, None]).to(torch.float64) ** 2).cpu().numpy()  # (M, S, 1, 50, 2)
    y_rmse_comp = np.sqrt(sq.mean(axis=(-3, -2)))  # (M, S, 2)
    y_rmse = np.sqrt(sq.mean(axis=(-3, -2, -1)))  # (M, S)
    if rmse_per_component:
        misfit_ok = (y_rmse_comp < rmse_threshold).all(axis=-1)
    else:
        misfit_ok = y_rmse < rmse_threshold

    lines = xt[:, :, 0].to(torch.float64).cpu().numpy()  # (M, S, 50, 2)
    steps = np.diff(lines, axis=2)  # (M, S, 49, 2)
    # numpy's stubs type ndarray.all(axis=...) as "np.bool | ndarray"; with an axis of an
    # (M, S, 49) array the result is an (M, S) array
    monotone = cast(
        np.ndarray,
        (steps[..., 0] <= monotone_tolerance).all(axis=-1)
        & (steps[..., 1] >= -monotone_tolerance).all(axis=-1),
    )
    pearson_r = _pearson_with_position(np.moveaxis(lines, -1, -2))  # (M, S, 2)
    with np.errstate(invalid="ignore"):
        correlated = (np.abs(pearson_r) > pearson_threshold).all(axis=-1)  # NaN -> False
    passed = monotone & correlated & misfit_ok

    endpoints = endpoints_from_lines(xt.to(torch.float64).cpu()).numpy()  # (M, S, 4)
    diversity_obs = np.full(num_obs, np.nan)
    clusters_obs = np.zeros(num_obs, dtype=np.int64)
    for m in range(num_obs):
        pts = endpoints[m, passed[m]]
        clusters_obs[m] = _greedy_clusters(pts, hit_tolerance)
        if len(pts) >= 2:
            dist = np.abs(pts[:, None, :] - pts[None, :, :]).max(axis=-1)
            upper = np.triu_indices(len(pts), k=1)
            diversity_obs[m] = dist[upper].mean()

    solutions: tuple[np.ndarray, ...] | None = None
    if exact_solutions is not None:
        solutions = _check_solutions(exact_solutions, num_obs)
    elif all(isinstance(f, TrigComponent) for f in pair):
        trig = _trig_pair(pair)
        y_np = y64.reshape(num_obs, NUM_POINTS, 2)  # enumerate from y at full precision
        solutions = tuple(_enumerate(obs, trig, _DEFAULT_TOL, _DEFAULT_SLACK) for obs in y_np)
    hit_index = num_solutions = modes_hit = coverage_obs = None
    mode_coverage = mean_num_solutions = mean_modes_hit = num_without = None
    if solutions is not None:
        hit_index = np.full((num_obs, num_samples), -1, dtype=np.int64)
        num_solutions = np.array([len(s) for s in solutions], dtype=np.int64)
        modes_hit = np.zeros(num_obs, dtype=np.int64)
        coverage_obs = np.full(num_obs, np.nan)
        for m, sols in enumerate(solutions):
            if len(sols) == 0:
                continue
            idx = np.flatnonzero(passed[m])
            if idx.size:
                dist = np.abs(endpoints[m, idx][:, None, :] - sols[None]).max(axis=-1)
                nearest = dist.argmin(axis=1)
                hit = dist[np.arange(idx.size), nearest] <= hit_tolerance
                hit_index[m, idx[hit]] = nearest[hit]
                modes_hit[m] = np.unique(nearest[hit]).size
            coverage_obs[m] = modes_hit[m] / min(num_samples, len(sols))
        with_solutions = num_solutions > 0
        num_without = int((~with_solutions).sum())
        mean_num_solutions = float(num_solutions.mean())
        if with_solutions.any():
            mode_coverage = float(coverage_obs[with_solutions].mean())
            mean_modes_hit = float(modes_hit[with_solutions].mean())
        else:
            mode_coverage = mean_modes_hit = float("nan")

    enough = ~np.isnan(diversity_obs)
    return TwoBirdsScore(
        passed=passed,
        monotone=monotone,
        pearson_r=pearson_r,
        y_rmse=y_rmse,
        y_rmse_per_component=y_rmse_comp,
        hit_index=hit_index,
        pass_rate_per_observation=passed.mean(axis=1),
        diversity_per_observation=diversity_obs,
        num_clusters_per_observation=clusters_obs,
        num_exact_solutions=num_solutions,
        modes_hit_per_observation=modes_hit,
        mode_coverage_per_observation=coverage_obs,
        exact_solutions=solutions,
        pass_rate=float(passed.mean()),
        mean_y_rmse=float(y_rmse.mean()),
        diversity=float(diversity_obs[enough].mean()) if enough.any() else float("nan"),
        mean_num_clusters=float(clusters_obs.mean()),
        mode_coverage=mode_coverage,
        mean_num_exact_solutions=mean_num_solutions,
        mean_modes_hit=mean_modes_hit,
        num_observations_without_solutions=num_without,
        rmse_threshold=rmse_threshold,
        pearson_threshold=pearson_threshold,
        hit_tolerance=hit_tolerance,
        monotone_tolerance=monotone_tolerance,
        rmse_per_component=bool(rmse_per_component),
    )
