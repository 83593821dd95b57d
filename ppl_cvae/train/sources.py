"""Batch sources: where :func:`~ppl_cvae.train.fit` takes each epoch's minibatches from.

A batch source has ``pairs_per_epoch`` (sets the steps per epoch, hence the learning-rate
decay per step) and ``epoch_batches(epoch)``, an iterator over that epoch's minibatches
``(x, y)`` (``y`` None for an unconditional VAE), and ``close()``. Four kinds:

- :class:`InMemoryBatches`: pairs held in memory, shuffled every epoch;
- :class:`ResimulatedBatches`: ``num_train`` fresh pairs simulated at the start of every epoch
  (``TrainConfig.resimulate``), then shuffled; under torchrun
  :class:`ShardedResimulatedBatches` divides that simulation over the ranks;
- :class:`StreamBatches`: minibatches taken from an endless
  :class:`~ppl_cvae.data.streaming.SimulationStream`, optionally simulated by DataLoader worker
  processes while the SVI steps run (``ppl-cvae fit --stream --workers K``);
- :class:`LazyFileBatches`: a file larger than memory, read in chunks with a chunk-level and a
  buffer shuffle (``ppl-cvae fit --data FILE --lazy``); :func:`prepare_lazy_fit` makes the
  one pass over the file that fits the standardisers and reads the validation rows.

The first two are driven by the run's ``torch.Generator`` alone, so a resumed fit replays them.
The last two keep a position of their own: they also have ``state_dict()`` (what a
training-state file stores, :mod:`ppl_cvae.train.resume`) and ``resume(epoch, step, state)``,
which checks a stored state against the source and makes the next ``epoch_batches(epoch)``
start at minibatch ``step`` without simulating or reading the earlier ones
(:class:`ResumableSource`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from ppl_cvae._memory import check_memory
from ppl_cvae.config import ModelConfig, TrainConfig
from ppl_cvae.data.lazy import (
    LazyPairs,
    RunningMoments,
    ScanResult,
    scan_pairs,
    shuffled_batches,
)
from ppl_cvae.data.streaming import SimulationStream, StreamFailure, StreamItem, batch_seed
from ppl_cvae.errors import CheckpointError, ConfigError, WorkerDiedError, how_workers_ended
from ppl_cvae.models.cvae import CVAE, MAX_WHITENING_PAIRS
from ppl_cvae.problems.base import Problem

__all__ = [
    "BatchSource",
    "InMemoryBatches",
    "LazyFileBatches",
    "LazyFit",
    "MAX_VALIDATION_PAIRS",
    "ResimulatedBatches",
    "ResumableSource",
    "ShardedResimulatedBatches",
    "StreamBatches",
    "build_lazy_cvae",
    "max_stream_workers",
    "prepare_lazy_fit",
]

Batch = tuple[torch.Tensor, torch.Tensor | None]
Simulator = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

MAX_VALIDATION_PAIRS = 20_000
"""Most pairs a lazily read file holds out for the validation ELBO (they are kept in memory;
the Monte Carlo error of the validation loss per observation is then about sd / 141)."""


WORKERS_PER_CORE = 4
"""Most DataLoader workers per usable CPU core a stream accepts (:func:`max_stream_workers`)."""


def max_stream_workers() -> int:
    """Return the most simulation workers a :class:`StreamBatches` may start here.

    :data:`WORKERS_PER_CORE` per CPU core this process may run on
    (``os.sched_getaffinity``, else ``os.cpu_count()``). Each worker is a process holding
    a copy of the simulator; beyond a few per core they only compete for the cores (torch's
    DataLoader already warns above one per core), and tens of thousands exhaust the process
    table instead of failing cleanly.

    Returns
    -------
    int
        ``WORKERS_PER_CORE * cores``, at least ``WORKERS_PER_CORE``.

    Examples
    --------
    >>> max_stream_workers() >= WORKERS_PER_CORE
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return WORKERS_PER_CORE * max(1, cores)


