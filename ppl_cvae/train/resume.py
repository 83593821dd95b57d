"""Resumable training: periodic training-state files and exact continuation of :func:`fit`.

A training-state file (conventionally ``RUN/train_state.pt``) holds everything the fit loop
needs to continue as if it had never stopped: weights, optimiser state, early-stopping state,
history, the position in the run, the data-stream state and every RNG state. :func:`fit`
writes it (atomically, through :func:`ppl_cvae._atomic.atomic_path`) when a
:class:`CheckpointPolicy` says so, and continues from one given as ``resume_from``.

Format
------
One ``torch.save`` file holding a dict with exactly the keys :data:`STATE_KEYS`:

=====================  ==============================================================
``format``             ``"ppl_cvae.train_state.v2"`` (:data:`STATE_FORMAT`; a ``v1`` file,
                       which has no ``data_stream``, is read as one with ``data_stream``
                       None)
``version``            ppl_cvae version that wrote it (str)
``torch_version``      torch version that wrote it (str)
``record``             JSON-like dict: what the caller needs to rebuild the run (the CLI
                       stores its ``config.json`` document here)
``model_config``       :meth:`ModelConfig.to_dict` of the model being trained
``train_config``       :meth:`TrainConfig.to_dict` of the run
``data_digest``        SHA-256 (hex) of the training pairs ``x, y`` given to :func:`fit`
``position``           ``epoch`` (1-based, the epoch in progress), ``step`` (SVI steps of it
                       already taken), ``steps_done`` (all steps so far),
                       ``epoch_loss_sum`` (sum of the epoch's unnormalised step losses so far,
                       nats), ``epoch_seconds`` (its wall-clock time so far)
``model``              ``{name: Tensor}``: the CVAE's state dict
``optimizer``          :meth:`FusedClippedAdam.get_state` (Adam moments, step counts, the
                       decayed learning rate)
``early_stopping``     ``best_loss``, ``best_epoch``, ``bad_epochs``, ``best_state`` (a state
                       dict or None)
``history``            list of per-epoch rows (:attr:`FitResult.history`)
``step_losses``        float64 tensor, shape (steps_done,): loss per step per observation
``rng``                ``generator`` (the run's torch.Generator now; at an epoch's start
                       the same as the next), ``epoch_generator``
                       (its state when the epoch in progress began), ``torch`` (global CPU
                       RNG), ``numpy`` and ``python`` (global RNGs as tensors and numbers)
``data_stream``        None for pairs in memory and resimulated pairs (the generator
                       replays them); for a batch source with a position of its own its
                       ``state_dict()``: a simulation stream (``kind`` ``"stream"``: seed,
                       minibatch size, rank, world size, ``position`` = stream index of the
                       next minibatch, steps per epoch, digest of the last minibatch) or a
                       file read lazily (``kind`` ``"lazy"``: pair count, minibatch, chunk
                       and buffer sizes, seed, digest of the validation rows, and the
                       moments of ``x`` and ``y``), see :mod:`ppl_cvae.train.sources`
=====================  ==============================================================

Every value is a tensor or a plain Python type, so the file loads with
``torch.load(weights_only=True)``: no pickled code runs. Pairs in memory and resimulated
pairs are replayed rather than stored: restoring ``epoch_generator`` and drawing the epoch's
pairs and permutation again gives the same shuffle (and, with ``resimulate``, the same fresh
simulations) as the interrupted run; the generator state after that replay must equal
``generator`` or the file is refused (the simulator or data changed). A simulation stream
continues at the stored stream index (each minibatch's seed is a function of its index, so
nothing is simulated twice; the last minibatch is drawn again once and compared with its
digest), and a lazily read file starts the interrupted epoch's shuffle again (its generator
is seeded by the epoch number) at the saved minibatch, reading only the buffers from there
on; the file's moments must equal the stored ones.

What is bit-identical
---------------------
On CPU, with the same torch build, the same thread count and the same settings, a resumed run
(pairs in memory, resimulated, ``--stream`` with any number of workers, or ``--lazy``)
reproduces the uninterrupted one exactly: the final weights, ``step_losses`` and the loss,
KL-weight and learning-rate columns of the history (only the ``seconds`` column differs).
Across different thread counts (reductions are ordered differently), torch versions, or on
GPUs with non-deterministic kernels the continuation is statistically equivalent but not
bit-identical. Lost work is at most the steps since the last save.

References
----------
The approach (save model, optimiser and RNG state; restore before the next step) is the one of
PyTorch's "Saving and loading a general checkpoint" recipe and of PyTorch Lightning's
fault-tolerant training; the exact data-stream replay follows from one seeded
``torch.Generator`` driving every draw of the data.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl_cvae._atomic import atomic_path
from ppl_cvae._version import __version__
from ppl_cvae.config import ModelConfig, TrainConfig
from ppl_cvae.errors import CheckpointError, ConfigError
from ppl_cvae.train.checkpoint import _bad_values, _json_like_error, _one_line, _read_payload

if TYPE_CHECKING:
    from ppl_cvae.models.cvae import CVAE
    from ppl_cvae.train.fit import FitResult, _EarlyStopping
    from ppl_cvae.train.optim import FusedClippedAdam

__all__ = [
    "STATE_FILE",
    "STATE_FORMAT",
    "STATE_KEYS",
    "CheckpointPolicy",
    "TrainState",
    "clean_run_temporaries",
    "data_digest",
    "discard_run_state",
    "find_resumable",
    "load_train_state",
    "lock_run_folder",
    "prepare_run_folder",
    "run_lock_path",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "ppl_cvae.train_state.v2"
_LEGACY_FORMAT = "ppl_cvae.train_state.v1"  # read as v2 with data_stream None
STATE_FILE = "train_state.pt"
"""Name of the training-state file inside a run folder."""

STATE_KEYS = (
    "format",
    "version",
    "torch_version",
    "record",
    "model_config",
    "train_config",
    "data_digest",
    "position",
    "model",
    "optimizer",
    "early_stopping",
    "history",
    "step_losses",
    "rng",
    "data_stream",
)
"""Keys of a training-state dict; a file with any other set of keys is refused."""

_POSITION_KEYS = ("epoch", "step", "steps_done", "epoch_loss_sum", "epoch_seconds")
_EARLY_KEYS = ("best_loss", "best_epoch", "bad_epochs", "best_state")
_RNG_KEYS = ("generator", "epoch_generator", "torch", "numpy", "python")
_ROW_KEYS = ("epoch", "train_loss", "val_loss", "kl_weight", "learning_rate", "seconds")
_STREAM_KEYS = (
    "kind",
    "seed",
    "batch_size",
    "rank",
    "world_size",
    "position",
    "steps_per_epoch",
    "digest",
)
_LAZY_KEYS = (
    "kind",
    "num_pairs",
    "batch_size",
    "chunk_rows",
    "buffer_chunks",
    "seed",
    "exclude",
    "moments",
)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When :func:`fit` writes its training-state file, and where.

    A save happens after an SVI step once ``every_steps`` steps or ``every_minutes`` minutes
    have passed since the previous save (or the start), and at the end of every epoch (after
    validation and early stopping) when ``every_epoch`` is set. Each save rewrites ``path``
    atomically, so a crash during a save leaves the previous state intact.

    Parameters
    ----------
    path : str or path
        Training-state file (``RUN/train_state.pt`` in the CLI); its folder must exist.
    every_steps : int or None, default None
        Save after this many SVI steps (>= 1); None: no step-count trigger.
    every_minutes : float or None, default 10.0
        Save once this many minutes of wall-clock time (> 0) have passed; None: no timer.
    every_epoch : bool, default True
        Save at the end of each epoch except the last.
    record : Mapping, optional
        JSON-like metadata stored in the file (the CLI stores its run file there).

    Raises
    ------
    ConfigError
        If ``every_steps < 1``, ``every_minutes`` is not a positive finite number, or
        ``record`` is not JSON-like.

    Examples
    --------
    >>> CheckpointPolicy("train_state.pt", every_steps=100).every_minutes
    10.0
    """

    path: str | os.PathLike[str]
    every_steps: int | None = None
    every_minutes: float | None = 10.0
    every_epoch: bool = True
    record: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        steps = self.every_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ConfigError(f"every_steps must be an integer >= 1 or None, got {steps!r}")
        minutes = self.every_minutes
        if minutes is not None and not (
            isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0
        ):
            raise ConfigError(f"every_minutes must be a number > 0 or None, got {minutes!r}")
        if self.record is not None:
            reason = (
                _json_like_error(dict(self.record), "record")
                if isinstance(self.record, Mapping)
                else f"record must be a dict, got {type(self.record).__name__}"
            )
            if reason is not None:
                raise ConfigError(reason)


