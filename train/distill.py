"""Knowledge distillation (Hinton et al., 2015): a large teacher's softened logits teach a small student.

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
"""
from __future__ import annotations

import torch
from torch import nn


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.5, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hard-label cross-entropy mixed with the temperature-scaled KL to the teacher."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    hard = nn.functional.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = nn.functional.kl_div(nn.functional.log_softmax(student_logits / temperature, dim=-1),
                                nn.functional.log_softmax(teacher_logits.detach() / temperature, dim=-1),
                                reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft
