"""The ``ppl-cvae`` command: fit, sample, evaluate, diagnose, simulate, score.

Every subcommand validates its input before writing anything, writes each output atomically,
refuses to overwrite existing outputs unless ``--overwrite`` is given, and reports user errors
as one line ``ppl-cvae: error: ...`` with exit status 2 (no traceback).

:func:`main` (here) runs the command; ``python -m ppl_cvae.cli`` and
``torchrun ... -m ppl_cvae.cli fit`` run it through ``__main__``. Importing this package loads
nothing heavy: :func:`main` loads torch, Pyro and the commands (:mod:`~ppl_cvae.cli.run`)
when called, so a Ctrl-C in the seconds they take is answered in one line with status 130,
not with Python's traceback. The modules:

- :mod:`~ppl_cvae.cli.run`: parse, run the command, report errors and warnings in one line;
- :mod:`~ppl_cvae.cli.parser`: the argument parser (every flag, default and help text);
- :mod:`~ppl_cvae.cli.common`: checks shared by the commands (``--problem``, output files and
  folders, memory of a simulation, loading a run, UTF-8 paths);
- :mod:`~ppl_cvae.cli.fit`: ``fit``, with ``--config``, ``--resume``, ``--lazy``, ``--stream``
  and torchrun;
- :mod:`~ppl_cvae.cli.sample`: ``sample`` and its ``--method`` options;
- :mod:`~ppl_cvae.cli.evaluate`: ``evaluate``, ``diagnose`` and ``score``;
- :mod:`~ppl_cvae.cli.simulate`: ``simulate``.

The public names of the former ``ppl_cvae/cli.py`` are re-exported here, loaded on first use;
patch a name in the module that defines it. The package is a leaf: nothing in ``ppl_cvae`` or
``inference`` imports it.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_BUFFER_CHUNKS",
    "DEFAULT_CHAINS",
    "DEFAULT_CHUNK_MB",
    "DEFAULT_POTENTIAL_DTYPE",
    "LAZY_MEMORY_FRACTION",
    "MODEL_FLAGS",
    "NUTS_WARMUP_STEP_SIZE_ONLY",
    "PATH_ARGS",
    "RESUME_KEEPS",
    "SEED_MAX",
    "TRAIN_FLAGS",
    "build_parser",
    "cmd_diagnose",
    "cmd_evaluate",
    "cmd_fit",
    "cmd_sample",
    "cmd_score",
    "cmd_simulate",
    "main",
]

_LAZY = {
    "DEFAULT_BUFFER_CHUNKS": ("ppl_cvae.cli.fit", "DEFAULT_BUFFER_CHUNKS"),
    "DEFAULT_CHUNK_MB": ("ppl_cvae.cli.fit", "DEFAULT_CHUNK_MB"),
    "LAZY_MEMORY_FRACTION": ("ppl_cvae.cli.fit", "LAZY_MEMORY_FRACTION"),
    "MODEL_FLAGS": ("ppl_cvae.cli.fit", "MODEL_FLAGS"),
    "RESUME_KEEPS": ("ppl_cvae.cli.fit", "RESUME_KEEPS"),
    "TRAIN_FLAGS": ("ppl_cvae.cli.fit", "TRAIN_FLAGS"),
    "cmd_fit": ("ppl_cvae.cli.fit", "cmd_fit"),
    "DEFAULT_CHAINS": ("ppl_cvae.cli.sample", "DEFAULT_CHAINS"),
    "DEFAULT_POTENTIAL_DTYPE": ("ppl_cvae.cli.sample", "DEFAULT_POTENTIAL_DTYPE"),
    "NUTS_WARMUP_STEP_SIZE_ONLY": ("ppl_cvae.cli.sample", "NUTS_WARMUP_STEP_SIZE_ONLY"),
    "cmd_sample": ("ppl_cvae.cli.sample", "cmd_sample"),
    "PATH_ARGS": ("ppl_cvae.cli.common", "PATH_ARGS"),
    "SEED_MAX": ("ppl_cvae.checks", "MAX_SEED"),
    "build_parser": ("ppl_cvae.cli.parser", "build_parser"),
    "cmd_diagnose": ("ppl_cvae.cli.evaluate", "cmd_diagnose"),
    "cmd_evaluate": ("ppl_cvae.cli.evaluate", "cmd_evaluate"),
    "cmd_score": ("ppl_cvae.cli.evaluate", "cmd_score"),
    "cmd_simulate": ("ppl_cvae.cli.simulate", "cmd_simulate"),
}
"""Re-exported names: (module, name there), loaded on first use (PEP 562)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppl-cvae`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Parses ``argv`` (the parser, :mod:`ppl_cvae.cli.parser`, loads no torch: ``--help`` and
    usage errors are answered at once, with argparse's ``SystemExit``), then loads
    :mod:`ppl_cvae.cli.run` (torch, Pyro and the commands) and runs
    :func:`ppl_cvae.cli.run.main`: 0 on success, 2 on a user error (one line), 130 on Ctrl-C,
    also when the Ctrl-C comes while the modules load (one line, nothing written).

    Notes
    -----
    A Ctrl-C is held back while the modules load (in the main thread, unless SIGINT is
    ignored) and answered once they have: raised inside a library's import, Python's
    ``KeyboardInterrupt`` was turned into a failed import by numpy (and torch then ran without
    numpy, or failed with "cannot load module more than once per process").
    """
    interrupted: list[int] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            previous = None  # an ignored Ctrl-C stays ignored
        else:
            signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        from ppl_cvae.cli.parser import build_parser

        # --help and a mistyped flag are answered here, before torch and Pyro load (2 s)
        build_parser().parse_args(argv)
        from ppl_cvae.cli.run import main as run
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("ppl-cvae: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return run(argv)


def __getattr__(name: str) -> Any:
    """Load a re-exported name from the module that defines it (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'ppl_cvae.cli' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
