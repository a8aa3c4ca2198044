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
    norm_eps: float = 1e-6  # encoder LayerNorms (timm/AST: 1e-6; Hugging Face AST: 1e-12)
    head_norm_eps: float = 1e-5  # LayerNorm of the classification head

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


#: Size presets. ``micro`` is for tests, ``nano`` (~0.5 M) trains on a 2-core CPU in minutes (the
#: demo), ``tiny`` is DeiT-tiny shaped (~5.5 M, non-overlapping: the edge student), ``small`` is
#: DeiT-small shaped (~22 M), ``base`` is the AST paper's model (~87 M, overlapping stride 10).
PRESETS: dict[str, ASTConfig] = {
    "micro": ASTConfig(dim=32, depth=1, heads=2),
    "nano": ASTConfig(dim=96, depth=4, heads=4),
    "tiny": ASTConfig(dim=192, depth=12, heads=3),
    "small": ASTConfig(dim=384, depth=12, heads=6),
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


class Mlp(nn.Module):
    """Feed-forward: fc1 -> GELU -> fc2 (timm/AST naming, so original checkpoints map by name)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PatchEmbed(nn.Module):
    """16x16 patches of the (batch, 1, mels, frames) image, linearly embedded by a strided conv."""

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.dim, cfg.patch_size, stride=(cfg.fstride, cfg.tstride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout)
        self.drop_path = DropPath(cfg.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class AST(nn.Module):
    """Audio Spectrogram Transformer: (batch, frames, mels) normalised log-mel -> (batch, classes) logits."""

    def __init__(self, cfg: ASTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 2, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Sequential(nn.LayerNorm(cfg.dim, eps=cfg.head_norm_eps), nn.Linear(cfg.dim, cfg.n_classes))
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
        x = self.patch_embed(x)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return (x[:, 0] + x[:, 1]) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


#: Renames of state-dict keys written before the timm-style module names (checkpoint version 1 files).
_LEGACY_KEYS = ((".mlp.0.", ".mlp.fc1."), (".mlp.3.", ".mlp.fc2."))


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map keys of older stethoedge checkpoints (Sequential MLP, bare patch conv) to the current names."""
    out = {}
    for key, value in state.items():
        for old, new in _LEGACY_KEYS:
            key = key.replace(old, new)
        if key in ("patch_embed.weight", "patch_embed.bias"):
            key = key.replace("patch_embed.", "patch_embed.proj.")
        out[key] = value
    return out


def interpolate_pos_embed(pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                          n_special: int = 2) -> torch.Tensor:
    """Resize (1, n_special + F*T, dim) positional embeddings from one patch grid to another (bilinear).

    Used when a checkpoint was trained on another input length (AudioSet AST: 1024 frames) or
    another stride; the cls/dist embeddings are kept as they are.
    """
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    special, grid = pos[:, :n_special], pos[:, n_special:]
    f, t = src_grid
    if grid.shape[1] != f * t:
        raise ValueError(f"positional embedding has {grid.shape[1]} patch positions, grid {f}x{t} needs {f * t}")
    dim = grid.shape[-1]
    image = grid.reshape(1, f, t, dim).permute(0, 3, 1, 2)
    image = torch.nn.functional.interpolate(image, size=tuple(dst_grid), mode="bilinear", align_corners=False)
    return torch.cat([special, image.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def gflops_per_window(model: nn.Module, batch: int = 1) -> float:
    """Forward GFLOPs for one (n_frames, n_mels) window, counted by torch.utils.flop_counter (matmul/conv)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.cfg
    x = torch.zeros(batch, cfg.n_frames, cfg.n_mels)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / batch / 1e9
