"""Up-front memory estimates: refuse a request that cannot fit before allocating it.

The estimate is compared with the memory this process may still take: ``MemAvailable`` of
``/proc/meminfo`` (Linux), capped by the cgroup limit when one is set, else the physical memory
reported by ``os.sysconf``. A request above :data:`MEMORY_FRACTION` of that raises
:class:`~ppl_cvae.errors.ResourceError` naming the estimate, so the user sees one clear line
instead of a machine that swaps or an out-of-memory kill.
"""

from __future__ import annotations

import os
from pathlib import Path

from ppl_cvae.errors import ResourceError

__all__ = ["MEMORY_FRACTION", "available_memory", "check_memory", "format_bytes"]

MEMORY_FRACTION = 0.8
"""Largest fraction of the available memory that one request may claim."""


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Return the memory, in bytes, that this process can still allocate (an estimate).

    Returns
    -------
    int
        ``min(MemAvailable, cgroup limit - cgroup usage)`` where they can be read; else the
        physical memory; else 2**40 (no limit known).
    """
    candidates = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            candidates.append(2**40)
    return min(candidates)


def format_bytes(num: float) -> str:
    """Return ``num`` bytes as a short human-readable string, e.g. ``'3.2 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"  # unreachable; keeps type checkers content


def check_memory(num_bytes: float, what: str, hint: str = "") -> None:
    """Raise if ``num_bytes`` exceeds :data:`MEMORY_FRACTION` of the available memory.

    Parameters
    ----------
    num_bytes : float
        Estimated peak allocation of the request, in bytes.
    what : str
        What is being allocated, for the message (e.g. ``"1000000 posterior draws"``).
    hint : str, optional
        What the user can do instead, appended to the message.

    Raises
    ------
    ResourceError
        If the estimate is larger than ``MEMORY_FRACTION * available_memory()``.

    Examples
    --------
    >>> check_memory(1024, "a small tensor")  # fits: returns None
    """
    budget = MEMORY_FRACTION * available_memory()
    if num_bytes > budget:
        message = (
            f"{what} would need about {format_bytes(num_bytes)} of memory; "
            f"{format_bytes(budget)} is available"
        )
        raise ResourceError(f"{message}; {hint}" if hint else message)
