"""Figures of posteriors and training runs (the only library module importing matplotlib/seaborn).

Every function draws into a new figure, saves it as PNG atomically and closes it; nothing is
shown. Figures are ``matplotlib.figure.Figure`` objects outside pyplot (rendered by the Agg
canvas on save), so importing this module leaves the user's matplotlib backend and pyplot state
alone; only the seaborn pair plot goes through pyplot, and closes its figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ppl_cvae._atomic import atomic_path

__all__ = [
    "plot_bands",
    "plot_fields",
    "plot_predictive",
    "plot_profile",
    "plot_coverage",
    "plot_truth_vs_mean",
    "plot_image_grid",
    "plot_latent_scatter",
    "plot_loss",
    "plot_pairs",
    "series_view",
    "write_gif",
]


def _subplots(
    *grid: int, figsize: tuple[float, float], constrained_layout: bool = False, **kwargs: Any
) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a new ``Figure`` and its axes (same arguments)."""
    fig = Figure(figsize=figsize, layout="constrained" if constrained_layout else None)
    return fig, fig.subplots(*grid, **kwargs)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def series_view(
    array: np.ndarray, dims: Sequence[str], coords: Mapping[str, Sequence]
) -> tuple[np.ndarray, list[str], str, np.ndarray]:
    """Reshape an event array into series for plotting.

    The last dim names the series (e.g. ``line``: ``x0``, ``x1``); all other dims are
    flattened into the horizontal axis, labelled by the longest of them.

    Parameters
    ----------
    array : ndarray, shape (*lead, *event)
        ``len(dims)`` trailing axes are the event.
    dims : sequence of str
        Names of the event axes.
    coords : mapping
        Coordinates of the dims (used for labels and the horizontal axis).

    Returns
    -------
    values : ndarray, shape (*lead, n_points, n_series)
    labels : list of str
        One label per series.
    axis_name : str
    axis_values : ndarray, shape (n_points,)
    """
    n = len(dims)
    lead = array.shape[: array.ndim - n]
    event = array.shape[array.ndim - n :]
    if n == 1:
        values = array.reshape(*lead, event[0], 1)
        labels = [""]
        axis_name = dims[0]
    else:
        values = array.reshape(*lead, int(np.prod(event[:-1])), event[-1])
        labels = [str(c) for c in coords.get(dims[-1], range(event[-1]))]
        axis_name = max(dims[:-1], key=lambda d: event[list(dims).index(d)])
    axis_values = np.arange(values.shape[-2])
    if axis_name in coords and len(coords[axis_name]) == values.shape[-2]:
        try:
            axis_values = np.asarray(coords[axis_name], dtype=float)
        except (TypeError, ValueError):
            pass
    return values, labels, axis_name, axis_values


