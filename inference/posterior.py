"""Amortized posterior draws of ``x`` given observations ``y`` (a thin layer over Predictive).

The approximate posterior of a trained CVAE is
``q(x | y) = integral p_theta(x | z, y) p_theta(z | y) dz``: ``z`` from the prior net,
``x`` from the decoder. :func:`draw_posterior` runs the Pyro ``model`` forward with
``pyro.infer.Predictive(..., parallel=True)``: the prior net and the ``y`` branch of the
decoder run once per observation, the decoder body once per draw, with no Python loop over draws.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as pyro_dist
import torch
from pyro.infer import Predictive

from inference.importance import ImportanceResult, importance_sample
from inference.training_range import check_training_range
from ppl_cvae._memory import check_memory
from ppl_cvae.checks import (
    as_count,
    as_real_tensor,
    as_sample_shape,
    as_seed,
    check_problem_matches,
    check_type,
    reshape_hint,
    seeded_rng,
    shape_text,
)
from ppl_cvae.config import ModelConfig
from ppl_cvae.data.box import box_support, support_box
from ppl_cvae.device import module_device, resolve_device
from ppl_cvae.errors import ConfigError, DataError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import (
    FACIES_LIKELIHOODS,
    Problem,
    check_facies_support,
    check_support,
    check_support_dimension,
    describe_support,
)
from ppl_cvae.problems.densities import checked_forward
from ppl_cvae.problems.metadata import derived_quantities

__all__ = [
    "CVAEPosterior",
    "FAR_WARNING",
    "MIN_SUPPORT_ACCEPTANCE",
    "SUPPORT_MASS_BYTES",
    "PosteriorDraws",
    "as_observation_batch",
    "bytes_per_draw",
    "draw_posterior",
    "warn_far_observations",
    "within_run_bounds",
]


@dataclass(frozen=True)
class PosteriorDraws:
    """Posterior draws for ``M`` observations.

    Attributes
    ----------
    x : Tensor, shape (num_samples, M, *x_shape)
        Subsurface models in physical units (decoder noise included or not, see
        ``decoder_noise``).
    z : Tensor, shape (num_samples, M, latent_dim)
        Latent codes drawn from the prior net.
    y_rep : Tensor, shape (num_samples, M, *y_shape), or None
        Posterior predictive ``F(x) + noise`` when a problem with a forward operator was given.
    decoder_noise : bool
        Whether ``x`` includes the decoder's noise (site ``"x"``) or is its mean (``"x_mean"``).
    x_mean : Tensor, shape (num_samples, M, *x_shape), or None
        The decoder mean ``E[x | z, y]`` of every draw (site ``"x_mean"``), units of ``x``; for
        a Bernoulli facies decoder the probability of facies 1 given ``z``, whose average over
        draws estimates the posterior facies probability with less Monte Carlo noise than the
        average of the binary draws (Rao-Blackwellisation). None where not recorded (refined
        draws).
    y_model : Tensor, shape (num_samples, M, *y_shape), or None
        ``F(x)``, the noise-free data every draw predicts (``y_rep`` before the noise is
        added), units of ``y``; kept so that the likelihood and misfit of the draws need no
        second run of the forward operator. None where not recorded.
    support_acceptance : Tensor, shape (M,), or None
        float64: the fraction of the amortized posterior's draws that fell in the prior's
        support (:meth:`Problem.in_support <ppl_cvae.problems.base.Problem.in_support>`) per
        observation, the others having been rejected; None where no support was checked.
    """

    x: torch.Tensor
    z: torch.Tensor
    y_rep: torch.Tensor | None
    decoder_noise: bool
    x_mean: torch.Tensor | None = None
    y_model: torch.Tensor | None = None
    support_acceptance: torch.Tensor | None = None


def as_observation_batch(
    y: torch.Tensor | np.ndarray | list[Any], y_shape: tuple[int, ...]
) -> tuple[torch.Tensor, bool]:
    """Return ``y`` as a float32 batch ``(M, *y_shape)`` and whether it was already stacked.

    A NumPy array or a list of numbers is accepted as sbi accepts it, and every real dtype
    is cast to the networks' float32 (:func:`ppl_cvae.checks.as_real_tensor`); a tensor
    keeps its device.

    Raises
    ------
    ShapeError
        If ``y`` is neither ``y_shape`` nor ``(M, *y_shape)``.
    DataError
        If ``y`` is not a tensor, array or list of real numbers, or is a stack of no
        observations (``M = 0``: an array without values, as an empty observation file).
    """
    y = as_real_tensor(y, "y")
    y_shape = tuple(y_shape)
    if tuple(y.shape) == y_shape:
        return y.unsqueeze(0), False
    if y.dim() == len(y_shape) + 1 and tuple(y.shape[1:]) == y_shape:
        if y.shape[0] == 0:
            raise DataError(
                f"observation stack has shape {tuple(y.shape)}: no observations; pass at "
                f"least one, shape {y_shape} or {shape_text('M >= 1', y_shape)}"
            )
        return y, True
    raise ShapeError(
        f"observation has shape {tuple(y.shape)}; the model expects {y_shape} "
        f"or a stack {shape_text('M', y_shape)}{reshape_hint(y.shape, y_shape)}"
    )


def bytes_per_draw(
    cvae: CVAE, num_observations: int, *, problem: Problem | None = None, oversample: int = 1
) -> int:
    """Estimate the peak working memory of one posterior draw for ``num_observations``.

    Counts float32 ``x`` (draw, decoder mean and scale), ``z`` (draw, loc, scale), the hidden
    activations of the decoder, the temporaries of a spline flow's draw (on ``x`` and on
    ``z``: ``_flow_draw_floats``), and with a problem the posterior predictive, the forward
    operator's output, the float64 residual, temporaries and pointwise log-likelihood of the
    posterior file (:func:`inference.sample.inference_data_from_draws`) and the problem's derived
    quantities of ``x``; refinement multiplies by
    ``oversample`` candidates and four copies of each candidate (value, gradient, two Adam
    moments).

    Returns
    -------
    int
        Bytes per draw (all observations together).
    """
    config = cvae.config
    y_dim = math.prod(config.y_shape or (0,))
    per = 3 * config.x_dim + 3 * config.latent_dim + 2 * sum(config.hidden_dims)
    if config.likelihood == "flow":  # the flow on x, or on the basis coefficients
        dim = config.basis_dim if config.basis_dim is not None else config.x_dim
        hidden = sum(config.flow_hidden_dims) if config.latent_dim > 0 else 0  # z per draw
        per += _flow_draw_floats(
            dim, config.flow_layers, config.flow_bins, "autoregressive", hidden
        )
    if config.prior == "flow":
        layers = config.prior_flow_layers + (config.prior_flow_final == "spline")
        per += _flow_draw_floats(
            config.latent_dim, layers, config.flow_bins, config.prior_flow_type
        )
    if problem is not None:
        # y_rep, F(x); float64 residual, two temporaries and the log-likelihood (2 units each)
        per += 10 * y_dim
        with torch.no_grad():  # derived quantities of x (e.g. slowness of facies): x-sized each
            derived = derived_quantities(problem, torch.zeros(1, *config.x_shape))
        per += config.x_dim * len(derived)
    per *= num_observations * 4
    return per * (4 * oversample if oversample > 1 else 1)



def _flow_draw_floats(
    dim: int, layers: int, bins: int, layer_type: str, hidden: int = 0
) -> int:
    """Float32 values one draw of a spline flow on ``dim`` values holds at its peak (a bound).

    Pyro's rational-quadratic spline keeps dozens of temporaries per value and bin, and an
    autoregressive layer draws in ``dim`` sequential passes of the whole layer, so the peak
    grows with ``dim`` times the spline's parameters, ``dim (3 bins - 1)``. Measured peaks
    (resident memory of 10,000-20,000 draws of an untrained flow, torch 2.13, 1 thread): 4.5,
    13-17, 28-30, 158-176 and 340-393 KB per draw of a five-layer autoregressive flow on 2,
    4, 8, 20 and 32 values (10 bins; 269-289 KB with 20 bins, 72 KB with one layer; the
    conditioning network's width hardly matters when its context is one per observation),
    220-248 KB on 20 values when the context holds a latent drawn per draw, and 1.5-19 KB
    beyond the Gaussian prior net for two coupling layers on a latent of 8-64 values. The
    bound: ``params (30 + 4 dim)`` values for an autoregressive flow of any number of layers
    (1.6-2.1 times the measured peaks), plus ``2 layers dim hidden`` when the context is per
    draw (``hidden``: the summed widths of the conditioning network; 1.5 times), two per
    parameter and layer for coupling and elementwise layers (1.3-2.3 times).
    """
    if layers == 0 or dim == 0:
        return 0
    params = dim * (3 * bins - 1)
    if layer_type == "autoregressive" and dim > 1:
        return params * (30 + 4 * dim) + 2 * layers * dim * hidden
    return 2 * layers * params


def _out_of_range(cvae: CVAE, y: torch.Tensor, bad: torch.Tensor | None) -> DataError | None:
    """Return the error for observations so far from the training ``y`` that the nets overflow.

    ``bad`` (shape ``(M,)``) marks the observations whose draws are not finite (None: not
    known, the networks raised). Returns None when no observation is more than
    :data:`FAR_FROM_TRAINING` training standard deviations from the training mean (the
    failure then has another cause).
    """
    sds = _training_sds(cvae, y)
    if sds is None:
        return None
    u = sds.flatten(1).amax(1)  # (M,), training standard deviations, float64
    far = ~(u <= FAR_FROM_TRAINING)
    if bad is not None:
        far &= bad
    if not bool(far.any()):
        return None
    first = int(far.nonzero()[0, 0])
    return DataError(
        f"observation {first} (and {int(far.sum()) - 1} more) lies {float(u[first]):.3g} "
        "training standard deviations from the mean of the y the model was trained on; the "
        "networks overflow float32 there: check its units and scale against the training data"
    )


def _training_sds(cvae: CVAE, y: torch.Tensor) -> torch.Tensor | None:
    """``|y - mean| / std`` of the model's ``y`` standardiser, float64 on the CPU; None without.

    ``y`` ``(M, *y_shape)`` in physical units; the result has its shape, in training standard
    deviations (an element constant in training keeps ``std = 1``: its own units).
    """
    standardiser = cvae.y_standardiser
    if standardiser is None:
        return None
    with torch.no_grad():
        u = standardiser(y.detach().to(standardiser.mean.device, torch.float64))
    return u.abs().cpu()


FAR_FROM_TRAINING = 1e6
"""Training standard deviations beyond which an observation is named as the reason when the
networks give non-finite draws (a plausible observation lies within a few)."""

FAR_WARNING = 10.0
"""Training standard deviations from the training mean beyond which an element of an
observation is warned of (:func:`warn_far_observations`). By Chebyshev's inequality at most
``1 / FAR_WARNING**2`` (1%) of any training set lies this far out, whatever its distribution,
and none of a Gaussian one (the largest of 10^6 standard normal values is about 5)."""


def warn_far_observations(cvae: CVAE, y: torch.Tensor, *, stacklevel: int = 2) -> int:
    """Warn when an element of an observation lies far outside the model's training ``y``.

    The amortized posterior of a CVAE is learned from the training pairs only: for an
    observation far outside them the networks extrapolate, and their draws are finite but
    have no reason to be right (on a linear-Gaussian file, an element 100 training sds out
    gave finite draws without a word). Each element is measured in training standard
    deviations from the training mean, ``|y - mean| / std`` (the model's ``y_standardiser``;
    an element constant in training keeps ``std = 1``, in its own units); more than
    :data:`FAR_WARNING` (10) is warned of once, naming the first such observation and
    element, its value, the training mean and sd, and how many values are that far.

    Parameters
    ----------
    cvae : CVAE
        A conditional model (an unconditional one is left alone).
    y : Tensor, shape (M, *y_shape)
        Observations in physical units, finite.
    stacklevel : int, default 2
        Passed to ``warnings.warn`` (2: the caller of this function).

    Returns
    -------
    int
        The number of values more than :data:`FAR_WARNING` training sds out (0: no warning).

    Warns
    -----
    UserWarning
        If any element lies more than :data:`FAR_WARNING` training sds from the training mean.

    Examples
    --------
    >>> from ppl_cvae import CVAE, ModelConfig
    >>> cvae = CVAE(ModelConfig(x_shape=(3,), y_shape=(2,), hidden_dims=(8,)))
    >>> warn_far_observations(cvae, torch.zeros(4, 2))
    0
    """
    u = _training_sds(cvae, y) if y.numel() else None
    if u is None:
        return 0
    standardiser = cvae.y_standardiser
    assert standardiser is not None  # _training_sds gave values
    y64 = y.detach().to("cpu", torch.float64)
    mean, std = standardiser.mean.cpu().double(), standardiser.std.cpu().double()
    far = u > FAR_WARNING  # NaN is not far: the samplers refuse it with their own error
    count = int(far.sum())
    if not count:
        return 0
    first = int(far.flatten().nonzero()[0])
    index = [int(i) for i in np.unravel_index(first, tuple(u.shape))]
    obs, element = index[0], tuple(index[1:])
    where = ", ".join(map(str, element))
    warnings.warn(
        f"observation {obs}, y[..., {where}] = {float(y64[(obs, *element)]):.6g} lies "
        f"{float(u[(obs, *element)]):.3g} training standard deviations from the mean of the "
        f"training y there ({float(mean[element]):.6g}, sd {float(std[element]):.3g}); "
        f"{count} value(s) of {u.shape[0]} observation(s) lie more than {FAR_WARNING:g} sds "
        "out, where at most 1% of any training set lies (Chebyshev): the networks extrapolate "
        "there and the amortized posterior has no reason to be right; check the units and the "
        "offset of the observation against the training data",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return count


SUPPORT_MASS_BYTES = 256 * 2**20
"""Working memory of the draws :meth:`CVAEPosterior.log_prob` makes at a time to estimate the
mass of the amortized posterior in a restricted support (observations are taken in chunks)."""

MIN_SUPPORT_ACCEPTANCE = 1e-3
"""Fraction of amortized draws in the prior's support below which :func:`draw_posterior` stops.

Rejection needs ``1 / acceptance`` proposals per kept draw; below this it would run a thousand
times the requested work, and the draws it kept would say little about the posterior."""


ROUND_GROWTH = 4
"""Largest round of rejection (:func:`draw_posterior` in a restricted support) as a multiple of
the first. A round costs a fixed 0.4 s plus 0.8 ms per draw of a 20-value spline flow at one
thread (``benchmarks/support_rejection.py``), and its memory grows with its draws (about
120 KB each there, beyond what :func:`bytes_per_draw` counts): larger rounds would save
little time and risk the memory."""


def within_run_bounds(
    problem: Problem, bounds: tuple[torch.Tensor, torch.Tensor] | None
) -> Problem:
    """Return ``problem`` with its declared support cut to a run's ``x_bounds``.

    A run's ``x_bounds`` (:class:`~ppl_cvae.config.ModelConfig`; ``fit --x-bounds``) are part
    of the prior it was fitted on, typically a data file's. Amortized draws are kept inside
    them; the corrections (importance sampling, NUTS, refinement) read the support from the
    problem, so they get a shallow copy of it whose :attr:`~ppl_cvae.problems.base.Problem.support`
    is the box of its own (``R^n`` if it declares none) intersected with the bounds:
    importance sampling weighs proposals outside zero, NUTS samples in the box's
    unconstrained coordinates, refinement steps stay inside. The problem's ``log_prior`` is
    unchanged (inside the box the posterior is the same; the evidence is then that of the
    prior truncated to the box times its mass there). A problem with a prior density and no
    declared support (one that may put ``-inf`` where it likes) gets a copy whose
    ``log_prior`` is ``-inf`` outside the bounds instead.

    A problem that checks models with its own ``in_support`` (no declared support) gets a copy
    whose ``in_support`` also requires the bounds.

    ``problem`` itself is returned when ``bounds`` is None or cuts nothing, when the problem
    has a basis (its models are valid through its coefficients), when its support is not a
    box (:func:`~ppl_cvae.data.box.support_box`), when the intersection mixes kinds of
    interval between elements (no single torch constraint:
    :func:`~ppl_cvae.data.box.box_support`), or when ``support`` cannot be set on a copy (a
    read-only property); the amortized draws are still kept inside the bounds then.

    Parameters
    ----------
    problem : Problem
    bounds : (Tensor, Tensor) or None
        ``(low, high)``, float64 of ``x_shape``, units of ``x``
        (:meth:`~ppl_cvae.config.ModelConfig.x_bounds_box`).
    """
    if bounds is None or problem.basis() is not None:  # a basis keeps its own coordinates
        return problem
    if problem.support is None and (problem.has_prior_density or problem.restricts_support()):
        return _checks_within(problem, bounds)
    if problem.support is None:
        box = (torch.full_like(bounds[0], -math.inf), torch.full_like(bounds[1], math.inf))
    else:
        found = support_box(problem.support, tuple(bounds[0].shape))
        if found is None:
            return problem
        box = found
    low, high = torch.maximum(box[0], bounds[0]), torch.minimum(box[1], bounds[1])
    if bool((low == box[0]).all()) and bool((high == box[1]).all()):
        return problem
    support = box_support(low, high)
    return problem if support is None else _copy_with(problem, "support", support)


def _checks_within(problem: Problem, bounds: tuple[torch.Tensor, torch.Tensor]) -> Problem:
    """Return a shallow copy of ``problem`` whose own checks of ``x`` also require ``bounds``.

    For a problem that declares no support and leaves it to ``log_prior`` or to its own
    ``in_support``: the copy's ``log_prior`` (when it has a density) is ``-inf`` outside the
    bounds, and its ``in_support`` (when the problem checks models itself) is False there, so
    the samplers treat the bounds as they treat the problem's own verdicts (zero weight, a
    wall, an undone step).
    """
    low, high = bounds
    dims = len(problem.x_shape)

    def inside(x: torch.Tensor) -> torch.Tensor:
        within = (x >= low.to(x.device)) & (x <= high.to(x.device))
        return within.flatten(x.dim() - dims).all(-1) if dims else within

    restricted = problem
    if problem.has_prior_density:
        inner_prior = problem.log_prior

        def log_prior(x: torch.Tensor) -> torch.Tensor:
            value = inner_prior(x)
            keep = inside(x).to(value.device)
            return torch.where(keep, value, torch.full_like(value, -math.inf))

        restricted = _copy_with(restricted, "log_prior", log_prior)
    if problem._has_own_in_support():  # its default in_support reads log_prior
        inner_check = problem.in_support

        def in_support(x: torch.Tensor) -> torch.Tensor:
            ok = torch.as_tensor(inner_check(x), dtype=torch.bool)
            return ok & inside(x).to(ok.device)

        restricted = _copy_with(restricted, "in_support", in_support)
    return restricted


def _copy_with(problem: Problem, name: str, value: Any) -> Problem:
    """Return a shallow copy of ``problem`` with attribute ``name`` set to ``value``.

    ``problem`` itself when the attribute cannot be set (a property without a setter).
    """
    restricted = copy.copy(problem)
    try:
        setattr(restricted, name, value)
    except AttributeError:
        return problem
    return restricted


def _bounds_words(low: torch.Tensor, high: torch.Tensor) -> str:
    """Name a box of ``x`` in a few words: ``[low, high]``, or the ranges of per-element ends.

    Examples
    --------
    >>> _bounds_words(torch.zeros(3), torch.full((3,), math.inf))
    '[0, inf]'
    >>> _bounds_words(torch.zeros(2), torch.tensor([1.0, 2.0]))
    '[0, 1 to 2] (per element)'
    """

    def end(value: torch.Tensor) -> str:
        lo, hi = float(value.min()), float(value.max())
        return f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g}"

    words = f"[{end(low)}, {end(high)}]"
    same = bool((low == low.flatten()[0]).all()) and bool((high == high.flatten()[0]).all())
    return words if same else words + " (per element)"


class _Support:
    """Where amortized draws may lie: a problem's support and a run's ``x_bounds``, or None.

    ``inside(x)`` of draws ``(S, M, *x_shape)`` returns ``(S, M)`` bool; ``words`` names the
    support in messages; ``diagnose()`` says why almost nothing fell inside.
    """

    def __init__(
        self,
        problem: Problem | None,
        bounds: tuple[torch.Tensor, torch.Tensor] | None,
        config: ModelConfig | None = None,
    ) -> None:
        self.problem = problem if problem is not None and problem.restricts_support() else None
        self.bounds = bounds
        self.config = config  # the model's: what to advise when nothing falls inside
        parts = []
        if self.problem is not None:
            parts.append(f"problem {self.problem.name!r}'s {_support_words(self.problem)}")
        if bounds is not None:
            parts.append(f"the run's x_bounds {_bounds_words(*bounds)}")
        self.words = " and ".join(parts)

    @classmethod
    def of(cls, cvae: CVAE, problem: Problem | None) -> _Support | None:
        """Return the support of draws of ``cvae`` (with ``problem``), or None (all of R^n).

        Raises
        ------
        ConfigError
            If the problem declares a support of lower dimension than ``x`` and the model
            has no basis decoder (:func:`~ppl_cvae.problems.base.check_support_dimension`),
            or one the decoder's draws cannot hold (a discrete support and a density on
            ``R^n``: :func:`~ppl_cvae.problems.base.check_facies_support`): a run fitted
            elsewhere, sampled with such a problem.
        """
        if problem is not None:
            config = cvae.config
            check_facies_support(problem, config.likelihood, config.num_facies, config.x_shape)
        if problem is not None and cvae.config.basis_dim is None:
            check_support_dimension(problem)
        support = cls(problem, cvae.config.x_bounds_box(), cvae.config)
        return support if support.problem is not None or support.bounds is not None else None

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(S, M)`` bool for draws ``(S, M, *x_shape)``.

        The problem is asked with one batch axis, ``(S * M, *x_shape)``, as training lays
        models out: a user's ``log_prior`` (an undeclared support) need not take two.
        """
        lead = tuple(x.shape[:2])
        ok = torch.ones(lead, dtype=torch.bool)
        if self.bounds is not None:
            low, high = self.bounds
            ok &= ((x >= low) & (x <= high)).reshape(*lead, -1).all(-1)
        if self.problem is not None:
            ok &= self.problem.in_support(x.reshape(-1, *x.shape[2:])).reshape(lead)
        return ok

    def diagnose(self) -> str:
        """Say what to check when almost no draw fell inside."""
        config = self.config
        if self.problem is not None:
            try:
                check_support(self.problem, torch.Generator().manual_seed(0), num=256)
            except ConfigError as err:
                return f"; the support is misdeclared: {err}"
        if self.problem is None and config is not None:  # a run's x_bounds, no problem
            mapped = config.x_transform == "support"
            return (
                "; check the observation (it may lie where the training pairs put no model)"
                if mapped
                else "; the model draws x on all of R^n and keeps those inside the bounds, and "
                "its draws for this observation almost never are: refit with a flow mapped "
                "onto the bounds (ppl-cvae fit ... --x-bounds ... --likelihood flow "
                "--latent-dim 0; every draw then lies inside), or check the observation"
            )
        return (
            "; check the observation (it may lie where the prior puts no model), or correct "
            "the draws with the physics (--method importance or nuts)"
        )


