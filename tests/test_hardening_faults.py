"""Hardening: faults. A backend failing mid-stream, read-only and full output disks for recordings
and JSON lines, SIGTERM during export, two exports racing for one directory, random bytes on the
bridge's serial line. Each test checks that the run survives or fails with one clear typed error,
and that nothing half-written is left under a final name."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.errors import BackendError, OutputError, StethoedgeError
from stethoedge.runtime.jsonl import JsonlWriter
from stethoedge.runtime.recorder import RotatingRecorder
from stethoedge.runtime.sources import ArraySource
from stethoedge.runtime.stream import StreamConfig, StreamEngine


@pytest.fixture(scope="module")
def clf(bundle_dir: Path) -> Classifier:
    return Classifier.open(bundle_dir, allow_degraded=True, threads=1)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    g = np.random.default_rng(11)
    t = np.arange(16000 * 12) / 16000
    return (0.1 * g.standard_normal(t.size) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))).astype(np.float32)


class FailingOnCalls:
    """The real backend, fed a malformed batch on the chosen calls so that ONNX Runtime itself fails."""

    def __init__(self, real, fail_on: set[int]) -> None:
        self.real, self.fail_on, self.calls = real, fail_on, 0
        self.name, self.artifact = real.name, real.artifact

    def run(self, features: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls in self.fail_on:
            return self.real.run(features[:, : features.shape[1] // 2])  # wrong frame count: a real ORT error
        return self.real.run(features)


def _with_backend(clf: Classifier, backend) -> Classifier:
    return Classifier(clf.bundle, backend)


def test_backend_error_mid_stream_skips_the_window_and_the_stream_goes_on(clf: Classifier, audio: np.ndarray):
    clean = list(StreamEngine(clf, StreamConfig(threaded=True)).run(ArraySource(audio)))
    flaky = FailingOnCalls(clf.backend, {3})
    engine = StreamEngine(_with_backend(clf, flaky), StreamConfig(threaded=True))
    got = list(engine.run(ArraySource(audio)))
    assert engine.stats.backend_errors == 1
    assert [r.end_s for r in got] == [r.end_s for i, r in enumerate(clean) if i != 2]
    for a, b in zip([r for i, r in enumerate(clean) if i != 2], got):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)  # raw decisions unaffected


def test_persistent_backend_failure_is_one_typed_error(clf: Classifier, audio: np.ndarray):
    engine = StreamEngine(_with_backend(clf, FailingOnCalls(clf.backend, {2, 3, 4})), StreamConfig(max_backend_errors=3))
    with pytest.raises(BackendError, match="3 windows in a row failed"):
        list(engine.run(ArraySource(audio)))
    assert engine.stats.backend_errors == 3


# ------------------------------------------------------------------ read-only and full disks
def _mount_tmpfs(path: Path, size: str, readonly: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (disk full / read-only); not root here")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if readonly else ""), "tmpfs", str(path)],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); disk-full and read-only faults need one")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 KiB tmpfs: room for about 2 s of 16 kHz PCM16."""
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "64k")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


@pytest.fixture
def readonly_disk(tmp_path: Path):
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "64k", readonly=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def _check_no_corrupt_files(directory: Path, rec: RotatingRecorder) -> None:
    import soundfile as sf

    assert not list(directory.glob(".*.part")), "half-written segment left behind"
    for seg in rec.segments:
        assert sf.info(str(directory / seg.file)).frames == seg.samples
    if (directory / "index.json").exists():
        listed = [s["file"] for s in json.loads((directory / "index.json").read_text())["segments"]]
        assert all((directory / f).exists() for f in listed)


def test_recording_to_a_full_disk_keeps_classifying_and_holds_audio_in_memory(clf, audio, small_disk: Path):
    rec = RotatingRecorder(small_disk, segment_seconds=0.5, memory_seconds=3.0)
    engine = StreamEngine(clf, StreamConfig(threaded=True), recorder=rec)
    got = list(engine.run(ArraySource(audio)))
    rec.close()
    assert len(got) == 6  # every window still classified: 2, 4, ... 12 s
    assert rec.error is not None and "No space left" in rec.error
    assert 0 < len(rec.segments) and sum(s.samples for s in rec.segments) < audio.size
    assert rec.memory_samples == 3 * 16000  # bounded: exactly the newest 3 s, whatever the chunk sizes
    np.testing.assert_allclose(np.concatenate(rec.memory)[-16000:], audio[-16000:], atol=0)
    _check_no_corrupt_files(small_disk, rec)


def test_recording_to_a_readonly_disk_is_reported_not_fatal(clf, audio, readonly_disk: Path):
    rec = RotatingRecorder(readonly_disk, memory_seconds=1.0)
    got = list(StreamEngine(clf, StreamConfig(), recorder=rec).run(ArraySource(audio)))
    rec.close()
    assert len(got) == 6 and rec.error is not None and "Read-only" in rec.error
    assert list(readonly_disk.iterdir()) == []


