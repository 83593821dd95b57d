"""How far a weighted sample's mode weights are from the exact posterior's, for Two Birds.

A sampler of the Two Birds posterior puts its draws (with weights: importance sampling; or
equal: MCMC, resampling) near the exact solutions. :func:`empirical_mode_weights` assigns
each draw to the nearest exact solution (endpoint coordinates) and sums the weights per
solution; :func:`mode_weight_distance` compares them with
:func:`~ppl_cvae.problems.two_birds.exact_mode_weights` by the total variation distance. Every
quantity is dimensionless; endpoints are ``(x0(0), x0(1), x1(0), x1(1))``.

References
----------
Tierney, L. and Kadane, J. B. (1986). Accurate approximations for posterior moments and
marginal densities. JASA 81(393), 82-86 (the Laplace weights). Levin, D. A., Peres, Y. and
Wilmer, E. L. (2009). Markov Chains and Mixing Times, AMS, sec. 4.1 (total variation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, ShapeError

__all__ = ["ModeWeightDistance", "empirical_mode_weights", "mode_weight_distance"]


def _as_2d(a: np.ndarray | torch.Tensor, name: str, width: int | None = None) -> np.ndarray:
    """Return ``a`` as float64 ``(N, width)`` (any width > 0 when None), else ShapeError."""
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or (width is not None and arr.shape[1] != width) or arr.shape[1] == 0:
        expected = f"(N, {width})" if width is not None else "(N, k)"
        raise ShapeError(
            f"{name} must have shape {expected} (coefficients: Two Birds endpoints have k = 4), "
            f"got {arr.shape}"
        )
    return arr


def empirical_mode_weights(
    draws: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None,
    exact_solutions: np.ndarray | torch.Tensor,
    *,
    radius: float = 1e-3,
) -> tuple[np.ndarray, float]:
    """Sum the weights of the draws nearest to each exact solution.

    Parameters
    ----------
    draws : ndarray or Tensor, shape (S, k)
        Endpoints of the draws (``k = 4``; any ``k`` works, with solutions of that width).
    weights : ndarray or Tensor, shape (S,), optional
        Non-negative weights (normalised here); None: equal weights.
    exact_solutions : ndarray or Tensor, shape (K, k)
        The exact solutions (:func:`~ppl_cvae.problems.two_birds.enumerate_exact_solutions`).
    radius : float, default 1e-3
        A draw counts for its nearest solution when the Euclidean distance (endpoint units) is
        at most ``radius``; farther draws are unassigned. The default is far wider than a
        mode at small noise (``sigma`` times ``(J^T J)^{-1/2}``: about 1e-6 for ``original``
        at ``sigma = 1e-4``) and narrower than the gap between the solutions of the
        challenge's files (smallest about 4e-3 on ``original``'s scoring set).

    Returns
    -------
    mode_weights : ndarray, shape (K,)
        Weight of the draws assigned to each solution (of total weight 1).
    unassigned : float
        Weight of the draws near no solution: ``1 - mode_weights.sum()``.

    Raises
    ------
    ShapeError
        If a shape is wrong.
    ConfigError
        If a weight is negative or not finite, the weights sum to 0, or ``radius <= 0``.
    """
    sols = _as_2d(exact_solutions, "exact_solutions")
    e = _as_2d(draws, "draws", sols.shape[1])
    if not radius > 0:
        raise ConfigError(f"radius must be > 0, got {radius}")
    if weights is None:
        w = np.full(len(e), 1.0 / max(len(e), 1))
    else:
        w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else weights
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (len(e),):
            raise ShapeError(f"weights must have shape ({len(e)},), got {w.shape}")
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ConfigError("weights must be finite, non-negative and not all 0")
        w = w / w.sum()
    out = np.zeros(len(sols))
    if len(sols) == 0 or len(e) == 0:
        return out, float(1.0 - out.sum())
    dist = np.linalg.norm(e[:, None, :] - sols[None, :, :], axis=-1)  # (S, K)
    nearest = dist.argmin(axis=1)
    near = dist[np.arange(len(e)), nearest] <= radius
    np.add.at(out, nearest[near], w[near])
    return out, float(max(0.0, 1.0 - out.sum()))


@dataclass(frozen=True)
class ModeWeightDistance:
    """Mode weights of a sample against the exact posterior's, for one observation.

    Attributes
    ----------
    total_variation : float
        ``0.5 * (sum_j |w_hat_j - w_j| + unassigned)``, in [0, 1].
    mode_weights : ndarray, shape (K,)
        ``w_hat``: the sample's weight per exact solution.
    exact_weights : ndarray, shape (K,)
        ``w``: the exact posterior's (Laplace) weights.
    unassigned : float
        The sample's weight near no exact solution.
    missed_weight : float
        Exact weight of the solutions that got no weight from the sample.
    """

    total_variation: float
    mode_weights: np.ndarray
    exact_weights: np.ndarray
    unassigned: float
    missed_weight: float


def mode_weight_distance(
    draws: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None,
    exact_solutions: np.ndarray | torch.Tensor,
    exact_weights: np.ndarray | torch.Tensor,
    *,
    radius: float = 1e-3,
) -> ModeWeightDistance:
    r"""Compare a weighted sample's mode weights with the exact ones by total variation.

    Parameters
    ----------
    draws, weights, exact_solutions, radius
        As in :func:`empirical_mode_weights`.
    exact_weights : ndarray or Tensor, shape (K,)
        The exact posterior's weight of each solution (:func:`exact_mode_weights`).

    Returns
    -------
    ModeWeightDistance

    Raises
    ------
    ShapeError
        If ``exact_weights`` does not have one entry per solution, or as
        :func:`empirical_mode_weights`.
    ConfigError
        As :func:`empirical_mode_weights`.

    Notes
    -----
    On the ``K + 1`` outcomes "near solution ``j``" and "near none" (exact weight 0), the total
    variation distance is

    .. math:: \mathrm{TV} = \tfrac12 \Big(\sum_j |\hat w_j - w_j| + \hat w_\varnothing\Big)
              = \max_A |\hat P(A) - P(A)|,

    the largest error of the sample's probability of any set of modes. A sampler that draws
    ``S`` iid draws from the exact weights has ``E[TV]`` of order
    ``0.5 sum_j sqrt(2 w_j (1 - w_j) / (pi S))``; a sampler that misses modes of total
    weight ``m`` has ``TV >= m / 2`` (at least ``m`` when the rest is in proportion).

    Examples
    --------
    >>> sols = np.array([[0.9, 0.2, 0.3, 0.8], [0.8, 0.5, 0.2, 0.4]])
    >>> draws = np.repeat(sols, [3, 1], axis=0)
    >>> round(mode_weight_distance(draws, None, sols, np.array([0.5, 0.5])).total_variation, 3)
    0.25
    """
    sols = _as_2d(exact_solutions, "exact_solutions")
    ref = (
        exact_weights.detach().cpu().numpy()
        if isinstance(exact_weights, torch.Tensor)
        else np.asarray(exact_weights)
    ).astype(np.float64)
    if ref.shape != (len(sols),):
        raise ShapeError(f"exact_weights must have shape ({len(sols)},), got {ref.shape}")
    got, unassigned = empirical_mode_weights(draws, weights, sols, radius=radius)
    tv = 0.5 * (float(np.abs(got - ref).sum()) + unassigned)
    return ModeWeightDistance(
        total_variation=tv,
        mode_weights=got,
        exact_weights=ref,
        unassigned=unassigned,
        missed_weight=float(ref[got == 0].sum()),
    )
