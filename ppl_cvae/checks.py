"""Argument checks of the Python API's entry points: arrays, counts, sample shapes, seeds.

A notebook hands the public functions (:class:`inference.posterior.CVAEPosterior`,
:func:`inference.posterior.draw_posterior`, :func:`inference.importance.importance_sample`,
:func:`inference.mcmc.nuts_sample`, ...) whatever it has at hand: a NumPy array or a Python
list for an observation, a float64 or integer tensor, a NumPy integer for a count, a negative
number for a seed. These helpers turn what sbi and Pyro accept into the tensors and ints the
networks need (real arrays and lists cast to float32, as data files are in
:mod:`ppl_cvae.data.io`) and refuse the rest with one of the package's errors naming the
argument, what arrived and what was expected, instead of a torch or NumPy error from deep
inside a matrix product or an RNG.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import reprlib
from collections.abc import Iterator
from typing import Any, Literal, overload

import numpy as np
import torch

from ppl_cvae._choices import MAX_COUNT, MAX_SEED
from ppl_cvae.errors import ConfigError, DataError, ShapeError

__all__ = [
    "MAX_COUNT",
    "MAX_SEED",
    "as_count",
    "as_probability",
    "as_real_tensor",
    "as_sample_shape",
    "as_seed",
    "check_finite",
    "check_type",
    "derived_seed",
    "reshape_hint",
    "resolve_seed",
    "seeded_rng",
    "check_problem_matches",
    "shape_mismatch",
    "shape_text",
]



def shape_text(lead: str, event_shape: Any) -> str:
    """Return a shape with leading axes for a message: ``shape_text("N", (8,))`` is ``"(N, 8)"``.

    Parameters
    ----------
    lead : str
        The leading axes as written, e.g. ``"N"``, ``"M, S"`` or ``"*batch"``.
    event_shape : sequence of int
        The event shape that follows them (empty for a scalar event).

    Examples
    --------
    >>> shape_text("N", (8,)), shape_text("M >= 1", (2, 3)), shape_text("S", ())
    ('(N, 8)', '(M >= 1, 2, 3)', '(S,)')
    """
    parts = [lead, *(str(int(v)) for v in event_shape)]
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def reshape_hint(shape: Any, event_shape: Any, name: str = "y", rows: str = "observations") -> str:
    """Return the reshape that turns an array of ``shape`` into ``event_shape`` rows, or "".

    For a message that refuses ``shape``: a flat vector of ``M`` scalar rows where
    ``event_shape`` is ``(1,)`` (sbi's ``x_o`` of a one-datum simulator, ``theta`` of one
    parameter), observations stored as columns (``(m, M)`` for ``event_shape`` ``(m,)``), one
    row with its two axes swapped (a transpose, not a reshape), or one row of the right size
    in another shape. ``name`` is the array's name
    in the hint and ``rows`` what its rows are.

    Examples
    --------
    >>> reshape_hint((3,), (1,))
    '; for 3 observations of one value each pass y.reshape(-1, 1)'
    >>> reshape_hint((2, 3), (6,)), reshape_hint((5,), (2,), "x", "models")
    ('; for one observation pass y.reshape(6)', '')
    >>> reshape_hint((7, 3), (7,))
    '; for 3 observations stored as columns pass y.T'
    >>> reshape_hint((7, 3), (3, 7))  # doctest: +ELLIPSIS
    '; for one observation with its two axes swapped pass y.T (y.reshape(3, 7) would...'
    """
    shape, event_shape = tuple(int(v) for v in shape), tuple(int(v) for v in event_shape)
    if len(shape) == 1 and event_shape == (1,) and shape[0] > 0:
        return f"; for {shape[0]} {rows} of one value each pass {name}.reshape(-1, 1)"
    if len(shape) == 2 and event_shape == (shape[0],) and shape[1] not in (0, shape[0]):
        return f"; for {shape[1]} {rows} stored as columns pass {name}.T"
    if len(shape) == 2 and shape[0] != shape[1] and event_shape == shape[::-1]:
        one = rows[:-1] if rows.endswith("s") else rows
        return (
            f"; for one {one} with its two axes swapped pass {name}.T ({name}.reshape"
            f"({', '.join(map(str, event_shape))}) would scramble its values)"
        )
    if math.prod(shape) == math.prod(event_shape):
        one = rows[:-1] if rows.endswith("s") else rows
        return f"; for one {one} pass {name}.reshape({', '.join(map(str, event_shape))})"
    return ""


def _is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (Python, NumPy or a 0-d integer tensor), bool excluded."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() and (
            value.dtype != torch.bool
        )
    return isinstance(value, numbers.Integral)


def as_count(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as a Python int of at least ``minimum`` and at most :data:`MAX_COUNT`.

    Parameters
    ----------
    value : int, NumPy integer or 0-d integer tensor
        The count.
    name : str
        The argument, for the message (e.g. ``"num_samples"``).
    minimum : int, default 1
        Smallest valid value.

    Returns
    -------
    int

    Raises
    ------
    ConfigError
        If ``value`` is not an integer (a float, a bool, a string, a tuple), is below
        ``minimum`` or above :data:`MAX_COUNT` (``2**63 - 1``).

    Examples
    --------
    >>> as_count(np.int64(5), "num_samples")
    5
    >>> try:
    ...     as_count(2.5, "num_samples")
    ... except ConfigError as err:
    ...     print(err)
    num_samples must be an int >= 1, got 2.5 (float)
    """
    if not _is_integer(value):
        hint = ""
        if isinstance(value, (tuple, list, torch.Size)):
            hint = "; a sample shape such as (n,) goes to CVAEPosterior.sample"
        raise ConfigError(
            f"{name} must be an int >= {minimum}, got {reprlib.repr(value)} "
            f"({type(value).__name__}){hint}"
        )
    count = int(value)
    if count < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {count}")
    if count > MAX_COUNT:
        raise ConfigError(
            f"{name} must be an int in [{minimum}, 2**63 - 1] (a 64-bit count), got "
            f"{reprlib.repr(count)}"
        )
    return count


