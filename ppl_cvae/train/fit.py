"""Minibatch SVI with ``Trace_ELBO``: KL warm-up, validation ELBO, early stopping, metrics CSV."""

from __future__ import annotations

import copy
import csv
import io
import itertools
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from ppl_cvae._atomic import atomic_path
from ppl_cvae.checks import as_real_tensor, as_seed, check_type, seeded_rng, shape_text
from ppl_cvae.config import ModelConfig, ModelOverrides, Overrides, TrainConfig, TrainOverrides
from ppl_cvae.data.box import BoxTransform, support_box
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.device import problem_on, resolve_device
from ppl_cvae.errors import ConfigError, DataError, ShapeError, TrainingDivergedError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import (
    FACIES_LIKELIHOODS,
    Problem,
    check_batch_axes,
    check_facies_support,
    check_support,
    describe_support,
)
from ppl_cvae.problems.checked_simulator import CheckedSimulator
from ppl_cvae.train.distributed import (
    DistributedSetup,
    rank_device,
    rank_seed,
    setup_distributed,
    shard_rows,
)
from ppl_cvae.train.optim import FusedClippedAdam
from ppl_cvae.train.resume import CheckpointPolicy, TrainingSession, TrainState, data_digest
from ppl_cvae.train.settings import resolve_settings
from ppl_cvae.train.sources import (
    Batch,
    BatchSource,
    InMemoryBatches,
    ResimulatedBatches,
    ShardedResimulatedBatches,
)

__all__ = [
    "FitResult",
    "Simulator",
    "build_cvae",
    "fit",
    "fit_problem",
    "negative_elbo",
    "validation_split",
]

log = logging.getLogger(__name__)

Simulator = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "kl_weight", "learning_rate", "seconds")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : list of dict
        One row per epoch with keys ``epoch``, ``train_loss`` (mean negative ELBO per
        observation over the epoch's steps, with that epoch's KL weight and physics term),
        ``val_loss`` (negative ELBO per observation on the validation set, ``beta = 1``, no
        physics term; NaN without a validation set), ``kl_weight``, ``learning_rate``,
        ``seconds``.
    step_losses : list of float
        Loss per SVI step, normalised per observation.
    best_epoch : int
        Epoch whose weights were kept (best validation loss, or the last epoch).
    stopped_early : bool
        Whether early stopping ended the run.
    config : TrainConfig or None
        The settings of the run.
    distributed : dict or None
        In a data-parallel run (torchrun), ``{"world_size", "backend", "rank"}`` of this
        process; None in one process.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    config: TrainConfig | None = None
    distributed: dict[str, Any] | None = None


_DICT_HINT = "build it from a dict of settings with {0}(**settings)"


def _refuse_y_of_unconditional(config: ModelConfig, y: Any, where: str) -> None:
    """Refuse a ``y`` given for an unconditional model (it would be ignored in silence)."""
    if y is not None and not config.conditional:
        raise ShapeError(
            f"{where} got y of shape {tuple(getattr(y, 'shape', ()))} for an unconditional model "
            "(config.y_shape is None), which would ignore it: pass y=None to model x alone, or "
            "set ModelConfig(y_shape=...) to condition on y"
        )


