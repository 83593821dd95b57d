"""ppl_cvae: conditional VAEs as Pyro model/guide pairs for amortized Bayesian inversion.

The names below load on first use (PEP 562): ``import ppl_cvae`` reads the version and the
error classes only, so a command started by the ``ppl-cvae`` script imports torch and Pyro
inside :func:`ppl_cvae.cli.main`, where a Ctrl-C is answered in one line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ppl_cvae._version import __version__
from ppl_cvae.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NoDensityError,
    NoLikelihoodError,
    NoPriorDensityError,
    OutputError,
    PplCvaeError,
    ResourceError,
    ShapeError,
    TrainingDivergedError,
    UnknownProblemError,
    WorkerDiedError,
)

if TYPE_CHECKING:
    from ppl_cvae.config import ModelConfig, Overrides, TrainConfig
    from ppl_cvae.models.cvae import CVAE
    from ppl_cvae.problems import LinearGaussian, Problem, TwoBirds, make_problem
    from ppl_cvae.train import (  # type: ignore[no-redef]  # fit: module and function
        DataSource,
        FitResult,
        build_cvae,
        fit,
        fit_problem,
        load_checkpoint,
        resolve_settings,
        save_checkpoint,
    )

_LAZY = {
    "ModelConfig": "ppl_cvae.config",
    "Overrides": "ppl_cvae.config",
    "TrainConfig": "ppl_cvae.config",
    "CVAE": "ppl_cvae.models.cvae",
    "LinearGaussian": "ppl_cvae.problems",
    "Problem": "ppl_cvae.problems",
    "TwoBirds": "ppl_cvae.problems",
    "make_problem": "ppl_cvae.problems",
    **{
        name: "ppl_cvae.train"
        for name in (
            "DataSource",
            "FitResult",
            "build_cvae",
            "fit",
            "fit_problem",
            "load_checkpoint",
            "resolve_settings",
            "save_checkpoint",
        )
    },
}
"""Public names of the package and the module each is loaded from on first use."""


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ppl_cvae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """List the package's names, the lazily loaded ones among them."""
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "CVAE",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataSource",
    "FitResult",
    "OutputError",
    "LinearGaussian",
    "ModelConfig",
    "NoDensityError",
    "NoLikelihoodError",
    "NoPriorDensityError",
    "Overrides",
    "PplCvaeError",
    "Problem",
    "ResourceError",
    "ShapeError",
    "TrainConfig",
    "TrainingDivergedError",
    "TwoBirds",
    "UnknownProblemError",
    "WorkerDiedError",
    "__version__",
    "build_cvae",
    "fit",
    "fit_problem",
    "load_checkpoint",
    "make_problem",
    "resolve_settings",
    "save_checkpoint",
]
