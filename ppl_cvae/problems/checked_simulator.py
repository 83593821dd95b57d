"""A problem's simulator with its output checked: a user's ``simulate`` is untrusted input.

``fit`` draws training pairs from ``problem.simulate(num, generator)``: once for the
standardisers (and the pairs in memory), every epoch with ``--resimulate``, every minibatch
with ``--stream`` (in DataLoader worker processes with ``--workers``). A user's problem may
return anything there: NumPy arrays, float64 or integer tensors, too few rows, the wrong event
shape, NaN or inf, or raise. :class:`CheckedSimulator` turns each of these into one
:class:`~ppl_cvae.errors.DataError` (a :class:`~ppl_cvae.errors.ShapeError` for too few rows
or the wrong event shape, a :class:`~ppl_cvae.errors.ConfigError` for an exception raised by
the simulator) that names the problem, the call and what was expected,
instead of a traceback from deep inside the SVI step or a "training diverged" that blames
the learning rate. Real dtypes other than float32, integers and booleans are cast to float32,
as for data files (:mod:`ppl_cvae.data.io`).

The check costs one ``isfinite`` pass over each minibatch, small against simulating it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ppl_cvae.errors import (
    ConfigError,
    DataError,
    PplCvaeError,
    ShapeError,
    exception_summary,
    no_exit,
)

__all__ = ["CheckedSimulator", "check_simulated", "guarded_global_rngs"]

Simulate = Callable[[int, Any], Any]


@contextlib.contextmanager
def guarded_global_rngs() -> Iterator[None]:
    """Keep torch's global CPU RNG stream a function of the run's seed across the block.

    A user's simulator is handed a seeded ``torch.Generator``; one that also calls
    ``torch.manual_seed(0)`` would otherwise reset the global stream that Pyro's SVI (and
    anything else after it) draws from, so every later draw would depend on the simulator's
    constant instead of ``--seed``. When the block leaves the state changed, it is reseeded
    from a SHA-256 hash of the states before and after the block: a function of the stream
    the run had (so of ``--seed``) that also moves on after a simulator which merely drew
    from it. A block that does not touch it leaves it exactly as it was (the draws of a
    well-behaved simulator's fit are unchanged). Cost: two copies of the 5 KB state and a
    comparison, about 30 us (1 thread, loaded machine). NumPy's global RNG is not guarded:
    nothing in ppl_cvae draws from it. A simulator reseeding a GPU generator is not guarded
    either.

    Examples
    --------
    >>> def reseeding():
    ...     with guarded_global_rngs():
    ...         _ = torch.manual_seed(0)
    ...     return torch.rand(1)
    >>> _ = torch.manual_seed(1); a = reseeding()
    >>> _ = torch.manual_seed(2); b = reseeding()
    >>> bool(torch.equal(a, b))
    False
    """
    before = torch.random.get_rng_state().numpy().tobytes()
    try:
        yield
    finally:
        after = torch.random.get_rng_state().numpy().tobytes()
        if after != before:
            digest = hashlib.sha256(before + after).digest()
            torch.random.default_generator.manual_seed(int.from_bytes(digest[:8], "little"))


def check_simulated(
    out: Any,
    num: int,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...] | None,
    source: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check and return what a simulator returned for ``num`` pairs.

    Parameters
    ----------
    out : Any
        The simulator's return value; expected a pair ``(x, y)`` of tensors, ``y`` None when
        ``y_shape`` is None (prior draws only).
    num : int
        Pairs asked for.
    x_shape, y_shape : tuple of int (y_shape may be None)
        Event shapes of one ``x`` and one ``y``.
    source : str
        What simulated, for the messages (e.g. ``"problem 'mine' simulate(64, generator)"``).

    Returns
    -------
    x : Tensor, shape (num, *x_shape), float32
    y : Tensor, shape (num, *y_shape), float32, or None

    Raises
    ------
    DataError
        If ``out`` is not a pair, an element is not a tensor, is complex, sparse or on the
        meta device, or holds NaN or inf (after the cast to float32). A tensor on another
        device (a GPU) is moved to the CPU.
    ShapeError
        If an element's shape is not ``(num, *event_shape)``.

    Examples
    --------
    >>> x, y = check_simulated((torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 1)),
    ...                        3, (2,), (1,), "demo")
    >>> x.dtype, tuple(y.shape)
    (torch.float32, (3, 1))
    """
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        what = f"a {type(out).__name__}" + (
            f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""
        )
        raise DataError(f"{source} returned {what}; expected a pair (x, y) of torch tensors")
    checked: list[torch.Tensor | None] = []
    for name, value, shape in (("x", out[0], x_shape), ("y", out[1], y_shape)):
        if shape is None:
            checked.append(None)
            continue
        if not isinstance(value, torch.Tensor):
            raise DataError(
                f"{source} returned {name} as a {type(value).__module__}."
                f"{type(value).__name__}; expected a torch.Tensor (wrap it in torch.as_tensor)"
            )
        if value.is_complex():
            raise DataError(
                f"{source} returned {name} of dtype {value.dtype} (complex numbers); expected "
                "real numbers (float32, or a real, integer or bool dtype, cast to float32)"
            )
        if value.layout != torch.strided or value.device.type == "meta":
            what = "on the meta device (no values)" if value.device.type == "meta" else (
                f"of layout {value.layout}"
            )
            raise DataError(
                f"{source} returned {name} as a tensor {what}; expected a dense tensor with "
                "values (call .to_dense() or simulate on the CPU)"
            )
        expected = (num, *shape)
        if tuple(value.shape) != expected:
            raise ShapeError(
                f"{source} returned {name} of shape {tuple(value.shape)}; expected {expected} "
                f"({num} pairs of event shape {tuple(shape)})"
            )
        # a tensor on another device (a GPU simulator) is moved to the CPU, where data live
        value = value.detach().to("cpu", torch.float32)
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            rows = int((~finite).flatten(1).any(1).sum())
            raise DataError(
                f"{source} returned {bad} NaN or inf values in {name} (in {rows} of {num} pairs, "
                "after casting to float32); fix the simulator or drop those draws inside it"
            )
        checked.append(value)
    x, y = checked
    assert x is not None  # x_shape is never None
    return x, y


class CheckedSimulator:
    """A simulator ``(num, generator) -> (x, y)`` whose every output is checked.

    Parameters
    ----------
    simulate : callable
        ``simulate(num, generator)``, e.g. ``problem.simulate`` or
        :func:`~ppl_cvae.train.generative_prior.prior_simulator` (``y`` None).
    x_shape, y_shape : tuple of int (y_shape may be None)
        Event shapes of one ``x`` and one ``y`` (None: the simulator returns ``(x, None)``).
    source : str
        The problem, for the messages, e.g. ``"problem 'mine'"``.

    Notes
    -----
    Picklable when ``simulate`` is (it is copied into DataLoader workers under ``spawn``).

    Examples
    --------
    >>> from ppl_cvae.problems.linear_gaussian import LinearGaussian
    >>> p = LinearGaussian()
    >>> sim = CheckedSimulator(p.simulate, p.x_shape, p.y_shape, "problem 'linear_gaussian'")
    >>> x, y = sim(4, torch.Generator().manual_seed(0))
    >>> tuple(x.shape), tuple(y.shape)
    ((4, 2), (4, 2))
    """

    def __init__(
        self,
        simulate: Simulate,
        x_shape: tuple[int, ...],
        y_shape: tuple[int, ...] | None,
        source: str,
    ) -> None:
        self.simulate = simulate
        self.x_shape = tuple(x_shape)
        self.y_shape = None if y_shape is None else tuple(y_shape)
        self.source = source

    def __call__(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Simulate ``num`` pairs; shapes ``(num, *x_shape)`` and ``(num, *y_shape)``, float32.

        The call runs inside :func:`guarded_global_rngs`: a simulator that reseeds torch's
        global RNG (``torch.manual_seed(0)`` inside ``simulate``) does not make the SVI draws
        that follow independent of the run's seed.

        Raises
        ------
        ConfigError
            If the simulator raises (its exception type and message are named) or calls
            ``sys.exit``.
        DataError
            If what it returns is not pairs of finite real tensors (:func:`check_simulated`).
        ShapeError
            If they are not ``num`` pairs of the event shapes (:func:`check_simulated`).
        """
        call = f"{self.source} simulate({num}, generator)"
        try:
            with no_exit(call), guarded_global_rngs():
                out = self.simulate(num, generator)
        except PplCvaeError:
            raise
        except Exception as err:  # noqa: BLE001 - a user's simulator may raise anything
            why = exception_summary(err)
            if isinstance(err, StopIteration):  # an exhausted iterator inside the simulator
                why += " (an iterator ran out: simulate must give new pairs on every call)"
            raise ConfigError(f"{call} failed: {why}") from err
        return check_simulated(out, num, self.x_shape, self.y_shape, call)

    def is_reproducible(self, num: int = 2, seed: int = 0) -> bool:
        """Return whether two calls with equally seeded generators give the same pairs.

        A simulator that draws from another RNG than the generator it is given (NumPy's
        global one, ``torch.randn`` without ``generator=``) makes a fit depend on more than
        its seed: the stream differs for each ``--workers`` and ``--resume`` refuses to
        continue it (the replayed minibatch differs).
        """
        first = self(num, torch.Generator().manual_seed(seed))
        second = self(num, torch.Generator().manual_seed(seed))
        return all(
            (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
            for a, b in zip(first, second, strict=True)
        )