def build_cvae(
    config: ModelConfig,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    problem: Problem | None = None,
    basis: torch.Tensor | None = None,
    coefficient_transform: torch.distributions.Transform | None = None,
    forward_operator: Callable[[torch.Tensor], torch.Tensor] | None = None,
    misfit_std: float | None = None,
    seed: int | None = 0,
    standardisers: tuple[Standardiser, Standardiser | None] | None = None,
    training_x_range: tuple[torch.Tensor, torch.Tensor] | None = None,
    fit_rows: torch.Tensor | None = None,
) -> CVAE:
    """Build a CVAE whose standardisers (and basis coefficients) are fitted on training data.

    The network weights are initialised from ``seed`` in a forked RNG (the global torch RNG is
    left as it was), so the same configuration, data and seed give the same initial weights.

    Parameters
    ----------
    config : ModelConfig
    x : Tensor, shape (N, *x_shape)
        Training models in physical units.
    y : Tensor, shape (N, *y_shape), or None for an unconditional VAE
    problem : Problem, optional
        Supplies whatever of the next four is not given: ``problem.basis()`` (when
        ``config.basis_dim`` is set), ``problem.coefficient_transform()`` (when
        ``config.constrained_coefficients``), ``problem.forward`` and ``problem.misfit_std``.
    basis, coefficient_transform, forward_operator, misfit_std
        As in :class:`~ppl_cvae.models.cvae.CVAE` (``misfit_std`` defaults to 1).
    seed : int or None, default 0
        Seed of the weight initialisation, in [0, 2**32 - 1] (``TrainConfig.seed`` in
        :func:`fit_problem` and ``ppl-cvae fit``); None draws from the global torch RNG.
    standardisers : (Standardiser, Standardiser or None), optional
        Standardisers of ``x`` and ``y`` fitted elsewhere, e.g. on the moments of a file too
        large for memory (:func:`~ppl_cvae.train.sources.build_lazy_cvae`); ``x`` and ``y``
        are then a subset that fits the basis coefficients and the whitener.
    training_x_range : (Tensor, Tensor), optional
        Elementwise minimum and maximum of all training ``x`` (shape x_shape each) when ``x``
        is a subset (as with ``standardisers``); default: those of the ``x`` of ``fit_rows``
        (the training pairs, as for a lazily read file). Recorded only
        without a ``problem`` (:attr:`CVAE.training_x_range
        <ppl_cvae.models.cvae.CVAE.training_x_range>`): a model fitted on pairs alone knows
        its prior only through them, and sampling reports draws that leave their range.
    fit_rows : Tensor of int64, shape (K,), optional
        Indices of the pairs that fit the standardisers, the whitener and the basis
        coefficients: the training pairs of :func:`validation_split`, so that the pairs
        :func:`fit` holds out for its validation loss are unseen by the model, as they are by
        sbi's networks. Default (or with fewer than two indices): all pairs.
        :func:`fit_problem` and ``ppl-cvae fit`` pass them for a fixed set of pairs.

    Raises
    ------
    ShapeError
        If ``x`` or ``y`` do not match the configuration, or hold different numbers of pairs;
        if ``y`` is given for an unconditional configuration (``y_shape`` None).
    ConfigError
        If ``config`` is not a :class:`~ppl_cvae.config.ModelConfig`; if ``seed`` is not None
        or an int in ``[0, 2**32 - 1]``
        (:func:`~ppl_cvae.checks.as_seed`); if ``problem`` declares a support that the
        decoder's draws cannot hold: a discrete one with a density on ``R^n``, or one
        without the codes of a facies decoder
        (:func:`~ppl_cvae.problems.base.check_facies_support`).
    DataError
        If an element of ``x`` lies outside ``config.x_bounds`` (the first is named); for a
        facies decoder (``bernoulli``, ``categorical``), if a value of ``x`` is not a code
        ``0 .. K-1``.

    Warns
    -----
    UserWarning
        If every element of ``y`` is the same in all pairs (the model could learn only
        ``p(x)``); if every ``x`` is one of a few integer codes and the likelihood is a
        density on ``R^n``.
    """
    check_type(config, ModelConfig, "build_cvae()'s config", _DICT_HINT.format("ModelConfig"))
    seed = as_seed(seed)
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    _refuse_y_of_unconditional(config, y, "build_cvae")
    if tuple(x.shape[1:]) != config.x_shape:
        raise ShapeError(
            f"x has shape {tuple(x.shape)}; config expects {shape_text('N', config.x_shape)}"
        )
    # pairs of another real dtype (NumPy's float64) in the dtype the model is built in
    x = cast(torch.Tensor, _in_dtype(x, torch.get_default_dtype()))
    y = _in_dtype(y, torch.get_default_dtype())
    bounds = config.x_bounds_box()
    if bounds is not None:
        low, high = (end.to(x) for end in bounds)
        _refuse_outside(x, low, high, "x_bounds", "the bounds must hold the prior's every draw")
    if problem is not None:
        problem = as_problem(problem)
        check_facies_support(problem, config.likelihood, config.num_facies, config.x_shape)
        if basis is None and config.basis_dim is not None:
            basis = problem.basis()
        if coefficient_transform is None and config.constrained_coefficients:
            coefficient_transform = problem.coefficient_transform()
        forward_operator = forward_operator or problem.forward
        misfit_std = problem.misfit_std if misfit_std is None else misfit_std
    if config.likelihood not in FACIES_LIKELIHOODS and config.basis_dim is None:
        _warn_if_codes(x, config.likelihood)
    _refuse_non_codes(x, config)
    box = _x_box(config, problem, x)
    x_rows, y_rows = _rows(x, fit_rows), None if y is None else _rows(y, fit_rows)
    x_fit = (
        x_rows
        if box is None
        else BoxTransform(box[0], box[1], len(config.x_shape), box[2]).inv(x_rows)
    )
    if standardisers is None:
        xs = Standardiser(config.x_shape, "x").fit(x_fit)
    elif box is not None:
        raise ConfigError(
            "x_transform='support' standardises T^-1(x), which the moments of x given in "
            "standardisers (a lazily read file's scan, fit --lazy) do not give: fit on data in "
            "memory (without --lazy), or use x_transform='none' (--x-transform none; draws "
            "outside the bounds are then rejected at sampling)"
        )
    else:
        xs = standardisers[0]
    ys = None
    if config.conditional:
        if y is None or tuple(y.shape[1:]) != config.y_shape:
            got = None if y is None else tuple(y.shape)
            raise ShapeError(f"y has shape {got}; config expects {shape_text('N', config.y_shape)}")
        if y.shape[0] != x.shape[0]:  # as CVAE.check_inputs, fit and the data loaders
            raise ShapeError(
                f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}"
            )
        ys = (
            Standardiser(config.y_shape, "y").fit(cast(torch.Tensor, y_rows))
            if standardisers is None
            else standardisers[1]
        )
        if y.shape[0] >= 2 and bool((y == y[:1]).all()):
            warnings.warn(
                f"every element of y is the same in all {y.shape[0]} training pairs: y carries "
                "no information about x, so the model learns the prior p(x), not p(x | y) (was "
                "the wrong array saved as y?)",
                UserWarning,
                stacklevel=2,
            )
    with seeded_rng(seed):
        cvae = CVAE(
            config,
            xs,
            ys,
            basis=basis,
            coefficient_transform=coefficient_transform,
            forward_operator=forward_operator,
            misfit_std=1.0 if misfit_std is None else misfit_std,
        )
    if box is not None:
        cvae.set_x_box(*box)
    if problem is None and x.shape[0]:
        # of the pairs that fit the standardisers: a lazily read file's range is too
        low, high = training_x_range or (x_rows.amin(0), x_rows.amax(0))
        if bool((low.isfinite() & high.isfinite()).all()):  # bad values are refused elsewhere
            cvae.set_training_x_range(low, high)
    cvae.fit_basis_coefficients(x_rows)
    cvae.fit_whitener(x_rows, y_rows)
    return cvae


