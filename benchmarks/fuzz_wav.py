"""Fuzz the WAV reader wrapper (runtime/audio_io.load_audio and the streamed FileSource).

Every input must decode, or raise AudioError with a one-line message; anything else is a crash.
Usage: python benchmarks/fuzz_wav.py [--seconds 60] [--seed 0] [--crashes DIR]
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import run_fuzzer  # noqa: E402

from stethoedge.runtime.audio_io import load_audio  # noqa: E402
from stethoedge.runtime.errors import AudioError  # noqa: E402
from stethoedge.runtime.sources import FileSource  # noqa: E402


def seeds() -> list[bytes]:
    """Small valid WAVs: every subtype the runtime accepts, several rates and channel counts."""
    out = []
    t = np.arange(800) / 8000
    for subtype, rate, ch in [("PCM_16", 16000, 1), ("PCM_U8", 8000, 1), ("PCM_24", 44100, 2), ("PCM_32", 4000, 1),
                              ("FLOAT", 22050, 6), ("DOUBLE", 48000, 1)]:
        x = np.repeat((0.3 * np.sin(2 * np.pi * 440 * t))[:, None], ch, axis=1)
        buf = io.BytesIO()
        sf.write(buf, x, rate, subtype=subtype, format="WAV")
        out.append(buf.getvalue())
    return out


def main() -> None:
    """Run the fuzzer (budget from the command line)."""
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-wav-"))
    path = tmp / "input.wav"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        load_audio(path)
        for _ in FileSource(path, chunk_seconds=0.05).chunks():
            pass

    crashes = run_fuzzer("wav-reader", seeds(), target, (AudioError,))
    raise SystemExit(1 if crashes else 0)


if __name__ == "__main__":
    main()