class BatchSource(Protocol):
    """What :func:`~ppl_cvae.train.fit` trains on: one iterator of minibatches per epoch."""

    @property
    def pairs_per_epoch(self) -> int:
        """Training pairs one epoch visits (the steps per epoch are this over the batch size)."""
        ...

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Return the minibatches ``(x, y)`` of 1-based ``epoch``, ``y`` None when unconditional."""
        ...

    def close(self) -> None:
        """Release workers and files."""
        ...


class ResumableSource(BatchSource, Protocol):
    """A batch source with a position of its own, which a training-state file stores."""

    def state_dict(self) -> dict[str, Any]:
        """Return the source's settings and position now (tensors and plain values)."""
        ...

    def resume(self, epoch: int, step: int, state: Mapping[str, Any]) -> int:
        """Continue at minibatch ``step`` of ``epoch``; return the pairs of the skipped ones.

        Raises
        ------
        CheckpointError
            If ``state`` (a :meth:`state_dict` of the interrupted run, already checked for
            structure) does not belong to this source.
        """
        ...


def _refuse(what: str, got: Any, expected: Any) -> CheckpointError:
    return CheckpointError(
        f"the training state's data stream has {what}={got!r} but this run has {expected!r}; "
        "resume with the recorded settings and data"
    )


class InMemoryBatches:
    """Pairs in memory, in a fresh random order each epoch.

    Parameters
    ----------
    x : Tensor, shape (N, *x_shape)
    y : Tensor, shape (N, *y_shape), or None
    batch_size : int
    generator : torch.Generator
        Draws each epoch's permutation (``torch.randperm(N)``) when its iterator starts.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator

    @property
    def pairs_per_epoch(self) -> int:
        """``N``."""
        return int(self.x.shape[0])

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield minibatches of ``batch_size`` pairs (the last one shorter) in a random order."""
        yield from _permuted(self.x, self.y, self.batch_size, self.generator)

    def close(self) -> None:
        """Nothing to release."""