def _rows(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Return ``values[rows]``; all of ``values`` without ``rows`` or with fewer than two."""
    if rows is None or rows.numel() < 2:
        return values
    return values[rows.to(values.device)]


def validation_split(
    num_pairs: int, config: TrainConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the indices of the training and the validation pairs :func:`fit` splits off.

    :func:`fit` draws one permutation of ``num_pairs`` first from its generator, seeded
    ``config.seed``, and holds out its first ``round(val_fraction * num_pairs)`` entries;
    without ``generator`` this draws the same one, for :func:`build_cvae`'s ``fit_rows``.

    Parameters
    ----------
    num_pairs : int
        Number of fixed training pairs given to :func:`fit` (not used when resimulating:
        the validation pairs are then simulated apart).
    config : TrainConfig
    generator : torch.Generator, optional
        Drawn from (``fit`` passes its own); default a new one seeded ``config.seed``.

    Returns
    -------
    train, validation : Tensor of int64, shapes (N - V,) and (V,)

    Examples
    --------
    >>> train, val = validation_split(10, TrainConfig(val_fraction=0.2))
    >>> len(train), len(val), sorted(torch.cat([train, val]).tolist()) == list(range(10))
    (8, 2, True)
    """
    n_val = int(round(config.val_fraction * num_pairs))
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(num_pairs, generator=generator)
    return perm[n_val:], perm[:n_val]


MAX_CODES = 16
"""At most this many distinct integer values of ``x`` make :func:`build_cvae` warn that a
density on ``R^n`` is being fitted to codes."""


def _warn_if_codes(x: torch.Tensor, likelihood: str) -> None:
    """Warn when every training value of ``x`` is one of a few nonnegative integers (codes).

    A density on ``R^n`` (Gaussian, flow) fitted to discrete values is degenerate: its loss
    falls without bound as it narrows onto them. At least 100 values and at most
    :data:`MAX_CODES` distinct ones (counted on the first million values).
    """
    if x.numel() < 100 or not bool((x == x.round()).all()) or bool((x < 0).any()):
        return
    codes = torch.unique(x.flatten()[: 1 << 20])
    if len(codes) > MAX_CODES:
        return
    binary = bool((codes <= 1).all())
    fix = (
        "fit likelihood='bernoulli' (--likelihood bernoulli)"
        if binary
        else "fit likelihood='categorical' (--likelihood categorical --num-facies K, codes "
        "0 .. K-1)"
    )
    shown = ", ".join(f"{float(v):g}" for v in codes)
    warnings.warn(
        f"every training value of x is one of the integers {{{shown}}}: a {likelihood!r} "
        f"density on R^n fitted to codes is degenerate (its loss falls without bound as it "
        f"narrows onto them); for facies codes {fix}",
        stacklevel=3,
    )


def _refuse_non_codes(x: torch.Tensor, config: ModelConfig) -> None:
    """Refuse training ``x`` that a facies decoder cannot model: anything but codes 0 .. K-1.

    ``K`` is 2 for ``likelihood="bernoulli"`` and ``num_facies`` for ``"categorical"``.

    Raises
    ------
    DataError
        If a value is not an integer in ``0 .. K-1``: the first such value is named, and the
        remedy (more facies for larger codes; a density for real values).
    """
    if config.likelihood not in FACIES_LIKELIHOODS or x.numel() == 0:
        return
    classes = 2 if config.likelihood == "bernoulli" else config.num_facies
    bad = ~((x == x.round()) & (x >= 0) & (x <= classes - 1))
    if not bool(bad.any()):
        return
    first = tuple(int(i) for i in bad.nonzero()[0])
    value = float(x[first])
    integers = bool((x == x.round()).all()) and bool((x >= 0).all())
    if integers:
        top = int(x.max())
        fix = (
            f"fit likelihood='categorical' with num_facies={top + 1} (--likelihood categorical "
            f"--num-facies {top + 1})"
            if config.likelihood == "bernoulli"
            else f"fit num_facies={top + 1} (--num-facies {top + 1})"
        )
    else:
        fix = (
            "a facies decoder models codes only: for real values fit a density "
            "(--likelihood gaussian or flow)"
        )
        if config.likelihood == "bernoulli" and bool((x >= 0).all() and (x <= 1).all()):
            fix += (
                "; grey levels in [0, 1] (resized or anti-aliased images) are not 0/1 pixels: "
                "threshold them (x > 0.5) to fit 'bernoulli'"
            )
    raise DataError(
        f"a {config.likelihood!r} decoder models the codes 0 .. {classes - 1} (facies, "
        "or binary pixels), but "
        f"{int(bad.sum())} training values of x are not among them (the first: "
        f"x{list(first)} = {value:g}); {fix}"
    )


def _refuse_outside(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, box: str, why: str
) -> None:
    """Refuse training ``x`` ``(N, *x_shape)`` outside ``[low, high]`` (``x_shape`` each).

    Raises
    ------
    DataError
        Naming how many values lie outside, the first with its element's ends, ``box`` (what
        the ends are) and ``why`` they must hold ``x``.
    """
    outside = (x < low) | (x > high)
    if bool(outside.any()):
        first = tuple(int(i) for i in outside.nonzero()[0])
        ends = f"[{float(low[first[1:]]):g}, {float(high[first[1:]]):g}]"
        raise DataError(
            f"{int(outside.sum())} training values of x lie outside {box} {ends} (the first: "
            f"x{list(first)} = {float(x[first]):.6g}); {why}"
        )


def _x_box(
    config: ModelConfig, problem: Problem | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Return the box of ``x_transform="support"`` as float32 ``(low, high, floor)``, or None.

    The problem's declared support (:func:`~ppl_cvae.data.box.support_box`) intersected with
    ``config.x_bounds``; refuses a support that is not a box or bounds nothing, and training
    ``x`` outside it. ``floor`` (per element, units of ``x``): half the smallest positive
    distance of the training values from a one-sided end (1 where there is none), what
    :class:`~ppl_cvae.data.box.BoxTransform` maps values on the end to.
    """
    if config.x_transform != "support":
        return None
    low = torch.full(config.x_shape, -math.inf, dtype=torch.float64)
    high = torch.full(config.x_shape, math.inf, dtype=torch.float64)
    support = None if problem is None else problem.support
    if problem is not None and support is not None:
        box = support_box(support, config.x_shape)
        if box is None:
            raise ConfigError(
                f"x_transform='support' needs a support that is a box (an interval, "
                f"positive, greater_than, ... per element); problem {problem.name!r} declares "
                f"{describe_support(support)}: use x_transform='none'"
            )
        low, high = box
    bounds = config.x_bounds_box()
    if bounds is not None:
        low, high = torch.maximum(low, bounds[0]), torch.minimum(high, bounds[1])
    if not bool((torch.isfinite(low) | torch.isfinite(high)).any()):
        raise ConfigError(
            "x_transform='support' needs bounds on x: declare the problem's support "
            "(Problem.support) or give x_bounds (--x-bounds LOW,HIGH)"
        )
    low32, high32 = low.float(), high.float()
    if not bool((low32 < high32).all()):
        raise ConfigError("the support's box has an element with low >= high in float32")
    declared = problem is not None and support is not None
    _refuse_outside(
        x,
        low32,
        high32,
        "the support's box" if declared else "x_bounds",
        (
            f"the training x (the prior draws of problem {problem.name!r}) must lie in the "
            f"support it declares, {describe_support(support)}: fix its sample_prior or its "
            "support (x_transform='support', the default with a support, maps that box onto R)"
        )
        if declared and problem is not None
        else "the bounds must hold the prior's every draw (x_transform='support' maps the box "
        "onto R)",
    )
    one_end = torch.where(torch.isfinite(low32), low32, high32)  # the end of a one-sided side
    gap = (x - one_end).abs()
    gap = torch.where(gap > 0, gap, torch.full_like(gap, math.inf))
    nearest = gap.amin(0) if gap.shape[0] else torch.full(config.x_shape, math.inf)
    floor = torch.where(torch.isfinite(nearest), nearest / 2, torch.ones_like(nearest))
    tiny = torch.finfo(torch.float32).tiny
    return low32, high32, floor.clamp(min=tiny)


def negative_elbo(
    cvae: CVAE,
    y: torch.Tensor | None,
    x: torch.Tensor,
    *,
    num_particles: int = 1,
    chunk_size: int = 4096,
) -> float:
    """Estimate the negative ELBO per observation, ``-(1/N) sum_n ELBO_n`` (nats).

    Parameters
    ----------
    cvae : CVAE
    y : Tensor, shape (N, *y_shape), or None
    x : Tensor, shape (N, *x_shape)
    num_particles : int, default 1
        Monte Carlo samples of ``z`` per observation.
    chunk_size : int, default 4096
        Observations per ``Trace_ELBO.loss`` call (bounds memory).
    """
    elbo = Trace_ELBO(num_particles=num_particles)
    total = 0.0
    n = x.shape[0]
    with torch.no_grad(), warnings.catch_warnings():
        # a NaN loss is returned to the caller, who reports it once
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        for start in range(0, n, chunk_size):
            yb = None if y is None else y[start : start + chunk_size]
            total += elbo.loss(cvae.model, cvae.guide, yb, x[start : start + chunk_size])
    return total / n


def _kl_weight(config: TrainConfig, epoch: int) -> float:
    """Return the KL weight ``beta`` of 0-based ``epoch``: linear warm-up from ``kl_start`` to 1."""
    if config.kl_warmup_epochs == 0:
        return 1.0
    frac = min(1.0, epoch / config.kl_warmup_epochs)
    return config.kl_start + (1.0 - config.kl_start) * frac


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite the metrics CSV ``path`` atomically with one row per epoch so far."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


@dataclass(frozen=True)
class _Pairs:
    """Training or validation pairs: ``x`` (n, *x_shape) and ``y`` (n, *y_shape) or None.

    ``y`` is None for an unconditional VAE (the model is then fitted to ``x`` alone).
    """

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: torch.Tensor) -> _Pairs:
        return _Pairs(self.x[index], None if self.y is None else self.y[index])

    def to(self, device: torch.device) -> _Pairs:
        """Return the pairs on ``device`` (the same object when they are there already)."""
        if self.x.device == device:
            return self
        return _Pairs(self.x.to(device), None if self.y is None else self.y.to(device))


def _simulate(
    simulator: Simulator, num: int, generator: torch.Generator, conditional: bool
) -> _Pairs:
    """Draw ``num`` pairs from ``simulator``; drop ``y`` for an unconditional VAE."""
    x, y = simulator(num, generator)
    return _Pairs(x, y if conditional else None)


def _split_data(
    cvae: CVAE,
    source: torch.Tensor | Simulator,
    y: torch.Tensor | None,
    config: TrainConfig,
    resample: Simulator | None,
    generator: torch.Generator,
) -> tuple[_Pairs | Simulator, _Pairs | None]:
    """Return the training pairs (or the simulator that redraws them each epoch) and validation.

    ``source`` is either the training models ``x`` (validated, then split at random into
    ``1 - val_fraction`` training and ``val_fraction`` validation pairs) or, when no pairs were
    given, the simulator (the validation set is then ``round(val_fraction * num_train)`` pairs
    drawn once, or None). ``resample`` is the simulator when ``config.resimulate`` is set.
    """
    conditional = cvae.config.conditional
    if callable(source):  # no pairs given: simulate the validation set once
        n_val = int(round(config.val_fraction * config.num_train))
        return source, (_simulate(source, n_val, generator, conditional) if n_val else None)
    y_cond = y if conditional else None
    cvae.check_inputs(y_cond, source)  # a conditional model has raised ShapeError if y is None
    cvae.check_finite(x=source, y=y)
    rows, held = validation_split(source.shape[0], config, generator)
    pairs = _Pairs(source, y_cond)
    train, val = pairs[rows], pairs[held]
    if resample is not None:
        return resample, val
    if len(train) < 1:
        raise ShapeError("no training pairs left after the validation split")
    return train, val


def _as_tensor(values: Any, name: str) -> Any:
    """Return NumPy arrays and lists of numbers as tensors; tensors and None as they are.

    The Python API takes pairs as sbi does (:func:`~ppl_cvae.checks.as_real_tensor`: a
    floating dtype is kept, integers and booleans become float32); a tensor is left for the
    shape and value checks downstream to name.
    """
    if values is None or isinstance(values, torch.Tensor):
        return values
    return as_real_tensor(values, name, dtype=None)


def _in_dtype(values: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Return real ``values`` in ``dtype`` (the networks' matrix products need one dtype).

    Training pairs from NumPy are float64 by default; draws are cast the same way
    (:func:`inference.posterior.draw_posterior`). None, and tensors that are not real numbers,
    are returned as they are, for the shape and value checks to name.
    """
    if not isinstance(values, torch.Tensor) or values.is_complex() or values.dtype == dtype:
        return values
    return values.to(dtype)


def _in_model_dtype(cvae: CVAE, values: torch.Tensor | None) -> torch.Tensor | None:
    """Return ``values`` in the floating dtype of ``cvae``'s weights (float32 unless converted)."""
    dtype = next((p.dtype for p in cvae.parameters()), torch.get_default_dtype())
    return _in_dtype(values, dtype)


def _training_source(
    cvae: CVAE,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    config: TrainConfig,
    simulator: Simulator | None,
    batches: BatchSource | None,
    validation: tuple[torch.Tensor, torch.Tensor | None] | None,
    generator: torch.Generator,
    ddp: DistributedSetup | None = None,
) -> tuple[BatchSource, _Pairs | None]:
    """Return the batch source of the epochs and the validation pairs.

    Without ``batches``: the pairs ``x, y`` split by :func:`_split_data` and shuffled every
    epoch (:class:`InMemoryBatches`), or ``num_train`` pairs simulated every epoch when
    resimulating (:class:`ResimulatedBatches`; in a data-parallel run each rank simulates
    its share, :class:`ShardedResimulatedBatches`). With ``batches`` (a stream, a file read
    lazily): the validation pairs are ``validation``, else ``round(val_fraction *
    pairs_per_epoch)`` pairs simulated once when there is a simulator, else none.
    """
    conditional = cvae.config.conditional
    if batches is None:
        resample = simulator if config.resimulate else None
        source = x if x is not None else resample
        assert source is not None  # fit has checked
        train, val = _split_data(cvae, source, y, config, resample, generator)
        if isinstance(train, _Pairs):
            return InMemoryBatches(train.x, train.y, config.batch_size, generator), val
        if ddp is not None and config.num_train >= ddp.world_size:  # every rank has a share
            sharded = ShardedResimulatedBatches(
                train,
                config.num_train,
                config.batch_size,
                generator,
                conditional,
                seed=config.seed,
                ddp=ddp,
            )
            return sharded, val
        return (
            ResimulatedBatches(train, config.num_train, config.batch_size, generator, conditional),
            val,
        )
    if x is not None:
        raise ConfigError("fit takes training pairs x or a batch source, not both")
    if validation is not None:
        vx, vy = validation[0], validation[1] if conditional else None
        cvae.check_inputs(vy, vx)
        cvae.check_finite(x=vx, y=vy)
        return batches, _Pairs(vx, vy)
    n_val = int(round(config.val_fraction * batches.pairs_per_epoch))
    if simulator is None or n_val == 0:
        return batches, None
    return batches, _simulate(simulator, n_val, generator, conditional)


def _make_svi(cvae: CVAE, config: TrainConfig, num_train: int) -> tuple[SVI, FusedClippedAdam]:
    """Return the SVI object and its optimiser (ClippedAdam, ``lr_decay`` spread over all steps)."""
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    lrd = config.lr_decay ** (1.0 / total_steps)
    optim = FusedClippedAdam(
        {"lr": config.learning_rate, "clip_norm": config.clip_norm, "lrd": lrd}
    )
    svi = SVI(cvae.model, cvae.guide, optim, Trace_ELBO(num_particles=config.num_particles))
    return svi, optim


def _train_epoch(
    step: Callable[..., float],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    config: TrainConfig,
    beta: float,
    epoch: int,
    step_losses: list[float],
    device: torch.device,
    *,
    first_step: int = 0,
    loss_sum: float = 0.0,
    skipped_pairs: int | None = None,
    after_step: Callable[[int, float], None] | None = None,
) -> float:
    """Take one SVI step per minibatch ``(x, y)`` of ``batches``; return the loss per observation.

    ``step(y, x, **kwargs)`` is ``SVI.step`` (one process) or the data-parallel step of
    :meth:`~ppl_cvae.train.distributed.DistributedSetup.make_step`; both return the
    minibatch's loss.

    Each minibatch is moved to ``device`` before its step. Appends each step's loss per
    observation to ``step_losses``. A resumed epoch skips its first ``first_step``
    minibatches (drawn again, not trained on) and starts from the earlier steps'
    unnormalised loss ``loss_sum``; with ``skipped_pairs`` the source has left them out
    already (``batches`` starts at minibatch ``first_step``, and the skipped ones held
    ``skipped_pairs`` pairs). ``after_step(steps_taken_this_epoch, loss_sum)`` runs after
    each step (checkpoints).

    Raises
    ------
    ConfigError
        If a step's loss is not finite (training diverged).
    """
    total, count = loss_sum, 0 if skipped_pairs is None else skipped_pairs
    start = 0 if skipped_pairs is None else first_step
    with pyro.validation_enabled(False), warnings.catch_warnings():
        # a NaN loss is reported below as one error, not as Pyro's warning per step
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        for index, (x_batch, y_batch) in enumerate(batches, start=start):
            count += len(x_batch)
            if index < first_step:  # trained on before the interruption
                continue
            x_batch = x_batch.to(device)
            y_batch = None if y_batch is None else y_batch.to(device)
            loss = step(
                y_batch,
                x_batch,
                kl_weight=beta,
                physics_weight=config.physics_weight,
                gsnn_weight=config.gsnn_weight,
            )
            if not math.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch}, SVI step {len(step_losses) + 1} "
                    f"(loss {loss}); lower the learning rate or check the data scale"
                )
            step_losses.append(loss / len(x_batch))
            total += loss
            if after_step is not None:
                after_step(index + 1, total)
    return total / count


