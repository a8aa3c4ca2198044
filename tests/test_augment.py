"""Augmentation policy: lengths kept, seeded, exact SNR, pitch and tempo where they should be."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.augment import (OPS, PRESETS, AdditiveNoise, Gain, PitchShift, SpecAugment, TimeStretch,
                                      add_noise_at_snr, get_policy, phase_vocoder_stretch)

SR = 16000


def tone(freq: float = 440.0, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * SR / len(audio))


@pytest.mark.parametrize("name", list(OPS))
def test_every_operation_keeps_length_and_shape(name: str) -> None:
    policy = get_policy(name, p=1.0, seed=3)
    audio = tone() + 0.01 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    out = policy.apply_waveform(audio)
    assert out.shape == audio.shape and out.dtype == np.float32 and np.isfinite(out).all()
    x = torch.randn(3, 100, 32)
    policy.spec = FeatureSpec(n_mels=32)
    y = policy(x, torch.zeros(3, dtype=torch.int64))
    assert y.shape == x.shape and torch.isfinite(y).all()
    if name != "specaugment":
        assert not np.array_equal(out, audio), f"{name} with p=1 changed nothing"
    assert not torch.equal(y, x), f"{name} with p=1 changed no feature"


def test_policy_is_seeded() -> None:
    audio = tone() + 0.05 * np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    x = torch.randn(4, 200, 128)
    a, b, c = (get_policy("health-acoustics", seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.apply_waveform(audio), b.apply_waveform(audio))
    assert torch.equal(a(x), b(x))
    assert torch.equal(a(x), b(x)), "the streams stay in step call after call"
    assert not torch.equal(get_policy("health-acoustics", seed=7)(x), c(x))
    a.reset()
    assert torch.equal(a(x), get_policy("health-acoustics", seed=7)(x))


def test_noise_hits_the_target_snr() -> None:
    audio = tone()
    for snr in (0.0, 10.0, 23.5):
        noisy = add_noise_at_snr(audio, snr, np.random.default_rng(0))
        measured = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean((noisy - audio).astype(np.float64) ** 2))
        assert abs(measured - snr) < 1e-3
    op = AdditiveNoise(snr_db=(20.0, 20.0))
    noisy = op.wave(audio, np.random.default_rng(2), FeatureSpec())
    assert abs(10 * np.log10(np.mean(audio ** 2) / np.mean((noisy - audio) ** 2)) - 20.0) < 1e-3


def test_time_stretch_keeps_pitch_and_changes_duration() -> None:
    audio = tone(500.0)
    for rate in (0.8, 1.25):
        y = phase_vocoder_stretch(audio, rate)
        assert abs(len(y) - len(audio) / rate) < 0.02 * len(audio)
        assert abs(peak_hz(y) - 500.0) < 5.0
    out = TimeStretch(rates=(1.25, 1.25)).wave(audio, np.random.default_rng(0), FeatureSpec())
    assert len(out) == len(audio)


def test_pitch_shift_moves_the_pitch_by_the_drawn_semitones() -> None:
    rng, copy = np.random.default_rng(4), np.random.default_rng(4)
    out = PitchShift(semitones=3.0).wave(tone(400.0), rng, FeatureSpec())
    factor = 2 ** (copy.uniform(-3.0, 3.0) / 12)
    assert len(out) == SR and abs(peak_hz(out) - 400.0 * factor) < 6.0


def test_gain_in_both_domains_agrees() -> None:
    spec = FeatureSpec()
    op = Gain(db=(6.0, 6.0))
    audio = tone()
    assert np.allclose(op.wave(audio, np.random.default_rng(0), spec), audio * 10 ** (6 / 20), atol=1e-6)
    x = torch.zeros(10, 128)
    shift = op.feat(x, torch.Generator().manual_seed(0), spec)
    # +6 dB of amplitude is a power ratio of 10^0.6: ln(3.98) in log-power, then AST normalisation.
    assert torch.allclose(shift, torch.full_like(x, 0.6 * np.log(10) / (2 * spec.norm_std)))


def test_specaugment_masks_within_limits() -> None:
    op = SpecAugment(n_time=1, time_width=10, n_freq=1, freq_width=5, value=0.0)
    x = torch.ones(100, 32)
    gen = torch.Generator().manual_seed(1)
    masked_any = False
    for _ in range(20):
        y = op.feat(x, gen, FeatureSpec(n_mels=32))
        assert int((y == 0).all(dim=1).sum()) <= 10 and int((y == 0).all(dim=0).sum()) <= 5
        assert int((y == 0).sum()) <= 10 * 32 + 5 * 100
        masked_any |= bool((y == 0).any())
    assert masked_any and torch.equal(x, torch.ones(100, 32)), "masks applied to a copy, never in place"


def test_named_preset_and_errors() -> None:
    policy = get_policy("circular-shift+time-stretch")
    assert [op.name for op in policy.ops] == ["circular-shift", "time-stretch"]
    assert "circular-shift+time-stretch" in PRESETS
    assert get_policy("none")(torch.ones(2, 5, 4)).equal(torch.ones(2, 5, 4))
    with pytest.raises(DataError, match="unknown augmentation"):
        get_policy("circular-shift+wobble")
    with pytest.raises(DataError, match="1-D"):
        policy.apply_waveform(np.zeros((2, 10), np.float32))
    with pytest.raises(DataError, match="batch"):
        policy(torch.zeros(5))


def test_trainer_trains_with_the_named_preset(sim_data, tmp_path) -> None:
    """TrainConfig.augment takes a policy name from this module (training side)."""
    from stethoedge.train.trainer import TrainConfig, train

    metrics = train(TrainConfig(data=str(sim_data), out=str(tmp_path / "run"), preset="micro", epochs=1,
                                batch_size=16, augment="circular-shift+time-stretch"))
    assert metrics["test"] is not None and 0.0 <= metrics["test"]["score"] <= 1.0
    with pytest.raises(DataError, match="unknown augmentation"):
        train(TrainConfig(data=str(sim_data), out=str(tmp_path / "bad"), preset="micro", epochs=1,
                          augment="wobble"))
