"""Elementwise standardisation of ``x`` and ``y``, fitted on the training set."""

from __future__ import annotations

import torch
from torch import nn

from ppl_cvae.checks import shape_text
from ppl_cvae.errors import DataError, ShapeError

__all__ = [
    "CONSTANT_RTOL",
    "FLOAT32_HEADROOM",
    "NUMERICAL_RIDGE",
    "LinearWhitener",
    "Standardiser",
]

CONSTANT_RTOL = 2.0**-20
"""An element whose standard deviation is at most this times its ``|mean|`` is constant to the
:class:`Standardiser` (keeps ``std = 1``): its spread is within eight float32 rounding steps of
its value (float32's relative step is ``2**-23``), so what varies is rounding, not data."""

NUMERICAL_RIDGE = 1e-12
"""Relative ridge of :meth:`LinearWhitener.fit` with enough pairs: a float64 guard against exactly
collinear columns of ``y`` (the condition number of the solve stays below 1e12), small enough
not to shrink ``A y`` along any direction of standardised ``y`` whose variance is above about
1e-10 (a datum whose noise sd is a ten-thousandth of its spread still is)."""

_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)  # 1.2e-38: 1 / std must fit in float32

FLOAT32_HEADROOM = 1e3
"""Standard deviations from the mean that must stay inside the float32 range: the moments are
computed in float64 but stored, and the networks run, in float32, so an element whose
``|mean| + FLOAT32_HEADROOM * std`` exceeds 3.4e38 is refused (its standardised values, or
draws mapped back from a few standard deviations out, would overflow to inf)."""