def _drawn(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Start ``batches`` so that the epoch's random draws (shuffle, simulation) are made now.

    A source draws when its iterator starts; the resume session checks the generator right
    after (:meth:`~ppl_cvae.train.resume.TrainingSession.data_drawn`).
    """
    first = next(batches, None)
    return batches if first is None else itertools.chain([first], batches)


def _validation_loss(cvae: CVAE, val: _Pairs | None, ddp: DistributedSetup | None = None) -> float:
    """Return the negative ELBO per observation of ``val`` (``beta = 1``), NaN without pairs.

    In a data-parallel run each rank evaluates its shard of ``val`` and the sums are
    all-reduced, so every rank gets the same number.
    """
    if ddp is not None:
        num = 0 if val is None else len(val)
        rows = shard_rows(num, ddp.rank, ddp.world_size)
        part = None if val is None or rows.start == rows.stop else val[torch.arange(num)[rows]]
        local = 0.0 if part is None else _validation_loss(cvae, part) * len(part)
        total, count = ddp.all_sum([local, float(0 if part is None else len(part))])
        return total / count if count else math.nan
    if val is None or len(val) == 0:
        return math.nan
    cvae.eval()
    with pyro.validation_enabled(False):
        loss = negative_elbo(cvae, val.y, val.x)
    cvae.train()
    return loss


def _record_epoch(
    result: FitResult,
    row: dict[str, float],
    bar: Any,
    metrics_path: str | os.PathLike[str] | None,
) -> None:
    """Append ``row`` to the history; show it on the progress bar, the log and the metrics CSV."""
    result.history.append(row)
    train_loss, val_loss = row["train_loss"], row["val_loss"]
    bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
    log.info(
        "epoch %d train_loss %.4f val_loss %.4f beta %.3f",
        row["epoch"],
        train_loss,
        val_loss,
        row["kl_weight"],
    )
    if metrics_path is not None:
        _write_metrics(Path(metrics_path), result.history)


def _call_hook(hook: Callable[[int, CVAE], None], epoch: int, cvae: CVAE) -> None:
    """Call ``hook(epoch, cvae)`` with the model in eval mode and gradients off."""
    cvae.eval()
    with torch.no_grad():
        hook(epoch, cvae)
    cvae.train()


class _EarlyStopping:
    """Keep the weights of the best monitored loss; stop after ``patience`` epochs without one.

    Epochs of the KL warm-up (``beta < 1``) neither improve nor count against ``patience``;
    ``patience = 0`` never stops.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_state: dict[str, Any] | None = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, epoch: int, loss: float, beta: float, cvae: CVAE) -> bool:
        """Record an epoch's monitored loss, copying the weights if best; return whether to stop."""
        if beta < 1.0:
            return False
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, epoch, 0
            self.best_state = copy.deepcopy(cvae.state_dict())
            return False
        self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience

    def restore(self, cvae: CVAE, last_epoch: int) -> int:
        """Load the best weights into ``cvae``; return their epoch (``last_epoch`` if none)."""
        if self.best_state is None:
            return last_epoch
        cvae.load_state_dict(self.best_state)
        return self.best_epoch


