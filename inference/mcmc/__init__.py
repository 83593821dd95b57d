"""NUTS on the problem's exact posterior, started and preconditioned by amortized draws.

For a problem whose prior has a differentiable density (``problem.log_prior``) and whose noise
model gives ``problem.log_likelihood``, the posterior of ``x`` given one observation ``y`` is
sampled with Pyro's No-U-Turn sampler on the potential ``-log p(x) - log p(y | x)``. A problem
with a basis (``problem.parameterisation()``) is sampled on its unconstrained parameters
``theta`` instead (``x = B T(theta)``, prior density with the bijection's Jacobian), and so is
one that declares an elementwise support (``problem.support``, e.g. ``constraints.interval``):
``x = biject_to(support)(theta)``, as Pyro's NUTS samples constrained sites
(``problem.sampler_parameterisation()``).

The amortized posterior does two things (``precondition="amortized"``): each chain starts from
an amortized draw, and NUTS runs in the coordinates ``v = L^-1 (x - mu)``, with ``mu`` and
``L L^T`` the mean and covariance of the amortized draws. A dense mass matrix equal to the
posterior covariance is what NUTS's own adaptation aims at; taking it from the draws saves
the warm-up it would need to estimate ``d (d + 1) / 2`` entries (a constant-Jacobian change of
variables: the target in ``x`` is unchanged). ``precondition="none"`` gives plain NUTS with
diagonal adaptation, started from prior draws (the baseline of the correction benchmark).

Where the prior of the sampled coordinates is Gaussian, ``N(m, L_0 L_0^T)``
(:meth:`Problem.gaussian_prior <ppl_cvae.problems.base.Problem.gaussian_prior>`: mt1d's
latent field, the Gaussian random fields of crosshole and gravity), two more preconditioners
whiten by the prior's Cholesky factor ``L_0`` instead (chains still start at amortized draws):

- ``"prior"``: ``theta = m + L_0 w``, so the prior of ``w`` is ``N(0, I)``; the likelihood
  narrows the few directions the data inform and leaves the others at sd 1. This is the
  whitening of Gaussian-process MCMC (Murray and Adams 2010, "whitened" parameterisation).
- ``"prior-amortized"``: the amortized draws' covariance expressed in ``w``, ``C_w``, with
  its eigenvalues clipped at 1, ``theta = m + L_0 (mu_w + V min(Lambda, 1)^(1/2) v)``. Under a
  Gaussian prior the posterior covariance is below the prior's (``I`` in ``w``; exactly for a
  linear forward operator), so an amortized variance above 1 is the decoder's own noise
  (white noise in ``theta`` is amplified by ``L_0^-1`` in the rough directions of a smooth
  field): clipping keeps what the draws say about the informed directions and the prior
  elsewhere. Directions the draws do not span (fewer draws than coordinates) get 1.

With either, the chains start at amortized draws shrunk towards the draws' mean in the
directions where the draws are wider than the prior (by ``sqrt(min(lambda, 1) / lambda)`` along
the eigenvectors of ``C_w``): the decoder's noise puts a raw draw far out in the prior's rough
directions (``|w|^2`` in the thousands on mt1d), and a chain started there spends its warm-up
coming back (R-hat 1.03 after 100 warm-up iterations on mt1d; docs/measurements.md, "Correction on
mt1d").

With a Gaussian prior the potential evaluates the prior as ``-|L_0^-1 (theta - m)|^2 / 2``
plus its constant (for every preconditioner; the same density as ``problem.log_prior``
through the parameterisation, without its change of variables and transforms).

Chains run one after the other in this process (``num_cores=1``), or in ``num_cores`` worker
processes (one ``pyro.infer.MCMC`` per chain, each seeded with its own ``seed + c``, so the
draws do not depend on ``num_cores``). Pyro's own ``MCMC(num_chains=...)`` is not used: with a
``potential_fn`` it needs the potential to be picklable, and a closure over the problem is not;
here each worker builds the potential from the chain's job. On Linux, while CUDA is not
initialised and no other Python thread runs, the workers are forked
(:func:`~inference.mcmc.chains._start_method`): they inherit the jobs, the imported modules
and the problem object, so they start in about 0.05 s instead of the 3-5 s a ``spawn`` worker
spends importing torch and Pyro (docs/measurements.md, "NUTS within 60 s per observation"), and
a problem that cannot be pickled (a class defined in
``__main__`` or in a function, a lambda) runs in parallel too (tqdm's monitor thread is stopped
first). Elsewhere (macOS, Windows, a parent that already holds CUDA or other threads, which a
fork does not copy safely) the workers are spawned, the problem travels by pickle, and one that
cannot be pickled runs its chains in this process, with a warning. R-hat and the bulk ESS come
from ArviZ (rank-normalised split R-hat, Vehtari et al. 2021).

``jit_compile=True`` traces the preconditioned potential with ``torch.jit.trace`` (what
``NUTS(jit_compile=True)`` does for a Pyro model; Pyro ignores the flag for a
``potential_fn``). A trace records the tensor operations of one call and replays them, so a
potential whose Python control flow depends on the values of ``x`` (an ``if`` on a tensor)
would be replayed wrongly elsewhere; the traced potential and its gradient are therefore
compared with the eager ones at the chains' starts, and any difference (or a failure to
trace) falls back to the eager potential with a warning. No gain was measured on crosshole
and gravity, whose cost is the matrix-vector products (docs/measurements.md, "NUTS within 60 s per
observation"), and ``torch.jit.trace`` is deprecated in torch 2.x, so it is off by default.

Cost and precision. An evaluation of the potential with its gradient is, for a Gaussian prior, one
product with ``H`` (the prior as a quadratic form in ``v``, gradient ``c + H v`` from the same
product), ``x = mu + L v`` and ``L^T`` times the likelihood's gradient, besides the problem's own
likelihood; the products read only half of ``L`` and ``H`` (BLAS ``trmv`` and ``symv``). On
crosshole (1024 cells) that is 1.45x faster than the former potential in float64
(docs/measurements.md, "NUTS within 60 s per observation"). ``potential_dtype="float32"`` evaluates
it in float32 (the chains' state stays float64), about 1.8x faster than before. NUTS with a
potential ``U + e`` whose rounding error ``e`` is a deterministic function of the state samples
``exp(-U - e)`` exactly (the leapfrog map is volume-preserving and reversible for any deterministic
gradient; the multinomial choice of the draw uses the same ``U + e``), so ``|e| <= delta`` moves the
target by at most about ``delta`` in total variation. Float32 sums of ``n`` terms carry a relative
error of about ``sqrt(n) * 6e-8`` (random rounding; ``n * 6e-8`` at worst, Higham 2002): on
crosshole, with ``U`` of a few hundred nats over sums of 1024 terms, ``|e|`` was 2e-4 nats (median;
at most 9e-4 over 200 posterior draws), against step-size adaptation that accepts energy errors of
order 1 nat and a divergence threshold of 1000. :func:`nuts_sample` checks ``|e|`` at the chains'
starts (:data:`FLOAT32_POTENTIAL_TOLERANCE`, 0.01 nats) and otherwise falls back to float64.

The gradient is assembled by hand around one ``torch.autograd.grad`` of the problem's own
part (the likelihood, and the prior where it is not the quadratic form) with respect to
``theta``: ``dU/dv = c + H v - L^T g``, the same operations in the same order as autograd
would run through the whole potential, so value and gradient are the same to the bit and so
are the draws (``tests/test_nuts_potential.py``), without the graph autograd otherwise builds
and walks around the products on every evaluation. Pyro's argument checks of the
distributions it builds inside the tree are switched off during a chain
(``pyro.validation_enabled(False)``). Pyro's ``potential_grad`` on crosshole takes 0.94x
the processor time in float32; whole chains 0.86-1.01x, within the scatter of a shared
machine (docs/measurements.md, "NUTS within 60 s per observation").

Per-draw sampler statistics (:attr:`MCMCResult.sample_stats`, ArviZ's names): ``diverging``
(from each chain's ``MCMC.diagnostics()``, laid out as ``arviz.from_pyro`` lays it out: ArviZ
0.x's converter reads Pyro's divergences and nothing else), and, recorded by the kernel,
``energy`` (the Hamiltonian at the start of each transition, after the momentum refresh:
what ``az.bfmi`` needs), ``n_steps``
(leapfrog steps), ``tree_depth``, ``acceptance_rate`` and ``step_size``. Pyro's MCMC keeps no
per-draw energy or tree depth, so the kernel records them from public parts: the momentum is
a Pyro sample site (``r_t=...``), read with a :class:`~pyro.poutine.messenger.Messenger`, and
the potential at the chain's current state is evaluated once more per transition (not
counted in ``num_evaluations``). The acceptance statistic of each transition (the mean
acceptance probability over its tree, which the step-size adaptation targets at 0.8) is
recovered from the change of the running mean Pyro's kernel keeps.
"""

