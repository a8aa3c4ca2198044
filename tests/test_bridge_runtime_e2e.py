"""The whole device chain on a real serial line: C example firmware -> pty -> BridgeSource ->
runtime Classifier (ONNX Runtime) -> RESULT frames back, decoded by the firmware."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from support import ctools
from stethoedge.firmware_bridge.links import PtyPair
from stethoedge.firmware_bridge.serial_source import BridgeSource
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.sources import ArraySource
from stethoedge.train.simulator import simulate_recording

COMPILER = ctools.find_compiler()


@pytest.mark.skipif(COMPILER is None, reason="no C compiler found (looked for $CC, cc, gcc, clang)")
def test_firmware_to_classifier_to_results(bundle_dir: Path, tmp_path: Path):
    audio, _ = simulate_recording(5, "copd", "Meditron", 10.0)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    wav = tmp_path / "patient.wav"
    sf.write(wav, pcm, 16000, subtype="PCM_16")
    clf = Classifier.open(bundle_dir, allow_degraded=True)
    pty = PtyPair()
    src = BridgeSource(pty.slave_name, 921600, start=True, idle_timeout=5.0)
    proc = subprocess.Popen([str(ctools.build().example_firmware), "--wav", str(wav), "--wait-start",
                             "--linger-ms", "5000"], stdin=pty.master, stdout=pty.master, stderr=subprocess.PIPE)
    try:
        results = []
        for r in clf.classify(src, hop_s=2.0, min_s=2.0):
            results.append(r)
            src.send_result(clf.bundle.labels.index(r.label), r.confidence, r.end_s)
        stats = src.stats
        src.close()
        log = proc.communicate(timeout=10)[1].decode()
    finally:
        src.close()
        pty.close()
        if proc.poll() is None:
            proc.kill()
    # The bridge delivered every sample: the decisions equal classifying the WAV directly.
    direct = list(clf.classify(ArraySource(pcm.astype(np.float32) / 32768), hop_s=2.0, min_s=2.0))
    assert [r.end_s for r in results] == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0])
    assert [r.label for r in results] == [r.label for r in direct]
    for a, b in zip(results, direct):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    assert stats.crc_errors == stats.frames_lost == 0
    got = re.findall(r"host RESULT seq=\d+ label=(\d) confidence_q16=(\d+) window_ms=(\d+)", log)
    assert [(int(l), int(ms)) for l, _, ms in got] == [
        (clf.bundle.labels.index(r.label), int(round(r.end_s * 1000))) for r in results
    ]


@pytest.mark.skipif(COMPILER is None, reason="no C compiler found (looked for $CC, cc, gcc, clang)")
def test_listen_cli_on_the_bridge(bundle_dir: Path, tmp_path: Path):
    import json
    import os
    import sys

    audio, _ = simulate_recording(6, "asthma", "Litt3200", 6.0)
    wav = tmp_path / "p.wav"
    sf.write(wav, np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16), 16000, subtype="PCM_16")
    pty = PtyPair()
    listen = subprocess.Popen([sys.executable, "-m", "stethoedge", "listen", str(bundle_dir), "--bridge", pty.slave_name,
                               "--baud", "921600", "--jsonl", str(tmp_path / "out.jsonl"), "--allow-degraded",
                               "--idle-timeout", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        import time

        time.sleep(3.0)  # let the host open the port and load the bundle before the device speaks
        firmware = subprocess.run([str(ctools.build().example_firmware), "--wav", str(wav), "--wait-start",
                                   "--linger-ms", "4000"], stdin=pty.master, stdout=pty.master, stderr=subprocess.PIPE,
                                  timeout=60)
        out, err = listen.communicate(timeout=60)
    finally:
        pty.close()
        if listen.poll() is None:
            listen.kill()
    assert listen.returncode == 0, err
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["end_s"] for r in records] == pytest.approx([2.0, 4.0, 6.0])
    assert "0 CRC errors, 0 gaps" in out
    assert firmware.stderr.decode().count("host RESULT") == 3


def test_listen_bridge_sends_the_tail_window_result_when_the_stream_ends_between_hops(tmp_path: Path):
    """A stream that ends between two hops gets one last, cyclically padded (tail) window after the device's
    last frame. Its RESULT must still reach the device, and listen must exit 0 (it used to fail with
    "source is closed": the engine closed the bridge at end of stream, before the tail window was decided)."""
    import json
    import os
    import sys
    import time

    from stethoedge.firmware_bridge.device_simulator import DeviceSimulator
    from stethoedge.firmware_bridge.messages import Result
    from stethoedge.models import default_bundle
    from stethoedge.runtime.sources import FileSource

    hop, min_s, seconds = 2.0, 2.0, 7.3  # windows end at 2, 4, 6 s, then the tail at 7.3 s (< 8 s: padded)
    audio, _ = simulate_recording(3, "copd", "Litt3200", seconds)
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
    assert pcm.shape[0] % int(hop * 16000) != 0  # the stream ends between two hops
    wav = tmp_path / "tail.wav"
    sf.write(wav, pcm, 16000, subtype="PCM_16")
    bundle = default_bundle()
    clf = Classifier.open(bundle)
    expected = list(clf.classify(FileSource(wav), hop_s=hop, min_s=min_s))  # what `classify` reports
    assert expected[-1].end_s == pytest.approx(seconds) and expected[-1].padded
    jsonl = tmp_path / "out.jsonl"
    pty = PtyPair()
    listen = subprocess.Popen([sys.executable, "-m", "stethoedge", "listen", str(bundle), "--bridge", pty.slave_name,
                               "--hop", str(hop), "--min-seconds", str(min_s), "--jsonl", str(jsonl),
                               "--idle-timeout", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    results: list[Result] = []
    try:
        sim = DeviceSimulator(pty.link(), pcm, 16000, realtime=True, wait_start=True, start_timeout=60.0,
                              on_host_message=lambda seq, msg: results.append(msg) if isinstance(msg, Result) else None)
        sim.run()
        deadline = time.monotonic() + 60.0  # the device keeps listening until the host has finished
        while listen.poll() is None and time.monotonic() < deadline:
            sim.poll_host(0.05)
        sim.poll_host(0.2)
        out, err = listen.communicate(timeout=30)
    finally:
        pty.close()
        if listen.poll() is None:
            listen.kill()
    assert listen.returncode == 0, err
    assert "source is closed" not in err
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["end_s"] for r in records] == pytest.approx([r.end_s for r in expected])
    assert len(results) == len(records) == len(expected)  # one RESULT per window, the tail's included
    assert [m.window_ms for m in results] == [int(round(r.end_s * 1000)) for r in expected]
    assert [clf.bundle.labels[m.label_index] for m in results] == [r["model_label"] or r["label"] for r in records]
    assert records[-1]["padded"] and results[-1].window_ms == int(round(seconds * 1000))