def test_jsonl_on_a_full_disk_keeps_only_complete_lines(small_disk: Path):
    (small_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    record = {"label": "normal", "probabilities": {"normal": 0.25, "crackle": 0.25, "wheeze": 0.25, "both": 0.25},
              "pad": "x" * 200}
    writer = JsonlWriter(small_disk / "log.jsonl")
    with pytest.raises(OutputError, match="No space left") as info:
        for _ in range(1000):
            writer.write(record)
    assert "\n" not in str(info.value)
    lines = (small_disk / "log.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == writer.records > 0
    assert all(json.loads(line) == record for line in lines[:-1])


def test_listen_keeps_classifying_when_its_jsonl_disk_fills(bundle_dir: Path, small_disk: Path, tmp_path: Path, capsys):
    import soundfile as sf

    from stethoedge.cli import main

    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(1).standard_normal(16000 * 20) * 0.05, 16000)
    (small_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    log = small_disk / "listen.jsonl"
    before = signal.getsignal(signal.SIGTERM)
    try:
        code = main(["listen", str(bundle_dir), "--replay", str(wav), "--fast", "--hop", "0.25", "--jsonl", str(log),
                     "--allow-degraded"])
    finally:
        signal.signal(signal.SIGTERM, before)  # listen installs its own SIGTERM handler
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    assert err.count("JSON lines stopped, classification goes on") == 1 and "No space left" in err
    printed = [line for line in out.splitlines() if not line.startswith("#")]
    written = log.read_text().splitlines()
    assert all(json.loads(line) for line in written)  # only complete lines
    assert len(printed) == 73 > len(written) > 0  # every window decided and printed: 2 s, 2.25 s, ... 20 s


def test_classify_jsonl_on_full_and_readonly_disks_fails_cleanly(bundle_dir: Path, small_disk: Path,
                                                                 readonly_disk: Path, tmp_path: Path, capsys):
    import soundfile as sf

    from stethoedge.cli import main

    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(16000 * 30) * 0.05, 16000)
    (small_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))
    for target in (small_disk / "out.jsonl", readonly_disk / "out.jsonl"):
        code = main(["classify", str(bundle_dir), str(wav), "--jsonl", str(target), "--hop", "0.25", "--allow-degraded"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
        assert sorted(p.name for p in target.parent.iterdir() if p.name != "filler") == []


# ------------------------------------------------------------------ export: SIGTERM and a race
def _export_cmd(run: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stethoedge", "export", str(run), "--out", str(out), "--formats", "onnx-fp32",
            "--windows", "8", "--allow-degraded"]


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_sigterm_during_export_leaves_no_bundle_and_no_temporary(trained_run: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen(_export_cmd(trained_run, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _leftovers(tmp_path, "bundle") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the export is writing its temporary bundle
    if proc.poll() is not None:
        pytest.skip("the export finished before it could be interrupted (machine too fast for this probe)")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert not out.exists(), "an interrupted export must not leave a bundle"
    assert _leftovers(tmp_path, "bundle") == [], "temporary bundle directory left behind"


def test_two_exports_into_the_same_directory(trained_run: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    procs = [subprocess.Popen(_export_cmd(trained_run, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser and loser.strip().startswith("error: ") and len(loser.strip().splitlines()) == 1
    assert "already exists" in loser or "appeared while this export ran" in loser
    load_bundle(out)  # the winner's bundle is whole and verified
    assert _leftovers(tmp_path, "bundle") == []


# ------------------------------------------------------------------ bridge: random bytes on the line
def test_random_bytes_on_the_bridge_line_are_a_typed_error_not_audio(tmp_path: Path):
    pytest.importorskip("serial", reason="pyserial is not installed: the bridge source needs it")
    from stethoedge.firmware_bridge.links import PtyPair
    from stethoedge.firmware_bridge.serial_source import BridgeSource

    pty = PtyPair()
    src = BridgeSource(pty.slave_name, 921600, start=False, idle_timeout=0.5)
    try:
        import threading

        noise = np.random.default_rng(5).integers(0, 256, 20000, dtype=np.uint8).tobytes()
        writer = threading.Thread(target=os.write, args=(pty.master, noise), daemon=True)  # a pty holds ~4 KB
        writer.start()
        with pytest.raises(StethoedgeError) as info:
            chunks = list(src.chunks())
            assert chunks == []  # pragma: no cover - silence must end the stream with an error
        writer.join(timeout=5)
        assert "\n" not in str(info.value)
        assert src.stats.audio_frames == 0
    finally:
        src.close()
        pty.close()
