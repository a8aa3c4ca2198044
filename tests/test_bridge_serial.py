"""End to end on a real serial line: a pseudo-terminal pair (raw mode) opened by pyserial.

device (C example firmware or a Python writer) -> pty master | pty slave <- BridgeSource (pyserial)
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from stethoedge.firmware_bridge import adpcm, cobs
from support import ctools, faults
from stethoedge.firmware_bridge.crc import crc32
from stethoedge.firmware_bridge.device_simulator import DeviceEncoder, DeviceSimulator, device_stream
from stethoedge.firmware_bridge.errors import BridgeError, ProtocolError
from stethoedge.firmware_bridge.framing import FrameDecoder, encode_frame
from stethoedge.firmware_bridge.links import FdLink, PtyPair
from stethoedge.firmware_bridge.messages import Ack, Control, Result
from stethoedge.firmware_bridge.protocol import HEADER, AudioFormat, Command, FilterMode, MsgType
from stethoedge.firmware_bridge.serial_source import BridgeSource
from stethoedge.runtime.sources import AudioSource

COMPILER = ctools.find_compiler()
needs_cc = pytest.mark.skipif(COMPILER is None, reason="no C compiler found (looked for $CC, cc, gcc, clang)")


def lung_like(n: int, seed: int = 0, level: float = 6000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    noise = np.convolve(rng.normal(0, 1, n), np.hanning(9) / 4.5, mode="same")
    env = 0.3 + 0.7 * np.abs(np.sin(np.pi * t / 1.5))
    return np.clip(level * env * noise, -32768, 32767).astype(np.int16)


def concat(chunks) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)


def assert_contiguous(chunks) -> None:
    pos = 0
    for c in chunks:
        assert c.gap_before == 0 and c.start_sample == pos
        pos += c.samples.shape[0]


def writer(fd: int, data: bytes, piece: int = 700, pause: float = 0.0) -> threading.Thread:
    """Write ``data`` to ``fd`` from a thread, in pieces (as a UART driver delivers it)."""
    link = FdLink(fd)

    def run() -> None:
        for i in range(0, len(data), piece):
            link.write(data[i : i + piece])
            if pause:
                time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def pty():
    pair = PtyPair()
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def wav16k(tmp_path_factory):
    pcm = lung_like(16000 * 2 + 77, seed=1)
    path = tmp_path_factory.mktemp("wav") / "lung.wav"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    return path, pcm


def run_c_firmware(pty: PtyPair, wav, *extra: str) -> subprocess.Popen:
    build = ctools.build()
    return subprocess.Popen([str(build.example_firmware), "--wav", str(wav), "--wait-start", "--linger-ms", "5000",
                             *extra], stdin=pty.master, stdout=pty.master, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=10)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -------------------------------------------------------------------- C firmware -> host


@needs_cc
def test_c_firmware_pcm16_end_to_end_with_results_back(pty, wav16k):
    path, pcm = wav16k
    src = BridgeSource(pty.slave_name, 921600, start=True, idle_timeout=5.0)
    assert isinstance(src, AudioSource) and src.sample_rate == 16000
    proc = run_c_firmware(pty, path)
    try:
        chunks = list(src.chunks())
        src.send_result(2, 0.87, 1.5)
        src.send_result(0, 0.25, 2.0)
        src.send_control("set_gain", gain_db=-3.5)
        src.send_control(Command.SET_FILTER, filter_mode="diaphragm")
        stats = src.stats
        src.close()  # sends STOP: the firmware stops lingering and exits
        log = finish(proc)
    finally:
        src.close()
        if proc.poll() is None:
            proc.kill()
    out = concat(chunks)
    assert np.array_equal(out, pcm.astype(np.float32) / 32768)  # bit-exact PCM16
    assert_contiguous(chunks)
    assert src.device.device_id == "stethoedge-example" and src.device.sample_rates == (16000,)
    assert stats.crc_errors == stats.malformed == stats.garbage_bytes == stats.frames_lost == 0
    assert stats.audio_frames == -(-pcm.shape[0] // 256) and stats.heartbeats == 2
    assert stats.hellos == 2 and stats.acks == 2  # power-up HELLO + the one asked for; ACKs of REQUEST_HELLO, START
    assert proc.returncode == 0
    lines = [re.sub(r" seq=\d+", "", line) for line in log.splitlines()]  # host seq numbers vary with timing
    assert lines[:2] == [
        "host CONTROL command=REQUEST_HELLO filter=0 gain_cdb=0 rate=0 format=0 frame_samples=0",
        "host CONTROL command=START filter=0 gain_cdb=0 rate=0 format=0 frame_samples=0",
    ]
    assert lines.count("host ACK acked_seq=0 acked_type=0x01 status=0") == 1  # the host ACKed the HELLOs
    assert "host RESULT label=2 confidence_q16=57015 window_ms=1500" in lines
    assert "host RESULT label=0 confidence_q16=16384 window_ms=2000" in lines
    assert "host CONTROL command=SET_GAIN filter=0 gain_cdb=-350 rate=0 format=0 frame_samples=0" in lines
    assert "host CONTROL command=SET_FILTER filter=1 gain_cdb=0 rate=0 format=0 frame_samples=0" in lines
    assert lines[-2].startswith("host CONTROL command=STOP")
    assert lines[-1].startswith("rx frames=9 crc_errors=0 malformed=0 oversize=0")


@needs_cc
def test_c_firmware_adpcm_requested_by_host(pty, wav16k):
    path, pcm = wav16k
    src = BridgeSource(pty.slave_name, start=True, stream_format="adpcm", frame_samples=512, idle_timeout=5.0)
    proc = run_c_firmware(pty, path)  # its default is PCM16: START switches it
    try:
        chunks = list(src.chunks())
        src.close()
        log = finish(proc)
    finally:
        src.close()
    out = concat(chunks)
    assert_contiguous(chunks)
    assert "command=START filter=0 gain_cdb=0 rate=0 format=2 frame_samples=512" in log
    assert src.stats.audio_frames == -(-pcm.shape[0] // 512)
    # Identical to the Python codec (same codes on both sides), and within the codec's error.
    codes, _ = adpcm.encode(pcm)
    expected = adpcm.decode(codes, pcm.shape[0])[0].astype(np.float32) / 32768
    assert np.array_equal(out, expected)
    ref = pcm.astype(np.float64) / 32768
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2))
    assert snr > 25.0, snr


# ----------------------------------------------------------------- Python device -> host


def test_python_simulator_at_8k_is_resampled_and_takes_control(pty):
    rate = 8000
    t = np.arange(rate) / rate
    pcm = (np.sin(2 * np.pi * 250 * t) * 10000).astype(np.int16)
    src = BridgeSource(pty.slave_name, idle_timeout=5.0)
    sim = DeviceSimulator(pty.link(), pcm, rate, fmt=AudioFormat.IMA_ADPCM, frame_samples=200, linger=3.0)
    thread = threading.Thread(target=sim.run, daemon=True)
    thread.start()
    chunks = list(src.chunks())
    src.send_control(Command.SET_FILTER, filter_mode=FilterMode.BELL)
    src.send_result(1, 0.5, 0.25)
    src.send_control("stop")
    thread.join(5)
    src.close()
    assert not thread.is_alive() and sim.report.stopped_by_host
    out = concat(chunks)
    assert_contiguous(chunks)
    assert abs(out.shape[0] - 2 * pcm.shape[0]) <= 2  # 8 kHz -> 16 kHz
    assert src.device.sample_rates == (8000,)
    received = [m for _, m in sim.report.host_messages if not isinstance(m, Ack)]
    assert received == [Control(Command.REQUEST_HELLO), Control(Command.SET_FILTER, FilterMode.BELL),
                        Result.make(1, 0.5, 0.25), Control(Command.STOP)]
    acks = [m for _, m in sim.report.host_messages if isinstance(m, Ack)]
    assert len(acks) == src.stats.hellos == 2 and all(a.acked_type == MsgType.HELLO for a in acks)


def test_fault_injection_counters_and_recovery(pty):
    n = 256
    pcm = lung_like(n * 20, seed=9)
    wires = [w for w, _ in device_stream(pcm, 16000, AudioFormat.PCM16, n, heartbeat_ms=0)]
    head, audio = wires[:2], wires[2:]  # 0x00 + HELLO, then 20 AUDIO frames (seq 1..20)
    rng = random.Random(5)
    liar_raw = HEADER.pack(1, MsgType.AUDIO, 999, 0, 0xFFFF) + b"\x05" * 40
    liar = cobs.encode(liar_raw + crc32(liar_raw).to_bytes(4, "little")) + b"\x00"
    pieces = []
    for i, frame in enumerate(audio):
        if i == 3:
            frame = faults.flip_bit(frame, 8 * 100 + 3)
        elif i == 5:
            frame = faults.drop_byte(frame, 200)
        elif i == 7:
            frame = faults.truncate(frame, len(frame) // 2)  # device reset mid-frame: no delimiter
        elif i == 18:
            continue  # lost entirely
        if i == 14:
            pieces.append(faults.garbage(rng, 100, allow_zero=False))
        if i == 15:
            pieces.append(faults.garbage(rng, 100, allow_zero=True))
        if i == 16:
            pieces.append(liar)
        pieces.append(frame)
        if i == 9:
            pieces.append(frame)  # duplicated
    i11, i12 = pieces.index(audio[11]), pieces.index(audio[12])
    pieces[i11], pieces[i12] = audio[12], audio[11]  # reordered
    stream = b"".join(head + pieces)
    src = BridgeSource(pty.slave_name, idle_timeout=5.0)
    writer(pty.master, stream, piece=333, pause=0.001)
    chunks = list(src.chunks())
    src.close()
    st = src.stats
    # Frames 3, 5, 7 damaged, 11 arrived late (after 12), 18 lost: 5 gaps of one frame each.
    assert st.audio_frames == 15
    assert (st.gaps, st.samples_lost) == (5, 5 * n)
    assert [c.gap_before for c in chunks if c.gap_before] == [n] * 5
    assert st.duplicates == 1 and st.late_frames == 1
    assert st.frames_lost == 4  # seq holes of 3, 5, 7, 18 (11 filled its hole late)
    assert st.crc_errors + st.malformed >= 2 and st.oversize == 1
    assert st.resyncs >= 2  # frame 8 behind the truncated 7, frame 14 behind junk without 0x00
    assert st.garbage_bytes > 200
    # Nothing invented: every delivered sample is the device's sample at that stream position.
    for c in chunks:
        expect = pcm[c.start_sample : c.start_sample + c.samples.shape[0]].astype(np.float32) / 32768
        assert np.array_equal(c.samples, expect)
    assert sum(c.samples.shape[0] for c in chunks) + st.samples_lost == pcm.shape[0]


def test_device_that_stops_mid_frame_does_not_hang_the_reader(pty):
    n = 256
    pcm = lung_like(n * 12, seed=2)
    wires = [w for w, _ in device_stream(pcm, 16000, AudioFormat.PCM16, n, heartbeat_ms=0)]
    src = BridgeSource(pty.slave_name, idle_timeout=0.4)
    writer(pty.master, b"".join(wires[:7]) + wires[7][:100]).join()  # HELLO, 5 frames, half of the 6th
    got = []
    t0 = time.monotonic()
    with pytest.raises(BridgeError, match="no valid frame for"):
        for chunk in src.chunks():
            got.append(chunk)
    assert time.monotonic() - t0 < 3.0
    assert concat(got).shape[0] == 5 * n
    # The device comes back: the rest is recovered, the half frame is a reported gap.
    writer(pty.master, b"".join(wires[8:])).join()
    rest = list(src.chunks())
    src.close()
    assert rest[0].gap_before == n and rest[0].start_sample == 6 * n
    assert concat(rest).shape[0] == pcm.shape[0] - 6 * n
    assert src.stats.resyncs == 1  # frame 7 was glued behind the half frame


def test_device_restart_mid_stream(pty):
    pcm = lung_like(256 * 6, seed=4)
    a = DeviceEncoder(16000, heartbeat_ms=0, boot_id=1)
    b = DeviceEncoder(16000, heartbeat_ms=0, boot_id=2)  # rebooted
    stream = b"\x00" + a.hello() + b"".join(a.audio(pcm[i * 256 : (i + 1) * 256]) for i in range(3))
    stream += b"\x00" + b.hello() + b"".join(b.audio(pcm[(3 + i) * 256 : (4 + i) * 256], last=i == 2)
                                            for i in range(3))
    src = BridgeSource(pty.slave_name, idle_timeout=5.0)
    writer(pty.master, stream)
    chunks = list(src.chunks())
    src.close()
    assert src.stats.hellos == 2 and src.stats.restarts == 1
    assert concat(chunks).shape[0] == pcm.shape[0]
    assert sum(1 for c in chunks if c.gap_before) == 1


@pytest.mark.parametrize("data,message", [
    (b"", "nothing received"),
    (bytes(range(1, 200)) * 20, "no valid frame in"),
])
def test_silent_or_wrong_baud_device_raises_clear_error(pty, data, message):
    src = BridgeSource(pty.slave_name, idle_timeout=0.3)
    if data:
        writer(pty.master, data).join()
    with pytest.raises(BridgeError, match=message):
        list(src.chunks())
    src.close()


def test_errors_and_lifetime(pty, tmp_path):
    with pytest.raises(BridgeError, match="cannot open serial port"):
        BridgeSource(str(tmp_path / "no-such-tty"))
    src = BridgeSource(pty.slave_name)
    with pytest.raises(ProtocolError):
        src.send_result(1, 1.5, 0.0)
    with pytest.raises(ProtocolError):
        src.send_control("warp")
    with pytest.raises(ProtocolError):
        src.send_control(Command.SET_GAIN)
    src.close()
    src.close()  # idempotent
    with pytest.raises(BridgeError):
        next(src.chunks())
    with pytest.raises(BridgeError):
        src.send_result(1, 0.5, 0.0)
    # The port is free again.
    with BridgeSource(pty.slave_name) as again:
        assert again.stats.frames == 0
    assert os.path.exists(pty.slave_name)


def test_oversize_frame_on_the_line_is_dropped(pty):
    big = encode_frame(MsgType.AUDIO, 3, 0, b"\x01" * 4096)  # valid size but not a valid AUDIO payload
    pcm = lung_like(512, seed=6)
    wires = [w for w, _ in device_stream(pcm, 16000, AudioFormat.PCM16, 256, heartbeat_ms=0)]
    src = BridgeSource(pty.slave_name, idle_timeout=5.0)
    writer(pty.master, wires[0] + wires[1] + big + wires[2] + wires[3])
    chunks = list(src.chunks())
    src.close()
    assert concat(chunks).shape[0] == 512 and src.stats.bad_messages == 1


class MemoryPort:
    """Not a serial port at all: BridgeSource accepts any pyserial-like object."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.written = data, 0, b""

    @property
    def in_waiting(self) -> int:
        return min(100, len(self.data) - self.pos)

    def read(self, n: int) -> bytes:
        if self.pos >= len(self.data):
            time.sleep(0.01)  # like a read timeout
        out = self.data[self.pos : self.pos + min(n, 100)]
        self.pos += len(out)
        return out

    def write(self, data: bytes) -> int:
        self.written += data
        return len(data)

    def close(self) -> None:
        pass


def test_follow_mode_across_streams_and_rate_policy():
    pcm = lung_like(1024, seed=8)
    def boot(boot_id: int, rate: int = 16000, data=pcm) -> bytes:
        return b"".join(w for w, _ in device_stream(data, rate, AudioFormat.PCM16, 256, 0, boot_id=boot_id))

    port = MemoryPort(boot(1) + boot(2, 2000, pcm[:256]) + boot(3))
    src = BridgeSource(port, until_end=False, idle_timeout=0.2)
    got = []
    with pytest.raises(BridgeError, match="no valid frame for"):
        for chunk in src.chunks():
            got.append(chunk)
    st = src.stats
    assert concat(got).shape[0] == 2 * 1024  # the 2 kHz stream is refused, not resampled
    assert st.bad_messages == 1 and st.hellos == 3 and st.restarts == 1
    assert FrameDecoder().feed(port.written)[0].type == MsgType.CONTROL  # REQUEST_HELLO on open
    assert sum(f.type == MsgType.ACK for f in FrameDecoder().feed(port.written)) == 3  # one per HELLO
