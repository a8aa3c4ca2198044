"""From a data directory to model-ready windows: split, load cycles, pad, compute features.

Splits follow the ICBHI protocol: the official train/test split file, and a validation set of
whole patients carved from the TRAIN patients only. Model selection never sees the test split.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.outputs import output_path
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.features_torch import log_mel_fbank_torch, normalize_torch
from stethoedge.data.folders import FolderRecording, folder_holdout, list_dataset, recording_cycles
from stethoedge.data.icbhi import Recording, list_recordings, patient_holdout
from stethoedge.runtime.labels import CLASSES

log = logging.getLogger("stethoedge.train")


@dataclass
class CycleWindows:
    """Respiratory cycles padded/cut to model windows, with labels and provenance."""

    audio: np.ndarray  # (n, window_samples) float32
    labels: np.ndarray  # (n,) int64, index into the run's label set
    stems: list[str] = field(default_factory=list)  # recording stem of each window

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def split_recordings(root: str | Path, val_fraction: float = 0.2, seed: int = 0,
                     labels: tuple[str, ...] = CLASSES) -> dict[str, list[Recording]]:
    """{'train', 'val', 'test'} recordings: official split + patient-held-out validation from train.

    A label set other than the ICBHI classes reads class folders named after it
    (stethoedge.data.folders.list_dataset); their validation set is held out per file, by class.
    """
    recordings = list_dataset(Path(root), labels)
    if not recordings:
        raise DataError(f"{root}: no ICBHI-style recordings (<stem>.wav + <stem>.txt) found")
    test = [r for r in recordings if r.split == "test"]
    train_all = [r for r in recordings if r.split == "train"]
    if not train_all:
        raise DataError(f"{root}: the split assigns no recording to train")
    if isinstance(train_all[0], FolderRecording):
        train, val = folder_holdout(train_all, fraction=val_fraction, seed=seed)
    else:
        train, val = patient_holdout(train_all, fraction=val_fraction, seed=seed)
    return {"train": train, "val": val, "test": test}


def load_windows(recordings: list[Recording], spec: FeatureSpec, desc: str = "loading") -> CycleWindows:
    """Every annotated cycle of ``recordings`` as a cyclically padded window."""
    audio, labels, stems = [], [], []
    for rec in tqdm(recordings, desc=desc, unit="rec", leave=False, disable=None):
        for cycle_audio, label in recording_cycles(rec, spec.sample_rate):
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


def normalization_stats_from(fbank: torch.Tensor, max_windows: int = 512, seed: int = 0) -> tuple[float, float]:
    """Mean and std of already computed (unnormalised) training log-mels; same sample as ``normalization_stats``."""
    if fbank.shape[0] == 0:
        raise DataError("no training windows to compute normalisation statistics from")
    rng = np.random.default_rng(seed)
    index = torch.from_numpy(np.sort(rng.permutation(fbank.shape[0])[:max_windows]))
    fb = fbank[index].double()
    return float(fb.mean()), float(fb.std())


def normalize_features(fbank: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """AST normalisation of a feature tensor with the spec's statistics."""
    return normalize_torch(fbank, spec)


def _cache_key(audio: np.ndarray, spec: FeatureSpec) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in spec.to_dict().items() if k not in ("norm_mean", "norm_std")},
                             sort_keys=True, default=str).encode())
    digest.update(str(audio.shape).encode())
    digest.update(np.ascontiguousarray(audio).view(np.uint8).data)
    return digest.hexdigest()[:32]


def cached_fbank(audio: np.ndarray, spec: FeatureSpec, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """Unnormalised features of padded windows, computed once and kept in ``cache_dir`` (keyed by audio + spec).

    Runs with other seeds, resumed runs and every epoch reuse them, so a GPU epoch is not bound
    by fbank computation. Without ``cache_dir`` the features are computed in memory only.
    """
    if cache_dir is None or audio.shape[0] == 0:
        return fbank_batches(audio, spec, normalized=False)
    directory = Path(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fbank-{_cache_key(audio, spec)}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # a damaged cache file is recomputed, never trusted
            log.warning("%s: unreadable feature cache (%s); recomputing", path, exc)
    feats = fbank_batches(audio, spec, normalized=False)
    with output_path(path) as tmp:
        torch.save(feats, tmp)
    return feats


def load_synthetic(roots: list[str], spec: FeatureSpec, labels: tuple[str, ...] = CLASSES) -> CycleWindows:
    """Every cycle of synthetic datasets (ICBHI layout or class folders named after ``labels``), ALL for training.

    The split file of a synthetic set is ignored: synthetic data never enters validation or test.
    """
    from stethoedge.data.folders import list_folder_dataset, load_folder_items

    parts = []
    for root in roots:
        path = Path(root)
        if not path.is_dir():
            raise DataError(f"{root}: synthetic data directory does not exist")
        if any((path / name).is_dir() for name in labels):
            items = load_folder_items(list_folder_dataset(path, labels), spec.sample_rate, n_classes=len(labels))
            audio = [cyclic_pad(a, spec.window_samples) for a, _ in items]
            parts.append(CycleWindows(np.stack(audio) if audio else np.zeros((0, spec.window_samples), np.float32),
                                      np.asarray([lab for _, lab in items], dtype=np.int64),
                                      [f"synthetic:{path.name}"] * len(items)))
        else:
            parts.append(load_windows(list_recordings(path), spec, desc=f"loading synthetic {path.name}"))
    audio = np.concatenate([p.audio for p in parts]) if parts else np.zeros((0, spec.window_samples), np.float32)
    labels = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, np.int64)
    return CycleWindows(audio.astype(np.float32, copy=False), labels, [s for p in parts for s in p.stems])
