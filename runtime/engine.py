"""The classification engine: a verified bundle on an opened backend -> decisions.

``Classifier.streaming()`` is the push-mode core (runtime/streaming.py: feed samples, get decisions,
no threads); ``Classifier.classify(source)`` runs the threaded stream engine (runtime/stream.py) over
it. ``WindowResult`` and ``softmax`` live in runtime/results.py and are re-exported here.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from stethoedge.runtime.backends import Backend, open_backend
from stethoedge.runtime.bundle import Bundle, load_bundle
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.recorder import RotatingRecorder
from stethoedge.runtime.results import Decision, WindowResult, decide, softmax
from stethoedge.runtime.smoothing import SmoothingConfig
from stethoedge.runtime.sources import AudioSource
from stethoedge.runtime.stream import StreamConfig, StreamEngine
from stethoedge.runtime.streaming import MIN_AUDIO_SECONDS, StreamingClassifier

__all__ = ["Classifier", "WindowResult", "softmax", "MIN_AUDIO_SECONDS", "StreamingClassifier"]


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
        gate = getattr(self.bundle, "quality", None)  # before inference: the samples are still in the CPU cache
        verdict = gate.assess(window_audio, available) if gate is not None else None
        return decide(self.bundle, self.logits(window_audio), window_audio, available, verdict)

    def streaming(self, hop_s: float = 2.0, min_s: float = 2.0, smoothing: SmoothingConfig | None = None, *,
                  incremental: bool = True, max_backend_errors: int = 3,
                  stats: Any | None = None) -> StreamingClassifier:
        """A push-mode streaming core on this bundle and backend: ``feed(samples)`` chunk by chunk returns the
        decisions of the windows that became due, ``flush()`` the last one when the stream ends, ``reset()``
        starts a new stream. No threads; the same decisions as ``classify`` on the same audio.

        ``hop_s``: seconds between windows; ``min_s``: audio before the first (padded) window;
        ``smoothing``: decision smoothing (None: mean of 3 windows, as ``classify``)."""
        return StreamingClassifier(self.backend.run, self.bundle.labels, self.spec, hop_s=hop_s, min_s=min_s,
                                   smoothing=smoothing, calibration=getattr(self.bundle, "calibration", None),
                                   gate=getattr(self.bundle, "quality", None), incremental=incremental,
                                   max_backend_errors=max_backend_errors, stats=stats)

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
