"""Firmware bridge messages, constants and the generated parts of PROTOCOL.md."""
from __future__ import annotations

import re

import numpy as np
import pytest

from stethoedge.firmware_bridge import cobs, protocol
from support import docgen
from stethoedge.firmware_bridge.adpcm import AdpcmState
from stethoedge.firmware_bridge.errors import BridgeError, ProtocolError
from stethoedge.firmware_bridge.framing import FrameDecoder, build_frame, encode_frame, parse_frame
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
from stethoedge.runtime.errors import StethoedgeError

PCM = np.array([0, 1, -1, 1000, -1000, 32767, -32768], dtype=np.int16)

MESSAGES = [
    Hello("steth-01", "1.2.3", (16000, 8000), (AudioFormat.PCM16, AudioFormat.IMA_ADPCM), 64, 0xDEADBEEF),
    Hello("", "", (44100,), (AudioFormat.PCM16,), 4096),
    Hello("é" * 32, "fw", (16000,) * 8, (), 12),
    Audio.from_pcm16(PCM, 123, 16000),
    Audio.from_pcm16(np.zeros(0, dtype=np.int16), 0, 16000, last=True),
    Audio.from_adpcm(PCM, 0xFFFFFFFF, 8000, AdpcmState(-77, 88), last=True)[0],
    Heartbeat(1, 2, 3, 1),
    Error(4, "tx buffer overflow"),
    Error(0xFFFF, ""),
    Control(Command.START, 0, 0, 16000, AudioFormat.IMA_ADPCM, 512),
    Control(Command.SET_GAIN, 0, -32768),
    Control(Command.SET_FILTER, FilterMode.DIAPHRAGM),
    Result.make(65535, 1.0, 4294967.295),
    Result.make(0, 0.0, 0.0),
    Ack(65535, MsgType.CONTROL, 3),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_message_round_trip_through_a_frame(msg):
    wire = encode_message(msg, seq=65535 + 5, timestamp=2**32 + 7)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    frames = FrameDecoder().feed(wire)
    assert len(frames) == 1
    frame = frames[0]
    assert (frame.type, frame.seq, frame.timestamp, frame.version) == (msg.TYPE, 4, 7, 1)
    assert decode_message(frame) == msg


def test_audio_samples_and_limits():
    msg = Audio.from_pcm16(PCM, 0, 16000)
    assert np.array_equal(msg.pcm16(), PCM)
    assert np.array_equal(msg.float32(), PCM.astype(np.float32) / 32768)
    assert Audio.max_samples(AudioFormat.PCM16) == 2042
    assert Audio.max_samples(AudioFormat.IMA_ADPCM) == 8160
    for fmt in AudioFormat:
        n = Audio.max_samples(fmt)
        pcm = np.zeros(n, dtype=np.int16)
        big = Audio.from_pcm16(pcm, 0, 16000) if fmt == AudioFormat.PCM16 else Audio.from_adpcm(pcm, 0, 16000,
                                                                                                 AdpcmState())[0]
        assert len(big.pack()) <= protocol.MAX_PAYLOAD
        with pytest.raises(ProtocolError):
            encode_frame(MsgType.AUDIO, 0, 0, big.pack() + b"\x00\x00")
    adpcm_msg, _ = Audio.from_adpcm(PCM, 0, 16000, AdpcmState())
    assert np.abs(adpcm_msg.pcm16().astype(int) - PCM).max() < 32768


@pytest.mark.parametrize("cls,payload", [
    (Audio, b"\x00" * 11),
    (Audio, Audio.from_pcm16(PCM, 0, 16000).pack()[:-1]),
    (Audio, Audio.from_pcm16(PCM, 0, 16000).pack()[:4] + b"\x00\x00\x00\x00" + Audio.from_pcm16(PCM, 0, 16000).pack()[8:]),
    (Audio, Audio.from_pcm16(PCM, 0, 16000).pack()[:8] + b"\x07" + Audio.from_pcm16(PCM, 0, 16000).pack()[9:]),
    (Audio, Audio.from_adpcm(PCM, 0, 16000, AdpcmState())[0].pack()[:14] + b"\x59" + b"\x00" * 5),
    (Hello, b"\x03\x01\x40\x00"),
    (Hello, b"\x03\x00\x40\x00\x01\x00\x00\x00"),
    (Hello, b"\x03\x09\x40\x00\x01\x00\x00\x00" + b"\x80\x3e\x00\x00" * 9 + b"\x00\x00"),
    (Hello, b"\x03\x01\x40\x00\x01\x00\x00\x00\x80\x3e\x00\x00\x05ab"),
    (Hello, b"\x03\x01\x40\x00\x01\x00\x00\x00\x80\x3e\x00\x00\x41" + b"a" * 65 + b"\x00"),
    (Hello, b"\x03\x01\x40\x00\x01\x00\x00\x00\x80\x3e\x00\x00\x00"),
    (Heartbeat, b"\x00" * 13),
    (Error, b"\x01"),
    (Error, b"\x01\x00" + b"x" * 201),
    (Control, b"\x09" + b"\x00" * 11),
    (Control, b"\x04\x07" + b"\x00" * 10),
    (Result, b"\x00" * 7),
    (Ack, b"\x00" * 3),
])
def test_malformed_payloads_raise_protocol_error(cls, payload):
    with pytest.raises(ProtocolError):
        cls.unpack(payload)


def test_trailing_bytes_of_extensible_messages_are_ignored():
    for msg in (MESSAGES[0], Heartbeat(1, 2, 3, 0), Control(Command.STOP), Result(1, 2, 3), Ack(1, 2, 0)):
        assert type(msg).unpack(msg.pack() + b"\x01\x02") == msg


def test_out_of_range_values_raise_protocol_error():
    with pytest.raises(ProtocolError):
        Result.make(1, 1.5, 0.0)
    with pytest.raises(ProtocolError):
        Result.make(1, float("nan"), 0.0)
    with pytest.raises(ProtocolError):
        Result.make(70000, 0.5, 0.0)
    with pytest.raises(ProtocolError):
        Result.make(1, 0.5, -1.0)
    with pytest.raises(ProtocolError):
        Result.make(1, 0.5, float("inf"))
    with pytest.raises(ProtocolError):
        Control(Command.SET_GAIN, 0, 40000).pack()
    with pytest.raises(ProtocolError):
        Hello("x" * 65, "1").pack()
    with pytest.raises(ProtocolError):
        Hello("x", "1", ()).pack()
    with pytest.raises(ProtocolError):
        decode_message(parse_frame(build_frame(0x7E, 0, 0, b"")))
    assert issubclass(ProtocolError, BridgeError) and issubclass(BridgeError, StethoedgeError)


def test_result_quantisation():
    r = Result.make(3, 0.8, 2.5)
    assert (r.confidence_q16, r.window_ms) == (52428, 2500)
    assert Result.make(0, 0.5, 2**32 / 1000 + 1.0).window_ms == 1000  # wraps like every u32 clock
    assert abs(r.confidence - 0.8) < 1 / 65535


def test_size_constants():
    assert protocol.HEADER_SIZE == 10
    assert protocol.MAX_FRAME == 4110
    assert protocol.MAX_ENCODED_FRAME == 4127 == cobs.max_encoded_len(4110)
    assert protocol.MAX_WIRE_FRAME == 4128
    worst = encode_frame(MsgType.AUDIO, 0, 0, b"\x01" * protocol.MAX_PAYLOAD)  # no zeros at all: worst COBS case
    assert len(worst) <= protocol.MAX_WIRE_FRAME


def test_c_header_constants_match_python():
    text = (docgen.PROTOCOL_MD.parent / "c" / "seb_proto.h").read_text()
    values = {name: int(value, 0) for name, value in re.findall(r"\b(SEB_\w+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)", text)}
    values.update({name: int(value.rstrip("u"), 0) for name, value in
                   re.findall(r"#define (SEB_\w+) (0x[0-9A-Fa-f]+u?|\d+u?)\b", text)})
    for t in MsgType:
        assert values[f"SEB_MSG_{t.name}"] == t
    assert values["SEB_FMT_PCM16"] == AudioFormat.PCM16 and values["SEB_FMT_IMA_ADPCM"] == AudioFormat.IMA_ADPCM
    for c in Command:
        assert values[f"SEB_CMD_{c.name}"] == c
    for f in FilterMode:
        assert values[f"SEB_FILTER_{f.name}"] == f
    for e in protocol.ErrorCode:
        assert values["SEB_OK" if e.name == "OK" else f"SEB_ERR_{e.name}"] == e
    assert values["SEB_PROTOCOL_VERSION"] == protocol.PROTOCOL_VERSION
    assert values["SEB_MAX_PAYLOAD"] == protocol.MAX_PAYLOAD
    assert values["SEB_HEADER_SIZE"] == protocol.HEADER_SIZE
    assert values["SEB_AUDIO_FLAG_LAST"] == protocol.AUDIO_FLAG_LAST


# ------------------------------------------------------------------------- PROTOCOL.md


def test_protocol_doc_generated_sections_are_current():
    text = docgen.PROTOCOL_MD.read_text(encoding="utf-8")
    assert "<!-- BEGIN GENERATED: example -->" in text and "<!-- BEGIN GENERATED: budget -->" in text
    assert docgen.render(text) == text, "run: python tests/support/docgen.py --write"


def _code_blocks_after(text: str, marker: str) -> list[bytes]:
    tail = text[text.index(marker):]
    blocks = re.findall(r"```\n(.*?)```", tail, re.S)
    return [bytes.fromhex(b.replace("\n", " ")) for b in blocks[:2]]


def test_protocol_doc_example_hex_is_what_the_encoder_produces():
    text = docgen.PROTOCOL_MD.read_text(encoding="utf-8")
    raw_doc, wire_doc = _code_blocks_after(text, "Frame before COBS")
    raw, wire = docgen.example_audio_frame()
    assert raw_doc == raw and wire_doc == wire
    # ... and an independent decode of the documented bytes gives the documented message.
    frame = FrameDecoder().feed(wire_doc)[0]
    msg = decode_message(frame)
    assert (frame.seq, frame.timestamp, msg.sample_index, msg.sample_rate) == (2, 32000, 256, 16000)
    assert msg.pcm16().tolist() == [0, 1000, -1000, 32767]
    line = re.search(r"on the wire: ([0-9a-f ]+)\n", text).group(1)
    assert bytes.fromhex(line) == docgen.example_result_frame()[1]
    assert "0xCBF43926" in text


def test_budget_marks_the_infeasible_combinations():
    pcm16_115200 = docgen.stream_bytes_per_s(AudioFormat.PCM16, 256) / (115200 / 10)
    adpcm_115200 = docgen.stream_bytes_per_s(AudioFormat.IMA_ADPCM, 512) / (115200 / 10)
    pcm16_921600 = docgen.stream_bytes_per_s(AudioFormat.PCM16, 256) / (921600 / 10)
    assert docgen.verdict(pcm16_115200) == "**infeasible**"
    assert docgen.verdict(adpcm_115200) == "ok"
    assert docgen.verdict(pcm16_921600) == "ok"
    # The raw audio rate the budget starts from: 16 kHz x 16 bit.
    assert 16000 * 16 == 256_000
    # Budget arithmetic matches real encoded frames (worst case >= actual).
    msg = Audio.from_pcm16(np.full(256, 0x0101, dtype=np.int16), 0, 16000)
    assert len(encode_message(msg, 1, 1)) <= docgen.wire_size(docgen.audio_payload_size(AudioFormat.PCM16, 256))
