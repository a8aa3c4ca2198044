"""Augmentation policy of the health-acoustics study, in the waveform and the spectrogram domain.

Operations (each has both forms, so a policy works on raw cycles and on the trainer's
pre-computed feature batches):

============== ===================================== ==========================================
name           waveform (``apply_waveform``)         features (``policy(x, y)``, normalised log-mel)
============== ===================================== ==========================================
circular-shift np.roll by up to ``max_fraction``     roll along frames
time-stretch   phase vocoder (pitch kept), length    resample the frame axis, cyclic wrap/crop
               kept by cyclic wrap/crop
pitch-shift    stretch + soxr resample               re-sample the mel axis at f / factor
noise          white noise at an exact target SNR    the same noise power added in the mel domain
gain           x * 10^(dB/20)                        + 20 log10(gain) in log-power (normalised)
specaugment    (no-op)                               time and frequency masks (SpecAugment)
============== ===================================== ==========================================

``get_policy("circular-shift+time-stretch")`` composes named operations in order; presets:
``none``, ``specaugment``, ``health-acoustics`` (all of them). A policy is seeded: the same seed
and the same sequence of calls give the same output. The trainer calls ``policy(x, y)`` on
each batch (``TrainConfig.augment``); lengths and shapes never change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from scipy import signal

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec

# ------------------------------------------------------------------ waveform helpers


def _fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Crop, or repeat cyclically, to exactly ``n`` samples."""
    if len(audio) >= n:
        return audio[:n]
    return np.tile(audio, -(-n // max(1, len(audio))))[:n]


def phase_vocoder_stretch(audio: np.ndarray, rate: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Time-stretch by ``rate`` (>1 faster/shorter) keeping the pitch: STFT phase vocoder (scipy)."""
    if rate <= 0:
        raise DataError(f"time-stretch rate must be positive, got {rate}")
    if len(audio) < n_fft:
        return audio.copy()
    _, _, z = signal.stft(audio, nperseg=n_fft, noverlap=n_fft - hop, boundary="even")
    steps = np.arange(0, z.shape[1] - 1, rate)
    expected = np.linspace(0, np.pi * hop, z.shape[0])  # phase advance of each bin per hop
    phase = np.angle(z[:, 0])
    out = np.empty((z.shape[0], len(steps)), dtype=np.complex128)
    for k, s in enumerate(steps):
        i = int(s)
        frac = s - i
        mag = (1 - frac) * np.abs(z[:, i]) + frac * np.abs(z[:, i + 1])
        out[:, k] = mag * np.exp(1j * phase)
        dphi = np.angle(z[:, i + 1]) - np.angle(z[:, i]) - expected
        dphi -= 2 * np.pi * np.round(dphi / (2 * np.pi))
        phase = phase + expected + dphi
    _, y = signal.istft(out, nperseg=n_fft, noverlap=n_fft - hop, boundary=True)
    return y.astype(np.float32)


def add_noise_at_snr(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` plus white Gaussian noise scaled so that 10 log10(P_signal / P_noise) == ``snr_db`` exactly."""
    noise = rng.standard_normal(len(audio))
    p_signal, p_noise = float(np.mean(np.square(audio, dtype=np.float64))), float(np.mean(noise ** 2))
    if p_signal == 0.0:
        return audio.copy()
    return (audio + noise * math.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))).astype(np.float32)


def mel_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """Centre frequency of every mel band of ``spec`` (Kaldi mel scale)."""
    high = spec.high_freq_hz if spec.high_freq_hz > 0 else spec.sample_rate / 2 + spec.high_freq_hz
    mel = lambda f: 1127.0 * np.log1p(np.asarray(f) / 700.0)  # noqa: E731
    points = np.linspace(mel(spec.low_freq_hz), mel(high), spec.n_mels + 2)[1:-1]
    return 700.0 * np.expm1(points / 1127.0)


# ------------------------------------------------------------------ operations


@dataclass
class Op:
    """One augmentation: ``wave`` on 1-D float32 audio, ``feat`` on one (frames, mels) normalised log-mel."""

    name: str = ""

    def wave(self, audio: np.ndarray, rng: np.random.Generator, spec: FeatureSpec) -> np.ndarray:
        """Waveform form (default: unchanged)."""
        return audio

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        """Feature form (default: unchanged)."""
        return x


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


@dataclass
class CircularShift(Op):
    """Rotate the cycle in time by up to ``max_fraction`` of its length, either way."""

    name: str = "circular-shift"
    max_fraction: float = 0.5

    def wave(self, audio: np.ndarray, rng: np.random.Generator, spec: FeatureSpec) -> np.ndarray:
        k = int(rng.integers(-int(self.max_fraction * len(audio)), int(self.max_fraction * len(audio)) + 1))
        return np.roll(audio, k)

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        m = int(self.max_fraction * x.shape[0])
        return torch.roll(x, int(torch.randint(-m, m + 1, (), generator=gen)), dims=0)


@dataclass
class TimeStretch(Op):
    """Speed up or slow down by a rate in ``rates`` keeping pitch; length kept by cyclic wrap/crop."""

    name: str = "time-stretch"
    rates: tuple[float, float] = (0.8, 1.25)

    def wave(self, audio: np.ndarray, rng: np.random.Generator, spec: FeatureSpec) -> np.ndarray:
        return _fit_length(phase_vocoder_stretch(audio, float(rng.uniform(*self.rates))), len(audio))

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        rate = _uniform(gen, *self.rates)
        frames = max(2, int(round(x.shape[0] / rate)))
        y = F.interpolate(x.T[None], size=frames, mode="linear", align_corners=False)[0].T
        reps = -(-x.shape[0] // frames)
        return y.repeat(reps, 1)[: x.shape[0]]


@dataclass
class PitchShift(Op):
    """Shift the pitch by up to ``semitones`` either way, duration kept."""

    name: str = "pitch-shift"
    semitones: float = 2.0

    def wave(self, audio: np.ndarray, rng: np.random.Generator, spec: FeatureSpec) -> np.ndarray:
        factor = 2 ** (float(rng.uniform(-self.semitones, self.semitones)) / 12)
        stretched = phase_vocoder_stretch(audio, 1 / factor)  # longer by factor, same pitch
        shifted = soxr.resample(stretched, spec.sample_rate * factor, spec.sample_rate)  # back to length, pitch * factor
        return _fit_length(shifted.astype(np.float32), len(audio))

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        factor = 2 ** (_uniform(gen, -self.semitones, self.semitones) / 12)
        centres = mel_centres_hz(spec)
        source = np.interp(centres / factor, centres, np.arange(len(centres)))  # fractional band of f / factor
        lo = np.clip(np.floor(source).astype(int), 0, len(centres) - 1)
        hi = np.clip(lo + 1, 0, len(centres) - 1)
        w = torch.as_tensor(source - lo, dtype=x.dtype, device=x.device)
        return x[:, lo] * (1 - w) + x[:, hi] * w


@dataclass
class AdditiveNoise(Op):
    """White noise at an SNR drawn from ``snr_db`` (dB)."""

    name: str = "noise"
    snr_db: tuple[float, float] = (10.0, 30.0)

    def wave(self, audio: np.ndarray, rng: np.random.Generator, spec: FeatureSpec) -> np.ndarray:
        return add_noise_at_snr(audio, float(rng.uniform(*self.snr_db)), rng)

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        snr = _uniform(gen, *self.snr_db)
        power = torch.exp(x * 2 * spec.norm_std + spec.norm_mean)  # back to mel power
        noisy = power + power.mean() / 10 ** (snr / 10)
        return (torch.log(noisy) - spec.norm_mean) / (2 * spec.norm_std)


@dataclass
class Gain(Op):
    """Scale the amplitude by a gain drawn from ``db`` (dB)."""

    name: str = "gain"
    db: tuple[float, float] = (-6.0, 6.0)

    def wave(self, audio: np.ndarray, rng: np.random.Generator, spec: FeatureSpec) -> np.ndarray:
        return (audio * 10 ** (float(rng.uniform(*self.db)) / 20)).astype(np.float32)

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        log_power_gain = _uniform(gen, *self.db) / 10 * math.log(10)  # ln of the power ratio
        return x + log_power_gain / (2 * spec.norm_std)


@dataclass
class SpecAugment(Op):
    """SpecAugment (Park et al., 2019): ``n_time`` time masks up to ``time_width`` frames, ``n_freq`` up to ``freq_width`` bands."""

    name: str = "specaugment"
    n_time: int = 2
    time_width: int = 40
    n_freq: int = 2
    freq_width: int = 16
    value: float = 0.0

    def feat(self, x: torch.Tensor, gen: torch.Generator, spec: FeatureSpec) -> torch.Tensor:
        x = x.clone()
        for axis, count, width in ((0, self.n_time, self.time_width), (1, self.n_freq, self.freq_width)):
            size = x.shape[axis]
            for _ in range(count):
                w = int(torch.randint(0, min(width, size) + 1, (), generator=gen))
                start = int(torch.randint(0, size - w + 1, (), generator=gen))
                if axis == 0:
                    x[start:start + w] = self.value
                else:
                    x[:, start:start + w] = self.value
        return x


OPS: dict[str, type[Op]] = {cls.name: cls for cls in (CircularShift, TimeStretch, PitchShift, AdditiveNoise, Gain,
                                                       SpecAugment)}  # type: ignore[misc]
PRESETS: dict[str, str] = {
    "none": "",
    "circular-shift+time-stretch": "circular-shift+time-stretch",
    "specaugment": "specaugment",
    "health-acoustics": "circular-shift+time-stretch+pitch-shift+noise+gain+specaugment",
}


# ------------------------------------------------------------------ policy


@dataclass
class AugmentPolicy:
    """Operations applied in order, each with probability ``p``; seeded."""

    ops: list[Op]
    p: float = 0.5
    seed: int = 0
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    name: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise DataError(f"augmentation probability must be in [0, 1], got {self.p}")
        self._gen = torch.Generator().manual_seed(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Restart the random stream (at ``seed``, default the policy's)."""
        self._gen = torch.Generator().manual_seed(self.seed if seed is None else seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a batch of normalised log-mels (batch, frames, mels) or one (frames, mels); labels unused."""
        if x.dim() not in (2, 3):
            raise DataError(f"augmentation expects (frames, mels) or (batch, frames, mels), got {tuple(x.shape)}")
        if not self.ops:
            return x
        single = x.dim() == 2
        batch = x[None] if single else x
        out = []
        for sample in batch:
            for op in self.ops:
                if float(torch.rand((), generator=self._gen)) < self.p:
                    sample = op.feat(sample, self._gen, self.spec)
            out.append(sample)
        result = torch.stack(out)
        return result[0] if single else result

    def apply_waveform(self, audio: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Augment one 1-D waveform (same length out); ``rng`` (or the policy seed) makes it repeatable."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0 or not np.isfinite(audio).all():
            raise DataError(f"augmentation expects finite 1-D audio, got shape {audio.shape}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(self.seed if rng is None else rng)
        for op in self.ops:
            if rng.random() < self.p:
                audio = np.asarray(op.wave(audio, rng, self.spec), dtype=np.float32)
        return audio


def get_policy(name: str, seed: int = 0, p: float = 0.5, spec: FeatureSpec | None = None) -> AugmentPolicy:
    """A named preset or a ``+``-joined list of operation names (e.g. ``"circular-shift+time-stretch"``)."""
    recipe = PRESETS.get(name, name)
    names = [n for n in recipe.split("+") if n]
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise DataError(f"unknown augmentation {', '.join(unknown)}; presets: {', '.join(PRESETS)}; "
                        f"operations: {', '.join(OPS)} (join with +)")
    return AugmentPolicy([OPS[n]() for n in names], p=p, seed=seed, spec=spec or FeatureSpec(), name=name)
