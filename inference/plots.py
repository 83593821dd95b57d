"""Figures of posteriors and training runs (the only library module importing matplotlib/seaborn).

The rank-ECDF figures of the calibration checks draw with ArviZ's ``plot_ecdf`` (its simultaneous
confidence bands), imported inside those functions, so that ArviZ plotting too stays at this
edge.

The ``*_figure`` functions return a ``matplotlib.figure.Figure`` (inspect it, or write it with
:func:`save_figure`); the ``plot_*`` functions draw into a new figure and save it as PNG
atomically; nothing is shown. Figures are ``Figure`` objects outside pyplot (rendered by the
Agg canvas on save), so importing this module leaves the user's matplotlib backend and pyplot
state alone; only the seaborn pair plot goes through pyplot, and closes its figure.

Figures of posterior draws read named dims and coordinates from ``xarray.DataArray`` objects
(as stored by :mod:`inference.arviz_io`): the horizontal axis is a named coordinate, the other
dims become panels, axis labels carry the ``units`` attributes, a coordinate in Hz gets a log
axis, and values in ``log10(U)`` are shown in ``U`` on a log axis.

Inputs are checked before anything is drawn (:mod:`ppl_cvae.checks`): arrays may be NumPy
arrays, tensors or lists of real numbers; a wrong shape is a
:class:`~ppl_cvae.errors.ShapeError`, a bad option a :class:`~ppl_cvae.errors.ConfigError`.
Posterior draws may hold a few non-finite values (a forward operator that overflows at some
draws): the bands are quantiles of the finite draws at each point and the figure's title
says how many values were left out; a point without a finite draw is a
:class:`~ppl_cvae.errors.DataError`, as is a non-finite truth, reference, depth or panel.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ppl_cvae._atomic import atomic_path
from ppl_cvae.checks import as_count, as_probability, as_real_tensor, check_finite
from ppl_cvae.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "LOG_SCALE_DECADES",
    "bands_figure",
    "fields_figure",
    "layered_profile_figure",
    "log10_unit",
    "plot_coverage",
    "plot_rank_ecdf",
    "plot_tarp",
    "plot_truth_vs_mean",
    "rank_ecdf_figure",
    "tarp_figure",
    "truth_vs_mean_figure",
    "plot_image_grid",
    "plot_latent_scatter",
    "plot_loss",
    "plot_pairs",
    "profile_figure",
    "save_figure",
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


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG (110 dpi) atomically and return the path.

    Examples
    --------
    >>> import tempfile
    >>> fig = Figure()
    >>> _ = fig.subplots().plot([0, 1])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_figure(fig, Path(folder) / "line.png").stat().st_size > 0
    True
    """
    return _save(fig, path)


_LOG10 = re.compile(r"^\s*log10\s*\((.*)\)\s*$")


def log10_unit(unit: str) -> str | None:
    """Return ``U`` for a unit written ``log10(U)`` (values are decimal logarithms), else None.

    Examples
    --------
    >>> log10_unit("log10(ohm m)"), log10_unit("deg")
    ('ohm m', None)
    """
    match = _LOG10.match(unit or "")
    return match.group(1).strip() if match else None


def _label(name: str, unit: str) -> str:
    """``"name (unit)"``, or ``"name"`` for a dimensionless or index axis."""
    return f"{name} ({unit})" if unit else name


def _is_frequency(name: str, unit: str) -> bool:
    """Whether a coordinate is a frequency or period (log axis)."""
    return unit.strip() in ("Hz", "1/s", "kHz", "MHz") or any(
        word in name.lower() for word in ("frequency", "period")
    )


def _log_axis(axis: Any, set_scale: Any) -> None:
    """Log scale with plain numbers (0.01, 10, 300) as tick labels."""
    from matplotlib.ticker import FuncFormatter

    set_scale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)

    def minor(v: float, _: Any) -> str:
        # on a range under 2 decades label the minor ticks 2 and 5, so that it still reads
        lo, hi = sorted(axis.get_view_interval())
        short = lo > 0 and hi / lo < 100
        return f"{v:g}" if short and f"{v:.0e}"[0] in "25" else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def _numeric(values: Any) -> np.ndarray | None:
    """Return ``values`` as float, or None when they are not numbers."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        return array.astype(float)
    return None


def _values(
    values: Any, name: str, shape: tuple[int | None, ...] | None = None, *, finite: bool = True
) -> np.ndarray:
    """Return an array, tensor or list of real numbers as float64, checked.

    ``shape`` gives the expected shape (None for an axis of any length); ``finite`` refuses
    NaN and inf. Raises DataError (not numbers; not finite) or ShapeError naming ``name``.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    array = as_real_tensor(values, name, dtype=torch.float64)
    if shape is not None and (
        array.dim() != len(shape)
        or any(n is not None and n != m for n, m in zip(shape, array.shape, strict=True))
    ):
        expected = ", ".join("any" if n is None else str(n) for n in shape)
        expected += "," if len(shape) == 1 else ""
        raise ShapeError(f"{name} must have shape ({expected}), got {tuple(array.shape)}")
    if finite:
        check_finite(array, name)
    return array.numpy()


