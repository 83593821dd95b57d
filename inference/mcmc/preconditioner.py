"""The preconditioner of NUTS: the affine map ``theta = mu + L v`` the chains run in.

The options of ``precondition`` (:data:`PRECONDITIONERS`: the amortized draws' covariance,
the prior's Cholesky factor, the two combined, or none) and the factor and chain starts
each gives; the method (prior whitening, clipped eigenvalues, shrunk starts) is described
in the docstring of :mod:`inference.mcmc`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from inference.covariance import ledoit_wolf

__all__ = ["PRECONDITIONERS", "Preconditioner"]

Preconditioner = Literal["amortized", "prior", "prior-amortized", "none"]
PRECONDITIONERS: tuple[str, ...] = get_args(Preconditioner)
"""The values of ``precondition`` in :func:`nuts_sample` (see the package docstring)."""


_MIN_WHITENED_VARIANCE = 1e-8
"""Floor of the eigenvalues of the amortized covariance in prior-whitened coordinates."""


def _preconditioner(
    precondition: str, start: torch.Tensor, prior: torch.distributions.MultivariateNormal | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``mu`` ``(k,)``, the factor ``L`` ``(k, k)`` of ``theta = mu + L v`` and the starts.

    ``start``: the amortized draws in the sampled coordinates, ``(N, k)``, float64; ``prior``
    the Gaussian prior of those coordinates, required for the ``"prior..."`` options (see the
    package docstring). The starts ``(N, k)`` are ``start`` itself, except for the ``"prior..."``
    options: there each draw's deviation from the draws' mean, in ``w = L0^-1 (theta - m)``,
    is shrunk along the eigenvectors of the draws' covariance ``C_w`` by
    ``sqrt(min(lambda, 1) / lambda)``, so that the starts have the clipped covariance. An
    amortized draw's white noise is far out in the prior's rough directions (``|w|^2`` of
    thousands on mt1d), where a chain would spend its warm-up coming back.
    """
    dim = start.shape[1]
    eye = torch.eye(dim, dtype=start.dtype)
    if precondition == "none":
        return start.new_zeros(dim), eye, start
    if precondition == "amortized":
        if len(start) > 1:  # shrunk: N draws in dim >= N dimensions give a singular estimate
            cov = ledoit_wolf(start)[0].to(start.dtype)
        else:
            cov = eye
        shrink = 1e-9 * float(cov.diagonal().mean().clamp_min(1e-12))
        return start.mean(0), torch.linalg.cholesky(cov + shrink * eye), start
    assert prior is not None  # checked by nuts_sample
    loc, chol0 = prior.loc.to(start), prior.scale_tril.to(start)
    if len(start) < 2:
        return loc, chol0, start
    # the draws' covariance in w = L0^-1 (theta - m), its eigenvalues clipped at 1
    w = torch.linalg.solve_triangular(chol0, (start - loc).T, upper=False).T  # (N, k)
    mean_w = w.mean(0)
    lam, vec = torch.linalg.eigh(torch.cov(w.T).reshape(dim, dim))  # ascending
    clipped = lam.clamp(_MIN_WHITENED_VARIANCE, 1.0)
    unseen = max(dim - (len(start) - 1), 0)  # the null space of N - 1 < k centred draws
    clipped[:unseen] = 1.0
    shrink = (clipped / lam.clamp_min(_MIN_WHITENED_VARIANCE)).clamp(max=1.0).sqrt()
    shrink[:unseen] = 1.0
    w_start = mean_w + ((w - mean_w) @ vec * shrink) @ vec.T
    starts = loc + w_start @ chol0.T
    if precondition == "prior":
        return loc, chol0, starts
    factor = chol0 @ (vec * clipped.sqrt())  # theta = loc + L0 (mean_w + V Lambda^(1/2) v)
    cov = factor @ factor.T
    cov = 0.5 * (cov + cov.T) + 1e-12 * float(cov.diagonal().mean()) * torch.eye(dim).to(cov)
    return loc + chol0 @ mean_w, torch.linalg.cholesky(cov), starts
