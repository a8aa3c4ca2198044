"""Class-folder datasets: root/<class>/*.wav."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from stethoedge.runtime.audio_io import write_wav
from stethoedge.runtime.errors import AudioError, DataError
from stethoedge.train.folders import list_folder_dataset, load_folder_items, split_pieces


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    return write_wav(path, 0.2 * np.sin(2 * np.pi * 300 * t), rate)


def test_list_and_load(tmp_path: Path) -> None:
    _wav(tmp_path / "normal" / "a.wav", 2.0)
    _wav(tmp_path / "normal" / "sub" / "b.WAV", 1.0, rate=8000)
    _wav(tmp_path / "wheeze" / "c.wav", 20.0)
    _wav(tmp_path / "both" / "d.wav", 8.0)
    (tmp_path / "crackle").mkdir()
    (tmp_path / "README.md").write_text("labels by folder")
    (tmp_path / ".cache").mkdir()
    (tmp_path / "normal" / "notes.txt").write_text("ignored")
    items = list_folder_dataset(tmp_path)
    assert [(p.relative_to(tmp_path).as_posix(), y) for p, y in items] == [
        ("both/d.wav", 3), ("normal/a.wav", 0), ("normal/sub/b.WAV", 0), ("wheeze/c.wav", 2)]
    cycles = load_folder_items(items)
    assert [(a.shape[0], y) for a, y in cycles] == [
        (128000, 3), (32000, 0), (16000, 0), (106667, 2), (106666, 2), (106667, 2)]
    assert all(a.dtype == np.float32 for a, _ in cycles)
    # The pieces are consecutive: together they are the whole file.
    whole = np.concatenate([a for a, y in cycles if y == 2])
    assert whole.shape[0] == 320000


def test_unknown_class_folder_lists_valid_names(tmp_path: Path) -> None:
    _wav(tmp_path / "normal" / "a.wav", 1.0)
    _wav(tmp_path / "rhonchi" / "b.wav", 1.0)
    valid = "valid names are normal, crackle, wheeze, both"
    with pytest.raises(DataError, match=f"unknown class folder 'rhonchi'; {valid}"):
        list_folder_dataset(tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        list_folder_dataset(tmp_path / "missing")
    (tmp_path / "normal").mkdir()
    with pytest.raises(DataError, match="no .wav files"):
        list_folder_dataset(tmp_path)
    _wav(tmp_path / "loose.wav", 1.0)
    with pytest.raises(DataError, match="must sit in a class folder"):
        list_folder_dataset(tmp_path)


def test_load_skips_tiny_and_reports_bad_audio(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny = _wav(tmp_path / "normal" / "tiny.wav", 0.01)
    with caplog.at_level(logging.WARNING, logger="stethoedge.data"):
        assert load_folder_items([(tiny, 0)]) == []
    assert "tiny.wav: shorter than 25 ms" in caplog.text
    broken = tmp_path / "normal" / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not a wav at all")
    with pytest.raises(AudioError, match="broken.wav"):
        load_folder_items([(broken, 0)])
    with pytest.raises(DataError, match="label 7"):
        load_folder_items([(tiny, 7)])


def test_split_pieces_bounds() -> None:
    audio = np.arange(100, dtype=np.float32)
    assert [p.shape[0] for p in split_pieces(audio, 10, 8.0)] == [50, 50]
    assert [p.shape[0] for p in split_pieces(audio, 10, 10.0)] == [100]
    assert [p.shape[0] for p in split_pieces(audio, 10, 3.0)] == [25, 25, 25, 25]
    assert np.array_equal(np.concatenate(split_pieces(audio, 10, 3.0)), audio)
