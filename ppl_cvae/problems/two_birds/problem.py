"""The "Two Birds, One Neural Network" problem: two straight lines seen through two trig maps.

The problem itself (prior, forward operator, endpoint parametrisation); its exact solutions,
the challenge's scoring and the exact posterior's mode weights live beside it in
:mod:`~ppl_cvae.problems.two_birds.exact`, :mod:`~ppl_cvae.problems.two_birds.scoring` and
:mod:`~ppl_cvae.problems.two_birds.mode_weights`.

A model ``x`` is a pair of straight lines sampled at ``NUM_POINTS = 50`` equally spaced
positions ``t_i = i / 49`` (dimensionless, ``t`` in [0, 1]): ``x0`` descending and ``x1``
ascending, all values in [0.1, 1] (dimensionless). The observation is elementwise
``y_k(t) = f_k(x0(t), x1(t))`` for ``k = 0, 1``, with no noise. Shapes follow the challenge's
files: ``x`` and ``y`` are each ``(1, 50, 2)`` (row, position, line/component).

Prior (checked against the 3000 models of the challenge's validation files):
``x0(1) ~ U(0.1, 1)``, ``x0(0) ~ U(x0(1), 1)``, ``x1(0) ~ U(0.1, 1)``, ``x1(1) ~ U(x1(0), 1)``,
lines linear in ``t`` between those endpoints. Its density on the endpoint coordinates
``e = (x0(0), x0(1), x1(0), x1(1))`` (Lebesgue measure on ``R^4``) is

    p(e) = 1 / (0.9 (1 - x0(1))) * 1 / (0.9 (1 - x1(0)))

on ``0.1 <= x0(1) <= x0(0) <= 1``, ``0.1 <= x1(0) <= x1(1) <= 1`` (zero elsewhere): uniform on
the four fractions the sampler draws, not on the endpoints (:meth:`TwoBirds.log_prior`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ppl_cvae.config import ModelOverrides, Overrides, TrainOverrides
from ppl_cvae.errors import ConfigError, ShapeError, UnknownProblemError
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.registry import register_problem

__all__ = [
    "EndpointTransform",
    "FUNCTION_PAIRS",
    "FunctionPair",
    "NUM_POINTS",
    "TrigComponent",
    "TwoBirds",
    "endpoints_from_lines",
    "lines_from_endpoints",
    "positions",
]

NUM_POINTS = 50  # sample positions per line
_LOW, _HIGH = 0.1, 1.0  # bounds of every line value under the prior (dimensionless)
# slack of the prior's support and of the straight-line test: a few float32 round-offs of
# values of order 1, so that float32 draws on the boundary or on a line count as on it
_SUPPORT_TOL = 1e-6
_LINE_TOL = 1e-5

# A pair of torch callables f_k(x0, x1) acting elementwise (the type of TwoBirds.functions).
FunctionPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...]


@dataclass(frozen=True)
class TrigComponent:
    """One component ``f(x0, x1) = kind(a * x0 + b * x1)`` of a Two Birds function pair.

    Parameters
    ----------
    kind : {"sin", "cos"}
        The trigonometric function.
    a, b : float
        Phase coefficients (radians per unit of x0 / x1).
    """

    kind: Literal["sin", "cos"]
    a: float
    b: float

    def __call__(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Evaluate elementwise; ``x0`` and ``x1`` broadcast, result has their shape."""
        phase = self.a * x0 + self.b * x1
        return torch.sin(phase) if self.kind == "sin" else torch.cos(phase)


FUNCTION_PAIRS: dict[str, tuple[TrigComponent, TrigComponent]] = {
    "data_1": (TrigComponent("sin", 5.0, 3.0), TrigComponent("cos", 4.0, 8.0)),
    "original": (TrigComponent("cos", 49.0, 42.0), TrigComponent("cos", 56.0, 63.0)),
}


def positions() -> torch.Tensor:
    """Return the sample positions ``t``, shape ``(50,)``, dimensionless in [0, 1]."""
    return torch.linspace(0.0, 1.0, NUM_POINTS)


