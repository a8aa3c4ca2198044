"""Batch classification of a directory of recordings with N worker processes.

Each worker opens the bundle once (verification and self-test included) and classifies whole
files through the same stream engine as ``classify``. Results come back in sorted file order
whatever the number of workers, so N workers give the same output as one. A file that cannot be
read is reported as an error record for that file; the others are still classified.

The files are those ``classify`` decodes (``audio_io.AUDIO_SUFFIXES``: WAV, FLAC, MP3, Ogg, AIFF,
...), directly in the directory or, with ``recursive``, in its sub-folders too (hidden files and
folders skipped, symlinked folders not followed, so a link loop cannot recurse forever).
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from stethoedge.runtime.audio_io import AUDIO_SUFFIXES
from stethoedge.runtime.errors import AudioError, StethoedgeError

#: Fields of a window record that depend on the machine and the moment, not on the audio.
VOLATILE_FIELDS = ("latency_ms", "wall_time")


@dataclass
class BatchOptions:
    """What every worker needs to open the classifier and run the stream engine."""

    bundle: str
    artifact: str | None = None
    backend: str = "auto"
    threads: int | None = 1
    allow_degraded: bool = False
    require_signature: str | None = None
    hop_s: float = 2.0
    min_s: float = 2.0
    smoothing: Any = "mean:3"  # a SmoothingConfig or its text form (``mean:3``)


@dataclass
class FileResult:
    """The decisions for one file, or the one-line reason it could not be classified."""

    file: str
    windows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


    def records(self) -> list[dict[str, Any]]:
        """The JSON-lines records of this file: one per window (with the file's warnings), or one error record."""
        if self.error is not None:
            return [{"file": self.file, "error": self.error, "warnings": list(self.warnings)}]
        return [{"file": self.file, **w, "warnings": [*self.warnings, *w.get("warnings", [])]} for w in self.windows]


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in AUDIO_SUFFIXES


def list_audio(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The audio files (``AUDIO_SUFFIXES``) in ``directory``, and with ``recursive`` in its sub-folders,
    sorted by path; AudioError if it is not a directory or cannot be listed."""
    d = Path(directory)
    if not d.is_dir():
        raise AudioError(f"{d}: not a directory")
    if not recursive:
        try:
            return sorted(p for p in d.iterdir() if _is_audio(p.name))
        except OSError as exc:
            raise AudioError(f"{d}: cannot list ({exc.strerror})") from None
    problems: list[OSError] = []
    found = []
    for root, dirs, names in os.walk(d, onerror=problems.append):  # symlinked folders are not followed
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [Path(root) / name for name in names if _is_audio(name)]
    if problems and problems[0].filename and Path(problems[0].filename) == d:
        raise AudioError(f"{d}: cannot list ({problems[0].strerror})")
    return sorted(found)


def has_subfolders(directory: str | os.PathLike) -> bool:
    """True if ``directory`` has a (non-hidden) sub-folder: the hint to try ``--recursive``."""
    try:
        return any(p.is_dir() and not p.name.startswith(".") for p in Path(directory).iterdir())
    except OSError:
        return False


_WORKER: Any = None  # (Classifier, BatchOptions) in each worker process


def _init_worker(options: BatchOptions) -> None:
    global _WORKER
    from stethoedge.runtime.engine import Classifier

    clf = Classifier.open(options.bundle, artifact=options.artifact, backend=options.backend, threads=options.threads,
                          allow_degraded=options.allow_degraded, require_signature=options.require_signature)
    _WORKER = (clf, options)


def _classify_one(path: str) -> FileResult:
    from stethoedge.runtime.smoothing import parse_smoothing
    from stethoedge.runtime.sources import FileSource
    from stethoedge.runtime.stream import StreamConfig, StreamEngine

    clf, options = _WORKER
    source = None
    try:
        source = FileSource(path)
        smoothing = parse_smoothing(options.smoothing) if isinstance(options.smoothing, str) else options.smoothing
        config = StreamConfig(hop_s=options.hop_s, min_s=options.min_s, smoothing=smoothing, threaded=False)
        windows = [r.to_json() for r in StreamEngine(clf, config).run(source)]
        return FileResult(path, windows, warnings=list(source.warnings))
    except StethoedgeError as exc:
        return FileResult(path, error=str(exc), warnings=list(source.warnings) if source is not None else [])


def classify_files(files: list[Path], options: BatchOptions, workers: int = 1) -> Iterator[FileResult]:
    """Yield one FileResult per file, in the order of ``files``; ``workers`` > 1 uses that many processes."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1:
        _init_worker(options)
        for f in files:
            yield _classify_one(str(f))
        return
    import multiprocessing

    _init_worker(options)  # a bad bundle is one clear error here, not a broken process pool

    ctx = multiprocessing.get_context("spawn")  # no forked ONNX Runtime thread pools
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(options,))
    finished = False
    try:
        yield from pool.map(_classify_one, [str(f) for f in files])
        finished = True
    finally:
        # A consumer that stops early (Ctrl-C, a closed pipe) must not wait for every queued file.
        pool.shutdown(wait=finished, cancel_futures=not finished)


def comparable(result: FileResult) -> dict[str, Any]:
    """A result without its timing fields (what must be identical across worker counts)."""
    windows = [{k: v for k, v in w.items() if k not in VOLATILE_FIELDS} for w in result.windows]
    return {"file": result.file, "windows": windows, "error": result.error}
