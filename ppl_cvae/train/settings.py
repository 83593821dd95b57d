"""One place where a run's settings are decided: :func:`resolve_settings`.

A fit's :class:`~ppl_cvae.config.ModelConfig` and :class:`~ppl_cvae.config.TrainConfig` come
from layers of :class:`~ppl_cvae.config.Overrides`, later layers winning field by field:

1. the library defaults (the dataclass defaults);
2. what the training source recommends: a problem's ``recommended_settings()`` (for a problem
   that recommends nothing, a user's own typically, what a data file of its ``num_train``
   simulations would get, below: the family chosen from the sizes of ``x`` and ``y``); for a
   data file, :func:`~ppl_cvae.train.defaults.data_settings` (sizes and epochs adapted to the
   file), with a named problem's *model* recommendations on top (a basis decoder, say: the
   file fixes the data, so the problem's training schedule does not apply); for an image
   dataset, :func:`~ppl_cvae.train.defaults.image_settings`;
3. the user's overrides (``fit_problem(model=..., train=...)``; for ``ppl-cvae fit``, a run
   file given by ``--config`` with the command-line flags on top).

``ppl-cvae fit``, :func:`~ppl_cvae.train.fit_problem`, the examples and the benchmarks all go
through :func:`resolve_settings`, so a recommendation is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast

import torch

from ppl_cvae.config import (
    WHITENED_LIKELIHOODS,
    ModelConfig,
    ModelOverrides,
    Overrides,
    TrainConfig,
    bounds_box,
)
from ppl_cvae.data.box import support_box
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem, facies_family
from ppl_cvae.train.defaults import data_settings, image_settings

__all__ = [
    "GAUSSIAN_U_MOMENT",
    "LOOSE_BOX_SDS",
    "MIN_MODELS_FOR_MOMENTS",
    "MODELS_FOR_BOX",
    "DataSource",
    "recommended",
    "resolve_settings",
]

Decoder = Literal["auto", "network", "basis"]


@dataclass(frozen=True)
class DataSource:
    """Shapes and size of a fixed set of training pairs (a data file or an image dataset).

    Parameters
    ----------
    x_shape : tuple of int
        Event shape of one ``x``.
    y_shape : tuple of int or None
        Event shape of one ``y``; None for an unconditional VAE (images without labels).
    num_pairs : int
        Number of pairs, before the validation split.
    dataset : {"digits", "mnist", "folder"} or None, default None
        The image dataset the pairs come from (its recommendations apply); None for a data
        file (settings adapted to the shapes and size apply).
    lazy : bool, default False
        Whether the pairs are read in chunks (``--lazy``): the standardisers then come from
        moments of ``x`` itself, so ``x_transform`` stays ``"none"`` unless the user sets it.
    x_sample : Tensor or None, default None
        Up to :data:`MODELS_FOR_BOX` of the training ``x``, shape ``(K, *x_shape)``
        (:meth:`of` draws them): how they sit in a box decides the whitening with
        ``x_transform="support"``. None when unknown (the whitening then goes).

    Examples
    --------
    >>> DataSource.of(torch.zeros(100, 3), torch.zeros(100, 2))
    DataSource(x_shape=(3,), y_shape=(2,), num_pairs=100, dataset=None, lazy=False)
    """

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...] | None
    num_pairs: int
    dataset: str | None = None
    lazy: bool = False
    x_sample: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor | None, dataset: str | None = None) -> DataSource:
        """Describe the pairs ``x`` ``(N, *x_shape)`` and ``y`` ``(N, *y_shape)`` (or None).

        ``x_sample`` holds :data:`MODELS_FOR_BOX` rows of a real ``x`` drawn without
        replacement (a generator seeded 0; all rows when there are no more).
        """
        y_shape = tuple(y.shape[1:]) if y is not None else None
        sample = None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 1:
            rows = x.shape[0]
            if rows > MODELS_FOR_BOX:
                pick = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
                sample = x[pick[:MODELS_FOR_BOX]]
            else:
                sample = x
        return cls(tuple(x.shape[1:]), y_shape, int(x.shape[0]), dataset, x_sample=sample)


MODELS_FOR_BOX = 2048
"""Models (prior draws of a problem, rows of a data file) that :func:`resolve_settings` sets
in the box of a flow on ``x`` to decide the whitening (:data:`LOOSE_BOX_SDS`,
:data:`GAUSSIAN_U_MOMENT`)."""

LOOSE_BOX_SDS = 1.0
"""A box (a declared support, ``x_bounds``) is loose when each finite face lies at least this
many sds of the models beyond their extreme in every element: ``T^{-1}`` is then close to
linear over them, and the linear whitening is kept with ``x_transform="support"``
(docs/measurements.md, "A user's bounded prior")."""

GAUSSIAN_U_MOMENT = 0.5
"""The whitening is kept, too, when ``u = T^{-1}(x)`` of the models is near Gaussian in every
element: absolute skewness and excess kurtosis at most this (a lognormal ``x`` on
``positive``: ``log x`` is Gaussian). ``U(0, 1)`` gives a logistic ``u`` (excess kurtosis
1.2), where the whitening was measured to hurt. Judged on at least
:data:`MIN_MODELS_FOR_MOMENTS` models (the sd of a kurtosis estimate is ``sqrt(24 / K)``)."""

MIN_MODELS_FOR_MOMENTS = 500
"""Fewest models whose skewness and kurtosis :data:`GAUSSIAN_U_MOMENT` judges."""


def _flow_boxes(
    model: ModelOverrides,
    source: Problem | DataSource,
    problem: Problem | None,
    x_shape: tuple[int, ...],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return the boxes with a finite end of a fit's flow on ``x`` (``x_transform`` default).

    A flow on ``x`` itself (``likelihood="flow"``, no basis) of a problem whose declared
    support is a box (:func:`~ppl_cvae.data.box.support_box`) or with ``x_bounds``, at least
    one end finite; not for a lazily read file. Fitted on ``T^{-1}(x)`` no draw leaves the
    box and none is rejected (docs/measurements.md, "A user's bounded prior": a better
    validation ELBO on every seed, and for 12 bounded values 15 s of draws instead of 273 s
    of rejection). An empty list where none applies.
    """
    if model.get("likelihood") != "flow" or model.get("basis_dim") is not None:
        return []
    if isinstance(source, DataSource) and (source.lazy or source.dataset is not None):
        return []
    boxes = []
    if problem is not None:
        boxes.append(support_box(as_problem(problem).support, x_shape))
    bounds = model.get("x_bounds")
    if bounds is not None:
        try:
            boxes.append(bounds_box(bounds, x_shape))
        except ConfigError:  # refused by name when the configuration is built
            return []
    return [
        box
        for box in boxes
        if box is not None and bool((torch.isfinite(box[0]) | torch.isfinite(box[1])).any())
    ]


