"""The representative set as an ONNX Runtime ``CalibrationDataReader`` (static QDQ quantization).

onnxruntime's MinMax calibrator keeps every calibrated activation of every batch in memory
(an AST's attention maps are ~14 MB per layer and window), so the reader supports its strided
mode (``set_range``): ranges are folded every few batches. (Its other knob,
CalibMaxIntermediateOutputs, discards the collected batches in onnxruntime 1.31.)
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


def feature_batches(features: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Contiguous float32 batches of ``features`` (the last one may be shorter)."""
    for i in range(0, features.shape[0], batch_size):
        yield np.ascontiguousarray(features[i : i + batch_size], dtype=np.float32)


def stride_for(batches: int, most: int = 8) -> int:
    """Largest divisor of ``batches`` not above ``most``: batches folded into the ranges per step."""
    return max(d for d in range(1, min(most, batches) + 1) if batches % d == 0)


class WindowSetReader(CalibrationDataReader):
    """Feeds feature windows to onnxruntime's calibrator, ``batch_size`` at a time; rewindable."""

    def __init__(self, features: np.ndarray, input_name: str = "features", batch_size: int = 1) -> None:
        self.features, self.input_name, self.batch_size = features, input_name, batch_size
        self._range = (0, len(self))
        self.rewind()

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches ``start_index:end_index`` (onnxruntime's strided MinMax calibration)."""
        self._range = (start_index, end_index)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as {input name: array}, or None when the set is exhausted."""
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        """Start again from the first window."""
        start, end = self._range
        part = self.features[start * self.batch_size : end * self.batch_size]
        self._it = feature_batches(part, self.batch_size)

    def __len__(self) -> int:
        return -(-self.features.shape[0] // self.batch_size)
