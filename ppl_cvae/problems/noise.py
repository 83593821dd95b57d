"""Additive Gaussian observation noise on the flattened data vector.

A problem's data are ``y = F(x) + eps`` with ``eps ~ N(0, C_e)`` on the flattened ``y``
(``m = prod(y_shape)`` values, C order). :class:`GaussianNoise` holds ``C_e`` either as one
standard deviation shared by every datum (``C_e = std^2 I``, the common case) or as a full
``(m, m)`` covariance (correlated errors, or independent ones of different sizes such as the MT
apparent resistivity and phase). It is the single implementation behind the noise helpers of
:mod:`ppl_cvae.problems.densities` (``noise_covariance``, ``noise_scale``, ``sample_noise``,
``whiten``) and behind :meth:`~ppl_cvae.problems.base.Problem.log_likelihood`.

The per-datum terms that PSIS-LOO reads (:meth:`GaussianNoise.log_prob_pointwise`) are the
leave-one-out conditional densities ``log p(y_i | y_-i, x)``: for independent noise the
Gaussian density of each datum (they sum to the joint log-likelihood), for correlated noise
the conditionals of Buerkner, Gabry and Vehtari (2021), which do not sum to it.

A noise-free problem (``std = 0`` and no covariance, e.g. Two Birds) has no likelihood
density: ``y = F(x)`` exactly, so :meth:`GaussianNoise.log_prob` and
:meth:`GaussianNoise.whiten` raise :class:`~ppl_cvae.errors.NoLikelihoodError`, while
:meth:`GaussianNoise.sample` returns zeros and :meth:`GaussianNoise.covariance` the zero matrix.

References
----------
Tarantola, A. (2005). Inverse Problem Theory and Methods for Model Parameter Estimation.
SIAM. doi:10.1137/1.9780898717921 (Gaussian data uncertainties, sec. 3.2; the chi-squared
misfit, eq. 3.46). Buerkner, P.-C., Gabry, J. and Vehtari, A. (2021). Efficient leave-one-out
cross-validation for Bayesian non-factorized normal and Student-t models. Computational
Statistics 36, 1243-1261. doi:10.1007/s00180-020-01045-4 (the pointwise terms for correlated
noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ppl_cvae.errors import ConfigError, NoLikelihoodError, ShapeError

__all__ = ["GaussianNoise"]

_LOG_2PI = math.log(2.0 * math.pi)


def _rows_whitened(chol: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Return ``L^-1 r`` for every row ``r`` of ``flat`` ``(*batch, m)``, shape ``(*batch, m)``.

    One triangular solve with all residuals as the rows of the right-hand side,
    ``R L^-T`` (``left=False``): a ``(batch, m, 1)`` right-hand side would broadcast ``L``
    to one ``m x m`` copy per residual (32 GB for 1000 residuals of 2000 data).
    """
    rows = flat.reshape(-1, flat.shape[-1])
    white = torch.linalg.solve_triangular(chol.mT, rows, upper=True, left=False)
    return white.reshape(flat.shape)