def _prior_sample(problem: Problem, seed: int) -> torch.Tensor | None:
    """Return :data:`MODELS_FOR_BOX` prior draws of ``problem``, shape ``(K, *x_shape)``, or None.

    Drawn from a generator seeded ``seed`` with torch's global RNG left as it was; None when
    ``sample_prior`` raises or returns anything but real models of ``x_shape`` (the checks
    before the fit name those).
    """
    problem = as_problem(problem)
    try:
        with torch.random.fork_rng(devices=[]):
            x = problem.sample_prior(MODELS_FOR_BOX, torch.Generator().manual_seed(seed))
    except Exception:  # noqa: BLE001 - a user's code; check_support names what went wrong
        return None
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (MODELS_FOR_BOX, *problem.x_shape):
        return None
    return x if x.is_floating_point() else None


def _models_sample(
    source: Problem | DataSource, problem: Problem | None, seed: int
) -> torch.Tensor | None:
    """Return models of the training ``x``: a data source's sample, else the problem's prior."""
    if isinstance(source, DataSource):
        return source.x_sample
    return None if problem is None else _prior_sample(problem, seed)


def _keeps_whitening(
    boxes: list[tuple[torch.Tensor, torch.Tensor]], sample: torch.Tensor | None
) -> bool:
    """Whether the linear whitening suits the flow on ``u = T^{-1}(x)`` of the box of ``boxes``.

    True when the box (the intersection of ``boxes``) is loose around the models
    (:data:`LOOSE_BOX_SDS`: every finite face at least that many sds beyond their extreme;
    an element constant in every model counts when it lies off the faces), or when ``u`` of
    the models is near Gaussian in every element (:data:`GAUSSIAN_U_MOMENT`, no model on a
    face). False without models, or with values that are not finite.
    """
    if sample is None or sample.shape[0] < 2 or not boxes:
        return False
    x = sample.detach().to(torch.float64).reshape(sample.shape[0], -1)
    if not bool(torch.isfinite(x).all()):
        return False
    low = torch.stack([b[0].to(torch.float64).reshape(-1) for b in boxes]).amax(0)
    high = torch.stack([b[1].to(torch.float64).reshape(-1) for b in boxes]).amin(0)
    gap = torch.minimum(x.amin(0) - low, high - x.amax(0))  # inf where both ends are open
    if bool((gap <= 0).any()):
        return False  # a model on a face (or outside: refused by the fit)
    sd = x.std(0)
    margin = torch.where(sd > 0, gap / sd.clamp_min(1e-300), torch.full_like(gap, torch.inf))
    if bool((margin >= LOOSE_BOX_SDS).all()):
        return True
    if x.shape[0] < MIN_MODELS_FOR_MOMENTS:
        return False
    both = torch.isfinite(low) & torch.isfinite(high)
    width = torch.where(both, high - low, torch.ones_like(low))
    t = ((x - torch.where(both, low, 0.0)) / width).clamp(1e-300, 1 - 1e-16)
    one = torch.where(torch.isfinite(low), x - low, high - x)  # distance from the one end
    u = torch.where(
        both,
        torch.log(t) - torch.log1p(-t),
        torch.where(torch.isfinite(low) | torch.isfinite(high), torch.log(one), x),
    )
    centred = u - u.mean(0)
    var = centred.pow(2).mean(0)
    moving = var > 0  # a constant u is Gaussian enough (its element is off the faces)
    var = torch.where(moving, var, torch.ones_like(var))
    skew = centred.pow(3).mean(0) / var.pow(1.5)
    kurtosis = centred.pow(4).mean(0) / var.pow(2) - 3
    near = (skew.abs() <= GAUSSIAN_U_MOMENT) & (kurtosis.abs() <= GAUSSIAN_U_MOMENT)
    return bool((near | ~moving).all())


