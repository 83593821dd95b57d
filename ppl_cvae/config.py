"""Frozen, self-validating configuration of the CVAE and of SVI training.

:class:`ModelConfig` and :class:`TrainConfig`; CLI flags map one to one onto their fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

from ppl_cvae.errors import ConfigError
from ppl_cvae.nets.blocks import ACTIVATIONS

__all__ = ["ModelConfig", "TrainConfig", "LIKELIHOODS", "NETWORKS", "PRIORS", "Y_EMBEDDINGS"]

LIKELIHOODS = ("gaussian", "gaussian_decoder", "gaussian_fixed", "bernoulli")
NETWORKS = ("mlp", "conv1d", "conv2d")
PRIORS = ("learned", "standard_normal")
Y_EMBEDDINGS = ("separate", "shared")


def _positive_ints(name: str, values: tuple[int, ...], allow_empty: bool = True) -> None:
    if not allow_empty and not values:
        raise ConfigError(f"{name} must not be empty")
    if any((not isinstance(v, int)) or v <= 0 for v in values):
        raise ConfigError(f"{name} must hold positive integers, got {values}")


class _DictMixin:
    """``to_dict`` / ``from_dict`` shared by the configuration dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the fields (tuples stay tuples)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_Config], data: dict[str, Any]) -> _Config:
        """Rebuild from :meth:`to_dict` output, validating every value.

        Raises
        ------
        ConfigError
            If a key is unknown or a value is invalid.
        """
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {sorted(unknown)}")
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
        Dimension of the latent ``z``.
    hidden_dims : tuple of int, default (256, 256)
        Hidden widths of every MLP (recognition net, prior net, decoder).
    activation : str, default "leaky_relu"
        Activation of every hidden layer.
    network : {"mlp", "conv1d", "conv2d"}, default "mlp"
        Feature encoders for ``x`` and ``y`` and the decoder body: flatten + MLP; 1-D
        convolutions over (length, channels) events; or 2-D convolutions over grid events
        ``(H, W)`` / ``(C, H, W)`` with a bilinear-upsampling decoder. With ``conv2d``, an event
        that is not a grid (e.g. a data vector ``y``) gets an MLP encoder; ``x`` must be a grid.
    conv_channels : tuple of int, default (32, 64)
        Channels of the convolution stages (``network="conv1d"`` or ``"conv2d"``).
    feature_dim : int, default 128
        Width of the features a conv encoder hands to the MLP heads.
    prior : {"learned", "standard_normal"}, default "learned"
        Conditional prior net ``p(z | y)`` or a fixed ``N(0, I)``; an unconditional VAE must
        use ``"standard_normal"``.
    likelihood : {"gaussian", "gaussian_decoder", "gaussian_fixed", "bernoulli"}
        Observation model of ``x`` given ``z, y``: Gaussian with one learned scale per output
        element; Gaussian whose scale the decoder predicts; Gaussian with ``fixed_scale``;
        Bernoulli (binary ``x``, e.g. facies or binarised images).
    fixed_scale : float, default 0.1
        Standard deviation of ``x`` for ``likelihood="gaussian_fixed"``, in units of ``x``.
    init_scale : float, default 0.05
        Initial standard deviation of ``x`` for ``likelihood="gaussian"``, in standardised
        units (a fraction of the training standard deviation of each element).
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
    constrained_coefficients : bool, default False
        With ``basis_dim``: the decoder works in an unconstrained space mapped onto the valid
        coefficients by a bijection the problem supplies (``problem.coefficient_transform()``;
        for Two Birds: ordered endpoints in [0.1, 1], so every decoded line pair is monotone).

    Raises
    ------
    ConfigError
        On any value outside its range or an inconsistent combination.
    """

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...] | None
    latent_dim: int = 8
    hidden_dims: tuple[int, ...] = (256, 256)
    activation: str = "leaky_relu"
    network: Literal["mlp", "conv1d", "conv2d"] = "mlp"
    conv_channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    prior: Literal["learned", "standard_normal"] = "learned"
    likelihood: Literal["gaussian", "gaussian_decoder", "gaussian_fixed", "bernoulli"] = "gaussian"
    fixed_scale: float = 0.1
    init_scale: float = 0.05
    basis_dim: int | None = None
    constrained_coefficients: bool = False
    y_embedding: Literal["separate", "shared"] = "separate"
    linear_skip: bool = False
    scale_gain: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "x_shape", tuple(self.x_shape))
        if self.y_shape is not None:
            object.__setattr__(self, "y_shape", tuple(self.y_shape))
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        object.__setattr__(self, "conv_channels", tuple(self.conv_channels))
        _positive_ints("x_shape", self.x_shape, allow_empty=False)
        if self.y_shape is not None:
            _positive_ints("y_shape", self.y_shape, allow_empty=False)
        _positive_ints("hidden_dims", self.hidden_dims)
        _positive_ints("conv_channels", self.conv_channels)
        for name in ("latent_dim", "feature_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}"
            )
        if self.network not in NETWORKS:
            raise ConfigError(f"unknown network {self.network!r}; expected one of {NETWORKS}")
        if self.prior not in PRIORS:
            raise ConfigError(f"unknown prior {self.prior!r}; expected one of {PRIORS}")
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(
                f"unknown likelihood {self.likelihood!r}; expected one of {LIKELIHOODS}"
            )
        if not (isinstance(self.fixed_scale, (int, float)) and self.fixed_scale > 0):
            raise ConfigError(f"fixed_scale must be > 0, got {self.fixed_scale!r}")
        if not (isinstance(self.init_scale, (int, float)) and 1e-2 <= self.init_scale <= 10):
            raise ConfigError(f"init_scale must be in [0.01, 10], got {self.init_scale!r}")
        if not (isinstance(self.scale_gain, (int, float)) and 0.1 <= self.scale_gain <= 100):
            raise ConfigError(f"scale_gain must be in [0.1, 100], got {self.scale_gain!r}")
        if self.y_embedding not in Y_EMBEDDINGS:
            raise ConfigError(
                f"unknown y_embedding {self.y_embedding!r}; expected one of {Y_EMBEDDINGS}"
            )
        if self.y_shape is None and self.prior == "learned":
            raise ConfigError(
                "an unconditional VAE (y_shape=None) has no prior net: use prior='standard_normal'"
            )
        if self.basis_dim is not None:
            if not isinstance(self.basis_dim, int) or not 0 < self.basis_dim <= self.x_dim:
                raise ConfigError(
                    f"basis_dim must be an integer in [1, {self.x_dim}], got {self.basis_dim!r}"
                )
            if self.likelihood == "bernoulli":
                raise ConfigError("a linear decoder basis needs a Gaussian likelihood")
            if self.linear_skip:
                raise ConfigError("linear_skip does not apply to a basis decoder (basis_dim)")
        elif self.constrained_coefficients:
            raise ConfigError("constrained_coefficients needs basis_dim")
        if self.linear_skip and self.y_shape is None:
            raise ConfigError("linear_skip needs a conditional model (y_shape set)")

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
        Adam step size.
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
        Seed of torch, numpy and Pyro.

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
    val_fraction: float = 0.1
    patience: int = 10
    num_particles: int = 1
    resimulate: bool = False
    num_train: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("num_epochs", self.num_epochs >= 1),
            ("batch_size", self.batch_size >= 1),
            ("learning_rate", self.learning_rate > 0),
            ("lr_decay", 0 < self.lr_decay <= 1),
            ("clip_norm", self.clip_norm > 0),
            ("kl_warmup_epochs", self.kl_warmup_epochs >= 0),
            ("kl_start", 0 < self.kl_start <= 1),
            ("physics_weight", self.physics_weight >= 0),
            ("val_fraction", 0 <= self.val_fraction < 1),
            ("patience", self.patience >= 0),
            ("num_particles", self.num_particles >= 1),
            ("num_train", self.num_train >= 2),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid {name}={getattr(self, name)!r} in TrainConfig")
