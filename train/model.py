"""Audio Spectrogram Transformer (Gong et al., 2021) for respiratory-cycle classification.

Reads like the paper's figure: the (frames, mels) log-mel is cut into 16x16 patches with a
configurable frequency/time stride (10 = overlapping as in AST, 16 = non-overlapping for the
edge), a linear patch embedding, cls + distillation tokens, learned positional embeddings, a
pre-norm transformer encoder, and a head on the mean of the two tokens. Attention is written
out with matmul + softmax so the graph exports unchanged to ONNX and LiteRT.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ASTConfig:
    """Architecture of one AST; stored in checkpoints so a model can be rebuilt exactly."""

    n_frames: int = 798
    n_mels: int = 128
    n_classes: int = 4
    patch_size: int = 16
    fstride: int = 16
    tstride: int = 16
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    drop_path: float = 0.0

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (frequency patches, time patches)."""
        f = (self.n_mels - self.patch_size) // self.fstride + 1
        t = (self.n_frames - self.patch_size) // self.tstride + 1
        return f, t

    @property
    def n_patches(self) -> int:
        """Number of patch tokens (without cls/dist)."""
        f, t = self.grid
        return f * t

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


#: Size presets. ``micro`` is for tests, ``tiny`` trains on a 2-core CPU in minutes (the demo),
#: ``small`` is DeiT-tiny shaped (~5.5 M), ``base`` is the AST paper's model (~87 M, overlapping).
PRESETS: dict[str, ASTConfig] = {
    "micro": ASTConfig(dim=32, depth=1, heads=2),
    "tiny": ASTConfig(dim=96, depth=4, heads=4),
    "small": ASTConfig(dim=192, depth=12, heads=3),
    "base": ASTConfig(dim=768, depth=12, heads=12, fstride=10, tstride=10),
}


def preset_config(name: str, **overrides: Any) -> ASTConfig:
    """Config of a named preset with field overrides (e.g. n_frames from the feature spec)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class Attention(nn.Module):
    """Multi-head self-attention, explicit matmul/softmax (export-friendly)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (self.drop(attn) @ v).transpose(1, 2).reshape(b, n, d)
        return self.drop(self.proj(out))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(hidden, cfg.dim), nn.Dropout(cfg.dropout),
        )
        self.drop_path = DropPath(cfg.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AST(nn.Module):
    """Audio Spectrogram Transformer: (batch, frames, mels) normalised log-mel -> (batch, classes) logits."""

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(1, cfg.dim, cfg.patch_size, stride=(cfg.fstride, cfg.tstride))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 2, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim), nn.Linear(cfg.dim, cfg.n_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding (mean of cls and dist tokens) of a (batch, frames, mels) input."""
        x = x.unsqueeze(1).transpose(2, 3)  # (batch, 1, mels, frames): frequency is the image height
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return (x[:, 0] + x[:, 1]) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