# the private helpers that tests and benchmarks import from here (where they lived before
# the split) are re-exported; the chain runner's module globals (_start_method,
# _FORKED_JOBS, _fused_energy as _run_chain sees it) are not: patch or read them in
# inference.mcmc.chains
from inference.mcmc.budget import (
    MIN_DRAWS_PER_CHAIN,
    MIN_EFFECTIVE_DRAWS_PER_CHAIN,
    NUTS_TAIL_EFFICIENCY,
    RHAT_JUDGE_LIMIT,
    RHAT_THRESHOLD,
    ChainVerdict,
    chains_summary,
    nuts_draws_per_chain,
    preconditioner_draws,
    rhat_passes,
    rhat_threshold,
)
from inference.mcmc.budget import _largest_rhat_quantile as _largest_rhat_quantile
from inference.mcmc.chains import _ChainJob as _ChainJob
from inference.mcmc.chains import run_whitened_chain
from inference.mcmc.potential import (
    FLOAT32_POTENTIAL_TOLERANCE,
    POTENTIAL_DTYPES,
    PotentialDtype,
)
from inference.mcmc.potential import _checked_gaussian_prior as _checked_gaussian_prior
from inference.mcmc.potential import _gaussian_prior_term as _gaussian_prior_term
from inference.mcmc.potential import _log_target_v as _log_target_v
from inference.mcmc.potential import _TriangularProducts as _TriangularProducts
from inference.mcmc.preconditioner import PRECONDITIONERS, Preconditioner
from inference.mcmc.preconditioner import _preconditioner as _preconditioner
from inference.mcmc.sampler import MCMCResult, nuts_sample

__all__ = [
    "ChainVerdict",
    "MCMCResult",
    "MIN_DRAWS_PER_CHAIN",
    "MIN_EFFECTIVE_DRAWS_PER_CHAIN",
    "RHAT_JUDGE_LIMIT",
    "RHAT_THRESHOLD",
    "NUTS_TAIL_EFFICIENCY",
    "FLOAT32_POTENTIAL_TOLERANCE",
    "POTENTIAL_DTYPES",
    "PRECONDITIONERS",
    "PotentialDtype",
    "Preconditioner",
    "chains_summary",
    "nuts_draws_per_chain",
    "nuts_sample",
    "preconditioner_draws",
    "rhat_passes",
    "rhat_threshold",
    "run_whitened_chain",
]
