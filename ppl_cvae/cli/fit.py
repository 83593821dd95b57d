"""``ppl-cvae fit``: fit a CVAE by SVI and write a run folder.

:func:`cmd_fit` and its pieces: the run file (``--config``) and the flags that override it
(:data:`MODEL_FLAGS`, :data:`TRAIN_FLAGS`); the training pairs (``--data``, ``--dataset`` or
simulated from ``--problem``); ``--lazy`` reading of a file in chunks; ``--stream`` of fresh
simulations; ``--resume`` of an interrupted fit from its training state (:data:`RESUME_KEEPS`,
:data:`_FIT_DESTS`); the run-folder lock and the checkpoint policy; a data-parallel fit under
torchrun (only rank 0 writes); the run folder's files (``model.pt``, ``config.json``,
``metrics.csv``, ``loss.png``), written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from ppl_cvae._atomic import MARKER, InterruptedAfterWrite, atomic_dir, interrupt_status
from ppl_cvae._json import dumps_strict, finite_or_null
from ppl_cvae.cli.common import (
    _check_out_dir,
    _check_simulation_memory,
    _check_utf8_paths,
    _problem_from_args,
)
from ppl_cvae.cli.defaults import DEFAULT_BUFFER_CHUNKS, DEFAULT_CHUNK_MB
from ppl_cvae.config import (
    ModelConfig,
    ModelOverrides,
    Overrides,
    TrainConfig,
    TrainOverrides,
    check_model_memory,
)
from ppl_cvae.device import module_device, resolve_device
from ppl_cvae.errors import ConfigError, PplCvaeError, TrainingDivergedError

log = logging.getLogger("ppl_cvae")


MODEL_FLAGS = {
    "latent_dim": "latent_dim",
    "hidden_dims": "hidden_dims",
    "activation": "activation",
    "network": "network",
    "conv_channels": "conv_channels",
    "y_maps": "y_maps",
    "prior": "prior",
    "likelihood": "likelihood",
    "fixed_scale": "fixed_scale",
    "y_embedding": "y_embedding",
    "linear_skip": "linear_skip",
    "noise_rank": "noise_rank",
    "flow_layers": "flow_layers",
    "prior_flow_layers": "prior_flow_layers",
    "prior_flow_type": "prior_flow_type",
    "prior_flow_final": "prior_flow_final",
    "flow_bins": "flow_bins",
    "flow_hidden_dims": "flow_hidden_dims",
    "num_facies": "num_facies",
    "x_whitening": "x_whitening",
    "x_bounds": "x_bounds",
    "x_transform": "x_transform",
}
TRAIN_FLAGS = {
    "epochs": "num_epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "lr_decay": "lr_decay",
    "kl_warmup_epochs": "kl_warmup_epochs",
    "physics_weight": "physics_weight",
    "gsnn_weight": "gsnn_weight",
    "val_fraction": "val_fraction",
    "patience": "patience",
    "num_particles": "num_particles",
    "num_train": "num_train",
    "seed": "seed",
}


_FIT_DESTS = {
    *MODEL_FLAGS,
    *TRAIN_FLAGS,
    "config",
    "problem",
    "functions",
    "problem_arg",
    "data",
    "dataset",
    "dataset_path",
    "image_size",
    "condition",
    "out",
    "decoder",
    "resimulate",
    "unconditional",
    "stream",
    "workers",
    "lazy",
    "chunk_mb",
    "buffer_chunks",
    "overwrite",
}
"""The fit options that set what a run computes or where it writes (refused by --resume)."""


def _apply_run_file(args: argparse.Namespace) -> dict[str, Any] | None:
    """Fill the fit options the command line leaves unset from ``--config`` (flags win).

    Returns the problem's keyword arguments read from the file (None when the problem, if
    any, comes from the command line) and stores the file's model/train tables and recorded
    shapes on ``args.run_file``.
    """
    from ppl_cvae.train.runfile import RunFile, read_run_file

    run = getattr(args, "run_file", None)  # set by --resume from the training state
    if run is None:
        run = read_run_file(args.config) if args.config else RunFile(Overrides())
    args.run_file = run
    file_kwargs = None
    if args.problem is None and run.problem is not None:
        args.problem, file_kwargs = run.problem
    args.data_from_run_file = args.data is None and args.dataset is None and run.data is not None
    args.dataset_from_run_file = (
        args.data is None and args.dataset is None and run.dataset is not None
    )
    if args.data is None and args.dataset is None:
        args.data = run.data
        dataset = run.dataset or {}
        args.dataset = dataset.get("name")
        for key in ("condition", "image_size"):
            if getattr(args, key) is None:
                setattr(args, key, dataset.get(key))
        if args.dataset_path is None:
            args.dataset_path = dataset.get("path")
    if run.data_source is not None:
        _apply_recorded_source(args, run.data_source, f"run file {args.config!r}")
    if args.decoder is None:
        args.decoder = run.decoder or "auto"
    args.unconditional = bool(args.unconditional or run.unconditional)
    if args.condition is None:
        args.condition = "label"
    for name in ("data", "dataset_path"):
        if getattr(args, name) is not None and not isinstance(getattr(args, name), str):
            raise ConfigError(f"run file {args.config!r}: {name} must be a string")
    _check_utf8_paths(args)
    return file_kwargs


def _flag_overrides(args: argparse.Namespace) -> Overrides:
    """Return the model/train settings given as command-line flags."""
    model = {field: getattr(args, flag) for flag, field in MODEL_FLAGS.items()}
    if isinstance(model["x_bounds"], str):  # --x-bounds FILE.npz: bounds per element
        from ppl_cvae.data.io import load_bounds

        model["x_bounds"] = tuple(end.tolist() for end in load_bounds(model["x_bounds"]))
    train = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()}
    train["resimulate"] = args.resimulate
    return Overrides(
        model=cast(ModelOverrides, {k: v for k, v in model.items() if v is not None}),
        train=cast(TrainOverrides, {k: v for k, v in train.items() if v is not None}),
    )


def _warn_if_few_pairs(path: str, num: int, config: ModelConfig, val_fraction: float) -> None:
    """Warn when a data file holds fewer pairs than values in one pair (``x`` and ``y``).

    An amortized posterior learns the map from ``y`` to ``p(x | y)`` from the pairs alone; with
    fewer pairs than values per pair its networks can only memorise them (sbi's benchmark
    tasks start at 1,000 simulations for a few values each).
    """
    x_values = math.prod(config.x_shape)
    y_values = 0 if config.y_shape is None else math.prod(config.y_shape)
    if num >= x_values + y_values:
        return
    held_out = int(round(val_fraction * num))  # none: fit's own warning says so
    log.warning(
        "%s holds %d pairs for %d values per pair (%d of x%s): an amortized posterior is "
        "learnt from many more pairs than values, so expect draws near the prior's spread%s; "
        "simulate more pairs",
        path,
        num,
        x_values + y_values,
        x_values,
        f", {y_values} of y" if y_values else "",
        f" and a validation loss from {held_out} held-out pair(s)" if held_out else "",
    )


def _training_pairs(
    args: argparse.Namespace, problem: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None, Any]:
    """Read the pairs of ``--data`` or ``--dataset``; ``(None, None, problem)`` to simulate."""
    from ppl_cvae.data.datasets import load_dataset
    from ppl_cvae.data.io import load_pairs
    from ppl_cvae.train.settings import DataSource

    if args.data and args.unconditional:  # models alone: a generative prior of the file's x
        from ppl_cvae.data.io import load_models

        x = load_models(args.data)
        return x, None, DataSource.of(x, None)
    if args.data:
        x, y = load_pairs(args.data)
        return x, y, DataSource.of(x, y)
    if args.dataset:
        size = tuple(args.image_size or (150, 150))
        if len(size) != 2 or not all(type(v) is int and v > 0 for v in size):
            raise ConfigError(
                f"--image-size (or a run file's dataset.image_size) expects H,W in pixels, "
                f"got {args.image_size}"
            )
        x, y_or_none, info = load_dataset(
            args.dataset, condition=args.condition, path=args.dataset_path, size=size
        )
        args.dataset_classes = [str(c) for c in cast(list, info["classes"])]
        recorded = (args.run_file.dataset or {}).get("classes")
        if recorded is not None and list(recorded) != args.dataset_classes:
            raise ConfigError(
                f"the run file records the classes {list(recorded)} (label 0, 1, ...), but "
                f"dataset {args.dataset!r} now holds {args.dataset_classes}: a label would "
                "name another class; restore the folder or fit without the run file"
            )
        return x, y_or_none, DataSource.of(x, y_or_none, dataset=args.dataset)
    if problem is None:
        raise ConfigError("fit needs --problem NAME, --data FILE or --dataset NAME")
    return None, None, problem


def _check_data_digest(args: argparse.Namespace, digest: str) -> str:
    """Return ``digest`` (of the pairs of ``--data``); refuse other pairs than a run file's.

    A run file's ``data`` path is read from the current folder: run elsewhere, it can name
    another file. When the path came from the run file (no ``--data`` flag) and the file
    recorded the digest of its pairs, the two must agree, whether the file is read into
    memory (:func:`~ppl_cvae.train.resume.data_digest`) or lazily
    (:meth:`~ppl_cvae.data.lazy.LazyPairs.digest`, the same value).
    """
    recorded = args.run_file.data_digest
    from_file = getattr(args, "data_from_run_file", False)
    from_dataset = getattr(args, "dataset_from_run_file", False)
    if (from_file or from_dataset) and recorded not in (None, digest):
        where = f"run file {args.config!r}" if args.config else f"run {args.resume!r}"
        what = repr(args.data) if from_file else f"dataset {args.dataset!r}"
        if from_dataset and args.dataset_path:
            what += f" in {args.dataset_path!r}"
        raise ConfigError(
            f"{where} was fitted on other pairs than those of {what} read now (relative to "
            f"{str(Path.cwd())!r}; their SHA-256 digests differ): the files changed, or it "
            "runs from another folder; restore them, or give the data with --data/--dataset"
        )
    return digest


def _check_recorded_shapes(args: argparse.Namespace, config: ModelConfig) -> None:
    """Refuse a run file whose recorded event shapes differ from the training data's."""
    run = args.run_file
    for name, recorded, actual in (
        ("x_shape", run.x_shape, config.x_shape),
        ("y_shape", run.y_shape, config.y_shape),
    ):
        if recorded is not None and tuple(recorded) != actual:
            raise ConfigError(
                f"run file {args.config!r} records model.{name}={tuple(recorded)}, but the "
                f"training data have {actual}; remove the entry or use matching data"
            )


