"""Sliding 8 s windows over a stream, with cyclic padding before 8 s of audio exist.

A window is emitted every ``hop`` samples once ``min_samples`` are available; until the stream
holds a full window, the audio seen so far is cyclically padded (runtime/padding.py), exactly as
training pads short cycles. A gap reported by the source restarts the window: the model never
sees two non-contiguous pieces of audio spliced together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from stethoedge.runtime.padding import cyclic_pad
from stethoedge.runtime.sources import AudioChunk


@dataclass
class Window:
    """One model window and where it sits in the stream."""

    audio: np.ndarray  # (window_samples,) float32, padded when ``available`` < window_samples
    end_sample: int  # stream position just past the window's last real sample
    available: int  # real (unpadded) samples in the window
    after_gap: bool  # the window restarted after samples were lost


class SlidingWindower:
    """Turns chunks into windows of ``window`` samples every ``hop`` samples."""

    def __init__(self, window: int, hop: int, min_samples: int) -> None:
        if not (0 < hop and 0 < min_samples <= window):
            raise ValueError(f"need 0 < hop and 0 < min_samples <= window, got {hop}, {min_samples}, {window}")
        self.window, self.hop, self.min_samples = window, hop, min_samples
        self._buffer = np.zeros(window, dtype=np.float32)  # the last ``window`` real samples, right-aligned
        self._filled = 0  # real samples in the buffer since the last (re)start
        self._position = 0  # stream position just past the last sample seen
        self._next_emit = min_samples  # value of ``_filled``-relative stream position to emit at
        self._after_gap = False
        self.gaps = 0
        self.samples_lost = 0

    def _restart(self) -> None:
        self._filled = 0
        self._next_emit = self.min_samples

    def mark_gap(self, lost: int = 0) -> None:
        """The stream lost ``lost`` samples (0: an unknown number) here: the next window restarts after it."""
        self.gaps += 1
        self.samples_lost += lost
        self._restart()
        self._after_gap = True

    def reset(self) -> None:
        """Start a new stream at position 0 (the ``gaps`` / ``samples_lost`` counters are kept)."""
        self._restart()
        self._position = 0
        self._after_gap = False

    def push(self, chunk: AudioChunk) -> Iterator[Window]:
        """Add a chunk; yield every window that became due inside it."""
        if chunk.gap_before > 0:
            self.mark_gap(chunk.gap_before)
        self._position = chunk.start_sample
        samples = np.asarray(chunk.samples, dtype=np.float32)
        offset = 0
        while offset < samples.shape[0]:
            take = min(samples.shape[0] - offset, self._next_emit - self._filled)
            piece = samples[offset : offset + take]
            self._append(piece)
            offset += take
            self._position += take
            if self._filled == self._next_emit:
                yield self._emit()
                self._next_emit += self.hop

    def _append(self, piece: np.ndarray) -> None:
        n = piece.shape[0]
        if n >= self.window:
            self._buffer[:] = piece[-self.window :]
        elif n:
            self._buffer[:-n] = self._buffer[n:]
            self._buffer[-n:] = piece
        self._filled += n

    def _emit(self) -> Window:
        available = min(self._filled, self.window)
        audio = self._buffer.copy() if available == self.window else cyclic_pad(self._buffer[-available:], self.window)
        window = Window(audio, self._position, available, self._after_gap)
        self._after_gap = False
        return window

    def flush(self) -> Window | None:
        """At the end of a stream: a last window over the tail not yet covered, else None.

        A stream shorter than ``min_samples`` still gets one (padded) decision, and the final
        seconds after the last hop are not left unclassified.
        """
        last_emit = self._next_emit - self.hop if self._filled >= self.min_samples else 0
        if self._filled > last_emit:
            window = self._emit()
            self._restart()
            return window
        return None
