"""Pyro programs: the (conditional) VAE model/guide pair."""

from ppl_cvae.models.cvae import CVAE

__all__ = ["CVAE"]
