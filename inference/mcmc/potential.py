"""The potential NUTS runs on: ``U(v) = -log p(x) - log p(y | x)`` at ``theta = mu + L v``.

The log target of one observation through the problem (``log_prior`` and
``log_likelihood``, checked), the Gaussian prior as a quadratic form in ``v``, the products
with the preconditioner's factor by BLAS, the potential with its gradient assembled by hand
around one ``torch.autograd.grad`` (:func:`_fused_energy`), its ``torch.jit.trace`` and the
check of a float32 potential against the float64 one
(:data:`FLOAT32_POTENTIAL_TOLERANCE`). Cost and precision are discussed in the docstring of
:mod:`inference.mcmc` ("Cost and precision").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, exception_summary
from ppl_cvae.problems.adapter import as_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.densities import checked_log_likelihood, checked_log_prior
from ppl_cvae.problems.parameterisation import Parameterisation

if TYPE_CHECKING:
    from inference.mcmc.chains import _ChainJob

__all__ = ["FLOAT32_POTENTIAL_TOLERANCE", "POTENTIAL_DTYPES", "PotentialDtype"]

PotentialDtype = Literal["float64", "float32"]
POTENTIAL_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
"""The values of ``potential_dtype`` in :func:`nuts_sample` and their torch dtypes."""


def _as_basis_dtype(par: Parameterisation, theta: torch.Tensor) -> torch.Tensor:
    """``theta`` cast to the basis's dtype (float32); unchanged without a basis (float64)."""
    return theta.to(par.basis.dtype) if par.basis is not None else theta


def _log_prior_theta(problem: Problem, theta: torch.Tensor) -> torch.Tensor:
    """``log p(theta)`` (nats, float64; shape ``theta.shape[:-1]``) through the problem."""
    par = problem.sampler_parameterisation()
    if par is not None:  # a basis keeps its dtype (float32): theta is cast to it
        return par.log_prior(_as_basis_dtype(par, theta)).double()
    x = theta.reshape(*theta.shape[:-1], *problem.x_shape)
    return checked_log_prior(problem, x).double()


