"""The ``ppl-cvae`` command: fit, sample, evaluate, diagnose, simulate, score.

Every subcommand validates its input before writing anything, writes each output atomically,
refuses to overwrite existing outputs unless ``--overwrite`` is given, and reports user errors
as one line ``ppl-cvae: error: ...`` with exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import torch

from ppl_cvae._atomic import atomic_dir, atomic_path, check_output_folder, check_output_path
from ppl_cvae._memory import check_memory
from ppl_cvae.config import (
    LIKELIHOODS,
    NETWORKS,
    PRIOR_FLOW_FINALS,
    PRIORS,
    X_WHITENINGS,
    Y_EMBEDDINGS,
    ModelConfig,
    ModelOverrides,
    Overrides,
    TrainConfig,
    TrainOverrides,
    check_model_memory,
)
from ppl_cvae.device import DEVICE_CHOICES, resolve_device
from ppl_cvae.errors import ConfigError, DataError, OutputError, PplCvaeError
from ppl_cvae.nets.flows import FLOW_LAYER_TYPES

log = logging.getLogger("ppl_cvae")

MODEL_FLAGS = {
    "latent_dim": "latent_dim",
    "hidden_dims": "hidden_dims",
    "activation": "activation",
    "network": "network",
    "conv_channels": "conv_channels",
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


SEED_MAX = 2**32 - 1


def _seed(text: str) -> int:
    """Argument type of ``--seed``: an integer in [0, 2**32 - 1] (numpy's seed range)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, {SEED_MAX}], got {value}")
    return value


def _count(minimum: int) -> Any:
    """Argument type: an integer >= ``minimum`` (refuses ``1e8``-style floats with a reason)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    return parse


def _finite(text: str) -> float:
    """Argument type: a finite float (refuses nan, inf and values that overflow a double)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


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
    from ppl_cvae.problems.base import make_problem, rebuild_problem

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


def _check_new_file(path: Path, overwrite: bool, inputs: list[Any], suffix: str) -> None:
    """Refuse an output file that would destroy an input, has the wrong suffix, or exists."""
    check_output_path(path, inputs, kind="file")
    if path.suffix.lower() != suffix:
        raise ConfigError(f"--out {str(path)!r} must end in {suffix} (the format written)")
    if path.exists() and not overwrite:
        raise OutputError(f"{str(path)!r} exists; choose another name or pass --overwrite")
    if not path.parent.is_dir():
        raise OutputError(f"folder {str(path.parent)!r} does not exist")


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


# --------------------------------------------------------------------------- fit
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
    if args.data is None and args.dataset is None:
        args.data = run.data
        dataset = run.dataset or {}
        args.dataset = dataset.get("name")
        for key in ("condition", "image_size"):
            if getattr(args, key) is None:
                setattr(args, key, dataset.get(key))
        if args.dataset_path is None:
            args.dataset_path = dataset.get("path")
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
    train = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items()}
    train["resimulate"] = args.resimulate
    return Overrides(
        model=cast(ModelOverrides, {k: v for k, v in model.items() if v is not None}),
        train=cast(TrainOverrides, {k: v for k, v in train.items() if v is not None}),
    )


def _training_pairs(
    args: argparse.Namespace, problem: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None, Any]:
    """Read the pairs of ``--data`` or ``--dataset``; ``(None, None, problem)`` to simulate."""
    from ppl_cvae.data.datasets import load_dataset
    from ppl_cvae.data.io import load_pairs
    from ppl_cvae.train.settings import DataSource

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
        x, y_or_none, _ = load_dataset(
            args.dataset, condition=args.condition, path=args.dataset_path, size=size
        )
        return x, y_or_none, DataSource.of(x, y_or_none, dataset=args.dataset)
    if problem is None:
        raise ConfigError("fit needs --problem NAME, --data FILE or --dataset NAME")
    return None, None, problem


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


DEFAULT_CHUNK_MB = 16.0
"""``fit --chunk-mb`` when not given: MiB per chunk of a lazily read file."""

DEFAULT_BUFFER_CHUNKS = 4
"""``fit --buffer-chunks`` when not given: chunks shuffled together."""

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
    available memory.
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
    _restore_data_source(args, record.pop("data_source", None), where)
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


def _data_source_record(args: argparse.Namespace, lazy: bool) -> dict[str, Any] | None:
    """Return how a ``--stream`` or lazily read fit takes its minibatches (for its state)."""
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
    return None


