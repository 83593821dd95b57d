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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from ppl_cvae._atomic import atomic_path
from ppl_cvae.config import ModelConfig, TrainConfig
from ppl_cvae.data.standardise import Standardiser
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem
from ppl_cvae.train.optim import FusedClippedAdam

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
        if basis is None and config.basis_dim is not None and hasattr(problem, "basis"):
            basis = problem.basis()
        if coefficient_transform is None and config.constrained_coefficients:
            # an optional method (like basis), outside the Problem protocol
            coefficient_transform = cast(Any, problem).coefficient_transform()
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
    if config.kl_warmup_epochs == 0:
        return 1.0
    frac = min(1.0, epoch / config.kl_warmup_epochs)
    return config.kl_start + (1.0 - config.kl_start) * frac


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


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

    Returns
    -------
    FitResult

    Raises
    ------
    ConfigError
        If neither data nor a simulator are given, or ``physics_weight > 0`` without a
        forward operator.
    ShapeError
        If ``x``/``y`` do not match the model.

    Notes
    -----
    Each step maximises ``E_q[log p(x|z,y)] - beta * KL(q(z|x,y) || p(z|y))`` (+ the
    physics-consistency factor when ``physics_weight > 0``) with ``beta`` rising linearly over
    ``kl_warmup_epochs`` (Bowman et al. 2016, Generating Sentences from a Continuous Space,
    arXiv:1511.06349). The optimiser is ClippedAdam (Kingma and Ba 2015) on all parameters at
    once. Pyro's argument validation is switched off inside the step loop for speed; inputs
    are validated once on entry.
    """
    if x is None and not (simulator is not None and config.resimulate):
        raise ConfigError("fit needs training pairs, or a simulator with resimulate=True")
    if config.physics_weight > 0 and cvae.forward_operator is None:
        raise ConfigError("physics_weight > 0 needs a problem with a forward operator")
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(config.seed)
    conditional = cvae.config.conditional

    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    if x is not None:
        y_cond = y if conditional else None
        cvae._check_inputs(y_cond, x)  # a conditional model has raised ShapeError if y is None
        cvae.check_finite(x=x, y=y)
        n_val = int(round(config.val_fraction * x.shape[0]))
        perm = torch.randperm(x.shape[0], generator=generator)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        x_train, x_val = x[train_idx], x[val_idx]
        y_train = y_cond[train_idx] if y_cond is not None else None
        y_val = y_cond[val_idx] if y_cond is not None else None
    else:
        if simulator is None:  # excluded on entry: without x, a simulator is required
            raise ConfigError("fit needs training pairs, or a simulator with resimulate=True")
        n_val = int(round(config.val_fraction * config.num_train))
        x_val, y_val = simulator(n_val, generator) if n_val else (None, None)
        x_train = y_train = None
        if not conditional:
            y_val = None

    if simulator is not None and config.resimulate:
        n_train = config.num_train
    elif x_train is not None:
        n_train = x_train.shape[0]
    else:  # excluded on entry: without x, a simulator with resimulate=True is required
        raise ConfigError("fit needs training pairs, or a simulator with resimulate=True")
    if n_train < 1:
        raise ShapeError("no training pairs left after the validation split")
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = steps_per_epoch * config.num_epochs
    lrd = config.lr_decay ** (1.0 / total_steps)
    optim = FusedClippedAdam(
        {"lr": config.learning_rate, "clip_norm": config.clip_norm, "lrd": lrd}
    )
    svi = SVI(cvae.model, cvae.guide, optim, Trace_ELBO(num_particles=config.num_particles))

    result = FitResult(config=config)
    best_loss, best_state, bad_epochs = math.inf, None, 0
    bar = tqdm(range(1, config.num_epochs + 1), desc="fit", unit="epoch", disable=not progress)
    cvae.train()
    for epoch in bar:
        start = time.perf_counter()
        beta = _kl_weight(config, epoch - 1)
        if simulator is not None and config.resimulate:
            x_train, y_train = simulator(config.num_train, generator)
            if not conditional:
                y_train = None
        if x_train is None:  # excluded on entry: drawn above when there is no x
            raise ConfigError("fit needs training pairs, or a simulator with resimulate=True")
        order = torch.randperm(n_train, generator=generator)
        epoch_total = 0.0
        with pyro.validation_enabled(False), warnings.catch_warnings():
            # a NaN loss is reported below as one error, not as Pyro's warning per step
            warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
            for first in range(0, n_train, config.batch_size):
                idx = order[first : first + config.batch_size]
                yb = y_train[idx] if y_train is not None else None
                loss = svi.step(
                    yb, x_train[idx], kl_weight=beta, physics_weight=config.physics_weight
                )
                if not math.isfinite(loss):
                    raise ConfigError(
                        f"training diverged at epoch {epoch}, SVI step "
                        f"{len(result.step_losses) + 1} (loss {loss}); lower the learning rate "
                        "or check the data scale"
                    )
                per_obs = loss / len(idx)
                result.step_losses.append(per_obs)
                epoch_total += loss
        train_loss = epoch_total / n_train
        if x_val is not None and x_val.shape[0] > 0:
            cvae.eval()
            with pyro.validation_enabled(False):
                val_loss = negative_elbo(cvae, y_val, x_val)
            cvae.train()
        else:
            val_loss = math.nan
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "kl_weight": beta,
            "learning_rate": optim.current_lr(),
            "seconds": time.perf_counter() - start,
        }
        result.history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        log.info(
            "epoch %d train_loss %.4f val_loss %.4f beta %.3f", epoch, train_loss, val_loss, beta
        )
        if metrics_path is not None:
            _write_metrics(Path(metrics_path), result.history)
        if on_epoch_end is not None:
            cvae.eval()
            with torch.no_grad():
                on_epoch_end(epoch, cvae)
            cvae.train()
        # early stopping on the validation loss, only once the KL weight has reached 1
        monitored = val_loss if math.isfinite(val_loss) else train_loss
        if beta >= 1.0 and monitored < best_loss:
            best_loss, best_state, bad_epochs = monitored, copy.deepcopy(cvae.state_dict()), 0
            result.best_epoch = epoch
        elif beta >= 1.0:
            bad_epochs += 1
            if config.patience and bad_epochs >= config.patience:
                result.stopped_early = True
                log.info("early stopping at epoch %d (best %d)", epoch, result.best_epoch)
                break
    bar.close()
    if best_state is not None:
        cvae.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)
    cvae.eval()
    return result


def fit_problem(
    problem: Problem,
    *,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[CVAE, FitResult, float]:
    """Fit a CVAE on a problem's simulations with its recommended settings.

    The configs are ``problem.recommended_settings()`` (when it has one) updated by ``model``
    and ``train``; ``num_train`` pairs simulated with seed ``train_config.seed + 1`` fit the
    standardisers (and are the training set unless ``resimulate``), and ``problem.simulate``
    draws fresh pairs every epoch when ``resimulate`` is set. This is what ``ppl-cvae fit
    --problem NAME`` does without further flags.

    Parameters
    ----------
    problem : Problem
        Simulator, forward operator and shapes.
    model, train : dict, optional
        Overrides of ``ModelConfig`` / ``TrainConfig`` fields.
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
    recommend = getattr(problem, "recommended_settings", None)
    settings = recommend() if recommend is not None else {}
    model_kwargs = {**settings.get("model", {}), **(model or {})}
    train_kwargs = {**settings.get("train", {}), **(train or {})}
    try:
        train_config = TrainConfig(**train_kwargs)
        config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, **model_kwargs)
    except TypeError as err:
        raise ConfigError(f"unknown setting in the overrides: {err}") from err
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    x, y = problem.simulate(train_config.num_train, gen)
    cvae = build_cvae(config, x, y, problem=problem, seed=train_config.seed)
    start = time.perf_counter()
    result = fit(cvae, x, y, train_config, simulator=problem.simulate, progress=progress)
    return cvae, result, time.perf_counter() - start
