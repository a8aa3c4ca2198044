"""The stream engine: source -> (capture thread -> bounded ring) -> worker -> streaming core -> decisions.

A threaded driver over ``StreamingClassifier`` (runtime/streaming.py), which does the windowing,
incremental features, inference, calibrated/quality-gated decision and smoothing without threads.
For a live source (sound card, firmware bridge, real-time replay) a pump thread pulls the source
and only copies its chunks into a ``SampleRing``; it never waits for inference. The worker drains
the ring, records the raw audio and pushes it into the core. When inference falls behind (several
windows due at once), only the newest window is classified and the others are counted as
skipped: capture is never dropped for it. A non-live source (a file) is read on the worker's own
thread, so it is decoded only as fast as the model keeps up and nothing is skipped. ``classify``
and ``listen`` both run through ``StreamEngine.run``.

Abstentions (``"poor_quality"``, ``"uncertain"``) are counted in ``StreamStats`` (``abstained``,
``poor_quality``, ``uncertain``) and still yield a record. ``Decision``, ``decide`` and
``window_warnings`` live in runtime/results.py and are re-exported here.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.results import POOR_QUALITY, UNCERTAIN, Decision, WindowResult, decide, window_warnings
from stethoedge.runtime.ring_buffer import SampleRing
from stethoedge.runtime.smoothing import SmoothingConfig
from stethoedge.runtime.sources import AudioChunk, AudioSource
from stethoedge.runtime.streaming import MIN_AUDIO_SECONDS, StreamingClassifier, StreamingStats

if TYPE_CHECKING:
    from stethoedge.runtime.recorder import RotatingRecorder

__all__ = ["StreamEngine", "StreamConfig", "StreamStats", "MIN_AUDIO_SECONDS", "Decision", "decide",
           "window_warnings", "POOR_QUALITY", "UNCERTAIN"]


class StreamingFactory(Protocol):
    """What ``StreamEngine`` runs: anything that makes a streaming core (``Classifier`` does)."""

    def streaming(self, hop_s: float = 2.0, min_s: float = 2.0, smoothing: SmoothingConfig | None = None, *,
                  incremental: bool = True, max_backend_errors: int = 3,
                  stats: Any | None = None) -> StreamingClassifier: ...


@dataclass
class StreamConfig:
    """Windowing, smoothing and buffering of one stream."""

    hop_s: float = 2.0
    min_s: float = 2.0  # first decision after this much audio (cyclically padded to 8 s)
    smoothing: SmoothingConfig = field(default_factory=lambda: SmoothingConfig("mean", 3))
    incremental: bool = True  # reuse the fbank frames of the overlap between windows
    max_lag_s: float = 8.0  # live: a window whose end is this far behind the newest audio is skipped
    ring_seconds: float = 30.0  # capture buffer between the pump thread and the worker
    threaded: bool | None = None  # None: a pump thread for live sources only
    max_backend_errors: int = 3  # consecutive backend failures tolerated (window skipped, counted) before giving up


#: The order of the counters in ``StreamStats.as_dict`` (the ``listen`` summary line).
_COUNTER_ORDER = ("samples_in", "windows", "windows_skipped", "gaps", "samples_lost", "ring_overflows",
                  "ring_samples_dropped", "ring_underflows", "ring_high_water", "backend_errors", "abstained",
                  "poor_quality", "uncertain", "frames_computed", "frames_reused")


@dataclass
class StreamStats(StreamingStats):
    """Counters of one run, printed when ``listen`` stops: the core's (runtime/streaming.py) and the driver's."""

    windows_skipped: int = 0  # windows not classified because inference was behind
    ring_overflows: int = 0
    ring_samples_dropped: int = 0
    ring_underflows: int = 0
    ring_high_water: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain counters (no latency samples) plus the latency percentiles."""
        d = super().as_dict()
        return {k: d[k] for k in (*_COUNTER_ORDER, *d)}


