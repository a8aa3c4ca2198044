"""Rotating WAV recording with an index: contents, rotation, gaps, crash recovery, no half files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from stethoedge.runtime.recorder import INDEX_NAME, RotatingRecorder


def _pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768), -32768, 32767) / 32768


def test_segments_rotate_and_concatenate_to_the_stream(tmp_path: Path, rng: np.random.Generator):
    x = (0.3 * rng.standard_normal(16000 * 5)).astype(np.float32)
    with RotatingRecorder(tmp_path, segment_seconds=2.0) as rec:
        for start in range(0, x.size, 3000):
            rec.write(x[start : start + 3000], start)
        assert list(tmp_path.glob(".*.part")), "the open segment is a hidden .part file"
    index = json.loads((tmp_path / INDEX_NAME).read_text())["segments"]
    assert [s["samples"] for s in index] == [32000, 32000, 16000]
    assert [s["start_sample"] for s in index] == [0, 32000, 64000]
    audio = np.concatenate([sf.read(tmp_path / s["file"], dtype="float32")[0] for s in index])
    np.testing.assert_allclose(audio, _pcm16(x), atol=1 / 32768)
    assert not list(tmp_path.glob(".*"))  # no temporary or partial file left


def test_a_gap_starts_a_new_segment(tmp_path: Path):
    rec = RotatingRecorder(tmp_path, segment_seconds=60)
    rec.write(np.zeros(1000, np.float32), 0)
    rec.write(np.zeros(500, np.float32), 3000, gap_before=2000)
    rec.close()
    rec.close()
    assert [(s.start_sample, s.samples, s.gap_before) for s in rec.segments] == [(0, 1000, 0), (3000, 500, 2000)]


def test_crash_leaves_no_half_file_and_is_recovered(tmp_path: Path):
    code = (
        "import os, numpy as np\n"
        "from stethoedge.runtime.recorder import RotatingRecorder\n"
        f"rec = RotatingRecorder({str(tmp_path)!r}, segment_seconds=1.0)\n"
        "rec.write(np.full(24000, 0.25, np.float32), 0)\n"
        "os._exit(1)  # a crash: nothing closed\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    finished = [p for p in tmp_path.glob("*.wav")]
    assert len(finished) == 1 and sf.info(str(finished[0])).frames == 16000  # the completed segment only
    parts = list(tmp_path.glob(".*.part"))
    assert len(parts) == 1
    rec = RotatingRecorder(tmp_path)
    assert len(rec.recovered) == 1 and not list(tmp_path.glob(".*.part"))
    data, _ = sf.read(tmp_path / rec.recovered[0], dtype="float32")
    assert data.size == 8000 and np.allclose(data, 0.25, atol=1e-4)
    assert len(json.loads((tmp_path / INDEX_NAME).read_text())["segments"]) == 2


def test_max_segments_prunes_the_oldest(tmp_path: Path):
    rec = RotatingRecorder(tmp_path, segment_seconds=0.1, max_segments=2)
    rec.write(np.zeros(16000, np.float32), 0)
    rec.close()
    assert len(rec.segments) == 2 and len(list(tmp_path.glob("*.wav"))) == 2
    assert os.path.exists(tmp_path / rec.segments[-1].file)