def fit(
    cvae: CVAE,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    config: TrainConfig,
    *,
    simulator: Simulator | None = None,
    batches: BatchSource | None = None,
    validation: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, CVAE], None] | None = None,
    device: str | torch.device | None = None,
    checkpoint: CheckpointPolicy | None = None,
    resume_from: TrainState | None = None,
) -> FitResult:
    """Train ``cvae`` by minibatch SVI with ``Trace_ELBO`` and return its history.

    Parameters
    ----------
    cvae : CVAE
        Model with fitted standardisers (see :func:`build_cvae`); trained in place and left
        with the weights of the best validation epoch, in eval mode.
    x : Tensor, shape (N, *x_shape), or None
        Training models; with ``simulator`` and ``config.resimulate`` they may be None.
    y : Tensor, shape (N, *y_shape), or None
        Observations (None for an unconditional VAE, or when simulating).
    config : TrainConfig
    simulator : callable ``(num, generator) -> (x, y)``, optional
        Draws fresh pairs; with ``config.resimulate`` each epoch trains on
        ``config.num_train`` new pairs (the validation set is drawn once).
    batches : BatchSource, optional
        Where the epochs' minibatches come from instead of ``x, y`` (which must then be
        None): a simulation stream (:class:`~ppl_cvae.train.sources.StreamBatches`) or a file
        read lazily (:class:`~ppl_cvae.train.sources.LazyFileBatches`); see
        :mod:`ppl_cvae.train.sources`. The caller closes what it opened (files); ``fit``
        calls ``batches.close()`` at the end, which stops stream workers.
    validation : (Tensor, Tensor or None), optional
        With ``batches``: the validation pairs ``x`` ``(K, *x_shape)``, ``y`` ``(K, *y_shape)``.
        Without it, ``round(val_fraction * batches.pairs_per_epoch)`` pairs are simulated
        once when ``simulator`` is given, else there is no validation set.
    metrics_path : path, optional
        CSV rewritten atomically after every epoch (columns of ``FitResult.history``).
    progress : bool, default True
        Show a tqdm progress bar over epochs with the current losses.
    on_epoch_end : callable ``(epoch, cvae) -> None``, optional
        Called after each epoch's validation, with the model in eval mode and gradients off
        (e.g. to save reconstruction grids); epochs count from 1.
    device : str or torch.device, optional
        Where the networks and minibatches live (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
        ``"auto"``; default the CPU, see :func:`~ppl_cvae.device.resolve_device`). ``cvae`` is
        moved there and left there. The pairs stay on the CPU and each minibatch is copied
        to the device; simulation runs on the CPU, so a seed gives the same training pairs
        on every device. With ``physics_weight > 0`` the CVAE's forward operator must run on
        the device too (:func:`fit_problem` and the CLI hand it :func:`problem_on`'s copy).
    checkpoint : CheckpointPolicy, optional
        Write a training-state file periodically (:mod:`ppl_cvae.train.resume`). With
        ``batches`` the source must have a position of its own to store
        (:class:`~ppl_cvae.train.sources.ResumableSource`: a stream, a lazily read file).
    resume_from : TrainState, optional
        Continue the interrupted run this state was saved from (same ``cvae`` configuration,
        ``x``, ``y`` or batch source, ``config`` and simulator): weights, optimiser, early
        stopping, history, data stream and RNGs are restored and the loop goes on from the
        saved SVI step, so the result equals the uninterrupted run's on CPU with the same
        thread count.

    Returns
    -------
    FitResult

    Raises
    ------
    ConfigError
        If ``cvae`` is not a :class:`~ppl_cvae.models.cvae.CVAE` or ``config`` not a
        :class:`~ppl_cvae.config.TrainConfig`; if ``device`` is not available here (e.g.
        ``"cuda"`` without CUDA), neither data, a
        batch source nor a simulator with ``config.resimulate`` are given, both data and a
        batch source are given, checkpoints are asked of a batch source without a position,
        ``physics_weight > 0`` without a forward operator, or an SVI step's loss is not
        finite (training diverged).
    CheckpointError
        If ``resume_from`` belongs to another run (configuration, data or model differ) or
        its data stream does not replay.
    ShapeError
        If ``x``/``y`` do not match the model (``y`` given to an unconditional model among
        them), or no training pairs are left after the validation split.
    DataError
        If ``x`` or ``y`` hold NaN or inf (raised by :meth:`CVAE.check_finite`).

    Notes
    -----
    Each step maximises ``E_q[log p(x|z,y)] - beta * KL(q(z|x,y) || p(z|y))`` (+ the
    physics-consistency factor when ``physics_weight > 0``, + the GSNN term of Sohn et al.
    2015 when ``gsnn_weight > 0``) with ``beta`` rising linearly over
    ``kl_warmup_epochs`` (Bowman et al. 2016, Generating Sentences from a Continuous Space,
    arXiv:1511.06349). The optimiser is ClippedAdam (Kingma and Ba 2015) on all parameters at
    once. Pyro's argument validation is switched off inside the step loop for speed; inputs
    are validated once on entry. Pyro's param store loses only this CVAE's entries and those of
    CVAEs no longer alive (:meth:`~ppl_cvae.models.cvae.CVAE.release_param_store`); a user's
    own ``pyro.param`` sites stay.

    The run is a loop over named parts. Before it, the pairs ``x, y`` are split at random into
    training and validation sets (``val_fraction``), or without pairs a validation set is
    simulated once. Each epoch then (1) takes its minibatches from the batch source
    (:mod:`ppl_cvae.train.sources`): the training pairs shuffled, ``num_train`` fresh pairs
    when resimulating, the next minibatches of a simulation stream, or a shuffled pass over a
    file read lazily; (2) takes one SVI step per minibatch, failing
    on the first non-finite loss; (3) computes the validation negative ELBO per observation
    (``beta = 1``, no physics term); (4) appends a history row, shown on the progress bar, in
    the log and in the metrics CSV; (5) calls ``on_epoch_end``; (6) updates early stopping.

    Launched by ``torchrun`` with ``WORLD_SIZE > 1`` (or inside a process group the caller
    set up), the run is data-parallel (:mod:`ppl_cvae.train.distributed`): every rank builds
    the same split and shuffles, takes its shard of each minibatch, and DistributedDataParallel
    all-reduces the gradients, so the steps are those of one process with the same
    ``batch_size``; only rank 0 shows progress, writes ``metrics_path`` and calls
    ``on_epoch_end``. When resimulating, each rank simulates only its share of the epoch's
    pairs with seeds of its own and the shares are all-gathered
    (:class:`~ppl_cvae.train.sources.ShardedResimulatedBatches`), so such a run draws other
    pairs than one process does.
    Early stopping monitors the validation loss (the training loss without a validation
    set), only once ``beta`` has reached 1, keeps a copy of the best weights and stops after
    ``patience`` epochs without improvement. All randomness of the split, the simulator and
    the shuffles comes from one ``torch.Generator`` seeded with ``config.seed``; the global
    RNGs (seeded with it too) drive the SVI steps and the validation ELBO. With
    ``checkpoint`` or ``resume_from`` a :class:`~ppl_cvae.train.resume.TrainingSession`
    records the generator state at each epoch's start, saves after steps and epochs, and on
    resume replays the interrupted epoch's draws and skips its finished steps.
    """
    check_type(cvae, CVAE, "fit()'s cvae", "build it with build_cvae(model_config, x, y)")
    check_type(config, TrainConfig, "fit()'s config", _DICT_HINT.format("TrainConfig"))
    if x is None and batches is None and not (simulator is not None and config.resimulate):
        raise ConfigError(
            "fit needs training pairs, a batch source, or a simulator with resimulate=True"
        )
    _refuse_y_of_unconditional(cvae.config, y, "fit")
    # pairs of another real dtype (NumPy's float64, integers) train in the model's own
    x = _in_model_dtype(cvae, _as_tensor(x, "x"))
    if isinstance(x, torch.Tensor):  # codes a facies decoder cannot model fail in Pyro's indexing
        _refuse_non_codes(x, cvae.config)
    y = _in_model_dtype(cvae, _as_tensor(y, "y"))
    if validation is not None:
        validation = (
            cast(torch.Tensor, _in_model_dtype(cvae, _as_tensor(validation[0], "validation x"))),
            _in_model_dtype(cvae, _as_tensor(validation[1], "validation y")),
        )
    if config.physics_weight > 0 and cvae.forward_operator is None:
        raise ConfigError("physics_weight > 0 needs a problem with a forward operator")
    if config.gsnn_weight > 0 and cvae.config.latent_dim == 0:
        raise ConfigError("gsnn_weight > 0 needs a latent (latent_dim >= 1)")
    device = resolve_device(device)
    ddp = setup_distributed(device)
    if ddp is not None:
        device = ddp.device
        progress = progress and ddp.is_main
        metrics_path = metrics_path if ddp.is_main else None
        on_epoch_end = on_epoch_end if ddp.is_main else None
    pyro.set_rng_seed(rank_seed(config.seed, 0 if ddp is None else ddp.rank))  # own noise
    cvae.release_param_store()  # a user's own param-store entries stay
    generator = torch.Generator().manual_seed(config.seed)
    source, val = _training_source(
        cvae, x, y, config, simulator, batches, validation, generator, ddp
    )
    if (val is None or len(val) == 0) and config.val_fraction > 0:
        log.warning(
            "no validation pairs: val_fraction %g of %d pairs rounds to 0, so early stopping "
            "and the best epoch follow the training loss, which rewards memorising the pairs; "
            "give more pairs or a larger val_fraction",
            config.val_fraction,
            source.pairs_per_epoch,
        )
    try:  # stream workers and open files are released however the fit ends
        cvae.to(device)
        val = None if val is None else val.to(device)
        svi, optim = _make_svi(cvae, config, source.pairs_per_epoch)
        presharded = bool(getattr(source, "sharded", False))
        if presharded and ddp is None:
            raise ConfigError(
                "the batch source streams one rank's share of each minibatch, but no process "
                "group is set up (launch with torchrun)"
            )
        step = (
            svi.step
            if ddp is None
            else ddp.make_step(cvae, optim, config.num_particles, presharded=presharded)
        )

        result = FitResult(config=config)
        stopper = _EarlyStopping(config.patience)
        if batches is not None and not hasattr(batches, "resume"):
            if checkpoint is not None or resume_from is not None:
                raise ConfigError(
                    f"training-state checkpoints need a batch source with a position of its "
                    f"own (state_dict and resume); {type(batches).__name__} has none"
                )
        if ddp is not None and not ddp.is_main:
            checkpoint = None  # rank 0 writes the state; every rank reads it to resume
        session = TrainingSession.start(
            checkpoint,
            resume_from,
            cvae=cvae,
            optim=optim,
            stopper=stopper,
            result=result,
            generator=generator,
            config=config,
            digest=data_digest(x, y) if checkpoint or resume_from else "",
            num_train=source.pairs_per_epoch,
            source=source,
        )
        first_epoch, first_step, loss_sum, skipped_pairs = (
            (1, 0, 0.0, None) if session is None else session.resume_point()
        )
        if ddp is not None and ddp.rank > 0 and resume_from is not None:
            # the state holds rank 0's RNGs: draw this rank's latent noise from its own stream again
            pyro.set_rng_seed(rank_seed(config.seed, ddp.rank, 1_000_003 * first_epoch, first_step))
        bar = tqdm(
            range(first_epoch, config.num_epochs + 1),
            initial=first_epoch - 1,
            total=config.num_epochs,
            desc="fit",
            unit="epoch",
            disable=not progress,
        )
        cvae.train()
        for epoch in bar:
            start = time.perf_counter()
            beta = _kl_weight(config, epoch - 1)
            if session is not None:
                session.epoch_started(epoch)
            epoch_batches = _drawn(source.epoch_batches(epoch))
            if session is not None:
                session.data_drawn()
            train_loss = _train_epoch(
                step,
                epoch_batches,
                config,
                beta,
                epoch,
                result.step_losses,
                device,
                first_step=first_step,
                loss_sum=loss_sum,
                skipped_pairs=skipped_pairs,
                after_step=None if session is None else session.after_step,
            )
            first_step, loss_sum, skipped_pairs = 0, 0.0, None
            val_loss = _validation_loss(cvae, val, ddp)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "kl_weight": beta,
                "learning_rate": optim.current_lr(),
                "seconds": time.perf_counter() - start
                if session is None
                else session.epoch_seconds(),
            }
            _record_epoch(result, row, bar, metrics_path)
            if on_epoch_end is not None:
                _call_hook(on_epoch_end, epoch, cvae)
            # early stopping on the validation loss, only once the KL weight has reached 1
            monitored = val_loss if math.isfinite(val_loss) else train_loss
            stop = stopper.update(epoch, monitored, beta, cvae)
            if session is not None:
                session.epoch_finished(epoch, final=stop or epoch == config.num_epochs)
            if stop:
                result.stopped_early = True
                log.info("early stopping at epoch %d (best %d)", epoch, stopper.best_epoch)
                break
        bar.close()
        result.best_epoch = stopper.restore(cvae, last_epoch=len(result.history))
        cvae.eval()
        if ddp is not None:  # the process group stays for the caller's next fit (or shutdown)
            result.distributed = {**ddp.record(), "rank": ddp.rank}
        return result
    finally:
        source.close()