def lines_from_endpoints(endpoints: torch.Tensor) -> torch.Tensor:
    """Build line pairs from endpoints.

    Parameters
    ----------
    endpoints : Tensor, shape (*batch, 4)
        ``(x0(0), x0(1), x1(0), x1(1))``.

    Returns
    -------
    Tensor, shape (*batch, 1, 50, 2)
        ``x[..., 0, i, k] = start_k + (end_k - start_k) * t_i``.
    """
    if endpoints.shape[-1] != 4:
        raise ShapeError(f"endpoints must have last axis 4, got shape {tuple(endpoints.shape)}")
    t = positions().to(endpoints)
    start = endpoints[..., [0, 2]].unsqueeze(-2)  # (*batch, 1, 2)
    end = endpoints[..., [1, 3]].unsqueeze(-2)
    return (start + (end - start) * t[:, None]).unsqueeze(-3)


def endpoints_from_lines(x: torch.Tensor) -> torch.Tensor:
    """Return the least-squares line endpoints of ``x``.

    Parameters
    ----------
    x : Tensor, shape (*batch, 1, 50, 2)

    Returns
    -------
    Tensor, shape (*batch, 4)
        ``(x0(0), x0(1), x1(0), x1(1))`` of the best-fitting straight lines (exact for lines).
    """
    t = positions().to(x)
    design = torch.stack([1 - t, t], dim=-1)  # (50, 2)
    coef = torch.linalg.pinv(design) @ x[..., 0, :, :]  # (*batch, 2, 2): [start/end, line]
    return torch.stack([coef[..., 0, 0], coef[..., 1, 0], coef[..., 0, 1], coef[..., 1, 1]], -1)