class GaussianNoise:
    """Zero-mean Gaussian noise ``eps ~ N(0, C_e)`` on the flattened data vector.

    Parameters
    ----------
    y_shape : sequence of int
        Event shape of one observation ``y``; ``m = prod(y_shape)``.
    std : float, default 0.0
        Standard deviation of every datum, in units of ``y`` (``C_e = std^2 I``); ``0`` with
        no ``cov`` is a noise-free problem. Ignored (kept as a scalar summary) when ``cov`` is
        given.
    cov : Tensor, shape (m, m), optional
        Full covariance of the flattened ``y`` (C order), in units of ``y`` squared; stored in
        float64. It is factorised (Cholesky) only when needed, so it must be symmetric
        positive definite by then.

    Raises
    ------
    ConfigError
        If ``y_shape`` is not a non-empty sequence of positive ints, or ``std`` is not a
        finite number >= 0.
    ShapeError
        If ``cov`` is not ``(m, m)``.

    Notes
    -----
    With ``L`` the lower Cholesky factor of ``C_e`` and ``r`` a residual ``y - F(x)``:
    ``log N(r; 0, C_e) = -0.5 |L^-1 r|^2 - sum_i log L_ii - (m / 2) log(2 pi)``, so ``C_e`` is
    never inverted (Rasmussen and Williams 2006, sec. A.4; Tarantola 2005, eq. 3.46 for the
    chi-squared term ``|L^-1 r|^2 = r^T C_e^-1 r``). With ``std`` only, ``L = std I``.

    References
    ----------
    Rasmussen, C. E. and Williams, C. K. I. (2006). Gaussian Processes for Machine Learning.
    MIT Press. Tarantola, A. (2005). Inverse Problem Theory, SIAM.

    Examples
    --------
    >>> noise = GaussianNoise((3,), std=0.5)
    >>> round(float(noise.log_prob(torch.zeros(3))), 4)  # 3 * -log(0.5 sqrt(2 pi))
    -0.6774
    >>> noise.whiten(torch.ones(2, 3)).tolist()[0]
    [2.0, 2.0, 2.0]
    >>> tuple(noise.sample((4,), torch.Generator().manual_seed(0)).shape)
    (4, 3)
    """

    def __init__(
        self, y_shape: Sequence[int], std: float = 0.0, cov: torch.Tensor | None = None
    ) -> None:
        shape = tuple(y_shape)
        if not shape or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
        ):
            raise ConfigError(f"y_shape must be a non-empty tuple of positive ints, got {shape}")
        ok = isinstance(std, (int, float)) and not isinstance(std, bool)
        if not (ok and math.isfinite(std) and std >= 0):
            raise ConfigError(f"the noise std must be a finite number >= 0, got {std!r}")
        self.y_shape: tuple[int, ...] = shape
        self.num_data = math.prod(shape)
        self.std = float(std)
        self.cov: torch.Tensor | None = None
        if cov is not None:
            m = self.num_data
            cov = torch.as_tensor(cov, dtype=torch.float64)
            if cov.shape != (m, m):
                raise ShapeError(f"noise_cov must have shape ({m}, {m}), got {tuple(cov.shape)}")
            self.cov = cov
        self._chol: torch.Tensor | None = None
        self._diag_sd: torch.Tensor | None = None  # sqrt(diag(C_e)) when C_e is diagonal
        self._diagonal: bool | None = None
        self._half_logdet_value: float | None = None
        self._precision_diag: torch.Tensor | None = None  # diag(C_e^-1) of a full C_e

    def __repr__(self) -> str:
        if self.cov is None:
            return f"GaussianNoise(y_shape={self.y_shape}, std={self.std!r})"
        return f"GaussianNoise(y_shape={self.y_shape}, cov=<{self.num_data}x{self.num_data}>)"

    @property
    def is_zero(self) -> bool:
        """Whether there is no noise at all (``std == 0`` and no covariance): ``y = F(x)``."""
        return self.cov is None and self.std == 0.0

    @property
    def is_diagonal(self) -> bool:
        """Whether the data errors are independent (no covariance, or a diagonal one)."""
        if self.cov is None:
            return True
        if self._diagonal is None:  # checked once: the covariance is fixed
            self._diagonal = bool((self.cov - torch.diag(self.cov.diagonal())).abs().max() == 0)
        return self._diagonal

    def _factor(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return ``(sd, None)`` for a diagonal covariance, else ``(None, L)``; both cached.

        ``sd`` ``(m,)`` is ``sqrt(diag(C_e))`` (whitening is then a division), ``L`` the
        Cholesky factor (whitening is a triangular solve); float64.
        """
        if self.is_diagonal:
            if self._diag_sd is None:
                assert self.cov is not None  # is_diagonal without a covariance is std-only
                self._diag_sd = self.cov.diagonal().sqrt()
            return self._diag_sd, None
        return None, self.cholesky()

    def covariance(self) -> torch.Tensor:
        """Return ``C_e`` of the flattened ``y``; shape ``(m, m)``, float64, units of y squared.

        ``std^2 I`` without a covariance (zeros for a noise-free problem).
        """
        if self.cov is None:
            return self.std**2 * torch.eye(self.num_data, dtype=torch.float64)
        return self.cov

    def stddev(self) -> torch.Tensor:
        """Return the per-datum standard deviation; shape ``y_shape``, float32, units of y.

        ``sqrt(diag(C_e))`` reshaped to ``y_shape``; ``std`` everywhere without a covariance.
        """
        if self.cov is None:
            return torch.full(self.y_shape, self.std)
        return self.cov.diagonal().sqrt().to(torch.float32).reshape(self.y_shape)

    def cholesky(self) -> torch.Tensor:
        """Return the lower Cholesky factor ``L`` of ``C_e``; shape ``(m, m)``, float64.

        Raises
        ------
        NoLikelihoodError
            If the noise is zero (``L`` would be singular).
        ConfigError
            If the covariance is not positive definite (a datum of zero variance, or one that
            depends linearly on others).
        """
        self._require_noise("a Cholesky factor")
        if self._chol is None:
            if self.cov is None:
                self._chol = self.std * torch.eye(self.num_data, dtype=torch.float64)
            else:
                chol, info = torch.linalg.cholesky_ex(self.cov)
                if int(info) != 0:
                    raise ConfigError(
                        f"noise_cov is not positive definite: its Cholesky factorisation fails "
                        f"at datum {int(info) - 1} (flattened), which has no variance of its own "
                        "(a zero or negative variance, or a linear combination of the data "
                        "before it); a covariance needs every eigenvalue > 0"
                    )
                self._chol = chol
        return self._chol

    def sample(
        self, sample_shape: Sequence[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``eps ~ N(0, C_e)``; shape ``(*sample_shape, *y_shape)``, float32, units of y.

        With ``std`` only this is ``std * randn`` (zeros, still drawn, for a noise-free
        problem, so the random stream does not depend on the noise level); with a covariance
        it is ``L e`` in float64, ``e ~ N(0, I)``.
        """
        sample_shape = tuple(sample_shape)
        if self.cov is None:
            e = torch.randn(*sample_shape, *self.y_shape, generator=generator)
            return self.std * e
        chol = self.cholesky()
        e = torch.randn(*sample_shape, chol.shape[0], generator=generator, dtype=torch.float64)
        e = e.to(chol.device)  # drawn on the generator's device, coloured where C_e lives
        return (e @ chol.T).to(torch.float32).reshape(*sample_shape, *self.y_shape)

    def whiten(self, residual: torch.Tensor) -> torch.Tensor:
        """Return ``L^-1 r`` for residuals ``r`` of shape ``(*batch, *y_shape)``.

        ``sum(whiten(r)**2)`` over the event axes is the chi-squared misfit
        ``r^T C_e^-1 r`` (Tarantola 2005, eq. 3.46). Shape and dtype of ``residual`` are kept;
        differentiable.

        Raises
        ------
        ShapeError
            If ``residual`` does not end in ``y_shape``.
        NoLikelihoodError
            If the noise is zero (nothing to divide by; a problem's nominal misfit scale is
            :attr:`~ppl_cvae.problems.base.Problem.misfit_noise`).
        """
        self._check_residual(residual)
        self._require_noise("whitening")
        if self.cov is None:
            return residual / self.std
        batch = residual.shape[: residual.dim() - len(self.y_shape)]
        flat = residual.reshape(*batch, -1)
        sd, chol = self._factor()
        if sd is not None:
            return (flat / sd.to(residual)).reshape(residual.shape)
        assert chol is not None
        chol = chol.to(residual)
        return _rows_whitened(chol, flat).reshape(residual.shape)

    def log_prob(self, residual: torch.Tensor) -> torch.Tensor:
        """Return ``log N(r; 0, C_e)`` of residuals ``r = y - F(x)``, in nats.

        Parameters
        ----------
        residual : Tensor, shape (*batch, *y_shape)
            Data residuals in units of ``y``; ``batch`` may be empty.

        Returns
        -------
        Tensor, shape (*batch,)
            Log density with respect to Lebesgue measure on ``R^m`` (units of ``y`` to the
            power ``-m``), float64; differentiable in ``residual``.

        Raises
        ------
        ShapeError
            If ``residual`` does not end in ``y_shape``.
        NoLikelihoodError
            If the noise is zero: the data are a deterministic function of ``x`` and have no
            density.
        """
        self._check_residual(residual)
        self._require_noise("a likelihood density")
        r = residual.to(torch.float64)
        batch = r.shape[: r.dim() - len(self.y_shape)]
        flat = r.reshape(*batch, self.num_data)
        m = self.num_data
        if self.cov is None:
            chi2 = (flat / self.std).square().sum(-1)
            half_logdet = m * math.log(self.std)
        else:
            sd, chol = self._factor()
            if sd is not None:  # diagonal C_e: a division, no triangular solve
                chi2 = (flat / sd.to(flat.device)).square().sum(-1)
                half_logdet = self._half_logdet(sd)
            else:
                assert chol is not None
                chi2 = _rows_whitened(chol.to(flat.device), flat).square().sum(-1)
                half_logdet = self._half_logdet(chol.diagonal())
        return -0.5 * chi2 - half_logdet - 0.5 * m * _LOG_2PI

    def _half_logdet(self, scales: torch.Tensor) -> float:
        """``sum_i log L_ii = log det(C_e) / 2`` from the factor's diagonal, computed once."""
        if self._half_logdet_value is None:
            self._half_logdet_value = float(scales.log().sum())
        return self._half_logdet_value

    def log_prob_pointwise(self, residual: torch.Tensor) -> torch.Tensor:
        """Return each datum's log density given all the other data, ``log p(r_i | r_-i)``.

        Parameters
        ----------
        residual : Tensor, shape (*batch, *y_shape)
            Data residuals ``r = y - F(x)`` in units of ``y``, float32 or float64; ``batch``
            may be empty.

        Returns
        -------
        Tensor, shape (*batch, *y_shape)
            Per-datum log densities in nats (units of ``y`` to the power ``-1``), float64;
            differentiable in ``residual``. This is the ``log_likelihood`` group that ArviZ's
            ``loo``, ``waic`` and ``loo_pit`` read. For independent noise (no covariance, or
            a diagonal one) it is ``log N(r_i; 0, sigma_i^2)`` and the terms sum over the
            event axes to :meth:`log_prob`. For correlated noise it is the leave-one-out
            conditional density, and the terms do **not** sum to :meth:`log_prob` (the joint
            log-likelihood; use that for a posterior density).

        Raises
        ------
        ShapeError
            If ``residual`` does not end in ``y_shape``.
        NoLikelihoodError
            If the noise is zero: the data are a deterministic function of ``x`` and have no
            density.
        ConfigError
            If a full covariance is not positive definite (:meth:`cholesky`).

        Notes
        -----
        With ``Q = C_e^-1`` the precision of the flattened data (C order) and ``m`` data, the
        conditional of a Gaussian vector gives ``r_i | r_-i ~ N(r_i - (Q r)_i / Q_ii,
        1 / Q_ii)``, so

        ``log p(r_i | r_-i) = -log(2 pi) / 2 + log(Q_ii) / 2 - (Q r)_i^2 / (2 Q_ii)``

        (Buerkner, Gabry and Vehtari 2021, the non-factorized normal model, with the likelihood
        ``y ~ N(F(x), C_e)`` and ``r = y - F(x)``). ``Q r = L^-T (L^-1 r)`` takes two
        triangular solves with the cached Cholesky factor ``C_e = L L^T`` (``O(m^2)`` per
        residual); ``diag(Q)``, the column sums of squares of ``L^-1``, is computed once
        (``O(m^3)``) and cached. For a diagonal ``C_e = diag(sigma^2)``, ``Q_ii = 1 /
        sigma_i^2`` and ``(Q r)_i = r_i / sigma_i^2``: the formula is ``log N(r_i; 0,
        sigma_i^2)``, computed as such (without the solves).

        References
        ----------
        Buerkner, P.-C., Gabry, J. and Vehtari, A. (2021). Efficient leave-one-out
        cross-validation for Bayesian non-factorized normal and Student-t models.
        Computational Statistics 36, 1243-1261. doi:10.1007/s00180-020-01045-4.

        Examples
        --------
        >>> cov = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
        >>> terms = GaussianNoise((2,), cov=cov).log_prob_pointwise(torch.tensor([1.0, 1.0]))
        >>> [round(v, 4) for v in terms.tolist()]  # r_i | r_j ~ N(0.5, 0.75)
        [-0.9418, -0.9418]
        """
        self._check_residual(residual)
        self._require_noise("a likelihood density")
        r = residual.to(torch.float64)
        if self.is_diagonal:
            sd = (
                torch.full(self.y_shape, self.std, dtype=torch.float64)
                if self.cov is None
                else self.cov.diagonal().sqrt().reshape(self.y_shape)
            ).to(r.device)
            return -0.5 * (r / sd).square() - sd.log() - 0.5 * _LOG_2PI
        chol, precision_diag = self._loo_factor()
        chol, precision_diag = chol.to(r.device), precision_diag.to(r.device)
        flat = r.reshape(-1, self.num_data)  # (N, m): one residual per row
        # rows r^T L^-T = (L^-1 r)^T, then (L^-1 r)^T L^-1 = (L^-T L^-1 r)^T = (Q r)^T
        white = torch.linalg.solve_triangular(chol.mT, flat, upper=True, left=False)
        q_r = torch.linalg.solve_triangular(chol, white, upper=False, left=False)
        terms = 0.5 * precision_diag.log() - 0.5 * q_r.square() / precision_diag - 0.5 * _LOG_2PI
        return terms.reshape(r.shape)

    def _loo_factor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``L`` and ``diag(C_e^-1)`` ``(m,)`` of a full covariance, float64, cached.

        ``C_e^-1 = L^-T L^-1``, so ``(C_e^-1)_ii`` is the sum of squares of column ``i`` of
        ``L^-1`` (one triangular solve against the identity, once per noise model).
        """
        chol = self.cholesky()
        if self._precision_diag is None:
            eye = torch.eye(self.num_data, dtype=chol.dtype, device=chol.device)
            inv = torch.linalg.solve_triangular(chol, eye, upper=False)
            self._precision_diag = inv.square().sum(0)
        return chol, self._precision_diag

    def _check_residual(self, residual: torch.Tensor) -> None:
        k = len(self.y_shape)
        if residual.dim() < k or tuple(residual.shape[residual.dim() - k :]) != self.y_shape:
            raise ShapeError(
                f"a residual must have shape (*batch, {', '.join(map(str, self.y_shape))}) "
                f"(the data's event shape), got {tuple(residual.shape)}"
            )

    def _require_noise(self, what: str) -> None:
        if self.is_zero:
            raise NoLikelihoodError(
                f"the noise is zero (std = 0 and no covariance), so there is no {what}: "
                "y = F(x) exactly; a noise-free problem's misfit is scaled by its nominal "
                "misfit_std instead (Problem.misfit_noise)"
            )
