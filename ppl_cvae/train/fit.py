"""Minibatch SVI with ``Trace_ELBO``: KL warm-up, validation ELBO, early stopping, metrics CSV."""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from ppl_cvae._atomic import atomic_path
from ppl_cvae.config import ModelConfig, ModelOverrides, Overrides, TrainConfig, TrainOverrides
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem, as_problem
from ppl_cvae.train.optim import FusedClippedAdam
from ppl_cvae.train.resume import CheckpointPolicy, TrainingSession, TrainState, data_digest
from ppl_cvae.train.settings import resolve_settings

__all__ = ["FitResult", "build_cvae", "fit", "fit_problem", "negative_elbo", "Simulator"]

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
    """

    history: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    config: TrainConfig | None = None


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

    Raises
    ------
    ShapeError
        If ``x`` or ``y`` do not match the configuration.
    """
    if tuple(x.shape[1:]) != config.x_shape:
        raise ShapeError(f"x has shape {tuple(x.shape)}; config expects (N, *{config.x_shape})")
    if problem is not None:
        problem = as_problem(problem)
        if basis is None and config.basis_dim is not None:
            basis = problem.basis()
        if coefficient_transform is None and config.constrained_coefficients:
            coefficient_transform = problem.coefficient_transform()
        forward_operator = forward_operator or problem.forward
        misfit_std = problem.misfit_std if misfit_std is None else misfit_std
    xs = Standardiser(config.x_shape).fit(x)
    ys = None
    if config.conditional:
        if y is None or tuple(y.shape[1:]) != config.y_shape:
            got = None if y is None else tuple(y.shape)
            raise ShapeError(f"y has shape {got}; config expects (N, *{config.y_shape})")
        ys = Standardiser(config.y_shape).fit(y)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        cvae = CVAE(
            config,
            xs,
            ys,
            basis=basis,
            coefficient_transform=coefficient_transform,
            forward_operator=forward_operator,
            misfit_std=1.0 if misfit_std is None else misfit_std,
        )
    cvae.fit_basis_coefficients(x)
    cvae.fit_whitener(x, y)
    return cvae


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
    n_val = int(round(config.val_fraction * source.shape[0]))
    perm = torch.randperm(source.shape[0], generator=generator)
    pairs = _Pairs(source, y_cond)
    train, val = pairs[perm[n_val:]], pairs[perm[:n_val]]
    if resample is not None:
        return resample, val
    if len(train) < 1:
        raise ShapeError("no training pairs left after the validation split")
    return train, val


