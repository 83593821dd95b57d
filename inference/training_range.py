"""Amortized draws that leave the range of the training ``x`` (sbi's "leakage" for a file).

A model fitted on pairs alone (``ppl-cvae fit --data FILE``, or
:func:`~ppl_cvae.train.build_cvae` without a problem) knows its prior only through the
pairs, so it records their elementwise range (:attr:`CVAE.training_x_range
<ppl_cvae.models.cvae.CVAE.training_x_range>`). Its networks have never seen an ``x``
outside that range: a draw there is an extrapolation, and where the prior is bounded (a box
that the pairs fill) an impossible value. sbi rejects draws outside its prior's support and
warns when many are (its "leakage"); a data file does not say where its prior's support
ends, so here the draws are kept, counted and warned of, and the user who knows the bounds
gives them (``fit --x-bounds``, :attr:`ModelConfig.x_bounds
<ppl_cvae.config.ModelConfig.x_bounds>`), which keeps every draw inside them.

Under a correct posterior, averaged over observations drawn from the prior, a drawn value
lies outside the range of ``N`` training values of its element with probability at most
``2 / (N + 1)`` (the draw and the training values are exchangeable draws of the prior
marginal): below 0.1% for ``N`` of 2,000 or more, far below :data:`OUTSIDE_RANGE_WARNING`.
On sbibm ``slcp`` (uniform prior on ``[-3, 3]^5``, 10,000 pairs, no bounds given) 0.3% to
6.3% of the values of observations 1-5 were outside (14% of the draws had one), on
``gaussian_mixture`` (``[-10, 10]^2``) 0.06% to 1.8%.

References
----------
Greenberg, Nonnenmacher and Macke (2019), Automatic posterior transformation for
likelihood-free inference, ICML (the leakage of a posterior estimate outside the prior's
support); David and Nagaraja (2003), Order Statistics, 3rd ed., Wiley (a new exchangeable
draw is the smallest or largest of ``N + 1`` with probability ``2 / (N + 1)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ppl_cvae.checks import as_probability, as_seed, shape_text
from ppl_cvae.errors import DataError, ShapeError
from ppl_cvae.models.cvae import CVAE

__all__ = [
    "OUTSIDE_RANGE_WARNING",
    "check_training_range",
    "outside_training_range",
    "pool_chunks",
    "training_range_verdict",
    "warn_outside_training_range",
]

OUTSIDE_RANGE_WARNING = 0.01
"""Fraction of an observation's drawn values outside the training range of ``x`` above which
sampling warns (:func:`warn_outside_training_range`)."""


def outside_training_range(
    cvae: CVAE, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Count the drawn values that lie outside the range of the model's training ``x``.

    Parameters
    ----------
    cvae : CVAE
        A model; one without :attr:`~ppl_cvae.models.cvae.CVAE.training_x_range` (fitted
        with a problem, or loaded from a file written before the range was recorded) gives
        None.
    x : Tensor, shape (num_samples, M, *x_shape)
        Draws for ``M`` observations, units of ``x``; NaN counts as inside.

    Returns
    -------
    (Tensor, Tensor) or None
        float64 fractions of values strictly outside ``[low, high]``: per observation, shape
        ``(M,)`` (over draws and elements), and per element, shape ``x_shape`` (over draws and
        observations). An element with ``low == high`` (constant in the training pairs)
        counts as inside.

    Raises
    ------
    ShapeError
        If ``x`` is not ``(num_samples, M, *x_shape)``.

    Examples
    --------
    >>> from ppl_cvae import CVAE, ModelConfig
    >>> cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(1,), hidden_dims=(4,)))
    >>> cvae.set_training_x_range(torch.zeros(2), torch.ones(2))
    >>> per_obs, per_element = outside_training_range(cvae, torch.tensor([[[0.5, 1.5]]]))
    >>> per_obs.tolist(), per_element.tolist()
    ([0.5], [0.0, 1.0])
    """
    if cvae.training_x_range is None:
        return None
    x_shape = cvae.config.x_shape
    if x.dim() != 2 + len(x_shape) or tuple(x.shape[2:]) != x_shape:
        raise ShapeError(
            f"draws have shape {tuple(x.shape)}; expected {shape_text('S, M', x_shape)}"
        )
    low, high = cvae.training_x_range
    values = x.detach().to("cpu", torch.float64)
    # an element the same in every training pair (a fixed parameter) has no range to leave:
    # the exchangeability bound is for a continuous prior marginal, and any draw of a density
    # misses a point, so such elements count as inside
    outside = ((values < low) | (values > high)) & (high > low)
    outside = outside.to(torch.float64)
    per_obs = outside.flatten(2).mean((0, 2))
    per_element = outside.mean((0, 1))
    return per_obs, per_element


