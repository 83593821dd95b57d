"""ppl_cvae: conditional VAEs as Pyro model/guide pairs for amortized Bayesian inversion."""

from ppl_cvae._version import __version__
from ppl_cvae.config import ModelConfig, Overrides, TrainConfig
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
    UnknownProblemError,
)
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems import LinearGaussian, Problem, TwoBirds, make_problem
from ppl_cvae.train import (
    DataSource,
    FitResult,
    build_cvae,
    fit,
    fit_problem,
    load_checkpoint,
    resolve_settings,
    save_checkpoint,
)

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
    "TwoBirds",
    "UnknownProblemError",
    "__version__",
    "build_cvae",
    "fit",
    "fit_problem",
    "load_checkpoint",
    "make_problem",
    "resolve_settings",
    "save_checkpoint",
]
