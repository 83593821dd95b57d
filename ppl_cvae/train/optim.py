"""A Pyro optimiser that steps all parameters with one torch optimiser.

``pyro.optim.ClippedAdam`` keeps one torch optimiser per parameter tensor and loops over them in
Python every step; for networks with a few dozen parameter tensors that loop is a visible part
of an SVI step. :class:`FusedClippedAdam` is a ``pyro.optim.PyroOptim`` (so ``pyro.infer.SVI``
accepts it) that gives every parameter it has seen to a single ``ClippedAdam``. The update is
the same elementwise rule, so results match the per-parameter optimiser. Gradients are released
after each step (``set_to_none``), as ``torch.optim.Optimizer.zero_grad`` does by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam as _TorchClippedAdam

__all__ = ["FusedClippedAdam"]


class FusedClippedAdam(PyroOptim):
    """ClippedAdam over all parameters with one torch optimiser (drop-in for SVI).

    Parameters
    ----------
    optim_args : dict
        Keyword arguments of :class:`pyro.optim.clipped_adam.ClippedAdam`: ``lr``, ``betas``,
        ``eps``, ``weight_decay``, ``clip_norm`` (elementwise gradient clamp), ``lrd``
        (learning-rate factor per step).

    Notes
    -----
    Parameters are added to the torch optimiser in order of their Pyro param-store names the
    first time they appear, so the optimiser state is reproducible. ``get_state`` /
    ``set_state`` store one state dict under the key ``"fused"`` (for resumable runs).

    References
    ----------
    Kingma and Ba (2015), Adam: A Method for Stochastic Optimization, arXiv:1412.6980.
    """

    def __init__(self, optim_args: dict[str, Any]) -> None:
        super().__init__(_TorchClippedAdam, dict(optim_args))
        self._optimizer: torch.optim.Optimizer | None = None
        self._seen: set[torch.Tensor] = set()
        self._pending_state: dict[str, Any] | None = None

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        """Take one optimisation step on ``params`` (tensors from the param store)."""
        params = list(params)
        new = [p for p in params if p not in self._seen]
        if new:
            store = pyro.get_param_store()
            # param_name is typed str | None (None for tensors outside the store); SVI only
            # passes tensors from the store, so every name is a str
            new.sort(key=cast(Callable[[torch.Tensor], str], store.param_name))
            if self._optimizer is None:
                self._optimizer = _TorchClippedAdam(new, **self._optim_args)
                if self._pending_state is not None:
                    self._optimizer.load_state_dict(self._pending_state)
                    self._pending_state = None
            else:
                self._optimizer.add_param_group({"params": new})
            self._seen.update(new)
        if self._optimizer is not None:
            self._optimizer.step()
            # release the gradients (as torch's zero_grad(set_to_none=True)): SVI's
            # zero_grads then has nothing to refill with zeros, and the next backward pass
            # assigns gradients instead of adding them to zero tensors
            self._optimizer.zero_grad(set_to_none=True)

    @property
    def _optim_args(self) -> dict[str, Any]:
        # PyroOptim types pt_optim_args as a dict or a callable returning one; __init__ always
        # passes a dict
        return cast(dict[str, Any], self.pt_optim_args)

    def current_lr(self) -> float:
        """Return the current learning rate (after ``lrd`` decay); the initial one before a step.

        A state restored by :meth:`set_state` before the first step gives its learning rate.
        """
        if self._optimizer is None:
            if self._pending_state is not None:
                return float(self._pending_state["param_groups"][0]["lr"])
            return float(self._optim_args["lr"])
        return float(self._optimizer.param_groups[0]["lr"])

    def get_state(self) -> dict[str, Any]:
        """Return ``{"fused": state_dict}`` (empty before the first step unless restored)."""
        if self._optimizer is None:
            return {} if self._pending_state is None else {"fused": self._pending_state}
        return {"fused": self._optimizer.state_dict()}

    def set_state(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state`; applied at the first step if not yet built."""
        state = state_dict.get("fused")
        if state is None:
            return
        if self._optimizer is None:
            self._pending_state = state
        else:
            self._optimizer.load_state_dict(state)