def _finite_quantiles(
    draws: np.ndarray, probs: Sequence[float], name: str
) -> tuple[np.ndarray, int]:
    """Quantiles over axis 0 of the finite draws, and how many values were not finite.

    Parameters
    ----------
    draws : ndarray, shape (S, N)
    probs : sequence of float in [0, 1]

    Returns
    -------
    quantiles : ndarray, shape (len(probs), N)
    left_out : int
        Non-finite values of ``draws`` (left out of the quantiles).

    Raises
    ------
    DataError
        If a point (a column) has no finite draw.
    """
    finite = np.isfinite(draws)
    empty = ~finite.any(axis=0)
    if draws.shape[0] == 0 or bool(empty.any()):
        raise DataError(
            f"{name} has no finite draw at {int(empty.sum()) if draws.shape[0] else 'any'} of "
            f"{draws.shape[1]} points (NaN or inf in every draw); expected draws with values"
        )
    left_out = int((~finite).sum())
    if not left_out:
        return np.quantile(draws, probs, axis=0), 0
    return np.nanquantile(np.where(finite, draws, np.nan), probs, axis=0), left_out


def _left_out_note(left_out: int, total: int, name: str) -> str:
    """``"k of n values of name not finite, left out"``, or ``""`` when none."""
    if not left_out:
        return ""
    return f"{left_out} of {total} values of {name} non-finite, left out of the quantiles"


def _with_note(title: str, note: str) -> str:
    """Return the title with the note on a line of its own (either may be empty)."""
    return f"{title}\n({note})" if title and note else title or (f"({note})" if note else "")


