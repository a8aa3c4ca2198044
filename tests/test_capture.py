"""Live capture through a real audio path: a PulseAudio daemon with null sinks, paplay into a
sink, sounddevice (PortAudio -> ALSA pulse plugin) capturing its monitor. Skips, with the
reason, where PortAudio or PulseAudio is not installed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.runtime.errors import AudioError

TONE_HZ = 880.0


def _missing() -> str | None:
    for tool in ("pulseaudio", "pactl", "paplay"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt install pulseaudio pulseaudio-utils libasound2-plugins)"
    try:
        import sounddevice  # noqa: F401  (raises OSError without PortAudio)
    except OSError:
        return "PortAudio library not installed (apt install libportaudio2)"
    if not Path("/usr/share/alsa/alsa.conf.d/50-pulseaudio.conf").exists() and not list(
            Path("/usr/share/alsa/alsa.conf.d").glob("*pulse*")):
        return "ALSA pulse plugin not installed (apt install libasound2-plugins)"
    return None


class Pulse:
    """A private PulseAudio daemon (own XDG_RUNTIME_DIR) with a 16 kHz and a 48 kHz null sink."""

    def __init__(self, runtime_dir: Path) -> None:
        self.dir = runtime_dir
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}

    def start(self) -> None:
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1", "-n", "--load=module-native-protocol-unix",
                        "--load=module-null-sink sink_name=steth16 rate=16000 channels=1",
                        "--load=module-null-sink sink_name=steth48 rate=48000 channels=1"],
                       env=self.env, check=True, capture_output=True, timeout=20)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        self.use("steth16")

    def use(self, sink: str) -> None:
        subprocess.run(["pactl", "set-default-source", f"{sink}.monitor"], env=self.env, check=True, timeout=10)

    def kill(self) -> None:
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=20)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
                return
            time.sleep(0.1)

    def play(self, wav: Path, sink: str = "steth16") -> subprocess.Popen:
        return subprocess.Popen(["paplay", f"--device={sink}", str(wav)], env=self.env)


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    runtime = tmp_path_factory.mktemp("xdg")
    runtime.chmod(0o700)
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)  # the ALSA pulse plugin finds the server here
    p = Pulse(runtime)
    p.start()
    import sounddevice as sd

    sd._terminate()  # PortAudio lists devices at initialisation: rescan now that the server runs
    sd._initialize()
    yield p
    p.kill()
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = np.arange(int(16000 * 2.5)) / 16000
    path = tmp_path_factory.mktemp("tone") / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * TONE_HZ * t), 16000, subtype="PCM_16")
    return path


def _capture(source, seconds: float, during=None) -> list:
    """Collect the source's chunks for ``seconds`` on a thread (as the stream engine's pump does)."""
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(source.chunks()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:  # opening a PortAudio/ALSA-pulse stream takes ~1 s
        time.sleep(0.05)
    assert got, "no audio from the capture device within 10 s"
    if during is not None:
        during()
    time.sleep(seconds)
    source.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return got


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * 16000 / x.size)


def test_devices_lists_pulse_with_rates(pulse: Pulse):
    from stethoedge.runtime.capture import input_devices

    devices = {d["name"]: d for d in input_devices()}
    assert "pulse" in devices and 16000 in devices["pulse"]["rates"] and 48000 in devices["pulse"]["rates"]


def test_capture_a_played_tone_at_16k(pulse: Pulse, tone_wav: Path):
    from stethoedge.runtime.capture import SoundDeviceSource

    pulse.use("steth16")
    src = SoundDeviceSource("pulse")
    assert src.device_rate == 16000
    player = []
    chunks = _capture(src, 2.5, during=lambda: player.append(pulse.play(tone_wav)))
    player[0].wait(timeout=10)
    x = np.concatenate([c.samples for c in chunks])
    assert [c.start_sample for c in chunks] == list(np.cumsum([0] + [c.samples.size for c in chunks[:-1]]))
    assert x.size > 16000 * 1.5
    loud = x[np.abs(x) > 0.1]
    assert loud.size > 8000, "the played tone was not captured"
    start = int(np.flatnonzero(np.abs(x) > 0.1)[0])
    assert abs(_peak_hz(x[start : start + 16000]) - TONE_HZ) < 5


def test_device_opened_at_48k_is_resampled_to_16k(pulse: Pulse, tone_wav: Path):
    """The 48 kHz-only device path: open at 48 kHz (the sink runs at 48 kHz), resample in the stream."""
    from stethoedge.runtime.capture import SoundDeviceSource

    pulse.use("steth48")
    try:
        src = SoundDeviceSource("pulse", device_rate=48000)
        player = []
        chunks = _capture(src, 2.5, during=lambda: player.append(pulse.play(tone_wav, "steth48")))
        player[0].wait(timeout=10)
    finally:
        pulse.use("steth16")
    x = np.concatenate([c.samples for c in chunks])
    assert src.stats.device_rate == 48000 and src.sample_rate == 16000
    loud = np.flatnonzero(np.abs(x) > 0.1)
    assert loud.size > 8000
    seg = x[loud[0] : loud[0] + 16000]
    assert abs(_peak_hz(seg) - TONE_HZ) < 5  # a wrong resampling ratio would move the tone by 3x


def test_refused_rate_falls_back_to_the_native_rate(pulse: Pulse):
    """PortAudio refuses 1 MHz (-9997 invalid sample rate): the device's own rate is chosen."""
    import sounddevice as sd

    from stethoedge.runtime.capture import choose_rate

    index = sd.query_devices("pulse", "input")["index"]
    with pytest.raises(sd.PortAudioError, match="-9997|nvalid sample rate"):
        sd.check_input_settings(index, samplerate=1_000_000, channels=1, dtype="float32")
    assert choose_rate(sd, index, 1_000_000, 1) in (int(sd.query_devices(index)["default_samplerate"]), 48000, 44100)


