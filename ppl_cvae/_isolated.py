"""Run a reader in a child Python process with a time limit (for files that can hang a C library).

libhdf5 can loop forever or crash on a corrupt file (e.g. HDFGroup/hdf5#1707; a one-byte change
of a file written by h5netcdf made ``h5py`` spin in ``H5DSget_num_scales``), and a loop in C
cannot be interrupted from Python: only a separate process can be stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from ppl_cvae.errors import DataError

__all__ = ["NETCDF_TIMEOUT_S", "netcdf_timeout", "run_isolated"]

NETCDF_TIMEOUT_S = 60.0
"""Seconds a NetCDF reader process may take, plus one second per 50 MB of file."""


def netcdf_timeout(path: Path) -> float:
    """Return the time limit, in seconds, for reading ``path``: 60 s plus 1 s per 50 MB."""
    return NETCDF_TIMEOUT_S + path.stat().st_size / 50e6


# What every child runs around its body: its arguments, reply(), and a catch-all that reports
# any exception as {"error", "message"} (the child is the isolation boundary).
_PROLOGUE = """import json, os, sys
path, out, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def reply(**kw):
    with open(os.path.join(out, "reply.json"), "w") as fh:
        json.dump(kw, fh)
try:
"""
_EPILOGUE = """
except Exception as err:
    reply(error=type(err).__name__, message=str(err)[:2000])
"""


def run_isolated(
    body: str, path: Path, args: list[str], timeout: float, what: str
) -> tuple[dict[str, Any], Path, tempfile.TemporaryDirectory[str]]:
    """Run ``body`` in a child interpreter on ``path``; return its JSON reply and its folder.

    The body sees ``path`` (the file), ``out`` (an empty folder it runs in: ``python -c`` puts
    the working folder first on ``sys.path``), ``args`` (a list of str) and ``reply(**kw)``,
    which writes the JSON reply; it may leave other files (e.g. ``.npy`` arrays) in ``out``.
    An exception in the body is replied as ``{"error": type name, "message": text}``.

    Parameters
    ----------
    body : str
        Python source of the child, unindented.
    path : Path
        The user's file (for the child and for messages).
    args : list of str
        Further arguments of the child.
    timeout : float
        Seconds before the child is stopped.
    what : str
        What is being read, for messages (e.g. ``"NetCDF"``).

    Returns
    -------
    reply : dict
        The child's JSON reply.
    out : Path
        The child's folder; it lives as long as the returned TemporaryDirectory (the caller
        cleans it up, e.g. with ``with``).
    folder : tempfile.TemporaryDirectory

    Raises
    ------
    DataError
        If the child runs past ``timeout`` (a corrupt file), crashes, cannot start, or leaves
        no reply.
    """
    if not sys.executable:
        raise DataError(f"cannot read {str(path)!r}: no Python executable to run the reader")
    folder = tempfile.TemporaryDirectory(prefix="ppl_cvae_reader_")
    out = Path(folder.name)
    code = _PROLOGUE + textwrap.indent(body, "    ") + _EPILOGUE
    command = [sys.executable, "-c", code, os.path.abspath(path), str(out), *args]
    try:
        proc = subprocess.run(
            command, cwd=out, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        folder.cleanup()
        raise DataError(
            f"reading {str(path)!r} as {what} did not finish within {timeout:.0f} s and was "
            "stopped: libhdf5 can loop forever on a corrupt file, so check it (h5dump) or write "
            "it again; if it is only large or on a slow disk, raise "
            "ppl_cvae._isolated.NETCDF_TIMEOUT_S"
        ) from None
    except OSError as err:
        folder.cleanup()
        raise DataError(f"cannot start a {what} reader for {str(path)!r}: {err}") from err
    try:
        reply = json.loads((out / "reply.json").read_text())
    except (OSError, ValueError):
        folder.cleanup()
        stderr = proc.stderr.decode(errors="replace").strip().splitlines()
        status = f"signal {-proc.returncode}" if proc.returncode < 0 else f"{proc.returncode}"
        raise DataError(
            f"the {what} reader crashed on {str(path)!r} (exit status {status}"
            f"{': ' + stderr[-1] if stderr else ''}); the file is corrupt: write it again"
        ) from None
    return reply, out, folder
