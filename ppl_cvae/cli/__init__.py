"""The ``ppl-cvae`` command (step 1 of a split: the whole command still lives in :mod:`.fit`)."""

from ppl_cvae.cli.fit import build_parser, main

__all__ = ["build_parser", "main"]