def place_forward_operator(
    cvae: CVAE, problem: Problem | None, device: str | torch.device | None
) -> None:
    """Point ``cvae.forward_operator`` at ``problem``'s forward operator on ``device``.

    On the CPU this is ``problem.forward`` itself; elsewhere the forward operator of
    :func:`~ppl_cvae.device.problem_on`'s copy, so the physics-consistency term runs where the
    networks do while simulation keeps the CPU problem. Nothing changes without a problem or
    when the CVAE has no forward operator.

    Raises
    ------
    ConfigError
        If ``device`` is not available here, or the problem cannot be copied onto it.
    """
    device = rank_device(resolve_device(device))  # under torchrun: this rank's GPU
    if problem is None or cvae.forward_operator is None or device.type == "cpu":
        return
    cvae.forward_operator = problem_on(as_problem(problem), device).forward


def fit_problem(
    problem: Problem,
    *,
    model: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> tuple[CVAE, FitResult, float]:
    """Fit a CVAE on a problem's simulations with its recommended settings.

    The configs come from :func:`~ppl_cvae.train.resolve_settings`: the problem's
    ``recommended_settings()`` updated by ``model`` and ``train``. ``num_train`` pairs
    simulated with seed ``train_config.seed + 1`` fit the standardisers (and are the training
    set unless ``resimulate``), and ``problem.simulate`` draws fresh pairs every epoch when
    ``resimulate`` is set. This is what ``ppl-cvae fit --problem NAME`` does without further
    flags.

    Parameters
    ----------
    problem : Problem
        Simulator, forward operator and shapes.
    model, train : dict, optional
        Overrides of ``ModelConfig`` / ``TrainConfig`` fields (:class:`ModelOverrides`,
        :class:`TrainOverrides`).
    progress : bool, default False
        Show the tqdm progress bar.
    device : str or torch.device, optional
        Where to train (see :func:`fit`); the CVAE's forward operator is then
        :func:`~ppl_cvae.device.problem_on`'s copy of ``problem`` on that device.

    Returns
    -------
    cvae : CVAE
        The fitted model (best validation epoch, eval mode), on ``device``.
    result : FitResult
    seconds : float
        Wall-clock time of :func:`fit`.

    Raises
    ------
    ConfigError
        If an override names an unknown field or a value is out of range, ``device`` is not
        a device of this machine (:func:`~ppl_cvae.device.resolve_device`), or the problem's
        ``simulate`` raises.
    DataError
        If the problem's ``simulate`` returns anything but pairs of finite real tensors
        (:class:`~ppl_cvae.problems.checked_simulator.CheckedSimulator`; real dtypes are cast
        to float32).
    ShapeError
        If they are not ``num`` pairs of its event shapes.
    """
    problem = as_problem(problem)
    if device is not None:
        device = resolve_device(device)
    overrides = Overrides(
        model=cast(ModelOverrides, model or {}), train=cast(TrainOverrides, train or {})
    )
    config, train_config = resolve_settings(problem, overrides)
    # a user's simulate is untrusted: NumPy, float64, wrong shapes, NaN are named, not met
    # deep inside the SVI step (what the CLI's fit does)
    simulate = CheckedSimulator(
        problem.simulate, problem.x_shape, problem.y_shape, f"problem {problem.name!r}"
    )
    # a forward written for one layout of models only is refused before the fit
    check_batch_axes(problem, torch.Generator().manual_seed(train_config.seed), for_fit=True)
    check_support(problem, torch.Generator().manual_seed(train_config.seed))
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    x, y = simulate(train_config.num_train, gen)
    assert y is not None  # a conditional problem's simulator returns pairs
    # resimulating, the validation pairs are simulated apart; else fit holds some of x out
    rows = None if train_config.resimulate else validation_split(len(x), train_config)[0]
    cvae = build_cvae(config, x, y, problem=problem, seed=train_config.seed, fit_rows=rows)
    place_forward_operator(cvae, problem, device)
    start = time.perf_counter()
    result = fit(
        cvae,
        x,
        y,
        train_config,
        simulator=cast(Simulator, simulate),
        progress=progress,
        device=device,
    )
    return cvae, result, time.perf_counter() - start