class EndpointTransform(torch.distributions.Transform):
    """Bijection from ``R^4`` onto endpoints that satisfy the Two Birds prior's constraints.

    ``u -> (x0(0), x0(1), x1(0), x1(1))`` with ``s = sigmoid(u)``::

        x0(1) = 0.1 + 0.9 s_1,   x0(0) = x0(1) + (1 - x0(1)) s_0,
        x1(0) = 0.1 + 0.9 s_2,   x1(1) = x1(0) + (1 - x1(0)) s_3,

    so ``x0`` descends, ``x1`` ascends and all values lie in (0.1, 1). Under ``u ~ logistic``
    the endpoints follow the prior exactly (the ``s`` are the prior's independent uniforms).
    The inverse clamps the fractions to ``[1e-4, 1 - 1e-4]`` so boundary values stay finite.
    Shapes: ``(*batch, 4) -> (*batch, 4)``.

    The Jacobian is triangular after reordering, with
    ``log |det| = 2 log 0.9 + log(1 - x0(1)) + log(1 - x1(0)) + sum_i log(s_i (1 - s_i))``
    (:meth:`log_abs_det_jacobian`), so the density of ``u`` is the product of four standard
    logistic densities exactly when the endpoints have the prior density (change of
    variables).
    """

    domain = torch.distributions.constraints.independent(torch.distributions.constraints.real, 1)
    codomain = torch.distributions.constraints.independent(torch.distributions.constraints.real, 1)
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EndpointTransform)

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(u)
        x0_end = _LOW + (_HIGH - _LOW) * s[..., 1]
        x0_start = x0_end + (_HIGH - x0_end) * s[..., 0]
        x1_start = _LOW + (_HIGH - _LOW) * s[..., 2]
        x1_end = x1_start + (_HIGH - x1_start) * s[..., 3]
        return torch.stack([x0_start, x0_end, x1_start, x1_end], dim=-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return ``log |det d(endpoints)/du|`` at ``u = x``; shape ``(*batch,)``.

        Computed from ``u`` alone with ``log(1 - x0(1)) = log 0.9 + log sigmoid(-u_1)`` (and
        likewise for ``x1(0)``), so it stays finite where the endpoints round onto a bound.
        """
        logsig_pos = torch.nn.functional.logsigmoid(x)
        logsig_neg = torch.nn.functional.logsigmoid(-x)
        log_09 = math.log(_HIGH - _LOW)
        return (
            4 * log_09 + logsig_neg[..., 1] + logsig_neg[..., 2] + (logsig_pos + logsig_neg).sum(-1)
        )

    def _inverse(self, c: torch.Tensor) -> torch.Tensor:
        eps = 1e-4
        x0_start, x0_end, x1_start, x1_end = c.unbind(-1)
        s1 = (x0_end - _LOW) / (_HIGH - _LOW)
        s0 = (x0_start - x0_end) / (_HIGH - x0_end).clamp_min(1e-12)
        s2 = (x1_start - _LOW) / (_HIGH - _LOW)
        s3 = (x1_end - x1_start) / (_HIGH - x1_start).clamp_min(1e-12)
        s = torch.stack([s0, s1, s2, s3], dim=-1).clamp(eps, 1 - eps)
        return torch.logit(s)


@register_problem("two_birds")
class TwoBirds(Problem):
    """The Two Birds problem with a named or user-given pair of functions.

    Parameters
    ----------
    functions : str or pair of callables, default "data_1"
        A name in :data:`FUNCTION_PAIRS` (``"data_1"``: sin(5 x0 + 3 x1), cos(4 x0 + 8 x1);
        ``"original"``: cos(49 x0 + 42 x1), cos(56 x0 + 63 x1)) or two torch-differentiable
        callables ``f_k(x0, x1)`` acting elementwise.
    misfit_std : float, default 0.05
        Nominal scale of the misfit ``F(x) - y`` (dimensionless) for the physics-consistency
        term: y is noise-free, and the challenge accepts y-RMSE below 0.1.

    Raises
    ------
    UnknownProblemError
        If ``functions`` is a string that is not in :data:`FUNCTION_PAIRS`.
    ConfigError
        If ``functions`` is not a pair of callables, or ``misfit_std <= 0``.

    Notes
    -----
    Forward operator ``F(x)[0, i, k] = f_k(x0(t_i), x1(t_i))``; noise model: none
    (``noise_std = 0``), so the exact posterior is a finite set of point masses when the
    functions are of :class:`TrigComponent` form (see :mod:`ppl_cvae.problems.two_birds.exact`).

    References
    ----------
    The "Two Birds, One Neural Network" challenge (problem statement and data files).

    Examples
    --------
    >>> problem = TwoBirds("data_1")
    >>> x, y = problem.simulate(3, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((3, 1, 50, 2), (3, 1, 50, 2))
    """

    name = "two_birds"
    x_shape = (1, NUM_POINTS, 2)
    y_shape = (1, NUM_POINTS, 2)
    x_dims = ("row", "position", "line")
    y_dims = ("row", "position", "component")
    noise_std = 0.0
    has_prior_density = True

    def __init__(self, functions: str | FunctionPair = "data_1", misfit_std: float = 0.05) -> None:
        if isinstance(functions, str):
            if functions not in FUNCTION_PAIRS:
                raise UnknownProblemError(
                    f"unknown Two Birds function pair {functions!r}; "
                    f"expected one of {sorted(FUNCTION_PAIRS)} or a pair of callables"
                )
            self.functions_name: str | None = functions
            self.functions: FunctionPair = FUNCTION_PAIRS[functions]
        else:
            if len(functions) != 2 or not all(callable(f) for f in functions):
                raise ConfigError("functions must be a name or a pair of callables f(x0, x1)")
            self.functions_name = None
            self.functions = tuple(functions)
        if not misfit_std > 0:
            raise ConfigError(f"misfit_std must be > 0, got {misfit_std}")
        self.misfit_std = float(misfit_std)
        self.coords: dict[str, list[Any]] = {
            "row": [0],
            "position": list(range(NUM_POINTS)),
            "line": ["x0", "x1"],
            "component": ["f0", "f1"],
        }

    def basis(self) -> torch.Tensor:
        """Return the linear basis of line pairs: ``x.flatten() = basis @ endpoints``.

        Returns
        -------
        Tensor, shape (100, 4)
            Columns map ``(x0(0), x0(1), x1(0), x1(1))`` to the flattened ``(1, 50, 2)`` model;
            a CVAE built with it (``ModelConfig.basis_dim=4``) decodes straight lines by
            construction.
        """
        return lines_from_endpoints(torch.eye(4)).reshape(4, -1).T.contiguous()

    def coefficient_transform(self) -> EndpointTransform:
        """Return the bijection from ``R^4`` onto prior-valid endpoints (see the class)."""
        return EndpointTransform()

    def recommended_settings(self) -> Overrides:
        """Return default ``ModelConfig``/``TrainConfig`` overrides for this problem.

        Straight-line decoder (``basis_dim=4``) on constrained endpoints
        (``constrained_coefficients=True``: the decoder's output passes through
        :class:`EndpointTransform`, so every draw is a pair of monotone lines inside the
        prior's support), fresh simulations every epoch, 8 latent dims, 60 epochs.

        Measured on ``data_1`` (``benchmarks/two_birds_diagnosis.py``, 50 simulated
        observations, 400 draws each): with unconstrained endpoints 4.7% of the amortized
        draws failed the challenge's monotonicity criterion (near-flat lines whose endpoints
        swap) and the pass rate was 0.835; constrained, none fail it and the pass rate is
        0.877 (training seed 1: 0.859 and 0.885). The decoder noise keeps ``init_scale=1`` and
        ``scale_gain=1``: it shrinks slowly, and a smaller noise (``init_scale=0.05``, or
        120 epochs) raises the ELBO but lowers the pass rate (0.45, 0.76), because the draws
        come through the prior net, which the ELBO trains only through the KL term.

        The Gaussian prior net stays (issue 10): a flow prior of two spline coupling layers
        (``prior="flow"``, whose defaults they are) raises the amortized ``data_1`` pass rate
        to 0.991 / 0.983 (training seeds 0 / 1; 0.880 / 0.884 here) but draws 44k samples/s
        for one observation against 99k/s (1 thread), under the issue's 1e5/s.

        Examples
        --------
        >>> TwoBirds().recommended_settings().model["constrained_coefficients"]
        True
        """
        return Overrides(
            model=ModelOverrides(
                latent_dim=8,
                hidden_dims=(256, 256, 256),
                basis_dim=4,
                constrained_coefficients=True,
                init_scale=1.0,
                scale_gain=1.0,
            ),
            train=TrainOverrides(
                num_epochs=60,
                batch_size=256,
                resimulate=True,
                num_train=20000,
                lr_decay=0.1,
                patience=0,
            ),
        )

    def sample_endpoints(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw prior endpoints ``(x0(0), x0(1), x1(0), x1(1))``; shape ``(num, 4)``."""
        u = torch.rand(num, 4, generator=generator)
        x0_end = _LOW + (_HIGH - _LOW) * u[:, 0]
        x0_start = x0_end + (_HIGH - x0_end) * u[:, 1]
        x1_start = _LOW + (_HIGH - _LOW) * u[:, 2]
        x1_end = x1_start + (_HIGH - x1_start) * u[:, 3]
        return torch.stack([x0_start, x0_end, x1_start, x1_end], dim=-1)

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` line pairs from the prior; shape ``(num, 1, 50, 2)``."""
        return lines_from_endpoints(self.sample_endpoints(num, generator))

    def log_prior_endpoints(self, endpoints: torch.Tensor) -> torch.Tensor:
        """Return the prior log density of endpoints ``(x0(0), x0(1), x1(0), x1(1))``.

        Parameters
        ----------
        endpoints : Tensor, shape (*batch, 4)
            Dimensionless line endpoints.

        Returns
        -------
        Tensor, shape (*batch,)
            ``-2 log 0.9 - log(1 - x0(1)) - log(1 - x1(0))`` in nats on the support
            ``0.1 <= x0(1) <= x0(0) <= 1``, ``0.1 <= x1(0) <= x1(1) <= 1`` (with a slack of
            1e-6 for float32 round-off), ``-inf`` off it; float64, with respect to Lebesgue
            measure on ``R^4``; differentiable inside the support.

        Raises
        ------
        ShapeError
            If the last axis of ``endpoints`` is not 4.

        Notes
        -----
        The sampler draws four independent uniforms ``s`` and maps them affinely:
        ``x0(1) = 0.1 + 0.9 s_1``, ``x0(0) = x0(1) + (1 - x0(1)) s_0`` (and likewise for
        ``x1``), a map with Jacobian determinant ``0.9 (1 - x0(1)) 0.9 (1 - x1(0))``; the
        density is its reciprocal. Its entropy is ``4 log(0.9) - 2 = -2.42`` nats (each
        ``E[log(1 - U(0.1, 1))] = log 0.9 - 1``; negative, as the support is small).

        Examples
        --------
        >>> p = TwoBirds()
        >>> e = torch.tensor([[0.9, 0.1, 0.1, 0.9], [0.1, 0.9, 0.1, 0.9]])  # second: x0 rises
        >>> [round(v, 4) for v in p.log_prior_endpoints(e).tolist()]  # -4 log(0.9), outside
        [0.4214, -inf]
        """
        if endpoints.dim() < 1 or endpoints.shape[-1] != 4:
            raise ShapeError(f"endpoints must have shape (*batch, 4), got {tuple(endpoints.shape)}")
        x0_start, x0_end, x1_start, x1_end = endpoints.to(torch.float64).unbind(-1)
        tol = _SUPPORT_TOL
        inside = (
            (x0_end >= _LOW - tol)
            & (x0_end <= x0_start + tol)
            & (x0_start <= _HIGH + tol)
            & (x1_start >= _LOW - tol)
            & (x1_start <= x1_end + tol)
            & (x1_end <= _HIGH + tol)
        )
        tiny = torch.finfo(torch.float64).tiny
        log_p = (
            -2 * math.log(_HIGH - _LOW)
            - torch.log((_HIGH - x0_end).clamp_min(tiny))
            - torch.log((_HIGH - x1_start).clamp_min(tiny))
        )
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return the prior log density of line pairs ``x``, on their endpoint coordinates.

        ``x`` lies on the 4-dimensional family of straight line pairs, so its density is taken
        with respect to Lebesgue measure on the endpoints ``e = endpoints_from_lines(x)`` (the
        basis coefficients, :meth:`basis`): :meth:`log_prior_endpoints` of ``e``.

        Parameters
        ----------
        x : Tensor, shape (*batch, 1, 50, 2)
            Line pairs (dimensionless).

        Returns
        -------
        Tensor, shape (*batch,)
            In nats, float64; ``-inf`` when ``x`` violates the prior's constraints or is not a
            pair of straight lines (further than 1e-5 from the lines through its endpoints).

        Raises
        ------
        ShapeError
            If the trailing axes of ``x`` are not ``(1, 50, 2)``.

        Examples
        --------
        >>> p = TwoBirds()
        >>> x = p.sample_prior(1000, torch.Generator().manual_seed(0))
        >>> round(float(p.log_prior(x).mean()), 1)  # minus the entropy, 2 - 4 log(0.9)
        2.4
        """
        if x.dim() < 3 or tuple(x.shape[-3:]) != self.x_shape:
            raise ShapeError(f"x must end in shape {self.x_shape}, got {tuple(x.shape)}")
        x64 = x.to(torch.float64)
        endpoints = endpoints_from_lines(x64)
        off_line = (lines_from_endpoints(endpoints) - x64).abs().flatten(-3).amax(-1) > _LINE_TOL
        log_p = self.log_prior_endpoints(endpoints)
        return torch.where(off_line, torch.full_like(log_p, -math.inf), log_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``F``: ``x`` of shape ``(*batch, 1, 50, 2)`` to ``y`` of the same shape.

        Raises
        ------
        ShapeError
            If the trailing axes of ``x`` are not ``(1, 50, 2)``.
        """
        if tuple(x.shape[-3:]) != self.x_shape:
            raise ShapeError(f"x must end in shape {self.x_shape}, got {tuple(x.shape)}")
        x0, x1 = x[..., 0], x[..., 1]
        return torch.stack([f(x0, x1) for f in self.functions], dim=-1)

    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return prior draws and their noise-free data, each of shape ``(num, 1, 50, 2)``."""
        x = self.sample_prior(num, generator)
        return x, self.forward(x)

    def spec(self) -> dict[str, Any]:
        """Return ``{"name": "two_birds", "functions": ..., "misfit_std": ...}``.

        Raises
        ------
        ConfigError
            If the problem was built from user callables, which cannot be serialised.
        """
        if self.functions_name is None:
            raise ConfigError(
                "a Two Birds problem with user-defined functions cannot be stored by name; "
                "pass the problem again when loading the checkpoint"
            )
        return {"name": self.name, "functions": self.functions_name, "misfit_std": self.misfit_std}

    def __repr__(self) -> str:
        return f"TwoBirds(functions={self.functions_name or 'custom'!r})"
