"""Exception hierarchy of ppl_cvae.

Every error the package raises on purpose derives from :class:`PplCvaeError` and from the
builtin exception it refines, so ``except ValueError`` keeps working for callers that do not
know this package. The CLI catches :class:`PplCvaeError` and prints its message as one line.

One rule decides between the three classes of bad input, whatever the entry point (a Python
function, a CLI command, a file reader) and wherever the array came from (an argument, a
file, or a problem's own code: ``sample_prior``, ``forward``, a density, a simulator):

- :class:`ShapeError`: an array has values but the wrong shape: an event shape other than the
  model's or problem's ``x_shape``/``y_shape``, the wrong number of axes, a size it must share
  with another array (``x`` and ``y`` rows, the truths and the observations, the draws and
  the observations), or fewer rows than the method needs (a training set of one pair).
- :class:`DataError`: the values or what holds them: NaN or inf, a dtype that is not real
  numbers, something that is not an array or tensor at all (a string, a NumPy array where a
  torch tensor must be returned), an array without values (a stack of zero observations, a
  zero-size axis), a missing key or variable, a file that cannot be read.
- :class:`ConfigError`: a setting (a count, an option, a name, a flag, a seed), settings
  that contradict each other, or a problem's code that fails (raises, calls ``sys.exit``);
  never the shape or the values of an array.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "PplCvaeError",
    "ConfigError",
    "TrainingDivergedError",
    "ShapeError",
    "DataError",
    "CheckpointError",
    "UnknownProblemError",
    "ResourceError",
    "WorkerDiedError",
    "OutputError",
    "NoDensityError",
    "NoPriorDensityError",
    "NoLikelihoodError",
    "ProblemChangedWarning",
    "exception_summary",
    "how_workers_ended",
    "no_exit",
]


class PplCvaeError(Exception):
    """Base class of every error raised on purpose by ppl_cvae and inference."""


class ConfigError(PplCvaeError, ValueError):
    """A configuration value is outside its valid range or inconsistent with another.

    Settings (counts, options, names, seeds) and failing problem code; a bad array is a
    :class:`ShapeError` or a :class:`DataError` (module docstring).
    """


class TrainingDivergedError(ConfigError):
    """An SVI step's loss was not finite: the settings (learning rate, data scale) let it diverge.

    A :class:`ConfigError`: the same settings diverge again, and resuming the fit from a saved
    training state repeats the same steps (they are bit-identical), so ``ppl-cvae fit`` does
    not keep the state of a fresh fit that diverged, as it does after other errors.
    """


class ShapeError(PplCvaeError, ValueError):
    """A tensor or array has a shape other than the one the model or problem expects.

    Also two arrays whose sizes must agree and do not, and too few rows for the method; for
    arrays passed in, read from a file or returned by a problem's code alike (module
    docstring).
    """


class DataError(PplCvaeError, ValueError):
    """A data file or array is missing a key, holds NaN/inf, or cannot be read.

    Also an array of no values (zero observations, a zero-size axis), a dtype that is not
    real numbers, and a value that is not an array or tensor at all (module docstring).
    """


class CheckpointError(PplCvaeError, ValueError):
    """A checkpoint or run folder is missing, corrupt, or from an incompatible version."""


class UnknownProblemError(PplCvaeError, KeyError):
    """A problem or function-pair name is not registered."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class ResourceError(PplCvaeError, MemoryError):
    """A request needs more memory (or another resource) than this machine can give it."""


class WorkerDiedError(PplCvaeError, RuntimeError):
    """A worker process the command started (an MCMC chain, a stream's simulations) died.

    Killed by a signal (``SIGKILL`` is what the kernel's out-of-memory killer sends) or
    crashed; the message names the signal or exit code and what was kept. The other workers
    are stopped first.
    """


def how_workers_ended(exitcodes: list[int | None]) -> str:
    """Say how the first dead worker ended, from the exit codes of worker processes.

    A negative code is the signal that killed the process (``SIGKILL``: what the kernel's
    out-of-memory killer sends), a positive one its exit status; None (still running) and 0
    are skipped, and ``SIGTERM`` comes last: it is how a pool stops the survivors of a broken
    pool (``concurrent.futures`` terminates them itself), so it names the death only when no
    other code does.

    Examples
    --------
    >>> how_workers_ended([-15, None, -9])
    'was killed by SIGKILL (what the out-of-memory killer sends)'
    >>> how_workers_ended([3]), how_workers_ended([])
    ('exited with status 3', 'died')
    """
    import signal

    terminated = -int(signal.SIGTERM)
    for code in sorted(exitcodes, key=lambda c: c == terminated):
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (what the out-of-memory killer sends)" if name == "SIGKILL" else ""
            return f"was killed by {name}{hint}"
        if code not in (None, 0):
            return f"exited with status {code}"
    return "died"


class OutputError(PplCvaeError, OSError):
    """An output path cannot be written without losing data, or cannot be written at all."""


class NoDensityError(PplCvaeError, ValueError):
    """A log density was asked for that the problem does not define.

    The base of :class:`NoPriorDensityError` and :class:`NoLikelihoodError`; catch it to
    handle both (e.g. skip the exact-density diagnostics of a simulator-only problem).
    """


class NoPriorDensityError(NoDensityError):
    """The prior is defined by its sampler only (e.g. channel facies): no density to evaluate."""


class NoLikelihoodError(NoDensityError):
    """No likelihood density: a noise-free problem (y = F(x) exactly)."""


class ProblemChangedWarning(UserWarning):
    """A problem passed for a run differs from the one it was fitted with (its noise, misfit).

    Issued by :func:`~ppl_cvae.train.load_checkpoint` when the problem given to it does not
    match the checkpoint's fingerprint (:mod:`ppl_cvae.problems.fingerprint`); the problem is
    used all the same. Filter it by this class.
    """


def exception_summary(err: BaseException) -> str:
    """Return ``"TypeName: first line of the message"`` (``"TypeName"`` for an empty message).

    The one line a CLI error shows for an exception raised by a user's code (a simulator, a
    problem's density), without its traceback.

    Examples
    --------
    >>> exception_summary(ValueError("bad shape" + chr(10) + "more detail"))
    'ValueError: bad shape'
    >>> exception_summary(StopIteration())
    'StopIteration'
    """
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@contextlib.contextmanager
def no_exit(what: str) -> Iterator[None]:
    """Turn ``sys.exit`` called by a user's code inside the block into a :class:`ConfigError`.

    A problem's factory, simulator or density that calls ``sys.exit`` (or raises
    ``SystemExit``) would otherwise end the process with its status and no message, or with
    status 0 as if the command had succeeded, and leave the reason unsaid.

    Parameters
    ----------
    what : str
        The call, for the message, e.g. ``"problem 'mine' simulate(64, generator)"``.

    Raises
    ------
    ConfigError
        If the block raises ``SystemExit``; the message names ``what`` and the exit code.

    Examples
    --------
    >>> import sys
    >>> try:
    ...     with no_exit("demo simulate(2, generator)"):
    ...         sys.exit(3)
    ... except ConfigError as err:
    ...     print(str(err).split(";")[0])
    demo simulate(2, generator) called sys.exit(3)
    """
    try:
        yield
    except SystemExit as err:
        raise ConfigError(
            f"{what} called sys.exit({err.code!r}); problem code must raise an exception, not "
            "end the process"
        ) from err
