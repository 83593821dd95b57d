"""An endless stream of fresh simulated minibatches, reproducible and split across workers/ranks.

:class:`SimulationStream` is a :class:`torch.utils.data.IterableDataset` that calls a
simulator ``(num, generator) -> (x, y)`` (e.g. :meth:`~ppl_cvae.problems.base.Problem.simulate`)
once per minibatch, each time with a ``torch.Generator`` seeded for that minibatch alone. Every
minibatch has a *stream index* ``i = 0, 1, 2, ...`` (per rank) and a *global index*
``g = i * world_size + rank``; its seed is a bijection of ``g`` (see :func:`batch_seed`). So:

- no two minibatches of one run share a seed, whatever the rank, the worker or the number of
  workers (until ``2**32`` minibatches, the seed space of torch's CPU generator);
- the stream of a rank is the same sequence of minibatches with 0, 1 or ``k`` DataLoader
  workers: worker ``w`` of ``k`` draws the indices ``i = position + w, position + w + k, ...``
  and :class:`torch.utils.data.DataLoader` hands the workers' outputs back in turn (its default
  in-order delivery), so the DataLoader yields ``i = position, position + 1, ...``;
- the position of a stream is one integer (:meth:`SimulationStream.state_dict`): a resumed run
  continues with the next minibatch, with any number of workers.

Minibatches rather than single pairs: the simulators are vectorised over a leading batch axis
(one call for 256 pairs costs about as much as a few single calls), one seeded generator per
minibatch costs one seeding per SVI step instead of one per pair, and a worker sends one pair of
tensors per step through shared memory instead of 256 pickled pairs to collate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ppl_cvae.checks import as_seed
from ppl_cvae.errors import ConfigError, PplCvaeError

__all__ = ["SimulationStream", "StreamFailure", "batch_seed"]

Simulator = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

# One item of the stream: x (batch_size, *x_shape), y (batch_size, *y_shape) and the stream
# index of the minibatch.
StreamItem = tuple[torch.Tensor, torch.Tensor, int]

_MASK32 = 0xFFFFFFFF


class StreamFailure:
    """What a DataLoader worker yields instead of a minibatch whose simulation was refused.

    A :class:`~ppl_cvae.errors.PplCvaeError` raised in a worker process would reach the
    consumer re-raised by the DataLoader with the worker's whole traceback in its message;
    the worker yields this instead and the consumer raises :meth:`error` (one line).

    Parameters
    ----------
    error : PplCvaeError
        The refusal (for example of :class:`~ppl_cvae.problems.checked_simulator.CheckedSimulator`).
    index : int
        Stream index of the minibatch.
    """

    def __init__(self, error: PplCvaeError, index: int) -> None:
        self.kind = type(error)
        self.message = str(error)
        self.index = index

    def error(self) -> PplCvaeError:
        """Return the refusal to raise in the consumer, naming the minibatch."""
        return self.kind(f"{self.message} (stream minibatch {self.index}, in a worker)")


def _fmix32(value: int) -> int:
    """Return MurmurHash3's 32-bit finaliser of ``value``: a bijection of [0, 2**32)."""
    value &= _MASK32
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & _MASK32
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & _MASK32
    value ^= value >> 16
    return value


def batch_seed(seed: int, global_index: int) -> int:
    """Return the torch seed of the minibatch with global index ``global_index`` of run ``seed``.

    ``fmix32((offset(seed) + global_index) mod 2**32)``, where ``offset(seed)`` is a 32-bit
    word of ``numpy.random.SeedSequence(seed)`` and ``fmix32`` the finaliser of MurmurHash3.
    Both steps are bijections of the global index, so the first ``2**32`` minibatches of a run
    get distinct seeds (torch's CPU generator keeps only 32 bits of a seed, so a hash of
    ``(seed, index)`` would repeat one among ``n`` minibatches with probability about
    ``n**2 / 2**33``); the finaliser scatters consecutive indices over the seed space.

    Parameters
    ----------
    seed : int
        Seed of the run, in ``[0, 2**32 - 1]``.
    global_index : int
        ``stream_index * world_size + rank``, ``>= 0``.

    Returns
    -------
    int
        A seed in ``[0, 2**32)`` for ``torch.Generator.manual_seed``.

    Raises
    ------
    ConfigError
        If ``seed`` is not an int in ``[0, 2**32 - 1]`` (:func:`~ppl_cvae.checks.as_seed`) or
        ``global_index`` is negative.

    References
    ----------
    O'Neill (2015), PCG: A Family of Simple Fast Space-Efficient Statistically Good Algorithms
    for Random Number Generation (the seed sequence numpy implements); Appleby (2011),
    MurmurHash3, the ``fmix32`` finaliser.

    Examples
    --------
    >>> len({batch_seed(0, g) for g in range(1000)})
    1000
    """
    seed = as_seed(seed, optional=False)
    if isinstance(global_index, bool) or not isinstance(global_index, int) or global_index < 0:
        raise ConfigError(f"batch_seed expects global_index >= 0, got {global_index!r}")
    offset = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
    return _fmix32(offset + global_index)