def _facies_for_support(overrides: Overrides, problem: Problem | None) -> Overrides:
    """Choose the facies decoder a discrete declared support needs, unless the user chose.

    ``constraints.boolean`` gives ``likelihood="bernoulli"``, ``integer_interval(0, K - 1)``
    gives ``"categorical"`` with ``num_facies=K``
    (:func:`~ppl_cvae.problems.base.facies_family`): a density on ``R^n`` would be
    degenerate there. Taken as the user's choice, so recommendations that contradict it
    (a flow's ``latent_dim=0``, whitening) give way.
    """
    family = None if problem is None else facies_family(as_problem(problem).support)
    if family is None or "likelihood" in overrides.model:
        return overrides
    model = dict(overrides.model)
    model["likelihood"] = family[0]
    if family[0] == "categorical":
        model.setdefault("num_facies", family[1])
    return Overrides(model=cast(ModelOverrides, model), train=overrides.train)


def recommended(problem: Problem) -> Overrides:
    """Return a problem's recommended settings (empty when it recommends nothing).

    Parameters
    ----------
    problem : Problem
        A problem (or a duck-typed one, see :func:`~ppl_cvae.problems.base.as_problem`);
        its ``recommended_settings()`` (default: none) may return
        :class:`~ppl_cvae.config.Overrides` or a ``{"model": ..., "train": ...}`` dict.

    Raises
    ------
    ConfigError
        If the recommendation is neither, or names a field the configurations do not have.
    """
    problem = as_problem(problem)
    return Overrides.coerce(
        problem.recommended_settings(), f"recommended_settings() of problem {problem.name!r}"
    )


