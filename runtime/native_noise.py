"""Start-up lines that native libraries print on stderr and that tell a user nothing to do.

LiteRT's C++ runtime writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` to file
descriptor 2 the first time an interpreter runs; absl/glog INFO lines come from TensorFlow's
converter. ``export/quiet.py`` filters them from export and demo output with the same patterns;
the runtime drops them only around opening a LiteRT interpreter (``quiet_native_stderr``), so a
device's log shows decisions and real warnings, not library banners. ``-v`` keeps them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

#: Lines that native code writes to stderr and that tell a user nothing to do.
NOISE_LINES: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^I\d{4} [\d:.]+\s+\d+ [\w.+/-]+:\d+\] ",  # absl / glog INFO lines (I + MMDD); W, E and F lines stay
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    r"^INFO: Initialized TensorFlow Lite runtime\.",
))


def is_noise(line: str) -> bool:
    """True for a stderr line of native code that tells the user nothing to do."""
    return any(p.search(line) for p in NOISE_LINES)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Capture file descriptor 2 while the block runs, then write back every line that is not noise.

    For short blocks only (opening an interpreter): what native code prints there appears after the
    block instead of during it. Does nothing with ``-v`` (DEBUG logging) or when fd 2 cannot be
    redirected.
    """
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
