"""Training: SVI fit loop, optimiser and checkpoints."""

from ppl_cvae.train.checkpoint import load_checkpoint, save_checkpoint
from ppl_cvae.train.fit import (
    FitResult,
    build_cvae,
    fit,
    fit_problem,
    negative_elbo,
    place_forward_operator,
)
from ppl_cvae.train.optim import FusedClippedAdam
from ppl_cvae.train.settings import DataSource, resolve_settings

__all__ = [
    "DataSource",
    "FitResult",
    "FusedClippedAdam",
    "build_cvae",
    "fit",
    "fit_problem",
    "load_checkpoint",
    "negative_elbo",
    "place_forward_operator",
    "resolve_settings",
    "save_checkpoint",
]
