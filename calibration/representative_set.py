"""The one representative (calibration) set every static quantizer is fed from.

Class-balanced cycle windows (after the feature spec) from the run's TRAINING recordings, so it
never overlaps the held-out windows the verification gate measures on. Stored as a WindowSet
.npz with its provenance; a set under ``MIN_RECOMMENDED`` windows is accepted with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from stethoedge.calibration.window_set import WindowSet, build_window_set
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.data.folders import list_dataset
from stethoedge.data.icbhi import list_recordings

log = logging.getLogger(__name__)
#: Fewer windows than this give noisy activation ranges; the set is still built, with a warning.
MIN_RECOMMENDED = 300


class SmallCalibrationSetWarning(UserWarning):
    """The representative set has fewer windows than recommended."""


def build_representative_set(data: str | os.PathLike, spec: FeatureSpec, max_windows: int = MIN_RECOMMENDED,
                             stems: list[str] | None = None, exclude: set[str] | None = None,
                             seed: int = 0, labels: list[str] | None = None) -> WindowSet:
    """Class-balanced windows from the recordings under ``data`` (only ``stems`` if given, never ``exclude``).

    ``labels``: the run's label set (class folders named after it); default the ICBHI layout.
    """
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: not a data directory")
    recs = list_dataset(root, tuple(labels)) if labels else list_recordings(root)
    if stems is not None:
        wanted = set(stems)
        recs = [r for r in recs if r.stem in wanted]
    if exclude:
        recs = [r for r in recs if r.stem not in exclude]
    if not recs:
        raise DataError(f"{root}: no recordings left for the representative set")
    ws = build_window_set(recs, spec, max_windows=max_windows, seed=seed, purpose="calibration (representative set)")
    ws.provenance.update(data=root.resolve().name, excluded_recordings=sorted(exclude or ()))
    warn_if_small(ws)
    return ws


def representative_set_for_run(run: str | os.PathLike, spec: FeatureSpec, data: str | None = None,
                               max_windows: int = MIN_RECOMMENDED, seed: int = 0) -> WindowSet:
    """The representative set of a training run: its train split, minus val/test recordings."""
    splits_path = Path(run) / "splits.json"
    if not splits_path.is_file():
        raise DataError(f"{run}: no splits.json; is this a training run directory?")
    splits = json.loads(splits_path.read_text())
    held = set(splits.get("test", [])) | set(splits.get("val", []))
    ws = build_representative_set(data or splits["data"], spec, max_windows, stems=splits.get("train"),
                                  exclude=held, seed=seed, labels=splits.get("labels"))
    ws.provenance["split"] = "train"
    return ws


def warn_if_small(ws: WindowSet) -> None:
    """Warn (SmallCalibrationSetWarning) when ``ws`` has fewer than MIN_RECOMMENDED windows."""
    if len(ws) < MIN_RECOMMENDED:
        warnings.warn(f"representative set has only {len(ws)} windows (< {MIN_RECOMMENDED} recommended); "
                      "INT8 activation ranges may be noisy", SmallCalibrationSetWarning, stacklevel=2)


def class_balance(ws: WindowSet, n_classes: int) -> np.ndarray:
    """Windows per class."""
    return np.bincount(ws.labels, minlength=n_classes)
