"""Parameter-efficient fine-tuning of a frozen AST: bottleneck adapters and LoRA (peft).

* Bottleneck adapters (Houlsby-style, in series) after the attention output projection and/or the
  FFN output: ``y + up(down(y))`` with ``down: dim -> dim / reduction``. They are linear (no
  activation) so they fold exactly into the layer they follow: ``W' = (I + U D) W``; a non-linear
  adapter could never be merged and the exported model would have to carry it.
* LoRA on the fused attention projection ``qkv`` (and optionally ``proj``) through peft.

In both cases only the adapter weights and the classification head train. ``adapter_state``
returns just those tensors: the small delta file that ``apply_delta`` re-applies to the same
backbone. ``merge_adapters`` returns a plain AST with no adapter modules for export.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.outputs import output_path
from stethoedge.train.checkpoint import read_torch_file
from stethoedge.train.model import AST

DELTA_FORMAT = "stethoedge.adapter-delta"


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapters to add and how large."""

    kind: str = "none"  # none | bottleneck | lora
    reduction: int = 16  # bottleneck width = dim // reduction
    where: str = "both"  # bottleneck placement: attn | ffn | both
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scaling numerator
    lora_targets: tuple[str, ...] = ("qkv",)  # attention projections that get LoRA
    train_head: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


class BottleneckAdapter(nn.Module):
    """A linear layer followed in series by a linear bottleneck: y = base(x); y + up(down(y))."""

    def __init__(self, base: nn.Linear, bottleneck: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, bottleneck)
        self.up = nn.Linear(bottleneck, base.out_features)
        nn.init.zeros_(self.up.weight)  # starts as the identity: the pretrained function is unchanged
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y + self.up(self.down(y))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The equivalent single Linear: W' = (I + U D) W, b' = (I + U D) b + U b_d + b_u."""
        w, b = self.base.weight.double(), self.base.bias.double()
        m = torch.eye(w.shape[0], dtype=torch.float64) + self.up.weight.double() @ self.down.weight.double()
        out = nn.Linear(self.base.in_features, self.base.out_features)
        out.weight.copy_((m @ w).to(self.base.weight.dtype))
        bias = m @ b + self.up.weight.double() @ self.down.bias.double() + self.up.bias.double()
        out.bias.copy_(bias.to(self.base.bias.dtype))
        return out


def backbone_fingerprint(model: AST) -> str:
    """SHA-256 over the frozen backbone tensors (what a delta file must be re-applied to)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if key.startswith("head.") or "lora_" in key or ".down." in key or ".up." in key:
            continue
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _freeze_backbone(model: nn.Module, train_head: bool) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = False
    if train_head:
        for p in model.head.parameters():
            p.requires_grad = True


def add_adapters(model: AST, cfg: AdapterConfig) -> AST:
    """Freeze ``model`` and add the configured adapters in place; returns the same module."""
    if cfg.kind == "none":
        return model
    if cfg.kind == "bottleneck":
        if cfg.where not in ("attn", "ffn", "both"):
            raise ValueError(f"bottleneck placement must be attn, ffn or both, not {cfg.where!r}")
        _freeze_backbone(model, cfg.train_head)
        width = max(1, model.cfg.dim // cfg.reduction)
        for block in model.blocks:
            if cfg.where in ("attn", "both"):
                block.attn.proj = BottleneckAdapter(block.attn.proj, width)
            if cfg.where in ("ffn", "both"):
                block.mlp.fc2 = BottleneckAdapter(block.mlp.fc2, width)
        return model
    if cfg.kind == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        _freeze_backbone(model, cfg.train_head)
        config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(cfg.lora_targets),
                            bias="none")
        inject_adapter_in_model(config, model)  # peft freezes everything but LoRA: re-open the head
        _freeze_backbone(model, cfg.train_head)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad = True
        return model
    raise ValueError(f"unknown adapter kind {cfg.kind!r} (none, bottleneck or lora)")


def _lora_layer_types() -> tuple[type, ...]:
    """peft's LoraLayer if peft is already imported (no LoRA module can exist otherwise).

    Importing peft pulls transformers and torchao (seconds, and warnings about missing GPU
    kernels), so runs without ``--adapter lora`` never import it.
    """
    if "peft" not in sys.modules:
        return ()
    from peft.tuners.lora import LoraLayer

    return (LoraLayer,)


def has_adapters(model: nn.Module) -> bool:
    """True while any bottleneck or LoRA module is present."""
    return any(isinstance(m, (BottleneckAdapter, *_lora_layer_types())) for m in model.modules())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


@torch.no_grad()
def merge_adapters(model: AST) -> AST:
    """Fold every adapter into the weights it modifies, in place: a plain AST, all parameters trainable."""
    lora_types = _lora_layer_types()
    for name, module in list(model.named_modules()):
        if isinstance(module, BottleneckAdapter):
            _replace(model, name, module.merged())
        elif lora_types and isinstance(module, lora_types):
            module.merge(safe_merge=True)
            _replace(model, name, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad = True
    return model


def adapter_state(model: AST) -> dict[str, torch.Tensor]:
    """Only the trained tensors (adapters + head): the delta."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def save_delta(path: Path, model: AST, cfg: AdapterConfig, fingerprint: str) -> None:
    """Write the adapter delta (weights, adapter config, backbone fingerprint) atomically."""
    payload = {"format": DELTA_FORMAT, "adapter": cfg.to_dict(), "backbone_sha256": fingerprint,
               "state_dict": adapter_state(model)}
    with output_path(path) as tmp:
        torch.save(payload, tmp)


def apply_delta(model: AST, path: str | os.PathLike, check_backbone: bool = True) -> AST:
    """Re-apply a saved delta to the same backbone: add the adapters, load their weights."""
    payload = read_torch_file(path, missing="no adapter delta file", what="adapter delta")
    if not isinstance(payload, dict) or payload.get("format") != DELTA_FORMAT:
        raise DataError(f"{path}: not a stethoedge adapter delta")
    if check_backbone and backbone_fingerprint(model) != payload["backbone_sha256"]:
        raise DataError(f"{path}: the delta was trained on another backbone (fingerprint differs)")
    cfg_dict = dict(payload["adapter"])
    cfg_dict["lora_targets"] = tuple(cfg_dict.get("lora_targets", ("qkv",)))
    add_adapters(model, AdapterConfig(**cfg_dict))
    result = model.load_state_dict(payload["state_dict"], strict=False)
    if result.unexpected_keys:
        raise DataError(f"{path}: delta tensors with no place in the model: {', '.join(result.unexpected_keys[:5])}")
    return model
