"""ICBHI 2017 Respiratory Sound Database: annotations, file names, the official split, cycles.

Layout (as shipped, and as ``train/simulator.py`` writes it)::

    <root>/audio_and_txt_files/<patient>_<index>_<location>_<mode>_<device>.wav
    <root>/audio_and_txt_files/<same stem>.txt   # one "start_s end_s crackles wheezes" line per cycle
    <root>/ICBHI_challenge_train_test.txt        # "<stem>\\t<train|test>", patient-level split

Every malformed input raises ``DataError`` with a one-line ``<file>:<line>: ...`` message.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stethoedge.runtime.audio_io import load_audio
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES, label_from_flags

log = logging.getLogger("stethoedge.data")

SPLIT_FILENAME = "ICBHI_challenge_train_test.txt"
SPLITS: tuple[str, ...] = ("train", "test")
LOCATIONS: tuple[str, ...] = ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")
MODES: tuple[str, ...] = ("sc", "mc")
MIN_CYCLE_S = 0.025
#: Fallback rules of ``resolve_split`` for stems the split file does not list.
SPLIT_FALLBACKS: tuple[str, ...] = ("patient", "train", "test")

_STEM_RE = re.compile(
    r"^(?P<patient>\d+)_(?P<index>[0-9A-Za-z]+)_(?P<location>[A-Za-z]{2})_(?P<mode>[a-z]{2})_(?P<device>[0-9A-Za-z]+)$"
)

#: Audio encodings a recording may come in (the annotation is always <stem>.txt).
AUDIO_SUFFIXES = (".wav", ".flac")

@dataclass(frozen=True)
class Cycle:
    """One annotated respiratory cycle: times in seconds from the start of the recording."""

    start_s: float
    end_s: float
    crackles: int
    wheezes: int

    @property
    def label(self) -> int:
        """4-class index (normal, crackle, wheeze, both)."""
        return label_from_flags(self.crackles, self.wheezes)

    @property
    def duration_s(self) -> float:
        """Cycle length in seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class RecordingInfo:
    """The fields of an ICBHI file name such as ``101_1b1_Al_sc_Meditron``."""

    patient: int
    index: str
    location: str
    mode: str
    device: str

    @property
    def key(self) -> tuple[int, str, str, str]:
        """Identity of a recording without its device (the device part of names is unreliable)."""
        return (self.patient, self.index, self.location, self.mode)


@dataclass
class Recording:
    """A wav/annotation pair and the split it belongs to."""

    stem: str
    wav_path: Path
    annotation_path: Path
    info: RecordingInfo
    split: str

    @property
    def patient(self) -> int:
        """Patient number."""
        return self.info.patient

    def cycles(self) -> list[Cycle]:
        """The annotated cycles (parsed on every call; cheap)."""
        return parse_annotation(self.annotation_path)


# --------------------------------------------------------------------------- text files


