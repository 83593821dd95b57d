"""Default settings that adapt to the shapes and size of a training file (``fit --data``).

A user with only a file of simulated ``(x, y)`` pairs has no problem-specific recommendation, so
the network sizes, latent size, minibatch size, number of epochs and early stopping are derived
from ``d = prod(x_shape)``, ``m = prod(y_shape)`` and the number of pairs ``n`` instead of being
tuned for one problem. The rules were checked for calibration (coverage of held-out truths by
central posterior intervals) on linear-Gaussian files of several sizes; see the README.
"""

from __future__ import annotations

import math

from ppl_cvae.config import MAX_FULL_NOISE, ModelOverrides, Overrides, TrainOverrides
from ppl_cvae.errors import ConfigError

__all__ = ["data_settings", "image_settings"]

TARGET_STEPS = 8000  # SVI steps the epoch count aims at (early stopping may end sooner)
FLOW_TARGET_STEPS = 20000  # the same for a flow on x (NPE), which keeps improving longer
MAX_FLOW_X = 32  # largest d for which a file's default model is a flow on x (no latent)
MAX_SKIP_WEIGHTS = 2**22  # largest m * d for which the decoder gets a linear y -> x path


def _pow2(value: float, low: int, high: int) -> int:
    """Return the power of two nearest ``value`` (in log scale), clipped to ``[low, high]``."""
    return int(min(max(2 ** round(math.log2(max(value, 1.0))), low), high))


