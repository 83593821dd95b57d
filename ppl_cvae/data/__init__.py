"""Data sources, file formats and standardisation."""

from ppl_cvae.data.box import BoxTransform, support_box
from ppl_cvae.data.io import load_observations, load_pairs, save_pairs
from ppl_cvae.data.lazy import RunningMoments, open_lazy_pairs
from ppl_cvae.data.standardise import LinearWhitener, Standardiser
from ppl_cvae.data.streaming import SimulationStream

__all__ = [
    "BoxTransform",
    "LinearWhitener",
    "RunningMoments",
    "SimulationStream",
    "Standardiser",
    "load_pairs",
    "save_pairs",
    "load_observations",
    "open_lazy_pairs",
    "support_box",
]
