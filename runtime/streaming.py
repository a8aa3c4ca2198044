"""The push-mode streaming core: feed samples in, get window decisions out. No threads, no torch.

``StreamingClassifier`` owns one stream's state: the sliding windower (8 s windows every hop,
cyclically padded before 8 s exist, restarted after a gap), incremental log-mel features, the
backend (any callable features (1, frames, mels) -> logits (1, classes)), the calibrated decision
with the bundle's quality gate and abstention (runtime/results.py), and decision smoothing.
Firmware, a phone app or a language binding drives it chunk by chunk::

    core = Classifier.open(bundle).streaming(hop_s=2.0)
    for chunk in microphone():          # 16 kHz mono float32, any chunk size
        for r in core.feed(chunk):
            print(r.end_s, r.label, r.confidence)
    for r in core.flush():              # the stream ended: its last (padded) window
        ...

The results do not depend on how the audio is cut into chunks: a file fed in one piece, in
1-sample or in 0.5 s chunks gives the decisions of ``Classifier.classify`` on that file
(tests/test_streaming_core.py). ``StreamEngine`` (runtime/stream.py) is a threaded driver over
this core: a capture thread and ring for live sources, skipping windows when inference is behind.

A rejected window (quality gate) is labelled ``"poor_quality"`` and is NOT fed to the smoother (its
smoothed label repeats the last usable one); a window below ``abstain_below`` is labelled
``"uncertain"`` and still feeds the smoother. A backend failure skips its window (counted in
``stats.backend_errors``, logged); ``max_backend_errors`` failures in a row raise BackendError.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from stethoedge.runtime.confidence import Calibration
from stethoedge.runtime.errors import AudioError, BackendError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.incremental_features import IncrementalFeatures
from stethoedge.runtime.results import POOR_QUALITY, UNCERTAIN, WindowResult, decide_window, window_warnings
from stethoedge.runtime.smoothing import DecisionSmoother, SmoothingConfig
from stethoedge.runtime.sources import AudioChunk
from stethoedge.runtime.windowing import SlidingWindower, Window

__all__ = ["StreamingClassifier", "StreamingStats", "MIN_AUDIO_SECONDS"]

log = logging.getLogger("stethoedge.stream")

#: Shortest audio worth a decision: a quarter second (no respiratory phase is shorter).
MIN_AUDIO_SECONDS = 0.25

#: features (batch, frames, mels) float32 -> logits (batch, classes); e.g. ``Backend.run``.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class StreamingStats:
    """Counters the core keeps (cumulative across ``reset``). ``stats=`` may pass any object with these
    attributes instead (runtime/stream.py passes its ``StreamStats``, which adds the capture counters)."""

    samples_in: int = 0  # 16 kHz samples fed
    windows: int = 0  # windows classified
    gaps: int = 0  # discontinuities (gap=True, a jump in start_sample, a chunk's gap_before)
    samples_lost: int = 0  # samples known to be missing in those gaps (never filled)
    backend_errors: int = 0  # windows whose inference failed (skipped, logged)
    abstained: int = 0  # windows labelled "uncertain" or "poor_quality"
    poor_quality: int = 0
    uncertain: int = 0
    frames_computed: int = 0  # fbank frames computed / reused by the incremental features
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


class StreamingClassifier:
    """One stream's windowing, features, inference, decision and smoothing, driven by ``feed``.

    ``run`` is the backend (features batch -> logits batch), ``labels`` its classes, ``spec`` the
    bundle's feature spec; ``calibration`` and ``gate`` are the bundle's temperature/abstention and
    signal-quality gate (None: plain softmax, never abstains, quality "unchecked"). Not thread-safe:
    drive it from one thread. ``Classifier.streaming`` builds one from a bundle.
    """

    def __init__(self, run: Runner, labels: Sequence[str], spec: FeatureSpec, *, hop_s: float = 2.0,
                 min_s: float = 2.0, smoothing: SmoothingConfig | None = None,
                 calibration: Calibration | None = None, gate: Any | None = None, incremental: bool = True,
                 max_backend_errors: int = 3, stats: Any | None = None) -> None:
        if not hop_s > 0:
            raise ValueError(f"hop must be positive, got {hop_s} s")
        self.run, self.labels, self.spec = run, list(labels), spec
        self.calibration, self.gate = calibration, gate
        self.max_backend_errors = max_backend_errors
        self.stats = stats if stats is not None else StreamingStats()
        rate = spec.sample_rate
        min_s = min(max(min_s, MIN_AUDIO_SECONDS), spec.window_seconds)
        self.hop_s, self.min_s = hop_s, min_s
        self._windower = SlidingWindower(spec.window_samples, int(round(hop_s * rate)), int(round(min_s * rate)))
        self._features = IncrementalFeatures(spec) if incremental else None
        self._smoother = DecisionSmoother(self.labels, smoothing or SmoothingConfig("mean", 3))
        self._new_stream()

    def _new_stream(self) -> None:
        self._next_sample = 0  # stream position just past the last sample fed
        self._samples = 0  # samples fed since the stream (re)started
        self._fed = False  # feed() was called since the stream (re)started
        self._decisions = 0  # results returned since the stream (re)started
        self._errors = 0  # backend failures since the stream (re)started
        self._consecutive_errors = 0
        self._last_smoothed: tuple[str, float] | None = None

    @property
    def sample_rate(self) -> int:
        """The rate ``feed`` expects (the model's, 16 kHz)."""
        return self.spec.sample_rate

    def reset(self) -> None:
        """Forget the stream (window, cached features, smoothing history): the next sample is sample 0 of a
        new stream. ``stats`` keeps counting."""
        self._windower.reset()
        if self._features is not None:
            self._features.reset()
        self._smoother.reset()
        self._new_stream()

    def feed(self, samples: np.ndarray, start_sample: int | None = None, gap: bool = False) -> list[WindowResult]:
        """Add 16 kHz mono float samples (1-D, nominally in [-1, 1], any length); return the decisions of the
        windows that became due (often none).

        ``start_sample``: the stream position of ``samples[0]`` (None: right after the last sample fed); a
        jump forward is a gap of that many lost samples (except on the first call, which sets the origin), a
        jump backward is an error. ``gap=True``: samples
        were lost just before these (the number unknown unless ``start_sample`` says it): the window restarts
        (padded until 8 s have come again), the cached features and the smoothing history are dropped.
        """
        x = np.asarray(samples)
        if x.ndim != 1:
            raise AudioError(f"feed takes 1-D mono samples, got shape {x.shape}")
        if x.dtype.kind not in "fc" and x.size:
            raise AudioError(f"feed takes float samples in [-1, 1], got {x.dtype} (scale integers first)")
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise AudioError("samples contain NaN or infinite values")
        start = self._next_sample if start_sample is None else int(start_sample)
        if start < self._next_sample:
            raise AudioError(f"start_sample {start} is before the end of what was fed ({self._next_sample}); "
                             "call reset() to start a new stream")
        # The first samples of a stream may start anywhere (a device's running counter): no gap before them.
        lost = start - self._next_sample if self._fed else 0
        self._fed = True
        chunk = AudioChunk(x, start, lost)
        return [r for r in (self.classify_window(w) for w in self.push(chunk, gap=gap)) if r is not None]

    def push(self, chunk: AudioChunk, gap: bool = False) -> Iterator[Window]:
        """The first half of ``feed`` for a driver that may skip windows (runtime/stream.py): add ``chunk``
        (its ``gap_before`` > 0, or ``gap``, restarts the window) and return an iterator over the windows that
        became due, made one at a time as it is consumed (consume it fully); ``classify_window`` decides each."""
        n = chunk.samples.shape[0]
        if chunk.gap_before > 0 or gap:
            lost = max(chunk.gap_before, 0)
            self._windower.mark_gap(lost)
            chunk = AudioChunk(chunk.samples, chunk.start_sample, 0)
            self.stats.gaps += 1
            self.stats.samples_lost += lost
        self.stats.samples_in += n
        self._samples += n
        self._next_sample = chunk.start_sample + n
        return self._windower.push(chunk)

    def classify_window(self, window: Window, skipped_before: int = 0) -> WindowResult | None:
        """The second half of ``feed``: the decision for one window from ``push``. A BackendError skips the
        window (None; counted in ``stats.backend_errors``, logged, cached features dropped) instead of ending
        the stream; ``max_backend_errors`` failures in a row re-raise it."""
        try:
            result = self._decide(window, skipped_before)
        except BackendError as exc:
            self.stats.backend_errors += 1
            self._errors += 1
            self._consecutive_errors += 1
            log.warning("window ending at %.2f s not classified: %s", window.end_sample / self.spec.sample_rate, exc)
            if self._features is not None:
                self._features.reset()  # do not trust cached frames across a failure
            if self._consecutive_errors >= self.max_backend_errors:
                raise BackendError(f"{self._consecutive_errors} windows in a row failed; last: {exc}") from None
            return None
        self._consecutive_errors = 0
        self._decisions += 1
        return result

    def flush(self, require_decision: bool = False, name: str | None = None) -> list[WindowResult]:
        """End the stream: the decision of a last window over the audio after the last hop (padded when the
        stream is shorter than 8 s), if at least ``MIN_AUDIO_SECONDS`` of it exist; [] otherwise. The core is
        then ``reset`` for the next stream.

        ``require_decision``: when the stream (since ``reset``) gave no decision at all, raise instead of
        returning [] (AudioError: too little audio, prefixed with ``name`` such as a file's path; BackendError:
        every window failed).
        """
        try:
            return self._flush(require_decision, name)
        finally:
            self.reset()

    def _flush(self, require_decision: bool, name: str | None) -> list[WindowResult]:
        """``flush`` before the reset."""
        tail = self._windower.flush()
        result = None
        if tail is not None and tail.available >= MIN_AUDIO_SECONDS * self.spec.sample_rate:
            result = self.classify_window(tail)
        if result is not None:
            return [result]
        if require_decision and not self._decisions:
            if self._errors:
                raise BackendError(f"no window could be classified ({self._errors} backend errors)")
            got = (tail.available if tail is not None else self._samples) / self.spec.sample_rate
            prefix = f"{name}: " if name is not None else ""
            raise AudioError(f"{prefix}only {got:.4f} s of audio; at least {MIN_AUDIO_SECONDS} s is needed "
                             "for a decision")
        return []

    def _decide(self, window: Window, skipped: int) -> WindowResult:
        spec, labels, features = self.spec, self.labels, self._features
        if window.after_gap:
            self._smoother.reset()
            self._last_smoothed = None
            if features is not None:
                features.reset()
        # the quality gate first, while the window's samples are still in the CPU cache (after inference
        # they are not, which doubles the gate's cost)
        verdict = self.gate.assess(window.audio, window.available) if self.gate is not None else None
        t0 = time.perf_counter()
        if features is not None:
            computed, reused = features.frames_computed, features.frames_reused
            x = features.compute(window.audio, window.end_sample, window.available)
            self.stats.frames_computed += features.frames_computed - computed
            self.stats.frames_reused += features.frames_reused - reused
        else:
            x = compute_features(window.audio, spec)
        logits = self.run(x[None])[0]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        decision = decide_window(labels, logits, window.audio, window.available, self.calibration, self.gate,
                                 verdict)
        probs = decision.probabilities
        # Poor-quality windows do not feed the smoother (their probabilities describe the artefact, not the
        # chest); their smoothed label repeats the last smoothed decision (None before any usable window).
        if decision.quality in ("ok", "unchecked"):
            smoothed_label, smoothed = self._smoother.update(probs)
            self._last_smoothed = (smoothed_label, float(smoothed[labels.index(smoothed_label)]))
        smoothed_label, smoothed_conf = self._last_smoothed or (None, None)
        stats = self.stats
        stats.windows += 1
        stats.abstained += decision.abstained
        stats.poor_quality += decision.label == POOR_QUALITY
        stats.uncertain += decision.label == UNCERTAIN
        stats.latencies_ms.append(latency_ms)
        rate = spec.sample_rate
        return WindowResult(
            start_s=(window.end_sample - window.available) / rate, end_s=window.end_sample / rate,
            padded=window.available < spec.window_samples, after_gap=window.after_gap,
            label=decision.label, confidence=decision.confidence,
            probabilities={name: float(p) for name, p in zip(labels, probs)},
            latency_ms=latency_ms, smoothed_label=smoothed_label, smoothed_confidence=smoothed_conf,
            skipped_before=skipped, wall_time=time.time(), warnings=window_warnings(window.audio),
            model_label=decision.model_label, quality=decision.quality, quality_score=decision.quality_score,
            abstained=decision.abstained, abstain_reason=decision.abstain_reason,
        )
