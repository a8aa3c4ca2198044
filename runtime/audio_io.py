"""Reading the WAV files users actually have, into 16 kHz mono float32.

Any PCM (8/16/24/32-bit int) or float WAV, mono or multi-channel (averaged), 4-192 kHz
(resampled with soxr's anti-aliasing resampler). Anything unusable raises ``AudioError``
with one line that says what is wrong; clipping and DC offset only warn.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from stethoedge.runtime.errors import AudioError

log = logging.getLogger("stethoedge.audio")

MIN_RATE_HZ = 4000
MAX_RATE_HZ = 192000
CLIP_LEVEL = 0.999
CLIP_WARN_FRACTION = 0.001
DC_WARN_LEVEL = 0.05


@dataclass
class LoadedAudio:
    """Decoded audio plus what was done to it."""

    samples: np.ndarray  # float32, mono, at ``sample_rate``
    sample_rate: int
    source_rate: int
    source_channels: int
    source_subtype: str
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return self.samples.shape[0] / self.sample_rate


def _open_error(path: Path, exc: Exception) -> AudioError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return AudioError(f"{path}: not a readable audio file ({message})")


def check_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it names a readable regular file, else raise AudioError."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    return p


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Header information (rate, channels, frames, subtype) or AudioError."""
    p = check_path(path)
    try:
        return sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _open_error(p, exc) from None


def truncation_warning(info: sf._SoundFileInfo, where: str) -> str | None:
    """A warning when the header claims more audio data than the file holds (a copy cut short).

    libsndfile then sizes the data chunk from the file length (so ``info.frames`` looks fine) and
    only notes ``data : CLAIMED (should be ACTUAL)`` in its log; this reads that note.
    """
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", getattr(info, "extra_info", "") or "", re.M)
    if m is None or int(m.group(1)) <= int(m.group(2)):
        return None
    return (f"{where}: header claims {int(m.group(1))} bytes of audio but the file holds {int(m.group(2))} "
            "(truncated file); classifying what is there")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels of a (frames, channels) array to mono float32."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); identity when the rates match."""
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), source_rate, target_rate, quality="HQ")


def check_finite(samples: np.ndarray, where: str) -> None:
    """Raise AudioError if any sample is NaN or infinite."""
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1) if bad.ndim == 2 else bad))
        raise AudioError(f"{where}: {int(bad.sum())} samples are NaN or infinite (first at sample {first})")


def quality_warnings(samples: np.ndarray, where: str) -> list[str]:
    """Warnings for clipped or DC-offset audio (the classifier still runs; the user should know)."""
    out = []
    if samples.size:
        clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
        if clipped > CLIP_WARN_FRACTION:
            out.append(f"{where}: {clipped:.1%} of samples are at full scale (clipped recording?)")
        dc = float(np.mean(samples))
        if abs(dc) > DC_WARN_LEVEL:
            out.append(f"{where}: DC offset of {dc:+.3f} full scale (removed per frame by the features)")
    return out


def load_audio(path: str | os.PathLike, target_rate: int = 16000) -> LoadedAudio:
    """Decode a WAV (or any libsndfile format) to mono float32 at ``target_rate``.

    Raises AudioError for a missing/empty/corrupt file, no samples, a rate outside
    4-192 kHz, or NaN/inf samples. Clipping and DC offset are reported in ``warnings``.
    """
    info = audio_info(path)
    p = Path(path)
    if not (MIN_RATE_HZ <= info.samplerate <= MAX_RATE_HZ):
        raise AudioError(f"{p}: sample rate {info.samplerate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as exc:
        raise _open_error(p, exc) from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no audio samples")
    check_finite(data, str(p))
    warnings = quality_warnings(data, str(p))
    cut = truncation_warning(info, str(p))
    if cut:
        warnings.append(cut)
    if info.frames > data.shape[0]:
        warnings.append(f"{p}: header claims {info.frames} frames but only {data.shape[0]} could be read (truncated file)")
    mono = resample(to_mono(data), rate, target_rate)
    for w in warnings:
        log.warning(w)
    return LoadedAudio(mono, target_rate, rate, info.channels, info.subtype, warnings)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write mono audio atomically (temporary file, then rename), so no half-written WAV is left."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        sf.write(str(tmp), np.asarray(samples, dtype=np.float32), sample_rate, subtype=subtype, format="WAV")
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
