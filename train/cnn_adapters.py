"""Parameter-efficient fine-tuning of a frozen EfficientAT MobileNet (mn04): conv-LoRA and residual adapters.

The CNN twin of train/adapters.py (which adapts the AST). Both kinds act on the inverted residual
blocks ``features[from_block:]`` of a ``MobileNetV3Audio`` and start as the identity (the up/B
projection is zero), so the adapted network is the pretrained one until it trains:

* ``lora``: a low-rank branch beside the 1x1 expansion and/or projection conv,
  ``conv(x) + (alpha / rank) * B(A(x))`` with A: C_in -> rank, B: rank -> C_out (1x1 convs, no bias).
  It merges exactly into the conv weight: ``W' = W + (alpha / rank) * B A``.
* ``bottleneck``: a linear residual bottleneck (Rebuffi et al.'s residual adapter in series) on the
  output of the block's projection conv + BatchNorm, before the skip connection:
  ``y + up(down(y))``, down: C -> C / reduction. Linear, so with the BatchNorm in eval mode
  (inference statistics) it folds into the projection: conv ``W' = M diag(s) W`` with
  ``M = I + U D`` and ``s`` the BatchNorm scale, and the BatchNorm becomes a bias-only one.

Only the adapters, the classification head (``train_head``) and optionally the BatchNorm affine
parameters of the adapted blocks (``train_bn``) train. ``merge_cnn_adapters`` returns a plain
``MobileNetV3Audio`` (same state_dict keys as a fresh one) for export; ``save_cnn_delta`` /
``apply_cnn_delta`` write and re-apply the small delta file, checked against a fingerprint of the
frozen backbone. While training keep the frozen BatchNorm statistics: ``train_mode(model)``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.outputs import output_path
from stethoedge.train.adapters import adapter_state
from stethoedge.train.checkpoint import read_torch_file
from stethoedge.train.efficientat import InvertedResidual, MobileNetV3Audio

CNN_DELTA_FORMAT = "stethoedge.cnn-adapter-delta"
LORA_TARGETS = ("expand", "project")
#: Name fragments of adapter tensors (never part of the backbone fingerprint).
_ADAPTER_PARTS = (".lora_a.", ".lora_b.", ".down.", ".up.")


def is_adapter_tensor(name: str) -> bool:
    """True for a state_dict / parameter name of a conv-LoRA or bottleneck adapter tensor."""
    return any(part in f".{name}" for part in _ADAPTER_PARTS)


@dataclass(frozen=True)
class CNNAdapterConfig:
    """Which adapters to add to a MobileNetV3Audio, where, and how large."""

    kind: str = "lora"  # none | lora | bottleneck
    from_block: int = 11  # first adapted index of ``features`` (1..15 are inverted residual blocks)
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / rank)
    lora_targets: tuple[str, ...] = LORA_TARGETS  # which 1x1 convs of a block get LoRA: expand, project
    reduction: int = 4  # bottleneck width = channels // reduction (at least 4)
    train_head: bool = True  # the classifier trains (a new task's head must)
    train_bn: bool = False  # BatchNorm affine parameters of the adapted blocks train too

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CNNAdapterConfig":
        """Inverse of ``to_dict`` (lists back to tuples)."""
        data = dict(data)
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)


class ConvLoRA(nn.Module):
    """A 1x1 conv with a zero-initialised low-rank branch: base(x) + scale * B(A(x))."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        if base.kernel_size != (1, 1) or base.groups != 1 or base.stride != (1, 1):
            raise ValueError(f"conv-LoRA needs a 1x1, stride-1, ungrouped conv, got {base}")
        self.base = base
        self.lora_a = nn.Conv2d(base.in_channels, rank, 1, bias=False)
        self.lora_b = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        self.scale = alpha / rank
        nn.init.kaiming_uniform_(self.lora_a.weight, a=5 ** 0.5)
        nn.init.zeros_(self.lora_b.weight)  # starts as the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """The equivalent single conv: W' = W + scale * B A."""
        w = self.base.weight.double()[:, :, 0, 0]
        delta = self.lora_b.weight.double()[:, :, 0, 0] @ self.lora_a.weight.double()[:, :, 0, 0]
        out = nn.Conv2d(self.base.in_channels, self.base.out_channels, 1, bias=self.base.bias is not None)
        out.weight.copy_((w + self.scale * delta)[:, :, None, None].to(self.base.weight.dtype))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


