"""Sharpness-Aware Minimization (Foret et al., 2021) and adaptive SAM (Kwon et al., 2021).

Wraps any base optimizer. Two explicit steps at the call site::

    loss_fn(model(x), y).backward()
    sam.first_step()              # climb to w + e(w), the worst point in a rho-ball
    loss_fn(model(x), y).backward()
    sam.second_step()             # restore w, step the base optimizer with the sharp gradient

Gradient clipping goes right before ``second_step`` (it clips the gradient the base optimizer
uses). With AMP, unscale the gradients (``scaler.unscale_``) before each step.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


class SAM(torch.optim.Optimizer):
    """SAM/ASAM around ``base_optimizer_cls(params, **kwargs)``; ``rho`` is the ball radius."""

    def __init__(self, params: Iterable[Any], base_optimizer_cls: type[torch.optim.Optimizer],
                 rho: float = 0.05, adaptive: bool = False, **kwargs: Any) -> None:
        if rho < 0:
            raise ValueError(f"rho must be non-negative, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [
            ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2)
            for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if not norms:
            return torch.tensor(0.0)
        return torch.stack([n.to(norms[0].device) for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Move each weight to w + e(w) = w + rho * g / ||g|| (ASAM: scaled by |w|^2)."""
        scale_base = self._grad_norm() + 1e-12
        for group in self.param_groups:
            scale = group["rho"] / scale_base
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                self.state[p]["old_p"] = p.detach().clone()
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        """Return to w and update it with the gradient taken at w + e(w)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or "old_p" not in self.state[p]:
                    continue
                p.data = self.state[p].pop("old_p")
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Return every perturbed weight to w without stepping (AMP path: the scaler steps the base optimizer)."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data = self.state[p].pop("old_p")

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # type: ignore[override]
        """Finish a SAM step after a first forward/backward; ``closure`` re-runs forward + backward."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that runs forward and backward; or call first_step/second_step")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        closure()
        self.second_step()

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state (moments, step counts) and SAM's groups (rho, adaptive)."""
        return {"base": self.base_optimizer.state_dict(),
                "sam_groups": [{"rho": g["rho"], "adaptive": g["adaptive"]} for g in self.param_groups]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base optimizer's state, keeping the param groups shared with it."""
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        for group, extra in zip(self.param_groups, state_dict.get("sam_groups", [])):
            group.update(extra)


def optimizer_step(optimizer: torch.optim.Optimizer, objective: Callable[[], torch.Tensor],
                   params: Iterable[torch.nn.Parameter] | None = None, grad_clip: float | None = None,
                   scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimisation step on ``objective()`` (forward, returns the loss); SAM/ASAM run it twice.

    The one place the SAM two-pass step is written (the AST Learner, the edge tail's learner and
    cross-distillation all call it). Clipping (``grad_clip`` over ``params``) acts on the gradient
    the base optimizer uses, at w + e(w) for SAM; with an AMP ``scaler`` the gradients are unscaled
    before the SAM perturbation and before clipping. Returns the loss at w, detached.
    """
    params = list(params) if params is not None else None

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler else loss).backward()

    def clip() -> None:
        if grad_clip is not None and params is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)

    loss = objective()
    backward(loss)
    if scaler:
        scaler.unscale_(optimizer)
    if isinstance(optimizer, SAM):
        optimizer.first_step(zero_grad=True)
        backward(objective())
        if scaler:
            scaler.unscale_(optimizer.base_optimizer)  # a second per-optimizer record for the second pass
        clip()
        if scaler:
            optimizer.restore()
            scaler.step(optimizer.base_optimizer)
            scaler.update()
        else:
            optimizer.second_step(zero_grad=True)
    else:
        clip()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
