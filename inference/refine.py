"""Refinement of amortized draws with the forward operator.

:func:`refine_by_misfit` moves each amortized posterior draw downhill on the data misfit
``0.5 * sum(((F(x) - y) / sigma)^2)``, in the decoder's coefficient space when the model has a
basis decoder (so refined models keep its structure: straight, monotone lines for Two Birds)
and in ``x`` otherwise. For a noise-free problem the posterior lives on the zero-misfit set; the
amortized draws choose the basins, the refinement lands each draw on the solution of its basin.
It is a local optimisation (a MAP-style projection), not a posterior sampler: with real noise it
shrinks the spread, and importance sampling or MCMC refinement is the correct tool there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import cast

import torch
from tqdm.auto import tqdm

from inference.posterior import PosteriorDraws, draw_posterior, within_run_bounds
from ppl_cvae.checks import shape_text
from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem, check_batch_axes, describe_support
from ppl_cvae.problems.densities import (
    check_continuous_support,
    check_forward_gradient,
    checked_forward,
    whiten,
)

__all__ = [
    "RefineConfig",
    "accept_by_misfit",
    "misfit_rms",
    "refine_and_accept",
    "refine_by_misfit",
]


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`refine_and_accept` (CLI: ``ppl-cvae sample --refine``).

    Parameters
    ----------
    oversample : int, default 4
        Amortized candidates per returned draw.
    max_misfit : float or None, default 1.0
        Acceptance threshold on the RMS normalised residual (:func:`misfit_rms`).
    num_steps : int, default 300
        Adam steps of the misfit minimisation.
    learning_rate : float, default 0.1
        Adam step size in the problem's parameterisation, else in training sds of each
        element of ``x`` (:func:`refine_and_accept`).

    Raises
    ------
    ConfigError
        If a value is out of range.
    """

    oversample: int = 4
    max_misfit: float | None = 1.0
    num_steps: int = 300
    learning_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.oversample < 1 or self.num_steps < 1 or not self.learning_rate > 0:
            raise ConfigError(f"invalid refinement settings {self}")
        if self.max_misfit is not None and not self.max_misfit > 0:
            raise ConfigError(f"max_misfit must be > 0 or None, got {self.max_misfit}")