class ConvBottleneck(nn.Module):
    """A conv + BatchNorm (``base``, the block's projection) followed by a linear residual bottleneck."""

    def __init__(self, base: nn.Sequential, bottleneck: int) -> None:
        super().__init__()
        channels = base[0].out_channels
        self.base = base
        self.down = nn.Conv2d(channels, bottleneck, 1)
        self.up = nn.Conv2d(bottleneck, channels, 1)
        nn.init.zeros_(self.up.weight)  # starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.up(self.down(y))

    @torch.no_grad()
    def merged(self) -> nn.Sequential:
        """conv + BatchNorm with the adapter and the BatchNorm's inference statistics folded in (eval-exact)."""
        conv, bn = self.base[0], self.base[1]
        if not isinstance(bn, nn.BatchNorm2d) or len(self.base) != 2:
            raise ValueError("a bottleneck adapter merges into conv + BatchNorm only")
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        up, down = self.up.weight.double()[:, :, 0, 0], self.down.weight.double()[:, :, 0, 0]
        m = torch.eye(up.shape[0], dtype=torch.float64) + up @ down
        w = conv.weight.double()[:, :, 0, 0]
        new_conv = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False)
        new_conv.weight.copy_((m @ (scale[:, None] * w))[:, :, None, None].to(conv.weight.dtype))
        new_bn = nn.BatchNorm2d(conv.out_channels, eps=bn.eps, momentum=bn.momentum)
        new_bn.running_mean.zero_()
        new_bn.running_var.fill_(1.0)
        new_bn.weight.fill_(float(torch.sqrt(torch.tensor(1.0 + bn.eps, dtype=torch.float64))))
        bias = m @ shift + up @ self.down.bias.double() + self.up.bias.double()
        new_bn.bias.copy_(bias.to(bn.bias.dtype))
        return nn.Sequential(new_conv, new_bn).eval()


def _conv_bn(block: InvertedResidual, role: str) -> nn.Sequential | None:
    """The conv + BatchNorm [+ act] Sequential of a block's 1x1 expansion or projection (None: no expansion)."""
    layers = list(block.block)
    if role == "project":
        return layers[-1]
    if role == "expand":
        first = layers[0]
        return first if isinstance(first, nn.Sequential) and first[0].kernel_size == (1, 1) else None
    raise ValueError(f"unknown conv-LoRA target {role!r} (expand or project)")


def adapted_blocks(features: nn.Sequential, start: int) -> list[InvertedResidual]:
    """The inverted residual blocks of ``features[start:]``."""
    return [m for m in list(features)[start:] if isinstance(m, InvertedResidual)]