def _permuted(
    x: torch.Tensor, y: torch.Tensor | None, batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    order = torch.randperm(x.shape[0], generator=generator)
    for first in range(0, len(order), batch_size):
        index = order[first : first + batch_size]
        yield x[index], (None if y is None else y[index])


class ResimulatedBatches:
    """``num_train`` fresh pairs simulated at the start of every epoch, in random order.

    Parameters
    ----------
    simulator : callable ``(num, generator) -> (x, y)``
    num_train : int
        Pairs per epoch.
    batch_size : int
    generator : torch.Generator
        Drives the simulation, then the permutation, of each epoch.
    conditional : bool
        False drops ``y`` (an unconditional VAE).
    """

    def __init__(
        self,
        simulator: Simulator,
        num_train: int,
        batch_size: int,
        generator: torch.Generator,
        conditional: bool,
    ) -> None:
        self.simulator, self.num_train = simulator, num_train
        self.batch_size, self.generator, self.conditional = batch_size, generator, conditional

    @property
    def pairs_per_epoch(self) -> int:
        """``num_train``."""
        return self.num_train

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Simulate the epoch's pairs and yield them in minibatches, in random order."""
        x, y = self.simulator(self.num_train, self.generator)
        yield from _permuted(x, y if self.conditional else None, self.batch_size, self.generator)

    def close(self) -> None:
        """Nothing to release."""


class ShardedResimulatedBatches:
    """Resimulation divided over the ranks of a data-parallel run (``--resimulate`` under torchrun).

    Each epoch every rank simulates only its :func:`~ppl_cvae.train.distributed.shard_rows`
    share of the ``num_train`` pairs, with a generator of its own seeded by
    :func:`~ppl_cvae.data.streaming.batch_seed` ``(seed, (epoch - 1) * world_size + rank)``
    (distinct for every epoch and rank, as the minibatches of a simulation stream); the
    shares are all-gathered, so every rank holds the same epoch of pairs, and shuffled with
    the run's generator as :class:`ResimulatedBatches` does. A ``W``-rank run thus simulates
    ``num_train`` pairs per epoch in all instead of ``W * num_train``; it draws other pairs
    than one process (a different random realisation of the same epoch), the same for a
    given seed and world size.

    Parameters
    ----------
    simulator : callable ``(num, generator) -> (x, y)``
    num_train, batch_size : int
    generator : torch.Generator
        The run's generator: draws each epoch's permutation (the same on every rank).
    conditional : bool
        False drops ``y``.
    seed : int
        The run's seed, in ``[0, 2**32 - 1]``.
    ddp : DistributedSetup
        This rank's place in the run (rank, world size, the all-gather).
    """

    def __init__(
        self,
        simulator: Simulator,
        num_train: int,
        batch_size: int,
        generator: torch.Generator,
        conditional: bool,
        *,
        seed: int,
        ddp: Any,
    ) -> None:
        self.simulator, self.num_train = simulator, num_train
        self.batch_size, self.generator, self.conditional = batch_size, generator, conditional
        self.seed, self.ddp = seed, ddp

    @property
    def pairs_per_epoch(self) -> int:
        """``num_train`` (all ranks together)."""
        return self.num_train

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Simulate this rank's share, gather the epoch's pairs, yield them shuffled."""
        from ppl_cvae.train.distributed import shard_rows

        rank, world = self.ddp.rank, self.ddp.world_size
        share = shard_rows(self.num_train, rank, world)
        own = torch.Generator().manual_seed(batch_seed(self.seed, (epoch - 1) * world + rank))
        x, y = self.simulator(share.stop - share.start, own)
        gather = self.ddp.all_gather_rows
        pairs_x = gather(x.contiguous(), self.num_train)
        pairs_y = gather(y.contiguous(), self.num_train) if self.conditional else None
        yield from _permuted(pairs_x, pairs_y, self.batch_size, self.generator)

    def close(self) -> None:
        """Nothing to release."""


def _without_sigchld_check(loader: DataLoader) -> Iterator[Any]:
    """Return ``iter(loader)`` with this process's SIGCHLD handler as it was before.

    A multi-process DataLoader installs a SIGCHLD handler that raises ``RuntimeError`` in
    the main thread wherever it is when a worker dies: inside an SVI step, or inside the
    clean-up of a run folder, which it then left half removed (the hostile audit: 6 of 10
    runs ended in a traceback and hidden temporaries). Its iterator checks its workers
    itself while it waits for a minibatch (every 5 s), so without the handler a death is
    reported where the minibatch is asked for, which :meth:`StreamBatches.epoch_batches`
    turns into a :class:`~ppl_cvae.errors.WorkerDiedError`.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return iter(loader)
    before = signal.getsignal(signal.SIGCHLD)
    items = iter(loader)
    if before is not None:  # None: a handler set outside Python, which cannot be put back
        signal.signal(signal.SIGCHLD, before)
    return items


class StreamBatches:
    """``steps_per_epoch`` minibatches per epoch from an endless simulation stream.

    One DataLoader iterator serves the whole run: its ``num_workers`` processes simulate
    ahead (``prefetch_factor`` minibatches each) while the SVI steps run, and the epochs
    continue the stream where the previous one stopped. The minibatches, hence the fit, are
    the same for every ``num_workers`` (see :mod:`ppl_cvae.data.streaming`).

    Parameters
    ----------
    stream : SimulationStream
        Its ``position`` is advanced as minibatches are consumed (its ``state_dict`` then
        resumes after the last minibatch trained on).
    steps_per_epoch : int
        Minibatches per epoch, ``>= 1``.
    num_workers : int, default 0
        DataLoader worker processes; 0 simulates in this process between steps.
    conditional : bool, default True
        False drops ``y``.
    prefetch_factor : int, default 2
        Minibatches each worker simulates ahead.
    global_batch_size : int, optional
        In a data-parallel run where every rank streams its own share of each minibatch
        (``stream.rank`` of ``stream.world_size``): the size of the whole minibatch. The
        source is then :attr:`sharded`: its minibatches are this rank's shard already, and
        :attr:`pairs_per_epoch` counts the pairs of all ranks.

    Raises
    ------
    ConfigError
        If ``steps_per_epoch < 1``, ``num_workers < 0`` or above :func:`max_stream_workers`,
        or ``prefetch_factor < 1``.
    """

    def __init__(
        self,
        stream: SimulationStream,
        steps_per_epoch: int,
        *,
        num_workers: int = 0,
        conditional: bool = True,
        prefetch_factor: int = 2,
        global_batch_size: int | None = None,
    ) -> None:
        if steps_per_epoch < 1 or num_workers < 0 or prefetch_factor < 1:
            raise ConfigError(
                f"StreamBatches needs steps_per_epoch >= 1, num_workers >= 0 and "
                f"prefetch_factor >= 1, got {steps_per_epoch}, {num_workers}, {prefetch_factor}"
            )
        if num_workers > max_stream_workers():
            raise ConfigError(
                f"{num_workers} simulation workers is more than this machine can run "
                f"({max_stream_workers()}: {WORKERS_PER_CORE} per usable CPU core); use fewer"
            )
        self.stream, self.steps_per_epoch = stream, steps_per_epoch
        self.num_workers, self.conditional = num_workers, conditional
        self.prefetch_factor = prefetch_factor
        self.global_batch_size = global_batch_size
        self._items: Iterator[StreamItem] | None = None
        self._skip = 0  # minibatches of the next epoch already trained on (a resume)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def sharded(self) -> bool:
        """Whether each minibatch is this rank's shard of a data-parallel minibatch."""
        return self.global_batch_size is not None

    @property
    def pairs_per_epoch(self) -> int:
        """``steps_per_epoch`` times the (global) minibatch size."""
        return self.steps_per_epoch * (self.global_batch_size or self.stream.batch_size)

    def _iterator(self) -> Iterator[StreamItem]:
        if self._items is None:
            if self.num_workers == 0:
                self._items = iter(self.stream)
            else:
                loader = DataLoader(
                    self.stream,
                    batch_size=None,  # the stream yields whole minibatches
                    num_workers=self.num_workers,
                    prefetch_factor=self.prefetch_factor,
                    # the DataLoader draws its workers' base seed from this generator, not
                    # from the global RNG that drives the SVI steps (the stream ignores it)
                    generator=torch.Generator().manual_seed(self.stream.seed),
                )
                self._items = _without_sigchld_check(loader)
        return self._items

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield the next ``steps_per_epoch`` minibatches of the stream (fewer when resumed)."""
        items = self._iterator()
        skip, self._skip = self._skip, 0
        for _ in range(self.steps_per_epoch - skip):
            try:
                item = next(items)
            except (RuntimeError, ConnectionError, EOFError) as err:
                # DataLoader's words for a worker that died, or the pipe of a minibatch that
                # a dying worker was handing over
                if isinstance(err, RuntimeError) and "DataLoader worker" not in str(err):
                    raise
                workers = getattr(items, "_workers", [])
                for worker in workers:
                    if not worker.is_alive():
                        worker.join(timeout=1)  # reaped, so that its exit code is known
                ended = how_workers_ended([worker.exitcode for worker in workers])
                self.close()
                raise WorkerDiedError(
                    f"a simulation worker of the stream {ended} ({type(err).__name__}: "
                    f"{str(err).strip()}); fewer --workers need less memory"
                ) from None
            if isinstance(item, StreamFailure):  # a worker's simulation was refused
                self.close()
                raise item.error()
            x, y, index = item
            self.stream.position = int(index) + 1
            self._last = (x, y)
            yield x, (y if self.conditional else None)

    def close(self) -> None:
        """Stop the worker processes (a new iterator starts at the stream's position).

        The DataLoader's workers are shut down here rather than when its iterator is
        collected: where they were killed by a signal (a SIGTERM to the whole process group,
        as a scheduler or ``kill -- -PGID`` sends), DataLoader's SIGCHLD check raises during
        that shutdown, and from ``__del__`` at exit it printed an "Exception ignored"
        traceback after the command's own message.
        """
        items, self._items = self._items, None
        shutdown = getattr(items, "_shutdown_workers", None)  # the multi-process iterator
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError:  # "DataLoader worker (pid N) is killed by signal": gone already
                pass

    def state_dict(self) -> dict[str, Any]:
        """Return the stream's settings, its position and a digest of its last minibatch.

        Keys: ``kind`` (``"stream"``), ``seed``, ``batch_size`` (this rank's pairs per
        minibatch), ``rank``, ``world_size``, ``position`` (stream index of the next
        minibatch), ``steps_per_epoch`` and ``digest``
        (:func:`~ppl_cvae.train.resume.data_digest` of minibatch ``position - 1``, None
        before the first one): a resume draws that minibatch again and compares, which
        catches a simulator that changed since.
        """
        from ppl_cvae.train.resume import data_digest

        return {
            "kind": "stream",
            **self.stream.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "digest": None if self._last is None else data_digest(*self._last),
        }

    def resume(self, epoch: int, step: int, state: Mapping[str, Any]) -> int:
        """Continue the stream at minibatch ``step`` of 1-based ``epoch``.

        Minibatch ``step`` of epoch ``e`` is stream index ``(e - 1) * steps_per_epoch +
        step``: the stored position must be that index. Under torchrun every rank resumes
        from rank 0's state at the same index of its own stream.

        Returns
        -------
        int
            Pairs (this rank's) in the ``step`` minibatches skipped.

        Raises
        ------
        CheckpointError
            If the seed, minibatch size, world size or steps per epoch differ, the position
            is not the one of ``(epoch, step)``, or minibatch ``position - 1`` drawn again
            differs from the stored digest (the simulator changed).
        """
        from ppl_cvae.train.resume import data_digest

        if self._items is not None:
            raise CheckpointError("a stream that has started cannot resume another run")
        mine = self.state_dict()
        same_rank = state["rank"] == self.stream.rank  # ranks' shares may differ by one pair
        for key in ("seed", "batch_size", "world_size", "steps_per_epoch"):
            if state[key] != mine[key] and (key != "batch_size" or same_rank):
                raise _refuse(key, state[key], mine[key])
        position = (epoch - 1) * self.steps_per_epoch + step
        if state["position"] != position:
            raise _refuse(f"position (at epoch {epoch}, step {step})", state["position"], position)
        digest = state["digest"]
        if digest is not None and same_rank and position > 0:
            if data_digest(*self.stream.draw(position - 1)) != digest:
                raise CheckpointError(
                    f"stream minibatch {position - 1} drawn again differs from the one trained "
                    "on (the simulator changed since the training state was written); start "
                    "the run again"
                )
        self.stream.position, self._skip = position, step
        return step * self.stream.batch_size


class LazyFileBatches:
    """One pass per epoch over a file read in chunks (:func:`~ppl_cvae.data.lazy.shuffled_batches`).

    Parameters
    ----------
    pairs : LazyPairs
    batch_size, chunk_rows, buffer_chunks : int
    seed : int
        Epoch ``e`` shuffles with ``torch.Generator().manual_seed(batch_seed(seed, e))``, so
        an epoch's order depends only on the seed and its number (a resumed run repeats it).
    exclude : Tensor of int64, shape (k,)
        Sorted validation rows, never trained on.
    conditional : bool, default True
        False drops ``y``.
    moments : (RunningMoments, RunningMoments), optional
        Moments of ``x`` and ``y`` over the training rows (:func:`prepare_lazy_fit` sets
        them): stored in the training state and compared on resume, they show a file that
        changed.
    pairing : RunningMoments, optional
        Moments of :func:`~ppl_cvae.data.lazy.pairing_statistic` over the same rows, stored
        and compared with them: they show pairs of ``x`` and ``y`` that were mixed up.
    """

    def __init__(
        self,
        pairs: LazyPairs,
        *,
        batch_size: int,
        chunk_rows: int,
        buffer_chunks: int,
        seed: int,
        exclude: torch.Tensor,
        conditional: bool = True,
        moments: tuple[RunningMoments, RunningMoments] | None = None,
        pairing: RunningMoments | None = None,
    ) -> None:
        self.pairs, self.batch_size = pairs, batch_size
        self.chunk_rows, self.buffer_chunks = chunk_rows, buffer_chunks
        self.seed, self.exclude, self.conditional = seed, exclude, conditional
        self.moments = moments
        self.pairing = pairing
        self._skip = 0  # minibatches of the next epoch already trained on (a resume)

    @property
    def pairs_per_epoch(self) -> int:
        """Pairs of the file less the validation rows."""
        return self.pairs.num_pairs - int(self.exclude.numel())

    def epoch_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield every training pair once, in minibatches, chunk- and buffer-shuffled."""
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch))
        skip, self._skip = self._skip, 0
        for x, y in shuffled_batches(
            self.pairs,
            batch_size=self.batch_size,
            chunk_rows=self.chunk_rows,
            buffer_chunks=self.buffer_chunks,
            generator=generator,
            exclude=self.exclude,
            first_batch=skip,
        ):
            yield x, (y if self.conditional else None)

    def close(self) -> None:
        """Nothing to release: whoever opened the file closes it (fit may run again on it)."""

    def state_dict(self) -> dict[str, Any]:
        """Return what fixes the order of every epoch, and the file's moments.

        Keys: ``kind`` (``"lazy"``), ``num_pairs``, ``batch_size``, ``chunk_rows``,
        ``buffer_chunks``, ``seed``, ``exclude`` (SHA-256 of the validation row indices) and
        ``moments`` (``{"x": m, "y": m}``, and ``"pairing": m`` when known, with ``m`` =
        ``count``, ``mean``, ``m2`` as float64 tensors, or None; a state written before
        ``pairing`` existed has no such key and is compared without it). The position in the
        epoch is the training state's ``position``: epoch ``e`` shuffles with a generator
        seeded by ``batch_seed(seed, e)``.
        """
        from ppl_cvae.train.resume import data_digest

        moments = None
        if self.moments is not None:
            named = dict(zip(("x", "y"), self.moments, strict=True))
            if self.pairing is not None:
                named["pairing"] = self.pairing
            moments = {
                name: {"count": m.count, "mean": m.mean.clone(), "m2": m.m2.clone()}
                for name, m in named.items()
            }
        return {
            "kind": "lazy",
            "num_pairs": int(self.pairs.num_pairs),
            "batch_size": self.batch_size,
            "chunk_rows": self.chunk_rows,
            "buffer_chunks": self.buffer_chunks,
            "seed": self.seed,
            "exclude": data_digest(self.exclude, None),
            "moments": moments,
        }

    def resume(self, epoch: int, step: int, state: Mapping[str, Any]) -> int:
        """Continue at minibatch ``step`` of 1-based ``epoch`` without reading the earlier ones.

        Returns
        -------
        int
            Pairs in the ``step`` minibatches skipped.

        Raises
        ------
        CheckpointError
            If the file's size, the shuffle settings, the validation rows or the moments of
            ``x``, of ``y`` or of their pairing (compared exactly, when both sides have them)
            differ.
        """
        mine = self.state_dict()
        for key in ("num_pairs", "batch_size", "chunk_rows", "buffer_chunks", "seed", "exclude"):
            if state[key] != mine[key]:
                raise _refuse(key, state[key], mine[key])
        if state["moments"] is not None and mine["moments"] is not None:
            for name in ("x", "y", "pairing"):
                if name not in state["moments"] or name not in mine["moments"]:
                    continue  # a state written before the pairing moments
                got, have = state["moments"][name], mine["moments"][name]
                if not (
                    got["count"] == have["count"]
                    and torch.equal(got["mean"], have["mean"])
                    and torch.equal(got["m2"], have["m2"])
                ):
                    what = "the pairing of x and y" if name == "pairing" else name
                    raise CheckpointError(
                        f"the moments of {what} in {str(self.pairs.path)!r} differ from the "
                        "ones the training state recorded: the file changed since; start the "
                        "run again"
                    )
        self._skip = step
        return min(step * self.batch_size, self.pairs_per_epoch)


@dataclass
class LazyFit:
    """What :func:`prepare_lazy_fit` returns: the batches, the validation pairs, the scan.

    Attributes
    ----------
    batches : LazyFileBatches
    validation : tuple ``(x, y)``, or None when no rows are held out
    scan : ScanResult
        Moments of all pairs (for :func:`~ppl_cvae.train.build_cvae`'s ``standardisers``) and
        the random subset for the whitener.
    """

    batches: LazyFileBatches
    validation: tuple[torch.Tensor, torch.Tensor | None] | None
    scan: ScanResult


def prepare_lazy_fit(
    pairs: LazyPairs,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    chunk_rows: int,
    buffer_chunks: int = 4,
) -> LazyFit:
    """Make the one pass over a lazily read file that precedes training on it.

    Picks ``k = min(round(val_fraction N), MAX_VALIDATION_PAIRS)`` random validation rows
    (``torch.randperm(N)`` seeded with ``train_config.seed``, as
    :func:`~ppl_cvae.train.fit.validation_split` draws them in memory), and, when the model
    whitens ``x`` (``x_whitening="linear"``), the subset of at most ``MAX_WHITENING_PAIRS``
    training rows that :meth:`~ppl_cvae.models.cvae.CVAE.fit_whitener` would pick from the
    training pairs in memory; then reads the file once, in order, accumulating the moments of
    the training rows' ``x`` and ``y`` and keeping those rows. The validation rows are fitted
    by nothing, as in memory.

    Parameters
    ----------
    pairs : LazyPairs
    model_config, train_config : ModelConfig, TrainConfig
    chunk_rows : int
        Pairs read at a time (see :func:`~ppl_cvae.data.lazy.chunk_rows_for`).
    buffer_chunks : int, default 4
        Chunks shuffled together during training.

    Returns
    -------
    LazyFit

    Raises
    ------
    ConfigError
        If ``chunk_rows`` or ``buffer_chunks`` is below 1, or no training pairs are left.
    ResourceError
        If the validation rows and the whitening subset do not fit in memory.
    """
    if chunk_rows < 1 or buffer_chunks < 1:
        raise ConfigError(
            f"chunk_rows and buffer_chunks must be >= 1, got {chunk_rows}, {buffer_chunks}"
        )
    n = pairs.num_pairs
    n_val = min(int(round(train_config.val_fraction * n)), MAX_VALIDATION_PAIRS)
    if n - n_val < 1:
        raise ConfigError(f"no training pairs left after holding out {n_val} of {n}")
    # the permutation of validation_split: the in-memory fit's validation and training rows
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(train_config.seed))
    val_rows, train_rows = perm[:n_val].sort().values, perm[n_val:]
    subset_rows = None
    if model_config.x_whitening == "linear" or model_config.basis_dim is not None:
        if len(train_rows) > MAX_WHITENING_PAIRS:  # the rows CVAE.fit_whitener draws
            keep = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(0))
            train_rows = train_rows[keep[:MAX_WHITENING_PAIRS]]
        subset_rows = train_rows.sort().values
    kept = n_val + (0 if subset_rows is None else int(subset_rows.numel()))
    # a chunk holds at most the whole file, and the shuffle buffer at most every pair
    rows = min(chunk_rows, n)
    buffered = min(buffer_chunks * rows, n) + 2 * rows
    check_memory(
        kept * pairs.row_bytes * 2 + buffered * pairs.row_bytes * 3,
        f"{kept} validation/whitening pairs and {buffer_chunks} chunks of {rows} pairs",
        hint="lower --val-fraction or the chunk size",
    )
    scan = scan_pairs(
        pairs, chunk_rows=chunk_rows, validation_rows=val_rows, subset_rows=subset_rows
    )
    conditional = model_config.conditional
    batches = LazyFileBatches(
        pairs,
        batch_size=train_config.batch_size,
        chunk_rows=chunk_rows,
        buffer_chunks=buffer_chunks,
        seed=train_config.seed,
        exclude=val_rows,
        conditional=conditional,
        moments=(scan.x_moments, scan.y_moments),
        pairing=scan.pairing,
    )
    vx, vy = scan.validation
    validation = (vx, vy if conditional else None) if n_val else None
    return LazyFit(batches, validation, scan)


