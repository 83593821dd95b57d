"""1-D magnetotelluric (MT) sounding over a layered earth.

Model ``x``: log10 of the electrical resistivity ``rho`` (``x = log10(rho / (ohm m))``) of
``N = num_layers`` entries stacked downward. Entries ``0 .. N-2`` are layers of equal thickness
``h = depth / (N - 1)``; the **last entry is the basement half-space** below ``depth``. The
coordinate of entry ``j`` is the depth of its top, ``j h`` in m (depth positive downward, origin
at the surface), so the half-space's coordinate is ``depth``. Shape ``(N,)``, dim ``"depth"``.

Data ``y``: at ``M`` frequencies ``f`` (Hz), the log10 apparent resistivity and the impedance
phase, stacked as ``y[0] = log10(rho_a / (ohm m))`` and ``y[1] = phi`` in degrees. Shape
``(2, M)``, dims ``("component", "frequency")``.

Forward operator (plane-wave source, quasi-static, time convention ``exp(+i omega t)``,
``omega = 2 pi f``, ``mu_0 = 4 pi 1e-7 H/m``). In layer ``j`` the wavenumber and intrinsic
impedance are ``k_j = sqrt(i omega mu_0 / rho_j)`` (principal root, ``Re k_j > 0`` so fields
decay downward) and ``z_j = i omega mu_0 / k_j = sqrt(i omega mu_0 rho_j)`` (ohm). The surface
impedance ``Z = E_x / H_y`` follows from the upward recursion (Wait 1954; Ward and Hohmann
1988, in impedance form)::

    Z_{N-1} = z_{N-1}
    Z_j     = z_j (Z_{j+1} + z_j tanh(k_j h)) / (z_j + Z_{j+1} tanh(k_j h)),  j = N-2 .. 0
    Z       = Z_0

and the data are ``rho_a = |Z|^2 / (omega mu_0)`` (ohm m) and ``phi = arg Z`` (degrees). Over a
homogeneous half-space ``rho_a = rho`` and ``phi = +45 deg`` at every frequency; ``phi > 45``
means resistivity decreasing with depth. The skin depth ``delta = sqrt(2 rho / (omega mu_0))
~ 503 sqrt(rho / f)`` m sets the depth of investigation: with the defaults (200 m layers down to
6200 m, 1e-2 .. 1e3 Hz) ``delta`` runs from about 160 m (100 ohm m at 1 kHz) to 50 km
(100 ohm m at 0.01 Hz). Computation is in complex128; the result has the dtype of ``x``.

Noise model: independent Gaussian errors from a relative error ``e`` on the complex impedance
(an error floor; Simpson and Bahr 2005), linearised:
``sigma(log10 rho_a) = 2 e / ln 10`` (because ``rho_a ~ |Z|^2``) and ``sigma(phi) = e`` rad
``= 180 e / pi`` deg. ``y = F(x) + eps``, ``eps ~ N(0, C_e)`` with diagonal ``C_e``
(:attr:`MT1D.noise_cov`).

Prior (``prior="logit_normal"``, the default): a logit-normal random field on the layer tops,
``x = lo + (hi - lo) sigmoid(u)`` with ``lo, hi = min_log10_rho, max_log10_rho`` and ``u`` a
stationary Gaussian random field (:class:`~ppl_cvae.problems.priors.BoundedGaussianField`).
Its median is ``prior_mean`` and the standard deviation of each ``x_j`` is ``prior_std`` (log10
ohm m), the latent field's mean and sd solved from them; ``u`` has the given kernel and
correlation length. It has a density (:meth:`MT1D.log_prior`, zero outside the open interval)
and an unconstrained parameterisation ``u`` for MCMC and refinement
(:meth:`MT1D.parameterisation`). With the defaults (median 2, sd 0.5 in (0, 4)) the latent sd is
0.5327 and neighbouring layers correlate at 0.9678 (the Gaussian field's 0.9680).

Legacy prior (``prior="clipped"``, the prior of runs made before the logit-normal one): the
Gaussian random field itself (mean ``prior_mean``, sd ``prior_std``) clipped into ``[lo, hi]``
with :func:`torch.clamp`; point masses on the bounds (probability 6e-5 per cell with the
defaults), so no density. A run saved before ``prior`` existed has no ``prior`` in its stored
spec and is rebuilt with the logit-normal prior (same median, sd and, to 2e-4, correlation), so
that ``sample --method importance|nuts`` work on it; pass ``prior="clipped"`` to simulate its
training data exactly.

References
----------
Cagniard, L. (1953). Basic theory of the magneto-telluric method of geophysical prospecting.
Geophysics 18(3), 605-635.
Wait, J. R. (1954). On the relation between telluric currents and the Earth's magnetic field.
Geophysics 19(2), 281-289.
Ward, S. H. and Hohmann, G. W. (1988). Electromagnetic theory for geophysical applications. In
Nabighian (ed.), Electromagnetic Methods in Applied Geophysics, vol. 1, SEG, 131-311.
Simpson, F. and Bahr, K. (2005). Practical Magnetotellurics. Cambridge University Press.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch.distributions import MultivariateNormal, constraints

from ppl_cvae.config import ModelOverrides, Overrides, simulation_schedule
from ppl_cvae.errors import ConfigError, DataError, NoPriorDensityError, ShapeError
from ppl_cvae.problems.base import LinearGaussianParts, Problem
from ppl_cvae.problems.parameterisation import Parameterisation
from ppl_cvae.problems.priors import (
    CORRELATION_KERNELS,
    BoundedGaussianField,
    GaussianRandomField,
    Kernel,
)
from ppl_cvae.problems.registry import register_problem

__all__ = ["MT1D", "MT1D_PRIORS", "MU_0", "MT1DPrior", "layered_impedance", "log_frequencies"]

MT1DPrior = Literal["logit_normal", "clipped"]
MT1D_PRIORS: tuple[str, ...] = ("logit_normal", "clipped")

MU_0 = 4e-7 * math.pi
"""Magnetic permeability of free space (and of the earth), in H/m."""


def log_frequencies(min_frequency: float, max_frequency: float, num: int) -> list[float]:
    """Return ``num`` log-spaced frequencies from ``min_frequency`` to ``max_frequency`` (Hz).

    Parameters
    ----------
    min_frequency, max_frequency : float
        End points, in Hz, ``0 < min_frequency < max_frequency``.
    num : int
        Number of frequencies, ``>= 2``.

    Returns
    -------
    list of float
        Increasing frequencies in Hz, end points included.

    Raises
    ------
    ConfigError
        If the end points are not ordered and positive or ``num < 2``.

    Examples
    --------
    >>> log_frequencies(1.0, 100.0, 3)
    [1.0, 10.0, 100.0]
    """
    if not (0 < min_frequency < max_frequency and math.isfinite(max_frequency)):
        raise ConfigError(
            f"need 0 < min_frequency < max_frequency, got {min_frequency} and {max_frequency}"
        )
    if not (isinstance(num, int) and num >= 2):
        raise ConfigError(f"num must be an integer >= 2, got {num!r}")
    lo, hi = math.log10(min_frequency), math.log10(max_frequency)
    return [10.0 ** (lo + (hi - lo) * i / (num - 1)) for i in range(num)]


DEFAULT_FREQUENCIES = log_frequencies(1e-2, 1e3, 26)  # 5 per decade


def _tanh(a: torch.Tensor) -> torch.Tensor:
    """Return ``tanh(a)`` for complex ``a`` with ``Re a >= 0`` without overflow."""
    e = torch.exp(-2.0 * a)  # |e| <= 1
    return (1.0 - e) / (1.0 + e)


def layered_impedance(
    resistivity: torch.Tensor, thicknesses: torch.Tensor, frequencies: torch.Tensor
) -> torch.Tensor:
    """Return the surface impedance ``Z = E_x / H_y`` of a layered earth.

    Parameters
    ----------
    resistivity : Tensor, shape (*batch, N)
        Resistivity of the ``N - 1`` layers and, last, of the basement half-space, in ohm m
        (not log-transformed), ``> 0``. Batch axes lead, the layer axis is the event axis.
    thicknesses : Tensor, shape (N - 1,)
        Thickness of each layer above the half-space, in m, ``> 0``.
    frequencies : Tensor, shape (M,)
        Frequencies in Hz, ``> 0``.

    Returns
    -------
    Tensor, shape (*batch, M), complex128
        Impedance in ohm, time convention ``exp(+i omega t)`` (phase +45 deg over a
        half-space). Differentiable with respect to ``resistivity``.

    Raises
    ------
    ShapeError
        If ``thicknesses`` does not have ``N - 1`` entries or ``frequencies`` is not 1-D.
    DataError
        If a resistivity, thickness or frequency is not positive.

    Notes
    -----
    Upward impedance recursion (Wait 1954; Ward and Hohmann 1988), see the module docstring.
    ``tanh`` is evaluated as ``(1 - exp(-2a)) / (1 + exp(-2a))``, stable for thick layers.

    Examples
    --------
    >>> z = layered_impedance(torch.tensor([100.0]), torch.zeros(0), torch.tensor([1.0]))
    >>> rho_a = z.abs() ** 2 / (2 * math.pi * MU_0)
    >>> round(float(rho_a[0]), 6), round(math.degrees(float(z.angle()[0])), 6)
    (100.0, 45.0)
    """
    if resistivity.dim() < 1 or thicknesses.shape != (resistivity.shape[-1] - 1,):
        raise ShapeError(
            f"thicknesses must have shape (N - 1,) for resistivity of shape (*batch, N); got "
            f"{tuple(thicknesses.shape)} and {tuple(resistivity.shape)}"
        )
    if frequencies.dim() != 1:
        raise ShapeError(f"frequencies must be 1-D, got shape {tuple(frequencies.shape)}")
    if not (bool((resistivity > 0).all()) and bool((thicknesses > 0).all())):
        raise DataError("resistivities and thicknesses must be > 0; check for zeros or NaN")
    if not bool((frequencies > 0).all()):
        raise DataError(f"frequencies must be > 0, got {frequencies.tolist()}")
    rho = resistivity.to(torch.float64).movedim(-1, 0).unsqueeze(-1)  # (N, *batch, 1)
    i_omega_mu = 2j * math.pi * MU_0 * frequencies.to(torch.float64)  # (M,) complex128
    z = torch.sqrt(i_omega_mu * rho)  # (N, *batch, M) intrinsic impedance, Re z > 0
    k = i_omega_mu / z  # wavenumber sqrt(i omega mu / rho), Re k > 0
    h = thicknesses.to(torch.float64).reshape(-1, *([1] * (rho.dim() - 1)))  # (N-1, 1, ..)
    t = _tanh(k[:-1] * h)  # (N-1, *batch, M)
    return cast(torch.Tensor, _ImpedanceRecursion.apply(z, t))


class _ImpedanceRecursion(torch.autograd.Function):
    """The upward impedance recursion with a hand-written backward pass (the adjoint).

    Forward: ``Z_{N-1} = z_{N-1}``, ``Z_j = z_j (Z_{j+1} + z_j t_j) / (z_j + Z_{j+1} t_j)``;
    inputs ``z`` ``(N, *batch, M)`` and ``t`` ``(N-1, *batch, M)``, complex128; output ``Z_0``
    ``(*batch, M)``. Each step is holomorphic in ``(Z_{j+1}, z_j, t_j)``, with, for
    ``D = z_j + Z_{j+1} t_j``::

        dZ_j/dZ_{j+1} = z_j^2 (1 - t_j^2) / D^2
        dZ_j/dz_j     = (t_j (Z_{j+1}^2 + z_j^2) + 2 z_j Z_{j+1} t_j^2) / D^2
        dZ_j/dt_j     = z_j (z_j^2 - Z_{j+1}^2) / D^2

    so the adjoint ``a_j = dL/dZ_j`` (torch's convention for complex tensors: a holomorphic
    map passes ``grad * conj(f')`` back) is a cumulative product, ``a_{j+1} = a_j
    conj(dZ_j/dZ_{j+1})``, evaluated without a Python loop. Autograd through the loop
    records about 200 complex operations per evaluation and spent two thirds of an mt1d
    NUTS potential evaluation in their backward pass (``benchmarks/nuts_preconditioners.py
    --profile``); this backward is a handful of vectorised operations. Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        imps = [z[-1]]
        for j in range(t.shape[0] - 1, -1, -1):
            below = imps[-1]
            imps.append(z[j] * (below + z[j] * t[j]) / (z[j] + below * t[j]))
        # below[j] = Z_{j+1}, the impedance at the bottom of layer j: (N-1, *batch, M)
        below_all = torch.stack(imps[-2::-1]) if len(imps) > 1 else z[:0]
        ctx.save_for_backward(z, t, below_all)
        return imps[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, t, below = ctx.saved_tensors
        zj = z[:-1]
        d2 = (zj + below * t) ** 2
        d_below = zj * zj * (1 - t * t) / d2
        d_z = (t * (below * below + zj * zj) + 2 * zj * below * t * t) / d2
        d_t = zj * (zj * zj - below * below) / d2
        # a_0 = grad, a_{j+1} = a_j conj(d_below[j]): a = grad * [1, cumprod(conj(d_below))]
        ratio = torch.cumprod(d_below.conj(), dim=0)  # a_{j+1} / a_0, j = 0 .. N-2
        ratio = torch.cat([torch.ones_like(grad).unsqueeze(0), ratio])  # a_j / a_0, j < N
        adjoint = grad * ratio  # (N, *batch, M)
        # Z_j depends on z_j through step j (j < N-1); Z_{N-1} = z_{N-1} directly
        grad_z = torch.cat([adjoint[:-1] * d_z.conj(), adjoint[-1:]])
        return grad_z, adjoint[:-1] * d_t.conj()


@register_problem("mt1d")
class MT1D(Problem):
    """1-D magnetotelluric sounding: log10 resistivity profile -> apparent resistivity, phase.

    Parameters
    ----------
    num_layers : int, default 32
        Number ``N >= 2`` of entries of ``x``: ``N - 1`` layers and the basement half-space.
    depth : float, default 6200.0
        Depth of the top of the basement half-space, in m (> 0); every layer is
        ``depth / (N - 1)`` thick (200 m with the defaults).
    frequencies : sequence of float or None, default None
        Sounding frequencies in Hz, strictly increasing and positive; None gives 26 frequencies
        log-spaced from 1e-2 to 1e3 Hz (:func:`log_frequencies`).
    relative_error : float, default 0.05
        Relative error ``e`` of the impedance, in (0, 1): ``sigma(log10 rho_a) = 2 e / ln 10``
        (0.0434, i.e. 10 % in ``rho_a``) and ``sigma(phi) = 180 e / pi`` deg (2.86 deg).
    prior_mean : float, default 2.0
        ``"logit_normal"``: prior median of each ``x_j`` in log10 ohm m (100 ohm m), inside
        ``(min_log10_rho, max_log10_rho)`` (the mean too when it is the midpoint);
        ``"clipped"``: mean of the field before clipping.
    prior_std : float, default 0.5
        Prior standard deviation of each ``x_j`` in log10 ohm m, > 0 (``"clipped"``: before
        clipping; ``"logit_normal"``: below the largest the bounds allow, 1.87 for (0, 4)).
    correlation_length : float, default 1000.0
        Correlation length of the (latent) Gaussian random field along depth, in m, > 0.
    kernel : {"exponential", "gaussian", "matern32", "matern52"}, default "matern52"
        Correlation function of the (latent) field (:class:`GaussianRandomField`).
    min_log10_rho, max_log10_rho : float, default 0.0 and 4.0
        Bounds (log10 ohm m) of ``x``, ``min < max``: open bounds of the logit-normal field,
        or the interval prior draws are clipped into.
    prior : {"logit_normal", "clipped"}, default "logit_normal"
        The prior family (module docstring): a logit-normal field with a density, or the
        legacy clipped Gaussian field (no density).

    Attributes
    ----------
    thicknesses : Tensor, shape (N - 1,), float64
        Layer thicknesses in m.
    noise_cov : Tensor, shape (2 M, 2 M), float64
        Diagonal noise covariance of the flattened ``y`` (first the ``M`` log10 apparent
        resistivities, then the ``M`` phases), in (log10 ohm m)^2 and deg^2.
    has_prior_density : bool
        True for ``prior="logit_normal"``, False for ``"clipped"``.
    nuts_preconditioner : str
        ``"prior-amortized"`` for ``prior="logit_normal"`` (NUTS on the Gaussian field ``u``
        whitened by its prior, with the amortized covariance clipped at it: 3.7 to 6.3 times
        the effective draws per evaluation of ``"amortized"`` on held-out observations 0-5;
        docs/measurements.md, "Correction on mt1d"), ``"amortized"`` for ``"clipped"`` (no Gaussian
        prior).
    field : BoundedGaussianField or GaussianRandomField
        The prior field of ``x`` (``"logit_normal"``), or the field before clipping.
    noise_std : float
        Scalar summary of the noise: root mean square of the per-datum standard deviations,
        ``sqrt(trace(C_e) / 2M)`` (2.03 with the defaults, dominated by the phases). Noise draws,
        chi-squared misfits and refinement use :attr:`noise_cov` instead.
    misfit_std : float
        Equals ``noise_std``.
    units : dict
        ``x`` in log10(ohm m), depths in m, frequencies in Hz; ``y`` per component
        (``{"log10_rho_a": "log10(ohm m)", "phase": "deg"}``, see
        :func:`~ppl_cvae.problems.base.data_units`): the InferenceData keeps one variable
        ``y`` with a ``y_units`` coordinate along ``component``.
    coord_attrs : dict
        ``depth`` is marked as layer tops with the half-space last (the report draws a
        staircase).

    Raises
    ------
    ConfigError
        If any argument is outside its valid range (message names it).

    Notes
    -----
    ``x = min + (max - min) sigmoid(u)``, ``u ~ GRF(m, s^2, correlation_length)`` (``m``, ``s``
    from ``prior_mean``, ``prior_std``; legacy: ``x ~ clip(GRF(prior_mean, prior_std^2,
    correlation_length), min, max)``), ``y = F(x) + eps``, ``eps ~ N(0, C_e)``; ``F`` as in
    the module docstring. Nonlinear, so :meth:`linear_gaussian` returns None.

    Examples
    --------
    >>> p = MT1D(num_layers=8, depth=700.0, frequencies=[0.1, 1.0, 10.0])
    >>> x, y = p.simulate(4, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 8), (4, 2, 3))
    >>> p.forward(torch.full((8,), 2.0))  # half-space of 100 ohm m
    tensor([[ 2.,  2.,  2.],
            [45., 45., 45.]])
    """

    name = "mt1d"
    x_dims = ("depth",)
    y_dims = ("component", "frequency")

    def __init__(
        self,
        num_layers: int = 32,
        depth: float = 6200.0,
        frequencies: Sequence[float] | None = None,
        relative_error: float = 0.05,
        prior_mean: float = 2.0,
        prior_std: float = 0.5,
        correlation_length: float = 1000.0,
        kernel: Kernel = "matern52",
        min_log10_rho: float = 0.0,
        max_log10_rho: float = 4.0,
        prior: MT1DPrior = "logit_normal",
    ) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 2:
            raise ConfigError(
                f"num_layers must be an integer >= 2 (layers plus half-space), got {num_layers!r}"
            )
        if not (math.isfinite(depth) and depth > 0):
            raise ConfigError(f"depth must be a positive number of metres, got {depth!r}")
        freqs = list(DEFAULT_FREQUENCIES if frequencies is None else frequencies)
        freqs = [float(f) for f in freqs]
        if not freqs or any(not (math.isfinite(f) and f > 0) for f in freqs):
            raise ConfigError(f"frequencies must be a non-empty list of values > 0 Hz, got {freqs}")
        if any(b <= a for a, b in zip(freqs[:-1], freqs[1:], strict=True)):
            raise ConfigError(f"frequencies must be strictly increasing, got {freqs}")
        if not 0 < relative_error < 1:
            raise ConfigError(f"relative_error must be in (0, 1), got {relative_error!r}")
        if not (prior_std > 0 and correlation_length > 0):
            raise ConfigError(
                f"prior_std and correlation_length must be > 0, got {prior_std!r} and "
                f"{correlation_length!r}"
            )
        if kernel not in CORRELATION_KERNELS:
            raise ConfigError(f"unknown kernel {kernel!r}; expected one of {CORRELATION_KERNELS}")
        if not min_log10_rho < max_log10_rho:
            raise ConfigError(
                f"need min_log10_rho < max_log10_rho, got {min_log10_rho!r} and {max_log10_rho!r}"
            )
        if prior not in MT1D_PRIORS:
            raise ConfigError(f"unknown prior {prior!r}; expected one of {MT1D_PRIORS}")
        self.num_layers = num_layers
        self.depth = float(depth)
        self.frequencies = freqs
        self.relative_error = float(relative_error)
        self.prior_mean = float(prior_mean)
        self.prior_std = float(prior_std)
        self.correlation_length = float(correlation_length)
        self.kernel: Kernel = kernel
        self.min_log10_rho = float(min_log10_rho)
        self.max_log10_rho = float(max_log10_rho)
        self.prior: MT1DPrior = prior
        self.has_prior_density = prior == "logit_normal"
        # both priors keep log10 resistivity in [min, max] (logit-normal inside, clipped on it)
        self.support = constraints.interval(self.min_log10_rho, self.max_log10_rho)
        self.nuts_preconditioner = "prior-amortized" if self.has_prior_density else "amortized"

        num_freq = len(freqs)
        thickness = self.depth / (num_layers - 1)
        tops = [j * thickness for j in range(num_layers)]
        self.x_shape = (num_layers,)
        self.y_shape = (2, num_freq)
        self.coords: dict[str, list[Any]] = {
            "depth": tops,
            "component": ["log10_rho_a", "phase"],
            "frequency": freqs,
        }
        # y stacks two quantities: one unit per component (ppl_cvae.problems.base.data_units)
        self.units: dict[str, Any] = {
            "x": "log10(ohm m)",
            "y": {"log10_rho_a": "log10(ohm m)", "phase": "deg"},
            "depth": "m",
            "component": "",
            "frequency": "Hz",
        }
        # depth coordinates are layer tops; the last entry is the basement half-space
        self.coord_attrs = {"depth": {"cell_position": "top", "half_space": "last"}}
        self.thicknesses = torch.full((num_layers - 1,), thickness, dtype=torch.float64)
        self._frequencies = torch.tensor(freqs, dtype=torch.float64)
        sigma_rho = 2.0 * self.relative_error / math.log(10.0)
        sigma_phase = math.degrees(self.relative_error)
        variances = [sigma_rho**2] * num_freq + [sigma_phase**2] * num_freq
        self.noise_cov = torch.diag(torch.tensor(variances, dtype=torch.float64))
        self.noise_std = math.sqrt(sum(variances) / len(variances))
        self.misfit_std = self.noise_std
        self.field: BoundedGaussianField | GaussianRandomField
        if prior == "logit_normal":
            self.field = BoundedGaussianField(
                (tops,),
                lower=self.min_log10_rho,
                upper=self.max_log10_rho,
                median=self.prior_mean,
                std=self.prior_std,
                correlation_length=self.correlation_length,
                kernel=kernel,
            )
        else:
            self.field = GaussianRandomField(
                (tops,),
                mean=self.prior_mean,
                sill=self.prior_std**2,
                correlation_length=self.correlation_length,
                kernel=kernel,
            )

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw prior profiles; shape ``(num, N)``, float32, log10 ohm m.

        Logit-normal draws lie strictly inside ``(min_log10_rho, max_log10_rho)``
        (:meth:`BoundedGaussianField.sample
        <ppl_cvae.problems.priors.BoundedGaussianField.sample>`); clipped draws in the closed
        interval.

        Raises
        ------
        ConfigError
            If ``num`` is negative.

        Examples
        --------
        >>> x = MT1D().sample_prior(3, torch.Generator().manual_seed(0))
        >>> tuple(x.shape), bool((x >= 0).all() and (x <= 4).all())
        ((3, 32), True)
        """
        x = self.field.sample(num, generator)
        if self.prior == "logit_normal":
            return x
        return torch.clamp(x, self.min_log10_rho, self.max_log10_rho)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return log10 apparent resistivity and phase for profiles ``x``.

        Parameters
        ----------
        x : Tensor, shape (*batch, N)
            log10 resistivity (log10 ohm m) of the layers, last entry the half-space.

        Returns
        -------
        Tensor, shape (*batch, 2, M)
            ``[..., 0, :]`` log10 apparent resistivity (log10 ohm m), ``[..., 1, :]`` phase in
            degrees; dtype of ``x`` if floating, else float32. Differentiable in ``x``.

        Raises
        ------
        ShapeError
            If the last axis of ``x`` is not ``N``.

        Examples
        --------
        >>> p = MT1D(num_layers=2, depth=100.0, frequencies=[1e4])
        >>> y = p.forward(torch.tensor([1.0, 3.0]))  # 10 ohm m top seen at high frequency
        >>> round(float(y[0, 0]), 4), round(float(y[1, 0]), 2)
        (1.0, 45.0)
        """
        if x.dim() < 1 or x.shape[-1] != self.num_layers:
            raise ShapeError(f"x must have shape (*batch, {self.num_layers}), got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        rho = torch.pow(10.0, x.to(torch.float64))
        freqs = self._frequencies.to(x.device)
        imp = layered_impedance(rho, self.thicknesses.to(x.device), freqs)
        omega_mu = 2.0 * math.pi * MU_0 * freqs
        log_rho_a = torch.log10(imp.real**2 + imp.imag**2) - torch.log10(omega_mu)
        phase = torch.rad2deg(torch.atan2(imp.imag, imp.real))
        return torch.stack([log_rho_a, phase], dim=-2).to(dtype)

    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return prior draws and noisy data; shapes ``(num, N)`` and ``(num, 2, M)``, float32.

        ``y = F(x) + eps`` with ``eps ~ N(0, noise_cov)``.

        Examples
        --------
        >>> x, y = MT1D().simulate(2, torch.Generator().manual_seed(0))
        >>> tuple(y.shape)
        (2, 2, 26)
        """
        return super().simulate(num, generator)

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logit-normal prior log density of profiles ``x``; shape ``(*batch,)``.

        Parameters
        ----------
        x : Tensor, shape (*batch, N)
            log10 resistivity profiles (log10 ohm m).

        Returns
        -------
        Tensor, shape (*batch,)
            In nats, float64, with respect to Lebesgue measure on ``R^N`` ((log10 ohm m) to the
            power ``-N``): ``log N(u; m 1, s^2 R) - sum_j log((hi - lo) sigmoid(u_j)
            (1 - sigmoid(u_j)))`` with ``u = logit((x - lo) / (hi - lo))``
            (:meth:`BoundedGaussianField.log_prob
            <ppl_cvae.problems.priors.BoundedGaussianField.log_prob>`); ``-inf`` for a profile
            with a value outside the open interval ``(lo, hi)``. Differentiable in ``x``.

        Raises
        ------
        ShapeError
            If the last axis of ``x`` is not ``N``.
        NoPriorDensityError
            With ``prior="clipped"``: :func:`torch.clamp` puts point masses on the bounds, so
            that prior is not absolutely continuous on ``R^N``.

        Examples
        --------
        >>> p = MT1D(num_layers=4, depth=300.0)
        >>> lp = p.log_prior(torch.tensor([[2.0, 2.1, 1.9, 2.0], [2.0, 2.0, 2.0, 4.5]]))
        >>> bool(torch.isfinite(lp[0])), lp[1].item()
        (True, -inf)
        """
        if self.prior == "clipped":
            raise NoPriorDensityError(
                "the mt1d prior='clipped' is a Gaussian random field clipped into "
                f"[{self.min_log10_rho}, {self.max_log10_rho}] (log10 ohm m): the clip puts "
                "point masses on the bounds, so it has no density to evaluate; use "
                "prior='logit_normal' (the default) for a prior with a density"
            )
        if x.dim() < 1 or x.shape[-1] != self.num_layers:
            raise ShapeError(f"x must have shape (*batch, {self.num_layers}), got {tuple(x.shape)}")
        field = self.field
        assert isinstance(field, BoundedGaussianField)  # prior == "logit_normal"
        return field.log_prob(x)

    def parameterisation(self) -> Parameterisation | None:
        """Return ``x = T(u)``, the logit-normal prior's map from unconstrained ``u``; or None.

        An identity basis with the bijection ``T(u) = lo + (hi - lo) sigmoid(u)`` (per layer;
        :attr:`BoundedGaussianField.transform
        <ppl_cvae.problems.priors.BoundedGaussianField.transform>`) and :meth:`log_prior`: NUTS
        (:func:`inference.mcmc.nuts_sample`) and the misfit refinement then work on ``u`` in
        ``R^N``, where the prior density of ``u`` is Gaussian (:meth:`log_prior` plus the
        Jacobian of ``T``): ``N(m 1, s^2 R)``, given as the parameterisation's
        ``gaussian_prior`` (what :meth:`~ppl_cvae.problems.base.Problem.gaussian_prior` returns;
        NUTS whitens by its Cholesky factor with ``precondition="prior"``). None with
        ``prior="clipped"`` (MCMC then refuses: no density).

        Examples
        --------
        >>> par = MT1D(num_layers=4, depth=300.0).parameterisation()
        >>> x = par.to_x(torch.zeros(4))  # u = 0 is the median
        >>> x.tolist(), round(float(par.from_x(x).abs().max()), 6)
        ([2.0, 2.0, 2.0, 2.0], 0.0)
        """
        field = self.field
        if not isinstance(field, BoundedGaussianField):
            return None
        latent = field.latent
        return Parameterisation(
            torch.eye(self.num_layers),
            self.x_shape,
            field.transform,
            log_prior_x=self.log_prior,
            gaussian_prior=MultivariateNormal(
                latent.mean_vector().to(torch.float64),
                scale_tril=latent.cholesky().to(torch.float64),
                validate_args=False,
            ),
        )

    def linear_gaussian(self) -> LinearGaussianParts | None:
        """Return None: the forward operator is nonlinear and the prior non-Gaussian."""
        return None

    def recommended_settings(self) -> Overrides:
        """Return default ``ModelConfig``/``TrainConfig`` overrides: MLPs, fresh data per epoch.

        Examples
        --------
        >>> MT1D().recommended_settings().train["resimulate"]
        True
        """
        return Overrides(
            model=ModelOverrides(latent_dim=16, hidden_dims=(256, 256), linear_skip=True),
            train=simulation_schedule(),
        )

    def spec(self) -> dict[str, Any]:
        """Return the keyword arguments that rebuild this problem, plus its name.

        Examples
        --------
        >>> from ppl_cvae.problems import make_problem
        >>> spec = MT1D(num_layers=4).spec()
        >>> make_problem(spec.pop("name"), **spec).spec() == MT1D(num_layers=4).spec()
        True
        """
        return {
            "name": self.name,
            "num_layers": self.num_layers,
            "depth": self.depth,
            "frequencies": list(self.frequencies),
            "relative_error": self.relative_error,
            "prior_mean": self.prior_mean,
            "prior_std": self.prior_std,
            "correlation_length": self.correlation_length,
            "kernel": self.kernel,
            "min_log10_rho": self.min_log10_rho,
            "max_log10_rho": self.max_log10_rho,
            "prior": self.prior,
        }