def _epoch_pairs(
    train: _Pairs | Simulator, num_train: int, generator: torch.Generator, conditional: bool
) -> tuple[_Pairs, torch.Tensor]:
    """Return this epoch's training pairs (fresh draws when resimulating) and a random order."""
    if isinstance(train, _Pairs):
        pairs = train
    else:
        pairs = _simulate(train, num_train, generator, conditional)
    return pairs, torch.randperm(num_train, generator=generator)


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
    svi: SVI,
    pairs: _Pairs,
    order: torch.Tensor,
    config: TrainConfig,
    beta: float,
    epoch: int,
    step_losses: list[float],
    *,
    first_step: int = 0,
    loss_sum: float = 0.0,
    after_step: Callable[[int, float], None] | None = None,
) -> float:
    """Take one SVI step per minibatch of ``pairs`` in ``order``; return the loss per observation.

    Appends each step's loss per observation to ``step_losses``. A resumed epoch starts at
    minibatch ``first_step`` with the earlier steps' unnormalised loss ``loss_sum``;
    ``after_step(steps_taken_this_epoch, loss_sum)`` runs after each step (checkpoints).

    Raises
    ------
    ConfigError
        If a step's loss is not finite (training diverged).
    """
    total = loss_sum
    with pyro.validation_enabled(False), warnings.catch_warnings():
        # a NaN loss is reported below as one error, not as Pyro's warning per step
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        for first in range(first_step * config.batch_size, len(order), config.batch_size):
            batch = pairs[order[first : first + config.batch_size]]
            loss = svi.step(
                batch.y,
                batch.x,
                kl_weight=beta,
                physics_weight=config.physics_weight,
                gsnn_weight=config.gsnn_weight,
            )
            if not math.isfinite(loss):
                raise ConfigError(
                    f"training diverged at epoch {epoch}, SVI step {len(step_losses) + 1} "
                    f"(loss {loss}); lower the learning rate or check the data scale"
                )
            step_losses.append(loss / len(batch))
            total += loss
            if after_step is not None:
                after_step(first // config.batch_size + 1, total)
    return total / len(order)


def _validation_loss(cvae: CVAE, val: _Pairs | None) -> float:
    """Return the negative ELBO per observation of ``val`` (``beta = 1``), NaN without pairs."""
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
    metrics_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, CVAE], None] | None = None,
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
    metrics_path : path, optional
        CSV rewritten atomically after every epoch (columns of ``FitResult.history``).
    progress : bool, default True
        Show a tqdm progress bar over epochs with the current losses.
    on_epoch_end : callable ``(epoch, cvae) -> None``, optional
        Called after each epoch's validation, with the model in eval mode and gradients off
        (e.g. to save reconstruction grids); epochs count from 1.
    checkpoint : CheckpointPolicy, optional
        Write a training-state file periodically (:mod:`ppl_cvae.train.resume`).
    resume_from : TrainState, optional
        Continue the interrupted run this state was saved from (same ``cvae`` configuration,
        ``x``, ``y``, ``config`` and simulator): weights, optimiser, early stopping, history,
        data stream and RNGs are restored and the loop goes on from the saved SVI step, so the
        result equals the uninterrupted run's on CPU with the same thread count.

    Returns
    -------
    FitResult

    Raises
    ------
    ConfigError
        If neither data nor a simulator with ``config.resimulate`` are given,
        ``physics_weight > 0`` without a forward operator, or an SVI step's loss is not
        finite (training diverged).
    CheckpointError
        If ``resume_from`` belongs to another run (configuration, data or model differ) or
        its data stream does not replay.
    ShapeError
        If ``x``/``y`` do not match the model, or no training pairs are left after the
        validation split.
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
    are validated once on entry.

    The run is a loop over named parts. Before it, the pairs ``x, y`` are split at random into
    training and validation sets (``val_fraction``), or without pairs a validation set is
    simulated once. Each epoch then (1) takes the training pairs, or draws ``num_train`` fresh
    ones when resimulating, and shuffles them; (2) takes one SVI step per minibatch, failing
    on the first non-finite loss; (3) computes the validation negative ELBO per observation
    (``beta = 1``, no physics term); (4) appends a history row, shown on the progress bar, in
    the log and in the metrics CSV; (5) calls ``on_epoch_end``; (6) updates early stopping.
    Early stopping monitors the validation loss (the training loss without a validation
    set), only once ``beta`` has reached 1, keeps a copy of the best weights and stops after
    ``patience`` epochs without improvement. All randomness of the split, the simulator and
    the shuffles comes from one ``torch.Generator`` seeded with ``config.seed``; the global
    RNGs (seeded with it too) drive the SVI steps and the validation ELBO. With
    ``checkpoint`` or ``resume_from`` a :class:`~ppl_cvae.train.resume.TrainingSession`
    records the generator state at each epoch's start, saves after steps and epochs, and on
    resume replays the interrupted epoch's draws and skips its finished steps.
    """
    resample = simulator if config.resimulate else None
    source = x if x is not None else resample  # pairs to split, or the simulator to draw from
    if source is None:
        raise ConfigError("fit needs training pairs, or a simulator with resimulate=True")
    if config.physics_weight > 0 and cvae.forward_operator is None:
        raise ConfigError("physics_weight > 0 needs a problem with a forward operator")
    if config.gsnn_weight > 0 and cvae.config.latent_dim == 0:
        raise ConfigError("gsnn_weight > 0 needs a latent (latent_dim >= 1)")
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(config.seed)
    train, val = _split_data(cvae, source, y, config, resample, generator)
    num_train = len(train) if isinstance(train, _Pairs) else config.num_train
    svi, optim = _make_svi(cvae, config, num_train)

    result = FitResult(config=config)
    stopper = _EarlyStopping(config.patience)
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
        num_train=num_train,
    )
    first_epoch, first_step, loss_sum = (1, 0, 0.0) if session is None else session.resume_point()
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
        pairs, order = _epoch_pairs(train, num_train, generator, cvae.config.conditional)
        if session is not None:
            session.data_drawn()
        train_loss = _train_epoch(
            svi,
            pairs,
            order,
            config,
            beta,
            epoch,
            result.step_losses,
            first_step=first_step,
            loss_sum=loss_sum,
            after_step=None if session is None else session.after_step,
        )
        first_step, loss_sum = 0, 0.0
        val_loss = _validation_loss(cvae, val)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "kl_weight": beta,
            "learning_rate": optim.current_lr(),
            "seconds": time.perf_counter() - start if session is None else session.epoch_seconds(),
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
    return result


def fit_problem(
    problem: Problem,
    *,
    model: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    progress: bool = False,
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

    Returns
    -------
    cvae : CVAE
        The fitted model (best validation epoch, eval mode).
    result : FitResult
    seconds : float
        Wall-clock time of :func:`fit`.

    Raises
    ------
    ConfigError
        If an override names an unknown field or a value is out of range.
    """
    problem = as_problem(problem)
    overrides = Overrides(
        model=cast(ModelOverrides, model or {}), train=cast(TrainOverrides, train or {})
    )
    config, train_config = resolve_settings(problem, overrides)
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    x, y = problem.simulate(train_config.num_train, gen)
    cvae = build_cvae(config, x, y, problem=problem, seed=train_config.seed)
    start = time.perf_counter()
    result = fit(cvae, x, y, train_config, simulator=problem.simulate, progress=progress)
    return cvae, result, time.perf_counter() - start
