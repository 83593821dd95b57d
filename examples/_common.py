"""Pieces shared by several examples; not an example itself."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from inference.plots import plot_latent_scatter
from ppl_cvae import ModelConfig


def parser(doc: str, default_out: str | None) -> argparse.ArgumentParser:
    """Return an example's parser with the flags every example has (STYLE.md section 7).

    ``--smoke`` (a tiny budget, for tests), ``--seed``, ``--device`` and ``--out-dir``.
    """
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny budget, for tests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=default_out)
    return p


def digits_parser(doc: str, latent_dim: int, default_out: str) -> argparse.ArgumentParser:
    """Return the digits examples' parser: :func:`parser` plus epochs, latent size, network."""
    p = parser(doc, default_out)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--latent-dim", type=int, default=latent_dim)
    p.add_argument("--network", choices=["mlp", "conv2d"], default="mlp")
    return p


def digits_config(args: argparse.Namespace, conditional: bool) -> ModelConfig:
    """Return the digits examples' model: 8x8 Bernoulli pixels, two hidden layers of 128.

    ``args.latent_dim`` and ``args.network`` (``mlp`` or ``conv2d``, channels 16 and 32,
    64 features) from :func:`digits_parser`. ``conditional``: a one-hot digit label ``y``
    of shape ``(10,)`` with a learned prior net ``p(z | y)``; else a VAE with
    ``z ~ N(0, I)``.
    """
    return ModelConfig(
        x_shape=(8, 8),
        y_shape=(10,) if conditional else None,
        latent_dim=args.latent_dim,
        hidden_dims=(128, 128),
        likelihood="bernoulli",
        network=args.network,
        conv_channels=(16, 32),
        feature_dim=64,
        prior="learned" if conditional else "standard_normal",
    )


def finish_digits(
    vae: Any, x_test: torch.Tensor, labels: torch.Tensor, path: Path, metrics: dict
) -> dict:
    """Scatter a 2-D VAE latent at ``path``, write ``metrics.json`` beside it, print, return.

    ``x_test`` ``(N, 8, 8)`` test images and ``labels`` ``(N,)`` their digits; the scatter shows
    the recognition net's latent means (only when the latent is 2-D).
    """
    if vae.config.latent_dim == 2:
        z, _ = vae.recognition_params(None, x_test)
        title = "VAE latent means of test digits"
        plot_latent_scatter(z.detach().numpy(), labels.numpy(), path, title=title)
    (path.parent / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return metrics
