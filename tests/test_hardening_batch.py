"""Hardening: batch classification of a directory with N workers equals the single-worker run,
and a bad file in the directory is reported for that file without stopping the others."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.cli import main
from stethoedge.runtime.batch import BatchOptions, classify_files, comparable, list_audio
from stethoedge.runtime.errors import AudioError


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("batch")
    g = np.random.default_rng(21)
    for i, (rate, seconds) in enumerate([(16000, 5.0), (44100, 3.0), (4000, 6.5), (8000, 2.5)]):
        t = np.arange(int(rate * seconds)) / rate
        x = 0.1 * g.standard_normal(t.size) + 0.05 * np.sin(2 * np.pi * (150 + 60 * i) * t)
        sf.write(d / f"rec{i}.wav", x, rate, subtype="PCM_16")
    (d / "broken.wav").write_bytes(b"RIFF junk")
    (d / "notes.txt").write_text("not audio, not listed")
    return d


def test_n_workers_give_the_single_worker_output(bundle_dir: Path, recordings: Path):
    files = list_audio(recordings)
    assert [f.name for f in files] == ["broken.wav", "rec0.wav", "rec1.wav", "rec2.wav", "rec3.wav"]
    options = BatchOptions(str(bundle_dir), allow_degraded=True, threads=1)
    one = [comparable(r) for r in classify_files(files, options, workers=1)]
    two = [comparable(r) for r in classify_files(files, options, workers=2)]
    assert one == two
    assert one[0]["error"] and "broken.wav" in one[0]["error"] and not one[0]["windows"]
    assert all(r["error"] is None and r["windows"] for r in one[1:])
    assert [w["end_s"] for w in one[3]["windows"]] == pytest.approx([2.0, 4.0, 6.0, 6.5], abs=1e-3)


def test_batch_cli_writes_file_tagged_lines_and_reports_the_bad_file(bundle_dir: Path, recordings: Path,
                                                                     tmp_path: Path, capsys):
    out = tmp_path / "batch.jsonl"
    code = main(["classify-batch", str(bundle_dir), str(recordings), "--workers", "2", "--jsonl", str(out),
                 "--allow-degraded"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.wav: error:" in err and "4 of 5 file(s) classified, 1 failed" in err and "Traceback" not in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[-1] == {"summary": {"files": 5, "classified": 4, "failed": 1, "with_warnings": 0}}
    records = records[:-1]
    assert [Path(r["file"]).name for r in records] == sorted(Path(r["file"]).name for r in records)
    assert {Path(r["file"]).name for r in records} == {"broken.wav", "rec0.wav", "rec1.wav", "rec2.wav", "rec3.wav"}
    errors = [r for r in records if "error" in r]  # one error record for the broken file, no windows for it
    assert len(errors) == 1 and Path(errors[0]["file"]).name == "broken.wav"
    assert "not a readable audio file" in errors[0]["error"] and errors[0]["warnings"] == []
    assert all("label" in r and r["warnings"] == [] for r in records if "error" not in r)


def test_batch_on_a_file_instead_of_a_directory(recordings: Path):
    with pytest.raises(AudioError, match="not a directory"):
        list_audio(recordings / "rec0.wav")
