"""The inference backend interface and the start-up self-test every backend must pass."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from stethoedge.runtime.bundle import FEATURE_TOLERANCE, Artifact, Bundle
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.features import compute_features


class Backend(Protocol):
    """Runs one artifact: (batch, frames, mels) float32 features -> (batch, classes) float32 logits."""

    name: str
    artifact: Artifact

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits for a batch of feature windows."""
        ...


def check_feature_parity(bundle: Bundle) -> float:
    """Recompute the self-test features with this device's numpy front end; refuse on drift."""
    worst = 0.0
    for audio, expected in zip(bundle.selftest.audio, bundle.selftest.features):
        worst = max(worst, float(np.max(np.abs(compute_features(audio, bundle.spec) - expected))))
    if not worst <= FEATURE_TOLERANCE:
        raise BundleError(
            f"{bundle.root}: this device's features differ from training by {worst:.2e} "
            f"(> {FEATURE_TOLERANCE:g}); the front end is not the one the model was trained with"
        )
    return worst


def run_selftest(bundle: Bundle, backend: Backend) -> float:
    """Run the self-test vector through ``backend``; refuse if logits or decisions disagree.

    Catches interpreters that load a model and silently answer wrongly. Returns the max
    abs logit difference.
    """
    expected = bundle.selftest.logits
    got = np.asarray(backend.run(bundle.selftest.features), dtype=np.float32)
    if got.ndim == 2 and got.shape[0] == expected.shape[0] and got.shape[1] != len(bundle.labels):
        raise BundleError(
            f"self-test of {backend.artifact.name} on {backend.name}: the model outputs {got.shape[1]} classes "
            f"but the bundle has {len(bundle.labels)} labels ({', '.join(bundle.labels)}); refusing to run"
        )
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        raise BundleError(
            f"self-test of {backend.artifact.name} on {backend.name}: output shape {got.shape} "
            f"or non-finite values (expected {expected.shape})"
        )
    diff = float(np.max(np.abs(got - expected)))
    if diff > backend.artifact.tolerance or np.any(got.argmax(1) != expected.argmax(1)):
        raise BundleError(
            f"self-test of {backend.artifact.name} on {backend.name} FAILED: logits differ from the "
            f"exported reference by {diff:.3g} (tolerance {backend.artifact.tolerance:.3g}) or the "
            "top-1 class changed; this interpreter/runtime answers wrongly, refusing to run"
        )
    return diff
