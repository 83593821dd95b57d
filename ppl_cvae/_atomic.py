"""Atomic outputs: write to a hidden temporary beside the target, then rename over it.

Every file and folder the package writes goes through :func:`atomic_path` or :func:`atomic_dir`,
so a crash, ``kill -9`` or Ctrl-C never leaves a half-written output under the user's name, and
a failed run keeps the previous output.

Conventions:

- temporaries are named ``.<target name>.<pid>.<random>`` beside the target; temporaries whose
  process no longer runs (a killed run) are removed the next time the same target is written;
- finished outputs get the permissions the user's umask gives a new file or folder (as
  ``open``/``mkdir`` would), not the private 0600/0700 of :mod:`tempfile`;
- an output folder carries a marker file :data:`MARKER` naming the command that wrote it and
  the files it wrote, and ``overwrite`` replaces only a folder with the same command's marker
  that holds no other file (never a folder of other content, never an ordinary file); an
  ordinary file is never replaced by a folder nor the reverse;
- errors name the user's target path, never the hidden temporary;
- Ctrl-C: within :func:`remembering_interrupts` (the ``ppl-cvae`` command) no output is renamed
  into place after a Ctrl-C, even one that Python swallowed in a finalizer, and a Ctrl-C during
  the renames themselves is held back until they are done (:class:`InterruptedAfterWrite`).
  SIGTERM (``kill``, a batch scheduler's preemption, torchrun stopping the other ranks) is
  answered the same way there, so a stopped fit leaves its last training state and no
  temporaries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from ppl_cvae.errors import OutputError, PplCvaeError

__all__ = [
    "MARKER",
    "InterruptedAfterWrite",
    "atomic_dir",
    "atomic_path",
    "check_interrupted",
    "check_output_folder",
    "check_output_path",
    "clean_stale_temporaries",
    "interrupt_status",
    "read_marker",
    "remembering_interrupts",
]

MARKER = ".ppl_cvae_output.json"
"""Name of the file that marks a folder as an output of a ``ppl-cvae`` command."""


class InterruptedAfterWrite(KeyboardInterrupt):
    """Ctrl-C that came while an output was being renamed into place; the output is complete.

    Raised after the rename, so that the command still ends as interrupted; a caller that
    undoes its preparations on ``KeyboardInterrupt`` must not undo this output.
    """


_INTERRUPTS: list[int] = []
"""The SIGINTs and SIGTERMs received within :func:`remembering_interrupts` (reset when it
starts and ends)."""

_LAST_SIGNAL: list[int] = []
"""The last signal :func:`remembering_interrupts` answered (kept after the block, for
:func:`interrupt_status`)."""

_OWNER: list[int] = []
"""The process that entered :func:`remembering_interrupts` (a forked child is not it)."""


def _remember_interrupt(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGTERM and _OWNER and os.getpid() != _OWNER[-1]:
        # a forked worker inherited this handler: it ends as SIGTERM ends a process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _INTERRUPTS.append(signum)
    _LAST_SIGNAL[:] = [signum]
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _held_signals() -> list[signal.Signals]:
    """Return the signals this module answers now: SIGINT unless ignored, SIGTERM if ours."""
    held = [] if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else [signal.SIGINT]
    if signal.getsignal(signal.SIGTERM) is _remember_interrupt:
        held.append(signal.SIGTERM)
    return held


def interrupt_status() -> int:
    """Return the exit status of a command stopped by an interrupt: 128 + the signal's number.

    130 for Ctrl-C (SIGINT), 143 for SIGTERM: what a shell reports for a process the signal
    ended, so a scheduler or a script can tell a stopped run from a failed one.

    Examples
    --------
    >>> interrupt_status() in (130, 143)
    True
    """
    return 128 + (_LAST_SIGNAL[0] if _LAST_SIGNAL else int(signal.SIGINT))


@contextlib.contextmanager
def remembering_interrupts() -> Iterator[None]:
    """Remember each Ctrl-C (SIGINT) within the block, so that no output is written after one.

    Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives; in a
    finalizer or a weakref callback run by the garbage collector (while NetCDF is written,
    say) it is printed as "Exception ignored" and the program goes on, and would then write
    its output as if nothing had happened. Within the block SIGINT still raises
    ``KeyboardInterrupt`` and is also remembered: :func:`atomic_path` and :func:`atomic_dir`
    then raise ``KeyboardInterrupt`` instead of renaming an output into place. SIGTERM, where
    its handler is the default, is answered the same way (a forked worker that inherits the
    handler still ends at once); :func:`interrupt_status` tells the two apart afterwards.
    Outside the main thread the block runs unchanged; where SIGINT is ignored (a background
    job) only SIGTERM is answered.

    Examples
    --------
    >>> with remembering_interrupts():
    ...     pass
    """
    if not _in_main_thread():
        yield
        return
    previous = {}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _remember_interrupt)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a caller's own handler stays
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _remember_interrupt)
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:  # the swallowed Ctrl-C is remembered: no traceback
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = hook
    _INTERRUPTS.clear()
    _LAST_SIGNAL.clear()
    _OWNER.append(os.getpid())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        sys.unraisablehook = previous_hook
        _INTERRUPTS.clear()
        _OWNER.pop()


def check_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C was remembered (:func:`remembering_interrupts`).

    For long loops (chunks of draws) to stop at the next chunk after a Ctrl-C that a
    finalizer swallowed, instead of at the rename of their output.

    Raises
    ------
    KeyboardInterrupt
        If SIGINT arrived within :func:`remembering_interrupts`.

    Examples
    --------
    >>> check_interrupted()  # no Ctrl-C: nothing happens
    """
    if _INTERRUPTS:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _committing(restoring: bool = False) -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM, where answered) back while the block renames an output.

    Raises ``KeyboardInterrupt`` before the block if a Ctrl-C was remembered (one that a
    finalizer swallowed, :func:`remembering_interrupts`; not when ``restoring`` a previous
    file), and :class:`InterruptedAfterWrite` after it if one came during it: a rename pair
    is never left half done.
    """
    if not restoring:
        check_interrupted()
    signums = _held_signals() if _in_main_thread() else []
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    if held:
        _LAST_SIGNAL[:] = [held[-1]]
        raise InterruptedAfterWrite


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid
        return True
    return True


def clean_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``target`` left by processes that no longer run.

    Parameters
    ----------
    target : str or path
        The output whose hidden siblings ``.<name>.<pid>.*`` are inspected.

    Returns
    -------
    list of Path
        The removed temporaries (files or folders). Those of running processes are kept.
    """
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}."
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix) or entry.is_symlink():
            continue
        pid_text = entry.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _describe(err: OSError) -> str:
    return err.strerror or type(err).__name__


