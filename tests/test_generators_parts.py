"""Pieces of the generators with known answers: gradient penalty, DDIM steps, vocoder length, SE gating."""
from __future__ import annotations

import torch
from torch import nn

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.generators import MelSet, create
from stethoedge.train.generators.ddpm import ddim_timesteps, linear_betas
from stethoedge.train.generators.layers import ResidualSE, SqueezeExcite
from stethoedge.train.generators.vae import vae_loss
from stethoedge.train.generators.wgan_gp import gradient_penalty


class LinearCritic(nn.Module):
    """critic(x) = <w, x>: its input gradient is w everywhere, so the penalty is known exactly."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_known_values() -> None:
    real, fake = torch.randn(4, 1, 4, 8), torch.randn(4, 1, 4, 8)
    labels = torch.zeros(4, dtype=torch.int64)
    w = torch.randn(1, 1, 4, 8)
    unit = LinearCritic(w / w.norm())
    double = LinearCritic(2 * w / w.norm())
    assert gradient_penalty(unit, real, fake, labels, weight=10.0).item() < 1e-9
    assert abs(gradient_penalty(double, real, fake, labels, weight=10.0).item() - 10.0) < 1e-4
    # create_graph: the penalty itself back-propagates into the critic's weights
    gradient_penalty(double, real, fake, labels).backward()
    assert double.w.grad is not None and double.w.grad.abs().sum() > 0


def test_wgan_defaults_follow_the_issue() -> None:
    cfg = create("wgan-gp").config
    assert (cfg.critic_steps, cfg.gp_weight, cfg.lr, cfg.noise_dim) == (5, 10.0, 5e-5, 128)
    assert isinstance(create("wgan-gp", n_mels=16, n_frames=32, width=1 / 16).opt_c, torch.optim.RMSprop)
    vae = create("vae").config
    assert (vae.filters, vae.latent, vae.beta) == ((64, 128, 256, 512), 128, 0.1)
    ddpm = create("ddpm").config
    assert (ddpm.timesteps, ddpm.beta_start, ddpm.beta_end, ddpm.ddim_steps) == (1000, 1e-4, 0.02, 50)


def test_vae_loss_terms() -> None:
    x = torch.randn(2, 1, 4, 4)
    zeros = torch.zeros(2, 8)
    total, mse, kl = vae_loss(x, x, zeros, zeros, beta=0.1)
    assert mse.item() == 0 and abs(kl.item()) < 1e-7 and total.item() == 0
    total, _, kl = vae_loss(x, x, torch.ones(2, 8), zeros, beta=0.1)
    assert abs(kl.item() - 0.5) < 1e-6 and abs(total.item() - 0.05) < 1e-6


def test_linear_schedule_and_ddim_timesteps() -> None:
    betas = linear_betas(1000, 1e-4, 0.02)
    assert betas.shape == (1000,) and betas[0].item() == 1e-4 and abs(betas[-1].item() - 0.02) < 1e-12
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 999 and steps[-1] == 0 and steps == sorted(steps, reverse=True)


def test_ddim_calls_the_denoiser_once_per_step_and_is_deterministic() -> None:
    gen = create("ddpm", n_mels=16, n_frames=32, width=1 / 8, unet_channels=(64, 128), timesteps=100, ddim_steps=7)
    gen.classes = [0, 1, 2, 3]
    calls = []
    gen.unet.register_forward_hook(lambda *_: calls.append(1))
    a = gen.sample("wheeze", 2, seed=11)
    assert len(calls) == 7
    assert torch.equal(a, gen.sample("wheeze", 2, seed=11))


def test_vocoder_output_length() -> None:
    spec = FeatureSpec(n_mels=16)
    voc = create("diffwave", n_mels=16, n_frames=32, residual_channels=8, layers=2, dilation_cycle=2, timesteps=4)
    voc.classes = [0, 1, 2, 3]
    wav = voc.vocode(torch.randn(3, 32, 16), seed=0)
    assert wav.shape == (3, 32 * spec.frame_shift) and wav.abs().max() <= 1.0
    source = MelSet(torch.randn(8, 32, 16), torch.arange(8) % 4, spec)
    out = voc.sample("both", 5, seed=2, source=source)
    assert out.shape == (5, 32 * spec.frame_shift)


def test_squeeze_excite_gates_channels() -> None:
    se = SqueezeExcite(8)
    x = torch.randn(2, 8, 4, 4)
    gate = se.gate(x)
    assert gate.shape == (2, 8, 1, 1) and ((gate > 0) & (gate < 1)).all()
    assert torch.allclose(se(x), x * gate)
    block = ResidualSE(8).eval()
    assert block(x).shape == x.shape
    assert sum(isinstance(m, SqueezeExcite) for m in create("se-cgan", n_mels=16, n_frames=32, width=1 / 32).gen.modules()) == 4
