"""One feature spec, two implementations: numpy (device) vs torch (training), and both vs Kaldi."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.errors import AudioError, BundleError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features, log_mel_fbank
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.features_torch import compute_features_torch, log_mel_fbank_torch
from stethoedge.train.simulator import simulate_recording

SPEC = FeatureSpec()


def _parity(audio: np.ndarray) -> float:
    window = cyclic_pad(audio, SPEC.window_samples)
    a = compute_features(window, SPEC)
    b = compute_features_torch(torch.from_numpy(window)[None], SPEC)[0].numpy()
    assert a.shape == b.shape == (798, 128)
    return float(np.max(np.abs(a - b)))


def test_spec_shapes_match_ast():
    assert SPEC.frame_length == 400 and SPEC.frame_shift == 160 and SPEC.fft_size == 512
    assert SPEC.window_samples == 128000 and SPEC.num_frames == 798 and SPEC.input_shape == (798, 128)


def test_spec_round_trips_and_rejects_bad_fields():
    spec = SPEC.with_normalization(-5.0, 3.0)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(BundleError, match="unknown keys"):
        FeatureSpec.from_dict({**SPEC.to_dict(), "mystery": 1})
    with pytest.raises(BundleError, match="should be int"):
        FeatureSpec.from_dict({**SPEC.to_dict(), "n_mels": "128"})


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_on_synthetic_audio(seed):
    audio, _ = simulate_recording(seed, "copd", "Meditron", 8.0)
    assert _parity(audio) <= 1e-4


def test_parity_on_white_noise_and_quiet_audio(rng):
    assert _parity((0.3 * rng.standard_normal(SPEC.window_samples)).astype(np.float32)) <= 1e-4
    # very quiet audio lives near the log floor, where float32 FFTs disagree most
    assert _parity((1e-4 * rng.standard_normal(SPEC.window_samples)).astype(np.float32)) <= 1e-4


def test_parity_on_real_icbhi_recordings(icbhi_dir):
    wavs = sorted((icbhi_dir / "audio_and_txt_files").glob("*.wav"))
    worst = 0.0
    # 44.1 kHz 24-bit, 44.1 kHz 16-bit and 4 kHz 16-bit (almost nothing above 2 kHz) recordings
    for name in ("101_1b1_Al_sc_Meditron", "102_1b1_Ar_sc_Meditron", "104_1b1_Al_sc_Litt3200"):
        wav = next(w for w in wavs if w.stem == name)
        samples = load_audio(wav).samples
        for start in (0, 3 * 16000):
            worst = max(worst, _parity(samples[start : start + SPEC.window_samples]))
    assert worst <= 1e-4


def test_torch_batch_equals_single():
    audio = np.stack([simulate_recording(s, "healthy", "Litt3200", 8.0)[0][:128000] for s in (3, 4)])
    batch = log_mel_fbank_torch(torch.from_numpy(audio), SPEC).numpy()
    single = log_mel_fbank_torch(torch.from_numpy(audio[1]), SPEC).numpy()
    np.testing.assert_allclose(batch[1], single, atol=1e-6)


@pytest.mark.parametrize("window_type", ["hanning", "povey"])
@pytest.mark.parametrize("n_mels", [23, 64])
def test_matches_kaldi_native_fbank(window_type, n_mels, rng):
    """The numerics are Kaldi's: compare with kaldi-native-fbank (which refuses 128 bins at 16 kHz
    because its lowest triangles would be empty, so the check uses 23 and 64 bins)."""
    knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank is a dev extra: pip install '.[dev]'")
    audio = (0.1 * rng.standard_normal(32000)).astype(np.float32)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window_type
    opts.mel_opts.num_bins = n_mels
    opts.use_energy = False
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, audio.tolist())
    fbank.input_finished()
    reference = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
    ours = log_mel_fbank(audio, dataclasses.replace(SPEC, n_mels=n_mels, window_type=window_type))
    assert ours.shape == reference.shape
    assert np.max(np.abs(ours - reference)) < 1e-3


def test_features_reject_wrong_window_length():
    with pytest.raises(AudioError, match="128000 samples"):
        compute_features(np.zeros(1000, np.float32), SPEC)
    with pytest.raises(AudioError, match="mono"):
        log_mel_fbank(np.zeros((2, 16000), np.float32), SPEC)