LAZY_MEMORY_FRACTION = 0.5
"""A ``.nc`` given to ``fit --data`` is read lazily when it is larger than this fraction of the
available memory (loading it would need about twice its size)."""


def _check_flow_flags(args: argparse.Namespace, config: ModelConfig) -> None:
    """Refuse a flow flag (layers, ``--prior-flow-type``, ``--prior-flow-final``) without a flow.

    Each would otherwise be ignored in silence (``--flow-layers`` set the prior flow's layers
    before ``--prior-flow-layers`` existed).
    """
    for flag, value, what, field, other in (
        ("--flow-layers", args.flow_layers, "layers", "likelihood", "--prior-flow-layers"),
        ("--prior-flow-layers", args.prior_flow_layers, "layers", "prior", None),
        ("--prior-flow-type", args.prior_flow_type, "type", "prior", None),
        ("--prior-flow-final", args.prior_flow_final, "end", "prior", None),
    ):
        actual = getattr(config, field)
        if value is not None and actual != "flow":
            hint = f"; for the flow on z of --prior flow use {other}" if other else ""
            raise ConfigError(
                f"{flag} {value} sets the {what} of the flow of --{field} flow, but this "
                f"run's {field} is {actual!r}: add --{field} flow or drop {flag}{hint}"
            )


