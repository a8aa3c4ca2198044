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
                                         check_finite, choose_downmix, decode_error_warning, gram_matrix,
                                         open_input, read_block, short_read_warning, silence_warning, to_mono,
                                         truncation_warning)
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
    """Replays a recording as a stream, decoded in blocks (constant memory), as fast as possible or in real time.

    ``path`` is a file in any format libsndfile decodes, or ``-`` for standard input (read whole
    into memory, at most ``STDIN_MAX_BYTES``). The header is checked on construction (missing,
    empty, corrupt, unsupported rate: AudioError before any model loads). Blocks are read with
    libsndfile, mixed to mono and resampled to 16 kHz by a soxr ``ResampleStream`` (the same
    output as resampling the whole file at once). A multi-channel file is first scanned once to
    choose the mix (``choose_downmix``: no channel's signal is averaged away). NaN/inf samples raise
    AudioError when reached; clipping, DC offset, digital silence, a truncated file, a repaired
    header and a channel left out of the mix are collected in ``warnings``.
    """

    live = False  # a file can wait for the worker: the engine applies back-pressure, drops nothing

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, chunk_seconds: float = 0.5,
                 realtime: bool = False) -> None:
        self.input = open_input(path)
        self.path = Path(self.input.name)
        self.sample_rate = sample_rate
        self.chunk_seconds = chunk_seconds
        self.realtime = realtime
        self.live = realtime
        self.info = self.input.info
        if not (MIN_RATE_HZ <= self.info.samplerate <= MAX_RATE_HZ):
            raise AudioError(f"{self.path}: sample rate {self.info.samplerate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
        if self.info.frames <= 0:
            raise AudioError(f"{self.path}: contains no audio samples")
        self.warnings: list[str] = list(self.input.warnings)
        cut = truncation_warning(self.info, str(self.path))
        if cut:
            self.warnings.append(cut)
        self.mix_weights: np.ndarray | None = None  # None: the average of the channels
        self.decode_error: str | None = None  # the warning when the decoder gave up part-way
        self._silence_known = False
        if self.info.channels > 1:
            self._choose_mix()
        self.samples_out = 0  # 16 kHz samples delivered so far
        self._closed = False

    @property
    def duration_s(self) -> float:
        """Duration from the header, in seconds."""
        return self.info.frames / self.info.samplerate

    def _blocks(self) -> Iterator[tuple[int, np.ndarray, bool]]:
        """(first frame, block, is the last) of the decoded file in ``chunk_seconds`` blocks.

        A decoder that gives up part-way (a cut or damaged FLAC/MP3/Ogg stream) ends the file there,
        with a warning; one that decodes nothing at all is an AudioError."""
        block = max(1, int(round(self.chunk_seconds * self.info.samplerate)))
        frames_read = 0
        with self.input.open() as f:
            while True:
                try:
                    data, error = read_block(f, block)
                except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
                    data, error = np.zeros((0, self.info.channels), np.float32), str(exc)
                if error and not frames_read + data.shape[0]:
                    raise AudioError(f"{self.path}: not a readable audio file ({error})")
                if error:
                    self.decode_error = decode_error_warning(str(self.path), frames_read + data.shape[0], error)
                last = bool(error) or data.shape[0] < block
                yield frames_read, data, last
                frames_read += data.shape[0]
                if last:
                    return

    def _choose_mix(self) -> None:
        """Scan a multi-channel file once: the channels' Gram matrix decides the mix, the peak says silence."""
        gram = np.zeros((self.info.channels, self.info.channels))
        peak = 0.0
        for start, data, _ in self._blocks():
            if data.shape[0]:
                check_finite(data, f"{self.path} (from frame {start})")
                gram += gram_matrix(data)
                peak = max(peak, float(np.max(np.abs(data))))
        self.decode_error = None  # the stream reports it again when it reaches it
        self.mix_weights, why = choose_downmix(gram, str(self.path))
        if why:
            self.warnings.append(why)
        silent = silence_warning(peak, str(self.path))
        if silent:
            self.warnings.append(silent)
        self._silence_known = True

    def chunks(self) -> Iterator[AudioChunk]:
        """Yield the decoded file in ``chunk_seconds`` pieces of 16 kHz mono float32."""
        rate_in = self.info.samplerate
        resampler = None if rate_in == self.sample_rate else soxr.ResampleStream(
            rate_in, self.sample_rate, 1, dtype="float32", quality="HQ")
        frames_read = clipped = 0
        total = peak = 0.0
        t0 = time.monotonic()
        blocks = self._blocks()
        try:
            for start, data, last in blocks:
                if self._closed:
                    break
                if data.shape[0]:
                    check_finite(data, f"{self.path} (from frame {start})")
                    magnitude = np.abs(data)
                    clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))
                    peak = max(peak, float(magnitude.max()))
                    total += float(data.sum(dtype=np.float64))
                    frames_read += data.shape[0]
                mono = to_mono(data, self.mix_weights)
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
        finally:
            blocks.close()
        if not self._closed:
            self._finish_warnings(frames_read, clipped, total, peak)

    def _finish_warnings(self, frames_read: int, clipped: int, total: float, peak: float) -> None:
        values = frames_read * self.info.channels
        if values:
            if clipped / values > CLIP_WARN_FRACTION:
                self.warnings.append(f"{self.path}: {clipped / values:.1%} of samples are at full scale (clipped recording?)")
            dc = total / values
            if abs(dc) > DC_WARN_LEVEL:
                self.warnings.append(f"{self.path}: DC offset of {dc:+.3f} full scale (removed per frame by the features)")
            silent = None if self._silence_known else silence_warning(peak, str(self.path))
            if silent:
                self.warnings.append(silent)
        short = self.decode_error or short_read_warning(self.info, frames_read, str(self.path))
        if short:
            self.warnings.append(short)

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
