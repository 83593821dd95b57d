"""Importance sampling of a multimodal small-noise posterior with a Laplace-mixture proposal.

For a posterior of a few coefficients ``e`` (dimension ``k``; Two Birds: the four line
endpoints) under Gaussian noise of standard deviation ``sigma``,
``p(e | y) ∝ p(e) exp(-|F(e) - y|^2 / (2 sigma^2))``, whose modes are narrow and far
apart, neither a single chain nor an amortized proposal moves between modes. The sampler here
(Gelman et al. 2013, BDA3 sec. 13.2: a mixture of normal
approximations at the modes, corrected by importance weights):

1. polishes each start (e.g. refined amortized draws) with Levenberg-Marquardt on the misfit
   to a local optimum ``e_j`` (float64), keeps those that fit ``y`` and lie in the prior's
   support, and merges duplicates: the modes found;
2. proposes from the mixture ``q(e) = (1 - eps) / K sum_j N(e; e_j, c^2 H_j^-1) + eps p(e)``,
   with ``H_j = J_j^T J_j / sigma^2`` the Gauss-Newton Hessian of the misfit at ``e_j``
   (Laplace's approximation of mode ``j``, widened by ``c``) and the prior as the defensive
   component (Hesterberg 1995): ``w = p(e) l(e) / q(e) <= l(e) / eps``, so the weights are
   bounded whatever the modes found;
3. weights the draws by the exact unnormalised target over ``q`` and Pareto-smooths the
   weights (PSIS; ``k-hat`` says whether the estimate can be trusted).

The normalised weights of the draws near each mode estimate that mode's posterior mass
without assuming Laplace's approximation: the proposal only has to cover the target. A mode
that no start reaches gets no component and (at small ``sigma``) no weight: the sampler is
exact on the modes it finds, and the missed mass is what the mode weights' error measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ppl_cvae.errors import ConfigError, ShapeError
from ppl_cvae.problems.base import _problem_code
from ppl_cvae.problems.densities import checked_forward
from ppl_cvae.problems.two_birds import (
    NUM_POINTS,
    TwoBirds,
    endpoints_from_lines,
    lines_from_endpoints,
)

__all__ = [
    "LaplaceMixtureResult",
    "laplace_mixture_sample",
    "polish_modes",
    "two_birds_mode_sample",
]

ForwardFn = Callable[[torch.Tensor], torch.Tensor]
"""``F``: coefficients ``(N, k)`` to flattened predicted data ``(N, m)``, torch-differentiable."""
LogPriorFn = Callable[[torch.Tensor], torch.Tensor]
"""``log p``: coefficients ``(N, k)`` to log prior density ``(N,)`` (``-inf`` off the support)."""
PriorSampler = Callable[[int, torch.Generator], torch.Tensor]
"""Draws ``(num, k)`` coefficients from the prior with a generator."""
JacobianFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Coefficients ``(N, k)`` to ``F(e)`` ``(N, m)`` and its Jacobian ``(N, m, k)``."""