def _reads_lazily(args: argparse.Namespace) -> bool:
    """Return whether ``fit --data`` reads its file lazily, in chunks.

    Always for a folder of ``x.npy``/``y.npy`` and a ``.zarr`` store (no other reader takes
    them); with ``--lazy``; and for a ``.nc`` larger than :data:`LAZY_MEMORY_FRACTION` of the
    available memory, unless the run it resumes or repeats read the file into memory
    (``args.in_memory``, from the training state or the run file's ``data_source``).
    """
    from ppl_cvae._memory import available_memory
    from ppl_cvae.data.lazy import is_lazy_source

    if not args.data:
        if args.lazy:
            raise ConfigError("--lazy reads a --data file in chunks; give --data FILE")
        return False
    path = Path(args.data)
    if args.lazy or is_lazy_source(path):
        return True
    if path.suffix.lower() == ".nc" and path.is_file():
        if path.stat().st_size > LAZY_MEMORY_FRACTION * available_memory():
            if getattr(args, "in_memory", False):
                log.warning(
                    "%s is larger than half the available memory; reading it into memory all "
                    "the same, as the run it continues or repeats did (read lazily, its "
                    "minibatches and weights would differ)",
                    path,
                )
                return False
            log.warning("%s is larger than half the available memory: reading it lazily", path)
            return True
    return False


def _check_stream_flags(args: argparse.Namespace) -> None:
    """Refuse ``--stream``/``--workers`` where there is nothing to stream from."""
    from ppl_cvae.train.sources import WORKERS_PER_CORE, max_stream_workers

    if args.workers and not args.stream:
        raise ConfigError("--workers sets the simulation workers of --stream; add --stream")
    if args.workers > max_stream_workers():
        raise ConfigError(
            f"--workers {args.workers} is more than this machine can run: at most "
            f"{max_stream_workers()} ({WORKERS_PER_CORE} per usable CPU core; each worker is a "
            "process simulating ahead)"
        )
    if args.stream and (args.data or args.dataset or not args.problem):
        raise ConfigError(
            "--stream draws fresh simulations from a problem: give --problem NAME, not "
            "--data or --dataset"
        )


RESUME_KEEPS = (
    "threads",
    "quiet",
    "checkpoint_every",
    "checkpoint_minutes",
    "no_checkpoint",
    "workers",
)
"""Fit options that ``--resume`` accepts: they do not change what is computed (a stream's
minibatches are the same for any number of ``--workers``)."""


def _resume_args(args: argparse.Namespace) -> Any:
    """For ``fit --resume RUN``: refuse setting flags, fill ``args`` from RUN's training state."""
    from ppl_cvae.train.resume import find_resumable
    from ppl_cvae.train.runfile import run_file_from_dict

    given = [
        "--" + dest.replace("_", "-")
        for dest, value in vars(args).items()
        if dest in _FIT_DESTS and dest not in RESUME_KEEPS and value not in (None, False)
    ]
    if given:
        raise ConfigError(
            f"--resume continues {args.resume!r} with the settings it recorded; drop "
            f"{', '.join(given)} (only --threads, --quiet, --device, --workers and the "
            "--checkpoint-* options may change; for other settings start a new run)"
        )
    state = find_resumable(args.resume)
    record = state.record
    where = f"training state {str(state.path)!r}"
    workers = args.workers  # 0 unless given: then the recorded number
    source = record.pop("data_source", None)
    if source is None and record.get("data"):  # a state written before {"memory": {}}
        source = {"memory": {}}
    _restore_data_source(args, source, where)
    _check_world_size(record.pop("world_size", None), args.resume, where)
    if workers:
        if not args.stream:
            raise ConfigError(
                f"--workers sets the simulation workers of --stream; {args.resume!r} was not "
                "fitted on a stream"
            )
        args.workers = workers
    else:
        from ppl_cvae.train.sources import max_stream_workers

        if args.workers > max_stream_workers():  # recorded on a machine with more cores
            log.warning(
                "%s was fitted with %d simulation workers; this machine runs at most %d: "
                "resuming with %d (the minibatches are the same)",
                args.resume,
                args.workers,
                max_stream_workers(),
                max_stream_workers(),
            )
            args.workers = max_stream_workers()
    args.run_file = run_file_from_dict(record, where)
    args.out, args.overwrite = args.resume, True
    from ppl_cvae._version import __version__

    for what, then, now in (
        ("ppl_cvae", state.payload["version"], __version__),
        ("torch", state.payload["torch_version"], torch.__version__),
    ):
        if then != now:  # the state was checked field by field; the arithmetic may differ
            log.warning(
                "%s was written by %s %s, this is %s: the continuation is statistically "
                "equivalent but not bit-identical",
                state.path,
                what,
                then,
                now,
            )
    recorded = state.record.get("torch_threads")
    if recorded != torch.get_num_threads():
        log.warning(
            "resuming with %d torch threads; the run started with %s: the continuation is "
            "statistically equivalent but not bit-identical (pass --threads %s)",
            torch.get_num_threads(),
            recorded,
            recorded,
        )
    log.info(
        "resuming %s at epoch %d after %d SVI steps", args.resume, state.epoch, state.steps_done
    )
    return state


def _check_world_size(recorded: Any, run: str, where: str) -> None:
    """Refuse to resume with another number of processes than the run was fitted by.

    Each rank's share of every minibatch, and so the continuation, depends on the number of
    ranks; a state written before the number was recorded (None) is not checked.

    Raises
    ------
    CheckpointError
        If ``recorded`` is neither None nor an int >= 1.
    ConfigError
        If the number of processes now (torchrun's ``WORLD_SIZE``, else 1) differs.
    """
    from ppl_cvae.errors import CheckpointError
    from ppl_cvae.train.distributed import launch_world_size

    if recorded is None:
        return
    if type(recorded) is not int or recorded < 1:
        raise CheckpointError(f"{where} records a malformed world_size {recorded!r}")
    now = launch_world_size()
    if now != recorded:
        how = (
            f"torchrun --nproc-per-node {recorded} -m ppl_cvae.cli fit --resume {run} (or the "
            f"same multi-machine launch)"
            if recorded > 1
            else f"ppl-cvae fit --resume {run}, without torchrun"
        )
        raise ConfigError(
            f"{run!r} was fitted by {recorded} process{'es' if recorded > 1 else ''} and is "
            f"resumed by {now}: each rank's share of every minibatch would change; continue "
            f"it with {how}"
        )


