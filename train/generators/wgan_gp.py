"""Class-conditional WGAN-GP on log-mel spectrograms (Gulrajani et al., 2017).

Generator: a 128-d noise vector (+ class embedding) through a dense layer and 4 transposed-conv
blocks. Critic: 4 conv blocks with spectral normalisation and a projection class head.
Training: 5 critic steps per generator step, gradient penalty weight 10, RMSprop 5e-5.
One ``step`` of ``fit`` is one generator update (with its critic updates); the reported loss
is the critic's negative Wasserstein estimate plus the penalty.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stethoedge.train.generators.base import GeneratorConfig, MelGenerator, conv_out, from_image, to_image
from stethoedge.train.generators.layers import ConvCritic, DeconvGenerator


@dataclass
class WGANGPConfig(GeneratorConfig):
    """Architecture and optimiser of the WGAN-GP (defaults: the issue's full size)."""

    noise_dim: int = 128
    gen_filters: tuple[int, ...] = (512, 256, 128, 64)
    critic_filters: tuple[int, ...] = (64, 128, 256, 512)
    critic_steps: int = 5
    gp_weight: float = 10.0
    lr: float = 5e-5
    spectral_norm: bool = True


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor,
                     alpha: torch.Tensor | None = None, weight: float = 10.0) -> torch.Tensor:
    """weight * mean((||grad_x critic(x_hat)||_2 - 1)^2) at x_hat = alpha * real + (1 - alpha) * fake."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(x_hat, labels)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


class WGANGPGenerator(MelGenerator):
    """WGAN-GP behind the common generator interface."""

    kind = "wgan-gp"
    config_class = WGANGPConfig
    config: WGANGPConfig
    se_blocks = False

    def build(self) -> None:
        c = self.config
        gch, cch = c.channels(c.gen_filters), c.channels(c.critic_filters)
        h, w = conv_out(c.n_mels, len(gch), "n_mels"), conv_out(c.n_frames, len(gch), "n_frames")
        self.gen = DeconvGenerator(c.noise_dim, c.n_classes, gch, h, w, se=self.se_blocks)
        self.critic = ConvCritic(cch, c.n_classes, spectral=c.spectral_norm)
        self.build_optimizers()

    def build_optimizers(self) -> None:
        """RMSprop for both networks, as in the WGAN papers."""
        self.opt_g = torch.optim.RMSprop(self.gen.parameters(), lr=self.config.lr)
        self.opt_c = torch.optim.RMSprop(self.critic.parameters(), lr=self.config.lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.gen, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "critic": self.opt_c}

    def _noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.config.noise_dim, generator=gen, device=self.device)

    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor,
                    gen: torch.Generator) -> torch.Tensor:
        """E[critic(fake)] - E[critic(real)] + gradient penalty."""
        alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen, device=self.device)
        wdist = self.critic(fake, labels).mean() - self.critic(real, labels).mean()
        return wdist + gradient_penalty(self.critic, real, fake, labels, alpha, self.config.gp_weight)

    def generator_loss(self, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-E[critic(fake)]."""
        return -self.critic(fake, labels).mean()

    def train_step(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> float:
        real, labels = to_image(batch["mels"]), batch["labels"]
        n = real.shape[0]
        for _ in range(self.config.critic_steps):
            with torch.no_grad():
                fake = self.gen(self._noise(n, gen), labels)
            loss_c = self.critic_loss(real, fake, labels, gen)
            self.opt_c.zero_grad()
            loss_c.backward()
            self.opt_c.step()
        loss_g = self.generator_loss(self.gen(self._noise(n, gen), labels), labels)
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()
        return float(loss_c.detach())

    def _sample(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return from_image(self.gen(self._noise(len(labels), gen), labels))
