"""Respiratory cycles of an ICBHI-layout directory as fixed-size log-mels (+ aligned audio) for generators."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.dataset import split_recordings
from stethoedge.train.features_torch import log_mel_fbank_torch, normalize_torch
from stethoedge.train.generators.base import MelSet
from stethoedge.data.icbhi import Recording, load_cycles


def generator_spec(n_mels: int, base: FeatureSpec | None = None) -> FeatureSpec:
    """The classifier's feature spec with ``n_mels`` mel bands (normalisation set later from data)."""
    return replace(base or FeatureSpec(), n_mels=n_mels)


def samples_for_frames(n_frames: int, spec: FeatureSpec) -> int:
    """Audio samples whose Kaldi fbank has exactly ``n_frames`` frames."""
    return spec.frame_length + (n_frames - 1) * spec.frame_shift


def cycles_to_melset(cycles: list[np.ndarray], labels: list[int], n_frames: int, spec: FeatureSpec,
                     with_audio: bool = False, normalize: bool = True) -> MelSet:
    """Cyclically pad each cycle to ``n_frames`` frames of audio and compute its log-mel.

    With ``normalize`` the spec's statistics are first replaced by the mean/std of these cycles
    (call it on the training cycles, then reuse the returned ``spec`` for the others with
    ``normalize=False``). ``audio`` (when asked) is the first ``n_frames * frame_shift`` samples,
    the span a vocoder re-creates from the mel.
    """
    if not cycles:
        raise DataError("no respiratory cycles to build generator data from")
    n_samples = samples_for_frames(n_frames, spec)
    padded = torch.from_numpy(np.stack([cyclic_pad(c, n_samples) for c in cycles]))
    fbank = torch.cat([log_mel_fbank_torch(padded[i:i + 64], spec) for i in range(0, len(padded), 64)])
    if normalize:
        spec = spec.with_normalization(float(fbank.double().mean()), float(fbank.double().std()))
    mels = normalize_torch(fbank, spec).float()
    audio = padded[:, : n_frames * spec.frame_shift].float() if with_audio else None
    return MelSet(mels, torch.as_tensor(labels, dtype=torch.int64), spec, audio)


def recording_cycles(recordings: list[Recording], sample_rate: int) -> tuple[list[np.ndarray], list[int]]:
    """All annotated cycles (audio, label) of ``recordings``."""
    audio, labels = [], []
    for rec in recordings:
        for cycle, label in load_cycles(rec, sample_rate):
            audio.append(cycle)
            labels.append(label)
    return audio, labels


def load_melsets(root: str | os.PathLike, n_mels: int = 128, n_frames: int = 256, with_audio: bool = False,
                 val_fraction: float = 0.25, seed: int = 0, spec: FeatureSpec | None = None) -> dict[str, MelSet]:
    """{'train', 'val', 'test'} MelSets of an ICBHI-layout directory, split as the classifier splits it.

    Normalisation statistics come from the TRAIN cycles only; generators must be fitted on
    ``train`` only so that validation and test patients never leak into synthetic data. Pass a
    trained generator's ``spec`` to reuse its normalisation instead.
    """
    splits = split_recordings(root, val_fraction, seed)
    fixed = spec is not None
    spec = spec if fixed else generator_spec(n_mels)
    if spec.n_mels != n_mels:
        raise DataError(f"the feature spec has {spec.n_mels} mel bands, not {n_mels}")
    out: dict[str, MelSet] = {}
    train_audio, train_labels = recording_cycles(splits["train"], spec.sample_rate)
    out["train"] = cycles_to_melset(train_audio, train_labels, n_frames, spec, with_audio, normalize=not fixed)
    for name in ("val", "test"):
        audio, labels = recording_cycles(splits[name], spec.sample_rate)
        if audio:
            out[name] = cycles_to_melset(audio, labels, n_frames, out["train"].spec, with_audio, normalize=False)
    return out
