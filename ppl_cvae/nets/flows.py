"""Conditional normalising flows from Pyro's transforms: flexible ``p(v | c)`` on ``R^dim``.

:class:`ConditionalFlow` is the density used by ``likelihood="flow"`` (the decoder
``p(x | z, y)`` as a flow on the standardised ``x``) and by ``prior="flow"`` (the prior net
``p(z | y)`` as a flow on ``z``). Both sample in the same order::

    e ~ N(0, I_dim)
    u = loc(c) + scale(c) * e   (an elementwise affine layer, conditioned on c)
    v = S_K(...S_1(u))          (rational-quadratic spline layers, conditioned on c)

With ``num_layers=0`` this is the diagonal Gaussian ``Normal(loc(c), scale(c))`` of the plain
decoder and prior net; each spline layer bends it. A spline layer is one of two types
(:data:`FLOW_LAYER_TYPES`): ``"autoregressive"`` (a masked autoregressive spline layer: the
density is one network pass, a draw ``dim`` sequential passes) or ``"coupling"`` (a spline
coupling layer: half of the coordinates condition a spline of the other half, the halves
alternating from layer to layer, and, after a single one (or when asked), one
elementwise spline of every coordinate conditioned on ``c`` alone: density and draw are one
network pass per layer, whatever ``dim``). The splines act on ``v``'s own
(standardised) coordinates inside the box ``[-FLOW_BOUND, FLOW_BOUND]``, which holds the
training values of a standardised variable, and are the identity outside it; the
conditional Gaussian ahead of them can be narrow where the data pin ``v`` down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T  # noqa: N812
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.transforms.spline import ConditionedSpline
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform, Transform
from torch.nn import functional as F  # noqa: N812

from ppl_cvae._choices import FLOW_LAYER_TYPES, FlowLayerType
from ppl_cvae.errors import ConfigError
from ppl_cvae.nets.blocks import SCALE_FLOOR, ConditionalInput, make_activation

__all__ = [
    "ConditionalFlow",
    "FLOW_BOUND",
    "FLOW_LAYER_TYPES",
    "MAX_FLOW_WEIGHTS",
    "final_spline_default",
]

FLOW_BOUND = 4.0
"""Half-width of the spline box ``[-FLOW_BOUND, FLOW_BOUND]`` in standardised units: each
spline layer is the identity outside it."""

MAX_FLOW_WEIGHTS = 2**26
"""Most weights of one flow layer's conditioning network (67 million, 256 MiB of float32).

Pyro's autoregressive networks compute their masks with ``Tensor.item()``, which PyTorch's
``meta`` device cannot do; a flow built for a meta-device size check is therefore built on the
CPU and moved to ``meta``, and this limit, checked before anything is allocated, bounds that."""


def _layer_weights(dim: int, context_dim: int, hidden: list[int], count_bins: int) -> int:
    """Weights of one spline layer's conditioning network (masks excluded)."""
    widths = [dim + context_dim, *hidden, dim * (3 * count_bins - 1)]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def _coupling_weights(dim: int, context_dim: int, hidden: list[int], count_bins: int) -> int:
    """Weights of the largest conditioning network of a coupling flow (biases excluded).

    The candidates: the final elementwise spline's network (context to ``dim`` splines) and
    each coupling layer's (one half and the context to the other half's splines).
    """
    sizes = []
    for given in (0, dim // 2, dim - dim // 2):  # 0: the final spline, given the context alone
        widths = [given + context_dim, *hidden, (dim - given or dim) * (3 * count_bins - 1)]
        sizes.append(sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)))
    return max(sizes)


def _build(make: Callable[[], nn.Module]) -> nn.Module:
    """Run ``make()``; under a ``meta`` default device build on the CPU and move to ``meta``."""
    if torch.get_default_device().type != "meta":
        return make()
    with torch.device("cpu"):
        module = make()
    return module.to("meta")


