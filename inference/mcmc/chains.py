"""The chains of NUTS: Pyro's NUTS kernel that records its statistics, and the chain runner.

One chain is a picklable job (``_ChainJob``) run by ``_run_chain``, in this process or in
worker processes, forked where that is safe (``_start_method``) and spawned elsewhere
(``_run_chains``); :func:`run_whitened_chain` runs a kernel in the preconditioned
coordinates. The workers, their start methods and the per-draw statistics are described in
the docstring of :mod:`inference.mcmc`. ``_run_chains`` reads ``_start_method``,
``_FORKED_JOBS`` and ``_fused_energy`` from this module: patch them here.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import pickle
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.poutine.messenger import Messenger

from inference.mcmc.potential import (
    _check_low_precision,
    _fused_energy,
    _gaussian_prior_term,
    _log_target_v,
    _terms_at,
    _trace_energy,
)
from ppl_cvae.checks import as_seed, seeded_rng
from ppl_cvae.errors import (
    DataError,
    PplCvaeError,
    WorkerDiedError,
    exception_summary,
    how_workers_ended,
)
from ppl_cvae.problems.base import Problem

__all__ = ["run_whitened_chain"]


class _MomentumRecorder(Messenger):
    """Collect the values of NUTS's momentum sample sites (named ``r_t=...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[torch.Tensor] = []

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        if str(msg["name"]).startswith("r_t="):
            self.values.append(msg["value"])


