"""Soak: an hour (``--minutes``) of simulator-like audio through `stethoedge listen`, with the file
source AND with the firmware-bridge source, in a subprocess each (torch blocked, as on a device).

* file: ``listen BUNDLE --replay WAV --fast`` (as fast as the model keeps up).
* bridge: ``listen BUNDLE --bridge PTY``; this script plays the device, writing the example
  firmware's wire stream (device_simulator.device_stream: HELLO, PCM16 AUDIO frames, HEARTBEATs)
  into the pseudo-terminal at ``--bridge-speed`` times real time, and drains the RESULT frames the
  host sends back.

For each: samples delivered vs sent, samples dropped (ring overflow + sequence gaps), windows and
skipped windows, resident-memory growth after warm-up (VmRSS every 0.05 s; target < 5 MB) and
per-window latency p50/p95/p99 from the JSON lines.

Usage: python benchmarks/soak.py BUNDLE [--minutes 60] [--bridge-speed 30] [--only file|bridge]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_listen_soak import BLOCK_TORCH, rss_mb, write_recording  # noqa: E402


def _watch(proc: subprocess.Popen, jsonl: Path) -> list[tuple[float, float, int]]:
    """(seconds, RSS MB, JSON-lines bytes) every 0.05 s until ``proc`` exits."""
    t0, samples = time.monotonic(), []
    while proc.poll() is None:
        r = rss_mb(proc.pid)
        if r is not None:
            samples.append((time.monotonic() - t0, r, jsonl.stat().st_size if jsonl.exists() else 0))
        time.sleep(0.05)
    return samples


def _report(name: str, total: int, wall: float, stdout: str, jsonl: Path, samples: list) -> dict:
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    counters = dict(kv.split("=") for kv in stdout.split("# stream: ")[1].splitlines()[0].split(", "))
    lat = np.array([r["latency_ms"] for r in records])
    final = max(size for *_, size in samples) if samples else 0
    warm = np.array([r for _, r, size in samples if 0.05 * final <= size < final]) if final else np.array([])
    rss = np.array([r for _, r, _ in samples])
    if warm.size < 2:
        warm = rss
    dropped = int(counters["ring_samples_dropped"]) + int(counters["samples_lost"])
    out = {
        "source": name, "audio_s": total / 16000, "wall_s": wall, "speed_x": total / 16000 / wall,
        "samples_sent": total, "samples_in": int(counters["samples_in"]), "samples_dropped": dropped,
        "windows": len(records), "windows_skipped": int(counters["windows_skipped"]),
        "backend_errors": int(counters.get("backend_errors", 0)),
        "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p95_ms": float(np.percentile(lat, 95)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
        "rss_peak_mb": float(rss.max()), "rss_after_warmup_mb": float(warm[0]), "rss_end_mb": float(warm[-1]),
        "rss_growth_mb": float(warm[-1] - warm[0]),
    }
    print(f"[{name}] {out['audio_s'] / 3600:.2f} h of audio in {wall:.1f} s ({out['speed_x']:.0f}x real time); "
          f"samples {out['samples_in']} of {total} delivered, {dropped} dropped; windows {len(records)} "
          f"(skipped {out['windows_skipped']}, backend errors {out['backend_errors']})")
    print(f"[{name}] latency per window p50 {out['latency_p50_ms']:.2f} ms, p95 {out['latency_p95_ms']:.2f} ms, "
          f"p99 {out['latency_p99_ms']:.2f} ms; RSS peak {out['rss_peak_mb']:.1f} MB, after warm-up "
          f"{out['rss_after_warmup_mb']:.1f} -> end {out['rss_end_mb']:.1f} MB (growth {out['rss_growth_mb']:+.1f} MB)")
    return out


def _env() -> dict:
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def soak_file(bundle: str, wav: Path, total: int, tmp: Path) -> dict:
    """listen --replay --fast over the whole recording."""
    jsonl = tmp / "file.jsonl"
    cmd = [sys.executable, "-c", BLOCK_TORCH, "listen", bundle, "--replay", str(wav), "--fast", "--jsonl", str(jsonl),
           "--threads", "1", "--allow-degraded"]
    with open(tmp / "file.out", "w+") as out, open(tmp / "file.err", "w+") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=_env())
        samples = _watch(proc, jsonl)
        wall = time.monotonic() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"file soak failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    return _report("file", total, wall, stdout, jsonl, samples)


def soak_bridge(bundle: str, wav: Path, total: int, tmp: Path, speed: float) -> dict:
    """listen --bridge on a pty, fed the device's wire stream at ``speed`` x real time."""
    from stethoedge.firmware_bridge.device_simulator import device_stream
    from stethoedge.firmware_bridge.links import PtyPair

    pty = PtyPair()
    jsonl = tmp / "bridge.jsonl"
    cmd = [sys.executable, "-c", BLOCK_TORCH, "listen", bundle, "--bridge", pty.slave_name, "--jsonl", str(jsonl),
           "--threads", "1", "--allow-degraded", "--idle-timeout", "10"]
    stop = threading.Event()

    def drain() -> None:  # RESULT and START frames from the host: read them so its writes never block
        import select

        while not stop.is_set():
            if select.select([pty.master], [], [], 0.1)[0]:
                try:
                    os.read(pty.master, 65536)
                except OSError:
                    return

    with open(tmp / "bridge.out", "w+") as out, open(tmp / "bridge.err", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=_env())
        threading.Thread(target=drain, daemon=True).start()
        time.sleep(4.0)  # bundle load + self-test before the device speaks
        samples: list = []
        watcher = threading.Thread(target=lambda: samples.extend(_watch(proc, jsonl)), daemon=True)
        watcher.start()
        t0 = time.monotonic()
        with sf.SoundFile(str(wav)) as f:
            pcm = f.read(dtype="int16")
        for wire, captured in device_stream(pcm, 16000, frame_samples=256):
            ahead = t0 + captured / 16000 / speed - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            os.write(pty.master, wire)
        proc.wait(timeout=600)
        wall = time.monotonic() - t0
        stop.set()
        watcher.join(timeout=5)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    pty.close()
    if proc.returncode != 0:
        sys.exit(f"bridge soak failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    bridge_line = [line for line in stdout.splitlines() if line.startswith("# bridge:")]
    print(f"[bridge] {bridge_line[0] if bridge_line else '(no bridge counters)'}")
    return _report("bridge", total, wall, stdout, jsonl, samples)


def main() -> None:
    """Run the soaks and print one report per source (and JSON with --json)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--bridge-speed", type=float, default=30.0, help="bridge feed rate in x real time (default 30)")
    p.add_argument("--only", choices=["file", "bridge"], default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        wav = tmp / "soak.wav"
        total = write_recording(wav, args.minutes)
        if args.only in (None, "file"):
            results.append(soak_file(args.bundle, wav, total, tmp))
        if args.only in (None, "bridge"):
            results.append(soak_bridge(args.bundle, wav, total, tmp, args.bridge_speed))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