def _support_mass(cvae: CVAE, support: _Support, y: torch.Tensor, num: int) -> torch.Tensor:
    """Fraction of ``num`` unrestricted draws inside ``support``, per observation ``(M,)``.

    The observations ``y`` ``(M, *y_shape)`` are drawn for a few at a time, so that a chunk's
    draws take at most :data:`SUPPORT_MASS_BYTES`.
    """
    step = max(1, SUPPORT_MASS_BYTES // (bytes_per_draw(cvae, 1) * num))
    parts = []
    for start in range(0, y.shape[0], step):
        draws = draw_posterior(
            cvae, y[start : start + step], num, decoder_noise=True, within_support=False
        )
        parts.append(support.inside(draws.x).double().mean(0))
    return torch.cat(parts)


def _support_words(problem: Problem) -> str:
    """Name a problem's support for a message."""
    if problem.support is not None:
        return f"support {describe_support(problem.support)}"
    if not problem.has_prior_density:  # no density: the problem's own in_support decides
        return "support (as its in_support decides)"
    return "support (where its log_prior is above -inf)"


def _keep_in_support(
    draw: Any,
    support: _Support,
    y_batch: torch.Tensor,
    num_samples: int,
    decoder_noise: bool,
    per_round: int,
    max_round: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Redraw until each observation has ``num_samples`` draws in the prior's support.

    ``draw(y, n)`` returns the Predictive sites (``z``, ``x``, ``x_mean``; shapes
    ``(n, M', ...)``, CPU) for observations ``y`` ``(M', *y_shape)``. The first round draws
    ``per_round`` (at least ``num_samples``) per observation; each later one, for the
    observations still short, as many as the neediest of them is expected to need at its
    observed acceptance (:func:`_round_size`), at most ``max_round / M'`` (the memory bound of
    ``max_round`` draws of one observation) and at least ``per_round / M'``; so the number of
    rounds stays small at any acceptance above :data:`MIN_SUPPORT_ACCEPTANCE`. The kept
    draws are the first ``num_samples`` inside, in proposal order, of an i.i.d. stream:
    exact draws of ``q`` restricted to the support whatever the round sizes. Returns the kept
    sites, ``(num_samples, M, ...)``, and the acceptance per observation, ``(M,)`` float64.
    """
    site = "x" if decoder_noise else "x_mean"
    num_obs = y_batch.shape[0]
    kept: list[dict[str, list[torch.Tensor]]] = [{} for _ in range(num_obs)]
    count = [0] * num_obs
    proposed = [0] * num_obs
    pending = list(range(num_obs))
    max_proposals = math.ceil(num_samples / MIN_SUPPORT_ACCEPTANCE)
    # none inside after this many: an acceptance of MIN_SUPPORT_ACCEPTANCE or more would have
    # kept at least one with probability 1 - exp(-14) (1 - 8e-7), so stop before max_proposals
    none_inside_stop = min(max_proposals, math.ceil(14 / MIN_SUPPORT_ACCEPTANCE))
    size = per_round
    while pending:
        out = draw(y_batch[pending], size)
        inside = support.inside(out[site])  # (size, len(pending))
        still = []
        for j, m in enumerate(pending):
            ok = inside[:, j]
            for name, value in out.items():
                kept[m].setdefault(name, []).append(value[:, j][ok])
            count[m] += int(ok.sum())
            proposed[m] += size
            if count[m] >= num_samples:
                continue
            if proposed[m] >= (max_proposals if count[m] else none_inside_stop):
                raise DataError(
                    f"only {count[m]} of {proposed[m]} amortized posterior draws for observation "
                    f"{m} lie in {support.words}, fewer than the {num_samples} asked for: below "
                    f"{MIN_SUPPORT_ACCEPTANCE:g} of the trained posterior's mass is inside the "
                    f"prior's support there{support.diagnose()}"
                )
            still.append(m)
        pending = still
        if pending:
            need = max(
                _round_size(
                    num_samples - count[m],
                    count[m],
                    proposed[m],
                    max_proposals if count[m] else none_inside_stop,
                )
                for m in pending
            )
            size = max(1, min(need, max_round // len(pending)), per_round // len(pending))
    sites = {
        name: torch.stack([torch.cat(kept[m][name])[:num_samples] for m in range(num_obs)], 1)
        for name in kept[0]
    }
    acceptance = torch.tensor(count, dtype=torch.float64) / torch.tensor(proposed)
    return sites, acceptance.clamp(max=1.0)


def _round_size(remaining: int, count: int, proposed: int, max_proposals: int) -> int:
    """Proposals that give ``remaining`` more draws inside, at the observed acceptance.

    ``(remaining + 2 sqrt(remaining)) / a`` with ``a = count / proposed`` (``1 / proposed``
    when none was inside yet: at most that, so the round grows by the factor ``remaining``),
    the binomial spread of the kept count (``sd <= sqrt(remaining)``) added so that about
    98% of rounds finish at an exact ``a``; at most what the observation may still propose
    before :data:`MIN_SUPPORT_ACCEPTANCE` stops it.
    """
    acceptance = max(count, 1) / proposed
    size = math.ceil((remaining + 2 * math.sqrt(remaining)) / acceptance)
    return max(1, min(size, max_proposals - proposed))


@torch.no_grad()
def draw_posterior(
    cvae: CVAE,
    y: torch.Tensor,
    num_samples: int,
    *,
    decoder_noise: bool | None = None,
    problem: Problem | None = None,
    seed: int | None = None,
    within_support: bool = True,
    predictive: bool = True,
) -> PosteriorDraws:
    """Draw ``num_samples`` amortized posterior samples of ``x`` for each observation.

    Parameters
    ----------
    cvae : CVAE
        A trained conditional model.
    y : Tensor, shape (M, *y_shape) or y_shape
        Observations in physical units; a single observation is treated as ``M = 1``. A
        NumPy array or list of numbers is accepted, any real dtype is cast to float32.
    num_samples : int
        Draws per observation (a Python or NumPy int).
    decoder_noise : bool, optional
        True: ``x ~ p(x | z, y)`` (site ``"x"``, the full predictive density of the decoder;
        for a Bernoulli or categorical decoder the draws are facies codes). False:
        ``x = E[x | z, y]`` (site ``"x_mean"``), smoother draws whose spread comes from ``z``
        alone (for ``bernoulli`` a facies probability, not a facies field). Default:
        ``cvae.samples_decoder_noise`` (False for a basis decoder, True otherwise).
    problem : Problem, optional
        With a forward operator: also return the posterior predictive ``y_rep = F(x) + eps``,
        ``eps ~ N(0, C_e)`` (:attr:`problem.noise <ppl_cvae.problems.base.Problem.noise>`),
        and keep only draws in the prior's support (``within_support``).
    seed : int, optional
        Seed of torch's RNG for these draws (of the device the CVAE is on: the same seed gives
        the same draws on the same kind of device); the global RNGs are left as they were
        (:func:`~ppl_cvae.checks.seeded_rng`).
    within_support : bool, default True
        With a ``problem`` whose support is not all of ``R^n``
        (:meth:`~ppl_cvae.problems.base.Problem.restricts_support`), or a model fitted with
        ``x_bounds`` (:class:`~ppl_cvae.config.ModelConfig`): reject draws outside it
        (:meth:`~ppl_cvae.problems.base.Problem.in_support`) and draw again until every
        observation has ``num_samples``, as sbi's ``DirectPosterior`` does. The draws are then
        those of ``q(x | y)`` restricted to the support and renormalised, which is closer to
        the posterior (zero outside the support) than ``q`` in Kullback-Leibler divergence;
        the fraction kept is returned (``support_acceptance``). False: the draws of ``q``
        itself (importance sampling needs them with their density).
    predictive : bool, default True
        With a ``problem``: compute ``y_rep`` and ``y_model``; False skips the forward
        operator (draws only).

    Returns
    -------
    PosteriorDraws
        ``x`` and ``x_mean`` of shape ``(num_samples, M, *x_shape)``, on the CPU. The networks
        run on the device of ``cvae`` (``y`` is copied there); the draws come back to the CPU,
        where ``problem`` computes the posterior predictive.

    Raises
    ------
    ConfigError
        If the model is unconditional, ``num_samples`` is not an int >= 1 or ``seed`` not
        an int in ``[0, 2**32 - 1]`` (:mod:`ppl_cvae.checks`); or, with ``within_support``,
        the problem declares a support of lower dimension than ``x`` (a simplex, symmetric
        matrices: :func:`~ppl_cvae.problems.base.check_support_dimension`).
    ShapeError
        If ``y`` has the wrong shape, the problem's event shapes are not the model's, or
        its ``forward`` returns a shape other than ``(num_samples, M, *y_shape)``.
    DataError
        If ``y`` is not a tensor, array or list of real numbers, holds NaN or inf or no
        observation, the problem's ``forward`` returns something that is not a torch tensor,
        or the draws are not finite (named as an observation far outside the training data, more
        than :data:`FAR_FROM_TRAINING` training standard deviations away, where that is the
        reason); or fewer than :data:`MIN_SUPPORT_ACCEPTANCE` of the draws for an observation
        lie in the prior's support (the message says whether the declared support excludes
        the problem's own prior draws).
    ResourceError
        If the draws cannot fit in memory (:func:`bytes_per_draw`).
    """
    y_shape = cvae.config.y_shape
    if y_shape is None:  # an unconditional model (config.conditional False)
        raise ConfigError("posterior sampling needs a conditional model (y_shape set)")
    num_samples = as_count(num_samples, "num_samples")
    seed = as_seed(seed)
    if problem is not None:
        problem = as_problem(problem)
        check_problem_matches(problem, cvae.config)
    y_batch, _ = as_observation_batch(y, y_shape)
    cvae.check_finite(y=y_batch)
    check_memory(
        bytes_per_draw(cvae, y_batch.shape[0], problem=problem) * num_samples,
        f"{num_samples} posterior draws for {y_batch.shape[0]} observation(s)",
        hint="draw fewer, or stream them to disk with "
        "inference.sample.sample_posterior_to_netcdf (ppl-cvae sample does)",
    )
    with seeded_rng(seed):  # the caller's global RNG is left as it was
        if decoder_noise is None:
            decoder_noise = cvae.samples_decoder_noise
        was_training = cvae.training
        cvae.eval()
        device = module_device(cvae)
        dtype = cvae.x_standardiser.mean.dtype  # float32, or a model moved to float64

        def draw(y_sub: torch.Tensor, num: int) -> dict[str, torch.Tensor]:
            runner = Predictive(
                cvae.model, num_samples=num, parallel=True, return_sites=("z", "x", "x_mean")
            )
            try:
                with pyro.validation_enabled(False):
                    out = runner(y_sub.to(device=device, dtype=dtype))
            except (RuntimeError, ValueError) as err:  # torch.normal on a NaN scale, and the like
                far = _out_of_range(cvae, y_sub, None)
                if far is None:
                    raise
                raise far from err
            for site in ("z", "x" if decoder_noise else "x_mean"):
                if not bool(torch.isfinite(out[site]).all()):
                    bad = ~torch.isfinite(out[site]).flatten(2).all(-1).all(0)  # (M,)
                    raise _out_of_range(cvae, y_sub, bad) or DataError(
                        f"the posterior draws of {site} are not finite for {int(bad.sum())} of "
                        f"{len(bad)} observations; the trained networks give NaN or inf there"
                    )
            return {name: value.cpu() for name, value in out.items()}  # draws leave the device

        acceptance = None
        # a facies decoder's draws without its noise are probabilities of the codes, not models
        probabilities = cvae.config.likelihood in FACIES_LIKELIHOODS and not decoder_noise
        support = _Support.of(cvae, problem) if within_support and not probabilities else None
        try:
            if support is not None:
                # a round: the draws asked for, or up to 1024 of them where 256 MiB holds them
                # (a small request then needs few rounds)
                fits = (1 << 28) // max(1, bytes_per_draw(cvae, y_batch.shape[0]))
                per_round = max(num_samples, min(1024, fits))
                # later rounds grow with the observed acceptance, within the same 256 MiB and at
                # most ROUND_GROWTH times the first round (a margin on bytes_per_draw's estimate);
                # fewer pending observations may draw more each
                max_round = max(per_round, min(fits, ROUND_GROWTH * per_round)) * y_batch.shape[0]
                out, acceptance = _keep_in_support(
                    draw, support, y_batch, num_samples, decoder_noise, per_round, max_round
                )
            else:
                out = draw(y_batch, num_samples)
        finally:
            cvae.train(was_training)
        x = out["x"] if decoder_noise else out["x_mean"]
        y_rep = y_model = None
        if problem is not None and predictive:
            y_rep = y_model = checked_forward(problem, x)
            if not problem.noise.is_zero:
                y_rep = y_model + problem.noise.sample(tuple(x.shape[:2])).to(y_model)
        return PosteriorDraws(
            x=x,
            z=out["z"],
            y_rep=y_rep,
            decoder_noise=decoder_noise,
            x_mean=out["x_mean"],
            y_model=y_model,
            support_acceptance=acceptance,
        )


_SBI_SPELLINGS = {"set_default_x": "set_default_y", "default_x": "default_y"}
"""sbi's names of what :class:`CVAEPosterior` calls by ``y`` (the observation)."""


def _refuse_unknown(method: str, unknown: dict[str, Any], y: Any = None) -> None:
    """Refuse keywords ``method`` does not take; ``x=``, sbi's observation, with the fix."""
    if "x" in unknown and y is not None:
        raise TypeError(
            f"CVAEPosterior.{method}() takes no x: the observation is y, given already"
        )
    if "x" in unknown:
        raise ConfigError(
            f"CVAEPosterior.{method} takes the observation as y (sbi calls it x; here x is "
            f"the model, sbi's theta): {method}((n,), y=observation)"
        )
    if unknown:
        raise TypeError(
            f"CVAEPosterior.{method}() got an unexpected keyword argument {next(iter(unknown))!r}"
        )


class CVAEPosterior:
    """The amortized posterior ``q(x | y)`` of a trained CVAE, as an object (sbi's posterior API).

    ``q(x | y) = integral p_theta(x | z, y) p_theta(z | y) dz``: ``z`` from the prior net, ``x``
    from the decoder. Modelled on sbi's ``DirectPosterior``: :meth:`sample` draws for an
    observation ``y`` (or the default set by :meth:`set_default_y`), :meth:`log_prob`
    evaluates the density, :meth:`importance_sample` corrects the draws with the problem's
    prior and noise model, :meth:`to` moves the networks. The CLI's ``ppl-cvae sample`` and
    :func:`draw_posterior` are the same computation.

    Parameters
    ----------
    cvae : CVAE
        A trained conditional model (``config.y_shape`` set).
    problem : Problem, optional
        Forward operator, prior and noise model: needed for the posterior predictive and for
        :meth:`importance_sample`.
    default_y : Tensor, shape y_shape, optional
        Observation used when a method gets no ``y``.

    Raises
    ------
    ConfigError
        If ``cvae`` is not a CVAE, or the model is unconditional.
    """

    def __init__(
        self,
        cvae: CVAE,
        problem: Problem | None = None,
        default_y: torch.Tensor | None = None,
    ) -> None:
        check_type(cvae, CVAE, "CVAEPosterior's cvae", "load one with load_checkpoint(run)")
        if cvae.config.y_shape is None:
            raise ConfigError("a posterior needs a conditional model (y_shape set)")
        self.cvae = cvae
        self.problem = as_problem(problem) if problem is not None else None
        self.default_y: torch.Tensor | None = None
        if default_y is not None:
            self.set_default_y(default_y)

    def __getattr__(self, name: str) -> Any:
        """Name this class's spelling of an sbi posterior attribute that it lacks."""
        if name in _SBI_SPELLINGS:
            raise AttributeError(
                f"CVAEPosterior has no {name!r}: the observation is y here (sbi calls it x; "
                f"x is the model, sbi's theta), so use {_SBI_SPELLINGS[name]!r}"
            )
        raise AttributeError(f"'CVAEPosterior' object has no attribute {name!r}")

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Event shape of one observation."""
        shape = self.cvae.config.y_shape
        assert shape is not None
        return shape

    def set_default_y(self, y: torch.Tensor | np.ndarray | list[Any]) -> CVAEPosterior:
        """Set the observation used when ``y`` is omitted; return self.

        ``y`` of shape ``y_shape``, or ``(1, *y_shape)`` (one observation with a batch axis,
        stored without it); a NumPy array or list of numbers is accepted, cast to float32.

        Raises
        ------
        ShapeError
            If ``y`` does not have shape ``y_shape`` or ``(1, *y_shape)``.
        DataError
            If ``y`` is not a tensor, array or list of real numbers, or holds NaN or inf.
        """
        y = as_real_tensor(y, "default y")
        if tuple(y.shape) == (1, *self.y_shape):
            y = y[0]
        if tuple(y.shape) != self.y_shape:
            raise ShapeError(f"default y must have shape {self.y_shape}, got {tuple(y.shape)}")
        self.cvae.check_finite(y=y)
        self.default_y = y
        return self

    def _y(self, y: torch.Tensor | np.ndarray | list[Any] | None) -> tuple[torch.Tensor, bool]:
        if y is None:
            if self.default_y is None:
                raise ConfigError("no observation: pass y or call set_default_y(y) first")
            y = self.default_y
        return as_observation_batch(y, self.y_shape)

    def to(self, device: torch.device | str) -> CVAEPosterior:
        """Move the networks, buffers and default observation to ``device``; return self.

        :meth:`sample` and :meth:`log_prob` then run the networks on ``device`` and return CPU
        tensors; :meth:`importance_sample` evaluates the problem's densities on the CPU and
        needs the networks there (``to("cpu")``).

        Raises
        ------
        ConfigError
            If ``device`` is not ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``, or names a
            CUDA device this machine does not have (:func:`ppl_cvae.device.resolve_device`).
        """
        device = resolve_device(device)
        self.cvae.to(device)
        if self.default_y is not None:
            self.default_y = self.default_y.to(device)
        return self

    def sample(
        self,
        sample_shape: int | tuple[int, ...] | torch.Size = (),
        y: torch.Tensor | np.ndarray | list[Any] | None = None,
        *,
        decoder_noise: bool | None = None,
        seed: int | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Draw posterior samples of ``x``.

        Parameters
        ----------
        sample_shape : tuple of int, default ()
            Shape of the draws per observation (sbi's convention: ``(n,)`` for ``n`` draws;
            an int ``n`` is taken as ``(n,)``; a zero entry gives no draws).
        y : Tensor, shape y_shape or (M, *y_shape), optional
            Observation(s); default :attr:`default_y`. A NumPy array or list of numbers is
            accepted, any real dtype is cast to float32.
        decoder_noise, seed
            As in :func:`draw_posterior`.

        Returns
        -------
        Tensor, shape (*sample_shape, *x_shape) for one observation, else
        (*sample_shape, M, *x_shape)
            Units of ``x``. With a :attr:`problem` whose prior has a restricted support, only
            draws inside it (the others are rejected and drawn again, as sbi does;
            :func:`draw_posterior`, ``within_support``).

        Raises
        ------
        ConfigError
            If ``sample_shape`` is not an int or a tuple of ints >= 0, or as
            :func:`draw_posterior`; if the observation is passed as ``x=`` (sbi's name:
            here ``x`` is the model, sbi's ``theta``, and the observation is ``y``).
        TypeError
            For any other unknown keyword.
        ShapeError, DataError, ResourceError
            As :func:`draw_posterior`.

        Warns
        -----
        UserWarning
            As :func:`warn_far_observations`; and for a model fitted on pairs alone, when
            more than 1% of an observation's drawn values lie outside the range of the
            training ``x`` (:func:`~inference.training_range.warn_outside_training_range`).
        """
        _refuse_unknown("sample", unknown, y)
        sample_shape = as_sample_shape(sample_shape)
        y_batch, stacked = self._y(y)
        warn_far_observations(self.cvae, y_batch)
        num = math.prod(sample_shape)
        draws = draw_posterior(
            self.cvae,
            y_batch,
            max(num, 1),
            decoder_noise=decoder_noise,
            problem=self.problem,
            seed=seed,
            predictive=False,
        ).x[:num]
        if num:  # a model fitted on pairs alone: its draws beyond them
            check_training_range(self.cvae, draws)
        x_shape = self.cvae.config.x_shape
        if not stacked:
            return draws[:, 0].reshape(*sample_shape, *x_shape)
        return draws.reshape(*sample_shape, y_batch.shape[0], *x_shape)

    @torch.no_grad()
    def log_prob(
        self,
        x: torch.Tensor | np.ndarray | list[Any],
        /,
        y: torch.Tensor | np.ndarray | list[Any] | None = None,
        *,
        num_particles: int = 128,
        num_support_draws: int = 10_000,
        seed: int | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Return ``log q(x | y)`` in nats (decoder noise included: the density of the draws).

        Without a latent (a flow on ``x``) the density is exact. With a latent, the importance
        weighted estimate of Burda et al. (2016) with the recognition net ``r`` as proposal,
        ``log (1/K) sum_k p(z_k | y) p(x | z_k, y) / r(z_k | x, y)``, ``z_k ~ r(z | x, y)``: its
        expectation is a lower bound of ``log q(x | y)`` (Jensen) whose gap shrinks as
        ``O(1/K)`` (about ``Var(w) / (2 K E[w]^2)``), and it equals ``log q`` for any ``K`` when
        ``r`` is the exact conditional of ``z``. For a basis decoder it is the density of
        ``x`` with the decoder's elementwise noise, not of the decoder means that its draws
        default to.

        With a :attr:`problem` whose prior restricts its support, or a model fitted with
        ``x_bounds``, the density of the draws
        :meth:`sample` returns (``q`` restricted to the support and renormalised): ``-inf``
        outside the support, ``log q(x | y) - log P_q(support | y)`` inside, the probability
        estimated from ``num_support_draws`` draws of ``q`` per distinct observation (sbi's
        leakage correction; relative standard error ``sqrt((1 - P) / (P n))`` on ``P``), drawn
        for a few observations at a time (:data:`SUPPORT_MASS_BYTES`). A model fitted on the
        box of its ``x_bounds`` (``x_transform="support"``) without a problem that restricts
        the support further has all its mass inside: nothing is estimated.

        Parameters
        ----------
        x : Tensor, shape (N, *x_shape) or x_shape
            Models, units of ``x`` (one model without a batch axis counts as ``N = 1``); a
            NumPy array or list of numbers is accepted, any real dtype is cast to float32.
        y : Tensor, shape y_shape or (N, *y_shape), optional
            One observation for every ``x``, or one per ``x``; default :attr:`default_y`.
        num_particles : int, default 128
            ``K``, latent particles per ``x`` (at least 1).
        num_support_draws : int, default 10000
            Draws per distinct observation that estimate the mass of ``q`` in the support
            (used only with a problem that restricts its support).
        seed : int, optional
            Seed of the particles and support draws (a forked torch RNG, restored after);
            without it they come from the global torch RNG, which advances, so repeated
            calls average out the Monte Carlo error.

        Returns
        -------
        Tensor, shape (N,)
            float64.

        Raises
        ------
        ShapeError
            If ``x`` or ``y`` have the wrong shape, or their batch sizes differ.
        DataError
            If ``x`` or ``y`` is not a tensor, array or list of real numbers, or holds NaN or
            inf; or none of the ``num_support_draws`` draws for an observation lies in the
            support.
        ConfigError
            If ``num_particles`` or ``num_support_draws`` is not an int >= 1 or ``seed`` not
            an int in ``[0, 2**32 - 1]``; or the observation is given as ``x=`` (sbi's
            ``log_prob(theta, x=x_o)``: here it is ``y``).
        TypeError
            For another unknown keyword.

        References
        ----------
        Burda, Grosse and Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR;
        Greenberg, Nonnenmacher and Macke (2019), Automatic posterior transformation for
        likelihood-free inference, ICML (the leakage of a posterior estimate outside the
        prior's support).
        """
        if "x" in unknown:  # x is positional-only, so sbi's x= lands here
            raise ConfigError(
                "CVAEPosterior.log_prob takes the observation as y (sbi calls it x; here x is "
                "the model, sbi's theta): log_prob(theta, y=observation)"
            )
        _refuse_unknown("log_prob", unknown)
        num_particles = as_count(num_particles, "num_particles")
        num_support_draws = as_count(num_support_draws, "num_support_draws")
        seed = as_seed(seed)
        cvae = self.cvae
        x_shape = cvae.config.x_shape
        x = as_real_tensor(x, "x")
        if tuple(x.shape) == x_shape:
            x = x.unsqueeze(0)
        if x.dim() != len(x_shape) + 1 or tuple(x.shape[1:]) != x_shape:
            raise ShapeError(
                f"x must have shape {shape_text('N', x_shape)}, got {tuple(x.shape)}"
                f"{reshape_hint(x.shape, x_shape, 'x', 'models')}"
            )
        y_batch, _ = self._y(y)
        n = x.shape[0]
        if y_batch.shape[0] == 1:
            y_batch = y_batch.expand(n, *self.y_shape)
        cvae.check_inputs(y_batch, x)
        cvae.check_finite(x=x, y=y_batch)
        if n == 0:
            return torch.zeros(0, dtype=torch.float64)
        device = module_device(cvae)
        x, y_batch = x.to(device), y_batch.to(device)
        was_training = cvae.training
        cvae.eval()
        with seeded_rng(seed):
            if cvae.config.latent_dim == 0:
                x_dist, _ = cvae.x_distribution(x.new_zeros(n, 0), y_batch, location=False)
                out = x_dist.log_prob(x).double()
            else:
                loc, scale = cvae.recognition_params(y_batch, x)
                r = pyro_dist.Normal(loc, scale).to_event(1)
                z = r.sample((num_particles,))  # (K, N, latent)
                x_dist, _ = cvae.x_distribution(z, y_batch, location=False)
                log_w = (
                    cvae.prior_distribution(y_batch).log_prob(z)
                    + x_dist.log_prob(x.expand(num_particles, *x.shape))
                    - r.log_prob(z)
                ).double()
                out = torch.logsumexp(log_w, dim=0) - math.log(num_particles)
            out = out.cpu()
            support = _Support.of(cvae, self.problem)
            if support is not None:
                out = torch.where(support.inside(x.cpu().unsqueeze(0))[0], out, -math.inf)
            # a model fitted in u = T^-1(x) on the box of its bounds puts all its mass inside
            all_inside = support is not None and support.problem is None and (
                cvae.box_transform() is not None
            )
            if support is not None and not all_inside:
                distinct, which = torch.unique(
                    y_batch.cpu().reshape(n, -1), dim=0, return_inverse=True
                )
                mass = _support_mass(
                    cvae, support, distinct.reshape(-1, *self.y_shape), num_support_draws
                )
                if bool((mass == 0).any()):
                    raise DataError(
                        f"none of {num_support_draws} draws of the amortized posterior lies in "
                        f"{support.words} for {int((mass == 0).sum())} of the observations: its "
                        "density there cannot be normalised"
                    )
                out = out - torch.log(mass)[which]
        cvae.train(was_training)
        return out

    def importance_sample(
        self,
        num_samples: int,
        y: torch.Tensor | np.ndarray | list[Any] | None = None,
        *,
        seed: int | None = None,
    ) -> ImportanceResult:
        """Correct amortized draws with the problem's prior and noise model (importance sampling).

        Parameters
        ----------
        num_samples : int
            Proposal draws per observation.
        y : Tensor, shape y_shape or (M, *y_shape), optional
            Default :attr:`default_y`.
        seed : int, optional

        Raises
        ------
        ConfigError
            If the posterior has no problem; others as
            :func:`inference.importance.importance_sample`.

        Warns
        -----
        UserWarning
            If an element of ``y`` lies more than :data:`FAR_WARNING` training sds from the
            training mean (:func:`warn_far_observations`), as :meth:`sample` warns.
        """
        if self.problem is None:
            raise ConfigError(
                "importance sampling needs the problem's prior and noise model: "
                "CVAEPosterior(cvae, problem=...)"
            )
        y_batch, _ = self._y(y)
        warn_far_observations(self.cvae, y_batch)
        return importance_sample(self.cvae, self.problem, y_batch, num_samples, seed=seed)
