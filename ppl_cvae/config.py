"""Frozen, self-validating configuration of the CVAE and of SVI training.

:class:`ModelConfig` and :class:`TrainConfig`; CLI flags map one to one onto their fields.

Size limits
-----------
A :class:`ModelConfig` refuses sizes past :data:`MAX_ELEMENTS` (elements of one ``x`` or ``y``
event), :data:`MAX_WIDTH` (any layer width, latent or basis dimension), :data:`MAX_EVENT_DIMS`
and :data:`MAX_LAYERS` on construction, in microseconds and without allocating.
:func:`count_parameters` counts the parameters of the network a configuration describes on
PyTorch's ``meta`` device (shapes only, no storage); :func:`check_model_size` refuses more
than :data:`MAX_PARAMETERS` of them and :func:`check_model_memory` also compares an estimate
of the training memory with what the machine has. Call the last one before building a model
from a configuration that came from outside (a CLI flag, a checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, TypedDict, TypeVar, cast

import torch

from ppl_cvae._choices import (
    DECODER_LIKELIHOODS,
    FLOW_LAYER_TYPES,
    NETWORKS,
    PRIOR_FLOW_FINALS,
    PRIORS,
    X_TRANSFORMS,
    X_WHITENINGS,
    Y_EMBEDDINGS,
    Likelihood,
)
from ppl_cvae._memory import check_memory
from ppl_cvae.checks import as_seed
from ppl_cvae.errors import ConfigError
from ppl_cvae.nets.blocks import ACTIVATIONS
from ppl_cvae.nets.factory import network_names

__all__ = [
    "LIKELIHOODS",
    "MAX_ELEMENTS",
    "MAX_EVENT_DIMS",
    "MAX_FULL_NOISE",
    "MAX_LAYERS",
    "MAX_PARAMETERS",
    "MAX_WIDTH",
    "ModelConfig",
    "ModelOverrides",
    "NETWORKS",
    "Overrides",
    "PRIORS",
    "PRIOR_FLOW_FINALS",
    "TrainConfig",
    "TrainOverrides",
    "X_WHITENINGS",
    "Y_EMBEDDINGS",
    "bounds_box",
    "check_model_memory",
    "meta_cvae",
    "simulation_schedule",
    "check_model_size",
    "count_parameters",
]

LIKELIHOODS = DECODER_LIKELIHOODS
WHITENED_LIKELIHOODS = ("gaussian", "gaussian_decoder", "gaussian_lowrank", "gaussian_full", "flow")

MAX_ELEMENTS = 2**24
"""Most elements of one ``x`` or one ``y`` event (16.8 million: a 4096 x 4096 grid).

Past this even one float32 event is 64 MiB, and a batch of them no longer fits a GPU."""

MAX_WIDTH = 2**20
"""Largest hidden width, latent, feature, channel or basis dimension (about one million).

