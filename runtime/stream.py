"""The stream engine: source -> (capture thread -> bounded ring) -> worker -> decisions.

For a live source (sound card, firmware bridge, real-time replay) a pump thread pulls the
source and only copies its chunks into a ``SampleRing``; it never waits for inference. The
worker drains the ring, records the raw audio, cuts 8 s windows every hop, computes features
incrementally and runs the backend. When inference falls behind (several windows due at once),
only the newest window is classified and the others are counted as skipped: capture is never
dropped for it. A non-live source (a file) is read on the worker's own thread, so it is
decoded only as fast as the model keeps up and nothing is skipped. ``classify`` and ``listen``
both run through ``StreamEngine.run``.

Every window's decision goes through ``decide`` (whatever the backend): probabilities calibrated
with the bundle's temperature, its signal-quality gate, and abstention. A rejected window is
labelled ``"poor_quality"`` and is NOT fed to the decision smoother (its smoothed label repeats the
last usable one); a window below ``abstain_below`` is labelled ``"uncertain"`` and still feeds the
smoother. Both are counted in ``StreamStats`` (``abstained``, ``poor_quality``, ``uncertain``) and
still yield a record.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

import logging

from stethoedge.runtime.audio_io import SILENCE_PEAK
from stethoedge.runtime.errors import AudioError, BackendError
from stethoedge.runtime.incremental_features import IncrementalFeatures
from stethoedge.runtime.ring_buffer import SampleRing
from stethoedge.runtime.smoothing import DecisionSmoother, SmoothingConfig
from stethoedge.runtime.sources import AudioChunk, AudioSource
from stethoedge.runtime.windowing import SlidingWindower, Window

if TYPE_CHECKING:
    from stethoedge.runtime.engine import Classifier, WindowResult
    from stethoedge.runtime.recorder import RotatingRecorder

log = logging.getLogger("stethoedge.stream")

#: Shortest audio worth a decision: a quarter second (no respiratory phase is shorter).
MIN_AUDIO_SECONDS = 0.25


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


@dataclass
class StreamStats:
    """Counters of one run, printed when ``listen`` stops."""

    samples_in: int = 0  # 16 kHz samples the worker received
    windows: int = 0  # windows classified
    windows_skipped: int = 0  # windows not classified because inference was behind
    gaps: int = 0  # holes reported by the source or the ring
    samples_lost: int = 0  # samples in those holes (never filled)
    ring_overflows: int = 0
    ring_samples_dropped: int = 0
    ring_underflows: int = 0
    ring_high_water: int = 0
    backend_errors: int = 0  # windows whose inference failed (skipped, reported, the stream went on)
    abstained: int = 0  # windows whose label is "uncertain" or "poor_quality" (each still has a record)
    poor_quality: int = 0  # windows the signal-quality gate rejected (label "poor_quality")
    uncertain: int = 0  # windows below the bundle's abstain_below calibrated confidence (label "uncertain")
    frames_computed: int = 0
    frames_reused: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=100_000), repr=False)

    def latency_percentiles(self) -> dict[str, float]:
        """p50/p95/p99 of features + inference per window, in ms (empty before the first window)."""
        if not self.latencies_ms:
            return {}
        p = np.percentile(np.fromiter(self.latencies_ms, float), [50, 95, 99])
        return {"p50_ms": float(p[0]), "p95_ms": float(p[1]), "p99_ms": float(p[2])}

    def as_dict(self) -> dict[str, Any]:
        """Plain counters (no latency samples) plus the latency percentiles."""
        d = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        d.update(self.latency_percentiles())
        return d


class StreamEngine:
    """Runs a Classifier over any AudioSource."""

    def __init__(self, classifier: Classifier, config: StreamConfig | None = None,
                 recorder: RotatingRecorder | None = None) -> None:
        self.clf = classifier
        self.config = config or StreamConfig()
        self.recorder = recorder
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._consecutive_errors = 0
        self._last_smoothed: tuple[str, float] | None = None
        if self.config.hop_s <= 0:
            raise ValueError(f"hop must be positive, got {self.config.hop_s} s")

    def stop(self) -> None:
        """Ask ``run`` to finish after the current window (thread-safe)."""
        self._stop.set()

    def run(self, source: AudioSource) -> Iterator[WindowResult]:
        """Yield one WindowResult per classified window until the source ends or ``stop()``."""
        spec = self.clf.spec
        rate = spec.sample_rate
        if source.sample_rate != rate:
            raise AudioError(f"source delivers {source.sample_rate} Hz audio; the model needs {rate} Hz")
        cfg = self.config
        min_s = min(max(cfg.min_s, MIN_AUDIO_SECONDS), spec.window_seconds)
        windower = SlidingWindower(spec.window_samples, int(round(cfg.hop_s * rate)), int(round(min_s * rate)))
        features = IncrementalFeatures(spec) if cfg.incremental else None
        smoother = DecisionSmoother(self.clf.bundle.labels, cfg.smoothing)
        self._last_smoothed: tuple[str, float] | None = None
        live = bool(getattr(source, "live", True))
        threaded = live if cfg.threaded is None else cfg.threaded
        # The newest due window always ends less than a hop before the newest audio: never skipped.
        max_lag = int(round(max(cfg.max_lag_s, cfg.hop_s) * rate))
        emitted = 0
        batches = self._threaded_batches(source, live) if threaded else ([c] for c in source.chunks())
        try:
            for batch in batches:
                newest = batch[-1].start_sample + batch[-1].samples.shape[0] if batch else 0
                skipped = 0
                for chunk in batch:
                    self._account(chunk)
                    for window in windower.push(chunk):  # lazily: one window copy alive at a time
                        if live and newest - window.end_sample > max_lag:  # too late to matter: count it
                            skipped += 1
                            self.stats.windows_skipped += 1
                            continue
                        result = self._try_decide(window, features, smoother, skipped)
                        if result is None:
                            continue
                        emitted += 1
                        yield result
                        skipped = 0
                if self._stop.is_set():
                    break
            else:
                tail = windower.flush()
                result = None
                if tail is not None and tail.available >= MIN_AUDIO_SECONDS * rate:
                    result = self._try_decide(tail, features, smoother, 0)
                if result is not None:
                    emitted += 1
                    yield result
                elif not emitted and self.stats.backend_errors:
                    raise BackendError(f"no window could be classified ({self.stats.backend_errors} backend errors)")
                elif not emitted:
                    got = (tail.available if tail is not None else self.stats.samples_in) / rate
                    where = getattr(source, "path", None)  # a file names itself in the message
                    prefix = f"{where}: " if where is not None else ""
                    raise AudioError(f"{prefix}only {got:.4f} s of audio; at least {MIN_AUDIO_SECONDS} s is needed "
                                     "for a decision")
        finally:
            batches.close()  # stops the capture thread (threaded) or the source's generator, now
            self.stats.gaps, self.stats.samples_lost = windower.gaps, windower.samples_lost
            if features is not None:
                self.stats.frames_computed, self.stats.frames_reused = features.frames_computed, features.frames_reused

    def _try_decide(self, window: Window, features: IncrementalFeatures | None, smoother: DecisionSmoother,
                    skipped: int) -> WindowResult | None:
        """``_decide``, but a BackendError skips this window (counted, logged) instead of ending the stream;
        ``max_backend_errors`` failures in a row re-raise it."""
        try:
            result = self._decide(window, features, smoother, skipped)
        except BackendError as exc:
            self.stats.backend_errors += 1
            self._consecutive_errors += 1
            log.warning("window ending at %.2f s not classified: %s", window.end_sample / self.clf.spec.sample_rate, exc)
            if features is not None:
                features.reset()  # do not trust cached frames across a failure
            if self._consecutive_errors >= self.config.max_backend_errors:
                raise BackendError(f"{self._consecutive_errors} windows in a row failed; last: {exc}") from None
            return None
        self._consecutive_errors = 0
        return result

    def _account(self, chunk: AudioChunk) -> None:
        self.stats.samples_in += chunk.samples.shape[0]
        if self.recorder is not None:
            self.recorder.write(chunk.samples, chunk.start_sample, chunk.gap_before)

    def _threaded_batches(self, source: AudioSource, live: bool) -> Iterator[list[AudioChunk]]:
        """Pump ``source`` into a ring on a thread; yield what the ring holds each time the worker asks."""
        ring = SampleRing(max(1, int(self.config.ring_seconds * source.sample_rate)))
        failure: list[BaseException] = []

        def pump() -> None:
            try:
                for chunk in source.chunks():
                    ring.write(chunk.samples, chunk.start_sample, chunk.gap_before, block=not live)
                    if self._stop.is_set() or ring.closed:
                        break
            except BaseException as exc:  # handed to the worker, raised there
                failure.append(exc)
            finally:
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
            source.close()
            thread.join(timeout=5.0)
            s = ring.stats
            self.stats.ring_overflows, self.stats.ring_samples_dropped = s.overflows, s.samples_dropped
            self.stats.ring_underflows, self.stats.ring_high_water = s.underflows, s.high_water

    def _decide(self, window: Window, features: IncrementalFeatures | None, smoother: DecisionSmoother,
                skipped: int) -> WindowResult:
        from stethoedge.runtime.engine import WindowResult

        spec, labels = self.clf.spec, self.clf.bundle.labels
        if window.after_gap:
            smoother.reset()
            self._last_smoothed = None
            if features is not None:
                features.reset()
        t0 = time.perf_counter()
        if features is not None:
            x = features.compute(window.audio, window.end_sample, window.available)
        else:
            from stethoedge.runtime.features import compute_features

            x = compute_features(window.audio, spec)
        logits = self.clf.backend.run(x[None])[0]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        decision = decide(self.clf.bundle, logits, window.audio, window.available)
        probs = decision.probabilities
        warnings = window_warnings(window.audio)
        # Poor-quality windows do not feed the smoother (their probabilities describe the artefact, not the
        # chest); their smoothed label repeats the last smoothed decision (None before any usable window).
        if decision.quality in ("ok", "unchecked"):
            smoothed_label, smoothed = smoother.update(probs)
            self._last_smoothed = (smoothed_label, float(smoothed[labels.index(smoothed_label)]))
        smoothed_label, smoothed_conf = self._last_smoothed or (None, None)
        self.stats.windows += 1
        self.stats.abstained += decision.abstained
        self.stats.poor_quality += decision.label == POOR_QUALITY
        self.stats.uncertain += decision.label == UNCERTAIN
        self.stats.latencies_ms.append(latency_ms)
        rate = spec.sample_rate
        return WindowResult(
            start_s=(window.end_sample - window.available) / rate, end_s=window.end_sample / rate,
            padded=window.available < spec.window_samples, after_gap=window.after_gap,
            label=decision.label, confidence=decision.confidence,
            probabilities={name: float(p) for name, p in zip(labels, probs)},
            latency_ms=latency_ms, smoothed_label=smoothed_label, smoothed_confidence=smoothed_conf,
            skipped_before=skipped, wall_time=time.time(), warnings=warnings,
            model_label=decision.model_label, quality=decision.quality, quality_score=decision.quality_score,
            abstained=decision.abstained, abstain_reason=decision.abstain_reason,
        )


#: Decision labels that are not classes of the model (abstentions).
POOR_QUALITY = "poor_quality"
UNCERTAIN = "uncertain"


@dataclass
class Decision:
    """What the runtime decides for one window from its logits and audio (every backend goes through here)."""

    label: str  # the model's class, POOR_QUALITY or UNCERTAIN
    model_label: str  # argmax of the calibrated probabilities
    confidence: float  # calibrated probability of model_label
    probabilities: np.ndarray  # calibrated, softmax(logits / T)
    quality: str  # "unchecked" (no gate in the bundle), "ok" or a QUALITY_REASONS reason
    quality_score: float | None  # the gate's P(ok)
    abstained: bool
    abstain_reason: str | None  # "poor_quality" or "low_confidence"


def decide(bundle: Any, logits: np.ndarray, audio: np.ndarray | None = None, available: int | None = None) -> Decision:
    """Calibrate ``logits`` with the bundle's temperature, run its quality gate on ``audio`` (when both exist)
    and abstain: ``poor_quality`` when the gate rejects the window, else ``uncertain`` when the calibrated
    confidence is below ``abstain_below``. Bundles without those sections: plain softmax, never abstains."""
    from stethoedge.runtime.confidence import Calibration

    calibration = getattr(bundle, "calibration", None) or Calibration()
    probs = calibration.probabilities(np.asarray(logits, dtype=np.float64))
    k = int(np.argmax(probs))
    model_label = bundle.labels[k]
    quality, score = "unchecked", None
    gate = getattr(bundle, "quality", None)
    if gate is not None and audio is not None:
        verdict = gate.assess(audio, available)
        quality, score = verdict.reason, float(verdict.score)
    label, reason = model_label, None
    if quality not in ("ok", "unchecked"):
        label, reason = POOR_QUALITY, "poor_quality"
    elif calibration.abstains(probs):
        label, reason = UNCERTAIN, "low_confidence"
    return Decision(label, model_label, float(probs[k]), probs, quality, score, reason is not None, reason)


def window_warnings(audio: np.ndarray) -> list[str]:
    """What a decision's record should warn about its window: digital silence (no sound to classify)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak >= SILENCE_PEAK:
        return []
    level = "-inf" if peak <= 0 else f"{20 * np.log10(peak):.0f}"
    return [f"silent window (peak {level} dBFS): the label means nothing"]
