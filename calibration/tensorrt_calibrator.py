"""The representative set as a TensorRT ``IInt8EntropyCalibrator2`` with a calibration cache.

TensorRT runs only on the target, so this module imports ``tensorrt`` lazily. The cache is the
text file TensorRT writes after calibrating (first line ``TRT-<version>-EntropyCalibration2``,
then ``tensor: hex-scale`` lines); it is reused on the next build when its TensorRT version
matches, and can be fed to ``trtexec --int8 --calib=CACHE`` when only trtexec is present.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from stethoedge.runtime.errors import DataError

CACHE_NAME = "calibration.cache"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def calibration_batches(features: np.ndarray, input_name: str = "features",
                        batch_size: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """{input name: float32 batch} dicts over the set, as polygraphy's Calibrator consumes them."""
    if features.ndim != 3 or features.shape[0] == 0:
        raise DataError(f"calibration features must be (windows, frames, mels), got {features.shape}")
    for i in range(0, features.shape[0] - batch_size + 1, batch_size):  # TensorRT wants full batches
        yield {input_name: np.ascontiguousarray(features[i : i + batch_size], dtype=np.float32)}


def read_cache(path: str | os.PathLike) -> tuple[int, str, dict[str, float]]:
    """Parse a TensorRT calibration cache: (TensorRT version number, algorithm, tensor -> scale)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable calibration cache ({exc})") from None
    m = _HEADER.match(lines[0].strip()) if lines else None
    if not m:
        raise DataError(f"{path}: not a TensorRT calibration cache (bad header {lines[:1]})")
    scales: dict[str, float] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, _, value = line.rpartition(":")
        try:
            scales[name.strip()] = float(np.frombuffer(bytes.fromhex(value.strip()), dtype=">f4")[0])
        except (ValueError, IndexError):
            raise DataError(f"{path}: bad calibration cache line {line!r}") from None
    return int(m.group(1)), m.group(2), scales


def trt_version_number(version: str) -> int:
    """TensorRT's cache version number for a version string: '8.6.1' -> 8601, '10.3.0' -> 100300."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    return parts[0] * 1000 + parts[1] * 100 + parts[2] if parts[0] < 10 else parts[0] * 10000 + parts[1] * 100 + parts[2]


def cache_usable(path: str | os.PathLike, trt_version: str) -> bool:
    """True when a cache exists and was written by this TensorRT version's entropy calibrator."""
    if not Path(path).is_file():
        return False
    version, algorithm, _ = read_cache(path)
    return version == trt_version_number(trt_version) and algorithm == "EntropyCalibration2"


def entropy_calibrator(features: np.ndarray | None, cache: str | os.PathLike, input_name: str = "features",
                       batch_size: int = 8) -> Any:
    """An IInt8EntropyCalibrator2 over the set that reads/writes ``cache`` (needs tensorrt + polygraphy).

    ``features=None`` serves no batches: TensorRT then takes the scales from an existing cache.
    """
    import tensorrt as trt  # type: ignore[import-not-found]
    from polygraphy.backend.trt import Calibrator

    batches = list(calibration_batches(features, input_name, batch_size)) if features is not None else []
    return Calibrator(batches, cache=str(cache), BaseClass=trt.IInt8EntropyCalibrator2)
