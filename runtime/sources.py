"""Audio sources: one interface for files, live capture and the firmware bridge.

A source yields ``AudioChunk`` objects of 16 kHz mono float32 audio in stream order. A source
that knows samples were lost (a serial sequence gap, a capture overflow) says so in
``gap_before`` instead of inventing audio; the stream engine never fills gaps silently.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from stethoedge.runtime.audio_io import load_audio


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

    def chunks(self) -> Iterator[AudioChunk]:
        """Yield chunks until the source ends (or forever, for live sources)."""
        ...

    def close(self) -> None:
        """Release devices/ports; safe to call twice."""
        ...


class FileSource:
    """Replays a file as a stream, as fast as possible or in real time."""

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, chunk_seconds: float = 0.5,
                 realtime: bool = False) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.chunk_samples = max(1, int(round(chunk_seconds * sample_rate)))
        self.realtime = realtime
        self.audio = load_audio(path, sample_rate)

    def chunks(self) -> Iterator[AudioChunk]:
        """Yield the decoded file in ``chunk_seconds`` pieces."""
        samples = self.audio.samples
        t0 = time.monotonic()
        for start in range(0, samples.shape[0], self.chunk_samples):
            if self.realtime:
                delay = t0 + start / self.sample_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield AudioChunk(samples[start : start + self.chunk_samples], start)

    def close(self) -> None:
        """Nothing to release for a decoded file."""


class ArraySource:
    """A stream over an in-memory array (tests, benchmarks, the demo)."""

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
