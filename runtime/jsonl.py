"""JSON-lines output that survives a crash: one ``write`` per complete line, flushed per record."""
from __future__ import annotations

import json
import os
from typing import IO, Any, Iterable

from stethoedge.runtime.errors import OutputError
from stethoedge.runtime.outputs import OutputFile, open_append


class JsonlWriter:
    """Appends one JSON object per line to a file (or stdout for ``-``), flushing each record.

    ``atomic=True`` writes a new file under a temporary name and renames it into place on
    ``close()`` (classify's output); otherwise lines are appended to the file (listen's log).

    Each record goes out as a single ``write`` of the whole line followed by a flush (and an
    fsync with ``fsync=True``), so a crash or a kill leaves only complete lines behind.
    """

    def __init__(self, target: str | os.PathLike, fsync: bool = False, atomic: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> None:
        self.target = str(target)
        self.fsync = fsync
        self.records = 0
        self._out: OutputFile | None = None
        self._owned = self.target != "-"
        # runtime/outputs.py rules: links followed, devices and FIFOs written through, no missing
        # directory created, never one of ``inputs``.
        if atomic:  # a whole new file, published by rename on close (classify)
            self._out = OutputFile(self.target, text=True, inputs=inputs)
            self._fh: IO[str] = self._out.file
        else:
            self._fh = open_append(self.target, inputs=inputs)
        self._seekable = self._owned and self._fh.seekable()

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
        good = self._fh.tell() if self._seekable else None
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
        if self._out is not None:
            self._out.discard()
            self._out = None
            return
        try:
            self._fh.close()
        except (OSError, ValueError):
            pass
        if good is not None:
            try:
                os.truncate(self.target, good)
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
            if self._out is not None:
                self._out.commit()
                self._out = None
            else:
                self._fh.flush()
                self._fh.close()
        except OutputError as exc:
            raise OutputError(f"{exc}; nothing was published") from None
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
