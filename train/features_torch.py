"""Torch log-mel front end: the training twin of stethoedge.runtime.features (same FeatureSpec).

Batched, runs on GPU. The mel filterbank and analysis window come from the runtime module so
the two implementations cannot drift in their constants; tests/test_feature_parity.py holds
the outputs to 1e-4 after normalisation.
"""
from __future__ import annotations

import torch

from stethoedge.runtime.feature_spec import FeatureSpec, frames_for_samples
from stethoedge.runtime.features import analysis_window, mel_filterbank, spectral_weight


def log_mel_fbank_torch(audio: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Log-mel (``spec.kind``) of (batch, samples) or (samples,) audio -> (batch, frames, mels)."""
    squeeze = audio.dim() == 1
    if squeeze:
        audio = audio.unsqueeze(0)
    # float64 up to the power spectrum, exactly as the numpy twin (see its comment).
    audio = audio.to(torch.float64)
    n_frames = frames_for_samples(audio.shape[-1], spec)
    if n_frames == 0:
        raise ValueError(f"audio of {audio.shape[-1]} samples is shorter than one frame")
    frames = audio.unfold(-1, spec.frame_length, spec.frame_shift)[:, :n_frames]
    weight = spectral_weight(spec)
    if spec.remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if spec.preemphasis and weight is None:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - spec.preemphasis * previous
    window = torch.from_numpy(analysis_window(spec).astype("float64")).to(audio.device)
    frames = frames * window
    spectrum = torch.fft.rfft(frames, n=spec.fft_size, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    banks = torch.from_numpy(mel_filterbank(spec).copy()).to(audio.device)
    if weight is not None:
        power = power * torch.from_numpy(weight.copy()).to(audio.device)
        out = torch.log(power.to(torch.float32) @ banks.T + spec.log_floor)
    else:
        out = torch.log(torch.clamp(power.to(torch.float32) @ banks.T, min=spec.log_floor))
    return out[0] if squeeze else out


def normalize_torch(fbank: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """AST normalisation: (fbank - mean) / (2 * std)."""
    return (fbank - spec.norm_mean) / (2.0 * spec.norm_std)


def compute_features_torch(window_audio: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Model input for (batch, window_samples) audio: normalised log-mel (batch, frames, mels)."""
    if window_audio.shape[-1] != spec.window_samples:
        raise ValueError(f"a model window is {spec.window_samples} samples, got {window_audio.shape[-1]}")
    return normalize_torch(log_mel_fbank_torch(window_audio, spec), spec)
