"""Recording the raw 16 kHz audio the model heard, to rotating WAV files with an index.

Clinicians review what the classifier listened to. Each segment is written to a hidden
``.NAME.wav.part`` file and renamed to ``NAME.wav`` when it is complete (rotation, a gap, or
stop), so a crash never leaves a half-written file under a final name. ``index.json`` lists the
finished segments (file, stream start, samples, wall-clock start, gap before) and is rewritten
by write-then-rename after every rotation. ``recover()`` finalises the ``.part`` files a crash
left behind (libsndfile reads them up to the last flushed sample).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from stethoedge.runtime.errors import AudioError, OutputError
from stethoedge.runtime.outputs import atomic_write_text, check_output_dir

log = logging.getLogger("stethoedge.recorder")
INDEX_NAME = "index.json"


@dataclass
class Segment:
    """One finished recording file."""

    file: str
    start_sample: int  # stream position of its first sample
    samples: int
    sample_rate: int
    wall_start: float  # time.time() when its first sample arrived
    gap_before: int  # samples lost just before it (0: continues the previous segment)


def _disk_reason(directory: Path) -> str | None:
    """The likely OS reason a write into ``directory`` failed (libsndfile only says 'System error')."""
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return exc.strerror
    if st.f_flag & os.ST_RDONLY:
        return "Read-only file system"
    if st.f_bavail == 0:
        return "No space left on device"
    if not os.access(directory, os.W_OK):
        return "Permission denied"
    return None


class RotatingRecorder:
    """Writes a stream of chunks into WAV segments of at most ``segment_seconds``."""

    def __init__(self, directory: str | os.PathLike, sample_rate: int = 16000, segment_seconds: float = 300.0,
                 prefix: str = "rec", max_segments: int | None = None, memory_seconds: float = 60.0) -> None:
        if segment_seconds <= 0:
            raise ValueError(f"segment length must be positive, got {segment_seconds}")
        self.dir = check_output_dir(directory)  # its parent must exist (runtime/outputs.py)
        try:
            self.dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise AudioError(f"{self.dir}: cannot create the recording directory ({exc.strerror})") from None
        self.sample_rate = sample_rate
        self.segment_samples = max(1, int(round(segment_seconds * sample_rate)))
        self.prefix = prefix
        self.max_segments = max_segments
        self.segments: list[Segment] = self._read_index()
        self.recovered = self.recover()
        self._file: sf.SoundFile | None = None
        self._part: Path | None = None
        self._current: Segment | None = None
        self._next_stream = None  # stream position expected next
        # After a disk failure (full, read-only, I/O error) the recorder stops writing, keeps the
        # newest ``memory_seconds`` of audio in memory (bounded) and reports ``error``; the stream goes on.
        self.error: str | None = None
        self.memory: deque[np.ndarray] = deque()
        self.memory_samples = 0
        self.memory_limit = max(0, int(round(memory_seconds * sample_rate)))

    # -- index ---------------------------------------------------------------------------
    def _read_index(self) -> list[Segment]:
        path = self.dir / INDEX_NAME
        if not path.exists():
            return []
        try:
            return [Segment(**s) for s in json.loads(path.read_text())["segments"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise AudioError(f"{path}: unreadable recording index ({exc})") from None

    def _write_index(self) -> None:
        data: dict[str, Any] = {"sample_rate": self.sample_rate, "segments": [asdict(s) for s in self.segments]}
        atomic_write_text(self.dir / INDEX_NAME, json.dumps(data, indent=1) + "\n")

    # -- crash recovery ------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Finalise ``.part`` files left by a crash (rename + index); returns their final names."""
        done = []
        for part in sorted(self.dir.glob(".*.wav.part")):
            final = part.parent / part.name[1 : -len(".part")]
            try:
                info = sf.info(str(part))
                frames = info.frames
            except (sf.LibsndfileError, RuntimeError):
                frames = 0
            if frames <= 0:
                part.unlink()
                continue
            os.replace(part, final)
            meta = self._meta_of(final.name)
            self.segments.append(Segment(final.name, meta[0], frames, self.sample_rate, meta[1], 0))
            done.append(final.name)
            log.warning("recovered %s (%d samples) left by an interrupted run", final.name, frames)
        if done:
            self._write_index()
        return done

    @staticmethod
    def _meta_of(name: str) -> tuple[int, float]:
        """(stream start, wall start) encoded in a segment name ``PREFIX-WALLMS-STREAMSTART.wav``."""
        try:
            _, wall_ms, start = Path(name).stem.rsplit("-", 2)
            return int(start), int(wall_ms) / 1000.0
        except ValueError:
            return 0, 0.0

    # -- writing -------------------------------------------------------------------------
    def write(self, samples: np.ndarray, start_sample: int, gap_before: int = 0) -> None:
        """Append a chunk; a gap or a full segment starts a new file.

        A disk error never propagates: the unfinished segment is removed (no corrupt file), the
        reason is kept in ``error`` and logged once, and audio from then on is held in memory
        (the newest ``memory_seconds``) instead.
        """
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.error is None:
            try:
                self._write(samples, start_sample, gap_before)
                return
            except (OSError, OutputError, sf.LibsndfileError, RuntimeError) as exc:
                self._fail(exc)
        self._hold(samples)

    def _fail(self, exc: BaseException) -> None:
        """Give up on the disk: drop the half-written segment, remember why."""
        reason = getattr(exc, "strerror", None) or _disk_reason(self.dir) or (str(exc).splitlines() or [type(exc).__name__])[0]
        self.error = f"{self.dir}: recording stopped ({reason}); keeping the newest audio in memory"
        log.warning(self.error)
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, sf.LibsndfileError, RuntimeError):
                pass
        if self._part is not None:
            try:
                self._part.unlink(missing_ok=True)
            except OSError:
                pass
        self._current, self._file, self._part = None, None, None

    def _hold(self, samples: np.ndarray) -> None:
        """Keep the newest ``memory_limit`` samples in memory."""
        if self.memory_limit == 0:
            return
        self.memory.append(samples[-self.memory_limit:].copy())
        self.memory_samples += self.memory[-1].shape[0]
        while self.memory_samples - self.memory[0].shape[0] >= self.memory_limit:
            self.memory_samples -= self.memory.popleft().shape[0]
        excess = self.memory_samples - self.memory_limit
        if excess > 0:  # exactly the newest memory_limit samples, however large the chunks the stream hands over
            self.memory[0] = self.memory[0][excess:]
            self.memory_samples = self.memory_limit

    def _write(self, samples: np.ndarray, start_sample: int, gap_before: int) -> None:
        if self._current is not None and (gap_before or start_sample != self._next_stream):
            self._finish()
        offset = 0
        while offset < samples.shape[0]:
            if self._current is None:
                self._open(start_sample + offset, gap_before if offset == 0 else 0)
            assert self._current is not None and self._file is not None
            take = min(samples.shape[0] - offset, self.segment_samples - self._current.samples)
            self._file.write(samples[offset : offset + take])
            self._current.samples += take
            offset += take
            if self._current.samples >= self.segment_samples:
                self._finish()
        self._next_stream = start_sample + samples.shape[0]
        if self._file is not None:
            self._file.flush()

    def _open(self, start_sample: int, gap_before: int) -> None:
        wall = time.time()
        name = f"{self.prefix}-{int(wall * 1000)}-{start_sample}.wav"
        self._part = self.dir / f".{name}.part"
        self._file = sf.SoundFile(str(self._part), "w", samplerate=self.sample_rate, channels=1,
                                  subtype="PCM_16", format="WAV")
        self._current = Segment(name, start_sample, 0, self.sample_rate, wall, gap_before)

    def _finish(self) -> None:
        if self._current is None or self._file is None or self._part is None:
            return
        self._file.close()
        os.replace(self._part, self.dir / self._current.file)
        self.segments.append(self._current)
        self._prune()
        self._write_index()
        self._current, self._file, self._part = None, None, None

    def _prune(self) -> None:
        if self.max_segments is None:
            return
        while len(self.segments) > self.max_segments:
            old = self.segments.pop(0)
            (self.dir / old.file).unlink(missing_ok=True)

    def close(self) -> None:
        """Finalise the current segment (rename) and the index; safe to call twice."""
        if self.error is not None:
            return
        try:
            self._finish()
        except (OSError, OutputError, sf.LibsndfileError, RuntimeError) as exc:
            self._fail(exc)

    def __enter__(self) -> RotatingRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
