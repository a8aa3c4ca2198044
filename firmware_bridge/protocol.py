"""Constants of the stethoedge firmware bridge wire protocol, version 1 (see PROTOCOL.md).

Everything a frame encoder or decoder needs to agree on lives here: the header layout, size
limits and the numeric codes of message types, audio formats, commands and errors. The C
reference (``c/seb_proto.h``) defines the same values; the tests check they agree.
"""
from __future__ import annotations

import struct
from enum import IntEnum

PROTOCOL_VERSION = 1

#: Frame header, little-endian: version u8, type u8, seq u16, timestamp_us u32, payload_len u16.
HEADER = struct.Struct("<BBHIH")
HEADER_SIZE = HEADER.size  # 10
CRC_SIZE = 4
#: Largest payload any frame may carry. Longer length fields are rejected before use.
MAX_PAYLOAD = 4096
#: Smallest decoded frame: a header and a CRC around an empty payload.
MIN_FRAME = HEADER_SIZE + CRC_SIZE
#: Largest decoded frame (header + payload + CRC).
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 4110
DELIMITER = 0x00


def cobs_max_encoded_len(n: int) -> int:
    """Worst-case COBS-encoded length of ``n`` bytes, without the delimiter."""
    return n + max(1, -(-n // 254))


#: Largest COBS-encoded frame, without its delimiter: the receiver's buffer bound.
MAX_ENCODED_FRAME = cobs_max_encoded_len(MAX_FRAME)  # 4127
#: Largest frame on the wire, delimiter included.
MAX_WIRE_FRAME = MAX_ENCODED_FRAME + 1  # 4128

SEQ_MODULUS = 1 << 16
SAMPLE_INDEX_MODULUS = 1 << 32
TIMESTAMP_MODULUS = 1 << 32


class MsgType(IntEnum):
    """Message type codes (header byte 1). 0x01-0x3F device->host, 0x40 both, 0x80-0xBF host->device."""

    HELLO = 0x01
    AUDIO = 0x02
    HEARTBEAT = 0x03
    ERROR = 0x04
    ACK = 0x40
    CONTROL = 0x81
    RESULT = 0x82


class AudioFormat(IntEnum):
    """Sample encodings of an AUDIO payload."""

    PCM16 = 1  # signed 16-bit little-endian
    IMA_ADPCM = 2  # 4-bit IMA ADPCM, per-frame predictor state


class Command(IntEnum):
    """CONTROL commands."""

    START = 1
    STOP = 2
    SET_GAIN = 3
    SET_FILTER = 4
    REQUEST_HELLO = 5


class FilterMode(IntEnum):
    """Acoustic filter modes of a digital stethoscope."""

    BELL = 0  # low frequencies (heart, ~20-200 Hz emphasis)
    DIAPHRAGM = 1  # higher frequencies (lung sounds, ~100-1000 Hz emphasis)
    EXTENDED = 2  # wide band


class ErrorCode(IntEnum):
    """Codes of ERROR messages and non-zero ACK statuses. 0x8000-0xFFFF are vendor-specific."""

    OK = 0
    UNSUPPORTED_RATE = 1
    UNSUPPORTED_FORMAT = 2
    BAD_COMMAND = 3
    TX_OVERFLOW = 4
    SENSOR_FAULT = 5
    RX_FRAME_ERROR = 6
    BUSY = 7
    INTERNAL = 8


class HeartbeatState(IntEnum):
    """Device state reported by HEARTBEAT."""

    IDLE = 0
    STREAMING = 1


#: AUDIO flags (payload byte 9).
AUDIO_FLAG_LAST = 0x01

#: HELLO ``formats`` bitmask bit for each format.
FORMAT_BITS = {AudioFormat.PCM16: 0x01, AudioFormat.IMA_ADPCM: 0x02}

MAX_HELLO_RATES = 8
MAX_STRING = 64  # device id / firmware version bytes
MAX_ERROR_TEXT = 200