def refine_by_misfit(
    draws: PosteriorDraws,
    y: torch.Tensor,
    problem: Problem,
    *,
    num_steps: int = 300,
    learning_rate: float = 0.1,
    x_scale: torch.Tensor | None = None,
    progress: bool | None = None,
) -> PosteriorDraws:
    """Minimise each draw's data misfit by Adam, starting from the draw.

    Parameters
    ----------
    draws : PosteriorDraws
        ``x`` of shape ``(S, M, *x_shape)``.
    y : Tensor, shape (M, *y_shape)
        The observations the draws are conditioned on.
    problem : Problem
        Supplies the forward operator ``F``, the misfit scale ``sigma = problem.misfit_std``
        (or the full noise covariance, :func:`~ppl_cvae.problems.base.whiten`)
        and, when it has one, the parameterisation :meth:`problem.sampler_parameterisation()
        <ppl_cvae.problems.base.Problem.sampler_parameterisation>` (``x = B T(u)``, optimised
        over unconstrained ``u``; for Two Birds every refined draw is a prior-valid line pair;
        for a declared elementwise support, ``x = biject_to(support)(u)``, every refined draw
        stays inside it; for another declared support, one a basis does not keep, or an
        undeclared one (where ``log_prior`` is ``-inf``, or the problem's own ``in_support``
        rejects), a step that would leave it is undone, with a warning, so that a draw that
        starts inside stays inside and ``forward`` is never called outside).
    num_steps : int, default 300
        Adam steps (all draws move in parallel; each draw's objective is separate).
    learning_rate : float, default 0.1
        Adam step size, in units of the optimised parameters: the coordinates of the
        problem's parameterisation when it has one, else ``x / x_scale``.
    x_scale : Tensor, shape broadcastable to x_shape, optional
        Without a parameterisation, the unit in which ``x`` is optimised, in units of ``x``
        (positive, finite): Adam moves each element by about ``learning_rate * x_scale`` per
        step whatever the size of its gradient, so the step must be measured in the
        element's own spread. :func:`refine_and_accept` passes each element's training sd
        (:meth:`~ppl_cvae.models.cvae.CVAE.x_location_scale`), so that a problem written in ohm-m
        (``x`` about 1e3) or in units of 1e-8 refines as its well-scaled version does.
        Default: 1 (steps in the units of ``x``). Ignored with a parameterisation.
    progress : bool, optional
        A tqdm progress bar of the steps on stderr; None (default) shows it on a terminal
        only (tqdm's ``disable=None``).

    Returns
    -------
    PosteriorDraws
        Refined ``x`` (same shape), the same ``z``, and ``y_rep = F(x)`` (noise-free).

    Raises
    ------
    ConfigError
        If ``num_steps < 1``, or ``x_scale`` is not positive and finite everywhere; if the
        problem declares a discrete support, or its ``forward`` gives no gradient
        (:func:`~ppl_cvae.problems.densities.check_forward_gradient`).
    ShapeError
        If ``y`` is not ``(M, *y_shape)`` matching the draws, or the problem's ``forward``
        returns a tensor of another shape than ``(S, M, *y_shape)``.
    DataError
        If the problem's ``forward`` returns something that is not a torch tensor.

    Notes
    -----
    Objective per draw ``s``: ``0.5 * sum_i ((F(x_s)_i - y_i) / sigma)^2`` with
    ``x_s = B T(u_s)`` (or ``B c_s``, or ``x_s = x_scale * u_s``, by what the problem
    provides); the start is ``u_s = T^-1(B^+ vec(x_s))`` (or ``x_s / x_scale``), the draw's
    own parameters (:class:`~ppl_cvae.problems.parameterisation.Parameterisation`).

    References
    ----------
    Tarantola (2005), Inverse Problem Theory, SIAM, ch. 3 (least-squares misfit); Kingma and
    Ba (2015), Adam, arXiv:1412.6980.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    problem = as_problem(problem)
    if y.dim() != len(problem.y_shape) + 1 or y.shape[0] != draws.x.shape[1]:
        raise ShapeError(
            f"y must have shape {shape_text(str(draws.x.shape[1]), problem.y_shape)}, "
            f"got {tuple(y.shape)}"
        )
    check_continuous_support(problem, "misfit refinement")
    check_forward_gradient(problem, draws.x[:1, :1], "misfit refinement")
    # a basis, or a declared support: steps in its unconstrained coordinates stay inside it
    par = problem.sampler_parameterisation()
    scale = _step_unit(x_scale, tuple(problem.x_shape), draws.x)

    def to_x(theta: torch.Tensor) -> torch.Tensor:
        return theta * scale if par is None else par.to_x(theta)

    with torch.no_grad():
        start = draws.x / scale if par is None else par.from_x(draws.x)
    misfit = problem.misfit_noise  # its Cholesky factor is computed once, not every step
    theta = start.detach().requires_grad_(True)
    optim = torch.optim.Adam([theta], lr=learning_rate)
    num_frozen = num_held = 0
    # a support that the coordinates do not keep (not elementwise, a basis, biject_to
    # rounding onto an open boundary, or an undeclared one where log_prior is -inf): a step
    # that leaves it is undone, so forward is never called outside it
    guard = problem.restricts_support()
    x_shape = tuple(problem.x_shape)
    with torch.enable_grad():
        steps = tqdm(
            range(num_steps),
            desc="refine",
            unit="step",
            leave=False,
            disable=None if progress is None else not progress,
        )
        for _ in steps:
            optim.zero_grad()
            resid = misfit.whiten(checked_forward(problem, to_x(theta)) - y)
            # a draw whose misfit is not finite adds nothing (its NaN would reach every draw)
            per_draw = 0.5 * resid.pow(2).reshape(*resid.shape[:2], -1).sum(-1)  # (S, M)
            per_draw.where(torch.isfinite(per_draw), 0.0).sum().backward()
            grad = cast(torch.Tensor, theta.grad)
            bad = ~torch.isfinite(grad).reshape(*grad.shape[:2], -1).all(-1)  # (S, M)
            if bool(bad.any()):  # NaN gradients (F undefined there): those draws stay put
                num_frozen = max(num_frozen, int(bad.sum()))
                grad.copy_(torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0))
                grad[bad] = 0.0
            previous = theta.detach().clone() if guard else None
            optim.step()
            if previous is not None:
                with torch.no_grad():
                    # one batch axis, the training layout a user's log_prior takes
                    moved = to_x(theta)
                    out = ~problem.in_support(moved.reshape(-1, *x_shape)).reshape(
                        moved.shape[:2]
                    )  # (S, M)
                    if bool(out.any()):
                        num_held = max(num_held, int(out.sum()))
                        theta[out] = previous[out]
    if num_held:
        warnings.warn(
            f"refinement steps would have taken up to {num_held} of "
            f"{theta.shape[0] * theta.shape[1]} draws outside problem {problem.name!r}'s "
            f"{_support_words(problem)}; "
            "those steps were undone (the draws stay inside: refinement is partial there)",
            stacklevel=2,
        )
    if num_frozen:
        warnings.warn(
            f"the forward operator of problem {problem.name!r} gave a NaN or infinite misfit "
            f"gradient at up to {num_frozen} of {bad.numel()} draws; those draws were not moved "
            "(refinement is partial: they keep their amortized values)",
            stacklevel=2,
        )
    with torch.no_grad():
        x = to_x(theta)
        return PosteriorDraws(
            x=x, z=draws.z, y_rep=checked_forward(problem, x), decoder_noise=draws.decoder_noise
        )


def _support_words(problem: Problem) -> str:
    """Name the support a refinement step left, for the warning."""
    if problem.support is not None:
        return f"declared support {describe_support(problem.support)}"
    if not problem.has_prior_density:
        return "support (as its in_support decides)"
    return "support (where its log_prior is above -inf)"


def _step_unit(
    x_scale: torch.Tensor | None, x_shape: tuple[int, ...], x: torch.Tensor
) -> torch.Tensor:
    """Return ``x_scale`` as a tensor of ``x``'s dtype broadcastable to ``x_shape`` (1 if None).

    Raises
    ------
    ConfigError
        If ``x_scale`` does not broadcast to ``x_shape`` or is not positive and finite.
    """
    if x_scale is None:
        return torch.ones((), dtype=x.dtype, device=x.device)
    scale = torch.as_tensor(x_scale).detach().to(dtype=x.dtype, device=x.device)
    try:
        torch.broadcast_shapes(scale.shape, x_shape)
    except RuntimeError as err:
        raise ConfigError(
            f"x_scale of shape {tuple(scale.shape)} does not broadcast to x_shape {x_shape}"
        ) from err
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ConfigError(
            f"x_scale must be positive and finite (the unit of each element of x in the "
            f"refinement's steps), got values from {float(scale.min()):.3g} to "
            f"{float(scale.max()):.3g}"
        )
    return scale


def misfit_rms(x: torch.Tensor, y: torch.Tensor, problem: Problem) -> torch.Tensor:
    """Return the RMS of the whitened residual ``L^{-1} (F(x) - y)`` per draw.

    ``L`` is the Cholesky factor of the noise covariance; with a scalar noise model this is
    ``(F(x) - y) / misfit_std`` (:func:`~ppl_cvae.problems.base.whiten`). Its square is the
    chi-squared misfit per datum.

    Parameters
    ----------
    x : Tensor, shape (S, M, *x_shape)
    y : Tensor, shape (M, *y_shape)
    problem : Problem

    Returns
    -------
    Tensor, shape (S, M)
        ``sqrt(mean_i ((F(x)_i - y_i) / sigma)^2)``; about 1 for a model that fits within the
        noise, 0 for an exact solution of a noise-free problem.
    """
    resid = whiten(problem, checked_forward(problem, x) - y)
    return resid.pow(2).flatten(start_dim=2).mean(-1).sqrt()


def refine_and_accept(
    cvae: CVAE,
    y: torch.Tensor,
    num_samples: int,
    problem: Problem,
    *,
    oversample: int = 4,
    max_misfit: float | None = None,
    num_steps: int = 300,
    learning_rate: float = 0.1,
    seed: int | None = None,
    progress: bool | None = None,
) -> tuple[PosteriorDraws, torch.Tensor]:
    """Draw ``oversample * num_samples`` amortized draws, refine them, keep ``num_samples``.

    Parameters
    ----------
    cvae : CVAE
        Trained conditional model.
    y : Tensor, shape (M, *y_shape)
        Observations.
    num_samples : int
        Draws returned per observation.
    problem : Problem
        Forward operator, misfit scale and parameterisation (see :func:`refine_by_misfit`).
    oversample : int, default 4
        Candidates per returned draw.
    max_misfit : float, optional
        Acceptance threshold on :func:`misfit_rms`. Accepted candidates are kept in draw order
        (they are exchangeable); when fewer than ``num_samples`` are accepted the rest are the
        lowest-misfit rejected ones and a warning names how many. ``None``: keep the first
        ``num_samples`` refined candidates (no selection).
    num_steps, learning_rate : see :func:`refine_by_misfit`
        Without a parameterisation the step is measured in each element's training sd
        (``cvae.x_location_scale()``), so ``learning_rate`` means the same in any units.
    seed : int, optional
        Seed of the amortized draws.
    progress : bool, optional
        The progress bar of the steps (:func:`refine_by_misfit`): None shows it on a terminal.

    Returns
    -------
    draws : PosteriorDraws
        ``x`` of shape ``(num_samples, M, *x_shape)``.
    accepted : Tensor of bool, shape (num_samples, M)
        Whether each returned draw met ``max_misfit`` (all True without a threshold).

    Raises
    ------
    ConfigError
        If ``oversample < 1`` or ``max_misfit <= 0``, or the model has a facies decoder
        (``likelihood`` ``"bernoulli"`` or ``"categorical"``): gradient steps on ``x`` would
        leave the facies codes; or the problem's ``forward`` raises on two prior draws with
        two batch axes or none (:func:`~ppl_cvae.problems.base.check_batch_axes`: the
        message names the layout that works).
    ShapeError, DataError
        As :func:`~inference.posterior.draw_posterior` for ``y``, and as
        :func:`refine_by_misfit` for what the problem's ``forward`` returns.

    Notes
    -----
    For a noise-free problem the exact posterior sits on the zero-misfit set, so accepting
    refined draws whose misfit is below a small tolerance is an ABC-style acceptance step
    (Beaumont et al. 2002, Genetics 162, 2025) applied after the local optimisation. The
    relative weights of the modes are those of the amortized proposal pushed through the
    refinement, not the exact posterior's.
    """
    if oversample < 1 or (max_misfit is not None and not max_misfit > 0):
        raise ConfigError(
            f"oversample must be >= 1 and max_misfit > 0, got {oversample}, {max_misfit}"
        )
    if cvae.config.likelihood in ("bernoulli", "categorical"):
        raise ConfigError(
            f"refinement moves x continuously and cannot keep the facies codes of a "
            f"{cvae.config.likelihood!r} decoder; sample without --refine"
        )
    # the run's x_bounds are part of its prior: refinement steps stay inside them too
    problem = within_run_bounds(as_problem(problem), cvae.config.x_bounds_box())
    # a forward for one layout of models only is named now, not inside the optimiser
    check_batch_axes(problem, torch.Generator().manual_seed(0))
    candidates = draw_posterior(  # inside the prior's support, where it restricts one
        cvae, y, oversample * num_samples, problem=problem, seed=seed, predictive=False
    )
    # steps in units of each element's training sd: Adam's step is about learning_rate in
    # the optimised coordinates whatever the units of x (a problem in 1e-8 or 1e8 units)
    refined = refine_by_misfit(
        candidates,
        y,
        problem,
        num_steps=num_steps,
        learning_rate=learning_rate,
        x_scale=cvae.x_location_scale()[1].detach().to(candidates.x),
        progress=progress,
    )
    return accept_by_misfit(refined, y, problem, num_samples, max_misfit)


def accept_by_misfit(
    candidates: PosteriorDraws,
    y: torch.Tensor,
    problem: Problem,
    num_samples: int,
    max_misfit: float | None,
) -> tuple[PosteriorDraws, torch.Tensor]:
    """Keep ``num_samples`` of the candidate draws per observation, preferring those that fit.

    Parameters
    ----------
    candidates : PosteriorDraws
        ``x`` of shape ``(C, M, *x_shape)`` with ``C >= num_samples``.
    y : Tensor, shape (M, *y_shape)
    problem : Problem
        Forward operator and misfit scale (see :func:`misfit_rms`).
    num_samples : int
        Draws kept per observation.
    max_misfit : float or None
        Threshold on :func:`misfit_rms`; accepted candidates are kept in draw order, then the
        lowest-misfit rejected ones fill up (with a warning). ``None`` keeps the first
        ``num_samples``.

    Returns
    -------
    draws : PosteriorDraws
        ``x`` of shape ``(num_samples, M, *x_shape)``.
    accepted : Tensor of bool, shape (num_samples, M)

    Raises
    ------
    ConfigError
        If there are fewer than ``num_samples`` candidates.
    """
    rms = misfit_rms(candidates.x, y, problem)  # (C, M)
    num_candidates = rms.shape[0]
    if num_candidates < num_samples:
        raise ConfigError(f"{num_candidates} candidates cannot give {num_samples} draws")
    order = torch.arange(num_candidates, dtype=rms.dtype)[:, None].expand_as(rms)
    if max_misfit is None:
        key = order
        accepted_all = torch.ones_like(rms, dtype=torch.bool)
    else:
        accepted_all = rms <= max_misfit
        # accepted first, in draw order; then the rejected ones by increasing misfit (a NaN
        # misfit, where F is undefined, last)
        finite = torch.isfinite(rms)
        scale = rms[finite].max() + 1 if bool(finite.any()) else torch.ones((), dtype=rms.dtype)
        rank = torch.where(finite, rms / scale, torch.full_like(rms, 2.0))
        key = torch.where(accepted_all, order, num_candidates + rank)
    index = key.argsort(dim=0)[:num_samples]  # (num_samples, M)
    accepted = accepted_all.gather(0, index)
    short = int((~accepted).sum())
    if short:
        warnings.warn(
            f"{short} of {accepted.numel()} returned draws exceed max_misfit={max_misfit}; "
            "raise oversample or num_steps (ppl-cvae sample --oversample, --refine-steps)",
            stacklevel=2,
        )

    def pick(t: torch.Tensor) -> torch.Tensor:
        idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return t.gather(0, idx)

    y_rep = candidates.y_rep
    if y_rep is None:
        y_rep = checked_forward(problem, candidates.x)
    draws = PosteriorDraws(
        x=pick(candidates.x),
        z=pick(candidates.z),
        y_rep=pick(y_rep),
        decoder_noise=candidates.decoder_noise,
    )
    return draws, accepted
