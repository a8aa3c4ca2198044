"""Every generator behind the common interface, tiny on CPU: fit, sample, save/load, resume, conditioning."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.generators import MEL_KINDS, MelSet, create, load

N_MELS, N_FRAMES = 16, 32
TINY: dict[str, dict] = {
    "vae": dict(width=1 / 16, latent=8, lr=2e-3),
    "wgan-gp": dict(width=1 / 32, noise_dim=8, lr=1e-3, critic_steps=2),
    "se-cgan": dict(width=1 / 32, noise_dim=8, lr=1e-3),
    "ddpm": dict(width=1 / 8, unet_channels=(64, 128), timesteps=100, ddim_steps=5, lr=2e-3),
    "diffwave": dict(residual_channels=8, layers=3, dilation_cycle=3, timesteps=6, lr=2e-3),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def class_means() -> torch.Tensor:
    return torch.randn(4, N_FRAMES, N_MELS, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def data(class_means: torch.Tensor) -> MelSet:
    """32 mels: four class prototypes plus small noise, with aligned audio for the vocoder."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(32) % 4
    mels = class_means[labels] + 0.1 * torch.randn(32, N_FRAMES, N_MELS, generator=g)
    spec = FeatureSpec(n_mels=N_MELS, frame_shift_ms=2.5)  # a 40-sample hop keeps the vocoder tests fast
    audio = 0.1 * torch.randn(32, N_FRAMES * spec.frame_shift, generator=g)
    return MelSet(mels, labels, spec, audio)


@pytest.fixture(scope="module")
def make(data: MelSet):
    def build(kind: str, **extra) -> object:
        return create(kind, spec=data.spec, n_mels=N_MELS, n_frames=N_FRAMES, batch_size=16, **{**TINY[kind], **extra})
    return build


@pytest.mark.parametrize("kind", list(TINY))
def test_fit_decreases_loss(make, kind: str, data: MelSet) -> None:
    gen = make(kind)
    losses = gen.fit(data, steps=40, progress=False)
    assert len(losses) == 40 and gen.step == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first, f"{kind}: loss did not decrease ({first:.4f} -> {last:.4f})"


@pytest.mark.parametrize("kind", MEL_KINDS)
def test_sample_shape_class_conditioning_and_seed(make, kind: str, data: MelSet) -> None:
    gen = make(kind)
    gen.fit(data, steps=2, progress=False)
    a = gen.sample("crackle", 3, seed=5)
    assert a.shape == (3, N_FRAMES, N_MELS) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, gen.sample(1, 3, seed=5)), "same class + seed must give the same samples"
    assert not torch.equal(a, gen.sample(1, 3, seed=6))
    # Same noise (seed), another class: the label must change the output.
    assert (gen.sample("wheeze", 3, seed=5) - a).abs().max() > 1e-6


@pytest.mark.parametrize("kind", list(TINY))
def test_save_load_round_trip(make, kind: str, data: MelSet, tmp_path: Path) -> None:
    gen = make(kind)
    gen.fit(data, steps=2, progress=False)
    path = gen.save(tmp_path / f"{kind}.pt")
    again = load(path)
    assert type(again) is type(gen) and again.step == 2 and again.classes == gen.classes
    if kind == "diffwave":
        assert torch.equal(gen.sample(2, 2, seed=3, source=data), again.sample(2, 2, seed=3, source=data))
    else:
        assert torch.equal(gen.sample(2, 4, seed=3), again.sample(2, 4, seed=3))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_resume_continues_from_checkpoint(make, data: MelSet, tmp_path: Path) -> None:
    ckpt = tmp_path / "vae.pt"
    full = make("vae")
    full_losses = full.fit(data, steps=6, progress=False)
    first = make("vae")
    first.fit(data, steps=3, checkpoint=ckpt, checkpoint_every=3, progress=False)
    resumed = make("vae")
    losses = resumed.fit(data, steps=6, checkpoint=ckpt, progress=False)
    assert resumed.step == 6 and len(losses) == 6
    assert losses[:3] == full_losses[:3], "the resumed run keeps the history of the checkpoint"
    assert load(ckpt).step == 6


def test_minority_only_training(make, data: MelSet) -> None:
    gen = make("vae")
    gen.fit(data, classes=[1, 3], steps=2, progress=False)
    assert gen.classes == [1, 3]
    assert gen.sample("both", 2).shape == (2, N_FRAMES, N_MELS)
    with pytest.raises(DataError, match="trained on"):
        gen.sample("normal", 2)


def test_wgan_generator_learns_the_class_means(make, data: MelSet, class_means: torch.Tensor) -> None:
    gen = make("wgan-gp", width=1 / 8, critic_steps=3)
    gen.classes = [0, 1, 2, 3]
    before = (gen.sample(1, 16).mean(0) - class_means[1]).square().mean()
    gen.fit(data, steps=80, progress=False)
    after = (gen.sample(1, 16).mean(0) - class_means[1]).square().mean()
    assert after < 0.6 * before, f"generated crackle mean did not approach the data ({before:.3f} -> {after:.3f})"


def test_wrong_shape_and_bad_kind_are_typed_errors(make, data: MelSet) -> None:
    gen = create("vae", n_mels=32, n_frames=32, **TINY["vae"])
    with pytest.raises(DataError, match="frames, mels"):
        gen.fit(data, steps=1, progress=False)
    with pytest.raises(DataError, match="unknown generator kind"):
        create("gan3000")
    with pytest.raises(DataError, match="divisible"):
        create("vae", n_mels=20, n_frames=32)
    with pytest.raises(DataError, match="not trained"):
        make("ddpm").sample(0, 1)


def test_real_icbhi_cycles_feed_generators(icbhi_dir: Path) -> None:
    """Real cycles -> generator data (train split only, its own normalisation) -> a DDPM step and a vocoder step."""
    from stethoedge.train.generators.data import load_melsets

    sets = load_melsets(icbhi_dir, n_mels=N_MELS, n_frames=N_FRAMES, with_audio=True, val_fraction=0.25)
    train = sets["train"]
    assert train.shape == (N_FRAMES, N_MELS) and len(train) > 10 and "test" in sets
    assert abs(float(train.mels.mean())) < 0.05 and abs(float(train.mels.std()) - 0.5) < 0.05  # AST normalisation
    assert train.audio is not None and train.audio.shape == (len(train), N_FRAMES * train.spec.frame_shift)
    for kind in ("ddpm", "diffwave"):
        gen = create(kind, spec=train.spec, n_mels=N_MELS, n_frames=N_FRAMES, batch_size=8, **TINY[kind])
        losses = gen.fit(train, steps=2, progress=False)
        assert len(losses) == 2 and all(np.isfinite(losses))
        assert gen.spec.norm_mean == train.spec.norm_mean