def _source_layer(
    source: Problem | DataSource, problem: Problem | None, user: Overrides
) -> tuple[Overrides, tuple[int, ...], tuple[int, ...] | None]:
    """Return the source's recommendation layer, ``x_shape`` and ``y_shape``.

    A data file's flow recommendation (a small ``x``) applies unless a named problem recommends
    a model (its recommendation is then the family) or the user chose another likelihood. A problem
    that recommends nothing (a user's own, typically) gets what a data file of its
    ``num_train`` simulations would: the same pairs, so the same family and schedule.
    """
    user_likelihood = user.model.get("likelihood")
    if not isinstance(source, DataSource):  # a problem: it simulates its own pairs
        x_shape, y_shape = tuple(source.x_shape), tuple(source.y_shape)
        layer = recommended(source)
        if not layer.model and not layer.train:
            num_pairs = int(user.train.get("num_train", TrainConfig.num_train))
            flow = user_likelihood in (None, "flow")
            layer = data_settings(x_shape, y_shape, max(num_pairs, 2), flow=flow)
        return layer, x_shape, y_shape
    if problem is not None and tuple(problem.x_shape) != source.x_shape:
        raise ShapeError(
            f"x in the training data has event shape {source.x_shape}; problem "
            f"{problem.name!r} expects {tuple(problem.x_shape)}"
        )
    if source.dataset is not None:
        layer = image_settings(source.dataset)
    else:
        # a named problem's model recommendation is the family; one that recommends no model
        # (a user's own, named for its physics) leaves the file's
        model = recommended(problem).model if problem is not None else ModelOverrides()
        flow = not model and user_likelihood in (None, "flow")
        layer = data_settings(source.x_shape, source.y_shape, source.num_pairs, flow=flow)
        if model:  # the problem's model (e.g. a basis decoder), not its schedule
            if model.get("basis_dim") is not None:  # a basis decoder has no linear y path
                layer.model.pop("linear_skip", None)
            layer = layer.updated(Overrides(model=model))
    return layer, source.x_shape, source.y_shape