def bands_figure(
    draws: xr.DataArray,
    *,
    reference: xr.DataArray | None = None,
    reference_sd: xr.DataArray | None = None,
    reference_label: str = "truth",
    along: str | None = None,
    value_name: str = "value",
    interval: float = 0.9,
    title: str = "",
    max_panels: int = 8,
) -> Figure:
    """Draw posterior (predictive) bands along a named coordinate, one panel per other index.

    Parameters
    ----------
    draws : xarray.DataArray, dims (draw, *event)
        Draws of one observation with named event dims and coordinates; its ``units``
        attribute labels the value axis, and a string coordinate ``y_units`` along one event
        dim gives each panel of that dim its own unit (data mixing quantities).
    reference : xarray.DataArray, dims event, optional
        True model or observed data; drawn as points with ``reference_sd`` error bars when
        given, else as a dashed line.
    reference_sd : xarray.DataArray, dims event, optional
        One standard deviation of the reference (the data noise), same units.
    along : str, optional
        Event dim on the horizontal axis; default the longest dim with a numeric coordinate
        (the longest dim when none has one). A frequency coordinate gets a log axis.
    value_name : str, default "value"
        Name of the quantity for the value axis (the unit is appended).
    interval : float, default 0.9
        Mass of the central (equal-tailed) band; the median is drawn as a line.
    max_panels : int, default 8
        Panels drawn at most (the first ones in coordinate order).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per combination of the other event dims, titled ``dim = value``; values in
        ``log10(U)`` are drawn as ``U`` on a log axis. The legend sits below the panels. When
        draws hold NaN or inf, the bands are quantiles of the finite draws at each point and
        the figure's title says how many values were left out.

    Raises
    ------
    DataError
        If ``draws`` is not an ``xarray.DataArray`` of real numbers, a point has no finite
        draw, or ``reference`` / ``reference_sd`` hold NaN or inf.
    ShapeError
        If ``draws`` has no ``draw`` dim or no event dim, or ``reference`` does not have the
        event dims of ``draws`` (``reference_sd`` some of them).
    ConfigError
        If ``along`` is not an event dim, ``interval`` not in (0, 1], or ``max_panels`` not
        an int >= 1.

    Examples
    --------
    >>> import xarray as xr
    >>> draws = xr.DataArray(np.ones((5, 2, 3)), dims=("draw", "component", "frequency"),
    ...     coords={"component": ["a", "b"], "frequency": [1.0, 10.0, 100.0]})
    >>> draws["frequency"].attrs["units"] = "Hz"
    >>> fig = bands_figure(draws)
    >>> len(fig.axes), fig.axes[0].get_xscale(), fig.axes[0].get_xlabel()
    (2, 'log', 'frequency (Hz)')
    """
    import itertools

    import xarray as xr

    if not isinstance(draws, xr.DataArray):
        raise DataError(
            f"draws must be an xarray.DataArray with a 'draw' dim and named event dims (a "
            f"posterior file's variable), got {type(draws).__module__}.{type(draws).__name__}"
        )
    if "draw" not in draws.dims:
        raise ShapeError(f"draws must have a 'draw' dim, got dims {tuple(map(str, draws.dims))}")
    event = [str(d) for d in draws.dims if d != "draw"]
    if not event:
        raise ShapeError("draws must have at least one event dim besides 'draw', got none")
    interval = as_probability(interval, "interval", allow_one=True)
    max_panels = as_count(max_panels, "max_panels")
    if along is None:
        numeric = [d for d in event if d in draws.coords and _numeric(draws[d].values) is not None]
        along = max(numeric or event, key=lambda d: draws.sizes[d])
    elif along not in event:
        raise ConfigError(f"along={along!r} is not an event dim of draws (event dims: {event})")
    for name, given in (("reference", reference), ("reference_sd", reference_sd)):
        if given is None:
            continue
        if not isinstance(given, xr.DataArray):
            raise DataError(f"{name} must be an xarray.DataArray, got {type(given).__name__}")
        dims = {str(d) for d in given.dims}
        if (name == "reference" and dims != set(event)) or not dims <= set(event):
            raise ShapeError(
                f"{name} must have the event dims of draws ({event}"
                f"{'' if name == 'reference' else ', or some of them'}), got "
                f"{sorted(dims)}"
            )
        _values(given.values, name)  # finite numbers
    values_all = _values(draws.values, "draws", finite=False)
    left_out = int((~np.isfinite(values_all)).sum())
    others = [d for d in event if d != along]
    combos = list(itertools.product(*(range(draws.sizes[d]) for d in others)))[:max_panels]
    ncols = min(2, len(combos))
    nrows = math.ceil(len(combos) / ncols)
    fig, axes = _subplots(
        nrows,
        ncols,
        figsize=(5.2 * ncols, 3.0 * nrows + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    x_unit = str(draws[along].attrs.get("units", "")) if along in draws.coords else ""
    x_values = _numeric(draws[along].values) if along in draws.coords else None
    if x_values is None:
        x_values = np.arange(draws.sizes[along], dtype=float)
    lo_q, hi_q = (1 - interval) / 2, (1 + interval) / 2
    for ax, combo in zip(axes.flat, combos, strict=False):
        index = dict(zip(others, combo, strict=True))
        panel = draws.isel(index).transpose("draw", along)
        unit = str(draws.attrs.get("units", ""))
        if "y_units" in panel.coords and panel.coords["y_units"].ndim == 0:
            unit = str(panel.coords["y_units"].values)
        phys = log10_unit(unit)
        scale = (lambda v: 10.0**v) if phys is not None else (lambda v: v)
        values = np.asarray(panel.values, dtype=float)
        (lo, med, hi), _ = _finite_quantiles(values, [lo_q, 0.5, hi_q], "draws")
        ax.fill_between(
            x_values,
            scale(lo),
            scale(hi),
            color="C0",
            alpha=0.3,
            lw=0,
            label=f"{interval:.0%} interval",
        )
        ax.plot(x_values, scale(med), color="C0", lw=1.2, label="median")
        if reference is not None:
            ref = np.asarray(reference.isel(index).transpose(along).values, dtype=float)
            if reference_sd is not None:
                sd_index = {d: i for d, i in index.items() if d in reference_sd.dims}
                sd_dims = [d for d in (along,) if d in reference_sd.dims]
                sd = np.broadcast_to(
                    np.asarray(reference_sd.isel(sd_index).transpose(*sd_dims).values, float),
                    ref.shape,
                )
                err = np.stack([scale(ref) - scale(ref - sd), scale(ref + sd) - scale(ref)])
                ax.errorbar(
                    x_values,
                    scale(ref),
                    yerr=err,
                    fmt="k.",
                    ms=4,
                    elinewidth=0.8,
                    capsize=1.5,
                    label=f"{reference_label} ± 1 sd",
                )
            else:
                ax.plot(x_values, scale(ref), "k--", lw=1.2, label=reference_label)
        if _is_frequency(along, x_unit):
            _log_axis(ax.xaxis, ax.set_xscale)
        if phys is not None:
            _log_axis(ax.yaxis, ax.set_yscale)
        ax.set_xlabel(_label(along, x_unit))
        names, name = [], value_name
        for d, k in index.items():
            value = str(draws[d].values[k]) if d in draws.coords else str(k)
            names.append(f"{d} = {value}")
            if "y_units" in panel.coords and d in draws["y_units"].dims:
                name = value  # the component names the quantity
        if phys is not None and name.startswith("log10_"):
            name = name[len("log10_") :]  # drawn as the quantity itself, on a log axis
        ax.set_ylabel(_label(name, phys if phys is not None else unit))
        ax.set_title(", ".join(names), fontsize=9)
    for ax in list(axes.flat)[len(combos) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    title = _with_note(title, _left_out_note(left_out, values_all.size, "draws"))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def layered_profile_figure(
    tops: np.ndarray,
    draws: np.ndarray,
    *,
    truth: np.ndarray | None = None,
    log10_values: bool = False,
    value_label: str = "value",
    depth_label: str = "depth (m)",
    intervals: Sequence[float] = (0.5, 0.9),
    title: str = "",
) -> Figure:
    """Draw a layered-earth posterior as a staircase against depth, the half-space below.

    Parameters
    ----------
    tops : ndarray, shape (N,)
        Depth of the top of each entry, in m, increasing; entries ``0 .. N-2`` are layers
        (entry ``j`` spans ``[tops[j], tops[j+1]]``) and the last is the half-space below
        ``tops[-1]``.
    draws : ndarray, shape (S, N)
        Posterior draws of the layer values.
    truth : ndarray, shape (N,), optional
        True values, drawn as a dashed staircase.
    log10_values : bool, default False
        The values are decimal logarithms: draw ``10**value`` on a log axis (quantiles are
        taken before the transform, which they commute with).
    value_label : str
        Label of the value axis, with its (physical) unit.
    intervals : sequence of float
        Masses of the central intervals drawn as nested bands.

    Returns
    -------
    matplotlib.figure.Figure
        One axes, depth increasing down the page; the half-space is shaded below
        ``tops[-1]`` down to ``tops[-1]`` plus a quarter of it (at least one layer).

    Raises
    ------
    ShapeError
        If ``draws`` is not ``(S, N)``, ``tops`` not increasing, or ``truth`` not ``(N,)``.
    DataError
        If ``tops`` or ``truth`` hold NaN or inf, or a layer has no finite draw (the bands
        are quantiles of the finite draws; the title says how many values were left out).
    ConfigError
        If an interval is not in (0, 1].

    Examples
    --------
    >>> fig = layered_profile_figure(np.array([0.0, 100.0, 200.0]), np.ones((4, 3)),
    ...     log10_values=True, value_label="resistivity (ohm m)")
    >>> fig.axes[0].get_xscale(), bool(fig.axes[0].yaxis_inverted())
    ('log', True)
    """
    t = _values(tops, "tops", (None,))
    v = _values(draws, "draws", finite=False)
    if v.ndim != 2 or v.shape[1] != t.size or t.size < 2 or np.any(np.diff(t) <= 0):
        raise ShapeError(
            f"draws must be (S, N) for N = {t.size} increasing tops; got draws {v.shape}"
        )
    masses = [as_probability(m, "intervals", allow_one=True) for m in intervals]
    true = None if truth is None else _values(truth, "truth", (t.size,))
    (median,), left_out = _finite_quantiles(v, [0.5], "draws")
    bottom = t[-1] + max(0.25 * t[-1], float(t[-1] - t[-2]))
    edges = np.append(t, bottom)
    depth = np.column_stack([edges[:-1], edges[1:]]).ravel()  # (2N,) top, bottom of each

    def stairs(values: np.ndarray) -> np.ndarray:
        out = np.repeat(values, 2)
        return 10.0**out if log10_values else out

    fig, ax = _subplots(figsize=(4.2, 5.4), constrained_layout=True)
    ax.axhspan(t[-1], bottom, color="0.9", zorder=0)
    for k, mass in enumerate(sorted(masses, reverse=True)):
        (lo, hi), _ = _finite_quantiles(v, [(1 - mass) / 2, (1 + mass) / 2], "draws")
        ax.fill_betweenx(
            depth,
            stairs(lo),
            stairs(hi),
            color="C0",
            alpha=0.2 + 0.2 * k,
            lw=0,
            label=f"{mass:.0%} interval",
        )
    ax.plot(stairs(median), depth, color="C0", lw=1.2, label="median")
    if true is not None:
        ax.plot(stairs(true), depth, "k--", lw=1.2, label="truth")
    ax.axhline(t[-1], color="0.4", lw=0.8)
    ax.text(
        0.02,
        (t[-1] + bottom) / 2,
        "half-space (continues down)",
        transform=ax.get_yaxis_transform(),
        va="center",
        fontsize=8,
        color="0.3",
    )
    if log10_values:
        _log_axis(ax.xaxis, ax.set_xscale)
    ax.set_ylim(bottom, 0.0)
    ax.set_xlabel(value_label)
    ax.set_ylabel(depth_label)
    ax.set_title(_with_note(title, _left_out_note(left_out, v.size, "draws")), fontsize=9)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7)
    return fig


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

    Returns
    -------
    Path
        ``path``. Draws with a NaN or inf in any column are left out; the title says how many.

    Raises
    ------
    ShapeError
        If ``draws`` is not ``(S, K)`` or ``names`` does not hold ``K`` names.
    DataError
        If ``draws`` is not an array of real numbers, or no draw is finite in every column.
    """
    import matplotlib.pyplot as plt  # seaborn's grids are pyplot figures

    values = _values(draws, "draws", (None, None), finite=False)
    names = [str(n) for n in names]
    if len(names) != values.shape[1]:
        raise ShapeError(
            f"names must hold one name per column of draws ({values.shape[1]}), got "
            f"{len(names)}: {names}"
        )
    keep = np.isfinite(values).all(axis=1)
    if not keep.any():
        raise DataError(f"draws has no row without NaN or inf ({len(values)} rows)")
    frame = pd.DataFrame(values[keep], columns=names)
    grid = sns.pairplot(frame, corner=True, plot_kws={"s": 6, "alpha": 0.5, "edgecolor": "none"})
    note = "" if keep.all() else f"{int((~keep).sum())} of {len(keep)} draws non-finite, left out"
    title = _with_note(title, note)
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


LOG_SCALE_DECADES = 2.0
"""Positive values spanning at least this many decades (max / min >= 100) are drawn on a
logarithmic colour or value axis by :func:`fields_figure` and :func:`profile_figure`: a
resistivity from 1 to 1000 ohm m on a linear scale shows only its largest values."""


def _spans_decades(values: Sequence[np.ndarray]) -> bool:
    """Whether all finite ``values`` are positive and span :data:`LOG_SCALE_DECADES` or more."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return False
    low = min(float(v.min()) for v in finite)
    high = max(float(v.max()) for v in finite)
    return low > 0 and math.log10(high / low) >= LOG_SCALE_DECADES


def fields_figure(
    panels: Mapping[str, np.ndarray],
    *,
    extent: tuple[float, float, float, float],
    xlabel: str = "offset (m)",
    ylabel: str = "depth (m)",
    units: Mapping[str, str] | None = None,
    shared: Sequence[str] = (),
    ncols: int = 4,
    sources: tuple[np.ndarray, np.ndarray] | None = None,
    receivers: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    log_scale: bool = True,
) -> Figure:
    """Draw 2-D fields side by side (truth, posterior mean, sd, draws), each with a colour bar.

    Parameters
    ----------
    panels : mapping of title to ndarray, shape (H, W)
        Fields on the grid, row 0 at the top (depth positive downward).
    extent : (left, right, bottom, top)
        Grid edges in m for ``imshow`` (bottom is the largest depth); cells are drawn to
        scale (equal aspect).
    units : mapping of title to unit string, optional
        Colour-bar label per panel (e.g. ``"s/m"``).
    shared : sequence of str
        Titles that share one colour scale (e.g. truth, mean and draws).
    ncols : int, default 4
        Panels per row.
    sources, receivers : (offsets, depths) of ndarray, shape (K,), optional
        Source and receiver positions in m (e.g. crosshole boreholes), drawn on every panel
        as stars and triangles with the borehole as a line.

    title : str, optional
        Title of the figure.
    log_scale : bool, default True
        Whether values spanning decades may get a logarithmic colour scale (False: always
        linear, e.g. for images, whose pixel probabilities span decades without being a
        log-distributed property).

    Returns
    -------
    matplotlib.figure.Figure
        Sections wider than 1.3 times their depth get their colour bars below, so that a
        flat section is not squeezed beside a full-height bar. Positive values spanning
        :data:`LOG_SCALE_DECADES` decades or more (the shared panels together, any other
        panel alone) get a logarithmic colour scale, unless ``log_scale`` is False.

    Raises
    ------
    ConfigError
        If ``panels`` is empty or ``ncols`` not an int >= 1.
    ShapeError
        If a panel is not 2-D.
    DataError
        If a panel is not an array of real numbers or holds NaN or inf (the message names
        the panel).

    Examples
    --------
    >>> fig = fields_figure({"mean": np.zeros((4, 8))}, extent=(0.0, 16.0, 8.0, 0.0))
    >>> len(fig.axes)  # the panel and its colour bar
    2
    """
    if not isinstance(panels, Mapping) or not panels:
        raise ConfigError(
            f"panels must be a non-empty mapping of title to 2-D array, got {panels!r}"
        )
    ncols = as_count(ncols, "ncols")
    fields = {str(t): _values(v, f"panel {str(t)!r}", (None, None)) for t, v in panels.items()}
    titles = list(fields)
    nrows = math.ceil(len(titles) / ncols)
    ncols = min(ncols, len(titles))
    left, right, bottom, top = extent
    aspect = abs(right - left) / max(abs(bottom - top), 1e-12)
    wide = aspect > 1.3
    width = 3.4
    # room for the title, labels and the colour bar below (wide) or beside (otherwise)
    height = width / aspect + 1.3 if wide else 0.85 * width / min(aspect, 1.0)
    fig, axes = _subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows),
        squeeze=False,
        constrained_layout=True,
    )
    shared_values = [fields[t] for t in titles if t in shared]
    vmin = min(float(v.min()) for v in shared_values) if shared_values else None
    vmax = max(float(v.max()) for v in shared_values) if shared_values else None
    shared_log = log_scale and _spans_decades(shared_values)
    for ax, panel in zip(axes.flat, titles, strict=False):
        in_shared = panel in shared
        alone_log = log_scale and not in_shared and _spans_decades([fields[panel]])
        if (in_shared and shared_log) or alone_log:
            low, high = (vmin, vmax) if in_shared else (None, None)
            limits: dict[str, Any] = {"norm": LogNorm(vmin=low, vmax=high)}
        else:
            limits = {"vmin": vmin, "vmax": vmax} if in_shared else {}
        cmap = "magma" if "sd" in panel.lower().split() or "std" in panel.lower() else "viridis"
        image = ax.imshow(fields[panel], extent=extent, cmap=cmap, **limits)
        for points, marker, colour, name in (
            (sources, "*", "red", "source"),
            (receivers, "<", "white", "receiver"),
        ):
            if points is None:
                continue
            offsets, depths = (np.asarray(p, dtype=float) for p in points)
            for x in np.unique(offsets):
                ax.plot([x, x], [top, bottom], color="0.2", lw=2.0, clip_on=False)
            ax.plot(
                offsets,
                depths,
                marker,
                color=colour,
                mec="black",
                mew=0.6,
                ms=7,
                ls="none",
                clip_on=False,
                label=name,
                zorder=5,
            )
        margin = 0.05 * abs(right - left) if sources is not None or receivers is not None else 0
        ax.set_xlim(left - margin, right + margin)  # boreholes at the edges stay visible
        ax.set_ylim(bottom, top)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if wide:
            bar = fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, aspect=25)
        else:
            bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.07)
        bar.set_label((units or {}).get(panel, ""))
    for ax in list(axes.flat)[len(titles) :]:
        ax.set_visible(False)
    if sources is not None or receivers is not None:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def profile_figure(
    depth: np.ndarray,
    draws: np.ndarray,
    *,
    truth: np.ndarray | None = None,
    xlabel: str = "value",
    depth_label: str = "depth (m)",
    intervals: Sequence[float] = (0.5, 0.9),
    title: str = "",
) -> Figure:
    """Draw credible-interval bands of a 1-D profile of cell values against depth.

    Parameters
    ----------
    depth : ndarray, shape (N,)
        Depth of each profile value (cell centre), in m, positive downward.
    draws : ndarray, shape (S, N)
        Posterior draws of the profile.
    truth : ndarray, shape (N,), optional
        True profile, drawn dashed.
    intervals : sequence of float
        Masses of the central intervals drawn as nested bands.

    Returns
    -------
    matplotlib.figure.Figure
        One axes, depth increasing down the page. The bands are quantiles of the finite
        draws at each depth; the title says how many non-finite values were left out. Positive
        values spanning :data:`LOG_SCALE_DECADES` decades or more are drawn on a log axis.

    Raises
    ------
    ShapeError
        If ``depth`` is not 1-D, ``draws`` not ``(S, N)`` or ``truth`` not ``(N,)``.
    DataError
        If ``depth`` or ``truth`` hold NaN or inf, or a depth has no finite draw.
    ConfigError
        If an interval is not in (0, 1].

    Examples
    --------
    >>> bool(profile_figure(np.arange(3.0), np.zeros((4, 3))).axes[0].yaxis_inverted())
    True
    """
    d = _values(depth, "depth", (None,))
    v = _values(draws, "draws", (None, d.size), finite=False)
    true = None if truth is None else _values(truth, "truth", (d.size,))
    masses = [as_probability(m, "intervals", allow_one=True) for m in intervals]
    (median,), left_out = _finite_quantiles(v, [0.5], "draws")
    fig, ax = _subplots(figsize=(3.8, 5.0), constrained_layout=True)
    for k, mass in enumerate(sorted(masses, reverse=True)):
        (lo, hi), _ = _finite_quantiles(v, [(1 - mass) / 2, (1 + mass) / 2], "draws")
        ax.fill_betweenx(d, lo, hi, color="C0", alpha=0.2 + 0.2 * k, lw=0, label=f"{mass:.0%}")
    ax.plot(median, d, color="C0", label="median")
    if true is not None:
        ax.plot(true, d, "k--", lw=1.2, label="truth")
    if _spans_decades([v] if true is None else [v, true]):
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(depth_label)
    ax.set_title(_with_note(title, _left_out_note(left_out, v.size, "draws")), fontsize=9)
    ax.legend(fontsize=7)
    return fig


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

    Parameters
    ----------
    nominal : sequence of float, shape (L,)
        Credibility levels in [0, 1].
    empirical, reference : sequence of float, shape (L,)
        Fractions of truths inside; a NaN (an undefined coverage, e.g. of non-finite draws)
        leaves a gap in its curve.
    path : path
        PNG to write.
    num_observations : int, optional
        Independent truths behind each fraction (the band); none without it.

    Raises
    ------
    ShapeError
        If ``empirical`` or ``reference`` is not one value per level.
    DataError
        If ``nominal`` holds NaN or inf, or an argument is not an array of real numbers.
    ConfigError
        If ``num_observations`` is not an int >= 1.
    """
    nom = _values(nominal, "nominal", (None,))
    emp = _values(empirical, "empirical", (nom.size,), finite=False)
    ref = None if reference is None else _values(reference, "reference", (nom.size,), finite=False)
    if num_observations is not None:
        num_observations = as_count(num_observations, "num_observations")
    fig, ax = _subplots(figsize=(4.2, 4.2))
    if num_observations:
        se = np.sqrt(nom * (1 - nom) / num_observations)
        ax.fill_between(nom, nom - 2 * se, nom + 2 * se, color="0.85", label="±2 SE")
    ax.plot([0, 1], [0, 1], color="0.4", lw=1)
    ax.plot(nom, emp, "o-", label="posterior")
    if ref is not None:
        ax.plot(nom, ref, "k--", label=reference_label)
    ax.set_xlabel("credibility level of central interval")
    ax.set_ylabel("fraction of true values inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(fig, path)


_ECDF_POINTS = np.linspace(0.0, 1.0, 101)[1:-1]  # fixed, so the simultaneous bands hold


def _plot_uniform_ecdf(ax: Any, values: np.ndarray, *, difference: bool, ci_prob: float) -> None:
    """Draw the ECDF of ``values`` against U(0, 1) with ArviZ's simultaneous band into ``ax``."""
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning at import time
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

    az.plot_ecdf(
        np.asarray(values, dtype=float),
        eval_points=_ECDF_POINTS,
        cdf=lambda t: np.clip(t, 0.0, 1.0),
        difference=difference,
        confidence_bands="optimized",
        ci_prob=ci_prob,
        ax=ax,
    )


