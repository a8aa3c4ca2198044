"""Plain class-folder datasets: ``<root>/<class>/*.wav`` with class names from a label set.

For recordings that come without ICBHI annotations (a clinic's own labelled clips): each
file is one example of its folder's class, and files longer than the model window are cut
into consecutive pieces. There are no patient ids, so any split is per file.

The class names are ``CLASSES`` (the ICBHI four) unless a run's label set is given (``classes``):
a 2-class ``normal/abnormal`` or a 7-class SPRSound-style set trains from folders named after it.
As a training set (``list_labelled_folders``) the layout may also be ``<root>/train/<class>/`` and
``<root>/test/<class>/`` (the official split); every file is then a ``FolderRecording``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES

log = logging.getLogger("stethoedge.data")

AUDIO_SUFFIXES: tuple[str, ...] = (".wav",)
MAX_PIECE_S = 8.0
MIN_PIECE_S = 0.025


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def list_folder_dataset(root: str | os.PathLike, classes: Sequence[str] = CLASSES) -> list[tuple[Path, int]]:
    """(wav path, class index in ``classes``) for every ``<root>/<class>/**/*.wav``, sorted by path.

    Folder names must be class names (default normal, crackle, wheeze, both); hidden folders are
    ignored. An unknown folder, a wav directly under ``root`` or no wavs at all is a DataError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    classes = tuple(classes)
    valid = ", ".join(classes)
    items: list[tuple[Path, int]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if _is_audio(entry):
            raise DataError(f"{entry}: audio must sit in a class folder ({valid}), not directly in {root}")
        if not entry.is_dir():
            continue
        if entry.name not in classes:
            raise DataError(f"{entry}: unknown class folder {entry.name!r}; valid names are {valid}")
        label = classes.index(entry.name)
        items.extend((p, label) for p in sorted(entry.rglob("*")) if _is_audio(p))
    if not items:
        raise DataError(f"{root}: no .wav files in class folders ({valid})")
    return items


def split_pieces(audio: np.ndarray, sample_rate: int, max_piece_s: float = MAX_PIECE_S) -> list[np.ndarray]:
    """Cut audio into the fewest consecutive, near-equal pieces of at most ``max_piece_s`` seconds.

    Equal pieces rather than fixed 8 s chunks, so a 9 s file gives two 4.5 s pieces instead
    of an 8 s piece and a 1 s scrap.
    """
    max_len = max(1, int(round(max_piece_s * sample_rate)))
    n_pieces = max(1, math.ceil(audio.shape[0] / max_len))
    bounds = np.linspace(0, audio.shape[0], n_pieces + 1).round().astype(int)
    return [audio[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def load_folder_items(
    items: list[tuple[Path, int]], sample_rate: int = 16000, max_piece_s: float = MAX_PIECE_S,
    n_classes: int = len(CLASSES),
) -> list[tuple[np.ndarray, int]]:
    """Load each (path, label) at ``sample_rate`` Hz as (float32 audio, label) cycles.

    Files longer than ``max_piece_s`` seconds become several consecutive pieces with the
    file's label; pieces are unpadded (the trainer pads). Files shorter than 25 ms are
    skipped with a warning; unreadable audio raises AudioError naming the file.
    """
    out: list[tuple[np.ndarray, int]] = []
    for path, label in items:
        if not 0 <= label < n_classes:
            raise DataError(f"{path}: label {label} is not a class index 0-{n_classes - 1}")
        audio = load_audio(path, sample_rate).samples
        if audio.shape[0] < MIN_PIECE_S * sample_rate:
            log.warning("%s: shorter than %g ms; skipped", path, MIN_PIECE_S * 1000)
            continue
        out.extend((piece, label) for piece in split_pieces(audio, sample_rate, max_piece_s))
    return out


@dataclass(frozen=True)
class FolderRecording:
    """One labelled file of a class-folder training set, shaped like an ICBHI ``Recording`` for the splits.

    ``stem`` is the file's path under the dataset root (POSIX, without suffix): unique, and what
    splits.json lists. There is no patient id: ``patient`` is -1 and splits are per file.
    """

    path: Path
    label: int
    stem: str
    split: str  # "train" | "test"
    n_classes: int

    @property
    def patient(self) -> int:
        """No patient ids in class folders."""
        return -1

    def cycles(self, sample_rate: int = 16000) -> list[tuple[np.ndarray, int]]:
        """The file's pieces (at most ``MAX_PIECE_S`` each) with its label, unpadded."""
        return load_folder_items([(self.path, self.label)], sample_rate, n_classes=self.n_classes)


def is_folder_dataset(root: str | os.PathLike, classes: Sequence[str]) -> bool:
    """Whether ``root`` holds class folders named after ``classes`` (directly, or under train/ and test/)."""
    root = Path(root)
    return any((root / c).is_dir() or (root / "train" / c).is_dir() for c in classes)


def list_labelled_folders(root: str | os.PathLike, classes: Sequence[str]) -> list[FolderRecording]:
    """Every file of a class-folder training set: ``<root>/<class>/`` (all train) or ``<root>/{train,test}/<class>/``."""
    root = Path(root)
    classes = tuple(classes)
    parts = [(root / s, s) for s in ("train", "test") if (root / s).is_dir()] or [(root, "train")]
    out: list[FolderRecording] = []
    for folder, split in parts:
        for path, label in list_folder_dataset(folder, classes):
            stem = path.relative_to(root).with_suffix("").as_posix()
            out.append(FolderRecording(path, label, stem, split, len(classes)))
    return out


def folder_holdout(recordings: list[Any], fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Split training files into (train, validation) per file, stratified by class (seeded).

    Each class with two or more files gives ``round(fraction * n)`` of them (at least one) to validation.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    train = sorted((r for r in recordings if r.split == "train"), key=lambda r: r.stem)
    rng = np.random.default_rng(seed)
    val_stems: set[str] = set()
    for label in sorted({r.label for r in train}):
        members = [r for r in train if r.label == label]
        if fraction == 0.0 or len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        val_stems.update(members[i].stem for i in rng.permutation(len(members))[:k])
    return [r for r in train if r.stem not in val_stems], [r for r in train if r.stem in val_stems]


def recording_cycles(recording: Any, sample_rate: int = 16000) -> list[tuple[np.ndarray, int]]:
    """(audio, label) cycles of an ICBHI ``Recording`` (its annotated cycles) or a ``FolderRecording``."""
    if isinstance(recording, FolderRecording):
        return recording.cycles(sample_rate)
    from stethoedge.data.icbhi import load_cycles

    return load_cycles(recording, sample_rate)


def list_dataset(root: str | os.PathLike, classes: Sequence[str] = CLASSES) -> list[Any]:
    """The recordings of a training set for a label set: class folders named after ``classes``, or the
    ICBHI layout (whose annotations give the four ICBHI classes only)."""
    from stethoedge.data.icbhi import list_recordings

    classes = tuple(classes)
    if is_folder_dataset(root, classes):
        return list_labelled_folders(root, classes)
    if classes != CLASSES:
        raise DataError(f"{root}: the label set {', '.join(classes)} needs class folders named after it "
                        f"(<root>/<label>/*.wav or <root>/train|test/<label>/*.wav); ICBHI annotations give "
                        f"{', '.join(CLASSES)} only")
    return list_recordings(Path(root))
