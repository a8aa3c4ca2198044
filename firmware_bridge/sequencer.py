"""From AUDIO frames in arrival order to a gap-annotated 16 kHz stream.

``AudioSequencer`` decides for each AUDIO frame whether it continues the stream, follows a gap,
repeats audio already delivered (duplicate or late/reordered frame: dropped and counted), or
starts a new stream (device restart: HELLO, a jump backwards, a change of rate). It places
frames on the host's stream clock (16 kHz samples, gaps counted) and never invents audio: a
gap is reported through ``AudioChunk.gap_before``, never filled.

Device sample indices are u32 and sequence numbers u16; both are compared modulo their range,
so a stream survives the wrap-around (74.6 h of samples at 16 kHz; 17 min of seq at 62.5 fps).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from stethoedge.firmware_bridge.messages import Audio
from stethoedge.firmware_bridge.protocol import SAMPLE_INDEX_MODULUS, SEQ_MODULUS
from stethoedge.runtime.sources import AudioChunk

#: Frames whose audio lies at most this far (seconds) behind the stream are "late"; further
#: back means the device restarted its sample counter.
LATE_WINDOW_S = 5.0
#: Remembered (seq, sample_index) pairs for telling duplicates from late frames.
HISTORY = 256


def _signed(diff: int, modulus: int) -> int:
    diff %= modulus
    return diff - modulus if diff >= modulus // 2 else diff


@dataclass
class StreamStats:
    """Stream-level counters (sample counts in output-rate samples unless named otherwise)."""

    audio_frames: int = 0  # AUDIO frames delivered (wholly or in part)
    samples: int = 0  # samples delivered
    gaps: int = 0  # discontinuities reported through gap_before
    samples_lost: int = 0  # sum of gap_before over all delivered chunks
    frames_lost: int = 0  # frames never received, from holes in the sequence numbers
    duplicates: int = 0  # exact repeats of a frame already delivered (dropped)
    late_frames: int = 0  # frames that arrived after later audio had been delivered (dropped)
    overlap_samples: int = 0  # device samples trimmed because they overlapped delivered audio
    restarts: int = 0  # new device streams (HELLO, sample counter jumped back, rate change)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Resampler:
    """Streaming band-limited resampler (soxr, HQ) so frame edges leave no transients."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        import soxr

        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        return self._stream.resample_chunk(samples, last=last)