def warn_outside_training_range(
    cvae: CVAE,
    per_obs: Sequence[float],
    per_element: torch.Tensor,
    *,
    stacklevel: int = 3,
) -> list[int]:
    """Warn of observations whose draws put many values outside the training range of ``x``.

    Parameters
    ----------
    cvae : CVAE
        The model that drew them, with a :attr:`~ppl_cvae.models.cvae.CVAE.training_x_range`.
    per_obs : sequence of float, length M
        Fraction of each observation's drawn values outside the range
        (:func:`outside_training_range`).
    per_element : Tensor, shape x_shape
        Fraction of each element's drawn values outside it; the warning names the element
        with the most.
    stacklevel : int, default 3
        As in ``warnings.warn``.

    Returns
    -------
    list of int
        The observations above :data:`OUTSIDE_RANGE_WARNING` (one warning names them all).

    Warns
    -----
    UserWarning
        If an observation's fraction is above :data:`OUTSIDE_RANGE_WARNING`: the networks
        extrapolate there, and for a bounded prior those values are impossible.
    """
    high_obs = [m for m, value in enumerate(per_obs) if value > OUTSIDE_RANGE_WARNING]
    if not high_obs or cvae.training_x_range is None:
        return []
    low, high = cvae.training_x_range
    flat = per_element.flatten()
    worst = int(torch.argmax(flat))
    index = tuple(int(i) for i in np.unravel_index(worst, tuple(per_element.shape)))
    where = ", ".join(map(str, index))
    shown = ", ".join(str(m) for m in high_obs[:10]) + (", ..." if len(high_obs) > 10 else "")
    bounds_hint = (
        "if the prior is bounded, give its bounds when fitting (ppl-cvae fit --x-bounds "
        "LOW,HIGH; ModelConfig.x_bounds) and every draw stays inside them"
        if cvae.config.x_bounds is None
        else "the run's x_bounds reach beyond the training range there"
    )
    warnings.warn(
        f"the amortized draws of {len(high_obs)} of {len(per_obs)} observation(s) ({shown}) "
        f"put up to {max(per_obs):.1%} of their values outside the range of the training x "
        f"(most often x[{where}]: {float(flat[worst]):.1%} of its values outside "
        f"[{float(low[index]):.6g}, {float(high[index]):.6g}]): the networks extrapolate "
        f"there; {bounds_hint}",
        UserWarning,
        stacklevel=stacklevel,
    )
    return high_obs


def check_training_range(cvae: CVAE, x: torch.Tensor, *, warn: bool = True) -> list[float] | None:
    """Count the draws outside the training range and warn of them: one call for samplers.

    Parameters
    ----------
    cvae : CVAE
        The model that drew ``x``.
    x : Tensor, shape (num_samples, M, *x_shape)
        Its draws, units of ``x``.
    warn : bool, default True
        Warn as :func:`warn_outside_training_range` (False where a caller warns once for
        several chunks of draws).

    Returns
    -------
    list of float or None
        The fraction of each observation's values outside the range (length M); None for a
        model without a range.

    Raises
    ------
    ShapeError
        As :func:`outside_training_range`.

    Warns
    -----
    UserWarning
        As :func:`warn_outside_training_range`, attributed to the sampler's caller.
    """
    outside = outside_training_range(cvae, x)
    if outside is None:
        return None
    per_obs = [float(v) for v in outside[0]]
    if warn:
        warn_outside_training_range(cvae, per_obs, outside[1], stacklevel=4)
    return per_obs