It keeps every single weight matrix below ``MAX_ELEMENTS * MAX_WIDTH = 2**44`` entries, so a
configuration can be counted on the meta device without overflowing 64-bit sizes."""

MAX_EVENT_DIMS = 16
"""Most axes of an ``x`` or ``y`` event (PyTorch tensors have at most 64 in all)."""

MAX_LAYERS = 64
"""Most entries of ``hidden_dims`` and of ``conv_channels``."""

MAX_FULL_NOISE = 4096
"""Most elements of ``x`` for ``likelihood="gaussian_full"`` and ``x_whitening="linear"`` (a
Cholesky factor has ``prod(x_shape)**2`` entries: 16.8 million at this limit, and each step
solves with it)."""

MAX_PARAMETERS = 2**28
"""Most parameters plus buffers of one model (268 million: 1 GiB of float32 weights, about
4 GiB for training with gradients and the two Adam moments)."""


def _show(value: Any, limit: int = 60) -> str:
    """Return a short, safe ``repr`` of ``value`` for an error message.

    Scalars are shown (long strings and huge integers shortened, without converting all of
    their digits); containers and other objects by their type only, since a structure read
    from a file may be deeply nested or share sub-lists exponentially often.
    """
    if isinstance(value, str):
        text = repr(value[:limit])
        return text if len(value) <= limit else f"{text[:-1]}...{text[-1]}"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return (
            repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
        )
    if (
        isinstance(value, (tuple, list))
        and len(value) <= 8
        and all(
            isinstance(v, (bool, float, str)) or (isinstance(v, int) and v.bit_length() <= 64)
            for v in value
        )
    ):
        return repr(tuple(_show(v, 20) for v in value)).replace("'", "")
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    """Whether ``value`` is a Python integer (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


XBound = float | tuple[Any, ...]
"""One end of ``x_bounds``: a float for every element, or nested tuples of floats of
``x_shape``."""


def _bound_end(end: Any, default: float, value: Any, depth: int = 0) -> XBound:
    """One end of ``x_bounds`` as a float or nested tuples of floats (None reads as infinite)."""
    if end is None:
        return default
    if hasattr(end, "tolist") and not isinstance(end, int | float):  # a tensor or an array
        end = end.tolist()
    if isinstance(end, Sequence) and not isinstance(end, str | bytes):
        if depth >= MAX_EVENT_DIMS:
            raise ConfigError(
                f"x_bounds ends nest deeper than x_shape can ({MAX_EVENT_DIMS} axes at most)"
            )
        return tuple(_bound_end(v, default, value, depth + 1) for v in end)
    if isinstance(end, bool) or not isinstance(end, int | float) or math.isnan(end):
        raise ConfigError(
            f"x_bounds must hold two numbers or two arrays of x_shape (inf allowed), got "
            f"{_show(value)}"
        )
    return float(end)


def _bounds(value: Any, x_shape: tuple[int, ...]) -> tuple[XBound, XBound]:
    """Return ``x_bounds`` as ``(low, high)``, each a float or nested tuples of ``x_shape``.

    None (JSON's infinity) reads as unbounded, at either end or for one element.

    Raises
    ------
    ConfigError
        Unless ``value`` is a pair whose ends are numbers (or None) or arrays of ``x_shape``,
        with ``low < high`` at every element, none NaN, and some element bounded.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"x_bounds must be a pair (low, high), got {_show(value)}")
    low, high = (
        _bound_end(end, default, value)
        for end, default in zip(value, (-math.inf, math.inf), strict=True)
    )
    try:
        low_t, high_t = (
            torch.as_tensor(end, dtype=torch.float64).broadcast_to(x_shape) for end in (low, high)
        )
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"x_bounds ends must be numbers or arrays of x_shape {x_shape}, got shapes "
            f"{_end_shape(low)} and {_end_shape(high)}"
        ) from None
    bad = ~(low_t < high_t)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ConfigError(
            f"x_bounds needs low < high at every element, got low {float(low_t[first]):g} and "
            f"high {float(high_t[first]):g} at x{list(first)}"
        )
    if not bool((torch.isfinite(low_t) | torch.isfinite(high_t)).any()):
        raise ConfigError("x_bounds (-inf, inf) bounds nothing: leave it unset")
    return low, high


def bounds_box(value: Any, x_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return an ``x_bounds`` value as float64 tensors ``(low, high)`` of ``x_shape``.

    ``value`` as :class:`ModelConfig` takes it (two numbers, None for an open side, or arrays
    of ``x_shape``); units of ``x``, ``-inf``/``inf`` where an element is open on that side.

    Raises
    ------
    ConfigError
        As :class:`ModelConfig` does for a bad ``x_bounds``.
    """
    return tuple(  # type: ignore[return-value]
        torch.as_tensor(end, dtype=torch.float64).broadcast_to(x_shape).clone()
        for end in _bounds(value, x_shape)
    )


def _end_shape(end: XBound) -> str:
    """Return the shape of one end of ``x_bounds`` for a message (``ragged`` if it is)."""
    try:
        return str(tuple(torch.as_tensor(end).shape))
    except (RuntimeError, ValueError, TypeError):
        return "ragged"


def _json_bound(end: XBound) -> Any:
    """One end of ``x_bounds`` for JSON: infinities as None."""
    if isinstance(end, tuple):
        return tuple(_json_bound(v) for v in end)
    return end if math.isfinite(end) else None


def _is_real(value: Any) -> bool:
    """Whether ``value`` is a finite Python int or float (``bool`` excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the float range
        return False


def _int_tuple(
    name: str, values: Any, limit: int, max_len: int, allow_empty: bool = True
) -> tuple[int, ...]:
    """Return ``values`` as a tuple of positive ints (each ``<= limit``), or raise ConfigError."""
    if not isinstance(values, (tuple, list)):
        raise ConfigError(
            f"{name} must be a tuple of positive integers, got {type(values).__name__}"
        )
    if not allow_empty and not values:
        raise ConfigError(f"{name} must not be empty")
    if len(values) > max_len:
        raise ConfigError(f"{name} has {len(values)} entries; the limit is {max_len}")
    if any(not _is_int(v) or v <= 0 for v in values):
        raise ConfigError(f"{name} must hold positive integers, got {_show(values)}")
    if any(v > limit for v in values):
        raise ConfigError(f"{name}={_show(values)} has an entry above the limit {limit}")
    return tuple(values)


class _DictMixin:
    """``to_dict`` / ``from_dict`` shared by the configuration dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields (tuples stay tuples)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
        """Rebuild from :meth:`to_dict` output, validating every value.

        Raises
        ------
        ConfigError
            If ``data`` is not a mapping, a key is unknown or missing, or a value is invalid.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} data must be a dict, got {type(data).__name__}")
        all_fields = fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in all_fields}
        unknown = [k for k in data if k not in names]
        if unknown:
            shown = ", ".join(_show(k, 30) for k in unknown[:5])
            raise ConfigError(f"unknown {cls.__name__} keys: {shown}")
        missing = [
            f.name
            for f in all_fields
            if f.default is MISSING and f.default_factory is MISSING and f.name not in data
        ]
        if missing:
            raise ConfigError(f"{cls.__name__} is missing the keys {missing}")
        return cls(**data)


_Config = TypeVar("_Config", bound=_DictMixin)


@dataclass(frozen=True)
class ModelConfig(_DictMixin):
    """Architecture of a (conditional) VAE.

    Parameters
    ----------
    x_shape : tuple of int
        Event shape of one subsurface model ``x`` (what is generated).
    y_shape : tuple of int or None
        Event shape of one observation ``y`` (the condition); ``None`` gives the unconditional
        VAE (same class, no ``y`` anywhere).
    latent_dim : int, default 8
        Dimension of the latent ``z``; 0 only with ``likelihood="flow"`` (no latent: the
        flow is then the whole posterior model ``p(x | y)``, neural posterior estimation).
    hidden_dims : tuple of int, default (256, 256)
        Hidden widths of every MLP (recognition net, prior net, decoder).
    activation : str, default "leaky_relu"
        Activation of every hidden layer.
    network : {"mlp", "conv1d", "conv2d"}, default "mlp"
        Feature encoders for ``x`` and ``y`` and the decoder body: flatten + MLP; 1-D
        convolutions over (length, channels) events; or 2-D convolutions over grid events
        ``(H, W)`` / ``(C, H, W)`` with a bilinear-upsampling decoder. With ``conv2d``, an event
        that is not a grid (e.g. a data vector ``y``) gets an MLP encoder; ``x`` must be a grid.
        A family added with :func:`ppl_cvae.nets.register_network` is valid too.
    conv_channels : tuple of int, default (32, 64)
        Channels of the convolution stages (``network="conv1d"`` or ``"conv2d"``).
    feature_dim : int, default 128
        Width of the features a conv encoder hands to the MLP heads.
    y_maps : int, default 0
        With ``network="conv2d"`` and a conditional model: maps of ``x``'s grid computed from
        the standardised ``y`` by a learned linear layer (a learned back-projection of the
        data) and given to every stage of the decoder's convolutions at that stage's
        resolution (average-pooled), beside the feature maps of ``(z, y)``. The decoder can
        then place local features of ``x`` (facies boundaries) from the data at each cell
        instead of only through the ``feature_dim`` features (a learned linear inverse
        followed by convolutions, as in Jin et al. 2017, FBPConvNet; measured on crosshole
        channels in the README: a better ELBO and calibration, the draws' misfit unchanged).
        0: none.
    prior : {"learned", "standard_normal", "flow"}, default "learned"
        Conditional prior net ``p(z | y)`` (a diagonal Gaussian), a fixed ``N(0, I)``, or a
        conditional normalising flow on ``z`` given ``y`` (:class:`~ppl_cvae.nets.ConditionalFlow`
        with ``prior_flow_layers`` spline layers: a multimodal ``p(z | y)``); an unconditional
        VAE must use ``"standard_normal"``.
    likelihood : {"gaussian", "gaussian_decoder", "gaussian_fixed", "gaussian_lowrank", \
"gaussian_full", "bernoulli", "categorical", "flow"}
        Observation model of ``x`` given ``z, y``: Gaussian with one learned scale per output
        element; Gaussian whose scale the decoder predicts; Gaussian with ``fixed_scale``;
        Gaussian with a learned low-rank-plus-diagonal covariance ``W W^T + diag(d^2)`` of
        rank ``noise_rank`` (``LowRankMultivariateNormal``: correlated decoder noise, which
        can put its spread where the data leave ``x`` free); Gaussian with a learned full
        covariance ``L L^T`` (``L`` a Cholesky factor; at most :data:`MAX_FULL_NOISE`
        elements of ``x``); Bernoulli (binary ``x``, e.g. two facies or binarised images);
        categorical (``x`` holds facies codes ``0 .. num_facies - 1``, one of ``num_facies``
        classes per element; see ``num_facies``); or a conditional normalising flow on the
        standardised ``x`` given ``(z, y)`` (:class:`~ppl_cvae.nets.ConditionalFlow`; for a
        small ``prod(x_shape)``: a draw costs ``prod(x_shape)`` network passes per layer; with
        ``basis_dim`` the flow is on the basis coefficients instead).
    fixed_scale : float, default 0.1
        Standard deviation of ``x`` for ``likelihood="gaussian_fixed"``, in units of ``x``.
    init_scale : float, default 0.05
        Initial standard deviation of ``x`` for ``likelihood="gaussian"``, in standardised
        units (a fraction of the training standard deviation of each element).
    noise_rank : int, default 8
        Rank of the learned noise covariance factor ``W`` (``likelihood="gaussian_lowrank"``),
        at most ``prod(x_shape)``.
    flow_layers : int, default 5
        Spline layers of the flow on ``x`` (``likelihood="flow"``), in [0, 64]; 0 is the
        diagonal Gaussian.
    prior_flow_layers : int, default 2
        Spline layers of the flow on ``z`` (``prior="flow"``), in [0, 64]. One spline
        autoregressive layer already gives every ``z_i`` given ``z_<i, y`` a multimodal
        density; a coupling layer moves only half of ``z`` given the other half, so the
        default coupling flow has two (on a known two-mode ``p(z|y)`` in 8 dimensions,
        ``benchmarks/prior_flow_quality.py``: KL 1.26 nats with one coupling layer, 0.15 with
        two, 0.14 with one autoregressive layer). Each layer adds about a fifth to a third of
        the default SVI step on the Two Birds network (``benchmarks/family_cost.py`` at 1
        thread: two coupling layers 1.4x the default step without the final spline, 1.6x
        with it; one autoregressive layer 1.1-1.3x, five 2.4x, against the 1.5x that issue
        10 allows). A configuration written before this
        field existed (no key) reads as ``flow_layers`` when its prior is a flow, the
        structure it was built with.
    prior_flow_type : {"autoregressive", "coupling"}, default "coupling"
        Spline layer type of the flow on ``z`` (:data:`~ppl_cvae.nets.flows.FLOW_LAYER_TYPES`):
        a masked autoregressive spline layer (density one network pass, a draw ``latent_dim``
        sequential passes) or a spline coupling layer (half of ``z`` conditions a spline of
        the other half, alternating between layers, then, see ``prior_flow_final``, one
        elementwise spline given ``y``: density and draw one pass per layer). The default
        since issue 10: on Two Birds ``data_1`` two coupling layers reach an amortized pass
        rate of 0.991 / 0.983 with the final spline, 0.985 / 0.981 without (training seeds
        0 / 1; one autoregressive layer 0.977 / 0.969) with 5x its draws per second
        (docs/measurements.md "Two Birds"). A configuration written before this field
        existed (no key) reads as ``"autoregressive"``, the layer it was built with. The flow
        on ``x`` (``likelihood="flow"``) is always autoregressive.
    prior_flow_final : {"auto", "spline", "none"}, default "auto"
        Whether the coupling flow on ``z`` ends with an elementwise spline of every
        coordinate given ``y`` (:func:`~ppl_cvae.nets.flows.final_spline_default`):
        ``"auto"`` after a single coupling layer only, ``"spline"`` always,
        ``"none"`` never. With two coupling layers both halves of ``z`` are already moved
        given ``y``, and the final spline costs as much as a third layer (docs/measurements.md "Cost
        of each family"). Must be ``"auto"`` for ``prior_flow_type="autoregressive"``. A
        configuration written before this field existed (no key) reads as ``"spline"`` for a
        coupling prior flow, the structure it was built with (``"auto"`` otherwise).
    flow_bins : int, default 10
        Bins of each rational-quadratic spline, in [2, 256].
    flow_hidden_dims : tuple of int, default (64, 64)
        Hidden widths of each flow layer's conditioning network (each raised to at least the
        flow's dimension). Separate from ``hidden_dims``: a flow layer's cost grows with the
        square of these widths, and sampling evaluates each layer once per flowed value.
    num_facies : int, default 2
        Number of classes ``K`` of ``likelihood="categorical"`` (read by no other
        likelihood), in [2, MAX_WIDTH]: the decoder outputs ``K`` logits per element of ``x``
        and ``x`` holds integer codes ``0 .. K - 1`` stored as floats (float32 like every
        ``x``; draws come back as float codes). For two facies ``"bernoulli"`` is the same
        model with one logit per element.
    scale_gain : float, default 10.0
        Gain of the learned log-scale for ``likelihood="gaussian"``: the scale is
        ``exp(scale_gain * raw) + floor``, so one optimiser step moves the log-scale by about
        ``scale_gain * learning_rate``. 10 lets the scale reach the data's spread within a few
        hundred steps (at 1 a 60-epoch gravity fit ended with posteriors 10% too narrow); a
        basis decoder, whose noise only absorbs the misfit, may prefer 1.
    basis_dim : int or None, default None
        When set, the decoder outputs ``basis_dim`` coefficients of a fixed linear basis of
        ``x`` (for example the 4 line endpoints of Two Birds) instead of every element.
    y_embedding : {"separate", "shared"}, default "separate"
        ``"separate"``: the recognition net, prior net and decoder each have their own encoder
        of ``y``. ``"shared"``: one embedding network of ``y`` feeds all three (fewer
        parameters and one learned summary of a large data vector; the gradients of all three
        terms of the ELBO train it).
    linear_skip : bool, default False
        Add a linear map of the standardised ``y`` to the decoder's output (its mean, or its
        logits for Bernoulli), initialised at zero: the part of ``E[x | y]`` that is linear in
        ``y`` (all of it for a linear forward operator and a Gaussian prior) then needs no
        hidden layer. Not with ``basis_dim``.
    x_whitening : {"none", "linear"}, default "none"
        ``"linear"``: the decoder (and the recognition net) work on ``u = L^{-1}(x - A y - b)``,
        the residual of the least-squares regression of the standardised ``x`` on the
        standardised ``y`` whitened by the Cholesky factor ``L`` of the residual covariance,
        all fitted on the training pairs (:class:`~ppl_cvae.data.standardise.LinearWhitener`).
        For a linear forward operator with a Gaussian prior and noise, ``x | y ~ N(A y + b,
        L L^T)`` exactly, so the networks only learn departures from that posterior (the
        ensemble Kalman update). A full ``L`` is stored: at most :data:`MAX_FULL_NOISE`
        elements of ``x`` and of ``y``; Gaussian and flow likelihoods only, no ``basis_dim``.
    x_bounds : (low, high) or None, default None
        Bounds of the elements of ``x`` (units of ``x``; ``-inf`` / ``inf`` for one-sided,
        e.g. ``(0, inf)`` for a positive quantity; None in JSON reads as infinite), each end a
        number for every element or an array of ``x_shape`` (nested lists, a tensor or a
        NumPy array; sbi's ``BoxUniform(low, high)``), kept as nested tuples: the prior's
        support of a run fitted on a data file, which has no
        :attr:`Problem.support <ppl_cvae.problems.base.Problem>`. Training ``x`` must lie
        inside (:func:`ppl_cvae.train.build_cvae` refuses it otherwise) and amortized draws
        outside are rejected and drawn again (:func:`inference.posterior.draw_posterior`), as
        sbi does for a ``BoxUniform`` prior; with ``x_transform="support"`` none leaves.
    x_transform : {"none", "support"}, default "none"
        ``"support"``: the flow on ``x`` (``likelihood="flow"``, no ``basis_dim``) models
        ``u = T^{-1}(x)``, ``T`` the elementwise bijection from ``R`` onto the box of the
        prior's support (:class:`~ppl_cvae.data.box.BoxTransform`: ``low + (high - low)
        sigmoid(u)``, ``low + exp(u)``, ...), so every draw lies inside and the density of
        ``x`` gains the log-Jacobian; sbi's ``z_score_theta="transform_to_unconstrained"``.
        The box is the problem's declared support (:func:`~ppl_cvae.data.box.support_box`)
        intersected with ``x_bounds``, stored with the weights (buffers ``x_low`` and
        ``x_high``). ``"none"``: the flow models ``x`` and draws outside the support are
        rejected.
    constrained_coefficients : bool, default False
        With ``basis_dim``: the decoder works in an unconstrained space mapped onto the valid
        coefficients by a bijection the problem supplies (``problem.coefficient_transform()``;
        for Two Birds: ordered endpoints in [0.1, 1], so every decoded line pair is monotone).

    Raises
    ------
    ConfigError
        On a value of the wrong type (a string, float or bool where an integer belongs; ints
        and floats are accepted where a float belongs), a value outside its range, an
        inconsistent combination, or a size past the limits below.

    Notes
    -----
    Size limits, checked on construction without allocating anything (module constants):

    - ``prod(x_shape)`` and ``prod(y_shape)`` at most :data:`MAX_ELEMENTS` (``2**24``), with at
      most :data:`MAX_EVENT_DIMS` (16) axes each;
    - every entry of ``hidden_dims`` and ``conv_channels``, ``latent_dim``, ``feature_dim``,
      ``basis_dim`` and ``num_facies`` at most :data:`MAX_WIDTH` (``2**20``); at most
      :data:`MAX_LAYERS` (64) entries in ``hidden_dims`` and in ``conv_channels``.

    The number of parameters is a property of the whole network, not of one field; it is
    checked by :func:`check_model_size` (at most :data:`MAX_PARAMETERS`, ``2**28``) and
    :func:`check_model_memory`, which :func:`~ppl_cvae.train.load_checkpoint` calls before
    building a model and which callers building a model from outside input should call too.
    """

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...] | None
    latent_dim: int = 8
    hidden_dims: tuple[int, ...] = (256, 256)
    activation: str = "leaky_relu"
    network: str = "mlp"
    conv_channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    y_maps: int = 0
    prior: Literal["learned", "standard_normal", "flow"] = "learned"
    likelihood: Likelihood = "gaussian"
    fixed_scale: float = 0.1
    init_scale: float = 0.05
    basis_dim: int | None = None
    constrained_coefficients: bool = False
    y_embedding: Literal["separate", "shared"] = "separate"
    linear_skip: bool = False
    scale_gain: float = 10.0
    noise_rank: int = 8
    flow_layers: int = 5
    flow_bins: int = 10
    flow_hidden_dims: tuple[int, ...] = (64, 64)
    num_facies: int = 2
    x_whitening: Literal["none", "linear"] = "none"
    prior_flow_layers: int = 2
    prior_flow_type: Literal["autoregressive", "coupling"] = "coupling"
    prior_flow_final: Literal["auto", "spline", "none"] = "auto"
    x_bounds: tuple[XBound, XBound] | None = None
    x_transform: Literal["none", "support"] = "none"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild from :meth:`to_dict` output, validating every value.

        A dict written before ``prior_flow_layers`` existed (a checkpoint or training state of
        an older version) has no such key; its prior flow, if any, was built with
        ``flow_layers`` layers, so that is what the missing key reads as (1, its first
        default, for a prior that is not a flow). A dict without
        ``prior_flow_type`` was written when every prior flow was autoregressive, so the
        missing key reads as ``"autoregressive"`` whatever the current default. A dict without
        ``prior_flow_final`` was written when every coupling flow ended with an elementwise
        spline: the missing key reads as ``"spline"`` for a coupling flow (``"auto"``
        otherwise).

        Raises
        ------
        ConfigError
            If ``data`` is not a mapping, a key is unknown or missing, or a value is invalid.
        """
        if isinstance(data, Mapping) and "prior_flow_layers" not in data:
            # a stored configuration does not change with today's defaults: without a prior
            # flow the field was 1 when it was introduced
            layers = data.get("flow_layers", cls.flow_layers) if data.get("prior") == "flow" else 1
            data = {**data, "prior_flow_layers": layers}
        if isinstance(data, Mapping) and "prior_flow_type" not in data:
            data = {**data, "prior_flow_type": "autoregressive"}
        if isinstance(data, Mapping) and "prior_flow_final" not in data:
            coupling = data.get("prior_flow_type") == "coupling"
            data = {**data, "prior_flow_final": "spline" if coupling else "auto"}
        if isinstance(data, Mapping) and "x_bounds" not in data:  # written before the field
            data = {**data, "x_bounds": None}
        if isinstance(data, Mapping) and "x_transform" not in data:  # written before the field
            data = {**data, "x_transform": "none"}
        return super().from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields (tuples stay tuples).

        An infinite end of ``x_bounds`` is written as None (JSON has no infinity; None reads
        back as unbounded).
        """
        data = super().to_dict()
        if self.x_bounds is not None:
            data["x_bounds"] = tuple(_json_bound(end) for end in self.x_bounds)
        return data

    def x_bounds_box(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return ``x_bounds`` as float64 tensors ``(low, high)`` of ``x_shape``, or None.

        Units of ``x``; ``-inf``/``inf`` where an element is open on that side.
        """
        return None if self.x_bounds is None else bounds_box(self.x_bounds, self.x_shape)

    def __post_init__(self) -> None:
        # types first: every later comparison may then assume them (a checkpoint can hold
        # anything torch.load accepts, tensors included)
        object.__setattr__(
            self,
            "x_shape",
            _int_tuple("x_shape", self.x_shape, MAX_ELEMENTS, MAX_EVENT_DIMS, False),
        )
        if self.y_shape is not None:
            y_shape = _int_tuple("y_shape", self.y_shape, MAX_ELEMENTS, MAX_EVENT_DIMS, False)
            object.__setattr__(self, "y_shape", y_shape)
        hidden = _int_tuple("hidden_dims", self.hidden_dims, MAX_WIDTH, MAX_LAYERS)
        object.__setattr__(self, "hidden_dims", hidden)
        channels = _int_tuple("conv_channels", self.conv_channels, MAX_WIDTH, MAX_LAYERS)
        object.__setattr__(self, "conv_channels", channels)
        flow_hidden = _int_tuple("flow_hidden_dims", self.flow_hidden_dims, MAX_WIDTH, MAX_LAYERS)
        object.__setattr__(self, "flow_hidden_dims", flow_hidden)
        for name in (
            "latent_dim",
            "feature_dim",
            "noise_rank",
            "flow_layers",
            "prior_flow_layers",
            "flow_bins",
            "y_maps",
        ):
            value = getattr(self, name)
            low = 0 if name in ("latent_dim", "flow_layers", "prior_flow_layers", "y_maps") else 1
            if not _is_int(value) or value < low:
                kind = "a positive integer" if low else "an integer >= 0"
                raise ConfigError(f"{name} must be {kind}, got {_show(value)}")
            if value > MAX_WIDTH:
                raise ConfigError(f"{name}={value} is above the limit {MAX_WIDTH}")
        for name in (
            "activation",
            "network",
            "prior",
            "likelihood",
            "y_embedding",
            "x_whitening",
            "prior_flow_type",
            "prior_flow_final",
            "x_transform",
        ):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
        for name in ("fixed_scale", "init_scale", "scale_gain"):
            value = getattr(self, name)
            if not _is_real(value):
                raise ConfigError(f"{name} must be a finite number, got {_show(value)}")
        for name in ("constrained_coefficients", "linear_skip"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {_show(value)}")
        for name, size in (("x_shape", self.x_shape), ("y_shape", self.y_shape)):
            if size is not None and math.prod(size) > MAX_ELEMENTS:
                raise ConfigError(
                    f"{name}={_show(size)} has {math.prod(size):,} elements; the limit is "
                    f"{MAX_ELEMENTS:,} (MAX_ELEMENTS)"
                )
        if self.x_bounds is not None:  # after the size check: it broadcasts to x_shape
            object.__setattr__(self, "x_bounds", _bounds(self.x_bounds, self.x_shape))
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {_show(self.activation)}; "
                f"expected one of {sorted(ACTIVATIONS)}"
            )
        if self.network not in network_names():
            raise ConfigError(
                f"unknown network {_show(self.network)}; expected one of {network_names()}"
            )
        if self.prior not in PRIORS:
            raise ConfigError(f"unknown prior {_show(self.prior)}; expected one of {PRIORS}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(
                f"unknown likelihood {_show(self.likelihood)}; expected one of {LIKELIHOODS}"
            )
        if not self.fixed_scale > 0:
            raise ConfigError(f"fixed_scale must be > 0, got {_show(self.fixed_scale)}")
        if not 1e-2 <= self.init_scale <= 10:
            raise ConfigError(f"init_scale must be in [0.01, 10], got {_show(self.init_scale)}")
        if not 0.1 <= self.scale_gain <= 100:
            raise ConfigError(f"scale_gain must be in [0.1, 100], got {_show(self.scale_gain)}")
        if self.y_embedding not in Y_EMBEDDINGS:
            raise ConfigError(
                f"unknown y_embedding {_show(self.y_embedding)}; expected one of {Y_EMBEDDINGS}"
            )
        if self.y_shape is None and self.prior == "learned":
            raise ConfigError(
                "an unconditional VAE (y_shape=None) has no prior net: use prior='standard_normal'"
            )
        if self.basis_dim is not None:
            if not _is_int(self.basis_dim) or not 0 < self.basis_dim <= min(self.x_dim, MAX_WIDTH):
                raise ConfigError(
                    f"basis_dim must be an integer in [1, {min(self.x_dim, MAX_WIDTH)}], "
                    f"got {_show(self.basis_dim)}"
                )
            if self.likelihood in ("bernoulli", "categorical"):
                raise ConfigError(
                    f"a linear decoder basis needs a Gaussian likelihood, not {self.likelihood!r}"
                )
            if self.linear_skip:
                raise ConfigError("linear_skip does not apply to a basis decoder (basis_dim)")
        elif self.constrained_coefficients:
            raise ConfigError("constrained_coefficients needs basis_dim")
        if self.linear_skip and self.y_shape is None:
            raise ConfigError("linear_skip needs a conditional model (y_shape set)")
        if self.y_maps:
            if self.y_shape is None:
                raise ConfigError("y_maps needs a conditional model (y_shape set)")
            if self.network != "conv2d" or len(self.x_shape) not in (2, 3):
                raise ConfigError(
                    f"y_maps feeds the convolutions of a 2-D decoder: it needs "
                    f"network='conv2d' and a grid x_shape (H, W) or (C, H, W), got "
                    f"network={_show(self.network)}, x_shape={_show(self.x_shape)}"
                )
            if self.basis_dim is not None or self.likelihood == "flow":
                raise ConfigError(
                    "y_maps needs a decoder with convolutions over x: not with basis_dim or "
                    "likelihood='flow'"
                )
        for name in ("flow_layers", "prior_flow_layers"):
            if not getattr(self, name) <= MAX_LAYERS:
                raise ConfigError(
                    f"{name}={getattr(self, name)} is above the limit {MAX_LAYERS}"
                )
        if self.prior_flow_type not in FLOW_LAYER_TYPES:
            raise ConfigError(
                f"unknown prior_flow_type {_show(self.prior_flow_type)}; expected one of "
                f"{FLOW_LAYER_TYPES}"
            )
        if self.prior_flow_final not in PRIOR_FLOW_FINALS:
            raise ConfigError(
                f"unknown prior_flow_final {_show(self.prior_flow_final)}; expected one of "
                f"{PRIOR_FLOW_FINALS}"
            )
        if self.prior_flow_final != "auto" and self.prior_flow_type != "coupling":
            raise ConfigError(
                f"prior_flow_final={self.prior_flow_final!r} is for prior_flow_type='coupling'; "
                f"an {self.prior_flow_type} flow has no final spline: leave it 'auto'"
            )
        if not 2 <= self.flow_bins <= 256:
            raise ConfigError(f"flow_bins must be in [2, 256], got {self.flow_bins}")
        if self.latent_dim == 0 and self.likelihood != "flow":
            raise ConfigError(
                "latent_dim=0 (no latent) needs likelihood='flow': only a flow decoder is a "
                "posterior model of x by itself"
            )
        if self.latent_dim == 0 and self.prior == "flow":
            raise ConfigError("prior='flow' needs a latent (latent_dim >= 1)")
        if self.prior == "flow" and self.y_shape is None:
            raise ConfigError(
                "an unconditional VAE (y_shape=None) has no prior net: use prior='standard_normal'"
            )
        if self.likelihood == "flow" and self.linear_skip:
            raise ConfigError(
                "likelihood='flow' has no decoder mean for a linear skip to add to "
                "(linear_skip=False)"
            )
        if self.likelihood == "gaussian_full" and self.x_dim > MAX_FULL_NOISE:
            raise ConfigError(
                f"likelihood='gaussian_full' needs prod(x_shape) <= {MAX_FULL_NOISE} "
                f"(MAX_FULL_NOISE), got {self.x_dim}: use gaussian_lowrank for a larger x"
            )
        if self.x_whitening not in X_WHITENINGS:
            raise ConfigError(
                f"unknown x_whitening {_show(self.x_whitening)}; expected one of {X_WHITENINGS}"
            )
        if self.x_whitening == "linear":
            if self.likelihood not in WHITENED_LIKELIHOODS or self.basis_dim is not None:
                raise ConfigError(
                    "x_whitening='linear' needs a Gaussian or flow likelihood on every element "
                    f"of x (one of {WHITENED_LIKELIHOODS}, no basis_dim), got likelihood="
                    f"{self.likelihood!r}, basis_dim={_show(self.basis_dim)}"
                )
            y_dim = math.prod(self.y_shape) if self.y_shape is not None else 0
            if max(self.x_dim, y_dim) > MAX_FULL_NOISE:
                raise ConfigError(
                    "x_whitening='linear' stores a full Cholesky factor and solves with the "
                    f"Gram matrix of y: it needs prod(x_shape) and prod(y_shape) <= "
                    f"{MAX_FULL_NOISE} (MAX_FULL_NOISE), got {self.x_dim} and {y_dim}"
                )
        if self.x_transform not in X_TRANSFORMS:
            raise ConfigError(
                f"unknown x_transform {_show(self.x_transform)}; expected one of {X_TRANSFORMS}"
            )
        if self.x_transform == "support" and (
            self.likelihood != "flow" or self.basis_dim is not None
        ):
            raise ConfigError(
                "x_transform='support' needs a flow on x itself (likelihood='flow', no "
                f"basis_dim), got likelihood={self.likelihood!r}, "
                f"basis_dim={_show(self.basis_dim)}"
            )
        if not _is_int(self.num_facies) or not 2 <= self.num_facies <= MAX_WIDTH:
            raise ConfigError(
                f"num_facies must be an integer in [2, {MAX_WIDTH}] (classes of the categorical "
                f"likelihood), got {_show(self.num_facies)}"
            )
        if self.likelihood == "gaussian_lowrank" and self.noise_rank > self.x_dim:
            raise ConfigError(
                f"noise_rank={self.noise_rank} is above prod(x_shape)={self.x_dim}; a noise "
                "covariance factor has at most one column per element of x"
            )

    @property
    def x_dim(self) -> int:
        """Number of elements of one ``x``."""
        return math.prod(self.x_shape)

    @property
    def conditional(self) -> bool:
        """Whether the model is conditioned on ``y`` (a CVAE) or not (a VAE)."""
        return self.y_shape is not None


@dataclass(frozen=True)
class TrainConfig(_DictMixin):
    """Settings of the SVI fit loop (:func:`ppl_cvae.train.fit`).

    Parameters
    ----------
    num_epochs : int, default 100
        Maximum number of passes over the training set.
    batch_size : int, default 256
        Minibatch size.
    learning_rate : float, default 1e-3
        Adam step size, in (0, 1000] (Adam moves each weight by about this much per step;
        larger values are typos, and above about 1e38 the step overflows float32).
    lr_decay : float, default 1.0
        Multiplicative learning-rate factor applied over the whole run (ClippedAdam ``lrd``
        per step is ``lr_decay ** (1 / total_steps)``); 1 keeps the rate constant.
    clip_norm : float, default 10.0
        Gradient-norm clip of ClippedAdam.
    kl_warmup_epochs : int, default 0
        Epochs over which the KL weight ``beta`` rises linearly from ``kl_start`` to 1.
    kl_start : float, default 0.01
        Initial KL weight when ``kl_warmup_epochs > 0``; in (0, 1] (Pyro's ``poutine.scale``
        needs a positive scale).
    physics_weight : float, default 0.0
        Weight of the physics-consistency term (needs a problem with a forward operator).
    gsnn_weight : float, default 0.0
        Weight ``w_g >= 0`` of the GSNN reconstruction term of Sohn et al. (2015, eq. 7),
        ``E_{z ~ p(z|y)} log p(x | z, y)``, added to the ELBO: it trains the prior-net path
        that posterior sampling uses (:meth:`~ppl_cvae.models.cvae.CVAE.model`). Their hybrid
        objective with weight ``alpha`` is ``w_g = (1 - alpha) / alpha``. Not for a model
        without a latent.
    val_fraction : float, default 0.1
        Fraction of the pairs held out for the validation ELBO.
    patience : int, default 10
        Early stopping: epochs without a better validation loss before stopping; 0 disables.
    num_particles : int, default 1
        Monte Carlo particles of ``Trace_ELBO``.
    resimulate : bool, default False
        With a built-in simulator: draw fresh training pairs every epoch (infinite data).
    num_train : int, default 20000
        Number of simulated pairs per epoch when training from a problem.
    seed : int, default 0
        Seed of torch, numpy and Pyro, in [0, 2**32 - 1]; also seeds the weight initialisation
        in :func:`ppl_cvae.train.fit_problem` and ``ppl-cvae fit``.

    Raises
    ------
    ConfigError
        On any value outside its range.
    """

    num_epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    lr_decay: float = 1.0
    clip_norm: float = 10.0
    kl_warmup_epochs: int = 0
    kl_start: float = 0.01
    physics_weight: float = 0.0
    gsnn_weight: float = 0.0
    val_fraction: float = 0.1
    patience: int = 10
    num_particles: int = 1
    resimulate: bool = False
    num_train: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        # every seed of the package has one check and message (a NumPy integer becomes an int)
        object.__setattr__(self, "seed", as_seed(self.seed, optional=False))
        for f in fields(self):
            value = getattr(self, f.name)
            kind = {"bool": bool, "float": float}.get(str(f.type), int)
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if kind is float and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        checks = [
            ("num_epochs", self.num_epochs >= 1),
            ("batch_size", self.batch_size >= 1),
            ("learning_rate", 0 < self.learning_rate <= 1e3),
            ("lr_decay", 0 < self.lr_decay <= 1),
            ("clip_norm", self.clip_norm > 0),
            ("kl_warmup_epochs", self.kl_warmup_epochs >= 0),
            ("kl_start", 0 < self.kl_start <= 1),
            ("physics_weight", self.physics_weight >= 0),
            ("gsnn_weight", self.gsnn_weight >= 0),
            ("val_fraction", 0 <= self.val_fraction < 1),
            ("patience", self.patience >= 0),
            ("num_particles", self.num_particles >= 1),
            ("num_train", self.num_train >= 2),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid {name}={getattr(self, name)!r} in TrainConfig")


class ModelOverrides(TypedDict, total=False):
    """Overrides of :class:`ModelConfig` fields (every field but the shapes, all optional).

    The keys and value types are those of :class:`ModelConfig`; a type checker checks a
    problem's recommendations against them, and :class:`Overrides` checks the keys at run time.
    """

    latent_dim: int
    hidden_dims: tuple[int, ...]
    activation: str
    network: str
    conv_channels: tuple[int, ...]
    feature_dim: int
    y_maps: int
    prior: Literal["learned", "standard_normal", "flow"]
    likelihood: Likelihood
    fixed_scale: float
    init_scale: float
    basis_dim: int | None
    constrained_coefficients: bool
    y_embedding: Literal["separate", "shared"]
    linear_skip: bool
    scale_gain: float
    noise_rank: int
    flow_layers: int
    flow_bins: int
    flow_hidden_dims: tuple[int, ...]
    num_facies: int
    x_whitening: Literal["none", "linear"]
    prior_flow_layers: int
    prior_flow_type: Literal["autoregressive", "coupling"]
    prior_flow_final: Literal["auto", "spline", "none"]
    x_bounds: tuple[Any, Any] | None
    x_transform: Literal["none", "support"]


class TrainOverrides(TypedDict, total=False):
    """Overrides of :class:`TrainConfig` fields (all optional; same keys and value types)."""

    num_epochs: int
    batch_size: int
    learning_rate: float
    lr_decay: float
    clip_norm: float
    kl_warmup_epochs: int
    kl_start: float
    physics_weight: float
    gsnn_weight: float
    val_fraction: float
    patience: int
    num_particles: int
    resimulate: bool
    num_train: int
    seed: int


_SHAPE_FIELDS = ("x_shape", "y_shape")


def simulation_schedule(
    num_epochs: int = 60,
    *,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    num_train: int = 20000,
) -> TrainOverrides:
    """Return the training schedule the built-in problems recommend: fresh simulations per epoch.

    ``num_train`` simulated pairs per epoch (``resimulate``), Adam decaying 10x over the run,
    no early stopping (fresh data cannot be overfitted).

    Parameters
    ----------
    num_epochs : int, default 60
        Epochs of the run.
    batch_size : int, default 256
        Pairs per SVI step.
    learning_rate : float, default 1e-3
        Initial Adam step size.
    num_train : int, default 20000
        Simulated pairs per epoch.

    Examples
    --------
    >>> simulation_schedule(120)["num_epochs"]
    120
    """
    return TrainOverrides(
        num_epochs=num_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        lr_decay=0.1,
        resimulate=True,
        num_train=num_train,
        patience=0,
    )


@dataclass(frozen=True)
class Overrides:
    """A layer of settings: overrides of :class:`ModelConfig` and :class:`TrainConfig` fields.

    A problem's ``recommended_settings()`` returns one; the defaults for a data file, an image
    dataset, a run file (``fit --config``) and command-line flags are each one layer, and
    :func:`ppl_cvae.train.resolve_settings` stacks them (later layers win) into the two
    configurations. Values are validated when the configurations are built; keys here.

    Parameters
    ----------
    model : ModelOverrides (dict), optional
        ``ModelConfig`` fields to set (the event shapes come from the data, not from here).
    train : TrainOverrides (dict), optional
        ``TrainConfig`` fields to set.

    Raises
    ------
    ConfigError
        If ``model`` or ``train`` is not a mapping, a key is not a field of the matching
        configuration (the message lists the valid ones), or ``model`` sets ``x_shape`` or
        ``y_shape``.

    Examples
    --------
    >>> base = Overrides(model={"latent_dim": 8}, train={"num_epochs": 60})
    >>> base.updated(Overrides(train={"num_epochs": 5})).train
    {'num_epochs': 5}
    """

    model: ModelOverrides = field(default_factory=lambda: ModelOverrides())
    train: TrainOverrides = field(default_factory=lambda: TrainOverrides())

    def __post_init__(self) -> None:
        for part, cls, excluded in (
            ("model", ModelConfig, _SHAPE_FIELDS),
            ("train", TrainConfig, ()),
        ):
            value = getattr(self, part)
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"{part} overrides must be a dict of {cls.__name__} fields, got "
                    f"{type(value).__name__}"
                )
            valid = [f.name for f in fields(cls) if f.name not in excluded]
            unknown = [k for k in value if k not in valid]
            if unknown:
                shown = ", ".join(_show(k, 30) for k in unknown[:5])
                where = " (set by the data)" if set(unknown) <= set(excluded) else ""
                raise ConfigError(
                    f"unknown {cls.__name__} setting {shown}{where}; expected some of {valid}"
                )
            object.__setattr__(self, part, dict(value))  # a private copy

    def updated(self, other: Overrides) -> Overrides:
        """Return these overrides with ``other`` laid on top (``other`` wins per field)."""
        model = cast(ModelOverrides, {**self.model, **other.model})
        train = cast(TrainOverrides, {**self.train, **other.train})
        return Overrides(model=model, train=train)

    @classmethod
    def coerce(cls, value: Any, what: str = "settings") -> Overrides:
        """Return ``value`` as :class:`Overrides` (a ``{"model": ..., "train": ...}`` dict too).

        Parameters
        ----------
        value : Overrides or Mapping
            Overrides, or a dict with optional keys ``"model"`` and ``"train"`` (what a
            duck-typed user problem may return from ``recommended_settings()``).
        what : str
            Where ``value`` came from, for the error message.

        Raises
        ------
        ConfigError
            If ``value`` is neither, or has other keys than ``"model"`` and ``"train"``.
        """
        if isinstance(value, Overrides):
            return value
        if isinstance(value, Mapping) and set(value) <= {"model", "train"}:
            return cls(model=value.get("model", {}), train=value.get("train", {}))
        raise ConfigError(
            f"{what} must be Overrides or a dict with keys 'model' and 'train', got {_show(value)}"
        )


def meta_cvae(config: ModelConfig) -> Any:
    """Build ``CVAE(config)`` on PyTorch's ``meta`` device: shapes and dtypes, no storage.

    Counting parameters or checking a checkpoint's tensors against this model allocates
    nothing, whatever size the configuration asks for.

    Parameters
    ----------
    config : ModelConfig
        Architecture to build.

    Returns
    -------
    CVAE
        On the meta device (a stand-in identity bijection replaces the problem's coefficient
        transform, which has no parameters).

    Raises
    ------
    ConfigError
        If ``config`` is not a :class:`ModelConfig` or its networks cannot be built (e.g. a
        grid too small for the convolution stages; the torch message names the layer).
    """
    import torch

    # imported here: ppl_cvae.models.cvae imports this module
    from ppl_cvae.models.cvae import CVAE

    if not isinstance(config, ModelConfig):
        raise ConfigError(f"expected a ModelConfig, got {type(config).__name__}")
    transform = torch.distributions.transforms.identity_transform
    try:
        with torch.device("meta"):
            return CVAE(
                config,
                coefficient_transform=transform if config.constrained_coefficients else None,
            )
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, OverflowError) as err:
        raise ConfigError(f"cannot build a network for this ModelConfig: {err}") from err


def _count_state(config: ModelConfig) -> tuple[int, int]:
    """Return ``(parameters, buffer elements)`` of ``CVAE(config)``, built on the meta device."""
    model = meta_cvae(config)
    num_params = sum(p.numel() for p in model.parameters())
    num_buffers = sum(b.numel() for b in model.buffers())
    return num_params, num_buffers


def count_parameters(config: ModelConfig, *, buffers: bool = False) -> int:
    """Count the parameters of the CVAE that ``config`` describes, without allocating them.

    The network is built on PyTorch's ``meta`` device, whose tensors have a shape and a dtype
    but no storage, so the count of a configuration with billions of parameters takes a few
    milliseconds and no memory.

    Parameters
    ----------
    config : ModelConfig
        Architecture to count.
    buffers : bool, default False
        Also count the elements of the buffers (standardisers, decoder basis and its
        coefficient statistics), which a checkpoint stores beside the parameters.

    Returns
    -------
    int
        Number of scalar parameters (shared modules counted once), plus buffer elements when
        ``buffers`` is True.

    Raises
    ------
    ConfigError
        If ``config`` is not a :class:`ModelConfig` or its networks cannot be built.

    Examples
    --------
    >>> count_parameters(ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,)))
    140
    """
    num_params, num_buffers = _count_state(config)
    return num_params + num_buffers if buffers else num_params


def check_model_size(config: ModelConfig) -> int:
    """Refuse a configuration with more than :data:`MAX_PARAMETERS` parameters plus buffers.

    Parameters
    ----------
    config : ModelConfig
        Architecture to check.

    Returns
    -------
    int
        Number of parameters plus buffer elements (at most :data:`MAX_PARAMETERS`).

    Raises
    ------
    ConfigError
        If the count is above :data:`MAX_PARAMETERS`, or the networks cannot be built.

    Examples
    --------
    >>> check_model_size(ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,)))
    148
    """
    num_params, num_buffers = _count_state(config)
    return _check_total(num_params, num_buffers)


def _check_total(num_params: int, num_buffers: int) -> int:
    total = num_params + num_buffers
    if total > MAX_PARAMETERS:
        raise ConfigError(
            f"the model would have {total:,} parameters and buffer elements; the limit is "
            f"{MAX_PARAMETERS:,} (MAX_PARAMETERS): use smaller hidden_dims, latent_dim, "
            "conv_channels, feature_dim or events"
        )
    return total


def check_model_memory(config: ModelConfig, *, training: bool = True) -> int:
    """Refuse a configuration that is too large, or too large for this machine's memory.

    Call it before building a model from a configuration that came from outside.

    Parameters
    ----------
    config : ModelConfig
        Architecture to check.
    training : bool, default True
        Estimate the memory of training: 4 bytes per parameter for each of the weights, their
        gradients and the two Adam moments (16 bytes per parameter). False: the weights only,
        twice (a model plus the state dict it is loaded from, 8 bytes per parameter).

    Returns
    -------
    int
        Number of parameters (buffers excluded).

    Raises
    ------
    ConfigError
        If the parameters plus buffers exceed :data:`MAX_PARAMETERS` (see
        :func:`check_model_size`), or the networks cannot be built.
    ResourceError
        If the estimate exceeds the memory this process may still take
        (:func:`ppl_cvae._memory.check_memory`).

    Notes
    -----
    The estimate counts float32 parameters and buffers only; activations scale with the batch
    size and are not included.

    Examples
    --------
    >>> check_model_memory(ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,)))
    140
    """
    num_params, num_buffers = _count_state(config)
    _check_total(num_params, num_buffers)
    copies = 4 if training else 2
    num_bytes = 4 * (copies * num_params + num_buffers)
    check_memory(
        num_bytes,
        f"a model with {num_params:,} parameters"
        + (" (weights, gradients and two Adam moments)" if training else ""),
        "use smaller hidden_dims, latent_dim, conv_channels or feature_dim",
    )
    return num_params