def as_sample_shape(value: Any, name: str = "sample_shape") -> tuple[int, ...]:
    """Return a sample shape as a tuple of non-negative ints (an int ``n`` is ``(n,)``).

    sbi's and torch.distributions' convention: ``sample((n,))`` draws ``n``; ``()`` draws one
    without a sample axis.

    Raises
    ------
    ConfigError
        If ``value`` is not an int or a sequence of ints, or an entry is negative.

    Examples
    --------
    >>> as_sample_shape(5), as_sample_shape(torch.Size([2, 3])), as_sample_shape(())
    ((5,), (2, 3), ())
    """
    if _is_integer(value):
        value = (value,)
    if not isinstance(value, (tuple, list, torch.Size)) or not all(
        _is_integer(v) and int(v) >= 0 for v in value
    ):
        raise ConfigError(
            f"{name} must be a tuple of ints >= 0 such as (1000,), got {reprlib.repr(value)}"
        )
    return tuple(int(v) for v in value)


@overload
def as_seed(value: Any, name: str = ..., *, optional: Literal[True] = ...) -> int | None: ...


@overload
def as_seed(value: Any, name: str = ..., *, optional: Literal[False]) -> int: ...


def as_seed(value: Any, name: str = "seed", *, optional: bool = True) -> int | None:
    """Return a seed as a Python int in ``[0, 2**32 - 1]`` (None stays None where optional).

    The one check of every seed the package takes: the command line's ``--seed``,
    :class:`~ppl_cvae.config.TrainConfig`, the samplers, the calibration diagnostics and the
    simulation streams, so that a seed accepted by one is accepted by all, refused with the
    same message. The range is NumPy's, which Pyro's ``set_rng_seed`` also seeds. Streams
    derived from one seed (chain ``c``, observation ``m``) take :func:`derived_seed`, which
    stays in the range for every valid seed.

    Parameters
    ----------
    value : int, NumPy integer, 0-d integer tensor or None
        The seed.
    name : str, default "seed"
        The argument, for the message.
    optional : bool, default True
        Whether None (unseeded) is accepted.

    Returns
    -------
    int or None

    Raises
    ------
    ConfigError
        If ``value`` is not an integer (None where not ``optional``) or is outside
        ``[0, 2**32 - 1]``.

    Examples
    --------
    >>> as_seed(np.int64(7)), as_seed(None)
    (7, None)
    >>> try:
    ...     as_seed(2**32)
    ... except ConfigError as err:
    ...     print(err)
    seed must be an int in [0, 2**32 - 1], got 4294967296 (int)
    """
    if value is None and optional:
        return None
    if not _is_integer(value) or not 0 <= int(value) <= MAX_SEED:
        raise ConfigError(
            f"{name} must be an int in [0, 2**32 - 1], got {reprlib.repr(value)} "
            f"({type(value).__name__})"
        )
    return int(value)


