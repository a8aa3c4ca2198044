"""Fuzz the firmware-bridge decoder: COBS framing (FrameDecoder.feed) and message decoding.

Inputs are mutated valid streams (HELLO, AUDIO in PCM16 and IMA ADPCM, HEARTBEAT, RESULT frames)
fed in random-sized pieces. The framing layer must never raise (it counts and skips bad frames);
decode_message may raise ProtocolError only; anything else is a crash.
Usage: python benchmarks/fuzz_bridge.py [--seconds 60] [--seed 0] [--crashes DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import run_fuzzer  # noqa: E402

from stethoedge.firmware_bridge.errors import ProtocolError  # noqa: E402
from stethoedge.firmware_bridge.framing import FrameDecoder  # noqa: E402
from stethoedge.firmware_bridge.messages import decode_message  # noqa: E402


def seeds() -> list[bytes]:
    """Valid wire streams from the device simulator's own encoder (PCM16 and IMA ADPCM, with heartbeats)."""
    from stethoedge.firmware_bridge.device_simulator import device_stream
    from stethoedge.firmware_bridge.protocol import AudioFormat

    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(4000) * 3000).astype(np.int16)
    return [b"".join(b for b, _ in device_stream(pcm, 16000, fmt, frame_samples=fs, heartbeat_ms=50))
            for fmt in (AudioFormat.PCM16, AudioFormat.IMA_ADPCM) for fs in (64, 256)]


def main() -> None:
    """Run the fuzzer (budget from the command line)."""
    rng = np.random.default_rng(1)

    def target(data: bytes) -> None:
        dec = FrameDecoder()
        i = 0
        frames = []
        while i < len(data):
            step = int(rng.integers(1, 300))
            frames += dec.feed(data[i : i + step])
            i += step
        for frame in frames:
            try:
                decode_message(frame)
            except ProtocolError:
                pass

    crashes = run_fuzzer("bridge-decoder", seeds(), target, (ProtocolError,))
    raise SystemExit(1 if crashes else 0)


if __name__ == "__main__":
    main()
