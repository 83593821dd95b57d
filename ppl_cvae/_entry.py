"""The ``ppl-cvae`` console script: load the command line, answering a Ctrl-C while it loads.

Loading torch, Pyro and the commands takes seconds; a Ctrl-C then would end Python with a
``KeyboardInterrupt`` traceback and exit status -2. The script imports them here instead,
after Python has started, and answers such an interrupt as every command does: one line and
exit status 130 (nothing was written: no command had started).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Load :mod:`ppl_cvae.cli` and run :func:`ppl_cvae.cli.main` on ``argv``.

    Returns
    -------
    int
        The command's exit status; 130 when interrupted while loading.
    """
    try:
        from ppl_cvae.cli import main as run
    except KeyboardInterrupt:
        print("ppl-cvae: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return run(argv)
