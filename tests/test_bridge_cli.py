"""`stethoedge bridge ...` as registered by firmware_bridge.cli.add_bridge_parser."""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf

from stethoedge.firmware_bridge import cli
from stethoedge.firmware_bridge.device_simulator import device_stream
from stethoedge.firmware_bridge.errors import BridgeError
from stethoedge.firmware_bridge.framing import FrameDecoder
from stethoedge.firmware_bridge.links import PtyPair
from stethoedge.firmware_bridge.messages import Audio, Hello, decode_message
from stethoedge.firmware_bridge.protocol import AudioFormat
from stethoedge.runtime.errors import AudioError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stethoedge")
    sub = top.add_subparsers(dest="command")
    cli.add_bridge_parser(sub)
    return top


def pcm_wav(tmp_path, seconds: float = 0.5, rate: int = 16000):
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 200 * t) * 8000).astype(np.int16)
    path = tmp_path / "in.wav"
    sf.write(path, pcm, rate, subtype="PCM_16")
    return path, pcm


def test_parser_registration_and_defaults():
    args = parser().parse_args(["bridge", "simulate", "--port", "/dev/ttyUSB0", "--wav", "x.wav"])
    assert args.func is cli.run_simulate
    assert (args.format, args.baud, args.realtime, args.frame_samples) == ("pcm16", 921600, False, 256)
    args = parser().parse_args(["bridge", "simulate", "--port", "pty", "--wav", "x.wav", "--format", "adpcm",
                                "--baud", "115200", "--realtime", "--throttle"])
    assert (args.format, args.baud, args.realtime, args.throttle) == ("adpcm", 115200, True, True)
    args = parser().parse_args(["bridge", "decode", "cap.bin"])
    assert args.func is cli.run_decode and args.file == "cap.bin"
    args = parser().parse_args(["bridge"])
    assert args.func(args) == 2  # usage
    with pytest.raises(SystemExit):
        parser().parse_args(["bridge", "simulate", "--port", "x", "--wav", "y", "--format", "mp3"])


def test_cli_module_imports_lazily_without_torch():
    code = (
        "import argparse, sys\n"
        "from stethoedge.firmware_bridge.cli import add_bridge_parser\n"
        "p = argparse.ArgumentParser(); add_bridge_parser(p.add_subparsers())\n"
        "heavy = [m for m in ('torch', 'numpy', 'serial', 'soundfile', 'stethoedge.firmware_bridge.serial_source')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_decode_lists_frames_and_counts(tmp_path, capsys):
    pcm = np.arange(600, dtype=np.int16)
    wires = [w for w, _ in device_stream(pcm, 16000, AudioFormat.IMA_ADPCM, 256, heartbeat_ms=10)]
    assert decode_message(FrameDecoder().feed(wires[4])[0]).n_samples == 256  # 00, HELLO, AUDIO, HB, AUDIO
    wires[4] = wires[4][:50] + wires[4][60:]  # damage the second AUDIO frame
    capture = tmp_path / "cap.bin"
    capture.write_bytes(b"junk" + b"".join(wires))
    args = parser().parse_args(["bridge", "decode", str(capture)])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("seq=0 ") and "HELLO" in out[0] and "stethoedge-example" in out[0]
    assert any("AUDIO" in line and "format=ima_adpcm" in line and "LAST" in line for line in out)
    summary = dict(kv.split("=") for kv in out[-1].split())
    assert int(summary["garbage_bytes"]) > 0 and int(summary["gaps"]) == 1


def test_decode_missing_file_is_a_bridge_error(tmp_path):
    args = parser().parse_args(["bridge", "decode", str(tmp_path / "nope.bin")])
    with pytest.raises(BridgeError, match="cannot read"):
        args.func(args)


def test_simulate_streams_to_a_serial_port(tmp_path, capsys):
    path, pcm = pcm_wav(tmp_path)
    with PtyPair() as pty:
        # The simulator opens the slave like a serial device; the test reads the master side.
        args = parser().parse_args(["bridge", "simulate", "--port", pty.slave_name, "--wav", str(path), "--format",
                                    "adpcm", "--linger", "0", "--frame-samples", "400"])
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("rc", args.func(args)), daemon=True)
        thread.start()
        link = pty.link()
        decoder = FrameDecoder()
        msgs = []
        while not (msgs and isinstance(msgs[-1], Audio) and msgs[-1].last):
            data = link.read(5.0)
            assert data, "simulator sent nothing"
            msgs += [decode_message(f) for f in decoder.feed(data)]
        thread.join(10)
    assert result["rc"] == 0
    assert isinstance(msgs[0], Hello) and msgs[0].device_id == "stethoedge-sim"
    audio = [m for m in msgs if isinstance(m, Audio)]
    assert all(m.format == AudioFormat.IMA_ADPCM and m.n_samples <= 400 for m in audio)
    assert sum(m.n_samples for m in audio) == pcm.shape[0]
    assert "sent " in capsys.readouterr().out


def test_simulate_bad_inputs_raise_user_errors(tmp_path):
    args = parser().parse_args(["bridge", "simulate", "--port", "pty", "--wav", str(tmp_path / "missing.wav")])
    with pytest.raises(AudioError):
        args.func(args)
    path, _ = pcm_wav(tmp_path)
    args = parser().parse_args(["bridge", "simulate", "--port", str(tmp_path / "no-tty"), "--wav", str(path)])
    with pytest.raises(BridgeError, match="cannot open"):
        args.func(args)
    args = parser().parse_args(["bridge", "simulate", "--port", "pty", "--wav", str(path)])
    args.frame_samples = 0  # the API still checks what the command line can no longer pass
    with pytest.raises(BridgeError):
        args.func(args)


@pytest.mark.parametrize("option, value", [("--frame-samples", "0"), ("--frame-samples", "2043"), ("--rate", "inf"),
                                           ("--baud", "0"), ("--boot-id", "-1"), ("--boot-id", "4294967296"),
                                           ("--heartbeat-ms", "nan"), ("--linger", "1e9"), ("--start-timeout", "0")])
def test_simulate_numeric_options_out_of_range_are_usage_errors(option: str, value: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["bridge", "simulate", "--port", "pty", "--wav", "x.wav", option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be" in err and " from " in err and "Traceback" not in err


def test_frame_samples_bound_matches_the_protocol():
    assert cli.MAX_FRAME_SAMPLES == Audio.max_samples(AudioFormat.PCM16)
    args = parser().parse_args(["bridge", "simulate", "--port", "pty", "--wav", "x.wav", "--frame-samples", "2042"])
    assert args.frame_samples == 2042
    assert parser().parse_args(["bridge", "decode", "c.bin", "--limit", "0"]).limit == 0