def final_spline_default(num_layers: int, layer_type: FlowLayerType) -> bool:
    """Return whether a flow gets its final elementwise spline when not told.

    A coupling flow of one layer has it: its given half would otherwise never pass through a
    spline (only the conditional Gaussian ahead of the layers). From two coupling layers on,
    the halves alternate, every coordinate has been moved by a spline conditioned on the
    context (and on the other half) in at least one layer, and the final spline is left out:
    it costs as much as a coupling layer (a third of the two-layer flow's time per SVI step,
    docs/measurements.md "Two Birds"). Autoregressive flows have no final spline.

    Parameters
    ----------
    num_layers : int
        Spline layers of the flow.
    layer_type : {"autoregressive", "coupling"}

    Returns
    -------
    bool

    References
    ----------
    Dinh, Sohl-Dickstein and Bengio (2017), Density estimation using Real NVP, ICLR (coupling
    layers alternating their halves).

    Examples
    --------
    >>> [final_spline_default(n, "coupling") for n in (0, 1, 2, 3)]
    [False, True, False, False]
    """
    return layer_type == "coupling" and num_layers == 1


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Return ``softmax(logits)`` over the last axis, from elementwise operations.

    The same function as :func:`torch.nn.functional.softmax` (the maximum subtracted first),
    within float rounding. On the spline's bins (a last axis of ``K`` = 5-20 entries and
    thousands of rows) PyTorch's CPU softmax kernel takes about 350 us for 1,024 rows of 10
    (torch 2.13, 1 thread), 5x these elementwise operations, and its backward pass 3x.
    """
    shifted = logits - logits.detach().amax(-1, keepdim=True)
    weights = shifted.exp()
    return weights / weights.sum(-1, keepdim=True)


def _condition_spline(spline: T.ConditionalSpline, context: object) -> ConditionedSpline:
    """Return Pyro's quadratic rational spline with the parameters of ``spline.nn(context)``.

    What ``spline.condition(context)`` returns, with the bins normalised by :func:`_softmax`
    instead of PyTorch's softmax kernel (see there) and the network evaluated once, here,
    rather than on every use of the returned transform. ``spline.nn`` returns the unnormalised
    widths and heights, ``(*batch, n * K)`` each, and inner-knot derivatives,
    ``(*batch, n * (K - 1))``, with ``n = spline.input_dim`` and ``K = spline.count_bins``;
    the transform sees them as ``(*batch, n, K)`` and ``(*batch, n, K - 1)`` (positive
    derivatives through softplus), as in Pyro's ``ConditionalSpline``.
    """
    n, bins = spline.input_dim, spline.count_bins
    widths, heights, derivatives = spline.nn(context)
    params = (
        _softmax(widths.reshape(*widths.shape[:-1], n, bins)),
        _softmax(heights.reshape(*heights.shape[:-1], n, bins)),
        F.softplus(derivatives.reshape(*derivatives.shape[:-1], n, bins - 1)),
        None,  # no lambdas: the quadratic spline
    )
    return ConditionedSpline(params, bound=spline.bound, order=spline.order)


class _Inverted(ConditionalTransformModule):
    """A conditional transform used in its inverse direction.

    Pyro's autoregressive transforms evaluate their forward map in one network pass and their
    inverse in ``dim`` passes. Used inverted, the density (the direction training needs, every
    step) is one pass and sampling takes ``dim`` passes: the masked autoregressive flow of
    Papamakarios et al. (2017) rather than the inverse autoregressive flow.
    """

    def __init__(self, inner: ConditionalTransformModule) -> None:
        super().__init__()
        self.inner = inner

    def condition(self, context: torch.Tensor) -> Transform:
        return self.inner.condition(context).inv


class _ConditionalLocScale(ConditionalTransformModule):
    """``u -> loc(c) + scale(c) * u`` elementwise, ``scale = softplus(raw) + SCALE_FLOOR``."""

    def __init__(self, context_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, 2 * dim)

    def condition(self, context: torch.Tensor) -> Transform:
        loc, raw = self.linear(context).chunk(2, dim=-1)
        return AffineTransform(loc, F.softplus(raw) + SCALE_FLOOR, event_dim=1)


class _CouplingNet(nn.Module):
    """Conditioning network of one coupling step: ``(v_a, c) -> (widths, heights, derivatives)``.

    A multilayer perceptron (ReLU) on ``concat(v_a, c)``, whose first layer is
    :class:`~ppl_cvae.nets.blocks.ConditionalInput`: the context's part ``W_c c + b`` is computed
    on the context's own batch and broadcast over the sample axes of ``v_a``, so ``S`` draws for
    one observation cost ``S`` products with ``W_a`` and one with ``W_c``. Three linear heads
    give the three parameter tensors, each contiguous in memory (the spline's softmax over the
    bins is several times slower on a strided view).

    Shapes: ``v_a (*sample, *batch, given_dim)`` and ``c (*batch, context_dim)`` ->
    ``(*sample, *batch, n * K)`` twice and ``(*sample, *batch, n * (K - 1))``, with
    ``n = out_dim`` moved coordinates and ``K = count_bins``: the unnormalised bin widths,
    heights and inner-knot derivatives that Pyro's ``ConditionalSpline`` (quadratic order)
    normalises and reads.
    """

    def __init__(
        self, given_dim: int, context_dim: int, hidden: list[int], out_dim: int, count_bins: int
    ) -> None:
        super().__init__()
        self.first = ConditionalInput(given_dim, context_dim, hidden[0], "relu")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), make_activation("relu")]
        self.body = nn.Sequential(*layers)
        self.widths = nn.Linear(hidden[-1], out_dim * count_bins)
        self.heights = nn.Linear(hidden[-1], out_dim * count_bins)
        self.derivatives = nn.Linear(hidden[-1], out_dim * (count_bins - 1))

    def forward(
        self, inputs: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the spline parameters of ``inputs = (v_a, c)``.

        One argument: Pyro's ``ConditionalSpline`` passes its context to the network as a
        single value, here the pair.
        """
        given, context = inputs
        h = self.body(self.first(given, context))
        return self.widths(h), self.heights(h), self.derivatives(h)