class Standardiser(nn.Module):
    """Affine map ``u = (v - mean) / std`` per element of an event of shape ``event_shape``.

    ``mean`` and ``std`` are buffers (saved in the checkpoint's state dict), computed in
    float64 (a column of values near the float32 limit, 3.4e38, would overflow a float32 sum).
    Constant elements keep ``std = 1``, so they pass through shifted but unscaled, never
    divided by zero. An element is constant when its own standard deviation is at most
    :data:`CONSTANT_RTOL` (``2**-20``, eight float32 rounding steps) times its own ``|mean|``,
    below the smallest normal float32 (1.2e-38, whose reciprocal float32 could not hold), or
    NaN. The rule looks at each element alone: elements in very different units (a
    permeability of 1e-13 m^2 beside a porosity of 0.2, data in seconds beside data in volts)
    are each scaled to unit variance, however far apart their spreads are.

    Moments that float32 cannot hold with :data:`FLOAT32_HEADROOM` standard deviations to
    spare are refused (:meth:`set_moments`), naming the element: a column whose spread is
    near 1e38 would be stored as an infinite scale and train on zeros or NaN.

    Parameters
    ----------
    event_shape : tuple of int
        Shape of one event; inputs are ``(*batch, *event_shape)``.
    name : str, default "values"
        What is standardised (``"x"`` or ``"y"``), for error messages.
    """

    # buffers registered in __init__ (declared here for the type checker)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, event_shape: tuple[int, ...], name: str = "values") -> None:
        super().__init__()
        self.name = name
        self.event_shape = tuple(event_shape)
        self.register_buffer("mean", torch.zeros(self.event_shape))
        self.register_buffer("std", torch.ones(self.event_shape))

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> Standardiser:
        """Set ``mean`` and ``std`` from ``data`` of shape ``(num, *event_shape)``; return self.

        Raises
        ------
        ShapeError
            If ``data`` is not ``(num, *event_shape)`` with ``num >= 2``.
        DataError
            As :meth:`set_moments` (an element too large for float32).
        """
        if tuple(data.shape[1:]) != self.event_shape or data.shape[0] < 2:
            raise ShapeError(
                f"standardiser expects {shape_text('num >= 2', self.event_shape)}, "
                f"got {tuple(data.shape)}"
            )
        n, chunk = data.shape[0], 4096  # float64 in chunks: no float64 copy of all the data
        total = torch.zeros(self.event_shape, dtype=torch.float64)
        for start in range(0, n, chunk):
            total += data[start : start + chunk].double().sum(0)
        mean = total / n
        squares = torch.zeros_like(mean)
        for start in range(0, n, chunk):
            squares += (data[start : start + chunk].double() - mean).pow(2).sum(0)
        return self.set_moments(mean, (squares / (n - 1)).sqrt())

    @torch.no_grad()
    def set_moments(self, mean: torch.Tensor, std: torch.Tensor) -> Standardiser:
        """Set ``mean`` and ``std`` (each of shape ``event_shape``) from given moments; return self.

        The same rule as :meth:`fit` keeps ``std = 1`` for a constant element (see the class
        docstring). Used with moments accumulated in one streaming pass over a file
        (:class:`~ppl_cvae.data.lazy.RunningMoments`).

        Raises
        ------
        ShapeError
            If ``mean`` or ``std`` does not have shape ``event_shape``.
        DataError
            If an element's ``|mean| + FLOAT32_HEADROOM * std`` is above the float32 maximum
            (3.4e38) or not finite: the message names the element, its mean and standard
            deviation, and asks for the values in smaller units.
        """
        if tuple(mean.shape) != self.event_shape or tuple(std.shape) != self.event_shape:
            raise ShapeError(
                f"standardiser moments must have shape {self.event_shape}, got mean "
                f"{tuple(mean.shape)} and std {tuple(std.shape)}"
            )
        mean64, std64 = mean.double(), std.double()
        # each element alone: a NaN std counts as constant, and so does a spread within a few
        # float32 rounding steps of the value (the values the moments came from are float32)
        tiny = ~(std64 > CONSTANT_RTOL * mean64.abs()) | ~(std64 >= _FLOAT32_TINY)
        std64 = torch.where(tiny, torch.ones_like(std64), std64)
        reach = mean64.abs() + FLOAT32_HEADROOM * std64
        too_large = ~(reach <= torch.finfo(torch.float32).max)  # NaN too
        if bool(too_large.any()):
            flat = int(too_large.flatten().nonzero()[0])
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), self.event_shape))
            where = ", ".join(str(i) for i in index)
            raise DataError(
                f"{self.name}[..., {where}] has mean {float(mean64[index]):.3g} and standard "
                f"deviation {float(std64[index]):.3g} ({int(too_large.sum())} element(s) of "
                f"{self.name} like it): float32 (max 3.4e38) cannot hold {FLOAT32_HEADROOM:g} "
                f"standard deviations around the mean, so training would see inf or NaN; "
                f"rescale the units of {self.name} (e.g. divide that column by 1e30) and fit "
                "again"
            )
        self.mean.copy_(mean64)
        self.std.copy_(std64)
        return self

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Standardise ``(*batch, *event_shape)`` elementwise."""
        return (v - self.mean) / self.std

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """Map standardised values back to physical units; same shape as the input."""
        return u * self.std + self.mean


class LinearWhitener(nn.Module):
    """Whiten standardised ``x`` given ``y`` by a linear-Gaussian regression of ``x`` on ``y``.

    ``u = L^{-1} (x - A y - b)``, with ``x`` (flattened, ``d`` values) and ``y`` (flattened,
    ``m`` values) in standardised units. ``A`` and ``b`` are the least-squares regression of
    ``x`` on ``y`` over the training pairs and ``L`` the Cholesky factor of the covariance of
    its residuals (:meth:`fit`). Over pairs drawn from a prior and a simulator, ``A y + b`` is
    then the best linear estimate of ``x`` from ``y`` and ``L L^T`` its error covariance: for a
    linear forward operator, a Gaussian prior and Gaussian noise this is the exact posterior,
    ``x | y ~ N(A y + b, L L^T)`` (the posterior covariance does not depend on ``y``), so
    ``u | y ~ N(0, I)``; for other problems it is the linear update of the ensemble Kalman
    smoother estimated from the same simulations. A decoder that models ``u`` instead of ``x``
    starts from that answer and learns only where the posterior departs from it.

    The map is a fixed affine bijection for each ``y`` (buffers, saved in the checkpoint), so
    ``log p(x | z, y) = log p(u | z, y) - log |det L|``: the ELBO changes by a constant and
    the model stays the same model of ``x``.

    Parameters
    ----------
    x_dim : int
        ``d``, the number of elements of ``x``.
    y_dim : int
        ``m``, the number of elements of ``y``; 0 for an unconditional model (``A`` is empty and
        ``L L^T`` is the covariance of ``x``: whitening with the full covariance instead of
        elementwise, sbi's "structured" z-scoring).

    Notes
    -----
    Buffers: ``weight`` ``A``, shape ``(d, m)``; ``bias`` ``b``, shape ``(d,)``; ``scale_tril``
    ``L``, shape ``(d, d)``, lower triangular with a positive diagonal. Before :meth:`fit` the
    map is the identity.

    References
    ----------
    Evensen (2003), The Ensemble Kalman Filter: theoretical formulation and practical
    implementation, Ocean Dynamics 53 (the linear update estimated from an ensemble);
    Ledoit and Wolf (2004), A well-conditioned estimator for large-dimensional covariance
    matrices, J. Multivariate Analysis 88 (the shrinkage of the residual covariance).
    """

    # buffers registered in __init__ (declared here for the type checker)
    weight: torch.Tensor
    bias: torch.Tensor
    scale_tril: torch.Tensor

    def __init__(self, x_dim: int, y_dim: int) -> None:
        super().__init__()
        self.x_dim = int(x_dim)
        self.y_dim = int(y_dim)
        self.register_buffer("weight", torch.zeros(self.x_dim, self.y_dim))
        self.register_buffer("bias", torch.zeros(self.x_dim))
        self.register_buffer("scale_tril", torch.eye(self.x_dim))

    @torch.no_grad()
    def fit(
        self, x: torch.Tensor, y: torch.Tensor | None, *, ridge: float = 1e-3
    ) -> LinearWhitener:
        """Fit ``A``, ``b`` and ``L`` on training pairs; return self.

        ``A`` is the least-squares regression of ``x`` on ``y``. With enough pairs,
        ``N >= 4 (d + m + 1)``, it is ordinary least squares: the penalty is only
        :data:`NUMERICAL_RIDGE` (``1e-12``) times the mean variance of ``y``, which keeps
        exactly collinear columns (a duplicated or constant datum) solvable without biasing
        the fit. With fewer pairs it is the ridge regression with penalty ``ridge`` times the
        mean variance of ``y``, which keeps it defined when ``m`` is close to or above ``N``.
        A ridge shrinks ``A y`` toward the prior mean by about ``ridge / lambda`` prior sds
        along a direction of ``y`` with variance ``lambda``; where the data are informative
        (posterior sd far below the prior sd) that is many posterior sds: with ``ridge=1e-3``
        on a linear-Gaussian file (4 parameters, 6 data, noise sd ``3e-3`` of unit-variance
        data) the start was 2.3 posterior sds off the exact mean and 54% too wide, and the
        fitted flow's draws 0.87 sds off and 31% too wide. ``L L^T`` is the covariance of the
        residuals with the ``N - m - 1`` degrees of
        freedom the regression leaves, when ``N >= 4 (d + m + 1)``. With fewer pairs it is the
        Ledoit-Wolf shrinkage estimate (scikit-learn's ``LedoitWolf``, well conditioned when
        ``d`` is comparable to ``N``), scaled by ``N / (N - m - 1)``: the shrinkage toward a
        scaled identity inflates the smallest eigenvalues, which are the directions the data
        pin down (on gravity, 3.4 times with 20,000 pairs, which made the decoder's posteriors
        9% too narrow), so it is kept for the case it is needed.

        Parameters
        ----------
        x : Tensor, shape (N, d)
            Standardised training models, flattened.
        y : Tensor, shape (N, m), or None
            Standardised training data, flattened (None when ``m = 0``).
        ridge : float, default 1e-3
            Relative ridge penalty, applied when ``N < 4 (d + m + 1)``.

        Raises
        ------
        ShapeError
            If the shapes do not match ``(N, d)`` and ``(N, m)`` or ``N < 2``.
        """
        from sklearn.covariance import LedoitWolf  # scikit-learn is a core dependency

        n = x.shape[0]
        y_ok = (y is None and self.y_dim == 0) or (
            y is not None and tuple(y.shape) == (n, self.y_dim)
        )
        if x.dim() != 2 or x.shape[1] != self.x_dim or n < 2 or not y_ok:
            got = None if y is None else tuple(y.shape)
            raise ShapeError(
                f"LinearWhitener.fit expects x (N >= 2, {self.x_dim}) and y (N, {self.y_dim}), "
                f"got x {tuple(x.shape)} and y {got}"
            )
        xd = x.double()
        x_mean = xd.mean(0)
        resid = xd - x_mean
        weight = xd.new_zeros(self.x_dim, self.y_dim)
        y_mean = xd.new_zeros(self.y_dim)
        if y is not None and self.y_dim > 0:
            yd = y.double()
            y_mean = yd.mean(0)
            yc = yd - y_mean
            gram = yc.T @ yc / n
            enough = n >= 4 * (self.x_dim + self.y_dim + 1)  # as the covariance below
            relative = NUMERICAL_RIDGE if enough else ridge
            penalty = relative * float(gram.diagonal().mean().clamp_min(1e-12))
            gram = gram + penalty * torch.eye(self.y_dim, dtype=gram.dtype)
            weight = torch.linalg.solve(gram, yc.T @ resid / n).T
            resid = resid - yc @ weight.T
        if n >= 4 * (self.x_dim + self.y_dim + 1):  # enough pairs: the unbiased estimate
            cov = resid.T @ resid / (n - self.y_dim - 1)
        else:  # few pairs: shrunk toward a scaled identity, well conditioned
            cov = torch.from_numpy(LedoitWolf(assume_centered=True).fit(resid.numpy()).covariance_)
            if n > self.y_dim + 1:
                cov = cov * (n / (n - self.y_dim - 1))
        jitter = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-12))
        tril = torch.linalg.cholesky(cov + jitter * torch.eye(self.x_dim, dtype=cov.dtype))
        self.weight.copy_(weight)
        self.bias.copy_(x_mean - weight @ y_mean)
        self.scale_tril.copy_(tril)
        return self

    def loc(self, y: torch.Tensor | None) -> torch.Tensor:
        """Return ``A y + b``: ``(batch, d)`` for ``y`` of shape ``(batch, m)``, else ``(d,)``."""
        if y is None or self.y_dim == 0:
            return self.bias
        return y @ self.weight.T + self.bias

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Return ``u = L^{-1} (x - A y - b)``, shape ``(*sample, batch, d)`` like ``x``.

        ``y`` has shape ``(batch, m)`` (or None); one triangular solve for all rows.
        """
        resid = x - self.loc(y)
        flat = resid.reshape(-1, self.x_dim).T
        u = torch.linalg.solve_triangular(self.scale_tril, flat, upper=False)
        return u.T.reshape(resid.shape)

    def inverse(self, u: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Return ``x = A y + b + L u``, shape ``(*sample, batch, d)`` like ``u``."""
        return self.loc(y) + u @ self.scale_tril.T

    def marginal_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """Return the sd of each element of ``x`` for independent ``u`` with sd ``scale``.

        ``sqrt(diag(L diag(scale^2) L^T))``; ``scale`` of shape ``(..., d)``, result the same.
        """
        return (scale.pow(2) @ self.scale_tril.pow(2).T).sqrt()

    def transform(self, y: torch.Tensor | None) -> torch.distributions.Transform:
        """Return the bijection ``u -> A y + b + L u`` (event dim 1) for ``y`` ``(batch, m)``."""
        return _WhitenedToX(self, self.loc(y))


class _WhitenedToX(torch.distributions.Transform):
    """``u -> loc + L u`` on vectors, its inverse one triangular solve for all rows."""

    domain = torch.distributions.constraints.real_vector
    codomain = torch.distributions.constraints.real_vector
    bijective = True

    def __init__(self, whitener: LinearWhitener, loc: torch.Tensor) -> None:
        super().__init__()
        self.whitener = whitener
        self.shift = loc

    def __eq__(self, other: object) -> bool:
        return self is other

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        return self.shift + u @ self.whitener.scale_tril.T

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        resid = x - self.shift
        flat = resid.reshape(-1, self.whitener.x_dim).T
        u = torch.linalg.solve_triangular(self.whitener.scale_tril, flat, upper=False)
        return u.T.reshape(resid.shape)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x is the input u, y the output x = loc + L u (torch's naming)
        log_det = self.whitener.scale_tril.diagonal().log().sum()
        return log_det.expand(torch.broadcast_shapes(x.shape, y.shape)[:-1])