class SimulationStream(IterableDataset[StreamItem]):
    """Endless stream of fresh minibatches ``(x, y, index)`` drawn by a simulator.

    Parameters
    ----------
    simulator : callable ``(num, generator) -> (x, y)``
        Draws ``num`` pairs, ``x`` of shape ``(num, *x_shape)`` and ``y`` of shape
        ``(num, *y_shape)``, using only ``generator`` for its randomness (as
        :meth:`~ppl_cvae.problems.base.Problem.simulate` does). With DataLoader workers it is
        copied into each worker process (forked, or pickled under the spawn start method).
    batch_size : int
        Pairs per minibatch, ``>= 1``.
    seed : int, default 0
        Seed of the run, in ``[0, 2**32 - 1]``.
    rank : int, default 0
        This process's rank in ``[0, world_size)`` (``torch.distributed``).
    world_size : int, default 1
        Number of processes that each train on their own stream.
    position : int, default 0
        Stream index of the next minibatch.

    Attributes
    ----------
    position : int
        Stream index of the next minibatch to be consumed. Iterating the stream in this
        process advances it; with DataLoader workers the consumer sets it
        (:class:`~ppl_cvae.train.sources.StreamBatches` does), since the workers iterate
        copies.

    Raises
    ------
    ConfigError
        If ``batch_size < 1``, ``seed`` is outside ``[0, 2**32 - 1]``, ``world_size < 1``,
        ``rank`` is outside ``[0, world_size)`` or ``position < 0``.

    Notes
    -----
    Minibatch ``i`` of rank ``r`` is ``simulator(batch_size, torch.Generator().manual_seed(s))``
    with ``s = batch_seed(seed, i * world_size + r)``. Under DataLoader worker ``w`` of ``k``
    the stream draws ``i = position + w + j k`` for ``j = 0, 1, ...``; each worker's torch
    thread count is set to 1 by the DataLoader.

    Examples
    --------
    >>> from ppl_cvae.problems import make_problem
    >>> stream = SimulationStream(make_problem("linear_gaussian").simulate, 4, seed=1)
    >>> x, y, index = next(iter(stream))
    >>> tuple(x.shape), index, stream.position
    ((4, 2), 0, 1)
    """

    def __init__(
        self,
        simulator: Simulator,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
    ) -> None:
        super().__init__()
        seed = as_seed(seed, optional=False)  # every seed of the package: one check, one message
        checks = [
            ("batch_size", batch_size, batch_size >= 1, ">= 1"),
            ("world_size", world_size, world_size >= 1, ">= 1"),
            ("rank", rank, 0 <= rank < world_size, f"in [0, {world_size})"),
            ("position", position, position >= 0, ">= 0"),
        ]
        for name, value, ok, expected in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not ok:
                raise ConfigError(
                    f"SimulationStream {name}={value!r}; expected an integer {expected}"
                )
        self.simulator = simulator
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = position

    def seed_of(self, index: int) -> int:
        """Return the torch seed of minibatch ``index`` (a stream index) of this rank."""
        return batch_seed(self.seed, index * self.world_size + self.rank)

    def draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Simulate minibatch ``index``: ``x`` ``(batch_size, *x_shape)``, ``y`` likewise."""
        generator = torch.Generator().manual_seed(self.seed_of(index))
        return self.simulator(self.batch_size, generator)

    def __iter__(self) -> Iterator[StreamItem]:
        """Yield ``(x, y, index)`` forever; this worker's share of the indices from ``position``.

        In a DataLoader worker a :class:`~ppl_cvae.errors.PplCvaeError` of the simulator is
        yielded as a :class:`StreamFailure` (and the worker stops); in this process it is
        raised.
        """
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        index = self.position + worker
        while True:
            if info is None:
                x, y = self.draw(index)
                self.position = index + 1
            else:
                try:
                    x, y = self.draw(index)
                except PplCvaeError as err:  # hand it to the consumer as one line
                    yield StreamFailure(err, index)  # type: ignore[misc]
                    return
            yield x, y, index
            index += num_workers

    def state_dict(self) -> dict[str, int]:
        """Return the stream's settings and position (plain ints, JSON-serialisable)."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of the same stream.

        Raises
        ------
        ConfigError
            If ``state`` lacks a key, its position is not an integer ``>= 0``, or its seed,
            batch size, rank or world size differ from this stream's (the minibatches would
            not continue the recorded stream).
        """
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ConfigError(f"stream state lacks {missing}; expected keys {sorted(expected)}")
        for key in ("seed", "batch_size", "rank", "world_size"):
            if state[key] != expected[key]:
                raise ConfigError(
                    f"stream state has {key}={state[key]!r} but this stream has "
                    f"{key}={expected[key]!r}; build the stream with the recorded settings"
                )
        position = state["position"]
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ConfigError(f"stream state position={position!r}; expected an integer >= 0")
        self.position = position
