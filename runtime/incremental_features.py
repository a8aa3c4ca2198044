"""Incremental log-mel features for a sliding window: cache the frames already computed.

Consecutive 8 s windows of a stream overlap by ``window - hop`` samples. Kaldi frames depend
only on their own 400 samples, so when the hop is a whole number of frame shifts (2 s = 200
frames, 1 s = 100 frames) the frames of the overlap are the same numbers as last time: only the
``hop / frame_shift`` new frames at the end of the window are computed. Windows that are
cyclically padded (under 8 s of audio), that start off the frame grid of the cache, or that do
not overlap the previous one are recomputed in full. The result equals
``features.compute_features`` on the same window (tests/test_incremental_features.py).
"""
from __future__ import annotations

import numpy as np

from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import log_mel_fbank, normalize


class IncrementalFeatures:
    """Model inputs for successive windows of one stream, reusing overlapping frames."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._fbank = np.zeros(spec.input_shape, dtype=np.float32)  # unnormalised log-mel of the cached window
        self._start: int | None = None  # stream sample of the cached window's first sample
        self.frames_computed = 0  # counters, for benchmarks and tests
        self.frames_reused = 0

    def reset(self) -> None:
        """Forget the cache (after a gap the next window shares nothing with the last)."""
        self._start = None

    def compute(self, window_audio: np.ndarray, end_sample: int, available: int | None = None) -> np.ndarray:
        """Normalised features (frames, mels) of the window ending at stream sample ``end_sample``.

        ``window_audio`` holds exactly ``spec.window_samples`` samples; ``available`` is how many
        of them are real stream audio (fewer means cyclically padded: computed in full, not cached).
        """
        spec = self.spec
        window_audio = np.asarray(window_audio, dtype=np.float32)
        n = spec.window_samples
        if window_audio.shape != (n,):
            raise AudioError(f"a model window is {n} samples ({spec.window_seconds:g} s), got shape {window_audio.shape}")
        n_frames = spec.num_frames
        if available is not None and available < n:
            self._start = None
            self.frames_computed += n_frames
            return normalize(log_mel_fbank(window_audio, spec), spec)
        start = end_sample - n
        shift = self._shift_from_cache(start)
        if shift is None or shift >= n_frames:
            self._fbank[:] = log_mel_fbank(window_audio, spec)
            self.frames_computed += n_frames
        elif shift > 0:
            keep = n_frames - shift
            self._fbank[:keep] = self._fbank[shift:]
            # The new frames start at frame ``keep``: audio from keep * frame_shift to the end.
            self._fbank[keep:] = log_mel_fbank(window_audio[keep * spec.frame_shift :], spec)
            self.frames_computed += shift
            self.frames_reused += keep
        else:
            self.frames_reused += n_frames
        self._start = start
        return normalize(self._fbank, spec)

    def _shift_from_cache(self, start: int) -> int | None:
        """Frames the window moved since the cached one, or None when the cache cannot be used."""
        if self._start is None or start < self._start:
            return None
        moved = start - self._start
        if moved % self.spec.frame_shift:
            return None
        return moved // self.spec.frame_shift
