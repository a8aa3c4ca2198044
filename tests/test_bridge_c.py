"""The C reference (firmware_bridge/c) against the Python host, byte for byte.

Compiled with the system C compiler as `cc -std=c99 -O2 -Wall -Wextra -Werror -pedantic` in a
temporary directory; skipped only if no C compiler exists.
"""
from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest
import soundfile as sf

from stethoedge.firmware_bridge import adpcm, cobs
from support import ctools, faults
from stethoedge.firmware_bridge.adpcm import AdpcmState
from stethoedge.firmware_bridge.crc import crc32
from stethoedge.firmware_bridge.device_simulator import device_stream
from stethoedge.firmware_bridge.framing import FrameDecoder, encode_frame
from stethoedge.firmware_bridge.messages import (
    Ack,
    Audio,
    Control,
    Error,
    Heartbeat,
    Hello,
    Result,
    decode_message,
    encode_message,
)
from stethoedge.firmware_bridge.protocol import AudioFormat, Command, FilterMode, MsgType

COMPILER = ctools.find_compiler()
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler found (looked for $CC, cc, gcc, clang)")


@pytest.fixture(scope="module")
def cbuild():
    return ctools.build()


@pytest.fixture(scope="module")
def cbuild_small_crc():
    return ctools.build(("-DSEB_CRC32_SMALL",))


def vectors(build, *args: str, data: bytes = b"", check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(build.bridge_vectors), *args], input=data, capture_output=True, check=check,
                          timeout=30)


def lung_like(n: int, seed: int = 0, level: float = 6000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    noise = np.convolve(rng.normal(0, 1, n), np.hanning(9) / 4.5, mode="same")
    env = 0.3 + 0.7 * np.abs(np.sin(np.pi * t / 1.5))
    return np.clip(level * env * noise, -32768, 32767).astype(np.int16)


def test_crc_matches(cbuild, cbuild_small_crc):
    rng = random.Random(7)
    samples = [b"123456789", b"", b"\x00", bytes(range(256)) * 3] + [faults.garbage(rng, n) for n in (1, 5, 1000)]
    for build in (cbuild, cbuild_small_crc):
        assert vectors(build, "crc", data=b"123456789").stdout == b"cbf43926\n"
        for data in samples:
            assert int(vectors(build, "crc", data=data).stdout, 16) == crc32(data)


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x11\x00\x00\x00", bytes(range(1, 255)), bytes(range(1, 256)), bytes(range(1, 255)) * 3,
    b"\x00" + bytes(range(1, 255)) + b"\x00", bytes(range(256)) * 20,
])
def test_cobs_matches(cbuild, data):
    enc = vectors(cbuild, "cobs-encode", data=data).stdout
    assert enc == cobs.encode(data)
    assert vectors(cbuild, "cobs-decode", data=enc).stdout == data
    # An extra empty block decodes the same in both (after a final 0xFF block it is the
    # non-canonical form of the same data, which both accept).
    assert vectors(cbuild, "cobs-decode", data=enc + b"\x01").stdout == cobs.decode(enc + b"\x01")
    assert vectors(cbuild, "cobs-decode", data=b"\x05\x11", check=False).returncode == 1


@pytest.mark.parametrize("kind", ["lung", "noise", "square", "silence", "odd"])
def test_adpcm_codes_identical(cbuild, kind):
    rng = np.random.default_rng(11)
    pcm = {
        "lung": lung_like(16000),
        "noise": rng.integers(-32768, 32768, 5000).astype(np.int16),
        "square": np.tile(np.array([32767] * 30 + [-32768] * 30, dtype=np.int16), 50),
        "silence": np.zeros(1000, dtype=np.int16),
        "odd": lung_like(257, seed=4),
    }[kind]
    for state in (AdpcmState(), AdpcmState(-32768, 88), AdpcmState(12345, 17)):
        proc = vectors(cbuild, "adpcm-encode", str(state.predictor), str(state.step_index),
                       data=pcm.astype("<i2").tobytes())
        codes, after = adpcm.encode(pcm, state)
        assert proc.stdout == codes
        assert proc.stderr.decode().split() == [str(after.predictor), str(after.step_index)]
        decoded = vectors(cbuild, "adpcm-decode", str(pcm.shape[0]), str(state.predictor), str(state.step_index),
                          data=codes).stdout
        assert np.array_equal(np.frombuffer(decoded, dtype="<i2"), adpcm.decode(codes, pcm.shape[0], state)[0])