def _read_lines(path: str | os.PathLike) -> list[str]:
    """Text lines of a small file, CRLF/CR tolerant; unreadable files are a DataError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, not a text file") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not a UTF-8 text file (bad byte at offset {exc.start})") from None
    return text.splitlines()


def _parse_time(token: str, where: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataError(f"{where}: {what} {token!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {what} {token!r} is not finite")
    if value < 0:
        raise DataError(f"{where}: {what} {value:g} s is negative")
    return value


def _parse_flag(token: str, where: str, what: str) -> int:
    if token not in ("0", "1"):
        raise DataError(f"{where}: {what} flag {token!r} must be 0 or 1")
    return int(token)


def parse_annotation_line(line: str, where: str) -> Cycle:
    """Parse one ``start_s end_s crackles wheezes`` line (seconds; flags 0/1); ``where`` prefixes errors."""
    fields = line.split()
    if len(fields) != 4:
        raise DataError(f"{where}: expected 4 fields 'start end crackles wheezes', got {len(fields)}")
    start = _parse_time(fields[0], where, "start")
    end = _parse_time(fields[1], where, "end")
    if end <= start:
        raise DataError(f"{where}: cycle end {end:g} s is not after its start {start:g} s")
    return Cycle(start, end, _parse_flag(fields[2], where, "crackles"), _parse_flag(fields[3], where, "wheezes"))


def parse_annotation(path: str | os.PathLike) -> list[Cycle]:
    """Read an ICBHI annotation file: one cycle per line, times in seconds, flags 0/1.

    Tabs or spaces, CRLF and blank lines are accepted. Any other deviation raises
    ``DataError("<file>:<line>: ...")``.
    """
    return [
        parse_annotation_line(line, f"{path}:{n}")
        for n, line in enumerate(_read_lines(path), start=1)
        if line.strip()
    ]


def parse_stem(stem: str) -> RecordingInfo:
    """Split an ICBHI file stem (``101_1b1_Al_sc_Meditron``) into its fields."""
    m = _STEM_RE.match(stem)
    if m is None:
        raise DataError(
            f"{stem!r} is not an ICBHI recording name <patient>_<index>_<location>_<mode>_<device> "
            "(e.g. 101_1b1_Al_sc_Meditron)"
        )
    if m["location"] not in LOCATIONS:
        raise DataError(f"{stem!r}: chest location {m['location']!r} is not one of {', '.join(LOCATIONS)}")
    if m["mode"] not in MODES:
        raise DataError(f"{stem!r}: acquisition mode {m['mode']!r} is not one of {', '.join(MODES)}")
    return RecordingInfo(int(m["patient"]), m["index"], m["location"], m["mode"], m["device"])


# --------------------------------------------------------------------------- split


def read_split(path: str | os.PathLike) -> dict[str, str]:
    """Read ``ICBHI_challenge_train_test.txt``: ``stem<whitespace>train|test`` per line -> {stem: split}."""
    split: dict[str, str] = {}
    for n, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'stem<TAB>train|test', got {len(fields)} fields")
        stem, value = fields
        if value not in SPLITS:
            raise DataError(f"{where}: split {value!r} is not 'train' or 'test'")
        if split.get(stem, value) != value:
            raise DataError(f"{where}: {stem} is listed as both {split[stem]} and {value}")
        split[stem] = value
    if not split:
        raise DataError(f"{path}: split file lists no recordings")
    return split


def _loose_index(split: dict[str, str]) -> dict[tuple[int, str, str, str], set[str]]:
    """Split values by device-less recording key; names that do not parse are only matched exactly."""
    index: dict[tuple[int, str, str, str], set[str]] = defaultdict(set)
    for stem, value in split.items():
        try:
            index[parse_stem(stem).key].add(value)
        except DataError:
            continue
    return index


def _patient_index(split: dict[str, str]) -> dict[int, set[str]]:
    index: dict[int, set[str]] = defaultdict(set)
    for stem, value in split.items():
        try:
            index[parse_stem(stem).patient].add(value)
        except DataError:
            continue
    return index


def resolve_split(split: dict[str, str], stems: list[str], fallback: str | None = None) -> dict[str, str]:
    """Map every stem in ``stems`` to "train"/"test" using the official ``split`` table.

    Exact name first; otherwise the recording is matched on (patient, index, location, mode)
    ignoring the device, because the official file and the audio disagree on the device of
    some recordings (226_1b1_Pl_sc_Meditron vs 226_1b1_Pl_sc_LittC2SE; filename_differences.txt).
    A stem still unmatched raises DataError unless ``fallback`` is "patient" (take the split of
    the patient's other recordings; the official split is patient-level) or "train"/"test".
    """
    if fallback is not None and fallback not in SPLIT_FALLBACKS:
        raise DataError(f"unknown split fallback {fallback!r}; use one of {', '.join(SPLIT_FALLBACKS)}")
    loose = _loose_index(split)
    patients = _patient_index(split) if fallback == "patient" else {}
    out: dict[str, str] = {}
    for stem in stems:
        if stem in split:
            out[stem] = split[stem]
            continue
        info = parse_stem(stem)
        candidates = loose.get(info.key, set())
        if len(candidates) > 1:
            raise DataError(f"{stem}: the split file lists recordings like it as both train and test")
        if candidates:
            (out[stem],) = candidates
            log.debug("%s: split taken from a name that differs only in the device", stem)
            continue
        if fallback == "patient" and len(patients.get(info.patient, ())) == 1:
            (out[stem],) = patients[info.patient]
        elif fallback in SPLITS:
            out[stem] = fallback
        elif fallback == "patient":
            raise DataError(f"{stem}: not listed in the train/test split file, nor is any other recording "
                            f"of patient {info.patient}")
        else:
            raise DataError(f"{stem}: not listed in the train/test split file (no fallback rule given)")
        log.warning("%s: not in the split file; assigned to %s by the %r fallback", stem, out[stem], fallback)
    return out


def default_patient_split(patients: list[int]) -> dict[int, str]:
    """Deterministic patient-level split used when no split file exists.

    Patients sorted by number; positions 1 and 3 of every 5 go to test (40 %, the ICBHI
    train/test ratio), so any set of two or more patients has both splits.
    """
    return {p: ("test" if i % 5 in (1, 3) else "train") for i, p in enumerate(sorted(set(patients)))}


# --------------------------------------------------------------------------- recordings


def find_split_file(root: Path) -> Path | None:
    """The shallowest ``ICBHI_challenge_train_test.txt`` under ``root``, or None."""
    found = sorted(root.rglob(SPLIT_FILENAME), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def list_recordings(
    root: str | os.PathLike, split_file: str | os.PathLike | None = None, split_fallback: str | None = None
) -> list[Recording]:
    """Every ``<stem>.wav`` (or ``.flac``) with a ``<stem>.txt`` beside it anywhere under ``root``, by stem.

    The split comes from ``split_file``, else from ``ICBHI_challenge_train_test.txt`` under
    ``root``, else from ``default_patient_split``; ``split_fallback`` is passed to
    ``resolve_split`` for recordings the split file does not list. A wav without annotation
    is skipped with a warning, hidden files are ignored, and the same stem in two folders is a
    DataError (it would leak between splits).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    pairs: dict[str, tuple[Path, Path]] = {}
    # Hidden files are skipped: macOS zips carry "._<stem>.wav" resource forks beside the audio.
    wavs = (p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".") and p.is_file())
    for wav in sorted(wavs):
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            log.warning("%s: no annotation %s beside it; skipped", wav, txt.name)
            continue
        if wav.stem in pairs:
            raise DataError(f"{wav}: recording {wav.stem} also exists as {pairs[wav.stem][0]}")
        pairs[wav.stem] = (wav, txt)
    if not pairs:
        raise DataError(f"{root}: no <stem>.wav (or .flac) + <stem>.txt pairs found")
    infos = {stem: _stem_info(stem, wav) for stem, (wav, _) in pairs.items()}
    if split_file is None:
        split_file = find_split_file(root)
    if split_file is not None:
        try:
            splits = resolve_split(read_split(split_file), sorted(pairs), fallback=split_fallback)
        except DataError as exc:
            message = str(exc)
            raise DataError(message if message.startswith(str(split_file)) else f"{split_file}: {message}") from None
    else:
        log.info("%s: no %s; using the deterministic patient-level split", root, SPLIT_FILENAME)
        by_patient = default_patient_split([info.patient for info in infos.values()])
        splits = {stem: by_patient[info.patient] for stem, info in infos.items()}
    return [
        Recording(stem, wav, txt, infos[stem], splits[stem]) for stem, (wav, txt) in sorted(pairs.items())
    ]