def pool_chunks(
    parts: Sequence[tuple[int, torch.Tensor, torch.Tensor]],
) -> tuple[list[float], torch.Tensor]:
    """Pool the fractions of chunks of draws into those of all of them.

    Parameters
    ----------
    parts : sequence of (int, Tensor, Tensor)
        ``(n, per_obs, per_element)`` per chunk of ``n`` draws, as
        :func:`outside_training_range` gives them; at least one.

    Returns
    -------
    (list of float, Tensor)
        The fractions over all draws: per observation (length M) and per element
        (``x_shape``), the chunks weighted by their draws.
    """
    weights = torch.tensor([float(n) for n, _, _ in parts], dtype=torch.float64)
    weights = weights / weights.sum()
    per_obs = torch.tensordot(weights, torch.stack([part[1] for part in parts]), dims=1)
    per_element = torch.tensordot(weights, torch.stack([part[2] for part in parts]), dims=1)
    return [float(v) for v in per_obs], per_element


RANGE_TEST_RESAMPLES = 4000
"""Monte Carlo resamples of :func:`training_range_verdict`'s permutation test (p-values to
about ``1 / 4001``, far below the ``false_alarm`` of a verdict); fewer, down to 1,000, above
5,000 observations, which keeps the test to about as long as the other verdicts."""


