"""FrameDecoder: resynchronisation, counters, bounded memory, fuzzing."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stethoedge.firmware_bridge import cobs
from support import faults
from stethoedge.firmware_bridge.crc import crc32
from stethoedge.firmware_bridge.framing import Frame, FrameDecoder, build_frame, encode_frame
from stethoedge.firmware_bridge.messages import Audio, Heartbeat, encode_message
from stethoedge.firmware_bridge.protocol import HEADER, MAX_ENCODED_FRAME, MAX_PAYLOAD, MsgType


def audio_frames(count: int, n: int = 64, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pcm = rng.integers(-3000, 3000, n).astype(np.int16)
        out.append(encode_message(Audio.from_pcm16(pcm, i * n, 16000), seq=i, timestamp=i * 4000))
    return out


def decode_all(data: bytes, step: int | None = None) -> tuple[list[Frame], FrameDecoder]:
    dec = FrameDecoder()
    frames: list[Frame] = []
    if step is None:
        frames = dec.feed(data)
    else:
        for i in range(0, len(data), step):
            frames += dec.feed(data[i : i + step])
    return frames, dec


def seqs(frames: list[Frame]) -> list[int]:
    return [f.seq for f in frames]


def test_clean_stream_any_chunking():
    frames = audio_frames(6)
    stream = b"\x00" + b"".join(frames)
    for step in (None, 1, 2, 7, 100, 4096):
        got, dec = decode_all(stream, step)
        assert seqs(got) == list(range(6))
        assert dec.stats.frames == 6 and dec.stats.garbage_bytes == 0
        assert dec.stats.crc_errors == dec.stats.malformed == dec.stats.oversize == 0
        assert dec.stats.bytes_in == len(stream)
    assert got[3].payload == Audio.unpack(got[3].payload).pack()


def test_every_single_bit_flip_is_caught_and_neighbours_survive():
    frames = [encode_message(Heartbeat(i, i, 0, 1), seq=i) for i in range(3)]
    target = frames[1]
    for bit in range((len(target) - 1) * 8):  # every bit except the delimiter's
        damaged = faults.flip_bit(target, bit)
        got, dec = decode_all(frames[0] + damaged + frames[2])
        assert seqs(got) == [0, 2], bit
        assert dec.stats.crc_errors + dec.stats.malformed >= 1
        assert dec.stats.garbage_bytes > 0


def test_every_dropped_byte_loses_only_its_frame():
    frames = audio_frames(3, n=8)
    target = frames[1]
    for i in range(len(target)):  # including the delimiter: frames 1 and 2 then share one segment
        got, dec = decode_all(frames[0] + faults.drop_byte(target, i) + frames[2])
        assert seqs(got) == [0, 2], i
        if i == len(target) - 1:
            assert dec.stats.resyncs == 1  # frame 2 recovered from behind the merged frame 1


def test_truncated_frame_then_recovery():
    frames = audio_frames(4)
    for keep in (1, 5, 20, len(frames[1]) // 2, len(frames[1]) - 2):
        got, dec = decode_all(frames[0] + faults.truncate(frames[1], keep) + frames[2] + frames[3])
        assert seqs(got) == [0, 2, 3]
        assert dec.stats.garbage_bytes == keep
        assert dec.stats.resyncs == 1


def test_garbage_between_frames_is_counted_and_skipped():
    rng = random.Random(1)
    frames = audio_frames(8)
    junk = [faults.garbage(rng, rng.randint(1, 300), allow_zero=(i % 2 == 0)) for i in range(8)]
    stream = b"".join(j + f for j, f in zip(junk, frames))
    got, dec = decode_all(stream, step=97)
    assert seqs(got) == list(range(8))
    assert dec.stats.garbage_bytes == sum(len(j) - j.count(0) for j in junk)


def test_length_field_at_its_maximum_is_rejected_before_use():
    # A frame whose header claims 65535 payload bytes, with a valid CRC over what is there.
    raw = HEADER.pack(1, MsgType.AUDIO, 9, 0, 0xFFFF) + b"\x01\x02\x03"
    liar = cobs.encode(raw + crc32(raw).to_bytes(4, "little")) + b"\x00"
    frames = audio_frames(2)
    got, dec = decode_all(frames[0] + liar + frames[1])
    assert seqs(got) == [0, 1]
    assert dec.stats.oversize == 1
    # Same lie with an oversized body following and no delimiter for a long time: memory stays bounded.
    dec = FrameDecoder()
    dec.feed(liar[:-1])
    for _ in range(50):
        dec.feed(bytes(range(1, 256)) * 8)
        assert dec.pending <= MAX_ENCODED_FRAME
    assert dec.stats.oversize == 1
    got = dec.feed(frames[1])  # glued behind 100 kB of junk, the next frame still comes through
    assert seqs(got) == [1] and dec.stats.resyncs == 1


def test_oversize_payload_refused_by_encoder_and_decoder():
    with pytest.raises(Exception):
        encode_frame(MsgType.AUDIO, 0, 0, b"\x01" * (MAX_PAYLOAD + 1))
    raw = HEADER.pack(1, MsgType.AUDIO, 0, 0, MAX_PAYLOAD + 1) + b"\x01" * (MAX_PAYLOAD + 1)
    big = cobs.encode(raw + crc32(raw).to_bytes(4, "little")) + b"\x00"
    got, dec = decode_all(big + audio_frames(1)[0])
    assert seqs(got) == [0] and dec.stats.oversize == 1


def test_other_protocol_version_is_counted():
    raw = build_frame(MsgType.HEARTBEAT, 1, 0, Heartbeat(0, 0, 0, 0).pack(), version=2)
    got, dec = decode_all(cobs.encode(raw) + b"\x00" + audio_frames(1)[0])
    assert seqs(got) == [0] and dec.stats.bad_version == 1


def test_duplicated_and_reordered_frames_pass_through_framing_unchanged():
    frames = audio_frames(5)
    got, _ = decode_all(b"".join(faults.swap(faults.duplicate(frames, 1), 3)))
    assert seqs(got) == [0, 1, 1, 3, 2, 4]


def test_reset_drops_partial_frame():
    frames = audio_frames(2)
    dec = FrameDecoder()
    dec.feed(frames[0][:10])
    dec.reset()
    assert dec.pending == 0 and dec.stats.garbage_bytes == 10
    assert seqs(dec.feed(b"\x00" + frames[1])) == [1]


# ----------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = audio_frames(6, n=40, seed=5) + [encode_message(Heartbeat(1, 2, 3, 1), seq=77)]


@FUZZ
@given(st.binary(max_size=6000), st.integers(1, 700))
def test_fuzz_random_bytes_never_raise_and_stay_bounded(data, step):
    dec = FrameDecoder()
    for i in range(0, len(data), step):
        for frame in dec.feed(data[i : i + step]):
            assert frame.version == 1 and len(frame.payload) <= MAX_PAYLOAD
        assert dec.pending <= MAX_ENCODED_FRAME
    assert dec.stats.bytes_in == len(data)


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.binary(max_size=40)), min_size=len(VALID),
                max_size=len(VALID)),
       st.randoms(use_true_random=False), st.integers(1, 600))
def test_fuzz_mutated_streams_recover_every_intact_frame(plan, rnd, step):
    """Damage some frames, put junk between frames: nothing raises, no false frame is
    delivered, and every frame whose bytes were not touched comes through, in order."""
    pieces = []
    intact = []
    for (damage, n_faults, junk), frame in zip(plan, VALID):
        pieces.append(junk)
        if damage:
            pieces.append(faults.mutate(rnd, frame, n_faults + 1))
        else:
            pieces.append(frame)
            intact.append(frame)
    stream = b"".join(pieces)
    dec = FrameDecoder()
    got = []
    for i in range(0, len(stream), step):
        got += dec.feed(stream[i : i + step])
        assert dec.pending <= MAX_ENCODED_FRAME
    wires = [cobs.encode(build_frame(f.type, f.seq, f.timestamp, f.payload)) + b"\x00" for f in got]
    assert all(w in VALID for w in wires)  # no invented frames
    it = iter(wires)
    assert all(any(w == frame for w in it) for frame in intact)  # intact frames: all present, in order