def _stem_info(stem: str, wav: Path) -> RecordingInfo:
    try:
        return parse_stem(stem)
    except DataError as exc:
        raise DataError(f"{wav}: {exc}") from None


def load_cycles(recording: Recording, sample_rate: int = 16000) -> list[tuple[np.ndarray, int]]:
    """Cut each annotated cycle out of the recording resampled to ``sample_rate`` Hz.

    Returns (float32 audio, 4-class label) per usable cycle, unpadded. Cycle ends past the
    audio are clamped; cycles starting after the end, or shorter than 25 ms once clamped,
    are skipped with a warning.
    """
    cycles = parse_annotation(recording.annotation_path)
    audio = load_audio(recording.wav_path, sample_rate).samples
    n = audio.shape[0]
    out: list[tuple[np.ndarray, int]] = []
    for k, cycle in enumerate(cycles, start=1):
        start = int(round(cycle.start_s * sample_rate))
        end = min(int(round(cycle.end_s * sample_rate)), n)
        if start >= n:
            log.warning("%s:%d: cycle starts at %.3f s, after the audio ends (%.3f s); skipped",
                        recording.annotation_path, k, cycle.start_s, n / sample_rate)
            continue
        if end - start < MIN_CYCLE_S * sample_rate:
            log.warning("%s:%d: cycle shorter than %g ms once clamped to the audio; skipped",
                        recording.annotation_path, k, MIN_CYCLE_S * 1000)
            continue
        out.append((audio[start:end].copy(), cycle.label))
    return out