def test_every_message_type_encodes_identically(cbuild):
    samples = np.array([0, 1000, -1000, 32767, -32768], dtype=np.int16)
    py = [
        Hello("steth-01", "1.2.3", (16000, 8000), (AudioFormat.PCM16, AudioFormat.IMA_ADPCM), 64, 0xA5A5A5A5),
        Audio.from_pcm16(samples, 48000, 16000),
        Audio.from_adpcm(samples, 0xFFFFFFF0, 16000, AdpcmState(-1234, 40), last=True)[0],
        Heartbeat(123456, 7, 3, 1),
        Error(4, "tx buffer overflow"),
        Ack(65535, MsgType.CONTROL, 0),
        Control(Command.START, FilterMode.DIAPHRAGM, -350, 16000, AudioFormat.IMA_ADPCM, 512),
        Result(3, 52428, 2500),
    ]
    stamps = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 0xFFFFFFFF]
    expected = b"".join(encode_message(m, 100 + i, t) for i, (m, t) in enumerate(zip(py, stamps)))
    assert vectors(cbuild, "messages").stdout == expected


def test_c_receiver_decodes_host_frames_through_faults(cbuild):
    rng = random.Random(3)
    good = [
        encode_message(Control(Command.START, 0, 0, 16000, AudioFormat.PCM16, 256), 0, 10),
        encode_message(Result.make(2, 0.87, 1.5), 1, 20),
        encode_message(Ack(5, MsgType.HELLO, 0), 2, 30),
        encode_message(Control(Command.SET_GAIN, 0, -350), 3, 40),
        encode_message(Control(Command.SET_FILTER, FilterMode.DIAPHRAGM), 4, 50),
        encode_message(Result.make(0, 0.0, 0.0), 5, 60),
    ]
    corrupt = faults.flip_bit(encode_message(Result.make(1, 0.5, 3.0), 99, 0), 30)
    too_big = encode_frame(MsgType.RESULT, 98, 0, b"\x01" * 100)  # over the device's 64-byte limit
    junk = faults.garbage(rng, 50, allow_zero=False)
    stream = (b"\x00" + good[0] + corrupt + good[1] + too_big + good[2] + junk + b"\x00" + good[3]
              + b"\x00\x00" + good[4] + faults.truncate(good[5], 7) + b"\x00" + good[5])
    lines = vectors(cbuild, "decode", data=stream).stdout.decode().splitlines()
    assert lines[:-1] == [
        "CONTROL seq=0 ts=10 command=1 filter=0 gain_cdb=0 rate=16000 format=1 frame_samples=256",
        "RESULT seq=1 ts=20 label=2 confidence_q16=57015 window_ms=1500",
        "ACK seq=2 ts=30 acked_seq=5 acked_type=1 status=0",
        "CONTROL seq=3 ts=40 command=3 filter=0 gain_cdb=-350 rate=0 format=0 frame_samples=0",
        "CONTROL seq=4 ts=50 command=4 filter=1 gain_cdb=0 rate=0 format=0 frame_samples=0",
        "RESULT seq=5 ts=60 label=0 confidence_q16=0 window_ms=0",
    ]
    stats = dict(kv.split("=") for kv in lines[-1].split()[1:])
    assert stats["frames"] == "6"
    # The flipped frame fails its CRC, the 100-byte RESULT is over the device's limit, and the
    # junk and the truncated frame fail one check or another (which depends on the junk).
    crc, malformed, oversize = (int(stats[k]) for k in ("crc_errors", "malformed", "oversize"))
    assert crc >= 1 and oversize >= 1 and crc + malformed + oversize == 4
    # Every byte that was not in a delivered frame or a delimiter is accounted for.
    expected_garbage = len(corrupt) - 1 + len(too_big) - 1 + len(junk) + 7
    assert int(stats["garbage_bytes"]) == expected_garbage


