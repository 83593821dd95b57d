"""Priors of the built-in problems, apart from their forward operators.

- :class:`GaussianRandomField`: stationary Gaussian random field on a grid of cell centres,
  with its mean, covariance, Cholesky factor and log density (what an exact linear-Gaussian
  posterior needs); the prior of ``crosshole`` (``prior="grf"``), ``gravity`` and
  ``mt1d`` (``prior="clipped"``).
- :class:`BoundedGaussianField`: a Gaussian random field mapped through a scaled logistic
  sigmoid into an open interval (a logit-normal field, with a density); the
  ``prior="logit_normal"`` prior of ``mt1d``.
- :class:`ChannelField`: binary sinuous channels in a background, with the channel count,
  orientations (degrees), widths and sinuosity amplitudes (m) as arguments; the
  ``prior="channels"`` prior of ``crosshole``.

Each has ``sample(num, generator)`` returning ``(num, *shape)`` float32 draws.
"""

from ppl_cvae.problems.priors.bounded_field import BoundedGaussianField
from ppl_cvae.problems.priors.channels import ChannelField
from ppl_cvae.problems.priors.gaussian_field import (
    CORRELATION_KERNELS,
    GaussianRandomField,
    Kernel,
)

__all__ = [
    "BoundedGaussianField",
    "CORRELATION_KERNELS",
    "ChannelField",
    "GaussianRandomField",
    "Kernel",
]
