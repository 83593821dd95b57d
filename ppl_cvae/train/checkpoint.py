"""One-file checkpoints: weights, configuration, standardisers, problem and package version.

Format
------
A checkpoint is one ``torch.save`` file holding a dict with exactly these keys:

========================  =========================================================
``format``                ``"ppl_cvae.checkpoint.v2"`` (:data:`CHECKPOINT_FORMAT`)
``version``               ppl_cvae version that wrote it (str)
``model_config``          :meth:`ModelConfig.to_dict` (JSON-like dict)
``state_dict``            ``{name: Tensor}``: weights, standardisers, decoder basis
``misfit_std``            scale of the physics-consistency misfit (float > 0, units of y)
``problem``               problem record ``{"name": ..., **kwargs}`` or None
``extra``                 JSON-like metadata (training configuration, data source, ...)
``training_x_range``      optional: float64 tensor ``(2, *x_shape)``, the elementwise
                          minimum and maximum of the training ``x`` of a model fitted on
                          pairs alone (:attr:`CVAE.training_x_range
                          <ppl_cvae.models.cvae.CVAE.training_x_range>`); absent otherwise
                          and in files written before it
``data_layout``           optional: the dims, coordinates and units of the training data's
                          ``x`` and ``y`` (:meth:`DataLayout.to_record
                          <ppl_cvae.data.layout.DataLayout.to_record>`, JSON-like) of a model
                          fitted on a NetCDF file or Zarr store that names them
``problem_check``         optional: the problem's fingerprint (:func:`problem_fingerprint
                          <ppl_cvae.problems.fingerprint.problem_fingerprint>`: its forward
                          operator, prior density and noise on two probe models), written
                          when the model is saved with a problem that can be evaluated
========================  =========================================================

Format ``v1`` (ppl_cvae 0.1 and 0.2) is read too: its weights had the flat names of a
model that built its networks inline (``rec_x.*``, ``prior_gauss.*``, ``decoder.*``, ...);
they are renamed to those of :class:`~ppl_cvae.nets.RecognitionNet`,
:class:`~ppl_cvae.nets.PriorNet` and :class:`~ppl_cvae.nets.Decoder` (:data:`V1_RENAMES`)
before the checks, so an old run loads with the same weights.

Problem records
---------------
The record is what :func:`load_checkpoint` rebuilds the problem (forward operator, prior,
noise model) from. :func:`save_checkpoint` stores, in this order of preference, the
``problem_ref`` it is given (``{"name": "package.module:factory", **kwargs}``, what the CLI's
``--problem package.module:factory --problem-arg KEY=VALUE`` builds), the problem's
:meth:`~ppl_cvae.problems.base.Problem.spec` (``{"name": registry name, **kwargs}``), or None.

Loading untrusted files
-----------------------
A checkpoint is untrusted input. :func:`torch.load` runs with ``weights_only=True`` (no pickled
code runs), and everything it returns is checked before anything is built: the keys and the
type of every field, the configuration against the size limits of :mod:`ppl_cvae.config`
(counted on the meta device, without allocating), each tensor's name, shape, dtype and
finiteness against the network the configuration describes, and the memory the model needs.
Every failure of the file is one :class:`~ppl_cvae.errors.CheckpointError` line naming the
file (a ``problem=`` argument whose shapes are not the model's is a
:class:`~ppl_cvae.errors.ShapeError`, as everywhere a problem and a model meet).

A problem record naming a registered problem is always rebuilt. A ``"package.module:factory"``
reference is only rebuilt when the safety policy of
:func:`~ppl_cvae.problems.base.resolve_problem_factory` allows it: a forged file could
otherwise name ``shutil:rmtree`` or ``subprocess:Popen`` with arguments of its choosing. The
policy allows (a) a class that defines ``forward``, ``sample_prior`` and ``simulate``; (b) a
function or class registered with :func:`~ppl_cvae.problems.base.register_problem`; (c) a plain
Python function defined in the named module whose source file is the user's own (outside the
standard library, ``site-packages``/``dist-packages`` and the Python installation, and not in
ppl_cvae); and never anything from the standard library or builtins, which are not even
imported. When a referenced problem cannot be rebuilt (refused, not importable, its factory
fails) the model still loads, ``meta["problem"]`` is None and ``meta["problem_error"]`` says
why and how to supply the problem: ``--problem package.module:factory`` on the command line,
``load_checkpoint(path, problem=...)`` in Python.

A problem is only as fixed as the code behind its record: a user's module can change after
the fit (another default noise level, an edited forward operator). So the problem is also
evaluated on two probe models when it is saved (``problem_check``) and again when it is
loaded (:mod:`ppl_cvae.problems.fingerprint`). A rebuilt problem that differs is not used
(``meta["problem"]`` None, ``meta["problem_error"]`` names what changed: refit, or pass the
problem explicitly); a problem passed explicitly whose noise or misfit scale differs is used,
with a warning (its code is not run: it may count its calls).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ppl_cvae._atomic import atomic_path
from ppl_cvae._memory import check_memory
from ppl_cvae._version import __version__
from ppl_cvae.checks import check_type, seeded_rng, shape_mismatch
from ppl_cvae.config import (
    ModelConfig,
    _show,
    check_model_memory,
    check_model_size,
    meta_cvae,
)
from ppl_cvae.data.layout import DataLayout
from ppl_cvae.errors import (
    CheckpointError,
    ConfigError,
    PplCvaeError,
    ProblemChangedWarning,
    ShapeError,
    UnknownProblemError,
)
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.adapter import check_problem
from ppl_cvae.problems.base import Problem
from ppl_cvae.problems.fingerprint import (
    check_fingerprint,
    fingerprint_changes,
    problem_fingerprint,
)
from ppl_cvae.problems.registry import rebuild_problem

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "MAX_RECORD_ITEMS",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "ppl_cvae.checkpoint.v2"
V1_FORMAT = "ppl_cvae.checkpoint.v1"

V1_RENAMES = (
    ("rec_x.", "recognition_net.x_encoder."),
    ("rec_y.", "recognition_net.y_encoder."),
    ("rec_head.", "recognition_net.head."),
    ("rec_gauss.", "recognition_net.gauss."),
    ("prior_y.", "prior_net.y_encoder."),
    ("prior_gauss.", "prior_net.gauss."),
    ("dec_y.", "decoder.y_encoder."),
    ("dec_in.", "decoder.input."),
    ("dec_skip.", "decoder.skip."),
    ("dec_scale.", "decoder.scale_body."),
    ("decoder.", "decoder.body."),
    ("raw_scale", "decoder.raw_scale"),
)
"""Prefixes of ``v1`` weight names and their ``v2`` replacements (first match wins)."""


def _v1_name(name: str) -> str:
    """Return the ``v2`` name of a ``v1`` state-dict entry."""
    for old, new in V1_RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


CHECKPOINT_KEYS = (
    "format",
    "version",
    "model_config",
    "state_dict",
    "misfit_std",
    "problem",
    "extra",
)
"""Keys of a checkpoint dict; a file with any other set of keys (beyond
:data:`OPTIONAL_KEYS`) is refused."""

OPTIONAL_KEYS = ("training_x_range", "data_layout", "problem_check")
"""Keys a checkpoint may hold or lack (files written before them lack them)."""

MAX_RECORD_ITEMS = 2**20
"""Most values (counting every element of every list and dict, shared ones each time they
appear) in the JSON-like fields ``model_config``, ``problem`` and ``extra``."""

_MAX_RECORD_DEPTH = 32
_MAX_NAME_LENGTH = 256
_SUPPLY_HINT = (
    "supply the problem with --problem package.module:factory (and --problem-arg KEY=VALUE) "
    "or load_checkpoint(..., problem=...)"
)


_OPEN_ENDS = {"x_low": math.inf, "x_high": -math.inf}
"""Buffers of ``x_transform="support"`` (the box of the support) that hold ``-inf`` / ``inf``
for an unbounded side, and the one infinity each may not hold."""


def _bad_values(key: str, value: torch.Tensor) -> bool:
    """Whether a stored tensor holds a value no fitted model has: NaN or an infinity.

    Parameters
    ----------
    key : str
        Its name in the state dict.
    value : Tensor
        Any shape; a tensor that is not floating point has no such value.

    Returns
    -------
    bool
        True for NaN anywhere, and for an infinity except the open ends of the box of
        ``x_transform="support"`` (``x_low = -inf``, ``x_high = inf``: a side without a bound).
    """
    if not value.is_floating_point():
        return False
    if key in _OPEN_ENDS:
        return bool((value.isnan() | (value == _OPEN_ENDS[key])).any())
    return not bool(value.isfinite().all())


def _one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (tracebacks, multi-line torch messages) and shorten ``text``."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _json_like_error(value: Any, where: str) -> str | None:
    """Return why ``value`` is not a JSON-like tree of bounded size, or None if it is.

    JSON-like: None, bool, int, float, str, and lists/tuples/dicts (string keys) of them, at
    most ``_MAX_RECORD_DEPTH`` levels deep, not recursive, and at most
    :data:`MAX_RECORD_ITEMS` values when shared sub-structures are expanded (a pickle can
    share one list many times: its expanded size grows exponentially with depth).
    """
    sizes: dict[int, int] = {}  # id -> expanded size of a container already checked
    active: set[int] = set()

    def size(node: Any, path: str, depth: int) -> int:
        if node is None or isinstance(node, (bool, int, float, str)):
            return 1
        if not isinstance(node, (list, tuple, dict)):
            raise ValueError(f"{path} holds a {type(node).__name__}")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ValueError(f"{path} contains itself")
        if depth >= _MAX_RECORD_DEPTH:
            raise ValueError(f"{path} is nested deeper than {_MAX_RECORD_DEPTH} levels")
        active.add(key)
        total = 1
        if isinstance(node, dict):
            items: list[tuple[str, Any]] = []
            for k, v in node.items():
                if not isinstance(k, str):
                    raise ValueError(f"{path} has a non-string key {_show(k, 30)}")
                items.append((f"{path}[{k[:30]!r}]", v))
        else:
            items = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        for child_path, child in items:
            total += size(child, child_path, depth + 1)
            if total > MAX_RECORD_ITEMS:
                raise ValueError(f"{path} holds more than {MAX_RECORD_ITEMS} values")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(value, where, 0)
    except ValueError as err:
        return str(err)
    return None


def _problem_record(record: Any, what: str) -> dict[str, Any]:
    """Return ``record`` as a plain dict if it is a valid problem record, else raise ValueError."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{what} must be a dict or None, got {type(record).__name__}")
    name = record.get("name")
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} needs a 'name' (a registry name or 'package.module:factory' of at most "
            f"{_MAX_NAME_LENGTH} characters), got {_show(name)}"
        )
    module_name, sep, attr = name.partition(":")
    # a registry name is only ever a dictionary key; a reference must be importable names
    if sep and not all(p.isidentifier() for p in [*module_name.split("."), *attr.split(".")]):
        raise ValueError(f"{what} name {_show(name)} is not of the form 'package.module:factory'")
    reason = _json_like_error(dict(record), what)
    if reason is not None:
        raise ValueError(f"{reason}; problem arguments must be JSON-like")
    return dict(record)