def data_settings(
    x_shape: tuple[int, ...], y_shape: tuple[int, ...] | None, num_pairs: int, *, flow: bool = True
) -> Overrides:
    """Return ``ModelConfig``/``TrainConfig`` overrides adapted to a training file.

    Parameters
    ----------
    x_shape : tuple of int
        Event shape of ``x``; ``d = prod(x_shape)``.
    y_shape : tuple of int or None
        Event shape of ``y``; ``m = prod(y_shape)`` (``None``: unconditional VAE, ``m = 0``).
    num_pairs : int
        Number of training pairs ``n`` in the file (before the validation split).
    flow : bool, default True
        Whether a small ``x`` gets the flow family below (False: the CVAE rules for every
        ``x``; ``ppl-cvae fit`` passes False when the user names a problem that recommends a
        model, or another likelihood).

    Returns
    -------
    Overrides
        Model and training overrides:

        - ``hidden_dims``: two layers of width ``2 max(d, m)`` rounded to a power of two in
          [64, 512];
        - for ``d <= MAX_FLOW_X`` (32): ``likelihood="flow"`` with ``latent_dim=0``, a
          conditional neural spline flow on ``x`` given ``y`` (neural posterior estimation;
          a draw costs ``d`` network passes per layer, so only for a small ``x``), ReLU
          activations, learning rate 5e-4 and about 20000 SVI steps with patience one tenth
          of the epochs (at least 20; a flow overfits a small file, and the best validation
          epoch's weights are kept); the items below that name the latent, the linear skip
          and the step count apply to larger ``x``;
        - ``latent_dim``: ``d`` clipped to [2, 32] (a latent per degree of freedom of a small
          ``x``; for fields the decoder's per-element scale carries the rest);
        - ``y_embedding``: ``"shared"`` when ``m >= 64`` (one summary network of a large ``y``);
        - ``linear_skip``: a linear path from ``y`` to the decoder output when ``m d <= 2^22``
          (on crosshole it halved the posterior-mean error against the exact posterior);
        - ``x_whitening="linear"`` (with ``init_scale=1``) when ``d`` and ``m`` are at most
          :data:`~ppl_cvae.config.MAX_FULL_NOISE` (4096): the networks model ``x`` given
          ``y`` as departures from the least-squares linear-Gaussian posterior fitted on the
          file (:class:`~ppl_cvae.data.standardise.LinearWhitener`; measured: C2ST on
          sbibm-style gaussian_linear and two_moons files, README);
        - ``batch_size``: ``n / 64`` rounded to a power of two in [32, 256];
        - ``num_epochs``: enough for about 8000 SVI steps, in [30, 2000], with early stopping on
          the validation ELBO (``patience`` one tenth of the epochs, at least 10), a
          validation fraction of 10% (at least 1 pair) and the learning rate decaying 10x.

    Raises
    ------
    ConfigError
        If ``num_pairs < 2`` or a shape is empty.
    """
    if num_pairs < 2:
        raise ConfigError(f"a training file needs at least 2 pairs, got {num_pairs}")
    if not x_shape:
        raise ConfigError("x_shape must not be empty")
    d = math.prod(x_shape)
    m = math.prod(y_shape) if y_shape is not None else 0
    width = _pow2(2 * max(d, m), 64, 512)
    batch = _pow2(num_pairs / 64, 32, 256)
    batch = min(batch, max(1, int(0.9 * num_pairs)))
    val_fraction = max(0.1, 1.0 / num_pairs)
    steps_per_epoch = max(1, math.ceil((1 - val_fraction) * num_pairs / batch))
    epochs = int(min(max(math.ceil(TARGET_STEPS / steps_per_epoch), 30), 2000))
    model = ModelOverrides(hidden_dims=(width, width), latent_dim=int(min(max(d, 2), 32)))
    if m >= 64:
        model["y_embedding"] = "shared"
    learning_rate, min_patience = 1e-3, 10
    if flow and m > 0 and d <= MAX_FLOW_X:
        model["likelihood"] = "flow"
        model["latent_dim"] = 0
        model["activation"] = "relu"
        epochs = int(min(max(math.ceil(FLOW_TARGET_STEPS / steps_per_epoch), 30), 2000))
        learning_rate, min_patience = 5e-4, 20
    elif 0 < m * d <= MAX_SKIP_WEIGHTS:
        model["linear_skip"] = True
    if 0 < m <= MAX_FULL_NOISE and d <= MAX_FULL_NOISE:
        model["x_whitening"] = "linear"
        model["init_scale"] = 1.0
    train = TrainOverrides(
        num_epochs=epochs,
        batch_size=batch,
        learning_rate=learning_rate,
        lr_decay=0.1,
        val_fraction=val_fraction,
        patience=max(min_patience, epochs // 10),
    )
    return Overrides(model=model, train=train)


def image_settings(dataset: str) -> Overrides:
    """Return the overrides for an image dataset of ``ppl-cvae fit --dataset``.

    Parameters
    ----------
    dataset : {"digits", "mnist", "folder"}
        ``"folder"``: grey images of any size (Gaussian pixels with one learned scale per
        pixel on [0, 1] grey levels, 2-D convolutions, 16 latent dims); ``"digits"`` and
        ``"mnist"``: binarised handwritten digits (Bernoulli pixels, MLPs of width 128, 8
        latent dims). Both warm the KL weight up over 10 epochs, which keeps the latent in
        use (Bowman et al. 2016).

    Returns
    -------
    Overrides

    Raises
    ------
    ConfigError
        If ``dataset`` is not one of the names above.

    Examples
    --------
    >>> image_settings("digits").model["likelihood"]
    'bernoulli'
    """
    if dataset == "folder":
        return Overrides(
            model=ModelOverrides(
                likelihood="gaussian",
                latent_dim=16,
                network="conv2d",
                conv_channels=(16, 32, 64),
                hidden_dims=(256,),
            ),
            train=TrainOverrides(batch_size=32, kl_warmup_epochs=10),
        )
    if dataset in ("digits", "mnist"):
        return Overrides(
            model=ModelOverrides(likelihood="bernoulli", latent_dim=8, hidden_dims=(128, 128)),
            train=TrainOverrides(batch_size=64, kl_warmup_epochs=10),
        )
    raise ConfigError(f"unknown image dataset {dataset!r}; expected digits, mnist or folder")
