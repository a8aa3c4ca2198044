"""SPRSound (SJTU Paediatric Respiratory Sound Database) parser: records, events, patients, splits.

Torch-free. A release folder holds ``<split>/<patient>_<age>_<sex>_<location>_<number>.flac`` (or
.wav) beside a JSON annotation of the same stem::

    {"record_annotation": "Normal" | "CAS" | "DAS" | "CAS & DAS" | "Poor Quality",
     "event_annotation": [{"start": "299", "end": "2009", "type": "Normal"}, ...]}   # ms

Events map to the project's four classes (crackle = fine/coarse crackle, wheeze = wheeze, rhonchi
or stridor, both = wheeze+crackle); the seven original types are kept on every event. Segments are
cut from the recording resampled to the model rate and, like ICBHI cycles, cyclically padded to the
model window by the caller (stethoedge.runtime.padding.cyclic_pad).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES

log = logging.getLogger("stethoedge.train")

#: The seven event types of the release, in its own spelling.
EVENT_TYPES = ("Normal", "Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi", "Stridor", "Wheeze+Crackle")
#: Event type -> index into CLASSES (normal, crackle, wheeze, both).
EVENT_TO_CLASS = {"Normal": 0, "Fine Crackle": 1, "Coarse Crackle": 1, "Wheeze": 2, "Rhonchi": 2, "Stridor": 2,
                  "Wheeze+Crackle": 3}
RECORD_LABELS = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
#: The official folders of the 2022 release and what they are for.
SPLITS = {"train2022": "train", "test2022_inter": "test-inter", "test2022_intra": "test-intra"}
AUDIO_SUFFIXES = (".flac", ".wav")
_STEM = re.compile(r"^(_?)(\d+)_([\d.]+)_([01])_(p[1-4])_(\d+)$")
#: Events shorter than this are not usable windows (one 25 ms frame plus margin).
MIN_EVENT_S = 0.05


@dataclass(frozen=True)
class Event:
    """One annotated event: seconds from the recording start and its original type."""

    start_s: float
    end_s: float
    type: str

    @property
    def label(self) -> int:
        """Index into CLASSES (normal, crackle, wheeze, both)."""
        return EVENT_TO_CLASS[self.type]


@dataclass(frozen=True)
class SprRecord:
    """One recording with its record label, events and the patient/location from its name."""

    stem: str
    audio_path: Path
    split: str  # train | test-inter | test-intra (the folder's role)
    patient: str
    age: float
    sex: int  # 0 male, 1 female
    location: str  # p1..p4
    record_label: str
    events: tuple[Event, ...]


def parse_stem(stem: str) -> tuple[str, float, int, str]:
    """(patient, age, sex, location) from ``<patient>_<age>_<sex>_<location>_<number>``."""
    m = _STEM.match(stem)
    if not m:
        raise DataError(f"{stem}: not an SPRSound name <patient>_<age>_<sex 0/1>_<p1..p4>_<number>")
    anonymised, patient, age, sex, location, _ = m.groups()
    return anonymised + patient, float(age), int(sex), location


def parse_annotation(path: str | os.PathLike) -> tuple[str, tuple[Event, ...]]:
    """(record label, events) of one JSON file; malformed content is a DataError naming the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: unreadable annotation ({exc})") from None
    record = data.get("record_annotation") if isinstance(data, dict) else None
    if record not in RECORD_LABELS:
        raise DataError(f"{p}: record_annotation {record!r} is not one of {', '.join(RECORD_LABELS)}")
    listed = data.get("event_annotation") or []
    if not isinstance(listed, list):
        raise DataError(f"{p}: event_annotation must be a list of events, got {type(listed).__name__}")
    events = []
    for k, ev in enumerate(listed):
        try:
            start, end, kind = float(ev["start"]) / 1000.0, float(ev["end"]) / 1000.0, str(ev["type"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise DataError(f"{p}: event {k} needs numeric start/end (ms) and a type, got {ev!r:.200}") from None
        if kind not in EVENT_TO_CLASS:
            raise DataError(f"{p}: event {k} type {kind!r:.80} is not one of {', '.join(EVENT_TYPES)}")
        if not (math.isfinite(start) and math.isfinite(end)):
            raise DataError(f"{p}: event {k} has a non-finite time (start {start} s, end {end} s)")
        if not 0 <= start < end:
            raise DataError(f"{p}: event {k} has start {start:.3f} s >= end {end:.3f} s")
        events.append(Event(start, end, kind))
    return record, tuple(events)


def list_records(root: str | os.PathLike, splits: tuple[str, ...] = tuple(SPLITS)) -> list[SprRecord]:
    """Every annotated recording of the given official folders under ``root``, sorted by split and stem."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected the SPRSound release with {', '.join(SPLITS)})")
    out: list[SprRecord] = []
    for folder in splits:
        if folder not in SPLITS:
            raise DataError(f"{folder}: not an SPRSound split; choose from {', '.join(SPLITS)}")
        d = root / folder
        if not d.is_dir():
            raise DataError(f"{d}: missing SPRSound split folder")
        for audio in sorted(p for p in d.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")):
            ann = audio.with_suffix(".json")
            if not ann.is_file():
                log.warning("%s: no annotation %s beside it; skipped", audio, ann.name)
                continue
            patient, age, sex, location = parse_stem(audio.stem)
            record, events = parse_annotation(ann)
            out.append(SprRecord(audio.stem, audio, SPLITS[folder], patient, age, sex, location, record, events))
    if not out:
        raise DataError(f"{root}: no SPRSound recordings found")
    return out


def load_events(record: SprRecord, sample_rate: int = 16000) -> list[tuple[np.ndarray, Event]]:
    """Cut every event out of the recording resampled to ``sample_rate`` Hz (unpadded float32)."""
    audio = load_audio(record.audio_path, sample_rate).samples
    n = audio.shape[0]
    out = []
    for ev in record.events:
        start, end = int(round(ev.start_s * sample_rate)), min(int(round(ev.end_s * sample_rate)), n)
        if end - start < MIN_EVENT_S * sample_rate:
            log.warning("%s: event %.3f-%.3f s lies outside the audio or is too short; skipped",
                        record.audio_path, ev.start_s, ev.end_s)
            continue
        out.append((audio[start:end].copy(), ev))
    return out


def event_counts(records: list[SprRecord]) -> dict[str, int]:
    """Events per original type (plus the 4-class totals under the CLASSES names)."""
    counts = {t: 0 for t in EVENT_TYPES} | {c: 0 for c in CLASSES}
    for r in records:
        for ev in r.events:
            counts[ev.type] += 1
            counts[CLASSES[ev.label]] += 1
    return counts