@dataclass(frozen=True)
class TrainState:
    """A checked training-state file (see the module docstring for the fields).

    Attributes
    ----------
    path : Path
        The file it was read from.
    payload : dict
        The loaded dict, keys :data:`STATE_KEYS`.
    """

    path: Path
    payload: dict[str, Any]

    @property
    def record(self) -> dict[str, Any]:
        """Return the caller's JSON-like record (the CLI's run file)."""
        return dict(self.payload["record"])

    @property
    def epoch(self) -> int:
        """Return the epoch in progress when the state was saved (1-based)."""
        return int(self.payload["position"]["epoch"])

    @property
    def steps_done(self) -> int:
        """Return the number of SVI steps taken before the save."""
        return int(self.payload["position"]["steps_done"])

    @property
    def train_config(self) -> TrainConfig:
        """Return the run's training configuration."""
        return TrainConfig.from_dict(self.payload["train_config"])

    @property
    def model_config(self) -> ModelConfig:
        """Return the configuration of the model being trained."""
        return ModelConfig.from_dict(self.payload["model_config"])

    @property
    def step_losses(self) -> list[float]:
        """Return the loss per step per observation of the steps taken so far."""
        return [float(v) for v in self.payload["step_losses"].tolist()]

    @property
    def history(self) -> list[dict[str, float]]:
        """Return the per-epoch rows of the finished epochs."""
        return [dict(row) for row in self.payload["history"]]


