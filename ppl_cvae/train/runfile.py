"""A fit described by a file: ``ppl-cvae fit --config run.toml`` (or a run's own ``config.json``).

A run file holds what ``ppl-cvae fit`` is told on its command line, so a run can be written
down, repeated and varied; command-line flags override the file. TOML (read with the standard
library's ``tomllib``) and JSON are accepted, and the ``config.json`` that every fit writes is
a run file, so ``ppl-cvae fit --config runs/a/config.json --out runs/b`` repeats run ``a`` (same
settings, same seed: same weights) and ``... --seed 7`` varies it.

Example ``run.toml``::

    problem = "two_birds"             # or a table: [problem] name = "crosshole" prior = "grf"
    # data = "pairs.npz"              # a training file instead of simulations
    # decoder = "network"             # auto | network | basis

    [model]                           # ModelConfig fields
    latent_dim = 8
    hidden_dims = [256, 256]

    [train]                           # TrainConfig fields
    num_epochs = 60
    seed = 3

Top-level keys: ``problem`` (a name or a table with ``name`` and the factory's keyword
arguments), ``data`` (a path, relative to the working directory as on the command line),
``dataset`` (a name or a table with ``name``, ``condition``, ``path``, ``image_size`` and
``classes``, the class names a run recorded in label order: checked against the folder),
``decoder``, ``unconditional`` (true for ``fit --unconditional``), ``model``, ``train``;
``torch_threads``, ``device`` and ``distributed`` (recorded by a run) are read and ignored
(the device and the launch are flags of each command).
``model`` may carry ``x_shape``/``y_shape`` (a run's record): they are checked against the
data, not set from the file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ppl_cvae.config import ModelOverrides, Overrides, TrainOverrides
from ppl_cvae.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MAX_RUN_FILE_BYTES", "RunFile", "read_run_file", "run_file_from_dict"]

MAX_RUN_FILE_BYTES = 1 << 20
"""Largest run file read (1 MiB; a run file is a few hundred bytes)."""

_KEYS = (
    "problem",
    "data",
    "dataset",
    "decoder",
    "unconditional",
    "model",
    "train",
    "torch_threads",
    "device",
    "distributed",
    "data_digest",
    "data_source",
)
_DATASET_KEYS = ("name", "condition", "path", "image_size", "classes")


@dataclass(frozen=True)
class RunFile:
    """The contents of a run file, checked for structure (values are checked when used).

    Attributes
    ----------
    overrides : Overrides
        The ``model`` and ``train`` tables.
    problem : tuple of (str, dict) or None
        Problem name (registry name or ``package.module:factory``) and its keyword arguments.
        A name read from a file is rebuilt under the safety policy of
        :func:`ppl_cvae.problems.base.rebuild_problem`, never imported blindly.
    data : str or None
        Training file.
    dataset : dict or None
        Image dataset: ``name`` and optionally ``condition``, ``path``, ``image_size`` and
        ``classes`` (recorded by a run: ``fit`` refuses a folder whose classes differ).
    decoder : str or None
        ``"auto"``, ``"network"`` or ``"basis"``.
    unconditional : bool
        An unconditional VAE on the problem's prior draws (``fit --unconditional``).
    x_shape, y_shape : tuple of int or None
        Event shapes a run recorded (``model.x_shape``/``model.y_shape`` of a ``config.json``).
    data_digest : str or None
        SHA-256 (hex) of the pairs of ``data`` a run was fitted on
        (:func:`~ppl_cvae.train.resume.data_digest` of the file's ``x`` and ``y``, recorded by
        ``fit --data``, read into memory or lazily, and by ``fit --dataset`` of the images and
        labels read): ``fit --config`` refuses data at that path whose pairs differ.
    data_source : dict or None
        How the run read its training pairs, one key: ``{"memory": {}}`` (``--data`` read
        into memory), ``{"lazy": {"lazy", "chunk_mb", "buffer_chunks"}}`` (read in chunks) or
        ``{"stream": {"workers": K}}`` (``--stream``). ``fit --config`` reads the same way
        unless flags say otherwise: the minibatches, and so the weights, depend on it.
        Checked when applied.
    """

    overrides: Overrides
    problem: tuple[str, dict[str, Any]] | None = None
    data: str | None = None
    dataset: dict[str, Any] | None = None
    decoder: str | None = None
    unconditional: bool = False
    x_shape: tuple[int, ...] | None = None
    y_shape: tuple[int, ...] | None = None
    data_digest: str | None = None
    data_source: dict[str, Any] | None = None


def _table(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        kind = type(value).__name__
        raise ConfigError(f"{where}: {key!r} must be a table of settings, got {kind}")
    return dict(value)


def _flag(doc: Mapping[str, Any], key: str, where: str) -> bool:
    """Return ``doc[key]`` as a bool (False when absent); ConfigError for anything else."""
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _text(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _shape(value: Any, key: str, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{where}: model.{key} must be a list of integers")
    return tuple(value)


def _problem(value: Any, where: str) -> tuple[str, dict[str, Any]] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        kwargs = {k: v for k, v in value.items() if k != "name"}
        if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
            raise ConfigError(f"{where}: problem arguments must be Python names")
        return value["name"], kwargs
    raise ConfigError(
        f"{where}: 'problem' must be a name or a table with a string 'name', got "
        f"{type(value).__name__}"
    )


def _dataset(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        unknown = [k for k in value if k not in _DATASET_KEYS]
        if unknown:
            raise ConfigError(
                f"{where}: unknown dataset keys {unknown}; expected some of {list(_DATASET_KEYS)}"
            )
        return dict(value)
    raise ConfigError(f"{where}: 'dataset' must be a name or a table with a string 'name'")


def _digest(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    ):
        raise ConfigError(f"{where}: data_digest must be 64 lowercase hex digits (SHA-256)")
    return value


def _source(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not (isinstance(value, Mapping) and len(value) == 1):
        raise ConfigError(
            f"{where}: data_source must be a table with one of the keys memory, lazy, stream"
        )
    return dict(value)


def read_run_file(path: str | os.PathLike[str]) -> RunFile:
    """Read a run file (``.toml`` or ``.json``) for ``ppl-cvae fit --config``.

    Parameters
    ----------
    path : str or PathLike
        A TOML or JSON file (the suffix decides; ``config.json`` written by a fit is one).

    Returns
    -------
    RunFile

    Raises
    ------
    ConfigError
        If the suffix is neither ``.toml`` nor ``.json``, the file is larger than
        :data:`MAX_RUN_FILE_BYTES`, is not UTF-8, does not parse (the parser's message, with
        its line, is kept; a JSON object with a key given twice, an integer of more than 4,300
        digits), its top level is not a table, or a key is unknown or of the wrong kind (the
        message names it and lists the valid keys). A leading byte-order mark is allowed.
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = Path(tmp) / "run.toml"
    ...     _ = p.write_text("train = { num_epochs = 5 }")
    ...     read_run_file(p).overrides.train
    {'num_epochs': 5}
    """
    path = Path(path)
    where = f"run file {str(path)!r}"
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"{where} must end in .toml or .json (the format it is read as)")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_RUN_FILE_BYTES + 1)
    if len(raw) > MAX_RUN_FILE_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_RUN_FILE_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
        doc = (
            tomllib.loads(text)
            if suffix == ".toml"
            else json.loads(text, object_pairs_hook=_unique_keys)
        )
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ConfigError(f"{where} does not parse: {err}") from None
    except ValueError as err:  # a duplicate JSON key; an integer of more than 4,300 digits
        raise ConfigError(f"{where} does not parse: {err}") from None
    return run_file_from_dict(doc, where)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a key given twice (TOML refuses it too)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def run_file_from_dict(doc: Any, where: str) -> RunFile:
    """Check a parsed run file (a dict, e.g. the record of a training state) as a RunFile.

    Parameters
    ----------
    doc : Any
        The parsed document; must be a mapping with the keys of a run file.
    where : str
        What to call its source in error messages, e.g. ``"run file 'a.toml'"``.

    Returns
    -------
    RunFile

    Raises
    ------
    ConfigError
        As :func:`read_run_file` for a document that is not a table or has unknown or
        malformed keys.

    Examples
    --------
    >>> run_file_from_dict({"problem": "two_birds"}, "a record").problem
    ('two_birds', {})
    """
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: the top level must be a table, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in _KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown[:5]}; expected some of {list(_KEYS)}")
    model = _table(doc, "model", where)
    x_shape = _shape(model.pop("x_shape", None), "x_shape", where)
    y_shape = _shape(model.pop("y_shape", None), "y_shape", where)
    try:
        overrides = Overrides(
            model=cast(ModelOverrides, model),
            train=cast(TrainOverrides, _table(doc, "train", where)),
        )
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return RunFile(
        overrides=overrides,
        problem=_problem(doc.get("problem"), where),
        data=_text(doc, "data", where),
        dataset=_dataset(doc.get("dataset"), where),
        decoder=_text(doc, "decoder", where),
        unconditional=_flag(doc, "unconditional", where),
        x_shape=x_shape,
        y_shape=y_shape,
        data_digest=_digest(doc.get("data_digest"), where),
        data_source=_source(doc.get("data_source"), where),
    )