def check_type(value: Any, expected: type, name: str, hint: str = "") -> Any:
    """Return ``value`` if it is an instance of ``expected``; else raise a ConfigError naming it.

    The public functions that take a model, a configuration or a problem object call it first,
    so a wrong argument (a dict for a :class:`~ppl_cvae.config.TrainConfig`, arguments in the
    wrong order) is one line naming the argument instead of an AttributeError deep inside.

    Parameters
    ----------
    value : object
        The argument.
    expected : type
        The class it must be an instance of.
    name : str
        The argument, for the message (e.g. ``"fit()'s config"``).
    hint : str, default ""
        What to do, appended after a semicolon.

    Returns
    -------
    object
        ``value``, unchanged.

    Raises
    ------
    ConfigError
        If ``value`` is not an instance of ``expected``.

    Examples
    --------
    >>> try:
    ...     check_type({"num_epochs": 1}, int, "the count", "pass an int")
    ... except ConfigError as err:
    ...     print(err)
    the count must be an int, got a dict; pass an int
    """
    if not isinstance(value, expected):
        got = "None" if value is None else f"a {type(value).__name__}"
        article = "an" if expected.__name__[:1] in "AEIOUaeiou" else "a"
        raise ConfigError(
            f"{name} must be {article} {expected.__name__}, got {got}"
            + (f"; {hint}" if hint else "")
        )
    return value


def resolve_seed(value: Any, name: str = "seed") -> int:
    """Return ``value`` checked as a seed, or for None one drawn from torch's global RNG.

    A sampler given no seed still runs on a seed it can record: the file's ``seed`` attribute
    then reproduces its draws when passed back, and ``torch.manual_seed`` (or
    ``pyro.set_rng_seed``) before the call reproduces them too, as for any Pyro code that
    draws from the global RNG.

    Parameters
    ----------
    value : int, NumPy integer, 0-d integer tensor or None
        The seed, or None.
    name : str, default "seed"
        The argument, for the message.

    Returns
    -------
    int
        In ``[0, 2**32 - 1]``.

    Raises
    ------
    ConfigError
        As :func:`as_seed`.

    Examples
    --------
    >>> _ = torch.manual_seed(3)
    >>> first = resolve_seed(None)
    >>> _ = torch.manual_seed(3)
    >>> resolve_seed(None) == first, resolve_seed(7)
    (True, 7)
    """
    seed = as_seed(value, name)
    if seed is None:
        seed = int(torch.randint(MAX_SEED + 1, (), dtype=torch.int64))
    return seed


