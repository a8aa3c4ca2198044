"""Fault injection for a stream of wire frames: what a noisy or lossy link does to it.

Each function takes a list of wire frames (each ending in its 0x00 delimiter) or raw bytes and
returns the damaged version. Used by the tests and useful for exercising a host implementation.
"""
from __future__ import annotations

import random


def flip_bit(frame: bytes, bit: int) -> bytes:
    """Flip bit number ``bit`` (0 = LSB of byte 0) of ``frame``."""
    out = bytearray(frame)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def drop_byte(frame: bytes, index: int) -> bytes:
    """Remove the byte at ``index`` (as a UART overrun does)."""
    return frame[:index] + frame[index + 1 :]


def truncate(frame: bytes, keep: int) -> bytes:
    """Only the first ``keep`` bytes (the device stopped or reset mid-frame)."""
    return frame[:keep]


def garbage(rng: random.Random, n: int, allow_zero: bool = True) -> bytes:
    """``n`` random bytes (with or without 0x00)."""
    lo = 0 if allow_zero else 1
    return bytes(rng.randint(lo, 255) for _ in range(n))


def duplicate(frames: list[bytes], index: int) -> list[bytes]:
    """Send frame ``index`` twice."""
    return frames[: index + 1] + [frames[index]] + frames[index + 1 :]


def swap(frames: list[bytes], index: int) -> list[bytes]:
    """Reorder: frames ``index`` and ``index + 1`` change places."""
    out = list(frames)
    out[index], out[index + 1] = out[index + 1], out[index]
    return out


def drop(frames: list[bytes], index: int) -> list[bytes]:
    """Lose frame ``index`` entirely."""
    return frames[:index] + frames[index + 1 :]


def mutate(rng: random.Random, stream: bytes, n_faults: int) -> bytes:
    """Apply ``n_faults`` random byte-level faults (flip, drop, insert, replace with junk)."""
    data = bytearray(stream)
    for _ in range(n_faults):
        if not data:
            data += garbage(rng, 4)
            continue
        i = rng.randrange(len(data))
        kind = rng.randrange(4)
        if kind == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[i]
        elif kind == 2:
            data[i:i] = garbage(rng, rng.randint(1, 16))
        else:
            data[i] = rng.randrange(256)
    return bytes(data)
