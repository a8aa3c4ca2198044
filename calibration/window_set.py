"""Window sets: class-balanced model windows with their provenance, stored as one .npz.

The same file format serves the verification gate (held-out windows, never used for
calibration) and, for static quantization, the representative set. Features are computed
with the runtime's numpy front end, so building a set needs no torch.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.outputs import open_output
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.data.folders import recording_cycles
from stethoedge.data.icbhi import Recording


@dataclass
class WindowSet:
    """Padded cycle windows, their features and labels, and where they came from."""

    audio: np.ndarray  # (n, window_samples) float32
    features: np.ndarray  # (n, frames, mels) float32, normalised
    labels: np.ndarray  # (n,) int64
    provenance: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as .npz (provenance as a JSON string; no pickles)."""
        p = Path(path)
        with open_output(p) as fh:
            np.savez_compressed(fh, audio=self.audio, features=self.features, labels=self.labels,
                                provenance=np.array(json.dumps(self.provenance)))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> WindowSet:
        """Read a set written by ``save``."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["audio"], data["features"], data["labels"].astype(np.int64),
                           json.loads(str(data["provenance"])))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a window set ({exc})") from None


def balanced_indices(labels: np.ndarray, max_windows: int, seed: int = 0) -> np.ndarray:
    """Up to ``max_windows`` indices taken round-robin over classes (shuffled within each class)."""
    rng = np.random.default_rng(seed)
    n_classes = max(len(CLASSES), int(labels.max()) + 1 if labels.size else 0)  # any label set, not only ICBHI's
    pools = [list(rng.permutation(np.flatnonzero(labels == k))) for k in range(n_classes)]
    chosen: list[int] = []
    while len(chosen) < max_windows and any(pools):
        for pool in pools:
            if pool and len(chosen) < max_windows:
                chosen.append(int(pool.pop()))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def build_window_set(recordings: list[Recording], spec: FeatureSpec, max_windows: int = 64, seed: int = 0,
                     purpose: str = "verification") -> WindowSet:
    """A class-balanced set of up to ``max_windows`` cycle windows from ``recordings``.

    ``recordings``: ICBHI ``Recording``s or class-folder ``FolderRecording``s (stethoedge.data.folders).
    """
    audio, labels, stems = [], [], []
    for rec in recordings:
        for cycle, label in recording_cycles(rec, spec.sample_rate):
            audio.append(cyclic_pad(cycle, spec.window_samples))
            labels.append(label)
            stems.append(rec.stem)
    if not audio:
        raise DataError("no annotated cycles in the recordings given for the window set")
    labels_arr = np.asarray(labels, dtype=np.int64)
    index = balanced_indices(labels_arr, max_windows, seed)
    audio_arr = np.stack([audio[i] for i in index])
    features = np.stack([compute_features(a, spec) for a in audio_arr])
    provenance = {
        "purpose": purpose, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seed": seed,
        "recordings": sorted({stems[i] for i in index}), "class_counts": np.bincount(labels_arr[index], minlength=len(CLASSES)).tolist(),
        "feature_spec": spec.to_dict(),
    }
    return WindowSet(audio_arr, features, labels_arr[index], provenance)
