"""Checks and loaders that several ``ppl-cvae`` commands share.

The problem named by ``--problem`` (with ``--problem-arg`` and ``--functions``); output files
and folders that must not destroy an input or overwrite an existing output without
``--overwrite``; the memory a simulation of ``num`` pairs needs; loading a run folder's model
and problem; path arguments that are not valid UTF-8. Each refusal raises a
:class:`~ppl_cvae.errors.PplCvaeError` that :func:`ppl_cvae.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from ppl_cvae._atomic import check_output_folder, check_output_path
from ppl_cvae._memory import check_memory
from ppl_cvae.errors import ConfigError, OutputError, ProblemChangedWarning

log = logging.getLogger("ppl_cvae")


def _problem_from_args(
    args: argparse.Namespace, base: dict[str, Any] | None = None, trusted: bool = True
) -> tuple[Any, dict[str, Any] | None]:
    """Build the problem named by ``--problem`` (registry name or ``package.module:factory``).

    ``base`` holds keyword arguments read from a run file, which ``--problem-arg`` and
    ``--functions`` extend; a name read from a file (``trusted=False``) is rebuilt under the
    safety policy of :func:`~ppl_cvae.problems.base.rebuild_problem`.

    Returns the problem and, for a ``package.module:factory`` reference, the record
    ``{"name": reference, **kwargs}`` that a checkpoint stores to rebuild it.
    """
    from ppl_cvae.problems.registry import make_problem, rebuild_problem

    kwargs: dict[str, Any] = dict(base or {})
    for item in args.problem_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--problem-arg expects KEY=VALUE with a Python name, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    if getattr(args, "functions", None):
        kwargs["functions"] = args.functions
    if trusted:
        problem = make_problem(args.problem, **kwargs)
    else:
        problem = rebuild_problem(args.problem, kwargs)
    reference = {"name": args.problem, **kwargs} if ":" in args.problem else None
    return problem, reference


def _check_new_file(
    path: Path, overwrite: bool, inputs: list[Any], suffix: str, command: str
) -> None:
    """Refuse an output file that would destroy an input, has the wrong suffix, or exists.

    With ``overwrite``, an existing file is replaced only when ``ppl-cvae <command>`` wrote
    it (:func:`_written_by`): never a user's own data or another command's output.
    """
    check_output_path(path, inputs, kind="file")
    if path.suffix.lower() != suffix:
        raise ConfigError(f"--out {str(path)!r} must end in {suffix} (the format written)")
    if path.exists() and not overwrite:
        raise OutputError(f"{str(path)!r} exists; choose another name or pass --overwrite")
    if path.exists():
        wrote = _written_by(path)
        if wrote != f"ppl-cvae {command}":
            who = "another program" if wrote is None else repr(wrote)
            raise OutputError(
                f"--overwrite replaces only a file written by 'ppl-cvae {command}', and "
                f"{str(path)!r} was written by {who}; choose another --out or delete it yourself"
            )
    if not path.parent.is_dir():
        raise OutputError(f"folder {str(path.parent)!r} does not exist")


_POSTERIOR_ATTRS_CHILD = r"""
import h5netcdf
with h5netcdf.File(path, "r", phony_dims="sort") as f:
    group = f.groups.get("posterior") or f.groups.get("prior")  # prior: a VAE's draws
    attrs = {} if group is None else dict(group.attrs)
reply(command=str(attrs.get("command", "")), library=str(attrs.get("inference_library", "")))
"""


def _written_by(path: Path) -> str | None:
    """Return the ``ppl-cvae`` command that wrote an output file, or None for any other file.

    A posterior ``.nc``: its ``posterior`` group's (an unconditional VAE's draws: its
    ``prior`` group's) ``inference_library`` is ``ppl_cvae`` (read
    in a child process with a time limit: libhdf5 can hang on a corrupt file), written by
    ``ppl-cvae sample`` or the Python API alike. An ``.npz`` or ``.json``: the command named
    by :data:`~ppl_cvae.data.io.WRITTEN_BY_KEY`. Unreadable files give None.
    """
    from ppl_cvae._isolated import netcdf_timeout, run_isolated
    from ppl_cvae.data.io import WRITTEN_BY_KEY, npz_written_by
    from ppl_cvae.errors import DataError

    suffix = path.suffix.lower()
    if not path.is_file():
        return None
    if suffix == ".npz":
        return npz_written_by(path)
    if suffix == ".json":
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        found = record.get(WRITTEN_BY_KEY) if isinstance(record, dict) else None
        return found if isinstance(found, str) else None
    if suffix == ".nc":
        try:
            reply, _, folder = run_isolated(
                _POSTERIOR_ATTRS_CHILD, path, [], netcdf_timeout(path), "NetCDF"
            )
        except DataError:
            return None
        folder.cleanup()
        if reply.get("library") == "ppl_cvae":
            return "ppl-cvae sample"
    return None


def _check_out_dir(path: Path, overwrite: bool, inputs: list[Any], command: str) -> None:
    """Refuse an output folder that would destroy an input or another program's folder."""
    check_output_path(path, inputs, kind="folder")
    check_output_folder(path, overwrite, command)


