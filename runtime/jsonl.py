"""JSON-lines output that survives a crash: one ``write`` per complete line, flushed per record."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any


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
            path.parent.mkdir(parents=True, exist_ok=True)
            if atomic:  # a whole new file, published by rename on close (classify)
                self._final = path
                path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            self._fh = open(path, "w" if atomic else "a", encoding="utf-8")
            self._owned = True

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a line and flush it."""
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()
        if self.fsync and self._owned:
            os.fsync(self._fh.fileno())
        self.records += 1

    def close(self) -> None:
        """Flush and close (stdout is only flushed); safe to call twice."""
        if self._fh.closed:
            return
        self._fh.flush()
        if self._owned:
            self._fh.close()
            if self._final is not None:
                os.replace(self._fh.name, self._final)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