def plot_bands(
    draws: np.ndarray,
    dims: Sequence[str],
    coords: Mapping[str, Sequence],
    path: str | os.PathLike[str],
    *,
    reference: np.ndarray | None = None,
    reference_label: str = "truth",
    title: str = "",
    ylabel: str = "value",
    interval: float = 0.9,
    band: np.ndarray | None = None,
) -> Path:
    """Plot the posterior mean and an ``interval`` band of each series, with a reference.

    Parameters
    ----------
    draws : ndarray, shape (S, *event)
        Posterior (or posterior predictive) draws of one observation.
    dims, coords
        Event dims and coordinates (see :func:`series_view`).
    path : path
        PNG to write.
    reference : ndarray, shape event, optional
        True model or observed data, drawn dashed.
    interval : float, default 0.9
        Probability mass of the band (for the legend).
    band : ndarray, shape (*event, 2), optional
        Lower and upper band edges (e.g. the HDI from :func:`inference.arviz_io.hdi`);
        default: the central equal-tailed interval of the draws.
    """
    values, labels, axis_name, axis_values = series_view(draws, dims, coords)
    fig, ax = _subplots(figsize=(6.4, 4.0))
    palette = sns.color_palette(n_colors=max(len(labels), 1))
    if band is None:
        lo, hi = np.quantile(values, [(1 - interval) / 2, (1 + interval) / 2], axis=0)
    else:
        lo = series_view(band[..., 0], dims, coords)[0]
        hi = series_view(band[..., 1], dims, coords)[0]
    mean = values.mean(0)
    kind = "interval" if band is None else "HDI"
    ref = None if reference is None else series_view(reference[None], dims, coords)[0][0]
    for k, label in enumerate(labels):
        name = f" {label}" if label else ""
        ax.fill_between(
            axis_values,
            lo[:, k],
            hi[:, k],
            color=palette[k],
            alpha=0.25,
            label=f"{int(interval * 100)}% {kind}{name}",
        )
        ax.plot(axis_values, mean[:, k], color=palette[k], label=f"mean{name}")
        if ref is not None:
            ax.plot(
                axis_values,
                ref[:, k],
                color=palette[k],
                ls="--",
                lw=1.2,
                label=f"{reference_label}{name}",
            )
    ax.set_xlabel(axis_name)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_pairs(
    draws: np.ndarray, names: Sequence[str], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Seaborn pair plot of a few scalar quantities.

    Parameters
    ----------
    draws : ndarray, shape (S, K)
        ``S`` draws of ``K`` quantities (keep ``K`` small, e.g. <= 5).
    names : sequence of str
        ``K`` column names.
    path : path
        PNG to write.
    """
    import matplotlib.pyplot as plt  # seaborn's grids are pyplot figures

    frame = pd.DataFrame(np.asarray(draws), columns=list(names))
    grid = sns.pairplot(frame, corner=True, plot_kws={"s": 6, "alpha": 0.5, "edgecolor": "none"})
    if title:
        grid.figure.suptitle(title)
    try:
        return _save(grid.figure, path)
    finally:
        plt.close(grid.figure)


def plot_loss(history: Sequence[Mapping[str, float]], path: str | os.PathLike[str]) -> Path:
    """Plot training and validation loss (negative ELBO per observation) per epoch."""
    frame = pd.DataFrame(list(history))
    fig, ax = _subplots(figsize=(6.0, 3.6))
    ax.plot(frame["epoch"], frame["train_loss"], label="train")
    if "val_loss" in frame and frame["val_loss"].notna().any():
        ax.plot(frame["epoch"], frame["val_loss"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (negative ELBO per observation, nats)")
    ax.legend()
    return _save(fig, path)


def plot_fields(
    panels: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    extent: tuple[float, float, float, float],
    xlabel: str = "offset (m)",
    ylabel: str = "depth (m)",
    units: Mapping[str, str] | None = None,
    shared: Sequence[str] = (),
    ncols: int = 4,
) -> Path:
    """Draw 2-D fields side by side (truth, posterior mean, std, draws), each with a colour bar.

    Parameters
    ----------
    panels : mapping of title to ndarray, shape (H, W)
        Fields on the grid, row 0 at the top (depth positive downward).
    path : path
        PNG to write.
    extent : (left, right, bottom, top)
        Grid edges in m for ``imshow`` (bottom is the largest depth).
    units : mapping of title to unit string, optional
        Colour-bar label per panel (e.g. ``"s/m"``).
    shared : sequence of str
        Titles that share one colour scale (e.g. truth, mean and draws).
    ncols : int, default 4
        Panels per row.
    """
    titles = list(panels)
    nrows = math.ceil(len(titles) / ncols)
    ncols = min(ncols, len(titles))
    fig, axes = _subplots(
        nrows, ncols, figsize=(3.1 * ncols, 2.9 * nrows), squeeze=False, constrained_layout=True
    )
    shared_values = [np.asarray(panels[t]) for t in titles if t in shared]
    vmin = min(float(v.min()) for v in shared_values) if shared_values else None
    vmax = max(float(v.max()) for v in shared_values) if shared_values else None
    for ax, title in zip(axes.flat, titles, strict=False):
        limits = {"vmin": vmin, "vmax": vmax} if title in shared else {}
        cmap = "magma" if "std" in title.lower() else "viridis"
        image = ax.imshow(np.asarray(panels[title]), extent=extent, cmap=cmap, **limits)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        bar = fig.colorbar(image, ax=ax, shrink=0.85)
        bar.set_label((units or {}).get(title, ""))
    for ax in list(axes.flat)[len(titles) :]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_profile(
    depth: np.ndarray,
    draws: np.ndarray,
    path: str | os.PathLike[str],
    *,
    truth: np.ndarray | None = None,
    xlabel: str = "value",
    depth_label: str = "depth (m)",
    intervals: Sequence[float] = (0.5, 0.9),
    title: str = "",
) -> Path:
    """Plot credible-interval bands of a 1-D profile against depth (depth down the page).

    Parameters
    ----------
    depth : ndarray, shape (N,)
        Depth of each profile value, in m.
    draws : ndarray, shape (S, N)
        Posterior draws of the profile.
    truth : ndarray, shape (N,), optional
        True profile, drawn dashed.
    intervals : sequence of float
        Masses of the central intervals drawn as nested bands.
    """
    d = np.asarray(depth, dtype=float)
    v = np.asarray(draws, dtype=float)
    fig, ax = _subplots(figsize=(3.8, 5.0))
    for k, mass in enumerate(sorted(intervals, reverse=True)):
        lo, hi = np.quantile(v, [(1 - mass) / 2, (1 + mass) / 2], axis=0)
        ax.fill_betweenx(d, lo, hi, color="C0", alpha=0.2 + 0.2 * k, lw=0, label=f"{mass:.0%}")
    ax.plot(np.median(v, axis=0), d, color="C0", label="median")
    if truth is not None:
        ax.plot(np.asarray(truth, dtype=float), d, "k--", lw=1.2, label="truth")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(depth_label)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_predictive(
    coord: np.ndarray,
    y_obs: np.ndarray,
    y_rep: np.ndarray,
    path: str | os.PathLike[str],
    *,
    xlabel: str = "datum",
    ylabel: str = "y",
    logx: bool = False,
    interval: float = 0.9,
    title: str = "",
) -> Path:
    """Plot the posterior predictive band of one data series against the observed data.

    Parameters
    ----------
    coord : ndarray, shape (N,)
        Horizontal coordinate of the data (station position, frequency, ray index).
    y_obs : ndarray, shape (N,)
        Observed data.
    y_rep : ndarray, shape (S, N)
        Posterior predictive draws ``F(x) + eps``.
    logx : bool
        Logarithmic horizontal axis (frequencies).
    """
    c = np.asarray(coord, dtype=float)
    rep = np.asarray(y_rep, dtype=float)
    lo, hi = np.quantile(rep, [(1 - interval) / 2, (1 + interval) / 2], axis=0)
    fig, ax = _subplots(figsize=(6.0, 3.4))
    ax.fill_between(c, lo, hi, color="C1", alpha=0.3, lw=0, label=f"{interval:.0%} predictive")
    ax.plot(c, np.median(rep, axis=0), color="C1", lw=1, label="predictive median")
    ax.plot(c, np.asarray(y_obs, dtype=float), "k.", ms=3, label="observed")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_coverage(
    nominal: Sequence[float],
    empirical: Sequence[float],
    path: str | os.PathLike[str],
    *,
    num_observations: int | None = None,
    reference: Sequence[float] | None = None,
    reference_label: str = "exact posterior",
) -> Path:
    """Plot empirical against nominal coverage of central intervals (a calibration curve).

    A calibrated posterior lies on the diagonal; below it the intervals are too narrow, above
    it too wide. The grey band is +-2 binomial standard errors for ``num_observations``
    independent truths (elements of one model are correlated, so this is the narrowest
    honest band). ``reference`` (e.g. the exact posterior's coverage) is drawn dashed.
    """
    nom = np.asarray(nominal, dtype=float)
    fig, ax = _subplots(figsize=(4.2, 4.2))
    if num_observations:
        se = np.sqrt(nom * (1 - nom) / num_observations)
        ax.fill_between(nom, nom - 2 * se, nom + 2 * se, color="0.85", label="±2 SE")
    ax.plot([0, 1], [0, 1], color="0.4", lw=1)
    ax.plot(nom, np.asarray(empirical, dtype=float), "o-", label="posterior")
    if reference is not None:
        ax.plot(nom, np.asarray(reference, dtype=float), "k--", label=reference_label)
    ax.set_xlabel("credibility level of central interval")
    ax.set_ylabel("fraction of true values inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_truth_vs_mean(
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    path: str | os.PathLike[str],
    *,
    unit: str = "",
    max_points: int = 4000,
) -> Path:
    """Scatter posterior means (with ±1 sd bars) against true values of all elements.

    Parameters
    ----------
    truth, mean, std : ndarray, same shape
        True values, posterior means and posterior standard deviations (any event layout; a
        random subset of ``max_points`` elements is drawn).
    unit : str
        Unit of ``x`` for the axis labels.
    """
    t, m, s = (np.asarray(a, dtype=float).reshape(-1) for a in (truth, mean, std))
    if t.size > max_points:
        keep = np.random.default_rng(0).choice(t.size, max_points, replace=False)
        t, m, s = t[keep], m[keep], s[keep]
    label = f" ({unit})" if unit else ""
    fig, ax = _subplots(figsize=(4.4, 4.2))
    ax.errorbar(t, m, yerr=s, fmt=".", ms=2, alpha=0.3, elinewidth=0.5)
    lo, hi = float(min(t.min(), m.min())), float(max(t.max(), m.max()))
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=1)
    ax.set_xlabel(f"true x{label}")
    ax.set_ylabel(f"posterior mean ± 1 sd{label}")
    return _save(fig, path)


def plot_image_grid(
    images: np.ndarray,
    path: str | os.PathLike[str],
    *,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    cmap: str = "gray_r",
) -> Path:
    """Save a grid of grey-level images.

    Parameters
    ----------
    images : ndarray, shape (rows, cols, H, W)
        Pixel values in [0, 1].
    path : path
        PNG to write.
    row_labels : sequence of str, optional
        One label per row, drawn left of it.
    """
    images = np.asarray(images)
    rows, cols = images.shape[:2]
    fig, axes = _subplots(rows, cols, figsize=(0.8 * cols + 0.6, 0.8 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r, c], cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels is not None:
            axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_latent_scatter(
    z: np.ndarray, labels: np.ndarray, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Scatter 2-D latent codes ``z`` (shape (N, 2)) coloured by integer ``labels`` (N,)."""
    frame = pd.DataFrame({"z0": z[:, 0], "z1": z[:, 1], "label": np.asarray(labels).astype(str)})
    fig, ax = _subplots(figsize=(5.0, 4.4))
    sns.scatterplot(data=frame, x="z0", y="z1", hue="label", s=8, linewidth=0, ax=ax)
    ax.set_title(title)
    return _save(fig, path)


def write_gif(
    frames: Sequence[str | os.PathLike[str]], path: str | os.PathLike[str], *, ms: int = 300
) -> Path:
    """Join PNG frames into an animated GIF (Pillow), atomically; ``ms`` per frame."""
    from PIL import Image

    images = [Image.open(f).convert("RGB") for f in frames]
    size = images[0].size
    images = [im.resize(size) for im in images]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0
        )
    return path
