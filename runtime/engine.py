"""The classification engine: windows from a source -> features -> backend -> decisions."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np

from stethoedge.runtime.backends import Backend, open_backend
from stethoedge.runtime.bundle import Bundle, load_bundle
from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.sources import AudioSource
from stethoedge.runtime.windowing import SlidingWindower

#: Shortest audio worth a decision: a quarter second (no respiratory phase is shorter).
MIN_AUDIO_SECONDS = 0.25


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class WindowResult:
    """The decision for one window; ``to_json`` is the JSON-lines record."""

    start_s: float  # stream time of the window's first real sample
    end_s: float  # stream time just past its last sample
    padded: bool  # fewer than 8 s of real audio, cyclically padded
    after_gap: bool  # the stream lost samples just before this window
    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float  # features + inference

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the wall-clock time added."""
        record = asdict(self)
        record["wall_time"] = time.time()
        return record


class Classifier:
    """A verified bundle on an opened backend."""

    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        self.bundle, self.backend, self.spec = bundle, backend, bundle.spec

    @classmethod
    def open(cls, bundle_path: str | os.PathLike, artifact: str | None = None, backend: str = "auto",
             threads: int | None = None, allow_degraded: bool = False) -> Classifier:
        """Load + verify the bundle, open the backend and pass its self-test."""
        bundle = load_bundle(bundle_path)
        return cls(bundle, open_backend(bundle, artifact, backend, threads=threads, allow_failed=allow_degraded))

    def logits(self, window_audio: np.ndarray) -> np.ndarray:
        """Logits (classes,) for one window of exactly ``spec.window_samples`` samples."""
        return self.backend.run(compute_features(window_audio, self.spec)[None])[0]

    def classify(self, source: AudioSource, hop_s: float = 2.0, min_s: float = 2.0) -> Iterator[WindowResult]:
        """Slide windows over ``source``; yield one result per window (first at ``min_s``)."""
        rate = self.spec.sample_rate
        if source.sample_rate != rate:
            raise AudioError(f"source delivers {source.sample_rate} Hz audio; the model needs {rate} Hz")
        if hop_s <= 0:
            raise ValueError(f"hop must be positive, got {hop_s} s")
        min_s = min(max(min_s, MIN_AUDIO_SECONDS), self.spec.window_seconds)
        windower = SlidingWindower(self.spec.window_samples, int(round(hop_s * rate)), int(round(min_s * rate)))
        seen = emitted = 0
        for chunk in source.chunks():
            seen += chunk.samples.shape[0]
            for window in windower.push(chunk):
                emitted += 1
                yield self._decide(window.audio, window.end_sample, window.available, window.after_gap)
        tail = windower.flush()
        if tail is not None and tail.available >= MIN_AUDIO_SECONDS * rate:
            yield self._decide(tail.audio, tail.end_sample, tail.available, tail.after_gap)
        elif not emitted:
            got = tail.available / rate if tail is not None else seen / rate
            raise AudioError(f"only {got:.4f} s of audio; at least {MIN_AUDIO_SECONDS} s is needed for a decision")

    def _decide(self, audio: np.ndarray, end_sample: int, available: int, after_gap: bool) -> WindowResult:
        rate = self.spec.sample_rate
        t0 = time.perf_counter()
        probs = softmax(self.logits(audio).astype(np.float64))
        latency_ms = (time.perf_counter() - t0) * 1000.0
        k = int(np.argmax(probs))
        return WindowResult(
            start_s=(end_sample - available) / rate, end_s=end_sample / rate,
            padded=available < self.spec.window_samples, after_gap=after_gap,
            label=self.bundle.labels[k], confidence=float(probs[k]),
            probabilities={name: float(p) for name, p in zip(self.bundle.labels, probs)},
            latency_ms=latency_ms,
        )