def build_lazy_cvae(
    config: ModelConfig,
    lazy: LazyFit,
    *,
    problem: Problem | None = None,
    seed: int | None = 0,
) -> CVAE:
    """Build a CVAE for a lazily read file (:func:`~ppl_cvae.train.build_cvae` on its scan).

    The standardisers take the moments of the file's training pairs; the basis coefficients
    and the linear whitener (when configured) are fitted on the random subset of training
    pairs the scan kept, the one the in-memory path would use (at most
    ``MAX_WHITENING_PAIRS`` pairs).

    Parameters
    ----------
    config : ModelConfig
    lazy : LazyFit
        From :func:`prepare_lazy_fit` with the same ``config``.
    problem : Problem, optional
        As in :func:`~ppl_cvae.train.build_cvae`.
    seed : int or None, default 0
        Seed of the weight initialisation.

    Returns
    -------
    CVAE
    """
    from ppl_cvae.train.fit import build_cvae  # fit imports this module

    scan = lazy.scan
    if scan.subset is not None:
        x, y = scan.subset
    else:  # only the shapes are checked: any two pairs do
        x, y = lazy.batches.pairs.read(0, 2)
    standardisers = (scan.x_moments.standardiser("x"), scan.y_moments.standardiser("y"))
    return build_cvae(
        config,
        x,
        y if config.conditional else None,
        problem=problem,
        seed=seed,
        standardisers=standardisers,
        training_x_range=(scan.x_moments.low, scan.x_moments.high),
    )


