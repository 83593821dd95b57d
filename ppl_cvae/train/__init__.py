"""Training: SVI fit loop, optimiser, checkpoints and resumable training states."""

from ppl_cvae.train.checkpoint import load_checkpoint, save_checkpoint
from ppl_cvae.train.fit import (
    FitResult,
    build_cvae,
    fit,
    fit_problem,
    negative_elbo,
    place_forward_operator,
    validation_split,
)
from ppl_cvae.train.optim import FusedClippedAdam
from ppl_cvae.train.resume import CheckpointPolicy, TrainState, load_train_state
from ppl_cvae.train.settings import DataSource, resolve_settings

__all__ = [
    "CheckpointPolicy",
    "DataSource",
    "FitResult",
    "FusedClippedAdam",
    "TrainState",
    "build_cvae",
    "fit",
    "fit_problem",
    "load_checkpoint",
    "load_train_state",
    "negative_elbo",
    "place_forward_operator",
    "resolve_settings",
    "save_checkpoint",
    "validation_split",
]
