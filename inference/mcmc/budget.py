"""The draw budget of NUTS and the R-hat bound it is judged by.

How many draws per chain keep the largest R-hat of many sampled coordinates under 1.01
(:func:`nuts_draws_per_chain`, :data:`NUTS_TAIL_EFFICIENCY`), the bound on that largest
R-hat that chains of independent draws respect (:func:`rhat_threshold`), the fewest draws
:func:`~inference.mcmc.nuts_sample` accepts, and how many amortized draws to pass as its
``init`` (:func:`preconditioner_draws`), and the one-line verdict of the chains of every
observation (:func:`chains_summary`, for NUTS on ``x``, latent NUTS and facies MCMC). The
method is described in the docstring of :mod:`inference.mcmc`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from ppl_cvae.errors import ConfigError

__all__ = [
    "MIN_DRAWS_PER_CHAIN",
    "MIN_EFFECTIVE_DRAWS_PER_CHAIN",
    "NUTS_TAIL_EFFICIENCY",
    "RHAT_JUDGE_LIMIT",
    "RHAT_THRESHOLD",
    "ChainVerdict",
    "chains_summary",
    "rhat_passes",
    "nuts_draws_per_chain",
    "preconditioner_draws",
    "rhat_threshold",
]


RHAT_THRESHOLD = 1.01
"""R-hat above which one quantity's chains have not mixed (Vehtari et al. 2021 recommend
1.01); the bound for the largest over many quantities is :func:`rhat_threshold`."""

RHAT_JUDGE_LIMIT = 1.1
"""Largest R-hat bound a verdict is given under. Chains with an R-hat above 1.1 have not mixed
by the classic rule (Gelman and Rubin 1992; Gelman et al. 2013, BDA3 11.4); when so few draws
were taken that the bound of mixed chains (:func:`rhat_threshold`) lies above it, such chains
would pass: the verdict is then "too few draws to judge" (:func:`rhat_passes`). Four chains of
independent draws of 10 quantities get a bound of 1.098 at 30 draws per chain (1.125 at 25),
of 1000 quantities 1.090 at 50 (1.115 at 40): :func:`~inference.arviz_io.chain_checks` on
standard normal draws, numpy seed 0."""

MIN_EFFECTIVE_DRAWS_PER_CHAIN = 100
"""The fewest effective draws per chain the R-hat bound is computed for
(:func:`~inference.arviz_io.rhat_bound`): chains with fewer are judged as if they had this
many, so a chain that drifts (a random walk, few effective draws) cannot widen its own bound
past that of 100. Vehtari et al. (2021) recommend a bulk ESS above 100 per chain before
R-hat and the estimates are trusted."""

MIN_DRAWS_PER_CHAIN = 4
"""Fewest draws per chain :func:`nuts_sample` accepts: the split R-hat halves each chain and
the ESS estimator needs at least four draws (Vehtari et al. 2021; Pyro's
``pyro.ops.stats.effective_sample_size`` asserts it)."""


def rhat_threshold(
    num_chains: int,
    num_draws: int,
    num_quantities: int = 1,
    false_alarm: float = 0.01,
    effective_draws: float | None = None,
) -> float:
    r"""Return the bound on the largest R-hat of many quantities that mixed chains respect.

    Parameters
    ----------
    num_chains : int
        Chains (each split in halves by the rank-normalised split R-hat).
    num_draws : int
        Draws per chain (at least 4).
    num_quantities : int, default 1
        Quantities whose largest R-hat is compared with the bound (the sampled coordinates).
    false_alarm : float in (0, 1), default 0.01
        Probability that draws from the target exceed the bound.
    effective_draws : float, optional
        Effective draws per chain of autocorrelated chains, from the autocorrelation within
        the chains alone (:func:`~inference.arviz_io.within_chain_ess`); ``None`` (default)
        or any value of at least ``num_draws`` means independent draws.

    Returns
    -------
    float
        ``max(1.01, t)``, with ``t`` the ``1 - false_alarm`` quantile of the largest of
        ``num_quantities`` rank-normalised split R-hats (ArviZ's ``az.rhat``, bulk and folded)
        of ``num_chains x num_draws`` draws: 1.0173 for 4 x 250 independent draws of 1024
        quantities (Monte Carlo over 100 sets of independent draws: 99% quantile 1.0165,
        median 1.0113; 87% of them are above 1.01); 1.0225 for 4 x 289 draws of 2
        quantities with 122 effective draws per chain (an AR(1) chain of correlation 0.4).

    Raises
    ------
    ConfigError
        If a count is below its minimum, ``false_alarm`` is not in (0, 1) or
        ``effective_draws`` is not positive.

    Notes
    -----
    Vehtari et al. (2021) recommend R-hat below 1.01 for each quantity. With ``m = 2 C``
    split chains of ``n = D // 2`` draws of independent draws, the rank-normalised draws are
    close to standard normal, the between-chain variance ``B / n`` over the within-chain
    variance ``W`` is ``F / n`` with ``F ~ F(m - 1, m (n - 1))`` (Gelman and Rubin 1992), and
    ``R-hat^2 = (n - 1) / n + F / n``. The largest over ``d`` quantities of the larger of the
    bulk and tail R-hats (nearly independent: a mean and a mean absolute deviation) exceeds
    ``t`` with probability ``1 - (1 - p)^{2 d}``, ``p = P(F > n t^2 - n + 1)``; solving for
    ``p`` gives ``t``. For a thousand quantities the largest R-hat of exact, independent draws
    is above 1.01 more often than not at 4 x 250 draws, so "the largest R-hat <= 1.01" would
    call most exact chains unmixed.

    Chains whose draws are autocorrelated have larger R-hats even when mixed: the variance of
    a split chain's mean is that of ``n_e`` independent draws, ``n_e`` its effective draws,
    so ``B / n ~ F / n_e`` while the within-chain variance keeps its ``(n - 1) / n``, and
    ``R-hat^2 = (n - 1) / n + F / n_e`` with ``F ~ F(m - 1, m (n_e - 1))``. Given
    ``effective_draws`` (``2 n_e``), the bound uses it. It must come from the autocorrelation
    within the chains alone: ArviZ's ``az.ess`` includes the variance between the chains, so
    chains that disagree (the failures R-hat is for) would lower it and loosen their own
    bound. :func:`~inference.arviz_io.rhat_bound` uses at least 100 effective draws per
    chain (:data:`MIN_EFFECTIVE_DRAWS_PER_CHAIN`), so that a drifting chain does not widen its
    own bound. Measured on AR(1) chains of a 2-D normal at 4 x 289 draws (400 sets each;
    ``benchmarks/rhat_autocorrelated.py``, docs/measurements.md): the bound of independent
    draws (1.01 here) is exceeded by 24% of mixed chains at correlation 0.4 (0.43 effective
    draws per draw, about what NUTS gives on a low-dimensional posterior) and 72% at 0.6,
    ``rhat_bound`` by 2.0% and 6.0% (at 0.6 the chains have 72 effective draws each, below the
    floor; at 0.8, 32 each, 72%: too few effective draws fail as they should); a chain
    shifted by 0.6 sd is caught 100% and 98.5% of the time. NUTS needs many effective draws for the
    folded (tail) R-hat in particular: on a 1024-dimensional standard normal (the target an
    exact preconditioner leaves), 4 x 250 draws had bulk R-hat at most 1.003 and bulk ESS
    above 1300 (trajectories of about half an orbit send ``v`` to about ``-v``), but folded
    R-hat up to 1.04 and tail ESS near 300, because ``|v|`` is what such trajectories keep
    (``benchmarks/posterior_correction.py``, README).

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat for assessing convergence of MCMC, Bayesian Analysis 16,
    667-718, DOI 10.1214/20-BA1221. Gelman and Rubin (1992), Inference from iterative
    simulation using multiple sequences, Statistical Science 7, 457-472.

    Examples
    --------
    >>> round(rhat_threshold(4, 250, 1024), 4), rhat_threshold(4, 1000, 1)
    (1.0173, 1.01)
    """
    if num_chains < 1 or num_draws < 4 or num_quantities < 1:
        raise ConfigError(
            "rhat_threshold needs num_chains >= 1, num_draws >= 4 and num_quantities >= 1, "
            f"got {num_chains}, {num_draws}, {num_quantities}"
        )
    if not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    if effective_draws is not None and not effective_draws > 0:  # NaN fails too
        raise ConfigError(f"effective_draws must be positive, got {effective_draws}")
    quantile = _largest_rhat_quantile(
        num_chains, num_draws, num_quantities, false_alarm, effective_draws
    )
    return max(RHAT_THRESHOLD, quantile)


def _largest_rhat_quantile(
    num_chains: int,
    num_draws: int,
    num_quantities: int,
    false_alarm: float,
    effective_draws: float | None = None,
) -> float:
    """Return the ``1 - false_alarm`` quantile of the largest R-hat of mixed chains.

    See :func:`rhat_threshold`, Notes; without the floor at 1.01.
    """
    from scipy import stats  # scipy is an ArviZ and scikit-learn dependency

    m, n = 2 * num_chains, num_draws // 2
    n_e = float(n) if effective_draws is None else min(max(effective_draws / 2, 2.0), n)
    per_test = -math.expm1(math.log1p(-false_alarm) / (2 * num_quantities))
    f = float(stats.f.isf(per_test, m - 1, m * (n_e - 1)))
    return math.sqrt((n - 1) / n + f / n_e)


NUTS_TAIL_EFFICIENCY = 0.45
"""Tail ESS per draw of NUTS with the ``ppl-cvae sample --method nuts`` defaults, the smallest
over coordinates, as measured: 0.486 to 0.676 (median 0.557) over 14 runs of those defaults
(amortized start and preconditioner, 150 step-size-only warm-up iterations, 4 chains of
``nuts_draws_per_chain`` draws at the former 0.35) on crosshole (6 held-out observations,
0.486-0.566), gravity (4, 0.572-0.617), linear_gaussian (3, 0.513-0.676) and mt1d (1, 0.515);
the constant is the smallest, rounded down to a multiple of 0.05. Cut to the draws this
constant gives (783 per chain for 1024 coordinates), all 14 runs kept R-hat <= 1.01 (largest
1.0093) and min ESS >= 400 (``benchmarks/nuts_tail_efficiency.py``; docs/measurements.md, "NUTS
within 60 s per observation"). The former 0.35 came from 4 x 250 draws after 250 warm-up iterations
with mass adaptation, whose ESS estimates are lower. The folded R-hat follows the tail ESS,
so :func:`nuts_draws_per_chain` divides by it. Other settings (``adapt_mass_matrix``, a
``"prior..."`` preconditioner, a poor amortized fit) were not measured: pass
``tail_efficiency`` to :func:`nuts_draws_per_chain`, or more draws, where the verdict fails."""


def nuts_draws_per_chain(
    dim: int,
    num_chains: int = 4,
    *,
    tail_efficiency: float = NUTS_TAIL_EFFICIENCY,
    false_alarm: float = 0.1,
    min_draws: int = 250,
    max_draws: int = 2000,
) -> int:
    r"""Return the draws per chain that keep NUTS's largest R-hat of ``dim`` values under 1.01.

    Parameters
    ----------
    dim : int
        Sampled coordinates (cells of ``x``, or the parameters of a basis), each monitored by
        R-hat.
    num_chains : int, default 4
        Chains.
    tail_efficiency : float in (0, 1], default :data:`NUTS_TAIL_EFFICIENCY`
        Tail ESS per draw of the chains (the smallest over coordinates).
    false_alarm : float in (0, 1), default 0.1
        Probability that mixed chains still exceed 1.01 somewhere.
    min_draws, max_draws : int, default 250 and 2000
        Bounds on the answer (``max_draws`` is the budget: about 20 leapfrog steps per draw).

    Returns
    -------
    int
        ``ceil(n_eff / tail_efficiency)`` clipped to ``[min_draws, max_draws]``, with
        ``n_eff`` the fewest independent draws per chain whose largest rank-normalised split
        R-hat over ``dim`` quantities (bulk and folded) stays at or under 1.01 with probability
        ``1 - false_alarm`` (the quantile of :func:`rhat_threshold`, Notes). At 4 chains:
        783 for 1024 coordinates, 734 for 512, 347 for 4 (a single R-hat of 100 independent
        draws per chain already scatters by about 0.01).

    Raises
    ------
    ConfigError
        If a count is below 1, ``tail_efficiency`` is not in (0, 1], ``false_alarm`` is not
        in (0, 1) or ``min_draws > max_draws``.

    Notes
    -----
    The folded R-hat of autocorrelated chains is distributed about as that of
    ``tail ESS`` independent draws, so the R-hat of NUTS on many coordinates is limited by the
    tail ESS (trajectories of about half an orbit keep ``|x - median|``), not by the bulk ESS.
    At these lengths the R-hat bound of chains of the assumed efficiency is 1.01; the verdict
    of :func:`nuts_sample` judges the chains at their measured within-chain effective draws
    (:func:`~inference.arviz_io.rhat_bound`), so chains that mix more slowly than assumed are
    not called unmixed for that alone while they have at least 100 effective draws each
    (their bound is wider), and mixed chains exceed it 1-2% of the time at 0.43 effective
    draws per draw; ``false_alarm`` here only sizes the budget.

    References
    ----------
    Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), Rank-normalization, folding, and
    localization: an improved R-hat, Bayesian Analysis 16, DOI 10.1214/20-BA1221.

    Examples
    --------
    >>> nuts_draws_per_chain(1024), nuts_draws_per_chain(512), nuts_draws_per_chain(4)
    (783, 734, 347)
    """
    if dim < 1 or num_chains < 1 or min_draws < 4 or min_draws > max_draws:
        raise ConfigError(
            "nuts_draws_per_chain needs dim >= 1, num_chains >= 1 and 4 <= min_draws <= "
            f"max_draws, got {dim}, {num_chains}, {min_draws}, {max_draws}"
        )
    if not 0.0 < tail_efficiency <= 1.0:
        raise ConfigError(f"tail_efficiency must be in (0, 1], got {tail_efficiency}")
    if not 0.0 < false_alarm < 1.0:
        raise ConfigError(f"false_alarm must be in (0, 1), got {false_alarm}")
    n_eff = 4
    while (
        n_eff < max_draws
        and _largest_rhat_quantile(num_chains, n_eff, dim, false_alarm) > RHAT_THRESHOLD
    ):
        n_eff += 2
    return int(min(max(math.ceil(n_eff / tail_efficiency), min_draws), max_draws))


def preconditioner_draws(dim: int, num_chains: int = 1) -> int:
    """Return how many amortized draws to pass as ``init`` for ``dim`` sampled coordinates.

    20 per coordinate, so that their covariance (the preconditioner) is well estimated, at
    most ``2^26`` values in all, at least 2000 and at least ``num_chains``. Draws are cheap
    next to NUTS.

    Examples
    --------
    >>> preconditioner_draws(1024), preconditioner_draws(4096), preconditioner_draws(4)
    (20480, 16384, 2000)
    """
    return max(min(20 * dim, 2**26 // dim), 2000, num_chains)


class ChainVerdict(Protocol):
    """What :func:`chains_summary` reads of one observation's MCMC result.

    :class:`~inference.mcmc.MCMCResult`, :class:`~inference.latent_mcmc.LatentMCMCResult` and
    :class:`~inference.facies_mcmc.FaciesMCMCResult` are ones.
    """

    @property
    def rhat(self) -> float:
        """Largest rank-normalised split R-hat over the monitored quantities."""

    @property
    def min_ess(self) -> float:
        """Smallest bulk ESS over the monitored quantities (all chains)."""

    @property
    def seconds(self) -> float:
        """Wall-clock time of the chains, s."""

    @property
    def rhat_threshold(self) -> float:
        """The bound on ``rhat`` that mixed chains respect (:func:`rhat_threshold`)."""

    @property
    def converged(self) -> bool:
        """Whether the chains passed the sampler's checks."""


def rhat_passes(rhat: float, bound: float) -> bool:
    """Return whether chains with largest R-hat ``rhat`` pass against their ``bound``.

    Parameters
    ----------
    rhat : float
        The largest split R-hat over the sampled quantities (NaN: too few draws to split).
    bound : float
        The bound mixed chains respect (:func:`~inference.arviz_io.rhat_bound`).

    Returns
    -------
    bool
        ``rhat <= bound`` and ``bound <= RHAT_JUDGE_LIMIT`` (:data:`RHAT_JUDGE_LIMIT`): chains too
        short to be judged (a bound above 1.1) do not pass, whatever their R-hat. NaN (too few
        draws to split) never passes.

    Examples
    --------
    >>> rhat_passes(1.03, 1.05), rhat_passes(1.39, 1.398), rhat_passes(float("nan"), 1.01)
    (True, False, False)
    """
    return rhat <= bound <= RHAT_JUDGE_LIMIT


def chains_summary(
    label: str,
    results: Sequence[ChainVerdict],
    details: str,
    also_failed: str,
    flags: str,
) -> tuple[str, bool]:
    """Return the one-line verdict of MCMC runs, one per observation, and whether all converged.

    Parameters
    ----------
    label : str
        The sampler's name, first in the line (``"NUTS"``, ``"latent NUTS"``).
    results : sequence of ChainVerdict
        One per observation (at least one).
    details : str
        The sampler's own figures, between the ESS and the time (e.g. its divergences).
    also_failed : str
        Text after the bound in the FAILED note: what else fails an observation, as
        ``", or divergences"`` (or empty).
    flags : str
        The flags that run the chains longer, for the FAILED note.

    Returns
    -------
    summary : str
        ``LABEL: R-hat <worst> (max), min ESS <n>, DETAILS, <t> s``, ending in ``; FAILED for
        n of M observation(s) (observation i: R-hat <r> > <its bound>...)`` when some did not
        converge (``i`` the observation furthest above its own bound).
    ok : bool
        Whether every result converged.

    Raises
    ------
    ConfigError
        If ``results`` is empty.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> run = SimpleNamespace(rhat=1.2, min_ess=8.0, seconds=2.0, rhat_threshold=1.01,
    ...                       converged=False)
    >>> summary, ok = chains_summary("NUTS", [run], "0 divergent transition(s)", "", "--warmup")
    >>> ok, summary.split("; ")[0]
    (False, 'NUTS: R-hat 1.2000 (max), min ESS 8, 0 divergent transition(s), 2.0 s')
    """
    if not results:
        raise ConfigError(f"the {label} summary needs at least one result")
    rhats = [r.rhat for r in results]
    worst = math.nan if any(math.isnan(r) for r in rhats) else max(rhats)
    failed = sum(not r.converged for r in results)
    why = ""
    if math.isnan(worst):
        why = " (too few draws to split a chain: at least 8 for one chain, 4 for several)"
    elif math.isinf(worst):
        why = " (a coordinate never moved in any chain)"
    summary = (
        f"{label}: R-hat {worst:.4f} (max){why}, min ESS "
        f"{min(r.min_ess for r in results):.0f}, {details}, "
        f"{sum(r.seconds for r in results):.1f} s"
    )
    if failed:
        # each observation has its own bound: name the one furthest above it
        above = [
            (math.inf if math.isnan(r.rhat) else r.rhat - r.rhat_threshold, i)
            for i, r in enumerate(results)
        ]
        excess, first = max(above)
        if math.isnan(results[first].rhat):
            where = f"observation {first}: no R-hat, too few draws"
        elif excess > 0:
            where = (
                f"observation {first}: R-hat {results[first].rhat:.4f} > its bound "
                f"{results[first].rhat_threshold:.4f}"
            )
        elif any(r.rhat_threshold > RHAT_JUDGE_LIMIT for r in results):
            short = max((r.rhat_threshold, i) for i, r in enumerate(results))[1]
            where = (
                f"observation {short}: too few draws to judge, its R-hat bound "
                f"{results[short].rhat_threshold:.4f} is above {RHAT_JUDGE_LIMIT}"
            )
        else:
            where = "R-hat within its bound"
        summary += (
            f"; FAILED for {failed} of {len(results)} observation(s) ({where}{also_failed}): "
            f"the chains have not mixed; run longer ({flags})"
        )
    return summary, failed == 0