def _apply_recorded_source(args: argparse.Namespace, source: Any, where: str) -> None:
    """Read the training data as a run file recorded, where the flags say nothing else.

    ``{"memory": {}}``: a ``.nc`` is read into memory even when it is large (the automatic
    lazy reading would give other minibatches); ``{"lazy": ...}``: read lazily with the
    recorded chunk sizes; ``{"stream": ...}``: ``--stream`` with the recorded workers. The
    file's reading mode applies only to its own ``data`` (not to another ``--data``).

    Raises
    ------
    ConfigError
        If ``source`` is malformed.
    """
    recorded = argparse.Namespace(
        stream=False, workers=0, lazy=False, chunk_mb=None, buffer_chunks=None, in_memory=False
    )
    _restore_data_source(recorded, source, where, error=ConfigError)
    if recorded.stream and not (args.data or args.dataset):
        from ppl_cvae.train.sources import max_stream_workers

        args.stream = True
        if not args.workers:  # the minibatches are the same for any number of workers
            args.workers = min(recorded.workers, max_stream_workers())
    if not args.data_from_run_file:
        return
    if recorded.lazy and not args.lazy:
        args.lazy = True
    if args.lazy and recorded.lazy:
        if args.chunk_mb is None:
            args.chunk_mb = recorded.chunk_mb
        if args.buffer_chunks is None:
            args.buffer_chunks = recorded.buffer_chunks
    args.in_memory = recorded.in_memory and not args.lazy


def _data_source_record(args: argparse.Namespace, lazy: bool) -> dict[str, Any] | None:
    """Return how the fit takes its minibatches: a stream, a file read lazily or in memory.

    None for pairs simulated in memory from a problem and for image datasets.
    """
    if args.stream:
        return {"stream": {"workers": args.workers}}
    if lazy:
        return {
            "lazy": {
                "lazy": bool(args.lazy),
                "chunk_mb": args.chunk_mb,
                "buffer_chunks": args.buffer_chunks,
            }
        }
    if args.data:  # read into memory
        return {"memory": {}}
    return None


def _restore_data_source(
    args: argparse.Namespace, source: Any, where: str, error: type[Exception] | None = None
) -> None:
    """Set ``--stream/--workers``, ``--lazy/--chunk-mb/--buffer-chunks`` or ``args.in_memory``.

    As a state (or, with ``error=ConfigError``, a run file) recorded.

    Raises
    ------
    CheckpointError
        If ``source`` is not None nor ``{"stream": {"workers": K}}`` nor ``{"lazy":
        {"lazy": bool, "chunk_mb": MiB, "buffer_chunks": C}}`` nor ``{"memory": {}}``
        (``error`` instead when given).
    """
    from ppl_cvae.errors import CheckpointError

    if source is None:
        return
    stream = source.get("stream") if isinstance(source, dict) and len(source) == 1 else None
    lazy = source.get("lazy") if isinstance(source, dict) and len(source) == 1 else None
    if isinstance(source, dict) and source == {"memory": {}}:
        # read into memory: so is its continuation, whatever the free memory now
        args.in_memory = True
        return
    if isinstance(stream, dict) and set(stream) == {"workers"}:
        workers = stream["workers"]
        if type(workers) is int and 0 <= workers <= 1024:
            args.stream, args.workers = True, workers
            return
    if isinstance(lazy, dict) and set(lazy) == {"lazy", "chunk_mb", "buffer_chunks"}:
        mib, chunks = lazy["chunk_mb"], lazy["buffer_chunks"]
        if (
            isinstance(lazy["lazy"], bool)
            and type(mib) in (int, float)
            and math.isfinite(mib)
            and mib > 0
            and type(chunks) is int
            and chunks >= 1
        ):
            # the run was read lazily: so is its continuation, whatever the free memory now
            args.lazy, args.chunk_mb, args.buffer_chunks = True, float(mib), chunks
            return
    raise (error or CheckpointError)(f"{where} records a malformed data_source {source!r}")


