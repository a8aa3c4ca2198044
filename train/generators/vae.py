"""Class-conditional VAE on log-mel spectrograms.

Encoder: 4 blocks of two 3x3 convolutions (64/128/256/512 filters, batch norm, LeakyReLU; the
second convolution strides 2), a 128-d latent; a mirrored decoder (transposed convolutions).
The class enters as one-hot planes on the encoder input and one-hot next to the latent.
Loss: MSE reconstruction + beta * KL (beta 0.1), both averaged per element.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stethoedge.train.generators.base import GeneratorConfig, MelGenerator, conv_out, from_image, to_image


@dataclass
class VAEConfig(GeneratorConfig):
    """Architecture and optimiser of the VAE (defaults: the issue's full size)."""

    filters: tuple[int, ...] = (64, 128, 256, 512)
    latent: int = 128
    beta: float = 0.1
    lr: float = 1e-3


def _enc_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
        nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2),
    )


def _dec_block(cin: int, cout: int, last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cin, 4, stride=2, padding=1), nn.BatchNorm2d(cin), nn.LeakyReLU(0.2)]
    if last:
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
    else:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class ConditionalVAE(nn.Module):
    """Encoder/decoder pair; ``forward`` returns (reconstruction, mu, logvar)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.channels(cfg.filters)
        self.n_classes = cfg.n_classes
        levels = len(ch)
        self.h, self.w = conv_out(cfg.n_mels, levels, "n_mels"), conv_out(cfg.n_frames, levels, "n_frames")
        self.top = ch[-1]
        self.encoder = nn.Sequential(*[_enc_block(cin, cout) for cin, cout in zip([1 + cfg.n_classes] + ch[:-1], ch)])
        flat = ch[-1] * self.h * self.w
        self.mu = nn.Linear(flat, cfg.latent)
        self.logvar = nn.Linear(flat, cfg.latent)
        self.fc = nn.Linear(cfg.latent + cfg.n_classes, flat)
        rev = ch[::-1]
        self.decoder = nn.Sequential(*[_dec_block(cin, cout) for cin, cout in zip(rev[:-1], rev[1:])],
                                     _dec_block(rev[-1], 1, last=True))

    def encode(self, img: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, y): mean and log-variance."""
        onehot = F.one_hot(labels, self.n_classes).float()[:, :, None, None].expand(-1, -1, *img.shape[2:])
        h = self.encoder(torch.cat([img, onehot], dim=1)).flatten(1)
        return self.mu(h), self.logvar(h).clamp(-30, 20)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """p(x | z, y) mean image."""
        h = self.fc(torch.cat([z, F.one_hot(labels, self.n_classes).float()], dim=1))
        return self.decoder(h.view(-1, self.top, self.h, self.w))

    def forward(self, img: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(img, labels)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, labels), mu, logvar


def vae_loss(recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, mse, kl): MSE per element + beta * KL(q || N(0, I)) per latent dimension."""
    mse = F.mse_loss(recon, target)
    kl = -0.5 * torch.mean(1 + logvar - mu.square() - logvar.exp())
    return mse + beta * kl, mse, kl


class VAEGenerator(MelGenerator):
    """The VAE behind the common generator interface."""

    kind = "vae"
    config_class = VAEConfig
    config: VAEConfig

    def build(self) -> None:
        self.net = ConditionalVAE(self.config)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> float:
        img = to_image(batch["mels"])
        recon, mu, logvar = self.net(img, batch["labels"])
        loss, _, _ = vae_loss(recon, img, mu, logvar, self.config.beta)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def _sample(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(len(labels), self.config.latent, generator=gen, device=self.device)
        return from_image(self.net.decode(z, labels))