def rank_ecdf_figure(
    normalised: Mapping[str, np.ndarray], *, ci_prob: float = 0.99, ncols: int = 4
) -> Figure:
    """Draw ECDF-difference plots of SBC normalised ranks with simultaneous bands.

    Parameters
    ----------
    normalised : mapping of str to ndarray, shape (M,)
        Panel title (e.g. ``"x[3]  p = 0.41"``, ``"misfit"``) -> the ``M`` normalised ranks
        ``u`` in (0, 1) (:class:`inference.diagnostics.calibration.SBCRanks`).
    ci_prob : float, default 0.99
        Probability that the whole ECDF of ``M`` uniform values stays inside a panel's band
        (simultaneous over the panel's evaluation points, Säilynoja et al. 2022; not corrected
        across panels).
    ncols : int, default 4
        Panels per row.

    Returns
    -------
    Figure
        One panel per entry: ``ECDF(u) - u`` against ``u`` with the band; a calibrated
        posterior stays inside, a hump (ECDF above) means ranks pile low (truth below the
        draws), an S shape going up then down means ranks pile in the middle (too wide), down
        then up a U shape (too narrow).

    Raises
    ------
    ConfigError
        If ``normalised`` is empty, ``ci_prob`` not in (0, 1) or ``ncols`` not an int >= 1.
    DataError
        If a panel's ranks are empty, hold NaN or inf, or are not real numbers (the message
        names the panel).
    ShapeError
        If a panel's ranks are not 1-D.
    """
    if not isinstance(normalised, Mapping) or not normalised:
        raise ConfigError(f"normalised holds no ranks to plot (got {normalised!r})")
    ci_prob = as_probability(ci_prob, "ci_prob")
    ncols = as_count(ncols, "ncols")
    normalised = {str(t): _ranks(u, f"normalised[{str(t)!r}]") for t, u in normalised.items()}
    n = len(normalised)
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    fig, axes = _subplots(
        rows, cols, figsize=(3.0 * cols, 2.5 * rows), constrained_layout=True, squeeze=False
    )
    flat = list(axes.ravel())
    for ax, (title, u) in zip(flat, normalised.items(), strict=False):
        _plot_uniform_ecdf(ax, u, difference=True, ci_prob=ci_prob)
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalised rank", fontsize=8)
        ax.set_ylabel("ECDF - uniform", fontsize=8)
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle(
        f"SBC ranks: ECDF minus uniform, {ci_prob:.0%} simultaneous band per panel", fontsize=9
    )
    return fig


