"""Handwritten digits: an unconditional VAE, MLP or convolutional, with per-epoch figures.

Trains a VAE (no condition; the same CVAE class with ``y_shape=None``) on scikit-learn's 8x8
digits with Bernoulli pixels, and writes per-epoch grids of test images beside their
reconstructions and of samples at fixed latent draws, a GIF of the samples across epochs, the
ELBO curves, the test negative ELBO (nats per image) and, for a 2-D latent, a scatter of the
test digits' latent means coloured by label.

Run::

    python examples/digits_vae.py --network conv2d --latent-dim 2 --out-dir runs/digits_vae

Runtime: about 20 seconds on 2 CPU cores (``--smoke``: a few seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import digits_config, digits_parser, finish_digits

from inference.images import EpochFrames
from inference.plots import plot_loss
from ppl_cvae import TrainConfig, build_cvae, fit
from ppl_cvae.data.datasets import load_dataset
from ppl_cvae.train import negative_elbo


def main(args: argparse.Namespace) -> dict:
    """Train the VAE, write the figures, return the test metrics."""
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    x, _, info = load_dataset("digits", condition="none")
    labels = info["labels"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = perm[:300], perm[300:]
    epochs = 2 if args.smoke else args.epochs
    vae = build_cvae(digits_config(args, conditional=False), x[train], None)
    eps = torch.randn(64, args.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    frames = EpochFrames(
        out / "frames", x[test[:10]], None, eps, None, grid=(8, 8), every=max(1, epochs // 10)
    )
    result = fit(
        vae,
        x[train],
        None,
        TrainConfig(
            num_epochs=epochs, batch_size=64, patience=0, kl_warmup_epochs=10, seed=args.seed
        ),
        progress=not args.smoke,
        on_epoch_end=frames,
    )
    frames.gif()
    plot_loss(result.history, out / "elbo.png")
    metrics = {
        "test_negative_elbo_nats_per_image": negative_elbo(vae, None, x[test], num_particles=10)
    }
    return finish_digits(vae, x[test], labels[test], out / "latent.png", metrics)


if __name__ == "__main__":
    main(digits_parser(__doc__, 2, "runs/digits_vae").parse_args())
