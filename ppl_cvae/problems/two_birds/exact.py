"""Exact solutions of the noise-free Two Birds problem.

:func:`enumerate_exact_solutions` lists every pair of straight lines that reproduces one
observation ``y`` when both functions are :class:`~ppl_cvae.problems.two_birds.TrigComponent`
(``y_k = kind_k(a_k x0 + b_k x1)``); :func:`enumerate_exact_solutions_batch` loops it over a
batch of observations. The exact posterior of the problem is a finite set of point masses at
these solutions, so they are the modes a generator should find (scored in
:mod:`~ppl_cvae.problems.two_birds.scoring`, weighted in
:mod:`~ppl_cvae.problems.two_birds.mode_weights`).

Conventions follow :mod:`~ppl_cvae.problems.two_birds.problem`: positions ``t_i = i / 49``
(dimensionless, ``i = 0..49``), ``x`` and ``y`` have event shape ``(1, 50, 2)`` (row, position,
line/component), every quantity is dimensionless, nothing is log-transformed. A pair of lines is
summarised by its endpoints ``(x0(0), x0(1), x1(0), x1(1))``, and the distance between two
pairs is the max-abs difference of their endpoints.

References
----------
The "Two Birds, One Neural Network" challenge (problem statement and data files:
``scoring_dataset.pt``, ``validation_dataset_*.pt``, ``submission_sample.pt``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, DataError, ShapeError, UnknownProblemError
from ppl_cvae.problems.two_birds.problem import (
    _HIGH,
    _LOW,
    FUNCTION_PAIRS,
    NUM_POINTS,
    TrigComponent,
)

__all__ = ["enumerate_exact_solutions", "enumerate_exact_solutions_batch"]

_EVENT_SHAPE = (1, NUM_POINTS, 2)
_T = np.arange(NUM_POINTS, dtype=np.float64) / (NUM_POINTS - 1)  # positions t_i, shape (50,)

# Candidate phase lines whose y-RMSE (before refinement) is above this are discarded before the
# Levenberg-Marquardt refinement. A candidate built from the exact endpoint phases of a true
# solution stays below ~1e-3 even when y is rounded to float32 (arccos amplifies y-rounding near
# |y| = 1), so 0.05 keeps every true line; it drops ~97 % of the candidates ("original").
_SCREEN_RMSE = 0.05
# Margin (radians) by which candidate endpoint phases may leave the phase range reachable with
# x in [0.1, 1]; the final bound check on x does the exact selection.
_PHASE_MARGIN = 0.05
# Cap on the Levenberg-Marquardt iterations of the phase-line refinement (on the challenge's data
# every candidate stops after 2 to 5; the cap only bounds the cost of pathological input).
_LM_ITERATIONS = 50
# Two enumerated solutions closer than this (max-abs endpoint distance) are the same solution.
# Duplicates arise when y = +-1 at an endpoint (both arccos/arcsin branches coincide).
_DEDUPE_RADIUS = 1e-3
# Defaults of enumerate_exact_solutions, also used by score_samples (see that docstring).
_DEFAULT_TOL = 1e-4
_DEFAULT_SLACK = 1e-6

# What the public functions accept as ``functions`` besides a name: two callables.
_FunctionSequence = Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _resolve_functions(functions: str | _FunctionSequence) -> tuple[Callable[..., Any], ...]:
    """Return the function pair named by ``functions`` or the given pair, validated."""
    if isinstance(functions, str):
        if functions not in FUNCTION_PAIRS:
            raise UnknownProblemError(
                f"unknown Two Birds function pair {functions!r}; "
                f"expected one of {sorted(FUNCTION_PAIRS)} or a pair of callables"
            )
        return tuple(FUNCTION_PAIRS[functions])
    try:
        pair = tuple(functions)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(callable(f) for f in pair):
        raise ConfigError(
            f"functions must be a name in {sorted(FUNCTION_PAIRS)} or a pair of callables "
            f"f(x0, x1); got {functions!r}"
        )
    return pair


def _trig_pair(functions: str | _FunctionSequence) -> tuple[TrigComponent, TrigComponent]:
    """Return ``functions`` as a validated pair of TrigComponent, or raise ConfigError."""
    pair = _resolve_functions(functions)
    trig = tuple(f for f in pair if isinstance(f, TrigComponent))
    if len(trig) != len(pair):
        kinds = [type(f).__name__ for f in pair]
        raise ConfigError(
            "exact solutions can only be enumerated for a pair of TrigComponent functions "
            f"kind(a * x0 + b * x1); got {kinds}"
        )
    for f in trig:
        if f.kind not in ("sin", "cos"):
            raise ConfigError(f"TrigComponent.kind must be 'sin' or 'cos', got {f.kind!r}")
        if not (math.isfinite(f.a) and math.isfinite(f.b)):
            raise ConfigError(f"TrigComponent coefficients must be finite, got a={f.a}, b={f.b}")
    (a0, b0), (a1, b1) = (trig[0].a, trig[0].b), (trig[1].a, trig[1].b)
    det = a0 * b1 - a1 * b0
    scale = math.hypot(a0, b0) * math.hypot(a1, b1)
    if scale == 0.0 or abs(det) <= 1e-12 * scale:
        raise ConfigError(
            f"the phase matrix [[{a0}, {b0}], [{a1}, {b1}]] is singular (det={det}): the two "
            "components see the same combination of x0 and x1, so the solutions are not "
            "isolated and cannot be enumerated"
        )
    return trig[0], trig[1]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Return ``value`` (tensor or array-like) as a float64 numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().to(torch.float64).numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a numeric array or tensor: {exc}") from exc


def _check_finite(array: np.ndarray | torch.Tensor, name: str, expected: str) -> None:
    """Raise DataError naming ``name`` if ``array`` holds NaN or inf."""
    finite = torch.isfinite(array) if isinstance(array, torch.Tensor) else np.isfinite(array)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(
            f"{name} (shape {tuple(array.shape)}, expected {expected}) holds {bad} NaN/inf "
            "values; drop or repair those entries before scoring"
        )


def _single_y(y: Any) -> np.ndarray:
    """Validate one observation and return it as float64 of shape ``(50, 2)``."""
    arr = _to_numpy(y, "y")
    if arr.shape not in (_EVENT_SHAPE, _EVENT_SHAPE[1:]):
        raise ShapeError(
            f"y must have shape {_EVENT_SHAPE} or {_EVENT_SHAPE[1:]} (one observation), "
            f"got {arr.shape}; use enumerate_exact_solutions_batch for a batch"
        )
    _check_finite(arr, "y", f"{_EVENT_SHAPE} or {_EVENT_SHAPE[1:]}")
    return arr.reshape(NUM_POINTS, 2)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_positive(name: str, value: float) -> float:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_solutions(solutions: Sequence[Any], num_obs: int) -> tuple[np.ndarray, ...]:
    """Validate user-given exact solutions: ``num_obs`` finite arrays of shape (K_m, 4)."""
    length = len(solutions) if hasattr(solutions, "__len__") else None
    if isinstance(solutions, (str, bytes)) or length != num_obs:
        raise ShapeError(
            f"exact_solutions must hold one (num_solutions, 4) array per observation, "
            f"{num_obs} in all; got {type(solutions).__name__} of length {length}"
        )
    out = []
    for m, sols in enumerate(solutions):
        arr = _to_numpy(sols, f"exact_solutions[{m}]")
        if arr.size == 0:
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ShapeError(
                f"exact_solutions[{m}] must have shape (num_solutions, 4) (endpoints "
                f"x0(0), x0(1), x1(0), x1(1)), got {arr.shape}"
            )
        _check_finite(arr, f"exact_solutions[{m}]", "(num_solutions, 4)")
        out.append(arr)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# exact solutions
# ---------------------------------------------------------------------------------------------


def _phase_range(comp: TrigComponent) -> tuple[float, float]:
    """Return the range of ``a x0 + b x1`` for x0, x1 in [0.1, 1] (radians)."""
    lo = min(_LOW * comp.a, _HIGH * comp.a) + min(_LOW * comp.b, _HIGH * comp.b)
    hi = max(_LOW * comp.a, _HIGH * comp.a) + max(_LOW * comp.b, _HIGH * comp.b)
    return lo, hi


def _endpoint_phases(value: float, comp: TrigComponent, lo: float, hi: float) -> np.ndarray:
    """Return every phase ``p`` in ``[lo, hi]`` (with margin) with ``kind(p) = value``."""
    v = float(np.clip(value, -1.0, 1.0))
    if comp.kind == "cos":
        base = np.array([math.acos(v), -math.acos(v)])
    else:
        base = np.array([math.asin(v), math.pi - math.asin(v)])
    n_lo = math.floor((lo - _PHASE_MARGIN - base.max()) / (2 * math.pi))
    n_hi = math.ceil((hi + _PHASE_MARGIN - base.min()) / (2 * math.pi))
    shifts = 2 * math.pi * np.arange(n_lo, n_hi + 1)
    phases = (base[:, None] + shifts[None, :]).ravel()
    return phases[(phases >= lo - _PHASE_MARGIN) & (phases <= hi + _PHASE_MARGIN)]


def _kind(kind: str, phase: np.ndarray) -> np.ndarray:
    return np.cos(phase) if kind == "cos" else np.sin(phase)


def _kind_derivative(kind: str, phase: np.ndarray) -> np.ndarray:
    return -np.sin(phase) if kind == "cos" else np.cos(phase)


def _line_rmse(kind: str, start: np.ndarray, end: np.ndarray, yk: np.ndarray) -> np.ndarray:
    """Y-RMSE of the phase lines ``start + (end - start) t``; shape ``start.shape``."""
    phase = start[:, None] * (1.0 - _T) + end[:, None] * _T
    return np.sqrt(np.mean((_kind(kind, phase) - yk) ** 2, axis=-1))


def _component_phase_lines(
    yk: np.ndarray, comp: TrigComponent, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the phase lines reproducing one component, shape ``(m, 2)``, and their RMSE ``(m,)``.

    Candidates are all pairs of endpoint phases; the ones with RMSE below ``_SCREEN_RMSE`` are
    refined by a vectorised Levenberg-Marquardt fit of ``(start, end)`` to the 50 values of
    ``yk``; lines with refined RMSE below ``tol`` are returned.
    """
    lo, hi = _phase_range(comp)
    c0 = _endpoint_phases(yk[0], comp, lo, hi)
    c1 = _endpoint_phases(yk[-1], comp, lo, hi)
    start = np.repeat(c0, c1.size)
    end = np.tile(c1, c0.size)
    rmse = _line_rmse(comp.kind, start, end, yk)
    keep = rmse < max(_SCREEN_RMSE, 10 * tol)
    start, end, rmse = start[keep], end[keep], rmse[keep]

    # Levenberg-Marquardt on (start, end): residual r_i = kind(p_i) - y_i,
    # Jacobian J_i = kind'(p_i) * (1 - t_i, t_i); damping lam * trace(J^T J) on the diagonal.
    # A candidate stops once an accepted step lowers its RMSE by less than 0.1 % (converged)
    # or its damping exceeds 1e6 (no descent direction left).
    lam = np.full(start.shape, 1e-3)
    active = np.ones(start.shape, dtype=bool)
    w0, w1 = 1.0 - _T, _T
    for _ in range(_LM_ITERATIONS):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        s0, e0, r0, l0 = start[idx], end[idx], rmse[idx], lam[idx]
        phase = s0[:, None] * w0 + e0[:, None] * w1
        res = _kind(comp.kind, phase) - yk
        deriv = _kind_derivative(comp.kind, phase)
        j0, j1 = deriv * w0, deriv * w1
        h00, h01, h11 = (j0 * j0).sum(-1), (j0 * j1).sum(-1), (j1 * j1).sum(-1)
        damp = l0 * (h00 + h11 + 1e-12)
        h00, h11 = h00 + damp, h11 + damp
        g0, g1 = (j0 * res).sum(-1), (j1 * res).sum(-1)
        det = h00 * h11 - h01 * h01
        s1 = s0 - (h11 * g0 - h01 * g1) / det
        e1 = e0 - (h00 * g1 - h01 * g0) / det
        r1 = _line_rmse(comp.kind, s1, e1, yk)
        better = r1 < r0
        start[idx] = np.where(better, s1, s0)
        end[idx] = np.where(better, e1, e0)
        rmse[idx] = np.where(better, r1, r0)
        lam[idx] = np.where(better, l0 * 0.1, l0 * 10.0)
        active[idx] = np.where(better, r1 < (1 - 1e-3) * r0, lam[idx] <= 1e6)
    ok = rmse < tol
    return np.stack([start[ok], end[ok]], axis=-1), rmse[ok]