def plot_rank_ecdf(
    normalised: Mapping[str, np.ndarray], path: str | os.PathLike[str], *, ci_prob: float = 0.99
) -> Path:
    """Save :func:`rank_ecdf_figure` as PNG (atomically) and return the path."""
    return _save(rank_ecdf_figure(normalised, ci_prob=ci_prob), path)


def _ranks(values: Any, name: str) -> np.ndarray:
    """Return 1-D finite values, at least one (ranks or TARP credibilities), checked."""
    array = _values(values, name, (None,))
    if array.size == 0:
        raise DataError(f"{name} is empty; expected at least one value in [0, 1]")
    return array


def tarp_figure(values: np.ndarray, *, ci_prob: float = 0.99) -> Figure:
    """Draw the TARP expected coverage curve with a simultaneous band.

    Parameters
    ----------
    values : ndarray, shape (M,)
        TARP credibilities of the ``M`` truths, normalised
        (:func:`inference.diagnostics.calibration.tarp_values`).
    ci_prob : float, default 0.99
        Probability that the whole curve of a calibrated posterior stays inside the band.

    Returns
    -------
    Figure
        Expected coverage probability (the ECDF of ``values``) against the credibility level
        ``alpha``, with the diagonal; above the diagonal the joint posterior is too wide, below
        it too narrow (Lemos et al. 2023, figure 2).

    Raises
    ------
    DataError
        If ``values`` is empty, holds NaN or inf, or is not an array of real numbers.
    ShapeError
        If ``values`` is not 1-D.
    ConfigError
        If ``ci_prob`` is not in (0, 1).
    """
    values = _ranks(values, "values")
    ci_prob = as_probability(ci_prob, "ci_prob")
    fig, ax = _subplots(figsize=(4.2, 4.2))
    _plot_uniform_ecdf(ax, values, difference=False, ci_prob=ci_prob)
    ax.plot([0, 1], [0, 1], color="0.4", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("credibility level alpha")
    ax.set_ylabel("expected coverage probability")
    ax.set_title(f"TARP, {len(values)} held-out truths, {ci_prob:.0%} band", fontsize=9)
    return fig


def plot_tarp(
    values: np.ndarray, path: str | os.PathLike[str], *, ci_prob: float = 0.99
) -> Path:
    """Save :func:`tarp_figure` as PNG (atomically) and return the path."""
    return _save(tarp_figure(values, ci_prob=ci_prob), path)


def truth_vs_mean_figure(
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    unit: str = "",
    max_points: int = 4000,
) -> Figure:
    """Scatter posterior means (with ±1 sd bars) against true values of all elements.

    Parameters
    ----------
    truth, mean, std : ndarray, same shape
        True values, posterior means and posterior standard deviations (any event layout; a
        random subset of ``max_points`` elements is drawn).
    unit : str
        Unit of ``x`` for the axis labels.
    max_points : int, default 4000
        Elements drawn at most.

    Returns
    -------
    Figure
        One axes with the diagonal. Elements whose mean or sd is NaN or inf (non-finite
        draws) are left out; the title says how many.

    Raises
    ------
    ShapeError
        If ``mean`` or ``std`` does not have the shape of ``truth``.
    DataError
        If ``truth`` holds NaN or inf, an argument is not an array of real numbers, or no
        element has a finite mean and sd.
    ConfigError
        If ``max_points`` is not an int >= 1.

    Examples
    --------
    >>> fig = truth_vs_mean_figure(np.zeros(3), np.array([0.0, np.nan, 1.0]), np.ones(3))
    >>> fig.axes[0].get_title()
    '(1 of 3 elements with a non-finite mean or sd left out)'
    """
    t = _values(truth, "truth")
    m = _values(mean, "mean", t.shape, finite=False).reshape(-1)
    s = _values(std, "std", t.shape, finite=False).reshape(-1)
    t = t.reshape(-1)
    max_points = as_count(max_points, "max_points")
    finite = np.isfinite(m) & np.isfinite(s)
    if t.size and not finite.any():
        raise DataError(f"no element has a finite posterior mean and sd ({t.size} elements)")
    note = "" if finite.all() else (
        f"{int((~finite).sum())} of {t.size} elements with a non-finite mean or sd left out"
    )
    t, m, s = t[finite], m[finite], s[finite]
    if t.size > max_points:
        keep = np.random.default_rng(0).choice(t.size, max_points, replace=False)
        t, m, s = t[keep], m[keep], s[keep]
    label = f" ({unit})" if unit else ""
    fig, ax = _subplots(figsize=(4.4, 4.2))
    ax.errorbar(t, m, yerr=s, fmt=".", ms=2, alpha=0.3, elinewidth=0.5)
    if t.size:
        lo, hi = float(min(t.min(), m.min())), float(max(t.max(), m.max()))
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=1)
    ax.set_xlabel(f"true x{label}")
    ax.set_ylabel(f"posterior mean ± 1 sd{label}")
    if note:
        ax.set_title(f"({note})", fontsize=8)
    return fig