@contextlib.contextmanager
def seeded_rng(seed: int | None) -> Iterator[None]:
    """Run the block on torch's global RNGs seeded ``seed``, restored afterwards.

    ``torch.manual_seed`` seeds the CPU RNG and that of every CUDA device; both are forked
    (CUDA's once CUDA is initialised), so the caller's streams continue as if the block had
    not run: a training loop that takes a seeded draw every epoch keeps shuffling differently
    each epoch. NumPy's and Python's RNGs are not touched.

    With ``seed=None`` the block draws from the global RNG as it stands and advances it, as
    any torch call does: two unseeded calls draw different values (a forked, unseeded RNG
    would give both the same draws).

    Parameters
    ----------
    seed : int or None
        A valid seed (:func:`as_seed`), or None.

    Examples
    --------
    >>> with seeded_rng(3):
    ...     a = torch.rand(1)
    >>> with seeded_rng(3):
    ...     b = torch.rand(1)
    >>> bool(a == b)
    True
    """
    if seed is None:
        yield
        return
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(seed)
        yield


def derived_seed(seed: int, offset: int) -> int:
    """Return the seed of stream ``offset`` of a run seeded ``seed``: ``(seed + offset) mod 2**32``.

    Chain ``c`` of a sampler takes ``derived_seed(seed, c)``, observation ``m``
    ``derived_seed(seed, m)``: ``seed + offset`` itself for every seed up to
    ``2**32 - 1 - offset`` (the draws of earlier versions), wrapped into the seed range
    above, so that every seed :func:`as_seed` accepts works with any number of chains or
    observations (a sampler used to refuse ``2**32 - 1`` with two chains).

    Parameters
    ----------
    seed : int
        A valid seed (:func:`as_seed`).
    offset : int
        The stream's index, ``>= 0``.

    Returns
    -------
    int
        In ``[0, 2**32 - 1]``.

    Examples
    --------
    >>> derived_seed(7, 3), derived_seed(2**32 - 1, 1)
    (10, 0)
    """
    return (int(seed) + int(offset)) % (MAX_SEED + 1)


def as_real_tensor(
    value: Any, name: str, *, dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """Return a tensor, NumPy array or (nested) list of numbers as a real tensor.

    Parameters
    ----------
    value : Tensor, numpy.ndarray, list or tuple of numbers
        What the caller passed.
    name : str
        The argument, for the message (e.g. ``"y"``).
    dtype : torch.dtype or None, default torch.float32
        Dtype of the result (the networks' float32); None keeps a floating dtype and casts
        integers and booleans to float32. A tensor keeps its device.

    Returns
    -------
    Tensor

    Raises
    ------
    DataError
        If ``value`` is of another type (a string, None, a dict), holds complex numbers or
        non-numbers (an object or string array, a ragged list), or is a tensor without values
        on the meta device or a sparse one.

    Examples
    --------
    >>> as_real_tensor([1, 2], "y")
    tensor([1., 2.])
    >>> as_real_tensor(np.zeros(2), "y").dtype
    torch.float32
    """
    expected = "a tensor, NumPy array or list of real numbers"
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Real, np.generic)) and not isinstance(
        value, (str, bytes)
    ):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as err:  # a ragged list
            raise DataError(f"{name} is not {expected}: {err}") from None
        if array.dtype.kind not in "biuf":
            raise DataError(
                f"{name} is an array of dtype {array.dtype} ({reprlib.repr(value)}); expected "
                f"{expected}"
            )
        if not array.flags.writeable:  # a read-only view (np.broadcast_to, xarray, a memmap)
            array = array.copy()  # torch warns on, and may write through, a non-writable one
        tensor = torch.as_tensor(array)
    else:
        raise DataError(
            f"{name} is a {type(value).__module__}.{type(value).__name__} "
            f"({reprlib.repr(value)}); expected {expected}"
        )
    if tensor.is_complex():
        raise DataError(f"{name} has dtype {tensor.dtype} (complex numbers); expected {expected}")
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        what = "on the meta device (no values)" if tensor.device.type == "meta" else (
            f"of layout {tensor.layout}"
        )
        raise DataError(f"{name} is a tensor {what}; expected a dense tensor with values")
    if dtype is None:
        dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    return tensor.to(dtype)


