"""Conditional GAN whose generator stacks residual squeeze-and-excitation blocks.

Each transposed-conv up-sampling block of the generator is followed by a residual block whose
branch ends in squeeze-and-excitation channel attention; the class label conditions the
generator (embedding next to the noise) and the discriminator (projection head, spectral
normalisation). Loss: hinge; Adam(2e-4, betas 0.5/0.999), one discriminator step per
generator step. The reported loss is the discriminator's hinge loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stethoedge.train.generators.wgan_gp import WGANGPConfig, WGANGPGenerator


@dataclass
class SECGANConfig(WGANGPConfig):
    """Architecture and optimiser of the SE-residual conditional GAN."""

    critic_steps: int = 1
    gp_weight: float = 0.0
    lr: float = 2e-4


class SECGANGenerator(WGANGPGenerator):
    """SE-residual conditional GAN behind the common generator interface."""

    kind = "se-cgan"
    config_class = SECGANConfig
    config: SECGANConfig
    se_blocks = True

    def build_optimizers(self) -> None:
        """Adam with the usual GAN betas."""
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=self.config.lr, betas=(0.5, 0.999))
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=self.config.lr, betas=(0.5, 0.999))

    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
        """Hinge loss: relu(1 - D(real)) + relu(1 + D(fake))."""
        return F.relu(1 - self.critic(real, labels)).mean() + F.relu(1 + self.critic(fake, labels)).mean()
