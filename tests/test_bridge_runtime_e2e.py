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
