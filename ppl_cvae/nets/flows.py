"""Conditional normalising flows from Pyro's transforms: flexible ``p(v | c)`` on ``R^dim``.

:class:`ConditionalFlow` is the density used by ``likelihood="flow"`` (the decoder
``p(x | z, y)`` as a flow on the standardised ``x``) and by ``prior="flow"`` (the prior net
``p(z | y)`` as a flow on ``z``). Both sample in the same order::

    e ~ N(0, I_dim)
    u = loc(c) + scale(c) * e   (an elementwise affine layer, conditioned on c)
    v = S_K(...S_1(u))          (rational-quadratic spline autoregressive layers, conditioned on c)

With ``num_layers=0`` this is the diagonal Gaussian ``Normal(loc(c), scale(c))`` of the plain
decoder and prior net; each spline layer bends it. The splines act on ``v``'s own
(standardised) coordinates inside the box ``[-FLOW_BOUND, FLOW_BOUND]``, which holds the
training values of a standardised variable, and are the identity outside it; the
conditional Gaussian ahead of them can be narrow where the data pin ``v`` down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T  # noqa: N812
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions.transforms import AffineTransform, Transform
from torch.nn import functional as F  # noqa: N812

from ppl_cvae.errors import ConfigError
from ppl_cvae.nets.blocks import SCALE_FLOOR

__all__ = ["ConditionalFlow", "FLOW_BOUND", "MAX_FLOW_WEIGHTS"]

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


def _build(make: Callable[[], nn.Module]) -> nn.Module:
    """Run ``make()``; under a ``meta`` default device build on the CPU and move to ``meta``."""
    if torch.get_default_device().type != "meta":
        return make()
    with torch.device("cpu"):
        module = make()
    return module.to("meta")


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

    Raises
    ------
    ConfigError
        If a size is out of range, or one layer's conditioning network would have more than
        :data:`MAX_FLOW_WEIGHTS` weights.

    Notes
    -----
    The conditional Gaussian (an elementwise affine layer of the context) comes first in the
    sampling order. Each spline layer is Pyro's ``ConditionalSplineAutoregressive``
    (``order="quadratic"``: the rational-quadratic spline of Durkan et al. 2019) used in its
    inverse direction (:class:`_Inverted`), with a reversal of the coordinates between two
    layers so that every coordinate is conditioned on every other after two layers. For
    ``dim=1`` the layer is an elementwise ``conditional_spline``. The density costs one
    network pass per layer; a draw costs ``dim`` passes per layer, so the flow suits a small
    ``dim`` (the issue's "flow on x for a low-dimensional x", or a latent ``z``).

    With ``c`` the features of an observation ``y`` and ``v`` the standardised parameters,
    training by maximum likelihood on simulated pairs is neural posterior estimation (NPE:
    Papamakarios and Murray 2016; Greenberg et al. 2019 for its first round), the method of
    sbi's ``NPE`` with a neural spline flow.

    References
    ----------
    Durkan, Bekasov, Murray and Papamakarios (2019), Neural Spline Flows, NeurIPS.
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
    """

    reverse: torch.Tensor  # the coordinate reversal between spline layers (a buffer)

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_layers: int = 5,
        hidden_dims: Sequence[int] = (64, 64),
        count_bins: int = 10,
    ) -> None:
        super().__init__()
        if dim < 1 or context_dim < 1 or num_layers < 0 or count_bins < 2:
            raise ConfigError(
                f"a conditional flow needs dim >= 1, context_dim >= 1, num_layers >= 0 and "
                f"count_bins >= 2; got {dim}, {context_dim}, {num_layers}, {count_bins}"
            )
        self.dim = dim
        # a masked autoregressive network needs hidden layers at least as wide as its input
        hidden = [max(h, dim) for h in hidden_dims] or [max(8, 10 * dim)]
        weights = _layer_weights(dim, context_dim, hidden, count_bins)
        if num_layers and weights > MAX_FLOW_WEIGHTS:
            raise ConfigError(
                f"a flow layer on {dim} values with hidden widths {hidden} would have {weights:,} "
                f"weights; the limit is {MAX_FLOW_WEIGHTS:,} (MAX_FLOW_WEIGHTS): use smaller "
                "flow_hidden_dims or flow_bins, or a non-flow likelihood for a large x"
            )
        # widths, heights and inner derivatives of the rational-quadratic spline per element
        param_dims = [count_bins, count_bins, count_bins - 1]

        def spline_layer() -> nn.Module:
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

        self.layers = nn.ModuleList([_build(spline_layer) for _ in range(num_layers)])
        self.affine = _ConditionalLocScale(context_dim, dim)
        self.register_buffer("reverse", torch.arange(dim - 1, -1, -1))

    def transforms(self, context: torch.Tensor) -> list[Transform]:
        """Return the transforms conditioned on ``context``, in the sampling order.

        Parameters
        ----------
        context : Tensor, shape (*batch, context_dim)

        Returns
        -------
        list of Transform
            From the base ``e`` to ``v``: the affine layer, then the spline layers with a
            coordinate reversal between each two.
        """
        out: list[Transform] = [self.affine.condition(context)]
        for i, layer in enumerate(self.layers):
            if i > 0 and self.dim > 1:  # every coordinate conditions every other
                out.append(T.Permute(self.reverse))
            out.append(cast(ConditionalTransformModule, layer).condition(context))
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
        return dist.TransformedDistribution(base.to_event(1), self.transforms(context))

    def location(self, context: torch.Tensor) -> torch.Tensor:
        """Return the image of the base's mean ``e = 0``, shape ``(*batch, dim)``.

        A representative point (for a Gaussian flow, ``num_layers=0``, the mean); not the mean
        of ``v`` in general.
        """
        v = context.new_zeros(*context.shape[:-1], self.dim)
        for t in self.transforms(context):
            v = t(v)
        return v