# ----------------------------------------------------------------------------- helpers
def data_digest(x: torch.Tensor | None, y: torch.Tensor | None) -> str:
    """Return the SHA-256 (hex) of the training pairs' dtypes, shapes and bytes.

    Parameters
    ----------
    x : Tensor, shape (N, *x_shape), or None
    y : Tensor, shape (N, *y_shape), or None

    Returns
    -------
    str
        64 hex digits; equal for bit-identical pairs.

    Examples
    --------
    >>> data_digest(torch.zeros(2), None) == data_digest(torch.zeros(2), None)
    True
    """
    digest = hashlib.sha256()
    for tensor in (x, y):
        if tensor is None:
            digest.update(b"none;")
            continue
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{tuple(array.shape)};".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _rng_state(generator: torch.Generator, epoch_generator: torch.Tensor) -> dict[str, Any]:
    """Return every RNG state as tensors and plain numbers (loadable with weights_only)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "generator": generator.get_state(),
        "epoch_generator": epoch_generator.clone(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def _set_global_rng(rng: Mapping[str, Any]) -> None:
    """Restore the global torch, numpy and Python RNGs from :func:`_rng_state` output."""
    torch.set_rng_state(rng["torch"])
    nps = rng["numpy"]
    np.random.set_state(
        (
            "MT19937",
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    pys = rng["python"]
    random.setstate(
        (pys["version"], tuple(int(v) for v in pys["state"].tolist()), pys["gauss_next"])
    )


def _state_dict(cvae: CVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in cvae.state_dict().items()}


# ----------------------------------------------------------------------------- checking
def _fail(state: str, reason: str) -> CheckpointError:
    return CheckpointError(f"training state {state!r} {reason}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_dict(value: Any, keys: tuple[str, ...], what: str, name: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(keys):
        got = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
        raise _fail(name, f"has a malformed {what} (found {got}; expected keys {list(keys)})")
    return value


def _check_tensor_dict(
    value: Any, reference: Mapping[str, torch.Tensor], what: str, name: str
) -> None:
    """Check ``value`` has the names, shapes and dtypes of ``reference`` and finite floats."""
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise _fail(name, f"has a malformed {what} (expected a dict of tensors)")
    if set(value) != set(reference):
        diff = sorted(set(value) ^ set(reference))[:3]
        raise _fail(name, f"{what} does not match the model (names differ: {diff})")
    for key, ref in reference.items():
        got = value[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise _fail(
                name,
                f"{what}[{key!r}] has shape {tuple(got.shape)} {got.dtype}; the model has "
                f"{tuple(ref.shape)} {ref.dtype}",
            )
        if _bad_values(key, got):
            raise _fail(name, f"{what}[{key!r}] holds NaN or inf")


def _check_byte_state(value: Any, what: str, name: str) -> None:
    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1):
        raise _fail(name, f"has a malformed RNG state {what} (expected a 1-d uint8 tensor)")


def _check_rng(rng: Any, name: str) -> None:
    rng = _check_dict(rng, _RNG_KEYS, "rng", name)
    for key in ("generator", "epoch_generator", "torch"):
        _check_byte_state(rng[key], key, name)
    nps = _check_dict(
        rng["numpy"], ("keys", "pos", "has_gauss", "cached_gaussian"), "rng.numpy", name
    )
    keys = nps["keys"]
    if not (
        isinstance(keys, torch.Tensor)
        and keys.dtype == torch.int64
        and tuple(keys.shape) == (624,)
        and bool(((keys >= 0) & (keys < 2**32)).all())
        and _is_int(nps["pos"])
        and 0 <= nps["pos"] <= 624
        and _is_int(nps["has_gauss"])
        and _is_real(nps["cached_gaussian"])
    ):
        raise _fail(name, "has a malformed numpy RNG state")
    pys = _check_dict(rng["python"], ("version", "state", "gauss_next"), "rng.python", name)
    state = pys["state"]
    if not (
        _is_int(pys["version"])
        and isinstance(state, torch.Tensor)
        and state.dtype == torch.int64
        and tuple(state.shape) == (625,)
        and bool(((state >= 0) & (state < 2**32)).all())
        and (pys["gauss_next"] is None or _is_real(pys["gauss_next"]))
    ):
        raise _fail(name, "has a malformed Python RNG state")


def _check_moments(value: Any, name: str) -> None:
    if value is None:
        return
    keys = ("x", "y", "pairing") if isinstance(value, dict) and "pairing" in value else ("x", "y")
    value = _check_dict(value, keys, "data_stream.moments", name)
    for key, moments in value.items():
        moments = _check_dict(moments, ("count", "mean", "m2"), f"moments of {key}", name)
        mean, m2 = moments["mean"], moments["m2"]
        if not (
            _is_int(moments["count"])
            and moments["count"] >= 0
            and all(
                isinstance(t, torch.Tensor)
                and t.dtype == torch.float64
                and bool(t.isfinite().all())
                for t in (mean, m2)
            )
            and mean.shape == m2.shape
            and bool((m2 >= 0).all())
        ):
            raise _fail(name, f"has malformed moments of {key} in its data stream")


def _check_data_stream(value: Any, name: str) -> None:
    """Check the structure of a batch source's state (None, a stream's or a lazy file's)."""
    if value is None:
        return
    kind = value.get("kind") if isinstance(value, dict) else None
    if kind not in ("stream", "lazy"):
        raise _fail(name, f"has a data stream of unknown kind {kind!r}")
    keys = _STREAM_KEYS if kind == "stream" else _LAZY_KEYS
    value = _check_dict(value, keys, f"{kind} data stream", name)
    ints = [k for k in keys if k not in ("kind", "digest", "exclude", "moments")]
    if not all(_is_int(value[k]) and value[k] >= 0 for k in ints):
        raise _fail(name, f"{kind} data stream needs integers >= 0 for {ints}")
    if kind == "stream":
        if not (
            value["batch_size"] >= 1
            and value["steps_per_epoch"] >= 1
            and 0 <= value["rank"] < value["world_size"]
            and (value["digest"] is None or _is_digest(value["digest"]))
        ):
            raise _fail(name, f"has an impossible stream state {value!r}")
        return
    if not (
        value["num_pairs"] >= 2
        and min(value["batch_size"], value["chunk_rows"], value["buffer_chunks"]) >= 1
        and _is_digest(value["exclude"])
    ):
        raise _fail(name, "has an impossible lazy-file state")
    _check_moments(value["moments"], name)


