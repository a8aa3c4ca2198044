"""Sections of PROTOCOL.md that are generated from the code: worked example frames and the
bandwidth budget. The tests fail if the document and the encoder disagree.

    python tests/support/docgen.py          # exit 1 if PROTOCOL.md is stale
    python tests/support/docgen.py --write  # regenerate the sections in place
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import stethoedge.firmware_bridge as _bridge
from stethoedge.firmware_bridge import cobs
from stethoedge.firmware_bridge.adpcm import packed_size
from stethoedge.firmware_bridge.framing import build_frame
from stethoedge.firmware_bridge.messages import Audio, Heartbeat, Result
from stethoedge.firmware_bridge.protocol import (
    CRC_SIZE,
    HEADER_SIZE,
    AudioFormat,
    HeartbeatState,
    cobs_max_encoded_len,
)

PROTOCOL_MD = Path(_bridge.__file__).resolve().parent / "PROTOCOL.md"
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                    re.S)


def _hex(data: bytes, per_line: int = 16) -> str:
    return "\n".join(data[i : i + per_line].hex(" ") for i in range(0, len(data), per_line))


def example_audio_frame() -> tuple[bytes, bytes]:
    """(decoded frame, wire bytes) of the worked AUDIO example."""
    msg = Audio.from_pcm16(np.array([0, 1000, -1000, 32767], dtype=np.int16), sample_index=256, sample_rate=16000)
    raw = build_frame(msg.TYPE, 2, 32000, msg.pack())
    return raw, cobs.encode(raw) + b"\x00"


def example_result_frame() -> tuple[bytes, bytes]:
    """(decoded frame, wire bytes) of the worked RESULT example."""
    msg = Result.make(label_index=3, confidence=0.8, window_time=2.5)
    raw = build_frame(msg.TYPE, 7, 5_250_000, msg.pack())
    return raw, cobs.encode(raw) + b"\x00"


def example_section() -> str:
    raw, wire = example_audio_frame()
    rraw, rwire = example_result_frame()
    payload = raw[HEADER_SIZE:-CRC_SIZE]
    return f"""An AUDIO frame from the device: sequence number 2, timestamp 32000 µs, four PCM16 samples
(0, 1000, -1000, 32767) starting at device sample 256, 16 kHz.

| Bytes (hex) | Field | Value |
|---|---|---|
| `{raw[0:1].hex(' ')}` | header.version | 1 |
| `{raw[1:2].hex(' ')}` | header.type | 0x02 AUDIO |
| `{raw[2:4].hex(' ')}` | header.seq | 2 |
| `{raw[4:8].hex(' ')}` | header.timestamp_us | 32000 |
| `{raw[8:10].hex(' ')}` | header.payload_len | {len(payload)} |
| `{payload[0:4].hex(' ')}` | audio.sample_index | 256 |
| `{payload[4:8].hex(' ')}` | audio.sample_rate | 16000 |
| `{payload[8:9].hex(' ')}` | audio.format | 1 PCM16 |
| `{payload[9:10].hex(' ')}` | audio.flags | 0 |
| `{payload[10:12].hex(' ')}` | audio.n_samples | 4 |
| `{payload[12:].hex(' ')}` | audio.samples | 0, 1000, -1000, 32767 |
| `{raw[-4:].hex(' ')}` | crc32 (of the {len(raw) - 4} bytes above) | 0x{int.from_bytes(raw[-4:], 'little'):08X} |

Frame before COBS ({len(raw)} bytes):

```
{_hex(raw)}
```

On the wire, COBS-encoded, with the 0x00 delimiter ({len(wire)} bytes):

```
{_hex(wire)}
```

A RESULT frame from the host: sequence number 7, timestamp 5 250 000 µs, label 3, confidence 0.8
(`round(0.8 × 65535)` = {int(round(0.8 * 65535))}), window at 2.5 s (2500 ms).

