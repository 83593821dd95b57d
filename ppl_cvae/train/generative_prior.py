"""A generative prior for simulator-only priors: an unconditional VAE fitted on prior draws.

A problem whose prior is defined by a simulator only (``Crosshole(prior="channels")``: no
density, ``log_prior`` raises :class:`~ppl_cvae.errors.NoPriorDensityError`) can still be
sampled by MCMC in the latent space of a generative model of its prior draws (Laloy et al.
2018): ``x = g(z)`` with ``z ~ N(0, I)``. The generative model here is the package's own
:class:`~ppl_cvae.models.cvae.CVAE` with no ``y`` (``ModelConfig(y_shape=None)``,
``prior="standard_normal"``), fitted by the same SVI loop (:func:`~ppl_cvae.train.fit.fit`) on
``x ~ problem.sample_prior`` and written in the same checkpoint format: a run folder of
``ppl-cvae fit --unconditional`` is a generative prior. :mod:`inference.latent_mcmc` samples
``p(z | y)`` on it.

References
----------
Laloy, Herault, Jacques and Linde (2018), Training-image based geostatistical inversion using a
spatial generative adversarial neural network, Water Resources Research 54, 381,
doi:10.1002/2017WR022148.
Kingma and Welling (2014), Auto-Encoding Variational Bayes, arXiv:1312.6114.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, cast

import torch

from ppl_cvae.config import ModelConfig, ModelOverrides, Overrides, TrainConfig, TrainOverrides
from ppl_cvae.errors import ConfigError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.train.fit import FitResult, build_cvae, fit
from ppl_cvae.train.settings import DataSource, recommended, resolve_settings

__all__ = ["fit_generative_prior", "generative_prior_settings", "prior_simulator"]


def generative_prior_settings(
    problem: Problem | DataSource, overrides: Overrides | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """Return the settings of an unconditional VAE of the problem's prior draws.

    The problem's recommended settings (its decoder family: a Bernoulli facies decoder and
    2-D convolutions for the crosshole channels; for a problem that recommends nothing, what a
    data file of ``num_train`` prior draws without ``y`` gets,
    :func:`~ppl_cvae.train.defaults.data_settings`) updated by ``overrides``, made unconditional:
    ``y_shape=None``, ``prior="standard_normal"`` (the VAE's ``p(z) = N(0, I)``), no linear
    skip of ``y``, and no ``y`` terms in training (``physics_weight = gsnn_weight = 0``).

    Parameters
    ----------
    problem : Problem or DataSource
        With ``sample_prior`` (any problem: a simulator is enough), or the
        :class:`~ppl_cvae.train.settings.DataSource` of a file of models without ``y``
        (``fit --data FILE --unconditional``), which gets what such a file gets from
        :func:`~ppl_cvae.train.defaults.data_settings`.
    overrides : Overrides, optional
        The user's settings; they win over the recommendations, except the four fields above.

    Returns
    -------
    model_config : ModelConfig
        ``x_shape = problem.x_shape``, ``y_shape = None``.
    train_config : TrainConfig

    Raises
    ------
    ConfigError
        If the overrides ask for a ``y``-dependent part (``prior="learned"`` or ``"flow"``,
        ``linear_skip=True``, ``physics_weight > 0``, ``gsnn_weight > 0``), or a value is out
        of range (the configurations' own checks).

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> model, train = generative_prior_settings(LinearGaussian(x_dim=3, y_dim=2))
    >>> model.y_shape, model.prior, model.x_shape
    (None, 'standard_normal', (3,))
    """
    overrides = overrides or Overrides()
    user_model, user_train = overrides.model, overrides.train
    if user_model.get("prior", "standard_normal") != "standard_normal":
        raise ConfigError(
            f"a generative prior is an unconditional VAE with p(z) = N(0, I); got prior="
            f"{user_model['prior']!r} (use 'standard_normal' or leave it unset)"
        )
    if user_model.get("linear_skip"):
        raise ConfigError("a generative prior has no y: linear_skip must be False")
    for name in ("physics_weight", "gsnn_weight"):
        if float(cast(Mapping[str, Any], user_train).get(name, 0.0)) > 0:
            raise ConfigError(f"a generative prior has no y: {name} must be 0")
    if isinstance(problem, DataSource):
        if problem.y_shape is not None:
            raise ConfigError("a generative prior is fitted on models alone: the source has y")
        model, train = resolve_settings(problem, overrides)
        return _unconditional(model, train)
    problem = as_problem(problem)
    rec = recommended(problem)
    if rec.model or rec.train:
        model, train = resolve_settings(problem, overrides)
    else:  # what a file of num_train prior draws without y gets (a VAE's sizes, no flow)
        num = int(user_train.get("num_train", TrainConfig.num_train))
        source = DataSource(tuple(problem.x_shape), None, max(num, 2))
        model, train = resolve_settings(source, overrides)
    return _unconditional(model, train)


def _unconditional(model: ModelConfig, train: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    """Return the settings without their ``y`` parts (see :func:`generative_prior_settings`)."""
    model = dataclasses.replace(
        model, y_shape=None, prior="standard_normal", linear_skip=False, x_whitening="none"
    )
    train = dataclasses.replace(train, physics_weight=0.0, gsnn_weight=0.0)
    return model, train


def prior_simulator(problem: Problem) -> Any:
    """Return ``(num, generator) -> (x, None)``: prior draws only, the simulator ``fit`` takes.

    Parameters
    ----------
    problem : Problem

    Returns
    -------
    callable
        ``x`` of shape ``(num, *x_shape)`` from ``problem.sample_prior``; no ``y`` is simulated
        (the forward operator is not run).
    """
    problem = as_problem(problem)

    def simulate(num: int, generator: torch.Generator) -> tuple[torch.Tensor, None]:
        return problem.sample_prior(num, generator), None

    return simulate


def fit_generative_prior(
    problem: Problem,
    *,
    model: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[CVAE, FitResult, float]:
    """Fit an unconditional VAE on the problem's prior draws (the generative prior ``x = g(z)``).

    As :func:`~ppl_cvae.train.fit_problem`, with prior draws in place of pairs:
    ``num_train`` draws with seed ``train_config.seed + 1`` fit the standardiser (and are the
    training set unless ``resimulate``); with ``resimulate`` every epoch draws fresh ones.

    Parameters
    ----------
    problem : Problem
        With ``sample_prior``; its forward operator is not needed.
    model, train : dict, optional
        Overrides of ``ModelConfig`` / ``TrainConfig`` fields (see
        :func:`generative_prior_settings`).
    progress : bool, default False
        Show the tqdm progress bar.

    Returns
    -------
    cvae : CVAE
        The fitted unconditional VAE (``config.y_shape is None``), eval mode.
    result : FitResult
    seconds : float
        Wall-clock time of the fit.

    Raises
    ------
    ConfigError
        As :func:`generative_prior_settings`.

    Notes
    -----
    Model ``z ~ N(0, I_k)``, ``x ~ p_theta(x | z)``; guide ``q_phi(z | x)``; ``Trace_ELBO``
    (Kingma and Welling 2014). The decoder's location ``g(z) = E[x | z]`` (for a Bernoulli
    decoder the facies probability field) is the generator of Laloy et al. (2018).
    """
    problem = as_problem(problem)
    overrides = Overrides(
        model=cast(ModelOverrides, dict(model or {})),
        train=cast(TrainOverrides, dict(train or {})),
    )
    config, train_config = generative_prior_settings(problem, overrides)
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    simulate = prior_simulator(problem)
    x, _ = simulate(train_config.num_train, gen)
    cvae = build_cvae(config, x, None, problem=problem, seed=train_config.seed)
    start = time.perf_counter()
    result = fit(cvae, x, None, train_config, simulator=simulate, progress=progress)
    return cvae, result, time.perf_counter() - start