def _check_simulation_memory(problem: Any, num: int, flag: str) -> None:
    """Refuse to simulate ``num`` pairs that cannot fit in memory (x, y and working copies)."""
    per_pair = 4 * (math.prod(problem.x_shape) + math.prod(problem.y_shape))
    check_memory(
        3 * per_pair * num,  # the pairs, a shuffled copy and the simulator's intermediates
        f"{num} simulated pairs ({flag})",
        hint=f"lower {flag}",
    )


def _names_functions(args: argparse.Namespace) -> bool:
    """Return whether ``--functions`` or ``--problem-arg functions=...`` was given."""
    given = [item.partition("=")[0] for item in getattr(args, "problem_arg", None) or []]
    return bool(getattr(args, "functions", None)) or "functions" in given


def _load_run(args: argparse.Namespace, *, unconditional: bool = False) -> tuple[Any, Any]:
    """Load the run's model and its problem (``--problem`` overrides the stored one).

    An unconditional VAE is refused unless ``unconditional`` (``sample`` generates from it).

    ``meta`` is :func:`~ppl_cvae.train.load_checkpoint`'s, with ``"problem_record"``: what
    rebuilds the problem used (the ``--problem package.module:factory`` reference with its
    arguments, else the checkpoint's record), or None for a built-in ``--problem`` name (its
    ``spec()`` says it) and a run without a problem.
    """
    from ppl_cvae.train import load_checkpoint

    problem = reference = None
    if getattr(args, "problem", None) == "two_birds" and not _names_functions(args):
        # the default pair (data_1) is not the run's when it was fitted on a data file or on
        # the other pair: take the run's, or ask
        _, stored = load_checkpoint(args.run_dir)
        spec = stored.get("problem_spec")
        functions = spec.get("functions") if isinstance(spec, dict) else None
        if spec is None or not isinstance(functions, str):
            raise ConfigError(
                f"--problem two_birds needs --functions data_1 or original: run "
                f"{args.run_dir!r} does not record a Two Birds function pair (fitted on a data "
                "file, or on another problem)"
            )
        args.functions = functions
    if getattr(args, "problem", None):
        problem, reference = _problem_from_args(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cvae, meta = load_checkpoint(args.run_dir, problem=problem)
    for warning in caught:
        if issubclass(warning.category, ProblemChangedWarning):  # a line, as others are
            log.warning("%s", warning.message)
        else:  # not this command's to reword: shown as Python would have shown it
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    meta["problem_record"] = reference if problem is not None else meta.get("problem_spec")
    if cvae.config.y_shape is None and not unconditional:  # config.conditional False
        raise ConfigError(
            f"run {args.run_dir!r} holds an unconditional VAE; nothing to condition on (draw "
            f"from it with: ppl-cvae sample {args.run_dir} --num-samples N --out FILE.nc)"
        )
    return cvae, meta


def _warn_problem_unavailable(meta: dict[str, Any], lacks: str) -> None:
    """Warn when the run recorded a problem that was not rebuilt: say what the output lacks.

    ``lacks`` names what the command's output has no means to compute without it (e.g. "no
    posterior predictive, log-likelihood, dim names or units"); the loader's
    ``problem_error`` says why (not importable, refused, changed since the fit).
    """
    if meta.get("problem") is None and meta.get("problem_spec") is not None:
        log.warning(
            "the run's problem is not available, so %s: %s",
            lacks,
            meta.get("problem_error") or "it could not be rebuilt",
        )


PATH_ARGS = (
    "out",
    "data",
    "run_dir",
    "observation",
    "posterior",
    "dataset_path",
    "config",
    "generative_prior",
    "resume",
)


def _check_utf8_paths(args: argparse.Namespace) -> None:
    """Refuse path arguments that are not valid UTF-8 (NetCDF and JSON cannot record them)."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            flag = "--" + name.replace("_", "-") if name not in ("run_dir", "posterior") else name
            raise ConfigError(
                f"{flag} {value!r} is not valid UTF-8; rename the file or folder"
            ) from None


def _check_one_hot(y: Any, path: str, layout: Any, item: str) -> None:
    """Refuse ``y`` rows of a label-conditional run that are not one-hot class rows.

    Such a CVAE was trained on rows with a single 1 (the class) and 0 elsewhere; any other
    row (two classes, none, a 2, a half) lies outside what it learnt and gives images of no
    class, with no other sign of it. ``item`` names a row in the message ("observation" for
    ``sample``, "pair" for ``evaluate``).
    """
    rows = y.reshape(y.shape[0], -1)
    valid = ((rows == 0) | (rows == 1)).all(-1) & (rows.sum(-1) == 1)
    if bool(valid.all()):
        return
    first = int((~valid).nonzero()[0, 0])
    values = [float(v) for v in rows[first]]
    odd = [(j, v) for j, v in enumerate(values) if v not in (0.0, 1.0)]
    what = (
        f"its entry {odd[0][0]} is {odd[0][1]!r}"
        if odd
        else f"it has {int(sum(values))} entries of 1"
    )
    classes = list(layout.coords.get("class", ())) if layout is not None else []
    named = f" (classes {classes}, in this order)" if classes else ""
    raise ConfigError(
        f"{item} {first} of {path!r} is not a class: {what}; this run is conditioned on "
        f"a class label, so each {item}'s y must be a one-hot row of {rows.shape[1]} values, "
        f"1 at the class and 0 elsewhere{named}"
    )
