"""From a data directory to model-ready windows: split, load cycles, pad, compute features.

Splits follow the ICBHI protocol: the official train/test split file, and a validation set of
whole patients carved from the TRAIN patients only. Model selection never sees the test split.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.features_torch import log_mel_fbank_torch, normalize_torch
from stethoedge.train.icbhi import Recording, list_recordings, load_cycles, patient_holdout

log = logging.getLogger("stethoedge.train")


@dataclass
class CycleWindows:
    """Respiratory cycles padded/cut to model windows, with labels and provenance."""

    audio: np.ndarray  # (n, window_samples) float32
    labels: np.ndarray  # (n,) int64, 4-class
    stems: list[str] = field(default_factory=list)  # recording stem of each window

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def split_recordings(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[Recording]]:
    """{'train', 'val', 'test'} recordings: official split + patient-held-out validation from train."""
    recordings = list_recordings(Path(root))
    if not recordings:
        raise DataError(f"{root}: no ICBHI-style recordings (<stem>.wav + <stem>.txt) found")
    test = [r for r in recordings if r.split == "test"]
    train_all = [r for r in recordings if r.split == "train"]
    if not train_all:
        raise DataError(f"{root}: the split assigns no recording to train")
    train, val = patient_holdout(train_all, fraction=val_fraction, seed=seed)
    return {"train": train, "val": val, "test": test}


def load_windows(recordings: list[Recording], spec: FeatureSpec, desc: str = "loading") -> CycleWindows:
    """Every annotated cycle of ``recordings`` as a cyclically padded window."""
    audio, labels, stems = [], [], []
    for rec in tqdm(recordings, desc=desc, unit="rec", leave=False, disable=None):
        for cycle_audio, label in load_cycles(rec, spec.sample_rate):
            audio.append(cyclic_pad(cycle_audio, spec.window_samples))
            labels.append(label)
            stems.append(rec.stem)
    if not audio:
        return CycleWindows(np.zeros((0, spec.window_samples), np.float32), np.zeros(0, np.int64), [])
    return CycleWindows(np.stack(audio), np.asarray(labels, dtype=np.int64), stems)


@torch.no_grad()
def fbank_batches(audio: np.ndarray, spec: FeatureSpec, batch_size: int = 32, normalized: bool = True) -> torch.Tensor:
    """Features (n, frames, mels) of padded windows, computed in batches with the torch front end."""
    out = torch.empty((audio.shape[0], *spec.input_shape), dtype=torch.float32)
    for start in range(0, audio.shape[0], batch_size):
        batch = log_mel_fbank_torch(torch.from_numpy(audio[start : start + batch_size]), spec)
        out[start : start + batch_size] = normalize_torch(batch, spec) if normalized else batch
    return out


def normalization_stats(audio: np.ndarray, spec: FeatureSpec, max_windows: int = 512, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the unnormalised log-mel over (a sample of) the training windows."""
    if audio.shape[0] == 0:
        raise DataError("no training windows to compute normalisation statistics from")
    rng = np.random.default_rng(seed)
    index = np.sort(rng.permutation(audio.shape[0])[:max_windows])
    fb = fbank_batches(audio[index], spec, normalized=False).double()
    return float(fb.mean()), float(fb.std())
