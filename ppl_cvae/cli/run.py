"""Run a ``ppl-cvae`` command: parse the arguments, call the command, report errors in one line.

:func:`ppl_cvae.cli.main` loads this module (torch, Pyro and every command) on each call, so
that a Ctrl-C while they load is answered as the commands answer it.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

import torch

from ppl_cvae._atomic import InterruptedAfterWrite, interrupt_status, remembering_interrupts
from ppl_cvae.cli.common import _check_utf8_paths
from ppl_cvae.cli.parser import build_parser
from ppl_cvae.errors import PplCvaeError

# loaded with this module, while ppl_cvae.cli.main holds a Ctrl-C back: an import in main()
# below (Pyro and the training modules, seconds) would meet a Ctrl-C with a traceback
from ppl_cvae.train.distributed import shut_down_owned_group

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ppl-cvae``; return the exit status.

    0 on success; 2 on a user error (one line ``ppl-cvae: error: ...`` on stderr, no
    traceback), including a request that cannot fit in memory and problem code that calls
    ``sys.exit``; 130 when interrupted by Ctrl-C and 143 when stopped by SIGTERM (nothing
    half-written is left: outputs are written atomically, and none is renamed into place after
    a Ctrl-C, even one that Python swallowed in a finalizer:
    :func:`~ppl_cvae._atomic.remembering_interrupts`).

    A torchrun rank whose process group this command created and ended does not return: it
    flushes its output and leaves with ``os._exit(status)``, because interpreter finalisation
    could deadlock in torch's gloo process group destructor
    (:func:`~ppl_cvae.train.distributed.shut_down_owned_group`).
    """
    try:
        status = _main(argv)
    except BaseException as err:
        if not shut_down_owned_group():
            raise
        if _lost_peers(err):  # the rank that failed reports why; this one says so in a line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(
                f"ppl-cvae: error: rank {os.environ.get('RANK', '?')}: a collective operation "
                "failed, most likely because another rank failed or stopped (its error is "
                f"reported with it); torch.distributed: {first}",
                file=sys.stderr,
            )
        else:
            traceback.print_exc()  # an error this command did not expect: shown, then the exit
        status = 1
    if shut_down_owned_group():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _lost_peers(err: BaseException) -> bool:
    """Return whether ``err`` is a RuntimeError raised inside ``torch.distributed``'s code.

    On a torchrun rank that is how the loss of a peer shows (gloo's "Connection reset by
    peer" from a collective operation): the rank that failed first reports its own error.
    """
    frames = traceback.extract_tb(err.__traceback__)
    return (
        isinstance(err, RuntimeError)
        and bool(frames)
        and "torch/distributed/" in frames[-1].filename.replace(os.sep, "/")
    )


class _LineFormatter(logging.Formatter):
    """Log records as the command's lines.

    A warning becomes ``ppl-cvae: warning: ...`` (as Python warnings and errors are);
    information is shown as it is.
    """

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"ppl-cvae: warning: {text}" if record.levelno >= logging.WARNING else text


def _main(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the command: :func:`main` without the torchrun exit."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_LineFormatter("%(message)s"))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler]
    )
    if args.command == "fit" and not (
        args.problem or args.data or args.dataset or args.config or args.resume
    ):
        parser.error(
            "fit needs --problem NAME, --data FILE, --dataset NAME, --config FILE or --resume RUN"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    formatted = warnings.formatwarning
    warnings.formatwarning = _format_warning  # one line, as errors are; restored below
    try:
        _check_utf8_paths(args)
        with remembering_interrupts():  # a Ctrl-C that a finalizer swallows still counts
            return int(args.func(args))
    except PplCvaeError as err:
        print(f"ppl-cvae: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ppl-cvae score ... | head`: the reader left, as for any CLI
        try:  # stdout's buffer would raise again when Python flushes it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real stdout (captured)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
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
    except InterruptedAfterWrite:
        print("ppl-cvae: interrupted just after the output was written (it is complete)",
              file=sys.stderr)
        return interrupt_status()
    except KeyboardInterrupt:
        print("ppl-cvae: interrupted; no partial output was written", file=sys.stderr)
        return interrupt_status()
    except SystemExit as err:  # argparse's own exits pass; problem code must not end the run
        frames = traceback.extract_tb(err.__traceback__)
        if frames and frames[-1].filename.endswith("argparse.py"):
            raise
        print(f"ppl-cvae: error: problem code called sys.exit({err.code!r})", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatted


def _format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """Format a warning as one line ``ppl-cvae: warning: ...`` (no source path and line).

    Only the text changes: where the warning goes (stderr, a ``catch_warnings`` record, a
    ``-W error``) stays Python's decision.
    """
    return f"ppl-cvae: warning: {message}\n"