class _RecordingNUTS(NUTS):
    """Pyro's NUTS that records each transition's energy, leapfrog steps and acceptance.

    The acceptance statistic of a transition (the mean Metropolis acceptance probability over
    the tree's proposals, the quantity step-size adaptation targets; Hoffman and Gelman 2014,
    section 3.2.1) is not returned by Pyro's ``NUTS.sample``, which folds it into a running
    mean (``_mean_accept_prob``, restarted after warm-up): it is recovered from that mean's
    change, ``a = m_before + n (m_after - m_before)`` with ``n`` the transitions it averages.

    ``energy_fn`` is the potential without the evaluation counter; ``counter`` is the
    one-element list the counted potential increments (one per leapfrog step); ``recent``
    the list of ``(v, U(v))`` that the counted potential appends to: the state a transition
    starts from is a point of the previous transition's trajectory, whose potential is then
    looked up there instead of evaluated again (one evaluation per transition saved, about
    6% of them at 15 leapfrog steps per transition).
    """

    def __init__(
        self,
        potential_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        energy_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        counter: list[int],
        recent: list[tuple[torch.Tensor, float]],
        **kwargs: Any,
    ) -> None:
        super().__init__(potential_fn=potential_fn, **kwargs)
        self._energy_fn = energy_fn
        self._counter = counter
        self._recent = recent
        self.energy: list[float] = []
        self.n_steps: list[int] = []
        self.acceptance: list[float] = []

    def _potential_at(self, params: dict[str, torch.Tensor]) -> float:
        """``U`` at ``params``: from the previous trajectory's evaluations, else evaluated."""
        v = params["v"]
        for point, value in reversed(self._recent):
            if torch.equal(point, v):
                return value
        with torch.no_grad():
            return float(self._energy_fn(params))

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run one NUTS transition from ``params`` and record its energy and its steps."""
        potential = self._potential_at(params)
        self._recent.clear()
        before = self._counter[0]
        recorder = _MomentumRecorder()
        mean_before = float(self._mean_accept_prob)
        with recorder:
            out: dict[str, torch.Tensor] = super().sample(params)
        warmup = int(self._warmup_steps or 0)  # set by setup() before the first transition
        n = self._t - warmup if self._t > warmup else self._t
        accept = mean_before + n * (float(self._mean_accept_prob) - mean_before)
        self.acceptance.append(min(max(accept, 0.0), 1.0))  # rounding of the difference
        # the momentum is drawn unscaled, u ~ N(0, I): kinetic energy u^T u / 2 for any mass
        kinetic = 0.5 * sum(float((u.double() ** 2).sum()) for u in recorder.values)
        self.energy.append(potential + kinetic)
        self.n_steps.append(self._counter[0] - before)
        return out


class _PotentialWatch:
    """Watch the values of a NUTS potential for ones that no log density gives.

    A log density is finite, or ``-inf`` where the density is zero. Pyro's NUTS treats a NaN
    potential as a divergent step (NaNs are expected during step-size adaptation) but fails
    on some (a NaN acceptance probability inside its tree: ``p_in >= 0 && p_in <= 1``), and
    a potential of ``-inf`` (a log density of ``+inf``) breaks the tree's weights. So
    ``see`` refuses ``-inf`` at once and remembers the last point with a NaN or ``+inf``
    potential, and ``failures`` turns an exception Pyro raises after such points into a
    :class:`~ppl_cvae.errors.DataError` that names the problem's terms there.

    ``terms(v)`` returns the problem's log densities at the chain state ``v`` (``(dim,)``
    float64), e.g. ``{"log_prior": ..., "log_likelihood": ...}``; it is called only to write
    an error message.
    """

    def __init__(
        self, problem: Problem, terms: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    ) -> None:
        self.problem, self.terms = problem, terms
        self.evaluations = 0
        self.not_finite = 0
        self.last: tuple[torch.Tensor, float] | None = None

    def see(self, v: torch.Tensor, energy: float) -> None:
        """Count one evaluation ``U(v) = energy``; refuse ``-inf``, remember NaN or ``+inf``.

        Raises
        ------
        DataError
            If ``energy`` is ``-inf`` (the log density is ``+inf``).
        """
        self.evaluations += 1
        if math.isfinite(energy):
            return
        if energy == -math.inf:
            raise self._error(v, -energy, 1, "NUTS cannot sample an infinite density")
        self.not_finite += 1
        self.last = (v.detach().clone(), -energy)

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn an exception of the chain after NaN or ``+inf`` potentials into a DataError.

        The package's own errors, and failures with no such potential before them, pass
        unchanged.
        """
        try:
            yield
        except PplCvaeError:
            raise
        except Exception as err:  # noqa: BLE001 - Pyro's, after the problem's NaN
            if self.last is None:
                raise
            raise self._error(
                self.last[0],
                self.last[1],
                self.not_finite,
                f"NUTS then failed ({exception_summary(err)})",
            ) from err

    def _error(self, v: torch.Tensor, value: float, count: int, then: str) -> DataError:
        with torch.no_grad():
            terms = self._terms_at(v)
        parts = [f"{name} {term}" for name, term in terms.items()]
        culprits = [  # NaN, +inf or a raise first; else the terms at -inf (zero density)
            name
            for name, term in terms.items()
            if isinstance(term, str) or term != term or term == math.inf
        ] or [name for name, term in terms.items() if term == -math.inf] or list(terms)
        also = " (and the forward operator it calls)" if "log_likelihood" in culprits else ""
        seen = (
            f"is {value} at a point NUTS evaluated"
            if value == math.inf
            else f"was NaN or -inf at {count} of the {self.evaluations} points NUTS evaluated"
        )
        where = "there" if value == math.inf else "the last"
        return DataError(
            f"problem {self.problem.name!r}: log p(x) + log p(y | x) {seen} ({where}: "
            f"{', '.join(parts)}), and {then}: check the problem's {' and '.join(culprits)}"
            f"{also}; a log density must be finite, or -inf where the density is zero"
        )

    def _terms_at(self, v: torch.Tensor) -> dict[str, float | str]:
        try:
            terms = self.terms(v)
        except Exception as err:  # noqa: BLE001 - the message must still be written
            return {"log p": f"raised {exception_summary(err)}"}
        return {name: float(value.double().sum()) for name, value in terms.items()}


