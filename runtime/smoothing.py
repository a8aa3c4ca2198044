"""Decision smoothing across consecutive windows.

One window's decision flickers; a clinician wants the label that holds over a few seconds.
Methods (``parse_smoothing("mean:3")``):

* ``none``: the window's own label.
* ``mean:K``: the mean of the last K windows' probabilities (moving average).
* ``ema:A``: exponential moving average of the probabilities with weight A for the newest window.
* ``vote:K``: the most frequent label of the last K windows (ties go to the most recent).

A gap in the stream resets the history: audio on both sides of a hole is not one observation.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

METHODS = ("none", "mean", "ema", "vote")
#: Most windows ``mean:K`` / ``vote:K`` may span (1000 windows = 33 min at a 2 s hop).
MAX_WINDOWS = 1000


@dataclass(frozen=True)
class SmoothingConfig:
    """How to smooth: ``method`` in METHODS and its parameter (K windows, or the EMA weight)."""

    method: str = "mean"
    param: float = 3

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"smoothing method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method in ("mean", "vote") and not (1 <= self.param <= MAX_WINDOWS and float(self.param).is_integer()):
            raise ValueError(f"{self.method} smoothing needs a whole number of windows from 1 to {MAX_WINDOWS}, "
                             f"got {self.param}")
        if self.method == "ema" and not 0 < self.param <= 1:
            raise ValueError(f"ema smoothing needs a weight in (0, 1], got {self.param}")


def parse_smoothing(text: str) -> SmoothingConfig:
    """Parse ``none``, ``mean:K``, ``ema:A`` or ``vote:K`` (ValueError with the accepted forms)."""
    method, _, param = text.strip().lower().partition(":")
    if method == "none":
        return SmoothingConfig("none", 1)
    default = {"mean": "3", "vote": "3", "ema": "0.5"}.get(method)
    if default is None:
        raise ValueError(f"unknown smoothing {text!r}; use none, mean:K, ema:A or vote:K")
    try:
        value = float(param or default)
    except ValueError:
        raise ValueError(f"bad smoothing parameter in {text!r}; use none, mean:K, ema:A or vote:K") from None
    return SmoothingConfig(method, value)


class DecisionSmoother:
    """Feeds window probabilities, returns smoothed probabilities and label."""

    def __init__(self, labels: list[str], config: SmoothingConfig | None = None) -> None:
        self.labels = list(labels)
        self.config = config or SmoothingConfig()
        size = int(self.config.param) if self.config.method in ("mean", "vote") else 1
        self._history: deque[np.ndarray] = deque(maxlen=size)
        self._ema: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the history (after a gap)."""
        self._history.clear()
        self._ema = None

    def update(self, probabilities: np.ndarray) -> tuple[str, np.ndarray]:
        """Add one window's probabilities; return (smoothed label, smoothed probabilities)."""
        p = np.asarray(probabilities, dtype=np.float64)
        method = self.config.method
        if method == "ema":
            a = self.config.param
            self._ema = p.copy() if self._ema is None else a * p + (1.0 - a) * self._ema
            smoothed = self._ema
        else:
            self._history.append(p)
            smoothed = np.mean(self._history, axis=0) if method in ("mean", "vote") else p
        if method == "vote":
            votes = [int(np.argmax(h)) for h in self._history]
            counts = np.bincount(votes, minlength=len(self.labels))
            best = counts.max()
            k = next(v for v in reversed(votes) if counts[v] == best)
        else:
            k = int(np.argmax(smoothed))
        return self.labels[k], smoothed
