"""JSON-lines output that survives a crash: one ``write`` per complete line, flushed per record."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from stethoedge.runtime.errors import OutputError


class JsonlWriter:
    """Appends one JSON object per line to a file (or stdout for ``-``), flushing each record.

    ``atomic=True`` writes a new file under a temporary name and renames it into place on
    ``close()`` (classify's output); otherwise lines are appended to the file (listen's log).

    Each record goes out as a single ``write`` of the whole line followed by a flush (and an
    fsync with ``fsync=True``), so a crash or a kill leaves only complete lines behind.
    """

    def __init__(self, target: str | os.PathLike, fsync: bool = False, atomic: bool = False) -> None:
        self.target = str(target)
        self.fsync = fsync
        self.records = 0
        self._final: Path | None = None
        if self.target == "-":
            self._fh: IO[str] = sys.stdout
            self._owned = False
        else:
            path = Path(self.target)
            if atomic:  # a whole new file, published by rename on close (classify)
                self._final = path
                path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(path, "w" if atomic else "a", encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"{self.target}: cannot open for writing ({exc.strerror or exc})") from None
            self._owned = True

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line and flush it.

        A failed write (disk full, I/O error) raises OutputError and cuts the file back to its
        last complete line; an atomic (classify) file is then discarded, never published.
        """
        line = json.dumps(record, separators=(",", ":")) + "\n"
        if not self._owned:
            self._fh.write(line)
            self._fh.flush()
            self.records += 1
            return
        good = self._fh.tell()
        try:
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            self._abandon(good)
            raise OutputError(f"{self.target}: write failed after {self.records} records "
                              f"({exc.strerror or exc}); the file keeps only complete lines") from None
        self.records += 1

    def _abandon(self, good: int | None) -> None:
        """After a failed write: close (ignoring the failed flush), cut the file back to ``good`` bytes
        (its last complete line), and drop an atomic temp file."""
        try:
            self._fh.close()
        except (OSError, ValueError):
            pass
        name = self._fh.name
        if self._final is not None:
            Path(name).unlink(missing_ok=True)
            self._final = None
        elif good is not None:
            try:
                os.truncate(name, good)
            except OSError:
                pass

    def close(self) -> None:
        """Flush and close (stdout is only flushed); safe to call twice."""
        if self._fh.closed:
            return
        if not self._owned:
            self._fh.flush()
            return
        try:
            self._fh.flush()
            self._fh.close()
            if self._final is not None:
                os.replace(self._fh.name, self._final)
        except OSError as exc:
            self._abandon(None)
            raise OutputError(f"{self.target}: could not be finished ({exc.strerror or exc})") from None

    def abort(self) -> None:
        """Close without publishing: an atomic file's temporary is deleted (the run failed half-way)."""
        if self._owned and not self._fh.closed:
            self._abandon(None)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
