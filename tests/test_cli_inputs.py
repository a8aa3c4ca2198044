"""Inputs users really have, through the installed ``stethoedge`` command (real subprocesses, the shipped
model) and the Python API: every format ``classify`` decodes in ``classify-batch`` (also in sub-folders),
digital silence and channels that cancel, MP3 length estimates, WAVs a killed recorder left unfinalised,
standard input, FIFOs and symlink loops, range-checked numeric options, and a reader of stdout that goes away.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.cli import EXIT_BROKEN_PIPE, build_parser
from stethoedge.cli_common import MAX_THREADS, Bounded, annotate_ranges, bounded_float
from stethoedge.runtime import audio_io, batch
from stethoedge.runtime.audio_io import (AUDIO_SUFFIXES, choose_downmix, gram_matrix, load_audio, open_input,
                                         read_stdin, short_read_warning, unfinalised_wav_patch)
from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.sources import FileSource

RATE = 16000
HAS_MP3 = "MP3" in sf.available_formats()
needs_mp3 = pytest.mark.skipif(not HAS_MP3, reason="this libsndfile cannot write MP3")


def _exe() -> list[str]:
    """The installed console script beside this interpreter (the virtualenv's), else ``python -m stethoedge``."""
    script = Path(sys.executable).parent / "stethoedge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stethoedge"]