def _restore_data_source(args: argparse.Namespace, source: Any, where: str) -> None:
    """Set ``--stream/--workers`` or ``--lazy/--chunk-mb/--buffer-chunks`` as a state recorded.

    Raises
    ------
    CheckpointError
        If ``source`` is not None nor ``{"stream": {"workers": K}}`` nor ``{"lazy":
        {"lazy": bool, "chunk_mb": MiB, "buffer_chunks": C}}``.
    """
    from ppl_cvae.errors import CheckpointError

    if source is None:
        return
    stream = source.get("stream") if isinstance(source, dict) and len(source) == 1 else None
    lazy = source.get("lazy") if isinstance(source, dict) and len(source) == 1 else None
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
    raise CheckpointError(f"{where} records a malformed data_source {source!r}")


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
        from ppl_cvae.data.lazy import open_lazy_pairs
        from ppl_cvae.train.settings import DataSource

        lazy_pairs = open_lazy_pairs(args.data)
        x, y = None, None
        source: Any = DataSource(lazy_pairs.x_shape, lazy_pairs.y_shape, lazy_pairs.num_pairs)
    else:
        x, y, source = _training_pairs(args, problem)
    overrides = args.run_file.overrides.updated(_flag_overrides(args))
    if args.unconditional and (problem is None or x is not None):
        raise ConfigError(
            "--unconditional fits a generative prior on a problem's prior draws: give "
            "--problem NAME, not --data or --dataset (for images use --condition none)"
        )
    try:
        if args.unconditional:
            from ppl_cvae.train.generative_prior import generative_prior_settings

            assert problem is not None  # checked above
            model_config, train_config = generative_prior_settings(problem, overrides)
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
    if lazy_pairs is None and x is None:  # _training_pairs made sure there is a problem
        assert problem is not None
        _check_simulation_memory(problem, train_config.num_train, "--num-train")
        simulate = _simulator(args, problem)
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
    record = _run_doc(args, problem, problem_ref, model_config, train_config)
    data_source = _data_source_record(args, lazy_pairs is not None)
    if data_source is not None:  # --resume restores the flags of the stream or the file
        record["data_source"] = data_source
    policy = _checkpoint_policy(args, out, record)
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
    except PplCvaeError:
        if how is not None and state is None:  # a fresh fit that failed: its state cannot help
            discard_run_state(out, how)
        raise
    except KeyboardInterrupt:
        if not (out / STATE_FILE).is_file():
            if how is not None and state is None:
                discard_run_state(out, how)
            raise
        print(f"ppl-cvae: interrupted; continue with: ppl-cvae fit --resume {out}", file=sys.stderr)
        return 130
    if done is not None:
        _print_fit_summary(*done, out)
    return 0


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