def _checkpoint_policy(args: argparse.Namespace, out: Path, record: dict[str, Any]) -> Any:
    """Return the CheckpointPolicy of ``--checkpoint-every/-minutes`` (None: --no-checkpoint)."""
    from ppl_cvae.train.resume import STATE_FILE, CheckpointPolicy

    if args.no_checkpoint:
        return None
    minutes = 10.0 if args.checkpoint_minutes is None else args.checkpoint_minutes
    if minutes < 0:
        raise ConfigError(f"--checkpoint-minutes must be >= 0 (0: no timer), got {minutes}")
    return CheckpointPolicy(
        out / STATE_FILE,
        every_steps=args.checkpoint_every,
        every_minutes=minutes or None,
        record=record,
    )


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a CVAE by SVI and write a run folder (all at once, when the fit has succeeded).

    With checkpoints (the default) the folder holds ``train_state.pt`` while the fit runs, so
    ``fit --resume RUN`` can continue it after a crash; the finished folder replaces it. The
    folder is locked while the fit runs (:func:`~ppl_cvae.train.resume.lock_run_folder`): a
    second fit of it at the same time is refused.
    """
    with contextlib.ExitStack() as locks:
        return _fit_command(args, locks)


def _lock_folder(locks: contextlib.ExitStack, folder: Any) -> None:
    """Lock run folder ``folder`` for this fit (rank 0 only), if it exists as a folder."""
    from ppl_cvae.train.distributed import launch_rank
    from ppl_cvae.train.resume import lock_run_folder

    if folder is not None and launch_rank() == 0 and Path(folder).is_dir():
        locks.enter_context(lock_run_folder(folder))


def _fit_command(args: argparse.Namespace, locks: contextlib.ExitStack) -> int:
    """:func:`cmd_fit` with the folder locks held by ``locks``."""
    from ppl_cvae.train.distributed import launch_rank
    from ppl_cvae.train.resume import (
        STATE_FILE,
        clean_run_temporaries,
        discard_run_state,
        prepare_run_folder,
    )
    from ppl_cvae.train.settings import resolve_settings

    _lock_folder(locks, args.resume or args.out)
    state = _resume_args(args) if args.resume else None
    if args.out is None:
        raise ConfigError("fit needs --out RUN_FOLDER (or --resume RUN_FOLDER)")
    file_kwargs = _apply_run_file(args)
    if args.data and args.dataset:  # one would be ignored, and both recorded
        raise ConfigError(
            f"give --data FILE or --dataset NAME, not both (data {args.data!r}, dataset "
            f"{args.dataset!r}; from the command line or the run file)"
        )
    out = Path(args.out)
    if launch_rank() == 0:  # in a data-parallel run the others never touch the folder
        clean_run_temporaries(out)  # of checkpoint saves a kill interrupted
        if state is None and (out / STATE_FILE).is_file() and not args.overwrite:
            raise ConfigError(
                f"{str(out)!r} holds an interrupted fit; continue it with --resume {out} or "
                "start again with --overwrite"
            )
        _check_out_dir(out, args.overwrite, [args.data, args.dataset_path, args.config], "fit")
    if args.data and args.resimulate:
        raise ConfigError(
            "--resimulate draws fresh pairs from a problem; it cannot apply to --data"
        )
    problem, problem_ref = (
        _problem_from_args(args, file_kwargs, trusted=file_kwargs is None)
        if args.problem
        else (None, None)
    )
    _check_stream_flags(args)
    if args.chunk_mb is None:  # --resume of a lazy run restored them from its state
        args.chunk_mb = DEFAULT_CHUNK_MB
    if args.buffer_chunks is None:
        args.buffer_chunks = DEFAULT_BUFFER_CHUNKS
    if not args.chunk_mb > 0:
        raise ConfigError(f"--chunk-mb must be positive, got {args.chunk_mb}")
    lazy_pairs = None
    if _reads_lazily(args):
        if args.unconditional:
            raise ConfigError(
                f"--unconditional reads the models of {args.data!r} whole, not in chunks: give "
                "an .npz or .nc file holding x (without --lazy)"
            )
        from ppl_cvae.data.lazy import chunk_rows_for, open_lazy_pairs
        from ppl_cvae.train.settings import DataSource

        lazy_pairs = open_lazy_pairs(args.data)
        x, y = None, None
        try:
            chunk_rows = chunk_rows_for(lazy_pairs, int(args.chunk_mb * 2**20))
            args.data_digest = _check_data_digest(args, lazy_pairs.digest(chunk_rows))
        except BaseException:
            lazy_pairs.close()
            raise
        source: Any = DataSource(
            lazy_pairs.x_shape, lazy_pairs.y_shape, lazy_pairs.num_pairs, lazy=True
        )
    else:
        x, y, source = _training_pairs(args, problem)
        args.data_digest = None
        if (args.data or args.dataset) and x is not None:  # an image folder's changes too
            from ppl_cvae.train.resume import data_digest

            args.data_digest = _check_data_digest(args, data_digest(x, y))
    overrides = args.run_file.overrides.updated(_flag_overrides(args))
    if args.unconditional and args.dataset:
        raise ConfigError(
            "--unconditional fits a generative prior on a problem's prior draws (--problem "
            "NAME) or on a file of models (--data FILE); for images use --condition none"
        )
    try:
        if args.unconditional:
            from ppl_cvae.train.generative_prior import generative_prior_settings

            if x is not None and problem is not None and tuple(problem.x_shape) != tuple(
                x.shape[1:]
            ):
                raise ConfigError(
                    f"the models in {args.data!r} have shape {tuple(x.shape[1:])}, the "
                    f"problem's x {tuple(problem.x_shape)}: give a file of that problem's "
                    "models, or leave out --problem"
                )
            # a problem's recommended family (a facies decoder for channels), else a file's
            model_config, train_config = generative_prior_settings(
                problem if problem is not None else source, overrides
            )
        else:
            model_config, train_config = resolve_settings(
                source, overrides, problem=problem, decoder=args.decoder
            )
    except ConfigError as err:
        if not args.config:
            raise
        raise ConfigError(f"{err} (settings of run file {args.config!r} and the flags)") from None
    _check_recorded_shapes(args, model_config)
    _check_flow_flags(args, model_config)
    if args.data and not args.unconditional:
        num = lazy_pairs.num_pairs if lazy_pairs is not None else len(cast(torch.Tensor, x))
        _warn_if_few_pairs(args.data, num, model_config, train_config.val_fraction)
    if (
        lazy_pairs is not None
        and model_config.x_bounds is not None
        and model_config.likelihood == "flow"
        and model_config.x_transform != "support"
    ):
        log.warning(
            "a lazily read file is fitted on x itself, not mapped onto --x-bounds (its "
            "moments come from a scan of x): draws outside the bounds are rejected at "
            "sampling; fit without --lazy to map the flow onto the bounds"
        )
    if lazy_pairs is None and x is None:  # _training_pairs made sure there is a problem
        assert problem is not None
        _check_simulation_memory(problem, train_config.num_train, "--num-train")
        simulate = _simulator(args, problem)
        if not args.unconditional:  # a forward for one layout of models only: refuse now
            from ppl_cvae.problems.base import check_batch_axes, check_support

            check_batch_axes(
                problem, torch.Generator().manual_seed(train_config.seed), for_fit=True
            )
            check_support(problem, torch.Generator().manual_seed(train_config.seed))
        if not simulate.is_reproducible():
            log.warning(
                "%s does not give the same pairs for the same generator (it draws from "
                "another RNG): the seed does not fix the run%s",
                simulate.source,
                ", the stream differs with --workers and --resume will refuse to continue it"
                if args.stream
                else "",
            )
        gen = torch.Generator().manual_seed(train_config.seed + 1)
        x, y = simulate(train_config.num_train, gen)
    check_model_memory(model_config)
    # how the minibatches are made: --resume and fit --config read the data the same way
    args.data_source = _data_source_record(args, lazy_pairs is not None)
    record = _run_doc(args, problem, problem_ref, model_config, train_config)
    from ppl_cvae.train.distributed import launch_world_size

    record["world_size"] = launch_world_size()  # --resume needs as many processes
    policy = _checkpoint_policy(args, out, record)
    marker = out / MARKER  # a previous run's marker, put back if this fit leaves no state
    previous_marker = marker.read_bytes() if marker.is_file() else None
    how = prepare_run_folder(out) if policy is not None and launch_rank() == 0 else None
    if how == "new":  # created just now: lock it too (before, it had nothing to lock)
        _lock_folder(locks, out)

    def fit_into(folder: Path | None) -> tuple[float, Any]:
        if lazy_pairs is not None:
            return _fit_lazily_into(
                folder,
                args,
                problem,
                problem_ref,
                model_config,
                train_config,
                lazy_pairs,
                checkpoint=policy,
                resume_from=state,
            )
        return _fit_into(
            folder,
            args,
            problem,
            problem_ref,
            model_config,
            train_config,
            x,
            y,
            checkpoint=policy,
            resume_from=state,
        )

    try:
        with lazy_pairs if lazy_pairs is not None else contextlib.nullcontext():
            done = _write_run(out, args.overwrite or how is not None, fit_into)
    except PplCvaeError as err:
        if how is not None and state is None:
            diverged = isinstance(err, TrainingDivergedError)  # resuming repeats the steps
            if (out / STATE_FILE).is_file() and not diverged:  # keep what it trained
                err.args = (
                    f"{err}; the progress saved before the error is kept in {out}: fix the "
                    f"cause and continue with: {_resume_command(out)}",
                    *err.args[1:],
                )
            else:  # failed before its first save, or diverged: nothing to continue
                discard_run_state(out, how, previous_marker)
        raise
    except KeyboardInterrupt as err:
        if not (out / STATE_FILE).is_file():
            # after the write (InterruptedAfterWrite) the run folder is complete: keep it
            after_write = isinstance(err, InterruptedAfterWrite)
            if not after_write and how is not None and state is None:
                discard_run_state(out, how, previous_marker)
            raise
        # a saved state, also when the interrupt came while a checkpoint was renamed into place
        if launch_rank() == 0:  # one line, not one per rank
            print(f"ppl-cvae: interrupted; continue with: {_resume_command(out)}", file=sys.stderr)
        return interrupt_status()
    if done is not None:
        _print_fit_summary(*done, out, model_config)
    return 0


def _resume_command(out: Path) -> str:
    """Return the command that continues ``out``: under torchrun, with as many processes."""
    from ppl_cvae.train.distributed import launch_world_size

    world = launch_world_size()
    if world > 1:
        return (
            f"torchrun --nproc-per-node {world} -m ppl_cvae.cli fit --resume {out} (the same "
            f"{world} processes; across machines, the same torchrun launch as this run's)"
        )
    return f"ppl-cvae fit --resume {out}"


def _write_run(
    out: Path, overwrite: bool, fit_into: Callable[[Path | None], tuple[float, Any]]
) -> tuple[float, Any] | None:
    """Run ``fit_into(folder)`` in a temporary folder renamed to ``out`` when it succeeds.

    In a data-parallel run (torchrun) only rank 0 writes; the other ranks train with
    ``fit_into(None)`` and get None. The process group, if any, ends here.
    """
    from ppl_cvae.train.distributed import launch_rank, shutdown

    try:
        if launch_rank() != 0:
            fit_into(None)
            return None
        with atomic_dir(out, overwrite=overwrite, command="fit") as tmp_dir:
            return fit_into(tmp_dir)
    finally:
        shutdown()


def _family(model: ModelConfig) -> str:
    """Name the fitted family in a few words (the settings may have been chosen for the user)."""
    onto = ", mapped onto the support" if model.x_transform == "support" else ""
    if model.likelihood == "flow" and model.latent_dim == 0:
        return f"a conditional spline flow on x ({model.flow_layers} layers, no latent{onto})"
    kind = "a CVAE" if model.y_shape is not None else "a VAE"
    parts = [f"latent {model.latent_dim}", f"{model.likelihood} decoder"]
    if model.prior == "flow":
        parts.append(f"flow prior ({model.prior_flow_layers} {model.prior_flow_type} layers)")
    if model.x_whitening == "linear":
        parts.append("x whitened given y")
    if onto:
        parts.append("x mapped onto the support")
    if model.linear_skip:
        parts.append("linear path from y")
    if model.basis_dim is not None:
        parts.append(f"basis of {model.basis_dim}")
    return f"{kind} ({', '.join(parts)})"


def _print_fit_summary(seconds: float, result: Any, out: Path, model: ModelConfig) -> None:
    last = result.history[-1]
    held_out = math.isfinite(last["val_loss"])
    print(
        f"fitted {_family(model)} in {seconds:.1f} s: {len(result.history)} epochs, best epoch "
        f"{result.best_epoch}, final train loss {last['train_loss']:.4f}"
        + (f", validation loss {last['val_loss']:.4f}" if held_out else "")
        + " (negative ELBO per observation, nats)"
        + ("" if held_out else ", no validation pairs")
        + f"; run folder {out}"
    )


def _simulator(args: argparse.Namespace, problem: Any) -> Any:
    """Return the problem's pair simulator, or its prior draws alone with ``--unconditional``.

    Its output is checked (:class:`~ppl_cvae.problems.checked_simulator.CheckedSimulator`):
    a user's simulator that returns the wrong type, dtype, shape, NaN or inf, or raises, is
    named in one error line.
    """
    from ppl_cvae.problems.checked_simulator import CheckedSimulator

    source = f"problem {getattr(problem, 'name', type(problem).__name__)!r}"
    if args.unconditional:
        from ppl_cvae.train.generative_prior import prior_simulator

        return CheckedSimulator(prior_simulator(problem), problem.x_shape, None, source)
    return CheckedSimulator(problem.simulate, problem.x_shape, problem.y_shape, source)


def _fit_lazily_into(
    out: Path | None,
    args: argparse.Namespace,
    problem: Any,
    problem_ref: dict[str, Any] | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
    pairs: Any,
    *,
    checkpoint: Any = None,
    resume_from: Any = None,
) -> tuple[float, Any]:
    """Fit on a file read in chunks (``--lazy``) and write the run files into ``out``."""
    from ppl_cvae.train.sources import prepare_lazy_model

    cvae, lazy = prepare_lazy_model(
        pairs,
        model_config,
        train_config,
        chunk_bytes=int(args.chunk_mb * 2**20),
        buffer_chunks=args.buffer_chunks,
        problem=problem,
    )
    data_source = {
        "lazy": {"chunk_rows": lazy.batches.chunk_rows, "buffer_chunks": args.buffer_chunks},
    }
    return _fit_into(
        out,
        args,
        problem,
        problem_ref,
        model_config,
        train_config,
        None,
        None,
        cvae=cvae,
        batches=lazy.batches,
        validation=lazy.validation,
        data_source=data_source,
        checkpoint=checkpoint,
        resume_from=resume_from,
    )


def _fit_into(
    out: Path | None,
    args: argparse.Namespace,
    problem: Any,
    problem_ref: dict[str, Any] | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    *,
    cvae: Any = None,
    batches: Any = None,
    validation: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    data_source: dict[str, Any] | None = None,
    checkpoint: Any = None,
    resume_from: Any = None,
) -> tuple[float, Any]:
    """Fit and write the run files into ``out`` (a temporary folder; None: write nothing).

    ``x, y`` fit the standardisers and are the training pairs; with ``batches`` (``--lazy``,
    ``--stream``) they only fit the standardisers, or ``cvae`` is already built.
    """
    from inference.plots import plot_loss
    from ppl_cvae.train import build_cvae, fit, place_forward_operator, save_checkpoint
    from ppl_cvae.train.fit import validation_split

    device = resolve_device(args.device)
    if cvae is None:
        assert x is not None
        # fixed pairs: the pairs fit holds out for validation do not fit the standardisers
        held_out = batches is None and not train_config.resimulate
        rows = validation_split(len(x), train_config)[0] if held_out else None
        cvae = build_cvae(
            model_config, x, y, problem=problem, seed=train_config.seed, fit_rows=rows
        )
    if args.data and problem is None and cvae.data_layout is None:
        _keep_data_layout(cvae, args.data)
    classes = getattr(args, "dataset_classes", None)
    if args.dataset and cvae.data_layout is None and len(cvae.config.x_shape) == 2:
        from ppl_cvae.data.layout import DataLayout

        # images: pixel rows and columns (ArviZ's x_dim_0/x_dim_1 otherwise); y, the one-hot
        # class of a label-conditional run, names its entries by the class names
        labelled = args.condition == "label" and bool(classes)
        cvae.set_data_layout(
            DataLayout(
                x_dims=("row", "column"),
                y_dims=("class",) if labelled else None,
                coords={"class": tuple(classes or ())} if labelled else {},
            )
        )
    place_forward_operator(cvae, problem, device)
    simulator = _simulator(args, problem) if problem is not None else None
    if args.stream:
        from ppl_cvae.data.streaming import SimulationStream
        from ppl_cvae.train.distributed import launch_rank, launch_world_size, shard_rows
        from ppl_cvae.train.sources import StreamBatches, steps_for

        assert problem is not None  # _check_stream_flags
        # under torchrun every rank streams its own share of each minibatch (own seeds)
        rank, world = launch_rank(), launch_world_size()
        share = shard_rows(train_config.batch_size, rank, world)
        if share.stop == share.start:
            raise ConfigError(
                f"--batch-size {train_config.batch_size} is smaller than the {world} ranks: "
                "each rank streams a share of every minibatch"
            )
        stream = SimulationStream(
            _simulator(args, problem),
            share.stop - share.start,
            seed=train_config.seed,
            rank=rank,
            world_size=world,
        )
        batches = StreamBatches(
            stream,
            steps_for(train_config.num_train, train_config.batch_size),
            num_workers=args.workers,
            conditional=model_config.conditional,
            global_batch_size=train_config.batch_size if world > 1 else None,
        )
        data_source = {"stream": {"workers": args.workers}}
    frames = (
        _image_frames(
            out / "frames",
            x,
            y,
            model_config,
            train_config.num_epochs,
            # ink on paper for the digits; a photograph's grey levels (0 black) for a folder
            cmap="gray" if args.dataset == "folder" else "gray_r",
        )
        if args.dataset and x is not None and out is not None
        else None
    )
    log.info("fitting %d parameters on %s", cvae.num_parameters(), args.data or problem)
    start = time.perf_counter()
    result = fit(
        cvae,
        x if batches is None else None,
        y if batches is None else None,
        train_config,
        simulator=simulator,
        batches=batches,
        validation=validation,
        metrics_path=None if out is None else out / "metrics.csv",
        progress=not args.quiet and out is not None,
        on_epoch_end=frames,
        device=device,
        checkpoint=checkpoint,
        resume_from=resume_from,
    )
    seconds = time.perf_counter() - start
    if out is None:
        return seconds, result
    if frames is not None:
        frames.gif()
    extra = {
        "train_config": train_config.to_dict(),
        "data": str(args.data) if args.data else None,
        "fit_seconds": seconds,
        "best_epoch": result.best_epoch,
    }
    if args.dataset:  # sample checks a label run's observations against it
        extra["condition"] = args.condition
    if data_source is not None:  # --stream / --lazy: how the batches were made
        if "stream" in data_source:
            data_source["stream"]["state"] = batches.stream.state_dict()
        extra["data_source"] = data_source
    if y is not None and model_config.x_bounds is not None:
        _warn_if_bounds_reject(cvae, y)
    save_checkpoint(out / "model.pt", cvae, problem=problem, problem_ref=problem_ref, extra=extra)
    config_doc = _run_doc(args, problem, problem_ref, model_config, train_config)
    config_doc["device"] = str(device)
    if result.distributed is not None:
        config_doc["distributed"] = {k: v for k, v in result.distributed.items() if k != "rank"}
    (out / "config.json").write_text(dumps_strict(config_doc, indent=2))
    plot_loss(result.history, out / "loss.png")
    return seconds, result


BOUNDS_CHECK_OBSERVATIONS = 8
"""Training observations on which ``fit`` measures how many draws fall inside ``--x-bounds``."""


def _warn_if_bounds_reject(cvae: Any, y: torch.Tensor) -> None:
    """Warn when the fitted model's draws almost never lie inside its ``x_bounds``.

    A model that is not a flow mapped onto the bounds (``x_transform="support"``) draws x on
    all of ``R^n`` and sampling keeps the draws inside the bounds; with many bounded elements
    almost none may be. Measured on :data:`BOUNDS_CHECK_OBSERVATIONS` training observations,
    1000 draws each: below 1% inside (median), sampling would need more than 100 proposals
    per draw, or fail.
    """
    from inference.posterior import _Support, _support_mass

    if cvae.config.x_transform == "support":
        return  # every draw lies inside by construction
    support = _Support.of(cvae, None)
    if support is None:
        return
    index = torch.linspace(0, len(y) - 1, min(BOUNDS_CHECK_OBSERVATIONS, len(y))).long()
    with torch.no_grad():
        inside = _support_mass(cvae, support, y[index].to(module_device(cvae)), 1000)
    median = float(inside.median())
    if median < 0.01:
        log.warning(
            "only %.2g%% of this model's draws lie inside --x-bounds (median over %d training "
            "observations): it draws x on all of R^n and sampling keeps the draws inside, so it "
            "will be slow or fail; a flow on x mapped onto the bounds keeps every draw inside "
            "(--likelihood flow --latent-dim 0)",
            100 * median,
            len(index),
        )


def _keep_data_layout(cvae: Any, path: str) -> None:
    """Record the dims, coordinates and units of a NetCDF/Zarr data file on the model.

    A file that names nothing records nothing; one whose names cannot be kept is fitted
    anyway, with a warning (the posterior files then use generic dim names).
    """
    from ppl_cvae.data.layout import read_layout
    from ppl_cvae.errors import PplCvaeError

    try:
        cvae.set_data_layout(read_layout(path))
    except PplCvaeError as err:
        log.warning(
            "the dims, coordinates and units of x and y in %s are not kept (the posterior "
            "files use generic dim names): %s",
            path,
            err,
        )


def _run_doc(
    args: argparse.Namespace,
    problem: Any,
    problem_ref: dict[str, Any] | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
) -> dict[str, Any]:
    """Return the run file of this fit (``config.json``; also the record of its checkpoints).

    ``args.data_digest`` (of the pairs of ``--data``, read into memory or lazily,
    :func:`_check_data_digest`) is recorded when set, so that ``fit --config`` can tell
    another file at the same path, and ``args.data_source`` (:func:`_data_source_record`:
    how the minibatches were made), so that it reads the data the same way.
    """
    dataset = None
    if args.dataset:
        dataset = {
            "name": args.dataset,
            "condition": args.condition,
            "path": args.dataset_path,
            "image_size": list(args.image_size or (150, 150)),
        }
        if getattr(args, "dataset_classes", None) is not None:  # label k is classes[k]
            dataset["classes"] = args.dataset_classes
    doc = {  # a run file: `ppl-cvae fit --config config.json` repeats this run
        "problem": problem_ref or _spec_or_none(problem),
        "data": str(args.data) if args.data else None,
        "dataset": dataset,
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "unconditional": bool(args.unconditional),
    }
    if getattr(args, "data_digest", None) is not None:
        doc["data_digest"] = args.data_digest
    if getattr(args, "data_source", None) is not None:
        doc["data_source"] = args.data_source
    _, not_finite = finite_or_null(doc)
    if not_finite:  # config.json is strict JSON, and a null would not repeat the run
        raise ConfigError(
            "the run file (config.json) cannot record "
            + ", ".join(f"{path} = {word}" for path, word in not_finite)
            + ": JSON has no NaN or infinity; give the problem finite arguments"
        )
    # JSON round trip: tuples become lists, as in the file (a training state stores it too)
    return cast(dict[str, Any], json.loads(dumps_strict(doc)))


def _image_frames(
    folder: Path,
    x: torch.Tensor,
    y: torch.Tensor | None,
    config: ModelConfig,
    num_epochs: int,
    cmap: str = "gray_r",
) -> Any:
    """Reconstruction and sample grids every ``num_epochs // 10`` epochs (and a GIF) for images.

    The sample grid has one row per class for a label-conditional model (8 samples each) and
    8 x 8 samples for a VAE, at latent draws fixed for the whole run; the reconstructions are
    of 10 images evenly spaced through the data (so through the classes, which come in
    order). Grey images only (event shape ``(H, W)``); None otherwise.
    """
    from inference.images import EpochFrames

    if len(config.x_shape) != 2:
        return None
    cols = 8
    rows = y.shape[1] if y is not None else 8
    grid_y = None
    if y is not None:
        grid_y = torch.eye(rows).repeat_interleave(cols, dim=0)
    eps = torch.randn(rows * cols, config.latent_dim, generator=torch.Generator().manual_seed(0))
    every = max(1, num_epochs // 10)
    shown = torch.linspace(0, len(x) - 1, min(10, len(x))).round().long()
    return EpochFrames(
        folder,
        x[shown],
        None if y is None else y[shown],
        eps,
        grid_y,
        (rows, cols),
        every=every,
        cmap=cmap,
    )


def _spec_or_none(problem: Any) -> dict[str, Any] | None:
    if problem is None:
        return None
    try:
        return problem.spec()
    except PplCvaeError:
        return None