def _jacobian(forward: ForwardFn, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``F(e)`` ``(N, m)`` and its Jacobian ``(N, m, k)`` at each row of ``e``."""
    e = e.detach()
    value = forward(e).detach()
    # F acts row by row, so the Jacobian of sum_n F(e_n) holds every J_n: (m, N, k). Reverse
    # mode (m backward passes over the batch) measured faster here than k Jacobian-vector
    # products by double backward; forward mode makes torch warn on first use.
    jac = torch.autograd.functional.jacobian(lambda v: forward(v).sum(0), e)
    return value, jac.permute(1, 0, 2)


def polish_modes(
    forward: ForwardFn,
    log_prior: LogPriorFn,
    y: torch.Tensor,
    starts: torch.Tensor,
    noise_std: float,
    *,
    num_steps: int = 30,
    max_misfit: float = 25.0,
    merge_distance: float = 6.0,
    jacobian: JacobianFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Polish starts to local optima of the misfit and return the distinct modes found.

    Parameters
    ----------
    forward : callable
        ``F``, coefficients ``(N, k)`` to flattened data ``(N, m)``; rows independent.
    log_prior : callable
        Log prior density of coefficients ``(N, k) -> (N,)``, ``-inf`` off the support.
    y : Tensor, shape (m,)
        The observation, flattened, units of ``y``.
    starts : Tensor, shape (N, k)
        Starting coefficients (e.g. refined amortized draws).
    noise_std : float
        ``sigma``, the noise standard deviation of every datum, units of ``y``.
    num_steps : int, default 30
        Levenberg-Marquardt iterations.
    max_misfit : float, default 25
        A polished point is a mode when ``|F(e) - y|^2 / (2 sigma^2) <= max_misfit`` (nats:
        a point worse than that carries less than ``exp(-25)`` of an exact fit's density) and
        ``log_prior(e)`` is finite.
    merge_distance : float, default 6
        Two modes closer than this in the Mahalanobis distance of the first one's Laplace
        covariance (``sqrt(d^T H d)``) are one mode.
    jacobian : callable, optional
        ``e -> (F(e), J(e))`` when a faster Jacobian than reverse-mode autograd over the
        ``m`` outputs is known (:func:`two_birds_mode_sample` passes one).

    Returns
    -------
    modes : Tensor, shape (K, k), float64
        Distinct modes found (``K`` may be 0), in the order first reached.
    hessians : Tensor, shape (K, k, k), float64
        Gauss-Newton Hessians ``H_j = J_j^T J_j / sigma^2`` of the misfit at each mode.

    Raises
    ------
    ShapeError
        If ``starts`` is not 2-D or ``y`` not 1-D.
    ConfigError
        If ``noise_std <= 0`` or ``num_steps < 1``.

    Notes
    -----
    Levenberg-Marquardt on ``r(e) = (F(e) - y) / sigma``: ``e <- e - (J^T J + lambda
    diag(J^T J))^{-1} J^T r``, ``lambda`` divided by 3 after a step that lowers ``|r|^2`` and
    multiplied by 4 (the step undone) otherwise (Marquardt 1963). The prior's gradient is left
    out: at small ``sigma`` it moves the optimum by ``O(sigma^2)``.

    References
    ----------
    Marquardt, D. W. (1963). An algorithm for least-squares estimation of nonlinear
    parameters. SIAM J. Appl. Math. 11(2), 431-441. DOI 10.1137/0111030.
    """
    if starts.dim() != 2 or y.dim() != 1:
        raise ShapeError(
            f"starts must be (N, k) and y (m,), got {tuple(starts.shape)} and {tuple(y.shape)}"
        )
    if not noise_std > 0 or num_steps < 1:
        raise ConfigError(f"need noise_std > 0 and num_steps >= 1, got {noise_std}, {num_steps}")
    k = starts.shape[1]
    y64 = y.double()
    e = starts.double().clone()
    jac_fn = jacobian if jacobian is not None else (lambda v: _jacobian(forward, v))
    value, jac = jac_fn(e)
    cost = ((value - y64) ** 2).sum(-1)
    lam = torch.full((len(e),), 1e-3, dtype=torch.float64)
    for _ in range(num_steps):
        gram = jac.transpose(1, 2) @ jac
        damp = lam[:, None, None] * torch.diag_embed(gram.diagonal(dim1=1, dim2=2) + 1e-12)
        grad = (jac.transpose(1, 2) @ (value - y64).unsqueeze(-1)).squeeze(-1)
        step = torch.linalg.solve(gram + damp, grad)
        trial = e - step
        trial_value, trial_jac = jac_fn(trial)
        trial_cost = ((trial_value - y64) ** 2).sum(-1)
        better = torch.isfinite(trial_cost) & (trial_cost < cost)
        e = torch.where(better[:, None], trial, e)
        value = torch.where(better[:, None], trial_value, value)
        jac = torch.where(better[:, None, None], trial_jac, jac)
        cost = torch.where(better, trial_cost, cost)
        lam = torch.where(better, lam / 3, lam * 4).clamp(1e-12, 1e12)
    misfit = cost / (2 * noise_std**2)
    with torch.no_grad():
        ok = (misfit <= max_misfit) & torch.isfinite(log_prior(e))
    hess = (jac.transpose(1, 2) @ jac) / noise_std**2
    modes: list[torch.Tensor] = []
    hessians: list[torch.Tensor] = []
    for i in torch.nonzero(ok).flatten().tolist():
        d = e[i]
        pairs = zip(modes, hessians, strict=True)
        if any(float((d - m) @ h @ (d - m)) < merge_distance**2 for m, h in pairs):
            continue
        modes.append(d)
        hessians.append(hess[i])
    if not modes:
        return e.new_zeros(0, k), e.new_zeros(0, k, k)
    return torch.stack(modes), torch.stack(hessians)


@dataclass(frozen=True)
class LaplaceMixtureResult:
    """Weighted draws of one observation's posterior from :func:`laplace_mixture_sample`.

    Attributes
    ----------
    draws : Tensor, shape (S, k), float64
        Proposal draws (coefficients).
    log_weight : Tensor, shape (S,), float64
        Raw log importance weights ``log p(e) + log l(e) - log q(e)`` (nats, up to the
        normalising constant of the likelihood).
    weight : Tensor, shape (S,), float64
        Pareto-smoothed weights, normalised to sum to 1.
    khat : float
        Pareto shape estimate (trust the weights where ``<= 0.7``).
    ess : float
        Kish effective sample size ``1 / sum(weight^2)``.
    modes : Tensor, shape (K, k), float64
        The modes found (mixture components' centres).
    component : Tensor, shape (S,), int64
        The mixture component each draw came from (``K`` for the defensive prior).
    """

    draws: torch.Tensor
    log_weight: torch.Tensor
    weight: torch.Tensor
    khat: float
    ess: float
    modes: torch.Tensor
    component: torch.Tensor


def laplace_mixture_sample(
    forward: ForwardFn,
    log_prior: LogPriorFn,
    sample_prior: PriorSampler,
    y: torch.Tensor,
    starts: torch.Tensor,
    noise_std: float,
    num_samples: int,
    *,
    defensive: float = 0.1,
    widen: float = 1.2,
    generator: torch.Generator | None = None,
    num_steps: int = 30,
    jacobian: JacobianFn | None = None,
) -> LaplaceMixtureResult:
    r"""Sample ``p(e | y)`` by importance sampling from a Laplace mixture at the modes found.

    Parameters
    ----------
    forward, log_prior : callable
        As in :func:`polish_modes`.
    sample_prior : callable
        ``(num, generator) -> (num, k)`` prior draws (the defensive component).
    y : Tensor, shape (m,)
        The observation, flattened, units of ``y``.
    starts : Tensor, shape (N, k)
        Starting coefficients for :func:`polish_modes`.
    noise_std : float
        ``sigma`` (units of ``y``): the likelihood is ``N(y; F(e), sigma^2 I_m)``.
    num_samples : int
        ``S``, proposal draws.
    defensive : float in (0, 1), default 0.1
        ``eps``, the prior's share of the proposal.
    widen : float, default 1.2
        ``c``, the factor on the Laplace standard deviations of each component.
    generator : torch.Generator, optional
    num_steps : int, default 30
        Levenberg-Marquardt iterations of :func:`polish_modes`.
    jacobian : callable, optional
        As in :func:`polish_modes`.

    Returns
    -------
    LaplaceMixtureResult

    Raises
    ------
    ConfigError
        If ``num_samples < 1``, ``defensive`` not in (0, 1) or ``widen <= 0``, or as
        :func:`polish_modes`.
    ShapeError
        As :func:`polish_modes`.

    Notes
    -----
    ``log w = log p(e) - |F(e) - y|^2 / (2 sigma^2) - log q(e)`` with
    ``q = (1 - eps) / K sum_j N(e_j, c^2 H_j^{-1}) + eps p`` (``K = 0``: the prior alone). The
    defensive component bounds ``w`` by ``exp(-misfit) / eps``; the smoothed weights are
    ArviZ's PSIS (:func:`inference.arviz_io.pareto_smooth`).

    References
    ----------
    Gelman, A., Carlin, J. B., Stern, H. S., Dunson, D. B., Vehtari, A. and Rubin, D. B.
    (2013). Bayesian Data Analysis, 3rd ed., CRC Press, sec. 13.2 (multimodal posteriors: a
    mixture of normal approximations at the modes) and 10.4 (importance sampling).
    Hesterberg, T. (1995). Weighted average importance sampling and defensive mixture
    distributions. Technometrics 37(2), 185-194. DOI 10.1080/00401706.1995.10484303. Vehtari,
    A., Simpson, D., Gelman, A., Yao, Y. and Gabry, J. (2024). Pareto smoothed importance
    sampling. JMLR 25(72).

    Examples
    --------
    >>> forward = lambda e: e**2  # y = e^2: modes at e = -1 and e = +1
    >>> log_prior = lambda e: torch.distributions.Normal(0.5, 1.0).log_prob(e).sum(-1).double()
    >>> sample_prior = lambda n, g: 0.5 + torch.randn(n, 1, generator=g)
    >>> starts = torch.tensor([[-2.0], [0.7], [1.5]])
    >>> res = laplace_mixture_sample(forward, log_prior, sample_prior, torch.ones(1), starts,
    ...                              0.01, 20000, generator=torch.Generator().manual_seed(0))
    >>> res.modes.flatten().round(decimals=3).tolist(), res.khat < 0.7
    ([-1.0, 1.0], True)
    >>> round(float(res.weight[res.draws[:, 0] > 0].sum()), 2)  # p(1) / (p(1) + p(-1)) = 0.731
    0.73
    """
    from inference.arviz_io import pareto_smooth

    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if not 0.0 < defensive < 1.0 or not widen > 0:
        raise ConfigError(f"need 0 < defensive < 1 and widen > 0, got {defensive}, {widen}")
    modes, hessians = polish_modes(
        forward, log_prior, y, starts, noise_std, num_steps=num_steps, jacobian=jacobian
    )
    num_modes, k = modes.shape
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    # components: N(e_j, c^2 H_j^-1), as a batch of MultivariateNormal with precision matrices
    if num_modes:
        comps = torch.distributions.MultivariateNormal(
            modes, precision_matrix=hessians / widen**2
        )
        share = torch.tensor([1.0 - defensive, defensive], dtype=torch.float64)
    else:
        share = torch.tensor([0.0, 1.0], dtype=torch.float64)
    which = torch.multinomial(share, num_samples, replacement=True, generator=gen)
    component = torch.full((num_samples,), num_modes, dtype=torch.int64)
    draws = torch.empty(num_samples, k, dtype=torch.float64)
    mixture = which == 0
    num_mix = int(mixture.sum())
    if num_mix:
        j = torch.randint(num_modes, (num_mix,), generator=gen)
        noise = torch.randn(num_mix, k, generator=gen, dtype=torch.float64)
        chol = comps.scale_tril[j]  # (num_mix, k, k)
        draws[mixture] = modes[j] + (chol @ noise.unsqueeze(-1)).squeeze(-1)
        component[mixture] = j
    num_def = num_samples - num_mix
    if num_def:
        draws[~mixture] = sample_prior(num_def, gen).double()
    with torch.no_grad():
        log_p = log_prior(draws).double()
        resid = forward(draws).double() - y.double()
        log_lik = -(resid**2).sum(-1) / (2 * noise_std**2)
        log_q_prior = torch.log(torch.tensor(defensive if num_modes else 1.0)) + log_p
        if num_modes:
            log_q_modes = comps.log_prob(draws.unsqueeze(1))  # (S, K)
            log_q_mix = torch.logsumexp(log_q_modes, dim=1) + math.log((1 - defensive) / num_modes)
            log_q = torch.logaddexp(log_q_mix, log_q_prior)
        else:
            log_q = log_q_prior
        log_w = log_p + log_lik - log_q
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
    finite = torch.isfinite(log_w)
    smoothed = np.full(num_samples, -np.inf)
    khat = float("inf")
    if int(finite.sum()) >= 2:
        with np.errstate(over="ignore"):  # ArviZ's GPD fit overflows harmlessly for large S
            s, kh = pareto_smooth(log_w[finite].numpy())
        smoothed[finite.numpy()] = s
        khat = float(kh)
    weight = torch.from_numpy(np.exp(smoothed))
    weight = weight / weight.sum() if float(weight.sum()) > 0 else weight
    ess = float(1.0 / (weight**2).sum()) if float(weight.sum()) > 0 else 0.0
    return LaplaceMixtureResult(
        draws=draws,
        log_weight=log_w,
        weight=weight,
        khat=khat,
        ess=ess,
        modes=modes,
        component=component,
    )


def two_birds_mode_sample(
    problem: TwoBirds,
    y: torch.Tensor,
    starts: torch.Tensor,
    noise_std: float,
    num_samples: int,
    *,
    defensive: float = 0.1,
    generator: torch.Generator | None = None,
) -> LaplaceMixtureResult:
    """Sample a Two Birds posterior under small Gaussian noise with :func:`laplace_mixture_sample`.

    Parameters
    ----------
    problem : TwoBirds
        Its forward operator and the prior density of the endpoints
        (:meth:`~ppl_cvae.problems.two_birds.TwoBirds.log_prior_endpoints`).
    y : Tensor, shape (1, 50, 2)
        One observation (dimensionless).
    starts : Tensor, shape (N, 1, 50, 2) or (N, 4)
        Start line pairs (e.g. refined amortized draws) or their endpoints.
    noise_std : float
        ``sigma`` of the Gaussian noise on each of the 100 values of ``y``; the problem itself
        is noise-free, and its exact posterior is the ``sigma -> 0`` limit
        (:func:`~ppl_cvae.problems.two_birds.exact_mode_weights`).
    num_samples : int
        Proposal draws.
    defensive : float, default 0.1
        The prior's share of the proposal.
    generator : torch.Generator, optional

    Returns
    -------
    LaplaceMixtureResult
        ``draws`` are endpoints ``(S, 4)``; lines: ``lines_from_endpoints(draws)``.

    Raises
    ------
    ShapeError
        If ``starts`` or ``y`` has the wrong shape, or ``problem.forward`` returns one.
    DataError
        If ``problem.forward`` returns something that is not a torch tensor.
    ConfigError
        As :func:`laplace_mixture_sample`, or if ``problem.forward`` or one of
        ``problem.functions`` raises or calls ``sys.exit``
        (:func:`~ppl_cvae.problems.densities.checked_forward`), or a function is not
        differentiable in its arguments.
    ShapeError
        Also if a function of ``problem.functions`` returns anything but a tensor shaped like
        its ``x0``.
    """
    if tuple(y.shape[-3:]) != tuple(problem.y_shape) or y.numel() != 100:
        raise ShapeError(f"y must have shape {tuple(problem.y_shape)}, got {tuple(y.shape)}")
    if starts.dim() == 4:
        starts = endpoints_from_lines(starts.double())
    if starts.dim() != 2 or starts.shape[1] != 4:
        raise ShapeError(
            f"starts must be lines (N, 1, 50, 2) or endpoints (N, 4), got {tuple(starts.shape)}"
        )

    def forward(e: torch.Tensor) -> torch.Tensor:
        return checked_forward(problem, lines_from_endpoints(e)).reshape(e.shape[0], -1)

    def sample_prior(num: int, gen: torch.Generator) -> torch.Tensor:
        return problem.sample_endpoints(num, gen)

    # (100, 4), float64: the flattened (1, 50, 2) lines are basis @ endpoints
    basis = lines_from_endpoints(torch.eye(4, dtype=torch.float64)).reshape(4, -1).T

    def jacobian(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # f_k acts elementwise on (x0(t_i), x1(t_i)), and the lines are linear in e, so
        # dy_k(t_i)/de = df_k/dx0 (t_i) B[x0(t_i)] + df_k/dx1 (t_i) B[x1(t_i)]: 2 backward
        # passes per component instead of 100
        lines = lines_from_endpoints(e.detach()).reshape(len(e), NUM_POINTS, 2)
        with torch.enable_grad():
            x0 = lines[..., 0].clone().requires_grad_(True)
            x1 = lines[..., 1].clone().requires_grad_(True)
            values, rows = [], []
            for k, f in enumerate(problem.functions):
                # a user's pair of callables is problem code: one ConfigError if it raises,
                # one ShapeError if it returns anything but a tensor shaped like x0
                what = f"problem {problem.name!r} function f{k}"
                with _problem_code(what, f" for lines of shape {tuple(x0.shape)}"):
                    v = f(x0, x1)  # (N, 50)
                    if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(x0.shape):
                        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                        raise ShapeError(
                            f"{what} must return a tensor of shape {tuple(x0.shape)} (the "
                            f"shape of x0), got {got}"
                        )
                    if not v.requires_grad:
                        raise ConfigError(
                            f"{what} must be differentiable in x0 and x1 (torch operations "
                            "on its arguments), for the Laplace approximation's Jacobian"
                        )
                    g0, g1 = torch.autograd.grad(v.sum(), (x0, x1), allow_unused=True)
                # a function of one line only has no gradient in the other: zero
                g0 = torch.zeros_like(x0) if g0 is None else g0
                g1 = torch.zeros_like(x1) if g1 is None else g1
                values.append(v.detach())
                rows.append(g0[..., None] * basis[0::2] + g1[..., None] * basis[1::2])
        value = torch.stack(values, dim=-1).reshape(len(e), -1)  # (N, 100): (position, k)
        jac = torch.stack(rows, dim=2).reshape(len(e), -1, e.shape[1])  # (N, 100, 4)
        return value, jac

    return laplace_mixture_sample(
        forward,
        problem.log_prior_endpoints,
        sample_prior,
        y.reshape(-1),
        starts,
        noise_std,
        num_samples,
        defensive=defensive,
        generator=generator,
        jacobian=jacobian,
    )