def prepare_lazy_model(
    pairs: LazyPairs,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    chunk_bytes: int,
    buffer_chunks: int = 4,
    problem: Problem | None = None,
) -> tuple[CVAE, LazyFit]:
    """Scan a lazily read file and build its model: what ``fit --data FILE --lazy`` trains.

    :func:`prepare_lazy_fit` with chunks of at most ``chunk_bytes`` bytes
    (:func:`~ppl_cvae.data.lazy.chunk_rows_for`), then :func:`build_lazy_cvae` seeded with
    ``train_config.seed``. Train with ``fit(cvae, None, None, train_config,
    batches=lazy.batches, validation=lazy.validation)``.

    Returns
    -------
    cvae : CVAE
    lazy : LazyFit
    """
    from ppl_cvae.data.lazy import chunk_rows_for

    lazy = prepare_lazy_fit(
        pairs,
        model_config,
        train_config,
        chunk_rows=chunk_rows_for(pairs, chunk_bytes),
        buffer_chunks=buffer_chunks,
    )
    cvae = build_lazy_cvae(model_config, lazy, problem=problem, seed=train_config.seed)
    return cvae, lazy


def steps_for(num_pairs: int, batch_size: int) -> int:
    """Return ``ceil(num_pairs / batch_size)``, the SVI steps of one epoch."""
    return math.ceil(num_pairs / batch_size)
