"""DiffWave-style conditional neural vocoder (Kong et al., 2021): waveform diffusion given a log-mel.

Residual layers of dilated convolutions (dilation 2^(i mod cycle)) with a gated activation,
the diffusion step embedded and added per layer, and the mel (nearest-upsampled by the hop,
then a 1x1 projection) added as local conditioning; a short noise schedule (T = 50, betas
linear 1e-4 to 0.05) with ancestral sampling. Output length = frames x hop (``frame_shift``).

Used two ways: ``resynthesize`` makes new waveforms from real mels (e.g. of the minority
classes, as the adversarial fine-tuning study does), ``vocode`` turns mels from the other
generators into audio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stethoedge.runtime.errors import DataError
from stethoedge.train.generators.base import GeneratorConfig, MelGenerator, MelSet, parse_classes
from stethoedge.train.generators.ddpm import linear_betas, timestep_embedding
from stethoedge.train.progress import progress_bar


@dataclass
class DiffWaveConfig(GeneratorConfig):
    """Network and schedule of the vocoder (defaults: DiffWave base)."""

    residual_channels: int = 64
    layers: int = 30
    dilation_cycle: int = 10
    timesteps: int = 50
    beta_start: float = 1e-4
    beta_end: float = 0.05
    lr: float = 2e-4
    batch_size: int = 16


class ResidualLayer(nn.Module):
    """Dilated conv + step embedding + mel conditioning -> gated tanh/sigmoid -> residual and skip."""

    def __init__(self, channels: int, n_mels: int, dilation: int, emb_dim: int) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.step = nn.Linear(emb_dim, channels)
        self.cond = nn.Conv1d(n_mels, 2 * channels, 1)
        self.out = nn.Conv1d(channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.dilated(x + self.step(emb)[:, :, None]) + self.cond(cond)
        gate, filt = y.chunk(2, dim=1)
        residual, skip = self.out(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual) / 2 ** 0.5, skip


class DiffWaveNet(nn.Module):
    """eps(x_t, t, mel): the DiffWave noise predictor."""

    def __init__(self, cfg: DiffWaveConfig, hop: int) -> None:
        super().__init__()
        c = max(4, int(round(cfg.residual_channels * cfg.width)))
        self.hop, self.emb_base = hop, 128
        self.inp = nn.Conv1d(1, c, 1)
        self.step_mlp = nn.Sequential(nn.Linear(128, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU())
        self.mel_up = nn.Conv1d(cfg.n_mels, cfg.n_mels, 3, padding=1)
        self.layers = nn.ModuleList(ResidualLayer(c, cfg.n_mels, 2 ** (i % cfg.dilation_cycle), 512)
                                    for i in range(cfg.layers))
        self.skip_out = nn.Sequential(nn.Conv1d(c, c, 1), nn.ReLU(), nn.Conv1d(c, 1, 1))
        nn.init.zeros_(self.skip_out[-1].weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """x (batch, samples), mels (batch, frames, mels) -> predicted noise (batch, samples)."""
        cond = F.leaky_relu(self.mel_up(F.interpolate(mels.transpose(1, 2), scale_factor=self.hop, mode="nearest")), 0.4)
        h = F.relu(self.inp(x[:, None]))
        emb = self.step_mlp(timestep_embedding(t, self.emb_base))
        skips = 0
        for layer in self.layers:
            h, skip = layer(h, emb, cond)
            skips = skips + skip
        return self.skip_out(skips / len(self.layers) ** 0.5)[:, 0]


class DiffWaveVocoder(MelGenerator):
    """The vocoder behind the common interface; ``sample`` re-synthesises real mels of a class."""

    kind = "diffwave"
    config_class = DiffWaveConfig
    config: DiffWaveConfig

    def build(self) -> None:
        c = self.config
        self.hop = self.spec.frame_shift
        self.net = DiffWaveNet(c, self.hop)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=c.lr)
        self.betas = linear_betas(c.timesteps, c.beta_start, c.beta_end)
        self.alpha_bar = torch.cumprod(1 - self.betas, dim=0)

    def modules(self) -> dict[str, nn.Module]:
        return {"diffwave": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}

    @property
    def n_samples(self) -> int:
        """Waveform length produced from one mel: frames x hop."""
        return self.config.n_frames * self.hop

    def fit(self, data: MelSet, *args, **kwargs) -> list[float]:  # type: ignore[override]
        """As ``MelGenerator.fit``; the data must carry the aligned audio (``with_audio=True``)."""
        if data.audio is None or data.audio.shape[1] != self.n_samples:
            raise DataError(f"diffwave: training needs audio of {self.n_samples} samples aligned with each mel "
                            "(build the data with with_audio=True)")
        return super().fit(data, *args, **kwargs)

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> float:
        audio, mels = batch["audio"], batch["mels"]
        t = torch.randint(0, self.config.timesteps, (audio.shape[0],), generator=gen).to(self.device)
        noise = torch.randn(audio.shape, generator=gen).to(self.device)
        ab = self.alpha_bar.to(self.device)[t].float()[:, None]
        loss = F.mse_loss(self.net(ab.sqrt() * audio + (1 - ab).sqrt() * noise, t, mels), noise)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def vocode(self, mels: torch.Tensor, seed: int = 0, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
        """Waveforms (n, frames x hop) for normalised log-mels (n, frames, mels) of this vocoder's spec
        (a progress bar of the reverse-diffusion steps on stderr unless ``progress`` is False)."""
        if mels.dim() != 3 or tuple(mels.shape[1:]) != (self.config.n_frames, self.config.n_mels):
            raise DataError(f"diffwave: mels must be (n, {self.config.n_frames}, {self.config.n_mels}), "
                            f"got {tuple(mels.shape)}")
        self.net.eval()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        starts = range(0, len(mels), batch_size)
        with progress_bar(total=len(starts) * self.config.timesteps, desc=f"vocode {len(mels)}", unit="step",
                          disable=not progress) as bar:
            out = [self._reverse(mels[s:s + batch_size].to(self.device), gen, bar) for s in starts]
        return torch.cat(out).cpu()

    def _reverse(self, mels: torch.Tensor, gen: torch.Generator, bar: Any = None) -> torch.Tensor:
        betas, ab = self.betas.to(self.device), self.alpha_bar.to(self.device)
        x = torch.randn(len(mels), self.n_samples, generator=gen, device=self.device)
        for t in range(self.config.timesteps - 1, -1, -1):
            eps = self.net(x, torch.full((len(mels),), t, device=self.device, dtype=torch.int64), mels)
            alpha = float(1 - betas[t])
            x = (x - float(betas[t]) / float((1 - ab[t]).sqrt()) * eps) / alpha ** 0.5
            if t > 0:
                sigma = float(((1 - ab[t - 1]) / (1 - ab[t]) * betas[t]).sqrt())
                x = x + sigma * torch.randn(x.shape, generator=gen, device=self.device)
            if bar is not None:
                bar.update(1)
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def sample(self, cls: int | str, n: int, seed: int = 0, batch_size: int = 16,  # type: ignore[override]
               source: MelSet | None = None) -> torch.Tensor:
        """``n`` new waveforms re-synthesised from real mels of class ``cls`` drawn (seeded) from ``source``."""
        if source is None:
            raise DataError("diffwave: re-synthesis needs real mels to condition on (source=MelSet)")
        index = parse_classes([cls])[0]
        pool = source.subset([index])
        if len(pool) == 0:
            raise DataError(f"diffwave: the source has no {cls!r} mels to re-synthesise")
        pick = torch.randint(0, len(pool), (n,), generator=torch.Generator().manual_seed(seed))
        return self.vocode(pool.mels[pick], seed=seed, batch_size=batch_size)

    def _sample(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise DataError("diffwave is a vocoder: use sample(cls, n, source=...) or vocode(mels)")
