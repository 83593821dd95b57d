"""Image outputs of (C)VAEs: reconstructions, samples at fixed latent draws, epoch frames.

Helpers for the image demos (handwritten digits): each returns decoder means in [0, 1] for a
Bernoulli likelihood, so the figures show probabilities, not binary draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from inference import plots
from ppl_cvae.models.cvae import CVAE

__all__ = ["EpochFrames", "reconstruct", "samples_at"]


@torch.no_grad()
def reconstruct(cvae: CVAE, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decode the recognition net's mean code: ``E[x | z = mu_q(x, y), y]``.

    Parameters
    ----------
    x : Tensor, shape (N, *x_shape)
    y : Tensor, shape (N, *y_shape), or None for a VAE

    Returns
    -------
    Tensor, shape (N, *x_shape)
    """
    loc, _ = cvae.recognition_params(y, x)
    return cvae.decode(loc, y)[0]


@torch.no_grad()
def samples_at(cvae: CVAE, eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decode fixed standard-normal draws through the prior: ``z = mu_p(y) + sigma_p(y) eps``.

    Fixed ``eps`` across epochs shows how the generator evolves (the GIF frames).

    Parameters
    ----------
    eps : Tensor, shape (N, latent_dim)
    y : Tensor, shape (N, *y_shape), or None for a VAE

    Returns
    -------
    Tensor, shape (N, *x_shape)
        Decoder means.
    """
    loc, scale = cvae.prior_params(y)
    return cvae.decode(loc + scale * eps, y)[0]


class EpochFrames:
    """``on_epoch_end`` callback of :func:`ppl_cvae.train.fit` that saves image grids.

    After every ``every`` epochs it writes ``recon_epochNNN.png`` (inputs above their
    reconstructions) and ``samples_epochNNN.png`` (decoder means at fixed latent draws);
    :meth:`gif` joins the sample frames into ``samples.gif``.

    Parameters
    ----------
    out_dir : path
        Folder for the frames (created).
    x, y : Tensor
        Images ``(N, H, W)`` to reconstruct and their conditions (or None).
    eps : Tensor, shape (R * C, latent_dim)
        Fixed latent draws.
    y_samples : Tensor, shape (R * C, *y_shape), or None
        Conditions of the sample grid (e.g. each class repeated along a row).
    grid : (int, int)
        Rows and columns of the sample grid.
    every : int, default 1
    cmap : str, default "gray_r"
        Colour map of grey images (:func:`~inference.plots.plot_image_grid`).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        x: torch.Tensor,
        y: torch.Tensor | None,
        eps: torch.Tensor,
        y_samples: torch.Tensor | None,
        grid: tuple[int, int],
        every: int = 1,
        cmap: str = "gray_r",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.cmap = cmap
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.x, self.y, self.eps, self.y_samples = x, y, eps, y_samples
        self.grid, self.every = grid, every
        self.sample_frames: list[Path] = []

    def __call__(self, epoch: int, cvae: CVAE) -> None:
        """Write this epoch's frames (called by ``fit``)."""
        if epoch % self.every:
            return
        recon = reconstruct(cvae, self.x, self.y)
        pair = torch.stack([self.x, recon])  # (2, N, H, W)
        plots.plot_image_grid(
            pair.numpy(),
            self.out_dir / f"recon_epoch{epoch:03d}.png",
            row_labels=["input", "recon"],
            title=f"epoch {epoch}",
            cmap=self.cmap,
        )
        rows, cols = self.grid
        samples = samples_at(cvae, self.eps, self.y_samples)
        images = samples.reshape(rows, cols, *samples.shape[1:]).numpy()
        path = self.out_dir / f"samples_epoch{epoch:03d}.png"
        plots.plot_image_grid(
            images, path, title=f"samples at fixed z, epoch {epoch}", cmap=self.cmap
        )
        self.sample_frames.append(path)

    def gif(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Join the sample frames into an animated GIF; returns its path."""
        return plots.write_gif(self.sample_frames, path or self.out_dir / "samples.gif")
