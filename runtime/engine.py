"""The classification engine: windows from a source -> features -> backend -> decisions."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np

from stethoedge.runtime.backends import Backend, open_backend
from stethoedge.runtime.bundle import Bundle, load_bundle
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.recorder import RotatingRecorder
from stethoedge.runtime.smoothing import SmoothingConfig
from stethoedge.runtime.sources import AudioSource
from stethoedge.runtime.stream import MIN_AUDIO_SECONDS, Decision, StreamConfig, StreamEngine, decide

__all__ = ["Classifier", "WindowResult", "softmax", "MIN_AUDIO_SECONDS"]


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
    smoothed_label: str | None = None  # the label after decision smoothing (runtime/smoothing.py)
    smoothed_confidence: float | None = None
    skipped_before: int = 0  # windows skipped just before this one because inference was behind
    wall_time: float | None = None  # time.time() when the decision was made
    warnings: list[str] = field(default_factory=list)  # about this window (digital silence: the label means nothing)
    # The decision vs the model: ``label`` is the DECISION (the model's class, "poor_quality" when the bundle's
    # signal-quality gate rejects the window, "uncertain" when the calibrated confidence is below the bundle's
    # abstain_below); ``model_label`` is always the model's argmax class. ``probabilities``/``confidence`` are
    # calibrated (softmax(logits / T)). Bundles without the sections: quality "unchecked", never abstains.
    model_label: str | None = None
    quality: str = "unchecked"  # "unchecked", "ok" or a runtime.quality.QUALITY_REASONS reason
    quality_score: float | None = None  # the gate's P(ok)
    abstained: bool = False
    abstain_reason: str | None = None  # "poor_quality" or "low_confidence"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (stream times, probabilities, labels, latency, wall-clock time)."""
        record = asdict(self)
        if record["wall_time"] is None:
            record["wall_time"] = time.time()
        return record


def _load(bundle_path: str | os.PathLike, require_signature: str | os.PathLike | None) -> Bundle:
    """load_bundle, passing ``require_signature`` only when asked (older loaders lack it)."""
    if require_signature is None:
        return load_bundle(bundle_path)
    import inspect

    if "require_signature" not in inspect.signature(load_bundle).parameters:
        raise BundleError("this installation cannot check bundle signatures yet (load_bundle has no "
                          "require_signature); refusing to run without the requested check")
    return load_bundle(bundle_path, require_signature=require_signature)


class Classifier:
    """A verified bundle on an opened backend."""

    def __init__(self, bundle: Bundle, backend: Backend) -> None:
        self.bundle, self.backend, self.spec = bundle, backend, bundle.spec

    @classmethod
    def open(cls, bundle_path: str | os.PathLike, artifact: str | None = None, backend: str = "auto",
             threads: int | None = None, allow_degraded: bool = False,
             require_signature: str | os.PathLike | None = None) -> Classifier:
        """Load + verify the bundle (and its Ed25519 signature when a public key is given),
        open the backend and pass its self-test."""
        bundle = _load(bundle_path, require_signature)
        return cls(bundle, open_backend(bundle, artifact, backend, threads=threads, allow_failed=allow_degraded))

    def logits(self, window_audio: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) logits (classes,) for one window of exactly ``spec.window_samples`` samples;
        ``decide`` turns them into the calibrated, quality-gated decision."""
        return self.backend.run(compute_features(window_audio, self.spec)[None])[0]

    def decide(self, window_audio: np.ndarray, available: int | None = None) -> Decision:
        """The runtime's decision for one window: calibrated probabilities, quality gate, abstention."""
        return decide(self.bundle, self.logits(window_audio), window_audio, available)

    def classify(self, source: AudioSource, hop_s: float = 2.0, min_s: float = 2.0,
                 smoothing: SmoothingConfig | None = None, recorder: RotatingRecorder | None = None,
                 engine: StreamEngine | None = None) -> Iterator[WindowResult]:
        """Slide windows over ``source``; yield one result per window (first at ``min_s``).

        Runs the stream engine (runtime/stream.py): a capture thread and ring for live sources,
        incremental features, decision smoothing, optional recording.
        """
        if engine is None:
            config = StreamConfig(hop_s=hop_s, min_s=min_s)
            if smoothing is not None:
                config.smoothing = smoothing
            engine = StreamEngine(self, config, recorder=recorder)
        return engine.run(source)