def resolve_settings(
    source: Problem | DataSource,
    overrides: Overrides | None = None,
    *,
    problem: Problem | None = None,
    decoder: Decoder = "auto",
) -> tuple[ModelConfig, TrainConfig]:
    """Decide a fit's model and training configuration from its source and the user's overrides.

    Parameters
    ----------
    source : Problem or DataSource
        A problem (pairs simulated from it; its ``recommended_settings()`` apply, or, when it
        recommends nothing, :func:`~ppl_cvae.train.defaults.data_settings` for ``num_train``
        pairs), or the shapes and size of fixed training pairs (see the module docstring for
        the layers).
    overrides : Overrides, optional
        The user's settings; they win over every recommendation.
    problem : Problem, optional
        With a :class:`DataSource`: the problem that produced the data (its forward operator
        and its model recommendations; its ``x_shape`` must match the data's).
    decoder : {"auto", "network", "basis"}, default "auto"
        ``"network"`` drops a recommended basis decoder (``basis_dim``,
        ``constrained_coefficients``); ``"basis"`` decodes coefficients of the problem's
        ``basis()`` (``basis_dim`` defaults to its number of columns); ``"auto"`` keeps what
        the layers say.

    Returns
    -------
    model_config : ModelConfig
        With the event shapes of the source; ``prior="standard_normal"`` when there is no
        ``y`` and no layer sets the prior (an unconditional VAE has no prior net). A
        recommendation that contradicts the family the user chose gives way: with
        ``likelihood="flow"`` a recommended ``linear_skip`` is dropped (a recommended basis
        stays: the flow is then on its coefficients), a recommended ``latent_dim=0`` (a
        flow on ``x``) is dropped when the user picks another likelihood, and a recommended
        ``x_whitening="linear"`` (with its ``init_scale``) is dropped for a likelihood or basis
        decoder it does not apply to and for ``x_transform="support"`` when the training
        models come within :data:`LOOSE_BOX_SDS` sds of a face of the box and their ``u =
        T^{-1}(x)`` is not near Gaussian (:data:`GAUSSIAN_U_MOMENT`): ``x`` mapped onto a box
        is not linear in ``y`` near its faces. The models are a data source's
        :attr:`DataSource.x_sample`, or :data:`MODELS_FOR_BOX` draws of the problem's
        ``sample_prior``. A flow on ``x`` itself (no basis) whose prior has a box
        with a finite end (the problem's declared support, :func:`~ppl_cvae.data.box.support_box`,
        or ``x_bounds``) gets ``x_transform="support"`` unless the user sets it (not for a
        lazily read file). A problem whose declared support is discrete (booleans, codes
        ``0 .. K - 1``) gets the facies decoder that fills it (``"bernoulli"``, or
        ``"categorical"`` with ``num_facies=K``) unless the user sets the likelihood.
    train_config : TrainConfig

    Raises
    ------
    ConfigError
        If a value is invalid (the configurations' own checks), ``decoder="basis"`` has no
        problem with a ``basis()``, or ``decoder`` is not one of the three names.
    ShapeError
        If ``problem.x_shape`` differs from the event shape of ``x`` in a data source.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> model, train = resolve_settings(LinearGaussian(x_dim=2, y_dim=2), Overrides(
    ...     train={"num_epochs": 3}))
    >>> model.latent_dim, train.num_epochs
    (4, 3)
    """
    if decoder not in ("auto", "network", "basis"):
        raise ConfigError(f"decoder must be 'auto', 'network' or 'basis', got {decoder!r}")
    if not isinstance(source, DataSource):
        problem = source
    overrides = _facies_for_support(overrides or Overrides(), problem)
    user = overrides.model
    layer, x_shape, y_shape = _source_layer(source, problem, overrides or Overrides())
    layers = layer.updated(overrides or Overrides())
    model, train = layers.model.copy(), layers.train.copy()
    # a recommendation that contradicts the user's own choice of family gives way to it
    if model.get("likelihood") == "flow":
        if "linear_skip" not in user:
            model.pop("linear_skip", None)
    elif model.get("latent_dim") == 0 and "latent_dim" not in user:
        model.pop("latent_dim")  # no latent suits a flow only: the library default
    if y_shape is None:
        model.setdefault("prior", "standard_normal")
    if decoder == "network":
        model.pop("basis_dim", None)
        model.pop("constrained_coefficients", None)
    elif decoder == "basis":
        basis = as_problem(problem).basis() if problem is not None else None
        if basis is None:
            raise ConfigError("decoder='basis' (--decoder basis) needs a problem with a basis()")
        model.setdefault("basis_dim", int(basis.shape[1]))
    boxes = _flow_boxes(model, source, problem, x_shape)
    if "x_transform" not in user and boxes:
        model["x_transform"] = "support"
    if "x_whitening" not in user and model.get("x_whitening") == "linear":
        likelihood = model.get("likelihood", "gaussian")
        if likelihood not in WHITENED_LIKELIHOODS or model.get("basis_dim") is not None:
            model.pop("x_whitening")  # a facies, fixed-scale or basis decoder: not whitened
        elif model.get("x_transform") == "support" and not _keeps_whitening(
            boxes, _models_sample(source, problem, int(train.get("seed", TrainConfig.seed)))
        ):
            # x mapped onto a box its models come close to is not linear in y there: the
            # regression's residual would carry the nonlinearity into the flow's tails
            # (docs/measurements.md, bounded prior); far from every face, or where the map
            # makes the models Gaussian (log of a lognormal), it is near linear
            model.pop("x_whitening")
    if (
        layer.model.get("x_whitening") == "linear"
        and model.get("x_whitening", "none") != "linear"
        and "init_scale" not in user
    ):
        model.pop("init_scale", None)  # the unit scale recommended with the whitening goes too
    return (
        ModelConfig(x_shape=x_shape, y_shape=y_shape, **model),
        TrainConfig(**train),
    )
