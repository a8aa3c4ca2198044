"""Exponential moving average of the weights (torch.optim.swa_utils.AveragedModel)."""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """EMA copy of ``model`` (parameters and buffers); call ``.update_parameters(model)`` after each step."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