def enumerate_exact_solutions(
    y: np.ndarray | torch.Tensor,
    functions: str | tuple[TrigComponent, TrigComponent],
    *,
    tol: float = _DEFAULT_TOL,
    bound_slack: float = _DEFAULT_SLACK,
) -> np.ndarray:
    r"""Enumerate every exact solution of the noise-free Two Birds problem for one observation.

    Parameters
    ----------
    y : ndarray or Tensor, shape (1, 50, 2) or (50, 2)
        One observation, ``y[..., i, k] = f_k(x0(t_i), x1(t_i))``, dimensionless in [-1, 1].
    functions : str or pair of TrigComponent
        A name in :data:`~ppl_cvae.problems.two_birds.FUNCTION_PAIRS` or two components
        ``f_k = kind_k(a_k x0 + b_k x1)`` with a non-singular phase matrix.
    tol : float, default 1e-4
        A solution must reproduce each component of ``y`` with RMSE (over the 50 positions)
        below ``tol``. The default is ~30 times the float32 rounding of the challenge's ``y``
        (true lines reach RMSE < 3e-6 there) and rejects the near-solutions that appear when a
        phase line stays on a plateau of ``kind`` (``|y|`` close to 1 along the whole line): those
        fit with RMSE 1e-4 .. 1e-3 but are not solutions. Raise it for noisier ``y``.
    bound_slack : float, default 1e-6
        Slack allowed on the prior's constraints: endpoints in ``[0.1 - slack, 1 + slack]``,
        ``x0(1) <= x0(0) + slack`` and ``x1(1) >= x1(0) - slack``.

    Returns
    -------
    ndarray, shape (num_solutions, 4), float64
        Endpoints ``(x0(0), x0(1), x1(0), x1(1))`` of each solution, sorted lexicographically
        (on the endpoints rounded to 9 decimals, so that the order does not depend on rounding);
        ``num_solutions`` may be 0 (``y`` not produced by the prior within ``tol``). Solutions
        closer than 1e-3 (max-abs endpoint distance) are merged, keeping the best-fitting one.

    Raises
    ------
    ConfigError
        If ``functions`` is not a pair of TrigComponent with kind ``"sin"``/``"cos"``, finite
        coefficients and a non-singular phase matrix, or ``tol``/``bound_slack`` is not > 0.
    UnknownProblemError
        If ``functions`` is a string not in ``FUNCTION_PAIRS``.
    ShapeError
        If ``y`` is not of shape ``(1, 50, 2)`` or ``(50, 2)``.
    DataError
        If ``y`` holds NaN or inf.

    Notes
    -----
    Both lines are linear in ``t``, so each phase ``p_k(t) = a_k x0(t) + b_k x1(t)`` is a
    straight line in ``t``, fixed by ``p_k(0)`` and ``p_k(1)``. The candidates for ``p_k(0)``
    are every phase ``p`` with ``kind_k(p) = y_k(0)`` inside the range reachable with
    ``x0, x1`` in [0.1, 1]: ``p = +-arccos(y) + 2 pi n`` (cos) or ``p = arcsin(y) + 2 pi n``,
    ``pi - arcsin(y) + 2 pi n`` (sin); likewise for ``p_k(1)``. Every candidate pair is a
    candidate phase line; those that fit ``y_k`` at all 50 positions (after a
    Levenberg-Marquardt polish of both endpoint phases, which removes the error that arccos
    amplifies near ``|y| = 1``) are kept. Each pair of kept lines (one per component) gives
    the lines by solving, at ``t = 0`` and ``t = 1``,

    .. math:: \begin{pmatrix} a_0 & b_0 \\ a_1 & b_1 \end{pmatrix}
              \begin{pmatrix} x_0(t) \\ x_1(t) \end{pmatrix}
              = \begin{pmatrix} p_0(t) \\ p_1(t) \end{pmatrix},

    and the prior's support (monotone lines inside [0.1, 1]) selects the solutions. The noise
    model is none: the solutions are the support of the exact posterior (point masses).
    For ``"original"`` the challenge's observations have 1 to 30 solutions (mean about 11 on
    the validation file, 13.5 on the sample submission's); for ``"data_1"`` 1 or 2.

    References
    ----------
    The "Two Birds, One Neural Network" challenge (problem statement and data files).
    Levenberg, K. (1944). A method for the solution of certain non-linear problems in least
    squares. Quarterly of Applied Mathematics 2(2), 164-168. DOI 10.1090/qam/10666.
    Marquardt, D. W. (1963). An algorithm for least-squares estimation of nonlinear parameters.
    Journal of the Society for Industrial and Applied Mathematics 11(2), 431-441.
    DOI 10.1137/0111030.

    Examples
    --------
    >>> from ppl_cvae.problems.two_birds import TwoBirds, lines_from_endpoints
    >>> true = torch.tensor([0.8, 0.3, 0.2, 0.6], dtype=torch.float64)
    >>> y = TwoBirds("data_1").forward(lines_from_endpoints(true))
    >>> solutions = enumerate_exact_solutions(y, "data_1")
    >>> bool(np.abs(solutions - true.numpy()).max(axis=1).min() < 1e-6)
    True
    """
    pair = _trig_pair(functions)
    tol = _check_positive("tol", tol)
    bound_slack = _check_positive("bound_slack", bound_slack)
    return _enumerate(_single_y(y), pair, tol, bound_slack)


def _enumerate(
    y: np.ndarray, pair: tuple[TrigComponent, TrigComponent], tol: float, slack: float
) -> np.ndarray:
    """Enumerate solutions for a validated ``y`` of shape (50, 2); see the public function."""
    lines0, rmse0 = _component_phase_lines(y[:, 0], pair[0], tol)
    lines1, rmse1 = _component_phase_lines(y[:, 1], pair[1], tol)
    if lines0.size == 0 or lines1.size == 0:
        return np.empty((0, 4))
    inv = np.linalg.inv(np.array([[pair[0].a, pair[0].b], [pair[1].a, pair[1].b]]))
    p0 = lines0[:, None, :]  # (m0, 1, 2): component 0 phase at (t=0, t=1)
    p1 = lines1[None, :, :]  # (1, m1, 2)
    x0 = inv[0, 0] * p0 + inv[0, 1] * p1  # (m0, m1, 2): x0 at (t=0, t=1)
    x1 = inv[1, 0] * p0 + inv[1, 1] * p1
    sol = np.stack([x0[..., 0], x0[..., 1], x1[..., 0], x1[..., 1]], axis=-1).reshape(-1, 4)
    rmse = np.sqrt((rmse0[:, None] ** 2 + rmse1[None, :] ** 2) / 2).ravel()
    ok = (
        (sol[:, 1] <= sol[:, 0] + slack)
        & (sol[:, 3] >= sol[:, 2] - slack)
        & (sol >= _LOW - slack).all(axis=1)
        & (sol <= _HIGH + slack).all(axis=1)
    )
    sol, rmse = sol[ok], rmse[ok]
    kept: list[np.ndarray] = []
    for row in sol[np.argsort(rmse, kind="stable")]:
        if not kept or np.abs(np.asarray(kept) - row).max(axis=1).min() >= _DEDUPE_RADIUS:
            kept.append(row)
    if not kept:
        return np.empty((0, 4))
    out = np.asarray(kept)
    # sort on endpoints rounded far below the dedupe radius: solutions that share a line
    # (equal x0 endpoints up to the last bits) then sort by the other line on every machine
    return out[np.lexsort(np.round(out, 9).T[::-1])]