```
before COBS: {rraw.hex(' ')}
on the wire: {rwire.hex(' ')}
```
"""


@dataclass(frozen=True)
class LinkSpec:
    name: str
    bytes_per_s: float
    note: str


LINKS = (
    LinkSpec("UART 115200 8N1", 115200 / 10, "10 bits per byte"),
    LinkSpec("UART 460800 8N1", 460800 / 10, "10 bits per byte"),
    LinkSpec("UART 921600 8N1", 921600 / 10, "10 bits per byte"),
    LinkSpec("USB CDC ACM, full speed", 500_000, "planning figure; baud setting ignored"),
    LinkSpec("BLE serial, 4.x, 20-byte notifications", 5_000, "planning figure; measure yours"),
    LinkSpec("BLE serial, 5.x, 2M PHY + DLE", 60_000, "planning figure; measure yours"),
)
#: (format, samples per frame) columns of the budget.
CONFIGS = ((AudioFormat.PCM16, 256), (AudioFormat.IMA_ADPCM, 256), (AudioFormat.IMA_ADPCM, 512))
RATE = 16000
OK_UTILISATION = 0.80


def audio_payload_size(fmt: AudioFormat, n: int) -> int:
    if fmt == AudioFormat.PCM16:
        return 12 + 2 * n
    return 12 + 4 + packed_size(n)


def wire_size(payload: int) -> int:
    """Worst-case bytes on the wire for one frame: COBS overhead and the delimiter included."""
    return cobs_max_encoded_len(HEADER_SIZE + payload + CRC_SIZE) + 1


HEARTBEAT_WIRE = wire_size(len(Heartbeat(0, 0, 0, HeartbeatState.STREAMING).pack()))


def stream_bytes_per_s(fmt: AudioFormat, n: int, rate: int = RATE) -> float:
    """Device->host bytes per second: AUDIO frames plus one HEARTBEAT per second."""
    return wire_size(audio_payload_size(fmt, n)) * rate / n + HEARTBEAT_WIRE


def verdict(utilisation: float) -> str:
    if utilisation > 1.0:
        return "**infeasible**"
    if utilisation > OK_UTILISATION:
        return "marginal"
    return "ok"


def _fmt_name(fmt: AudioFormat) -> str:
    return "PCM16" if fmt == AudioFormat.PCM16 else "ADPCM"


def budget_section() -> str:
    lines = [
        "Per stream (16 kHz mono; worst-case COBS overhead; one HEARTBEAT/s included):",
        "",
        "| Format | Samples/frame | Frame period | Payload (B) | On the wire (B/frame) | Frames/s | Bytes/s | kbit/s at 8N1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fmt, n in CONFIGS:
        payload = audio_payload_size(fmt, n)
        bps = stream_bytes_per_s(fmt, n)
        lines.append(f"| {_fmt_name(fmt)} | {n} | {1000 * n / RATE:g} ms | {payload} | {wire_size(payload)} | "
                     f"{RATE / n:g} | {bps:,.0f} | {bps * 10 / 1000:,.1f} |")
    lines += [
        "",
        f"Link utilisation (device->host direction; ok ≤ {OK_UTILISATION:.0%}, marginal ≤ 100%, infeasible above):",
        "",
        "| Link | Capacity (B/s) | " + " | ".join(f"{_fmt_name(f)}, {n}/frame" for f, n in CONFIGS) + " |",
        "|---|---|" + "---|" * len(CONFIGS),
    ]
    for link in LINKS:
        cells = []
        for fmt, n in CONFIGS:
            u = stream_bytes_per_s(fmt, n) / link.bytes_per_s
            cells.append(f"{u:.0%} {verdict(u)}")
        lines.append(f"| {link.name} ({link.note}) | {link.bytes_per_s:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SECTIONS = {"example": example_section, "budget": budget_section}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current content."""
    def replace(m: re.Match) -> str:
        return m.group(1) + SECTIONS[m.group("name")]() + m.group(4)

    return _BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    fresh = render(text)
    if "--write" in argv:
        PROTOCOL_MD.write_text(fresh, encoding="utf-8")
        return 0
    if fresh != text:
        print(f"{PROTOCOL_MD} is out of date: run python -m stethoedge.firmware_bridge.docgen --write")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
