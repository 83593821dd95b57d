"""Unconstrained coordinates for models in a box: ``x = T(u)`` elementwise, ``u`` in ``R``.

A prior whose every element lies in an interval (a porosity in ``[0, 1]``, a positive
resistivity, sbi's ``BoxUniform``) has a box as its support: ``low <= x <= high`` elementwise,
with infinite ends for one-sided or unbounded elements. :func:`support_box` reads the box of a
declared support (:attr:`Problem.support <ppl_cvae.problems.base.Problem>`), and
:class:`BoxTransform` is the elementwise bijection from ``R`` onto it that
``torch.distributions.biject_to`` gives each kind of interval:

- both ends finite: ``x = low + (high - low) sigmoid(u)``;
- ``low`` only: ``x = low + exp(u)``;
- ``high`` only: ``x = high - exp(u)``;
- neither: ``x = u``.

A model fitted in ``u`` (``ModelConfig.x_transform="support"``) puts every draw inside the box
and no mass outside it, which is what sbi's ``z_score_theta="transform_to_unconstrained"``
does for a neural posterior estimator (instead of rejecting the draws that leak out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.distributions import constraints
from torch.distributions.transforms import Transform
from torch.nn import functional as F  # noqa: N812

__all__ = ["BoxTransform", "box_support", "support_box"]

_EXP_MAX = 80.0
"""Largest ``u`` whose ``exp`` the one-sided maps take (``exp(80) = 5.5e34``, inside float32):
beyond it a draw would be infinite, and the gradient of the branches not taken NaN."""

_BOX_CONSTRAINTS = (
    constraints._Real,
    constraints._Interval,
    constraints._HalfOpenInterval,
    constraints._GreaterThan,
    constraints._GreaterThanEq,
    constraints._LessThan,
)


def support_box(
    support: constraints.Constraint | None, x_shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return the box ``(low, high)`` of an elementwise interval support, or None.

    Parameters
    ----------
    support : torch.distributions.constraints.Constraint or None
        A declared support: ``real``, ``interval`` (``unit_interval``), ``half_open_interval``,
        ``greater_than`` (``positive``), ``greater_than_eq`` (``nonnegative``) or
        ``less_than``, with scalar bounds or bounds that broadcast to ``x_shape``, possibly
        wrapped in ``constraints.independent``.
    x_shape : sequence of int
        Event shape of one model.

    Returns
    -------
    (Tensor, Tensor) or None
        ``low`` and ``high``, float64 of shape ``x_shape`` (``-inf`` / ``inf`` where an
        element is unbounded on that side); None for no support or one that is not a box (a
        simplex, an ordered vector, a discrete or a user-defined constraint).

    Examples
    --------
    >>> low, high = support_box(constraints.positive, (2,))
    >>> low.tolist(), high.tolist()
    ([0.0, 0.0], [inf, inf])
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is None or type(support) not in _BOX_CONSTRAINTS or support.is_discrete:
        return None
    shape = tuple(int(v) for v in x_shape)
    low = getattr(support, "lower_bound", -math.inf)
    high = getattr(support, "upper_bound", math.inf)

    def full(bound: float | torch.Tensor) -> torch.Tensor | None:
        value = torch.as_tensor(bound, dtype=torch.float64).detach().cpu()
        try:
            return value.broadcast_to(shape).clone()
        except RuntimeError:  # bounds of another shape: not a box of these models
            return None

    low_t, high_t = full(low), full(high)
    if low_t is None or high_t is None:
        return None
    return low_t, high_t


def box_support(low: torch.Tensor, high: torch.Tensor) -> constraints.Constraint | None:
    """Return the constraint of the box ``[low, high]``: :func:`support_box`'s inverse, or None.

    ``interval(low, high)`` where every element has both ends finite, ``greater_than(low)``
    or ``less_than(high)`` where every element has that one end, ``real`` where none has
    either; None for a box whose elements mix kinds (no single torch constraint). Bounds that
    are the same for every element are given as floats. ``low``, ``high``: tensors of
    ``x_shape`` (units of ``x``, ``-inf``/``inf`` for an open side). Whether an end belongs
    to the set is not kept (``greater_than`` for ``nonnegative``).

    Examples
    --------
    >>> box_support(torch.zeros(2), torch.full((2,), math.inf))
    GreaterThan(lower_bound=0.0)
    >>> box_support(torch.tensor([0.0, -math.inf]), torch.ones(2)) is None
    True
    """

    def bound(value: torch.Tensor) -> float | torch.Tensor:
        flat = value.flatten()
        return float(flat[0]) if flat.numel() and bool((flat == flat[0]).all()) else value

    has_low, has_high = torch.isfinite(low), torch.isfinite(high)
    if bool((has_low & has_high).all()):
        return constraints.interval(bound(low), bound(high))
    if bool((has_low & ~has_high).all()):
        return constraints.greater_than(bound(low))
    if bool((~has_low & has_high).all()):
        return constraints.less_than(bound(high))
    if not bool((has_low | has_high).any()):
        return constraints.real
    return None


class BoxTransform(Transform):
    """The elementwise bijection ``u -> x`` from ``R^x_shape`` onto the box ``[low, high]``.

    ``x = low + (high - low) sigmoid(u)`` where both ends are finite, ``low + exp(u)`` or
    ``high - exp(u)`` where one is, ``u`` where neither is (the maps of
    ``torch.distributions.biject_to`` for each kind of interval), element by element.
    ``log |det J|`` is the sum over the event of the elementwise log-derivatives:
    ``log(high - low) + log sigmoid(u) + log sigmoid(-u)``, ``u`` or 0.

    Every ``x`` lies strictly inside the box, one unit in the last place of ``x``'s dtype
    from a finite end at least (where rounding would put it on the end: ``sigmoid(u) = 1``
    in float32 for ``u > 17``), so a draw is inside an open support (``positive``,
    ``greater_than``, ``less_than``, ``half_open_interval``) as well as a closed one.

    The inverse clamps: a value on a finite end (the closed box of a ``U(0, 1)`` draw that is
    exactly 0) or beyond it maps to the ``u`` of the nearest value ``eps`` inside (``eps`` the
    dtype's half machine epsilon of the box's width for two finite ends, ``floor`` for one),
    so a training value on the boundary has a finite ``u`` (about ``+-16.6`` in float32 for
    two ends), not ``+-inf``.

    Parameters
    ----------
    low, high : Tensor, shape x_shape
        Ends of the box in units of ``x`` (``-inf`` / ``inf`` for no end); ``low < high``.
    event_dim : int
        ``len(x_shape)``: the trailing axes that form one model.
    floor : Tensor, shape x_shape, optional
        Smallest distance from a one-sided end the inverse maps, units of ``x`` (> 0): a value
        nearer maps to ``log(floor)``. :func:`~ppl_cvae.train.build_cvae` sets half the
        smallest positive distance of the training values, so an atom of values on the end (a
        nonnegative quantity that is often 0) lands just below the data's own range of ``u``
        instead of at ``log(1.2e-38) = -87``. Default: the dtype's smallest normal number.

    Shapes: ``(*batch, *x_shape) -> (*batch, *x_shape)``; ``log_abs_det_jacobian`` has shape
    ``(*batch,)``, in nats.

    References
    ----------
    Carpenter et al. (2017), Stan: A Probabilistic Programming Language, J. Stat. Softw. 76
    (the transforms of bounded parameters to R and their Jacobians).
    """

    bijective = True

    def __init__(
        self,
        low: torch.Tensor,
        high: torch.Tensor,
        event_dim: int,
        floor: torch.Tensor | None = None,
    ) -> None:
        super().__init__(cache_size=1)
        self.low, self.high = low, high
        self.floor = floor
        self._event_dim = int(event_dim)
        finite_low, finite_high = torch.isfinite(low), torch.isfinite(high)
        self._both = finite_low & finite_high
        self._low_only = finite_low & ~finite_high
        self._high_only = ~finite_low & finite_high
        # finite stand-ins where a bound is infinite, so no branch computes inf or NaN
        self._lo = torch.where(finite_low, low, torch.zeros_like(low))
        self._hi = torch.where(finite_high, high, torch.ones_like(high))
        self._width = torch.where(self._both, self._hi - self._lo, torch.ones_like(low))
        self.domain = constraints.independent(constraints.real, self._event_dim)
        self.codomain = constraints.independent(
            constraints.interval(low, high), self._event_dim
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoxTransform)
            and torch.equal(self.low, other.low)
            and torch.equal(self.high, other.high)
            and (
                self.floor is other.floor
                or (
                    self.floor is not None
                    and other.floor is not None
                    and torch.equal(self.floor, other.floor)
                )
            )
        )

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        grown = u.clamp(max=_EXP_MAX).exp()
        x = torch.where(self._both, self._lo + self._width * torch.sigmoid(u), u)
        x = torch.where(self._low_only, self._lo + grown, x)
        x = torch.where(self._high_only, self._hi - grown, x)
        # rounding puts a far u on a finite end (sigmoid(u) = 1 in float32 for u > 17;
        # low + exp(u) = low once exp(u) is below half an ulp of low), outside an open support
        # (positive, greater_than, less_than, half_open_interval): keep x one ulp inside
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        return x.clamp(min=torch.nextafter(low, high), max=torch.nextafter(high, low))

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps / 2
        tiny = torch.finfo(x.dtype).tiny
        floor = (
            torch.full_like(self._lo, tiny, dtype=x.dtype)
            if self.floor is None
            else self.floor.to(x.dtype).clamp(min=tiny)
        )
        t = ((x - self._lo) / self._width).clamp(eps, 1 - eps)
        u = torch.where(self._both, torch.log(t) - torch.log1p(-t), x)
        u = torch.where(self._low_only, torch.maximum(x - self._lo, floor).log(), u)
        return torch.where(self._high_only, torch.maximum(self._hi - x, floor).log(), u)

    def log_derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Return ``log |dx_i / du_i|`` element by element, shape ``u.shape`` (nats).

        ``log(high - low) + log sigmoid(u) + log sigmoid(-u)`` for two finite ends, ``u`` for
        one, 0 for none; the map is elementwise, so this is the diagonal of its Jacobian.
        """
        interval = self._width.log() + F.logsigmoid(u) + F.logsigmoid(-u)
        one_sided = u.clamp(max=_EXP_MAX)
        log_det = torch.where(self._both, interval, torch.zeros_like(u))
        return torch.where(self._low_only | self._high_only, one_sided, log_det)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return ``log |det dy/dx|`` at ``x`` (``u``), shape ``x.shape[:-event_dim]`` (nats).

        ``+inf`` where ``y`` lies outside the box (a value that is not the image of any ``u``),
        so that a ``TransformedDistribution`` gives ``log_prob = -inf`` there rather than the
        density at the clamped ``u``.
        """
        log_det = self.log_derivative(x)
        outside = (y < self.low) | (y > self.high)
        if self._event_dim == 0:
            return log_det.masked_fill(outside, math.inf)
        start = log_det.dim() - self._event_dim
        total = log_det.flatten(start_dim=start).sum(-1)
        return total.masked_fill(outside.flatten(start_dim=start).any(-1), math.inf)
