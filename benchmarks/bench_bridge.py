"""Firmware bridge benchmarks (prints numbers; not a test).

1. Host decode throughput on one core, as a multiple of the 256 kbit/s (16 kHz x 16 bit) audio
   rate: the whole host path of ``BridgeSource.chunks()`` (framing, CRC, message parsing,
   ADPCM decoding, sequencing, chunk merging) fed from memory, for PCM16 and IMA ADPCM.
2. The same over a pseudo-terminal, with a device process writing as fast as it can.
3. Added latency of the bridge on a pty at 921600 baud: a device process sends frames in real
   time, trickling each frame's bytes at the line rate (92 160 B/s for 8N1); latency is the time
   from the device writing a frame's last byte to the host yielding the chunk that ends with it.

    .venv/bin/python benchmarks/bench_bridge.py [--seconds 60] [--latency-seconds 6]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time

import numpy as np

from stethoedge.firmware_bridge.device_simulator import device_stream
from stethoedge.firmware_bridge.links import PtyPair
from stethoedge.firmware_bridge.protocol import AudioFormat
from stethoedge.firmware_bridge.serial_source import BridgeSource

RATE = 16000
AUDIO_BITS_PER_S = RATE * 16  # 256 kbit/s


def lung_like(n: int, seed: int = 0, level: float = 6000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    noise = np.convolve(rng.normal(0, 1, n), np.hanning(9) / 4.5, mode="same")
    env = 0.3 + 0.7 * np.abs(np.sin(np.pi * t / 1.5))
    tone = 0.4 * np.sin(2 * np.pi * 400 * t) * (t % 3 > 1.5)
    return np.clip(level * env * (noise + tone), -32768, 32767).astype(np.int16)


class MemoryPort:
    """A pyserial-like port that serves a byte string in reads of at most ``read_size`` bytes."""

    def __init__(self, data: bytes, read_size: int = 4096) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.read_size = read_size

    @property
    def in_waiting(self) -> int:
        return min(self.read_size, len(self.data) - self.pos)

    def read(self, n: int) -> bytes:
        n = min(n, self.read_size, len(self.data) - self.pos)
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned"


def bench_decode(pcm: np.ndarray, fmt: AudioFormat, frame_samples: int = 256, repeats: int = 3) -> dict:
    stream = b"".join(w for w, _ in device_stream(pcm, RATE, fmt, frame_samples))
    best = float("inf")
    for _ in range(repeats):
        src = BridgeSource(MemoryPort(stream), idle_timeout=None)
        t0 = time.perf_counter()
        n = sum(c.samples.shape[0] for c in src.chunks())
        best = min(best, time.perf_counter() - t0)
        assert n == pcm.shape[0] and src.stats.crc_errors == 0
    audio_s = pcm.shape[0] / RATE
    return {"x_realtime": audio_s / best, "wire_MBps": len(stream) / best / 1e6, "seconds": best,
            "frames_per_s": src.stats.frames / best, "audio_s": audio_s}


def _flood_device(fd: int, stream: bytes) -> None:
    view = memoryview(stream)
    while view:
        n = os.write(fd, view[:65536])
        view = view[n:]


def bench_pty_throughput(pcm: np.ndarray, fmt: AudioFormat) -> dict:
    stream = b"".join(w for w, _ in device_stream(pcm, RATE, fmt, 256))
    with PtyPair() as pty:
        src = BridgeSource(pty.slave_name, 921600, idle_timeout=10.0)
        proc = mp.get_context("fork").Process(target=_flood_device, args=(pty.master, stream))
        t0 = time.perf_counter()
        proc.start()
        n = sum(c.samples.shape[0] for c in src.chunks())
        dt = time.perf_counter() - t0
        proc.join(5)
        src.close()
    assert n == pcm.shape[0]
    return {"x_realtime": pcm.shape[0] / RATE / dt, "wire_MBps": len(stream) / dt / 1e6}


def _paced_device(fd: int, wires: list[tuple[bytes, int]], line_rate: float, piece: int, start: float, conn) -> None:
    """Send frames when a real device would, trickling bytes at the line rate; report times."""
    ends = []
    line_t = start
    for wire, due_sample in wires:
        due = start + due_sample / RATE
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        line_t = max(line_t, time.monotonic())
        for i in range(0, len(wire), piece):
            part = wire[i : i + piece]
            line_t += len(part) / line_rate  # the UART has shifted out this piece's last bit
            delay = line_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            os.write(fd, part)
        ends.append((due_sample, time.monotonic()))
    conn.send(ends)
    conn.close()


def bench_latency(pcm: np.ndarray, fmt: AudioFormat, baud: int, frame_samples: int = 256, piece: int = 32) -> dict:
    wires = list(device_stream(pcm, RATE, fmt, frame_samples))
    line_rate = baud / 10.0
    yields: list[tuple[int, float]] = []
    with PtyPair() as pty:
        src = BridgeSource(pty.slave_name, baud, idle_timeout=10.0)
        parent, child = mp.get_context("fork").Pipe()
        start = time.monotonic() + 0.3
        proc = mp.get_context("fork").Process(target=_paced_device,
                                              args=(pty.master, wires, line_rate, piece, start, child))
        proc.start()
        for chunk in src.chunks():
            yields.append((chunk.start_sample + chunk.samples.shape[0], time.monotonic()))
        ends = parent.recv()
        proc.join(5)
        src.close()
    # Each AUDIO frame's end sample -> the first chunk that reaches it. (wires[0] is the leading
    # 0x00, wires[1] HELLO; HEARTBEATs share the end sample of the AUDIO frame before them.)
    write_time: dict[int, float] = {}
    for (wire, end), (_, t) in zip(wires[2:], ends[2:]):
        write_time.setdefault(end, t)
    latencies = []
    j = 0
    for end in sorted(write_time):
        while yields[j][0] < end:
            j += 1
        latencies.append(yields[j][1] - write_time[end])
    ms = np.array(latencies) * 1000
    frame_bytes = statistics.median(len(w) for w, s in wires[2:])
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max()), "frames": len(ms),
            "wire_ms": frame_bytes / line_rate * 1000, "frame_bytes": frame_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="audio length for throughput runs")
    ap.add_argument("--latency-seconds", type=float, default=6.0, help="audio length for latency runs")
    args = ap.parse_args()
    pcm = lung_like(int(args.seconds * RATE))
    print(f"firmware bridge benchmark — {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"audio rate: {RATE} Hz x 16 bit = {AUDIO_BITS_PER_S / 1000:.0f} kbit/s; {args.seconds:g} s of audio\n")

    print("1. host decode throughput, in memory, one core "
          f"({pin_one_core()}; target >= 50x the audio rate)")
    for fmt in (AudioFormat.PCM16, AudioFormat.IMA_ADPCM):
        r = bench_decode(pcm, fmt)
        print(f"   {fmt.name:<9s} 256 samples/frame: {r['x_realtime']:7.0f}x real time "
              f"({r['x_realtime'] * AUDIO_BITS_PER_S / 1e6:6.1f} Mbit/s of audio, {r['frames_per_s']:8.0f} frames/s, "
              f"{r['wire_MBps']:.2f} MB/s on the wire)")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))

    print("\n2. throughput through a pty (device process floods the line, host reads with pyserial)")
    for fmt in (AudioFormat.PCM16, AudioFormat.IMA_ADPCM):
        r = bench_pty_throughput(pcm, fmt)
        print(f"   {fmt.name:<9s}: {r['x_realtime']:7.0f}x real time ({r['wire_MBps']:.2f} MB/s)")

    print("\n3. added latency: device's last byte written -> host yields the chunk (real-time pacing, "
          "bytes trickled at the line rate; target < 20 ms)")
    short = pcm[: int(args.latency_seconds * RATE)]
    for fmt, baud in ((AudioFormat.PCM16, 921600), (AudioFormat.IMA_ADPCM, 921600), (AudioFormat.IMA_ADPCM, 115200)):
        r = bench_latency(short, fmt, baud)
        print(f"   {fmt.name:<9s} @ {baud:>6d} baud: p50 {r['p50_ms']:5.2f} ms, p95 {r['p95_ms']:5.2f} ms, "
              f"max {r['max_ms']:5.2f} ms over {r['frames']} frames "
              f"(not included: {r['wire_ms']:.1f} ms to shift a {r['frame_bytes']:.0f}-byte frame through the UART, "
              f"and the 16 ms frame period)")


if __name__ == "__main__":
    main()
