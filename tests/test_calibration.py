"""The representative set: class balance, provenance, no overlap with held-out data, one set for
ORT (CalibrationDataReader), TFLite and TensorRT (calibrator batches and cache parsing)."""
from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from stethoedge.calibration.ort_reader import WindowSetReader, stride_for
from stethoedge.calibration.representative_set import (
    MIN_RECOMMENDED, SmallCalibrationSetWarning, build_representative_set, class_balance, representative_set_for_run,
)
from stethoedge.calibration.tensorrt_calibrator import (
    cache_usable, calibration_batches, read_cache, trt_version_number,
)
from stethoedge.calibration.window_set import WindowSet
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec


@pytest.fixture(scope="module")
def rep(trained_run: Path) -> WindowSet:
    spec = FeatureSpec()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ws = representative_set_for_run(trained_run, spec, max_windows=16)
    assert any(issubclass(w.category, SmallCalibrationSetWarning) for w in caught)
    return ws


def test_representative_set_is_class_balanced_train_only(rep: WindowSet, trained_run: Path):
    splits = json.loads((trained_run / "splits.json").read_text())
    assert len(rep) == 16 and rep.features.shape == (16, 798, 128) and rep.audio.shape == (16, 128000)
    counts = class_balance(rep, 4)
    available = np.asarray(rep.provenance["class_counts"])
    assert counts.tolist() == available.tolist()
    # round-robin: no class exceeds another by more than one unless that class ran out of windows
    assert counts.max() - counts[counts > 0].min() <= max(0, 16 - 4 * counts[counts > 0].min())
    assert set(rep.provenance["recordings"]) <= set(splits["train"])
    assert not set(rep.provenance["recordings"]) & (set(splits["test"]) | set(splits["val"]))
    assert rep.provenance["purpose"].startswith("calibration") and rep.provenance["split"] == "train"


def test_balance_on_a_set_with_every_class(sim_data: Path):
    ws = build_representative_set(sim_data, FeatureSpec(), max_windows=12)
    counts = class_balance(ws, 4)
    assert counts.sum() == 12 and counts.max() - counts.min() <= 1, counts


def test_set_round_trips_through_its_file_with_provenance(rep: WindowSet, tmp_path: Path):
    path = rep.save(tmp_path / "rep.npz")
    back = WindowSet.load(path)
    assert np.array_equal(back.features, rep.features) and back.provenance == rep.provenance
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a window set"):
        WindowSet.load(tmp_path / "bad.npz")


def test_no_warning_at_the_recommended_size(rep: WindowSet):
    from stethoedge.calibration.representative_set import warn_if_small

    big = WindowSet(np.zeros((MIN_RECOMMENDED, 4), np.float32), np.zeros((MIN_RECOMMENDED, 2, 2), np.float32),
                    np.zeros(MIN_RECOMMENDED, np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_small(big)


def test_bad_data_directories_are_typed_errors(tmp_path: Path):
    with pytest.raises(DataError, match="not a data directory"):
        build_representative_set(tmp_path / "nope", FeatureSpec())
    with pytest.raises(DataError, match="no recordings|pairs found"):
        build_representative_set(tmp_path, FeatureSpec())


def test_ort_reader_serves_every_window_once_and_supports_strides(rep: WindowSet):
    reader = WindowSetReader(rep.features, batch_size=3)
    batches = []
    while (b := reader.get_next()) is not None:
        batches.append(b["features"])
    assert [len(b) for b in batches] == [3, 3, 3, 3, 3, 1] and len(reader) == 6
    assert np.array_equal(np.concatenate(batches), rep.features)
    reader.set_range(2, 4)
    assert np.array_equal(reader.get_next()["features"], rep.features[6:9])
    assert np.array_equal(reader.get_next()["features"], rep.features[9:12]) and reader.get_next() is None
    assert stride_for(16) == 8 and stride_for(7) == 7 and stride_for(13) == 1


def test_tensorrt_calibrator_batches_and_cache(rep: WindowSet, tmp_path: Path):
    batches = list(calibration_batches(rep.features, batch_size=5))
    assert len(batches) == 3 and all(b["features"].shape == (5, 798, 128) for b in batches)  # full batches only
    with pytest.raises(DataError):
        list(calibration_batches(np.zeros((0, 798, 128), np.float32)))
    cache = tmp_path / "calibration.cache"
    scale = struct.pack(">f", 0.0123).hex()
    cache.write_text(f"TRT-8601-EntropyCalibration2\nfeatures: {scale}\n/blocks.0/attn/Softmax_output_0: 3c010a14\n")
    version, algo, scales = read_cache(cache)
    assert version == 8601 and algo == "EntropyCalibration2" and abs(scales["features"] - 0.0123) < 1e-7
    assert trt_version_number("8.6.1") == 8601 and trt_version_number("10.3.0") == 100300
    assert cache_usable(cache, "8.6.1") and not cache_usable(cache, "10.3.0")
    assert not cache_usable(tmp_path / "missing.cache", "8.6.1")
    cache.write_text("garbage\n")
    with pytest.raises(DataError, match="not a TensorRT calibration cache"):
        read_cache(cache)


def test_tensorrt_entropy_calibrator_needs_tensorrt(rep: WindowSet, tmp_path: Path):
    from importlib.util import find_spec

    if find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installable on this x86 CPU machine (no NVIDIA driver, its wheels fetch from "
                    "an unreachable host); the IInt8EntropyCalibrator2 runs on the Jetson via build-engine")
    from stethoedge.calibration.tensorrt_calibrator import entropy_calibrator

    cal = entropy_calibrator(rep.features, tmp_path / "c.cache", batch_size=4)
    assert cal.get_batch_size() == 4
