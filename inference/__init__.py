"""Posterior sampling, ArviZ conversion and diagnostics for trained ppl_cvae models.

``sample_posterior`` and ``inference_data_from_draws`` are loaded on first use, so that
importing the compute layers (:mod:`inference.diagnostics`, :mod:`inference.evaluate`) does not
import ArviZ or matplotlib.
"""

from typing import TYPE_CHECKING, Any

from inference.exact import linear_gaussian_posterior
from inference.importance import ImportanceResult, importance_sample
from inference.posterior import CVAEPosterior, PosteriorDraws, draw_posterior

if TYPE_CHECKING:
    from inference.sample import inference_data_from_draws, sample_posterior

__all__ = [
    "CVAEPosterior",
    "ImportanceResult",
    "PosteriorDraws",
    "draw_posterior",
    "importance_sample",
    "inference_data_from_draws",
    "linear_gaussian_posterior",
    "sample_posterior",
]


def __getattr__(name: str) -> Any:
    """Load ``sample_posterior`` / ``inference_data_from_draws`` (and ArviZ) on first access."""
    if name in ("sample_posterior", "inference_data_from_draws"):
        from inference import sample

        return getattr(sample, name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
