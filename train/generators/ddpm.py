"""Mel diffusion: a class-conditional U-Net noise predictor, DDPM training, DDIM sampling.

U-Net: one residual block per level (channels 64/128/256 at full size) with stride-2 down- and
nearest up-sampling, skip connections by concatenation, and self-attention at the bottleneck;
the diffusion step (sinusoidal embedding -> MLP) and the class embedding are added inside every
residual block. Schedule: T = 1000, betas linear from 1e-4 to 0.02; loss: MSE on the noise.
Sampling: DDIM (Song et al., 2021) with 50 steps, deterministic for eta = 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stethoedge.train.generators.base import GeneratorConfig, MelGenerator, conv_out, from_image, to_image
from stethoedge.train.progress import progress_bar


@dataclass
class DDPMConfig(GeneratorConfig):
    """U-Net, schedule and sampler of the mel diffusion model (defaults: the issue's full size)."""

    unet_channels: tuple[int, ...] = (64, 128, 256)
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    ddim_steps: int = 50
    eta: float = 0.0
    clip: float = 6.0  # clamp of the predicted clean mel during sampling (normalised units)
    lr: float = 2e-4


def linear_betas(timesteps: int, start: float, end: float) -> torch.Tensor:
    """The DDPM linear beta schedule (float64)."""
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps ``t`` -> (len(t), dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    groups = math.gcd(ch, 8)
    return nn.GroupNorm(groups, ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the step/class embedding added in between; 1x1 skip if widths differ."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb = nn.Linear(emb_dim, cout)
        self.block2 = nn.Sequential(_norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.block2(h)


class SelfAttention2d(nn.Module):
    """Single-head self-attention over the positions of a feature map (explicit softmax)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        out = (v @ attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """Noise predictor eps(x_t, t, y) with skip connections and bottleneck self-attention."""

    def __init__(self, channels: list[int], n_classes: int) -> None:
        super().__init__()
        emb = 4 * channels[0]
        self.base = channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(n_classes, emb)
        self.inp = nn.Conv2d(1, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(ResBlock(cin, ch, emb))
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(channels) - 1 else nn.Identity())
            cin = ch
        self.mid1 = ResBlock(cin, cin, emb)
        self.attn = SelfAttention2d(cin)
        self.mid2 = ResBlock(cin, cin, emb)
        self.up = nn.ModuleList()
        for i, ch in reversed(list(enumerate(channels))):
            self.up.append(ResBlock(cin + ch, ch, emb))
            cin = ch
        self.out = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.base)) + self.class_emb(labels)
        h = self.inp(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(h)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The ``steps`` training steps DDIM visits, descending from T - 1 to 0."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"DDIM steps must be in 1..{timesteps}, got {steps}")
    return sorted({int(round(s)) for s in np.linspace(0, timesteps - 1, steps)}, reverse=True)


class DDPMGenerator(MelGenerator):
    """Mel diffusion behind the common generator interface."""

    kind = "ddpm"
    config_class = DDPMConfig
    config: DDPMConfig

    def build(self) -> None:
        c = self.config
        ch = c.channels(c.unet_channels)
        conv_out(c.n_mels, len(ch) - 1, "n_mels")
        conv_out(c.n_frames, len(ch) - 1, "n_frames")
        self.unet = UNet(ch, c.n_classes)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=c.lr)
        self.alpha_bar = torch.cumprod(1 - linear_betas(c.timesteps, c.beta_start, c.beta_end), dim=0)

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> float:
        x0, labels = to_image(batch["mels"]), batch["labels"]
        t = torch.randint(0, self.config.timesteps, (x0.shape[0],), generator=gen).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        ab = self.alpha_bar.to(self.device)[t].float()[:, None, None, None]
        loss = F.mse_loss(self.unet(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, labels), noise)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def _sample(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        x = torch.randn(len(labels), 1, c.n_mels, c.n_frames, generator=gen, device=self.device)
        ab = self.alpha_bar.to(self.device)
        steps = ddim_timesteps(c.timesteps, c.ddim_steps)
        for i, t in enumerate(progress_bar(steps, desc=f"sample ddpm {len(labels)}", unit="step", leave=False)):
            ab_t = ab[t].float()
            ab_prev = ab[steps[i + 1]].float() if i + 1 < len(steps) else torch.tensor(1.0, device=self.device)
            eps = self.unet(x, torch.full((len(labels),), t, device=self.device, dtype=torch.int64), labels)
            x0 = ((x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-c.clip, c.clip)
            eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
            sigma = c.eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp(min=0).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if c.eta > 0:
                x = x + sigma * torch.randn(x.shape, generator=gen, device=self.device)
        return from_image(x)
