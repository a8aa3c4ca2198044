"""Plain class-folder datasets: ``<root>/<class>/*.wav`` with class names from ``CLASSES``.

For recordings that come without ICBHI annotations (a clinic's own labelled clips): each
file is one example of its folder's class, and files longer than the model window are cut
into consecutive pieces. There are no patient ids, so any split is per file.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

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


def list_folder_dataset(root: str | os.PathLike) -> list[tuple[Path, int]]:
    """(wav path, 4-class label) for every ``<root>/<class>/**/*.wav``, sorted by path.

    Folder names must be class names (normal, crackle, wheeze, both); hidden folders are
    ignored. An unknown folder, a wav directly under ``root`` or no wavs at all is a DataError.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    valid = ", ".join(CLASSES)
    items: list[tuple[Path, int]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if _is_audio(entry):
            raise DataError(f"{entry}: audio must sit in a class folder ({valid}), not directly in {root}")
        if not entry.is_dir():
            continue
        if entry.name not in CLASSES:
            raise DataError(f"{entry}: unknown class folder {entry.name!r}; valid names are {valid}")
        label = CLASSES.index(entry.name)
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
    items: list[tuple[Path, int]], sample_rate: int = 16000, max_piece_s: float = MAX_PIECE_S
) -> list[tuple[np.ndarray, int]]:
    """Load each (path, label) at ``sample_rate`` Hz as (float32 audio, label) cycles.

    Files longer than ``max_piece_s`` seconds become several consecutive pieces with the
    file's label; pieces are unpadded (the trainer pads). Files shorter than 25 ms are
    skipped with a warning; unreadable audio raises AudioError naming the file.
    """
    out: list[tuple[np.ndarray, int]] = []
    for path, label in items:
        if not 0 <= label < len(CLASSES):
            raise DataError(f"{path}: label {label} is not a class index 0-{len(CLASSES) - 1}")
        audio = load_audio(path, sample_rate).samples
        if audio.shape[0] < MIN_PIECE_S * sample_rate:
            log.warning("%s: shorter than %g ms; skipped", path, MIN_PIECE_S * 1000)
            continue
        out.extend((piece, label) for piece in split_pieces(audio, sample_rate, max_piece_s))
    return out
