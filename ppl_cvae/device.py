"""Devices: parse ``--device`` and move a problem's tensors onto the device its model runs on.

``cpu``, ``cuda``, ``cuda:N`` and ``auto`` (CUDA when available, else the CPU) are accepted, as
in the ``device=`` argument of torch. The networks, the standardisers (buffers of the CVAE), the
minibatches and a problem's forward operator run on the chosen device; checkpoints always hold
CPU tensors (:func:`~ppl_cvae.train.save_checkpoint` moves them, the loader maps to the CPU), so a
run trained on a GPU loads on a CPU-only machine and the reverse.

Random draws on a device use that device's generator: the same seed reproduces the same draws on
the same kind of device, not across CPU and CUDA.
"""

from __future__ import annotations

import copy
import types
from typing import Any, TypeVar

import torch

from ppl_cvae._choices import DEVICE_CHOICES
from ppl_cvae.errors import ConfigError

__all__ = ["DEVICE_CHOICES", "module_device", "move_tensors", "problem_on", "resolve_device"]

T = TypeVar("T")


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """Return the torch device that ``spec`` names, checking that it exists here.

    Parameters
    ----------
    spec : str, torch.device or None
        ``"cpu"`` (also None), ``"cuda"`` (the current CUDA device), ``"cuda:N"`` or ``"auto"``
        (``cuda`` when :func:`torch.cuda.is_available`, else ``cpu``).

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        If ``spec`` is not one of the accepted forms, CUDA is asked for on a machine without
        it, or ``N`` is not below the number of CUDA devices. The message names the value as
        the Python argument (``device='cpu'``) and the flag (``--device cpu``), since both
        the API and the command line call this function.

    Examples
    --------
    >>> resolve_device("cpu"), resolve_device(None)
    (device(type='cpu'), device(type='cpu'))
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
    """
    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {spec!r} is not one of {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"device {spec!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {spec!r}: CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='cpu' or 'auto' (--device cpu "
            "or auto on the command line)"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"device {spec!r}: this machine has {count} CUDA device(s), numbered 0 to {count - 1}"
        )
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """Return the device of ``module``'s first parameter or buffer (the CPU when it has none).

    Examples
    --------
    >>> module_device(torch.nn.Linear(2, 1))
    device(type='cpu')
    """
    first: torch.Tensor | None = next(module.parameters(), None)
    if first is None:
        first = next(module.buffers(), None)
    return torch.device("cpu") if first is None else first.device


def move_tensors(obj: T, device: torch.device | str) -> T:
    """Move every tensor and module that ``obj`` holds onto ``device``, in place; return ``obj``.

    Walks the instance attributes of ``obj`` (``vars``) and, recursively, of the plain objects,
    lists, tuples and dicts they hold: tensors are replaced by their copy on ``device``,
    :class:`torch.nn.Module` s are moved with ``.to``. Generators, classes, functions and
    modules are left alone. A problem's ``to`` uses it so that its forward operator, noise model
    and prior run on the device of the CVAE.

    Parameters
    ----------
    obj : object
        A problem, a noise model, a prior: any object whose tensors live in attributes.
    device : torch.device or str

    Returns
    -------
    object
        ``obj`` itself.

    Examples
    --------
    >>> class Holder:
    ...     def __init__(self):
    ...         self.matrix = torch.eye(2)
    ...         self.parts = {"offset": torch.zeros(2)}
    >>> move_tensors(Holder(), "cpu").parts["offset"].device
    device(type='cpu')
    """
    device = torch.device(device)
    seen: set[int] = set()

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, torch.nn.Module):
            return value.to(device)
        if id(value) in seen:
            return value
        if isinstance(value, list):
            seen.add(id(value))
            value[:] = [move(v) for v in value]
            return value
        if isinstance(value, tuple):
            moved = tuple(move(v) for v in value)
            return type(value)(*moved) if hasattr(value, "_fields") else moved
        if isinstance(value, dict):
            seen.add(id(value))
            for key in list(value):
                value[key] = move(value[key])
            return value
        if _is_plain_object(value):
            seen.add(id(value))
            for name, attr in list(vars(value).items()):
                new = move(attr)
                if new is not attr:
                    object.__setattr__(value, name, new)
        return value

    move(obj)
    return obj


def problem_on(problem: T, device: torch.device | str) -> T:
    """Return ``problem`` with its tensors on ``device``: itself on the CPU, else a moved copy.

    Simulation keeps using the CPU problem (its draws come from a seeded CPU generator, so a
    seed gives the same pairs on every device); the copy serves the forward operator, the
    noise model and the prior density where the CVAE's tensors are (the physics term of
    training, the posterior predictive, importance sampling, NUTS).

    Parameters
    ----------
    problem : Problem or a duck-typed problem
        Built on the CPU. Its ``to(device)`` is used when it has one, else
        :func:`move_tensors`.
    device : torch.device or str

    Returns
    -------
    Problem
        ``problem`` itself when ``device`` is the CPU; a deep copy on ``device`` otherwise.

    Raises
    ------
    ConfigError
        If the problem cannot be copied (a user problem holding, e.g., an open file).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return problem
    try:
        moved = copy.deepcopy(problem)
    except Exception as err:  # a user problem may hold anything
        name = getattr(problem, "name", type(problem).__name__)
        raise ConfigError(
            f"problem {name!r} cannot be copied onto {device} ({type(err).__name__}: {err}); "
            "give it a __deepcopy__ or run on the CPU (device='cpu', --device cpu)"
        ) from err
    to = getattr(moved, "to", None)
    return to(device) if callable(to) else move_tensors(moved, device)


def _is_plain_object(value: Any) -> bool:
    """Tell whether ``value`` is an instance with a ``__dict__`` to walk (no class or function)."""
    skip = (type, torch.Generator, types.FunctionType, types.MethodType, types.ModuleType)
    return (
        not isinstance(value, skip)
        and hasattr(value, "__dict__")
        and type(value).__module__ != "builtins"
    )