INVERSE_BISECTION_STEPS = 60
"""Halvings of ``[-FLOW_BOUND, FLOW_BOUND]`` by :class:`_SafeInverse` (``8 / 2**60`` is below
the spacing of float64 numbers near 1, so the bracket ends at adjacent floats)."""

KNOT_SHIFT = 1e-6
"""The shift Pyro's rational-quadratic spline adds to its knots when it looks up the bin of an
input (``eps`` of ``pyro.distributions.transforms.spline``): an input within this distance
above an inner knot is evaluated in the bin below, just beyond its end."""


class _LastPairTransform(Transform):
    """A transform that keeps the log-determinant of its last ``(x, y)`` pair.

    ``_call`` and ``_inverse`` of a subclass compute the log-determinant with the map and set
    ``self._last = (x, y, log_det)``; :meth:`log_abs_det_jacobian` returns it for that very
    pair (the identity of the tensors, as Pyro's own ``cache_size=1``) and evaluates the
    forward map afresh for any other.
    """

    def __init__(self) -> None:
        super().__init__(cache_size=1)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] is not x or self._last[1] is not y:
            self._call(x)  # not the pair of the last call: evaluate afresh
        assert self._last is not None
        return self._last[2]


class _SafeInverse(_LastPairTransform):
    """An elementwise monotone spline that gives finite values and log-determinants.

    Pyro's rational-quadratic spline (Durkan et al. 2019) looks up an input's bin with the
    knots shifted up by :data:`KNOT_SHIFT`, so an input just above an inner knot is evaluated
    in the bin below, beyond its end (``theta`` slightly above 1). Where the spline bends
    hard there (saturated network outputs: a knot derivative near its floor of ``1e-3`` next
    to a large one, bins at their minimum width) that extrapolation fails: the inverse's
    quadratic has no real root (Pyro's ``assert discriminant >= 0`` raises; under
    ``python -O``: NaN), and the forward map's denominator can turn negative (a NaN
    log-determinant, a wrong value). Guards, all on the elements that failed only:

    - forward: an element with a non-finite value or log-determinant is evaluated at
      ``x - 2 KNOT_SHIFT``, inside its own bin (the map is continuous; the value moves by at
      most ``2e-6`` times the slope);
    - inverse: where Pyro's root fails (the assertion, or a non-finite root or
      log-determinant) the root is found by bisection of the guarded forward map on
      ``[-bound, bound]`` (the identity outside), and its log-determinant is the forward
      map's there.

    Shapes: elementwise, ``(..., n) -> (..., n)``; ``log_abs_det_jacobian`` elementwise too.
    """

    bijective = True

    def __init__(self, inner: Transform, bound: float) -> None:
        super().__init__()
        self.inner = inner
        self.bound = bound
        self.domain = inner.domain
        self.codomain = inner.codomain
        self.guarded = False  # whether the last inverse needed the bisection

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(y, log|dy/dx|)`` of the guarded forward map."""
        y = self.inner(x)
        log_det = self.inner.log_abs_det_jacobian(x, y)
        bad = ~torch.isfinite(y) | ~torch.isfinite(log_det)
        if bool(bad.any()):
            nudged = torch.where(bad, x - 2 * KNOT_SHIFT, x)
            y_n = self.inner(nudged)
            log_det_n = self.inner.log_abs_det_jacobian(nudged, y_n)
            y, log_det = torch.where(bad, y_n, y), torch.where(bad, log_det_n, log_det)
        return y, log_det

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        y, log_det = self._forward(x)
        self._last = (x, y, log_det)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        try:
            x = self.inner.inv(y)
            log_det = self.inner.log_abs_det_jacobian(x, y)  # the inverse's, cached
            bad = ~torch.isfinite(x) | ~torch.isfinite(log_det)
        except AssertionError:  # Pyro's check of the quadratic's discriminant (see above)
            x, log_det = y, torch.zeros_like(y)
            bad = torch.ones_like(y, dtype=torch.bool)
        self.guarded = bool(bad.any())
        if self.guarded:
            root = self._bisect(y)
            _, log_det_root = self._forward(root)
            x, log_det = torch.where(bad, root, x), torch.where(bad, log_det_root, log_det)
        self._last = (x, y, log_det)
        return x

    def _bisect(self, y: torch.Tensor) -> torch.Tensor:
        """Return the root of ``f(x) = y`` of the guarded forward map ``f``, elementwise."""
        lo = torch.full_like(y, -self.bound)
        hi = torch.full_like(y, self.bound)
        for _ in range(INVERSE_BISECTION_STEPS):
            mid = (lo + hi) / 2
            below = self._forward(mid)[0] < y
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return torch.where(y.abs() <= self.bound, (lo + hi) / 2, y)


class _SafeAutoregressive(_LastPairTransform):
    """Pyro's spline autoregressive transform (Durkan et al. 2019) with guarded splines.

    ``inner`` is a conditioned ``SplineAutoregressive``: ``y_i = f_i(x_i; x_<i)``, the spline
    parameters of coordinate ``i`` given by its autoregressive network from the coordinates
    before it. Its inverse takes ``dim`` passes, ``x <- f^{-1}(y; params(x))`` starting from
    zeros (exact for one more coordinate in each pass), and each pass inverts Pyro's
    elementwise spline, which fails where the network's outputs saturate (the assertion and
    NaN described in :class:`_SafeInverse`). Here every pass, and the forward map, evaluates
    the elementwise spline through :class:`_SafeInverse` instead, with the parameters read
    from ``inner.spline.nn`` as Pyro reads them. Where a pass needed the guard, passes go on
    (at most ``2 dim`` in all) until ``x`` is a fixed point ``x = f^{-1}(y; params(x))``, so
    the returned ``x`` maps back to ``y`` with the parameters of ``x`` itself.
    Shapes ``(..., dim) -> (..., dim)``;
    ``log_abs_det_jacobian`` sums over the last axis, shape ``(...,)``.
    """

    bijective = True

    def __init__(self, inner: T.SplineAutoregressive, bound: float) -> None:
        super().__init__()
        self.inner = inner
        self.bound = bound
        self.domain = inner.domain
        self.codomain = inner.codomain

    def _spline(self, x: torch.Tensor) -> _SafeInverse:
        """Return the guarded elementwise spline with the parameters the network gives ``x``."""
        spline = cast(T.ConditionalSpline, self.inner.spline)
        n, bins = spline.input_dim, spline.count_bins
        widths, heights, derivatives = spline.nn(x)  # (..., K, n), (..., K, n), (..., K-1, n)
        params = (
            _softmax(widths.transpose(-1, -2)),
            _softmax(heights.transpose(-1, -2)),
            F.softplus(derivatives.transpose(-1, -2)),
            None,
        )
        if params[0].shape[-2:] != (n, bins):
            raise RuntimeError(f"unexpected spline parameter shape {tuple(widths.shape)}")
        return _SafeInverse(ConditionedSpline(params, bound=spline.bound, order=spline.order),
                            self.bound)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        spline = self._spline(x)
        y = spline(x)
        self._last = (x, y, spline.log_abs_det_jacobian(x, y).sum(-1))
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        dim = y.size(-1)
        x = torch.zeros_like(y)
        guarded = False
        for step in range(2 * dim):
            spline = self._spline(x)
            previous, x = x, spline.inv(y)
            guarded |= spline.guarded
            # dim passes are exact; after a guarded pass (bisection for the whole batch, Pyro's
            # root in the next) the early coordinates may move by rounding, which saturated
            # networks amplify in the later ones: go on to a fixed point, x = f^-1(y; x)
            if step + 1 >= dim and (not guarded or torch.equal(x, previous)):
                break
        self._last = (x, y, spline.log_abs_det_jacobian(x, y).sum(-1))
        return x


class _ConditionedCoupling(_LastPairTransform):
    """One spline coupling step with its context fixed (Dinh et al. 2017; Durkan et al. 2019).

    ``v`` is split after its first ``split_dim`` coordinates into a given half ``v_a`` (kept)
    and a moved half ``v_b``: ``w_b = s(v_b; theta(v_a, c))``, ``w_a = v_a``, where ``s`` is
    Pyro's elementwise rational-quadratic spline (``ConditionalSpline``) with parameters
    ``theta`` from :class:`_CouplingNet`. ``move_first=False``: ``v_a`` is the first
    ``split_dim`` coordinates; True: ``v_b`` is. Both directions cost one network pass (the
    given half is the same on both sides); ``log|det J| = sum_i log s'(v_b,i)``.

    Shapes: ``(*sample, *batch, dim) -> (*sample, *batch, dim)``; the log-determinant has shape
    ``(*sample, *batch)``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self, spline: T.ConditionalSpline, context: torch.Tensor, split_dim: int, move_first: bool
    ) -> None:
        super().__init__()
        self.spline = spline
        self.context = context
        self.split_dim = split_dim
        self.move_first = move_first

    def _parts(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(given, moved)``: the conditioning half and the half the spline moves."""
        first, second = v[..., : self.split_dim], v[..., self.split_dim :]
        return (second, first) if self.move_first else (first, second)

    def _join(self, given: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        pieces = (moved, given) if self.move_first else (given, moved)
        return torch.cat(pieces, dim=-1)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        given, moved = self._parts(x)
        spline = _SafeInverse(_condition_spline(self.spline, (given, self.context)), FLOW_BOUND)
        out = spline(moved)
        log_det = spline.log_abs_det_jacobian(moved, out).sum(-1)
        y = self._join(given, out)
        self._last = (x, y, log_det)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        given, moved = self._parts(y)
        spline = _SafeInverse(_condition_spline(self.spline, (given, self.context)), FLOW_BOUND)
        back = spline.inv(moved)
        log_det = spline.log_abs_det_jacobian(back, moved).sum(-1)
        x = self._join(given, back)
        self._last = (x, y, log_det)
        return x


class _SplineCoupling(ConditionalTransformModule):
    """A conditional rational-quadratic spline coupling layer on ``R^dim``, ``dim >= 2``.

    Moves the last ``dim - dim // 2`` coordinates given the first ``dim // 2`` and the context
    (``move_first=False``), or the first ``dim // 2`` given the rest (``move_first=True``):
    :class:`_ConditionedCoupling` around Pyro's ``ConditionalSpline`` with a
    :class:`_CouplingNet`, so forward map (a draw) and inverse (the density) are one network
    pass each.
    """

    def __init__(
        self, dim: int, context_dim: int, hidden: list[int], count_bins: int, move_first: bool
    ) -> None:
        super().__init__()
        self.split_dim = dim // 2
        self.move_first = move_first
        given, moved = dim - self.split_dim, self.split_dim
        if not move_first:
            given, moved = moved, given
        net = _CouplingNet(given, context_dim, hidden, moved, count_bins)
        self.spline = T.ConditionalSpline(net, moved, count_bins, FLOW_BOUND, order="quadratic")

    def condition(self, context: torch.Tensor) -> Transform:
        return _ConditionedCoupling(self.spline, context, self.split_dim, self.move_first)


class _ContextFlow(dist.TransformedDistribution):
    """A flow whose transforms depend on a context: ``log_prob`` broadcasts its value first.

    The transforms' parameters carry the context's batch shape, so a value of a smaller
    batch shape (one ``x`` per pair, scored under ``K`` latent particles of shape
    ``(K, batch)``) is expanded to the distribution's batch shape before the inversion, as
    ``torch.distributions`` broadcasts a value against the batch shape.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        return super().log_prob(value.expand(shape))


class ConditionalFlow(nn.Module):
    """A conditional normalising flow ``p(v | c)``, ``v`` in ``R^dim``, from Pyro transforms.

    Parameters
    ----------
    dim : int
        Dimension of ``v``, >= 1.
    context_dim : int
        Width of the context features ``c``, >= 1.
    num_layers : int, default 5
        Spline layers, >= 0 (0: a diagonal Gaussian with context-dependent location and scale).
    hidden_dims : sequence of int, default (64, 64)
        Hidden widths of each layer's conditioning network (a masked autoregressive network,
        Germain et al. 2015, with the context joined to every hidden layer; for ``dim=1`` a
        dense network of the context); each is raised to at least ``dim``.
    count_bins : int, default 10
        Bins of each rational-quadratic spline, >= 2.
    layer_type : {"autoregressive", "coupling"}, default "autoregressive"
        Spline layer type (:data:`FLOW_LAYER_TYPES`).
    final_spline : bool, optional
        Coupling type only: whether an elementwise spline of every coordinate given ``c``
        follows the coupling layers. Unset: :func:`final_spline_default` (only after a
        single coupling layer). Flows built before this option had it whatever the number
        of layers (``prior_flow_final="spline"`` in their configuration).

    Raises
    ------
    ConfigError
        If a size is out of range, one layer's conditioning network would have more than
        :data:`MAX_FLOW_WEIGHTS` weights, or ``final_spline`` is not a bool or None, or True
        for an autoregressive flow.

    Notes
    -----
    The conditional Gaussian (an elementwise affine layer of the context) comes first in the
    sampling order. With ``layer_type="autoregressive"`` each spline layer is Pyro's
    ``ConditionalSplineAutoregressive`` (``order="quadratic"``: the rational-quadratic spline
    of Durkan et al. 2019) used in its
    inverse direction (:class:`_Inverted`), with a reversal of the coordinates between two
    layers so that every coordinate is conditioned on every other after two layers. For
    ``dim=1`` the layer is an elementwise ``conditional_spline``. The density costs one
    network pass per layer; a draw costs ``dim`` passes per layer, so the flow suits a small
    ``dim`` (the issue's "flow on x for a low-dimensional x", or a latent ``z``).

    ``layer_type="coupling"``: each layer is a spline coupling layer (Dinh, Sohl-Dickstein and
    Bengio 2017, with the rational-quadratic coupling transform of Durkan et al. 2019): layers
    1, 3, 5, ... move the last ``dim - dim // 2`` coordinates by an elementwise spline whose
    parameters are a dense network of the first ``dim // 2`` and ``c``; layers 2, 4, ... move
    the first ``dim // 2`` given the rest and ``c`` (Pyro's ``ConditionalSpline``; the
    network's context part is computed once per context row and broadcast over the sample
    axes); after every second layer the coordinates are interleaved (even positions first), so
    the halves differ from one pair of layers to the next. With one coupling layer (or
    ``final_spline=True``) the last transform is an elementwise ``conditional_spline`` of all
    ``dim`` coordinates given ``c`` alone, so every coordinate is bent by a conditional
    spline; its spline parameters are computed per context row, not per draw. With two or
    more, each half has been moved given ``c`` (and the other half) by then, and the final
    spline, which would cost as much as another layer, is left out. Density and draw each
    cost one network pass per layer, independent of ``dim``. For ``dim=1`` both types are
    ``num_layers`` elementwise ``conditional_spline`` layers.

    With ``c`` the features of an observation ``y`` and ``v`` the standardised parameters,
    training by maximum likelihood on simulated pairs is neural posterior estimation (NPE:
    Papamakarios and Murray 2016; Greenberg et al. 2019 for its first round), the method of
    sbi's ``NPE`` with a neural spline flow.

    References
    ----------
    Durkan, Bekasov, Murray and Papamakarios (2019), Neural Spline Flows, NeurIPS.
    Dinh, Sohl-Dickstein and Bengio (2017), Density estimation using Real NVP, ICLR.
    Papamakarios, Pavlakou and Murray (2017), Masked Autoregressive Flow for Density
    Estimation, NeurIPS.
    Papamakarios and Murray (2016), Fast epsilon-free Inference of Simulation Models with
    Bayesian Conditional Density Estimation, NeurIPS.

    Examples
    --------
    >>> flow = ConditionalFlow(2, 3, num_layers=2, hidden_dims=(8,))
    >>> d = flow.distribution(torch.zeros(4, 3))
    >>> tuple(d.sample().shape), tuple(d.log_prob(torch.zeros(4, 2)).shape)
    ((4, 2), (4,))
    >>> coupling = ConditionalFlow(3, 2, num_layers=1, hidden_dims=(8,), layer_type="coupling")
    >>> tuple(coupling.distribution(torch.zeros(2)).sample((5,)).shape)
    (5, 3)
    """

    reverse: torch.Tensor  # the coordinate reversal between autoregressive layers (a buffer)
    interleave: torch.Tensor  # the permutation between pairs of coupling layers (not saved)
    final: nn.Module | None  # a coupling flow's elementwise spline given the context, if any

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_layers: int = 5,
        hidden_dims: Sequence[int] = (64, 64),
        count_bins: int = 10,
        layer_type: FlowLayerType = "autoregressive",
        final_spline: bool | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or context_dim < 1 or num_layers < 0 or count_bins < 2:
            raise ConfigError(
                f"a conditional flow needs dim >= 1, context_dim >= 1, num_layers >= 0 and "
                f"count_bins >= 2; got {dim}, {context_dim}, {num_layers}, {count_bins}"
            )
        if layer_type not in FLOW_LAYER_TYPES:
            raise ConfigError(
                f"unknown flow layer type {layer_type!r}; expected one of {FLOW_LAYER_TYPES}"
            )
        self.dim = dim
        self.layer_type = layer_type
        coupling = layer_type == "coupling" and dim > 1
        # a masked autoregressive network needs hidden layers at least as wide as its input
        hidden = [max(h, dim) for h in hidden_dims] or [max(8, 10 * dim)]
        size = _coupling_weights if coupling else _layer_weights
        weights = size(dim, context_dim, hidden, count_bins)
        if num_layers and weights > MAX_FLOW_WEIGHTS:
            raise ConfigError(
                f"a flow layer on {dim} values with hidden widths {hidden} would have {weights:,} "
                f"weights; the limit is {MAX_FLOW_WEIGHTS:,} (MAX_FLOW_WEIGHTS): use smaller "
                "flow_hidden_dims or flow_bins, or a non-flow likelihood for a large x"
            )
        # widths, heights and inner derivatives of the rational-quadratic spline per element
        param_dims = [count_bins, count_bins, count_bins - 1]

        def spline_layer(i: int) -> nn.Module:
            if coupling:
                return _SplineCoupling(dim, context_dim, hidden, count_bins, i % 2 == 1)
            if dim == 1:
                return T.conditional_spline(
                    1, context_dim, hidden, count_bins, FLOW_BOUND, order="quadratic"
                )
            arn = ConditionalAutoRegressiveNN(dim, context_dim, hidden, param_dims=param_dims)
            return _Inverted(
                T.ConditionalSplineAutoregressive(
                    dim, arn, count_bins=count_bins, bound=FLOW_BOUND, order="quadratic"
                )
            )

        self.layers = nn.ModuleList(
            [_build(partial(spline_layer, i)) for i in range(num_layers)]
        )
        if final_spline is None:
            final_spline = final_spline_default(num_layers, layer_type)
        if not isinstance(final_spline, bool):
            raise ConfigError(f"final_spline must be True, False or None, got {final_spline!r}")
        if final_spline and layer_type != "coupling":
            raise ConfigError(
                "final_spline=True is for layer_type='coupling'; an autoregressive flow has no "
                "final spline (leave final_spline unset)"
            )
        self.final = None
        if coupling and num_layers and final_spline:
            self.final = _build(
                lambda: T.conditional_spline(
                    dim, context_dim, hidden, count_bins, FLOW_BOUND, order="quadratic"
                )
            )
        self.affine = _ConditionalLocScale(context_dim, dim)
        # from Python lists: under ``torch.device("meta")`` (checkpoint loading and the memory
        # check build the model there first) arange and cat go through PyTorch's Python
        # references, whose first use imports torch._dynamo: loading a flow run for `sample`
        # took 1.5-1.9 s instead of 0.7 s (torch 2.13, measured in session 34)
        self.register_buffer("reverse", torch.tensor(range(dim - 1, -1, -1), dtype=torch.long))
        order = torch.tensor([*range(0, dim, 2), *range(1, dim, 2)], dtype=torch.long)
        self.register_buffer("interleave", order, persistent=False)

    def transforms(self, context: torch.Tensor) -> list[Transform]:
        """Return the transforms conditioned on ``context``, in the sampling order.

        Parameters
        ----------
        context : Tensor, shape (*batch, context_dim)

        Returns
        -------
        list of Transform
            From the base ``e`` to ``v``: the affine layer, then the spline layers with a
            coordinate permutation between autoregressive layers (a reversal) or between
            pairs of coupling layers (an interleaving), then, for the coupling type, the
            elementwise spline given the context.
        """
        out: list[Transform] = [self.affine.condition(context)]
        for i, layer in enumerate(self.layers):
            if isinstance(layer, _SplineCoupling):
                if i > 0 and i % 2 == 0:  # new halves for each pair of layers
                    out.append(T.Permute(self.interleave))
            elif i > 0 and self.dim > 1:  # every coordinate conditions every other
                out.append(T.Permute(self.reverse))
            if isinstance(layer, T.ConditionalSpline):  # an elementwise layer (dim=1)
                conditioned: Transform = _condition_spline(layer, context)
            elif isinstance(layer, _Inverted) and self.dim > 1:  # autoregressive, guarded
                inner = cast(T.SplineAutoregressive, layer.inner.condition(context))
                conditioned = _SafeAutoregressive(inner, FLOW_BOUND).inv
            else:
                conditioned = cast(ConditionalTransformModule, layer).condition(context)
            if self.dim == 1:  # an elementwise spline of either type
                conditioned = _SafeInverse(conditioned, FLOW_BOUND)
            out.append(conditioned)
        if isinstance(self.final, T.ConditionalSpline):
            out.append(_SafeInverse(_condition_spline(self.final, context), FLOW_BOUND))
        return out

    def distribution(self, context: torch.Tensor) -> dist.TransformedDistribution:
        """Return ``p(v | c)`` with batch shape ``context.shape[:-1]`` and event shape ``(dim,)``.

        Parameters
        ----------
        context : Tensor, shape (*batch, context_dim)

        Returns
        -------
        pyro.distributions.TransformedDistribution
            ``log_prob`` of a ``(*batch, dim)`` value has shape ``(*batch,)``, in nats.
        """
        base = dist.Normal(context.new_zeros(()), 1.0).expand(
            torch.Size((*context.shape[:-1], self.dim))
        )
        return _ContextFlow(base.to_event(1), self.transforms(context))

    def location(self, context: torch.Tensor) -> torch.Tensor:
        """Return the image of the base's mean ``e = 0``, shape ``(*batch, dim)``.

        A representative point (for a Gaussian flow, ``num_layers=0``, the mean); not the mean
        of ``v`` in general.
        """
        v = context.new_zeros(*context.shape[:-1], self.dim)
        for t in self.transforms(context):
            v = t(v)
        return v
