"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999).

``encode`` turns any bytes into bytes without 0x00, so 0x00 can delimit frames on a byte
stream. Canonical form (the one both reference encoders produce): a final block that is a
full 254-byte run (code 0xFF) is *not* followed by an extra 0x01 code. ``decode`` accepts both
forms. Overhead: one byte per started run of 254 bytes, at least one.
"""
from __future__ import annotations

from stethoedge.firmware_bridge.errors import ProtocolError
from stethoedge.firmware_bridge.protocol import cobs_max_encoded_len

__all__ = ["CobsError", "encode", "decode", "decode_prefix", "max_encoded_len"]

max_encoded_len = cobs_max_encoded_len


class CobsError(ProtocolError):
    """Bytes that are not a valid COBS encoding."""


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data`` (no delimiter appended)."""
    runs = bytes(data).split(b"\x00")
    out = bytearray()
    for piece in runs:
        # Each zero-free run becomes blocks of at most 254 bytes; its zero is implied by the
        # run's last block having a code below 0xFF.
        while len(piece) >= 254:
            out.append(0xFF)
            out += piece[:254]
            piece = piece[254:]
        out.append(len(piece) + 1)
        out += piece
    # There is no zero after the last run. If that run filled whole 254-byte blocks, the loop
    # left an empty 0x01 block behind it that the canonical form omits.
    last = runs[-1]
    if last and len(last) % 254 == 0:
        del out[-1]
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS block sequence (without delimiter). Raises CobsError if invalid."""
    enc = bytes(data)
    n = len(enc)
    if n == 0:
        return b""
    if b"\x00" in enc:
        raise CobsError(f"COBS: zero byte at offset {enc.index(0)}")
    parts = []
    i = 0
    while True:
        code = enc[i]
        end = i + code
        if end > n:
            raise CobsError(f"COBS: block at offset {i} claims {code - 1} bytes, only {n - i - 1} left")
        parts.append(enc[i + 1 : end])
        if end == n:
            return b"".join(parts)
        if code != 0xFF:
            parts.append(b"\x00")
        i = end


def decode_prefix(enc: bytes, start: int, count: int) -> bytes | None:
    """The first ``count`` decoded bytes of the COBS sequence starting at ``enc[start]``.

    Cheap look-ahead for the resynchronisation scan (reads only the blocks it needs); ``None``
    if the sequence is invalid or decodes to fewer than ``count`` bytes.
    """
    n = len(enc)
    out = bytearray()
    i = start
    while len(out) < count:
        if i >= n:
            return None
        code = enc[i]
        if code == 0:
            return None
        end = i + code
        if end > n:
            return None
        out += enc[i + 1 : end]
        if end == n:
            break
        if code != 0xFF:
            out.append(0)
        i = end
    return bytes(out[:count]) if len(out) >= count else None
