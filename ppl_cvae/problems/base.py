"""The problem contract: prior sampler, forward operator, noise model, named dimensions.

A *problem* is everything the CVAE needs to know about a survey besides training pairs: how to
draw subsurface models ``x`` from the prior, the forward operator ``F`` that maps them to noise-free
data, the observation noise, and the names, coordinates and units of every axis (they become
ArviZ dims and coords). Built-in problems register themselves by name in :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from ppl_cvae.errors import UnknownProblemError

__all__ = ["Problem", "REGISTRY", "register_problem", "make_problem"]


@runtime_checkable
class Problem(Protocol):
    """Protocol of an inverse problem the CVAE can be trained on.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"two_birds"``.
    x_shape, y_shape : tuple of int
        Event shapes of one subsurface model ``x`` and one observation ``y``.
    x_dims, y_dims : tuple of str
        One name per axis of ``x_shape`` / ``y_shape`` (ArviZ dims).
    coords : Mapping[str, Sequence]
        Coordinate values for the dims that have them (ArviZ coords).
    noise_std : float
        Standard deviation of the additive Gaussian observation noise, in the units of ``y``;
        ``0.0`` for noise-free problems. The physics-consistency term and the posterior
        predictive use it (a noise-free problem names a nominal misfit scale instead, see
        :attr:`misfit_std`).
    misfit_std : float
        Scale, in units of ``y``, by which the data misfit ``F(x) - y`` is divided in the
        physics-consistency term; equals ``noise_std`` when that is positive.

    Methods
    -------
    sample_prior(num, generator) -> Tensor, shape (num, *x_shape)
    forward(x) -> Tensor, shape (*batch, *y_shape): the differentiable forward operator F.
    simulate(num, generator) -> (x, y): prior draws and noisy data.
    spec() -> dict: JSON-serialisable description from which :func:`make_problem` rebuilds it.
    """

    # Read-only members (properties), so that an implementation may narrow their types (e.g.
    # a class attribute ``x_shape = (1, 50, 2)``); plain attributes and properties both
    # satisfy them.
    @property
    def name(self) -> str:
        """Registry name, e.g. ``"two_birds"``."""
        ...

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Event shape of one subsurface model ``x``."""
        ...

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Event shape of one observation ``y``."""
        ...

    @property
    def x_dims(self) -> tuple[str, ...]:
        """One name per axis of ``x_shape`` (ArviZ dims)."""
        ...

    @property
    def y_dims(self) -> tuple[str, ...]:
        """One name per axis of ``y_shape`` (ArviZ dims)."""
        ...

    @property
    def coords(self) -> Mapping[str, Sequence[Any]]:
        """Coordinate values for the dims that have them (ArviZ coords)."""
        ...

    @property
    def noise_std(self) -> float:
        """Standard deviation of the additive Gaussian observation noise (units of ``y``)."""
        ...

    @property
    def misfit_std(self) -> float:
        """Scale of the data misfit ``F(x) - y`` in the physics-consistency term (units of y)."""
        ...

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``num`` subsurface models from the prior; shape ``(num, *x_shape)``."""
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the forward operator to ``x`` of shape ``(*batch, *x_shape)``."""
        ...

    def simulate(
        self, num: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` of shapes ``(num, *x_shape)`` and ``(num, *y_shape)``."""
        ...

    def spec(self) -> dict[str, Any]:
        """Return the JSON-serialisable keyword arguments that rebuild this problem."""
        ...


REGISTRY: dict[str, Callable[..., Problem]] = {}


def register_problem(name: str) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    """Register a problem factory under ``name`` (class decorator).

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """

    def decorator(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        if name in REGISTRY:
            raise ValueError(f"problem name {name!r} is already registered")
        REGISTRY[name] = factory
        return factory

    return decorator


def make_problem(name: str, **kwargs: Any) -> Problem:
    """Build the registered problem ``name`` with keyword arguments ``kwargs``.

    Raises
    ------
    UnknownProblemError
        If ``name`` is not registered; the message lists the registered names.
    """
    # importing the built-in problems registers them
    import ppl_cvae.problems  # noqa: F401

    if name not in REGISTRY:
        raise UnknownProblemError(f"unknown problem {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](**kwargs)