def as_probability(value: Any, name: str, *, allow_one: bool = False) -> float:
    """Return ``value`` as a Python float in ``(0, 1)`` (``(0, 1]`` with ``allow_one``).

    Parameters
    ----------
    value : float, int or NumPy number
        A probability or a mass (a false-alarm probability, the mass of a credible interval).
    name : str
        The argument, for the message (e.g. ``"false_alarm"``).
    allow_one : bool, default False
        Accept 1 (an interval holding all the mass).

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        If ``value`` is not a real number (a string, a bool, None) or is outside the range.

    Examples
    --------
    >>> as_probability(np.float32(0.5), "interval")
    0.5
    >>> try:
    ...     as_probability("0.01", "false_alarm")
    ... except ConfigError as err:
    ...     print(err)
    false_alarm must be in (0, 1) (a number), got '0.01' (str)
    """
    bounds = "(0, 1]" if allow_one else "(0, 1)"
    real = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )
    number = float(value) if real else math.nan
    if not (0.0 < number < 1.0 or (allow_one and number == 1.0)):
        raise ConfigError(
            f"{name} must be in {bounds} (a number), got {reprlib.repr(value)} "
            f"({type(value).__name__})"
        )
    return number


def check_finite(value: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``value`` unchanged when every element is finite; else refuse it, naming ``name``.

    Parameters
    ----------
    value : Tensor
        Any real tensor (e.g. from :func:`as_real_tensor`).
    name : str
        The argument, for the message (e.g. ``"init"``).

    Returns
    -------
    Tensor
        ``value`` itself.

    Raises
    ------
    DataError
        If ``value`` holds NaN or an infinity; the message gives how many of how many.

    Examples
    --------
    >>> try:
    ...     check_finite(torch.tensor([float("nan"), 1.0]), "y")
    ... except DataError as err:
    ...     print(err)
    y contains 1 NaN or inf values (of 2); expected finite numbers
    """
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(
            f"{name} contains {bad} NaN or inf values (of {value.numel()}); expected finite "
            "numbers"
        )
    return value


def shape_mismatch(problem: Any, config: Any) -> str | None:
    """Return how the problem's event shapes differ from the model's, or None.

    Parameters
    ----------
    problem : Problem
        Has ``x_shape`` and ``y_shape``.
    config : ModelConfig
        Has ``x_shape`` and ``y_shape`` (None for an unconditional model: not compared).

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> shape_mismatch(NS(x_shape=(4,), y_shape=(2,)), NS(x_shape=(3,), y_shape=(2,)))
    'has x (4,), y (2,); the model has x (3,), y (2,)'
    """
    x_ok = tuple(problem.x_shape) == tuple(config.x_shape)
    y_ok = config.y_shape is None or tuple(problem.y_shape) == tuple(config.y_shape)
    if x_ok and y_ok:
        return None
    return (
        f"has x {tuple(problem.x_shape)}, y {tuple(problem.y_shape)}; the model has x "
        f"{tuple(config.x_shape)}, y {None if config.y_shape is None else tuple(config.y_shape)}"
    )


def check_problem_matches(problem: Any, config: Any) -> None:
    """Refuse a problem whose event shapes are not the model's.

    Raises
    ------
    ShapeError
        If ``problem.x_shape`` or ``problem.y_shape`` differ from the model's (message of
        :func:`shape_mismatch`, naming the problem).
    """
    mismatch = shape_mismatch(problem, config)
    if mismatch is not None:
        raise ShapeError(
            f"the event shapes of problem {getattr(problem, 'name', '?')!r} are not the model's: "
            f"it {mismatch}; pass the problem the model was trained on"
        )
