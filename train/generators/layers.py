"""Building blocks shared by the GAN generators: class-conditional heads and residual SE blocks."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def sn(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Spectral normalisation of a layer's weight (Miyato et al.), or the layer unchanged."""
    return spectral_norm(module) if enabled else module


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> bottleneck MLP -> sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(2, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualSE(nn.Module):
    """conv-BN-ReLU-conv-BN with squeeze-and-excitation on the branch, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), SqueezeExcite(channels),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


class ConvCritic(nn.Module):
    """Conv discriminator/critic with a projection class head (Miyato & Koyama 2018).

    ``len(channels)`` blocks of a 4x4 stride-2 convolution + LeakyReLU, spectral normalisation
    on every layer when ``spectral``; score = linear(h) + <embed(y), h> on the pooled features.
    """

    def __init__(self, channels: list[int], n_classes: int, spectral: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip([1] + channels[:-1], channels):
            layers += [sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1), spectral), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.linear = sn(nn.Linear(channels[-1], 1), spectral)
        self.embed = sn(nn.Embedding(n_classes, channels[-1]), spectral)

    def forward(self, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(img).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


class DeconvGenerator(nn.Module):
    """Noise + class embedding -> dense -> ``len(channels)`` transposed-conv up-sampling blocks -> 1 channel.

    With ``se`` every up-sampling block is followed by a residual squeeze-and-excitation block.
    """

    def __init__(self, noise_dim: int, n_classes: int, channels: list[int], h: int, w: int, se: bool = False) -> None:
        super().__init__()
        self.h, self.w, self.top = h, w, channels[0]
        self.embed = nn.Embedding(n_classes, noise_dim)
        self.fc = nn.Sequential(nn.Linear(2 * noise_dim, channels[0] * h * w), nn.BatchNorm1d(channels[0] * h * w), nn.ReLU())
        blocks: list[nn.Module] = []
        for cin, cout in zip(channels, channels[1:] + [channels[-1]]):
            blocks += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            if se:
                blocks.append(ResidualSE(cout))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.embed(labels)], dim=1)).view(-1, self.top, self.h, self.w)
        return self.out(self.blocks(h))