def _is_digest(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _check_optimizer(value: Any, params: list[torch.Tensor], name: str) -> None:
    """Check the FusedClippedAdam state against the parameters in param-store order."""
    if value == {}:
        return
    if (
        not isinstance(value, dict)
        or set(value) != {"fused"}
        or not isinstance(value["fused"], dict)
    ):
        raise _fail(name, "has a malformed optimizer state (expected {'fused': state_dict})")
    fused = value["fused"]
    groups, state = fused.get("param_groups"), fused.get("state")
    if (
        set(fused) != {"state", "param_groups"}
        or not isinstance(groups, list)
        or not isinstance(state, dict)
    ):
        raise _fail(name, "has a malformed optimizer state_dict")
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise _fail(name, "has malformed optimizer param_groups")
    indices = [i for g in groups for i in g["params"]]
    if len(groups) != 1 or indices != list(range(len(params))):
        raise _fail(
            name,
            f"optimizer state covers {len(indices)} parameters; the model has {len(params)}",
        )
    group = groups[0]
    for key in ("lr", "lrd", "clip_norm", "eps", "weight_decay"):
        if not (_is_real(group.get(key)) and math.isfinite(group[key])):
            raise _fail(name, f"optimizer param_groups[0][{key!r}] must be a finite number")
    betas = group.get("betas")
    if not (
        isinstance(betas, (tuple, list))
        and len(betas) == 2
        and all(_is_real(b) and 0 <= b < 1 for b in betas)
        and isinstance(group.get("centered_variance", False), bool)
    ):
        raise _fail(name, "optimizer param_groups[0] has malformed betas or centered_variance")
    for index, entry in state.items():
        if not (_is_int(index) and 0 <= index < len(params) and isinstance(entry, dict)):
            raise _fail(name, f"has a malformed optimizer state entry {index!r}")
        if not _is_int(entry.get("step")) or entry["step"] < 1:
            raise _fail(name, f"optimizer state {index} has no step count")
        for key in ("exp_avg", "exp_avg_sq"):
            moment = entry.get(key)
            if not (
                isinstance(moment, torch.Tensor)
                and moment.shape == params[index].shape
                and bool(moment.isfinite().all())
            ):
                raise _fail(name, f"optimizer state {index}.{key} does not fit its parameter")


def _check_history(rows: Any, epochs: int, name: str) -> None:
    if not isinstance(rows, list) or len(rows) != epochs - 1:
        raise _fail(name, f"history must hold {epochs - 1} rows before epoch {epochs}")
    for i, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or set(row) != set(_ROW_KEYS)
            or not all(_is_real(v) for v in row.values())
        ):
            raise _fail(name, f"history row {i} is malformed")


def _param_order(cvae: CVAE) -> list[torch.Tensor]:
    """Return the parameters in the order FusedClippedAdam adds them (param-store names)."""
    named = sorted((f"{cvae.pyro_name}$$${n}", p) for n, p in cvae.named_parameters())
    return [p for _, p in named]