def run_whitened_chain(
    kernel: NUTS,
    start: torch.Tensor,
    mu: torch.Tensor,
    tril: torch.Tensor,
    num_samples: int,
    warmup_steps: int,
    seed: int,
) -> tuple[torch.Tensor, int, MCMC]:
    """Run one chain of ``kernel`` in whitened coordinates and return it in the original ones.

    The kernel's potential takes ``{"v": v}`` with ``theta = mu + L v`` (``L = tril``, the
    preconditioner's Cholesky factor; Hoffman and Gelman 2014 with a fixed dense metric). The
    chain starts at ``v0 = L^-1 (start - mu)``, on torch's RNG seeded with ``seed`` (the
    global RNG is restored afterwards: :func:`~ppl_cvae.checks.seeded_rng`).

    Parameters
    ----------
    kernel : pyro.infer.NUTS
    start, mu : Tensor, shape (dim,)
    tril : Tensor, shape (dim, dim)
    num_samples, warmup_steps, seed : int

    Returns
    -------
    draws : Tensor, shape (num_samples, dim)
        ``theta`` after warm-up.
    divergences : int
        Divergent transitions after warm-up.
    mcmc : pyro.infer.MCMC
        The run (for ``az.from_pyro`` and the kernel's statistics).

    Raises
    ------
    ConfigError
        If ``seed`` is not an int in ``[0, 2**32 - 1]`` (:func:`~ppl_cvae.checks.as_seed`).
    """
    with seeded_rng(as_seed(seed, optional=False)):  # the caller's global RNG is kept
        v0 = torch.linalg.solve_triangular(tril, (start - mu).unsqueeze(-1), upper=False)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            initial_params={"v": v0.squeeze(-1)},
            disable_progbar=True,
        )
        mcmc.run()
        draws = mu + mcmc.get_samples()["v"] @ tril.T
    return draws, len(mcmc.diagnostics()["divergences"]["chain 0"]), mcmc


@dataclass(frozen=True)
class _ChainJob:
    """Everything one chain needs, picklable (it travels to a worker process)."""

    problem: Problem
    y: torch.Tensor  # (*y_shape,) float64
    start: torch.Tensor  # (dim,) the chain's start in theta
    checks: torch.Tensor  # (k, dim) points where a traced potential is compared with eager
    mu: torch.Tensor  # (dim,)
    tril: torch.Tensor  # (dim, dim)
    prior_loc: torch.Tensor | None  # (dim,) the Gaussian prior of theta, when it is one
    prior_tril: torch.Tensor | None  # (dim, dim)
    prior_whitened: bool  # precondition="prior": v is the prior-whitened w itself
    num_samples: int
    warmup_steps: int
    seed: int
    max_tree_depth: int
    adapt_mass_matrix: bool
    jit_compile: bool
    potential_dtype: torch.dtype = torch.float64


@dataclass(frozen=True)
class _ChainOutput:
    """What one chain hands back: draws in theta and per-draw statistics."""

    draws: torch.Tensor  # (num_samples, dim)
    diverging: np.ndarray  # (num_samples,) bool
    energy: np.ndarray
    n_steps: np.ndarray
    acceptance_rate: np.ndarray  # (num_samples,) mean acceptance probability of each transition
    step_size: float
    num_evaluations: int
    jit_fallback: str | None  # why the eager potential was used although jit was asked
    dtype_fallback: str | None  # why float64 was used although float32 was asked
    cpu_seconds: float  # processor time of this process while it ran the chain


