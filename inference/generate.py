"""Draws of ``x`` from an unconditional VAE: ``p(x) = integral p(x | z) N(z; 0, I) dz``.

A VAE fitted without ``y`` (``fit --unconditional``, ``--condition none`` for images) has no
posterior to draw: its generative model is the distribution of ``x`` itself. :func:`generate`
runs the model (``z ~ N(0, I)``, then the decoder) through ``pyro.infer.Predictive`` and
:func:`generated_inference_data` stores the draws in the ``prior`` group of an
``arviz.InferenceData`` (ArviZ's group for draws of the model without data), with ``z``.
``ppl-cvae sample RUN --num-samples N --out FILE.nc`` without ``--observation`` does both.

References
----------
Kingma and Welling (2014), Auto-Encoding Variational Bayes, arXiv:1312.6114.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import arviz as az
import numpy as np
import pyro
import torch
from pyro.infer import Predictive

from ppl_cvae._memory import check_memory
from ppl_cvae.checks import as_count, as_seed, seeded_rng, shape_text
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE

__all__ = ["GENERATE_CHUNK", "generate", "generated_inference_data"]

GENERATE_CHUNK = 4096
"""Draws per pass through the decoder (the working memory of one pass is bounded by it)."""


@torch.no_grad()
def generate(
    vae: CVAE,
    num_samples: int,
    *,
    decoder_noise: bool | None = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """Draw ``num_samples`` models ``x`` from an unconditional VAE's generative model.

    Parameters
    ----------
    vae : CVAE
        A model without ``y`` (``config.y_shape`` None).
    num_samples : int
        Number of draws ``N`` (>= 1).
    decoder_noise : bool, optional
        True: ``x ~ p(x | z)`` with the decoder's noise (codes for a facies or Bernoulli
        decoder); False: the decoder mean ``E[x | z]`` (pixel probabilities for Bernoulli).
        Default: :attr:`~ppl_cvae.models.cvae.CVAE.samples_decoder_noise`, as for posterior
        draws.
    seed : int, optional
        Seed of torch's RNG for these draws; the same seed gives the same draws, and the
        global RNG is left as it was (:func:`~ppl_cvae.checks.seeded_rng`).

    Returns
    -------
    dict of str to Tensor
        ``"x"`` ``(N, *x_shape)`` (the draws, with or without the noise as asked), ``"z"``
        ``(N, latent_dim)`` and ``"x_mean"`` (the decoder means, ``(N, *x_shape)``; class
        probabilities ``(N, *x_shape, K)`` for a categorical decoder), on the CPU, in the
        units of the training ``x``.

    Raises
    ------
    ConfigError
        If ``vae`` is conditional (draw its posterior given observations instead:
        :func:`inference.posterior.draw_posterior`), or ``num_samples`` or ``seed`` is not
        valid.
    ResourceError
        If the draws (and one pass of :data:`GENERATE_CHUNK`) cannot fit in memory.

    Examples
    --------
    >>> from ppl_cvae.config import ModelConfig
    >>> vae = CVAE(ModelConfig(x_shape=(3,), y_shape=None, latent_dim=2, hidden_dims=(8,),
    ...                        prior="standard_normal"))
    >>> {k: tuple(v.shape) for k, v in generate(vae, 5, seed=0).items()}
    {'x': (5, 3), 'z': (5, 2), 'x_mean': (5, 3)}
    """
    if vae.config.y_shape is not None:
        raise ConfigError(
            "generate draws from an unconditional VAE; this model is conditioned on y: draw "
            "its posterior for observations (inference.draw_posterior, ppl-cvae sample "
            "--observation)"
        )
    num_samples = as_count(num_samples, "num_samples")
    seed = as_seed(seed)
    if decoder_noise is None:
        decoder_noise = vae.samples_decoder_noise
    chunk = min(num_samples, GENERATE_CHUNK)
    classes = vae.config.num_facies if vae.config.likelihood == "categorical" else 1
    values = int(np.prod(vae.config.x_shape)) * classes  # x_mean holds K per categorical cell
    kept = 4 * (2 * values + vae.config.latent_dim)  # x, x_mean and z of every draw, float32
    check_memory(
        kept * num_samples + 4 * 4 * values * chunk,
        f"{num_samples} generated draws of {values} values each",
        hint="ask for fewer draws",
    )
    with seeded_rng(seed):  # the caller's global RNG is left as it was
        was_training = vae.training
        vae.eval()
        parts: dict[str, list[torch.Tensor]] = {"x": [], "z": [], "x_mean": []}
        try:
            done = 0
            while done < num_samples:
                num = min(chunk, num_samples - done)
                runner = Predictive(
                    vae.model, num_samples=num, parallel=True, return_sites=("z", "x", "x_mean")
                )
                with pyro.validation_enabled(False):
                    out = runner()  # the model's batch of one: (num, 1, ...)
                for name in parts:
                    parts[name].append(out[name][:, 0].to(device="cpu"))
                done += num
        finally:
            vae.train(was_training)
        draws = {name: torch.cat(value) for name, value in parts.items()}
        if not decoder_noise:
            mean = draws["x_mean"]
            if vae.config.likelihood == "categorical":  # the mean code, as the model's x_mean
                mean = mean @ torch.arange(mean.shape[-1], dtype=mean.dtype)
            draws["x"] = mean
        return draws


def generated_inference_data(
    vae: CVAE,
    draws: Mapping[str, torch.Tensor],
    *,
    names: Any = None,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Store :func:`generate`'s draws as ``InferenceData`` with one group, ``prior``.

    Parameters
    ----------
    vae : CVAE
        The model that drew them (its latent size names ``z``'s dim).
    draws : mapping
        ``"x"`` ``(N, *x_shape)`` and ``"z"`` ``(N, latent_dim)``, as :func:`generate`
        returns.
    names : Problem or DataLayout, optional
        Gives ``x_dims``, ``coords`` and ``units`` (``units["x"]``); default: the run's
        :attr:`~ppl_cvae.models.cvae.CVAE.data_layout`, else ArviZ's generic dim names.
    attrs : mapping, optional
        Attributes of the ``prior`` group (strings and numbers).

    Returns
    -------
    arviz.InferenceData
        ``prior.x`` with dims ``(chain, draw, *x_dims)`` (one chain of ``N`` draws) and
        ``prior.z`` with dims ``(chain, draw, latent)``; ``x`` carries ``units`` where known.

    Raises
    ------
    ShapeError
        If the draws' shapes are not ``(N, *x_shape)`` and ``(N, latent_dim)``.
    """
    x, z = draws["x"], draws["z"]
    latent = vae.config.latent_dim
    if tuple(x.shape[1:]) != vae.config.x_shape or tuple(z.shape) != (x.shape[0], latent):
        raise ShapeError(
            f"generated draws must have shapes {shape_text('N', vae.config.x_shape)} and "
            f"(N, {latent}), got x {tuple(x.shape)} and z {tuple(z.shape)}"
        )
    names = names if names is not None else vae.data_layout
    x_dims = list(getattr(names, "x_dims", None) or []) or [
        f"x_dim_{i}" for i in range(len(vae.config.x_shape))
    ]
    coords = {
        dim: list(values)
        for dim, values in (getattr(names, "coords", None) or {}).items()
        if dim in x_dims
    }
    prior = {"x": x.detach().cpu().numpy()[None]}
    dims = {"x": x_dims}
    if z.shape[-1] > 0:
        prior["z"] = z.detach().cpu().numpy()[None]
        dims["z"] = ["latent"]
    idata = az.from_dict(prior=prior, dims=dims, coords=coords)
    units = getattr(names, "units", None) or {}
    if isinstance(units, Mapping) and "x" in units:
        idata.prior["x"].attrs["units"] = str(units["x"])
    from ppl_cvae._version import __version__

    idata.prior.attrs.update(
        {"inference_library": "ppl_cvae", "inference_library_version": __version__}
    )
    idata.prior.attrs.update({str(k): v for k, v in (attrs or {}).items()})
    return idata
