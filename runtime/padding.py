"""Cyclic (repeat) padding to the model window, shared by training and the device."""
from __future__ import annotations

import numpy as np

from stethoedge.runtime.errors import AudioError


def cyclic_pad(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Repeat ``audio`` end to end until it is ``n_samples`` long; cut it if longer.

    Repeating a respiratory cycle (rather than zero-padding) keeps the spectrogram
    statistics of real breathing, as in the ICBHI literature. Returns float32.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"cyclic padding needs 1-D audio, got shape {audio.shape}")
    if audio.shape[0] == 0:
        raise AudioError("cannot pad empty audio to a window")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    if audio.shape[0] >= n_samples:
        return audio[:n_samples].copy()
    repeats = -(-n_samples // audio.shape[0])
    return np.tile(audio, repeats)[:n_samples]
