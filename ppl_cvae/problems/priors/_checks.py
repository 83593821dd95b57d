"""Argument checks shared by the prior fields (not public API)."""

from __future__ import annotations

from ppl_cvae.errors import ConfigError


def is_number(value: object) -> bool:
    """Return True for a real number (int or float, not bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_num_draws(num: int) -> None:
    """Raise :class:`~ppl_cvae.errors.ConfigError` if the number of draws ``num`` is negative."""
    if num < 0:
        raise ConfigError(f"num must be >= 0, got {num}")
