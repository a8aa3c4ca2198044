"""Numpy log-mel front end (the device implementation of the FeatureSpec, both kinds).

Pure functions, no state: ``compute_features`` turns one window of 16 kHz audio into the
normalised (frames, mels) float32 array the model takes. train/features_torch.py is the
torch twin; tests/test_feature_parity.py holds them to 1e-4 and checks both against
kaldi-native-fbank.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.feature_spec import FeatureSpec, frames_for_samples


def kaldi_mel(freq_hz: np.ndarray | float) -> np.ndarray:
    """Kaldi/HTK mel scale: 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """Kaldi triangular mel filterbank, shape (n_mels, fft_size // 2 + 1), float32.

    Triangles are built in the mel domain as Kaldi does. For ``kaldi-fbank`` the Nyquist column
    is zero (Kaldi uses fft_size / 2 bins, torchaudio pads the last one with 0). For a mel layout
    at a higher rate than the audio (``efficientat-mel``: 32 kHz bands on 16 kHz bins of the same
    spacing) every bin, the last included, is an ordinary bin of the wider layout and bands above
    the audio's Nyquist frequency stay empty.
    """
    layout = spec.mel_layout_rate
    nyquist = 0.5 * layout
    high = spec.high_freq_hz if spec.high_freq_hz > 0 else nyquist + spec.high_freq_hz
    if not (0.0 <= spec.low_freq_hz < high <= nyquist):
        raise ValueError(f"bad mel range {spec.low_freq_hz}..{high} Hz for a {layout:g} Hz mel layout")
    n_bins = spec.fft_size // 2 + 1
    used = n_bins - 1 if layout == spec.sample_rate else n_bins
    mel_low, mel_high = kaldi_mel(spec.low_freq_hz), kaldi_mel(high)
    delta = (mel_high - mel_low) / (spec.n_mels + 1)
    bin_mels = kaldi_mel(np.arange(used) * (spec.sample_rate / spec.fft_size))
    left = mel_low + np.arange(spec.n_mels)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    up = (bin_mels[None, :] - left) / (center - left)
    down = (right - bin_mels[None, :]) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    out = np.zeros((spec.n_mels, n_bins), dtype=np.float32)
    out[:, :used] = banks
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def spectral_weight(spec: FeatureSpec) -> np.ndarray | None:
    """Per-bin power weight of ``efficientat-mel`` (None for ``kaldi-fbank``), float64.

    (layout rate / sample rate)^2 for the longer window of the mel layout's rate, times the power
    response |1 - a e^(-j 2 pi f / layout)|^2 of pre-emphasis ``a`` at that rate, times 0 above
    ``lowpass_hz``.
    """
    if spec.kind != "efficientat-mel":
        return None
    layout = spec.mel_layout_rate
    freqs = np.arange(spec.fft_size // 2 + 1) * (spec.sample_rate / spec.fft_size)
    a = spec.preemphasis
    weight = (layout / spec.sample_rate) ** 2 * (1.0 + a * a - 2.0 * a * np.cos(2.0 * np.pi * freqs / layout))
    if spec.lowpass_hz > 0:
        weight[freqs > spec.lowpass_hz] = 0.0
    weight.setflags(write=False)
    return weight


@lru_cache(maxsize=8)
def analysis_window(spec: FeatureSpec) -> np.ndarray:
    """The frame window: symmetric Hann ("hanning") or Hann ** 0.85 ("povey"), float32."""
    n = spec.frame_length
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))
    window = hann if spec.window_type == "hanning" else hann**0.85
    window = window.astype(np.float32)
    window.setflags(write=False)
    return window


def frame_signal(audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Split audio into Kaldi frames (snip_edges=True): a (frames, frame_length) float64 copy."""
    n_frames = frames_for_samples(audio.shape[0], spec)
    if n_frames == 0:
        raise AudioError(
            f"audio of {audio.shape[0]} samples is shorter than one {spec.frame_length_ms:g} ms frame"
        )
    view = np.lib.stride_tricks.sliding_window_view(audio, spec.frame_length)[:: spec.frame_shift]
    return np.array(view[:n_frames], dtype=np.float64)


def log_mel_fbank(audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Log-mel of 16 kHz mono audio as ``spec.kind`` defines it: (frames, n_mels) float32, unnormalised."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"features need mono audio (1-D), got shape {audio.shape}")
    frames = frame_signal(audio, spec)
    weight = spectral_weight(spec)
    if spec.remove_dc_offset:
        frames -= frames.mean(axis=1, keepdims=True)
    if spec.preemphasis and weight is None:
        frames[:, 1:] -= spec.preemphasis * frames[:, :-1].copy()
        frames[:, 0] *= 1.0 - spec.preemphasis
    # Float64 up to the power spectrum: quiet bands (a 4 kHz stethoscope resampled to 16 kHz has
    # almost nothing above 2 kHz) are float32 rounding noise otherwise, and two float32 FFTs
    # (numpy here, torch in training) would disagree there by far more than 1e-4.
    frames *= analysis_window(spec)
    spectrum = scipy.fft.rfft(frames, n=spec.fft_size, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    if weight is not None:
        power *= weight
        mel = power.astype(np.float32) @ mel_filterbank(spec).T
        return np.log(mel + np.float32(spec.log_floor))
    mel = power.astype(np.float32) @ mel_filterbank(spec).T
    return np.log(np.maximum(mel, np.float32(spec.log_floor)))


def normalize(fbank: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """AST normalisation: (fbank - mean) / (2 * std)."""
    return ((fbank - np.float32(spec.norm_mean)) / np.float32(2.0 * spec.norm_std)).astype(np.float32)


def compute_features(window_audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Model input for one window: normalised log-mel, shape ``spec.input_shape``, float32.

    ``window_audio`` must hold exactly ``spec.window_samples`` samples (pad with
    ``padding.cyclic_pad`` first).
    """
    window_audio = np.asarray(window_audio)
    if window_audio.shape != (spec.window_samples,):
        raise AudioError(
            f"a model window is {spec.window_samples} samples ({spec.window_seconds:g} s), got shape {window_audio.shape}"
        )
    return normalize(log_mel_fbank(window_audio, spec), spec)
