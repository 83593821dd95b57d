"""Strict JSON for every file the product writes: no ``NaN`` or ``Infinity`` tokens.

Python's :func:`json.dumps` writes ``NaN``, ``Infinity`` and ``-Infinity`` by default, which
are not JSON (RFC 8259, section 6): ``jq``, JavaScript's ``JSON.parse`` and strict parsers
reject the whole file. :func:`finite_or_null` replaces each non-finite float of a nested
document by ``None`` (``null``) and names where it was; :func:`dumps_strict` then writes with
``allow_nan=False``, so a non-finite value that slipped through is an error, never a token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps_strict", "finite_or_null", "non_finite_word"]


def non_finite_word(value: float) -> str:
    """Return ``"NaN"``, ``"+inf"`` or ``"-inf"`` for a non-finite float (its JSON-free name).

    Parameters
    ----------
    value : float
        A non-finite float.

    Returns
    -------
    str
        The name of the value.

    Examples
    --------
    >>> non_finite_word(float("-inf"))
    '-inf'
    """
    if math.isnan(value):
        return "NaN"
    return "+inf" if value > 0 else "-inf"


def finite_or_null(document: Any, prefix: str = "") -> tuple[Any, list[tuple[str, str]]]:
    """Return a copy of ``document`` with non-finite floats as ``None``, and where they were.

    Parameters
    ----------
    document : JSON-ready value
        Nested mappings (string keys), lists, tuples, strings, numbers, booleans and ``None``.
    prefix : str, default ""
        Path of ``document`` itself inside a larger document.

    Returns
    -------
    clean : JSON-ready value
        ``document`` with mappings as dicts, tuples as lists and each NaN or infinite float
        (Python or NumPy) replaced by ``None``; other values are shared, not copied.
    not_finite : list of (str, str)
        ``(path, word)`` per replaced value, in document order: the path joins keys and list
        indices with dots (``"calibration.tarp.p_value"``, ``"coverage_curve.empirical.3"``),
        the word is :func:`non_finite_word` of the value.

    Examples
    --------
    >>> finite_or_null({"a": 1.0, "b": [2.0, float("nan")]})
    ({'a': 1.0, 'b': [2.0, None]}, [('b.1', 'NaN')])
    """
    found: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, float):  # numpy.float64 is a float
            if math.isfinite(value):
                return value
            found.append((path, non_finite_word(value)))
            return None
        if isinstance(value, Mapping):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
        if hasattr(value, "dtype") and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return walk(value.item(), path)  # a NumPy or torch scalar (float32 included)
        return value

    return walk(document, prefix), found


def dumps_strict(document: Any, *, indent: int | None = None) -> str:
    """Serialise ``document`` as strict JSON (``allow_nan=False``).

    Parameters
    ----------
    document : JSON-ready value
        Without NaN or infinite floats (pass it through :func:`finite_or_null` first).
    indent : int, optional
        As :func:`json.dumps`.

    Returns
    -------
    str
        The JSON text.

    Raises
    ------
    ValueError
        If ``document`` holds a NaN or infinite float (a bug of the caller: the file would not
        be JSON).

    Examples
    --------
    >>> dumps_strict({"a": None})
    '{"a": null}'
    """
    return json.dumps(document, indent=indent, allow_nan=False)
