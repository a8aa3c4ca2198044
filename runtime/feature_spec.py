"""The feature spec: one frozen description of the log-mel front end, stored in every bundle.

Two kinds share the framing (25 ms Hann frames every 10 ms, snip-edges) and differ in a few steps:

* ``kaldi-fbank`` (the AST's): numerics follow Kaldi's ``compute-fbank`` as the Audio Spectrogram Transformer uses it
(``torchaudio.compliance.kaldi.fbank(htk_compat=True, window_type='hanning', dither=0,
use_energy=False, num_mel_bins=128, frame_shift=10)``), followed by AST's normalisation
``(fbank - mean) / (2 * std)``.
* ``efficientat-mel`` (EfficientAT's MobileNets, trained on 32 kHz audio): the 32 kHz model's
  128-band Kaldi-mel layout (n_fft 1024, window 800, hop 320, 0..15 kHz, pre-emphasis 0.97,
  ``log(x + 1e-5)``, ``(x + 4.5) / 5``) computed directly on 16 kHz audio: at 16 kHz the same
  25 ms / 10 ms / 32 ms frames have the same 31.25 Hz bin spacing, so the 32 kHz filterbank applies
  to the bins up to 8 kHz (the bands above stay empty, as they are in 16 kHz audio upsampled to
  32 kHz); the power is scaled by (32/16)^2 for the longer 32 kHz window and the pre-emphasis is
  applied as its 32 kHz frequency response. ``lowpass_hz`` band-limits the power spectrum so that
  sources of different bandwidth look alike (MODEL_CARD.md has the measurements).

The numpy implementation (runtime/features.py) and the torch
implementation (train/features_torch.py) both read this spec and are parity-tested.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from stethoedge.runtime.errors import BundleError

#: Kaldi/torchaudio log floor: float32 machine epsilon.
FLOAT32_EPS = 1.1920928955078125e-07


@dataclass(frozen=True)
class FeatureSpec:
    """Every number that defines the model input. Units are in the field names."""

    kind: str = "kaldi-fbank"  # "kaldi-fbank" (AST) or "efficientat-mel" (MobileNetV3)
    sample_rate: int = 16000
    window_seconds: float = 8.0
    n_mels: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"  # "hanning" (AST) or "povey" (Kaldi default: hann ** 0.85)
    preemphasis: float = 0.97
    remove_dc_offset: bool = True  # per frame, as Kaldi; makes a waveform DC offset irrelevant
    dither: float = 0.0  # never dither at inference; kept so the spec states it
    low_freq_hz: float = 20.0
    high_freq_hz: float = 0.0  # <= 0 means Nyquist + high_freq_hz, as in Kaldi
    log_floor: float = FLOAT32_EPS
    # AST normalisation: (fbank - norm_mean) / (2 * norm_std). AudioSet values by default;
    # training replaces them with the training set's statistics.
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974
    # efficientat-mel only: the sample rate whose FFT layout the mel bands assume (0: sample_rate)
    # and a band limit applied to the power spectrum (0: none).
    mel_rate_hz: float = 0.0
    lowpass_hz: float = 0.0

    @property
    def frame_length(self) -> int:
        """Samples per analysis frame (400 at 16 kHz)."""
        return int(self.sample_rate * self.frame_length_ms / 1000.0)

    @property
    def frame_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz)."""
        return int(self.sample_rate * self.frame_shift_ms / 1000.0)

    @property
    def fft_size(self) -> int:
        """FFT length: the frame length rounded up to a power of two (512)."""
        return 1 << math.ceil(math.log2(self.frame_length))

    @property
    def window_samples(self) -> int:
        """Samples in one model window (128000 for 8 s at 16 kHz)."""
        return int(round(self.window_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Frames in one model window (Kaldi snip_edges: 1 + (N - frame_length) // shift = 798)."""
        return frames_for_samples(self.window_samples, self)

    @property
    def input_shape(self) -> tuple[int, int]:
        """Model input shape for one window: (frames, mels)."""
        return (self.num_frames, self.n_mels)

    def with_normalization(self, mean: float, std: float) -> FeatureSpec:
        """Return a copy with dataset normalisation statistics."""
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"normalisation needs a finite mean and a positive std, got {mean}, {std}")
        return replace(self, norm_mean=float(mean), norm_std=float(std))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as stored in manifest.json and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Build from the JSON form; unknown or badly typed keys are a BundleError."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BundleError(f"feature spec has unknown keys {unknown}; written by a newer stethoedge?")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            expected = type(getattr(cls(), name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise BundleError(f"feature spec field {name!r} should be {expected.__name__}, got {value!r}")
            kwargs[name] = value
        spec = cls(**kwargs)
        if spec.kind not in KINDS:
            raise BundleError(f"feature spec kind {spec.kind!r} is not one of {', '.join(KINDS)}")
        if spec.window_type not in ("hanning", "povey"):
            raise BundleError(f"feature spec window_type {spec.window_type!r} is not 'hanning' or 'povey'")
        if spec.norm_std <= 0 or spec.sample_rate <= 0 or spec.n_mels <= 0:
            raise BundleError("feature spec has a non-positive sample_rate, n_mels or norm_std")
        bad = [k for k, v in asdict(spec).items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise BundleError(f"feature spec fields {bad} are not finite numbers")
        if spec.frame_length <= 0 or spec.frame_shift <= 0 or spec.window_samples < spec.frame_length:
            raise BundleError("feature spec frame length, frame shift and window must be positive, "
                              "with at least one frame per window")
        if spec.mel_rate_hz < 0 or spec.lowpass_hz < 0:
            raise BundleError("feature spec mel_rate_hz and lowpass_hz must be >= 0")
        return spec

    @property
    def mel_layout_rate(self) -> float:
        """Sample rate whose FFT bins the mel filterbank is laid out for (Hz)."""
        return self.mel_rate_hz if self.mel_rate_hz > 0 else float(self.sample_rate)


#: The feature kinds a bundle may name.
KINDS = ("kaldi-fbank", "efficientat-mel")


def efficientat_spec(lowpass_hz: float = 0.0, window_seconds: float = 8.0) -> FeatureSpec:
    """The EfficientAT (AudioSet mn*_as) front end for 16 kHz audio; ``lowpass_hz`` band-limits it."""
    return FeatureSpec(kind="efficientat-mel", sample_rate=16000, window_seconds=window_seconds, n_mels=128,
                       frame_length_ms=25.0, frame_shift_ms=10.0, window_type="hanning", preemphasis=0.97,
                       remove_dc_offset=False, low_freq_hz=0.0, high_freq_hz=15000.0, log_floor=1e-5,
                       norm_mean=-4.5, norm_std=2.5, mel_rate_hz=32000.0, lowpass_hz=float(lowpass_hz))


def frames_for_samples(n_samples: int, spec: FeatureSpec) -> int:
    """Number of Kaldi frames (snip_edges=True) in ``n_samples`` samples; 0 if shorter than a frame."""
    if n_samples < spec.frame_length:
        return 0
    return 1 + (n_samples - spec.frame_length) // spec.frame_shift