def training_range_verdict(
    x_draws: torch.Tensor,
    x: torch.Tensor,
    x_range: tuple[torch.Tensor, torch.Tensor],
    *,
    false_alarm: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge whether the draws leave the training range of ``x`` more often than the truths.

    For held-out pairs from the prior, a truth ``x_m`` and the ``S`` draws of a calibrated
    posterior given ``y_m`` are ``S + 1`` exchangeable draws of ``p(x | y_m)``, so a statistic
    of them, here ``g`` = the fraction of a model's values outside ``[low, high]``, ranks the
    truth uniformly among its draws (the argument of SBC, Talts et al. 2018). Conditional on
    each observation's ``S + 1`` values of ``g``, the truths' total ``T = sum_m g(x_m)`` is then
    a sum of independent uniform picks, one per observation; draws that leak beyond the range
    where the truths do not (a posterior that puts mass outside a bounded prior's support)
    make ``T`` small. The p-value ``P(T_null < T) + U P(T_null = T)`` (``U`` uniform: ties
    broken at random, as SBC breaks tied ranks) is estimated by :data:`RANGE_TEST_RESAMPLES`
    seeded resamples (with the ``+1`` of a Monte Carlo test, so it stays valid); the verdict
    fails when it is below ``false_alarm``. It is exact for any
    prior and any ``N``: unlike the mean bound ``2 / (N + 1)`` (module docstring) it needs
    neither the number of training pairs nor a continuous prior.

    Parameters
    ----------
    x_draws : Tensor, shape (S, M, *x_shape)
        Posterior draws for the ``M`` held-out pairs, units of ``x``; NaN counts as inside.
    x : Tensor, shape (M, *x_shape)
        The held-out truths.
    x_range : (Tensor, Tensor), each of shape x_shape
        The elementwise range ``(low, high)`` of the training ``x``
        (:attr:`CVAE.training_x_range <ppl_cvae.models.cvae.CVAE.training_x_range>`); an
        element with ``low == high`` counts as inside.
    false_alarm : float in (0, 1), default 0.01
        Probability that the verdict fails a calibrated posterior.
    seed : int, default 0
        Seed of the resamples.

    Returns
    -------
    dict
        ``draws_outside`` and ``truths_outside`` (fractions of all values), ``p_value``,
        ``judged`` (False when draws leave the range, but for too few observations for even
        truths never outside to reach ``false_alarm``; True when no draw leaves it) and
        ``failures`` (one sentence, or empty).

    Raises
    ------
    ShapeError
        If ``x_draws`` is not ``(S, *x.shape)`` with ``S >= 1`` or the range is not
        ``x_shape``.
    DataError
        If the range is not finite or has ``low > high`` somewhere.
    ConfigError
        If ``false_alarm`` is not in (0, 1) or ``seed`` not an int in ``[0, 2**32 - 1]``.

    Examples
    --------
    >>> low, high = torch.zeros(1), torch.ones(1)
    >>> truths = torch.rand(200, 1, generator=torch.Generator().manual_seed(0))
    >>> leaky = torch.rand(50, 200, 1, generator=torch.Generator().manual_seed(1)) * 1.2
    >>> training_range_verdict(leaky, truths, (low, high))["failures"] != []
    True
    >>> inside = torch.rand(50, 200, 1, generator=torch.Generator().manual_seed(2))
    >>> training_range_verdict(inside, truths, (low, high))["failures"]
    []
    """
    false_alarm = as_probability(false_alarm, "false_alarm")
    seed = as_seed(seed, optional=False)
    low, high = (torch.as_tensor(v, dtype=torch.float64) for v in x_range)
    x_shape = tuple(x.shape[1:])
    if (
        x.dim() < 1
        or x_draws.dim() != x.dim() + 1
        or tuple(x_draws.shape[1:]) != tuple(x.shape)
        or x_draws.shape[0] < 1
        or tuple(low.shape) != x_shape
        or tuple(high.shape) != x_shape
    ):
        raise ShapeError(
            f"x_draws {tuple(x_draws.shape)}, truths {tuple(x.shape)} and the range "
            f"{tuple(low.shape)}, {tuple(high.shape)} do not agree: expected "
            f"{shape_text('S >= 1, M', x_shape)}, {shape_text('M', x_shape)} and {x_shape}"
        )
    if not bool(torch.isfinite(low).all() & torch.isfinite(high).all() & (low <= high).all()):
        raise DataError("the training range of x must be finite with low <= high everywhere")

    def fraction_outside(values: torch.Tensor) -> torch.Tensor:
        values = values.detach().to("cpu", torch.float64)
        outside = ((values < low) | (values > high)) & (high > low)
        lead = values.dim() - len(x_shape)
        return outside.reshape(*outside.shape[:lead], -1).double().mean(-1)

    g_truth = fraction_outside(x)  # (M,)
    g_draws = fraction_outside(x_draws)  # (S, M)
    pooled = torch.cat([g_truth.unsqueeze(0), g_draws])  # (S + 1, M)
    observed = float(g_truth.sum())
    # the smallest total the picks can give, and the chance of it: the most the test can show
    smallest = pooled.amin(0)
    chance_of_smallest = float((pooled == smallest).double().mean(0).log().sum().exp())
    generator = torch.Generator().manual_seed(seed)
    num, below, tied = pooled.shape[1], 0, 0
    columns = torch.arange(num)
    # at least 1,000 resamples (p-values to 1e-3, ten times finer than the default verdict),
    # fewer than RANGE_TEST_RESAMPLES for many observations: the work is resamples x M
    resamples = max(1000, min(RANGE_TEST_RESAMPLES, 20_000_000 // max(num, 1)))
    step = max(1, min(resamples, 4_000_000 // max(num, 1)))
    for start in range(0, resamples, step):
        size = min(step, resamples - start)
        rows = torch.randint(0, pooled.shape[0], (size, num), generator=generator)
        totals = pooled[rows, columns].sum(1)
        below += int((totals < observed - 1e-9).sum())
        tied += int(((totals - observed).abs() <= 1e-9).sum())
    # ties (most totals are 0 when few values leave the range) broken at random, as SBC
    # breaks tied ranks: the p-value is then uniform for a calibrated posterior
    tie_break = float(torch.rand((), generator=generator, dtype=torch.float64))
    p_value = (below + tie_break * (1 + tied)) / (1 + resamples)
    draws_outside = float(g_draws.mean())
    truths_outside = float(g_truth.mean())
    # judged: the test could fail, or nothing leaks at all (the pass then says so)
    judged = chance_of_smallest < false_alarm or float(g_draws.max()) == 0.0
    failures = []
    if judged and p_value < false_alarm:
        failures.append(
            f"the draws put {draws_outside:.2%} of their values outside the range of the "
            f"training x, the held-out truths {truths_outside:.2%}: a calibrated posterior's "
            f"draws leave it as often as the truths do (p = {p_value:.2g} < {false_alarm:g}); "
            "they leak beyond the prior's support: if the prior is bounded, give its bounds "
            "(ppl-cvae fit --x-bounds LOW,HIGH; ModelConfig.x_bounds)"
        )
    return {
        "draws_outside": draws_outside,
        "truths_outside": truths_outside,
        "p_value": p_value,
        "judged": judged,
        "failures": failures,
    }
