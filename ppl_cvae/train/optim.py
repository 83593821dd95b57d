"""A Pyro optimiser that steps all parameters with one torch optimiser.

``pyro.optim.ClippedAdam`` keeps one torch optimiser per parameter tensor and loops over them in
Python every step; for networks with a few dozen parameter tensors that loop is a visible part
of an SVI step. :class:`FusedClippedAdam` is a ``pyro.optim.PyroOptim`` (so ``pyro.infer.SVI``
accepts it) that gives every parameter it has seen to a single ``ClippedAdam`` whose step
applies Pyro's elementwise rule to all tensors at once with torch's ``_foreach`` kernels (the
multi-tensor path of ``torch.optim.Adam(foreach=True)``), about a dozen kernel launches per
step instead of eight per tensor. The numbers are those of the per-parameter optimiser (the
same operations in the same order, elementwise). Gradients are released after each step
(``set_to_none``), as ``torch.optim.Optimizer.zero_grad`` does by default.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, cast

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam as _TorchClippedAdam

__all__ = ["FusedClippedAdam"]


class _ForeachClippedAdam(_TorchClippedAdam):
    """Pyro's ``ClippedAdam`` whose step updates all tensors of a group with ``_foreach`` ops.

    Same state layout (``step`` an int, ``exp_avg``, ``exp_avg_sq``), so state dicts move
    between the two. ``centered_variance=True`` and sparse gradients take Pyro's loop.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one step of Pyro's rule (clamp, decay the moments, bias-corrected update)."""
        if any(group["centered_variance"] for group in self.param_groups):
            return super().step(closure)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            group["lr"] *= group["lrd"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise TypeError("ClippedAdam does not take sparse gradients")
            grads = [p.grad for p in params]
            torch._foreach_clamp_min_(grads, -group["clip_norm"])
            torch._foreach_clamp_max_(grads, group["clip_norm"])
            beta1, beta2 = group["betas"]
            by_step: dict[int, list[int]] = defaultdict(list)  # tensors added at one time
            for i, p in enumerate(params):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p.grad)
                    state["exp_avg_sq"] = torch.zeros_like(p.grad)
                state["step"] += 1
                by_step[state["step"]].append(i)
            for count, members in by_step.items():
                ps = [params[i] for i in members]
                gs = [grads[i] for i in members]
                if group["weight_decay"] != 0:
                    gs = list(torch._foreach_add(gs, ps, alpha=group["weight_decay"]))
                exp_avg = [self.state[p]["exp_avg"] for p in ps]
                exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in ps]
                torch._foreach_mul_(exp_avg, beta1)
                torch._foreach_add_(exp_avg, gs, alpha=1 - beta1)
                torch._foreach_mul_(exp_avg_sq, beta2)
                torch._foreach_addcmul_(exp_avg_sq, gs, gs, value=1 - beta2)
                denom = torch._foreach_sqrt(exp_avg_sq)
                torch._foreach_add_(denom, group["eps"])
                bias_correction1 = 1 - beta1**count
                bias_correction2 = 1 - beta2**count
                step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
                torch._foreach_addcdiv_(ps, exp_avg, denom, value=-step_size)
        return loss


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
                self._optimizer = _ForeachClippedAdam(new, **self._optim_args)
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
