"""Posterior sampling, ArviZ conversion and diagnostics for trained ppl_cvae models."""

from inference.exact import linear_gaussian_posterior
from inference.posterior import PosteriorDraws, draw_posterior
from inference.sample import sample_posterior

__all__ = ["PosteriorDraws", "draw_posterior", "linear_gaussian_posterior", "sample_posterior"]
