"""A problem's fingerprint: whether the problem a run is loaded with is the one it was fitted on.

A checkpoint records how to rebuild its problem (a registry name or a
``package.module:factory`` reference, with arguments), not the problem itself: the code behind
the reference can change after the fit (a new default noise level, an edited forward
operator, another prior). The model would then be corrected, judged and its likelihood
written with physics it was never fitted for, with nothing to say so.
:func:`problem_fingerprint` evaluates the problem on a few fixed probe models when the model is
saved; :func:`fingerprint_changes` evaluates the problem at hand on the same models when it is
loaded and names what differs. This is the check-by-evaluation that build tools make of their
inputs (a content hash), applied to the parts of the problem that enter the posterior: the
forward operator, the prior density and the noise model (Tarantola 2005, ch. 1: the posterior
is fixed by these three).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch

from ppl_cvae.checks import seeded_rng
from ppl_cvae.errors import NoPriorDensityError

__all__ = [
    "PROBE_MODELS",
    "check_fingerprint",
    "fingerprint_changes",
    "problem_fingerprint",
]

PROBE_MODELS = 2
"""Number of prior draws (seed 0) the forward operator and prior density are evaluated on."""

_FORWARD_RTOL = 1e-5
"""A forward value differs when it moves by more than this times its datum's largest ``|F(x)|``
over the probe models, plus :data:`_NOISE_FRACTION` of its noise sd (seeded draws: times the
largest ``|x|``)."""

_NUMBER_RTOL = 1e-6
"""``noise_std``, ``misfit_std``, prior log densities and noise covariance entries differ when
they move by more than this relative amount (log densities: relative to ``max(1, |value|)``)."""

_MAX_DATA = 2**24
"""Most data per probe model a stored fingerprint may hold (a forged file is refused)."""

_NOISE_FRACTION = 1e-2
"""A forward value also passes when it moves by at most this fraction of its datum's noise sd
(``noise_cov``'s diagonal, else ``noise_std``, else ``misfit_std``): nothing a posterior sees."""

_COV_PROBES = 2
"""Number of fixed random vectors ``v`` whose quadratic forms ``v^T C_e v`` summarise the noise
covariance (with its diagonal), so that a large covariance is not stored whole."""


def _noise_summary(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the diagonal ``(m,)`` and the quadratic forms ``(2,)`` of a covariance, float64."""
    cov = cov.detach().to("cpu", torch.float64)
    probes = torch.randn(
        _COV_PROBES, cov.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return cov.diagonal().clone(), ((probes @ cov) * probes).sum(-1)


def _forward64(problem: Any, x: torch.Tensor) -> torch.Tensor:
    """Return ``F(x)`` in float64 on the CPU, ``x`` float64 (as NUTS evaluates it).

    A forward operator that takes float32 only (its matrices in float32, as fit and the
    amortized draws use it) is evaluated on ``x`` cast to float32 instead.
    """
    with torch.no_grad():
        try:
            value = problem.forward(x)
        except (Exception, SystemExit):  # e.g. a float32 matrix times float64 models
            value = problem.forward(x.float())
        return torch.as_tensor(value).detach().to("cpu", torch.float64)


def _log_prior64(problem: Any, x: torch.Tensor) -> torch.Tensor:
    """Return ``log p(x)`` in float64 on the CPU, with ``x`` as :func:`_forward64` takes it."""
    with torch.no_grad():
        try:
            value = problem.log_prior(x)
        except NoPriorDensityError:
            raise
        except (Exception, SystemExit):
            value = problem.log_prior(x.float())
        return torch.as_tensor(value).detach().to("cpu", torch.float64)


def _draw_probes(problem: Any) -> torch.Tensor:
    """Return :data:`PROBE_MODELS` prior draws (generator and global RNG seeded 0), float64."""
    generator = torch.Generator().manual_seed(0)
    with seeded_rng(0):  # a sampler that ignores its generator leaves the caller's RNG
        x = torch.as_tensor(problem.sample_prior(PROBE_MODELS, generator=generator))
    return x.detach().to("cpu", torch.float64)


def problem_fingerprint(problem: Any) -> dict[str, torch.Tensor] | None:
    """Evaluate ``problem`` on :data:`PROBE_MODELS` prior draws: what a checkpoint stores.

    Parameters
    ----------
    problem : Problem
        The problem a model is fitted with.

    Returns
    -------
    dict of str to Tensor, or None
        Every value a float64 CPU tensor: ``"x"`` ``(k, *x_shape)`` the probe models (prior
        draws from a generator seeded 0, ``k`` = :data:`PROBE_MODELS`), ``"forward"``
        ``(k, *y_shape)`` their noise-free data ``F(x)`` (``x`` in float64), ``"noise_std"`` and
        ``"misfit_std"`` (0-d, units of ``y``), and where they exist ``"x_seeded"`` (0-d, 1: the
        prior sampler gives ``x`` again for the same seed), ``"log_prior"`` ``(k,)`` (nats,
        wherever ``log_prior`` answers), ``"noise_cov_diag"`` ``(m,)`` and
        ``"noise_cov_quad"`` ``(2,)`` (the diagonal of the noise covariance and two quadratic
        forms of it, units of ``y`` squared). None when
        the problem's code raises or gives non-finite values on its own prior draws: such a
        problem cannot be checked later, and the model is still saved.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> record = problem_fingerprint(LinearGaussian(x_dim=3, y_dim=2))
    >>> sorted(record), tuple(record["forward"].shape)
    (['forward', 'log_prior', 'misfit_std', 'noise_std', 'x', 'x_seeded'], (2, 2))
    """
    try:
        x = _draw_probes(problem)
        record = {
            "x": x,
            "forward": _forward64(problem, x),
            "noise_std": torch.tensor(float(problem.noise_std), dtype=torch.float64),
            "misfit_std": torch.tensor(float(problem.misfit_std), dtype=torch.float64),
        }
        if torch.equal(_draw_probes(problem), x):  # the sampler follows its seed
            record["x_seeded"] = torch.tensor(1.0, dtype=torch.float64)
        try:  # whenever log_prior answers (importance sampling calls it, declared or not)
            log_prior = _log_prior64(problem, x)
            if tuple(log_prior.shape) == (len(x),) and bool(torch.isfinite(log_prior).all()):
                record["log_prior"] = log_prior
        except (Exception, SystemExit):  # no density (NoPriorDensityError) or failing code
            pass
        cov = getattr(problem, "noise_cov", None)
        if cov is not None:
            record["noise_cov_diag"], record["noise_cov_quad"] = _noise_summary(cov)
    except (Exception, SystemExit):  # a user problem's code may raise anything: no fingerprint
        return None
    if not all(bool(torch.isfinite(v).all()) for v in record.values()):
        return None
    if tuple(record["forward"].shape[1:]) != tuple(problem.y_shape):
        return None
    return record


def check_fingerprint(
    record: Any, x_shape: tuple[int, ...], y_shape: tuple[int, ...] | None
) -> str | None:
    """Return why a stored fingerprint is malformed, or None when it is well formed.

    Parameters
    ----------
    record : object
        What a checkpoint file holds under ``problem_check`` (untrusted input).
    x_shape, y_shape : tuple of int
        The model's event shapes; ``y_shape`` None for an unconditional model (fitted on a
        problem's prior draws), whose problem's data shape is then read off ``"forward"``.

    Returns
    -------
    str or None
        One phrase naming the first fault (not a dict, a missing or unexpected key, a value
        that is not a finite float64 CPU tensor of the shape :func:`problem_fingerprint` gives
        for these event shapes), or None.

    Examples
    --------
    >>> check_fingerprint({"x": torch.zeros(2, 3)}, (3,), (2,))
    "lacks ['forward', 'noise_std', 'misfit_std']"
    """
    if not isinstance(record, dict):
        return f"must be a dict, got {type(record).__name__}"
    x = record.get("x")
    k = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else PROBE_MODELS
    if not 1 <= k <= 16:
        return f"'x' must hold 1 to 16 models, got {k}"
    forward = record.get("forward")
    if y_shape is None:  # an unconditional model: its problem's y_shape is not stored
        if not (isinstance(forward, torch.Tensor) and forward.dim() >= 2):
            return "'forward' must be a float64 CPU tensor of shape (k, *y_shape)"
        y_shape = tuple(forward.shape[1:])
    m = math.prod(y_shape)
    if m > _MAX_DATA:
        return f"'forward' holds {m} data per model, more than {_MAX_DATA}"
    shapes = {
        "x": (k, *x_shape),
        "forward": (k, *y_shape),
        "noise_std": (),
        "misfit_std": (),
        "x_seeded": (),
        "log_prior": (k,),
        "noise_cov_diag": (m,),
        "noise_cov_quad": (_COV_PROBES,),
    }
    required = ("x", "forward", "noise_std", "misfit_std")
    missing = [key for key in required if key not in record]
    if missing:
        return f"lacks {missing}"
    if ("noise_cov_diag" in record) != ("noise_cov_quad" in record):
        return "must hold both or neither of 'noise_cov_diag' and 'noise_cov_quad'"
    for key, value in record.items():
        if key not in shapes:
            return f"has an unexpected key {str(key)[:30]!r}"
        if not (
            isinstance(value, torch.Tensor)
            and value.layout == torch.strided
            and value.device.type == "cpu"
            and value.dtype == torch.float64
            and tuple(value.shape) == shapes[key]
        ):
            return f"{key!r} must be a float64 CPU tensor of shape {shapes[key]}"
        if not bool(torch.isfinite(value).all()):
            return f"{key!r} holds NaN or inf"
    return None


def _data_sd(record: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the noise sd of every datum, shape ``y_shape`` (or 0-d), from a fingerprint."""
    forward = record["forward"]
    if "noise_cov_diag" in record:
        return record["noise_cov_diag"].clamp(min=0).sqrt().reshape(forward.shape[1:])
    sd = record["noise_std"] if float(record["noise_std"]) > 0 else record["misfit_std"]
    return sd.abs()


def _moved(old: float, new: float, scale: float) -> bool:
    """Return whether ``new`` differs from ``old`` by more than the tolerance (NaN: moved)."""
    return not abs(new - old) <= _NUMBER_RTOL * scale


def fingerprint_changes(
    problem: Any,
    record: dict[str, torch.Tensor],
    *,
    parts: Collection[str] = ("noise", "forward", "prior"),
) -> list[str]:
    """Name what differs between ``problem`` and the problem a fingerprint was taken of.

    Parameters
    ----------
    problem : Problem
        The problem at hand (rebuilt from a checkpoint's record, or passed by the user).
    record : dict
        A :func:`problem_fingerprint` record, well formed (:func:`check_fingerprint`).
    parts : collection of {"noise", "forward", "prior"}, default all three
        What to compare: the noise and misfit scale (attributes: no problem code runs), the
        forward operator and the prior density (evaluated on the stored probe models). A
        problem the user passed explicitly is compared on its noise alone (its code may count
        its calls); an unconditional model on its prior alone (it never sees the data).

    Returns
    -------
    list of str
        One phrase per difference, e.g. ``"noise_std 0.05 -> 0.5"`` or ``"F(x) of the stored
        probe models moved by up to 0.31 (units of y)"``; empty when the noise, misfit scale,
        prior density and forward operator all agree on the probe models. Evaluating the
        problem's code never raises here: an exception (or a ``sys.exit``) is reported as a
        difference.

    Examples
    --------
    >>> from ppl_cvae.problems import LinearGaussian
    >>> record = problem_fingerprint(LinearGaussian(x_dim=3, y_dim=2, noise_std=0.1))
    >>> fingerprint_changes(LinearGaussian(x_dim=3, y_dim=2, noise_std=0.1), record)
    []
    >>> fingerprint_changes(LinearGaussian(x_dim=3, y_dim=2, noise_std=0.2), record)
    ['noise_std 0.1 -> 0.2', 'misfit_std 0.1 -> 0.2']
    """
    changes: list[str] = []
    if "noise" in parts:
        changes += _noise_changes(problem, record)
    if "forward" in parts:
        changes += _forward_changes(problem, record)
    if "prior" in parts:
        changes += _prior_changes(problem, record)
    return changes


def _noise_changes(problem: Any, record: dict[str, torch.Tensor]) -> list[str]:
    """Return the noise part of :func:`fingerprint_changes` (std, misfit scale, covariance)."""
    changes = []
    for key in ("noise_std", "misfit_std"):
        old, new = float(record[key]), float(getattr(problem, key, math.nan))
        if _moved(old, new, max(abs(old), 1e-12)):
            changes.append(f"{key} {old:.6g} -> {new:.6g}")
    cov = getattr(problem, "noise_cov", None)
    if (cov is None) != ("noise_cov_diag" not in record):
        changes.append("noise_cov " + ("added" if cov is not None else "removed"))
    elif cov is not None:
        try:
            diag, quad = _noise_summary(cov)
            same = tuple(diag.shape) == tuple(record["noise_cov_diag"].shape) and all(
                torch.allclose(now, record[key], rtol=_NUMBER_RTOL, atol=0.0)
                for now, key in ((diag, "noise_cov_diag"), (quad, "noise_cov_quad"))
            )
            if not same:
                changes.append("noise_cov changed")
        except (Exception, SystemExit) as err:  # problem code may raise anything
            changes.append(f"noise_cov unreadable ({type(err).__name__})")
    return changes


def _forward_changes(problem: Any, record: dict[str, torch.Tensor]) -> list[str]:
    """Return the forward part of :func:`fingerprint_changes` (``F`` on the probe models)."""
    changes = []
    try:
        forward = _forward64(problem, record["x"])
        stored = record["forward"]
        if tuple(forward.shape) != tuple(stored.shape):
            changes.append(
                f"F(x) now has shape {tuple(forward.shape)}, was {tuple(stored.shape)}"
            )
        else:
            gap = (forward - stored).abs()
            # per datum: a part of the data far smaller than the rest (a gravity anomaly of
            # 1e-2 beside magnetic data of 1e4) is judged on its own scale and noise sd
            tolerance = _FORWARD_RTOL * stored.abs().amax(0) + _NOISE_FRACTION * _data_sd(record)
            if not bool((gap <= tolerance).all()):
                changes.append(
                    f"F(x) of the stored probe models moved by up to {float(gap.max()):.3g} "
                    "(units of y)"
                )
    except (Exception, SystemExit) as err:  # problem code may raise anything
        changes.append(f"F(x) of the stored probe models raises {type(err).__name__}")
    return changes


def _prior_changes(problem: Any, record: dict[str, torch.Tensor]) -> list[str]:
    """Return the prior part of :func:`fingerprint_changes` (``log p(x)``, seeded draws)."""
    changes = []
    x = record["x"]
    if "x_seeded" in record:
        try:
            again = _draw_probes(problem)
            same = tuple(again.shape) == tuple(x.shape) and torch.allclose(
                again, x, rtol=_FORWARD_RTOL, atol=_FORWARD_RTOL * float(x.abs().max())
            )
            if not same:
                changes.append("the prior's draws for seed 0 differ")
        except (Exception, SystemExit) as err:  # problem code may raise anything
            changes.append(f"sample_prior raises {type(err).__name__}")
    has_density = bool(getattr(problem, "has_prior_density", False))
    if "log_prior" not in record:
        if has_density:
            changes.append("prior density added")
        return changes
    try:
        log_prior = _log_prior64(problem, x)
        old_lp = record["log_prior"]
        gap = (log_prior - old_lp).abs()
        if not bool((gap <= _NUMBER_RTOL * old_lp.abs().clamp(min=1.0)).all()):
            changes.append(
                f"log prior density of the stored probe models moved by up to "
                f"{float(gap.max()):.3g} nats"
            )
    except (Exception, SystemExit) as err:  # problem code may raise anything
        changes.append(
            f"log prior density of the stored probe models raises {type(err).__name__}"
        )
    return changes
