"""CRC-32 of the wire protocol: CRC-32/ISO-HDLC, the CRC of zlib, Ethernet and PNG.

Width 32, polynomial 0x04C11DB7 (reflected form 0xEDB88320), init 0xFFFFFFFF, reflected input
and output, final XOR 0xFFFFFFFF; the check value (CRC of ASCII "123456789") is 0xCBF43926.
``crc32`` uses zlib (C speed); ``crc32_bitwise`` is the textbook definition, kept to document the
parameters and to cross-check zlib and the C reference.
"""
from __future__ import annotations

import zlib

POLY_REFLECTED = 0xEDB88320
CHECK_VALUE = 0xCBF43926


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32 of ``data``; pass a previous result as ``crc`` to continue over more data."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def crc32_bitwise(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Bit-by-bit CRC-32 with the same parameters and chaining as ``crc32`` (slow; reference)."""
    reg = crc ^ 0xFFFFFFFF
    for byte in bytes(data):
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ POLY_REFLECTED if reg & 1 else reg >> 1
    return reg ^ 0xFFFFFFFF
