"""Colour and value scales of the field and profile plots: logarithmic over decades only.

A resistivity field from 1 to 1000 ohm m on a linear colour scale shows its largest values
alone; on a log scale every decade gets its share of the colours. Values within fewer than
``LOG_SCALE_DECADES`` decades, or any value <= 0, keep the linear scale.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from inference.plots import LOG_SCALE_DECADES, fields_figure, profile_figure  # noqa: E402

EXTENT = (0.0, 8.0, 4.0, 0.0)


def _norms(fig) -> dict[str, object]:
    return {ax.get_title(): ax.images[0].norm for ax in fig.axes if ax.images}


def test_fields_over_decades_get_a_log_colour_scale_shared_by_the_shared_panels():
    rng = np.random.default_rng(0)
    truth = 10 ** rng.uniform(0, 3, (4, 8))  # 1 to 1000 ohm m
    mean = 10 ** rng.uniform(0.5, 2.5, (4, 8))
    sd = rng.uniform(1.0, 3.0, (4, 8))  # within one decade: linear
    fig = fields_figure({"truth": truth, "mean": mean, "sd": sd}, extent=EXTENT,
                        shared=("truth", "mean"))
    norms = _norms(fig)
    plt.close(fig)
    assert isinstance(norms["truth"], LogNorm) and isinstance(norms["mean"], LogNorm)
    for name in ("truth", "mean"):  # one scale for both
        assert norms[name].vmin == min(truth.min(), mean.min())
        assert norms[name].vmax == max(truth.max(), mean.max())
    assert not isinstance(norms["sd"], LogNorm)


def test_fields_within_two_decades_or_with_zeros_stay_linear():
    ratio = 10**LOG_SCALE_DECADES
    near = np.linspace(1.0, 0.99 * ratio, 32).reshape(4, 8)
    signed = np.linspace(-1.0, 1000.0, 32).reshape(4, 8)
    fig = fields_figure({"a": near, "b": signed}, extent=EXTENT)
    norms = _norms(fig)
    plt.close(fig)
    assert not any(isinstance(n, LogNorm) for n in norms.values())


def test_a_profile_over_decades_gets_a_log_value_axis():
    rng = np.random.default_rng(1)
    depth = np.arange(10.0)
    wide = profile_figure(depth, 10 ** rng.uniform(0, 3, (50, 10)))
    narrow = profile_figure(depth, rng.uniform(1, 5, (50, 10)))
    scales = wide.axes[0].get_xscale(), narrow.axes[0].get_xscale()
    plt.close(wide)
    plt.close(narrow)
    assert scales == ("log", "linear")


def test_colour_image_grids_keep_their_channels(tmp_path):
    """A (rows, cols, 3, H, W) grid raised matplotlib's TypeError; now drawn in colour."""
    import pytest
    from PIL import Image

    from inference.plots import plot_image_grid
    from ppl_cvae.errors import ShapeError

    red = np.zeros((1, 2, 3, 8, 8))
    red[:, :, 0] = 1.0
    red[0, 1, 0] = 1.5  # drawn clipped to 1
    plot_image_grid(red, tmp_path / "red.png")
    pixels = np.asarray(Image.open(tmp_path / "red.png").convert("RGB")).reshape(-1, 3)
    pure_red = (pixels[:, 0] > 240) & (pixels[:, 1] < 15) & (pixels[:, 2] < 15)
    assert pure_red.sum() >= 100  # two 8 x 8 panels drawn at well over a pixel per value
    plot_image_grid(np.zeros((1, 2, 8, 8)), tmp_path / "grey.png")
    with pytest.raises(ShapeError, match=r"\(rows, cols, 3, H, W\)"):
        plot_image_grid(np.zeros((2, 8, 8)), tmp_path / "bad.png")
