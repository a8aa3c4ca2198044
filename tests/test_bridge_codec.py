"""Firmware bridge building blocks: CRC-32, COBS, IMA ADPCM."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stethoedge.firmware_bridge import adpcm, cobs
from stethoedge.firmware_bridge.crc import CHECK_VALUE, crc32, crc32_bitwise
from stethoedge.firmware_bridge.errors import ProtocolError

# ---------------------------------------------------------------------------------- CRC-32


def test_crc_check_value():
    assert CHECK_VALUE == 0xCBF43926
    assert crc32(b"123456789") == CHECK_VALUE
    assert crc32_bitwise(b"123456789") == CHECK_VALUE
    assert crc32(b"") == 0


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=50))
def test_crc_fast_equals_bitwise_and_chains(a, b):
    assert crc32(a) == crc32_bitwise(a) == zlib.crc32(a)
    assert crc32(b, crc32(a)) == crc32(a + b) == crc32_bitwise(b, crc32_bitwise(a))


# ------------------------------------------------------------------------------------ COBS

COBS_VECTORS = [  # (decoded, encoded) -- the examples of Cheshire & Baker / Wikipedia
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (b"\x00" + bytes(range(1, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize("decoded,encoded", COBS_VECTORS)
def test_cobs_reference_vectors(decoded, encoded):
    assert cobs.encode(decoded) == encoded
    assert cobs.decode(encoded) == decoded


def test_cobs_decoder_accepts_non_canonical_trailing_block():
    data = bytes(range(1, 255))
    assert cobs.decode(b"\xff" + data + b"\x01") == data


@pytest.mark.parametrize("bad", [b"\x00", b"\x03\x11", b"\x05\x11\x22\x00\x33", b"\x02\x11\xff"])
def test_cobs_rejects_invalid(bad):
    with pytest.raises(cobs.CobsError):
        cobs.decode(bad)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=1200),
                 st.lists(st.sampled_from([b"\x00", b"\x01" * 253, b"\x02" * 254, b"\x03" * 255, b"\x04"]),
                          max_size=8).map(b"".join)))
def test_cobs_round_trip_no_zero_and_size_bound(data):
    enc = cobs.encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(enc) == data
    assert cobs.decode_prefix(enc, 0, len(data)) == (data if data else b"")


# ----------------------------------------------------------------------------------- ADPCM


def lung_like(n: int, seed: int = 0, level: float = 6000.0) -> np.ndarray:
    """Breathing-modulated band-limited noise with a wheeze-like tone, as int16."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    noise = np.convolve(rng.normal(0, 1, n), np.hanning(9) / 4.5, mode="same")
    env = 0.3 + 0.7 * np.abs(np.sin(np.pi * t / 1.5))
    tone = 0.4 * np.sin(2 * np.pi * 400 * t) * (t % 3 > 1.5)
    return np.clip(level * env * (noise + tone), -32768, 32767).astype(np.int16)


states = st.builds(adpcm.AdpcmState, st.integers(-32768, 32767), st.integers(0, 88))
pcm_arrays = st.lists(st.integers(-32768, 32767), max_size=400).map(lambda v: np.array(v, dtype=np.int16))


@settings(max_examples=120, deadline=None)
@given(pcm_arrays, states)
def test_adpcm_fast_decoder_equals_reference(pcm, state):
    codes, after = adpcm.encode(pcm, state)
    assert len(codes) == adpcm.packed_size(pcm.shape[0])
    fast, fast_state = adpcm.decode(codes, pcm.shape[0], state)
    ref, ref_state = adpcm.decode_reference(codes, pcm.shape[0], state)
    assert np.array_equal(fast, ref)
    assert fast_state == ref_state == after  # encoder tracks the decoder exactly


def test_adpcm_clipping_path_equals_reference():
    # Full-scale square wave: the predictor saturates again and again.
    pcm = np.tile(np.array([32767] * 40 + [-32768] * 40, dtype=np.int16), 20)
    codes, _ = adpcm.encode(pcm)
    assert np.array_equal(adpcm.decode(codes, pcm.shape[0])[0], adpcm.decode_reference(codes, pcm.shape[0])[0])


def test_adpcm_quality_on_lung_like_audio():
    pcm = lung_like(16000 * 2)
    codes, _ = adpcm.encode(pcm)
    out, _ = adpcm.decode(codes, pcm.shape[0])
    err = pcm.astype(np.float64) - out
    snr = 10 * np.log10(np.mean(pcm.astype(np.float64) ** 2) / np.mean(err**2))
    assert snr > 25.0, snr
    assert len(codes) * 4 == pcm.shape[0] * 2  # 4:1 against 16-bit PCM


def test_adpcm_frames_decode_independently():
    pcm = lung_like(256 * 10 + 37, seed=3)
    whole, _ = adpcm.encode(pcm)
    reference, _ = adpcm.decode(whole, pcm.shape[0])
    state = adpcm.AdpcmState()
    for start in range(0, pcm.shape[0], 256):
        block = pcm[start : start + 256]
        codes, next_state = adpcm.encode(block, state)
        # Alone, from the state the frame carries, it decodes to the same samples as in sequence.
        alone, _ = adpcm.decode(codes, block.shape[0], state)
        assert np.array_equal(alone, reference[start : start + block.shape[0]])
        state = next_state


def test_adpcm_odd_count_pads_high_nibble_with_zero():
    codes, _ = adpcm.encode(np.array([1000, -1000, 500], dtype=np.int16))
    assert len(codes) == 2 and codes[1] >> 4 == 0


def test_adpcm_rejects_bad_state_and_short_data():
    with pytest.raises(ProtocolError):
        adpcm.AdpcmState(0, 89)
    with pytest.raises(ProtocolError):
        adpcm.decode(b"\x00", 5)
    with pytest.raises(TypeError):
        adpcm.encode(np.zeros(4, dtype=np.float32))