def adapt_blocks(blocks: list[InvertedResidual], cfg: CNNAdapterConfig) -> None:
    """Insert ``cfg``'s adapters into each block in place (no freezing)."""
    if cfg.kind == "lora":
        bad = sorted(set(cfg.lora_targets) - set(LORA_TARGETS))
        if bad or not cfg.lora_targets:
            raise ValueError(f"conv-LoRA targets must be among {LORA_TARGETS}, got {cfg.lora_targets}")
        for block in blocks:
            for role in cfg.lora_targets:
                seq = _conv_bn(block, role)
                if seq is not None:
                    seq[0] = ConvLoRA(seq[0], cfg.rank, cfg.alpha)
    elif cfg.kind == "bottleneck":
        for block in blocks:
            proj = block.block[-1]
            block.block[-1] = ConvBottleneck(proj, max(4, proj[0].out_channels // cfg.reduction))
    else:
        raise ValueError(f"unknown adapter kind {cfg.kind!r} (none, lora or bottleneck)")


def freeze_for_adapters(model: nn.Module, blocks: list[InvertedResidual], head: nn.Module,
                        cfg: CNNAdapterConfig) -> None:
    """requires_grad only on adapter tensors, the head (``train_head``) and the blocks' BatchNorm affine (``train_bn``)."""
    for p in model.parameters():
        p.requires_grad = False
    for name, p in model.named_parameters():
        if is_adapter_tensor(name):
            p.requires_grad = True
    if cfg.train_head:
        for p in head.parameters():
            p.requires_grad = True
    if cfg.train_bn:
        for block in blocks:
            for m in block.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad = m.bias.requires_grad = True


def add_cnn_adapters(model: MobileNetV3Audio, cfg: CNNAdapterConfig) -> MobileNetV3Audio:
    """Freeze ``model`` and add the configured adapters to ``features[cfg.from_block:]`` in place; returns it."""
    if cfg.kind == "none":
        return model
    if has_cnn_adapters(model):
        raise ValueError("the model already has adapters (merge them first)")
    blocks = adapted_blocks(model.features, cfg.from_block)
    if not blocks:
        raise ValueError(f"from_block {cfg.from_block} leaves no inverted residual block to adapt "
                         f"(1..{len(model.features) - 2})")
    adapt_blocks(blocks, cfg)
    freeze_for_adapters(model, blocks, model.classifier, cfg)
    return model


def has_cnn_adapters(model: nn.Module) -> bool:
    """True while any conv-LoRA or bottleneck adapter module is present."""
    return any(isinstance(m, (ConvLoRA, ConvBottleneck)) for m in model.modules())


def train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)`` with every BatchNorm kept in eval mode: the frozen statistics stay frozen."""
    model.train(mode)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


@torch.no_grad()
def merge_cnn_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into the layer it modifies, in place; all parameters trainable again.

    conv-LoRA merges exactly; a bottleneck folds the BatchNorm's running statistics in, so the merged
    network equals the adapted one in eval mode (the exported function).
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, (ConvLoRA, ConvBottleneck)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
    for p in model.parameters():
        p.requires_grad = True
    return model


def _canonical(key: str) -> str:
    """State-dict key of the plain network (adapter wrappers hold the original layer as ``.base``)."""
    return key.replace(".base.", ".")


def cnn_backbone_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the backbone tensors (``features.*``, BatchNorm statistics included), adapters excluded.

    The same before and after adapters are added; the classifier is left out, a new task re-initialises it.
    """
    digest = hashlib.sha256()
    state = {_canonical(k): v for k, v in model.state_dict().items()
             if k.startswith("features.") and not is_adapter_tensor(k)}
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_cnn_delta(path: Path, model: MobileNetV3Audio, cfg: CNNAdapterConfig, fingerprint: str) -> None:
    """Write the trained tensors (adapters, head, BatchNorm affine), the config and the backbone fingerprint."""
    payload = {"format": CNN_DELTA_FORMAT, "architecture": "efficientat-mn", "adapter": cfg.to_dict(),
               "model_config": model.cfg.to_dict(), "backbone_sha256": fingerprint,
               "state_dict": adapter_state(model)}
    with output_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def read_cnn_delta(path: str | os.PathLike, model: MobileNetV3Audio | None = None,
                   check_backbone: bool = True) -> dict[str, Any]:
    """The payload of a delta file; with ``model``, checked against it (backbone fingerprint, head shapes)."""
    payload = read_torch_file(path, missing="no adapter delta file", what="adapter delta")
    if not isinstance(payload, dict) or payload.get("format") != CNN_DELTA_FORMAT:
        raise DataError(f"{path}: not a stethoedge MobileNet adapter delta (an AST delta goes to apply_delta)")
    if model is None:
        return payload
    if check_backbone and cnn_backbone_fingerprint(model) != payload["backbone_sha256"]:
        raise DataError(f"{path}: the delta was trained on another backbone (fingerprint differs); load the same "
                        "pretrained weights and width multiplier it was trained on")
    own = model.state_dict()
    for key, value in payload["state_dict"].items():
        if key.startswith("classifier.") and key in own and value.shape != own[key].shape:
            raise DataError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[key].shape)} "
                            "(another n_classes or head?)")
    return payload


def apply_cnn_delta(model: MobileNetV3Audio, path: str | os.PathLike, check_backbone: bool = True) -> MobileNetV3Audio:
    """Re-apply a saved delta to the same pretrained backbone: add the adapters, load the trained tensors."""
    payload = read_cnn_delta(path, model, check_backbone)
    add_cnn_adapters(model, CNNAdapterConfig.from_dict(payload["adapter"]))
    homeless = sorted(set(payload["state_dict"]) - set(model.state_dict()))
    if homeless:
        raise DataError(f"{path}: delta tensors with no place in the model: {', '.join(homeless[:5])}")
    model.load_state_dict(payload["state_dict"], strict=False)
    return model
