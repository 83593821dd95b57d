"""Data-parallel training on ``torch.distributed``: DistributedDataParallel under ``torchrun``.

``torchrun --nproc-per-node W ... -m ppl_cvae.cli fit ...`` starts ``W`` processes (ranks) with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment. :func:`setup_distributed` joins them in one process group (gloo on the CPU, NCCL on
CUDA, one GPU per rank: ``cuda:LOCAL_RANK``). Every rank builds the same pairs, split and
shuffle from the run's seed; each global minibatch of ``batch_size`` pairs is cut into ``W``
contiguous shards, one per rank (:func:`shard_rows`). Each rank computes ``Trace_ELBO``'s
differentiable loss on its shard inside a :class:`~torch.nn.parallel.DistributedDataParallel`
module, whose backward pass all-reduces (averages) the gradients; the loss is scaled by ``W``
first, so the gradient every rank applies is that of the whole minibatch's loss, as in one
process with the same ``batch_size``. The optimiser (ClippedAdam) then takes the same step on
every rank and the weights stay identical. The validation loss is summed over the ranks' shards
of the validation set, so early stopping decides the same on every rank. Only rank 0 writes
the run folder, the metrics and the progress bar.

What differs from one process: each rank draws its own latent noise (the global RNGs are seeded
with ``seed + rank``), so a ``W``-process run is a different random realisation of the same
algorithm, not a bit-identical copy; its validation loss agrees with one process's within the
seed-to-seed spread (tested).

References
----------
Li et al. (2020), PyTorch Distributed: Experiences on Accelerating Data Parallel Training,
VLDB 13(12). Pyro's Trace_ELBO ``differentiable_loss`` (Ranganath et al. 2014, Black Box
Variational Inference) gives the loss DDP differentiates.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.nn.parallel import DistributedDataParallel

from ppl_cvae.checks import derived_seed
from ppl_cvae.errors import ConfigError

__all__ = [
    "DistributedSetup",
    "launch_rank",
    "launch_world_size",
    "rank_device",
    "rank_seed",
    "setup_distributed",
    "shard_rows",
    "shut_down_owned_group",
    "shutdown",
]

_KEPT: list[Any] = []
"""The DDP wrappers of this process's own group, never freed before the process ends.