def save_checkpoint(
    path: str | os.PathLike[str],
    cvae: CVAE,
    *,
    problem: Problem | None = None,
    problem_ref: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``cvae`` to one file atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or path
        Target file (conventionally ``RUN_DIR/model.pt``).
    cvae : CVAE
        Model to store: its ``ModelConfig``, state dict (weights, standardisers, basis) and
        ``misfit_std``.
    problem : Problem, optional
        Stored as its :meth:`~ppl_cvae.problems.base.Problem.spec` when ``problem_ref`` is not
        given, so that loading rebuilds the forward operator; a problem whose ``spec()`` raises
        (e.g. Two Birds with user functions) or is not a JSON-like dict with a ``"name"`` is
        stored as None. Its fingerprint is stored too (``problem_check``, see the module
        docstring), so that loading can tell whether the problem it gets is this one.
    problem_ref : Mapping, optional
        ``{"name": "package.module:factory", **kwargs}``: the factory reference and the
        JSON-like keyword arguments the problem was built with (the CLI's ``--problem`` and
        ``--problem-arg``). Stored in preference to ``problem.spec()``; loading rebuilds it
        under the safety policy described in the module docstring.
    extra : Mapping, optional
        JSON-like metadata (training configuration, data source, ...).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ConfigError
        If ``cvae`` is not a :class:`~ppl_cvae.models.cvae.CVAE` (a model given as ``path``
        is named: the arguments are ``(path, cvae)``), ``problem_ref`` has no string ``"name"``
        or is not JSON-like, or ``extra`` is not a JSON-like dict.
    CheckpointError
        If a weight or buffer of ``cvae`` is NaN or infinite (the file could not be loaded).

    Examples
    --------
    >>> import tempfile
    >>> from ppl_cvae import ModelConfig
    >>> cvae = CVAE(ModelConfig(x_shape=(2,), y_shape=(2,), latent_dim=1, hidden_dims=(4,)))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_checkpoint(Path(folder) / "model.pt", cvae)
    ...     loaded, meta = load_checkpoint(path)
    >>> loaded.config == cvae.config, meta["problem"] is None
    (True, True)
    """
    if isinstance(path, CVAE):
        raise ConfigError(
            "save_checkpoint's first argument is the path and its second the model: call "
            "save_checkpoint(path, cvae)"
        )
    check_type(cvae, CVAE, "save_checkpoint()'s cvae")
    record: dict[str, Any] | None = None
    if problem_ref is not None:
        try:
            record = _problem_record(problem_ref, "problem_ref")
        except ValueError as err:
            raise ConfigError(str(err)) from err
    elif problem is not None:
        try:
            spec = problem.spec()
        except Exception:  # a user problem's spec() may raise anything
            spec = None
        try:
            record = _problem_record(spec, "problem.spec()") if spec is not None else None
        except ValueError:
            record = None
    extra = {} if extra is None else extra
    reason = (
        _json_like_error(dict(extra), "extra")
        if isinstance(extra, Mapping)
        else f"extra must be a dict, got {type(extra).__name__}"
    )
    if reason is not None:
        raise ConfigError(reason)
    state = {k: v.detach().cpu() for k, v in cvae.state_dict().items()}
    bad = [k for k, v in state.items() if _bad_values(k, v)]
    if bad:
        raise CheckpointError(
            f"not writing {str(path)!r}: {', '.join(bad[:5])} hold NaN or inf (did the fit "
            "diverge? lower the learning rate)"
        )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model_config": cvae.config.to_dict(),
        "state_dict": state,
        "misfit_std": float(cvae.misfit_std),
        "problem": record,
        "extra": dict(extra),
    }
    if cvae.training_x_range is not None:
        payload["training_x_range"] = torch.stack(cvae.training_x_range)
    if cvae.data_layout is not None:
        payload["data_layout"] = cvae.data_layout.to_record()
    fingerprint = problem_fingerprint(problem) if problem is not None else None
    if fingerprint is not None:
        payload["problem_check"] = fingerprint
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read_payload(path: Path) -> Any:
    """``torch.load`` the file with ``weights_only=True``; CheckpointError on any failure."""
    name = str(path)
    try:
        num_bytes = path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {_one_line(str(err))}") from err
    # torch.load holds the whole file in memory: refuse a file that cannot fit
    check_memory(num_bytes, f"reading checkpoint {name!r}", "load it on a larger machine")
    from ppl_cvae.data.io import damaged_zip_member

    damaged = damaged_zip_member(path)
    if damaged is not None:  # torch.load does not check the CRC-32s torch.save wrote
        raise CheckpointError(
            f"cannot read checkpoint {name!r}: its member {damaged!r} fails its CRC-32 check "
            "(the file was damaged after it was written)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on damaged files
        text = str(err).strip()
        if "weights_only" in text or "Weights only" in text:
            # torch's own text advises turning weights_only off, i.e. running the
            # file's code: not advice to pass on for an untrusted file
            raise CheckpointError(
                f"cannot read checkpoint {name!r}: it holds objects other than tensors, "
                "numbers, strings and plain containers (UnpicklingError); checkpoints are read "
                "without running code from them, so this file was not written by ppl-cvae or "
                "was altered since"
            ) from err
        first = _one_line(text.splitlines()[0] if text else "")
        raise CheckpointError(
            f"cannot read checkpoint {name!r}: {type(err).__name__}: {first}"
        ) from err


def _check_fields(payload: Any, name: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Check the keys and field types of a loaded payload; return its config and state dict."""
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if not (isinstance(fmt, str) and fmt in (CHECKPOINT_FORMAT, V1_FORMAT)):
        what = f"a {type(payload).__name__}"
        if isinstance(payload, dict):
            what = f"format {_show(fmt)}" if "format" in payload else "a dict without 'format'"
        raise CheckpointError(
            f"{name!r} is not a ppl_cvae checkpoint (found {what}; expected a dict with "
            f"format {CHECKPOINT_FORMAT!r})"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {name!r} lacks the keys {missing}")
    unexpected = [
        _show(k, 30)
        for k in payload
        if not (isinstance(k, str) and k in CHECKPOINT_KEYS + OPTIONAL_KEYS)
    ]
    if unexpected:
        raise CheckpointError(
            f"checkpoint {name!r} has unexpected keys {', '.join(unexpected[:5])}"
        )
    version = payload["version"]
    if not isinstance(version, str) or len(version) > _MAX_NAME_LENGTH:
        raise CheckpointError(
            f"checkpoint {name!r}: version must be a string, got {_show(version)}"
        )
    for key in ("model_config", "extra"):
        value = payload[key]
        reason = (
            _json_like_error(value, key)
            if isinstance(value, dict)
            else f"{key} must be a dict, got {type(value).__name__}"
        )
        if reason is not None:
            raise CheckpointError(f"checkpoint {name!r}: {reason}")
    misfit_std = payload["misfit_std"]
    if not (
        isinstance(misfit_std, float)
        or (isinstance(misfit_std, int) and not isinstance(misfit_std, bool))
    ) or not (0 < misfit_std < math.inf):
        raise CheckpointError(
            f"checkpoint {name!r}: misfit_std must be a finite number > 0, got {_show(misfit_std)}"
        )
    if payload["problem"] is not None:
        try:
            _problem_record(payload["problem"], "the problem record")
        except (ValueError, OverflowError) as err:
            raise CheckpointError(f"checkpoint {name!r}: {err}") from err
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except ConfigError as err:
        raise CheckpointError(
            f"checkpoint {name!r} has an invalid model_config: {_one_line(str(err))}"
        ) from err
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {name!r}: state_dict must be a dict, got {type(state).__name__}"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {name!r}: state_dict must map names to tensors, got "
                f"{_show(key, 40)}: {type(value).__name__}"
            )
    if fmt == V1_FORMAT:
        state = {_v1_name(key): value for key, value in state.items()}
    return config, state


def _check_state(
    config: ModelConfig, state: dict[str, torch.Tensor], name: str
) -> torch.dtype:
    """Compare the stored tensors with the network ``config`` describes (on the meta device).

    Returns the model's floating dtype: float32, or float64 when every floating tensor of
    ``state`` is float64 (a model moved with ``.double()`` before it was saved).
    """
    # counted first on the meta device: a forged size is refused without allocating
    try:
        check_model_size(config)
    except ConfigError as err:
        raise CheckpointError(
            f"checkpoint {name!r} has a model_config that cannot be loaded: {_one_line(str(err))}"
        ) from err
    expected = meta_cvae(config).state_dict()
    floating = {v.dtype for v in state.values() if v.is_floating_point()}
    if floating == {torch.float32, torch.float64}:  # a model is float32 or float64 throughout
        counts = {
            d: [k for k, v in state.items() if v.dtype == d]
            for d in (torch.float32, torch.float64)
        }
        fewer = min(counts, key=lambda d: len(counts[d]))
        raise CheckpointError(
            f"weights in {name!r} mix float32 and float64 tensors ({len(counts[fewer])} "
            f"{str(fewer).removeprefix('torch.')}, e.g. {counts[fewer][0]}); a model is one or "
            "the other throughout"
        )
    dtype = torch.float64 if floating == {torch.float64} else torch.float32
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(_show(k, 40) for k in missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(_show(k, 40) for k in unexpected[:3])}")
        raise CheckpointError(
            f"weights in {name!r} do not fit its model_config: {'; '.join(parts)} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, want in expected.items():
        got = state[key]
        if got.layout != torch.strided or got.device.type != "cpu" or got.is_quantized:
            raise CheckpointError(
                f"weights in {name!r}: {key} is a {got.layout} tensor on {got.device.type}; "
                "expected a dense CPU tensor"
            )
        want_dtype = dtype if want.dtype == torch.float32 else want.dtype
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want_dtype:
            raise CheckpointError(
                f"weights in {name!r}: {key} has shape {tuple(got.shape)} and dtype "
                f"{got.dtype}; the model_config needs {tuple(want.shape)}, {want_dtype}"
            )
        if _bad_values(key, got):
            raise CheckpointError(f"weights in {name!r}: {key} holds NaN or inf values")
        is_scale = key.endswith("standardiser.std") or key in ("coef_std", "x_floor")
        if is_scale and not bool((got > 0).all()):
            raise CheckpointError(f"weights in {name!r}: {key} holds values <= 0")
        if key == "whitener.scale_tril" and not (
            bool((got.diagonal() > 0).all()) and bool((got.triu(1) == 0).all())
        ):
            raise CheckpointError(
                f"weights in {name!r}: {key} is not lower triangular with a positive diagonal"
            )
    if "x_low" in expected and not bool((state["x_low"] < state["x_high"]).all()):
        raise CheckpointError(
            f"weights in {name!r}: the box of x_transform='support' needs x_low < x_high in "
            "every element"
        )
    return dtype


def _checked_range(value: Any, config: ModelConfig, name: str) -> torch.Tensor:
    """Return the stored ``training_x_range`` ``(2, *x_shape)`` or raise CheckpointError."""
    want = (2, *config.x_shape)
    if not (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and value.dtype == torch.float64
        and tuple(value.shape) == want
    ):
        got = (
            f"{value.dtype} tensor of shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise CheckpointError(
            f"checkpoint {name!r}: training_x_range must be a float64 CPU tensor of shape "
            f"{want}, got a {got}"
        )
    if not bool(torch.isfinite(value).all()) or not bool((value[0] <= value[1]).all()):
        raise CheckpointError(
            f"checkpoint {name!r}: training_x_range must be finite with low <= high in every "
            "element"
        )
    return value


def _checked_layout(value: Any, config: ModelConfig, name: str) -> DataLayout | None:
    """Return the stored ``data_layout`` as a DataLayout (None when absent) or raise."""
    if value is None:
        return None
    reason = _json_like_error(value, "data_layout") if isinstance(value, dict) else None
    if reason is not None:
        raise CheckpointError(f"checkpoint {name!r}: {reason}")
    try:
        layout = DataLayout.from_record(value)
        layout.check_shapes(config.x_shape, config.y_shape)
    except (ConfigError, ShapeError) as err:
        raise CheckpointError(f"checkpoint {name!r}: {err}") from err
    return layout


def _rebuild(
    record: dict[str, Any], config: ModelConfig, name: str
) -> tuple[Problem | None, str | None]:
    """Rebuild the stored problem: ``(problem, None)`` or ``(None, why not)``.

    Raises CheckpointError for a registered problem that cannot be built from the record
    (the file is damaged); every failure of a reference is returned as the message instead.
    """
    problem_name = record["name"]
    kwargs = {k: v for k, v in record.items() if k != "name"}
    is_reference = ":" in problem_name
    try:
        problem = rebuild_problem(problem_name, kwargs)
    except UnknownProblemError as err:  # e.g. a name a user module registers when imported
        return None, (
            f"cannot rebuild problem {problem_name!r} of {name!r}: {_one_line(str(err))}; "
            + _SUPPLY_HINT
        )
    except PplCvaeError as err:
        if is_reference:
            return None, (
                f"cannot rebuild problem {problem_name!r} of {name!r}: {_one_line(str(err))}; "
                + _SUPPLY_HINT
            )
        raise CheckpointError(
            f"checkpoint {name!r} holds a problem record that cannot be built: "
            f"{_one_line(str(err))}; pass the problem explicitly to override it"
        ) from err
    except Exception as err:  # a built-in constructor on forged values
        raise CheckpointError(
            f"checkpoint {name!r} holds a problem record that cannot be built: "
            f"{type(err).__name__}: {_one_line(str(err))}; pass the problem explicitly"
        ) from err
    mismatch = shape_mismatch(problem, config)
    if mismatch is not None:
        if is_reference:
            return None, (
                f"problem {problem_name!r} rebuilt for {name!r} {mismatch}; " + _SUPPLY_HINT
            )
        raise CheckpointError(f"checkpoint {name!r}: its problem {problem_name!r} {mismatch}")
    return problem, None



_RUN_FOLDER_FILES = ("config.json", "metrics.csv", "loss.png", "train_state.pt")
"""Files of a run folder that users give by mistake where the run (its ``model.pt``) is meant."""


def load_checkpoint(
    path: str | os.PathLike[str], problem: Problem | None = None
) -> tuple[CVAE, dict[str, Any]]:
    """Restore a CVAE that samples identically to the saved one, validating the file first.

    Parameters
    ----------
    path : str or path
        A checkpoint file, or a run folder containing ``model.pt``.
    problem : Problem, optional
        Overrides the stored problem (needed for problems the checkpoint cannot rebuild, e.g.
        Two Birds with user functions, or a reference the safety policy refuses). Its
        ``x_shape`` and ``y_shape`` must match the model's.

    Returns
    -------
    cvae : CVAE
        In eval mode, on the CPU.
    meta : dict
        ``"version"`` (str), ``"problem"`` (Problem or None), ``"problem_error"`` (None when
        ``problem`` is set, else one line saying why there is no problem and how to supply
        it: raise it where a problem is needed; a rebuilt problem whose fingerprint differs
        from the stored one is not used, and this line names what changed),
        ``"problem_changes"`` (list of str: what differs between the problem and the stored
        fingerprint, empty when nothing does or nothing was stored), ``"problem_spec"`` (the
        stored record or None) and ``"extra"`` (dict).

    Raises
    ------
    CheckpointError
        If the file is missing or unreadable; is not a dict with the format
        :data:`CHECKPOINT_FORMAT` and exactly the keys :data:`CHECKPOINT_KEYS`; a field has
        the wrong type (``model_config`` not a valid :class:`ModelConfig` dict, ``state_dict``
        not a dict of tensors, ``misfit_std`` not a finite number > 0, ``problem`` not None or
        a JSON-like record with a ``"name"``, ``extra`` not a JSON-like dict); the
        configuration is past the size limits of :mod:`ppl_cvae.config`; a tensor is
        missing, unexpected, of the wrong shape or dtype, NaN or infinite; ``problem_check``
        is malformed (:func:`~ppl_cvae.problems.fingerprint.check_fingerprint`); a registered
        problem cannot be built from its record or does not fit the model; the model needs
        its problem's ``coefficient_transform()`` and has none.
    ShapeError
        If ``problem`` is given and its event shapes are not the model's (as
        :func:`~ppl_cvae.checks.check_problem_matches`).
    ConfigError
        If ``problem`` is given and is not a :class:`~ppl_cvae.problems.base.Problem`.
    ResourceError
        If the file or the model does not fit in the memory this process may take.

    Warns
    -----
    ProblemChangedWarning
        A UserWarning: if ``problem`` is given for a conditional model and its noise or
        misfit scale differs from the stored fingerprint's (its code is not run: a rebuilt
        problem's forward operator and prior density are compared too, an unconditional
        model's prior alone); it is used all the same.

    Notes
    -----
    The order of the checks is cheapest first, and nothing is allocated before the stored
    tensors are known to fit the configuration: read the file (``weights_only=True``), check
    the fields, count the configuration on the meta device, compare every tensor, estimate
    the memory, rebuild the problem, build the model and load the weights. Problem references
    are rebuilt only under the safety policy of
    :func:`~ppl_cvae.problems.base.resolve_problem_factory` (see the module docstring).
    """
    path = Path(path)
    if path.name in _RUN_FOLDER_FILES and (path.parent / "model.pt").is_file():
        raise CheckpointError(
            f"{str(path)!r} is the run folder's {path.name}, not its checkpoint; give the run "
            f"folder {str(path.parent)!r} (or its model.pt)"
        )
    try:
        if path.is_dir():
            path = path / "model.pt"
        exists = path.is_file()
    except OSError as err:  # e.g. a name too long, or a folder without read permission
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err.strerror}") from err
    name = str(path)
    if not exists:
        raise CheckpointError(f"checkpoint {name!r} does not exist")
    payload = _read_payload(path)
    config, state = _check_fields(payload, name)
    dtype = _check_state(config, state, name)
    stored_range = payload.get("training_x_range")
    if stored_range is not None:
        stored_range = _checked_range(stored_range, config, name)
    layout = _checked_layout(payload.get("data_layout"), config, name)
    fingerprint = payload.get("problem_check")
    if fingerprint is not None:
        reason = check_fingerprint(fingerprint, config.x_shape, config.y_shape)
        if reason is not None:
            raise CheckpointError(f"checkpoint {name!r}: problem_check {reason}")
    check_model_memory(config, training=False)

    record = payload["problem"]
    problem_error: str | None = None
    changes: list[str] = []
    if problem is not None:
        problem = check_problem(problem, "the problem= argument")
        mismatch = shape_mismatch(problem, config)
        if mismatch is not None:
            raise ShapeError(f"the problem passed for {name!r} ({problem.name!r}) {mismatch}")
        # the noise alone (no problem code runs on a problem the caller chose), and nothing
        # for an unconditional model, which never sees the data
        changes = (
            fingerprint_changes(problem, fingerprint, parts=("noise",))
            if fingerprint is not None and config.conditional
            else []
        )
        if changes:
            warnings.warn(
                f"the problem passed for {name!r} ({problem.name!r}) is not the one the model "
                f"was fitted with: {'; '.join(changes)}; it is used as passed",
                ProblemChangedWarning,
                stacklevel=2,
            )
    elif record is None:
        problem_error = (
            f"checkpoint {name!r} stores no problem (fitted on data, or its problem could not "
            "be recorded); " + _SUPPLY_HINT
        )
    else:
        problem, problem_error = _rebuild(dict(record), config, name)
        parts = ("noise", "forward", "prior") if config.conditional else ("prior",)
        changes = (
            fingerprint_changes(problem, fingerprint, parts=parts)
            if problem is not None and fingerprint is not None
            else []
        )
        if changes:
            problem_error = (
                f"problem {record['name']!r} rebuilt for {name!r} is not the one the model was "
                f"fitted with ({'; '.join(changes)}): its code or defaults changed since the "
                "fit, or its factory builds another problem each time (e.g. from an unseeded "
                "random draw); refit, or supply the problem explicitly to use it as it is now "
                "(--problem package.module:factory, or load_checkpoint(..., problem=...))"
            )
            problem = None

    transform = None
    if config.constrained_coefficients:
        if problem is None:
            reason = problem_error or "its problem has no coefficient_transform()"
            raise CheckpointError(f"{name!r} needs its problem's coefficient_transform(): {reason}")
        try:
            transform = problem.coefficient_transform()
        except Exception as err:  # problem code may raise anything
            raise CheckpointError(
                f"{name!r}: the problem's coefficient_transform() failed: "
                f"{type(err).__name__}: {_one_line(str(err))}"
            ) from err
        if transform is None:
            raise CheckpointError(
                f"{name!r} needs its problem's coefficient_transform(): "
                f"problem {problem.name!r} has no coefficient_transform()"
            )
    try:
        with seeded_rng(0):  # the initial weights are replaced: leave the caller's RNG alone
            cvae = CVAE(
                config,
                coefficient_transform=transform,
                forward_operator=problem.forward if problem is not None else None,
                misfit_std=float(payload["misfit_std"]),
            ).to(dtype)
        cvae.load_state_dict(state)
    except (PplCvaeError, RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"weights in {name!r} do not fit its configuration: {_one_line(str(err))}"
        ) from err
    if stored_range is not None:
        cvae.set_training_x_range(stored_range[0], stored_range[1])
    cvae.set_data_layout(layout)
    cvae.eval()
    meta = {
        "version": payload["version"],
        "problem": problem,
        "problem_error": problem_error,
        "problem_changes": changes,
        "problem_spec": record,
        "extra": payload["extra"],
    }
    return cvae, meta
