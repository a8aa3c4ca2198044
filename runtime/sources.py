"""Audio sources: one interface for files, live capture and the firmware bridge.

A source yields ``AudioChunk`` objects of 16 kHz mono float32 audio in stream order. A source
that knows samples were lost (a serial sequence gap, a capture overflow) says so in
``gap_before`` instead of inventing audio; the stream engine never fills gaps silently.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

import soundfile as sf
import soxr

from stethoedge.runtime.audio_io import (CLIP_LEVEL, CLIP_WARN_FRACTION, DC_WARN_LEVEL, MAX_RATE_HZ, MIN_RATE_HZ,
                                         audio_info, check_finite, to_mono, truncation_warning)
from stethoedge.runtime.errors import AudioError


@dataclass
class AudioChunk:
    """A run of contiguous samples in a stream."""

    samples: np.ndarray  # float32, mono, 16 kHz, nominally in [-1, 1]
    start_sample: int  # stream position (in 16 kHz samples) of samples[0], counting gaps
    gap_before: int = 0  # samples known to be missing immediately before this chunk


@runtime_checkable
class AudioSource(Protocol):
    """Anything that yields 16 kHz mono chunks: files, sounddevice capture, the firmware bridge."""

    sample_rate: int
    # Optional ``live`` attribute (default True): a live source cannot wait, so when the worker
    # falls behind the engine skips windows; a non-live one (a file) gets back-pressure instead.

    def chunks(self) -> Iterator[AudioChunk]:
        """Yield chunks until the source ends (or forever, for live sources)."""
        ...

    def close(self) -> None:
        """Release devices/ports; safe to call twice."""
        ...


class FileSource:
    """Replays a file as a stream, decoded in blocks (constant memory), as fast as possible or in real time.

    The header is checked on construction (missing, empty, corrupt, unsupported rate: AudioError
    before any model loads). Blocks are read with soundfile, averaged to mono and resampled to
    16 kHz by a soxr ``ResampleStream`` (the same output as resampling the whole file at once).
    NaN/inf samples raise AudioError when reached; clipping, DC offset and a truncated file are
    collected in ``warnings`` as the stream goes.
    """

    live = False  # a file can wait for the worker: the engine applies back-pressure, drops nothing

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, chunk_seconds: float = 0.5,
                 realtime: bool = False) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.chunk_seconds = chunk_seconds
        self.realtime = realtime
        self.live = realtime
        self.info = audio_info(path)
        if not (MIN_RATE_HZ <= self.info.samplerate <= MAX_RATE_HZ):
            raise AudioError(f"{self.path}: sample rate {self.info.samplerate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
        if self.info.frames <= 0:
            raise AudioError(f"{self.path}: contains no audio samples")
        cut = truncation_warning(self.info, str(self.path))
        self.warnings: list[str] = [cut] if cut else []
        self.samples_out = 0  # 16 kHz samples delivered so far
        self._closed = False

    @property
    def duration_s(self) -> float:
        """Duration from the header, in seconds."""
        return self.info.frames / self.info.samplerate

    def chunks(self) -> Iterator[AudioChunk]:
        """Yield the decoded file in ``chunk_seconds`` pieces of 16 kHz mono float32."""
        rate_in = self.info.samplerate
        block = max(1, int(round(self.chunk_seconds * rate_in)))
        resampler = None if rate_in == self.sample_rate else soxr.ResampleStream(
            rate_in, self.sample_rate, 1, dtype="float32", quality="HQ")
        frames_read = clipped = 0
        total = 0.0
        t0 = time.monotonic()
        try:
            f = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(f"{self.path}: not a readable audio file ({exc})") from None
        with f:
            while not self._closed:
                try:
                    data = f.read(block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
                    raise AudioError(f"{self.path}: read failed after {frames_read} frames ({exc})") from None
                last = data.shape[0] < block
                if data.shape[0]:
                    check_finite(data, f"{self.path} (from frame {frames_read})")
                    clipped += int(np.count_nonzero(np.abs(data) >= CLIP_LEVEL))
                    total += float(data.sum(dtype=np.float64))
                    frames_read += data.shape[0]
                mono = to_mono(data)
                out = mono if resampler is None else resampler.resample_chunk(mono, last=last)
                if out.shape[0]:
                    if self.realtime:
                        delay = t0 + (self.samples_out + out.shape[0]) / self.sample_rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    yield AudioChunk(np.ascontiguousarray(out, dtype=np.float32), self.samples_out)
                    self.samples_out += out.shape[0]
                if last:
                    break
        self._finish_warnings(frames_read, clipped, total)

    def _finish_warnings(self, frames_read: int, clipped: int, total: float) -> None:
        values = frames_read * self.info.channels
        if values:
            if clipped / values > CLIP_WARN_FRACTION:
                self.warnings.append(f"{self.path}: {clipped / values:.1%} of samples are at full scale (clipped recording?)")
            dc = total / values
            if abs(dc) > DC_WARN_LEVEL:
                self.warnings.append(f"{self.path}: DC offset of {dc:+.3f} full scale (removed per frame by the features)")
        if self.info.frames > frames_read:
            self.warnings.append(f"{self.path}: header claims {self.info.frames} frames but only {frames_read} "
                                 "could be read (truncated file)")

    def close(self) -> None:
        """Stop a replay in progress; safe to call twice."""
        self._closed = True


class ArraySource:
    """A stream over an in-memory array (tests, benchmarks, the demo)."""

    live = False

    def __init__(self, samples: np.ndarray, sample_rate: int = 16000, chunk_seconds: float = 0.5) -> None:
        self.samples = np.asarray(samples, dtype=np.float32)
        self.sample_rate = sample_rate
        self.chunk_samples = max(1, int(round(chunk_seconds * sample_rate)))

    def chunks(self) -> Iterator[AudioChunk]:
        """Yield the array in fixed-size pieces."""
        for start in range(0, self.samples.shape[0], self.chunk_samples):
            yield AudioChunk(self.samples[start : start + self.chunk_samples], start)

    def close(self) -> None:
        """Nothing to release."""