def plot_truth_vs_mean(
    truth: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    path: str | os.PathLike[str],
    *,
    unit: str = "",
    max_points: int = 4000,
) -> Path:
    """Save :func:`truth_vs_mean_figure` as PNG (atomically) and return the path."""
    return _save(truth_vs_mean_figure(truth, mean, std, unit=unit, max_points=max_points), path)


def plot_image_grid(
    images: np.ndarray,
    path: str | os.PathLike[str],
    *,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    cmap: str = "gray_r",
) -> Path:
    """Save a grid of grey-level or colour images.

    Parameters
    ----------
    images : ndarray, shape (rows, cols, H, W) or (rows, cols, 3, H, W)
        Pixel values in [0, 1] (drawn clipped to it): grey levels, or RGB channels first
        (the layout of ``load_image_folder(..., grayscale=False)``).
    path : path
        PNG to write.
    row_labels : sequence of str, optional
        One label per row, drawn left of it.
    title : str, optional
    cmap : str, default "gray_r"
        Colour map of grey images (``"gray_r"``: 1 black, as ink; ``"gray"``: 1 white).

    Raises
    ------
    ShapeError
        If ``images`` is not 4-D, or 5-D with 3 channels.
    """
    images = np.asarray(images)
    if images.ndim == 5 and images.shape[2] == 3:  # channels last for imshow
        images = np.clip(np.moveaxis(images, 2, -1), 0.0, 1.0)
    elif images.ndim != 4:
        raise ShapeError(
            f"images must have shape (rows, cols, H, W) or (rows, cols, 3, H, W), got "
            f"{images.shape}"
        )
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
