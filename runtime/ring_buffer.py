"""A bounded single-producer / single-consumer ring of float32 samples.

The producer (a capture callback or a pump thread) only copies into a preallocated array and
advances a counter; it never waits on the consumer unless asked to (file replay). The consumer
(the stream worker) copies out what is there. Each side writes only its own counter, and a
Python int assignment is atomic, so no lock is held across a copy. When the ring is full, a live
producer's samples are dropped and counted as an overflow, and the loss is handed to the
consumer as a gap (``AudioChunk.gap_before``): audio is never spliced across a hole.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from stethoedge.runtime.sources import AudioChunk


@dataclass
class RingStats:
    """Counters of one ring buffer."""

    written: int = 0  # samples accepted
    overflows: int = 0  # writes that did not fit (whole or in part)
    samples_dropped: int = 0  # samples refused because the ring was full
    underflows: int = 0  # reads that found the ring empty
    high_water: int = 0  # most samples ever waiting


class SampleRing:
    """Fixed-capacity ring; ``write`` from one thread, ``read`` from another."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self._head = 0  # total samples written (producer-owned)
        self._tail = 0  # total samples read (consumer-owned)
        self._stream_of_head = 0  # stream position of the next sample written (producer-owned)
        self._marks: deque[tuple[int, int, int]] = deque()  # (ring index, stream position, gap before)
        self._pending_gap = 0  # samples lost since the last accepted write (producer-owned)
        self._readable = threading.Event()
        self._space = threading.Event()
        self._space.set()
        self.closed = False
        self.stats = RingStats()

    def __len__(self) -> int:
        return self._head - self._tail

    def write(self, samples: np.ndarray, start_sample: int | None = None, gap_before: int = 0,
              block: bool = False, timeout: float | None = None) -> int:
        """Copy ``samples`` in; return how many were accepted.

        ``start_sample``: the stream position of ``samples[0]`` (default: right after the last
        write, plus any gap). ``block``: wait for room (file replay) instead of dropping (live).
        """
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = samples.shape[0]
        if start_sample is None:
            start_sample = self._stream_of_head + gap_before
        if block and n > self.capacity // 2:  # wait for room piece by piece
            step = max(1, self.capacity // 2)
            done = 0
            for i in range(0, n, step):
                done += self.write(samples[i : i + step], start_sample + i, gap_before if i == 0 else 0, True, timeout)
            return done
        if block:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.capacity - len(self) < n and not self.closed:
                self._space.clear()
                if self.capacity - len(self) >= n:
                    break
                self._space.wait(0.1)
                if deadline is not None and time.monotonic() > deadline:
                    break
        free = self.capacity - len(self)
        take = min(n, free)
        if take < n:
            self.stats.overflows += 1
            self.stats.samples_dropped += n - take
        if take == 0:
            self._pending_gap += gap_before + n
            self._stream_of_head = start_sample + n
            return 0
        gap = gap_before + self._pending_gap
        if gap or start_sample != self._stream_of_head or self._head == 0:
            self._marks.append((self._head, start_sample, gap))
        self._pending_gap = n - take
        self._copy_in(samples[:take])
        self._stream_of_head = start_sample + n  # dropped samples still advance stream time
        self._head += take
        self.stats.written += take
        self.stats.high_water = max(self.stats.high_water, len(self))
        self._readable.set()
        return take

    def _copy_in(self, samples: np.ndarray) -> None:
        pos = self._head % self.capacity
        first = min(samples.shape[0], self.capacity - pos)
        self._data[pos : pos + first] = samples[:first]
        self._data[: samples.shape[0] - first] = samples[first:]

    def read(self, timeout: float | None = None) -> list[AudioChunk]:
        """Everything waiting, as chunks split at gaps; [] after ``timeout`` seconds of nothing."""
        if len(self) == 0:
            self.stats.underflows += 1
            self._readable.clear()
            if len(self) == 0 and not self.closed:
                self._readable.wait(timeout)
            if len(self) == 0:
                return []
        head = self._head
        out: list[AudioChunk] = []
        while self._tail < head:
            start_idx, stream_pos, gap = self._current_mark()
            nxt = self._marks[1][0] if len(self._marks) > 1 and self._marks[1][0] <= head else head
            if nxt <= self._tail:
                self._marks.popleft()
                continue
            samples = self._copy_out(self._tail, nxt - self._tail)
            out.append(AudioChunk(samples, stream_pos + (self._tail - start_idx),
                                  gap if self._tail == start_idx else 0))
            self._tail = nxt
            self._space.set()
            if len(self._marks) > 1 and self._marks[1][0] <= self._tail:
                self._marks.popleft()
        return out

    def _current_mark(self) -> tuple[int, int, int]:
        while len(self._marks) > 1 and self._marks[1][0] <= self._tail:
            self._marks.popleft()
        return self._marks[0]

    def _copy_out(self, index: int, n: int) -> np.ndarray:
        pos = index % self.capacity
        first = min(n, self.capacity - pos)
        return np.concatenate([self._data[pos : pos + first], self._data[: n - first]])

    def close(self) -> None:
        """Wake a waiting reader or writer; the producer is done."""
        self.closed = True
        self._readable.set()
        self._space.set()