def _observation_batch(y: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``y`` as a finite float array of shape ``(M, 1, 50, 2)``, or raise."""
    arr = _to_numpy(y, "y")
    if arr.ndim != 4 or arr.shape[1:] != _EVENT_SHAPE:
        raise ShapeError(
            f"y must have shape (num_observations, 1, 50, 2), got {arr.shape}; "
            "add a batch axis with y[None] for a single observation"
        )
    _check_finite(arr, "y", "(num_observations, 1, 50, 2)")
    return arr


def enumerate_exact_solutions_batch(
    y: np.ndarray | torch.Tensor,
    functions: str | tuple[TrigComponent, TrigComponent],
    *,
    tol: float = _DEFAULT_TOL,
    bound_slack: float = _DEFAULT_SLACK,
) -> list[np.ndarray]:
    """Enumerate the exact solutions of each observation in a batch.

    Parameters
    ----------
    y : ndarray or Tensor, shape (num_observations, 1, 50, 2)
        Observations; the first axis is a batch axis, the rest is the event shape.
    functions : str or pair of TrigComponent
        As in :func:`enumerate_exact_solutions`.
    tol, bound_slack : float
        As in :func:`enumerate_exact_solutions`.

    Returns
    -------
    list of ndarray, length num_observations
        Element ``m`` has shape ``(num_solutions_m, 4)``: the endpoints
        ``(x0(0), x0(1), x1(0), x1(1))`` of the solutions of ``y[m]``.

    Raises
    ------
    ConfigError, UnknownProblemError
        As in :func:`enumerate_exact_solutions`.
    ShapeError
        If ``y`` is not of shape ``(num_observations, 1, 50, 2)``.
    DataError
        If ``y`` holds NaN or inf.

    Notes
    -----
    Loops :func:`enumerate_exact_solutions` over the batch axis (each call is vectorised; about
    3 ms per ``"original"`` observation on one CPU core).

    References
    ----------
    The "Two Birds, One Neural Network" challenge (problem statement and data files).

    Examples
    --------
    >>> from ppl_cvae.problems.two_birds import TwoBirds
    >>> x, y = TwoBirds("original").simulate(3, torch.Generator().manual_seed(0))
    >>> [s.shape for s in enumerate_exact_solutions_batch(y, "original")]
    [(8, 4), (18, 4), (11, 4)]
    """
    pair = _trig_pair(functions)
    tol = _check_positive("tol", tol)
    bound_slack = _check_positive("bound_slack", bound_slack)
    arr = _observation_batch(y)
    return [_enumerate(obs.reshape(NUM_POINTS, 2), pair, tol, bound_slack) for obs in arr]