class StreamEngine:
    """Runs a Classifier (anything with ``streaming``, see ``StreamingFactory``) over any AudioSource."""

    def __init__(self, classifier: StreamingFactory, config: StreamConfig | None = None,
                 recorder: RotatingRecorder | None = None) -> None:
        self.clf = classifier
        self.config = config or StreamConfig()
        self.recorder = recorder
        self.stats = StreamStats()
        self._stop = threading.Event()
        if self.config.hop_s <= 0:
            raise ValueError(f"hop must be positive, got {self.config.hop_s} s")

    def stop(self) -> None:
        """Ask ``run`` to finish after the current window (thread-safe)."""
        self._stop.set()

    def run(self, source: AudioSource) -> Iterator[WindowResult]:
        """Yield one WindowResult per classified window until the source ends or ``stop()``.

        The caller owns ``source`` and closes it: the engine closes it only to stop a capture thread early
        (``stop()``, an error, the results no longer wanted), never merely because the source ended."""
        cfg = self.config
        core = self.clf.streaming(cfg.hop_s, cfg.min_s, cfg.smoothing, incremental=cfg.incremental,
                                  max_backend_errors=cfg.max_backend_errors, stats=self.stats)
        rate = core.sample_rate
        if source.sample_rate != rate:
            raise AudioError(f"source delivers {source.sample_rate} Hz audio; the model needs {rate} Hz")
        live = bool(getattr(source, "live", True))
        threaded = live if cfg.threaded is None else cfg.threaded
        # The newest due window always ends less than a hop before the newest audio: never skipped.
        max_lag = int(round(max(cfg.max_lag_s, cfg.hop_s) * rate))
        batches = self._threaded_batches(source, live) if threaded else ([c] for c in source.chunks())
        try:
            for batch in batches:
                newest = batch[-1].start_sample + batch[-1].samples.shape[0] if batch else 0
                skipped = 0
                for chunk in batch:
                    if self.recorder is not None:
                        self.recorder.write(chunk.samples, chunk.start_sample, chunk.gap_before)
                    for window in core.push(chunk):  # lazily: one window copy alive at a time
                        if live and newest - window.end_sample > max_lag:  # too late to matter: count it
                            skipped += 1
                            self.stats.windows_skipped += 1
                            continue
                        result = core.classify_window(window, skipped)
                        if result is None:
                            continue
                        yield result
                        skipped = 0
                if self._stop.is_set():
                    break
            else:
                where = getattr(source, "path", None)  # a file names itself in the message
                yield from core.flush(require_decision=True, name=None if where is None else str(where))
        finally:
            batches.close()  # stops the capture thread (threaded) or the source's generator, now

    def _threaded_batches(self, source: AudioSource, live: bool) -> Iterator[list[AudioChunk]]:
        """Pump ``source`` into a ring on a thread; yield what the ring holds each time the worker asks."""
        ring = SampleRing(max(1, int(self.config.ring_seconds * source.sample_rate)))
        failure: list[BaseException] = []
        pump_done = threading.Event()  # the pump has left source.chunks() (end of stream, an error or stop())

        def pump() -> None:
            try:
                for chunk in source.chunks():
                    ring.write(chunk.samples, chunk.start_sample, chunk.gap_before, block=not live)
                    if self._stop.is_set() or ring.closed:
                        break
            except BaseException as exc:  # handed to the worker, raised there
                failure.append(exc)
            finally:
                pump_done.set()  # before the worker can see the ring closed
                ring.closed = True
                ring.close()

        thread = threading.Thread(target=pump, name="stethoedge-capture", daemon=True)
        thread.start()
        try:
            while True:
                chunks = ring.read(timeout=0.2)
                if chunks:
                    yield chunks
                elif ring.closed and len(ring) == 0:
                    break
                if self._stop.is_set():
                    break
            if failure:
                raise failure[0]
        finally:
            ring.close()
            # Close the source only to interrupt a pump still inside source.chunks() (stop(), an error in the
            # worker, the consumer gone). At the end of the stream it stays open: the last (flushed) windows are yielded
            # after this, and a sink may still write to it (the bridge's RESULT frames); its owner closes it.
            if not pump_done.is_set():
                source.close()
            thread.join(timeout=5.0)
            s = ring.stats
            self.stats.ring_overflows, self.stats.ring_samples_dropped = s.overflows, s.samples_dropped
            self.stats.ring_underflows, self.stats.ring_high_water = s.underflows, s.high_water
