"""Progress on stderr for every long job: one tqdm bar style (done/total, elapsed, ETA) and stage lines.

``progress_bar`` is the bar of ``generate fit``, the vocoder's sampling, each training epoch and
the other long loops: it is shown whether or not stderr is a terminal (a job run with its output
in a log file is not silent for minutes), refreshed at most every 10 s when it is not one so that
the log stays short. ``TQDM_DISABLE=1`` in the environment turns every bar off.

``Stages`` prints one line per stage of a multi-stage job (the experiment): its number, the
elapsed time and an estimate of the time left from the mean duration of the stages done so far.

``torch_threads`` runs a job with a chosen number of torch CPU threads: on a 2-core machine that
another job shares, two threads can be 40x slower than one (each parallel region waits for the
thread that is not scheduled), so the long commands take ``--threads``.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm import tqdm

#: Seconds between refreshes of a bar whose stderr is a log file or a pipe, not a terminal.
LOG_INTERVAL_S = 10.0


def _is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 unit: str = "step", initial: int = 0, leave: bool = True, disable: bool = False) -> tqdm:
    """A tqdm bar on stderr: ``desc: 40%|#### | 8/20 [00:12<00:18, 1.5step/s]`` (done/total, elapsed<ETA)."""
    tty = _is_tty()
    options: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "initial": initial, "file": sys.stderr,
                               "mininterval": 0.1 if tty else LOG_INTERVAL_S, "dynamic_ncols": tty,
                               "ascii": None if tty else True, "leave": leave if tty else True}
    if disable:  # passed only when set, so that TQDM_DISABLE in the environment still applies otherwise
        options["disable"] = True
    return tqdm(iterable, **options)


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``01:15``; ``3725`` -> ``1:02:05`` (tqdm's format)."""
    return tqdm.format_interval(max(0.0, seconds))


class Stages:
    """Numbered stage lines of a multi-stage job on stderr, with elapsed time and an estimate of what is left.

    ``stage("seed 0: fit vae (20 steps)")`` prints ``experiment [3/9] 00:42 elapsed, ~01:24 left: seed 0:
    fit vae (20 steps)``; the estimate is the mean duration of the stages finished so far times the
    stages left (``?`` before the first one ends). ``finish()`` prints the total time.
    """

    def __init__(self, total: int, name: str = "experiment", enabled: bool = True) -> None:
        self.total, self.name, self.enabled = total, name, enabled
        self.done = 0
        self.started = time.monotonic()
        self._current: str | None = None

    def _say(self, text: str) -> None:
        if self.enabled:
            print(f"{self.name} {text}", file=sys.stderr, flush=True)

    def stage(self, what: str) -> None:
        """Start the next stage (the previous one counts as done)."""
        if self._current is not None:
            self.done += 1
        self._current = what
        elapsed = time.monotonic() - self.started
        left = f"~{format_seconds(elapsed / self.done * (self.total - self.done))} left" if self.done else "? left"
        self._say(f"[{self.done + 1}/{self.total}] {format_seconds(elapsed)} elapsed, {left}: {what}")

    def finish(self) -> None:
        """The last stage is done: print the total time."""
        if self._current is not None:
            self.done += 1
            self._current = None
        self._say(f"done: {self.done} stages in {format_seconds(time.monotonic() - self.started)}")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``n`` torch CPU threads (None: as they are), and restore the count afterwards."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