def run(*args: str, stdin: bytes | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """One real ``stethoedge`` run; stdout and stderr as text."""
    proc = subprocess.run([*_exe(), *args], input=stdin, capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a failed run (asserting exit 2 and no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def breath(seconds: float, rate: int = RATE, seed: int = 0, level: float = 0.2) -> np.ndarray:
    """Breath-like audio: band-limited noise with a slow envelope plus a low tone (float64, mono)."""
    g = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    noise = np.convolve(g.standard_normal(n), np.ones(8) / 8, mode="same")
    x = level * (0.6 * noise * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t)) + 0.3 * np.sin(2 * np.pi * 180 * t))
    return np.clip(x, -0.9, 0.9)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decisions(lines: list[dict]) -> list[tuple]:
    """What must not depend on timing: window bounds, labels, probabilities."""
    return [(r["start_s"], r["end_s"], r["label"], tuple(round(v, 5) for v in r["probabilities"].values()))
            for r in lines]


# ------------------------------------------------------------------ 6. classify-batch
def _write_formats(d: Path, seconds: float = 3.0) -> list[str]:
    """One recording per format classify decodes (where this libsndfile writes it); returns the names."""
    x = breath(seconds)
    names = ["a.wav", "b.flac", "c.aiff", "d.ogg", "e.opus"] + (["f.mp3"] if HAS_MP3 else [])
    fmt = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "aiff": ("AIFF", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III")}
    for name in names:
        f, sub = fmt[name.rsplit(".", 1)[1]]
        sf.write(str(d / name), x, RATE, format=f, subtype=sub)
    return names


def test_batch_and_classify_share_one_suffix_list():
    assert batch.AUDIO_SUFFIXES is audio_io.AUDIO_SUFFIXES
    for suffix in (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif"):
        assert suffix in AUDIO_SUFFIXES or suffix == ".mp3" and not HAS_MP3


def test_list_audio_finds_every_format_and_recurses_only_when_asked(tmp_path: Path):
    names = _write_formats(tmp_path)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / ".hidden.wav").write_bytes(b"")
    sub = tmp_path / "visit-2" / "deeper"
    sub.mkdir(parents=True)
    sf.write(str(sub / "z.WAV"), breath(1.0), RATE)
    (tmp_path / ".cache").mkdir()
    sf.write(str(tmp_path / ".cache" / "skip.wav"), breath(1.0), RATE)
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)  # a link loop must not recurse forever
    assert [p.name for p in batch.list_audio(tmp_path)] == sorted(names)
    deep = batch.list_audio(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == sorted(names) + ["visit-2/deeper/z.WAV"]


def test_batch_cli_every_format_recursive_workers_error_records_and_summary(tmp_path: Path):
    d = tmp_path / "recordings"
    d.mkdir()
    names = _write_formats(d)
    (d / "broken.mp3").write_bytes(b"ID3 not really an mp3" * 10)
    (d / "sub").mkdir()
    sf.write(str(d / "sub" / "inner.wav"), breath(2.5, seed=4), RATE)
    out = tmp_path / "out.jsonl"
    proc = run("classify-batch", str(d), "--recursive", "--workers", "2", "--jsonl", str(out))
    assert proc.returncode == 1, proc.stderr  # one file failed, the others were classified
    assert "Traceback" not in proc.stderr
    total = len(names) + 2
    assert f"# {total - 1} of {total} file(s) classified, 1 failed" in proc.stderr
    lines = records(out)
    assert lines[-1] == {"summary": {"files": total, "classified": total - 1, "failed": 1, "with_warnings": 0}}
    by_file: dict[str, list[dict]] = {}
    for r in lines[:-1]:
        by_file.setdefault(os.path.relpath(r["file"], d), []).append(r)
    assert sorted(by_file) == sorted([*names, "broken.mp3", "sub/inner.wav"])
    error = by_file["broken.mp3"]
    assert len(error) == 1 and set(error[0]) == {"file", "error", "warnings"} and "broken.mp3" in error[0]["error"]
    for name in [*names, "sub/inner.wav"]:
        windows = by_file[name]
        assert windows and all("label" in w and w["warnings"] == [] for w in windows), name
        assert windows[-1]["end_s"] == pytest.approx(2.5 if name == "sub/inner.wav" else 3.0, abs=0.02), name
    # without --recursive the sub-folder is not looked into
    flat = tmp_path / "flat.jsonl"
    proc = run("classify-batch", str(d), "--jsonl", str(flat))
    assert proc.returncode == 1 and f"# {total - 2} of {total - 1} file(s) classified" in proc.stderr
    assert not any("inner.wav" in r.get("file", "") for r in records(flat))


def test_batch_with_nothing_to_classify_is_an_error(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    line = one_error_line(run("classify-batch", str(empty)))
    assert "no audio files to classify" in line and ".mp3" in line and "--recursive" not in line
    (empty / "visit-1").mkdir()
    sf.write(str(empty / "visit-1" / "a.wav"), breath(1.0), RATE)
    assert "add --recursive" in one_error_line(run("classify-batch", str(empty)))


def test_batch_where_every_file_fails_exits_2_with_error_records(tmp_path: Path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.wav").write_bytes(b"RIFF junk")
    sf.write(str(d / "b.wav"), breath(0.05), RATE)  # too short for a decision
    out = tmp_path / "bad.jsonl"
    proc = run("classify-batch", str(d), "--jsonl", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: none of the 2 file(s) in {d} could be classified"
    lines = records(out)
    assert [os.path.basename(r["file"]) for r in lines[:-1]] == ["a.wav", "b.wav"]
    assert "not a readable audio file" in lines[0]["error"]
    assert lines[1]["error"].startswith(f"{d / 'b.wav'}: only 0.05") and "0.25 s is needed" in lines[1]["error"]
    assert lines[-1]["summary"]["failed"] == 2


# ------------------------------------------------------------------ 7. silence and channels that cancel
def test_downmix_keeps_a_signal_that_averaging_would_erase(tmp_path: Path):
    x = breath(3.0)
    cases = {
        "cancel": (np.stack([x, -x], 1), x, "cancels"),
        "right-silent": (np.stack([np.zeros_like(x), x], 1), x, "channel 1 is silent"),
        "anti-phase-weaker": (np.stack([x, -0.5 * x], 1), x, "cancels"),
    }
    for name, (data, expect, warning) in cases.items():
        path = tmp_path / f"{name}.wav"
        sf.write(str(path), data, RATE, subtype="FLOAT")
        loaded = load_audio(path)
        np.testing.assert_allclose(loaded.samples, expect, atol=1e-6, err_msg=name)
        assert len(loaded.warnings) == 1 and warning in loaded.warnings[0], (name, loaded.warnings)
        src = FileSource(path)  # the streamed reader makes the same choice before its first block
        streamed = np.concatenate([c.samples for c in src.chunks()])
        np.testing.assert_allclose(streamed, expect, atol=1e-6, err_msg=name)
        assert any(warning in w for w in src.warnings), (name, src.warnings)


def test_downmix_averages_ordinary_channels():
    g = np.random.default_rng(5)
    independent = g.standard_normal((16000, 2))
    assert choose_downmix(gram_matrix(independent), "x") == (None, None)
    six = np.repeat(independent[:, :1], 6, axis=1)
    assert choose_downmix(gram_matrix(six), "x") == (None, None)
    three = np.column_stack([independent, 1e-4 * g.standard_normal(16000)])  # a dead third channel
    weights, why = choose_downmix(gram_matrix(three), "x")
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0])
    assert "channel 3 is silent" in why
    assert choose_downmix(np.zeros((2, 2)), "x") == (None, None)  # silence: nothing to choose


def test_digital_silence_warns_per_file_and_per_window(tmp_path: Path):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(5 * RATE), RATE, subtype="PCM_16")
    assert any("digital silence" in w for w in load_audio(path).warnings)
    out = tmp_path / "silence.jsonl"
    proc = run("classify", str(path), "--jsonl", str(out))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "warning: " in proc.stderr and "digital silence (peak -inf dBFS)" in proc.stderr
    lines = records(out)
    assert lines and all(any("silent window" in w for w in r["warnings"]) for r in lines)
    assert "silent window" in proc.stdout  # the table says it too


def test_cancelling_stereo_is_classified_on_one_channel_with_a_warning(tmp_path: Path):
    x = breath(4.0, seed=2)
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.stack([x, -x], 1), RATE, subtype="PCM_16")
    mono = tmp_path / "mono.wav"
    sf.write(str(mono), x, RATE, subtype="PCM_16")
    out_s, out_m = tmp_path / "s.jsonl", tmp_path / "m.jsonl"
    proc = run("classify", str(stereo), "--jsonl", str(out_s))
    assert proc.returncode == 0 and "averaging the channels cancels the signal" in proc.stderr
    assert "using channel 1 alone" in proc.stderr
    assert run("classify", str(mono), "--jsonl", str(out_m)).returncode == 0
    s, m = records(out_s), records(out_m)
    assert decisions(s) == decisions(m)  # exactly the left channel's decisions
    assert all(any("cancels" in w for w in r["warnings"]) and not any("silent" in w for w in r["warnings"])
               for r in s)


# ------------------------------------------------------------------ 8. MP3 and unfinalised WAVs
def _mp3(path: Path, seconds: float = 10.0) -> Path:
    sf.write(str(path), breath(seconds, seed=3), RATE, format="MP3", subtype="MPEG_LAYER_III")
    return path


def _mp3_header_says_one_frame_more(src: Path, dst: Path) -> Path:
    """The same MP3 with its Xing frame count one higher: the header then announces ~576 samples the
    decoder never produces, as codec delay and encoders' estimates make happen on valid files."""
    data = bytearray(src.read_bytes())
    at = data.find(b"Xing")
    assert at > 0 and struct.unpack(">I", data[at + 4 : at + 8])[0] & 1, "no frame count in the Xing header"
    frames = struct.unpack(">I", data[at + 8 : at + 12])[0]
    data[at + 8 : at + 12] = struct.pack(">I", frames + 1)
    dst.write_bytes(bytes(data))
    return dst


@needs_mp3
def test_valid_mp3_is_not_called_truncated_but_a_half_mp3_is(tmp_path: Path):
    good = _mp3(tmp_path / "good.mp3")
    proc = run("classify", str(good), "--jsonl", str(tmp_path / "g.jsonl"))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert records(tmp_path / "g.jsonl")[-1]["end_s"] == pytest.approx(10.0, abs=0.01)
    longer = _mp3_header_says_one_frame_more(good, tmp_path / "delay.mp3")
    src = FileSource(longer)
    got = sum(c.samples.shape[0] for c in src.chunks())
    assert src.info.frames - got > 100 and src.warnings == []  # short of the header, within the codec's slack
    half = tmp_path / "half.mp3"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    proc = run("classify", str(half), "--jsonl", str(tmp_path / "h.jsonl"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "warning: " in proc.stderr and "truncated file" in proc.stderr
    assert 4.0 < records(tmp_path / "h.jsonl")[-1]["end_s"] < 6.0


@needs_mp3
def test_streamed_mp3_equals_the_whole_file_decode(tmp_path: Path):
    """SoundFile.read seeks around every block, which made libmpg123 drop its bit reservoir and garble
    the start of every 0.5 s block; the streamed decode must equal the one-piece decode."""
    path = _mp3(tmp_path / "s.mp3", 6.0)
    whole, rate = sf.read(str(path), dtype="float32")
    assert rate == RATE
    streamed = np.concatenate([c.samples for c in FileSource(path).chunks()])
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    np.testing.assert_allclose(load_audio(path).samples, whole, atol=1e-6)


def test_short_read_tolerates_codec_slack_only_for_compressed_formats():
    class Info:
        def __init__(self, subtype: str, frames: int) -> None:
            self.subtype, self.frames = subtype, frames

    assert short_read_warning(Info("MPEG_LAYER_III", 160_576), 160_175, "a.mp3") is None
    assert short_read_warning(Info("VORBIS", 441_000), 440_000, "a.ogg") is None
    assert "truncated" in short_read_warning(Info("MPEG_LAYER_III", 160_000), 76_079, "half.mp3")
    assert "truncated" in short_read_warning(Info("PCM_16", 160_576), 160_175, "a.wav")
    assert short_read_warning(Info("PCM_16", 100), 100, "a.wav") is None


def test_truncated_ogg_warns(tmp_path: Path):
    path = tmp_path / "long.ogg"
    sf.write(str(path), breath(20.0, rate=44100), 44100, format="OGG", subtype="VORBIS")
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    try:
        src = FileSource(cut)
    except AudioError as exc:  # some libsndfile versions find nothing to decode in half a stream
        assert "cut.ogg" in str(exc)
        return
    list(src.chunks())
    assert any("truncated" in w for w in src.warnings), src.warnings


def _unfinalise(path: Path, riff: int | None = 0, data: int | None = 0) -> Path:
    """Rewrite the RIFF and data chunk sizes as a killed recorder leaves them."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data")
    if riff is not None:
        raw[4:8] = struct.pack("<I", riff)
    if data is not None:
        raw[at + 4 : at + 8] = struct.pack("<I", data)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("subtype, channels", [("PCM_16", 1), ("PCM_24", 2), ("PCM_32", 1), ("FLOAT", 1)])
def test_unfinalised_wav_is_recovered_with_a_warning(tmp_path: Path, subtype: str, channels: int):
    x = breath(3.0, seed=6)
    data = np.repeat(x[:, None], channels, 1) if channels > 1 else x
    good = tmp_path / "good.wav"
    sf.write(str(good), data, RATE, subtype=subtype)
    bad = tmp_path / "killed.wav"
    shutil.copy(good, bad)
    _unfinalise(bad)
    with open(bad, "ab") as f:
        f.write(b"\x01")  # half a sample at the end: only whole frames are read
    loaded = load_audio(bad)
    np.testing.assert_array_equal(loaded.samples, load_audio(good).samples)
    assert len(loaded.warnings) == 1 and "unfinalised WAV" in loaded.warnings[0]
    src = FileSource(bad)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in src.chunks()]), loaded.samples)
    assert src.warnings == loaded.warnings
    assert open_input(good).warnings == []


def test_unfinalised_wav_through_the_cli_and_stdin(tmp_path: Path):
    path = tmp_path / "killed.wav"
    sf.write(str(path), breath(5.0, seed=7), RATE, subtype="PCM_16")
    reference = tmp_path / "ref.wav"
    shutil.copy(path, reference)
    _unfinalise(path)
    proc = run("classify", str(path), "--jsonl", "-")
    assert proc.returncode == 0, proc.stderr
    assert "unfinalised WAV" in proc.stderr and "header says 0 bytes of audio although 160000 bytes follow" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert decisions(lines) == decisions([json.loads(x) for x in run("classify", str(reference), "--jsonl", "-")
                                          .stdout.splitlines()])
    assert all("unfinalised WAV" in r["warnings"][0] for r in lines)
    piped = run("classify", "-", "--jsonl", "-", stdin=path.read_bytes())  # a recorder piping into us
    assert piped.returncode == 0 and "stdin: unfinalised WAV" in piped.stderr
    assert decisions([json.loads(x) for x in piped.stdout.splitlines()]) == decisions(lines)


def test_size_unknown_wav_is_not_called_truncated_and_empty_data_stays_an_error(tmp_path: Path):
    path = tmp_path / "streamed.wav"
    sf.write(str(path), breath(2.0), RATE, subtype="PCM_16")
    _unfinalise(path, riff=0xFFFFFFFF, data=0xFFFFFFFF)
    warnings = load_audio(path).warnings
    assert len(warnings) == 1 and "gives no audio size" in warnings[0] and "truncated" not in warnings[0]
    empty = tmp_path / "nothing.wav"
    sf.write(str(empty), np.zeros(0), RATE, subtype="PCM_16")
    _unfinalise(empty)
    with pytest.raises(AudioError, match="contains no audio samples"):
        FileSource(empty)
    assert unfinalised_wav_patch(lambda o, n: empty.read_bytes()[o : o + n], empty.stat().st_size) is None


# ------------------------------------------------------------------ 10. paths, stdin, FIFOs, messages
def test_short_audio_error_names_the_file(tmp_path: Path):
    path = tmp_path / "blip.wav"
    sf.write(str(path), breath(0.1), RATE)
    line = one_error_line(run("classify", str(path)))
    assert line.startswith(f"error: {path}: only 0.1000 s of audio")


def test_symlink_loop_fifo_and_device_are_named_for_what_they_are(tmp_path: Path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.symlink_to(b)
    b.symlink_to(a)
    assert "symlink loop" in one_error_line(run("classify", str(a)))
    fifo = tmp_path / "stream.wav"
    os.mkfifo(fifo)  # no writer: opening it would block forever
    line = one_error_line(run("classify", str(fifo), timeout=60))
    assert "is a named pipe (FIFO), not a regular file" in line and "classify -" in line
    assert "is a character device" in one_error_line(run("classify", os.devnull))
    dangling = tmp_path / "gone.wav"
    dangling.symlink_to(tmp_path / "never-there.wav")
    assert "no such file (broken symlink to" in one_error_line(run("classify", str(dangling)))
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("FileSource blocked on a FIFO"))
    signal.alarm(20)
    try:
        with pytest.raises(AudioError, match="symlink loop"):
            FileSource(a)
        with pytest.raises(AudioError, match="named pipe"):
            FileSource(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("fmt", ["wav", "flac"] + (["mp3"] if HAS_MP3 else []))
def test_stdin_gives_the_same_decisions_as_the_file(tmp_path: Path, fmt: str):
    path = tmp_path / f"rec.{fmt}"
    sf.write(str(path), breath(6.0, seed=8), RATE, format={"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}[fmt])
    from_file = run("classify", str(path), "--jsonl", "-")
    from_stdin = run("classify", "-", "--jsonl", "-", stdin=path.read_bytes())
    assert from_file.returncode == from_stdin.returncode == 0, from_stdin.stderr
    want = decisions([json.loads(x) for x in from_file.stdout.splitlines()])
    assert want and decisions([json.loads(x) for x in from_stdin.stdout.splitlines()]) == want
    table = run("classify", "-", stdin=path.read_bytes())
    assert table.returncode == 0 and table.stdout.startswith("# stdin: 6.00 s")


def test_stdin_errors_are_one_line(tmp_path: Path):
    assert one_error_line(run("classify", "-", stdin=b"")) == "error: stdin: empty (0 bytes)"
    assert "stdin: not a readable audio file" in one_error_line(run("classify", "-", stdin=b"hello" * 100))
    import io

    with pytest.raises(AudioError, match=r"stdin: more than 1000 bytes of audio .*classify the file"):
        read_stdin(io.BytesIO(b"x" * 5000), max_bytes=1000)
    with pytest.raises(AudioError, match="stdin: empty"):
        open_input("-", stdin=io.BytesIO(b""))


# ------------------------------------------------------------------ 11b. a reader of stdout that goes away
def _closed_reader(*args: str) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reading end is already closed: the first write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*_exe(), *args], stdout=write_end, stderr=subprocess.PIPE, timeout=240,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    finally:
        os.close(write_end)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode(errors="replace"))


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipe") / "long.wav"
    sf.write(str(path), breath(30.0, seed=9), RATE, subtype="PCM_16")
    return path


@pytest.mark.parametrize("command", ["classify-jsonl", "classify-table", "batch", "listen"])
def test_closed_stdout_exits_141_quietly(long_recording: Path, command: str):
    args = {"classify-jsonl": ["classify", str(long_recording), "--jsonl", "-"],
            "classify-table": ["classify", str(long_recording)],
            "batch": ["classify-batch", str(long_recording.parent), "--jsonl", "-", "--workers", "2"],
            "listen": ["listen", "--replay", str(long_recording), "--fast", "--jsonl", "-"]}[command]
    proc = _closed_reader(*args)
    assert proc.returncode == EXIT_BROKEN_PIPE == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_head_on_the_jsonl_stream(long_recording: Path):
    shell = f"set -o pipefail; {' '.join(_exe())} classify {long_recording} --hop 0.5 --jsonl - | head -3"
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=240)
    assert len(proc.stdout.splitlines()) == 3 and all(json.loads(x)["label"] for x in proc.stdout.splitlines())
    assert proc.returncode in (0, 141) and "Traceback" not in proc.stderr and proc.stderr == ""


# ------------------------------------------------------------------ 9. numeric options
BAD_NUMBERS = [
    ("classify x.wav", "--hop", "inf"), ("classify x.wav", "--hop", "0.0001"), ("classify x.wav", "--hop", "nan"),
    ("classify x.wav", "--hop", "61"), ("classify x.wav", "--threads", "1000"), ("classify x.wav", "--threads", "0"),
    ("classify x.wav", "--min-seconds", "0"), ("classify x.wav", "--segment-seconds", "1e308"),
    ("classify x.wav", "--max-segments", "0"), ("classify-batch d", "--workers", "0"),
    ("classify-batch d", "--workers", "100000"), ("listen", "--baud", "0"), ("listen", "--device-rate", "1000"),
    ("listen", "--retry-seconds", "1e9"), ("listen", "--idle-timeout", "0"), ("bench b", "--runs", "0"),
    ("bench b", "--threads", "1,0"), ("bench b", "--sustained", "inf"), ("export r --out o", "--min-agreement", "1.5"),
    ("export r --out o", "--windows", "-3"), ("build-engine b", "--max-batch", "100000"), ("train", "--lr", "inf"),
    ("train", "--epochs", "0"), ("train", "--seeds", "1,-2"), ("train", "--val-fraction", "1"),
    ("train", "--label-smoothing", "nan"), ("simulate --out o", "--seed", "-1"), ("simulate --out o", "--duration", "0"),
    ("train-edge --recipe r --out o", "--threads", "99999"), ("generate fit --kind vae --data d --out o", "--width", "nan"),
    ("generate mixed --model m --data d --out o", "--n", "-1"), ("experiment --data d --out o", "--gen-steps", "0"),
    ("demo", "--epochs", "0"), ("bridge simulate --port p --wav w", "--rate", "100"),
    ("bridge decode c", "--limit", "-1"),
]


@pytest.mark.parametrize("command, option, value", BAD_NUMBERS, ids=[f"{c.split()[0]}{o}={v}" for c, o, v in BAD_NUMBERS])
def test_numeric_option_out_of_range_is_a_usage_error_stating_the_range(capsys, command: str, option: str, value: str):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*command.split(), option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be" in err and " from " in err and " to " in err, err
    assert "Traceback" not in err


def test_hop_inf_and_tiny_hop_through_the_command(tmp_path: Path):
    for value, expect in (("inf", "from 0.1 to 60 (not NaN or infinity), got 'inf'"), ("0.0001", "from 0.1 to 60, got '0.0001'")):
        proc = run("classify", "x.wav", "--hop", value)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
        assert f"argument --hop: must be a number {expect}" in proc.stderr
    proc = run("classify", "x.wav", "--threads", "1000")
    assert proc.returncode == 2 and f"from 1 to {MAX_THREADS}, got '1000'" in proc.stderr


def _leaf_parsers(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _leaf_parsers(sub, f"{path} {name}".strip())
    return out


def test_every_numeric_option_is_range_checked_and_says_its_range():
    for where, parser in _leaf_parsers(build_parser()):
        for action in parser._actions:
            if action.type in (int, float) or getattr(action.type, "__name__", "") in ("positive_int", "positive_float"):
                pytest.fail(f"stethoedge {where} {action.option_strings}: numeric option without a range")
            if isinstance(action.type, Bounded):
                assert action.type.range_text in (action.help or ""), (where, action.option_strings, action.help)


RUNTIME_COMMANDS = ["classify", "classify-batch", "listen", "devices", "doctor", "bench"]


@pytest.mark.parametrize("command", RUNTIME_COMMANDS)
def test_every_runtime_option_says_what_it_does_and_its_default(command: str):
    parser = dict(_leaf_parsers(build_parser()))[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        assert len(text) > 20, (command, action.dest, text)
        if action.option_strings:
            assert "default" in text, (command, action.option_strings, text)


def test_annotate_ranges_fills_in_what_a_help_lacks():
    p = argparse.ArgumentParser()
    p.add_argument("--a", type=bounded_float(0.1, 60), default=2.0, help="seconds (default 2)")
    p.add_argument("--b", type=bounded_float(0, 1), default=0.5, help="a weight")
    p.add_argument("--c", type=bounded_float(1, 9), default=None)
    annotate_ranges(p)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["a"] == "seconds (default 2, 0.1-60)"
    assert helps["b"] == "a weight (default 0.5, 0-1)"
    assert helps["c"] == "(1-9)"


def test_a_stream_cut_mid_frame_is_classified_up_to_the_cut_with_one_warning(tmp_path: Path):
    """FLAC cut in half: the decoder loses sync part-way; what it decoded is classified, with a warning."""
    full = tmp_path / "full.flac"
    sf.write(str(full), breath(6.0, seed=10), RATE, format="FLAC")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    src = FileSource(cut)
    got = np.concatenate([c.samples for c in src.chunks()])
    assert 1.0 * RATE < got.shape[0] < 5.0 * RATE
    assert len(src.warnings) == 1 and "decoding stopped after" in src.warnings[0], src.warnings
    loaded = load_audio(cut)
    np.testing.assert_array_equal(loaded.samples, got)
    assert loaded.warnings == src.warnings