@contextlib.contextmanager
def _name_target(target: Path) -> Iterator[None]:
    """Re-raise an OSError of the writer (which names the hidden temporary) naming ``target``."""
    try:
        yield
    except PplCvaeError:
        raise
    except OSError as err:  # e.g. disk full, permission denied, h5py's write errors
        raise OutputError(f"cannot write {str(target)!r}: {_describe(err)}") from err


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, restoring: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The temporary file keeps the target's suffix (some writers choose the format by it). On an
    exception the temporary file is removed and ``target`` is left as it was. The finished file
    gets the mode ``0o666 & ~umask``. After a Ctrl-C (:func:`remembering_interrupts`) nothing
    is renamed into place (``KeyboardInterrupt``) unless ``restoring`` is true: the block
    writes back what a file held before the command, to undo it.

    Raises
    ------
    OutputError
        If the parent folder of ``target`` does not exist or is not writable, ``target`` is a
        folder, or the rename fails (the message names ``target``).
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise OutputError(f"folder {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise OutputError(f"{str(target)!r} is a folder; an output file cannot replace it")
    clean_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=target.suffix
        )
    except OSError as err:
        raise OutputError(f"cannot write {str(target)!r}: {_describe(err)}") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _name_target(target):
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_umask())
            with _committing(restoring):
                os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def read_marker(folder: str | os.PathLike[str]) -> dict[str, object] | None:
    """Return the marker of an output folder written by ``ppl-cvae``, or None if it has none."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_output_folder(target: Path, overwrite: bool, command: str | None) -> None:
    """Refuse to replace ``target`` unless it is absent, empty or a previous output of ``command``.

    Raises
    ------
    OutputError
        If ``target`` is a file or a link; non-empty without ``overwrite``; non-empty with
        ``overwrite`` but without the marker of ``command``; or holding files that the marked
        command did not write (added by the user or another command since).
    """
    if target.is_symlink():
        raise OutputError(
            f"{str(target)!r} is a symbolic link (to {os.readlink(target)!r}); an output folder "
            "never replaces a link nor writes through one (give the folder itself as --out)"
        )
    if target.exists() and not target.is_dir():
        raise OutputError(
            f"{str(target)!r} exists and is not a folder; an output folder never replaces a file "
            "(choose another --out)"
        )
    if not target.exists() or not any(target.iterdir()):
        return
    if not overwrite:
        raise OutputError(
            f"output folder {str(target)!r} exists and is not empty; "
            "choose another --out or pass --overwrite"
        )
    marker = read_marker(target)
    if marker is None or (command is not None and marker.get("command") != command):
        wrote = "another program" if marker is None else f"'ppl-cvae {marker.get('command')}'"
        raise OutputError(
            f"--overwrite replaces only a folder written by 'ppl-cvae {command}', and "
            f"{str(target)!r} was written by {wrote}; choose another --out or empty it yourself"
        )
    listed = marker.get("files")
    written = set(listed) if isinstance(listed, list) else set()
    added = sorted(rel for rel in _relative_files(target) if rel not in written | {MARKER})
    if added:
        shown = ", ".join(repr(a) for a in added[:3]) + (" ..." if len(added) > 3 else "")
        raise OutputError(
            f"--overwrite would delete {len(added)} file(s) in {str(target)!r} that "
            f"'ppl-cvae {marker.get('command')}' did not write ({shown}); move them or choose "
            "another --out"
        )


def _relative_files(folder: Path) -> list[str]:
    """Return the paths, relative to ``folder``, of every file and link below it."""
    return [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_symlink() or not p.is_dir()
    ]


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str], *, overwrite: bool = False, command: str | None = None
) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; move it onto ``target`` on success.

    On an exception the temporary folder is deleted and ``target`` is untouched. The finished
    folder holds a marker :data:`MARKER` naming ``command``; with ``overwrite`` an existing
    ``target`` is replaced, once the new folder is complete, only if it is empty or carries the
    marker of the same command. The folder gets the mode ``0o777 & ~umask``.

    Parameters
    ----------
    target : str or path
        Output folder.
    overwrite : bool, default False
        Replace a previous output of the same command.
    command : str, optional
        Name of the command writing the folder (e.g. ``"fit"``), stored in the marker.

    Raises
    ------
    OutputError
        If ``target`` is an ordinary file; if it is a non-empty folder and ``overwrite`` is
        false; if ``overwrite`` is true but the folder is not a previous output of ``command``;
        or if the folder cannot be created (the message names ``target``).
    """
    target = Path(target)
    check_output_folder(target, overwrite, command)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise OutputError(
            f"cannot create {str(target)!r}: a part of its path is an existing file"
        ) from err
    except OSError as err:
        raise OutputError(f"cannot create {str(target)!r}: {_describe(err)}") from err
    clean_stale_temporaries(target)
    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}."))
    except OSError as err:
        raise OutputError(f"cannot create {str(target)!r}: {_describe(err)}") from err
    try:
        with _name_target(target):
            yield tmp
        files = sorted(_relative_files(tmp))
        (tmp / MARKER).write_text(json.dumps({"command": command, "files": files}))
        os.chmod(tmp, 0o777 & ~_umask())
        check_output_folder(target, overwrite, command)  # unchanged while we worked?
        try:
            with _committing():
                if target.exists():
                    old = Path(
                        tempfile.mkdtemp(
                            dir=target.parent, prefix=f".{target.name}.{os.getpid()}."
                        )
                    )
                    os.replace(target, old / target.name)
                    os.replace(tmp, target)
                    shutil.rmtree(old)
                else:
                    os.replace(tmp, target)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise OutputError(f"{str(target)!r} was filled by another process") from err
            raise OutputError(f"cannot create {str(target)!r}: {_describe(err)}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_path(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    kind: Literal["file", "folder"],
) -> Path:
    """Refuse an output path that could destroy an input or replace a thing of the other kind.

    Paths are compared after resolving symbolic links and ``..``: the output may not equal an
    input, contain one (an output folder around an input file) or lie inside one (an output
    inside an input folder). An output file may not replace a folder, an output folder may not
    replace a file, and no part of the output's parent path may be an existing file.

    Parameters
    ----------
    out : str or path
        The ``--out`` of a command.
    inputs : iterable of str, path or None
        The files and folders the command reads (None entries are skipped).
    kind : {"file", "folder"}
        What the command writes at ``out``.

    Returns
    -------
    Path
        ``out`` as a Path.

    Raises
    ------
    OutputError
        On any of the cases above, naming the output and the input it would destroy.

    Examples
    --------
    >>> check_output_path("runs/a.nc", ["runs/obs.npz"], kind="file")
    PosixPath('runs/a.nc')
    """
    out = Path(out)
    try:
        os.fsencode(out).decode("utf-8")
    except UnicodeDecodeError:
        raise OutputError(
            f"output path {str(out)!r} is not valid UTF-8; choose a name in UTF-8"
        ) from None
    resolved = out.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if source == resolved:
            raise OutputError(f"--out {str(out)!r} is the input {str(item)!r}; choose another")
        if resolved in source.parents:
            raise OutputError(
                f"--out {str(out)!r} contains the input {str(item)!r}; choose an output that "
                "does not hold any input"
            )
        if source in resolved.parents:
            raise OutputError(
                f"--out {str(out)!r} lies inside the input {str(item)!r}; write outputs "
                "outside the inputs"
            )
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"--out {str(out)!r} lies under the file {str(parent)!r}")
    if kind == "file" and out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a folder; an output file cannot replace it")
    if kind == "folder" and out.exists() and not out.is_dir():
        raise OutputError(
            f"--out {str(out)!r} is an existing file; an output folder cannot replace it"
        )
    return out
