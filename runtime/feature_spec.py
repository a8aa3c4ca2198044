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
        """Build from the JSON form; unknown, badly typed or out-of-range fields are a BundleError."""
        if not isinstance(data, dict):
            raise BundleError(f"feature spec must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BundleError(f"feature spec has unknown keys {unknown}; written by a newer stethoedge?")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            expected = type(getattr(cls(), name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value) if abs(value) < 2**1000 else math.inf  # a huge JSON integer: not finite
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise BundleError(f"feature spec field {name!r} should be {expected.__name__}, got {value!r}")
            kwargs[name] = value
        spec = cls(**kwargs)
        validate_spec(spec)
        return spec

    @property
    def mel_layout_rate(self) -> float:
        """Sample rate whose FFT bins the mel filterbank is laid out for (Hz): ``mel_rate_hz`` for
        ``efficientat-mel`` when set, else ``sample_rate`` (Kaldi's layout)."""
        if self.kind == "efficientat-mel" and self.mel_rate_hz > 0:
            return self.mel_rate_hz
        return float(self.sample_rate)


#: The feature kinds a bundle may name.
KINDS = ("kaldi-fbank", "efficientat-mel")
#: The analysis windows.
WINDOW_TYPES = ("hanning", "povey")


#: The audio rate every runtime source delivers (files and devices are resampled to it).
RUNTIME_SAMPLE_RATE = 16000
#: Sanity bounds of ``validate_spec`` (docs/RELIABILITY.md lists them).
MAX_WINDOW_SECONDS = 60.0
MAX_FRAME_MS = 1000.0
MAX_N_MELS = 512
MAX_MEL_RATE_HZ = 192000.0
MAX_NORM = 1e6
MIN_NORM_STD = 1e-6


def _field_error(name: str, value: Any, allowed: str) -> BundleError:
    return BundleError(f"feature spec {name} {value!r} is invalid; allowed: {allowed}")


def validate_spec(spec: FeatureSpec) -> None:
    """Raise BundleError naming the field and its allowed range unless every field of ``spec`` is sane.

    Checked in an order where each step may rely on the previous ones (finite numbers before
    derived sample counts, the frame size before the FFT size, the mel layout before the band).
    """
    bad = [k for k, v in asdict(spec).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise BundleError(f"feature spec fields {bad} are not finite numbers")
    if spec.kind not in KINDS:
        raise _field_error("kind", spec.kind, " or ".join(map(repr, KINDS)))
    if spec.window_type not in WINDOW_TYPES:
        raise _field_error("window_type", spec.window_type, " or ".join(map(repr, WINDOW_TYPES)))
    if spec.sample_rate != RUNTIME_SAMPLE_RATE:
        raise _field_error("sample_rate", spec.sample_rate,
                           f"{RUNTIME_SAMPLE_RATE} (the runtime resamples all audio to {RUNTIME_SAMPLE_RATE} Hz)")
    rate = spec.sample_rate
    if not 0 < spec.window_seconds <= MAX_WINDOW_SECONDS:
        raise _field_error("window_seconds", spec.window_seconds, f"0 < window_seconds <= {MAX_WINDOW_SECONDS:g}")
    min_frame_ms = 2000.0 / rate  # a Hann window needs at least 2 samples
    if not min_frame_ms <= spec.frame_length_ms <= MAX_FRAME_MS or spec.frame_length < 2:
        raise _field_error("frame_length_ms", spec.frame_length_ms,
                           f"{min_frame_ms:g} <= frame_length_ms <= {MAX_FRAME_MS:g} (at least 2 samples at {rate} Hz)")
    if not 0 < spec.frame_shift_ms <= spec.frame_length_ms or spec.frame_shift < 1:
        raise _field_error("frame_shift_ms", spec.frame_shift_ms,
                           f"{1000.0 / rate:g} <= frame_shift_ms <= frame_length_ms ({spec.frame_length_ms:g})")
    if spec.window_samples < spec.frame_length:
        raise _field_error("window_seconds", spec.window_seconds,
                           f"at least one {spec.frame_length_ms:g} ms frame (>= {spec.frame_length / rate:g} s)")
    n_bins = spec.fft_size // 2 + 1
    if not 1 <= spec.n_mels <= min(MAX_N_MELS, n_bins):
        raise _field_error("n_mels", spec.n_mels,
                           f"1..{min(MAX_N_MELS, n_bins)} (at most the {n_bins} bins of the {spec.fft_size}-point FFT)")
    if not 0.0 <= spec.preemphasis <= 1.0:
        raise _field_error("preemphasis", spec.preemphasis, "0 <= preemphasis <= 1")
    if spec.dither != 0.0:
        raise _field_error("dither", spec.dither, "0 only (the runtime front end never dithers, so the model "
                                                  "would see other features than the spec states)")
    if not 0.0 < spec.log_floor <= 1.0:
        raise _field_error("log_floor", spec.log_floor, "0 < log_floor <= 1")
    if not abs(spec.norm_mean) <= MAX_NORM:
        raise _field_error("norm_mean", spec.norm_mean, f"-{MAX_NORM:g} <= norm_mean <= {MAX_NORM:g}")
    if not MIN_NORM_STD <= spec.norm_std <= MAX_NORM:
        raise _field_error("norm_std", spec.norm_std, f"{MIN_NORM_STD:g} <= norm_std <= {MAX_NORM:g}")
    if spec.mel_rate_hz != 0.0 and not rate <= spec.mel_rate_hz <= MAX_MEL_RATE_HZ:
        raise _field_error("mel_rate_hz", spec.mel_rate_hz,
                           f"0 (= sample_rate) or {rate} <= mel_rate_hz <= {MAX_MEL_RATE_HZ:g}")
    nyquist = 0.5 * spec.mel_layout_rate
    if not 0.0 <= spec.low_freq_hz < nyquist:
        raise _field_error("low_freq_hz", spec.low_freq_hz,
                           f"0 <= low_freq_hz < {nyquist:g} (Nyquist of the {spec.mel_layout_rate:g} Hz mel layout)")
    high = spec.high_freq_hz if spec.high_freq_hz > 0 else nyquist + spec.high_freq_hz
    if not spec.low_freq_hz < high <= nyquist:
        raise _field_error("high_freq_hz", spec.high_freq_hz,
                           f"low_freq_hz ({spec.low_freq_hz:g}) < high_freq_hz <= {nyquist:g} (Nyquist of the "
                           f"{spec.mel_layout_rate:g} Hz mel layout), or -{nyquist - spec.low_freq_hz:g} < "
                           "high_freq_hz <= 0 for Nyquist minus |high_freq_hz|")
    if spec.mel_rate_hz != 0.0 and spec.kind != "efficientat-mel":
        raise _field_error("mel_rate_hz", spec.mel_rate_hz,
                           f"0 for {spec.kind} (only efficientat-mel lays its bands out at another rate)")
    if spec.lowpass_hz != 0.0:
        if spec.kind != "efficientat-mel":
            raise _field_error("lowpass_hz", spec.lowpass_hz, f"0 for {spec.kind} (only efficientat-mel applies a low-pass)")
        if not spec.low_freq_hz < spec.lowpass_hz <= rate / 2:
            raise _field_error("lowpass_hz", spec.lowpass_hz,
                               f"0 (none) or low_freq_hz ({spec.low_freq_hz:g}) < lowpass_hz <= {rate / 2:g}")


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
