"""Data sources, file formats and standardisation."""

from ppl_cvae.data.io import load_observations, load_pairs, save_pairs
from ppl_cvae.data.standardise import LinearWhitener, Standardiser

__all__ = ["LinearWhitener", "Standardiser", "load_pairs", "save_pairs", "load_observations"]