def _print_fit_summary(seconds: float, result: Any, out: Path) -> None:
    last = result.history[-1]
    print(
        f"fitted in {seconds:.1f} s: {len(result.history)} epochs, best epoch {result.best_epoch}, "
        f"final train loss {last['train_loss']:.4f}, validation loss {last['val_loss']:.4f} "
        f"(negative ELBO per observation, nats); run folder {out}"
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

    device = resolve_device(args.device)
    if cvae is None:
        assert x is not None
        cvae = build_cvae(model_config, x, y, problem=problem, seed=train_config.seed)
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
        _image_frames(out / "frames", x, y, model_config, train_config.num_epochs)
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
    if data_source is not None:  # --stream / --lazy: how the batches were made
        if "stream" in data_source:
            data_source["stream"]["state"] = batches.stream.state_dict()
        extra["data_source"] = data_source
    save_checkpoint(out / "model.pt", cvae, problem=problem, problem_ref=problem_ref, extra=extra)
    config_doc = _run_doc(args, problem, problem_ref, model_config, train_config)
    config_doc["device"] = str(device)
    if result.distributed is not None:
        config_doc["distributed"] = {k: v for k, v in result.distributed.items() if k != "rank"}
    (out / "config.json").write_text(json.dumps(config_doc, indent=2))
    plot_loss(result.history, out / "loss.png")
    return seconds, result


def _run_doc(
    args: argparse.Namespace,
    problem: Any,
    problem_ref: dict[str, Any] | None,
    model_config: ModelConfig,
    train_config: TrainConfig,
) -> dict[str, Any]:
    """Return the run file of this fit (``config.json``; also the record of its checkpoints)."""
    dataset = None
    if args.dataset:
        dataset = {
            "name": args.dataset,
            "condition": args.condition,
            "path": args.dataset_path,
            "image_size": list(args.image_size or (150, 150)),
        }
    # JSON round trip: tuples become lists, as in the file (a training state stores it too)
    return cast(
        dict[str, Any],
        json.loads(
            json.dumps(
                {  # a run file: `ppl-cvae fit --config config.json` repeats this run
                    "problem": problem_ref or _spec_or_none(problem),
                    "data": str(args.data) if args.data else None,
                    "dataset": dataset,
                    "model": model_config.to_dict(),
                    "train": train_config.to_dict(),
                    "torch_threads": torch.get_num_threads(),
                    "unconditional": bool(args.unconditional),
                }
            )
        ),
    )


def _image_frames(
    folder: Path, x: torch.Tensor, y: torch.Tensor | None, config: ModelConfig, num_epochs: int
) -> Any:
    """Reconstruction and sample grids every ``num_epochs // 10`` epochs (and a GIF) for images.

    The sample grid has one row per class for a label-conditional model (8 samples each) and
    8 x 8 samples for a VAE, at latent draws fixed for the whole run. Grey images only
    (event shape ``(H, W)``); None otherwise.
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
    return EpochFrames(
        folder, x[:10], None if y is None else y[:10], eps, grid_y, (rows, cols), every=every
    )


def _spec_or_none(problem: Any) -> dict[str, Any] | None:
    if problem is None:
        return None
    try:
        return problem.spec()
    except PplCvaeError:
        return None


# --------------------------------------------------------------------------- sample
def _load_run(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load the run's model and its problem (``--problem`` overrides the stored one)."""
    from ppl_cvae.train import load_checkpoint

    problem = None
    if getattr(args, "problem", None):
        problem, _ = _problem_from_args(args)
    cvae, meta = load_checkpoint(args.run_dir, problem=problem)
    if cvae.config.y_shape is None:  # an unconditional VAE (config.conditional False)
        raise ConfigError(
            f"run {args.run_dir!r} holds an unconditional VAE; nothing to condition on"
        )
    return cvae, meta


def _need_problem(meta: dict[str, Any], what: str) -> Any:
    """Return the run's problem or raise why there is none (the checkpoint loader says)."""
    if meta.get("problem") is not None:
        return meta["problem"]
    reason = meta.get("problem_error") or (
        "the run was fitted on a data file without a problem; name it with --problem"
    )
    raise ConfigError(f"{what} needs the problem's forward operator: {reason}")


DEFAULT_POTENTIAL_DTYPE = "float32"
"""Default of ``sample --method nuts --potential-dtype`` (README, "NUTS within 60 s per
observation")."""

NUTS_WARMUP_STEP_SIZE_ONLY = 150
"""Default warm-up of ``sample --method nuts`` (step size only; README, "Correction with the
physics": the amortized covariance is the mass matrix, Pyro's windowed mass adaptation needs
about 500 iterations)."""


DEFAULT_CHAINS = 4
"""``sample --chains`` when not given (``--method nuts`` and ``latent-nuts``)."""


def _check_method_flags(args: argparse.Namespace, method: str) -> None:
    """Refuse ``sample`` flags of another ``--method`` (each would be ignored in silence).

    ``--chains`` and ``--warmup`` belong to the two NUTS methods, ``--adapt-mass-matrix`` to
    ``nuts`` and ``--proposals`` to ``importance``, as ``--cores`` and ``--potential-dtype``
    belong to ``nuts``.
    """
    nuts = ("nuts", "latent-nuts")
    for flag, given, methods in (
        ("--chains", args.chains is not None, nuts),
        ("--warmup", args.warmup is not None, nuts),
        ("--adapt-mass-matrix", args.adapt_mass_matrix is not None, ("nuts",)),
        ("--proposals", args.proposals is not None, ("importance",)),
    ):
        if given and method not in methods:
            raise ConfigError(
                f"{flag} applies to --method {' or '.join(methods)} only, got --method {method}: "
                f"drop {flag} or choose that method"
            )


def _nuts_defaults(args: argparse.Namespace, problem: Any) -> None:
    """Fill the NUTS flags left at None: step-size-only warm-up, draws for the R-hat bound.

    ``--num-samples`` defaults to ``chains x nuts_draws_per_chain(dim, chains)`` (783 per
    chain for 1024 sampled values), ``--adapt-mass-matrix`` to off and ``--warmup`` to 150
    (500 with ``--adapt-mass-matrix``).
    """
    from inference.mcmc import nuts_draws_per_chain

    if args.adapt_mass_matrix is None:
        args.adapt_mass_matrix = False
    if args.warmup is None:
        args.warmup = 500 if args.adapt_mass_matrix else NUTS_WARMUP_STEP_SIZE_ONLY
    if args.num_samples is None:
        par = problem.parameterisation()
        dim = par.dim if par is not None else math.prod(problem.x_shape)
        args.num_samples = args.chains * nuts_draws_per_chain(dim, args.chains)
        log.info(
            "--method nuts: %d draws per chain x %d chains (enough for R-hat <= 1.01 over %d "
            "sampled values; --num-samples to change)",
            args.num_samples // args.chains,
            args.chains,
            dim,
        )


def cmd_sample(args: argparse.Namespace) -> int:
    """Draw posterior samples for observations and write InferenceData NetCDF."""
    from inference.refine import RefineConfig
    from inference.sample import sample_posterior_to_netcdf
    from ppl_cvae.data.io import load_observations

    out = Path(args.out)
    _check_new_file(
        out, args.overwrite, [args.run_dir, args.observation, args.generative_prior], ".nc"
    )
    if args.max_misfit < 0:
        raise ConfigError(f"--max-misfit must be >= 0 (0 keeps all), got {args.max_misfit}")
    if args.refine_lr <= 0:
        raise ConfigError(f"--refine-lr must be > 0, got {args.refine_lr}")
    if args.refine and args.method not in ("amortized", "refine"):
        raise ConfigError(f"--refine contradicts --method {args.method}; give one of them")
    method = "refine" if args.refine else args.method
    if method != "nuts" and args.num_samples is None:
        args.num_samples = 1000
    if method != "nuts" and (args.cores != 1 or args.nuts_jit or args.potential_dtype):
        raise ConfigError(
            "--cores, --nuts-jit and --potential-dtype apply to --method nuts only, got "
            f"--method {method}"
        )
    _check_method_flags(args, method)
    if args.chains is None:
        args.chains = DEFAULT_CHAINS
    if args.preconditioner != "amortized" and method != "nuts":
        raise ConfigError(
            f"--preconditioner {args.preconditioner} applies to --method nuts only, got "
            f"--method {method}"
        )
    device = resolve_device(args.device)
    if (method == "latent-nuts") != (args.generative_prior is not None):
        raise ConfigError(
            "--method latent-nuts and --generative-prior PRIOR_RUN go together: the latent "
            "space sampled is that of the unconditional VAE fitted with `fit --unconditional`"
        )
    cvae, meta = _load_run(args)
    if method == "amortized":
        cvae.to(device)
    elif device.type != "cpu":
        log.warning(
            "--method %s runs on the CPU; --device %s is used by amortized draws only",
            method,
            device,
        )
    if method == "amortized":
        problem = meta["problem"]
    else:
        problem = _need_problem(meta, f"--method {method}")
    y, _, x_true = load_observations(args.observation, cvae.config.y_shape)
    if x_true is not None and tuple(x_true.shape[1:]) != cvae.config.x_shape:
        raise DataError(
            f"x in {args.observation!r} has event shape {tuple(x_true.shape[1:])}; the model "
            f"generates {cvae.config.x_shape}"
        )
    attrs = {
        "run_dir": str(args.run_dir),
        "run_name": Path(args.run_dir).resolve().name,
        "observation_file": str(args.observation),
        "command": "ppl-cvae sample",
    }
    if method == "nuts":
        _nuts_defaults(args, problem)
    if method in ("importance", "nuts", "latent-nuts"):
        from inference.arviz_io import save_inference_data
        from inference.sample import CorrectionConfig, sample_corrected

        generative_prior = None
        if method == "latent-nuts":
            from inference.latent_mcmc import check_generative_prior
            from ppl_cvae.train import load_checkpoint

            loaded, _ = load_checkpoint(args.generative_prior, problem=problem)
            generative_prior = check_generative_prior(loaded, problem)
        correction = CorrectionConfig(
            method=cast(Any, method),
            proposals=args.proposals or 10 * args.num_samples,
            chains=args.chains,
            warmup_steps=500 if args.warmup is None else args.warmup,
            adapt_mass_matrix=bool(args.adapt_mass_matrix),
            cores=args.cores,
            jit_compile=args.nuts_jit,
            preconditioner=args.preconditioner,
            potential_dtype=cast(Any, args.potential_dtype or DEFAULT_POTENTIAL_DTYPE),
        )
        idata, summary, ok = sample_corrected(
            cvae,
            y,
            args.num_samples,
            problem,
            correction,
            x_true=x_true,
            seed=args.seed,
            attrs=attrs,
            generative_prior=generative_prior,
        )
        save_inference_data(idata, out)
        print(summary)
        if not ok:
            log.warning("the %s correction failed; see the line above", method)
        posterior = idata["posterior"]
        num = posterior.sizes["chain"] * posterior.sizes["draw"]
        print(f"wrote {num} posterior draws for {y.shape[0]} observation(s) to {out}")
        return 0
    sample_posterior_to_netcdf(
        cvae,
        y,  # (M, *y_shape), M = 1 for a single observation: the file has the observation dim
        args.num_samples,
        out,
        problem=problem,
        x_true=x_true,
        decoder_noise={"auto": None, "sample": True, "mean": False}[args.decoder_noise],
        refine=RefineConfig(
            oversample=args.oversample,
            max_misfit=args.max_misfit if args.max_misfit > 0 else None,
            num_steps=args.refine_steps,
            learning_rate=args.refine_lr,
        )
        if method == "refine"
        else None,
        seed=args.seed,
        attrs=attrs,
    )
    print(f"wrote {args.num_samples} posterior draws for {y.shape[0]} observation(s) to {out}")
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a run on held-out (x, y) pairs: coverage, RMSE, misfit, SBC, TARP; JSON + PNGs."""
    from inference.evaluate import evaluate_model, write_evaluation
    from inference.posterior import bytes_per_draw
    from ppl_cvae.data.io import load_pairs

    out = Path(args.out)
    _check_out_dir(out, args.overwrite, [args.run_dir, args.data], "evaluate")
    cvae, meta = _load_run(args)
    cvae.to(resolve_device(args.device))
    config = cvae.config
    problem = meta["problem"]
    x, y = load_pairs(args.data)
    if tuple(x.shape[1:]) != config.x_shape or tuple(y.shape[1:]) != config.y_shape:
        raise DataError(
            f"{args.data!r} holds x {tuple(x.shape[1:])}, y {tuple(y.shape[1:])}; the model "
            f"has x {config.x_shape}, y {config.y_shape}"
        )
    if args.max_observations is not None:
        x, y = x[: args.max_observations], y[: args.max_observations]
    check_memory(
        2 * bytes_per_draw(cvae, x.shape[0], problem=problem) * args.num_samples,
        f"{args.num_samples} posterior draws for each of {x.shape[0]} held-out pairs",
        hint="lower --num-samples or --max-observations",
    )
    metrics, x_draws, exact = evaluate_model(
        cvae, x, y, problem=problem, num_samples=args.num_samples, seed=args.seed
    )
    metrics["run_dir"] = str(args.run_dir)
    metrics["data"] = str(args.data)
    metrics["problem"] = problem.name if problem is not None else None
    with atomic_dir(out, overwrite=args.overwrite, command="evaluate") as tmp_dir:
        write_evaluation(
            tmp_dir, metrics, x, x_draws, exact=exact, problem=problem, seed=args.seed, y_obs=y
        )
    summary = (
        f"coverage 50%: {metrics['coverage_50']:.3f}, 90%: {metrics['coverage_90']:.3f}; "
        f"RMSE posterior mean / prior mean: {metrics['rmse_ratio']:.3f}"
    )
    if "chi2_per_datum" in metrics:
        summary += f"; chi2 per datum: {metrics['chi2_per_datum']:.3f}"
    if "facies" in metrics:
        facies = metrics["facies"]
        summary += (
            f"; facies accuracy of the posterior mode: {facies['mode_accuracy']:.3f}, "
            f"reliability max deviation: {facies['reliability']['max_deviation']:.3f}"
        )
    calibration = metrics["calibration"]
    verdicts = [
        f"{name} {'failed' if calibration[key]['failures'] else 'passed'}"
        for key, name in (("coverage", "coverage"), ("sbc", "SBC"), ("tarp", "TARP"))
        if key in calibration
    ]
    summary += f"; calibration (false alarm {calibration['false_alarm']:g}): " + ", ".join(verdicts)
    print(f"{summary} ({metrics['num_observations']} held-out pairs); wrote {out}")
    for note in calibration["notes"]:
        print(f"note: {note}")
    return 0


# --------------------------------------------------------------------------- diagnose
def cmd_diagnose(args: argparse.Namespace) -> int:
    """Write the uncertainty report (summary CSV and plots) of a posterior file."""
    from inference.arviz_io import check_posterior, load_inference_data
    from inference.report import write_report

    out = Path(args.out)
    _check_out_dir(out, args.overwrite, [args.posterior], "diagnose")
    idata = load_inference_data(args.posterior)
    check_posterior(
        idata,
        args.posterior,
        require=(("posterior", "x"), ("posterior", "z"), ("observed_data", "y")),
    )
    with atomic_dir(out, overwrite=args.overwrite, command="diagnose") as tmp_dir:
        files = write_report(idata, tmp_dir, max_observations=args.max_observations)
    print(f"wrote {len(files)} files to {out}")
    return 0


# --------------------------------------------------------------------------- simulate
def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate (x, y) pairs from a problem's prior and forward operator."""
    from ppl_cvae.data.io import save_pairs

    out = Path(args.out)
    _check_new_file(out, args.overwrite, [], ".npz")
    problem, _ = _problem_from_args(args)
    _check_simulation_memory(problem, args.num, "--num")
    x, y = problem.simulate(args.num, torch.Generator().manual_seed(args.seed))
    save_pairs(out, x, y, overwrite=args.overwrite)
    print(f"wrote {args.num} pairs x {tuple(x.shape[1:])}, y {tuple(y.shape[1:])} to {out}")
    return 0


# --------------------------------------------------------------------------- score
def cmd_score(args: argparse.Namespace) -> int:
    """Score a Two Birds posterior file with the challenge's criteria."""
    from inference.arviz_io import check_posterior, load_inference_data
    from ppl_cvae.problems.two_birds import FUNCTION_PAIRS, score_samples

    if args.out:
        _check_new_file(Path(args.out), args.overwrite, [args.posterior], ".json")
    idata = load_inference_data(args.posterior)
    check_posterior(idata, args.posterior, require=(("posterior", "x"), ("observed_data", "y")))
    functions = args.functions
    if functions is None:
        spec: Any = idata.attrs.get("problem")  # str, dict or None (TypeError below)
        try:
            spec = json.loads(spec) if isinstance(spec, str) else spec
            functions = spec["functions"]
        except (TypeError, KeyError, json.JSONDecodeError) as err:
            raise DataError(
                f"{args.posterior!r} does not record its Two Birds functions; pass --functions"
            ) from err
    if not isinstance(functions, str) or functions not in FUNCTION_PAIRS:
        raise ConfigError(f"unknown functions {functions!r}; expected {sorted(FUNCTION_PAIRS)}")
    x = torch.as_tensor(idata["posterior"]["x"].values[0])  # (S, M, 1, 50, 2)
    y = torch.as_tensor(idata["observed_data"]["y"].values)  # (M, 1, 50, 2)
    if tuple(x.shape[2:]) != (1, 50, 2) or tuple(y.shape) != (x.shape[1], 1, 50, 2):
        raise DataError(
            f"{args.posterior!r} does not hold Two Birds models and data "
            f"(x {tuple(x.shape)}, y {tuple(y.shape)})"
        )
    score = score_samples(x, y, FUNCTION_PAIRS[functions])
    report = score.to_dict()
    text = json.dumps(report, indent=2)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(text)
    summary = {k: v for k, v in report.items() if not isinstance(v, list)}
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``ppl-cvae CMD: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print one error line naming the command and ``--help``, then exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``ppl-cvae``."""
    parser = _Parser(
        prog="ppl-cvae",
        description="Amortized Bayesian inversion with conditional VAEs (Pyro SVI).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_problem(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument(
            "--problem",
            required=required,
            help="built-in problem name (two_birds, linear_gaussian, crosshole, mt1d, gravity) "
            "or package.module:factory",
        )
        p.add_argument(
            "--functions",
            choices=["data_1", "original"],
            help="Two Birds function pair: data_1 = sin(5x0+3x1), cos(4x0+8x1); "
            "original = cos(49x0+42x1), cos(56x0+63x1)",
        )
        p.add_argument(
            "--problem-arg",
            action="append",
            metavar="KEY=VALUE",
            help="extra keyword argument of the problem factory (value parsed as JSON if it can "
            "be), repeatable",
        )

    fit_p = sub.add_parser(
        "fit",
        help="fit a CVAE with SVI (Trace_ELBO)",
        description="Fit a CVAE with SVI on a built-in problem's simulations or on a data file. "
        "Unset options take the run file's values (--config), then the recommendations for "
        "the problem, data file or dataset, then the library defaults.",
    )
    fit_p.add_argument(
        "--config",
        metavar="RUN_FILE",
        help="run file (.toml, or the config.json a fit writes) with the settings of this fit; "
        "flags override it (see ppl_cvae.train.runfile)",
    )
    add_problem(fit_p, required=False)
    fit_p.add_argument(
        "--data",
        help="training pairs: .npz (x, y), .nc (variables x, y), the challenge's .pt "
        "TensorDataset, or for files larger than memory a folder with x.npy and y.npy or a "
        ".zarr store (read in chunks, see --lazy); x/y in physical units",
    )
    fit_p.add_argument(
        "--dataset",
        choices=["digits", "mnist", "folder"],
        help="image dataset: digits = scikit-learn's 8x8 handwritten digits (built in); "
        "mnist = your IDX files in --dataset-path; folder = PNG/JPEG images in --dataset-path "
        "(one sub-folder per class optional), resized to --image-size; x: pixels in [0, 1] "
        "(binarised for digits/mnist), y: one-hot label",
    )
    fit_p.add_argument("--dataset-path", help="folder of the MNIST IDX files or of the images")
    fit_p.add_argument(
        "--image-size", type=_ints, help="H,W in pixels for --dataset folder (default 150,150)"
    )
    fit_p.add_argument(
        "--condition",
        choices=["label", "none"],
        help="with --dataset: condition on the label (CVAE, the default) or on nothing (VAE)",
    )
    fit_p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the interrupted fit in folder RUN from its last checkpoint "
        "(train_state.pt) with the settings it recorded; only --threads, --quiet, --device and "
        "the --checkpoint-* options may be given with it",
    )
    fit_p.add_argument(
        "--checkpoint-every",
        type=_count(1),
        metavar="N",
        help="also save the training state every N SVI steps (default: only at each epoch's "
        "end and by --checkpoint-minutes)",
    )
    fit_p.add_argument(
        "--checkpoint-minutes",
        type=_finite,
        metavar="M",
        help="save the training state at least every M minutes of training (default 10; 0: "
        "no timer)",
    )
    fit_p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="write no training state (the run cannot be resumed; the folder appears only "
        "when the fit has finished)",
    )
    fit_p.add_argument(
        "--out",
        help="run folder to create (model.pt, config.json, metrics.csv, loss.png; with "
        "--dataset also frames/: per-epoch reconstruction and sample grids, samples.gif); "
        "while the fit runs it holds train_state.pt, the checkpoint --resume continues from",
    )
    fit_p.add_argument("--epochs", type=_count(1), help="maximum number of epochs")
    fit_p.add_argument("--batch-size", type=_count(1), help="minibatch size (pairs per SVI step)")
    fit_p.add_argument("--learning-rate", type=_finite, help="Adam step size")
    fit_p.add_argument(
        "--lr-decay", type=_finite, help="total learning-rate decay factor over the run, in (0, 1]"
    )
    fit_p.add_argument(
        "--latent-dim",
        type=_count(0),
        help="dimension of the latent z (0: none, with --likelihood flow: a flow on x given y)",
    )
    fit_p.add_argument("--hidden-dims", type=_ints, help="hidden widths, e.g. 256,256")
    fit_p.add_argument("--activation", help="hidden activation (default leaky_relu)")
    fit_p.add_argument("--network", choices=NETWORKS, help="encoder/decoder body")
    fit_p.add_argument(
        "--conv-channels", type=_ints, help="conv1d/conv2d channels per stage, e.g. 32,64"
    )
    fit_p.add_argument(
        "--prior",
        choices=PRIORS,
        help="prior of z: learned Gaussian prior net p(z|y), N(0, I), or a conditional flow",
    )
    fit_p.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        help="likelihood of x given z, y (flow: a conditional normalising flow on x)",
    )
    fit_p.add_argument(
        "--flow-layers",
        type=_count(0),
        help="spline layers of the flow on x, --likelihood flow (default 5)",
    )
    fit_p.add_argument(
        "--prior-flow-layers",
        type=_count(0),
        help="spline layers of the flow on z, --prior flow (default 2)",
    )
    fit_p.add_argument(
        "--prior-flow-type",
        choices=FLOW_LAYER_TYPES,
        help="spline layer type of the flow on z, --prior flow: coupling (one network pass "
        "per layer and draw; the default) or autoregressive (latent-dim passes per draw)",
    )
    fit_p.add_argument(
        "--prior-flow-final",
        choices=PRIOR_FLOW_FINALS,
        help="coupling flow on z, --prior flow: end with an elementwise spline given y after "
        "a single coupling layer (auto, the default), always (spline: as before "
        "this flag) or never (none)",
    )
    fit_p.add_argument(
        "--flow-bins", type=_count(2), help="bins of each rational-quadratic spline (default 10)"
    )
    fit_p.add_argument(
        "--flow-hidden-dims",
        type=_ints,
        help="hidden widths of each flow layer's conditioning network (default 64,64)",
    )
    fit_p.add_argument(
        "--fixed-scale", type=_finite, help="std of x for gaussian_fixed, units of x"
    )
    fit_p.add_argument(
        "--noise-rank",
        type=_count(1),
        help="rank of the learned noise covariance factor of gaussian_lowrank (default 8)",
    )
    fit_p.add_argument(
        "--num-facies",
        type=_count(2),
        help="classes K of --likelihood categorical (x holds facies codes 0..K-1; default 2)",
    )
    fit_p.add_argument(
        "--y-embedding",
        choices=Y_EMBEDDINGS,
        help="one encoder of y per net (separate) or one embedding shared by the recognition "
        "net, prior net and decoder (shared; the default for --data files with >= 64 data)",
    )
    fit_p.add_argument(
        "--decoder",
        choices=["auto", "network", "basis"],
        help="basis: decode coefficients of the problem's linear basis (straight "
        "lines for two_birds); auto: the problem's recommendation",
    )
    fit_p.add_argument(
        "--linear-skip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a linear map of y to the decoder output (the part of E[x|y] linear in y)",
    )
    fit_p.add_argument(
        "--x-whitening",
        choices=X_WHITENINGS,
        help="linear: the networks model x given y as departures from the least-squares "
        "linear-Gaussian posterior fitted on the training pairs (x of at most 4096 values)",
    )
    fit_p.add_argument("--kl-warmup-epochs", type=_count(0), help="epochs of linear KL warm-up")
    fit_p.add_argument(
        "--physics-weight",
        type=_finite,
        help="weight of the physics-consistency "
        "term 0.5*sum(((F(decoder mean)-y)/misfit_std)^2); 0 disables",
    )
    fit_p.add_argument(
        "--gsnn-weight",
        type=_finite,
        help="weight of the GSNN term E_{z~p(z|y)} log p(x|z,y) added to the ELBO (Sohn et "
        "al. 2015 hybrid objective; trains the prior-net path sampling uses); 0 disables",
    )
    fit_p.add_argument("--val-fraction", type=_finite, help="fraction held out for validation ELBO")
    fit_p.add_argument(
        "--patience", type=_count(0), help="early-stopping patience in epochs (0: off)"
    )
    fit_p.add_argument("--num-particles", type=_count(1), help="Trace_ELBO particles")
    fit_p.add_argument(
        "--num-train", type=_count(2), help="simulated pairs (per epoch if resimulating)"
    )
    fit_p.add_argument(
        "--resimulate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw fresh simulations every epoch (built-in problems only)",
    )
    fit_p.add_argument(
        "--unconditional",
        action="store_true",
        help="fit an unconditional VAE on the problem's prior draws (no y): a generative prior "
        "for `sample --method latent-nuts --generative-prior RUN` (Laloy et al. 2018)",
    )
    fit_p.add_argument(
        "--stream",
        action="store_true",
        help="train on an endless stream of fresh simulated minibatches (--problem only): "
        "each epoch takes ceil(num_train / batch_size) new minibatches, each simulated with "
        "its own seed; the same run for any --workers",
    )
    fit_p.add_argument(
        "--workers",
        type=_count(0),
        default=0,
        help="with --stream: DataLoader processes that simulate ahead while SVI steps run "
        "(default 0: simulate between steps)",
    )
    fit_p.add_argument(
        "--lazy",
        action="store_true",
        help="read --data in chunks instead of loading it (bounded memory; automatic for a "
        "folder of x.npy/y.npy, a .zarr store and a .nc larger than half the free memory)",
    )
    fit_p.add_argument(
        "--chunk-mb",
        type=_finite,
        help=f"lazy reading: MiB per chunk read (default {DEFAULT_CHUNK_MB:g})",
    )
    fit_p.add_argument(
        "--buffer-chunks",
        type=_count(1),
        help=f"lazy reading: chunks shuffled together (default {DEFAULT_BUFFER_CHUNKS}; more "
        "is closer to a full "
        "shuffle, at more memory)",
    )
    fit_p.add_argument("--seed", type=_seed, help="random seed")
    fit_p.add_argument("--quiet", action="store_true", help="no progress bar")
    fit_p.add_argument("--overwrite", action="store_true", help="reuse a non-empty run folder")
    fit_p.set_defaults(func=cmd_fit)

    s = sub.add_parser("sample", help="draw posterior samples into InferenceData NetCDF")
    s.add_argument("run_dir", help="run folder written by fit (or a model.pt)")
    s.add_argument(
        "--observation",
        required=True,
        help=".npy with one y (y_shape) or a stack "
        "(M, *y_shape), or .npz with key y (and optional x = true models)",
    )
    add_problem(s, required=False)
    s.add_argument(
        "--num-samples",
        type=_count(1),
        help="posterior draws per observation (large requests are streamed to disk in "
        "chunks); default 1000, for --method nuts chains x the draws per chain that keep the "
        "largest R-hat of all sampled values under 1.01 (783 per chain for 1024 values)",
    )
    s.add_argument("--out", required=True, help="output .nc (ArviZ InferenceData)")
    s.add_argument(
        "--decoder-noise",
        choices=["auto", "sample", "mean"],
        default="auto",
        help="sample: x ~ p(x|z,y) with the decoder's noise; mean: x = E[x|z,y]; "
        "auto: mean for a basis decoder (straight lines for two_birds), else sample (for a "
        "facies decoder the draws are then facies codes; mean: P(x=1|z,y) for bernoulli)",
    )
    s.add_argument(
        "--method",
        choices=["amortized", "importance", "nuts", "latent-nuts", "refine"],
        default="amortized",
        help="amortized: the CVAE's draws; importance: importance sampling against the "
        "problem's prior and noise model with the CVAE as proposal (reliable when k-hat <= 0.7); "
        "nuts: NUTS on the problem's posterior started and preconditioned by CVAE draws; "
        "latent-nuts: NUTS on the latent z of --generative-prior (for a prior without a "
        "density), started at CVAE draws encoded by its recognition net; "
        "refine: misfit minimisation of each draw (an optimiser, not a sampler)",
    )
    s.add_argument(
        "--refine",
        action="store_true",
        help="the same as --method refine: refine each draw by minimising its data misfit "
        "with the problem's forward operator, then keep draws whose RMS normalised misfit is "
        "below --max-misfit",
    )
    s.add_argument(
        "--proposals",
        type=_count(2),
        help="--method importance: proposal draws per observation (default 10 x --num-samples)",
    )
    s.add_argument(
        "--generative-prior",
        metavar="PRIOR_RUN",
        help="--method latent-nuts: run folder (or model.pt) of an unconditional VAE fitted on "
        "the problem's prior draws (`ppl-cvae fit --problem NAME --unconditional`)",
    )
    s.add_argument(
        "--chains",
        type=_count(1),
        help=f"--method nuts/latent-nuts: chains (default {DEFAULT_CHAINS})",
    )
    s.add_argument(
        "--warmup",
        type=_count(0),
        help="--method nuts/latent-nuts: warm-up steps per chain (default 500; --method nuts "
        "with step-size-only adaptation: 150)",
    )
    s.add_argument(
        "--adapt-mass-matrix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--method nuts: also adapt a diagonal mass matrix during warm-up, on top of the "
        "amortized preconditioner (needs about 500 warm-up steps); default and "
        "--no-adapt-mass-matrix: adapt the step size only",
    )
    s.add_argument(
        "--cores",
        type=_count(1),
        default=1,
        help="--method nuts: worker processes for the chains (at most --chains; the draws "
        "do not depend on it)",
    )
    s.add_argument(
        "--nuts-jit",
        action="store_true",
        help="--method nuts: trace the potential with torch.jit.trace (checked against the "
        "eager potential; no gain measured on crosshole and gravity)",
    )
    s.add_argument(
        "--potential-dtype",
        choices=["float64", "float32"],
        default=None,
        help="--method nuts: precision of the potential and its gradient (the chains' state "
        f"and draws stay float64; default {DEFAULT_POTENTIAL_DTYPE}); float32 reads half the "
        "bytes per evaluation and is used only where it agrees with float64 within 0.01 nats "
        "at the chains' starts (README, 'NUTS within 60 s per observation')",
    )
    s.add_argument(
        "--preconditioner",
        choices=["amortized", "prior", "prior-amortized"],
        default="amortized",
        help="--method nuts: the coordinates NUTS runs in: whitened by the amortized draws' "
        "covariance (default); by the prior's Cholesky factor (prior; needs a prior that is "
        "Gaussian in the sampled coordinates: mt1d, the Gaussian random fields of crosshole "
        "and gravity); or by the amortized covariance in those prior-whitened coordinates, "
        "clipped at the prior (prior-amortized; on mt1d 1.5x to 7x fewer evaluations per "
        "effective draw than the default, with --warmup 200 or more; see the README)",
    )
    s.add_argument("--oversample", type=_count(1), default=4, help="candidates per kept draw")
    s.add_argument(
        "--max-misfit",
        type=_finite,
        default=1.0,
        help="acceptance threshold on RMS((F(x) - y) / misfit_std), dimensionless; 0: keep all",
    )
    s.add_argument(
        "--refine-steps", type=_count(0), default=300, help="Adam steps of the refinement"
    )
    s.add_argument(
        "--refine-lr", type=_finite, default=0.1, help="Adam step size of the refinement"
    )
    s.add_argument("--seed", type=_seed, default=0, help="random seed of the draws")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.set_defaults(func=cmd_sample)

    ev = sub.add_parser(
        "evaluate",
        help="coverage, RMSE, misfit, SBC and TARP of a run on held-out pairs",
        description="Draw posterior samples for held-out (x, y) pairs and write metrics.json "
        "(coverage of the true x by central 50%%/90%% intervals, RMSE of the posterior mean vs "
        "the training mean, chi-squared misfit per datum with a forward operator, the exact "
        "posterior comparison for linear-Gaussian problems, and under 'calibration' "
        "simulation-based calibration ranks of every component and of the misfit, TARP of the "
        "joint posterior and the coverage verdict with a tolerance from the number of pairs) "
        "plus coverage.png, truth_vs_mean.png, sbc_ecdf.png and tarp.png.",
    )
    ev.add_argument("run_dir", help="run folder written by fit (or a model.pt)")
    ev.add_argument("--data", required=True, help="held-out pairs (.npz/.nc/.pt with x and y)")
    ev.add_argument("--out", required=True, help="output folder")
    add_problem(ev, required=False)
    ev.add_argument("--num-samples", type=_count(2), default=200, help="posterior draws per pair")
    ev.add_argument("--max-observations", type=_count(1), help="evaluate only the first N pairs")
    ev.add_argument("--seed", type=_seed, default=0, help="random seed of the draws")
    ev.add_argument("--overwrite", action="store_true", help="reuse a non-empty output folder")
    ev.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("diagnose", help="summary CSV and plots of a posterior file")
    d.add_argument("posterior", help="InferenceData .nc written by sample")
    d.add_argument("--out", required=True, help="report folder")
    d.add_argument("--max-observations", type=_count(1), default=3, help="observations to plot")
    d.add_argument("--overwrite", action="store_true", help="reuse a non-empty report folder")
    d.set_defaults(func=cmd_diagnose)

    sim = sub.add_parser("simulate", help="simulate (x, y) pairs from a problem")
    add_problem(sim, required=True)
    sim.add_argument("--num", type=_count(1), required=True, help="number of pairs")
    sim.add_argument("--out", required=True, help="output .npz with arrays x and y")
    sim.add_argument("--seed", type=_seed, default=0, help="random seed")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    sim.set_defaults(func=cmd_simulate)

    sc = sub.add_parser("score", help="Two Birds challenge criteria on a posterior file")
    sc.add_argument("posterior", help="InferenceData .nc written by sample")
    sc.add_argument(
        "--functions",
        choices=["data_1", "original"],
        help="function pair (default: the one recorded in the file)",
    )
    sc.add_argument("--out", help="optional JSON with per-observation results")
    sc.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    sc.set_defaults(func=cmd_score)
    threads_help = (
        "torch CPU threads (default: torch's own choice, which can run several times slower "
        "than 1 thread on a shared, loaded machine)"
    )
    parser.add_argument("--threads", type=_count(1), default=None, help=threads_help)
    for command in sub.choices.values():  # also after the command: ppl-cvae fit --threads 1
        command.add_argument(
            "--threads", type=_count(1), default=argparse.SUPPRESS, help=threads_help
        )
    device_help = {
        "fit": "where the networks train: the pairs are simulated or read on the CPU and copied "
        "there per minibatch",
        "sample": "where the networks draw (amortized draws; importance, nuts and refine run on "
        "the CPU)",
        "evaluate": "where the networks draw the held-out posteriors",
    }
    for name, text in device_help.items():
        sub.choices[name].add_argument(
            "--device",
            default="cpu",
            help=f"{DEVICE_CHOICES} (default cpu; auto takes CUDA when available): {text}",
        )
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppl-cvae``; return the exit status.

    0 on success; 2 on a user error (one line ``ppl-cvae: error: ...`` on stderr, no
    traceback), including a request that cannot fit in memory; 130 when interrupted by Ctrl-C
    (nothing half-written is left: outputs are written atomically).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    if args.command == "fit" and not (
        args.problem or args.data or args.dataset or args.config or args.resume
    ):
        parser.error(
            "fit needs --problem NAME, --data FILE, --dataset NAME, --config FILE or --resume RUN"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        _check_utf8_paths(args)
        return int(args.func(args))
    except PplCvaeError as err:
        print(f"ppl-cvae: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file the user named cannot be read or written
        where = f": {err.filename!r}" if err.filename else ""
        print(f"ppl-cvae: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # allocator failures: one line
        # torch.OutOfMemoryError is a RuntimeError; its CPU allocator raises a plain one
        out_of_memory = isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
            "can't allocate memory" in str(err)
        )
        if not out_of_memory:
            raise
        print(
            "ppl-cvae: error: out of memory; ask for fewer draws, pairs or a smaller network",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("ppl-cvae: interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
