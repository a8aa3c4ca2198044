"""bench: Ultralytics-style rows (status, size, percentiles, windows/s, RTF, agreement, Score), JSON /
CSV / PNG outputs, sustained mode with thermal readings."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stethoedge.cli_common import MAX_THREADS
from stethoedge.runtime.bench import (
    bench_bundle, format_bench_table, format_sustained, read_temperatures, rows_to_csv, sustained_bench, write_outputs,
)


@pytest.fixture(scope="module")
def rows(bundle_dir: Path) -> list[dict]:
    return bench_bundle(bundle_dir, threads=[1, 2], runs=3, warmup=1)


def test_rows_per_artifact_and_thread_count(rows):
    assert [(r["artifact"], r["threads"]) for r in rows] == [
        ("onnx-fp32", 1), ("onnx-fp32", 2), ("onnx-int8-dynamic", 1), ("onnx-int8-dynamic", 2)]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["windows_per_s"] > 0 and 0 < r["rtf"] < 1 and r["rtf"] == pytest.approx(r["p50_ms"] / 8000.0)
        assert r["agreement"] == 1.0 and r["format"] == "onnx" and r["status"] == "passed"
    table = format_bench_table(rows)
    assert table.count("onnx-fp32") == 2 and "win/s" in table


def test_labelled_data_gives_agreement_and_score(bundle_dir: Path):
    from stethoedge.runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    audio = np.concatenate([bundle.selftest.audio, bundle.selftest.audio[::-1]])
    labels = np.array([0, 1, 2, 3, 3, 2, 1, 0])[: len(audio)]
    seen = []

    def scorer(y, p):
        seen.append((y.copy(), p.copy()))
        return float(np.mean(y == p))

    out = bench_bundle(bundle_dir, runs=2, warmup=0, audio=audio, labels=labels, scorer=scorer)
    assert [r["agreement_windows"] for r in out] == [len(audio)] * 2
    assert out[0]["agreement"] == 1.0  # fp32 is the reference
    assert len(seen) == 2 and out[0]["score"] == pytest.approx(float(np.mean(seen[0][0] == seen[0][1])))


def test_outputs_json_csv_png(rows, tmp_path: Path):
    write_outputs(rows, tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.png")
    assert json.loads((tmp_path / "b.json").read_text())[0]["artifact"] == "onnx-fp32"
    parsed = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert len(parsed) == 4 and float(parsed[0]["p50_ms"]) == pytest.approx(rows[0]["p50_ms"])
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows_to_csv([]).startswith("artifact,format")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_builds_appear_as_failed_rows(bundle_dir: Path, tmp_path: Path):
    import shutil

    from stethoedge.runtime.bundle import write_manifest

    dst = tmp_path / "b"
    shutil.copytree(bundle_dir, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["failed_artifacts"] = [{"name": "tflite-int8", "format": "tflite", "precision": "int8",
                                     "status": "failed", "reason": "converter crashed"}]
    write_manifest(dst, manifest)
    out = bench_bundle(dst, runs=1, warmup=0)
    assert out[-1]["artifact"] == "tflite-int8" and out[-1]["status"] == "failed: converter crashed"
    assert "failed: converter crashed" in format_bench_table(out)


def test_sustained_mode_reports_drift_and_temperatures(bundle_dir: Path, tmp_path: Path):
    zone = tmp_path / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("47250\n")
    assert read_temperatures(tmp_path / "thermal") == {"thermal_zone0:cpu-thermal": 47.25}
    assert read_temperatures(tmp_path / "none") == {}
    result = sustained_bench(bundle_dir, 0.5, threads=1, thermal_root=tmp_path / "thermal")
    assert result["windows"] >= 10 and result["seconds"] >= 0.5
    assert result["temperature_c"] == {"start": 47.25, "end": 47.25, "max": 47.25}
    assert result["drift"] == pytest.approx(result["last_fifth_p50_ms"] / result["first_fifth_p50_ms"] - 1)
    assert "drift" in format_sustained(result) and "47.2" in format_sustained(result)


def test_cli_bench_threads_csv_and_bad_threads(bundle_dir: Path, tmp_path: Path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stethoedge", "bench", str(bundle_dir), *map(str, args)],
                              capture_output=True, text=True, timeout=180)

    ok = cli("--threads", "1", "--runs", "2", "--csv", tmp_path / "b.csv", "--artifact", "onnx-fp32")
    assert ok.returncode == 0, ok.stderr
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 1
    bad = cli("--threads", "0,2")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"list of integers from 1 to {MAX_THREADS}, got '0,2'" in bad.stderr