def load_train_state(path: str | os.PathLike[str]) -> TrainState:
    """Read and check a training-state file (no pickled code runs).

    The structure is checked here: keys, field types, the position in the run, the RNG
    states and finiteness. :func:`fit` checks the rest against the run it continues (model
    and training configuration, data digest, tensor shapes, data-stream replay).

    Parameters
    ----------
    path : str or path
        ``RUN/train_state.pt``.

    Returns
    -------
    TrainState

    Raises
    ------
    CheckpointError
        If the file cannot be read (missing, truncated, not a torch file), is not a
        training-state file, or a field is malformed; the message names the file.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise CheckpointError(f"no training state {name!r}: the file does not exist")
    payload = _read_payload(path)  # torch.load(weights_only=True), CheckpointError on failure
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == _LEGACY_FORMAT and "data_stream" not in payload:
        payload = {**payload, "format": STATE_FORMAT, "data_stream": None}
    if fmt not in (STATE_FORMAT, _LEGACY_FORMAT):
        raise _fail(name, f"is not a ppl_cvae training state (expected format {STATE_FORMAT!r})")
    if set(payload) != set(STATE_KEYS):
        diff = sorted(str(k) for k in set(payload) ^ set(STATE_KEYS))[:5]
        raise _fail(name, f"has the wrong keys (differences: {diff})")
    for key in ("version", "torch_version", "data_digest"):
        if not isinstance(payload[key], str) or len(payload[key]) > 256:
            raise _fail(name, f"field {key!r} must be a short string")
    for key in ("record", "model_config", "train_config"):
        reason = (
            _json_like_error(payload[key], key)
            if isinstance(payload[key], dict)
            else (f"{key} must be a dict")
        )
        if reason is not None:
            raise _fail(name, f"is malformed: {reason}")
    try:
        train_config = TrainConfig.from_dict(payload["train_config"])
        ModelConfig.from_dict(payload["model_config"])
    except ConfigError as err:
        raise _fail(name, f"holds an invalid configuration: {_one_line(str(err))}") from err
    pos = _check_dict(payload["position"], _POSITION_KEYS, "position", name)
    epoch, step, done = pos["epoch"], pos["step"], pos["steps_done"]
    if not (
        all(_is_int(v) for v in (epoch, step, done))
        and 1 <= epoch <= train_config.num_epochs
        and 0 <= step <= done
        and all(
            _is_real(pos[k]) and math.isfinite(pos[k]) for k in ("epoch_loss_sum", "epoch_seconds")
        )
    ):
        raise _fail(name, f"has an impossible position {pos!r}")
    losses = payload["step_losses"]
    if not (
        isinstance(losses, torch.Tensor)
        and losses.dtype == torch.float64
        and tuple(losses.shape) == (done,)
        and bool(losses.isfinite().all())
    ):
        raise _fail(name, f"step_losses must be {done} finite float64 values")
    _check_history(payload["history"], epoch, name)
    early = _check_dict(payload["early_stopping"], _EARLY_KEYS, "early_stopping", name)
    if not (
        _is_real(early["best_loss"])
        and _is_int(early["best_epoch"])
        and _is_int(early["bad_epochs"])
    ):
        raise _fail(name, "has a malformed early-stopping state")
    _check_rng(payload["rng"], name)
    _check_data_stream(payload["data_stream"], name)
    if payload["data_stream"] is not None and payload["data_stream"]["kind"] == "stream":
        stream = payload["data_stream"]
        if stream["position"] != (epoch - 1) * stream["steps_per_epoch"] + step:
            raise _fail(
                name,
                f"stream position {stream['position']} does not fit epoch {epoch}, step {step}",
            )
    return TrainState(path, payload)


# ----------------------------------------------------------------------------- session
class TrainingSession:
    """The fit loop's hooks for saving and restoring training state (one per :func:`fit`).

    Built by :meth:`start`; :func:`fit` calls :meth:`resume_point` once, then per epoch
    :meth:`epoch_started` (before the epoch's data are drawn), :meth:`data_drawn` (after),
    :meth:`after_step` (after each SVI step), :meth:`epoch_seconds` and
    :meth:`epoch_finished` (after early stopping), and nothing else, so other loop changes
    (data sources, devices) only need to keep those calls in place. A batch source that is
    not driven by the run's ``torch.Generator`` alone has ``state_dict`` and ``resume``
    (:class:`~ppl_cvae.train.sources.ResumableSource`): its state is saved as
    ``data_stream`` and restored by its ``resume``; with several processes only one should
    be given a policy.
    """

    def __init__(
        self,
        policy: CheckpointPolicy | None,
        *,
        cvae: CVAE,
        optim: FusedClippedAdam,
        stopper: _EarlyStopping,
        result: FitResult,
        generator: torch.Generator,
        config: TrainConfig,
        digest: str,
        num_train: int,
        source: Any = None,
    ) -> None:
        self.policy = policy
        # a source with a position of its own (a stream, a lazily read file); else replayed
        self.source = source if hasattr(source, "resume") else None
        self.skipped_pairs: int | None = None
        self.cvae, self.optim, self.stopper, self.result = cvae, optim, stopper, result
        self.generator, self.config, self.digest = generator, config, digest
        self.num_train = num_train
        self.epoch = 1
        self.epoch_generator = generator.get_state()
        self.resume_at: dict[str, Any] | None = None  # position of a restored state
        self.expected_generator: torch.Tensor | None = None
        self.last_save = time.monotonic()
        self.steps_since_save = 0
        self.epoch_clock = time.perf_counter()
        self.num_saves = 0
        self.save_seconds = 0.0

    @classmethod
    def start(
        cls,
        policy: CheckpointPolicy | None,
        resume_from: TrainState | None,
        **parts: Any,
    ) -> TrainingSession | None:
        """Return a session (restoring ``resume_from`` into the parts), or None if not needed.

        Parameters
        ----------
        policy : CheckpointPolicy or None
        resume_from : TrainState or None
        **parts
            ``cvae``, ``optim``, ``stopper``, ``result``, ``generator``, ``config``,
            ``digest`` (:func:`data_digest` of the pairs), ``num_train`` (training pairs
            per epoch) and ``source`` (the batch source; optional) of the run.

        Raises
        ------
        CheckpointError
            If ``resume_from`` belongs to another run: other configuration, other data,
            other model shapes, another kind of batch source (pairs in memory, a stream, a
            lazily read file) or a source whose ``resume`` refuses the stored state.
        """
        if policy is None and resume_from is None:
            return None
        session = cls(policy, **parts)
        if resume_from is not None:
            session._restore(resume_from)
        return session

    # -- restoring
    def _restore(self, state: TrainState) -> None:
        name, payload = str(state.path), state.payload
        if state.train_config != self.config:
            raise _fail(name, "was written by a run with other training settings (train_config)")
        if state.model_config != self.cvae.config:
            raise _fail(name, "was written for another model configuration (model_config)")
        if payload["data_digest"] != self.digest:
            raise _fail(name, "was written for other training data (the data digest differs)")
        reference = self.cvae.state_dict()
        _check_tensor_dict(payload["model"], reference, "model", name)
        early = payload["early_stopping"]
        if early["best_state"] is not None:
            _check_tensor_dict(early["best_state"], reference, "early_stopping.best_state", name)
        _check_optimizer(payload["optimizer"], _param_order(self.cvae), name)
        pos = payload["position"]
        steps_per_epoch = math.ceil(self.num_train / self.config.batch_size)
        if pos["step"] > steps_per_epoch or pos["steps_done"] != (
            (pos["epoch"] - 1) * steps_per_epoch + pos["step"]
        ):
            raise _fail(name, f"position {pos!r} does not fit {steps_per_epoch} steps per epoch")
        stream = payload["data_stream"]
        kind = "pairs in memory or resimulated pairs" if stream is None else stream["kind"]
        mine = "pairs in memory or resimulated pairs"
        if self.source is not None:
            mine = str(self.source.state_dict()["kind"])
        if kind != mine:
            raise _fail(name, f"was written by a fit on {kind}; this fit trains on {mine}")
        if self.source is not None:
            self.skipped_pairs = int(self.source.resume(pos["epoch"], pos["step"], stream))
        self.cvae.load_state_dict(payload["model"])
        self.optim.set_state(payload["optimizer"])
        self.stopper.best_loss = float(early["best_loss"])
        self.stopper.best_epoch = int(early["best_epoch"])
        self.stopper.bad_epochs = int(early["bad_epochs"])
        self.stopper.best_state = early["best_state"]
        self.result.history = state.history
        self.result.step_losses = state.step_losses
        rng = payload["rng"]
        self.generator.set_state(rng["epoch_generator"])
        # a save at an epoch's end knows no post-draw state: it stores the epoch-start one twice
        if not torch.equal(rng["generator"], rng["epoch_generator"]):
            self.expected_generator = rng["generator"]
        _set_global_rng(rng)
        self.resume_at = dict(pos)
        self.epoch = int(pos["epoch"])

    def resume_point(self) -> tuple[int, int, float, int | None]:
        """Return ``(first_epoch, first_step, epoch_loss_sum, skipped_pairs)``: where to start.

        ``skipped_pairs`` is None when the source replays the resumed epoch from its start
        (the loop skips ``first_step`` minibatches), else the pairs of the ``first_step``
        minibatches the source has skipped itself (its next epoch starts after them).
        """
        if self.resume_at is None:
            return 1, 0, 0.0, None
        pos = self.resume_at
        return int(pos["epoch"]), int(pos["step"]), float(pos["epoch_loss_sum"]), self.skipped_pairs

    def epoch_started(self, epoch: int) -> None:
        """Record the generator state at the start of ``epoch`` (before its data are drawn)."""
        self.epoch = epoch
        self.epoch_generator = self.generator.get_state()
        self.epoch_clock = time.perf_counter()
        if self.resume_at is not None and epoch == self.resume_at["epoch"]:
            self.epoch_clock -= float(self.resume_at["epoch_seconds"])

    def data_drawn(self) -> None:
        """Check, on the resumed epoch, that replaying the data stream reached the saved state.

        Raises
        ------
        CheckpointError
            If the generator state after drawing the epoch's data differs from the saved one
            (the simulator, the data or their order changed since the save).
        """
        if self.expected_generator is None:
            return
        expected, self.expected_generator = self.expected_generator, None
        if not torch.equal(self.generator.get_state(), expected):
            raise CheckpointError(
                "the data stream does not replay as saved (the simulator or the training data "
                "changed since the training state was written); start the run again"
            )

    def epoch_seconds(self) -> float:
        """Return the wall-clock seconds of the epoch in progress (across a resume)."""
        return time.perf_counter() - self.epoch_clock

    def after_step(self, step: int, epoch_loss_sum: float) -> None:
        """Save if the step or time trigger fired; ``step`` counts the epoch's steps taken."""
        policy = self.policy
        if policy is None:
            return
        self.steps_since_save += 1
        due_steps = policy.every_steps is not None and self.steps_since_save >= policy.every_steps
        due_time = (
            policy.every_minutes is not None
            and time.monotonic() - self.last_save >= 60.0 * policy.every_minutes
        )
        if due_steps or due_time:
            self._save(self.epoch, step, epoch_loss_sum, self.epoch_seconds(), self.epoch_generator)

    def epoch_finished(self, epoch: int, final: bool) -> None:
        """Save the state at the start of the next epoch if ``every_epoch`` (not after the last)."""
        self.resume_at = None
        if self.policy is None or final or not self.policy.every_epoch:
            return
        self._save(epoch + 1, 0, 0.0, 0.0, self.generator.get_state())

    def _save(
        self,
        epoch: int,
        step: int,
        epoch_loss_sum: float,
        epoch_seconds: float,
        epoch_generator: torch.Tensor,
    ) -> None:
        assert self.policy is not None  # callers check
        start = time.perf_counter()
        stopper = self.stopper
        payload = {
            "format": STATE_FORMAT,
            "version": __version__,
            "torch_version": str(torch.__version__),
            "record": dict(self.policy.record or {}),
            "model_config": self.cvae.config.to_dict(),
            "train_config": self.config.to_dict(),
            "data_digest": self.digest,
            "position": {
                "epoch": epoch,
                "step": step,
                "steps_done": len(self.result.step_losses),
                "epoch_loss_sum": float(epoch_loss_sum),
                "epoch_seconds": float(epoch_seconds),
            },
            "model": _state_dict(self.cvae),
            "optimizer": self.optim.get_state(),
            "early_stopping": {
                "best_loss": float(stopper.best_loss),
                "best_epoch": int(stopper.best_epoch),
                "bad_epochs": int(stopper.bad_epochs),
                "best_state": None
                if stopper.best_state is None
                else {k: v.detach().cpu() for k, v in stopper.best_state.items()},
            },
            "history": [dict(row) for row in self.result.history],
            "step_losses": torch.tensor(self.result.step_losses, dtype=torch.float64),
            "rng": _rng_state(self.generator, epoch_generator),
            "data_stream": None if self.source is None else self.source.state_dict(),
        }
        with atomic_path(Path(self.policy.path)) as tmp:
            torch.save(payload, tmp)
        self.last_save = time.monotonic()
        self.steps_since_save = 0
        self.num_saves += 1
        self.save_seconds += time.perf_counter() - start


# ----------------------------------------------------------------------------- run folders
def prepare_run_folder(run: str | os.PathLike[str]) -> str:
    """Make ``run`` ready to hold a training-state file while a fit is in progress.

    The folder gets (or keeps) the output marker of ``ppl-cvae fit`` with
    :data:`STATE_FILE` among its files, so that the final, atomic replacement of the folder
    (:func:`ppl_cvae._atomic.atomic_dir` with ``overwrite``) and a later ``--overwrite``
    accept it. The caller has already checked that ``run`` is absent, empty, or a previous
    output of ``ppl-cvae fit``.

    Parameters
    ----------
    run : str or path
        The run folder (``--out``).

    Returns
    -------
    str
        ``"new"`` (the folder was created), ``"empty"`` (it existed and was empty) or
        ``"reused"`` (a previous fit's folder; its contents stay until the fit finishes).

    Raises
    ------
    OutputError
        If the folder or its marker cannot be written.
    """
    import json

    from ppl_cvae._atomic import MARKER, read_marker
    from ppl_cvae.errors import OutputError

    run = Path(run)
    how = "reused"
    if not run.exists():
        try:
            run.mkdir(parents=True)
        except OSError as err:
            raise OutputError(f"cannot create {str(run)!r}: {err.strerror or err}") from err
        how = "new"
    marker = read_marker(run)
    if marker is None:
        if how != "new":
            how = "empty"
        marker = {"command": "fit", "files": []}
    files = marker.get("files")
    listed = list(files) if isinstance(files, list) else []
    if STATE_FILE not in listed:
        marker = {**marker, "files": [*listed, STATE_FILE]}
        with atomic_path(run / MARKER) as tmp:
            tmp.write_text(json.dumps(marker))
    return how


def discard_run_state(
    run: str | os.PathLike[str], how: str, marker: bytes | None = None
) -> None:
    """Undo :func:`prepare_run_folder` after a failed fresh fit (the state cannot help it).

    Removes :data:`STATE_FILE`; for ``how`` ``"new"`` or ``"empty"`` also the marker, and
    for ``"new"`` the folder itself if nothing else is in it. For ``"reused"`` the marker's
    bytes before :func:`prepare_run_folder` (``marker``, when given) are written back, so
    that the previous run is left byte for byte as it was. Nothing else is touched.

    Parameters
    ----------
    run : str or path
        The run folder (``--out``).
    how : {"new", "empty", "reused"}
        What :func:`prepare_run_folder` returned.
    marker : bytes, optional
        The previous run's marker file as it was before :func:`prepare_run_folder`.
    """
    from ppl_cvae._atomic import MARKER, atomic_path

    run = Path(run)
    (run / STATE_FILE).unlink(missing_ok=True)
    if how in ("new", "empty"):
        (run / MARKER).unlink(missing_ok=True)
    elif marker is not None and (run / MARKER).read_bytes() != marker:
        with atomic_path(run / MARKER, restoring=True) as tmp:
            tmp.write_bytes(marker)
    if how == "new":
        try:
            run.rmdir()
        except OSError:  # something else appeared in it: leave it
            pass


def clean_run_temporaries(run: str | os.PathLike[str]) -> None:
    """Remove the hidden temporaries of saves that a killed process left in folder ``run``.

    Only temporaries of :data:`STATE_FILE` and of the output marker whose writing process no
    longer runs are removed (:func:`ppl_cvae._atomic.clean_stale_temporaries`).
    """
    from ppl_cvae._atomic import MARKER, clean_stale_temporaries

    run = Path(run)
    if run.is_dir():
        clean_stale_temporaries(run / STATE_FILE)
        clean_stale_temporaries(run / MARKER)


def find_resumable(run: str | os.PathLike[str]) -> TrainState:
    """Return the checked training state of the interrupted fit in folder ``run``.

    Parameters
    ----------
    run : str or path
        A run folder of ``ppl-cvae fit`` that holds :data:`STATE_FILE`.

    Returns
    -------
    TrainState

    Raises
    ------
    CheckpointError
        If ``run`` is not a folder, is not an output of ``ppl-cvae fit``, holds a finished
        run (``model.pt`` and no state), holds no state (the fit stopped before its first
        checkpoint, or ran without checkpoints), or the state file is damaged.
    """
    from ppl_cvae._atomic import read_marker

    run = Path(run)
    name = str(run)
    if not run.is_dir():
        raise CheckpointError(f"--resume {name!r}: no such run folder")
    clean_run_temporaries(run)
    marker = read_marker(run)
    if marker is None or marker.get("command") != "fit":
        raise CheckpointError(f"--resume {name!r}: not a run folder written by 'ppl-cvae fit'")
    if (run / STATE_FILE).is_file():
        return load_train_state(run / STATE_FILE)
    if (run / "model.pt").is_file():
        raise CheckpointError(
            f"run {name!r} is finished (model.pt is written); nothing to resume. To train "
            f"further start a new run: ppl-cvae fit --config {name}/config.json --out NEW"
        )
    raise CheckpointError(
        f"run {name!r} holds no {STATE_FILE}: the fit stopped before its first checkpoint or "
        "ran with --no-checkpoint; start it again (same flags, with --overwrite)"
    )


@contextmanager
def lock_run_folder(run: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on run folder ``run`` while a fit writes into it.

    Two fits of one folder at once (``fit --resume RUN`` started twice, or a fresh fit with
    ``--overwrite`` beside a running one) would both save ``train_state.pt`` and replace the
    folder in turn: the second refuses here instead. On POSIX the lock is ``flock`` on the
    folder itself (advisory; no file is written). Where ``fcntl`` is missing (Windows) it is
    ``filelock.FileLock`` (``msvcrt.locking``) on the hidden file :func:`run_lock_path` beside
    the folder. Either lock belongs to the open file, so the operating system releases it
    when the process ends, even on ``kill -9``: a lock file left behind by a killed fit is
    not held and does not block the next one (no stale locks, no manual cleanup). Where the
    file system supports neither (some network file systems) or the lock file cannot be
    created (a read-only parent folder), the fit goes ahead unlocked, with a warning.

    Parameters
    ----------
    run : str or path
        An existing run folder.

    Raises
    ------
    ConfigError
        If another process holds the lock (a fit of this folder is running).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, lock_run_folder(tmp):
    ...     pass
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: a lock file beside the folder
        with _lock_file(Path(run)):
            yield
        return
    try:
        fd = os.open(run, os.O_RDONLY)
    except OSError:  # unreadable or gone: the callers' own checks report it
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run) from None
        except OSError as err:  # flock not supported here (some network file systems)
            log.warning("run folder %r is not locked (flock: %s); do not fit it twice at once",
                        str(run), err.strerror)
        yield
    finally:
        os.close(fd)


def run_lock_path(run: str | os.PathLike[str]) -> Path:
    """Return the lock file of run folder ``run`` where ``flock`` is unavailable.

    A hidden file beside the folder (``PARENT/.NAME.ppl_cvae-lock``), not inside it: the
    folder's contents are replaced when the fit finishes and checked by ``--overwrite``.
    """
    path = Path(run).absolute()
    return path.parent / f".{path.name}.ppl_cvae-lock"


def _busy(run: str | os.PathLike[str]) -> ConfigError:
    return ConfigError(
        f"run folder {str(run)!r} is being fitted by another process right now; wait "
        "for it to finish (or stop it) before resuming or overwriting it"
    )


@contextmanager
def _lock_file(run: Path) -> Iterator[None]:
    """Hold ``filelock.FileLock`` on :func:`run_lock_path` (``fcntl`` unavailable)."""
    import filelock

    if filelock.FileLock is filelock.SoftFileLock:  # no OS lock on this platform at all
        log.warning("run folder %r is not locked (no file locking on this platform); do not "
                    "fit it twice at once", str(run))
        yield
        return
    # no soft (O_EXCL) fallback: a file a killed process leaves would block every later fit
    lock = filelock.FileLock(run_lock_path(run), timeout=0, fallback_to_soft=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise _busy(run) from None
    except OSError as err:  # a read-only parent, or no locking on this file system
        log.warning("run folder %r is not locked (%s: %s); do not fit it twice at once",
                    str(run), run_lock_path(run), err.strerror or err)
        yield
        return
    try:
        yield
    finally:
        lock.release()