def _log_target(problem: Problem, y64: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``theta -> log p(x) + log p(y | x)`` (nats, float64) of one observation.

    ``-inf`` outside a declared support, without calling the problem there, and, for an
    undeclared one, without calling ``forward`` where ``log_prior`` is ``-inf``: coordinates that
    do not keep to it (a constraint that is not elementwise, a basis) and ``biject_to``'s
    rounding onto an open boundary (``exp`` of a large negative ``theta`` is 0, not
    positive) would otherwise reach a ``log_prior`` that is finite there, or a ``forward``
    that is undefined there.
    """
    par = problem.sampler_parameterisation()
    x_shape = tuple(problem.x_shape)
    guard = problem.declares_support()
    # an undeclared support is where log_prior is above -inf: the prior first, and the
    # likelihood (a forward that may be undefined outside) only where it is not zero
    prior_first = not guard and problem.restricts_support()

    def log_target(theta: torch.Tensor) -> torch.Tensor:
        if par is not None:
            x = par.to_x(_as_basis_dtype(par, theta))
        else:
            x = theta.reshape(*theta.shape[:-1], *x_shape)
        log_prior = _log_prior_theta(problem, theta) if prior_first else None
        if guard:
            inside = problem.in_support(x.detach())
        elif log_prior is not None:
            inside = ~torch.isneginf(log_prior.detach())  # NaN counts in: a fault, reported
        else:
            inside = None
        if inside is None or bool(inside.all()):
            if log_prior is None:
                log_prior = _log_prior_theta(problem, theta)
            return log_prior + checked_log_likelihood(problem, x, y64)
        # -inf, in theta's graph with a zero gradient (Pyro differentiates the potential)
        out = torch.where(inside, 0.0, -math.inf) + 0.0 * theta.sum(-1).double()
        if bool(inside.any()):
            prior_in = (
                _log_prior_theta(problem, theta[inside]) if log_prior is None else log_prior[inside]
            )
            out = out.masked_scatter(
                inside, prior_in + checked_log_likelihood(problem, x[inside], y64)
            )
        return out

    return log_target


def _terms_at(
    job: _ChainJob, prior_term: _GaussianPriorTerm | None, v: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Return the problem's log densities (nats) at the chain state ``v`` of a job.

    ``log_likelihood`` at ``x(theta)``, ``theta = mu + L v``, and ``log_prior`` unless the
    prior is the Gaussian quadratic form ``prior_term`` (not the problem's code).
    """
    problem = as_problem(job.problem)
    par = problem.sampler_parameterisation()
    theta = job.mu + job.tril @ v.detach().double()
    x = par.to_x(_as_basis_dtype(par, theta)) if par is not None else theta.reshape(problem.x_shape)
    terms = {} if prior_term is not None else {"log_prior": _log_prior_theta(problem, theta)}
    terms["log_likelihood"] = checked_log_likelihood(problem, x, job.y)
    return terms


def _checked_gaussian_prior(
    problem: Problem, theta: torch.Tensor, precondition: str
) -> torch.distributions.MultivariateNormal | None:
    """Return ``problem.gaussian_prior()`` if its density is the problem's prior at ``theta``.

    ``theta``: ``(N, k)`` points in the sampled coordinates (the chains' starts). A subclass
    that overrides ``log_prior`` but inherits ``gaussian_prior`` (e.g. from
    ``LinearGaussian``) would otherwise be sampled under the wrong prior: where the two
    disagree by more than ``1e-3 (1 + |log p|)`` nats at a point, the prior is evaluated
    through ``log_prior`` instead, with a warning, or, for the ``"prior..."`` preconditioners,
    a :class:`ConfigError`.
    """
    prior = problem.gaussian_prior()
    if prior is None:
        return None
    with torch.no_grad():
        stated = _log_prior_theta(problem, theta)
        gaussian = prior.log_prob(theta.to(prior.loc))
    if bool(((stated - gaussian).abs() <= 1e-3 * (1.0 + gaussian.abs())).all()):
        return prior
    message = (
        f"problem {problem.name!r}: gaussian_prior() disagrees with log_prior at the chains' "
        f"starts (by up to {float((stated - gaussian).abs().max()):.3g} nats); override "
        "gaussian_prior() to return None where the prior is not that Gaussian"
    )
    if precondition in ("prior", "prior-amortized"):
        raise ConfigError(f"precondition={precondition!r}: {message}")
    warnings.warn(f"{message}; the prior is evaluated through log_prior", stacklevel=3)
    return None


def _potential_dtype(value: PotentialDtype | torch.dtype) -> torch.dtype:
    """Return the torch dtype of ``potential_dtype`` (``"float64"``, ``"float32"`` or a dtype).

    Raises
    ------
    ConfigError
        If it is neither float64 nor float32.
    """
    dtype = POTENTIAL_DTYPES.get(value) if isinstance(value, str) else value
    if dtype not in (torch.float64, torch.float32):
        raise ConfigError(
            f"potential_dtype must be one of {tuple(POTENTIAL_DTYPES)} (or torch.float64, "
            f"torch.float32), got {value!r}"
        )
    return dtype


@dataclass(frozen=True)
class _GaussianPriorTerm:
    """The Gaussian prior as a quadratic form in ``v``, computed once per chain (float64).

    With ``w = L_0^-1 (theta - m) = b + A v`` (``A = L_0^-1 L``, ``b = L_0^-1 (mu - m)``),
    ``-|w|^2 / 2 = -|b|^2 / 2 - (c^T v + v^T H v / 2)`` with ``H = A^T A`` and ``c = A^T b``.
    ``hess`` is None for ``precondition="prior"`` (``w = v``, ``H = I``, ``c = 0``).
    """

    const: float  # log normaliser of the prior minus |b|^2 / 2, nats
    hess: torch.Tensor | None  # (dim, dim) H = A^T A, symmetric
    lin: torch.Tensor | None  # (dim,) c = A^T b


def _gaussian_prior_term(job: _ChainJob) -> _GaussianPriorTerm | None:
    """Return the quadratic form of the Gaussian prior in ``v`` of a chain job, or None."""
    if job.prior_loc is None or job.prior_tril is None:
        return None
    chol0 = job.prior_tril
    dim = len(job.mu)
    const = -float(chol0.diagonal().log().sum()) - 0.5 * dim * math.log(2 * math.pi)
    if job.prior_whitened:
        return _GaussianPriorTerm(const=const, hess=None, lin=None)
    a_mat = torch.linalg.solve_triangular(chol0, job.tril, upper=False)
    b_vec = torch.linalg.solve_triangular(
        chol0, (job.mu - job.prior_loc).unsqueeze(-1), upper=False
    ).squeeze(-1)
    hess = a_mat.T @ a_mat
    return _GaussianPriorTerm(
        const=const - 0.5 * float(b_vec @ b_vec),
        hess=0.5 * (hess + hess.T),
        lin=a_mat.T @ b_vec,
    )


class _TriangularProducts:
    """Products with a fixed lower-triangular ``L`` and a fixed symmetric ``H``, ``(k, k)``.

    ``L v`` and ``L^T g`` by BLAS ``trmv`` and ``H v`` by ``symv`` (SciPy's BLAS wrappers),
    which read half of the matrix: on crosshole (``k = 1024``, 1 thread) the three products
    took 0.49 ms in float64 and 0.29 ms in float32 against 0.93 and 0.48 ms with torch's dense
    ``mv`` (``benchmarks/nuts_potential.py --profile``). With ``blas=False`` (a traced
    potential: ``torch.jit.trace`` would record a NumPy call's result as a constant), or for
    tensors that are not on the CPU or not float32/float64, torch's dense products are used.
    The results are the same products up to rounding.
    """

    def __init__(self, tril: torch.Tensor, hess: torch.Tensor | None, blas: bool) -> None:
        from scipy.linalg import blas as scipy_blas  # scipy: an ArviZ and scikit-learn dependency

        self.tril, self.hess = tril, hess
        self.blas = blas and tril.device.type == "cpu" and tril.dtype in _BLAS_PREFIX
        if self.blas:
            prefix = _BLAS_PREFIX[tril.dtype]
            self._trmv = getattr(scipy_blas, prefix + "trmv")
            self._symv = getattr(scipy_blas, prefix + "symv")
            self._tril_f = np.asfortranarray(tril.numpy())  # Fortran order: no copy per call
            self._hess_f = None if hess is None else np.asfortranarray(hess.numpy())

    def tril_mv(self, vec: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Return ``L v`` (``L^T v`` with ``transpose``), no gradient; ``vec`` ``(k,)``."""
        if not self.blas:
            return (vec @ self.tril if transpose else self.tril @ vec).detach()
        out = self._trmv(self._tril_f, vec.detach().numpy(), lower=1, trans=int(transpose))
        return torch.from_numpy(out)

    def hess_mv(self, vec: torch.Tensor) -> torch.Tensor:
        """Return ``H v``, no gradient; ``vec`` ``(k,)``."""
        assert self.hess is not None
        if not self.blas or self._hess_f is None:
            return (self.hess @ vec).detach()
        return torch.from_numpy(self._symv(1.0, self._hess_f, vec.detach().numpy(), lower=1))

    def affine(self, mu: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Return ``mu + L v``, differentiable in ``v`` (gradient ``L^T g``)."""
        if not self.blas:
            return mu + self.tril @ vec
        return mu + _TrilMatVec.apply(vec, self)


_BLAS_PREFIX = {torch.float64: "d", torch.float32: "s"}


class _TrilMatVec(torch.autograd.Function):
    """``L v`` by :class:`_TriangularProducts`, with the gradient ``L^T g`` by ``trmv``."""

    @staticmethod
    def forward(ctx: Any, vec: torch.Tensor, products: _TriangularProducts) -> torch.Tensor:
        """Return ``L v``."""
        ctx.products = products
        return products.tril_mv(vec)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Return ``L^T g`` for ``v``."""
        return ctx.products.tril_mv(grad.contiguous(), transpose=True), None


def _log_target_v(
    job: _ChainJob,
    dtype: torch.dtype = torch.float64,
    prior_term: _GaussianPriorTerm | None = None,
    blas: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> log p(x) + log p(y | x)`` (nats, float64) at ``theta = mu + L v`` of a chain job.

    ``v`` (shape ``(dim,)``) is float64 (the chain's state); the potential is evaluated in
    ``dtype``: ``v``, ``mu``, ``L`` and the prior's quadratic form are cast to it (the fixed
    matrices once, here), ``x`` is ``mu + L v`` in ``dtype``, the problem's
    ``log_likelihood`` returns float64 (its residual is formed in float64) and the constant
    terms are added in float64.

    With a Gaussian prior of ``theta`` (``job.prior_loc``, ``job.prior_tril``: ``N(m, L_0
    L_0^T)``) the prior is ``-|w|^2 / 2`` plus its constant, ``w = L_0^-1 (theta - m) = b + A
    v``, evaluated as the quadratic form ``-|b|^2 / 2 - c^T v - v^T H v / 2``
    (:class:`_GaussianPriorTerm`, ``prior_term``; computed here when not given) whose gradient
    ``-(c + H v)`` reuses the product ``H v`` of the value: one matrix-vector product per
    evaluation instead of two (``A v`` and ``A^T`` times the gradient), the same density to
    rounding. ``w = v`` for ``precondition="prior"``. Otherwise the prior is evaluated
    through ``problem.log_prior``. The products with ``L`` and ``H`` read half of each matrix
    (BLAS ``trmv`` and ``symv``, :class:`_TriangularProducts`) unless ``blas`` is False.
    """
    problem = as_problem(job.problem)
    mu = job.mu.to(dtype)
    if prior_term is None:
        prior_term = _gaussian_prior_term(job)
    if prior_term is None:
        products = _TriangularProducts(job.tril.to(dtype), None, blas)
        log_target = _log_target(problem, job.y)

        def log_target_v(v: torch.Tensor) -> torch.Tensor:
            return log_target(products.affine(mu, v.to(dtype)))

        return log_target_v
    par = problem.sampler_parameterisation()
    x_shape = tuple(problem.x_shape)
    const = prior_term.const
    hess = None if prior_term.hess is None else prior_term.hess.to(dtype)
    lin = None if prior_term.lin is None else prior_term.lin.to(dtype)
    products = _TriangularProducts(job.tril.to(dtype), hess, blas)

    def log_likelihood(theta: torch.Tensor) -> torch.Tensor:
        if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
            return checked_log_likelihood(problem, par.to_x(_as_basis_dtype(par, theta)), job.y)
        x = theta.reshape(*theta.shape[:-1], *x_shape)
        return checked_log_likelihood(problem, x, job.y)

    def log_target_gaussian(v: torch.Tensor) -> torch.Tensor:
        vd = v.to(dtype)
        if hess is None or lin is None:  # precondition="prior": w = v
            quad = 0.5 * (vd * vd).sum()
        else:
            # c^T v + v^T H v / 2 with the gradient c + H v from the one product H v: the
            # detached hv makes autograd return (c + hv) instead of computing H^T (...) again
            hv = products.hess_mv(vd)
            quad = ((lin + hv) * vd).sum() - 0.5 * (hv * vd).sum().detach()
        return const - quad.double() + log_likelihood(products.affine(mu, vd))

    return log_target_gaussian


class _EnergyWithGradient(torch.autograd.Function):
    """``U(v)`` whose gradient was computed with its value: one autograd node per evaluation.

    ``evaluate`` maps ``v`` ``(dim,)`` float64 to ``(U, dU/dv)`` (a 0-d and a ``(dim,)``
    float64 tensor); the backward pass scales the stored gradient by the incoming one (1.0
    when Pyro's ``potential_grad`` differentiates ``U``: exact).
    """

    @staticmethod
    def forward(
        ctx: Any, v: torch.Tensor, evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    ) -> torch.Tensor:
        """Return ``U(v)``; keep ``dU/dv`` for the backward pass."""
        value, grad = evaluate(v)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Return ``grad_out * dU/dv`` for ``v``."""
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def _grad_or_zero(value: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``d value / d theta`` (contiguous), zeros where ``value`` does not depend on ``theta``."""
    if not value.requires_grad:
        return torch.zeros_like(theta)
    (g,) = torch.autograd.grad(value, theta, allow_unused=True)
    return torch.zeros_like(theta) if g is None else g.contiguous()


def _fused_energy(
    job: _ChainJob,
    dtype: torch.dtype,
    prior_term: _GaussianPriorTerm | None,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``v -> U(v) = -log p(x) - log p(y | x)``, the same numbers as ``-_log_target_v``.

    The potential of :func:`_log_target_v` (BLAS products) with its gradient assembled by
    hand around one ``torch.autograd.grad`` of the problem's own part with respect to
    ``theta = mu + L v`` (a leaf): ``dU/dv = c + H v - L^T g`` with ``g = d log p / d
    theta`` (the likelihood, plus the prior where it is not the Gaussian quadratic form), the
    same operations in the same precision as autograd runs through :func:`_log_target_v`
    (whose backward is linear in its seed, so ``L^T (-g) = -(L^T g)`` to the bit), without
    the graph of the preconditioner's products, the casts and the custom ``L v`` node that
    autograd otherwise builds and walks on every evaluation. Returned through
    :class:`_EnergyWithGradient`, so Pyro's ``potential_grad`` (value, then
    ``torch.autograd.grad``) gets the same value and gradient. None where the products are
    not BLAS's (not CPU float32/float64): :func:`_log_target_v` is used there.
    """
    problem = as_problem(job.problem)
    products = _TriangularProducts(
        job.tril.to(dtype),
        None if prior_term is None or prior_term.hess is None else prior_term.hess.to(dtype),
        True,
    )
    if not products.blas:
        return None
    mu = job.mu.to(dtype)
    if prior_term is None:
        log_target = _log_target(problem, job.y)

        def evaluate(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            theta = (mu + products.tril_mv(v.detach().to(dtype))).requires_grad_(True)
            with torch.enable_grad():
                value = log_target(theta)
            grad = -products.tril_mv(_grad_or_zero(value, theta), transpose=True)
            return -value.detach(), grad.to(torch.float64)

        return lambda v: _EnergyWithGradient.apply(v, evaluate)
    par = problem.sampler_parameterisation()
    x_shape = tuple(problem.x_shape)
    const = prior_term.const
    lin = None if prior_term.lin is None else prior_term.lin.to(dtype)
    y = job.y

    def evaluate_gaussian(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vd = v.detach().to(dtype)
        theta = (mu + products.tril_mv(vd)).requires_grad_(True)
        with torch.enable_grad():
            if par is not None:  # the basis keeps its dtype (float32): theta is cast to it
                value = checked_log_likelihood(problem, par.to_x(_as_basis_dtype(par, theta)), y)
            else:
                x = theta.reshape(*theta.shape[:-1], *x_shape)
                value = checked_log_likelihood(problem, x, y)
        grad_likelihood = products.tril_mv(_grad_or_zero(value, theta), transpose=True)
        if lin is None:  # precondition="prior": w = v; autograd's order of the three terms
            quad = 0.5 * (vd * vd).sum()
            half = 0.5 * vd
            grad = (half - grad_likelihood) + half
        else:
            hv = products.hess_mv(vd)
            grad_quad = lin + hv
            quad = (grad_quad * vd).sum() - 0.5 * (hv * vd).sum()
            grad = grad_quad - grad_likelihood
        return -(const - quad.double() + value.detach()), grad.to(torch.float64)

    return lambda v: _EnergyWithGradient.apply(v, evaluate_gaussian)


def _trace_energy(
    energy: Callable[[torch.Tensor], torch.Tensor], checks: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
    """Trace ``energy`` (``v -> U``) with ``torch.jit.trace``; check it against ``energy``.

    Returns the traced function and None, or ``energy`` itself and the reason it was kept:
    tracing failed, or the traced value or gradient differs from the eager one at a row of
    ``checks`` (by more than ``1e-9`` relative: replayed operations are the same operations).
    """
    try:
        with warnings.catch_warnings():
            # shape checks in the problems convert tensors to Python booleans (TracerWarning);
            # torch 2.x deprecates torch.jit.trace (DeprecationWarning); neither is the user's
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(energy, (checks[0].clone(),), check_trace=False)
    except (RuntimeError, TypeError, ValueError) as err:
        return energy, f"torch.jit.trace failed: {err}"
    for point in checks:
        values = []
        for fn in (energy, traced):
            v = point.clone().requires_grad_(True)
            u = fn(v)
            (grad,) = torch.autograd.grad(u, v)
            values.append((u.detach(), grad))
        (u0, g0), (u1, g1) = values
        scale = 1e-9 * (1.0 + float(u0.abs()))
        gscale = 1e-9 * (1.0 + float(g0.abs().max()))
        if not (
            torch.isfinite(u0)
            and float((u1 - u0).abs()) <= scale
            and float((g1 - g0).abs().max()) <= gscale
        ):
            return energy, (
                "the traced potential differs from the eager one at a chain's start (its "
                "Python control flow depends on x)"
            )
    return traced, None


FLOAT32_POTENTIAL_TOLERANCE = 0.01
"""Largest difference, in nats, between the float32 and the float64 potential at the chains'
starts for ``potential_dtype="float32"`` to be used (else float64 is, with a warning).

NUTS with a potential ``U + e`` (``e`` the rounding error, a deterministic function of the
float64 state) samples ``exp(-U - e)`` exactly: the leapfrog map stays volume-preserving and
reversible for any deterministic gradient, and the trajectory's draw is weighted by
``exp(-H)`` of the same ``U + e``. If ``|e| <= delta``, the density ratio to the float64 target
is within ``exp(+-2 delta)``, so the total variation distance is at most about ``delta``: 0.01
is below the Monte Carlo error of any mean estimated from fewer than ``10^4`` effective draws
(``1 / sqrt(ESS)`` sd). The typical ``|e|`` is far smaller (docs/measurements.md, "NUTS within 60 s
per observation": about ``1e-4`` nats on crosshole)."""


def _check_low_precision(
    energy: Callable[[torch.Tensor], torch.Tensor],
    low: Callable[[torch.Tensor], torch.Tensor],
    checks: torch.Tensor,
) -> str | None:
    """Compare a lower-precision potential with the float64 one at the rows of ``checks``.

    Returns None when the values agree within :data:`FLOAT32_POTENTIAL_TOLERANCE` nats and the
    gradients within 1% of the largest float64 component at every row, else the reason (the
    lower precision is then not used).
    """
    for point in checks:
        values = []
        for fn in (energy, low):
            v = point.clone().requires_grad_(True)
            try:
                u = fn(v)
                (grad,) = torch.autograd.grad(u, v)
            except Exception as err:  # noqa: BLE001 - a user's problem may refuse float32
                if fn is energy:
                    raise
                # what the problem raised, not the ConfigError the checked density made of it
                cause = err.__cause__ if isinstance(err, ConfigError) else None
                return f"the float32 potential raised {exception_summary(cause or err)}"
            values.append((float(u.detach()), grad))
        (u0, g0), (u1, g1) = values
        if not math.isfinite(u1) or abs(u1 - u0) > FLOAT32_POTENTIAL_TOLERANCE:
            return (
                f"the float32 potential differs from the float64 one by {abs(u1 - u0):.3g} nats "
                f"at a chain's start (tolerance {FLOAT32_POTENTIAL_TOLERANCE})"
            )
        if float((g1 - g0).abs().max()) > 0.01 * float(g0.abs().max()):
            return (
                "the float32 gradient of the potential differs from the float64 one by more "
                "than 1% of its largest component at a chain's start"
            )
    return None