class AudioSequencer:
    """Turns (seq, Audio, arrival time) into AudioChunks on a ``out_rate`` stream clock."""

    def __init__(self, out_rate: int = 16000, late_window_s: float = LATE_WINDOW_S) -> None:
        self.out_rate = out_rate
        self.late_window_s = late_window_s
        self.stats = StreamStats()
        self._pos = 0  # output-stream position of the next delivered sample
        self._next_index: int | None = None  # device sample index expected next (None: no stream)
        self._rate: int | None = None
        self._last_seq: int | None = None
        self._missing_seqs: OrderedDict[int, None] = OrderedDict()
        self._delivered: OrderedDict[tuple[int, int], None] = OrderedDict()  # (seq, sample_index)
        self._pending_gap = 0  # output samples of gap not yet attached to a chunk
        self._resampler: _Resampler | None = None
        self._restart_pending = False
        self._last_arrival: float | None = None

    @property
    def position(self) -> int:
        """Output-stream position after everything delivered so far (gaps included)."""
        return self._pos + self._pending_gap

    def note_seq(self, seq: int) -> None:
        """Account for the sequence number of every frame received (any type)."""
        if self._last_seq is None:
            self._last_seq = seq
            return
        d = _signed(seq - self._last_seq, SEQ_MODULUS)
        if d > 0:
            for k in range(1, d):
                self._missing_seqs[(self._last_seq + k) % SEQ_MODULUS] = None
            self.stats.frames_lost += d - 1
            while len(self._missing_seqs) > HISTORY:
                self._missing_seqs.popitem(last=False)
            self._last_seq = seq
        elif d < 0 and seq in self._missing_seqs:
            # It was late, not lost (its audio may still be dropped as late).
            del self._missing_seqs[seq]
            self.stats.frames_lost -= 1

    def restart(self) -> None:
        """The device restarted (HELLO): the next AUDIO frame starts a new device stream."""
        if self._next_index is not None:
            self._restart_pending = True
        self._last_seq = None
        self._missing_seqs.clear()
        self._delivered.clear()  # the device's seq and sample counters start over

    def push(self, seq: int, msg: Audio, arrival: float | None = None) -> list[AudioChunk]:
        """Place one AUDIO frame; return the chunks it completes (zero, one or two)."""
        arrival = time.monotonic() if arrival is None else arrival
        out: list[AudioChunk] = []
        n = msg.n_samples
        if self._next_index is None:
            self._begin(msg, arrival, out, restart=False)
        elif self._restart_pending or msg.sample_rate != self._rate:
            if (seq, msg.sample_index) in self._delivered:  # e.g. a repeated LAST frame
                self.stats.duplicates += 1
                return out
            self._begin(msg, arrival, out, restart=True)
        else:
            d = _signed(msg.sample_index - self._next_index, SAMPLE_INDEX_MODULUS)
            if d < 0 and d + n <= 0:
                # Entirely audio we already delivered (or skipped past).
                key = (seq, msg.sample_index)
                if -d > self.late_window_s * msg.sample_rate:
                    self._begin(msg, arrival, out, restart=True)
                elif key in self._delivered:
                    self.stats.duplicates += 1
                    return out
                else:
                    self.stats.late_frames += 1
                    return out
            elif d > 0:
                self._add_gap(d * self.out_rate / self._rate, out)
        skip = 0
        if self._next_index is not None:
            d = _signed(msg.sample_index - self._next_index, SAMPLE_INDEX_MODULUS)
            if d < 0:  # partial overlap with delivered audio: keep only the new part
                skip = -d
                self.stats.overlap_samples += skip
        self._remember(seq, msg.sample_index)
        samples = msg.float32()[skip:]
        self._next_index = (msg.sample_index + n) % SAMPLE_INDEX_MODULUS
        self._last_arrival = arrival
        self.stats.audio_frames += 1
        if self._rate != self.out_rate:
            if self._resampler is None:  # new stream, or the previous run ended at a gap
                self._resampler = _Resampler(self._rate, self.out_rate)
            samples = self._resampler.push(samples, last=msg.last)
            if msg.last:
                self._resampler = None
        self._emit(samples, out)
        if msg.last:
            self.end()
        return out

    def end(self) -> None:
        """The device ended its stream (LAST flag): the next frame starts a new one."""
        if self._next_index is not None:
            self._restart_pending = True

    def flush(self) -> list[AudioChunk]:
        """Drain the resampler's delayed samples (before a discontinuity or at the end)."""
        out: list[AudioChunk] = []
        if self._resampler is not None:
            tail = self._resampler.push(np.zeros(0, dtype=np.float32), last=True)
            self._resampler = None
            self._emit(tail, out)
        return out

    # -- internals -----------------------------------------------------------------------
    def _begin(self, msg: Audio, arrival: float, out: list[AudioChunk], restart: bool) -> None:
        """Start a device stream at ``msg``; after a restart, estimate the gap from host time."""
        out.extend(self.flush())
        if restart:
            self.stats.restarts += 1
            # The device's counter is no help across a restart; the host clock is. At least one
            # sample is reported so consumers see the discontinuity.
            elapsed = 0.0 if self._last_arrival is None else arrival - self._last_arrival
            frame_out = msg.n_samples * self.out_rate / msg.sample_rate
            self._add_gap(max(1.0, elapsed * self.out_rate - frame_out), out)
        self._rate = msg.sample_rate
        self._next_index = msg.sample_index
        self._restart_pending = False
        self._delivered.clear()

    def _add_gap(self, gap_out: float, out: list[AudioChunk]) -> None:
        out.extend(self.flush())
        gap = max(1, int(round(gap_out)))
        self._pending_gap += gap

    def _remember(self, seq: int, sample_index: int) -> None:
        self._delivered[(seq, sample_index)] = None
        if len(self._delivered) > HISTORY:
            self._delivered.popitem(last=False)

    def _emit(self, samples: np.ndarray, out: list[AudioChunk]) -> None:
        if samples.shape[0] == 0:
            return
        gap = self._pending_gap
        if gap:
            self._pos += gap
            self._pending_gap = 0
            self.stats.gaps += 1
            self.stats.samples_lost += gap
        out.append(AudioChunk(samples, self._pos, gap))
        self._pos += samples.shape[0]
        self.stats.samples += samples.shape[0]