def test_c_receiver_rejects_huge_length_field_before_buffering(cbuild):
    # Header claims 65535 payload bytes: rejected as soon as the header is complete.
    from stethoedge.firmware_bridge.protocol import HEADER

    raw = HEADER.pack(1, MsgType.RESULT, 1, 0, 0xFFFF) + b"\x07" * 5000
    liar = cobs.encode(raw + crc32(raw).to_bytes(4, "little")) + b"\x00"
    ok = encode_message(Result.make(1, 0.5, 1.0), 2, 0)
    lines = vectors(cbuild, "decode", data=liar + ok).stdout.decode().splitlines()
    assert lines[0].startswith("RESULT seq=2")
    assert "oversize=1" in lines[-1] and "frames=1" in lines[-1]


@pytest.mark.parametrize("fmt,frame_samples,heartbeat_ms,rate,n", [
    ("pcm16", 256, 1000, 16000, 16000 * 2 + 77),
    ("adpcm", 256, 1000, 16000, 16000 * 2 + 77),
    ("adpcm", 511, 250, 16000, 9000),
    ("pcm16", 2042, 0, 8000, 8000 * 3),
    ("pcm16", 100, 1000, 16000, 100 * 5),  # exact multiple: the last full frame is LAST
])
def test_example_firmware_stream_equals_python_device_stream(cbuild, tmp_path, fmt, frame_samples, heartbeat_ms,
                                                            rate, n):
    pcm = lung_like(n, seed=n)
    wav = tmp_path / "in.wav"
    sf.write(wav, pcm, rate, subtype="PCM_16")
    out = tmp_path / "out.bin"
    subprocess.run([str(cbuild.example_firmware), "--wav", str(wav), "--out", str(out), "--format", fmt,
                    "--frame-samples", str(frame_samples), "--heartbeat-ms", str(heartbeat_ms),
                    "--device-id", "dev-7"], check=True, timeout=30)
    c_bytes = out.read_bytes()
    py_fmt = AudioFormat.IMA_ADPCM if fmt == "adpcm" else AudioFormat.PCM16
    py_bytes = b"".join(w for w, _ in device_stream(pcm, rate, py_fmt, frame_samples, heartbeat_ms, device_id="dev-7"))
    assert c_bytes == py_bytes
    dec = FrameDecoder()
    msgs = [decode_message(f) for f in dec.feed(c_bytes)]
    assert dec.stats.frames == len(msgs) and dec.stats.garbage_bytes == 0
    assert isinstance(msgs[0], Hello) and msgs[0].sample_rates == (rate,) and msgs[0].device_id == "dev-7"
    audio = [m for m in msgs if isinstance(m, Audio)]
    assert audio[-1].last and not any(a.last for a in audio[:-1])
    assert sum(a.n_samples for a in audio) == n
    if fmt == "pcm16":
        assert np.array_equal(np.concatenate([a.pcm16() for a in audio]), pcm)


def test_example_firmware_rejects_unsupported_wav(cbuild, tmp_path):
    wav = tmp_path / "stereo.wav"
    sf.write(wav, np.zeros((100, 2), dtype=np.int16), 16000, subtype="PCM_16")
    proc = subprocess.run([str(cbuild.example_firmware), "--wav", str(wav), "--out", str(tmp_path / "x")],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"16-bit PCM mono" in proc.stderr
    proc = subprocess.run([str(cbuild.example_firmware), "--wav", str(tmp_path / "missing.wav")],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"missing.wav" in proc.stderr