# --------------------------------------------------------------------------- validation hold-out


def cycle_label_counts(recording: Recording) -> np.ndarray:
    """Number of annotated cycles of each class (length ``len(CLASSES)``)."""
    counts = np.zeros(len(CLASSES), dtype=np.int64)
    for cycle in recording.cycles():
        counts[cycle.label] += 1
    return counts


def _holdout_score(val_counts: np.ndarray, rest_counts: np.ndarray, target: float) -> tuple[int, float]:
    """Higher is better: classes present on both sides first, then closeness to the target size."""
    covered = int(np.sum(val_counts > 0)) + int(np.sum(rest_counts > 0))
    return covered, -abs(float(val_counts.sum()) - target)


def patient_holdout(
    recordings: list[Recording], fraction: float = 0.2, seed: int = 0, trials: int = 256
) -> tuple[list[Recording], list[Recording]]:
    """Split the TRAIN recordings into (train, validation) by patient; test recordings are ignored.

    About ``fraction`` of the training cycles go to validation. Seeded search over patient
    orders, each filled greedily up to the target (overshooting up to twice the target for a
    patient that brings a missing class): the subset with the most classes present in both
    parts wins, then the one closest to the target size. Deterministic for a given ``seed``.
    Needs two or more training patients when ``fraction > 0``.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
    train = sorted((r for r in recordings if r.split == "train"), key=lambda r: r.stem)
    if not train:
        raise DataError("no training recordings to hold a validation set out of")
    if fraction == 0.0:
        return train, []
    per_patient: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(CLASSES), dtype=np.int64))
    for r in train:
        per_patient[r.patient] += cycle_label_counts(r)
    patients = sorted(per_patient)
    if len(patients) < 2:
        raise DataError(f"a patient-level validation split needs 2+ training patients, got {len(patients)}")
    total = sum(per_patient.values())
    target = fraction * float(total.sum())
    rng = np.random.default_rng(seed)
    best: tuple[tuple[int, float], list[int]] | None = None
    for _ in range(max(1, trials)):
        order = [patients[i] for i in rng.permutation(len(patients))]
        chosen: list[int] = []
        counts = np.zeros(len(CLASSES), dtype=np.int64)
        for p in order:
            if len(chosen) == len(patients) - 1:
                break  # training always keeps someone
            size = float(counts.sum() + per_patient[p].sum())
            fits = size - per_patient[p].sum() / 2 <= target
            rest = total - counts - per_patient[p]
            # A patient may overshoot the target (up to twice it) if it brings a class the
            # validation set lacks and training keeps.
            adds_class = bool(np.any((per_patient[p] > 0) & (counts == 0) & (rest > 0)))
            if fits or (adds_class and size <= 2 * target):
                chosen.append(p)
                counts = counts + per_patient[p]
        score = _holdout_score(counts, total - counts, target)
        if best is None or score > best[0]:
            best = (score, sorted(chosen))
    assert best is not None
    val_patients = set(best[1])
    missing = [CLASSES[c] for c in range(len(CLASSES)) if total[c] > 0 and
               sum(per_patient[p][c] for p in val_patients) == 0]
    if missing:
        log.info("validation patients %s have no %s cycles", sorted(val_patients), ", ".join(missing))
    return ([r for r in train if r.patient not in val_patients], [r for r in train if r.patient in val_patients])


def split_counts(recordings: list[Recording]) -> dict[str, Counter]:
    """Cycle label counts per split, keyed by class name (for logs and reports)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for r in recordings:
        for c, n in enumerate(cycle_label_counts(r)):
            out[r.split][CLASSES[c]] += int(n)
    return dict(out)