def _run_chain(job: _ChainJob) -> _ChainOutput:
    """Run one NUTS chain of :func:`nuts_sample` (in this process or in a worker)."""
    import time

    cpu = time.process_time()
    prior_term = _gaussian_prior_term(job)
    blas = not job.jit_compile  # a trace would record the BLAS calls' results as constants
    log_target_v = _log_target_v(job, torch.float64, prior_term, blas)
    mu, tril = job.mu, job.tril
    checks = torch.linalg.solve_triangular(tril, (job.checks - mu).T, upper=False).T
    checks = checks.contiguous()

    def energy_v(v: torch.Tensor) -> torch.Tensor:
        return -log_target_v(v)

    fn: Callable[[torch.Tensor], torch.Tensor] = energy_v
    dtype_fallback = None
    if job.potential_dtype != torch.float64:
        low = _log_target_v(job, job.potential_dtype, prior_term, blas)

        def energy_low(v: torch.Tensor) -> torch.Tensor:
            return -low(v)

        dtype_fallback = _check_low_precision(energy_v, energy_low, checks)
        if dtype_fallback is None:
            fn = energy_low

    fallback = None
    if job.jit_compile:
        fn, fallback = _trace_energy(fn, checks)
    else:  # the same value and gradient, without autograd's graph around the problem's part
        fused = _fused_energy(
            job, job.potential_dtype if fn is not energy_v else torch.float64, prior_term
        )
        fn = fused if fused is not None else fn
    count = [0]
    recent: list[tuple[torch.Tensor, float]] = []

    def energy(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(params["v"])

    watch = _PotentialWatch(job.problem, lambda v: _terms_at(job, prior_term, v))

    def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
        count[0] += 1
        value = fn(params["v"])
        energy = float(value.detach())
        watch.see(params["v"], energy)
        recent.append((params["v"].detach().clone(), energy))
        return value

    kernel = _RecordingNUTS(
        potential,
        energy,
        count,
        recent,
        max_tree_depth=job.max_tree_depth,
        target_accept_prob=0.8,
        adapt_mass_matrix=job.adapt_mass_matrix,
    )
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # (sklearn)

    # SciPy's BLAS (the products above) runs on one thread: matrix-vector products are bound by
    # memory, not arithmetic, and a thread count changes their rounding, so that a chain would
    # differ between this process and a worker process (num_cores) with fewer threads
    # Pyro's argument checks of the distributions NUTS builds inside its tree (a Bernoulli per
    # subtree merge, the momentum's Normal) are off during the chain: their parameters come
    # from Pyro's own arithmetic on the energies (a NaN energy is set to inf before), and the
    # checks cost about 3% of an evaluation on linear_gaussian; the draws are the same
    with (
        threadpool_limits(limits=1, user_api="blas"),
        pyro.validation_enabled(False),
        watch.failures(),
    ):
        draws, _, mcmc = run_whitened_chain(
            kernel, job.start, mu, tril, job.num_samples, job.warmup_steps, job.seed
        )
    # laid out as arviz.from_pyro lays out Pyro's divergences (indices of post-warm-up draws)
    diverging = np.zeros(job.num_samples, dtype=bool)
    diverging[mcmc.diagnostics()["divergences"]["chain 0"]] = True
    return _ChainOutput(
        draws=draws.detach(),
        diverging=diverging,
        energy=np.asarray(kernel.energy[-job.num_samples :], dtype=np.float64),
        n_steps=np.asarray(kernel.n_steps[-job.num_samples :], dtype=np.int64),
        acceptance_rate=np.asarray(kernel.acceptance[-job.num_samples :], dtype=np.float64),
        step_size=float(kernel.step_size),
        num_evaluations=count[0],
        jit_fallback=fallback,
        dtype_fallback=dtype_fallback,
        cpu_seconds=time.process_time() - cpu,
    )


def _init_worker(num_threads: int) -> None:
    torch.set_num_threads(num_threads)


_FORKED_JOBS: list[_ChainJob] = []
"""The jobs a forked worker inherits (set by :func:`_run_chains` around the pool's life)."""


def _run_forked_chain(index: int) -> _ChainOutput:
    """Run the inherited job ``index`` (in a forked worker: the jobs are not pickled)."""
    return _run_chain(_FORKED_JOBS[index])


def _stop_tqdm_monitors() -> None:
    """Stop tqdm's monitor threads, so that only this thread is left to fork.

    tqdm starts a daemon thread (``TMonitor``) with its first progress bar and keeps it;
    Pyro's MCMC and our progress bars start one. ``exit`` wakes and joins it, and tqdm starts
    a new one with its next bar (it replaces a monitor that no longer reports).
    """
    if "tqdm" not in sys.modules:
        return
    from tqdm._monitor import TMonitor

    for thread in threading.enumerate():
        if isinstance(thread, TMonitor):
            thread.exit()


def _start_method() -> str:
    """Return how chain workers start: ``"fork"`` where that is safe, else ``"spawn"``.

    A fork copies the parent's memory, so the worker needs no import (about 0.05 s against
    3-5 s for ``spawn``), but it copies only the calling thread: a lock held by another
    thread stays locked in the child, and CUDA cannot be used in a forked child once the
    parent initialised it. So fork only on Linux (macOS frameworks are not fork-safe; Windows
    has no fork), with CUDA uninitialised and this the only Python thread. torch's own
    intra-op thread pool is re-created in the child (torch registers ``pthread_atfork``), as
    in a ``DataLoader`` worker, which is forked the same way.

    Returns
    -------
    str
        ``"fork"`` or ``"spawn"``, a start method of :mod:`multiprocessing`.
    """
    if (
        sys.platform.startswith("linux")
        and threading.active_count() == 1
        and not torch.cuda.is_initialized()
    ):
        return "fork"
    return "spawn"


def _run_chains(jobs: list[_ChainJob], num_cores: int) -> list[_ChainOutput]:
    """Run the chains one after the other, or on ``num_cores`` worker processes."""
    global _FORKED_JOBS
    workers = min(num_cores, len(jobs))
    if workers > 1:
        _stop_tqdm_monitors()
    method = _start_method()
    if workers > 1 and method == "spawn":
        try:
            pickle.dumps(jobs[0].problem)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            warnings.warn(
                f"num_cores={num_cores} asked for chains in worker processes, but the problem "
                f"{type(jobs[0].problem).__name__} cannot be pickled ({err}); the chains run "
                "one after the other in this process (define the problem class in an "
                "importable module to run them in parallel)",
                stacklevel=3,
            )
            workers = 1
    if workers <= 1:
        return [_run_chain(job) for job in jobs]
    threads = max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(threads,),
    )
    if method == "spawn":
        return _map_in_pool(pool, _run_chain, jobs)
    _FORKED_JOBS = jobs  # the workers fork on the first submit and inherit this list
    try:
        return _map_in_pool(pool, _run_forked_chain, range(len(jobs)))
    finally:
        _FORKED_JOBS = []


