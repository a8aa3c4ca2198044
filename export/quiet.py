"""Keep third-party chatter that a user cannot act on out of ``stethoedge export`` and ``stethoedge demo``.

What it silences, and how (each source was reproduced with an export of a tiny run to TFLite):

* torchao, imported by litert-torch: ``Failed to load .../torchao/_C_mxfp8...so`` and
  ``_C_cutlass_90a`` (CUDA-only kernels on a CPU machine) and ``Warning: Detected no triton``:
  Python loggers ``torchao`` and ``torchao.kernel.intmm`` -> level ERROR.
* torch's ``torch/utils/_pytree.py`` deprecation about an Enum that torchao registers
  (``KernelPreference``): logger ``torch.utils._pytree`` -> ERROR. Also ``torch._inductor``,
  ``absl``, ``tensorflow`` and jax's GPU probe (``jax._src.xla_bridge``) -> ERROR.
* TensorFlow / absl INFO lines that native code prints on stderr (the oneDNN notice,
  ``All log messages before absl::InitializeLog()``, the converter's op counts and its
  ``train/model.py:188:0: warning: Missing quantization parameter`` quoting a source line, and
  ``INFO: Created TensorFlow Lite XNNPACK delegate``): ``TF_CPP_MIN_LOG_LEVEL=1`` when it is
  unset, and a filter on file descriptor 2 that drops exactly those lines (INFO-level absl lines,
  ``I`` + date) and forwards everything else as it comes.
* Python warnings are shown as one line, ``warning: <message>``, instead of two lines that quote
  the source line that raised them.

Warnings and errors of any other kind still show, and so does everything with ``-v/--verbose``:
``quiet_third_party(verbose=True)`` changes nothing. Everything is restored on exit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from typing import Any, Iterator

from stethoedge.runtime.native_noise import NOISE_LINES, is_noise  # noqa: F401 - one list for runtime and export

#: Loggers whose messages below ERROR are start-up noise in export and demo output.
NOISY_LOGGERS: tuple[str, ...] = ("torchao", "torch.utils._pytree", "torch._inductor", "absl", "tensorflow",
                                  "jax._src.xla_bridge")
#: Environment defaults, set only where the user has not set them.
ENV_DEFAULTS: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "1"}  # TensorFlow's C++ INFO lines off, WARNING on


class StderrLineFilter:
    """Route file descriptor 2 through a pipe and forward every line but the noise, as it arrives.

    Catches what C/C++ code prints (Python's ``sys.stderr`` writes to the same descriptor). Lines
    end at ``\\n`` or ``\\r`` (progress bars); a partial line longer than 4 KiB is forwarded as is; a blank
    line right after a dropped one is dropped too.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._write: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Install the filter; False (and nothing changed) when fd 2 cannot be redirected."""
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return False
        read, write = os.pipe()
        os.dup2(write, 2)
        self._saved, self._write = saved, write
        self._thread = threading.Thread(target=self._pump, args=(read, saved), name="stderr-filter", daemon=True)
        self._thread.start()
        return True

    @staticmethod
    def _pump(read: int, out: int) -> None:
        pending, dropped = b"", False

        def emit(chunk: bytes) -> None:
            nonlocal dropped
            text = chunk.decode("utf-8", "replace")
            if is_noise(text) or (dropped and not text.strip()):  # and the blank line some of them end with
                dropped = True
                return
            dropped = False
            while chunk:  # os.write may take only part of it
                chunk = chunk[os.write(out, chunk):]

        try:
            while True:
                data = os.read(read, 65536)
                if not data:
                    break
                pending += data
                while True:
                    cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)
                    if cut < 0:
                        break
                    emit(pending[:cut + 1])
                    pending = pending[cut + 1:]
                if len(pending) > 4096:
                    emit(pending)
                    pending = b""
            if pending:
                emit(pending)
        except OSError:
            pass
        finally:
            os.close(read)

    def stop(self) -> None:
        """Put fd 2 back and forward what is still in the pipe."""
        if self._saved is None:
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._write)
        if self._thread is not None:
            self._thread.join(timeout=5.0)  # a child process still holding the pipe must not hang us
        if self._thread is None or not self._thread.is_alive():
            os.close(self._saved)  # (else the pump still writes to it: left open)
        self._saved = self._write = self._thread = None


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=file if file is not None else sys.stderr)


@contextlib.contextmanager
def quiet_third_party(verbose: bool = False) -> Iterator[None]:
    """Silence the known, non-actionable third-party noise for the duration (nothing when ``verbose``)."""
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    env_set = [k for k, v in ENV_DEFAULTS.items() if k not in os.environ]
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for key in env_set:
        os.environ[key] = ENV_DEFAULTS[key]
    stderr_filter = StderrLineFilter()
    stderr_filter.start()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            yield
    finally:
        stderr_filter.stop()
        for key in env_set:
            os.environ.pop(key, None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
