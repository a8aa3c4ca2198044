"""Several real sources as one table of labelled 8 s windows, with patient-held-out roles and a feature cache.

Each example is one annotated segment (an ICBHI cycle or an SPRSound event) resampled to 16 kHz
and cyclically padded to the model window, exactly as the device pads a short recording. Every
example carries its source, device, patient and role:

* ``train`` / ``val``: training patients; ``val`` is carved out of them by patient (seeded) and is
  the only data that selects epochs, models, thresholds or temperatures;
* ``eval``: ICBHI official-train patients held out from both (the ICBHI number we can report);
* ``test-inter`` / ``test-intra``: SPRSound's official test folders (unseen / seen patients);
* ``test-icbhi``: ICBHI official-test-split recordings of ../shared/data/icbhi_sample (a Litt3200
  device among them that no training example comes from).

``build_table`` writes ``meta.json`` + ``features.npy`` (float16, (n, frames, mels)) under a cache
folder keyed by the feature spec and the inputs, so repeated CPU runs never recompute the front end.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.outputs import atomic_write_text, open_output
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.data.icbhi import list_recordings, load_cycles
from stethoedge.data.sprsound import list_records, load_events

log = logging.getLogger("stethoedge.train")

ROLES = ("train", "val", "eval", "test-inter", "test-intra", "test-icbhi")
SPR_DEVICE = "Yunting-II"


@dataclass
class SourceConfig:
    """Where the real data is and how patients are held out."""

    sprsound: str | None = None  # SPRSound release root (train2022/, test2022_inter/, test2022_intra/)
    icbhi: str | None = None  # ICBHI official-train recordings (e.g. ../shared/data/icbhi_train16k)
    icbhi_test: str | None = None  # recordings of which only the official TEST split is used
    val_fraction: float = 0.2  # of training patients, per source
    icbhi_eval_fraction: float = 0.25  # ICBHI patients held out from training and selection
    seed: int = 0
    max_per_source: int | None = None  # for tests: cap examples per (source, role)


@dataclass
class ExampleTable:
    """Labels and provenance of n examples; ``features`` is (n, frames, mels) float16 (memory-mapped)."""

    label: np.ndarray
    role: np.ndarray
    source: np.ndarray
    device: np.ndarray
    patient: np.ndarray
    recording: np.ndarray
    event_type: np.ndarray
    features: np.ndarray
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def where(self, role: str, source: str | None = None) -> np.ndarray:
        """Indices of one role (and source)."""
        mask = self.role == role
        if source is not None:
            mask &= self.source == source
        return np.flatnonzero(mask)


def hold_out_patients(patients: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded random ``fraction`` of the distinct patients (at least one when fraction > 0)."""
    unique = sorted(set(patients))
    if fraction <= 0 or len(unique) < 2:
        return set()
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(unique))))
    return {unique[i] for i in rng.permutation(len(unique))[:k]}


def iter_segments(cfg: SourceConfig) -> Iterator[tuple]:
    """Yield (audio 16 kHz, label, role, source, device, patient, recording, event type)."""
    rows = []
    if cfg.sprsound:
        records = list_records(cfg.sprsound)
        train_patients = [r.patient for r in records if r.split == "train"]
        val = hold_out_patients(train_patients, cfg.val_fraction, cfg.seed)
        for r in records:
            role = r.split if r.split != "train" else ("val" if r.patient in val else "train")
            rows.append((r, role, "sprsound"))
    if cfg.icbhi:
        recs = [r for r in list_recordings(cfg.icbhi) if r.split == "train"]
        patients = [str(r.patient) for r in recs]
        held = hold_out_patients(patients, cfg.icbhi_eval_fraction, cfg.seed + 1)
        rest = [p for p in patients if p not in held]
        val = hold_out_patients(rest, cfg.val_fraction / max(1e-9, 1 - cfg.icbhi_eval_fraction), cfg.seed + 2)
        for r in recs:
            p = str(r.patient)
            rows.append((r, "eval" if p in held else "val" if p in val else "train", "icbhi"))
    if cfg.icbhi_test:
        rows += [(r, "test-icbhi", "icbhi") for r in list_recordings(cfg.icbhi_test) if r.split == "test"]
    taken: dict[tuple[str, str], int] = {}
    for rec, role, source in rows:
        if cfg.max_per_source is not None and taken.get((source, role), 0) >= cfg.max_per_source:
            continue
        if source == "sprsound":
            for audio, ev in load_events(rec):
                yield audio, ev.label, role, source, SPR_DEVICE, f"spr:{rec.patient}", rec.stem, ev.type
                taken[(source, role)] = taken.get((source, role), 0) + 1
        else:
            for audio, label in load_cycles(rec):
                yield audio, label, role, source, rec.info.device, f"icbhi:{rec.patient}", rec.stem, ""
                taken[(source, role)] = taken.get((source, role), 0) + 1


def cache_key(cfg: SourceConfig, spec: FeatureSpec) -> str:
    """Hash of everything the cached table depends on."""
    blob = json.dumps({"cfg": cfg.__dict__, "spec": spec.to_dict(), "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_table(cfg: SourceConfig, spec: FeatureSpec, cache_dir: str | os.PathLike) -> ExampleTable:
    """The example table for ``cfg``, computed once and then read from ``cache_dir/<key>/``."""
    folder = Path(cache_dir) / cache_key(cfg, spec)
    meta_path, feat_path = folder / "meta.json", folder / "features.npy"
    if not meta_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        meta: dict[str, list] = {k: [] for k in ("label", "role", "source", "device", "patient", "recording",
                                                  "event_type")}
        feats = []
        from tqdm import tqdm

        for audio, *row in tqdm(iter_segments(cfg), desc="segments -> features", unit="seg"):
            window = cyclic_pad(audio, spec.window_samples)
            feats.append(compute_features(window, spec).astype(np.float16))
            for key, value in zip(meta, row):
                meta[key].append(value)
        with open_output(feat_path) as fh:
            np.save(fh, np.stack(feats) if feats else np.zeros((0, *spec.input_shape), np.float16))
        atomic_write_text(meta_path, json.dumps({"config": cfg.__dict__, "feature_spec": spec.to_dict(), **meta}))
    meta = json.loads(meta_path.read_text())
    arrays = {k: np.asarray(meta[k]) for k in ("label", "role", "source", "device", "patient", "recording",
                                               "event_type")}
    arrays["label"] = arrays["label"].astype(np.int64)
    return ExampleTable(**arrays, features=np.load(feat_path, mmap_mode="r"),
                        info={"cache": str(folder), "config": meta["config"]})


def summary(table: ExampleTable) -> dict[str, dict[str, list[int]]]:
    """Class counts (normal, crackle, wheeze, both) and patients per source and role."""
    out: dict[str, dict[str, list[int]]] = {}
    for source in sorted(set(table.source.tolist())):
        for role in ROLES:
            idx = table.where(role, source)
            if len(idx):
                out.setdefault(source, {})[role] = np.bincount(table.label[idx], minlength=4).tolist() + [
                    len(set(table.patient[idx].tolist()))]
    return out