def test_unknown_device_is_a_typed_error(pulse: Pulse):
    from stethoedge.runtime.capture import SoundDeviceSource

    with pytest.raises(AudioError, match="no input device"):
        SoundDeviceSource("no-such-card-xyz")


def test_server_killed_mid_stream_is_reported_retried_and_resumed(pulse: Pulse, tone_wav: Path):
    from stethoedge.runtime.capture import SoundDeviceSource

    src = SoundDeviceSource("pulse", stall_timeout_s=1.0, retry_s=0.3)

    def outage() -> None:
        time.sleep(1.5)
        pulse.kill()
        time.sleep(1.5)
        pulse.start()
        time.sleep(1.5)  # let the source reconnect, then play into the new server
        pulse.play(tone_wav).wait(timeout=10)

    chunks = _capture(src, 0.5, during=outage)
    assert src.stats.losses >= 1 and src.stats.reconnects >= 1
    gaps = [c for c in chunks if c.gap_before > 0]
    assert gaps, "the outage must reach the stream as a gap, never as invented audio"
    assert gaps[0].gap_before >= 16000  # at least the 1.5 s the server was down
    after = np.concatenate([c.samples for c in chunks if c.start_sample >= gaps[0].start_sample])
    assert np.abs(after).max() > 0.1, "capture did not resume after the server came back"
    start = int(np.flatnonzero(np.abs(after) > 0.1)[0])
    assert abs(_peak_hz(after[start : start + 16000]) - TONE_HZ) < 5


def test_listen_cli_on_a_live_device_until_sigterm(pulse: Pulse, bundle_dir: Path, tmp_path: Path):
    """`stethoedge listen --device pulse`: decisions from the sound card, recording, clean SIGTERM stop."""
    import json
    import signal
    import sys

    from stethoedge.train.simulator import simulate_recording

    audio, _ = simulate_recording(3, "copd", "Meditron", 6.0)
    wav = tmp_path / "patient.wav"
    sf.write(wav, np.clip(audio, -1, 1), 16000, subtype="PCM_16")
    out, rec = tmp_path / "live.jsonl", tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "stethoedge", "listen", str(bundle_dir), "--device", "pulse",
                             "--hop", "1", "--jsonl", str(out), "--record", str(rec), "--allow-degraded"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and out.read_text()):
            time.sleep(0.1)
        pulse.play(wav).wait(timeout=30)
        while time.monotonic() < deadline and out.read_text().count("\n") < 5:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "input device" in stdout and "at 16000 Hz" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) >= 5 and [r["end_s"] for r in records[:2]] == pytest.approx([2.0, 3.0], abs=0.01)
    assert "# capture: " in stdout and "losses=0" in stdout
    assert not list(rec.glob(".*"))
    index = json.loads((rec / "index.json").read_text())["segments"]
    heard = np.concatenate([sf.read(rec / s["file"], dtype="float32")[0] for s in index])
    assert np.abs(heard).max() > 0.05, "the recording holds what was played into the device"


# ------------------------------------------------------------------ no PortAudio (no PulseAudio needed)
NO_PORTAUDIO = '''import sys


class _NoPortAudio:
    """``import sounddevice`` fails as it does where libportaudio2 is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


sys.meta_path.insert(0, _NoPortAudio())
'''


def _without_portaudio(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess whose sitecustomize makes sounddevice fail to find PortAudio."""
    (tmp_path / "sitecustomize.py").write_text(NO_PORTAUDIO)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    exe = Path(sys.executable).with_name("stethoedge")
    return subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": path})


def test_devices_json_without_portaudio_is_a_json_error(tmp_path: Path):
    proc = _without_portaudio(tmp_path, "devices", "--json")
    assert proc.returncode == 2 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout) == {"error": "PortAudio library not found; install it: sudo apt install libportaudio2"}


def test_devices_without_portaudio_is_one_line_saying_it_once(tmp_path: Path):
    proc = _without_portaudio(tmp_path, "devices")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == ["error: PortAudio library not found; install it: sudo apt install libportaudio2"]


def test_doctor_without_portaudio_reports_it_once_and_exits_0(tmp_path: Path):
    proc = _without_portaudio(tmp_path, "doctor")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("PortAudio library not found") == 1
    assert "audio: MISSING; PortAudio library not found; install it" in proc.stdout


def test_import_error_other_than_not_found_keeps_its_detail(monkeypatch: pytest.MonkeyPatch):
    import builtins

    from stethoedge.runtime.capture import import_sounddevice

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("libportaudio.so.2: wrong ELF class: ELFCLASS32")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(AudioError, match=r"^PortAudio library could not be loaded \(libportaudio.so.2: wrong ELF"):
        import_sounddevice()