Freeing one frees its reducer and, with the last reference, the gloo process group, whose
destructor joins gloo's worker threads while holding the GIL. A worker that is still
destroying its last collective's work needs the GIL to drop a tensor's Python object, so the
two wait for each other forever (pytorch/pytorch#56297). It happened in one of two runs here
when a rank failed right after a collective (the traceback's frames held the wrapper).
:func:`~ppl_cvae.cli.main` ends a torchrun rank with ``os._exit`` instead of interpreter
finalisation (:func:`shut_down_owned_group`), so these are never freed.
"""

_ENDED_OWN_GROUP = False

TIMEOUT_MINUTES = 10
"""How long a rank waits for the others in one collective before the run fails."""


def shard_rows(num: int, rank: int, world_size: int) -> slice:
    """Return the rows of a ``num``-row minibatch that ``rank`` of ``world_size`` takes.

    Contiguous, as :func:`torch.tensor_split`: the first ``num % world_size`` ranks take one
    row more; a rank gets no row when ``num < world_size``.

    Raises
    ------
    ConfigError
        If ``rank`` is not in ``[0, world_size)`` or ``num < 0``.

    Examples
    --------
    >>> [shard_rows(5, r, 2) for r in range(2)]
    [slice(0, 3, None), slice(3, 5, None)]
    """
    if not 0 <= rank < world_size or num < 0:
        raise ConfigError(f"rank {rank} of world size {world_size} with {num} rows")
    base, extra = divmod(num, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class _LossModule(torch.nn.Module):
    """Wrap a CVAE so that DDP sees Trace_ELBO's loss as the output of ``forward``."""

    def __init__(self, cvae: torch.nn.Module, num_particles: int) -> None:
        super().__init__()
        self.cvae = cvae
        self.elbo = Trace_ELBO(num_particles=num_particles)

    def forward(self, y: torch.Tensor | None, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        loss = self.elbo.differentiable_loss(self.cvae.model, self.cvae.guide, y, x, **kwargs)
        return torch.as_tensor(loss)


def _unused_parameters(module: _LossModule, device: torch.device) -> list[str]:
    """Name the parameters that one loss evaluation leaves without a gradient.

    DDP must be told about them (``find_unused_parameters``, an extra graph traversal per
    step), else its all-reduce waits for gradients that never come. Evaluated once on two
    all-zero pairs (valid for every likelihood: zero is a facies code too), with the RNG
    state restored after.
    """
    config = cast(Any, module.cvae).config
    x = torch.zeros(2, *config.x_shape, device=device)
    y = None if config.y_shape is None else torch.zeros(2, *config.y_shape, device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with pyro.validation_enabled(False):
            loss = module(y, x)
        loss.backward()
    unused = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    module.zero_grad(set_to_none=True)
    return unused


@dataclass
class DistributedSetup:
    """One rank's place in a data-parallel run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        From torchrun's environment.
    backend : str
        ``"gloo"`` (CPU) or ``"nccl"`` (CUDA).
    device : torch.device
        Where this rank trains: the CPU, or ``cuda:local_rank``.
    owns_group : bool
        Whether :func:`setup_distributed` created the process group (it stays for later
        fits in the same process; :func:`shutdown` ends it).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files and shows progress."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """Return the setup for a run's ``config.json``: world size and backend."""
        return {"world_size": self.world_size, "backend": self.backend}

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over the ranks (float64); every rank gets the totals."""
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def make_step(
        self,
        cvae: torch.nn.Module,
        optim: Callable[[Any], None],
        num_particles: int,
        presharded: bool = False,
    ) -> Callable[..., float]:
        """Return ``step(y, x, **kwargs) -> loss`` taking one data-parallel SVI step.

        ``y``, ``x`` are the whole global minibatch (``(B, *y_shape)``, ``(B, *x_shape)``) on
        this rank's device; the rank keeps its :func:`shard_rows` and the returned loss is the
        whole minibatch's (summed over ranks), as ``SVI.step`` returns in one process. With
        ``presharded`` they are this rank's shard already (a per-rank simulation stream); the
        returned loss is then the whole minibatch's loss per pair times this shard's size, so
        that dividing by ``len(x)`` gives the loss per pair of the whole minibatch. The
        parameters stepped are those the trace touches, as in ``SVI.step``.
        """
        loss_module = _LossModule(cvae, num_particles)
        with warnings.catch_warnings():
            # broadcast_buffers=False is what we mean: the standardisers are fitted alike on
            # every rank and never change (torch 2.13 announces a renamed option, with a
            # warning attributed to this module)
            warnings.filterwarnings(
                "ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning
            )
            module = DistributedDataParallel(
                loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(_unused_parameters(loss_module, self.device)),
                broadcast_buffers=False,
            )
        if self.owns_group:
            _KEPT.append(module)  # see _KEPT: freeing it can deadlock

        def local_step(
            ys: torch.Tensor | None, xs: torch.Tensor, weight: float, **kwargs: Any
        ) -> float:
            """Backward ``weight`` x this shard's loss, step the optimiser; return the loss."""
            with poutine.trace(param_only=True) as capture:
                loss = module(ys, xs, **kwargs)
            sites = capture.trace.nodes.values()
            params = {cast(Any, site["value"]).unconstrained() for site in sites}
            (loss * weight).backward()  # DDP averages over ranks: weight W sums the shards
            optim(params)
            pyro.infer.util.zero_grads(params)
            return float(loss.detach())

        def step(y: torch.Tensor | None, x: torch.Tensor, **kwargs: Any) -> float:
            if presharded:
                local = local_step(y, x, float(self.world_size), **kwargs)
                total, count = self.all_sum([local, float(x.shape[0])])
                return total / count * x.shape[0]
            rows = shard_rows(x.shape[0], self.rank, self.world_size)
            empty = rows.start == rows.stop
            if empty:  # fewer rows than ranks: take part in the all-reduce with zero weight
                rows = slice(0, 1)
            xs, ys = x[rows], None if y is None else y[rows]
            local = local_step(ys, xs, 0.0 if empty else float(self.world_size), **kwargs)
            return self.all_sum([0.0 if empty else local])[0]

        return step

    def all_gather_rows(self, tensor: torch.Tensor, num: int) -> torch.Tensor:
        """Return the ranks' row shards of a ``num``-row tensor, joined in rank order.

        Rank ``r`` holds rows :func:`shard_rows` ``(num, r, world_size)`` of it, shape
        ``(rows_r, *event_shape)`` (the same event shape and dtype on every rank); every
        rank gets the whole ``(num, *event_shape)`` tensor on the CPU. The shards are padded
        to the largest one for the collective (NCCL gathers on this rank's GPU).

        Raises
        ------
        ConfigError
            If ``tensor`` does not have this rank's number of rows.
        """
        rows = [shard_rows(num, r, self.world_size) for r in range(self.world_size)]
        sizes = [sl.stop - sl.start for sl in rows]
        if tensor.shape[0] != sizes[self.rank]:
            raise ConfigError(
                f"rank {self.rank} holds {tensor.shape[0]} rows; its shard of {num} has "
                f"{sizes[self.rank]}"
            )
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=device)
        padded[: tensor.shape[0]] = tensor.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]).cpu()


def launch_rank() -> int:
    """Return this process's rank: the process group's, else torchrun's ``RANK``, else 0.

    Known before :func:`setup_distributed` runs, so that a command can leave the writing of
    files to rank 0 from the start.
    """
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def launch_world_size() -> int:
    """Return the number of ranks: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1


def rank_device(device: torch.device) -> torch.device:
    """Return the device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA under torchrun.

    Known before :func:`setup_distributed` runs, so that a problem's forward operator can be
    placed on the rank's GPU first. Any other device is returned unchanged.
    """
    if device.type != "cuda" or launch_world_size() <= 1:
        return device
    try:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    except ValueError:
        raise ConfigError(
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} is not an integer; launch with torchrun"
        ) from None


def rank_seed(seed: int, *parts: int) -> int:
    """Return a seed for this rank's own random stream, ``seed + sum(parts)`` modulo 2**32.

    NumPy (seeded by ``pyro.set_rng_seed``) takes seeds below 2**32 only
    (:func:`~ppl_cvae.checks.derived_seed`, the rule of every derived seed).
    """
    return derived_seed(seed, sum(int(p) for p in parts))


def setup_distributed(device: torch.device) -> DistributedSetup | None:
    """Join the torchrun process group when this process is one of several ranks.

    Parameters
    ----------
    device : torch.device
        The device asked for (``--device``): ``cuda`` trains rank ``r`` on
        ``cuda:LOCAL_RANK`` with NCCL, the CPU with gloo.

    Returns
    -------
    DistributedSetup or None
        None when ``WORLD_SIZE`` is unset or 1 and no process group exists (one process).

    Raises
    ------
    ConfigError
        If the environment is incomplete (``RANK``/``LOCAL_RANK`` missing or not integers),
        CUDA ranks outnumber the GPUs, or a caller's NCCL group meets a CPU ``device``.

    Notes
    -----
    Under torchrun a rank that fails (a bad output folder is checked on rank 0 only) is
    stopped together with the others by torchrun. With a launcher of one's own, the other
    ranks wait in their next collective until :data:`TIMEOUT_MINUTES`.
    """
    if dist.is_available() and dist.is_initialized():  # a user's own launcher set it up
        rank, world = dist.get_rank(), dist.get_world_size()
        try:
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise ConfigError(
                f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} is not an integer"
            ) from None
        backend = str(dist.get_backend())
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError(
                "the process group uses NCCL, which reduces CUDA tensors only: give --device "
                "cuda, or set the group up with gloo"
            )
        owns = False
    else:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        try:
            rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        except (KeyError, ValueError) as err:
            raise ConfigError(
                f"WORLD_SIZE={world} but RANK/LOCAL_RANK are missing or not integers ({err}); "
                "launch with torchrun"
            ) from None
        backend = "nccl" if device.type == "cuda" else "gloo"
        owns = True
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise ConfigError(f"local rank {local} has no GPU: this node has {count}")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if owns:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return DistributedSetup(rank, world, local, backend, device, owns_group=owns)


def shutdown() -> None:
    """Destroy the process group, if there is one (the end of a data-parallel command).

    A group cannot be set up again in the same torchrun process after it is destroyed, so
    :func:`~ppl_cvae.train.fit` leaves it in place and the command ends it once.
    """
    global _ENDED_OWN_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _ENDED_OWN_GROUP = _ENDED_OWN_GROUP or bool(_KEPT)


def shut_down_owned_group() -> bool:
    """Whether this process ended a process group it created and trained in (a torchrun rank).

    Such a process must end with ``os._exit`` after flushing its output: interpreter
    finalisation would free the DDP wrappers kept in ``_KEPT`` and can deadlock (see there).
    """
    return _ENDED_OWN_GROUP
