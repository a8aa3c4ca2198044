"""The CLI end to end in subprocesses: help, classify on real audio, and bad inputs as one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

COMMANDS = ["simulate", "train", "export", "classify", "listen", "bench", "demo", "bridge"]


def run_cli(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stethoedge", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_useful_help(command: str):
    proc = run_cli(command, "--help", check=True)
    assert "usage: stethoedge " + command in proc.stdout
    assert len(proc.stdout.splitlines()) >= 4


def test_classify_real_icbhi_recording(bundle_dir: Path, icbhi_dir: Path, tmp_path: Path):
    wav = icbhi_dir / "audio_and_txt_files" / "101_1b1_Al_sc_Meditron.wav"
    out = tmp_path / "out.jsonl"
    proc = run_cli("classify", str(bundle_dir), str(wav), "--hop", "2", "--jsonl", str(out), check=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # 20 s, first decision at 2 s, a hop of 2 s: windows end at 2, 4, ..., 20 s
    assert [r["end_s"] for r in records] == pytest.approx([2.0 * k for k in range(1, 11)])
    assert [r["padded"] for r in records] == [True] * 3 + [False] * 7
    for r in records:
        assert r["label"] in ("normal", "crackle", "wheeze", "both")
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert proc.stdout.count("\n") == len(records) + 2


def test_classify_4khz_stethoscope_file(bundle_dir: Path, icbhi_dir: Path):
    wav = icbhi_dir / "audio_and_txt_files" / "104_1b1_Al_sc_Litt3200.wav"
    proc = run_cli("classify", str(bundle_dir), str(wav), "--jsonl", "-", check=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1]["end_s"] == pytest.approx(sf.info(str(wav)).duration, abs=1e-3)


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp / "empty.wav"
    files["empty"].write_bytes(b"")
    files["not-a-wav"] = tmp / "text.wav"
    files["not-a-wav"].write_text("hello, I am not audio\n" * 20)
    files["truncated-header"] = tmp / "trunc.wav"
    files["truncated-header"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00")
    files["nan"] = tmp / "nan.wav"
    x = np.zeros(16000)
    x[5] = np.nan
    sf.write(files["nan"], x, 16000, subtype="FLOAT")
    files["one-sample"] = tmp / "one.wav"
    sf.write(files["one-sample"], np.zeros(1), 16000, subtype="PCM_16")
    files["missing"] = tmp / "missing.wav"
    files["directory"] = tmp / "adir"
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize("case", ["empty", "not-a-wav", "truncated-header", "nan", "one-sample", "missing", "directory"])
def test_bad_audio_gives_one_clear_line(bundle_dir: Path, tmp_path: Path, case: str):
    path = _bad_inputs(tmp_path)[case]
    proc = run_cli("classify", str(bundle_dir), str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_unknown_bundle_version_gives_one_clear_line(bundle_dir: Path, tmp_path: Path, icbhi_dir: Path):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    wav = icbhi_dir / "audio_and_txt_files" / "102_1b1_Ar_sc_Meditron.wav"
    proc = run_cli("classify", str(bad), str(wav))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "schema version 99 is not supported" in proc.stderr


def test_bench_prints_a_row_per_artifact(bundle_dir: Path, tmp_path: Path):
    proc = run_cli("bench", str(bundle_dir), "--runs", "3", "--json", str(tmp_path / "b.json"), check=True)
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["artifact"] for r in rows] == ["onnx-fp32", "onnx-int8-dynamic"]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["selftest_agreement"] == 1.0
        assert r["artifact"] in proc.stdout


def test_bad_arguments_are_usage_errors(bundle_dir: Path):
    proc = run_cli("classify", str(bundle_dir), "x.wav", "--hop", "-1")
    assert proc.returncode == 2 and "must be > 0" in proc.stderr and "Traceback" not in proc.stderr