def _map_in_pool(pool: ProcessPoolExecutor, fn: Any, items: Any) -> list[Any]:
    """``list(pool.map(fn, items))``, then shut the pool down; an interrupt stops the workers.

    ``with pool:`` would wait for every chain to finish after a Ctrl-C or SIGTERM that reached
    the main process alone (a scheduler's ``kill PID``), and a SIGKILL after it would leave
    the workers running as orphans: on an interrupt the workers are terminated instead.

    Raises
    ------
    WorkerDiedError
        If a worker died (killed by a signal, e.g. the out-of-memory killer's ``SIGKILL``, or
        crashed); the others are stopped and the message names the signal.
    """
    # ProcessPoolExecutor has no public way to its processes before 3.14; a broken pool
    # drops them, hence the list taken once the jobs are submitted (the workers started)
    processes: list[Any] = []
    try:
        mapped = pool.map(fn, items)
        processes = list((getattr(pool, "_processes", None) or {}).values())
        results = list(mapped)
    except BaseException as err:
        processes = processes or list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            if process.is_alive():
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
        # read once joined (the pool's own thread may be reaping them); the survivors stopped
        # here or by the broken pool itself show SIGTERM, which how_workers_ended puts last
        ended = [process.exitcode for process in processes]
        if isinstance(err, BrokenProcessPool):
            raise WorkerDiedError(
                f"a chain's worker process {how_workers_ended(ended)}; no posterior was "
                "written (run fewer chains at once with --cores, or fewer draws, if memory "
                "ran out)"
            ) from None
        raise
    pool.shutdown(wait=True)
    return results
