"""Adversarial fine-tuning (AFT): a domain head behind a gradient-reversal layer.

The head learns to tell real from synthetic samples on the pooled embedding; the reversed
gradient pushes the backbone towards features that do not separate them. Training loss:
``class_loss + lambda * domain_loss`` (the published setting is lambda = 0.2).
"""
from __future__ import annotations

import torch
from torch import nn

REAL, SYNTHETIC = 0, 1


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-scale`` backward."""
    return _GradReverse.apply(x, scale)


class DomainHead(nn.Module):
    """Gradient reversal -> MLP -> domain logits ((real, synthetic) by default, or one per data source)."""

    def __init__(self, dim: int, hidden: int | None = None, reverse_scale: float = 1.0, n_domains: int = 2) -> None:
        super().__init__()
        hidden = hidden or dim
        self.reverse_scale = reverse_scale
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_domains))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(grad_reverse(embedding, self.reverse_scale))


def aft_loss(class_loss: torch.Tensor, domain_logits: torch.Tensor, domain: torch.Tensor, lam: float) -> torch.Tensor:
    """class loss + lambda * cross-entropy of the domain head."""
    return class_loss + lam * nn.functional.cross_entropy(domain_logits, domain)
